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

use crate::agent::{self, Agent, ApplyOptions, FileSource, PolicySource};
use crate::cli::InvalidInput;
use crate::dataplane::ip_of;
use crate::report::{self, FlowRecord, Sample};

pub struct DaemonOptions {
    pub config: PathBuf,
    pub metrics: String,
    pub flow_log: Option<String>,
    pub ingress_hook: String,
    pub poll: u64,
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
}

/// Runs until `shutdown` completes.
pub async fn run(
    state_dir: Option<PathBuf>,
    opts: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let hook = agent::parse_hook(&opts.ingress_hook)?;
    let mut agent = Agent::open(state_dir.as_deref())?;
    let src = FileSource(opts.config.clone());
    let mut stats = Stats::default();
    let mut fingerprint = src.fingerprint();

    // The first apply. A bad file with a policy already enforced (a restart) keeps that one.
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
        Err(e) if e.downcast_ref::<InvalidInput>().is_some() && agent.is_applied() => {
            stats.apply_errors += 1;
            stats.last_error = Some(e.to_string());
            log::error!("{e}\nthe policy already enforced stays");
        }
        Err(e) => return Err(e),
    }
    let flow_log = opts.flow_log.is_some();
    agent
        .dataplane()?
        .set_events_per_sec(if flow_log { 1000 } else { 0 })?;
    let mut flows = FlowLog::open(opts.flow_log.as_deref())?;

    let listener = TcpListener::bind(&opts.metrics)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", opts.metrics))?;
    log::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let _ = report::sd_notify(&format!(
        "READY=1\nSTATUS=enforcing {} (generation {})",
        opts.config.display(),
        agent.state.generation
    ));

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut poll = tokio::time::interval(Duration::from_secs(opts.poll.max(1)));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    let mut events = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => reload(&mut agent, &src, hook, &mut stats, "SIGHUP"),
            _ = poll.tick() => {
                let fp = src.fingerprint();
                if fp != fingerprint {
                    fingerprint = fp;
                    reload(&mut agent, &src, hook, &mut stats, "file change");
                }
            }
            _ = housekeeping.tick() => {
                match agent.sweep_conntrack() {
                    Ok(n) if n > 0 => log::debug!("swept {n} expired flows"),
                    Ok(_) => {}
                    Err(e) => log::warn!("conntrack sweep: {e:#}"),
                }
                if let Err(e) = flows.flush_accepts(&mut agent) {
                    log::warn!("flow log: {e:#}");
                }
            }
            _ = events.tick(), if flow_log => {
                if let Err(e) = flows.take_events(&mut agent) {
                    log::warn!("flow log events: {e:#}");
                }
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
            }
        }
    }
    let _ = report::sd_notify("STOPPING=1");
    let _ = flows.flush_accepts(&mut agent);
    log::info!("stopping; enforcement stays (pinned). `sg-agent detach` removes it");
    Ok(())
}

fn reload(
    agent: &mut Agent,
    src: &FileSource,
    hook: crate::dataplane::IngressHook,
    stats: &mut Stats,
    why: &str,
) {
    let _ = report::sd_notify("RELOADING=1");
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
            log::info!(
                "reloaded on {why}: generation {} in effect after {:.1} ms ({} rules added, {} removed)",
                out.generation,
                out.to_effect_ms,
                out.diff.rules_added.len(),
                out.diff.rules_removed.len()
            );
        }
        Err(e) => {
            stats.apply_errors += 1;
            stats.last_error = Some(format!("{e:#}"));
            log::error!("reload on {why} failed, the enforced policy stays:\n{e:#}");
        }
    }
    let _ = report::sd_notify("READY=1");
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
    let gen_ = agent.state.generation;
    match agent.counters() {
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
        Err(e) => log::warn!("metrics: {e:#}"),
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
            .state
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
                let (src, dst, sp, dp) = if outbound {
                    (e.local, e.remote, e.key.lport, e.key.rport)
                } else {
                    (e.remote, e.local, e.key.rport, e.key.lport)
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
