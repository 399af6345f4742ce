//! `cargo xtask dist`: sg-agent as a package. Builds the release agent (the eBPF object is
//! embedded by its build script), strips it, generates the man page and the shell
//! completions from the binary's own clap definition (`sg-agent man`, `sg-agent completions`),
//! and lays out one file tree that becomes both target/dist/sg-agent_VER_ARCH.deb (dpkg-deb)
//! and target/dist/sg-agent_VER_ARCH.tar.gz (the same files, to unpack at /).
//!
//! The package never starts or enables the service: a firewall that starts closed on the
//! wrong policy locks its administrator out. postinst only reloads systemd's unit files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::bootstrap::Toolchain;
use crate::cmd;
use crate::sh::{output, run};

/// The package's version: the workspace's (xtask shares it with sg-agent).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAINTAINER: &str = "sg maintainers <maintainers@users.noreply.r-seed-6b5e5197.example>";
/// Where the files go in the package (and, unpacked at /, from the tarball).
const BIN: &str = "usr/bin/sg-agent";
const UNIT: &str = "lib/systemd/system/sg-agent.service";
const POLICY: &str = "etc/sg/policy.yaml";
const DOC: &str = "usr/share/doc/sg-agent";

/// Builds the .deb and the .tar.gz into target/dist; returns the .deb's path.
pub fn run_dist(tc: &Toolchain) -> Result<PathBuf> {
    cmd::build_ebpf(tc)?;
    cmd::build_agent(tc, true)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let name = format!("sg-agent_{VERSION}_{arch}");
    let out = Path::new("target/dist");
    let root = out.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    lay_out(&root)?;
    debian_dir(&root, &arch)?;
    // Whatever the umask: directories 0755 in the package.
    chmod_dirs(&root)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--exclude=./DEBIAN",
        ])
        .arg("-C")
        .arg(&root)
        .arg("-czf")
        .arg(&tarball)
        .arg("."))?;
    for f in [&deb, &tarball] {
        eprintln!(
            "==> {} ({} KiB)",
            f.display(),
            fs::metadata(f)?.len() / 1024
        );
    }
    Ok(deb)
}

/// The files: the stripped binary, its man page and completions, the unit, the example
/// policy, the docs.
fn lay_out(root: &Path) -> Result<()> {
    let bin = root.join(BIN);
    mkdir_for(&bin)?;
    run(Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&bin)
        .arg("target/release/sg-agent"))?;
    set_mode(&bin, 0o755)?;
    let generated = |args: &[&str]| output(Command::new(&bin).args(args));

    let man = root.join("usr/share/man/man1/sg-agent.1");
    write(&man, &generated(&["man"])?, 0o644)?;
    run(Command::new("gzip").args(["-9n"]).arg(&man))?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/sg-agent"),
        ("zsh", "usr/share/zsh/vendor-completions/_sg-agent"),
        ("fish", "usr/share/fish/vendor_completions.d/sg-agent.fish"),
    ] {
        write(
            &root.join(path),
            &generated(&["completions", shell])?,
            0o644,
        )?;
    }

    // The unit as written for a hand install (docs/agent.md), pointed at the package's paths.
    let unit = fs::read_to_string("dist/sg-agent.service")?
        .replace("/usr/local/bin/sg-agent", "/usr/bin/sg-agent")
        .replace("file:///usr/share/doc/sg/", &format!("file:///{DOC}/"));
    write(&root.join(UNIT), &unit, 0o644)?;
    write(
        &root.join(POLICY),
        &fs::read_to_string("dist/policy.yaml")?,
        0o644,
    )?;
    for doc in ["agent.md", "policy-format.md", "SEMANTICS.md"] {
        let text = fs::read_to_string(Path::new("docs").join(doc))?;
        write(&root.join(DOC).join(doc), &text, 0o644)?;
    }
    // The build's date, from the last commit (the same tree packs the same changelog).
    let date = output(Command::new("git").args(["log", "-1", "--format=%cD"]))?;
    let year = date.split_whitespace().nth(3).unwrap_or("2026").to_string();
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: sg\n\nFiles: *\nCopyright: {year} {MAINTAINER}\n\
         License: MIT or Apache-2.0\n"
    );
    write(&root.join(DOC).join("copyright"), &copyright, 0o644)?;
    // A native package's changelog, in Debian's format.
    let changelog = root.join(DOC).join("changelog");
    let entry = format!(
        "sg-agent ({VERSION}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask dist`.\n\n -- {MAINTAINER}  {}\n",
        date.trim()
    );
    write(&changelog, &entry, 0o644)?;
    run(Command::new("gzip").args(["-9n"]).arg(&changelog))
}

/// DEBIAN/: control, conffiles and the maintainer scripts.
fn debian_dir(root: &Path, arch: &str) -> Result<()> {
    let size_kib = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(root),
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_string();
    let control = format!(
        "Package: sg-agent\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: EC2 security groups on a Linux host, enforced with eBPF\n \
         sg-agent validates a policy of AWS EC2 security groups (native YAML,\n \
         CloudFormation, describe-security-groups JSON) and enforces it with eBPF\n \
         programs on the host's interfaces, statefully, as EC2 does. The service is\n \
         installed but neither enabled nor started: edit /etc/sg/policy.yaml first.\n"
    );
    let d = root.join("DEBIAN");
    write(&d.join("control"), &control, 0o644)?;
    write(&d.join("conffiles"), &format!("/{POLICY}\n"), 0o644)?;
    write(&d.join("postinst"), POSTINST, 0o755)?;
    write(&d.join("prerm"), PRERM, 0o755)?;
    write(&d.join("postrm"), POSTRM, 0o755)
}

/// Never `enable` or `start`: only make systemd see the (new) unit file.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ \"$1\" = configure ] && [ -z \"$2\" ]; then
    echo 'sg-agent: installed, not started. Edit /etc/sg/policy.yaml, check it with' >&2
    echo '  sg-agent check /etc/sg/policy.yaml && sg-agent lint /etc/sg/policy.yaml' >&2
    echo 'then: systemctl enable --now sg-agent' >&2
fi
exit 0
";

/// On removal the daemon stops (its binary goes), but enforcement stays pinned: say how to
/// end it. An upgrade leaves the running daemon alone (restart it to run the new binary).
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
    if [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke stop sg-agent.service >/dev/null 2>&1 || true
    fi
    if [ -d /sys/fs/bpf/sg ] && [ -n \"$(ls -A /sys/fs/bpf/sg 2>/dev/null)\" ]; then
        echo 'sg-agent: enforcement stays in place after removal (programs pinned under' >&2
        echo '/sys/fs/bpf/sg); run `sg-agent detach` in each namespace before removing to end it.' >&2
    fi
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
";

fn chmod_dirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chmod_dirs(&e.path())?;
        }
    }
    Ok(())
}

fn mkdir_for(path: &Path) -> Result<()> {
    let dir = path.parent().context("a file in a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    mkdir_for(path)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
