//! Embeds the eBPF object built by `cargo xtask build` so the agent runs from any directory.
//! Building the object once into target/bpf serves every profile, clippy and the tests.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = std::env::var_os("SG_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/sg-ebpf"));
    println!("cargo:rerun-if-env-changed=SG_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build` first (it bootstraps the \
             eBPF toolchain and builds sg-ebpf for bpfel-unknown-none)",
            object.display()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("sg-ebpf.o");
    std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
}
