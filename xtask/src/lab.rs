//! `cargo xtask lab`: the main job. After the bootstrap, it tries to install MariaDB (only the
//! lab uses it; when it cannot be installed the lab says so and uses a TCP echo server),
//! builds the eBPF object, builds sg-agent and sg-lab in release, then runs sg-lab as root.
//! Everything the lab does is in xtask/lab (package sg-lab), which the end-to-end tests run
//! too.

use anyhow::Result;

use crate::bootstrap::{Toolchain, apt_install};
use crate::cmd;
use crate::sh::{as_root, run};

/// The lab's optional packages: a real database behind sg-db's port 3306.
const MARIADB: &[&str] = &["mariadb-server", "mariadb-client"];

/// Builds what the lab runs and runs it; `keep`, `cfn` and `extra` are sg-lab's arguments.
pub fn run_lab(tc: &Toolchain, file: bool, keep: bool, cfn: bool, extra: &[String]) -> Result<()> {
    // The lab runs its own mariadbd in db-1's namespace; on a systemd host the package also
    // enables Debian's service (bound to 127.0.0.1), which the lab never uses.
    if let Err(e) = apt_install(MARIADB) {
        eprintln!("==> MariaDB could not be installed ({e:#}); the lab uses a TCP echo server");
    }
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
    let mut lab = as_root("target/release/sg-lab");
    if file {
        lab.arg("--file");
    }
    if keep {
        lab.arg("--keep");
    }
    if cfn {
        lab.arg("--cfn");
    }
    lab.args(extra);
    run(&mut lab)
}
