//! Audit mode per interface (L3) and the revert record in `status` (L1), with real clients.
//! `srv` enforces on two devices: eth0 (192.0.2.11, client `cli` at 192.0.2.10) and eth1
//! (198.51.100.1, client `cli2` at 198.51.100.2), both in sg-web, which allows TCP 5001
//! only. Audit mode on eth1 alone passes its would-be drops (counted as
//! `audit_would_drop_no_rule`) while eth0 keeps enforcing; ending it (`audit off eth1`, or an
//! apply without `audit: true`) cuts the flow audit admitted at once.
use std::path::Path;
use std::time::Duration;

use sg_testkit::agent_harness::{Site, text};
use sg_testkit::netns::{Netns, Session, veth};

const ETH1: &str = "198.51.100.1";
const CLI2: &str = "198.51.100.2";

/// sg-web allows 5001 from anywhere, and SSH from the administrator (198.51.100.7) so that
/// an apply from its SSH session passes the pre-flight (L2). `{audit}` goes on web-2 (eth1).
fn policy(audit: &str) -> String {
    format!(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {{protocol: tcp, ports: 5001, source: 0.0.0.0/0}}
      - {{protocol: tcp, ports: 22, source: 198.51.100.7/32}}
instances:
  - name: web-1
    device: eth0
    addresses: [192.0.2.11]
    groups: [sg-web]
  - name: web-2
    device: eth1
    addresses: [{ETH1}]
    groups: [sg-web]
    {audit}
"#
    )
}

/// A Site (srv eth0 <-> cli) with a second device: srv eth1 <-> cli2, serving TCP 5001 and
/// 7000. cli2 comes first: declared first, it is dropped after the Site's detach.
fn two_devices(tag: &str) -> (Netns, Site) {
    let mut site = Site::new(tag);
    let cli2 = Netns::new(&format!("{tag}d")).expect("create cli2 namespace");
    veth(&site.srv, "eth1", &cli2, "eth0").expect("veth eth1");
    site.srv_ip(&["addr", "add", &format!("{ETH1}/24"), "dev", "eth1"]);
    cli2.ip(&["addr", "add", &format!("{CLI2}/24"), "dev", "eth0"])
        .expect("cli2 address");
    site.serve(&["tcp:5001", "tcp:7000"]);
    (cli2, site)
}

/// One TCP connect + echo from cli2 to eth1's address (1 s timeout).
fn via_eth1(site: &Site, cli2: &Netns, port: u16) -> bool {
    let out = cli2
        .run(
            &[
                "python3",
                site.dir.join("probe.py").to_str().unwrap(),
                "tcp",
                ETH1,
                &port.to_string(),
            ],
            Duration::from_secs(10),
        )
        .expect("probe from cli2");
    out.status.success()
}

/// A TCP session from cli2 to eth1:7000 that answered once.
fn session(cli2: &Netns) -> Session {
    let mut s = cli2
        .session(&["socat", "-", &format!("TCP4:{ETH1}:7000")])
        .expect("socat from cli2");
    s.wait_ready(Duration::from_secs(5))
        .expect("the audited session opens");
    s
}

fn reason(site: &Site, name: &str) -> u64 {
    site.agent_json(&["counters"])["reasons"][name]
        .as_u64()
        .unwrap_or(0)
}

/// The `audit` field of a device in `status --json`.
fn audit_of(site: &Site, dev: &str) -> serde_json::Value {
    let s = site.agent_json(&["status"]);
    let i = s["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["device"] == dev);
    i.unwrap_or_else(|| panic!("{dev} in status: {s}"))["audit"].clone()
}

fn apply(site: &Site, p: &Path) {
    site.agent_ok(&["apply", p.to_str().unwrap()]);
}

/// L3 per interface, by command: `audit on eth1` passes eth1's would-be drops and counts them
/// under audit_would_drop_no_rule; eth0, in the same namespace and the same group, keeps
/// dropping (drop_no_rule). The setting outlives an apply; `audit off eth1` cuts the session
/// audit admitted on eth1 at once and enforces again.
#[test]
fn l3_audit_on_one_device_passes_its_drops_only_and_audit_off_cuts_its_flows() {
    let (cli2, site) = two_devices("aui");
    let p = site.policy("p.yaml", &policy(""));
    apply(&site, &p);
    assert!(
        site.tcp(5001, None) && via_eth1(&site, &cli2, 5001),
        "E1 the 5001 rule"
    );
    assert!(
        !site.tcp(7000, None) && !via_eth1(&site, &cli2, 7000),
        "E1 no rule for 7000"
    );

    let on = site.agent_json(&["audit", "on", "eth1"]);
    assert_eq!(
        (on["device"].as_str(), on["audit"].as_bool()),
        (Some("eth1"), Some(true))
    );
    let (audited, dropped) = (
        reason(&site, "audit_would_drop_no_rule"),
        reason(&site, "drop_no_rule"),
    );
    assert!(
        via_eth1(&site, &cli2, 7000),
        "L3: eth1's drop passes in audit mode"
    );
    assert!(
        !site.tcp(7000, None),
        "L3: eth0 is not in audit mode and still drops"
    );
    assert!(reason(&site, "audit_would_drop_no_rule") > audited);
    assert!(
        reason(&site, "drop_no_rule") > dropped,
        "eth0's drop is a drop"
    );
    assert_eq!(audit_of(&site, "eth1"), "command");
    assert_eq!(audit_of(&site, "eth0"), serde_json::Value::Null);
    let listed = site.agent_ok(&["audit", "status"]);
    assert!(
        listed.contains("eth1 (ifindex") && !listed.contains("eth0"),
        "{listed}"
    );

    // The command's setting is kept by the next apply (the state remembers it).
    apply(&site, &p);
    assert_eq!(audit_of(&site, "eth1"), "command");
    let mut s = session(&cli2);
    assert!(s.round_trip("audited", Duration::from_secs(3)));

    let off = site.agent_json(&["audit", "off", "eth1"]);
    assert!(off["flows_ended"].as_u64() >= Some(1), "{off}");
    assert!(
        !s.round_trip("after", Duration::from_secs(3)),
        "L3: a session admitted by eth1's audit mode survived its end"
    );
    assert!(
        !via_eth1(&site, &cli2, 7000),
        "L3 audit off: eth1 enforces again"
    );
    assert!(via_eth1(&site, &cli2, 5001), "E1 the 5001 rule on eth1");
    assert_eq!(audit_of(&site, "eth1"), serde_json::Value::Null);
}

/// L3 per interface, by policy: `audit: true` on web-2 puts eth1 alone in audit mode; `audit
/// off eth1` is refused (the policy says so); applying the policy without it ends audit mode
/// and the session it admitted.
#[test]
fn l3_audit_true_in_the_policy_audits_that_interface_and_an_apply_without_it_cuts_its_flows() {
    let (cli2, site) = two_devices("aup");
    let audited = site.policy("audit.yaml", &policy("audit: true"));
    let enforced = site.policy("enforce.yaml", &policy(""));
    apply(&site, &audited);
    assert!(
        via_eth1(&site, &cli2, 7000),
        "L3: eth1 (audit: true) passes its drop"
    );
    assert!(!site.tcp(7000, None), "L3: eth0 still drops");
    assert_eq!(audit_of(&site, "eth1"), "policy");
    assert!(reason(&site, "audit_would_drop_no_rule") >= 1);

    let refused = site.agent(&["audit", "off", "eth1"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("audit: true"), "{}", text(&refused));

    let mut s = session(&cli2);
    assert!(s.round_trip("audited", Duration::from_secs(3)));
    let out = site.agent_ok(&["apply", enforced.to_str().unwrap()]);
    assert!(out.contains("flows it admitted ended"), "{out}");
    assert!(
        !s.round_trip("after", Duration::from_secs(3)),
        "L3: a session admitted by audit: true survived the apply that ended it"
    );
    assert!(!via_eth1(&site, &cli2, 7000), "eth1 enforces again");
    assert_eq!(audit_of(&site, "eth1"), serde_json::Value::Null);
}

/// L1 in `status`: a pending `--confirm` shows its deadline, what comes back and the SSH
/// client that set it; once its deadline passes, the last revert shows when, why and what
/// came back, in the human and the JSON output.
#[test]
fn l1_status_shows_the_pending_confirm_and_the_last_revert() {
    let site = Site::new("auc");
    let first = site.policy("first.yaml", &policy(""));
    let second = site.policy("second.yaml", &policy("audit: true"));
    apply(&site, &first);
    let ssh = [("SSH_CONNECTION", "198.51.100.7 50022 192.0.2.11 22")];
    let o = site.agent_env(
        &["apply", second.to_str().unwrap(), "--confirm", "15s"],
        &ssh,
    );
    assert!(o.status.success(), "{}", text(&o));

    let s = site.agent_json(&["status"]);
    assert_eq!(s["confirm"]["ssh_connection"], ssh[0].1, "{s}");
    assert_eq!(s["confirm"]["previous"]["source"], first.to_str().unwrap());
    let human = site.agent_ok(&["status"]);
    assert!(
        human.contains("set by SSH client 198.51.100.7 port 50022"),
        "{human}"
    );
    assert!(human.contains("first.yaml comes back"), "{human}");

    // The watchdog reverts at the deadline (long enough for the checks above on a loaded
    // machine).
    sg_testkit::netns::wait_until("the revert", Duration::from_secs(60), || {
        site.agent_json(&["status"])["last_revert"].is_object()
    })
    .expect("reverted within 60 s");
    let s = site.agent_json(&["status"]);
    let r = &s["last_revert"];
    assert_eq!(r["source"], second.to_str().unwrap(), "{s}");
    assert_eq!(r["restored"], first.to_str().unwrap(), "{s}");
    assert_eq!(r["why"], "its confirmation deadline passed", "{s}");
    assert!(r["at_ms"].as_u64() > r["set_at_ms"].as_u64(), "{s}");
    assert!(s["confirm"].is_null(), "{s}");
    let human = site.agent_ok(&["status"]);
    assert!(
        human.contains("last revert:") && human.contains("its confirmation deadline passed"),
        "{human}"
    );
}
