//! Network namespaces acting as EC2 instances, for the privileged tests and `cargo xtask lab`.
//! Owns the creation and guaranteed cleanup of namespaces, links and processes; knows nothing
//! about policies or BPF.
pub mod netns;
