//! `sg-agent daemon`, judged by real traffic: readiness (sd_notify), reload on SIGHUP and on
//! file change, a broken file keeping the enforced policy, metrics scraped with curl, flow log
//! lines, SIGTERM leaving enforcement in place, a restart adopting it, loopback-only metrics,
//! one daemon per namespace, and waiting for interfaces that are not there yet (boot).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sg_testkit::agent_harness::*;

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
struct Notify {
    sock: UnixDatagram,
    path: String,
}

impl Notify {
    fn new(site: &Site) -> Notify {
        let path = site.dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        Notify {
            sock,
            path: path.display().to_string(),
        }
    }

    /// Starts `sg-agent daemon --config <cfg> <args>` that reports to this socket.
    fn daemon(&self, site: &Site, cfg: &Path, args: &[&str], log: &Path) -> Bg {
        site.daemon_bg(cfg, args, &[("NOTIFY_SOCKET", &self.path)], log)
    }

    /// The next message that contains `want` (others are skipped).
    fn expect(&self, want: &str) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no sd_notify message with {want:?}: {e}"));
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.contains(want) {
                return m;
            }
        }
    }
}

/// A site serving `SERVER` with policy A as the daemon's config, a notify socket and the
/// daemon's log path: what a daemon test starts from.
fn daemon_site(tag: &str) -> (Site, PathBuf, Notify, PathBuf) {
    let site = Site::serving(tag);
    let cfg = site.policy("policy.yaml", POLICY_A);
    let notify = Notify::new(&site);
    let log = site.dir.join("daemon.log");
    (site, cfg, notify, log)
}

fn scrape(site: &Site, addr: &str) -> String {
    site.srv
        .run_ok(
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{addr}/metrics"),
            ],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("scrape {addr}: {e}"))
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name) && (labels.is_empty() || l.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn must(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
}

#[test]
fn daemon_reloads_keeps_the_policy_on_a_bad_file_reports_and_stops_without_unenforcing() {
    let site = Site::serving("dmn");
    let cfg = site.dir.join("policy.yaml");
    std::fs::write(&cfg, POLICY_A).unwrap();
    let flows = site.dir.join("flows.log");
    let log = site.dir.join("daemon1.log");
    let notify = Notify::new(&site);
    let m = "127.0.0.1:9617";
    let mut d = notify.daemon(
        &site,
        &cfg,
        &[
            "--metrics",
            m,
            "--flow-log",
            flows.to_str().unwrap(),
            "--flow-log-interval",
            "1",
            "--poll",
            "3600",
        ],
        &log,
    );
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS=enforcing"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", d.pid())), "{ready}");
    assert_enforces_a(&site, "daemon started with A");

    // Metrics: the rule counter moves with traffic; conntrack allowance is exposed.
    let t0 = scrape(&site, m);
    let app0 = must(&t0, "sg_rule_packets_total", "description=\"app\"");
    assert!(
        must(&t0, "sg_conntrack_allowance_available", "") > 0.0,
        "{t0}"
    );
    assert_eq!(must(&t0, "sg_conntrack_allowance_exceeded_total", ""), 0.0);
    assert_eq!(must(&t0, "sg_applies_total", ""), 1.0);
    assert_eq!(must(&t0, "sg_apply_errors_total", ""), 0.0);
    assert_eq!(must(&t0, "sg_enforcing", ""), 1.0);
    for _ in 0..3 {
        assert!(site.tcp(5001, None));
    }
    let t1 = scrape(&site, m);
    let app1 = must(&t1, "sg_rule_packets_total", "description=\"app\"");
    assert!(
        app1 >= app0 + 9.0,
        "sg_rule_packets_total for the app rule went {app0} -> {app1} over 3 connections"
    );
    assert!(must(&t1, "sg_packets_total", "reason=\"drop_no_rule\"") > 0.0);

    // Flow log: ACCEPT for the allowed flow with packets and bytes, REJECT for the dropped.
    assert!(!site.tcp(5003, None));
    site.wait("flow log lines", Duration::from_secs(15), || {
        let t = log_text(&flows);
        t.contains(" 5001 6 ") && t.contains("ACCEPT") && t.contains(" 5003 6 ")
    });
    let t = log_text(&flows);
    let accept = t
        .lines()
        .find(|l| l.contains(&format!(" {CLI} {SRV} ")) && l.contains(" 5001 6 "))
        .unwrap_or_else(|| panic!("no ACCEPT line for 5001:\n{t}"));
    let f: Vec<&str> = accept.split(' ').collect();
    assert_eq!(f.len(), 14, "{accept}");
    assert_eq!((f[0], f[1], f[2]), ("2", "-", "eth0"), "{accept}");
    assert_eq!((f[12], f[13]), ("ACCEPT", "OK"), "{accept}");
    assert!(f[8].parse::<u64>().unwrap() > 0 && f[9].parse::<u64>().unwrap() > 0);
    let reject = t
        .lines()
        .find(|l| l.contains(" 5003 6 "))
        .unwrap_or_else(|| panic!("no line for 5003:\n{t}"));
    assert!(reject.ends_with("REJECT OK"), "{reject}");
    assert!(reject.contains(&format!(" {CLI} {SRV} ")), "{reject}");

    // L3: in audit mode the same connection passes, and its packets are logged as REJECT
    // marked AUDIT (what the policy would drop), not as a plain REJECT.
    assert!(site.agent_ok(&["audit", "on"]).contains("audit mode ON"));
    assert!(
        site.tcp(5003, None),
        "audit mode: tcp 5003 (denied) did not pass"
    );
    site.wait("the audit REJECT line", Duration::from_secs(15), || {
        log_text(&flows).contains("REJECT AUDIT")
    });
    let t = log_text(&flows);
    let audited = t
        .lines()
        .find(|l| l.ends_with("REJECT AUDIT"))
        .unwrap_or_else(|| panic!("no REJECT AUDIT line:\n{t}"));
    assert!(audited.contains(&format!(" {CLI} {SRV} ")), "{audited}");
    assert!(audited.contains(" 5003 6 "), "{audited}");
    assert_eq!(audited.split(' ').count(), 14, "{audited}");
    site.agent_ok(&["audit", "off"]);
    assert!(!site.tcp(5003, None), "audit off: tcp 5003 passed");

    // SIGHUP with a broken file: the enforced policy stays, the error is counted once.
    std::fs::write(
        &cfg,
        "security_groups:\n  - id: sg-web\n    ingress: [{protocol: tcp}]\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    site.wait("the failed reload", Duration::from_secs(20), || {
        metric(&scrape(&site, m), "sg_apply_errors_total", "") == Some(1.0)
    });
    assert_logged(&log, "the enforced policy stays");
    assert_enforces_a(&site, "after SIGHUP with a broken file");
    let t2 = scrape(&site, m);
    assert_eq!(must(&t2, "sg_apply_errors_total", ""), 1.0, "{t2}");
    assert_eq!(must(&t2, "sg_applies_total", ""), 1.0, "{t2}");

    // SIGHUP with B: applied.
    std::fs::write(&cfg, POLICY_B).unwrap();
    d.signal(libc::SIGHUP);
    site.wait("the reload of B", Duration::from_secs(20), || {
        metric(&scrape(&site, m), "sg_applies_total", "") == Some(2.0)
    });
    assert_enforces_b(&site, "after SIGHUP with B");

    // SIGTERM: the daemon exits 0; enforcement stays.
    d.terminate(&log);
    assert_logged(&log, "enforcement stays");
    assert_enforces_b(&site, "after the daemon stopped");
    let app_before = site.rule_packets(&rule_id(&site, "app"));

    // A new daemon adopts it (counters continue) and follows file changes (poll).
    let log2 = site.dir.join("daemon2.log");
    let mut d2 = notify.daemon(&site, &cfg, &["--metrics", m, "--poll", "1"], &log2);
    // Daemon 1's reloads said READY=1 too: wait for the new one's.
    let ready = notify.expect(&format!("MAINPID={}", d2.pid()));
    assert!(ready.contains("READY=1"), "{ready}");
    let t3 = scrape(&site, m);
    assert!(
        must(&t3, "sg_rule_packets_total", "description=\"app\"") >= app_before as f64,
        "counters restarted with the daemon: {t3}"
    );
    std::fs::write(&cfg, POLICY_A).unwrap();
    site.wait(
        "the file change to take effect",
        Duration::from_secs(15),
        || !site.tcp(5002, None),
    );
    assert_enforces_a(&site, "after the file changed to A");
    assert_logged(&log2, "reloaded on file change");
    d2.signal(libc::SIGTERM);
    assert_eq!(d2.wait_exit(Duration::from_secs(20)), Some(0));
    assert_enforces_a(&site, "after the second daemon stopped");
    site.agent_ok(&["detach"]);
    site.assert_clean();
}

#[test]
fn metrics_listen_on_loopback_by_default_and_one_daemon_per_namespace() {
    let (site, cfg, notify, log) = daemon_site("dlo");
    let _d = notify.daemon(&site, &cfg, &[], &log);
    notify.expect("READY=1");
    let ss = site
        .srv
        .run_ok(&["ss", "-ltnH"], Duration::from_secs(5))
        .unwrap();
    let ours: Vec<&str> = ss.lines().filter(|l| l.contains(":9617")).collect();
    assert_eq!(ours.len(), 1, "{ss}");
    assert!(ours[0].contains("127.0.0.1:9617"), "{ss}");
    assert!(scrape(&site, "127.0.0.1:9617").contains("sg_rule_packets_total"));
    // The host's own address (local traffic, not filtered by sg): nobody listens there.
    let o = site
        .srv
        .run(
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{SRV}:9617/metrics"),
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        !o.status.success(),
        "metrics answered on {SRV}: {}",
        text(&o)
    );

    // A second daemon for the same namespace is refused.
    let o = site.agent(&[
        "daemon",
        "--config",
        cfg.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9618",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already runs"),
        "{}",
        text(&o)
    );
    assert_enforces_a(&site, "after the refused second daemon");
}

#[test]
fn daemon_started_before_the_addresses_waits_for_them() {
    // Boot: the daemon starts before the network is configured (network-pre.target).
    let (site, cfg, notify, log) = daemon_site("dwt");
    site.srv_ip(&["addr", "del", &format!("{SRV}/24"), "dev", "eth0"]);
    site.srv_ip(&["addr", "del", &format!("{SRV6}/64"), "dev", "eth0"]);
    let m = "127.0.0.1:9617";
    let mut d = notify.daemon(&site, &cfg, &["--poll", "1"], &log);
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS=waiting"), "{ready}");
    let t = scrape(&site, m);
    assert_eq!(must(&t, "sg_enforcing", ""), 0.0, "{t}");
    assert!(!site.run.join("state.json").exists());

    site.srv_ip(&["addr", "add", &format!("{SRV}/24"), "dev", "eth0"]);
    site.srv_ip(&["addr", "add", &format!("{SRV6}/64"), "dev", "eth0", "nodad"]);
    let ready = notify.expect("STATUS=enforcing");
    assert!(ready.contains("READY=1"), "{ready}");
    assert_eq!(must(&scrape(&site, m), "sg_enforcing", ""), 1.0);
    assert_enforces_a(&site, "after the address appeared");
    d.terminate(&log);
}

#[test]
fn detach_stops_the_daemon_and_enforcement() {
    // The daemon holds the links open (so removed pins can be put back): detach must make it
    // let go, or enforcement would outlive the detach.
    let (site, cfg, notify, log) = daemon_site("ddet");
    // XDP rather than the default (auto: TC on a veth): the end checks eth0's XDP program.
    let mut d = notify.daemon(&site, &cfg, &["--poll", "1", "--ingress-hook", "xdp"], &log);
    notify.expect("READY=1");
    assert_enforces_a(&site, "daemon running");
    let out = site.agent_ok(&["detach"]);
    assert!(
        out.contains(&format!("stopped the daemon (pid {})", d.pid())),
        "{out}"
    );
    assert_eq!(
        d.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        log_text(&log)
    );
    site.assert_clean();
    assert_eq!(site.xdp_prog_id("eth0"), 0, "XDP program left after detach");
    assert!(site.tcp(5003, None), "still filtering after detach");
}

#[test]
fn cli_applies_beside_a_daemon_never_make_its_reloads_write_the_live_generation() {
    // A CLI apply flips the generation under the daemon. Its next reload must notice (state
    // file, SG_ACTIVE) and reload its picture of the kernel; otherwise it writes its policy
    // into the live generation on top of the CLI's entries, which it does not know about and
    // never deletes: the CLI's rules stay in force (found by this test: tcp 5002 leaked). An
    // untracked stream allowed by both policies with different encodings (a port, a range)
    // would also see any gap.
    let mut site = Site::new("dcli");
    let result = site.dir.join("sink.json");
    let stop = site.dir.join("stop");
    site.serve(&[&format!("sink:5009:{}", result.display()), "tcp:5002"]);
    let one = "security_groups:\n  - id: sg-web\n    ingress:\n      - {protocol: tcp, ports: 5009, source: 0.0.0.0/0}\ninstances:\n  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}\n";
    let two = "security_groups:\n  - id: sg-web\n    ingress:\n      - {protocol: tcp, ports: 5000-5010, source: 0.0.0.0/0}\ninstances:\n  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}\n";
    let cfg = site.policy("daemon.yaml", one);
    let other = site.policy("cli.yaml", two);
    let notify = Notify::new(&site);
    let log = site.dir.join("daemon.log");
    let d = notify.daemon(&site, &cfg, &["--poll", "3600"], &log);
    notify.expect("READY=1");
    let client = site.probe_bg(&["stream", SRV, "5009", "300", stop.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        site.apply(&other);
        d.signal(libc::SIGHUP);
        notify.expect("STATUS=enforcing");
        let st = site.agent_json(&["status"]);
        assert_eq!(st["generation"], st["kernel_generation"], "round {i}: {st}");
        assert!(
            st["warnings"].as_array().unwrap().is_empty(),
            "round {i}: {st}"
        );
        assert!(
            !site.tcp(5002, None),
            "round {i}: the CLI's policy (5000-5010) is still in force after the daemon \
             applied its own (5009 only)"
        );
    }
    // The stream socket's own retransmissions (the dropped 5002 probes retransmit too, so
    // the namespace-wide counter would not do).
    let ss = site
        .cli
        .run_ok(&["ss", "-tinH", "dport = :5009"], Duration::from_secs(5))
        .unwrap();
    assert!(
        ss.contains("192.0.2.11:5009"),
        "stream socket not found: {ss}"
    );
    assert!(
        !ss.contains("retrans:"),
        "the stream lost packets while the CLI and the daemon took turns: {ss}"
    );
    std::fs::write(&stop, b"").unwrap();
    let res = probe_result(client, Duration::from_secs(30));
    site.wait("the sink's report", Duration::from_secs(10), || {
        result.exists()
    });
    let sink: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert!(
        res["error"].is_null() && sink["error"].is_null(),
        "{res} {sink}"
    );
    assert_eq!(res["sent"], sink["bytes"]);
    assert_eq!(
        log_text(&log).matches("reloaded on SIGHUP").count(),
        10,
        "{}",
        log_text(&log)
    );
}
