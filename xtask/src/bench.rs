//! `cargo xtask bench [--quick] [-- ARGS]`: builds `sg-bench` and `sg-agent` (the fleet
//! section runs the real agent binary beside sg-bench) in release with the host cargo and
//! runs it (as root: it creates namespaces and loads BPF programs). It writes
//! target/bench/{results.json, results.md, cost.svg}; after a full run (not `--quick`, no
//! extra arguments) it also puts results.md into docs/performance.md between the
//! `bench:begin` / `bench:end` markers, so the documented table is always the last full run.
//!
//! What is measured and how: xtask/bench (package sg-bench).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bootstrap::{Toolchain, apt_install};
use crate::cmd::host_cargo;
use crate::sh::{self, is_root};

const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`; do not edit) -->";
const END: &str = "<!-- bench:end -->";

/// Builds and runs sg-bench; `quick` and `args` are its arguments.
pub fn run(tc: &Toolchain, quick: bool, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask bench needs root (network namespaces, BPF programs); run it as root, \
             e.g. `sudo -E cargo xtask bench`"
        );
    }
    ensure_trafgen();
    let mut c = host_cargo(tc);
    c.args([
        "build",
        "--release",
        "--package",
        "sg-bench",
        "--package",
        "sg-agent",
    ]);
    sh::run(&mut c)?;
    let mut b = Command::new("target/release/sg-bench");
    if quick {
        b.arg("--quick");
    }
    b.args(args);
    sh::run(&mut b)?;
    if !quick && args.is_empty() {
        let md = std::fs::read_to_string("target/bench/results.md")
            .context("reading target/bench/results.md")?;
        update_doc(Path::new("docs/performance.md"), &md)?;
        eprintln!("==> docs/performance.md updated with this run's tables");
    }
    Ok(())
}

/// trafgen (netsniff-ng) is one of the generators the bench measures; without it the bench
/// still runs and says so in its notes.
fn ensure_trafgen() {
    if sh::succeeds(Command::new("sh").args(["-c", "command -v trafgen"])) {
        return;
    }
    if let Err(e) = apt_install(&["netsniff-ng"]) {
        eprintln!(
            "warning: could not install netsniff-ng ({e:#}); the bench measures without trafgen"
        );
    }
}

/// Replaces the text between the markers (appends the block when they are missing).
fn update_doc(path: &Path, table: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{}\n{END}", table.trim_end());
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_doc_replaces_only_the_marked_block_and_appends_it_when_missing() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("perf.md");
        std::fs::write(&p, "# Perf\n\nintro\n").unwrap();
        update_doc(&p, "| a |\n").unwrap();
        let once = std::fs::read_to_string(&p).unwrap();
        assert_eq!(once, format!("# Perf\n\nintro\n{BEGIN}\n| a |\n{END}\n"));
        std::fs::write(&p, format!("{once}\n## After\n")).unwrap();
        update_doc(&p, "| b |").unwrap();
        let twice = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            twice,
            format!("# Perf\n\nintro\n{BEGIN}\n| b |\n{END}\n\n## After\n")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
