//! `sg-agent daemon --config FILE ...` or `--store etcd://...` (fleet mode)
//! `[--confirm-changes DURATION]`: the glue from the command line to [`crate::daemon::run`]
//! on a single-threaded runtime, stopped by SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Result;

use super::store::StoreArgs;
use super::{Globals, HookArgs};
use crate::daemon::{self, DaemonOptions, FleetOptions, PolicyFrom};
use crate::store::Registration;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "endpoints"]))]
pub struct Args {
    /// The policy file (single host).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    template: super::template::TemplateArgs,
    /// This host's name in the store (default: the hostname).
    #[arg(long, value_name = "NAME", requires = "endpoints")]
    host: Option<String>,
    /// A local device this host registers in the store with its groups, e.g. eth0=sg-web.
    /// Its addresses are read from the device. Repeatable.
    #[arg(long, value_name = "DEVICE=GROUPS", requires = "endpoints")]
    register: Vec<Registration>,
    /// Seconds the store keeps this host's registration after the agent stops answering.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        requires = "endpoints"
    )]
    lease_ttl: i64,
    /// Serve Prometheus metrics on this address (loopback by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9617")]
    metrics: String,
    /// Write VPC-Flow-Log-style lines to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flow_log: Option<String>,
    #[command(flatten)]
    pub(super) hooks: HookArgs,
    /// Seconds between checks of the policy file for changes (and of the pins).
    #[arg(long, default_value = "1")]
    poll: u64,
    /// Seconds between flow log flushes (ACCEPT lines cover this interval).
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    flow_log_interval: u64,
    /// Apply every change of the policy (an edited file, SIGHUP, a new store revision) as
    /// `apply --confirm DURATION` does: reverted unless `sg-agent confirm` arrives within
    /// DURATION. Memberships alone (instances joining or leaving groups) need no confirmation.
    #[arg(long, value_name = "DURATION", value_parser = super::apply::parse_duration)]
    confirm_changes: Option<std::time::Duration>,
}

pub fn run(g: &Globals, a: Args) -> Result<()> {
    let policy = match (a.config, a.store.options()) {
        (Some(file), _) => PolicyFrom::File(file),
        (None, Some(store)) => PolicyFrom::Store(FleetOptions {
            store,
            host: match a.host {
                Some(h) => h,
                None => hostname()?,
            },
            register: a.register,
            lease_ttl: a.lease_ttl.max(2),
        }),
        (None, None) => unreachable!("clap requires --config or --store"),
    };
    let opts = DaemonOptions {
        template: a.template.inputs()?,
        policy,
        metrics: a.metrics,
        flow_log: a.flow_log,
        ingress_hook: a.hooks.plan(),
        poll: a.poll,
        flow_log_interval: a.flow_log_interval,
        confirm_changes: a.confirm_changes,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(
        g.state_dir.clone(),
        g.capacities,
        opts,
        daemon::shutdown_signal(),
    ))
}

fn hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(h.trim().to_string())
}
