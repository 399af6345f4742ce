//! The kernel lookup, in userspace, over a MapImage. (in progress)
