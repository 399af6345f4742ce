//! `sg-agent daemon`: apply, then stay. Reloads on SIGHUP and when the policy changes (a bad
//! policy is reported and ignored: the enforced one stays), serves Prometheus metrics, writes
//! VPC-Flow-Log-style lines, sweeps expired conntrack entries, and tells systemd it is ready.
//! SIGTERM/SIGINT stop the daemon, not enforcement: links and maps are pinned.
//!
//! One task, one loop: every event (signal, tick, metrics request) is handled in turn, so the
//! agent and its dataplane need no locking.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::agent::{self, Agent, ApplyOptions, FileSource, OpenOptions, PolicySource};
use crate::dataplane::{Capacities, IngressHook, PinGuard, ip_of};
use crate::error::{self, Error};
use crate::report::{self, FlowRecord, Sample};

pub struct DaemonOptions {
    pub config: PathBuf,
    pub metrics: String,
    pub flow_log: Option<String>,
    pub ingress_hook: IngressHook,
    pub poll: u64,
    /// Seconds between flow log flushes.
    pub flow_log_interval: u64,
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
}

/// What the daemon does after an apply attempt.
enum Next {
    Continue,
    /// The namespace was detached (`sg-agent detach`): stop holding anything and exit.
    Detached,
}

/// Runs until `shutdown` completes (or the namespace is detached under it).
pub async fn run(
    state_dir: Option<PathBuf>,
    capacities: Capacities,
    opts: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let hook = opts.ingress_hook;
    let mut agent = Agent::open(OpenOptions {
        state_dir,
        capacities,
        stop_if_detached: true,
    })?;
    for w in agent.warnings() {
        log::warn!("{w}");
    }
    let _claim = agent.state_dir().claim_daemon()?;
    let src = FileSource(opts.config.clone());
    let mut stats = Stats::default();
    let mut fingerprint = src.fingerprint();
    let mut host = host_fingerprint();
    let mut guard: Option<PinGuard> = None;

    // The first apply. A bad file with a policy already enforced (a restart) keeps that one;
    // a policy whose interfaces are not here yet (boot, before the network is configured)
    // is retried at every poll.
    match agent.apply(
        &src,
        ApplyOptions {
            dry_run: false,
            ingress: hook,
        },
    ) {
        Ok(out) => {
            stats.applies += 1;
            stats.last_apply_unix = now_unix();
            stats.last_to_effect_ms = out.to_effect_ms;
            log::info!(
                "applied {} (generation {}, {} entries, in effect after {:.1} ms)",
                out.source,
                out.generation,
                out.entries,
                out.to_effect_ms
            );
        }
        Err(e) if error::is(&e, |k| matches!(k, Error::NotOnThisHost(_))) => {
            stats.apply_errors += 1;
            stats.last_error = Some(e.to_string());
            stats.waiting = !agent.is_applied();
            log::warn!(
                "{e}\nwaiting for the interfaces (checked every {} s)",
                opts.poll
            );
        }
        Err(e) if error::is(&e, |k| matches!(k, Error::InvalidInput(_))) && agent.is_applied() => {
            stats.apply_errors += 1;
            stats.last_error = Some(e.to_string());
            log::error!("{e}\nthe policy already enforced stays");
        }
        Err(e) => return Err(e),
    }
    let flow_log = opts.flow_log.is_some();
    if agent.is_applied() {
        agent
            .dataplane()?
            .set_events_per_sec(if flow_log { 1000 } else { 0 })?;
        guard = Some(agent.hold_pins()?);
    }
    let mut flows = FlowLog::open(opts.flow_log.as_deref())?;
    if agent.is_applied() {
        // Flows a previous daemon already reported: only traffic from now on is logged.
        flows.baseline(&mut agent)?;
    }

    let listener = TcpListener::bind(&opts.metrics)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", opts.metrics))?;
    log::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let _ = report::sd_notify(&format!(
        "READY=1\nSTATUS={}\nMAINPID={}",
        status_line(&agent, &stats, &opts),
        std::process::id()
    ));

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut poll = tokio::time::interval(Duration::from_secs(opts.poll.max(1)));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    let mut flush = tokio::time::interval(Duration::from_secs(opts.flow_log_interval.max(1)));
    let mut events = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    let mut detached = false;
    loop {
        let next = tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                // This read of the file counts for the poll too: a broken file is reported
                // once, not again at the next tick.
                fingerprint = src.fingerprint();
                reload(&mut agent, &src, hook, &mut stats, &mut guard, flow_log, &opts, "SIGHUP")
            }
            _ = poll.tick() => {
                let fp = src.fingerprint();
                let hp = host_fingerprint();
                if fp != fingerprint {
                    fingerprint = fp;
                    host = hp;
                    reload(&mut agent, &src, hook, &mut stats, &mut guard, flow_log, &opts, "file change")
                } else if hp != host {
                    // A device or an address came or went: the binding may differ (an
                    // interface recreated under a new ifindex, the addresses of a waiting
                    // policy configured at last).
                    host = hp;
                    reload(&mut agent, &src, hook, &mut stats, &mut guard, flow_log, &opts, "interface change")
                } else {
                    check_pins(&agent, &mut guard, &mut stats)
                }
            }
            _ = housekeeping.tick() => {
                if agent.is_applied() {
                    match agent.sweep_conntrack() {
                        Ok(n) if n > 0 => log::debug!("swept {n} expired flows"),
                        Ok(_) => {}
                        Err(e) => log::warn!("conntrack sweep: {e:#}"),
                    }
                }
                Next::Continue
            }
            _ = flush.tick(), if flow_log => {
                if agent.is_applied()
                    && let Err(e) = flows.flush_accepts(&mut agent)
                {
                    log::warn!("flow log: {e:#}");
                }
                Next::Continue
            }
            _ = events.tick(), if flow_log => {
                if agent.is_applied()
                    && let Err(e) = flows.take_events(&mut agent)
                {
                    log::warn!("flow log events: {e:#}");
                }
                Next::Continue
            }
            conn = listener.accept() => {
                if let Ok((mut sock, _)) = conn {
                    let mut buf = [0u8; 2048];
                    let n = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await.ok().and_then(|r| r.ok()).unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let (status, body) = if req.starts_with("GET /metrics") {
                        ("200 OK", metrics(&mut agent, &stats))
                    } else {
                        ("404 Not Found", "try /metrics\n".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(2), sock.write_all(resp.as_bytes())).await;
                }
                Next::Continue
            }
        };
        if let Next::Detached = next {
            detached = true;
            break;
        }
    }
    let _ = report::sd_notify("STOPPING=1");
    if detached {
        drop(guard);
        log::info!("the namespace was detached (`sg-agent detach`); stopping");
        return Ok(());
    }
    if agent.is_applied() {
        let _ = flows.take_events(&mut agent);
        let _ = flows.flush_accepts(&mut agent);
        // Nobody reads the event ring once the daemon is gone.
        if let Ok(dp) = agent.dataplane() {
            let _ = dp.set_events_per_sec(0);
        }
    }
    log::info!("stopping; enforcement stays (pinned). `sg-agent detach` removes it");
    Ok(())
}

/// The local devices (names, ifindexes, addresses): what binding depends on.
fn host_fingerprint() -> Option<Vec<crate::bind::LocalIface>> {
    crate::bind::local_interfaces().ok()
}

fn status_line(agent: &Agent, stats: &Stats, opts: &DaemonOptions) -> String {
    if stats.waiting {
        format!(
            "waiting for the interfaces of {} (nothing enforced yet)",
            opts.config.display()
        )
    } else {
        format!(
            "enforcing {} (generation {})",
            agent.state().source,
            agent.state().generation
        )
    }
}

/// Puts back pins that disappeared under the daemon (it holds the objects, so enforcement
/// never stopped), unless the namespace was detached on purpose.
fn check_pins(agent: &Agent, guard: &mut Option<PinGuard>, stats: &mut Stats) -> Next {
    let Some(g) = guard.as_ref() else {
        return Next::Continue;
    };
    let missing = g.missing();
    if missing.is_empty() {
        return Next::Continue;
    }
    // `detach` removes pins and state under the lock: take it, then look at the state.
    let lock = match agent.state_dir().lock_existing() {
        Ok(l) => l,
        Err(e) => {
            log::warn!("checking pins: {e:#}");
            return Next::Continue;
        }
    };
    if lock.is_none() || !agent.state_dir().state_file().exists() {
        *guard = None;
        return Next::Detached;
    }
    match g.restore() {
        Ok(n) => {
            stats.pins_restored += n as u64;
            log::warn!(
                "{} pins under {} had been removed; enforcement never stopped (the daemon \
                 holds the links and maps) and {n} were pinned again",
                missing.len(),
                agent.state_dir().pins.display()
            );
        }
        Err(e) => log::error!(
            "pins under {} were removed and could not be restored: {e:#}; enforcement \
             continues while the daemon runs",
            agent.state_dir().pins.display()
        ),
    }
    Next::Continue
}

#[allow(clippy::too_many_arguments)]
fn reload(
    agent: &mut Agent,
    src: &FileSource,
    hook: crate::dataplane::IngressHook,
    stats: &mut Stats,
    guard: &mut Option<PinGuard>,
    flow_log: bool,
    opts: &DaemonOptions,
    why: &str,
) -> Next {
    // Removed pins first: an apply must adopt the maps that are enforcing, not create new
    // ones beside them. A detached namespace stays detached.
    if let Next::Detached = check_pins(agent, guard, stats) {
        return Next::Detached;
    }
    let was_waiting = stats.waiting;
    if !was_waiting {
        let _ = report::sd_notify("RELOADING=1");
    }
    match agent.apply(
        src,
        ApplyOptions {
            dry_run: false,
            ingress: hook,
        },
    ) {
        Ok(out) => {
            stats.applies += 1;
            stats.last_apply_unix = now_unix();
            stats.last_to_effect_ms = out.to_effect_ms;
            stats.last_error = None;
            stats.waiting = false;
            log::info!(
                "reloaded on {why}: generation {} in effect after {:.1} ms ({} rules added, {} removed)",
                out.generation,
                out.to_effect_ms,
                out.diff.rules_added.len(),
                out.diff.rules_removed.len()
            );
            if was_waiting
                && let Err(e) = agent
                    .dataplane()
                    .and_then(|d| d.set_events_per_sec(if flow_log { 1000 } else { 0 }))
            {
                log::warn!("enabling flow log events: {e:#}");
            }
            // The links may have changed (interfaces added or released): hold the new set
            // before letting go of the old.
            match agent.hold_pins() {
                Ok(g) => *guard = Some(g),
                Err(e) => log::warn!("holding the pins: {e:#}"),
            }
        }
        Err(e) if error::is(&e, |k| matches!(k, Error::DetachedUnderUs)) => {
            *guard = None;
            return Next::Detached;
        }
        Err(e) if was_waiting && error::is(&e, |k| matches!(k, Error::NotOnThisHost(_))) => {
            log::debug!("still waiting: {e}");
        }
        Err(e) => {
            stats.apply_errors += 1;
            stats.last_error = Some(format!("{e:#}"));
            log::error!("reload on {why} failed, the enforced policy stays:\n{e:#}");
        }
    }
    if !(was_waiting && stats.waiting) {
        let _ = report::sd_notify(&format!(
            "READY=1\nSTATUS={}",
            status_line(agent, stats, opts)
        ));
    }
    Next::Continue
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The Prometheus text for one scrape.
fn metrics(agent: &mut Agent, stats: &Stats) -> String {
    let mut out = String::new();
    let gen_ = agent.state().generation;
    let counters = if agent.is_applied() {
        agent.counters()
    } else {
        Err(anyhow::anyhow!("nothing applied yet"))
    };
    match counters {
        Ok(c) => {
            let rule = |f: fn(&agent::RuleCount) -> u64| -> Vec<Sample> {
                c.rules
                    .iter()
                    .map(|r| Sample {
                        labels: vec![
                            ("rule_id", r.id.clone()),
                            ("group", r.meta.group.clone()),
                            ("direction", r.meta.direction.clone()),
                            ("rule", r.meta.text.clone()),
                            (
                                "description",
                                r.meta.description.clone().unwrap_or_default(),
                            ),
                        ],
                        value: f(r) as f64,
                    })
                    .collect()
            };
            report::prometheus_family(
                &mut out,
                "sg_rule_packets_total",
                "counter",
                "Packets allowed by each rule (a tracked flow is charged to the rule that opened it).",
                &rule(|r| r.packets),
            );
            report::prometheus_family(
                &mut out,
                "sg_rule_bytes_total",
                "counter",
                "Bytes allowed by each rule.",
                &rule(|r| r.bytes),
            );
            let reasons: Vec<Sample> = c
                .reasons
                .iter()
                .map(|(r, n)| Sample {
                    labels: vec![
                        ("reason", r.name().to_string()),
                        (
                            "verdict",
                            if r.is_pass() { "pass" } else { "drop" }.to_string(),
                        ),
                    ],
                    value: *n as f64,
                })
                .collect();
            report::prometheus_family(
                &mut out,
                "sg_packets_total",
                "counter",
                "Packets by verdict reason.",
                &reasons,
            );
            let ct = &c.conntrack;
            let g = |v: u64| {
                vec![Sample {
                    labels: vec![],
                    value: v as f64,
                }]
            };
            report::prometheus_family(
                &mut out,
                "sg_conntrack_entries",
                "gauge",
                "Tracked flows (confirmed + unconfirmed).",
                &[
                    Sample {
                        labels: vec![("table", "confirmed".into())],
                        value: ct.ct_count as f64,
                    },
                    Sample {
                        labels: vec![("table", "unconfirmed".into())],
                        value: ct.new_count as f64,
                    },
                ],
            );
            report::prometheus_family(
                &mut out,
                "sg_conntrack_allowance_available",
                "gauge",
                "Free conntrack entries (EC2's conntrack_allowance_available).",
                &g(ct.ct_available),
            );
            report::prometheus_family(
                &mut out,
                "sg_conntrack_allowance_exceeded_total",
                "counter",
                "Flows dropped because the conntrack table was full (EC2's conntrack_allowance_exceeded).",
                &g(ct.exceeded),
            );
        }
        Err(e) if agent.is_applied() => log::warn!("metrics: {e:#}"),
        Err(_) => {}
    }
    let g = |v: f64| {
        vec![Sample {
            labels: vec![],
            value: v,
        }]
    };
    report::prometheus_family(
        &mut out,
        "sg_policy_generation",
        "gauge",
        "The active policy generation (0/1).",
        &g(f64::from(gen_)),
    );
    report::prometheus_family(
        &mut out,
        "sg_applies_total",
        "counter",
        "Successful policy applies.",
        &g(stats.applies as f64),
    );
    report::prometheus_family(
        &mut out,
        "sg_apply_errors_total",
        "counter",
        "Failed applies (the enforced policy stayed).",
        &g(stats.apply_errors as f64),
    );
    report::prometheus_family(
        &mut out,
        "sg_last_apply_timestamp_seconds",
        "gauge",
        "When the last successful apply happened.",
        &g(stats.last_apply_unix as f64),
    );
    report::prometheus_family(
        &mut out,
        "sg_last_apply_to_effect_seconds",
        "gauge",
        "Time from the start of the last apply to the generation flip.",
        &g(stats.last_to_effect_ms / 1000.0),
    );
    report::prometheus_family(
        &mut out,
        "sg_pins_restored_total",
        "counter",
        "Pins that disappeared under the daemon and were pinned again.",
        &g(stats.pins_restored as f64),
    );
    report::prometheus_family(
        &mut out,
        "sg_enforcing",
        "gauge",
        "1 when a policy is applied in this namespace, 0 while waiting for its interfaces.",
        &g(if agent.is_applied() { 1.0 } else { 0.0 }),
    );
    out
}

/// VPC-Flow-Log-style records: ACCEPT lines from tracked flows' packet/byte deltas every
/// interval (one line per direction with traffic), REJECT lines from drop events aggregated
/// per 5-tuple. Untracked flows (C4) keep no state and appear only through their rules'
/// counters.
/// (ifindex, src, dst, sport, dport, protocol)
type RejectKey = (u32, IpAddr, IpAddr, u16, u16, u8);
/// (packets, bytes, first seen, last seen)
type RejectAgg = (u64, u64, u64, u64);

struct FlowLog {
    out: Option<Box<dyn std::io::Write + Send>>,
    /// (flow key, created) -> packets/bytes already reported [orig, reply]
    seen: BTreeMap<(sg_common::FlowKey, u64), ([u64; 2], [u64; 2])>,
    rejects: BTreeMap<RejectKey, RejectAgg>,
    last_flush: u64,
}

impl FlowLog {
    fn open(target: Option<&str>) -> Result<FlowLog> {
        let out: Option<Box<dyn std::io::Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening flow log {p}"))?,
            )),
        };
        Ok(FlowLog {
            out,
            seen: BTreeMap::new(),
            rejects: BTreeMap::new(),
            last_flush: now_unix(),
        })
    }

    /// Counts what tracked flows carried so far without reporting it.
    fn baseline(&mut self, agent: &mut Agent) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        for e in agent.conntrack()? {
            self.seen
                .insert((e.key, e.val.created_ns), (e.val.packets, e.val.bytes));
        }
        // Drop events queued while no daemon was reading are old news.
        agent.dataplane()?.drain_events(usize::MAX)?;
        Ok(())
    }

    fn take_events(&mut self, agent: &mut Agent) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        let now = now_unix();
        for e in agent.dataplane()?.drain_events(4096)? {
            if e.kind != sg_common::event_kind::DROP {
                continue;
            }
            let k = (
                e.ifindex,
                ip_of(&e.src),
                ip_of(&e.dst),
                e.sport,
                e.dport,
                e.proto,
            );
            let r = self.rejects.entry(k).or_insert((0, 0, now, now));
            r.0 += 1;
            r.1 += u64::from(e.len);
            r.3 = now;
        }
        Ok(())
    }

    fn flush_accepts(&mut self, agent: &mut Agent) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let now = now_unix();
        let names: BTreeMap<u32, String> = agent
            .state()
            .applied
            .interfaces
            .iter()
            .map(|(d, i)| (i.ifindex, d.clone()))
            .collect();
        let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
        let entries = agent.conntrack()?;
        let mut live = BTreeMap::new();
        for e in entries {
            let id = (e.key, e.val.created_ns);
            let (p0, b0) = self.seen.get(&id).copied().unwrap_or(([0; 2], [0; 2]));
            for d in 0..2 {
                let (pk, by) = (
                    e.val.packets[d] - p0[d].min(e.val.packets[d]),
                    e.val.bytes[d] - b0[d].min(e.val.bytes[d]),
                );
                if pk == 0 {
                    continue;
                }
                // The direction of travel: d = 0 is the opener's direction.
                let outbound = (e.val.origin == sg_common::DIR_EGRESS) == (d == 0);
                let (lport, rport) = e.ports();
                let (src, dst, sp, dp) = if outbound {
                    (e.local, e.remote, lport, rport)
                } else {
                    (e.remote, e.local, rport, lport)
                };
                let rec = FlowRecord {
                    interface: name(e.key.ifindex),
                    src,
                    dst,
                    sport: sp,
                    dport: dp,
                    proto: e.key.proto,
                    packets: pk,
                    bytes: by,
                    start: self.last_flush,
                    end: now,
                    accept: true,
                };
                writeln!(out, "{}", rec.line())?;
            }
            live.insert(id, (e.val.packets, e.val.bytes));
        }
        self.seen = live;
        for ((ifi, src, dst, sp, dp, proto), (pk, by, start, end)) in
            std::mem::take(&mut self.rejects)
        {
            let rec = FlowRecord {
                interface: name(ifi),
                src,
                dst,
                sport: sp,
                dport: dp,
                proto,
                packets: pk,
                bytes: by,
                start,
                end,
                accept: false,
            };
            writeln!(out, "{}", rec.line())?;
        }
        out.flush()?;
        self.last_flush = now;
        Ok(())
    }
}
