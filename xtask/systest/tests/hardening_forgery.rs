//! State forgery: packets that pretend to belong to flows that do not exist -- ACKs, RSTs,
//! FINs, SYN-ACKs, UDP from a server port, echo replies without requests, ICMP errors quoting
//! no flow or another interface's flow, replies on another interface, a real flow's ports
//! from another remote -- are dropped with the contract's reason AND leave conntrack and
//! fragment memory exactly as they were: no entry created, none refreshed (`seen_ns`,
//! counters and state compared byte for byte before and after every forged packet).
//!
//! Positive controls after the forgeries show the real flows were alive all along, so the
//! drops are the forgeries' own.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeMap;

use sg_agent::dataplane::Hook::{self, *};
use sg_agent::dataplane::{CtTable, Dataplane};
use sg_agent::model::build::*;
use sg_agent::packet::{Frag, Packet, icmp, tcp_flags};
use sg_agent::policy::Policy;
use sg_common::Reason::{self, *};
use sg_common::{FlowKey, FlowVal, FragKey, FragVal};
use sg_testkit::dataplane_harness::plan::{
    DB, FAR as SERVER, HOST as WEB, HOST6 as WEB6, PEER, ROUTER, ROUTER6, SERVER6,
};
use sg_testkit::dataplane_harness::{Net, Table, in_netns};

const OTHER_SERVER: &str = "203.0.113.10";
const DNS: &str = "203.0.113.53";

/// `web` (lo): ssh in from a /24, https/dns/ping out. `db` (veth a): mysql from sg-web.
/// Rule numbers (builder order) are what the rows cite.
fn policy() -> Policy {
    PolicyBuilder::new()
        .ingress("sg-web", tcp(22), cidr("198.51.100.0/24")) // 1
        .egress("sg-web", tcp(443), cidr("0.0.0.0/0")) // 2
        .egress("sg-web", udp(53), cidr("0.0.0.0/0")) // 3
        .egress(
            "sg-web",
            icmp_type(icmp::V4_ECHO_REQUEST),
            cidr("0.0.0.0/0"),
        ) // 4
        .egress("sg-web", tcp(443), cidr("::/0")) // 5
        .ingress("sg-db", tcp(3306), sg("sg-web")) // 6
        .ingress("sg-web", tcp(22), cidr("2001:db8:1::/48")) // 7
        .iface("web", &[WEB, WEB6], &["sg-web"])
        .iface("db", &[DB], &["sg-db"])
        .build()
}

/// Everything the datapath remembers: conntrack entries (both tables) and fragment records.
#[derive(PartialEq, Eq)]
struct Memory {
    flows: BTreeMap<(CtTable, FlowKey), FlowVal>,
    frags: BTreeMap<FragKey, FragVal>,
}

fn memory(dp: &Dataplane) -> Memory {
    Memory {
        flows: dp
            .conntrack()
            .expect("conntrack")
            .into_iter()
            .map(|e| ((e.table, e.key), e.val))
            .collect(),
        frags: dp
            .fragment_records()
            .expect("fragment records")
            .into_iter()
            .collect(),
    }
}

fn diff(before: &Memory, after: &Memory) -> String {
    let mut out = Vec::new();
    for (k, v) in &after.flows {
        match before.flows.get(k) {
            None => out.push(format!("created {k:?}")),
            Some(b) if b != v => out.push(format!(
                "refreshed {k:?}: seen {} -> {}, packets {:?} -> {:?}, state {} -> {}",
                b.seen_ns, v.seen_ns, b.packets, v.packets, b.state, v.state
            )),
            _ => {}
        }
    }
    for k in before.flows.keys().filter(|k| !after.flows.contains_key(k)) {
        out.push(format!("deleted {k:?}"));
    }
    if before.frags != after.frags {
        out.push(format!(
            "fragment records {:?} -> {:?}",
            before.frags, after.frags
        ));
    }
    out.join("; ")
}

/// A forged packet: dropped with `reason` (through `Table::row`) and no memory changed.
struct Forger {
    t: Table,
    rows: usize,
    changed: Vec<String>,
}

impl Forger {
    fn forged(&mut self, intent: &str, hook: Hook, dev: u32, p: &Packet, reason: Reason) {
        self.forged_frame(intent, hook, dev, &p.to_frame(), reason);
    }

    fn forged_frame(&mut self, intent: &str, hook: Hook, dev: u32, frame: &[u8], reason: Reason) {
        self.rows += 1;
        let before = memory(&self.t.dp);
        self.t.row(intent, hook, dev, frame, reason, None);
        let after = memory(&self.t.dp);
        if before != after {
            self.changed
                .push(format!("{intent} [{hook:?}]: {}", diff(&before, &after)));
        }
    }

    /// On both ingress hooks.
    fn forged_in(&mut self, intent: &str, dev: u32, p: &Packet, reason: Reason) {
        self.forged(intent, XdpIn, dev, p, reason);
        self.forged(intent, TcIn, dev, p, reason);
    }

    /// Asserts no forged packet changed memory; returns the table for the control rows.
    fn done(self) -> Table {
        let Forger { t, rows, changed } = self;
        eprintln!(
            "forgery: {rows} forged packets, {} changed conntrack or fragment memory",
            changed.len()
        );
        assert!(
            changed.is_empty(),
            "forged packets changed the datapath's memory:\n  {}",
            changed.join("\n  ")
        );
        t
    }
}

fn tcp_pkt(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Packet {
    Packet::tcp(addr(src), addr(dst), sport, dport, flags)
}

/// Real flows on both interfaces, each complete both ways.
#[rustfmt::skip]
/// A table of `policy()` with `web` on lo and `db` on veth a, its flows established.
fn established_table(name: &'static str, net: Net) -> (Table, Flows) {
    let mut t = Table::new(name, net, policy(), &[("web", net.lo), ("db", net.a)]);
    let f = establish(&mut t, net);
    (t, f)
}

/// A table of `policy()` with only `web` (lo) bound.
fn web_table(name: &'static str, net: Net) -> Table {
    Table::new(name, net, policy(), &[("web", net.lo)])
}

/// Opens a flow for the setup: `p` through `out` passes as a new flow, its reply through
/// `back` as the reply, both charged to rule `rule`.
fn open_flow(
    t: &mut Table,
    (what, answer): (&str, &str),
    p: &Packet,
    (out, back): (Hook, Hook),
    dev: u32,
    rule: u64,
) {
    t.row(what, out, dev, &p.to_frame(), PassRuleNew, Some(rule));
    t.row(
        answer,
        back,
        dev,
        &p.reply().to_frame(),
        PassCtReply,
        Some(rule),
    );
}

#[rustfmt::skip]
fn establish(t: &mut Table, net: Net) -> Flows {
    let web = net.lo;
    let https = tcp_pkt(WEB, SERVER, 40000, 443, tcp_flags::SYN);
    open_flow(t, ("setup: https out", "setup: its SYN-ACK"), &https, (TcOut, XdpIn), web, 2);
    t.row("setup: handshake ACK", TcOut, web, &tcp_pkt(WEB, SERVER, 40000, 443, tcp_flags::ACK).to_frame(), PassCtOriginal, Some(2));
    let dns = Packet::udp(addr(WEB), addr(DNS), 33000, 53);
    open_flow(t, ("setup: dns query", "setup: dns answer"), &dns, (TcOut, TcIn), web, 3);
    let ping = Packet::echo_request(addr(WEB), addr(SERVER), 77, 1);
    open_flow(t, ("setup: ping out", "setup: echo reply"), &ping, (TcOut, XdpIn), web, 4);
    let ssh = tcp_pkt(PEER, WEB, 50000, 22, tcp_flags::SYN);
    open_flow(t, ("setup: ssh in", "setup: ssh SYN-ACK"), &ssh, (XdpIn, TcOut), web, 1);
    let mysql = tcp_pkt(WEB, DB, 41000, 3306, tcp_flags::SYN);
    open_flow(t, ("setup: mysql in on db", "setup: mysql SYN-ACK out of db"), &mysql, (TcIn, TcOut), net.a, 6);
    let https6 = Packet::syn(addr(WEB6), addr(SERVER6), 40100, 443);
    open_flow(t, ("setup: https over IPv6", "setup: its SYN-ACK"), &https6, (TcOut, TcIn), web, 5);
    // A fragmented datagram out (G1): its first fragment's verdict is recorded.
    let frag_first = Packet::udp(addr(WEB), addr(DNS), 33001, 53)
        .with_payload(1400)
        .with_frag(Frag::first(0x4242));
    t.row("setup: a fragmented dns query out", TcOut, web, &frag_first.to_frame(), PassRuleNew, Some(3));
    Flows { https, dns, ping, ssh, mysql, https6 }
}

struct Flows {
    https: Packet,
    dns: Packet,
    ping: Packet,
    ssh: Packet,
    mysql: Packet,
    https6: Packet,
}

#[test]
#[rustfmt::skip]
fn forged_replies_errors_and_fragments_are_dropped_and_create_or_refresh_no_state() {
    in_netns(|net| {
        let (t, f) = established_table("forgery", net);
        let (web, db) = (net.lo, net.a);
        let flows_before = t.dp.conntrack().expect("conntrack").len();
        assert_eq!(flows_before, 7, "https, dns, ping, ssh, mysql, https6, fragmented dns");
        let mut g = Forger { t, rows: 0, changed: Vec::new() };

        // TCP segments for flows that do not exist (C1: only a tracked flow lets replies in).
        for (name, flags) in [
            ("ACK", tcp_flags::ACK),
            ("RST", tcp_flags::RST),
            ("RST-ACK", tcp_flags::RST | tcp_flags::ACK),
            ("FIN-ACK", tcp_flags::FIN | tcp_flags::ACK),
            ("SYN-ACK", tcp_flags::SYN | tcp_flags::ACK),
            ("PSH-ACK", tcp_flags::PSH | tcp_flags::ACK),
            ("SYN", tcp_flags::SYN),
        ] {
            g.forged_in(&format!("C1: {name} to a local port with no flow"), web, &tcp_pkt(SERVER, WEB, 443, 40001, flags), DropNoRule);
            g.forged_in(&format!("C1: {name} reusing the https flow's ports from another server"), web, &tcp_pkt(OTHER_SERVER, WEB, 443, 40000, flags), DropNoRule);
            g.forged_in(&format!("C1: {name} from the https server's other port"), web, &tcp_pkt(SERVER, WEB, 444, 40000, flags), DropNoRule);
            g.forged(&format!("C1: {name} out for an inbound flow that does not exist"), TcOut, web, &tcp_pkt(WEB, PEER, 22, 50001, flags), DropNoRule);
            g.forged(&format!("C1: {name} out to the ssh peer from another local port"), TcOut, web, &tcp_pkt(WEB, PEER, 23, 50000, flags), DropNoRule);
        }
        g.forged_in("C1/IPv6: an ACK reusing the IPv6 https flow's ports from another server", web, &Packet::tcp(addr("2001:db8:3::1"), addr(WEB6), 443, 40100, tcp_flags::ACK), DropNoRule);
        g.forged_in("C1/IPv6: ... from another local address", web, &Packet::tcp(addr(SERVER6), addr("2001:db8::11"), 443, 40100, tcp_flags::ACK), DropNoRule);

        // UDP from a server port to an ephemeral port, with no query.
        g.forged_in("C2: UDP from port 53 to a port that asked nothing", web, &Packet::udp(addr(DNS), addr(WEB), 53, 33333), DropNoRule);
        g.forged_in("C2: UDP from another resolver to the query's port", web, &Packet::udp(addr(OTHER_SERVER), addr(WEB), 53, 33000), DropNoRule);
        g.forged_in("C2: UDP from the resolver's other port", web, &Packet::udp(addr(DNS), addr(WEB), 5353, 33000), DropNoRule);

        // Echo replies without requests; echo roles (C2).
        g.forged_in("C2: an echo reply with an id nobody used", web, &Packet::echo_request(addr(WEB), addr(SERVER), 78, 1).reply(), DropNoRule);
        g.forged_in("C2: an echo reply with the ping's id from another address", web, &Packet::echo_request(addr(WEB), addr(OTHER_SERVER), 77, 1).reply(), DropNoRule);
        g.forged_in("C2: an echo REQUEST from the pinged host with the ping's id (roles)", web, &Packet::echo_request(addr(SERVER), addr(WEB), 77, 1), DropNoRule);
        g.forged("C2: the host's echo reply to its own ping's id (roles)", TcOut, web, &Packet::echo_request(addr(SERVER), addr(WEB), 77, 1).reply(), DropNoRule);

        // ICMP errors (I2) quoting no flow, another peer's or another interface's flow.
        let err = |p: &Packet, ty, code| p.error_reply(addr(ROUTER), ty, code);
        g.forged_in("I2: an error quoting a flow that does not exist", web, &err(&tcp_pkt(WEB, SERVER, 40001, 443, tcp_flags::ACK), icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED), DropNoRule);
        g.forged_in("I2: an error quoting the https flow with another server", web, &err(&tcp_pkt(WEB, OTHER_SERVER, 40000, 443, tcp_flags::ACK), icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED), DropNoRule);
        g.forged_in("I2: an error quoting the https flow with another local port", web, &err(&tcp_pkt(WEB, SERVER, 40002, 443, tcp_flags::ACK), icmp::V4_TIME_EXCEEDED, 0), DropNoRule);
        g.forged_in("I2: an error quoting the dns flow reversed (as if it came in)", web, &err(&f.dns.reply(), icmp::V4_DEST_UNREACH, 3), DropNoRule);
        g.forged_in("I2: an error quoting db's mysql flow, arriving on web", web, &err(&f.mysql.reply(), icmp::V4_DEST_UNREACH, 1), DropNoRule);
        g.forged_in("I2: an error quoting web's https flow, arriving on db", db, &err(&f.https, icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED), DropNoRule);
        g.forged_in("I2: an error quoting the ping with another id", web, &err(&Packet::echo_request(addr(WEB), addr(SERVER), 78, 1), icmp::V4_TIME_EXCEEDED, 0), DropNoRule);
        g.forged_in("I2: ICMPv6 too big quoting the IPv6 flow with another server", web, &Packet::syn(addr(WEB6), addr("2001:db8:3::1"), 40100, 443).error_reply(addr(ROUTER6), icmp::V6_PACKET_TOO_BIG, 0), DropNoRule);
        g.forged("I2: an error leaving web about db's flow", TcOut, web, &f.mysql.error_reply(addr(WEB), icmp::V4_DEST_UNREACH, 3), DropNoRule);

        // Replies arriving on another interface than the flow's (FlowKey holds the ifindex).
        g.forged_in("C1: the https server's reply arriving on db", db, &f.https.reply(), DropNoRule);
        g.forged_in("C1: the dns answer arriving on db", db, &f.dns.reply(), DropNoRule);
        g.forged_in("C1: the echo reply arriving on db", db, &f.ping.reply(), DropNoRule);
        g.forged("C1: db's mysql reply leaving by web", TcOut, web, &f.mysql.reply(), DropNoRule);
        g.forged("C1: web's ssh reply leaving by db", TcOut, db, &f.ssh.reply(), DropNoRule);
        g.forged_in("C1: the IPv6 https reply on an interface without policy", net.b, &f.https6.reply(), DropNoPolicy);

        // Later fragments (G1) pretending to belong to the recorded datagram.
        let later = |src: &str, dst: &str, id| Packet::udp(addr(src), addr(dst), 33001, 53).with_payload(64).with_frag(Frag::later(id, 1408, false));
        g.forged("G1: a later fragment of the recorded datagram from another source", TcOut, web, &later(DB, DNS, 0x4242), DropFragOrphan);
        g.forged("G1: ... to another destination", TcOut, web, &later(WEB, SERVER, 0x4242), DropFragOrphan);
        g.forged("G1: ... with another IP id", TcOut, web, &later(WEB, DNS, 0x4243), DropFragOrphan);
        g.forged_in("G1: ... arriving in the opposite direction", web, &later(WEB, DNS, 0x4242), DropFragOrphan);
        g.forged_in("G1: ... reversed (as the answer's fragment)", web, &later(DNS, WEB, 0x4242), DropFragOrphan);
        g.forged("G1: ... on another interface", TcOut, db, &later(WEB, DNS, 0x4242), DropFragOrphan);

        // The ICMP errors and replies that are real still pass: the drops above were the
        // forgeries' own, not dead flows. (These change state; they come last.)
        let mut t = g.done();
        t.row("control: the real https reply", XdpIn, web, &tcp_pkt(SERVER, WEB, 443, 40000, tcp_flags::ACK).to_frame(), PassCtReply, Some(2));
        t.row("control: the real dns answer again", XdpIn, web, &f.dns.reply().to_frame(), PassCtReply, Some(3));
        t.row("control: the real echo reply again", TcIn, web, &f.ping.reply().to_frame(), PassCtReply, Some(4));
        t.row("control: a real error about the https flow (PMTUD)", XdpIn, web, &err(&f.https, icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED).to_frame(), PassRelated, Some(2));
        t.row("control: a real error about db's mysql reply, on db", TcIn, net.a, &err(&f.mysql.reply(), icmp::V4_DEST_UNREACH, 1).to_frame(), PassRelated, Some(6));
        t.row("control: the ssh handshake ACK", TcIn, web, &tcp_pkt(PEER, WEB, 50000, 22, tcp_flags::ACK).to_frame(), PassCtOriginal, Some(1));
        t.row("control: the IPv6 https reply", TcIn, web, &f.https6.reply().to_frame(), PassCtReply, Some(5));
        t.row("control: the real later fragment", TcOut, web, &later(WEB, DNS, 0x4242).to_frame(), PassFragment, Some(3));
        t.finish();
    });
}

/// An IPv4 address as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
fn mapped(s: &str) -> std::net::IpAddr {
    match addr(s) {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

/// IPv6 packets whose addresses are IPv4-mapped (`::ffff:a.b.c.d`) must not use or refresh
/// IPv4 flows: Linux drops such packets on receive (a v4-mapped source, since 4.13), so the
/// host never sees them, yet a firewall that matched them against IPv4 state would let an
/// off-path sender keep an IPv4 flow alive (or advance its TCP state) with packets nobody
/// answers. sg drops them as malformed (RFC 4291 2.5.5.2), kernel and model alike.
#[test]
#[rustfmt::skip]
fn v4_mapped_ipv6_packets_do_not_use_or_refresh_ipv4_flows() {
    in_netns(|net| {
        let (t, f) = established_table("v4-mapped", net);
        let web = net.lo;
        let mut g = Forger { t, rows: 0, changed: Vec::new() };
        let ack = Packet::tcp(mapped(SERVER), mapped(WEB), 443, 40000, tcp_flags::ACK);
        g.forged_in("IPv6 ACK from ::ffff:<https server> to the https flow's ports", web, &ack, DropBadIp);
        let dns = Packet::udp(mapped(DNS), mapped(WEB), 53, 33000);
        g.forged_in("IPv6 UDP from ::ffff:<resolver> to the dns flow's ports", web, &dns, DropBadIp);
        let err = Packet::tcp(mapped(WEB), mapped(SERVER), 40000, 443, tcp_flags::ACK)
            .error_reply(addr(ROUTER6), icmp::V6_PACKET_TOO_BIG, 0);
        g.forged_in("ICMPv6 too big quoting the https flow with mapped addresses", web, &err, DropBadIp);
        let _ = f;
        let Forger { t, changed, .. } = g;
        eprintln!("memory changes: {changed:#?}");
        t.finish();
        assert!(changed.is_empty(), "IPv4-mapped IPv6 packets changed IPv4 flows");
    });
}

/// G1's overlap check measures a later fragment's offset against the transport header's
/// minimum size, counted from the start of the fragmentable part. An IPv6 first fragment
/// may carry a destination options header before its transport (legal: it is part of the
/// fragmentable part); its later fragments then name that header (60, "another protocol":
/// no minimum) in their fragment header, so a later fragment at offset 8 passes although it
/// overlaps -- and on reassembly could rewrite -- the TCP header the first fragment was
/// judged on. (Linux discards overlapping IPv6 fragments, RFC 5722, so a Linux receiver is
/// safe; the firewall's own G1 guarantee is not.)
#[test]
#[rustfmt::skip]
fn g1_later_fragment_overlapping_a_transport_behind_an_extension_header_is_dropped() {
    in_netns(|net| {
        let mut t = web_table("g1-overlap", net);
        let web = net.lo;
        let (src, dst) = ("2001:db8:1::7", WEB6);
        let first = g1_first_fragment_with_dest_opts(addr(src), addr(dst), 0x77);
        t.row("G1: a first fragment: frag(next 60) / dest opts(next 6) / TCP SYN to 22", XdpIn, web, &first, PassRuleNew, Some(7));
        // offset 8 of the fragmentable part: the TCP header's bytes 0..20 sit at 8..28.
        let overlap = g1_later_fragment(addr(src), addr(dst), 0x77, 8);
        t.row_in("G1: a later fragment at offset 8 rewrites the TCP header", web, &overlap, DropBadFragment, None);
        // Where the transport ends behind extension headers is not recorded: every later
        // fragment of such a datagram is refused (fail closed, design.md G1).
        let beyond = g1_later_fragment(addr(src), addr(dst), 0x77, 32);
        t.row_in("G1: ... and so is one past it (fail closed)", web, &beyond, DropBadFragment, None);
        t.finish();
    });
}

/// The raw IPv6 first fragment: fragment header (next 60, offset 0, M), destination options
/// (next 6, 8 bytes), a 20-byte TCP SYN to port 22 and 16 bytes of data.
fn g1_first_fragment_with_dest_opts(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    id: u32,
) -> Vec<u8> {
    let mut body = vec![60, 0, 0, 1];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    let mut tcp = vec![
        0x9c,
        0x40,
        0,
        22,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0x50,
        tcp_flags::SYN,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ];
    tcp.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&tcp);
    ipv6_frame(src, dst, 44, &body)
}

/// A raw IPv6 later fragment (next 60, offset `off` bytes, no M) carrying 24 bytes that
/// would read as a TCP header to port 3306.
fn g1_later_fragment(src: std::net::IpAddr, dst: std::net::IpAddr, id: u32, off: u16) -> Vec<u8> {
    let mut body = vec![60, 0];
    body.extend_from_slice(&off.to_be_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&[
        0x9c,
        0x40,
        0x0c,
        0xea,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0x50,
        tcp_flags::SYN,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    ipv6_frame(src, dst, 44, &body)
}

fn ipv6_frame(src: std::net::IpAddr, dst: std::net::IpAddr, next: u8, body: &[u8]) -> Vec<u8> {
    let (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 addresses expected");
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(body);
    f
}

/// I2 as the contract words it matches only the quote: an error about a real flow passes
/// whatever its outer destination (here another address on the same interface). Linux
/// conntrack also checks that the error goes back to the quoted packet's source; sg does not
/// (docs/hardening.md). Pinned so a contract change shows up here; no state is changed.
#[test]
#[rustfmt::skip]
fn i2_error_about_a_real_flow_to_another_local_address_passes_without_state() {
    in_netns(|net| {
        let mut t = web_table("i2-outer", net);
        let web = net.lo;
        let https = tcp_pkt(WEB, SERVER, 40000, 443, tcp_flags::SYN);
        t.row("setup: https out", TcOut, web, &https.to_frame(), PassRuleNew, Some(2));
        let mut err = https.error_reply(addr(ROUTER), icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED);
        err.dst = addr("192.0.2.99");
        let before = memory(&t.dp);
        t.row("I2 (contract): the quote matches, the outer destination is not checked", XdpIn, web, &err.to_frame(), PassRelated, Some(2));
        assert!(memory(&t.dp) == before, "a related error changed memory");
        t.finish();
    });
}
