//! The bench's outputs: results.json (every figure, plus the key ratios at the top level),
//! results.md (the tables, the goals of the issue next to the figures) and cost.svg
//! (in-kernel cost against the number of rules, log scale). Formatting only: it measures
//! nothing and enforces nothing (a goal missed is reported, never an error).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Results;

/// The headline ratios, flattened into the top level of results.json. `None`: not measured
/// in this run (see `notes`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// sg new allowed flow: cost at the largest rule count / at 10 (100k in a full run).
    pub new_flow_ns_ratio_100k_vs_10: Option<f64>,
    /// The rule count the ratio above used as "100k" (smaller when 100k was not measured).
    pub new_flow_ratio_rules: Option<usize>,
    pub new_dropped_ns_ratio_100k_vs_10: Option<f64>,
    /// sg established flow (largest rule count) / XDP_PASS, median of back-to-back pairs.
    pub established_ns_ratio_vs_pass: Option<f64>,
    /// sg established flow / (XDP_PASS + one hash lookup), median of back-to-back pairs.
    pub established_ns_ratio_vs_pass_lookup: Option<f64>,
    /// UDP pps with sg / with no filter at 10k rules (paired rounds), per ingress hook.
    pub sg_tc_udp_ratio_vs_no_filter_10k: Option<f64>,
    pub sg_xdp_udp_ratio_vs_no_filter_10k: Option<f64>,
    /// UDP pps with sg / with nftables sets at 10k rules (quotient of the paired ratios).
    pub sg_tc_udp_ratio_vs_nft_sets_10k: Option<f64>,
    pub sg_xdp_udp_ratio_vs_nft_sets_10k: Option<f64>,
    /// UDP pps with sg / with one nftables rule per SG rule at 1k rules.
    pub sg_tc_udp_ratio_vs_nft_per_rule_1k: Option<f64>,
    pub sg_xdp_udp_ratio_vs_nft_per_rule_1k: Option<f64>,
    /// TCP stream Gbit/s with sg / with no filter at the largest rule count.
    pub sg_tc_tcp_ratio_vs_no_filter: Option<f64>,
    pub sg_xdp_tcp_ratio_vs_no_filter: Option<f64>,
    /// What `--ingress-hook auto` chose on the bench's veth ("tc", "xdp"), and why; the
    /// `sg_default_*` figures below are those of that hook.
    pub default_hook: Option<String>,
    pub default_hook_reason: Option<String>,
    pub sg_default_tcp_ratio_vs_no_filter: Option<f64>,
    pub sg_default_udp_ratio_vs_no_filter_10k: Option<f64>,
    pub sg_default_udp_ratio_vs_nft_sets_10k: Option<f64>,
    /// Connections per second with sg (default hook) / with no filter: the lower of the
    /// tracked and the untracked policy.
    pub sg_default_conn_rate_ratio_vs_no_filter: Option<f64>,
    /// The same / with nftables (quotient of the paired ratios), the lower of the two.
    pub sg_default_conn_rate_ratio_vs_nft: Option<f64>,
    pub compile_apply_10k_ms: Option<f64>,
    pub membership_visible_ms: Option<f64>,
    pub maps_total_bytes: Option<u64>,
    pub ct_bytes_per_entry: Option<f64>,
    /// The fleet section: agents, commit -> ack p99 per kind of change, the largest of all,
    /// and the mean CPU of an agent per membership change (less idle).
    pub fleet_agents: Option<usize>,
    pub fleet_membership_ack_p99_ms: Option<f64>,
    pub fleet_rule_ack_p99_ms: Option<f64>,
    pub fleet_ack_max_ms: Option<f64>,
    pub fleet_membership_cpu_ms: Option<f64>,
    /// The EC2 API (issue 16): AuthorizeSecurityGroupIngress sent -> every agent's ack
    /// (p99), and -> the first packet allowed on the sampled hosts (p50, p99).
    pub fleet_api_call_to_ack_p99_ms: Option<f64>,
    pub fleet_api_call_to_first_packet_p50_ms: Option<f64>,
    pub fleet_api_call_to_first_packet_p99_ms: Option<f64>,
    /// Network ACLs (issue 17): decision cost at 1,000 entries per list / at 20 (paired),
    /// per hook, and forwarded pps through the router with sg / bare (paired rounds).
    pub nacl_tc_decision_ratio_1000_vs_20: Option<f64>,
    pub nacl_xdp_decision_ratio_1000_vs_20: Option<f64>,
    pub nacl_tc_forwarding_ratio_vs_bare: Option<f64>,
    pub nacl_xdp_forwarding_ratio_vs_bare: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// None: not measured.
    pub met: Option<bool>,
}

fn udp_ratio(r: &Results, config: &str, rules: usize) -> Option<f64> {
    r.udp
        .iter()
        .find(|f| f.config == config && f.rules == rules)
        .map(|f| f.ratio_vs_no_filter)
}

pub fn summarize(r: &Results) -> Summary {
    let mut s = Summary::default();
    if let Some(k) = &r.kernel {
        let ok: Vec<_> = k.sizes.iter().filter(|z| z.error.is_none()).collect();
        let small = ok.iter().find(|z| z.rules == 10);
        let large = ok.iter().filter(|z| z.rules > 10).max_by_key(|z| z.rules);
        if let (Some(a), Some(b)) = (small, large) {
            s.new_flow_ratio_rules = Some(b.rules);
            // Paired (each measurement next to one of the first rule count) when the first
            // rule count measured is 10 and pairs were taken; else the quotient of the medians.
            let paired = k.sizes.first().is_some_and(|f| f.rules == 10);
            s.new_flow_ns_ratio_100k_vs_10 = b
                .new_allowed_ratio_vs_smallest
                .filter(|_| paired)
                .or_else(|| b.new_allowed_ns.zip(a.new_allowed_ns).map(|(x, y)| x / y));
            s.new_dropped_ns_ratio_100k_vs_10 =
                b.new_dropped_ns.zip(a.new_dropped_ns).map(|(x, y)| x / y);
        }
        if let Some(z) = ok.iter().max_by_key(|z| z.rules) {
            // Paired with the yardsticks measured next to it; else the quotient of medians.
            let quotient = |y: f64| z.established_ns.map(|e| e / y);
            s.established_ns_ratio_vs_pass =
                z.established_ratio_vs_pass.or_else(|| quotient(k.pass_ns));
            s.established_ns_ratio_vs_pass_lookup = z
                .established_ratio_vs_pass_lookup
                .or_else(|| quotient(k.pass_lookup_ns));
        }
    }
    let q = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(x, y)| x / y);
    s.sg_tc_udp_ratio_vs_no_filter_10k = udp_ratio(r, "sg_tc", 10_000);
    s.sg_xdp_udp_ratio_vs_no_filter_10k = udp_ratio(r, "sg_xdp", 10_000);
    let sets = udp_ratio(r, "nft_sets", 10_000);
    s.sg_tc_udp_ratio_vs_nft_sets_10k = q(s.sg_tc_udp_ratio_vs_no_filter_10k, sets);
    s.sg_xdp_udp_ratio_vs_nft_sets_10k = q(s.sg_xdp_udp_ratio_vs_no_filter_10k, sets);
    let per = udp_ratio(r, "nft_per_rule", 1_000);
    s.sg_tc_udp_ratio_vs_nft_per_rule_1k = q(udp_ratio(r, "sg_tc", 1_000), per);
    s.sg_xdp_udp_ratio_vs_nft_per_rule_1k = q(udp_ratio(r, "sg_xdp", 1_000), per);
    let tcp = |c: &str| {
        r.tcp
            .iter()
            .filter(|f| f.config == c)
            .max_by_key(|f| f.rules)
            .map(|f| f.ratio_vs_no_filter)
    };
    s.sg_tc_tcp_ratio_vs_no_filter = tcp("sg_tc");
    s.sg_xdp_tcp_ratio_vs_no_filter = tcp("sg_xdp");
    if let Some((hook, why)) = &r.default_hook {
        let config = format!("sg_{hook}");
        s.default_hook = Some(hook.to_string());
        s.default_hook_reason = Some(why.clone());
        s.sg_default_tcp_ratio_vs_no_filter = tcp(&config);
        s.sg_default_udp_ratio_vs_no_filter_10k = udp_ratio(r, &config, 10_000);
        s.sg_default_udp_ratio_vs_nft_sets_10k = q(s.sg_default_udp_ratio_vs_no_filter_10k, sets);
    }
    if let Some(c) = &r.conn_rate {
        (
            s.sg_default_conn_rate_ratio_vs_no_filter,
            s.sg_default_conn_rate_ratio_vs_nft,
        ) = conn_rate_ratios(c);
    }
    if let Some(c) = &r.control {
        if c.rules >= 10_000 {
            s.compile_apply_10k_ms = Some(c.compile_apply_ms);
        }
        s.membership_visible_ms = c.membership_visible_ms;
        s.maps_total_bytes = Some(c.maps_total_bytes);
        s.ct_bytes_per_entry = c.ct_bytes_per_entry;
    }
    if let Some(f) = &r.fleet {
        let measured = |k: &super::fleet::KindFigures| k.acks > 0;
        s.fleet_agents = Some(f.agents);
        s.fleet_membership_ack_p99_ms = measured(&f.membership).then_some(f.membership.ack_ms.p99);
        s.fleet_rule_ack_p99_ms = measured(&f.rule).then_some(f.rule.ack_ms.p99);
        s.fleet_ack_max_ms = (measured(&f.membership) || measured(&f.rule))
            .then_some(f.membership.ack_ms.max.max(f.rule.ack_ms.max));
        s.fleet_membership_cpu_ms = (f.membership.cpu_ms.n > 0).then_some(f.membership.cpu_ms.mean);
        s.fleet_api_call_to_ack_p99_ms =
            measured(&f.api).then_some(f.api.ack_from_put_start_ms.p99);
        let first = &f.api.first_packet_from_put_start_ms;
        s.fleet_api_call_to_first_packet_p50_ms = (first.n > 0).then_some(first.p50);
        s.fleet_api_call_to_first_packet_p99_ms = (first.n > 0).then_some(first.p99);
    }
    if let Some(n) = &r.nacl {
        let dec = |h: &str| {
            n.decision
                .iter()
                .find(|d| d.hook == h)
                .map(|d| d.ratio_large_vs_small)
        };
        let fwd = |c: &str| {
            n.forwarding
                .iter()
                .find(|f| f.config == c)
                .map(|f| f.ratio_vs_bare)
        };
        s.nacl_tc_decision_ratio_1000_vs_20 = dec("tc");
        s.nacl_xdp_decision_ratio_1000_vs_20 = dec("xdp");
        s.nacl_tc_forwarding_ratio_vs_bare = fwd("sg_tc");
        s.nacl_xdp_forwarding_ratio_vs_bare = fwd("sg_xdp");
    }
    s
}

/// (sg / no filter, sg / nftables), each the lower over the policies; None when a policy
/// lacks a figure.
fn conn_rate_ratios(c: &super::connrate::ConnRate) -> (Option<f64>, Option<f64>) {
    let ratio = |config: &str, policy: &str| {
        c.figures
            .iter()
            .find(|f| f.config == config && f.policy == policy)
            .map(|f| f.ratio_vs_no_filter)
    };
    let (mut vs_none, mut vs_nft) = (Some(f64::INFINITY), Some(f64::INFINITY));
    for policy in ["tracked", "untracked"] {
        let sg = ratio("sg_default", policy);
        vs_none = vs_none.zip(sg).map(|(a, b)| a.min(b));
        vs_nft = vs_nft
            .zip(sg.zip(ratio("nft", policy)).map(|(a, b)| a / b))
            .map(|(a, b)| a.min(b));
    }
    (vs_none, vs_nft)
}

fn x(v: Option<f64>, digits: usize) -> String {
    v.map_or("not measured".into(), |v| format!("{v:.digits$}"))
}

/// A ratio as the goal table writes it: `1.23x`, or "not measured".
fn times(v: Option<f64>) -> String {
    v.map_or("not measured".into(), |v| format!("{v:.2}x"))
}

/// A ratio per ingress hook: `TC 0.95x, XDP 0.70x`.
fn both(tc: Option<f64>, xdp: Option<f64>) -> String {
    format!("TC {}, XDP {}", times(tc), times(xdp))
}

pub fn goals(r: &Results) -> Vec<Goal> {
    let s = &r.summary;
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut g = vec![
        Goal {
            goal: format!(
                "new-flow cost at 100k rules <= 1.25x at 10{}",
                match s.new_flow_ratio_rules {
                    Some(n) if n != 100_000 => format!(" (largest measured: {n})"),
                    _ => String::new(),
                }
            ),
            measured: format!(
                "{} (new dropped: {})",
                times(s.new_flow_ns_ratio_100k_vs_10),
                times(s.new_dropped_ns_ratio_100k_vs_10)
            ),
            met: s.new_flow_ns_ratio_100k_vs_10.map(|v| v <= 1.25),
        },
        Goal {
            goal: "established <= 1.5x (bare XDP_PASS + one hash lookup)".into(),
            measured: format!(
                "{} (vs XDP_PASS alone: {})",
                times(s.established_ns_ratio_vs_pass_lookup),
                times(s.established_ns_ratio_vs_pass)
            ),
            met: s.established_ns_ratio_vs_pass_lookup.map(|v| v <= 1.5),
        },
        Goal {
            goal: "sg veth pps >= 0.9x no filter (10k rules)".into(),
            measured: both(
                s.sg_tc_udp_ratio_vs_no_filter_10k,
                s.sg_xdp_udp_ratio_vs_no_filter_10k,
            ),
            met: best(
                s.sg_tc_udp_ratio_vs_no_filter_10k,
                s.sg_xdp_udp_ratio_vs_no_filter_10k,
            )
            .map(|v| v >= 0.9),
        },
        Goal {
            goal: "sg veth pps >= 1.2x nftables sets (10k rules)".into(),
            measured: both(
                s.sg_tc_udp_ratio_vs_nft_sets_10k,
                s.sg_xdp_udp_ratio_vs_nft_sets_10k,
            ),
            met: best(
                s.sg_tc_udp_ratio_vs_nft_sets_10k,
                s.sg_xdp_udp_ratio_vs_nft_sets_10k,
            )
            .map(|v| v >= 1.2),
        },
        Goal {
            goal: "sg veth pps >= 5x nftables one rule per SG rule (1k rules)".into(),
            measured: both(
                s.sg_tc_udp_ratio_vs_nft_per_rule_1k,
                s.sg_xdp_udp_ratio_vs_nft_per_rule_1k,
            ),
            met: best(
                s.sg_tc_udp_ratio_vs_nft_per_rule_1k,
                s.sg_xdp_udp_ratio_vs_nft_per_rule_1k,
            )
            .map(|v| v >= 5.0),
        },
        Goal {
            goal: "compile + apply 10k rules < 250 ms".into(),
            measured: format!("{} ms", x(s.compile_apply_10k_ms, 0)),
            met: s.compile_apply_10k_ms.map(|v| v < 250.0),
        },
        Goal {
            goal: "membership change visible < 10 ms".into(),
            measured: format!("{} ms", x(s.membership_visible_ms, 1)),
            met: s.membership_visible_ms.map(|v| v < 10.0),
        },
    ];
    if let Some(f) = &r.fleet {
        g.extend(fleet_goals(s, f));
    }
    if r.nacl.is_some() {
        g.extend(nacl_goals(s));
    }
    g.extend(flow_path_goals(r));
    if r.conn_rate.is_some() {
        g.extend(conn_rate_goals(s));
    }
    if let Some(c) = &r.control
        && c.rules < 10_000
    {
        g[5].measured = format!(
            "{:.0} ms at {} rules (10k not run)",
            c.compile_apply_ms, c.rules
        );
    }
    g
}

/// The fleet's goals (issue 15): only when the section ran. An ack missing counts against
/// the p99 and max goals.
fn fleet_goals(s: &Summary, f: &super::fleet::FleetFigures) -> Vec<Goal> {
    let all_acked = f.membership.acks == f.membership.expected && f.rule.acks == f.rule.expected;
    let missing = if all_acked {
        String::new()
    } else {
        format!(
            "; acks missing: {} membership, {} rule",
            f.membership.expected - f.membership.acks,
            f.rule.expected - f.rule.acks
        )
    };
    let p99 = s.fleet_membership_ack_p99_ms.zip(s.fleet_rule_ack_p99_ms);
    vec![
        Goal {
            goal: format!(
                "fleet ({} agents): store commit -> every agent's ack, p99 <= 250 ms",
                f.agents
            ),
            measured: format!(
                "membership {} ms, rule {} ms{missing}",
                x(s.fleet_membership_ack_p99_ms, 0),
                x(s.fleet_rule_ack_p99_ms, 0)
            ),
            met: p99.map(|(a, b)| a <= 250.0 && b <= 250.0 && all_acked),
        },
        Goal {
            goal: format!(
                "fleet ({} agents): store commit -> every agent's ack, max <= 1 s",
                f.agents
            ),
            measured: format!(
                "membership {} ms, rule {} ms{missing}",
                x(p99.map(|_| f.membership.ack_ms.max), 0),
                x(p99.map(|_| f.rule.ack_ms.max), 0)
            ),
            met: s.fleet_ack_max_ms.map(|m| m <= 1000.0 && all_acked),
        },
        Goal {
            goal: "fleet: agent CPU per membership change <= 5 ms".into(),
            measured: format!(
                "{} ms mean per agent (p99 {:.1} ms; {:.1} ms before subtracting idle)",
                x(s.fleet_membership_cpu_ms, 2),
                f.membership.cpu_ms.p99,
                f.membership.cpu_raw_ms.mean
            ),
            met: s.fleet_membership_cpu_ms.map(|v| v <= 5.0),
        },
    ]
}

/// The network ACL goals (issue 17): only when the section ran. TC is the hook a router's
/// veths get by default; the best hook meets the forwarding goal, like the veth goals.
fn nacl_goals(s: &Summary) -> Vec<Goal> {
    let best = match (
        s.nacl_tc_forwarding_ratio_vs_bare,
        s.nacl_xdp_forwarding_ratio_vs_bare,
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let worst_decision = match (
        s.nacl_tc_decision_ratio_1000_vs_20,
        s.nacl_xdp_decision_ratio_1000_vs_20,
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    vec![
        Goal {
            goal: "NACL decision at 1,000 rules per list <= 1.25x at 20".into(),
            measured: both(
                s.nacl_tc_decision_ratio_1000_vs_20,
                s.nacl_xdp_decision_ratio_1000_vs_20,
            ),
            met: worst_decision.map(|v| v <= 1.25),
        },
        Goal {
            goal: "forwarding through a NACL router >= 0.9x of the bare router".into(),
            measured: both(
                s.nacl_tc_forwarding_ratio_vs_bare,
                s.nacl_xdp_forwarding_ratio_vs_bare,
            ),
            met: best.map(|v| v >= 0.9),
        },
    ]
}

/// Issue 19's goals for the default hook on veth and the flow path (items 1-3), beside the
/// older goals they tighten; each only when its section ran (throughput, kernel, control).
fn flow_path_goals(r: &Results) -> Vec<Goal> {
    let s = &r.summary;
    let hook = s.default_hook.as_deref().unwrap_or("?");
    let ok = |v: Option<f64>, f: fn(f64) -> bool| v.map(f);
    let mut g = Vec::new();
    if !r.udp.is_empty() || !r.tcp.is_empty() {
        g.extend([
            Goal {
                goal: format!("sg (default hook: {hook}) veth TCP stream >= 0.95x no filter"),
                measured: times(s.sg_default_tcp_ratio_vs_no_filter),
                met: ok(s.sg_default_tcp_ratio_vs_no_filter, |v| v >= 0.95),
            },
            Goal {
                goal: format!(
                    "sg (default hook: {hook}) veth 64-byte UDP >= 0.92x no filter (10k rules)"
                ),
                measured: times(s.sg_default_udp_ratio_vs_no_filter_10k),
                met: ok(s.sg_default_udp_ratio_vs_no_filter_10k, |v| v >= 0.92),
            },
            Goal {
                goal: format!(
                    "sg (default hook: {hook}) veth 64-byte UDP >= 1.5x nftables sets (10k rules)"
                ),
                measured: times(s.sg_default_udp_ratio_vs_nft_sets_10k),
                met: ok(s.sg_default_udp_ratio_vs_nft_sets_10k, |v| v >= 1.5),
            },
        ]);
    }
    if r.kernel.is_some() {
        g.push(Goal {
            goal: "established <= 1.3x (bare XDP_PASS + one hash lookup)".into(),
            measured: times(s.established_ns_ratio_vs_pass_lookup),
            met: ok(s.established_ns_ratio_vs_pass_lookup, |v| v <= 1.3),
        });
    }
    if r.control.is_some() {
        g.push(Goal {
            goal: "conntrack entry <= 128 bytes (kernel accounting)".into(),
            measured: format!("{} bytes", x(s.ct_bytes_per_entry, 0)),
            met: ok(s.ct_bytes_per_entry, |v| v <= 128.0),
        });
    }
    if let Some(k) = &r.kernel {
        let at = |n: usize| {
            k.sizes
                .iter()
                .find(|z| z.rules == n && z.error.is_none())
                .and_then(|z| z.new_allowed_ns)
        };
        let (small, large) = (at(10), at(100_000));
        g.push(Goal {
            goal: "new allowed flow <= 400 ns at 10 and at 100k rules (one run each)".into(),
            measured: format!(
                "{} / {} ns (XDP_PASS one run: {:.0} ns; XDP_PASS + the kernel's insert of one \
                 conntrack-sized entry: {:.0} ns, preallocated map {:.0} ns)",
                x(small, 0),
                x(large, 0),
                k.pass_once_ns,
                k.insert_once_ns,
                k.insert_prealloc_once_ns
            ),
            met: small.zip(large).map(|(a, b)| a.max(b) <= 400.0),
        });
    }
    g
}

/// The connection-rate goals (issue 19 item 4): only when the section ran; each the lower of
/// the tracked and the untracked policy.
fn conn_rate_goals(s: &Summary) -> Vec<Goal> {
    let hook = s.default_hook.as_deref().unwrap_or("?");
    vec![
        Goal {
            goal: format!(
                "sg (default hook: {hook}) TCP connections/s >= 0.95x no filter (tracked and \
                 untracked)"
            ),
            measured: times(s.sg_default_conn_rate_ratio_vs_no_filter),
            met: s.sg_default_conn_rate_ratio_vs_no_filter.map(|v| v >= 0.95),
        },
        Goal {
            goal: format!(
                "sg (default hook: {hook}) TCP connections/s >= nftables (tracked and untracked)"
            ),
            measured: times(s.sg_default_conn_rate_ratio_vs_nft),
            met: s.sg_default_conn_rate_ratio_vs_nft.map(|v| v >= 1.0),
        },
    ]
}

/// The connection-rate section's table.
fn conn_rate_markdown(w: &mut String, c: &super::connrate::ConnRate) {
    let _ = writeln!(
        w,
        "\n### TCP connection rate over veth (connect, {}-byte request, {}-byte response, close; \
         connections/s; ratio to no filter in the same rounds)\n\n\
         {} concurrent clients for {:.1} s per measurement, median of {} rounds (each the \
         configuration, then no filter). Close: {}. sg: default hook `{}` ({}); conntrack \
         capacity {} confirmed / {} unconfirmed, flushed after each round. nftables: `ct state \
         established,related accept`, then the rule (one nftables rule per SG rule).\n\n\
         | policy | no filter | nftables | sg ({}) | sg / nftables | sg flows created per \
         connection | sg peak entries | sg drops, table full |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        c.request_bytes,
        c.response_bytes,
        c.clients,
        c.window_s,
        c.rounds,
        c.close,
        c.default_hook,
        c.default_hook_reason,
        c.ct_capacity.0,
        c.ct_capacity.1,
        c.default_hook
    );
    for policy in ["tracked", "untracked"] {
        let find = |config: &str| {
            c.figures
                .iter()
                .find(|f| f.config == config && f.policy == policy)
        };
        let (nft, sg) = (find("nft"), find("sg_default"));
        let cell = |f: Option<&super::connrate::ConnRateFigure>| {
            f.map_or("-".into(), |f| {
                format!("{} ({:.2}x)", k(f.conns_per_s), f.ratio_vs_no_filter)
            })
        };
        let refs: Vec<f64> = [nft, sg]
            .iter()
            .flatten()
            .map(|f| f.reference_conns_per_s)
            .collect();
        let vs_nft = sg.zip(nft).map_or("-".into(), |(a, b)| {
            format!("{:.2}x", a.ratio_vs_no_filter / b.ratio_vs_no_filter)
        });
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let _ = writeln!(
            w,
            "| {policy} | {} | {} | {} | {vs_nft} | {} | {} | {} |",
            k(super::median(&refs)),
            cell(nft),
            cell(sg),
            opt(sg
                .and_then(|f| f.sg_flows_created_per_conn)
                .map(|v| format!("{v:.2}"))),
            opt(sg.and_then(|f| f.sg_ct_peak_entries).map(|v| v.to_string())),
            opt(sg.and_then(|f| f.sg_ct_full_drops).map(|v| v.to_string())),
        );
    }
    let failed: Vec<String> = c
        .figures
        .iter()
        .filter(|f| f.failed + f.reference_failed > 0)
        .map(|f| {
            format!(
                "{} {}: {} failed connections ({} in its reference rounds)",
                f.config, f.policy, f.failed, f.reference_failed
            )
        })
        .collect();
    for e in failed.iter().chain(&c.errors) {
        let _ = writeln!(w, "\n- connection rate: {e}");
    }
}

/// The network ACL section's tables.
fn nacl_markdown(w: &mut String, n: &super::nacl::NaclFigures) {
    let _ = writeln!(
        w,
        "\n### Network ACLs on a router\n\n\
         Decision cost (BPF_PROG_TEST_RUN, 64-byte UDP frame leaving a subnet, decided by the \
         last numbered entry of its NACL's outbound list; median of {} measurements of {} runs; \
         the ratio pairs each 1,000-entry measurement with a 20-entry one taken just before).\n\n\
         | hook | ns at 20 per list | ns at 1,000 per list | 1,000 / 20 (paired) | peer entries / port pages at 20 | at 1,000 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |",
        n.medians_of, n.repeat
    );
    for d in &n.decision {
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} | {:.2}x | {} / {} | {} / {} |",
            d.hook,
            d.small_ns,
            d.large_ns,
            d.ratio_large_vs_small,
            d.small_entries.0,
            d.small_entries.1,
            d.large_entries.0,
            d.large_entries.1
        );
    }
    let _ = writeln!(
        w,
        "\nForwarding: UDP 64-byte flood sender -> router -> receiver (three namespaces, two \
         veth pairs), delivered pps at the receiver; sg on both router devices with 20-entry \
         NACLs that allow the flow by their last entry, in alternation with the bare router \
         (generator: {}). The pass-only rows put programs that only pass at the same hooks \
         (TC or native XDP ingress, TC egress, on both router devices): what the hooks cost \
         here with nothing in them.\n\n\
         | router | pps | bare router pps | ratio (paired) | packets the NACLs passed |\n\
         | --- | ---: | ---: | ---: | ---: |",
        n.generator.as_deref().unwrap_or("-")
    );
    for f in &n.forwarding {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2}x | {} |",
            f.config,
            k(f.pps),
            k(f.bare_pps),
            f.ratio_vs_bare,
            if f.config.starts_with("pass_only") {
                "-".to_string()
            } else {
                f.nacl_passed.to_string()
            }
        );
    }
    for e in &n.errors {
        let _ = writeln!(w, "\n- network ACLs: {e}");
    }
}

pub fn write(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("results.json"), json + "\n")?;
    std::fs::write(dir.join("results.md"), markdown(r))?;
    std::fs::write(dir.join("cost.svg"), svg(r))?;
    Ok(())
}

fn k(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn opt_ns(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn rules_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The header of the throughput tables: the sg columns name their hook, the default one
/// marked, XDP on veth marked as the warning it is.
fn throughput_header(r: &Results) -> String {
    let default = r.default_hook.as_ref().map(|d| d.0);
    let col = |hook: &str, label: &str| {
        if default == Some(hook) {
            format!("sg {label} (default hook)")
        } else if hook == "xdp" {
            format!("sg {label} (warning: not the default here)")
        } else {
            format!("sg {label}")
        }
    };
    format!(
        "| rules | no filter | nftables sets | nftables rule per SG rule | {} | {} |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |",
        col("xdp", "XDP"),
        col("tc", "TC")
    )
}

/// Why the XDP column is a warning, and what the default hook is.
fn hook_note(r: &Results) -> String {
    let default = match &r.default_hook {
        Some((hook, why)) => format!("The default hook on this veth is `{hook}` ({why})."),
        None => "The default hook on this veth was not determined.".into(),
    };
    format!(
        "{default} The XDP column is kept as a warning: native XDP on veth (and virtio-net) \
         makes the driver give up GRO/TSO, which costs a TCP stream most of its throughput; \
         `--ingress-hook auto` does not choose it on such devices."
    )
}

/// The tables (also pasted into docs/performance.md by `cargo xtask bench`).
pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let w = &mut o;
    let _ = writeln!(
        w,
        "Machine: {} ({} cores), {} MB RAM, Linux {}; load average {} at start, {} at end.",
        m.cpu_model, m.cores, m.memory_mb, m.kernel, m.loadavg_start, m.loadavg_end
    );
    let _ = writeln!(
        w,
        "Command: `{}` ({:.0} s{}).\n",
        r.command,
        r.duration_s,
        if r.quick { ", quick run" } else { "" }
    );

    let _ = writeln!(
        w,
        "### Goals\n\n| goal | measured | met |\n| --- | --- | --- |"
    );
    for g in &r.goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(w, "| {} | {} | {met} |", g.goal, g.measured);
    }

    if let Some(kc) = &r.kernel {
        let _ = writeln!(
            w,
            "\n### In-kernel cost per packet (BPF_PROG_TEST_RUN, XDP ingress, 64-byte frames, ns)\n\n\
             Median of {} measurements of {} runs each. Baselines: XDP_PASS {:.1} ns; XDP_PASS + \
             one hash lookup (conntrack-sized key) {:.1} ns; XDP_PASS timed one run at a time \
             (the way new flows are timed) {:.1} ns; XDP_PASS + one insert of a new \
             conntrack-sized entry, one run at a time (the kernel's share of a new flow): \
             {:.1} ns into a map allocated as it fills, as sg's conntrack, {:.1} ns into a \
             preallocated one. The two ratio columns pair every \
             measurement with the yardstick's measured just before it (established: XDP_PASS + \
             one hash lookup; new allowed: the same measurement at the first rule count) and \
             give the median of the pairs.\n",
            kc.medians_of,
            kc.repeat,
            kc.pass_ns,
            kc.pass_lookup_ns,
            kc.pass_once_ns,
            kc.insert_once_ns,
            kc.insert_prealloc_once_ns
        );
        let _ = writeln!(
            w,
            "| rules | established | established / (pass + lookup) | new allowed (one run each) | new allowed / at first count | new dropped | peer entries | port pages | compile ms | apply ms |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for s in &kc.sizes {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    w,
                    "| {} | not measured: {} | | | | | {} | {} | {:.0} | |",
                    rules_label(s.rules),
                    e.replace('|', "/"),
                    s.peer_entries,
                    s.port_entries,
                    s.compile_ms
                );
                continue;
            }
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                rules_label(s.rules),
                opt_ns(s.established_ns),
                s.established_ratio_vs_pass_lookup
                    .map_or(String::new(), |v| format!("{v:.2}x")),
                opt_ns(s.new_allowed_ns),
                s.new_allowed_ratio_vs_smallest
                    .map_or(String::new(), |v| format!("{v:.2}x")),
                opt_ns(s.new_dropped_ns),
                s.peer_entries,
                s.port_entries,
                s.compile_ms,
                s.apply_ms
            );
        }
    }

    let configs = ["nft_sets", "nft_per_rule", "sg_xdp", "sg_tc"];
    let mut rules: Vec<usize> = r.udp.iter().map(|f| f.rules).collect();
    rules.sort();
    rules.dedup();
    if !rules.is_empty() {
        let _ = writeln!(
            w,
            "\n### veth throughput, 64-byte UDP, one flow (delivered pps; ratio to no filter in \
             the same rounds)\n\nGenerator: {} (receiver's NAPI work {}). Each cell: median of {} \
             rounds, each round the configuration then no filter.\n",
            r.generator.as_deref().unwrap_or("-"),
            if r.receiver_pinned {
                "on its own CPU"
            } else {
                "on the generator's CPU"
            },
            r.rounds
        );
        let _ = writeln!(w, "{}", throughput_header(r));
        for n in &rules {
            let figs: Vec<_> = r.udp.iter().filter(|f| f.rules == *n).collect();
            let reference: Vec<f64> = figs.iter().map(|f| f.reference_pps).collect();
            let mut row = format!("| {} | {}", rules_label(*n), k(super::median(&reference)));
            for c in configs {
                match figs.iter().find(|f| f.config == c) {
                    Some(f) => {
                        let _ = write!(row, " | {} ({:.2}x)", k(f.pps), f.ratio_vs_no_filter);
                    }
                    None => row.push_str(" | -"),
                }
            }
            let _ = writeln!(w, "{row} |");
        }
        let _ = writeln!(
            w,
            "\n### veth throughput, one iperf3 TCP stream (Gbit/s; ratio to no filter)\n\n{}",
            throughput_header(r)
        );
        for n in &rules {
            let figs: Vec<_> = r.tcp.iter().filter(|f| f.rules == *n).collect();
            let reference: Vec<f64> = figs.iter().map(|f| f.reference_gbps).collect();
            let mut row = format!("| {} | {:.1}", rules_label(*n), super::median(&reference));
            for c in configs {
                match figs.iter().find(|f| f.config == c) {
                    Some(f) => {
                        let _ = write!(row, " | {:.1} ({:.2}x)", f.gbps, f.ratio_vs_no_filter);
                    }
                    None => row.push_str(" | -"),
                }
            }
            let _ = writeln!(w, "{row} |");
        }
        let _ = writeln!(w, "\n{}", hook_note(r));
        let _ = writeln!(w, "\nInstall time (ms: `nft -f`, or sg compile + apply):\n");
        let _ = writeln!(
            w,
            "| rules | nftables sets | nftables rule per SG rule | sg |\n| ---: | ---: | ---: | ---: |"
        );
        for n in &rules {
            let get = |c: &str| {
                r.udp
                    .iter()
                    .find(|f| f.rules == *n && f.config == c)
                    .map_or("-".into(), |f| format!("{:.0}", f.install_ms))
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                rules_label(*n),
                get("nft_sets"),
                get("nft_per_rule"),
                get("sg_tc")
            );
        }
    }

    if let Some(c) = &r.control {
        let _ = writeln!(
            w,
            "\n### Control plane ({} rules)\n\n| figure | value |\n| --- | ---: |",
            rules_label(c.rules)
        );
        let rows = [
            ("compile (first policy)", format!("{:.1} ms", c.compile_ms)),
            (
                "apply (first policy; until the flip)",
                format!("{:.1} ms ({:.1} ms)", c.apply_ms, c.apply_to_flip_ms),
            ),
            (
                "compile + apply of a replacement, until the flip",
                format!("{:.1} ms", c.compile_apply_ms),
            ),
            (
                "replacement apply including old-generation cleanup",
                format!("{:.1} ms", c.replace_apply_ms),
            ),
            (
                "membership change -> first packet of the new member allowed",
                c.membership_visible_ms.map_or_else(
                    || {
                        format!(
                            "not measured: {}",
                            c.membership_error.clone().unwrap_or_default()
                        )
                    },
                    |v| {
                        format!(
                            "{v:.1} ms (delta computed in {:.1} ms, written in {:.1} ms)",
                            c.membership_delta_ms.unwrap_or(f64::NAN),
                            c.membership_write_ms.unwrap_or(f64::NAN)
                        )
                    },
                ),
            ),
            (
                "memory of all maps (kernel accounting)",
                format!("{:.1} MB", c.maps_total_bytes as f64 / 1e6),
            ),
            (
                "bytes per confirmed conntrack entry",
                c.ct_bytes_per_entry
                    .map_or("-".into(), |v| format!("{v:.0}")),
            ),
            (
                "bytes per unconfirmed conntrack entry",
                c.ct_new_bytes_per_entry
                    .map_or("-".into(), |v| format!("{v:.0}")),
            ),
        ];
        for (a, b) in rows {
            let _ = writeln!(w, "| {a} | {b} |");
        }
        if let Some(ct) = &c.conntrack {
            let _ = writeln!(
                w,
                "| conntrack: {} established flows, then new flows until the table refused \
                 (capacity {} unconfirmed) | {} new flows stored, {} refused, {}/{} established \
                 flows still passing |",
                ct.established,
                ct.ct_new_capacity,
                ct.new_flows_stored,
                ct.refused,
                ct.established_kept,
                ct.established
            );
        }
        let mut maps: Vec<_> = c
            .maps
            .iter()
            .filter(|m| m.name.starts_with("SG_"))
            .collect();
        maps.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        let list: Vec<String> = maps
            .iter()
            .map(|m| format!("{} {:.2} MB", m.name, m.bytes as f64 / 1e6))
            .collect();
        let _ = writeln!(w, "\nMaps: {}.", list.join(", "));
    }

    if let Some(c) = &r.conn_rate {
        conn_rate_markdown(w, c);
    }
    if let Some(f) = &r.fleet {
        fleet_markdown(w, f);
    }
    if let Some(n) = &r.nacl {
        nacl_markdown(w, n);
    }

    if !r.generators.is_empty() {
        let _ = writeln!(
            w,
            "\n### UDP generators (no filter, delivered pps, median of rounds)\n\n\
             | generator | receiver on the generator's CPU | receiver on its own CPU |\n\
             | --- | ---: | ---: |"
        );
        let mut names: Vec<&str> = Vec::new();
        for g in &r.generators {
            if !names.contains(&g.name) {
                names.push(g.name);
            }
        }
        for n in names {
            let cell = |pinned: bool| {
                r.generators
                    .iter()
                    .find(|g| g.name == n && g.receiver_pinned == pinned)
                    .map_or("-".into(), |g| match &g.error {
                        Some(e) => format!("failed: {}", e.chars().take(60).collect::<String>()),
                        None => format!("{} (spread {:.0}%)", k(g.pps_median), g.spread * 100.0),
                    })
            };
            let _ = writeln!(w, "| {n} | {} | {} |", cell(false), cell(true));
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(w, "\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(w, "- {n}");
        }
    }
    o
}

/// The mean over one kind's changes of the CPU used in their windows.
fn window(f: &super::fleet::FleetFigures, kind: &str) -> String {
    let c: Vec<_> = f.changes.iter().filter(|c| c.kind == kind).collect();
    if c.is_empty() {
        return "-".into();
    }
    let mean = |g: fn(&super::fleet::ChangeFigure) -> f64| {
        c.iter().map(|c| g(c)).sum::<f64>() / c.len() as f64
    };
    format!(
        "{:.0} / {:.0} / {:.0} ms in {:.1} s",
        mean(|c| c.agents_cpu_ms),
        mean(|c| c.etcd_cpu_ms),
        mean(|c| c.machine_busy_ms),
        mean(|c| c.window_s)
    )
}

/// The fleet section's table: one row per figure, one column per kind of change.
fn fleet_markdown(w: &mut String, f: &super::fleet::FleetFigures) {
    use super::fleet::Dist;
    let _ = writeln!(
        w,
        "\n### Fleet convergence ({} agents, each in its own namespace, one etcd; {} changes \
         of each kind)\n\n\
         Membership change: a new instance joins sg-web (one key). Rule change: sg-db authorizes \
         one more UDP port from sg-web (its group key rewritten). API: the same rule change as \
         an EC2 AuthorizeSecurityGroupIngress call to `sg-agent api` on the store. p50 / p99 / \
         max over every (agent, change) pair; first packet over {} sampled sg-db hosts per \
         change.\n\n\
         | figure | membership change | rule change | API rule change |\n| --- | ---: | ---: | ---: |",
        f.agents,
        f.changes_per_kind,
        f.sampled_hosts.len()
    );
    let d = |d: &Dist| {
        if d.n == 0 {
            "-".to_string()
        } else {
            format!("{:.0} / {:.0} / {:.0} ms", d.p50, d.p99, d.max)
        }
    };
    let kinds = [&f.membership, &f.rule, &f.api];
    let row =
        |w: &mut String, figure: &str, cell: &dyn Fn(&super::fleet::KindFigures) -> String| {
            let cells: Vec<String> = kinds.iter().map(|k| cell(k)).collect();
            let _ = writeln!(w, "| {figure} | {} |", cells.join(" | "));
        };
    row(w, "acks received / expected", &|k| {
        format!("{} / {}", k.acks, k.expected)
    });
    row(
        w,
        "commit -> ack seen in the store (p50 / p99 / max)",
        &|k| d(&k.ack_ms),
    );
    row(w, "put or call sent -> ack seen", &|k| {
        d(&k.ack_from_put_start_ms)
    });
    row(w, "put or call answered -> ack seen", &|k| {
        d(&k.ack_from_put_return_ms)
    });
    row(w, "commit -> the agent's clock in its ack", &|k| {
        d(&k.agent_ack_ms)
    });
    row(w, "commit -> first packet allowed (sampled hosts)", &|k| {
        d(&k.first_packet_ms)
    });
    row(w, "put or call sent -> first packet allowed", &|k| {
        d(&k.first_packet_from_put_start_ms)
    });
    row(
        w,
        "agent CPU per change, less idle (mean; p99 / max)",
        &|k| {
            format!(
                "{:.2} ms; {:.1} / {:.1}",
                k.cpu_ms.mean, k.cpu_ms.p99, k.cpu_ms.max
            )
        },
    );
    let windows = [window(f, "membership"), window(f, "rule"), window(f, "api")];
    let _ = writeln!(
        w,
        "| CPU over a change's window, mean: all agents / etcd / machine busy | {} |",
        windows.join(" | ")
    );
    row(
        w,
        "the put (JSON gateway) or the API call: sent to answered, p50",
        &|k| format!("{:.0} ms", k.put_ms.p50),
    );
    let _ = writeln!(
        w,
        "\nStartup: {} agents enforcing the store's policy after {:.1} s (started {} at a time). \
         An idle agent (`--poll 1`) spends {:.2} ms of CPU per second.",
        f.agents,
        f.startup_s,
        super::fleet::BATCH,
        f.idle_cpu_ms_per_s
    );
    for e in &f.errors {
        let _ = writeln!(w, "\n- fleet: {e}");
    }
}

/// In-kernel cost against rules (log x), with the two baselines as horizontal lines.
pub fn svg(r: &Results) -> String {
    let (wd, ht) = (720.0, 420.0);
    let (l, rt, t, b) = (70.0, 180.0, 40.0, 50.0);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{wd}\" height=\"{ht}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{l}\" y=\"22\" font-size=\"14\">sg in-kernel cost per \
         packet (BPF_PROG_TEST_RUN, XDP, ns) vs rules</text>\n"
    );
    let Some(kc) = &r.kernel else {
        o.push_str("<text x=\"70\" y=\"80\">not measured in this run</text>\n</svg>\n");
        return o;
    };
    let pts = |f: fn(&super::kernel::SizeCost) -> Option<f64>| -> Vec<(f64, f64)> {
        kc.sizes
            .iter()
            .filter_map(|s| f(s).map(|v| (s.rules as f64, v)))
            .collect()
    };
    type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);
    let series: [Series; 3] = [
        ("new allowed", "#d62728", pts(|s| s.new_allowed_ns)),
        ("new dropped", "#1f77b4", pts(|s| s.new_dropped_ns)),
        ("established", "#2ca02c", pts(|s| s.established_ns)),
    ];
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .chain([kc.pass_lookup_ns, kc.pass_once_ns])
        .fold(1.0f64, f64::max)
        * 1.15;
    let (x0, x1) = (1.0f64, 5.0f64); // log10 of 10 .. 100k
    let px = |n: f64| l + (n.log10().clamp(x0, x1) - x0) / (x1 - x0) * (wd - l - rt);
    let py = |v: f64| ht - b - v / ymax * (ht - t - b);
    let _ = writeln!(
        o,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" \
         y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>",
        ht - b,
        wd - rt,
        ht - b,
        ht - b
    );
    for e in 1..=5 {
        let xv = px(10f64.powi(e));
        let _ = writeln!(
            o,
            "<line x1=\"{xv:.1}\" y1=\"{}\" x2=\"{xv:.1}\" y2=\"{}\" stroke=\"black\"/><text \
             x=\"{xv:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            ht - b,
            ht - b + 5.0,
            ht - b + 20.0,
            rules_label(10usize.pow(e as u32))
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">rules (16 groups, one interface \
         carrying all)</text>",
        (l + wd - rt) / 2.0,
        ht - 12.0
    );
    let step = nice_step(ymax / 5.0);
    let mut yv = 0.0;
    while yv <= ymax {
        let y = py(yv);
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{l}\" y2=\"{y:.1}\" stroke=\"black\"/><line \
             x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" \
             y=\"{:.1}\" text-anchor=\"end\">{yv:.0}</text>",
            l - 5.0,
            wd - rt,
            l - 8.0,
            y + 4.0
        );
        yv += step;
    }
    let mut legend_y = t + 10.0;
    let mut legend = |o: &mut String, name: &str, color: &str, dash: bool| {
        let d = if dash {
            " stroke-dasharray=\"5,4\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{legend_y}\" x2=\"{}\" y2=\"{legend_y}\" stroke=\"{color}\" \
             stroke-width=\"2\"{d}/><text x=\"{}\" y=\"{}\">{name}</text>",
            wd - rt + 10.0,
            wd - rt + 35.0,
            wd - rt + 40.0,
            legend_y + 4.0
        );
        legend_y += 20.0;
    };
    for (name, color, p) in &series {
        let path: Vec<String> = p
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", px(*n), py(*v)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for (n, v) in p {
            let _ = writeln!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(*n),
                py(*v)
            );
        }
        legend(&mut o, name, color, false);
    }
    for (name, color, v) in [
        ("XDP_PASS + 1 lookup", "#555", kc.pass_lookup_ns),
        ("XDP_PASS, one run", "#999", kc.pass_once_ns),
        ("XDP_PASS", "#bbb", kc.pass_ns),
    ] {
        let y = py(v);
        let _ = writeln!(
            o,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{color}\" \
             stroke-dasharray=\"5,4\"/>",
            wd - rt
        );
        legend(&mut o, name, color, true);
    }
    o.push_str("</svg>\n");
    o
}

fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UdpFigure;
    use crate::kernel::{KernelCost, SizeCost};

    fn sample() -> Results {
        let size = |rules, e: f64, a: f64, d: f64| SizeCost {
            rules,
            established_ns: Some(e),
            new_allowed_ns: Some(a),
            new_dropped_ns: Some(d),
            ..SizeCost::default()
        };
        let udp = |config: &str, rules, ratio| UdpFigure {
            config: config.into(),
            rules,
            pps: 1e5 * ratio,
            reference_pps: 1e5,
            ratio_vs_no_filter: ratio,
            install_ms: 1.0,
            generator: "sendmmsg",
            receiver_pinned: false,
            hook: crate::config_hook(config),
            default_hook: config == "sg_tc",
        };
        let mut r = Results {
            kernel: Some(KernelCost {
                pass_ns: 20.0,
                pass_lookup_ns: 60.0,
                pass_once_ns: 50.0,
                sizes: vec![
                    size(10, 80.0, 500.0, 200.0),
                    size(1000, 90.0, 600.0, 250.0),
                    size(100_000, 100.0, 550.0, 300.0),
                ],
                ..KernelCost::default()
            }),
            udp: vec![
                udp("sg_tc", 10_000, 0.95),
                udp("nft_sets", 10_000, 0.5),
                udp("sg_tc", 1_000, 0.9),
                udp("nft_per_rule", 1_000, 0.1),
            ],
            ..Results::default()
        };
        r.summary = summarize(&r);
        r.goals = goals(&r);
        r
    }

    #[test]
    fn summary_ratios_use_the_smallest_and_largest_sizes_and_paired_quotients() {
        let r = sample();
        let s = &r.summary;
        assert_eq!(s.new_flow_ns_ratio_100k_vs_10, Some(1.1));
        assert_eq!(s.new_flow_ratio_rules, Some(100_000));
        assert_eq!(s.new_dropped_ns_ratio_100k_vs_10, Some(1.5));
        assert_eq!(s.established_ns_ratio_vs_pass, Some(5.0));
        assert!((s.established_ns_ratio_vs_pass_lookup.unwrap() - 100.0 / 60.0).abs() < 1e-9);
        assert!((s.sg_tc_udp_ratio_vs_nft_sets_10k.unwrap() - 1.9).abs() < 1e-9);
        assert!((s.sg_tc_udp_ratio_vs_nft_per_rule_1k.unwrap() - 9.0).abs() < 1e-9);
        assert_eq!(s.sg_xdp_udp_ratio_vs_no_filter_10k, None);
        let met: Vec<Option<bool>> = r.goals.iter().map(|g| g.met).collect();
        assert_eq!(
            met,
            vec![
                Some(true),
                Some(false),
                Some(true),
                Some(true),
                Some(true),
                None,
                None,
                // Issue 19: the default hook's figures are not in the sample; established
                // 1.67x > 1.3x; new allowed 500 / 550 ns > 400 ns (no control section: no
                // conntrack row).
                None,
                None,
                None,
                Some(false),
                Some(false),
            ]
        );
    }

    #[test]
    fn paired_ratios_win_over_quotients_of_medians() {
        let mut r = sample();
        let k = r.kernel.as_mut().unwrap();
        let large = &mut k.sizes[2];
        large.new_allowed_ratio_vs_smallest = Some(1.2);
        large.established_ratio_vs_pass = Some(4.0);
        large.established_ratio_vs_pass_lookup = Some(1.4);
        let s = summarize(&r);
        assert_eq!(s.new_flow_ns_ratio_100k_vs_10, Some(1.2));
        assert_eq!(s.established_ns_ratio_vs_pass, Some(4.0));
        assert_eq!(s.established_ns_ratio_vs_pass_lookup, Some(1.4));
        // Pairs against a first size other than 10 are not the 100k/10 ratio: the quotient.
        let first = SizeCost {
            rules: 5,
            ..SizeCost::default()
        };
        r.kernel.as_mut().unwrap().sizes.insert(0, first);
        assert_eq!(summarize(&r).new_flow_ns_ratio_100k_vs_10, Some(1.1));
    }

    #[test]
    fn nacl_goals_appear_only_when_measured_and_judge_the_worst_decision_and_best_hook() {
        use crate::nacl::{DecisionCost, ForwardFigure, NaclFigures};
        let mut r = sample();
        assert_eq!(r.goals.len(), 12);
        let dec = |hook: &str, ratio| DecisionCost {
            hook: hook.into(),
            ratio_large_vs_small: ratio,
            ..DecisionCost::default()
        };
        let fwd = |config: &str, ratio| ForwardFigure {
            config: config.into(),
            pps: 1e5 * ratio,
            bare_pps: 1e5,
            ratio_vs_bare: ratio,
            nacl_passed: 1,
        };
        r.nacl = Some(NaclFigures {
            decision: vec![dec("tc", 1.1), dec("xdp", 1.3)],
            forwarding: vec![fwd("sg_tc", 0.95), fwd("sg_xdp", 0.7)],
            ..NaclFigures::default()
        });
        r.summary = summarize(&r);
        let g = goals(&r);
        assert_eq!(g.len(), 14);
        // A figure of a section that did not run is "not measured", not "not measuredx".
        assert_eq!(both(None, Some(0.7)), "TC not measured, XDP 0.70x");
        assert!(g.iter().all(|g| !g.measured.contains("measuredx")), "{g:?}");
        assert_eq!(g[7].met, Some(false), "{:?}", g[7]);
        assert_eq!(g[8].met, Some(true), "{:?}", g[8]);
        r.goals = g;
        let md = markdown(&r);
        assert!(
            md.contains("| forwarding through a NACL router >= 0.9x of the bare router | TC 0.95x, XDP 0.70x | yes |"),
            "{md}"
        );
        assert!(md.contains("### Network ACLs on a router"), "{md}");
    }

    #[test]
    fn default_hook_figures_follow_the_chosen_hook_and_conn_rate_takes_the_lower_policy() {
        use crate::connrate::{ConnRate, ConnRateFigure};
        let mut r = sample();
        assert_eq!(r.summary.sg_default_udp_ratio_vs_no_filter_10k, None);
        r.default_hook = Some(("tc", "auto: driver veth".into()));
        let fig = |config: &str, policy, ratio| ConnRateFigure {
            config: config.into(),
            policy,
            hook: None,
            conns_per_s: 1e4 * ratio,
            reference_conns_per_s: 1e4,
            ratio_vs_no_filter: ratio,
            ratios: vec![ratio],
            failed: 0,
            reference_failed: 0,
            sg_flows_created_per_conn: None,
            sg_ct_peak_entries: None,
            sg_ct_full_drops: None,
        };
        r.conn_rate = Some(ConnRate {
            figures: vec![
                fig("nft", "tracked", 0.8),
                fig("sg_default", "tracked", 0.96),
                fig("nft", "untracked", 0.9),
                fig("sg_default", "untracked", 0.99),
            ],
            ..ConnRate::default()
        });
        r.summary = summarize(&r);
        let s = &r.summary;
        assert_eq!(s.default_hook.as_deref(), Some("tc"));
        assert_eq!(s.sg_default_udp_ratio_vs_no_filter_10k, Some(0.95));
        assert!((s.sg_default_udp_ratio_vs_nft_sets_10k.unwrap() - 1.9).abs() < 1e-9);
        assert_eq!(s.sg_default_conn_rate_ratio_vs_no_filter, Some(0.96));
        assert!((s.sg_default_conn_rate_ratio_vs_nft.unwrap() - 1.1).abs() < 1e-9);
        let g = goals(&r);
        assert_eq!(g.len(), 14);
        // The default hook's UDP goals (0.95x of no filter, 1.9x nftables sets) are met.
        assert_eq!((g[8].met, g[9].met), (Some(true), Some(true)), "{g:?}");
        assert_eq!((g[12].met, g[13].met), (Some(true), Some(true)));
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "sg_tc_udp_ratio_vs_no_filter_10k",
            "sg_default_tcp_ratio_vs_no_filter",
            "sg_default_udp_ratio_vs_no_filter_10k",
            "sg_default_udp_ratio_vs_nft_sets_10k",
            "sg_default_conn_rate_ratio_vs_no_filter",
            "sg_default_conn_rate_ratio_vs_nft",
            "default_hook",
        ] {
            assert!(json.get(key).is_some(), "{key} at the top level");
        }
        r.goals = g;
        let md = markdown(&r);
        assert!(md.contains("sg TC (default hook)"), "{md}");
        assert!(
            md.contains("sg XDP (warning: not the default here)"),
            "{md}"
        );
        assert!(
            md.contains("| tracked | 10k | 8k (0.80x) | 10k (0.96x) | 1.20x |"),
            "{md}"
        );
    }

    #[test]
    fn markdown_and_svg_show_every_size() {
        let r = sample();
        let md = markdown(&r);
        assert!(md.contains("| 100k | 100 |  | 550 |  | 300 |"), "{md}");
        assert!(
            md.contains("| new-flow cost at 100k rules <= 1.25x at 10 | 1.10x"),
            "{md}"
        );
        let svg = svg(&r);
        assert_eq!(svg.matches("<circle").count(), 9);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
