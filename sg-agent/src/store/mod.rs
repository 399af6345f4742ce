//! The policy store: security groups, prefix lists and interfaces (memberships) as keys and
//! values, shared by many hosts through etcd, or kept in one host's policy file (the local
//! store of `sg-agent api --config`). docs/fleet.md has the key layout and the flow.
//!
//! ```text
//! layout.rs  the keys and values, and a listing as one native policy for the validator
//! native.rs  a validated policy written back in the native format (values, export)
//! etcd.rs    the etcd client: keys and bytes, revisions, watches, leases
//! follow.rs  the daemon's follower task: list, watch, offer the newest snapshot, ack
//! admin.rs   store import, export and status
//! local.rs   one host's policy file read and written as the store's keys (no etcd)
//! ```

pub mod admin;
pub mod etcd;
pub mod follow;
pub mod layout;
pub mod local;
pub mod native;

pub use follow::{Follower, Registration, StoreOptions, StoreSource};
