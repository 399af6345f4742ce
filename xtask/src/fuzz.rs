//! `cargo xtask fuzz`: the long fuzz runs behind the short versions the test suite runs.
//!
//! ```text
//! cargo xtask fuzz -- packets [--frames N] [--seconds S] [--seed X] [--episode E]
//!     hostile frames through the real programs vs the reference model: the ignored test
//!     hardening_packet_fuzz::packet_fuzz_long with SG_FUZZ_* set (root: BPF, netns)
//! cargo xtask fuzz -- config [--seconds S] [--targets a,b]
//!     cargo-fuzz (libFuzzer + ASan) on the policy parsers and the compiler, S seconds per
//!     target, seeded from examples/; crashes land in fuzz/artifacts/<target>/
//! cargo xtask fuzz [-- all [--seconds S]]
//!     both, S seconds each (default 300)
//! ```
//!
//! cargo-fuzz needs unstable rustc flags (-Zsanitizer=address); rustup's stable toolchain
//! takes them with RUSTC_BOOTSTRAP=1, so no nightly is needed. cargo-fuzz itself is
//! installed from crates.io when missing. It owns only orchestration: the fuzzers live in
//! sg-testkit (`random::fuzz`), the packet test in sg-systest and the cargo-fuzz targets in
//! fuzz/.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::bootstrap::Toolchain;
use crate::{cmd, sh};

#[derive(Parser)]
#[command(name = "cargo xtask fuzz --", about = "Long fuzz runs")]
struct Args {
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(Subcommand)]
enum What {
    /// Packets through the real programs (BPF_PROG_TEST_RUN) against the reference model.
    Packets {
        /// Stop after this many frames (each runs through XDP in, TC in and TC out).
        #[arg(long, default_value_t = 2_000_000)]
        frames: u64,
        /// ... or after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Seed (decimal or 0x hex); episodes are replayable from (seed, episode).
        #[arg(long)]
        seed: Option<String>,
        /// Replay one episode of a failure report.
        #[arg(long)]
        episode: Option<u64>,
    },
    /// cargo-fuzz targets for the policy parsers and the compiler.
    Config {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Targets (comma separated); default: all.
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
    },
    /// Both, `seconds` each.
    All {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

/// The cargo-fuzz targets (fuzz/fuzz_targets/*.rs).
const TARGETS: [&str; 4] = ["config_yaml", "config_cfn", "config_describe", "compile"];

pub fn run(tc: &Toolchain, args: &[String]) -> Result<()> {
    let a = Args::try_parse_from(
        std::iter::once("cargo xtask fuzz --".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    match a.what.unwrap_or(What::All { seconds: 300 }) {
        What::Packets {
            frames,
            seconds,
            seed,
            episode,
        } => packets(tc, frames, seconds, seed.as_deref(), episode),
        What::Config { seconds, targets } => config(tc, seconds, &targets),
        What::All { seconds } => {
            packets(tc, u64::MAX, seconds, None, None)?;
            config(tc, seconds, &[])
        }
    }
}

fn packets(
    tc: &Toolchain,
    frames: u64,
    seconds: u64,
    seed: Option<&str>,
    episode: Option<u64>,
) -> Result<()> {
    let mut c = cmd::host_cargo(tc);
    // Release: the oracle (parser, model) is a good part of each frame's cost in debug.
    c.args([
        "test",
        "--release",
        "-p",
        "sg-systest",
        "--test",
        "hardening_packet_fuzz",
        "--",
    ])
    .args(["--ignored", "--exact", "packet_fuzz_long", "--nocapture"])
    .env("SG_FUZZ_FRAMES", frames.to_string())
    .env("SG_FUZZ_SECONDS", seconds.to_string());
    if let Some(s) = seed {
        c.env("SG_FUZZ_SEED", s);
    }
    if let Some(e) = episode {
        c.env("SG_FUZZ_EPISODE", e.to_string());
    }
    eprintln!(
        "packet fuzz: up to {frames} frames or {seconds} s (needs root: BPF and network namespaces)"
    );
    sh::run(&mut c)
}

fn config(tc: &Toolchain, seconds: u64, targets: &[String]) -> Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t}; targets: {}", TARGETS.join(", "));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz(tc)?;
    let root = crate::workspace_root();
    for t in &targets {
        let seeds = write_seeds(&root, t)?;
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let artifacts = root.join("fuzz/artifacts").join(t);
        std::fs::create_dir_all(&artifacts)?;
        let mut c = fuzz_cargo(tc);
        c.args(["fuzz", "run", "-O", t])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A hang is an input taking more than 10 s; memory beyond 2 GiB is a failure.
            .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=1048576"])
            .arg(format!("-dict={}", root.join("fuzz/policy.dict").display()))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1");
        eprintln!("config fuzz: {t} for {seconds} s");
        sh::run(&mut c).with_context(|| {
            format!(
                "fuzz target {t} found a failure: see {} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -O {t} <artifact>)",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}

/// Host cargo with unstable flags allowed (cargo-fuzz passes -Zsanitizer=address).
fn fuzz_cargo(tc: &Toolchain) -> Command {
    let mut c = cmd::host_cargo(tc);
    c.env("RUSTC_BOOTSTRAP", "1");
    c
}

fn ensure_cargo_fuzz(tc: &Toolchain) -> Result<()> {
    if sh::succeeds(fuzz_cargo(tc).args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz from crates.io (cargo install cargo-fuzz --locked)");
    let mut c = cmd::host_cargo(tc);
    c.args(["install", "cargo-fuzz", "--locked"]);
    sh::run(&mut c)
}

/// Seeds for `target` from examples/, shaped like the target reads its input, in
/// fuzz/seeds/<target>/ (regenerated every run, so they follow the examples).
fn write_seeds(root: &Path, target: &str) -> Result<PathBuf> {
    let dir = root.join("fuzz/seeds").join(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    for e in std::fs::read_dir(root.join("examples"))? {
        let path = e?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let seed = match target {
            "config_cfn" if name.contains(".cfn.") => Some(
                text.lines()
                    .filter(|l| !l.starts_with("AWSTemplateFormatVersion"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            "config_describe" if name.ends_with(".json") => security_groups_array(&text),
            "config_yaml" | "compile" => Some(text),
            _ => None,
        };
        if let Some(s) = seed {
            std::fs::write(dir.join(&name), s)?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("no seed in examples/ for fuzz target {target}");
    }
    Ok(dir)
}

/// The text of the `SecurityGroups` array in describe-security-groups JSON (brackets matched
/// outside strings).
fn security_groups_array(json: &str) -> Option<String> {
    let start = json.find("\"SecurityGroups\"")?;
    let open = start + json[start..].find('[')?;
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    for (i, ch) in json[open..].char_indices() {
        match (in_str, esc, ch) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (false, _, '"') => in_str = true,
            (false, _, '[') => depth += 1,
            (false, _, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(json[open..open + i + 1].to_string());
                }
            }
            _ => {}
        }
    }
    None
}
