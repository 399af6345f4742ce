//! `cargo xtask bench`: in-kernel cost, veth throughput vs no filter and nftables, control plane. (in progress)
