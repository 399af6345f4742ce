//! The bench's quick path on a tiny configuration, end to end (privileged: namespaces, BPF,
//! nftables; it panics without root, never skips). It checks that every section produced its
//! figures and that results.json carries the fields the issue names, with positive numbers.
//! It never asserts on how fast anything is.

use std::time::Duration;

use serde_json::Value;
use sg_bench::{Options, run};
use sg_testkit::netns::require_root;

fn positive(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    let x = cur
        .as_f64()
        .unwrap_or_else(|| panic!("results.json: {path} is not a number: {cur}"));
    assert!(x > 0.0 && x.is_finite(), "results.json: {path} = {x}");
    x
}

#[test]
fn quick_bench_writes_every_section_with_positive_figures() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = Options {
        out: dir.path().to_path_buf(),
        kernel_rules: vec![10, 100],
        veth_rules: vec![10],
        window: Duration::from_millis(200),
        warmup: Duration::from_millis(100),
        rounds: 1,
        tcp_secs: 1,
        repeat: 20_000,
        medians_of: 3,
        // The fleet section has its own test below.
        only: ["generators", "kernel", "throughput", "control"]
            .map(String::from)
            .to_vec(),
        command: "bench_smoke".into(),
        ..Options::quick()
    };
    let r = run(&opts).unwrap_or_else(|e| panic!("bench run failed: {e:#}"));
    assert!(
        r.notes.iter().all(|n| !n.contains("not measured")),
        "{:?}",
        r.notes
    );

    let text = std::fs::read_to_string(dir.path().join("results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    for key in [
        "new_flow_ns_ratio_100k_vs_10",
        "established_ns_ratio_vs_pass",
        "established_ns_ratio_vs_pass_lookup",
        "membership_visible_ms",
        "maps_total_bytes",
        "ct_bytes_per_entry",
    ] {
        positive(&v, key);
    }
    assert_eq!(v["new_flow_ratio_rules"], 100);
    // The membership figure's parts come before the packet that ends it.
    for key in ["control.membership_delta_ms", "control.membership_write_ms"] {
        positive(&v, key);
    }
    let c = &v["control"];
    assert!(
        c["membership_delta_ms"].as_f64().unwrap() + c["membership_write_ms"].as_f64().unwrap()
            <= c["membership_visible_ms"].as_f64().unwrap(),
        "{c}"
    );
    for key in [
        "kernel.pass_ns",
        "kernel.pass_lookup_ns",
        "kernel.pass_once_ns",
    ] {
        positive(&v, key);
    }
    for i in 0..2 {
        for f in [
            "established_ns",
            "new_allowed_ns",
            "new_dropped_ns",
            "port_entries",
            "established_ratio_vs_pass_lookup",
            "established_ratio_vs_pass",
            "new_allowed_ratio_vs_smallest",
        ] {
            positive(&v, &format!("kernel.sizes.{i}.{f}"));
        }
    }
    let configs: Vec<&str> = v["udp"]
        .as_array()
        .expect("udp figures")
        .iter()
        .map(|f| f["config"].as_str().expect("config name"))
        .collect();
    assert_eq!(configs, ["nft_sets", "nft_per_rule", "sg_xdp", "sg_tc"]);
    for i in 0..4 {
        positive(&v, &format!("udp.{i}.pps"));
        positive(&v, &format!("udp.{i}.reference_pps"));
        positive(&v, &format!("udp.{i}.ratio_vs_no_filter"));
        positive(&v, &format!("tcp.{i}.gbps"));
    }
    for key in [
        "control.compile_ms",
        "control.apply_ms",
        "control.compile_apply_ms",
        "control.conntrack.new_flows_stored",
        "control.conntrack.refused",
    ] {
        positive(&v, key);
    }
    // C6: filling the table keeps every established flow.
    assert_eq!(
        v["control"]["conntrack"]["established_kept"],
        v["control"]["conntrack"]["established"]
    );
    assert!(
        v["generators"].as_array().is_some_and(|g| !g.is_empty()),
        "generators measured"
    );
    assert!(v["generator"].is_string(), "a generator was chosen");
    // 7, and issue 19's for the sections run: the default hook's 3 (throughput), established
    // <= 1.3x and the new flow (kernel), bytes per conntrack entry (control).
    assert_eq!(v["goals"].as_array().map(Vec::len), Some(13));
    for kernel_key in ["kernel", "cpu_model"] {
        assert!(
            v["machine"][kernel_key]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "machine.{kernel_key}"
        );
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).expect("results.md");
    assert!(md.contains("### In-kernel cost") && md.contains("### veth throughput"));
    let svg = std::fs::read_to_string(dir.path().join("cost.svg")).expect("cost.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
}

/// The fleet section with three agents and one change of each kind: every agent acknowledges
/// every change, the sampled sg-db host receives the first probe, and the figures are in
/// results.json and results.md (never judged on speed).
#[test]
fn quick_fleet_bench_measures_acks_first_packets_and_cpu_with_three_agents() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = Options {
        out: dir.path().to_path_buf(),
        only: vec!["fleet".into()],
        fleet_agents: 3,
        fleet_changes: 1,
        command: "bench_smoke fleet".into(),
        ..Options::quick()
    };
    let r = run(&opts).unwrap_or_else(|e| panic!("bench run failed: {e:#}"));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let f = r.fleet.as_ref().expect("fleet figures");
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    assert_eq!(f.sampled_hosts, ["h1"], "the one sg-db host of three");

    let text = std::fs::read_to_string(dir.path().join("results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["fleet_agents"], 3);
    // "api": the rule change made with an AuthorizeSecurityGroupIngress call (issue 16).
    for kind in ["membership", "rule", "api"] {
        assert_eq!(
            v["fleet"][kind]["acks"], 3,
            "{kind}: every agent acknowledged"
        );
        assert_eq!(v["fleet"][kind]["expected"], 3);
        assert_eq!(
            v["fleet"][kind]["first_packet_ms"]["n"], 1,
            "{kind}: the probe arrived"
        );
        for f in [
            "ack_ms.p99",
            "ack_ms.max",
            "first_packet_ms.max",
            "cpu_raw_ms.mean",
        ] {
            positive(&v, &format!("fleet.{kind}.{f}"));
        }
    }
    for key in [
        "fleet_membership_ack_p99_ms",
        "fleet_rule_ack_p99_ms",
        "fleet_ack_max_ms",
        "fleet_api_call_to_ack_p99_ms",
        "fleet_api_call_to_first_packet_p50_ms",
    ] {
        positive(&v, key);
    }
    assert_eq!(
        v["goals"].as_array().map(Vec::len),
        Some(10),
        "7 + the fleet's 3"
    );
    let md = std::fs::read_to_string(dir.path().join("results.md")).expect("results.md");
    assert!(md.contains("### Fleet convergence (3 agents"), "{md}");
}

/// The network ACL part on a tiny budget: the decision cost at 20 and 1,000 entries per list
/// on both hooks (the packet decided by the last entry, checked before timing), forwarding
/// through the router namespace with sg's NACLs (which must have judged the flood), and both
/// goal rows in results.json and results.md (never judged on speed).
#[test]
fn quick_nacl_bench_measures_decision_cost_and_forwarding_through_the_router() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = Options {
        out: dir.path().to_path_buf(),
        only: vec!["nacl".into()],
        window: Duration::from_millis(200),
        warmup: Duration::from_millis(100),
        rounds: 1,
        repeat: 10_000,
        medians_of: 3,
        command: "bench_smoke nacl".into(),
        ..Options::quick()
    };
    let r = run(&opts).unwrap_or_else(|e| panic!("bench run failed: {e:#}"));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let n = r.nacl.as_ref().expect("nacl figures");
    assert!(n.errors.is_empty(), "{:?}", n.errors);

    let text = std::fs::read_to_string(dir.path().join("results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    for key in [
        "nacl_tc_decision_ratio_1000_vs_20",
        "nacl_xdp_decision_ratio_1000_vs_20",
        "nacl_tc_forwarding_ratio_vs_bare",
        "nacl_xdp_forwarding_ratio_vs_bare",
    ] {
        positive(&v, key);
    }
    for i in 0..2 {
        for f in ["small_ns", "large_ns", "ratio_large_vs_small"] {
            positive(&v, &format!("nacl.decision.{i}.{f}"));
        }
        for f in ["pps", "bare_pps", "ratio_vs_bare", "nacl_passed"] {
            positive(&v, &format!("nacl.forwarding.{i}.{f}"));
        }
    }
    let goals: Vec<&str> = v["goals"]
        .as_array()
        .expect("goals")
        .iter()
        .map(|g| g["goal"].as_str().expect("goal text"))
        .collect();
    assert_eq!(goals.len(), 9, "7 + the network ACLs' 2: {goals:?}");
    for row in [
        "NACL decision at 1,000 rules per list <= 1.25x at 20",
        "forwarding through a NACL router >= 0.9x of the bare router",
    ] {
        assert!(goals.contains(&row), "{goals:?}");
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).expect("results.md");
    assert!(md.contains("### Network ACLs on a router"), "{md}");
    assert!(
        md.contains("| NACL decision at 1,000 rules per list"),
        "{md}"
    );
}
