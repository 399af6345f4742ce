//! Audit mode (L3) with real clients: `sg-agent audit on` passes what the policy would drop
//! and reports it (`audit_would_drop_no_rule`; `drop_no_rule` does not move), a
//! session it admitted ends the moment `audit off` runs, and what audit never opens
//! (malformed packets, interfaces without a policy) stays closed.
use std::time::Duration;

use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::probe::{Both, Expect::*, Svc, table};
use sg_lab::scenario::{HTTPS_ONLY, INST, MY_IP};
use sg_lab::services::tcp_session;

/// L3: dropped by the policy, passed and counted in audit mode; after `audit off` the
/// admitted session is cut at once and new ones are refused again; an allowed path is
/// untouched throughout.
#[test]
fn l3_audit_mode_passes_and_reports_drops_and_its_flows_end_with_it() {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Https(443), TcpEcho(7000)]);
    bed.apply_to_inst(HTTPS_ONLY, "sg-web");
    let agent = |args: &[&str]| {
        let out = bed.agents.run(&bed.host("inst").ns, args).unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::tcp(7000), Deny, "E1 no rule for 7000"),
        ("my-ip", "inst", Both, Svc::Https(443), Allow, "E1 the 443 rule"),
    ]));
    let before = bed.counters("inst").reason("drop_no_rule");

    assert!(agent(&["audit", "on"]).contains("audit mode ON"));
    assert!(agent(&["status"]).contains("audit mode is ON"));
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::tcp(7000), Allow, "L3 audit: the drop passes"),
        ("my-ip", "inst", Both, Svc::Https(443), Allow, "E1 the 443 rule"),
    ]));
    // At least each family's SYN: the server's answer then opens a flow (egress allows it,
    // C1), which carries the audit mark.
    let c = bed.counters("inst");
    assert!(c.reason("audit_would_drop_no_rule") >= 2, "{:?}", c.reasons);
    assert_eq!(
        c.reason("drop_no_rule"),
        before,
        "audit mode dropped: {:?}",
        c.reasons
    );

    // A session opened while auditing, then audit off: it ends at once (L3).
    let mut s = tcp_session(bed.host("my-ip"), bed.host("inst").addr(false), 7000).unwrap();
    s.wait_ready(Duration::from_secs(5)).unwrap();
    assert!(s.round_trip("audited", Duration::from_secs(3)));
    assert!(agent(&["audit", "off"]).contains("audit mode OFF"));
    assert!(
        !s.round_trip("after", Duration::from_secs(3)),
        "L3: a session admitted by audit mode survived its end"
    );
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::tcp(7000), Deny, "L3 audit off: enforced again"),
        ("my-ip", "inst", Both, Svc::Https(443), Allow, "E1 the 443 rule"),
    ]));
    assert!(bed.counters("inst").reason("drop_no_rule") > before);
    bed.detach_all();
}
