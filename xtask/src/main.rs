//! `cargo xtask`: sg's orchestration. Every command bootstraps the toolchain first (installing
//! only what is missing, and saying what it installs), then does plainly what a developer
//! would type by hand: build the eBPF object with Debian's rustc, build the agent, lint, run
//! tests.
//!
//! It does not hide how things work: each command it runs is echoed with `+`.
//!
//! ```text
//! main.rs       the commands
//! sh.rs         running a command (echoed), root or sudo
//! bootstrap.rs  the toolchain: checks, installs (apt, bpf-linker), `Toolchain`
//! cmd.rs        build, lint and test steps: which cargo, compiler and environment
//! dist.rs       the .deb and the tarball
//! fuzz.rs, lab.rs, bench.rs   one command each
//! ```

mod bench;
mod bootstrap;
mod cmd;
mod dist;
mod fuzz;
mod lab;
mod sh;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, lab and bench orchestration for sg"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian's rustc-web + prebuilt BPF core + its clippy, LLVM,
    /// bpf-linker, and the tools the tests use (iproute2, ping, nftables, curl, ssh, socat, ...).
    Bootstrap,
    /// Build the eBPF object (target/bpf) and the agent.
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
    /// The lint gate: rustfmt --check, and clippy with -D warnings on every target of every
    /// package (sg-ebpf also for the BPF target).
    Lint,
    /// Package sg-agent: a .deb and a .tar.gz in target/dist (the stripped release binary
    /// with the eBPF object embedded, man page, completions, systemd unit, an example
    /// /etc/sg/policy.yaml). The package never starts the service.
    Dist,
    /// Run the lint gate, then the whole test suite, privileged tests included (needs root).
    ///
    /// The lint runs first so that the README's one test command (and CI, which runs it)
    /// covers formatting and clippy too; a lint failure stops before the suite starts.
    Test {
        /// Skip the lint gate (while iterating on a test).
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Long fuzz runs: packets through the real programs vs the reference model, and the
    /// policy parsers (cargo-fuzz). The test suite runs a short version of each.
    Fuzz {
        /// Extra arguments (see `cargo xtask fuzz -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job: an EC2 lab in network namespaces (the groups made with the aws CLI through
    /// sg-agent api on an etcd store, each instance's agent a daemon following it; real servers
    /// and clients), a table of every path, counters. Needs root.
    Lab {
        /// The file-driven lab: every instance applies examples/ec2-lab.yaml (no store, no API).
        #[arg(long)]
        file: bool,
        /// Leave the file-driven lab up to explore (it prints how; implies --file);
        /// `cargo xtask lab -- --down` removes it.
        #[arg(long)]
        keep: bool,
        /// Use the CloudFormation twin of the policy (examples/ec2-lab.cfn.yaml; implies --file).
        #[arg(long)]
        cfn: bool,
        /// Extra arguments passed to sg-lab (see `cargo xtask lab -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure sg: in-kernel cost per packet, veth throughput against no filter and
    /// nftables, control-plane timings. Writes target/bench/.
    Bench {
        /// A short run (fewer repeats and sizes).
        #[arg(long)]
        quick: bool,
        /// Extra arguments passed to sg-bench.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Bootstrap => {
            bootstrap::ensure()?;
        }
        Cmd::Build { release } => {
            let tc = bootstrap::ensure()?;
            cmd::build_ebpf(&tc)?;
            cmd::build_agent(&tc, release)?;
        }
        Cmd::Dist => {
            let tc = bootstrap::ensure()?;
            bootstrap::apt_install(bootstrap::DIST_PACKAGES)?;
            dist::run_dist(&tc)?;
        }
        Cmd::Lint => {
            let tc = bootstrap::ensure()?;
            cmd::build_ebpf(&tc)?;
            cmd::lint(&tc)?;
        }
        Cmd::Test { no_lint, args } => {
            let tc = bootstrap::ensure()?;
            cmd::build_ebpf(&tc)?;
            if !no_lint {
                cmd::lint(&tc)?;
            }
            cmd::test(&tc, &args)?;
        }
        Cmd::Fuzz { args } => {
            let tc = bootstrap::ensure()?;
            cmd::build_ebpf(&tc)?;
            fuzz::run(&tc, &args)?;
        }
        Cmd::Lab {
            file,
            keep,
            cfn,
            args,
        } => {
            let tc = bootstrap::ensure()?;
            lab::run_lab(&tc, file || keep, keep, cfn, &args)?;
        }
        Cmd::Bench { quick, args } => {
            let tc = bootstrap::ensure()?;
            cmd::build_ebpf(&tc)?;
            bench::run(&tc, quick, &args)?;
        }
    }
    Ok(())
}

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}
