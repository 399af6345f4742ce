//! The `sg-agent` binary: parses the command line, runs the command from the library, prints
//! the whole error chain and maps errors to the documented exit codes:
//! 0 success, 1 runtime error, 2 invalid input or usage (nothing was changed).
//! docs/agent.md is the reference of every command.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sg_agent::cli::{self, Globals};

#[derive(Parser)]
#[command(
    name = "sg-agent",
    about = "EC2 security groups on a Linux host, enforced with eBPF",
    after_help = "Exit codes: 0 success, 1 runtime error, 2 invalid input or usage (nothing changed).\n\
                  Policy format: docs/policy-format.md. Behaviour: docs/SEMANTICS.md."
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// State directory (pins under DIR/pins on bpffs, state under DIR/run). Default: one per
    /// network namespace, /sys/fs/bpf/sg/netns-<inode> and /run/sg/netns-<inode>.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Size of a map this agent creates, e.g. `ct=1048576` (conntrack entries, C6). Maps
    /// already pinned keep their size until `sg-agent detach`. Names: ifaces, peers, ports,
    /// ct, ct_new, frags, rule_slots, events_bytes. Repeatable.
    #[arg(long = "capacity", global = true, value_name = "NAME=N")]
    capacities: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a policy file and summarise what was understood (changes nothing).
    #[command(after_help = "Example:\n  sg-agent check examples/ec2-lab.yaml")]
    Check { file: PathBuf },
    /// Validate, compile, load and attach if needed, and swap the policy in atomically.
    #[command(after_help = "Examples:\n  sg-agent apply examples/ec2-lab.yaml\n  \
                            sg-agent apply --dry-run examples/ec2-lab.cfn.yaml\n  \
                            sg-agent apply --ingress-hook tc rules.yaml")]
    Apply {
        file: PathBuf,
        /// Print what would change and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Ingress hook for newly attached interfaces: xdp (native, falls back to SKB mode),
        /// xdp-skb, or tc.
        #[arg(long, value_name = "HOOK", default_value = "xdp")]
        ingress_hook: String,
    },
    /// Interfaces, programs and modes, groups per interface, generation, conntrack fill.
    Status,
    /// Per-rule packets/bytes and pass/drop reasons.
    #[command(after_help = "Examples:\n  sg-agent counters\n  sg-agent counters --watch 2")]
    Counters {
        /// Refresh every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Show or flush tracked flows.
    Conntrack {
        #[command(subcommand)]
        action: Option<ConntrackCmd>,
    },
    /// Why is (or isn't) this packet allowed? Asks the reference model AND the real program.
    #[command(
        after_help = "Examples:\n  sg-agent explain --in --proto tcp --peer 198.51.100.10 --port 22\n  \
                            sg-agent explain --out --proto icmp --peer 192.0.2.21 --icmp 8/0 --iface eth0"
    )]
    Explain {
        /// Inbound packet (the peer is the source).
        #[arg(long = "in", conflicts_with = "outbound")]
        inbound: bool,
        /// Outbound packet (the peer is the destination).
        #[arg(long = "out")]
        outbound: bool,
        /// tcp, udp, icmp, icmpv6, or a protocol number.
        #[arg(long)]
        proto: String,
        /// The remote address.
        #[arg(long)]
        peer: std::net::IpAddr,
        /// Destination port (tcp/udp).
        #[arg(long)]
        port: Option<u16>,
        /// ICMP TYPE/CODE, e.g. 8/0.
        #[arg(long, value_name = "TYPE/CODE")]
        icmp: Option<String>,
        /// The local device (default: the only attached one).
        #[arg(long)]
        iface: Option<String>,
        /// The local address (default: the interface's first address of the peer's family).
        #[arg(long)]
        local: Option<std::net::IpAddr>,
    },
    /// Remove programs, links, maps and pins of this namespace (enforcement stops).
    Detach,
    /// Apply, then stay: reload on SIGHUP and file change, metrics, flow logs.
    #[command(
        after_help = "Example:\n  sg-agent daemon --config /etc/sg/policy.yaml --metrics 127.0.0.1:9617 --flow-log -"
    )]
    Daemon {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Serve Prometheus metrics on this address (loopback by default).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9617")]
        metrics: String,
        /// Write VPC-Flow-Log-style lines to FILE ("-" for stdout).
        #[arg(long, value_name = "FILE")]
        flow_log: Option<String>,
        #[arg(long, value_name = "HOOK", default_value = "xdp")]
        ingress_hook: String,
        /// Seconds between checks of the policy file for changes (and of the pins).
        #[arg(long, default_value = "1")]
        poll: u64,
        /// Seconds between flow log flushes (ACCEPT lines cover this interval).
        #[arg(long, value_name = "SECONDS", default_value = "10")]
        flow_log_interval: u64,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

#[derive(Subcommand)]
enum ConntrackCmd {
    /// List tracked flows (default).
    List,
    /// Delete every tracked flow (established connections then need a rule again).
    Flush,
}

fn main() -> ExitCode {
    // Pins, state and flow logs are root-only whatever the caller's umask.
    // SAFETY: plain syscall.
    unsafe { libc::umask(0o077) };
    let version: &'static str = Box::leak(sg_agent::version_string().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = sg_agent::state::join_host_mount_namespace() {
        eprintln!("error: {e:#}");
        return ExitCode::from(1);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if !matches!(cli.cmd, Cmd::Daemon { .. }) {
        // `sg-agent counters | head` ends quietly; the daemon keeps ignoring SIGPIPE (a closed
        // flow log pipe is an error it reports, not a reason to die).
        // SAFETY: plain syscall, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let g = Globals {
        json: cli.json,
        state_dir: cli.state_dir,
        capacities: cli.capacities,
    };
    let result = match cli.cmd {
        Cmd::Check { file } => cli::check(&g, &file),
        Cmd::Apply {
            file,
            dry_run,
            ingress_hook,
        } => cli::apply(&g, &file, dry_run, &ingress_hook),
        Cmd::Status => cli::status(&g),
        Cmd::Counters { watch } => cli::counters(&g, watch),
        Cmd::Conntrack { action } => match action {
            None | Some(ConntrackCmd::List) => cli::conntrack_list(&g),
            Some(ConntrackCmd::Flush) => cli::conntrack_flush(&g),
        },
        Cmd::Explain {
            inbound,
            outbound,
            proto,
            peer,
            port,
            icmp,
            iface,
            local,
        } => {
            if inbound == outbound {
                Err(cli::usage("say --in or --out"))
            } else {
                let q = cli::ExplainQuery {
                    inbound,
                    proto,
                    peer,
                    port,
                    icmp,
                    iface,
                    local,
                };
                cli::explain(&g, &q)
            }
        }
        Cmd::Detach => cli::detach(&g),
        Cmd::Daemon {
            config,
            metrics,
            flow_log,
            ingress_hook,
            poll,
            flow_log_interval,
        } => {
            let opts = cli::DaemonOptions {
                config,
                metrics,
                flow_log,
                ingress_hook,
                poll,
                flow_log_interval,
            };
            cli::daemon(&g, opts)
        }
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command().version(version);
            clap_complete::generate(shell, &mut cmd, "sg-agent", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            let cmd = Cli::command().version(version);
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = sg_agent::error::kind(&e);
            if kind == sg_agent::error::Kind::Invalid {
                // Located input errors read best as they are, without the context chain.
                eprintln!(
                    "{}",
                    sg_agent::error::find(&e).map_or_else(|| format!("{e:#}"), ToString::to_string)
                );
                eprintln!("nothing was changed");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(kind.exit_code())
        }
    }
}
