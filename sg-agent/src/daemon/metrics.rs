//! The daemon's Prometheus endpoint: the HTTP task that answers `GET /metrics`, and the text
//! of one scrape (exposition format 0.0.4). Rendering is pure: it is handed the counters and
//! the daemon's stats and must not read maps itself; the daemon's loop, which owns the agent,
//! reads them when a scrape asks (see [`Scrape`]).
//!
//! Metric names, labels and HELP texts are an interface (docs/agent.md, dashboards, the
//! daemon tests): change none of them.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::Stats;
use crate::agent::{Counters, RuleCount};
use crate::dataplane::CtStats;

/// A scrape, sent to the daemon's loop: it renders the text and sends it back. The loop owns
/// the agent, so reading the counters needs no lock.
pub(super) type Scrape = oneshot::Sender<String>;

/// Answers HTTP requests on `listener` until the daemon's loop drops its end of `scrapes`.
/// One connection at a time: a scraper is not a crowd.
pub(super) async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) -> Result<()> {
    loop {
        let conn = tokio::select! {
            () = scrapes.closed() => return Ok(()),
            conn = listener.accept() => conn,
        };
        // A failed accept (a client gone before we took it) is that client's problem.
        let Ok((sock, _)) = conn else { continue };
        tokio::select! {
            () = scrapes.closed() => return Ok(()),
            answered = answer(sock, &scrapes) => {
                if let Err(e) = answered {
                    log::debug!("metrics request: {e:#}");
                }
            }
        }
    }
}

/// One request, one response, then the connection is closed. Slow clients get 2 s each way.
async fn answer(mut sock: TcpStream, scrapes: &mpsc::Sender<Scrape>) -> Result<()> {
    const SLOW: Duration = Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    let n = timeout(SLOW, sock.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let (status, body) = if req.starts_with("GET /metrics") {
        let (tx, rx) = oneshot::channel();
        scrapes.send(tx).await.context("the daemon is stopping")?;
        ("200 OK", rx.await.context("the daemon is stopping")?)
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(SLOW, sock.write_all(resp.as_bytes())).await;
    Ok(())
}

/// The text of one scrape. `counters` is `None` while nothing is applied (or when reading
/// them failed): the per-rule, per-reason and conntrack families are then left out.
pub(super) fn render(
    counters: Option<&Counters>,
    generation: u32,
    enforcing: bool,
    stats: &Stats,
) -> String {
    let mut out = String::new();
    if let Some(c) = counters {
        write_rules(&mut out, &c.rules);
        write_reasons(&mut out, c);
        write_conntrack(&mut out, &c.conntrack);
        write_audit(&mut out, c);
    }
    write_daemon(&mut out, generation, enforcing, stats);
    write_confirm(&mut out, stats);
    if let Some(silent) = stats.silent_watches {
        scalar(
            &mut out,
            "sg_store_watch_silent_total",
            Kind::Counter,
            "Fleet mode: store watches that went silent (a progress request unanswered, or a \
             change not delivered) and were relisted (S2).",
            silent as f64,
        );
    }
    out
}

fn write_rules(out: &mut String, rules: &[RuleCount]) {
    let per_rule = |f: fn(&RuleCount) -> u64| -> Vec<Sample> {
        rules
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
    family(
        out,
        "sg_rule_packets_total",
        Kind::Counter,
        "Packets allowed by each rule (a tracked flow is charged to the rule that opened it).",
        &per_rule(|r| r.packets),
    );
    family(
        out,
        "sg_rule_bytes_total",
        Kind::Counter,
        "Bytes allowed by each rule.",
        &per_rule(|r| r.bytes),
    );
}

fn write_reasons(out: &mut String, c: &Counters) {
    let samples: Vec<Sample> = c
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
    family(
        out,
        "sg_packets_total",
        Kind::Counter,
        "Packets by verdict reason.",
        &samples,
    );
}

fn write_conntrack(out: &mut String, ct: &CtStats) {
    let table = |name: &str, n: u64| Sample {
        labels: vec![("table", name.to_string())],
        value: n as f64,
    };
    family(
        out,
        "sg_conntrack_entries",
        Kind::Gauge,
        "Tracked flows (confirmed + unconfirmed).",
        &[
            table("confirmed", ct.ct_count),
            table("unconfirmed", ct.new_count),
        ],
    );
    scalar(
        out,
        "sg_conntrack_allowance_available",
        Kind::Gauge,
        "Free conntrack entries (EC2's conntrack_allowance_available).",
        ct.ct_available as f64,
    );
    scalar(
        out,
        "sg_conntrack_allowance_exceeded_total",
        Kind::Counter,
        "Flows dropped because the conntrack table was full (EC2's conntrack_allowance_exceeded).",
        ct.exceeded as f64,
    );
}

/// Audit mode (L3): on every interface, and the interfaces in audit mode of their own.
fn write_audit(out: &mut String, c: &Counters) {
    scalar(
        out,
        "sg_audit",
        Kind::Gauge,
        "1 while audit mode (L3) is on for every interface: what the policy drops passes.",
        if c.audit { 1.0 } else { 0.0 },
    );
    let samples: Vec<Sample> = c
        .audit_interfaces
        .iter()
        .map(|d| Sample {
            labels: vec![("device", d.device.clone()), ("by", d.by.to_string())],
            value: 1.0,
        })
        .collect();
    family(
        out,
        "sg_interface_audit",
        Kind::Gauge,
        "1 for each interface in audit mode of its own (L3), by `policy` (audit: true) or \
         `command` (sg-agent audit on DEV).",
        &samples,
    );
}

/// The daemon's own families: present in every scrape, enforcing or waiting.
fn write_daemon(out: &mut String, generation: u32, enforcing: bool, stats: &Stats) {
    let families = [
        (
            "sg_policy_generation",
            Kind::Gauge,
            "The active policy generation (0/1).",
            f64::from(generation),
        ),
        (
            "sg_applies_total",
            Kind::Counter,
            "Successful policy applies.",
            stats.applies as f64,
        ),
        (
            "sg_apply_errors_total",
            Kind::Counter,
            "Failed applies (the enforced policy stayed).",
            stats.apply_errors as f64,
        ),
        (
            "sg_last_apply_timestamp_seconds",
            Kind::Gauge,
            "When the last successful apply happened.",
            stats.last_apply_unix as f64,
        ),
        (
            "sg_last_apply_to_effect_seconds",
            Kind::Gauge,
            "Time from the start of the last apply to the generation flip.",
            stats.last_to_effect_ms / 1000.0,
        ),
        (
            "sg_pins_restored_total",
            Kind::Counter,
            "Pins that disappeared under the daemon and were pinned again.",
            stats.pins_restored as f64,
        ),
        (
            "sg_enforcing",
            Kind::Gauge,
            "1 when a policy is applied in this namespace, 0 while waiting for its interfaces.",
            if enforcing { 1.0 } else { 0.0 },
        ),
    ];
    for (name, kind, help, value) in families {
        scalar(out, name, kind, help, value);
    }
}

/// The confirmation window's families (L1).
fn write_confirm(out: &mut String, stats: &Stats) {
    let families = [
        (
            "sg_confirm_pending",
            Kind::Gauge,
            "1 while an `apply --confirm` waits for `sg-agent confirm` (L1).",
            if stats.confirm_deadline_ms.is_some() {
                1.0
            } else {
                0.0
            },
        ),
        (
            "sg_confirm_deadline_timestamp_seconds",
            Kind::Gauge,
            "When the pending `apply --confirm` reverts unless confirmed (0: none pending).",
            stats.confirm_deadline_ms.unwrap_or(0) as f64 / 1000.0,
        ),
        (
            "sg_confirm_reverts_total",
            Kind::Counter,
            "`apply --confirm` changes reverted (deadline passed, or confirm --rollback).",
            stats.confirm_reverts as f64,
        ),
        (
            "sg_confirm_reverted_not_enforced",
            Kind::Gauge,
            "1 while the policy file or the store still holds a change that was reverted (L1): \
             it is not enforced, only its memberships.",
            if stats.not_enforced.is_some() {
                1.0
            } else {
                0.0
            },
        ),
        (
            "sg_store_revision_reverted",
            Kind::Gauge,
            "Fleet mode: the store revision reverted on this host and not enforced (0: none).",
            stats.reverted_revision.unwrap_or(0) as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        scalar(out, name, kind, help, value);
    }
}

/// A metric family's type (`# TYPE` line).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One Prometheus sample.
struct Sample<'a> {
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// A family with one unlabelled sample.
fn scalar(out: &mut String, name: &str, kind: Kind, help: &str, value: f64) {
    let sample = Sample {
        labels: vec![],
        value,
    };
    family(out, name, kind, help, &[sample]);
}

/// One metric family in the Prometheus text exposition format (version 0.0.4): HELP, TYPE,
/// then one line per sample, with HELP and label values escaped as the format says.
fn family(out: &mut String, name: &str, kind: Kind, help: &str, samples: &[Sample]) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
    for s in samples {
        out.push_str(name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{k}=\"{v}\"");
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", s.value);
    }
}

#[cfg(test)]
mod tests {
    use sg_common::Reason;

    use super::*;
    use crate::state::RuleSummary;

    #[test]
    fn prometheus_text_escapes_labels() {
        let mut s = String::new();
        family(
            &mut s,
            "sg_rule_packets_total",
            Kind::Counter,
            "Packets allowed by a rule.",
            &[Sample {
                labels: vec![("description", "say \"hi\"\n".into())],
                value: 3.0,
            }],
        );
        assert_eq!(
            s,
            "# HELP sg_rule_packets_total Packets allowed by a rule.\n# TYPE sg_rule_packets_total counter\nsg_rule_packets_total{description=\"say \\\"hi\\\"\\n\"} 3\n"
        );
    }

    fn stats() -> Stats {
        Stats {
            applies: 4,
            apply_errors: 1,
            last_error: Some("bad file".into()),
            last_apply_unix: 1_700_000_000,
            last_to_effect_ms: 12.5,
            pins_restored: 2,
            waiting: false,
            confirm_deadline_ms: Some(1_700_000_090_500),
            confirm_reverts: 3,
            deferred: None,
            window: None,
            not_enforced: Some("bad.yaml".into()),
            reverted_revision: Some(42),
            silent_watches: Some(1),
        }
    }

    /// Names, labels, types and HELP texts are an interface (docs/agent.md, the daemon
    /// tests, dashboards): this is the text the daemon served before it was split.
    #[test]
    fn scrape_text_keeps_every_family_label_and_help() {
        let rule = |id: &str, packets, description: Option<&str>| RuleCount {
            id: id.into(),
            meta: RuleSummary {
                group: "sg-web".into(),
                direction: "ingress".into(),
                text: "tcp 443 from 0.0.0.0/0".into(),
                description: description.map(Into::into),
            },
            packets,
            bytes: packets * 100,
        };
        let c = Counters {
            rules: vec![rule("sgr-1", 12, Some("app")), rule("sgr-2", 0, None)],
            reasons: vec![(Reason::PassRuleNew, 3), (Reason::DropNoRule, 5)],
            conntrack: CtStats {
                ct_count: 5,
                new_count: 2,
                ct_available: 1000,
                exceeded: 3,
                ..CtStats::default()
            },
            confirm_reverts: 3,
            audit: false,
            audit_interfaces: vec![crate::agent::AuditedDevice {
                device: "eth1".into(),
                ifindex: 3,
                by: "command",
            }],
        };
        let counted = r#"# HELP sg_rule_packets_total Packets allowed by each rule (a tracked flow is charged to the rule that opened it).
# TYPE sg_rule_packets_total counter
sg_rule_packets_total{rule_id="sgr-1",group="sg-web",direction="ingress",rule="tcp 443 from 0.0.0.0/0",description="app"} 12
sg_rule_packets_total{rule_id="sgr-2",group="sg-web",direction="ingress",rule="tcp 443 from 0.0.0.0/0",description=""} 0
# HELP sg_rule_bytes_total Bytes allowed by each rule.
# TYPE sg_rule_bytes_total counter
sg_rule_bytes_total{rule_id="sgr-1",group="sg-web",direction="ingress",rule="tcp 443 from 0.0.0.0/0",description="app"} 1200
sg_rule_bytes_total{rule_id="sgr-2",group="sg-web",direction="ingress",rule="tcp 443 from 0.0.0.0/0",description=""} 0
# HELP sg_packets_total Packets by verdict reason.
# TYPE sg_packets_total counter
sg_packets_total{reason="pass_rule_new_flow",verdict="pass"} 3
sg_packets_total{reason="drop_no_rule",verdict="drop"} 5
# HELP sg_conntrack_entries Tracked flows (confirmed + unconfirmed).
# TYPE sg_conntrack_entries gauge
sg_conntrack_entries{table="confirmed"} 5
sg_conntrack_entries{table="unconfirmed"} 2
# HELP sg_conntrack_allowance_available Free conntrack entries (EC2's conntrack_allowance_available).
# TYPE sg_conntrack_allowance_available gauge
sg_conntrack_allowance_available 1000
# HELP sg_conntrack_allowance_exceeded_total Flows dropped because the conntrack table was full (EC2's conntrack_allowance_exceeded).
# TYPE sg_conntrack_allowance_exceeded_total counter
sg_conntrack_allowance_exceeded_total 3
# HELP sg_audit 1 while audit mode (L3) is on for every interface: what the policy drops passes.
# TYPE sg_audit gauge
sg_audit 0
# HELP sg_interface_audit 1 for each interface in audit mode of its own (L3), by `policy` (audit: true) or `command` (sg-agent audit on DEV).
# TYPE sg_interface_audit gauge
sg_interface_audit{device="eth1",by="command"} 1
"#;
        let want = format!("{counted}{}", daemon_families(1, 1));
        assert_eq!(render(Some(&c), 1, true, &stats()), want);
    }

    /// While waiting for its interfaces (or when the counters cannot be read) a scrape has
    /// only the daemon's own families.
    #[test]
    fn scrape_while_waiting_has_only_the_daemon_families() {
        assert_eq!(render(None, 0, false, &stats()), daemon_families(0, 0));
    }

    fn daemon_families(generation: u32, enforcing: u8) -> String {
        format!(
            "\
# HELP sg_policy_generation The active policy generation (0/1).
# TYPE sg_policy_generation gauge
sg_policy_generation {generation}
# HELP sg_applies_total Successful policy applies.
# TYPE sg_applies_total counter
sg_applies_total 4
# HELP sg_apply_errors_total Failed applies (the enforced policy stayed).
# TYPE sg_apply_errors_total counter
sg_apply_errors_total 1
# HELP sg_last_apply_timestamp_seconds When the last successful apply happened.
# TYPE sg_last_apply_timestamp_seconds gauge
sg_last_apply_timestamp_seconds 1700000000
# HELP sg_last_apply_to_effect_seconds Time from the start of the last apply to the generation flip.
# TYPE sg_last_apply_to_effect_seconds gauge
sg_last_apply_to_effect_seconds 0.0125
# HELP sg_pins_restored_total Pins that disappeared under the daemon and were pinned again.
# TYPE sg_pins_restored_total counter
sg_pins_restored_total 2
# HELP sg_enforcing 1 when a policy is applied in this namespace, 0 while waiting for its interfaces.
# TYPE sg_enforcing gauge
sg_enforcing {enforcing}
# HELP sg_confirm_pending 1 while an `apply --confirm` waits for `sg-agent confirm` (L1).
# TYPE sg_confirm_pending gauge
sg_confirm_pending 1
# HELP sg_confirm_deadline_timestamp_seconds When the pending `apply --confirm` reverts unless confirmed (0: none pending).
# TYPE sg_confirm_deadline_timestamp_seconds gauge
sg_confirm_deadline_timestamp_seconds 1700000090.5
# HELP sg_confirm_reverts_total `apply --confirm` changes reverted (deadline passed, or confirm --rollback).
# TYPE sg_confirm_reverts_total counter
sg_confirm_reverts_total 3
# HELP sg_confirm_reverted_not_enforced 1 while the policy file or the store still holds a change that was reverted (L1): it is not enforced, only its memberships.
# TYPE sg_confirm_reverted_not_enforced gauge
sg_confirm_reverted_not_enforced 1
# HELP sg_store_revision_reverted Fleet mode: the store revision reverted on this host and not enforced (0: none).
# TYPE sg_store_revision_reverted gauge
sg_store_revision_reverted 42
# HELP sg_store_watch_silent_total Fleet mode: store watches that went silent (a progress request unanswered, or a change not delivered) and were relisted (S2).
# TYPE sg_store_watch_silent_total counter
sg_store_watch_silent_total 1
"
        )
    }

    /// The endpoint's task asks the loop for each scrape, answers anything else with 404,
    /// and ends (Ok) when the loop lets go of its end.
    #[tokio::test]
    async fn endpoint_asks_the_loop_and_ends_with_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut scrapes) = mpsc::channel::<Scrape>(1);
        let server = tokio::spawn(serve(listener, tx));
        let get = |path: &'static str| async move {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            sock.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            sock.read_to_string(&mut resp).await.unwrap();
            resp
        };
        let (resp, ()) = tokio::join!(get("/metrics"), async {
            let reply = scrapes.recv().await.unwrap();
            reply.send("sg_enforcing 1\n".into()).unwrap();
        });
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{resp}"
        );
        assert!(resp.ends_with("\r\n\r\nsg_enforcing 1\n"), "{resp}");
        let resp = get("/").await;
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
        assert!(resp.ends_with("try /metrics\n"), "{resp}");
        drop(scrapes);
        server.await.unwrap().unwrap();
    }
}
