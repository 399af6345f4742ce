//! `sg-bench`: run by `cargo xtask bench` (in progress).
fn main() {}
