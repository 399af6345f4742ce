//! End to end, the packets security groups treat specially: ICMP (I1 none by default, I2
//! errors of tracked flows with a real path MTU discovery case, I3 ping's types), the link
//! layer and DHCP that are never filtered (N1, N2), and IP fragments (G1). IPv4 and IPv6.
use std::time::Duration;

use sg_lab::agents::Agents;
use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::probe::{Both, Expect::*, Fam, Svc, V4, V6, table};
use sg_lab::services::{self as svc, LabFiles};
use sg_lab::topology::RoutedPath;
use sg_testkit::netns::require_root;

use sg_lab::scenario::{INST, INTERNET, MY_IP};

/// I1: with rules for TCP only, no ICMP reaches the instance (ping and ping -6 from anyone),
/// while its own pings out get their replies (C2).
#[test]
fn i1_no_icmp_gets_in_without_an_icmp_rule() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve("inst", &[Https(443)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
      - {protocol: tcp, ports: 0-65535, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
"#,
        "sg-web",
    );
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, Svc::Https(443), Allow, "E1"),
        ("internet", "inst", Both, Svc::Ping, Deny, "I1"),
        ("my-ip", "inst", Both, Svc::Ping, Deny, "I1 tcp all ports is not icmp"),
        ("inst", "internet", Both, Svc::Ping, Allow, "C2 replies to its own pings"),
    ]);
    bed.expect(&p);
    bed.detach_all();
}

/// I3: ping is ICMP type 8 over IPv4 and ICMPv6 type 128 over IPv6: an icmp echo rule allows
/// ping, not ping -6, and an icmpv6 echo rule the other way round.
#[test]
fn i3_ping_is_icmp_type_8_and_icmpv6_type_128() {
    let bed = Bed::new(&[
        ("v4only", "192.0.2.11", "2001:db8:10::11"),
        ("v6only", "192.0.2.12", "2001:db8:10::12"),
        INTERNET,
    ]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-ping4
    ingress: [{protocol: icmp, type: 8, source: 0.0.0.0/0}]
  - id: sg-ping6
    ingress: [{protocol: icmpv6, type: 128, source: "::/0"}]
"#,
        &[("v4only", "sg-ping4"), ("v6only", "sg-ping6")],
    );
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("internet", "v4only", V4, Svc::Ping, Allow, "I3 type 8"),
        ("internet", "v4only", V6, Svc::Ping, Deny, "I3 ping -6 is icmpv6 128"),
        ("internet", "v6only", V6, Svc::Ping, Allow, "I3 icmpv6 type 128"),
        ("internet", "v6only", V4, Svc::Ping, Deny, "I3 ping is icmp 8"),
    ]));
    bed.detach_all();
}

/// The routed path of the PMTUD tests, its agent and files; agents detach first on drop.
struct Pmtu {
    agents: Agents,
    _server: sg_testkit::netns::Proc,
    path: RoutedPath,
    files: LabFiles,
}

fn pmtu(policy: &str) -> Pmtu {
    require_root();
    let files = LabFiles::new().unwrap();
    let path = RoutedPath::new(1280).unwrap();
    let server = svc::https_server(&path.server, &files, 443).unwrap();
    let agents = Agents::new(sg_testkit::agent_bin());
    let file = files.dir().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    agents.apply(&path.server.ns, &file).unwrap();
    Pmtu {
        agents,
        _server: server,
        path,
        files,
    }
}

const MB2: u64 = 2 * 1024 * 1024;

/// I2: path MTU discovery through sg. The server sends full-size segments with DF set; a
/// router's next link has MTU 1280, so it answers with ICMP "fragmentation needed" (3/4) and
/// ICMPv6 "packet too big" (2). Those errors belong to a tracked flow (HTTPS from my IP /32,
/// /128) and pass sg's ingress without any ICMP rule: 2 MB downloads complete.
#[test]
fn i2_pmtud_errors_of_a_tracked_flow_pass_without_an_icmp_rule() {
    let lab = pmtu(
        r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
instances:
  - {name: server, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-web]}
"#,
    );
    let (client, server) = (&lab.path.client, &lab.path.server);
    for v6 in [false, true] {
        let got =
            svc::download(client, server.addr(v6), 443, MB2, Duration::from_secs(15)).unwrap();
        assert_eq!(got, MB2, "I2: 2 MB over a 1280-byte link (v6 {v6})");
        // The server learnt the smaller path MTU from the error sg let through.
        let route = server
            .ns
            .run_ok(
                &["ip", "route", "get", &client.addr(v6).to_string()],
                Duration::from_secs(3),
            )
            .unwrap();
        assert!(
            route.contains("mtu 1280"),
            "no PMTU learnt (v6 {v6}): {route}"
        );
    }
    let c = lab.agents.counters(&server.ns).unwrap();
    assert!(
        c.reason("pass_related_icmp") >= 2,
        "I2: the ICMP errors passed as related: {:?}",
        c.reasons
    );
    lab.agents.detach_all_cleanly();
    drop(lab.files);
}

/// I2's boundary (and the control that the test above can fail): an UNTRACKED flow (HTTPS
/// from 0.0.0.0/0 with egress all, C4) keeps no state, so its ICMP errors are judged by the
/// rules: without an ICMP rule PMTUD black-holes and the download stalls; with AWS's
/// recommended rule (ICMP 3/4, ICMPv6 2) it completes.
#[test]
fn i2_pmtud_of_an_untracked_flow_needs_an_icmp_rule() {
    let web = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
EXTRA
instances:
  - {name: server, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-web]}
"#;
    let lab = pmtu(&web.replace("EXTRA", ""));
    let (client, server) = (&lab.path.client, &lab.path.server);
    for v6 in [false, true] {
        let got = svc::download(client, server.addr(v6), 443, MB2, Duration::from_secs(5)).unwrap();
        assert!(
            got < MB2,
            "an untracked flow's PMTUD error passed without a rule (v6 {v6})"
        );
    }
    let file = lab.files.dir().join("with-icmp.yaml");
    std::fs::write(
        &file,
        web.replace(
            "EXTRA",
            "      - {protocol: icmp, type: 3, code: 4, source: 0.0.0.0/0}\n      \
             - {protocol: icmpv6, type: 2, source: \"::/0\"}",
        ),
    )
    .unwrap();
    lab.agents.apply(&server.ns, &file).unwrap();
    for v6 in [false, true] {
        let got =
            svc::download(client, server.addr(v6), 443, MB2, Duration::from_secs(15)).unwrap();
        assert_eq!(got, MB2, "with the ICMP rule (v6 {v6})");
    }
    lab.agents.detach_all_cleanly();
}

/// N1: ARP and IPv6 neighbour discovery pass with sg on both ends and no rule for them:
/// neighbour tables flushed, a TCP exchange resolves them again, and the counters show the
/// frames passed as exempt.
#[test]
fn n1_arp_and_neighbour_discovery_pass_without_rules() {
    let mut bed = Bed::new(&[INST, ("peer", "192.0.2.12", "2001:db8:10::12")]);
    bed.serve("inst", &[TcpEcho(8080)]);
    bed.apply_members(
        r#"
security_groups:
  - id: sg-a
    ingress: [{protocol: tcp, ports: 8080, source: [192.0.2.0/24, "2001:db8:10::/64"]}]
"#,
        &[("inst", "sg-a"), ("peer", "sg-a")],
    );
    for h in ["inst", "peer"] {
        bed.host(h)
            .ns
            .run_ok(&["ip", "neigh", "flush", "all"], Duration::from_secs(3))
            .unwrap();
    }
    let before = bed.counters("inst");
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("peer", "inst", Both, Svc::tcp(8080), Allow, "N1 ARP/ND resolve first"),
    ]));
    let neigh = bed
        .host("peer")
        .ns
        .run_ok(
            &["ip", "neigh", "show", "dev", "eth0"],
            Duration::from_secs(3),
        )
        .unwrap();
    for a in ["192.0.2.11 ", "2001:db8:10::11 "] {
        let line = neigh
            .lines()
            .find(|l| l.starts_with(a))
            .unwrap_or_else(|| panic!("no neighbour entry for {a}:\n{neigh}"));
        assert!(line.contains("lladdr"), "unresolved: {line}");
    }
    let after = bed.counters("inst");
    for r in ["pass_non_ip", "pass_ndp"] {
        assert!(
            after.reason(r) > before.reason(r),
            "N1 {r}: {:?}",
            after.reasons
        );
    }
    bed.detach_all();
}

/// N2: DHCP client traffic is exempt (sg's list: UDP 67 -> 68 in and 68 -> 67 out for IPv4,
/// 547 -> 546 in and 546 -> 547 out for IPv6) on an instance whose groups allow nothing at
/// all in and nothing out; the same ports the other way round, or other ports, are dropped.
/// (A DHCP-shaped exchange between real sockets: no DHCP server is needed for the ports.)
#[test]
fn n2_dhcp_client_exchanges_pass_with_no_rule_and_nothing_else_does() {
    let bed = Bed::new(&[INST, ("dhcp", "192.0.2.2", "2001:db8:10::2")]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-shut
    egress: []
"#,
        "sg-shut",
    );
    let (inst, server) = (bed.host("inst"), bed.host("dhcp"));
    let f = &bed.files;
    let cases: [(Fam, &str, u16, u16, bool, &str); 8] = [
        (V4, "in", 67, 68, true, "server 67 -> client 68"),
        (V4, "in", 1067, 68, false, "not from 67"),
        (V4, "in", 67, 69, false, "not to 68"),
        (V4, "out", 68, 67, true, "client 68 -> server 67"),
        (V4, "out", 1068, 67, false, "not from 68"),
        (V6, "in", 547, 546, true, "server 547 -> client 546"),
        (V6, "in", 1547, 546, false, "not from 547"),
        (V6, "out", 546, 547, true, "client 546 -> server 547"),
    ];
    for (fam, dir, sport, dport, want, why) in cases {
        let v6 = fam == V6;
        let got = if dir == "in" {
            svc::udp_one_way(server, f, sport, inst, inst.addr(v6), dport).unwrap()
        } else {
            svc::udp_one_way(inst, f, sport, server, server.addr(v6), dport).unwrap()
        };
        assert_eq!(got, want, "N2 {dir} {why} (v6 {v6})");
    }
    let c = bed.counters("inst");
    assert!(c.reason("pass_dhcp") >= 4, "{:?}", c.reasons);
    bed.detach_all();
}

/// G1: a UDP datagram larger than the MTU (fragmented) passes whole when a rule allows its
/// port, and is dropped whole when none does (the later fragments are judged by the first
/// fragment's verdict, never on their own); a lone later fragment whose first fragment never
/// came is dropped too.
#[test]
fn g1_fragments_follow_the_first_fragments_verdict_and_orphans_are_dropped() {
    let mut bed = Bed::new(&[INST, INTERNET]);
    bed.serve("inst", &[UdpEcho(5353), UdpEcho(6000)]);
    bed.apply_to_inst(
        r#"
security_groups:
  - id: sg-dns
    ingress: [{protocol: udp, ports: 5353, source: [0.0.0.0/0, "::/0"]}]
"#,
        "sg-dns",
    );
    let big = |port| Svc::Udp {
        port,
        size: 4000,
        sport: None,
    };
    let c0 = bed.counters("inst");
    #[rustfmt::skip]
    let p = table(&[
        ("internet", "inst", Both, big(5353), Allow, "G1 first fragment allowed"),
        ("internet", "inst", Both, Svc::udp(5353), Allow, "G1 control, unfragmented"),
    ]);
    bed.expect(&p);
    let c1 = bed.counters("inst");
    // 4000 bytes over a 1500 MTU: 3 fragments, 2 of them later ones, in and out, per family.
    assert!(
        c1.reason("pass_fragment") - c0.reason("pass_fragment") >= 8,
        "{:?}",
        c1.reasons
    );
    #[rustfmt::skip]
    bed.expect(&table(&[
        ("internet", "inst", Both, big(6000), Deny, "G1 first fragment dropped"),
    ]));
    let c2 = bed.counters("inst");
    assert!(
        c2.reason("drop_fragment_denied") - c1.reason("drop_fragment_denied") >= 4,
        "G1: the later fragments of the dropped datagrams: {:?}",
        c2.reasons
    );
    for v6 in [false, true] {
        svc::send_orphan_fragment(bed.host("internet"), &bed.files, bed.host("inst").addr(v6))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let c3 = bed.counters("inst");
    assert!(
        c3.reason("drop_fragment_orphan") - c2.reason("drop_fragment_orphan") >= 2,
        "G1: lone later fragments: {:?}",
        c3.reasons
    );
    bed.detach_all();
}
