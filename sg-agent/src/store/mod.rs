//! The fleet's policy store: security groups, prefix lists and interfaces (memberships) shared
//! by many hosts through etcd. docs/fleet.md has the key layout.

pub mod etcd;
