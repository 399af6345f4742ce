//! The agent's lifecycle through its command line, judged by real traffic between two network
//! namespaces: apply, re-apply, dry run, invalid input, detach and exit codes; root-only
//! pins and state; two namespaces side by side; `explain` against real packets; a membership
//! change (R1) reaching real packets.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sg_testkit::agent_harness::*;

/// Every file under `dir` with its inode (a replaced pin is a new inode).
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            out.insert(p.display().to_string(), md.ino());
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// bpftool's JSON dump of the policy maps (the bytes a packet is judged by).
fn policy_maps(site: &Site) -> String {
    let mut all = String::new();
    for m in ["SG_ACTIVE", "SG_IFACES", "SG_PEERS", "SG_PORTS"] {
        let p = site
            .pins
            .join(format!("maps/abi-{}", sg_common::ABI_VERSION))
            .join(m);
        let o = run_bounded(
            {
                let mut c = Command::new("bpftool");
                c.args(["-j", "map", "dump", "pinned"]).arg(&p);
                c
            },
            Duration::from_secs(20),
        );
        assert!(o.status.success(), "bpftool dump {m}: {}", text(&o));
        all.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    all
}

/// Ids of the BPF objects behind the pins (links and maps), from bpftool.
fn pinned_ids(site: &Site) -> Vec<(String, u64)> {
    let mut ids = Vec::new();
    for (kind, dir) in [
        ("link", site.pins.join("links")),
        (
            "map",
            site.pins
                .join(format!("maps/abi-{}", sg_common::ABI_VERSION)),
        ),
    ] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let o = run_bounded(
                {
                    let mut c = Command::new("bpftool");
                    c.args(["-j", kind, "show", "pinned"]).arg(e.path());
                    c
                },
                Duration::from_secs(10),
            );
            assert!(o.status.success(), "bpftool {kind} show: {}", text(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            ids.push((kind.to_string(), v["id"].as_u64().unwrap()));
        }
    }
    ids
}

fn object_exists(kind: &str, id: u64) -> bool {
    let mut c = Command::new("bpftool");
    c.args([kind, "show", "id", &id.to_string()]);
    run_bounded(c, Duration::from_secs(10)).status.success()
}

#[test]
fn apply_reapply_dry_run_invalid_input_and_detach_with_their_exit_codes() {
    let site = Site::serving("life");
    let a = site.policy("a.yaml", POLICY_A);
    let b = site.policy("b.yaml", POLICY_B);
    let bad = site.policy(
        "bad.yaml",
        "security_groups:\n  - id: sg-web\n    ingress:\n      - {protocol: tcp, ports: 99999, source: 192.0.2.0/24}\n",
    );
    let (a, b, bad) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        bad.to_str().unwrap(),
    );

    // Nothing enforced yet: the control.
    assert!(
        site.tcp(5003, None),
        "control: tcp 5003 must pass without sg"
    );

    // check: exit 0, touches nothing.
    let out = site.agent_ok(&["check", a]);
    assert!(out.contains("OK"), "{out}");
    assert!(
        !site.pins.exists() && !site.run.exists(),
        "check created state"
    );

    // apply: exit 0, says what it added, enforces. XDP is asked for (auto would give the veth
    // TC): the dry run and detach below watch eth0's XDP program id.
    let out = site.agent_ok(&["apply", "--ingress-hook", "xdp", a]);
    assert!(out.contains("+ group sg-web"), "{out}");
    assert!(out.contains("attached eth0"), "{out}");
    assert_enforces_a(&site, "after apply A");

    // re-apply: exit 0, no change reported, still enforcing.
    let out = site.agent_ok(&["apply", a]);
    assert!(
        out.contains("no change to groups, rules, members or interfaces"),
        "{out}"
    );
    let j = site.agent_json(&["apply", a]);
    assert_eq!(j["diff"]["rules_added"].as_array().unwrap().len(), 0, "{j}");
    assert_eq!(j["attached"].as_array().unwrap().len(), 0, "{j}");
    assert_enforces_a(&site, "after re-apply A");

    // dry run of B: exit 0, reports the change, touches nothing.
    let maps_before = policy_maps(&site);
    let pins_before = tree(&site.pins);
    let state_before = site.state_file();
    let prog_before = site.xdp_prog_id("eth0");
    let out = site.agent_ok(&["apply", "--dry-run", b]);
    assert!(out.contains("would change"), "{out}");
    assert!(out.contains("only in B"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(
        policy_maps(&site),
        maps_before,
        "dry run changed a policy map"
    );
    assert_eq!(tree(&site.pins), pins_before, "dry run changed the pins");
    assert_eq!(site.state_file(), state_before, "dry run changed the state");
    assert_eq!(
        site.xdp_prog_id("eth0"),
        prog_before,
        "dry run replaced the program"
    );
    assert_enforces_a(&site, "after dry run of B");

    // Invalid input: exit 2, "nothing was changed", and the enforced policy stays.
    for (args, why) in [
        (vec!["apply", bad], "invalid port"),
        (vec!["apply", "/nonexistent/policy.yaml"], "missing file"),
        (vec!["apply", "--ingress-hook", "ebpf", a], "unknown hook"),
        (vec!["apply", "--frobnicate", a], "unknown flag"),
        (
            vec!["explain", "--proto", "tcp", "--peer", CLI],
            "neither --in nor --out",
        ),
        (vec!["--capacity", "ports=lots", "status"], "bad capacity"),
    ] {
        let o = site.agent(&args);
        assert_eq!(o.status.code(), Some(2), "{why}: {}", text(&o));
    }
    let o = site.agent(&["apply", bad]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing was changed"),
        "{}",
        text(&o)
    );
    assert_eq!(
        policy_maps(&site),
        maps_before,
        "invalid input changed a map"
    );
    assert_enforces_a(&site, "after invalid input");

    // A policy for another host: exit 2 as well.
    let other = site.policy(
        "other.yaml",
        "security_groups:\n  - id: sg-x\ninstances:\n  - {name: x, addresses: [203.0.113.9], groups: [sg-x]}\n",
    );
    let o = site.agent(&["apply", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_enforces_a(&site, "after a policy for another host");

    // The real change: B.
    let out = site.agent_ok(&["apply", b]);
    assert!(out.contains("+ rule"), "{out}");
    assert_enforces_b(&site, "after apply B");
    let st = site.agent_ok(&["status"]);
    assert!(st.contains("eth0") && st.contains("ingress xdp"), "{st}");
    assert!(!st.contains("warning"), "{st}");

    // Detach: exit 0, links, maps, pins and state gone, traffic no longer filtered.
    let ids = pinned_ids(&site);
    assert!(ids.len() >= 10, "{ids:?}");
    let out = site.agent_ok(&["detach"]);
    assert!(out.contains("detached eth0"), "{out}");
    site.assert_clean();
    assert_eq!(site.xdp_prog_id("eth0"), 0, "XDP program left on eth0");
    site.wait(
        "links and maps to be freed",
        Duration::from_secs(10),
        || ids.iter().all(|(k, id)| !object_exists(k, *id)),
    );
    assert!(site.tcp(5003, None), "after detach tcp 5003 must pass");

    // Runtime errors: exit 1 (nothing applied here now).
    let o = site.agent(&["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing is applied"),
        "{}",
        text(&o)
    );
    // Detach of nothing: fine.
    site.agent_ok(&["detach"]);
    site.assert_clean();
}

#[test]
fn pins_and_state_are_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new("mode");
    let a = site.policy("a.yaml", POLICY_A);
    // A caller with a permissive umask must not matter.
    let mut c = site.srv.cmd("sh");
    c.args([
        "-c",
        &format!(
            "umask 000; exec {} apply {}",
            sg_testkit::agent_bin(),
            a.display()
        ),
    ]);
    let o = run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [
        Path::new("/sys/fs/bpf/sg"),
        Path::new("/run/sg"),
        &site.pins,
        &site.run,
    ] {
        assert_eq!(mode(d), 0o700, "{} is {:o}", d.display(), mode(d));
    }
    let mut stack = vec![site.pins.clone(), site.run.clone()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::metadata(&p).unwrap();
            let m = md.permissions().mode() & 0o777;
            assert_eq!(
                m & 0o077,
                0,
                "{} is {m:o}: group/other can reach it",
                p.display()
            );
            use std::os::unix::fs::MetadataExt;
            assert_eq!(md.uid(), 0, "{} is not root's", p.display());
            if md.is_dir() {
                stack.push(p);
            }
            seen += 1;
        }
    }
    assert!(seen > 15, "expected pins and state files, saw {seen}");
}

#[test]
fn two_namespaces_keep_separate_state_counters_and_enforcement() {
    let mut one = Site::new("twa");
    let mut two = Site::new("twb");
    one.serve(SERVER);
    two.serve(SERVER);
    let a1 = one.policy("a.yaml", POLICY_A);
    let a2 = two.policy("a.yaml", POLICY_A);
    one.apply(&a1);
    two.apply(&a2);
    assert_ne!(one.pins, two.pins);
    assert_ne!(one.run, two.run);
    assert!(one.pins.exists() && two.pins.exists());
    let s1 = one.agent_json(&["status"]);
    let s2 = two.agent_json(&["status"]);
    assert_eq!(s1["pins"], one.pins.display().to_string(), "{s1}");
    assert_eq!(s2["pins"], two.pins.display().to_string(), "{s2}");

    // Traffic in one only: only its counters move.
    let ping1 = rule_id(&one, "ping");
    let (p1, p2) = (one.rule_packets(&ping1), two.rule_packets(&ping1));
    for _ in 0..3 {
        assert!(one.ping(None));
    }
    assert!(
        one.rule_packets(&ping1) >= p1 + 3,
        "one's counter did not move"
    );
    assert_eq!(
        two.rule_packets(&ping1),
        p2,
        "two's counter moved with one's traffic"
    );

    // Detach one: one is open, two still enforces.
    one.agent_ok(&["detach"]);
    one.assert_clean();
    assert!(one.tcp(5003, None), "one was detached: 5003 must pass");
    assert!(
        two.pins.exists() && two.run.exists(),
        "detach of one removed two's state"
    );
    assert_enforces_a(&two, "two after one was detached");
    assert!(two.agent_ok(&["status"]).contains("eth0"));
}

#[test]
fn explain_agrees_with_real_traffic() {
    let site = Site::serving("expl");
    let a = site.policy("a.yaml", POLICY_A);
    site.apply(&a);
    // (explain arguments, the real probe)
    type Probe = Box<dyn Fn(&Site) -> bool>;
    let cases: Vec<(Vec<&str>, Probe)> = vec![
        (
            vec!["--proto", "tcp", "--peer", CLI, "--port", "5001"],
            Box::new(|s: &Site| s.tcp(5001, None)),
        ),
        (
            vec!["--proto", "tcp", "--peer", CLI, "--port", "5003"],
            Box::new(|s: &Site| s.tcp(5003, None)),
        ),
        (
            vec!["--proto", "udp", "--peer", CLI, "--port", "5353"],
            Box::new(|s: &Site| s.udp(5353)),
        ),
        (
            vec!["--proto", "icmp", "--peer", CLI, "--icmp", "8/0"],
            Box::new(|s: &Site| s.ping(None)),
        ),
        (
            vec!["--proto", "icmp", "--peer", CLI2, "--icmp", "8/0"],
            Box::new(|s: &Site| s.ping(Some(CLI2))),
        ),
        (
            vec![
                "--proto",
                "tcp",
                "--peer",
                "2001:db8:10::10",
                "--port",
                "5001",
            ],
            Box::new(|s: &Site| s.tcp6(5001)),
        ),
    ];
    let mut allowed = 0;
    for (args, probe) in &cases {
        let mut all = vec!["explain", "--in"];
        all.extend_from_slice(args);
        let e = site.agent_json(&all);
        assert_eq!(e["agree"], true, "model and program disagree: {e}");
        let real = probe(&site);
        assert_eq!(
            e["kernel_pass"].as_bool().unwrap(),
            real,
            "explain {args:?} says {} but real traffic {}: {e}",
            e["kernel_reason"],
            if real { "passed" } else { "was dropped" }
        );
        allowed += usize::from(real);
        // The text form names the verdict too.
        let t = site.agent_ok(&all);
        assert!(
            t.contains(if real { "ALLOWED" } else { "DROPPED" }),
            "{args:?}: {t}"
        );
    }
    assert_eq!(allowed, 3, "the cases cover allowed and denied packets");
}

#[test]
fn membership_change_reaches_real_packets() {
    // R1: a rule referencing a group follows its members. CLI2 joins sg-app; tcp 5002 is
    // allowed from sg-app members only. Measured: apply's to_effect_ms and the first real
    // connection from the new member after the apply started.
    let site = Site::serving("memb");
    let policy = |members: &str| {
        format!(
            r#"
security_groups:
  - id: sg-app
  - id: sg-db
    ingress:
      - {{protocol: tcp, ports: 5002, source: sg-app, description: from app}}
instances:
  - {{name: db-1, addresses: [192.0.2.11], groups: [sg-db]}}
{members}
"#
        )
    };
    let before = site.policy(
        "before.yaml",
        &policy("  - {name: app-1, addresses: [192.0.2.10], groups: [sg-app]}"),
    );
    let after = site.policy(
        "after.yaml",
        &policy(
            "  - {name: app-1, addresses: [192.0.2.10], groups: [sg-app]}\n  - {name: app-2, addresses: [192.0.2.12], groups: [sg-app]}",
        ),
    );
    let mut cli_effect = Vec::new();
    let mut cli_packet = Vec::new();
    for round in 0..3 {
        site.apply(&before);
        assert!(
            site.tcp(5002, Some(CLI)),
            "round {round}: member app-1 refused"
        );
        assert!(
            !site.tcp(5002, Some(CLI2)),
            "round {round}: app-2 passed before joining"
        );
        let prober = site.probe_bg(&["until-tcp", SRV, "5002", CLI2, "30"]);
        // Let the prober start knocking.
        std::thread::sleep(Duration::from_millis(300));
        let t_start = monotonic_s();
        let out = site.apply(&after);
        let res = probe_result(prober, Duration::from_secs(40));
        assert_eq!(res["ok"], true, "app-2 never got through: {res}");
        let seen_ms = (res["at"].as_f64().unwrap() - t_start) * 1000.0;
        let effect = out["to_effect_ms"].as_f64().unwrap();
        let members = &out["diff"]["members"]["sg-app"];
        assert_eq!(members[0][0], CLI2, "diff names the new member: {out}");
        assert!(
            seen_ms < out["total_ms"].as_f64().unwrap() + 100.0,
            "the first packet came {seen_ms:.1} ms after the apply started, later than the \
             apply itself finished: {out}"
        );
        cli_effect.push(effect);
        cli_packet.push(seen_ms);
        assert!(
            site.tcp(5002, Some(CLI2)),
            "round {round}: app-2 refused after joining"
        );
    }
    eprintln!(
        "membership change via `sg-agent apply` (CLI, debug={}): to_effect_ms {:?}, first real \
         packet after apply start (ms, 10 ms probe resolution) {:?}",
        cfg!(debug_assertions),
        cli_effect
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        cli_packet
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );

    // The same through a running daemon (programs already loaded): SIGHUP after the change.
    site.apply(&before);
    let cfg = site.dir.join("daemon.yaml");
    std::fs::copy(&before, &cfg).unwrap();
    let log = site.dir.join("daemon.log");
    let d = site.daemon(
        &cfg,
        &["--metrics", "127.0.0.1:0", "--poll", "3600"],
        &[],
        &log,
    );
    assert!(!site.tcp(5002, Some(CLI2)));
    let prober = site.probe_bg(&["until-tcp", SRV, "5002", CLI2, "30"]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::copy(&after, &cfg).unwrap();
    let t_start = monotonic_s();
    let t0 = Instant::now();
    d.signal(libc::SIGHUP);
    let res = probe_result(prober, Duration::from_secs(40));
    assert_eq!(res["ok"], true, "app-2 never got through the daemon: {res}");
    let seen_ms = (res["at"].as_f64().unwrap() - t_start) * 1000.0;
    site.wait_log(
        "daemon logged the reload",
        Duration::from_secs(20),
        &log,
        "reloaded on SIGHUP",
    );
    let logtext = log_text(&log);
    let effect: f64 = logtext
        .lines()
        .find(|l| l.contains("reloaded on SIGHUP"))
        .and_then(|l| l.split("in effect after ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no effect time in the daemon log: {logtext}"));
    eprintln!(
        "membership change via the daemon (SIGHUP): to_effect_ms {effect:.1}, first real packet \
         {seen_ms:.1} ms after the signal ({:?} wall)",
        t0.elapsed()
    );
    assert!(seen_ms < 5000.0, "daemon took {seen_ms} ms");
    drop(d);
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let mut c = Command::new(sg_testkit::agent_bin());
        c.args(["completions", shell]);
        let o = run_bounded(c, Duration::from_secs(20));
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("sg-agent"), "{shell}: {s}");
        for sub in ["apply", "detach", "daemon", "explain"] {
            assert!(s.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let mut c = Command::new(sg_testkit::agent_bin());
    c.arg("man");
    let o = run_bounded(c, Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with(".ie") || s.contains(".TH"), "not roff: {s}");
    assert!(s.contains("sg\\-agent") && s.contains("apply"), "{s}");
}

#[test]
fn systemd_unit_verifies() {
    // systemd-analyze needs the ExecStart binary to exist: point it at the built one.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/sg-agent.service"
    ))
    .unwrap();
    assert!(unit.contains("/usr/local/bin/sg-agent daemon"));
    let dir = std::env::temp_dir().join(format!("sg-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("sg-agent.service");
    std::fs::write(
        &p,
        unit.replace("/usr/local/bin/sg-agent", sg_testkit::agent_bin()),
    )
    .unwrap();
    // Documentation=man:sg-agent(1) must resolve: install `sg-agent man` in a private MANPATH.
    std::fs::create_dir_all(dir.join("man/man1")).unwrap();
    let o = run_bounded(
        {
            let mut c = Command::new(sg_testkit::agent_bin());
            c.arg("man");
            c
        },
        Duration::from_secs(20),
    );
    std::fs::write(dir.join("man/man1/sg-agent.1"), &o.stdout).unwrap();
    let mut c = Command::new("systemd-analyze");
    c.arg("verify").arg(&p).env("MANPATH", dir.join("man"));
    let o = run_bounded(c, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ours: Vec<&str> = all.lines().filter(|l| l.contains("sg-agent")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}",
        text(&o)
    );
}
