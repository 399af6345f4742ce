//! The `sg-agent` command line: the clap definition (typed arguments, parsed before anything
//! runs), the options every command shares ([`Globals`]) and the dispatch to one module per
//! verb. Each verb does its work through the library's layers (mostly [`Agent`]) and prints
//! text or JSON: the library below prints nothing. Errors that mean "your input is wrong"
//! are [`Error::InvalidInput`] (exit code 2, nothing changed); clap's own usage errors exit
//! 2 as well; everything else is a runtime error (exit 1). docs/agent.md is the reference.

mod api;
mod apply;
mod audit;
mod check;
mod confirm;
mod conntrack;
mod counters;
mod daemon;
mod detach;
mod docs;
mod explain;
mod lint;
mod status;
mod store;
mod template;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::agent::{Agent, OpenOptions};
use crate::config;
use crate::dataplane::{Capacities, CapacitySpec, HookPlan, HookSpec};
use crate::error::Error;

#[derive(Parser)]
#[command(
    name = "sg-agent",
    about = "EC2 security groups on a Linux host, enforced with eBPF",
    after_help = "Exit codes: 0 success, 1 runtime error, 2 invalid input or usage (nothing changed).\n\
                  Policy format: docs/policy-format.md. Behaviour: docs/SEMANTICS.md."
)]
pub struct Cli {
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
    capacities: Vec<CapacitySpec>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a policy file and summarise what was understood (changes nothing).
    #[command(after_help = "Example:\n  sg-agent check examples/ec2-lab.yaml")]
    Check(check::Args),
    /// Check a policy file (or, without FILE, the enforced policy) against best practices:
    /// findings SG001.. with a severity and the rule's location.
    #[command(
        after_help = "Examples:\n  sg-agent lint examples/seed-web-db.yaml\n  \
                            sg-agent lint --fail-on warning --json rules.yaml\n  \
                            sg-agent lint                (the enforced policy, with counters)"
    )]
    Lint(lint::Args),
    /// Validate, compile, load and attach if needed, and swap the policy in atomically.
    #[command(after_help = "Examples:\n  sg-agent apply examples/ec2-lab.yaml\n  \
                            sg-agent apply --dry-run examples/ec2-lab.cfn.yaml\n  \
                            sg-agent apply --ingress-hook tc rules.yaml\n  \
                            sg-agent apply --ingress-hook eth0=xdp rules.yaml\n  \
                            sg-agent apply --confirm 2m rules.yaml")]
    Apply(apply::Args),
    /// Keep the change an `apply --confirm` made (or, with --rollback, go back now).
    #[command(after_help = "Examples:\n  sg-agent apply --confirm 2m rules.yaml\n  \
                            sg-agent confirm            (from a NEW ssh session)\n  \
                            sg-agent confirm --rollback")]
    Confirm(confirm::Args),
    /// The timer of an `apply --confirm` when no daemon runs (started by apply).
    #[command(hide = true)]
    ConfirmWatchdog(confirm::WatchdogArgs),
    /// Interfaces, programs and modes, groups per interface, generation, conntrack fill.
    Status,
    /// Per-rule packets/bytes and pass/drop reasons.
    #[command(after_help = "Examples:\n  sg-agent counters\n  sg-agent counters --watch 2")]
    Counters(counters::Args),
    /// Show or flush tracked flows.
    Conntrack(conntrack::Args),
    /// Why is (or isn't) this packet allowed? Asks the reference model AND the real program.
    #[command(
        after_help = "Examples:\n  sg-agent explain --in --proto tcp --peer 198.51.100.10 --port 22\n  \
                            sg-agent explain --out --proto icmp --peer 192.0.2.21 --icmp 8/0 --iface eth0"
    )]
    Explain(explain::Args),
    /// Audit mode (L3): pass what the policy would drop, and report it; `off` ends it and the
    /// flows it admitted. Global, or for one device (`audit on DEV`).
    #[command(
        after_help = "Examples:\n  sg-agent audit on\n  sg-agent counters   # audit_would_drop_*\n  sg-agent audit off\n  sg-agent audit on eth1\n  sg-agent audit off eth1   # ends the flows audit admitted on eth1\n  sg-agent audit status"
    )]
    Audit(audit::Args),
    /// Remove programs, links, maps and pins of this namespace (enforcement stops).
    Detach,
    /// Apply, then stay: reload on SIGHUP and file change, metrics, flow logs.
    #[command(
        after_help = "Example:\n  sg-agent daemon --config /etc/sg/policy.yaml --metrics 127.0.0.1:9617 --flow-log -"
    )]
    Daemon(daemon::Args),
    /// The fleet's store (etcd): import a policy, export it, the hosts' status.
    #[command(
        after_help = "Examples:\n  sg-agent store --store etcd://192.0.2.1:2379 import examples/ec2-lab.yaml\n  \
                            sg-agent store --store etcd://192.0.2.1:2379 status"
    )]
    Store(store::Args),
    /// Serve the EC2 Query API (aws CLI, boto3) on this host's policy file or the fleet's store.
    #[command(
        after_help = "Examples:\n  sg-agent api --credentials /etc/sg/api-keys    # the file of `sg-agent daemon --config /etc/sg/policy.yaml`\n  \
                      sg-agent api --store etcd://127.0.0.1:2379 --credentials /etc/sg/api-keys"
    )]
    Api(api::Args),
    /// Does this namespace enforce what a policy file (or the store) says? Compares the live
    /// maps with a fresh compile, by meaning.
    #[command(after_help = "Examples:\n  sg-agent verify examples/ec2-lab.yaml\n  \
                            sg-agent verify --store etcd://192.0.2.1:2379")]
    Verify(verify::Args),
    /// Print shell completions.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

/// `--ingress-hook HOOK` or `DEV=HOOK`, repeatable: how each device judges its inbound
/// packets. The help text is shared by `apply` and `daemon`.
#[derive(clap::Args)]
pub struct HookArgs {
    /// Ingress hook: auto (default: TC on veth, virtio_net and other virtual devices, where
    /// native XDP turns off GRO/TSO; native XDP on physical NIC drivers), xdp (native,
    /// falling back to SKB mode), xdp-skb, or tc. HOOK sets it for devices attached for the
    /// first time; DEV=HOOK forces it on one device, also one attached before. Repeatable.
    #[arg(long = "ingress-hook", value_name = "[DEV=]HOOK")]
    pub(super) ingress_hook: Vec<HookSpec>,
}

impl HookArgs {
    pub fn plan(&self) -> HookPlan {
        HookPlan::from_specs(&self.ingress_hook)
    }
}

/// Options every command shares.
pub struct Globals {
    pub json: bool,
    pub state_dir: Option<PathBuf>,
    /// `--capacity NAME=N` over the defaults: sizes of maps this agent creates (pinned maps
    /// keep theirs).
    pub capacities: Capacities,
}

impl Cli {
    /// Parses the process's arguments; a usage error exits 2 with clap's message.
    pub fn parse_args() -> Cli {
        let matches = command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The daemon keeps running when a pipe it writes to closes (it reports the error);
    /// the other commands end quietly (`sg-agent counters | head`).
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Daemon(_))
    }

    /// Runs the command.
    pub fn run(self) -> Result<()> {
        let g = Globals {
            json: self.json,
            state_dir: self.state_dir,
            capacities: Capacities::with_specs(&self.capacities),
        };
        match self.cmd {
            Cmd::Check(a) => check::run(&g, &a),
            Cmd::Lint(a) => lint::run(&g, &a),
            Cmd::Apply(a) => apply::run(&g, &a),
            Cmd::Confirm(a) => confirm::run(&g, &a),
            Cmd::ConfirmWatchdog(a) => confirm::watchdog(&g, &a),
            Cmd::Status => status::run(&g),
            Cmd::Counters(a) => counters::run(&g, &a),
            Cmd::Conntrack(a) => conntrack::run(&g, &a),
            Cmd::Explain(a) => explain::run(&g, a),
            Cmd::Audit(a) => audit::run(&g, &a),
            Cmd::Detach => detach::run(&g),
            Cmd::Daemon(a) => daemon::run(&g, a),
            Cmd::Store(a) => store::run(&g, &a),
            Cmd::Api(a) => api::run(&g, &a),
            Cmd::Verify(a) => verify::run(&g, &a),
            Cmd::Completions(a) => docs::completions(&a),
            Cmd::Man => docs::man(),
        }
    }
}

/// The clap command with the version (crate and ABI) filled in.
pub fn command() -> clap::Command {
    static VERSION: OnceLock<String> = OnceLock::new();
    Cli::command().version(VERSION.get_or_init(crate::version_string).as_str())
}

impl Globals {
    fn open_options(&self) -> OpenOptions {
        OpenOptions {
            state_dir: self.state_dir.clone(),
            capacities: self.capacities,
            stop_if_detached: false,
        }
    }
}

/// Opens the namespace's agent with the global options; its warnings go to stderr. A
/// `--confirm` apply past its deadline is reverted first (L1: its timer may have died with
/// a crash or a reboot; this start is the next chance).
pub fn open_agent(g: &Globals) -> Result<Agent> {
    let mut a = Agent::open(g.open_options())?;
    for w in a.warnings() {
        eprintln!("warning: {w}");
    }
    match a.revert_if_overdue() {
        Ok(Some(r)) => eprintln!(
            "warning: the apply of {} was not confirmed in time: reverted to {} (generation {})",
            r.undone.source, r.undone.previous.source, r.outcome.generation
        ),
        Ok(None) => {}
        // The command itself may still be useful (status, detach's way out is separate).
        Err(e) => eprintln!("warning: reverting an unconfirmed apply past its deadline: {e:#}"),
    }
    Ok(a)
}

/// Loads and validates a policy file; warnings go to stderr.
pub fn load_policy(file: &Path) -> Result<config::Loaded> {
    load_policy_with(file, &config::TemplateInputs::default())
}

/// [`load_policy`], a CloudFormation template evaluated with `inputs`.
pub fn load_policy_with(file: &Path, inputs: &config::TemplateInputs) -> Result<config::Loaded> {
    match config::load_file_with(file, inputs) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{w}");
            }
            Ok(l)
        }
        Err(d) => Err(Error::InvalidInput(d.to_string()).into()),
    }
}

/// A rule's description as the text output quotes it.
fn desc(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(" \"{d}\"")).unwrap_or_default()
}

#[cfg(test)]
mod tests;
