//! The toolchain bootstrap, unattended and idempotent: it checks each piece and installs only
//! what is missing, printing what it installs. When everything is present it prints one line.
//!
//! Why this shape (docs/toolchain.md has the details): rustup cannot download here and no
//! installed toolchain has rust-src, so `-Z build-std` is out. Debian ships rustc-web with a
//! prebuilt `core` for bpfel-unknown-none; bpf-linker is built from crates.io against Debian's
//! LLVM of the same major version as that rustc.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{output, run};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_TARGET: &str = "bpfel-unknown-none";
const RUSTC_BPF: &str = "/usr/bin/rustc";

/// Debian packages the build needs.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf"];
/// Debian packages the tests, the lab and the bench use.
pub const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "iputils-ping",
    "nftables",
    "curl",
    "openssh-client",
    "openssh-server",
    "socat",
    "netcat-openbsd",
    "iperf3",
    "ethtool",
    "python3",
    "tcpdump",
    "openssl",
];

/// What the other commands need to know about the installed toolchain.
pub struct Toolchain {
    /// rustup's cargo (userspace builds).
    pub cargo: PathBuf,
    /// Directory holding bpf-linker (prepended to PATH for the eBPF build).
    pub linker_dir: PathBuf,
    pub rustc_bpf: PathBuf,
}

pub fn ensure() -> Result<Toolchain> {
    let t0 = std::time::Instant::now();
    let mut installed = Vec::new();

    apt_install(BUILD_PACKAGES, &mut installed)?;
    let rustc = Path::new(RUSTC_BPF);
    if !rustc.exists() {
        bail!("{RUSTC_BPF} is missing after installing rustc-web");
    }
    let v_rustc = dpkg_version("rustc-web")?;
    let v_bpf = dpkg_version("libstd-rust-web-dev-bpf")?;
    if v_rustc != v_bpf {
        bail!(
            "version skew: rustc-web {v_rustc} vs libstd-rust-web-dev-bpf {v_bpf}; hint: \
             apt-get install --only-upgrade rustc-web libstd-rust-web-dev-bpf"
        );
    }
    let llvm = llvm_major(rustc)?;
    let llvm_dev = format!("llvm-{llvm}-dev");
    apt_install(&[llvm_dev.as_str()], &mut installed)?;
    apt_install(TEST_PACKAGES, &mut installed)?;

    let cargo = find_cargo()?;
    let linker_dir = cargo_home().join("bin");
    let linker = linker_dir.join("bpf-linker");
    if !bpf_linker_ok(&linker, llvm) {
        eprintln!("==> installing bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm}) from crates.io");
        let mut c = Command::new(&cargo);
        c.args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--locked", "--force", "--no-default-features"])
            .args(["--features", &format!("llvm-{llvm}")])
            .arg("--root")
            .arg(cargo_home())
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"));
        // Debian's rustc must not build bpf-linker: it is a host tool.
        c.env_remove("RUSTC").env_remove("RUSTC_BOOTSTRAP");
        run(&mut c)?;
        installed.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        if !bpf_linker_ok(&linker, llvm) {
            bail!(
                "bpf-linker at {} does not work after installing it",
                linker.display()
            );
        }
    }
    if installed.is_empty() {
        eprintln!(
            "==> toolchain present (rustc-web {v_rustc}, LLVM {llvm}, bpf-linker {BPF_LINKER_VERSION}) [{:.1}s]",
            t0.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "==> bootstrap installed: {} [{:.0}s]",
            installed.join(", "),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(Toolchain {
        cargo,
        linker_dir,
        rustc_bpf: rustc.to_path_buf(),
    })
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn dpkg_version(pkg: &str) -> Result<String> {
    Ok(
        output(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))?
            .trim()
            .to_string(),
    )
}

static APT_UPDATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn apt_install(pkgs: &[&str], installed: &mut Vec<String>) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> apt-get install {}", missing.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend([
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=900",
            "-o",
            "Acquire::Retries=3",
        ]);
        all.extend(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    if !APT_UPDATED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        apt(&["update", "-qq"])?;
    }
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
        .context("apt-get install failed; hint: check the Debian mirror and `apt-get update`")?;
    installed.extend(missing.iter().map(|s| s.to_string()));
    Ok(())
}

fn llvm_major(rustc: &Path) -> Result<u32> {
    let v = output(Command::new(rustc).arg("-vV"))?;
    v.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("cannot read the LLVM version of {}", rustc.display()))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// rustup's cargo: `~/.cargo/bin/cargo` wins over Debian's (which may be on PATH first, e.g.
/// under sudo) because Debian's rustc would resolve the lock file for a newer rust-version.
fn find_cargo() -> Result<PathBuf> {
    let c = cargo_home().join("bin/cargo");
    if c.exists() {
        return Ok(c);
    }
    if let Some(c) = std::env::var_os("CARGO") {
        return Ok(PathBuf::from(c));
    }
    bail!(
        "no rustup cargo found under {}; hint: install rustup's stable toolchain",
        c.display()
    )
}

fn bpf_linker_ok(linker: &Path, llvm: u32) -> bool {
    let version = output(Command::new(linker).arg("--version")).unwrap_or_default();
    if version.trim() != format!("bpf-linker {BPF_LINKER_VERSION}") {
        return false;
    }
    let ldd = output(Command::new("ldd").arg(linker)).unwrap_or_default();
    ldd.contains(&format!("libLLVM.so.{llvm}."))
}
