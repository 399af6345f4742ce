//! Linker flags for the eBPF object only (the host build of this crate is a type-check stub).
//!
//! `--disable-expand-memcpy-in-order`: bpf-linker passes LLVM `-bpf-expand-memcpy-in-order`
//! by default, and with LLVM 22 that option turns every `llvm.memset` (zeroing a key or the
//! packet summary, even 3 bytes) into a call to compiler_builtins' byte-at-a-time `memset`: a
//! BPF-to-BPF call per zeroing at run time, and ~5 verifier steps per byte. Without it LLVM
//! expands memset and memcpy inline as plain stores/loads.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
