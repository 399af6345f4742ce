//! `sg-bench`: what `cargo xtask bench` runs (as root). Measures sg against no filter and
//! nftables and writes target/bench/{results.json, results.md, cost.svg}. See
//! `sg_bench` for what is measured and how.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sg_bench::{self as bench, Options};

#[derive(Parser)]
#[command(
    name = "sg-bench",
    about = "Benchmarks sg against no filter and nftables"
)]
struct Cli {
    /// A short run (a few minutes): fewer sizes, repeats and seconds.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these sections (repeatable): generators, kernel, throughput, connrate,
    /// control, nacl, fleet.
    #[arg(long)]
    only: Vec<String>,
    /// Agents of the fleet section (default 100; --quick 20), each in its own namespace.
    #[arg(long)]
    fleet_agents: Option<usize>,
    /// Changes of each kind (membership, rule, API rule) the fleet section makes (default 5; --quick 3).
    #[arg(long)]
    fleet_changes: Option<usize>,
    /// Rule counts for the in-kernel cost (comma separated).
    #[arg(long, value_delimiter = ',')]
    kernel_rules: Option<Vec<usize>>,
    /// Rule counts for the throughput figures (comma separated).
    #[arg(long, value_delimiter = ',')]
    veth_rules: Option<Vec<usize>>,
    /// Counting window of one UDP flood, milliseconds.
    #[arg(long)]
    window_ms: Option<u64>,
    /// Alternating rounds per throughput figure.
    #[arg(long)]
    rounds: Option<usize>,
    /// BPF_PROG_TEST_RUN repeat per figure.
    #[arg(long)]
    repeat: Option<u32>,
    /// Use this UDP generator instead of the fastest measured: xdp_live_frames, trafgen,
    /// sendmmsg, iperf3_udp.
    #[arg(long)]
    generator: Option<String>,
    /// With --generator: give the receiver's veth processing its own CPU.
    #[arg(long)]
    receiver_own_cpu: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut o = if cli.quick {
        Options::quick()
    } else {
        Options::full()
    };
    o.out = cli.out;
    o.only = cli.only;
    if let Some(v) = cli.kernel_rules {
        o.kernel_rules = v;
    }
    if let Some(v) = cli.veth_rules {
        o.veth_rules = v;
    }
    if let Some(ms) = cli.window_ms {
        o.window = Duration::from_millis(ms);
    }
    if let Some(n) = cli.fleet_agents {
        o.fleet_agents = n;
    }
    if let Some(n) = cli.fleet_changes {
        o.fleet_changes = n;
    }
    if let Some(n) = cli.rounds {
        o.rounds = n;
    }
    if let Some(n) = cli.repeat {
        o.repeat = n;
    }
    if let Some(name) = &cli.generator {
        let Some(g) = bench::veth::Generator::ALL
            .into_iter()
            .find(|g| g.name() == name)
        else {
            eprintln!("sg-bench: unknown generator {name}");
            return ExitCode::FAILURE;
        };
        o.generator = Some((g, cli.receiver_own_cpu));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    o.command = if args.is_empty() {
        "cargo xtask bench".into()
    } else {
        format!("cargo xtask bench -- {}", args.join(" "))
    };
    match bench::run(&o) {
        Ok(r) => {
            eprintln!(
                "sg-bench: done in {:.0} s; results in {}",
                r.duration_s,
                o.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sg-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
