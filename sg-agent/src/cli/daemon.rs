//! `sg-agent daemon --config FILE ...`: the glue from the command line to
//! [`crate::daemon::run`] on a single-threaded runtime, stopped by SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Result;

use super::{Globals, HookArg};
use crate::daemon::{self, DaemonOptions};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve Prometheus metrics on this address (loopback by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9617")]
    metrics: String,
    /// Write VPC-Flow-Log-style lines to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flow_log: Option<String>,
    #[arg(long, value_name = "HOOK", value_enum, default_value = "xdp")]
    pub(super) ingress_hook: HookArg,
    /// Seconds between checks of the policy file for changes (and of the pins).
    #[arg(long, default_value = "1")]
    poll: u64,
    /// Seconds between flow log flushes (ACCEPT lines cover this interval).
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    flow_log_interval: u64,
}

pub fn run(g: &Globals, a: Args) -> Result<()> {
    let opts = DaemonOptions {
        config: a.config,
        metrics: a.metrics,
        flow_log: a.flow_log,
        ingress_hook: a.ingress_hook.into(),
        poll: a.poll,
        flow_log_interval: a.flow_log_interval,
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
