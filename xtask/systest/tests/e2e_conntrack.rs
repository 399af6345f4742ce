//! End to end, connection tracking: replies (C1), 5-tuples and ICMP echo (C2), other
//! protocols (C3), untracked flows (C4), and what a rule change does to live sessions held
//! open across an apply (X1 tracked: they survive; X2 untracked: cut at once). IPv4 and IPv6
//! throughout, and idle timeouts (C5) set short and watched expire (that test waits ~70 s;
//! its name sorts so that it starts early, beside the others).
use std::time::{Duration, Instant};

use sg_lab::agents::Flow;
use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::probe::{Both, Expect::*, Svc, table};
use sg_lab::services::{self as svc, tcp_session};
use sg_testkit::netns::Session;

use sg_lab::scenario::{INST, INTERNET, MY_IP};

/// C1: replies to an allowed flow pass the other direction whatever its rules say: inbound
/// flows answer through an empty egress list, outbound flows get their answers through an
/// empty ingress list.
#[test]
fn c1_replies_pass_whatever_the_other_directions_rules() {
    let mut bed = Bed::new(&[INST, ("out", "192.0.2.12", "2001:db8:10::12"), INTERNET]);
    bed.serve("inst", &[TcpEcho(8080), UdpEcho(5353)]);
    bed.serve("internet", &[Http(80), UdpEcho(5353)]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-in-only
    ingress:
      - {protocol: tcp, ports: 8080, source: [0.0.0.0/0, "::/0"]}
      - {protocol: udp, ports: 5353, source: [0.0.0.0/0, "::/0"]}
    egress: []
  - id: sg-out-only
"#,
        &[("inst", "sg-in-only"), ("out", "sg-out-only")],
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, Svc::tcp(8080), Allow, "C1 reply leaves, no egress rule"),
        ("internet", "inst", Both, Svc::udp(5353), Allow, "C1 reply leaves, no egress rule"),
        ("inst", "internet", Both, Svc::Http(80), Deny, "D2 egress: []"),
        ("out", "internet", Both, Svc::Http(80), Allow, "C1 reply enters, no ingress rule"),
        ("out", "internet", Both, Svc::udp(5353), Allow, "C1 reply enters, no ingress rule"),
        ("internet", "out", Both, Svc::udp(5353), Deny, "D1"),
    ]);
    bed.expect(&p);
    for h in ["inst", "out"] {
        let c = bed.counters(h);
        assert!(c.reason("pass_ct_reply") > 0, "{h}: {:?}", c.reasons);
    }
    bed.detach_all();
}

/// C2: an ingress echo rule lets the echo replies out with egress empty; UDP is tracked by
/// 5-tuple: a datagram from the server's other port is not a reply (it arrives without sg,
/// the control, and is dropped with it).
#[test]
fn c2_echo_replies_leave_with_egress_empty_and_udp_replies_must_match_the_5_tuple() {
    let mut bed = Bed::new(&[INST, ("out", "192.0.2.12", "2001:db8:10::12"), INTERNET]);
    let echo = svc::udp_echo_with_alt(bed.host("internet"), &bed.files, 7000, 7001).unwrap();
    bed.hold(echo);
    let replies = |bed: &Bed, v6: bool| {
        let mut r = svc::udp_replies(
            bed.host("out"),
            &bed.files,
            bed.host("internet").addr(v6),
            7000,
            Duration::from_millis(1500),
        )
        .unwrap();
        r.sort();
        r
    };
    for v6 in [false, true] {
        assert_eq!(
            replies(&bed, v6),
            [7000, 7001],
            "control without sg (v6 {v6})"
        );
    }
    bed.apply_members(
        r#"
security_groups:
  - id: sg-ping
    ingress:
      - {protocol: icmp, type: 8, source: 0.0.0.0/0}
      - {protocol: icmpv6, type: 128, source: "::/0"}
    egress: []
  - id: sg-out
"#,
        &[("inst", "sg-ping"), ("out", "sg-out")],
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, Svc::Ping, Allow, "C2 echo replies leave"),
        ("inst", "internet", Both, Svc::Ping, Deny, "D2 egress: []"),
    ]);
    bed.expect(&p);
    for v6 in [false, true] {
        assert_eq!(
            replies(&bed, v6),
            [7000],
            "C2: only the 5-tuple's reply (v6 {v6})"
        );
    }
    let flows = bed.conntrack("inst");
    assert!(
        flows
            .iter()
            .any(|f| f.proto == "icmp" && f.opened == "inbound"),
        "C2: the echo flow is tracked: {flows:?}"
    );
    bed.detach_all();
}

/// C3: protocols without ports are tracked by (addresses, protocol): an answer of the same
/// protocol from the peer passes an empty ingress, another protocol or another peer does
/// not. Without sg (the control) all of them arrive.
#[test]
fn c3_other_protocols_are_tracked_by_addresses_and_protocol() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve("inst", &[Raw(253, None)]);
    bed.serve("internet", &[Raw(253, Some(254))]);
    let to = |bed: &Bed, v6| bed.host("internet").addr(v6);
    for v6 in [false, true] {
        let r = svc::raw_probe(bed.host("inst"), &bed.files, to(&bed, v6), 253, Some(254)).unwrap();
        assert!(r.reply && r.other, "control without sg (v6 {v6}): {r:?}");
    }
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::Raw(253), Allow, "control without sg"),
    ]));
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-out
"#,
        "sg-out",
    );
    for v6 in [false, true] {
        let r = svc::raw_probe(bed.host("inst"), &bed.files, to(&bed, v6), 253, Some(254)).unwrap();
        assert!(
            r.reply,
            "C3: protocol 253 back from the peer is a reply (v6 {v6})"
        );
        assert!(!r.other, "C3: protocol 254 is another flow (v6 {v6})");
    }
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::Raw(253), Deny, "C3 another peer, D1"),
    ]));
    let flows = bed.conntrack("inst");
    let f = flows
        .iter()
        .find(|f| f.proto == "proto 253")
        .unwrap_or_else(|| panic!("C3: a protocol 253 flow: {flows:?}"));
    assert_eq!((f.local_port, f.remote_port), (0, 0), "no ports: {f:?}");
    assert_eq!(f.timeout_s, 600, "C5 other protocols: 600 s by default");
    bed.detach_all();
}

/// C4: a TCP flow allowed by a 0.0.0.0/0 (::/0) rule while egress allows all traffic to
/// 0.0.0.0/0 (::/0) is untracked (no conntrack entry); a /32 source, or an egress rule that
/// is not "all ports", makes it tracked; ICMP is always tracked.
#[test]
fn c4_flows_from_anywhere_with_egress_to_anywhere_are_untracked() {
    let mut bed = Bed::new(&[
        ("open", "192.0.2.11", "2001:db8:10::11"),
        ("narrow", "192.0.2.12", "2001:db8:10::12"),
        ("allports", "192.0.2.13", "2001:db8:10::13"),
        MY_IP,
        INTERNET,
    ]);
    for h in ["open", "narrow", "allports"] {
        bed.serve(h, &[Https(443), Ssh(22)]);
    }
    bed.apply_members(
        r#"
x-ingress: &ingress
  - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
  - {protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
  - {protocol: icmp, type: 8, source: 0.0.0.0/0}
  - {protocol: icmpv6, type: 128, source: "::/0"}
security_groups:
  - id: sg-open
    ingress: *ingress
  - id: sg-narrow
    ingress: *ingress
    egress: [{protocol: tcp, ports: 1024-65535, destination: [0.0.0.0/0, "::/0"]}]
  - id: sg-allports
    ingress: *ingress
    egress: [{protocol: tcp, ports: 0-65535, destination: [0.0.0.0/0, "::/0"]}]
"#,
        &[
            ("open", "sg-open"),
            ("narrow", "sg-narrow"),
            ("allports", "sg-allports"),
        ],
    );
    let mut p = vec![];
    for h in ["open", "narrow", "allports"] {
        #[rustfmt::skip]
        p.extend(table(&[
            ("internet", h, Both, Svc::Https(443), Allow, "C4"),
            ("my-ip", h, Both, Svc::Ssh(22), Allow, "C4"),
            ("internet", h, Both, Svc::Ping, Allow, "C4 ICMP"),
        ]));
    }
    bed.expect(&p);
    for (h, https_tracked) in [("open", false), ("narrow", true), ("allports", false)] {
        let flows = bed.conntrack(h);
        let https = flows
            .iter()
            .filter(|f| f.proto == "tcp" && f.local_port == 443)
            .count();
        let ssh = flows
            .iter()
            .filter(|f| f.proto == "tcp" && f.local_port == 22)
            .count();
        let icmp = flows
            .iter()
            .filter(|f| f.proto == "icmp" || f.proto == "icmpv6")
            .count();
        assert_eq!(
            https > 0,
            https_tracked,
            "{h}: HTTPS flows tracked? {flows:#?}"
        );
        assert!(ssh >= 2, "{h}: SSH from a /32 is tracked: {flows:#?}");
        assert!(icmp >= 2, "{h}: ICMP is always tracked: {flows:#?}");
        let c = bed.counters(h);
        assert_eq!(
            c.reason("pass_rule_untracked") > 0,
            !https_tracked,
            "{h}: {:?}",
            c.reasons
        );
    }
    bed.detach_all();
}

/// C5 with short per-interface timeouts (the bounds' minimums), observed with real traffic
/// where the bounds allow it within ~70 s:
/// - UDP single (30 s): an answer 36 s after the last exchange is dropped;
/// - UDP stream (60 s): the same gap passes a stream, and a 65 s gap drops it;
/// - TCP established (60 s): sessions whose rule was removed (X1) keep working after ~36 s
///   idle, and are cut after 65 s idle;
/// - ICMP (5 s), TCP embryonic and closing (5 s), other protocols (60 s): the flows carry
///   the configured timeouts (`sg-agent conntrack --json`) and are expired when checked.
///
/// Each check waits from the last packet of the flows it looks at, so slow steps on a loaded
/// machine only make the test longer, never wrong.
#[test]
fn c5_idle_timeouts_configured_per_interface_expire_flows() {
    let mut bed = Bed::new(&[INST, ("peer", "192.0.2.50", "2001:db8:10::50")]);
    bed.serve("inst", &[TcpEcho(7000)]);
    bed.serve("peer", &[Raw(253, None), TcpEcho(7001)]);
    // The peer drops SYNs to 7999 itself (its own namespace): an outbound SYN from inst stays
    // embryonic.
    let peer = bed.host("peer");
    for cmd in [
        "add table inet sglab",
        "add chain inet sglab in { type filter hook input priority 0; policy accept; }",
        "add rule inet sglab in tcp dport 7999 drop",
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd.split(' '));
        peer.ns.run_ok(&args, Duration::from_secs(5)).unwrap();
    }
    let policy = |tcp_rule: bool| {
        format!(
            r#"
security_groups:
  - id: sg-a
    ingress:
{}
instances:
  - name: inst
    addresses: [192.0.2.11, "2001:db8:10::11"]
    groups: [sg-a]
    timeouts: {{udp_single: 30, udp_stream: 60, tcp_established: 60, tcp_embryonic: 5,
                tcp_closing: 5, icmp: 5, other: 60}}
"#,
            if tcp_rule {
                r#"      - {protocol: tcp, ports: 7000, source: [192.0.2.50/32, "2001:db8:10::50/128"]}"#
            } else {
                r#"      - {protocol: tcp, ports: 1, source: 192.0.2.50/32}"#
            }
        )
    };
    bed.apply(&["inst"], &policy(true));
    let inst = bed.host("inst");
    let f = &bed.files;
    // Each check waits from the last packet of the flows it looks at, whatever the probes
    // before it cost.
    let one_way = |from: &str, sport, to: &str, v6: bool, dport| {
        let (a, b) = (bed.host(from), bed.host(to));
        svc::udp_one_way(a, f, sport, b, b.addr(v6), dport).unwrap()
    };
    let base = |v6: bool| -> u16 { if v6 { 100 } else { 0 } };
    // UDP flow n: port 41000 + n on inst, 9000 + n on the peer (+100 over IPv6). `send` is
    // inst's datagram out; `answer` the peer's back, which passes only while inst's state
    // for the flow lives.
    let send = |n: u16, v6| {
        one_way(
            "inst",
            41000 + n + base(v6),
            "peer",
            v6,
            9000 + n + base(v6),
        )
    };
    let answer = |n: u16, v6| {
        one_way(
            "peer",
            9000 + n + base(v6),
            "inst",
            v6,
            41000 + n + base(v6),
        )
    };
    // A UDP stream: two exchanges each way per family.
    let udp_stream = |n: u16| {
        for v6 in [false, true] {
            for _ in 0..2 {
                assert!(send(n, v6), "stream {n} out");
                assert!(answer(n, v6), "stream {n} back");
            }
        }
    };

    // TCP: two sessions per family from the peer, then the rule goes (X1 keeps them).
    let mut tcp_a = vec![];
    let mut tcp_b = vec![];
    for v6 in [false, true] {
        tcp_a.push(tcp_session(peer, inst.addr(v6), 7000).unwrap());
        tcp_b.push(tcp_session(peer, inst.addr(v6), 7000).unwrap());
    }
    bed.apply(&["inst"], &policy(false));
    // Another protocol, outbound (its answer came back: C3).
    for v6 in [false, true] {
        assert!(
            svc::raw_probe(inst, f, peer.addr(v6), 253, None)
                .unwrap()
                .reply
        );
    }
    // UDP, outbound from inst (ingress has no UDP rule: only state lets answers in).
    // s2: a stream left idle until the last check.
    udp_stream(2);
    // Everything above stays idle from here on, except tcp_a.
    let long_idle_since = Instant::now();

    // ICMP, embryonic and closing TCP: 5 s flows.
    for v6 in [false, true] {
        assert!(svc::ping(inst, peer.addr(v6)).unwrap());
        let _ = svc::tcp_probe(inst, peer.addr(v6), 7999, None).unwrap();
        assert!(svc::tcp_exchange(inst, peer.addr(v6), 7001).unwrap());
    }
    let flows = bed.conntrack("inst");
    let timeouts = |flows: &[Flow], pred: &dyn Fn(&Flow) -> bool| -> Vec<u64> {
        flows
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.timeout_s)
            .collect()
    };
    let all = |v: &[u64], n: usize, t: u64| v.len() >= n && v.iter().all(|&x| x == t);
    let icmp = timeouts(&flows, &|f| f.proto.starts_with("icmp"));
    let embryonic = timeouts(&flows, &|f| f.proto == "tcp" && f.remote_port == 7999);
    let closing = timeouts(&flows, &|f| f.proto == "tcp" && f.remote_port == 7001);
    let other = timeouts(&flows, &|f| f.proto == "proto 253");
    let est = timeouts(&flows, &|f| f.proto == "tcp" && f.local_port == 7000);
    assert!(all(&icmp, 2, 5), "icmp {icmp:?}\n{flows:#?}");
    assert!(all(&embryonic, 2, 5), "embryonic {embryonic:?}\n{flows:#?}");
    assert!(all(&closing, 2, 5), "closing {closing:?}\n{flows:#?}");
    assert!(all(&other, 2, 60), "other {other:?}\n{flows:#?}");
    assert!(all(&est, 4, 60), "tcp established {est:?}\n{flows:#?}");

    // tcp_a is used now, so that it is well within tcp_established at the first check
    // however long the steps above took.
    for s in &mut tcp_a {
        assert!(s.round_trip("refresh", Duration::from_secs(5)), "X1");
    }
    // single: datagrams one way only.
    for v6 in [false, true] {
        assert!(send(0, v6), "single out");
    }
    let single_since = Instant::now();
    // s1: a stream checked after udp_single has passed.
    udp_stream(1);
    let flows = bed.conntrack("inst");
    let single = timeouts(&flows, &|f| {
        f.proto == "udp" && [9000, 9100].contains(&f.remote_port)
    });
    let stream = timeouts(&flows, &|f| {
        f.proto == "udp" && [9001, 9101].contains(&f.remote_port)
    });
    assert!(all(&single, 2, 30), "udp single {single:?}\n{flows:#?}");
    assert!(all(&stream, 2, 60), "udp stream {stream:?}\n{flows:#?}");

    // 36 s after the single datagrams: past udp_single (30), within the 60 s ones.
    std::thread::sleep(Duration::from_secs(36).saturating_sub(single_since.elapsed()));
    for v6 in [false, true] {
        assert!(
            !answer(0, v6),
            "C5 udp_single 30 s: an answer after 36 s idle must be dropped (v6 {v6})"
        );
        assert!(
            answer(1, v6),
            "C5 udp_stream 60 s: a stream outlives 36 s idle (v6 {v6})"
        );
    }
    assert_eq!(
        round_trips(&mut tcp_a, "after 36 s"),
        [true, true],
        "X1 + C5: a tracked session without its rule lives until tcp_established"
    );
    let flows = bed.conntrack("inst");
    for f in &flows {
        let short = f.proto.starts_with("icmp")
            || (f.proto == "tcp" && [7999, 7001].contains(&f.remote_port));
        assert!(
            !short || f.timeout_left_s == 0,
            "C5: a 5 s flow is still alive after 36 s: {f:?}"
        );
    }

    // 65 s after the TCP sessions (tcp_b), the 253 flow and stream s2 were last used.
    std::thread::sleep(Duration::from_secs(65).saturating_sub(long_idle_since.elapsed()));
    for v6 in [false, true] {
        assert!(
            !answer(2, v6),
            "C5 udp_stream 60 s: an answer after 65 s idle must be dropped (v6 {v6})"
        );
    }
    assert_eq!(
        round_trips(&mut tcp_b, "after 65 s"),
        [false, false],
        "C5 tcp_established 60 s: an idle session without its rule must be cut"
    );
    assert_eq!(
        round_trips(&mut tcp_a, "after 65 s"),
        [true, true],
        "a session used less than 30 s ago lives on"
    );
    let flows = bed.conntrack("inst");
    let f253: Vec<_> = flows.iter().filter(|f| f.proto == "proto 253").collect();
    assert!(
        f253.iter().all(|f| f.timeout_left_s == 0),
        "C5 other 60 s: {f253:?}"
    );
    bed.detach_all();
}

/// Whether each session (IPv4, IPv6) echoes `line` within 3 s.
fn round_trips(sessions: &mut [Session], line: &str) -> Vec<bool> {
    sessions
        .iter_mut()
        .map(|s| s.round_trip(line, Duration::from_secs(3)))
        .collect()
}

/// Live SSH sessions from my-ip to inst, IPv4 then IPv6.
fn ssh_sessions_from_my_ip(bed: &Bed) -> Vec<Session> {
    let (inst, me) = (bed.host("inst"), bed.host("my-ip"));
    [false, true]
        .iter()
        .map(|&v6| svc::ssh_session(me, &bed.files, inst.addr(v6), 22).unwrap())
        .collect()
}

/// How many of inst's conntrack entries are SSH flows.
fn ssh_flows(bed: &Bed) -> usize {
    bed.conntrack("inst")
        .iter()
        .filter(|f| f.local_port == 22)
        .count()
}

/// X1: removing or narrowing the rule that allowed a TRACKED flow (SSH from my IP /32 and
/// /128) does not cut live sessions; new sessions are refused. X3: Neutron and Cilium would
/// cut them; the live sessions that keep working here are AWS's behaviour, which sg follows.
#[test]
fn x1_tracked_ssh_sessions_survive_removing_or_narrowing_their_rule() {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Ssh(22)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
"#,
        "sg-web",
    );
    let mut sessions = ssh_sessions_from_my_ip(&bed);
    let tracked = ssh_flows(&bed);
    assert!(
        tracked >= 2,
        "the SSH sessions are tracked flows (C4 does not apply)"
    );
    // Narrowed (IPv4: another /32) and removed (IPv6).
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: 198.51.100.99/32}
"#,
        "sg-web",
    );
    for (s, fam) in sessions.iter_mut().zip(["IPv4", "IPv6"]) {
        for i in 0..3 {
            assert!(
                s.round_trip(&format!("line {i}"), Duration::from_secs(5)),
                "X1: the live {fam} session was cut"
            );
        }
    }
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("my-ip", "inst", Both, Svc::Ssh(22), Deny, "X1 new sessions need a rule"),
    ]));
    bed.detach_all();
}

/// X2: an UNTRACKED flow (SSH from 0.0.0.0/0 and ::/0 with egress all) stops at once when
/// its rule goes; as a control, the same sessions work right before the apply.
#[test]
fn x2_untracked_ssh_sessions_are_cut_at_once_when_their_rule_goes() {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Ssh(22), Https(443)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: [0.0.0.0/0, "::/0"]}
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
"#,
        "sg-web",
    );
    let mut sessions = ssh_sessions_from_my_ip(&bed);
    for s in &mut sessions {
        assert!(s.round_trip("before", Duration::from_secs(5)), "control");
    }
    let tracked = ssh_flows(&bed);
    assert_eq!(
        tracked, 0,
        "C4: SSH from 0.0.0.0/0 with egress all keeps no state"
    );
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
"#,
        "sg-web",
    );
    for (s, fam) in sessions.iter_mut().zip(["IPv4", "IPv6"]) {
        assert!(
            !s.round_trip("after", Duration::from_secs(3)),
            "X2: the untracked {fam} session outlived its rule"
        );
    }
    #[rustfmt::skip]
    let p = table(&[
        ("my-ip", "inst", Both, Svc::Https(443), Allow, "the other rule stays"),
        ("my-ip", "inst", Both, Svc::Ssh(22), Deny, "X2"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}
