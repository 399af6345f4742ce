//! Faults, each ending in a documented, safe state (docs/agent.md "Failure behaviour"),
//! judged by real traffic: the agent or the daemon killed in the middle of an apply, pins
//! removed with and without a daemon, a policy too big for a map, an interface deleted and
//! recreated, a corrupted or foreign state file, a full conntrack table, the eBPF load
//! refused, and a device without native XDP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sg_testkit::agent_harness::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn warnings(site: &Site) -> Vec<String> {
    site.agent_json(&["status"])["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

/// Enforces B when `b_in_force`, else A: where an interrupted apply may leave a site.
fn assert_enforces_a_or_b(site: &Site, b_in_force: bool, when: &str) {
    if b_in_force {
        assert_enforces_b(site, when);
    } else {
        assert_enforces_a(site, when);
    }
}

/// A site serving `SERVER` with policy A applied and policy B written beside it.
fn site_with_a_applied(tag: &str) -> (Site, PathBuf, PathBuf) {
    let site = Site::serving(tag);
    let a = site.policy("a.yaml", POLICY_A);
    let b = site.policy("b.yaml", POLICY_B);
    apply_xdp(&site, &a);
    (site, a, b)
}

/// `sg-agent apply --ingress-hook xdp`: the tests that watch the program through eth0's XDP
/// program id (or its `-in-xdp` pin) ask for XDP, since the default (auto) gives a veth TC.
fn apply_xdp(site: &Site, policy: &Path) -> serde_json::Value {
    site.agent_json(&["apply", "--ingress-hook", "xdp", policy.to_str().unwrap()])
}

#[test]
fn sigkill_at_any_stage_of_an_apply_leaves_one_whole_policy_and_a_new_agent_adopts_it() {
    let site = Site::serving("kill");
    let a = site.policy("a.yaml", POLICY_A);
    let b = site.policy("b.yaml", POLICY_B);
    // (stage, is B in force after the kill)
    for (stage, b_in_force) in [("compiled", false), ("attached", false), ("swapped", true)] {
        apply_xdp(&site, &a);
        assert_enforces_a(&site, &format!("{stage}: before"));
        let app = rule_id(&site, "app");
        let packets = site.rule_packets(&app);
        assert!(packets > 0);

        let log = site.dir.join(format!("kill-{stage}.log"));
        let mut bg = site.agent_bg(
            &["apply", b.to_str().unwrap()],
            &[("SG_AGENT_TEST_STOP_AT", stage)],
            &log,
        );
        bg.wait_stopped(Duration::from_secs(60));
        bg.kill9();
        let when = format!("killed at {stage}");
        assert_enforces_a_or_b(&site, b_in_force, &when);
        // A new agent adopts it: status works and says what happened, counters continue.
        let w = warnings(&site);
        if b_in_force {
            assert!(
                w.iter()
                    .any(|w| w.contains("interrupted after it took effect")),
                "{when}: status does not report the interrupted apply: {w:?}"
            );
        } else {
            assert!(w.is_empty(), "{when}: unexpected warnings {w:?}");
        }
        assert!(
            site.rule_packets(&app) >= packets,
            "{when}: counters went back"
        );

        // The next apply replaces the programs in the pinned links and enforces cleanly.
        let prog = site.xdp_prog_id("eth0");
        assert_ne!(prog, 0);
        apply_xdp(&site, &a);
        assert_ne!(
            site.xdp_prog_id("eth0"),
            prog,
            "{when}: program not replaced"
        );
        assert_enforces_a(&site, &format!("{when}, then applied A"));
        assert!(
            warnings(&site).is_empty(),
            "{when}: warnings after a clean apply"
        );
        assert!(
            site.rule_packets(&app) >= packets + 3,
            "{when}: counters restarted"
        );
    }
}

#[test]
fn daemon_killed_during_a_reload_leaves_one_whole_policy_and_a_new_daemon_takes_over() {
    let site = Site::serving("dkil");
    let cfg = site.dir.join("policy.yaml");
    for (stage, b_in_force) in [("attached", false), ("swapped", true)] {
        std::fs::write(&cfg, POLICY_A).unwrap();
        let log = site.dir.join(format!("daemon-{stage}.log"));
        // The first apply passes the stage once; the reload is the second time.
        let mut d = site.daemon(
            &cfg,
            &["--poll", "1"],
            &[("SG_AGENT_TEST_STOP_AT", &format!("{stage}:2"))],
            &log,
        );
        assert_enforces_a(&site, &format!("daemon ({stage}) started"));
        let app = rule_id(&site, "app");
        let packets = site.rule_packets(&app);
        std::fs::write(&cfg, POLICY_B).unwrap();
        d.wait_stopped(Duration::from_secs(30));
        d.kill9();
        let when = format!("daemon killed at {stage} of a reload");
        assert_enforces_a_or_b(&site, b_in_force, &when);
        // A new daemon takes over: applies B cleanly, counters continue.
        let log2 = site.dir.join(format!("daemon-{stage}-2.log"));
        let mut d2 = site.daemon(&cfg, &["--poll", "1"], &[], &log2);
        assert_enforces_b(&site, &format!("{when}, new daemon"));
        assert!(
            warnings(&site).is_empty(),
            "{when}: warnings after the new daemon"
        );
        assert!(
            site.rule_packets(&app) >= packets,
            "{when}: counters went back"
        );
        d2.signal(libc::SIGTERM);
        assert_eq!(d2.wait_exit(Duration::from_secs(20)), Some(0));
    }
}

#[test]
fn pins_removed_under_a_running_daemon_are_put_back_and_enforcement_never_stops() {
    let site = Site::serving("prm");
    let cfg = site.policy("policy.yaml", POLICY_A);
    let log = site.dir.join("daemon.log");
    let _d = site.daemon(
        &cfg,
        &[
            "--poll",
            "1",
            "--metrics",
            "127.0.0.1:9617",
            "--ingress-hook",
            "xdp",
        ],
        &[],
        &log,
    );
    assert_enforces_a(&site, "daemon running");
    let links = site.link_pins();
    let app = rule_id(&site, "app");
    let packets = site.rule_packets(&app);
    let prog = site.xdp_prog_id("eth0");

    std::fs::remove_dir_all(&site.pins).unwrap();
    // The daemon holds the links: still enforcing, right away.
    assert!(
        !site.tcp(5003, None),
        "tcp 5003 passed once the pins were removed"
    );
    assert_eq!(
        site.xdp_prog_id("eth0"),
        prog,
        "the XDP program went with the pins"
    );
    site.wait("the pins to be put back", Duration::from_secs(10), || {
        site.link_pins() == links
            && site
                .pins
                .join(format!("maps/abi-{}/SG_PORTS", sg_common::ABI_VERSION))
                .exists()
    });
    assert_logged(&log, "were pinned again");
    let metrics = site
        .srv
        .run_ok(
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:9617/metrics",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sg_pins_restored_total ") && l != "sg_pins_restored_total 0"),
        "{metrics}"
    );
    assert_enforces_a(&site, "after the pins were put back");
    // The same maps were put back: the counters continued, and a CLI apply adopts them.
    site.apply(&site.policy("b.yaml", POLICY_B));
    assert_enforces_b(&site, "CLI apply after the pins were put back");
    assert!(site.rule_packets(&app) >= packets + 3, "counters restarted");
}

#[test]
fn pins_removed_without_a_daemon_stop_enforcement_until_the_next_apply() {
    let site = Site::serving("prn");
    let a = site.policy("a.yaml", POLICY_A);
    apply_xdp(&site, &a);
    assert_enforces_a(&site, "applied");
    std::fs::remove_dir_all(&site.pins).unwrap();
    // The pins were the only reference to the links: the programs are gone (fail open).
    site.wait("the links to go", Duration::from_secs(5), || {
        site.xdp_prog_id("eth0") == 0
    });
    assert!(
        site.tcp(5003, None),
        "nothing enforces any more, 5003 must pass"
    );
    // Read-only commands say so and create nothing.
    let o = site.agent(&["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("nothing is enforced"), "{}", text(&o));
    assert!(!site.pins.exists(), "status recreated pins");
    // The next apply puts everything back.
    apply_xdp(&site, &a);
    assert_enforces_a(&site, "re-applied after the pins were removed");
    assert!(warnings(&site).is_empty());
}

#[test]
fn a_policy_too_big_for_the_ports_map_fails_cleanly_and_the_old_policy_stays() {
    let site = Site::serving("full");
    let a = site.policy("a.yaml", POLICY_A);
    let b = site.policy("b.yaml", POLICY_B);
    let mut big = String::from("security_groups:\n  - id: sg-web\n    ingress:\n");
    // 40 sources with a port each: 40 peer classes, a page or more each.
    for p in 6000..6040 {
        big.push_str(&format!(
            "      - {{protocol: tcp, ports: {p}, source: 192.0.2.{}/32}}\n",
            p - 6000 + 100
        ));
    }
    big.push_str("instances:\n  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}\n");
    let big = site.policy("big.yaml", &big);

    // The maps are sized when first created: a small SG_PORTS.
    let out = site.agent_json(&["--capacity", "ports=24", "apply", a.to_str().unwrap()]);
    assert_enforces_a(&site, "A applied");
    let o = run_bounded(
        {
            let mut c = Command::new("bpftool");
            c.args(["-j", "map", "show", "pinned"]).arg(
                site.pins
                    .join(format!("maps/abi-{}/SG_PORTS", sg_common::ABI_VERSION)),
            );
            c
        },
        Duration::from_secs(10),
    );
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["max_entries"], 24, "{info}");
    let state = site.state_file();
    let generation = out["generation"].clone();

    // Later agents adopt the small map whatever they would create.
    let o = site.agent(&["apply", big.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = stderr(&o);
    assert!(e.contains("SG_PORTS") && e.contains("full"), "{e}");
    assert!(e.contains("rolled back"), "{e}");
    assert_enforces_a(&site, "after the failed apply");
    assert!(
        !site.tcp_to(SRV, 6001),
        "a port of the failed policy passed"
    );
    assert_eq!(site.state_file(), state, "the state file changed");
    let st = site.agent_json(&["status"]);
    assert_eq!(st["generation"], generation, "{st}");
    assert_eq!(st["kernel_generation"], generation, "{st}");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
    // A policy that fits still applies.
    site.apply(&b);
    assert_enforces_b(&site, "B after the failure");
}

#[test]
fn an_interface_deleted_and_recreated_is_attached_again_and_stale_pins_are_removed() {
    let site = Site::serving("ifre");
    let a = site.policy("a.yaml", POLICY_A);
    apply_xdp(&site, &a);
    let old = site.srv.ifindex("eth0").unwrap();
    site.assert_link_pins_of(old, "applied on the first device");

    // Deleted: the pins stay (their links detached), status says so.
    site.srv_ip(&["link", "del", "eth0"]);
    let w = warnings(&site);
    assert!(
        w.iter()
            .any(|w| w.contains(&format!("ifindex {old} is gone"))),
        "{w:?}"
    );

    // Recreated under a new ifindex: not enforced until the next apply (fail open).
    site.plug("eth0", None);
    let new = site.srv.ifindex("eth0").unwrap();
    assert_ne!(new, old);
    assert!(
        site.tcp(5003, None),
        "the new device is not enforced before an apply"
    );
    let out = apply_xdp(&site, &a);
    let detached = out["detached"].to_string();
    assert!(detached.contains("stale pins removed"), "{out}");
    site.assert_link_pins_of(new, "after the re-apply on the recreated device");
    assert_enforces_a(&site, "after the re-apply on the recreated device");
    assert!(warnings(&site).is_empty());

    // Recreated under the same ifindex: the old pins hold dead links that cannot be
    // updated; the apply replaces them.
    site.srv_ip(&["link", "del", "eth0"]);
    site.plug("eth0", Some(new));
    assert_eq!(site.srv.ifindex("eth0").unwrap(), new);
    apply_xdp(&site, &a);
    site.assert_link_pins_of(new, "after the re-apply on the same ifindex");
    assert_ne!(site.xdp_prog_id("eth0"), 0);
    assert_enforces_a(&site, "after the re-apply on the same ifindex");

    // With a daemon, the change is picked up without anyone applying.
    let log = site.dir.join("daemon.log");
    let _d = site.daemon(&a, &["--poll", "1", "--ingress-hook", "xdp"], &[], &log);
    site.srv_ip(&["link", "del", "eth0"]);
    site.plug("eth0", None);
    let third = site.srv.ifindex("eth0").unwrap();
    // Pins first, then the log line: wait for the reload to be complete.
    site.wait_log(
        "the daemon to attach the new device",
        Duration::from_secs(20),
        &log,
        "reloaded on interface change",
    );
    site.assert_link_pins_of(third, "after the daemon re-attached");
    assert_enforces_a(&site, "after the daemon re-attached");
}

#[test]
fn a_corrupted_or_foreign_state_file_is_refused_and_enforcement_is_untouched() {
    let (site, _, b) = site_with_a_applied("stat");
    let good = std::fs::read_to_string(site.run.join("state.json")).unwrap();
    let prog = site.xdp_prog_id("eth0");
    let pins = site.link_pins();

    let abi = format!("\"abi\": {},", sg_common::ABI_VERSION);
    let bad_abi = good.replacen(&abi, "\"abi\": 999,", 1);
    assert_ne!(bad_abi, good);
    for (content, expect) in [
        ("{\"abi\": 1, \"generation\": ", "corrupted"),
        ("\u{0}\u{1}garbage", "corrupted"),
        (bad_abi.as_str(), "ABI 999"),
    ] {
        std::fs::write(site.run.join("state.json"), content).unwrap();
        for args in [vec!["apply", b.to_str().unwrap()], vec!["status"]] {
            let o = site.agent(&args);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
            let e = stderr(&o);
            assert!(e.contains(expect), "{args:?}: {e}");
            assert!(e.contains("enforcement is left as it is"), "{e}");
            assert!(e.contains("hint"), "{e}");
        }
        assert_eq!(site.xdp_prog_id("eth0"), prog, "{expect}: program replaced");
        assert_eq!(site.link_pins(), pins, "{expect}: pins changed");
        assert_enforces_a(&site, &format!("state {expect}"));
    }
    // The way out works whatever the state: detach.
    std::fs::write(site.run.join("state.json"), "not json").unwrap();
    let o = site.agent(&["detach"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("removed anyway"), "{}", text(&o));
    site.assert_clean();
    assert!(site.tcp(5003, None));
}

#[test]
fn a_full_conntrack_table_drops_new_flows_counts_them_and_keeps_established_ones() {
    // C6: capacity 4 confirmed + 4 unconfirmed flows.
    let site = Site::serving("ctf");
    let a = site.policy("a.yaml", POLICY_A);
    site.agent_json(&[
        "--capacity",
        "ct=4",
        "--capacity",
        "ct_new=4",
        "apply",
        a.to_str().unwrap(),
    ]);
    let st = site.agent_json(&["status"]);
    assert_eq!(st["ct_capacity"], 4, "{st}");
    let res = probe_result(
        site.probe_bg(&["hold", SRV, "5001", "7"]),
        Duration::from_secs(60),
    );
    let opened: Vec<bool> = res["opened"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    assert_eq!(
        opened,
        vec![true, true, true, true, false, false, false],
        "only 4 flows fit: {res}"
    );
    let used: Vec<serde_json::Value> = res["used"].as_array().unwrap().clone();
    assert!(
        used[..4].iter().all(|u| u == true),
        "established flows were cut when the table filled: {res}"
    );
    let c = site.counters();
    assert!(c["conntrack"]["exceeded"].as_u64().unwrap() > 0, "{c}");
    assert!(
        c["reasons"]["drop_conntrack_full"].as_u64().unwrap() > 0,
        "{c}"
    );
    let st = site.agent_json(&["status"]);
    assert_eq!(st["conntrack"]["confirmed_available"], 0, "{st}");
    // Untracked traffic and ICMP errors are not the point here; a new flow stays refused
    // until entries expire or are flushed.
    assert!(
        !site.tcp(5001, None),
        "a new flow passed with the table full"
    );
    site.agent_ok(&["conntrack", "flush"]);
    assert!(site.tcp(5001, None), "after a flush new flows pass again");
}

#[test]
fn a_refused_ebpf_load_leaves_enforcement_untouched() {
    // Without CAP_BPF (and CAP_SYS_ADMIN) the kernel refuses every bpf() call: the same
    // outcome as a verifier rejection of a new program, before anything is touched.
    let (site, _, b) = site_with_a_applied("caps");
    let state = site.state_file();
    let prog = site.xdp_prog_id("eth0");
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", site.srv.name()))
        .args([
            "setpriv",
            "--bounding-set=-bpf,-sys_admin,-perfmon,-net_admin",
            "--",
            sg_testkit::agent_bin(),
            "apply",
        ])
        .arg(&b);
    let o = run_bounded(c, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = stderr(&o);
    assert!(e.contains("Operation not permitted"), "{e}");
    assert!(e.contains("CAP_BPF"), "{e}");
    assert_eq!(site.xdp_prog_id("eth0"), prog);
    assert_eq!(site.state_file(), state);
    assert_enforces_a(&site, "after the refused load");
}

#[test]
fn without_native_xdp_the_agent_falls_back_to_generic_mode_and_enforces() {
    // macvlan has no native XDP: the driver refuses, the agent says so and uses SKB mode.
    let site = Site::serving("gen");
    site.srv_ip(&["addr", "del", &format!("{SRV}/24"), "dev", "eth0"]);
    site.srv_ip(&[
        "link", "add", "macv0", "link", "eth0", "type", "macvlan", "mode", "bridge",
    ]);
    site.srv_ip(&["addr", "add", "192.0.2.21/24", "dev", "macv0"]);
    site.srv_ip(&["link", "set", "macv0", "up"]);
    // Only macv0 may answer ARP for its address: by default Linux answers on every interface
    // (eth0 too), and a client that cached eth0's MAC sends straight to eth0, past macv0 and
    // its program (the test passed or failed by which reply came first).
    for dev in ["all", "eth0"] {
        site.srv
            .sysctl(&format!("net.ipv4.conf.{dev}.arp_ignore"), "1")
            .unwrap();
    }
    let p = site.policy(
        "gen.yaml",
        "security_groups:\n  - id: sg-web\n    ingress:\n      - {protocol: tcp, ports: 5001, source: 192.0.2.0/24}\ninstances:\n  - {name: web-1, addresses: [192.0.2.21], groups: [sg-web]}\n",
    );
    assert!(
        site.tcp_to("192.0.2.21", 5003),
        "control: 5003 open without sg"
    );
    // Under the default (auto) macvlan gets TC: XDP is asked for here.
    let out = site.agent_ok(&["apply", "--ingress-hook", "xdp", p.to_str().unwrap()]);
    assert!(
        out.contains("native XDP on macv0 failed") && out.contains("generic"),
        "{out}"
    );
    assert_eq!(xdp_mode(&site.srv, "macv0"), "generic");
    assert!(site.tcp_to("192.0.2.21", 5001), "allowed port refused");
    assert!(!site.tcp_to("192.0.2.21", 5003), "denied port passed");
    // Re-applies keep the hook and mode, under the default hook too.
    site.agent_ok(&["apply", p.to_str().unwrap()]);
    assert_eq!(xdp_mode(&site.srv, "macv0"), "generic");
    assert!(!site.tcp_to("192.0.2.21", 5003));
}

#[test]
fn state_left_by_a_deleted_namespace_whose_inode_is_reused_is_not_adopted() {
    // Default directories are named after the namespace's inode, which the kernel reuses
    // once a namespace is gone. The state records the namespace's cookie (never reused):
    // state written under another cookie is a dead namespace's, removed rather than adopted.
    // Simulated here by rewriting the cookie of this namespace's own state.
    let site = Site::serving("cook");
    let a = site.policy("a.yaml", POLICY_A);
    site.apply(&a);
    let path = site.run.join("state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let cookie = st["netns_cookie"].as_u64().unwrap();
    assert_ne!(cookie, 0, "the state records the namespace cookie");
    st["netns_cookie"] = (cookie + 1).into();
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    let o = site.agent(&["apply", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("left by a deleted network namespace"),
        "{}",
        text(&o)
    );
    // Started afresh: new maps and links, no trace of the "dead" namespace's counters.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("+ group sg-web"), "{out}");
    assert_enforces_a(&site, "after the fresh start");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(st["netns_cookie"], cookie, "{st}");
}
