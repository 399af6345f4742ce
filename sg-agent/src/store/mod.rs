//! The fleet's policy store: security groups, prefix lists and interfaces (memberships) shared
//! by many hosts through etcd. docs/fleet.md has the key layout and the flow.
//!
//! ```text
//! layout.rs  the keys and values, and a listing as one native policy for the validator
//! native.rs  a validated policy written back in the native format (values, export)
//! etcd.rs    the etcd client: keys and bytes, revisions, watches, leases
//! follow.rs  the daemon's follower task: list, watch, offer the newest snapshot, ack
//! admin.rs   store import, export and status
//! ```

pub mod admin;
pub mod etcd;
pub mod follow;
pub mod layout;
pub mod native;

pub use follow::{Follower, Registration, StoreOptions, StoreSource};
