//! Running commands, and the build and test steps every xtask command shares.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bootstrap::{BPF_TARGET, Toolchain};

/// Runs a command, echoing it first; fails with its exit status.
pub fn run(c: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(c));
    let status = c
        .status()
        .with_context(|| format!("cannot start {}", show(c)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(c));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout.
pub fn output(c: &mut Command) -> Result<String> {
    let o = c
        .output()
        .with_context(|| format!("cannot start {}", show(c)))?;
    if !o.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(c),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// PATH with bpf-linker's and rustup cargo's directory first.
fn path_with(tc: &Toolchain) -> String {
    let mut p = tc.linker_dir.display().to_string();
    if let Some(dir) = tc.cargo.parent() {
        p = format!("{p}:{}", dir.display());
    }
    format!("{p}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Builds sg-ebpf for bpfel-unknown-none with Debian's rustc into target/bpf. Always release:
/// a dev-profile object links but the verifier rejects it.
pub fn build_ebpf(tc: &Toolchain) -> Result<()> {
    let mut c = Command::new(&tc.cargo);
    c.args(["build", "--package", "sg-ebpf", "--bins", "--release"])
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
    run(&mut c)
}

/// A cargo command for the host (userspace) side, with rustup's toolchain.
pub fn host_cargo(tc: &Toolchain) -> Command {
    let mut c = Command::new(&tc.cargo);
    c.env("PATH", path_with(tc))
        .env_remove("RUSTC")
        .env_remove("RUSTC_BOOTSTRAP");
    c
}

pub fn build_agent(tc: &Toolchain, release: bool) -> Result<()> {
    let mut c = host_cargo(tc);
    c.args(["build", "--package", "sg-agent"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
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
