//! `cargo xtask lab`: the main job. Bootstraps the toolchain, tries to install MariaDB (only
//! the lab uses it; when it cannot be installed the lab says so and uses a TCP echo server),
//! builds the eBPF object, builds sg-agent and sg-lab in release, then runs sg-lab as root.
//! Everything sg-lab does is in xtask/lab (package sg-lab) (the end-to-end tests run the same code).

use std::process::Command;

use anyhow::Result;

use crate::bootstrap::Toolchain;
use crate::cmd::{self, run};

/// The lab's optional package: a real database behind sg-db's port 3306.
const MARIADB: &[&str] = &["mariadb-server", "mariadb-client"];
/// Needed by the lab's HTTPS servers (a throw-away certificate) and not in the bootstrap's
/// list (it usually comes with ca-certificates, which --no-install-recommends may skip).
const REQUIRED: &[&str] = &["openssl"];

pub fn run_lab(tc: &Toolchain, keep: bool, cfn: bool, extra: &[String]) -> Result<()> {
    let missing = missing(REQUIRED);
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    ensure_mariadb();
    cmd::build_ebpf(tc)?;
    let mut c = cmd::host_cargo(tc);
    c.args([
        "build",
        "--release",
        "--package",
        "sg-agent",
        "--package",
        "sg-lab",
    ]);
    run(&mut c)?;
    let mut lab = if is_root() {
        Command::new("target/release/sg-lab")
    } else {
        let mut s = Command::new("sudo");
        s.arg("target/release/sg-lab");
        s
    };
    if keep {
        lab.arg("--keep");
    }
    if cfn {
        lab.arg("--cfn");
    }
    lab.args(extra);
    run(&mut lab)
}

fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    pkgs.iter().copied().filter(|p| !installed(p)).collect()
}

/// `apt-get install`; when that fails (stale or missing package lists, since the bootstrap
/// only updates them when it installs something itself), `apt-get update` and once more.
fn apt_install(pkgs: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| -> Result<()> {
        let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
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
        // The lab runs its own mariadbd in db-1's namespace; on a systemd host the package
        // also enables Debian's service (bound to 127.0.0.1), which the lab never uses.
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(pkgs);
    apt(&install).or_else(|_| {
        apt(&["update", "-qq"])?;
        apt(&install)
    })
}

/// Installs MariaDB when missing; a failure is reported, not fatal.
fn ensure_mariadb() {
    let missing = missing(MARIADB);
    if missing.is_empty() {
        return;
    }
    eprintln!(
        "==> the lab runs a real MariaDB when it can: apt-get install {}",
        missing.join(" ")
    );
    if let Err(e) = apt_install(&missing) {
        eprintln!("==> MariaDB could not be installed ({e:#}); the lab uses a TCP echo server");
    }
}
