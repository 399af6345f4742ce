//! The build, lint and test steps the xtask commands share: which cargo runs with which
//! compiler and environment. Running a command is `sh`'s job; finding the toolchain is
//! `bootstrap`'s.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::bootstrap::{BPF_TARGET, Toolchain};
use crate::sh::run;

/// PATH with bpf-linker's and rustup cargo's directory first.
fn path_with(tc: &Toolchain) -> String {
    let mut p = tc.linker_dir.display().to_string();
    if let Some(dir) = tc.cargo.parent() {
        p = format!("{p}:{}", dir.display());
    }
    format!("{p}:{}", std::env::var("PATH").unwrap_or_default())
}

/// `program` (a cargo, or Debian's cargo-clippy, which runs cargo) set up to compile sg-ebpf
/// for the BPF target with Debian's rustc into target/bpf. Always release: a dev-profile
/// object links but the verifier rejects it.
fn bpf_cargo(tc: &Toolchain, program: &Path, subcommand: &str) -> Command {
    let mut c = Command::new(program);
    c.args([subcommand, "--package", "sg-ebpf", "--bins", "--release"])
        .args(["--target", BPF_TARGET, "--target-dir", "target/bpf"])
        .env("PATH", path_with(tc))
        .env("RUSTC", &tc.rustc_bpf)
        // aya-ebpf uses #![feature(asm_experimental_arch)]; the crate-scoped value suffices.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        // These would merge with .cargo/config.toml's flags (bpf-linker rejects a second --btf).
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    c
}

/// Builds the eBPF object, target/bpf/bpfel-unknown-none/release/sg-ebpf.
pub fn build_ebpf(tc: &Toolchain) -> Result<()> {
    run(&mut bpf_cargo(tc, &tc.cargo, "build"))
}

/// A cargo command for the host (userspace) side, with rustup's toolchain.
pub fn host_cargo(tc: &Toolchain) -> Command {
    let mut c = Command::new(&tc.cargo);
    c.env("PATH", path_with(tc))
        .env_remove("RUSTC")
        .env_remove("RUSTC_BOOTSTRAP");
    c
}

/// Builds the agent binary (target/debug or target/release).
pub fn build_agent(tc: &Toolchain, release: bool) -> Result<()> {
    let mut c = host_cargo(tc);
    c.args(["build", "--package", "sg-agent"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// The lint gate, every step failing on the first warning:
/// 1. rustfmt `--check` on the workspace and on the cargo-fuzz targets (fuzz/ is a workspace
///    of its own, so it is checked file by file; rustfmt.toml gives them the edition);
/// 2. clippy on every target (lib, bins, tests, benches) of every workspace package on the
///    host, sg-ebpf included: on the host it type-checks everything but the entry points;
/// 3. clippy on sg-ebpf for the BPF target with Debian's clippy, so the entry points and
///    anything else compiled only for BPF are linted as the object is built.
///
/// Lint levels live in the root Cargo.toml (`[workspace.lints]`), thresholds in clippy.toml.
/// Needs the eBPF object: sg-agent's build script embeds it.
pub fn lint(tc: &Toolchain) -> Result<()> {
    let mut fmt = host_cargo(tc);
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(&mut fmt).context("hint: `cargo fmt --all` formats the workspace")?;
    let mut fuzz_targets: Vec<_> = std::fs::read_dir("fuzz/fuzz_targets")
        .context("reading fuzz/fuzz_targets")?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    fuzz_targets.sort();
    let mut fmt = Command::new(tc.cargo.with_file_name("rustfmt"));
    fmt.arg("--check").args(&fuzz_targets);
    run(&mut fmt).context("hint: `rustfmt fuzz/fuzz_targets/*.rs` formats them")?;

    let mut clippy = host_cargo(tc);
    clippy
        .args(["clippy", "--workspace", "--all-targets"])
        .args(["--", "-D", "warnings"]);
    run(&mut clippy)?;
    let mut clippy = bpf_cargo(tc, &tc.clippy_bpf, "clippy");
    clippy.args(["--", "-D", "warnings"]);
    run(&mut clippy)
}

/// The whole suite: every package's tests, the privileged ones (sg-systest: netns, BPF)
/// included, which need root and fail, never skip, without it. The agent binary they drive is
/// built first (`sg_testkit::agent_bin`).
pub fn test(tc: &Toolchain, extra: &[String]) -> Result<()> {
    build_agent(tc, false)?;
    let mut c = host_cargo(tc);
    c.args(["test", "--workspace"]);
    if !extra.is_empty() {
        c.arg("--").args(extra);
    }
    run(&mut c)
}
