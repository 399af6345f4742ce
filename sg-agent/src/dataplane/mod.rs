//! The only code that imports aya. (in progress)
