//! The etcd client of the policy store: connect, list at one revision, watch, transactions,
//! leases. Knows keys and bytes, not policies.
