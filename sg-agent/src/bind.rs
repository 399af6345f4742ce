//! Binding: which local interface carries which policy interface. (in progress)
