//! Network namespaces acting as EC2 instances, for the privileged tests and `cargo xtask lab`:
//! creation and guaranteed cleanup of namespaces, links and processes (netns), a LAN of hosts
//! (topology), and the real servers and clients run on them (services). Knows nothing about
//! policies or BPF.
pub mod netns;
pub mod services;
pub mod topology;
