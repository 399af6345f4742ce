//! Network namespaces acting as EC2 instances, for the privileged tests and `cargo xtask lab`:
//! a LAN of hosts and a routed path (topology, on sg-testkit's namespaces that cannot leak),
//! the real servers and clients run on them (services), the real sg-agent binary driven inside them (agents), paths as fixture rows and the lab's table
//! (probe), the seed article's EC2 lab (scenario), the same told through the EC2 API on a store
//! (api) and a test bed for the end-to-end tests (bed).
//!
//! Knows policies only as files handed to the agent binary: it never loads BPF itself.
pub mod agents;
pub mod api;
pub mod bed;
pub mod probe;
pub mod scenario;
pub mod services;
pub mod topology;
pub mod vpc;
