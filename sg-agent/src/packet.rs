//! Abstract packets and the frames built from them. (in progress)
