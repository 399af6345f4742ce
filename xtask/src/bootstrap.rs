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

use crate::sh::{as_root, output, run, succeeds};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_TARGET: &str = "bpfel-unknown-none";
const RUSTC_BPF: &str = "/usr/bin/rustc";
/// Debian's clippy for that rustc: the lint gate runs it on sg-ebpf for the BPF target (the
/// host clippy cannot see the BPF-only code, and rustup's clippy cannot read Debian's core).
const CLIPPY_BPF: &str = "/usr/bin/cargo-clippy";

/// Debian packages the build and the lint gate need; one source package, so one version.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf", "rust-web-clippy"];
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
    // venv for the aws CLI and boto3 of the API tests (install_aws_clients).
    "python3-venv",
    "tcpdump",
    "openssl",
];
/// Debian packages `cargo xtask dist` and CI's package check use: strip (binutils),
/// `man` (man-db) and `systemd-analyze` (systemd, never started here).
pub const DIST_PACKAGES: &[&str] = &["binutils", "man-db", "systemd"];
/// Debian packages of the fleet's policy store: etcd 3.4 (the server and etcdctl), which the
/// tests, the lab and the bench start themselves inside network namespaces
/// (`sg_testkit::etcd`), and what etcd-client's build script compiles the etcd API with:
/// protoc, plus libprotobuf-dev for the well-known types (`google/protobuf/descriptor.proto`)
/// that Debian's protoc does not ship and etcd's .proto files import.
pub const STORE_PACKAGES: &[&str] = &[
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];
/// The unit and init script etcd-server installs; this host must never run it (below).
const ETCD_SERVICE: &str = "etcd";

/// What the other commands need to know about the installed toolchain.
pub struct Toolchain {
    /// rustup's cargo (userspace builds).
    pub cargo: PathBuf,
    /// Directory holding bpf-linker (prepended to PATH for the eBPF build).
    pub linker_dir: PathBuf,
    /// Debian's rustc, the one with a prebuilt `core` for the BPF target.
    pub rustc_bpf: PathBuf,
    /// Debian's `cargo-clippy` matching `rustc_bpf`.
    pub clippy_bpf: PathBuf,
}

/// Checks every piece of the toolchain, installs what is missing, and says where it is.
pub fn ensure() -> Result<Toolchain> {
    let t0 = std::time::Instant::now();
    let mut installed = Vec::new();

    installed.extend(apt_install(BUILD_PACKAGES)?);
    let rustc = Path::new(RUSTC_BPF);
    for (path, pkg) in [(RUSTC_BPF, "rustc-web"), (CLIPPY_BPF, "rust-web-clippy")] {
        if !Path::new(path).exists() {
            bail!("{path} is missing after installing {pkg}");
        }
    }
    let v_rustc = dpkg_version("rustc-web")?;
    for pkg in &BUILD_PACKAGES[1..] {
        let v = dpkg_version(pkg)?;
        if v != v_rustc {
            bail!(
                "version skew: rustc-web {v_rustc} vs {pkg} {v}; hint: \
                 apt-get install --only-upgrade {}",
                BUILD_PACKAGES.join(" ")
            );
        }
    }
    let llvm = llvm_major(rustc)?;
    let llvm_dev = format!("llvm-{llvm}-dev");
    installed.extend(apt_install(&[llvm_dev.as_str()])?);
    installed.extend(apt_install(TEST_PACKAGES)?);
    installed.extend(install_store_packages()?);
    installed.extend(install_aws_clients()?);

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
        clippy_bpf: PathBuf::from(CLIPPY_BPF),
    })
}

/// The real EC2 clients the API tests drive (docs/api.md), pinned, from PyPI: the aws CLI
/// (v1: v2 is not published on PyPI; both send the same Query requests) and boto3.
pub const AWS_CLIENTS: &[&str] = &["awscli==1.46.3", "boto3==1.44.8"];

/// The project's own virtual environment of [`AWS_CLIENTS`], under target/ (never the
/// system's Python packages). `sg_testkit::aws` finds it there.
pub fn aws_venv() -> PathBuf {
    crate::workspace_root().join("target/aws-venv")
}

/// Creates the venv and installs [`AWS_CLIENTS`] unless exactly those versions are present.
fn install_aws_clients() -> Result<Vec<String>> {
    let venv = aws_venv();
    let python = venv.join("bin/python3");
    let wanted: Vec<String> = AWS_CLIENTS.iter().map(|p| p.replace("==", " ")).collect();
    let present = || {
        let Ok(list) = output(Command::new(&python).args(["-m", "pip", "list"])) else {
            return false;
        };
        let have: Vec<String> = list
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            })
            .collect();
        wanted.iter().all(|w| have.contains(w))
    };
    // A venv is not relocatable: its scripts name the python of the path it was made at, so a
    // clone moved (or a target dir made through another path) has an aws that cannot start.
    let aws_runs = || output(Command::new(venv.join("bin/aws")).arg("--version")).is_ok();
    if present() && aws_runs() {
        return Ok(vec![]);
    }
    if python.exists() && !aws_runs() {
        eprintln!(
            "==> {} was made at another path (its aws cannot start): making it again",
            venv.display()
        );
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    eprintln!(
        "==> installing {} into {}",
        AWS_CLIENTS.join(" "),
        venv.display()
    );
    if !python.exists() {
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(AWS_CLIENTS))?;
    if !present() {
        bail!(
            "{} lacks {} after pip install",
            venv.display(),
            AWS_CLIENTS.join(" ")
        );
    }
    Ok(AWS_CLIENTS.iter().map(|p| (*p).to_string()).collect())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn dpkg_version(pkg: &str) -> Result<String> {
    Ok(
        output(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))?
            .trim()
            .to_string(),
    )
}

/// Installs those of `pkgs` that are missing (through sudo unless root) and returns their
/// names. The package lists are refreshed only when an install fails (stale lists, or none
/// at all in a fresh container), and the install is then tried once more: a machine whose
/// lists are current never waits for `apt-get update`.
pub fn apt_install(pkgs: &[&str]) -> Result<Vec<String>> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!("==> apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let mut c = as_root("apt-get");
        c.args(["-o", "DPkg::Lock::Timeout=900", "-o", "Acquire::Retries=3"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
        .or_else(|_| {
            eprintln!("==> refreshing the package lists and trying once more");
            apt(&["update", "-qq"])?;
            apt(&install)
        })
        .context("apt-get install failed; hint: check the Debian mirror and `apt-get update`")?;
    Ok(missing.iter().map(ToString::to_string).collect())
}

/// Installs [`STORE_PACKAGES`] without ever leaving an etcd running on this host: Debian's
/// postinst enables and starts `etcd.service` (listening on localhost:2379 in the default
/// namespace), but sg's tests start their own members inside namespaces and nothing of sg
/// may listen in the host's namespace. Starting is forbidden during the install by a
/// `policy-rc.d` (written only if the machine has none, removed after), and a service the
/// package started anyway (a policy that allows it) is stopped and disabled.
fn install_store_packages() -> Result<Vec<String>> {
    let fresh_server = !dpkg_installed("etcd-server");
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let guard = fresh_server && !policy.exists();
    if guard {
        // exit 101: "action forbidden" for invoke-rc.d and deb-systemd-invoke alike.
        run(as_root("sh").args([
            "-c",
            "printf '#!/bin/sh\\n# written by cargo xtask bootstrap for one install\\nexit 101\\n' \
             > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
        ]))?;
    }
    let installed = apt_install(STORE_PACKAGES);
    if guard {
        run(as_root("rm").args(["-f", "/usr/sbin/policy-rc.d"]))?;
    }
    let installed = installed?;
    if fresh_server {
        stop_etcd_service()?;
    }
    Ok(installed)
}

/// Stops and disables the etcd service a fresh install of etcd-server may have started or
/// enabled, then checks that no etcd of the service (user `etcd`) runs. Never touches an etcd
/// of anyone else: only the package's own service, once, right after installing it.
fn stop_etcd_service() -> Result<()> {
    if Path::new("/run/systemd/system").exists() {
        let _ = output(as_root("systemctl").args(["disable", "--now", ETCD_SERVICE]));
    } else {
        let _ = output(as_root("update-rc.d").args([ETCD_SERVICE, "disable"]));
        let _ = output(as_root("/etc/init.d/etcd").arg("stop"));
    }
    // The unit or script stops asynchronously: a bounded wait for its process to go.
    for _ in 0..50 {
        if !succeeds(Command::new("pgrep").args(["-u", "etcd", "-x", "etcd"])) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "the etcd service that installing etcd-server started is still running; hint: \
         `systemctl disable --now etcd` (sg's tests start their own etcd in namespaces)"
    )
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
