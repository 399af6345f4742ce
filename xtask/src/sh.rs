//! Running external commands the way every xtask step does: echoed with `+` before they run,
//! failing with the command line and its status. It knows nothing about toolchains or cargo;
//! everything else in xtask builds on it.

use std::process::Command;

use anyhow::{Context, Result, bail};

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

/// Whether a command exits successfully, run quietly (a probe: "is X installed?").
pub fn succeeds(c: &mut Command) -> bool {
    c.output().is_ok_and(|o| o.status.success())
}

/// Whether xtask runs as root.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// `program` run as root: directly when xtask is root, else through `sudo`.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
