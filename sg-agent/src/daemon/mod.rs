//! `sg-agent daemon`: apply, then stay. Reloads on SIGHUP and when the policy changes (a bad
//! policy is reported and ignored: the enforced one stays; with `--confirm-changes DURATION`
//! each change is applied as `apply --confirm` would, L1), serves Prometheus metrics, writes
//! VPC-Flow-Log-style lines, sweeps expired conntrack entries, and tells systemd it is ready.
//! SIGTERM/SIGINT stop the daemon, not enforcement: links and maps are pinned.
//!
//! [`Daemon`] owns the agent, and one loop ([`Daemon::run`]) handles every event in turn
//! (signal, tick, scrape), so the agent and its dataplane need no locking. The only task it
//! spawns is the metrics endpoint's HTTP side, which asks the loop for the text of a scrape.
//!
//! ```text
//! mod.rs      the Daemon: start (the first apply), the event loop, stop
//! reload.rs   what the loop does when the file, the host or the pins change, or on SIGHUP
//! fleet.rs    the policy from the store (`--store`): snapshots, acks, this host's interfaces
//! metrics.rs  the Prometheus endpoint and the text of a scrape
//! flowlog.rs  the flow log: ACCEPT lines per interval, REJECT lines from drop events
//! systemd.rs  sd_notify
//! ```

mod fleet;
mod flowlog;
mod metrics;
mod reload;
mod systemd;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use self::fleet::Fleet;
pub use self::fleet::FleetOptions;
use self::flowlog::FlowLog;
use self::metrics::Scrape;
use self::systemd::sd_notify;
use crate::agent::{Agent, ApplyOptions, FileSource, OpenOptions, PolicySource};
use crate::dataplane::{Capacities, HookPlan, PinGuard};
use crate::error::{self, Error};
use crate::state::Lock;
use crate::store::Follower;

/// Where the daemon takes its policy from.
pub enum PolicyFrom {
    /// A policy file, polled for changes (`--config`).
    File(PathBuf),
    /// The fleet's store (`--store`).
    Store(FleetOptions),
}

pub struct DaemonOptions {
    pub policy: PolicyFrom,
    /// How a CloudFormation policy file is evaluated (parameters, region, imports).
    pub template: crate::config::TemplateInputs,
    pub metrics: String,
    pub flow_log: Option<String>,
    pub ingress_hook: HookPlan,
    pub poll: u64,
    /// Seconds between flow log flushes.
    pub flow_log_interval: u64,
    /// `--confirm-changes DURATION` (L1): every change the daemon picks up (the file, the
    /// store) reverts unless `sg-agent confirm` arrives within DURATION. Memberships alone
    /// (instances joining and leaving groups) need no confirmation.
    pub confirm_changes: Option<Duration>,
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs the daemon until `shutdown` completes (or the namespace is detached under it).
pub async fn run(
    state_dir: Option<PathBuf>,
    capacities: Capacities,
    opts: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Daemon::start(state_dir, capacities, opts)?
        .run(shutdown)
        .await
}

#[derive(Default)]
struct Stats {
    applies: u64,
    apply_errors: u64,
    last_error: Option<String>,
    last_apply_unix: u64,
    last_to_effect_ms: f64,
    pins_restored: u64,
    /// Waiting for the policy's interfaces to appear (nothing enforced yet).
    waiting: bool,
    /// The deadline of a pending `apply --confirm` (L1), and the reverts so far.
    confirm_deadline_ms: Option<u64>,
    confirm_reverts: u64,
    /// A reload refused while an `apply --confirm` waited (L1): done when the window closes.
    deferred: Option<String>,
    /// The pending change seen at the last confirm tick (its `set_at_ms`): when it goes, the
    /// revert record says whether it was reverted or confirmed.
    window: Option<u64>,
    /// The change the last revert undid, while the file or store still holds it: it is not
    /// enforced (only its memberships are) until the source changes or a SIGHUP.
    not_enforced: Option<String>,
    /// Fleet mode: the store revision that revert undid.
    reverted_revision: Option<i64>,
    /// Fleet mode: the store watches that went silent and were relisted.
    silent_watches: Option<u64>,
}

/// What the daemon does after handling an event.
enum Next {
    Continue,
    /// The namespace was detached (`sg-agent detach`): stop holding anything and exit.
    Detached,
}

/// The daemon of one namespace. Field order is drop order, as it was when these were the
/// locals of one function: the pins are let go first, the daemon's claim before the agent.
pub struct Daemon {
    /// Holds the pinned links and maps open, so enforcement survives their pins being removed
    /// under us (see `check_pins` in reload.rs). `None` while nothing is applied.
    pins: Option<PinGuard>,
    flows: FlowLog,
    /// The policy file and the local devices as last seen: a change of either is a reload.
    fingerprint: Option<(u64, SystemTime)>,
    host: Option<Vec<crate::bind::LocalIface>>,
    stats: Stats,
    /// The policy file; in fleet mode the last snapshot of the store this host applied.
    src: FileSource,
    /// Fleet mode: the store's newest policy and what this host reports back.
    fleet: Option<Fleet>,
    /// One daemon per namespace, held while it runs.
    _claim: Lock,
    opts: DaemonOptions,
    agent: Agent,
}

/// Why the event loop ended.
enum Stop {
    /// SIGTERM or SIGINT (the `shutdown` future).
    Asked,
    Detached,
}

impl Daemon {
    /// Opens the agent, claims the namespace's daemon slot, and applies the policy once. A bad
    /// file with a policy already enforced (a restart) keeps that one; a policy whose
    /// interfaces are not here yet (boot, before the network is configured) is retried at
    /// every poll.
    pub fn start(
        state_dir: Option<PathBuf>,
        capacities: Capacities,
        opts: DaemonOptions,
    ) -> Result<Daemon> {
        let mut agent = Agent::open(OpenOptions {
            state_dir,
            capacities,
            stop_if_detached: true,
        })?;
        for w in agent.warnings() {
            log::warn!("{w}");
        }
        let claim = agent.state_dir().claim_daemon()?;
        // L1: a `--confirm` apply whose timer died (a crash, a reboot) is reverted first.
        if let Err(e) = agent.revert_if_overdue() {
            log::error!("reverting an unconfirmed apply past its deadline: {e:#}");
        }
        let (src, fleet) = match &opts.policy {
            PolicyFrom::File(path) => (FileSource(path.clone(), opts.template.clone()), None),
            PolicyFrom::Store(f) => {
                let mut fleet = Fleet::new(f.clone(), agent.state_dir());
                fleet.hold(host_fingerprint().as_deref().unwrap_or_default());
                (
                    FileSource(fleet.snapshot_file().to_path_buf(), Default::default()),
                    Some(fleet),
                )
            }
        };
        let mut d = Daemon {
            pins: None,
            // Opened after the first apply, as before: a flow log that cannot be opened
            // stops the daemon, not the policy.
            flows: FlowLog::off(),
            fingerprint: src.fingerprint(),
            host: host_fingerprint(),
            stats: Stats::default(),
            src,
            fleet,
            _claim: claim,
            opts,
            agent,
        };
        d.first_apply()?;
        if d.agent.is_applied() {
            let rate = d.events_per_sec();
            d.agent.dataplane()?.set_events_per_sec(rate)?;
            d.pins = Some(d.agent.hold_pins()?);
        }
        d.flows = FlowLog::open(d.opts.flow_log.as_deref())?;
        if d.agent.is_applied() {
            // Flows a previous daemon already reported: only traffic from now on is logged.
            d.flows.baseline(&mut d.agent)?;
        }
        Ok(d)
    }

    fn first_apply(&mut self) -> Result<()> {
        if self.fleet.as_ref().is_some_and(|f| f.source().is_none()) {
            // Fleet mode with no local copy and nothing registered: nothing to enforce until
            // the store answers.
            self.stats.waiting = !self.agent.is_applied();
            return Ok(());
        }
        let opts = self.apply_options();
        let merged = match self.after_revert(false) {
            reload::AfterRevert::Apply => None,
            reload::AfterRevert::Memberships(m) => Some(m),
            reload::AfterRevert::Nothing => return Ok(()),
        };
        let src = match &merged {
            Some(m) => m as &dyn PolicySource,
            None => policy_source(self.fleet.as_ref(), &self.src),
        };
        match self.agent.apply(src, opts) {
            Ok(out) => {
                self.stats.applies += 1;
                self.stats.last_apply_unix = now_unix();
                self.stats.last_to_effect_ms = out.to_effect_ms;
                log::info!(
                    "applied {} (generation {}, {} entries, in effect after {:.1} ms)",
                    out.source,
                    out.generation,
                    out.entries,
                    out.to_effect_ms
                );
            }
            Err(e) if error::is(&e, |k| matches!(k, Error::NotOnThisHost(_))) => {
                self.stats.apply_errors += 1;
                self.stats.last_error = Some(e.to_string());
                self.stats.waiting = !self.agent.is_applied();
                log::warn!(
                    "{e}\nwaiting for the interfaces (checked every {} s)",
                    self.opts.poll
                );
            }
            Err(e) if error::is(&e, |k| matches!(k, Error::Pending(_))) => {
                // L1: a CLI `apply --confirm` waits; its policy is enforced meanwhile.
                log::warn!("the first apply is deferred: {e}");
                self.stats.deferred = Some("start".into());
            }
            Err(e)
                if error::is(&e, |k| matches!(k, Error::InvalidInput(_)))
                    && self.agent.is_applied() =>
            {
                self.stats.apply_errors += 1;
                self.stats.last_error = Some(e.to_string());
                log::error!("{e}\nthe policy already enforced stays");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Serves metrics, tells systemd it is ready, and handles events until `shutdown`
    /// completes or the namespace is detached. Enforcement outlives it (pinned).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let listener = TcpListener::bind(&self.opts.metrics)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", self.opts.metrics))?;
        log::info!("metrics on http://{}/metrics", listener.local_addr()?);
        // Before READY: a SIGHUP sent as soon as we are ready must reload, not kill us.
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let _ = sd_notify(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            self.status_line(),
            std::process::id()
        ));
        // A scrape waits for the loop to be free: one is enough in flight.
        let (scrape_tx, mut scrapes) = mpsc::channel(1);
        let server = tokio::spawn(metrics::serve(listener, scrape_tx));
        let mut follower = self.fleet.as_mut().map(Fleet::follow);
        self.register(follower.as_ref(), self.host.as_deref());
        let stop = self
            .event_loop(shutdown, &mut hup, &mut scrapes, &mut follower)
            .await;
        // Dropping the receiving end is what ends the endpoint's task.
        drop(scrapes);
        let served = server.await;
        self.stop(stop);
        served.context("the metrics endpoint's task failed")?
    }

    async fn event_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        hup: &mut Signal,
        scrapes: &mut mpsc::Receiver<Scrape>,
        follower: &mut Option<Follower>,
    ) -> Stop {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        let mut poll = tokio::time::interval(secs(self.opts.poll));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
        let mut flush = tokio::time::interval(secs(self.opts.flow_log_interval));
        let mut events = tokio::time::interval(Duration::from_millis(500));
        // The daemon holds the timer of an `apply --confirm` (L1): a second of lateness at most.
        let mut confirm = tokio::time::interval(Duration::from_secs(1));
        let flow_log = self.opts.flow_log.is_some();
        tokio::pin!(shutdown);
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return Stop::Asked,
                _ = hup.recv() => self.on_sighup(),
                _ = poll.tick() => self.on_poll(follower.as_ref()),
                snapshot = fleet::next_snapshot(follower) => {
                    self.on_snapshot(snapshot, follower.as_ref())
                }
                _ = housekeeping.tick() => self.sweep_conntrack(),
                _ = flush.tick(), if flow_log => self.flush_flow_log(),
                _ = events.tick(), if flow_log => self.take_events(),
                _ = confirm.tick() => self.check_confirm(follower.as_ref()),
                Some(reply) = scrapes.recv() => {
                    self.stats.silent_watches = follower.as_ref().map(Follower::silent_watches);
                    let _ = reply.send(self.metrics());
                    Next::Continue
                }
            };
            if let Next::Detached = next {
                return Stop::Detached;
            }
        }
    }

    /// Tells systemd, and flushes what the flow log still holds. Enforcement stays.
    fn stop(mut self, why: Stop) {
        let _ = sd_notify("STOPPING=1");
        if let Stop::Detached = why {
            drop(self.pins.take());
            log::info!("the namespace was detached (`sg-agent detach`); stopping");
            return;
        }
        if self.agent.is_applied() {
            let _ = self.flows.take_events(&mut self.agent);
            let _ = self.flows.flush(&mut self.agent);
            // Nobody reads the event ring once the daemon is gone.
            if let Ok(dp) = self.agent.dataplane() {
                let _ = dp.set_events_per_sec(0);
            }
        }
        log::info!("stopping; enforcement stays (pinned). `sg-agent detach` removes it");
    }

    fn sweep_conntrack(&mut self) -> Next {
        if self.agent.is_applied() {
            match self.agent.sweep_conntrack() {
                Ok(n) if n > 0 => log::debug!("swept {n} expired flows"),
                Ok(_) => {}
                Err(e) => log::warn!("conntrack sweep: {e:#}"),
            }
        }
        Next::Continue
    }

    fn flush_flow_log(&mut self) -> Next {
        if self.agent.is_applied()
            && let Err(e) = self.flows.flush(&mut self.agent)
        {
            log::warn!("flow log: {e:#}");
        }
        Next::Continue
    }

    fn take_events(&mut self) -> Next {
        if self.agent.is_applied()
            && let Err(e) = self.flows.take_events(&mut self.agent)
        {
            log::warn!("flow log events: {e:#}");
        }
        Next::Continue
    }

    /// Reverts a `--confirm` apply whose deadline passed (L1; the log line is the agent's),
    /// notices a window that closed (confirmed, or reverted by whoever), and then does the
    /// reload it deferred.
    fn check_confirm(&mut self, follower: Option<&Follower>) -> Next {
        self.window_closed(follower);
        if self.stats.deferred.is_some() && matches!(self.agent.pending(), Ok(None)) {
            let why = self.stats.deferred.take().unwrap_or_default();
            return self.reload(&format!(
                "{why}, deferred until the confirmation window closed"
            ));
        }
        match self.agent.revert_if_overdue() {
            Ok(Some(_)) => {
                self.stats.last_apply_unix = now_unix();
                // A revert may attach or release devices: hold the new set of pins.
                match self.agent.hold_pins() {
                    Ok(g) => self.pins = Some(g),
                    Err(e) => log::warn!("holding the pins: {e:#}"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.apply_errors += 1;
                self.stats.last_error = Some(format!("{e:#}"));
                log::error!("reverting an unconfirmed apply past its deadline: {e:#}");
            }
        }
        Next::Continue
    }

    /// The text of one scrape.
    fn metrics(&mut self) -> String {
        self.stats.confirm_deadline_ms = match self.agent.pending() {
            Ok(p) => p.map(|p| p.deadline_ms),
            Err(e) => {
                log::warn!("metrics: {e:#}");
                None
            }
        };
        self.stats.confirm_reverts = self.agent.state().confirm_reverts;
        let counters = if self.agent.is_applied() {
            self.agent
                .counters()
                .map_err(|e| log::warn!("metrics: {e:#}"))
                .ok()
        } else {
            None
        };
        metrics::render(
            counters.as_ref(),
            self.agent.state().generation,
            self.agent.is_applied(),
            &self.stats,
        )
    }

    /// With `--confirm-changes`, a change is applied under a window once there is a policy
    /// to go back to: in fleet mode, one of the store's revisions (never the devices held
    /// closed until the store answers, nor a local copy from before a restart).
    fn apply_options(&self) -> ApplyOptions {
        let mut o = ApplyOptions::new(self.opts.ingress_hook.clone());
        if self.agent.is_applied() && self.fleet.as_ref().is_none_or(Fleet::has_applied) {
            o.confirm = self.opts.confirm_changes;
            o.confirm_policy_only = true;
        }
        o
    }

    /// Drop events feed the flow log's REJECT lines; without a flow log nobody reads them.
    fn events_per_sec(&self) -> u32 {
        if self.opts.flow_log.is_some() {
            1000
        } else {
            0
        }
    }

    fn status_line(&self) -> String {
        if self.stats.waiting {
            let what = match &self.opts.policy {
                PolicyFrom::File(p) => p.display().to_string(),
                PolicyFrom::Store(f) => f.store.describe(),
            };
            format!("waiting for the interfaces of {what} (nothing enforced yet)")
        } else {
            let reverted = match &self.stats.not_enforced {
                Some(s) => format!("; {s} was reverted (not confirmed) and is not enforced"),
                None => String::new(),
            };
            format!(
                "enforcing {} (generation {}){reverted}",
                self.agent.state().source,
                self.agent.state().generation
            )
        }
    }
}

/// The policy file, or in fleet mode the store's newest policy (or the local copy).
fn policy_source<'a>(fleet: Option<&'a Fleet>, file: &'a FileSource) -> &'a dyn PolicySource {
    fleet.and_then(Fleet::source).unwrap_or(file)
}

/// The local devices (names, ifindexes, addresses): what binding depends on.
fn host_fingerprint() -> Option<Vec<crate::bind::LocalIface>> {
    crate::bind::local_interfaces().ok()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
