//! E7 and the atomic swap under load: a TCP stream that every packet of which is judged by the
//! rules (untracked, C4) keeps flowing, without a reset or a single retransmission, through
//! 100 applies alternating two policies that both allow it; each CLI apply also replaces the
//! programs in the pinned links. Reports the apply latency (median and p95).
mod agent_common;

use std::time::{Duration, Instant};

use agent_common::*;

const S1: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 5009, source: 0.0.0.0/0, description: stream}
      - {protocol: icmp, type: 8, source: 192.0.2.10/32, description: ping}
instances:
  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}
"#;

const S2: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 5000-5010, source: 0.0.0.0/0, description: stream range}
      - {protocol: udp, ports: 53, source: 192.0.2.0/24, description: dns}
instances:
  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}
"#;

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i]
}

fn reason(c: &serde_json::Value, name: &str) -> u64 {
    c["reasons"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name}: {c}"))
}

#[test]
fn an_untracked_tcp_stream_survives_100_applies_without_reset_or_retransmission() {
    let mut site = Site::new("strm");
    let result = site.dir.join("sink.json");
    let stop = site.dir.join("stop");
    site.serve(&[&format!("sink:5009:{}", result.display())]);
    let p1 = site.policy("s1.yaml", S1);
    let p2 = site.policy("s2.yaml", S2);
    site.apply(&p1);

    let cli0 = tcp_snmp(&site.cli);
    let srv0 = tcp_snmp(&site.srv);
    let c0 = site.counters();
    let mut client = site.probe_bg(&["stream", SRV, "5009", "600", stop.to_str().unwrap()]);
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(client.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "connected", "the stream did not start");
    }
    std::thread::sleep(Duration::from_millis(300));
    // Untracked: no conntrack entry for it, so every packet meets the rules (C4).
    let ct = site.agent_json(&["conntrack"]);
    assert!(
        !ct.as_array()
            .unwrap()
            .iter()
            .any(|e| e["local_port"] == 5009),
        "the stream is tracked, so this test would not see a gap in the rules: {ct}"
    );

    let (mut effect, mut total, mut swap) = (Vec::new(), Vec::new(), Vec::new());
    let t0 = Instant::now();
    for i in 0..100 {
        let p = if i % 2 == 0 { &p2 } else { &p1 };
        let out = site.apply(p);
        assert!(
            !out["diff"]["rules_added"].as_array().unwrap().is_empty(),
            "apply {i} changed nothing: {out}"
        );
        effect.push(out["to_effect_ms"].as_f64().unwrap());
        total.push(out["total_ms"].as_f64().unwrap());
        swap.push(out["swap_ms"].as_f64().unwrap());
    }
    let wall = t0.elapsed();
    std::fs::write(&stop, b"").unwrap();
    let res = probe_result(client, Duration::from_secs(30));
    site.wait("the sink's report", Duration::from_secs(10), || {
        result.exists()
    });
    let sink: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    let cli1 = tcp_snmp(&site.cli);
    let srv1 = tcp_snmp(&site.srv);
    let c1 = site.counters();

    let delta = |a: &std::collections::BTreeMap<String, i64>,
                 b: &std::collections::BTreeMap<String, i64>,
                 k: &str| b[k] - a[k];
    eprintln!(
        "100 applies in {wall:?}: to_effect_ms median {:.1} p95 {:.1}; total_ms median {:.1} p95 \
         {:.1}; swap_ms median {:.2} p95 {:.2} (debug build: {}); stream {} bytes, longest \
         silence {:.3} s",
        percentile(&effect, 0.5),
        percentile(&effect, 0.95),
        percentile(&total, 0.5),
        percentile(&total, 0.95),
        percentile(&swap, 0.5),
        percentile(&swap, 0.95),
        cfg!(debug_assertions),
        sink["bytes"],
        sink["max_gap_s"].as_f64().unwrap_or(-1.0),
    );
    assert!(res["error"].is_null(), "the client saw an error: {res}");
    assert!(sink["error"].is_null(), "the server saw an error: {sink}");
    assert_eq!(res["sent"], sink["bytes"], "bytes lost: {res} {sink}");
    assert!(
        res["sent"].as_u64().unwrap() > 1_000_000,
        "the stream hardly flowed: {res}"
    );
    for (ns, a, b) in [("cli", &cli0, &cli1), ("srv", &srv0, &srv1)] {
        for k in ["EstabResets", "OutRsts", "AttemptFails"] {
            assert_eq!(delta(a, b, k), 0, "{ns}: TCP {k} moved: resets happened");
        }
        assert_eq!(
            delta(a, b, "RetransSegs"),
            0,
            "{ns}: TCP retransmitted: a packet of the stream was dropped during an apply"
        );
    }
    assert_eq!(
        reason(&c1, "drop_no_policy"),
        reason(&c0, "drop_no_policy"),
        "packets met no policy during an apply"
    );
    assert!(
        reason(&c1, "pass_rule_untracked") > reason(&c0, "pass_rule_untracked") + 1000,
        "the stream's packets were not judged by the rules: {c1}"
    );
    assert!(percentile(&total, 0.95) < 10_000.0, "applies are too slow");
}
