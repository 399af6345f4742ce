//! Network namespaces acting as EC2 instances, for tests and `cargo xtask lab`. (in progress)
