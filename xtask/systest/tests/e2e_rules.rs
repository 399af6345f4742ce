//! End to end, with real servers and clients in namespaces and the real sg-agent binary:
//! evaluation (E1-E7), defaults (D1-D4), rule fields (F1-F6), referenced groups and prefix
//! lists (R1-R4) and quotas (Q3). Every probe runs over IPv4 and IPv6 unless the rule under
//! test is of one family. Each test names the SEMANTICS ids it pins; every row of a probe table
//! says why EC2 allows or drops that path.
use sg_lab::bed::Server::*;
use sg_lab::bed::{Bed, Server};
use sg_lab::probe::{Both, Expect::*, Svc, V4, V6, table};
use sg_lab::topology::HostSpec;

use sg_lab::scenario::{INST, INTERNET, MY_IP};

const OFFICE: (&str, &str, &str) = ("office", "198.51.100.20", "2001:db8:20::20");

/// E1 (only what a rule allows passes) and E2 (ingress and egress are separate sets): an
/// ingress rule for 8080 does not open outbound 8080, an egress rule for 9090 does not open
/// inbound 9090.
#[test]
fn e1_e2_only_allowed_paths_pass_and_ingress_and_egress_rules_are_separate() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    for h in ["inst", "internet"] {
        bed.serve(
            h,
            &[TcpEcho(8080), TcpEcho(9090), TcpEcho(7070), UdpEcho(8080)],
        );
    }
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-a
    ingress:
      - {protocol: tcp, ports: 8080, source: [0.0.0.0/0, "::/0"]}
    egress:
      - {protocol: tcp, ports: 9090, destination: [0.0.0.0/0, "::/0"]}
"#,
        "sg-a",
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, Svc::tcp(8080), Allow, "E1 ingress rule, C1 replies"),
        ("internet", "inst", Both, Svc::tcp(9090), Deny, "E2 egress rule only"),
        ("internet", "inst", Both, Svc::tcp(7070), Deny, "E1 no rule"),
        ("internet", "inst", Both, Svc::udp(8080), Deny, "E1 tcp rule, not udp"),
        ("internet", "inst", Both, Svc::Ping, Deny, "E1 I1"),
        ("inst", "internet", Both, Svc::tcp(9090), Allow, "E2 egress rule"),
        ("inst", "internet", Both, Svc::tcp(8080), Deny, "E2 ingress rule only"),
        ("inst", "internet", Both, Svc::udp(8080), Deny, "E1 no egress rule"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

const E3_GROUPS: &str = r#"
security_groups:
  - id: sg-a
    ingress: [{protocol: tcp, ports: 8001, source: [0.0.0.0/0, "::/0"]}]
  - id: sg-b
    ingress: [{protocol: tcp, ports: 8002, source: [198.51.100.10/32, "2001:db8:20::10/128"]}]
  - id: sg-c
    ingress: [{protocol: udp, ports: 8003, source: [0.0.0.0/0, "::/0"]}]
  - id: sg-d
    ingress: [{protocol: icmp, type: 8, source: 198.51.100.10/32}]
  - id: sg-e
    ingress: [{protocol: icmpv6, type: 128, source: "2001:db8:20::10/128"}]
"#;

/// E3: an interface carries five groups (the default quota); their rules are one union, and
/// the order of the groups changes nothing.
#[test]
fn e3_five_groups_on_one_interface_are_a_union_in_any_order() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve(
        "inst",
        &[TcpEcho(8001), TcpEcho(8002), TcpEcho(8004), UdpEcho(8003)],
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, Svc::tcp(8001), Allow, "E3 sg-a"),
        ("my-ip", "inst", Both, Svc::tcp(8001), Allow, "E3 sg-a"),
        ("my-ip", "inst", Both, Svc::tcp(8002), Allow, "E3 sg-b"),
        ("internet", "inst", Both, Svc::tcp(8002), Deny, "E3 sg-b is my IP only"),
        ("internet", "inst", Both, Svc::udp(8003), Allow, "E3 sg-c"),
        ("my-ip", "inst", Both, Svc::Ping, Allow, "E3 sg-d / sg-e"),
        ("internet", "inst", Both, Svc::Ping, Deny, "E3 I1"),
        ("my-ip", "inst", Both, Svc::tcp(8004), Deny, "E1 in no group"),
    ]);
    for order in [
        "sg-a, sg-b, sg-c, sg-d, sg-e",
        "sg-e, sg-d, sg-c, sg-b, sg-a",
    ] {
        let out = bed.apply_to_inst(E3_GROUPS, order);
        assert!(out.contains("applied generation"), "{out}");
        bed.expect(&p);
    }
    bed.detach_all();
}

/// E4: several rules allow the same packets; the most permissive wins (everything they allow
/// passes) and the charged counter is the rule with the longest matching prefix (sg's
/// documented choice), the same every time.
#[test]
fn e4_overlapping_rules_all_allow_and_the_longest_prefix_rule_is_charged() {
    let mut bed = Bed::new(&[INST, MY_IP, OFFICE, INTERNET]);
    bed.serve("inst", &[TcpEcho(8080), TcpEcho(8090), TcpEcho(9999)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-wide
    ingress:
      - {protocol: tcp, ports: 8000-8100, source: {cidr: 0.0.0.0/0, id: sgr-0000000000000e401}}
      - {protocol: tcp, ports: 8000-8100, source: {cidr: "::/0", id: sgr-0000000000000e601}}
  - id: sg-office
    ingress:
      - {protocol: tcp, ports: 8080, source: {cidr: 198.51.100.0/24, id: sgr-0000000000000e402}}
      - {protocol: tcp, ports: 8080, source: {cidr: "2001:db8:20::/64", id: sgr-0000000000000e602}}
  - id: sg-admin
    ingress:
      - {protocol: all, source: {cidr: 198.51.100.10/32, id: sgr-0000000000000e403}}
      - {protocol: all, source: {cidr: "2001:db8:20::10/128", id: sgr-0000000000000e603}}
"#,
        "sg-wide, sg-office, sg-admin",
    );
    #[rustfmt::skip]
    let p = table(&[
        ("my-ip", "inst", Both, Svc::tcp(8090), Allow, "E4 sg-wide allows it too"),
        ("my-ip", "inst", Both, Svc::tcp(9999), Allow, "E4 sg-admin all traffic"),
        ("office", "inst", Both, Svc::tcp(8090), Allow, "E4 sg-wide"),
        ("office", "inst", Both, Svc::tcp(9999), Deny, "E1 only /32 allows 9999"),
        ("internet", "inst", Both, Svc::tcp(9999), Deny, "E1"),
    ]);
    bed.expect(&p);

    // Which rule is charged: each client's 8080 connections (IPv4 and IPv6 together: their
    // rules differ), one client at a time, twice.
    let ids = [
        "sgr-0000000000000e401",
        "sgr-0000000000000e402",
        "sgr-0000000000000e403",
        "sgr-0000000000000e601",
        "sgr-0000000000000e602",
        "sgr-0000000000000e603",
    ];
    let mut before = bed.counters("inst");
    for _ in 0..2 {
        for (client, v4_rule, v6_rule) in [
            ("my-ip", ids[2], ids[5]),
            ("office", ids[1], ids[4]),
            ("internet", ids[0], ids[3]),
        ] {
            #[rustfmt::skip]
            bed.expect(&table(&[
                (client, "inst", Both, Svc::tcp(8080), Allow, "E4"),
            ]));
            let after = bed.counters("inst");
            for id in ids {
                let delta = after.rule(id) - before.rule(id);
                if id == v4_rule || id == v6_rule {
                    assert!(delta > 0, "{client} must charge {v4_rule} and {v6_rule}");
                } else {
                    assert_eq!(delta, 0, "{client} charged {id}, not {v4_rule}/{v6_rule}");
                }
            }
            before = after;
        }
    }
    bed.detach_all();
}

/// `sg-agent apply` run again (a new process) keeps every unchanged rule's counter: the
/// rules keep their slots and the agent adopts the slot table from its state (E4 counters).
#[test]
fn e4_rule_counters_survive_a_reapply_of_the_same_policy() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    bed.serve("inst", &[TcpEcho(8080)]);
    let policy = r#"
security_groups:
  - id: sg-a
    ingress: [{protocol: tcp, ports: 8080, source: {cidr: 0.0.0.0/0, id: sgr-00000000000000001}}]
instances:
  - {name: inst, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-a]}
"#;
    bed.apply(&["inst"], policy);
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("internet", "inst", V4, Svc::tcp(8080), Allow, "E1"),
    ]));
    let before = bed.counters("inst").rule("sgr-00000000000000001");
    assert!(before > 0);
    bed.apply(&["inst"], policy);
    let after = bed.counters("inst").rule("sgr-00000000000000001");
    assert!(
        after >= before,
        "the counter of an unchanged rule went from {before} to {after} on re-apply"
    );
    bed.detach_all();
}

/// E5: groups attach to interfaces, not hosts: one instance with two ENIs, eth0 in sg-web and
/// eth1 in sg-db; each interface is judged by its own groups only.
#[test]
fn e5_two_interfaces_of_one_instance_are_judged_by_their_own_groups() {
    let mut bed = Bed::new(&[
        ("dual", "192.0.2.31", "2001:db8:10::31"),
        ("front", "192.0.2.50", "2001:db8:10::50"),
    ]);
    let br1 = bed.lan.add_bridge().unwrap();
    bed.lan
        .add_host_on(
            HostSpec::new("back", "203.0.113.50", "2001:db8:30::50"),
            &br1,
        )
        .unwrap();
    bed.lan
        .add_nic("dual", "eth1", &br1, "203.0.113.31", "2001:db8:30::31")
        .unwrap();
    bed.serve("dual", &[Https(443), TcpEcho(3306)]);
    bed.apply(
        &["dual"],
        r#"
security_groups:
  - id: sg-web
    ingress: [{protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}]
  - id: sg-db
    ingress: [{protocol: tcp, ports: 3306, source: [0.0.0.0/0, "::/0"]}]
instances:
  - name: dual
    interfaces:
      - {name: eth0, addresses: [192.0.2.31, "2001:db8:10::31"], groups: [sg-web]}
      - {name: eth1, addresses: [203.0.113.31, "2001:db8:30::31"], groups: [sg-db]}
"#,
    );
    #[rustfmt::skip]
    let p = table(&[
        ("front", "dual", Both, Svc::Https(443), Allow, "E5 eth0 carries sg-web"),
        ("front", "dual", Both, Svc::tcp(3306), Deny, "E5 sg-db is on eth1"),
        ("back", "dual/eth1", Both, Svc::tcp(3306), Allow, "E5 eth1 carries sg-db"),
        ("back", "dual/eth1", Both, Svc::Https(443), Deny, "E5 sg-web is on eth0"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// E6: ports match the destination port only (ingress: the local port, egress: the remote
/// port); a packet whose SOURCE port is the allowed one does not match.
#[test]
fn e6_only_the_destination_port_is_matched_in_both_directions() {
    let mut bed = Bed::new(&[
        ("srv", "192.0.2.11", "2001:db8:10::11"),
        ("cli", "192.0.2.12", "2001:db8:10::12"),
        INTERNET,
        ("remote", "203.0.113.60", "2001:db8:30::60"),
    ]);
    // Clients never listen on the source ports they use: a listener would hold the port.
    bed.serve(
        "srv",
        &[TcpEcho(443), TcpEcho(8080), UdpEcho(5353), UdpEcho(6000)],
    );
    bed.serve("remote", &[TcpEcho(443), TcpEcho(8080)]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-a
    ingress:
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
      - {protocol: udp, ports: 5353, source: [0.0.0.0/0, "::/0"]}
    egress:
      - {protocol: tcp, ports: 443, destination: [0.0.0.0/0, "::/0"]}
"#,
        &[("srv", "sg-a"), ("cli", "sg-a")],
    );
    let tcp = |port, sport| Svc::Tcp {
        port,
        sport: Some(sport),
    };
    let udp = |port, sport| Svc::Udp {
        port,
        size: 64,
        sport: Some(sport),
    };
    // One family at a time: a dual-stack IPv6 socket and an IPv4 one cannot hold the same
    // source port at once.
    for (v6, other) in [(V4, 40000), (V6, 40001)] {
        #[rustfmt::skip]
        bed.expect(&table(&[
            ("internet", "srv", v6, tcp(8080, 443), Deny, "E6 source port 443 is no match"),
            ("internet", "srv", v6, tcp(443, other), Allow, "E6 destination port 443"),
            ("internet", "srv", v6, udp(6000, 5353), Deny, "E6 source port 5353 is no match"),
            ("internet", "srv", v6, udp(5353, other), Allow, "E6 destination port 5353"),
            ("cli", "remote", v6, tcp(443, other), Allow, "E6 egress: remote port 443"),
            ("cli", "remote", v6, tcp(8080, 443), Deny, "E6 egress: local port 443 is no match"),
        ]));
    }
    bed.detach_all();
}

/// E7: a rule change applies at once to every interface carrying the group (two instances,
/// one of them with two interfaces), with no restart: nothing is re-attached and a live
/// session carries on.
#[test]
fn e7_a_rule_change_applies_at_once_to_every_interface_with_the_group_without_restart() {
    let mut bed = Bed::new(&[
        ("web-1", "192.0.2.11", "2001:db8:10::11"),
        ("web-2", "192.0.2.12", "2001:db8:10::12"),
        MY_IP,
    ]);
    let br1 = bed.lan.add_bridge().unwrap();
    bed.lan
        .add_host_on(
            HostSpec::new("back", "203.0.113.60", "2001:db8:30::60"),
            &br1,
        )
        .unwrap();
    bed.lan
        .add_nic("web-2", "eth1", &br1, "203.0.113.12", "2001:db8:30::12")
        .unwrap();
    for h in ["web-1", "web-2"] {
        bed.serve(h, &[Ssh(22), TcpEcho(8080)]);
    }
    let policy = |extra: &str| {
        format!(
            r#"
security_groups:
  - id: sg-web
    ingress:
      - {{protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}}
{extra}
instances:
  - {{name: web-1, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-web]}}
  - name: web-2
    interfaces:
      - {{name: eth0, addresses: [192.0.2.12, "2001:db8:10::12"], groups: [sg-web]}}
      - {{name: eth1, addresses: [203.0.113.12, "2001:db8:30::12"], groups: [sg-web]}}
"#
        )
    };
    let v1 = policy("");
    let v2 = policy(r#"      - {protocol: tcp, ports: 8080, source: [0.0.0.0/0, "::/0"]}"#);
    bed.apply(&["web-1", "web-2"], &v1);
    // (Clients on br0 are outside eth1's subnet 203.0.113.0/24: web-2 answers them via eth0.)
    let targets = [
        ("my-ip", "web-1"),
        ("my-ip", "web-2"),
        ("back", "web-2/eth1"),
    ];
    let probes = |expect, why| {
        let lines = targets.map(|(from, to)| (from, to, Both, Svc::tcp(8080), expect, why));
        table(&lines)
    };
    bed.expect(&probes(Deny, "E1 before the change"));
    let mut session =
        sg_lab::services::ssh_session(bed.host("my-ip"), &bed.files, bed.host("web-1").v4(), 22)
            .unwrap();
    let p = bed.policy(&v2);
    for h in ["web-1", "web-2"] {
        let out = bed.agents.apply(&bed.host(h).ns, &p).unwrap();
        assert!(
            !out.contains("attached"),
            "{h} re-attached on a rule change:\n{out}"
        );
        assert!(out.contains("+ rule"), "{out}");
    }
    // At once: the first attempt after the applies, on all three interfaces.
    bed.expect(&probes(Allow, "E7 the new rule, everywhere"));
    assert!(
        session.round_trip("still here", std::time::Duration::from_secs(5)),
        "the live ssh session did not survive the rule change"
    );
    bed.detach_all();
}

/// D1: a new group has no ingress rules: nothing reaches an instance carrying only it, in
/// either family, by any protocol; D2: its default egress lets it reach out.
#[test]
fn d1_a_new_group_admits_nothing_and_d2_its_default_egress_reaches_everything() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve(
        "inst",
        &[Https(443), Ssh(22), UdpEcho(5353), Raw(253, None)],
    );
    bed.serve("internet", &[Http(80), UdpEcho(5353), Raw(253, None)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-new
"#,
        "sg-new",
    );
    let mut p = vec![];
    for from in ["my-ip", "internet"] {
        #[rustfmt::skip]
        p.extend(table(&[
            (from, "inst", Both, Svc::Https(443), Deny, "D1"),
            (from, "inst", Both, Svc::Ssh(22), Deny, "D1"),
            (from, "inst", Both, Svc::udp(5353), Deny, "D1"),
            (from, "inst", Both, Svc::Ping, Deny, "D1 I1"),
            (from, "inst", Both, Svc::Raw(253), Deny, "D1"),
        ]));
    }
    #[rustfmt::skip]
    p.extend(table(&[
        ("inst", "internet", Both, Svc::Http(80), Allow, "D2 all to 0.0.0.0/0 ::/0"),
        ("inst", "internet", Both, Svc::udp(5353), Allow, "D2"),
        ("inst", "internet", Both, Svc::Ping, Allow, "D2 C2"),
        ("inst", "internet", Both, Svc::Raw(253), Allow, "D2 C3"),
    ]));
    bed.expect(&p);
    bed.detach_all();
}

/// D2: `egress: []` (explicitly empty) allows no new outbound flow of any kind, while replies
/// to allowed inbound flows still leave (C1).
#[test]
fn d2_an_explicitly_empty_egress_list_allows_no_new_outbound_flow() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    bed.serve("inst", &[TcpEcho(8080)]);
    bed.serve("internet", &[Http(80), UdpEcho(5353), Raw(253, None)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-closed
    ingress: [{protocol: tcp, ports: 8080, source: [0.0.0.0/0, "::/0"]}]
    egress: []
"#,
        "sg-closed",
    );
    #[rustfmt::skip]
    let p = table(&[
        ("inst", "internet", Both, Svc::Http(80), Deny, "D2 egress: []"),
        ("inst", "internet", Both, Svc::udp(5353), Deny, "D2 egress: []"),
        ("inst", "internet", Both, Svc::Ping, Deny, "D2 egress: []"),
        ("inst", "internet", Both, Svc::Raw(253), Deny, "D2 egress: []"),
        ("internet", "inst", Both, Svc::tcp(8080), Allow, "C1 replies leave anyway"),
    ]);
    bed.expect(&p);
    let c = bed.counters("inst");
    assert!(c.reason("pass_ct_reply") > 0, "{:?}", c.reasons);
    bed.detach_all();
}

/// D3: the VPC default group admits its own members on every protocol (self-reference) and
/// nobody else; its egress is all.
#[test]
fn d3_the_default_group_admits_its_members_on_everything_and_nobody_else() {
    let mut bed = Bed::new(&[
        ("a", "192.0.2.11", "2001:db8:10::11"),
        ("b", "192.0.2.12", "2001:db8:10::12"),
        ("c", "192.0.2.13", "2001:db8:10::13"),
        INTERNET,
    ]);
    for h in ["a", "b"] {
        bed.serve(h, &[TcpEcho(8080), UdpEcho(5353), Raw(253, None)]);
    }
    bed.serve("internet", &[Http(80)]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-0123456789abcdef0
    default: true
  - id: sg-other
"#,
        &[
            ("a", "sg-0123456789abcdef0"),
            ("b", "sg-0123456789abcdef0"),
            ("c", "sg-other"),
        ],
    );
    let mut p = vec![];
    for (from, to) in [("a", "b"), ("b", "a")] {
        #[rustfmt::skip]
        p.extend(table(&[
            (from, to, Both, Svc::tcp(8080), Allow, "D3 self-reference"),
            (from, to, Both, Svc::udp(5353), Allow, "D3 all protocols"),
            (from, to, Both, Svc::Ping, Allow, "D3 all protocols"),
            (from, to, Both, Svc::Raw(253), Allow, "D3 all protocols"),
        ]));
    }
    #[rustfmt::skip]
    p.extend(table(&[
        ("c", "a", Both, Svc::tcp(8080), Deny, "D3 not a member"),
        ("internet", "a", Both, Svc::tcp(8080), Deny, "D3 not a member"),
        ("internet", "b", Both, Svc::Ping, Deny, "D3 not a member"),
        ("a", "internet", Both, Svc::Http(80), Allow, "D3 egress all"),
    ]));
    bed.expect(&p);
    bed.detach_all();
}

/// D4: members of one group cannot reach each other unless a rule allows it; R3: a
/// self-reference allows all members to each other (and still nobody else).
#[test]
fn d4_members_are_strangers_until_r3_a_self_reference_admits_them() {
    let mut bed = Bed::new(&[
        ("web-1", "192.0.2.11", "2001:db8:10::11"),
        ("web-2", "192.0.2.12", "2001:db8:10::12"),
        MY_IP,
        INTERNET,
    ]);
    for h in ["web-1", "web-2"] {
        bed.serve(h, &[Ssh(22)]);
    }
    let policy = |extra: &str| {
        format!(
            r#"
security_groups:
  - id: sg-web
    ingress:
      - {{protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}}
{extra}
"#
        )
    };
    let members = [("web-1", "sg-web"), ("web-2", "sg-web")];
    bed.apply_members(&policy(""), &members);
    #[rustfmt::skip]
    let p = table(&[
        ("my-ip", "web-2", Both, Svc::Ssh(22), Allow, "F5 my IP"),
        ("web-1", "web-2", Both, Svc::Ssh(22), Deny, "D4 same group, no rule"),
        ("web-2", "web-1", Both, Svc::Ssh(22), Deny, "D4 same group, no rule"),
    ]);
    bed.expect(&p);
    bed.apply_members(
        &policy("      - {protocol: tcp, ports: 22, source: self}"),
        &members,
    );
    #[rustfmt::skip]
    let p = table(&[
        ("web-1", "web-2", Both, Svc::Ssh(22), Allow, "R3 self-reference"),
        ("web-2", "web-1", Both, Svc::Ssh(22), Allow, "R3 self-reference"),
        ("internet", "web-1", Both, Svc::Ssh(22), Deny, "R3 members only"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// F1: protocols given as IANA numbers (6, 17, 1, 58, 253) and as -1 (all) match exactly
/// their protocol with real traffic: TCP, UDP, ping, ping -6 and raw IP protocol 253.
#[test]
fn f1_protocol_numbers_and_all_match_their_protocols() {
    let mut bed = Bed::new(&[
        ("num", "192.0.2.11", "2001:db8:10::11"),
        ("all", "192.0.2.12", "2001:db8:10::12"),
        INTERNET,
    ]);
    for h in ["num", "all"] {
        bed.serve(
            h,
            &[
                TcpEcho(8080),
                TcpEcho(8081),
                UdpEcho(8080),
                UdpEcho(8081),
                Raw(253, None),
                Raw(254, None),
            ],
        );
    }
    bed.apply_members(
        r#"
x-anywhere: &any [0.0.0.0/0, "::/0"]
security_groups:
  - id: sg-num
    ingress:
      - {protocol: 6, ports: 8080, source: *any}
      - {protocol: 17, ports: 8081, source: *any}
      - {protocol: 1, type: 8, source: 0.0.0.0/0}
      - {protocol: 58, type: 128, source: "::/0"}
      - {protocol: 253, source: *any}
  - id: sg-all
    ingress:
      - {protocol: -1, source: *any}
"#,
        &[("num", "sg-num"), ("all", "sg-all")],
    );
    #[rustfmt::skip]
    let mut p = table(&[
        ("internet", "num", Both, Svc::tcp(8080), Allow, "F1 6 = tcp"),
        ("internet", "num", Both, Svc::udp(8080), Deny, "F1 6 is not udp"),
        ("internet", "num", Both, Svc::udp(8081), Allow, "F1 17 = udp"),
        ("internet", "num", Both, Svc::tcp(8081), Deny, "F1 17 is not tcp"),
        ("internet", "num", Both, Svc::Ping, Allow, "F1 1 = icmp, 58 = icmpv6"),
        ("internet", "num", Both, Svc::Raw(253), Allow, "F1 253"),
        ("internet", "num", Both, Svc::Raw(254), Deny, "F1 254 has no rule"),
    ]);
    for svc in [
        Svc::tcp(8080),
        Svc::tcp(8081),
        Svc::udp(8080),
        Svc::udp(8081),
        Svc::Ping,
        Svc::Raw(253),
        Svc::Raw(254),
    ] {
        #[rustfmt::skip]
        p.extend(table(&[
            ("internet", "all", Both, svc, Allow, "F1 -1 = all"),
        ]));
    }
    bed.expect(&p);
    bed.detach_all();
}

/// F2: protocol -1 ignores the port range it is given (here from a CloudFormation template:
/// IpProtocol -1 with FromPort/ToPort 22), while the same range on tcp is a real limit.
#[test]
fn f2_an_all_protocols_rule_ignores_its_port_range_cloudformation() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve("inst", &[TcpEcho(22), TcpEcho(8080), UdpEcho(8080)]);
    bed.apply(
        &["inst"],
        r#"
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Sg:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupName: sg-f2
      GroupDescription: F2
      SecurityGroupIngress:
        - {IpProtocol: "-1", FromPort: 22, ToPort: 22, CidrIp: 198.51.100.10/32}
        - {IpProtocol: "-1", FromPort: 22, ToPort: 22, CidrIpv6: "2001:db8:20::10/128"}
        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: 203.0.113.0/24}
        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIpv6: "2001:db8:30::/64"}
  Inst:
    Type: AWS::EC2::Instance
    Properties:
      SecurityGroupIds: [!Ref Sg]
      PrivateIpAddress: 192.0.2.11
      Ipv6Addresses: [{Ipv6Address: "2001:db8:10::11"}]
      Tags: [{Key: Name, Value: inst}]
"#,
    );
    #[rustfmt::skip]
    let p = table(&[
        ("my-ip", "inst", Both, Svc::tcp(8080), Allow, "F2 -1 ignores 22-22"),
        ("my-ip", "inst", Both, Svc::udp(8080), Allow, "F2 -1 ignores 22-22"),
        ("my-ip", "inst", Both, Svc::Ping, Allow, "F2 -1 ignores 22-22"),
        ("internet", "inst", Both, Svc::tcp(22), Allow, "F3 tcp 22"),
        ("internet", "inst", Both, Svc::tcp(8080), Deny, "F3 tcp 22 only"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// F3: tcp and udp port ranges are inclusive at both ends; one port is a range of one.
#[test]
fn f3_port_ranges_are_inclusive_and_one_port_is_a_range_of_one() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    let ports = [7999u16, 8000, 8002, 8003, 9000, 9001];
    let servers: Vec<Server> = ports
        .iter()
        .flat_map(|&p| [TcpEcho(p), UdpEcho(p)])
        .collect();
    bed.serve("inst", &servers);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-a
    ingress:
      - {protocol: tcp, ports: 8000-8002, source: [0.0.0.0/0, "::/0"]}
      - {protocol: udp, ports: {from: 8000, to: 8002}, source: [0.0.0.0/0, "::/0"]}
      - {protocol: tcp, ports: "9000-9000", source: [0.0.0.0/0, "::/0"]}
      - {protocol: udp, ports: 9000, source: [0.0.0.0/0, "::/0"]}
"#,
        "sg-a",
    );
    let mut p = vec![];
    for (port, expect, why) in [
        (7999, Deny, "F3 below the range"),
        (8000, Allow, "F3 first port"),
        (8002, Allow, "F3 last port"),
        (8003, Deny, "F3 above the range"),
        (9000, Allow, "F3 one port"),
        (9001, Deny, "F3 one port only"),
    ] {
        #[rustfmt::skip]
        p.extend(table(&[
            ("internet", "inst", Both, Svc::tcp(port), expect, why),
            ("internet", "inst", Both, Svc::udp(port), expect, why),
        ]));
    }
    bed.expect(&p);
    bed.detach_all();
}

/// F4: ICMP rules match type and code (-1 = all); ping is type 8 code 0 (ICMPv6 128 code 0);
/// an icmpv6 rule without type or code allows every ICMPv6 message.
#[test]
fn f4_icmp_rules_match_type_and_code() {
    let bed = Bed::new(&[
        ("exact", "192.0.2.11", "2001:db8:10::11"),
        ("code1", "192.0.2.12", "2001:db8:10::12"),
        ("reply", "192.0.2.13", "2001:db8:10::13"),
        ("any", "192.0.2.14", "2001:db8:10::14"),
        INTERNET,
    ]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-exact
    ingress:
      - {protocol: icmp, type: 8, code: 0, source: 0.0.0.0/0}
      - {protocol: icmpv6, type: 128, code: 0, source: "::/0"}
  - id: sg-code1
    ingress:
      - {protocol: icmp, type: 8, code: 1, source: 0.0.0.0/0}
      - {protocol: icmpv6, type: 128, code: 1, source: "::/0"}
  - id: sg-reply
    ingress:
      - {protocol: icmp, type: 0, source: 0.0.0.0/0}
      - {protocol: icmpv6, type: 129, source: "::/0"}
  - id: sg-any
    ingress:
      - {protocol: icmp, type: -1, code: -1, source: 0.0.0.0/0}
      - {protocol: icmpv6, source: "::/0"}
"#,
        &[
            ("exact", "sg-exact"),
            ("code1", "sg-code1"),
            ("reply", "sg-reply"),
            ("any", "sg-any"),
        ],
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "exact", Both, Svc::Ping, Allow, "F4 type 8/128 code 0"),
        ("internet", "code1", Both, Svc::Ping, Deny, "F4 code 1 is not ping"),
        ("internet", "reply", Both, Svc::Ping, Deny, "F4 I3 echo reply is not ping"),
        ("internet", "any", Both, Svc::Ping, Allow, "F4 -1 / no type = all"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// F5: a peer is an IPv4 CIDR, an IPv6 CIDR (host bits set: canonicalised), a prefix list
/// or a group; F6: rules keep their given id and description, and a rule without an id gets
/// the documented derived id; the counters show both with real traffic.
#[test]
fn f5_f6_every_kind_of_peer_matches_and_rule_ids_are_kept_or_derived() {
    let mut bed = Bed::new(&[
        INST,
        ("peer", "192.0.2.40", "2001:db8:10::40"),
        MY_IP,
        OFFICE,
        INTERNET,
    ]);
    bed.serve(
        "inst",
        &[TcpEcho(8080), TcpEcho(8081), TcpEcho(8082), Https(443)],
    );
    bed.apply(
        &["inst"],
        r#"
prefix_lists:
  - id: pl-internet
    entries: [203.0.113.48/28]
  - id: pl-internet6
    entries: ["2001:db8:30::/64"]
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: 0.0.0.0/0}
      - protocol: tcp
        ports: 443
        source: "::/0"
        id: sgr-0123456789abcdef0
        description: Public HTTPS (IPv6)
  - id: sg-peers
  - id: sg-f5
    ingress:
      - {protocol: tcp, ports: 8080, source: [198.51.100.10/24, "2001:db8:20::10/64"]}
      - {protocol: tcp, ports: 8081, source: [pl-internet, pl-internet6]}
      - {protocol: tcp, ports: 8082, source: sg-peers}
instances:
  - {name: inst, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-web, sg-f5]}
  - {name: peer, addresses: [192.0.2.40, "2001:db8:10::40"], groups: [sg-peers]}
"#,
    );
    #[rustfmt::skip]
    let p = table(&[
        ("office", "inst", Both, Svc::tcp(8080), Allow, "F5 CIDR, host bits cleared"),
        ("internet", "inst", Both, Svc::tcp(8080), Deny, "F5 outside the CIDR"),
        ("internet", "inst", Both, Svc::tcp(8081), Allow, "F5 prefix list"),
        ("my-ip", "inst", Both, Svc::tcp(8081), Deny, "F5 not in the list"),
        ("peer", "inst", Both, Svc::tcp(8082), Allow, "F5 group member"),
        ("internet", "inst", Both, Svc::tcp(8082), Deny, "F5 not a member"),
        ("internet", "inst", Both, Svc::Https(443), Allow, "F6"),
    ]);
    bed.expect(&p);
    let c = bed.counters("inst");
    let canon = c
        .find("sg-f5", "ingress", "tcp 8080 from 198.51.100.0/24")
        .expect("the CIDR is canonicalised to 198.51.100.0/24");
    assert!(canon.packets > 0);
    assert!(
        c.find("sg-f5", "ingress", "tcp 8080 from 2001:db8:20::/64")
            .is_some_and(|r| r.packets > 0)
    );
    // The documented derived id (docs/policy-format.md) of sg-web's IPv4 HTTPS rule.
    assert!(c.rule("sgr-6ffedcc6e325157a8") > 0, "{:?}", c.rules);
    let given = c
        .rules
        .iter()
        .find(|r| r.id == "sgr-0123456789abcdef0")
        .expect("the given id is kept");
    assert!(given.packets > 0);
    assert_eq!(given.description.as_deref(), Some("Public HTTPS (IPv6)"));
    bed.detach_all();
}

/// R1: removing an instance from a referenced group takes its access away at once, while the
/// remaining member keeps it (adding one is in e2e_lab: web-3).
#[test]
fn r1_a_member_leaving_the_referenced_group_loses_access_at_once() {
    let mut bed = Bed::new(&[
        ("web-1", "192.0.2.11", "2001:db8:10::11"),
        ("web-2", "192.0.2.12", "2001:db8:10::12"),
        ("db-1", "192.0.2.21", "2001:db8:10::21"),
    ]);
    bed.serve("db-1", &[TcpEcho(3306)]);
    let policy = |web2_group: &str| {
        format!(
            r#"
security_groups:
  - id: sg-web
  - id: sg-other
  - id: sg-db
    ingress: [{{protocol: tcp, ports: 3306, source: sg-web}}]
instances:
  - {{name: web-1, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-web]}}
  - {{name: web-2, addresses: [192.0.2.12, "2001:db8:10::12"], groups: [{web2_group}]}}
  - {{name: db-1, addresses: [192.0.2.21, "2001:db8:10::21"], groups: [sg-db]}}
"#
        )
    };
    bed.apply(&["web-1", "web-2", "db-1"], &policy("sg-web"));
    #[rustfmt::skip]
    let p = table(&[
        ("web-1", "db-1", Both, Svc::tcp(3306), Allow, "R1"),
        ("web-2", "db-1", Both, Svc::tcp(3306), Allow, "R1"),
    ]);
    bed.expect(&p);
    let out = bed.apply(&["db-1", "web-2", "web-1"], &policy("sg-other"));
    assert!(out.contains("- member 192.0.2.12 of sg-web"), "{out}");
    #[rustfmt::skip]
    let p = table(&[
        ("web-2", "db-1", Both, Svc::tcp(3306), Deny, "R1 left sg-web"),
        ("web-1", "db-1", Both, Svc::tcp(3306), Allow, "R1 still a member"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// R4: a prefix list used by rules of two groups on two instances; editing it (new entries,
/// new version) changes what every one of those rules allows, at once.
#[test]
fn r4_editing_a_prefix_list_updates_every_rule_that_uses_it() {
    let mut bed = Bed::new(&[
        ("a", "192.0.2.11", "2001:db8:10::11"),
        ("b", "192.0.2.12", "2001:db8:10::12"),
        MY_IP,
        OFFICE,
    ]);
    bed.serve("a", &[Ssh(22)]);
    bed.serve("b", &[TcpEcho(8080)]);
    let policy = |version: u32, v4: &str, v6: &str| {
        format!(
            r#"
prefix_lists:
  - {{id: pl-admins, max_entries: 4, version: {version}, entries: [{v4}]}}
  - {{id: pl-admins6, max_entries: 4, version: {version}, entries: ["{v6}"]}}
security_groups:
  - id: sg-a
    ingress: [{{protocol: tcp, ports: 22, source: [pl-admins, pl-admins6]}}]
  - id: sg-b
    ingress: [{{protocol: tcp, ports: 8080, source: [pl-admins, pl-admins6]}}]
"#
        )
    };
    // Version 1 holds my IP (.10, ::10), version 2 the office (.20, ::20) instead.
    let members = [("a", "sg-a"), ("b", "sg-b")];
    bed.apply_members(&policy(1, "198.51.100.0/28", "2001:db8:20::/123"), &members);
    let rows = |admin: &str, other: &str, why: &str| {
        #[rustfmt::skip]
        let p = table(&[
            (admin, "a", Both, Svc::Ssh(22), Allow, why),
            (admin, "b", Both, Svc::tcp(8080), Allow, why),
            (other, "a", Both, Svc::Ssh(22), Deny, why),
            (other, "b", Both, Svc::tcp(8080), Deny, why),
        ]);
        p
    };
    bed.expect(&rows("my-ip", "office", "R4 version 1"));
    bed.apply_members(
        &policy(2, "198.51.100.16/28", "2001:db8:20::20/123"),
        &members,
    );
    bed.expect(&rows("office", "my-ip", "R4 version 2"));
    bed.detach_all();
}

/// Q3: a policy over a quota is refused with exit code 2, naming the group, the direction and
/// the limit, and nothing of it is applied: the previous policy stays enforced.
#[test]
fn q3_an_over_quota_policy_is_refused_and_the_enforced_one_stays() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    bed.serve("inst", &[TcpEcho(8080), TcpEcho(8081)]);
    let head = r#"
instances:
  - {name: inst, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-a]}
security_groups:
  - id: sg-a
    ingress:
"#;
    bed.apply(
        &["inst"],
        &format!("{head}      - {{protocol: tcp, ports: 8080, source: 0.0.0.0/0}}\n"),
    );
    let mut big = head.to_string();
    for port in 8081..8081 + 61 {
        big.push_str(&format!(
            "      - {{protocol: tcp, ports: {port}, source: 0.0.0.0/0}}\n"
        ));
    }
    let file = bed.policy(&big);
    let (code, err) = bed
        .agents
        .apply_failing(&bed.host("inst").ns, &file)
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sg-a") && err.contains("ingress") && err.contains("60"),
        "Q3 error must name the group, direction and limit:\n{err}"
    );
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("internet", "inst", V4, Svc::tcp(8080), Allow, "Q3 old policy stays"),
        ("internet", "inst", V4, Svc::tcp(8081), Deny, "Q3 nothing applied"),
    ]));
    bed.detach_all();
}
