//! `cargo xtask bench`: in-kernel cost, veth throughput vs no filter and nftables, control plane.
pub mod frames;
pub mod nft;
pub mod rawbpf;
pub mod workload;
