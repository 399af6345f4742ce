//! Fixture tables: the real eBPF program, run with BPF_PROG_TEST_RUN, against the contract
//! (docs/design.md). One row = one line of intent citing the SEMANTICS id, the packet, the
//! hook and interface, the expected reason and the rule charged. Rows of one table run in
//! order on one dataplane, so conntrack and fragment rows build on earlier rows.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use sg_agent::dataplane::Hook::{self, *};
use sg_agent::model::build::*;
use sg_agent::packet::{self, Ext, Frag, Packet, icmp, tcp_flags};
use sg_agent::policy::{Policy, Protocol};
use sg_common::Reason::*;
use sg_testkit::dataplane_harness::plan::{
    DB, FAR, HOST, HOST6, PEER, PEER6, ROUTER, ROUTER6, SERVER6,
};
use sg_testkit::dataplane_harness::{Net, Table, in_netns};

const PEER_99: &str = "198.51.100.99";

/// The main policy. Interfaces: `web` (lo) in sg-web, `db` (veth a) in sg-db, `other`
/// (unbound) in sg-web. veth b carries no policy at all.
///
/// Rule numbers (builder order) are what the rows cite.
fn main_policy() -> Policy {
    PolicyBuilder::new()
        .ingress("sg-web", tcp(22), cidr("198.51.100.0/24")) // 1
        .ingress("sg-web", tcp_range(80, 81), cidr("0.0.0.0/0")) // 2
        .ingress("sg-web", udp(53), cidr("2001:db8:1::/48")) // 3
        .ingress(
            "sg-web",
            icmp_type(icmp::V4_ECHO_REQUEST),
            cidr("0.0.0.0/0"),
        ) // 4
        .ingress("sg-web", icmpv6_type(icmp::V6_ECHO_REQUEST), cidr("::/0")) // 5
        .ingress("sg-web", Protocol::Number(47), cidr("203.0.113.0/24")) // 6
        .egress("sg-web", udp(123), cidr("0.0.0.0/0")) // 7
        .egress("sg-web", tcp(443), cidr("2001:db8::/32")) // 8
        .ingress("sg-db", tcp(3306), sg("sg-web")) // 9
        .ingress("sg-web", udp_range(5000, 5999), cidr("198.51.100.0/24")) // 10
        .ingress("sg-web", tcp_range(0, 65535), cidr("198.51.100.99/32")) // 11
        .iface("web", &[HOST, HOST6], &["sg-web"])
        .iface("db", &[DB], &["sg-db"])
        .iface("other", &["192.0.2.30"], &["sg-web"])
        .build()
}

fn main_table(name: &'static str, net: Net) -> Table {
    Table::new(name, net, main_policy(), &[("web", net.lo), ("db", net.a)])
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::syn(addr(src), addr(dst), sport, dport)
}

fn ack(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::tcp(addr(src), addr(dst), sport, dport, tcp_flags::ACK)
}

fn udp_pkt(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::udp(addr(src), addr(dst), sport, dport)
}

#[test]
#[rustfmt::skip]
fn fixtures_rules_and_conntrack() {
    in_netns(|net| {
        let mut t = main_table("rules+conntrack", net);
        let web = net.lo;

        // E6 / C1: an allowed SYN opens a flow; its reply and the rest of the handshake pass
        // by conntrack whatever the rules of their direction say.
        let s = syn(PEER, HOST, 40000, 22);
        t.row("E6: ssh SYN from the allowed /24 opens a flow", XdpIn, web, &s.to_frame(), PassRuleNew, Some(1));
        t.row("C1: the SYN-ACK leaves by conntrack (egress has no tcp rule)", TcOut, web, &s.reply().to_frame(), PassCtReply, Some(1));
        t.row("C1: the handshake's ACK is the flow's original direction", TcIn, web, &ack(PEER, HOST, 40000, 22).to_frame(), PassCtOriginal, Some(1));
        t.row("C1: data from the server", TcOut, web, &ack(HOST, PEER, 22, 40000).with_payload(100).to_frame(), PassCtReply, Some(1));
        t.row("C1: the same SYN on the other ingress hook hits the same flow", TcIn, web, &s.to_frame(), PassCtOriginal, Some(1));

        // E1, E2, E6: what no rule allows is dropped.
        t.row_in("E1: ssh from outside the allowed /24", web, &syn(FAR, HOST, 40000, 22).to_frame(), DropNoRule, None);
        t.row_in("E6: source port 22 does not match a destination-port rule", web, &syn(PEER, HOST, 22, 40001).to_frame(), DropNoRule, None);
        t.row_in("E6: port just past the range 80-81", web, &syn(FAR, HOST, 1234, 82).to_frame(), DropNoRule, None);
        t.row("E6: port range 80-81 upper end", XdpIn, web, &syn(FAR, HOST, 1234, 81).to_frame(), PassRuleNew, Some(2));
        t.row("E2: an ingress rule does not allow the same traffic out", TcOut, web, &syn(HOST, PEER, 40002, 22).to_frame(), DropNoRule, None);
        t.row("E4: a /32 rule beats the /24 rule on its port (longest prefix first)", XdpIn, web, &syn(PEER_99, HOST, 40003, 22).to_frame(), PassRuleNew, Some(11));
        t.row("E4: the /32 rule allows all tcp ports", XdpIn, web, &syn(PEER_99, HOST, 40003, 9999).to_frame(), PassRuleNew, Some(11));
        t.row("E6: udp range 5000-5999, lower end", TcIn, web, &udp_pkt(PEER, HOST, 1, 5000).to_frame(), PassRuleNew, Some(10));
        t.row_in("E6: udp 4999 is outside the range", web, &udp_pkt(PEER, HOST, 1, 4999).to_frame(), DropNoRule, None);

        // E5: groups attach to interfaces.
        t.row_in("E5: ssh allowed on web is not allowed on db (other groups)", net.a, &syn(PEER, DB, 40000, 22).to_frame(), DropNoRule, None);
        t.row("R1: a member of sg-web (web's address) reaches db's 3306", XdpIn, net.a, &syn(HOST, DB, 40010, 3306).to_frame(), PassRuleNew, Some(9));
        t.row("R1: members of unbound interfaces count too", TcIn, net.a, &syn("192.0.2.30", DB, 40010, 3306).to_frame(), PassRuleNew, Some(9));
        t.row_in("R1: a non-member does not", net.a, &syn("192.0.2.31", DB, 40010, 3306).to_frame(), DropNoRule, None);
        t.row("C1: state is per interface (web's flow does not exist on db)", TcOut, net.a, &s.reply().to_frame(), DropNoRule, None);
        t.row_in("fail closed: an interface without policy drops everything", net.b, &syn(PEER, HOST, 40000, 22).to_frame(), DropNoPolicy, None);
        t.row("fail closed, egress too", TcOut, net.b, &udp_pkt(HOST, FAR, 5000, 123).to_frame(), DropNoPolicy, None);

        // C2: UDP by 5-tuple.
        let q = udp_pkt(HOST, FAR, 5000, 123);
        t.row("C2: NTP query out opens a UDP flow", TcOut, web, &q.to_frame(), PassRuleNew, Some(7));
        t.row("C2: its answer comes back by conntrack", XdpIn, web, &q.reply().to_frame(), PassCtReply, Some(7));
        t.row_in("C2: another local port is another flow (no ingress udp 5001 rule)", web, &udp_pkt(FAR, HOST, 123, 5001).to_frame(), DropNoRule, None);
        t.row("C2: the second query", TcOut, web, &q.to_frame(), PassCtOriginal, Some(7));
        t.row("C2: the second answer (stream: confirmed)", TcIn, web, &q.reply().to_frame(), PassCtReply, Some(7));

        // I3 / C2: ping by echo id.
        let ping = Packet::echo_request(addr(FAR), addr(HOST), 7, 1);
        t.row("I3: ping is ICMP type 8 (ingress rule)", XdpIn, web, &ping.to_frame(), PassRuleNew, Some(4));
        t.row("C2: an ingress echo rule lets the echo reply out", TcOut, web, &ping.reply().to_frame(), PassCtReply, Some(4));
        t.row("C2: a reply with another id is not part of the flow", TcOut, web, &Packet::echo_request(addr(FAR), addr(HOST), 8, 1).reply().to_frame(), DropNoRule, None);
        t.row("C2: echo roles: a request from the host with the peer's id is no reply", TcOut, web, &Packet::echo_request(addr(HOST), addr(FAR), 7, 1).to_frame(), DropNoRule, None);
        let ping6 = Packet::echo_request(addr(PEER6), addr(HOST6), 9, 1);
        t.row("I3: ping6 is ICMPv6 type 128", TcIn, web, &ping6.to_frame(), PassRuleNew, Some(5));
        t.row("C2: its echo reply leaves by conntrack", TcOut, web, &ping6.reply().to_frame(), PassCtReply, Some(5));
        t.row_in("I1: no other ICMP is allowed in (timestamp)", web, &Packet::icmp(addr(FAR), addr(HOST), 13, 0).to_frame(), DropNoRule, None);
        t.row_in("I1: an unsolicited echo reply", web, &Packet::echo_request(addr(HOST), addr(FAR), 99, 1).reply().to_frame(), DropNoRule, None);
        t.row_in("I3: ICMPv4 type 128 is not ping", web, &Packet::icmp(addr(FAR), addr(HOST), 128, 0).to_frame(), DropNoRule, None);

        // C3: other protocols by (addresses, protocol).
        let gre = Packet::other(addr(FAR), addr(HOST), 47).with_payload(24);
        t.row("C3/F2: GRE allowed by a protocol-47 rule", XdpIn, web, &gre.to_frame(), PassRuleNew, Some(6));
        t.row("C3: GRE back to the peer is a reply", TcOut, web, &gre.reply().to_frame(), PassCtReply, Some(6));
        t.row("C3: ESP to the same peer is not", TcOut, web, &Packet::other(addr(HOST), addr(FAR), 50).to_frame(), DropNoRule, None);
        t.row_in("F2: GRE from outside the rule's /24", web, &Packet::other(addr(PEER), addr(HOST), 47).to_frame(), DropNoRule, None);

        // I2: errors about tracked flows pass without ICMP rules.
        let https = syn(HOST6, SERVER6, 40100, 443).with_payload(1400);
        t.row("E2: egress https to 2001:db8::/32", TcOut, web, &https.to_frame(), PassRuleNew, Some(8));
        t.row("I2: ICMPv6 packet too big about it passes (PMTUD)", XdpIn, web, &https.error_reply(addr(ROUTER6), icmp::V6_PACKET_TOO_BIG, 0).to_frame(), PassRelated, Some(8));
        t.row("I2: ICMPv6 destination unreachable too", TcIn, web, &https.error_reply(addr(SERVER6), icmp::V6_DEST_UNREACH, 4).to_frame(), PassRelated, Some(8));
        t.row("I2: ICMP fragmentation needed about the NTP flow", XdpIn, web, &q.error_reply(addr(ROUTER), icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED).to_frame(), PassRelated, Some(7));
        t.row("I2: time exceeded about the host's echo reply (inner echo id)", TcIn, web, &ping.reply().error_reply(addr(ROUTER), icmp::V4_TIME_EXCEEDED, 0).to_frame(), PassRelated, Some(4));
        t.row("I2: an error the host sends about an inbound flow", TcOut, web, &s.error_reply(addr(HOST), icmp::V4_DEST_UNREACH, 3).to_frame(), PassRelated, Some(1));
        t.row("I2: parameter problem about the GRE flow (C3 key)", TcIn, web, &gre.reply().error_reply(addr(ROUTER), icmp::V4_PARAM_PROBLEM, 0).to_frame(), PassRelated, Some(6));
        t.row_in("I2: an error about no flow is plain ICMP (dropped)", web, &syn(HOST, FAR, 1, 2).error_reply(addr(ROUTER), icmp::V4_DEST_UNREACH, 1).to_frame(), DropNoRule, None);
        t.row_in("I2: an error quoting less than 8 bytes of transport is plain ICMP", web, &https.error_reply(addr(ROUTER6), icmp::V6_PACKET_TOO_BIG, 0).build().cut_l4(8 + 40 + 4).bytes, DropNoRule, None);
        t.row_in("I2: the quote must be of a flow of this interface", net.a, &q.error_reply(addr(ROUTER), icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED).to_frame(), DropNoRule, None);

        // Counters: every pass above charged its rule once per packet.
        let c1 = t.dp.rule_counter(t.slot_of[&rule_id(1)]).expect("rule counter");
        assert_eq!(c1.packets, 6, "rule 1: SYN, SYN-ACK, ACK, data, SYN again, one related error");
        t.finish();
    });
}

#[test]
#[rustfmt::skip]
fn fixtures_exemptions_and_parsing() {
    in_netns(|net| {
        let mut t = main_table("exemptions+parsing", net);
        let web = net.lo;
        let all_hooks = |t: &mut Table, intent: &str, f: &[u8], r: sg_common::Reason| {
            for h in Hook::ALL {
                t.row(intent, h, web, f, r, None);
            }
        };

        // N1, N2.
        all_hooks(&mut t, "N1: ARP passes", &packet::arp_request("192.0.2.1".parse().unwrap(), HOST.parse().unwrap()), PassNonIp);
        all_hooks(&mut t, "N1: LLDP (non-IP) passes", &packet::raw_eth(&[], 0x88cc, &[0; 46]), PassNonIp);
        all_hooks(&mut t, "N1: ARP inside a VLAN tag passes", &packet::raw_eth(&[(0x8100, 5)], 0x0806, &[0; 28]), PassNonIp);
        for ty in [133u8, 134, 135, 136, 137] {
            let nd = Packet::icmp(addr("fe80::1"), addr("ff02::1:ff00:10"), ty, 0);
            all_hooks(&mut t, &format!("N1: ICMPv6 {ty} (ND) passes"), &nd.to_frame(), PassNdp);
        }
        t.row_in("N1: ICMPv6 138 is not exempt", web, &Packet::icmp(addr("fe80::1"), addr("ff02::1"), 138, 0).to_frame(), DropNoRule, None);
        t.row_in("N1: ICMPv4 type 135 is not ND", web, &Packet::icmp(addr(FAR), addr(HOST), 135, 0).to_frame(), DropNoRule, None);
        t.row("N2: DHCPv4 client request out", TcOut, web, &udp_pkt("0.0.0.0", "255.255.255.255", 68, 67).to_frame(), PassDhcp, None);
        t.row_in("N2: DHCPv4 server answer in", web, &udp_pkt("192.0.2.1", HOST, 67, 68).to_frame(), PassDhcp, None);
        t.row("N2: DHCPv6 solicit out", TcOut, web, &udp_pkt("fe80::10", "ff02::1:2", 546, 547).to_frame(), PassDhcp, None);
        t.row_in("N2: DHCPv6 advertise in", web, &udp_pkt("fe80::1", "fe80::10", 547, 546).to_frame(), PassDhcp, None);
        t.row_in("N2: a DHCP server's side is not exempt (68 -> 67 in)", web, &udp_pkt("192.0.2.1", HOST, 68, 67).to_frame(), DropNoRule, None);
        t.row("N2: nor 67 -> 68 out", TcOut, web, &udp_pkt(HOST, "192.0.2.1", 67, 68).to_frame(), DropNoRule, None);

        // VLAN tags.
        t.row("parse: one 802.1Q tag", XdpIn, web, &syn(PEER, HOST, 41001, 22).with_vlan(&[10]).to_frame(), PassRuleNew, Some(1));
        t.row("parse: two tags (802.1ad + 802.1Q)", TcIn, web, &syn(PEER, HOST, 41002, 22).with_vlan(&[10, 20]).to_frame(), PassRuleNew, Some(1));
        t.row("parse: two 802.1Q tags", XdpIn, web, &packet::raw_eth(&[(0x8100, 1), (0x8100, 2)], 0x0800, &syn(PEER, HOST, 41003, 22).to_frame()[14..]), PassRuleNew, Some(1));
        t.row_in("parse: three tags", web, &syn(PEER, HOST, 41004, 22).with_vlan(&[10, 20, 30]).to_frame(), DropVlanDepth, None);
        t.row_in("parse: a truncated VLAN tag", web, &packet::raw_eth(&[], 0x8100, &[0, 5]), DropBadEth, None);
        t.row_in("parse: a truncated second VLAN tag", web, &packet::raw_eth(&[(0x88a8, 5)], 0x8100, &[0]), DropBadEth, None);

        // IPv4 header.
        let s = syn(PEER, HOST, 41010, 22);
        t.row("parse: IPv4 options are skipped by IHL (ports read after them)", XdpIn, web, &s.clone().with_ext(vec![Ext::v4_router_alert()]).to_frame(), PassRuleNew, Some(1));
        t.row("parse: 40 bytes of IPv4 options", TcIn, web, &syn(PEER, HOST, 41011, 22).with_ext(vec![Ext::V4Option(vec![1; 40])]).to_frame(), PassRuleNew, Some(1));
        t.row("parse: Ethernet padding after the datagram is fine", XdpIn, web, &syn(PEER, HOST, 41012, 22).build().pad(20).bytes, PassRuleNew, Some(1));
        let s2 = syn(PEER, HOST, 41013, 22);
        t.row_in("parse: IHL 4", web, &s2.build().set_ipv4_ihl(4).bytes, DropBadIp, None);
        t.row_in("parse: IHL larger than the total length", web, &s2.build().set_ipv4_ihl(15).bytes, DropBadIp, None);
        t.row_in("parse: total length beyond the frame", web, &s2.build().set_ip_len(200).bytes, DropBadIp, None);
        t.row_in("parse: total length below the header", web, &s2.build().set_ip_len(19).bytes, DropBadIp, None);
        t.row_in("parse: IP version 5 under the IPv4 ethertype", web, &s2.build().set_ip_version(5).bytes, DropBadIp, None);
        t.row("parse: IPv4 header cut short (XDP only: TC test runs refuse a short IP header)", XdpIn, web, &s2.build().truncate(14 + 12).bytes, DropBadIp, None);
        t.row_in("parse: IPv4 header exactly, no transport", web, &s2.build().cut_l4(0).bytes, DropBadL4, None);

        // Transport headers.
        t.row_in("parse: TCP header cut to 19 bytes", web, &s2.build().cut_l4(19).bytes, DropBadL4, None);
        t.row_in("parse: TCP data offset 4", web, &s2.build().set_tcp_data_offset(4).bytes, DropBadL4, None);
        t.row_in("parse: UDP header cut to 7 bytes", web, &udp_pkt(PEER, HOST, 1, 5000).build().cut_l4(7).bytes, DropBadL4, None);
        t.row_in("parse: ICMP header cut to 4 bytes", web, &Packet::echo_request(addr(FAR), addr(HOST), 1, 1).build().cut_l4(4).bytes, DropBadL4, None);
        t.row_in("parse: ICMPv6 header cut to 7 bytes", web, &Packet::echo_request(addr(PEER6), addr(HOST6), 1, 1).build().cut_l4(7).bytes, DropBadL4, None);
        t.row("parse: protocol without a header (GRE) needs no transport bytes", TcIn, web, &Packet::other(addr(FAR), addr(HOST), 47).to_frame(), PassRuleNew, Some(6));

        // IPv6 header and extension headers.
        let d = udp_pkt(PEER6, HOST6, 1000, 53);
        t.row("parse: IPv6 UDP", XdpIn, web, &d.to_frame(), PassRuleNew, Some(3));
        t.row("parse: hop-by-hop, destination options, routing are walked", TcIn, web, &udp_pkt(PEER6, HOST6, 1001, 53).with_ext(vec![Ext::HopByHop { len8: 0 }, Ext::DestOpts { len8: 1 }, Ext::Routing { len8: 0 }]).to_frame(), PassRuleNew, Some(3));
        t.row("parse: AH is walked", XdpIn, web, &udp_pkt(PEER6, HOST6, 1002, 53).with_ext(vec![Ext::Ah { len4: 4 }]).to_frame(), PassRuleNew, Some(3));
        t.row("parse: eight extension headers are the most walked", TcIn, web, &udp_pkt(PEER6, HOST6, 1003, 53).with_ext(vec![Ext::DestOpts { len8: 0 }; 8]).to_frame(), PassRuleNew, Some(3));
        t.row_in("parse: nine extension headers", web, &udp_pkt(PEER6, HOST6, 1004, 53).with_ext(vec![Ext::DestOpts { len8: 0 }; 9]).to_frame(), DropBadExtHdr, None);
        t.row_in("parse: an extension header longer than the datagram", web, &udp_pkt(PEER6, HOST6, 1005, 53).with_ext(vec![Ext::HopByHop { len8: 0 }]).build().set_ext_len(0, 200).bytes, DropBadExtHdr, None);
        t.row_in("parse: an extension header cut by the frame", web, &{
            let f = udp_pkt(PEER6, HOST6, 1006, 53).with_ext(vec![Ext::DestOpts { len8: 2 }]).build();
            let cut = f.exts[0] + 4;
            f.cut_l4(0).truncate(cut).set_ip_len(4).bytes
        }, DropBadExtHdr, None);
        t.row_in("parse: IPv6 payload length beyond the frame", web, &d.build().set_ip_len(1000).bytes, DropBadIp, None);
        t.row("parse: IPv6 header cut short (XDP only: TC test runs refuse a short IP header)", XdpIn, web, &d.build().truncate(14 + 30).bytes, DropBadIp, None);
        t.row_in("parse: IP version 4 under the IPv6 ethertype", web, &d.build().set_ip_version(4).bytes, DropBadIp, None);
        t.row_in("parse: no next header (59) is another protocol, and no rule allows it", web, &Packet::other(addr(PEER6), addr(HOST6), 59).to_frame(), DropNoRule, None);
        t.row_in("parse: UDP cut inside the datagram length", web, &d.build().cut_l4(6).bytes, DropBadL4, None);
        t.finish();
    });
}

#[test]
#[rustfmt::skip]
fn fixtures_fragments() {
    in_netns(|net| {
        let mut t = main_table("fragments", net);
        let web = net.lo;
        // IPv6: the fragment header.
        let first6 = udp_pkt(PEER6, HOST6, 2000, 53).with_payload(1200).with_frag(Frag::first(0xabcdef));
        t.row("G1: a first fragment is judged like a packet", XdpIn, web, &first6.to_frame(), PassRuleNew, Some(3));
        let later6 = |off, more| udp_pkt(PEER6, HOST6, 2000, 53).with_payload(64).with_frag(Frag::later(0xabcdef, off, more));
        t.row("G1: a later fragment follows the first's verdict", XdpIn, web, &later6(1208, true).to_frame(), PassFragment, Some(3));
        t.row("G1: ... on the TC hook as well", TcIn, web, &later6(1272, false).to_frame(), PassFragment, Some(3));
        t.row_in("G1: a fragment of another datagram is an orphan", web, &udp_pkt(PEER6, HOST6, 2000, 53).with_frag(Frag::later(0xabcdee, 1208, false)).to_frame(), DropFragOrphan, None);
        t.row("G1: a fragment seen in the other direction is an orphan", TcOut, web, &udp_pkt(PEER6, HOST6, 2000, 53).with_frag(Frag::later(0xabcdef, 1208, false)).to_frame(), DropFragOrphan, None);
        t.row_in("G1: a fragment on another interface is an orphan", net.a, &later6(1208, false).to_frame(), DropFragOrphan, None);
        t.row("G1: an atomic fragment (offset 0, no more) is a normal packet", TcIn, web, &udp_pkt(PEER6, HOST6, 2001, 53).with_frag(Frag::later(5, 0, false)).to_frame(), PassRuleNew, Some(3));
        t.row("G1: fragment header after other extension headers", XdpIn, web, &udp_pkt(PEER6, HOST6, 2002, 53).with_ext(vec![Ext::HopByHop { len8: 0 }]).with_frag(Frag::first(77)).to_frame(), PassRuleNew, Some(3));
        t.row("G1: ... and its later fragment", XdpIn, web, &udp_pkt(PEER6, HOST6, 2002, 53).with_ext(vec![Ext::HopByHop { len8: 0 }]).with_frag(Frag::later(77, 8, false)).to_frame(), PassFragment, Some(3));

        // IPv4.
        let denied = udp_pkt(PEER, HOST, 2000, 9999).with_payload(1400).with_frag(Frag::first(0x4242));
        t.row("G1: a denied first fragment", XdpIn, web, &denied.to_frame(), DropNoRule, None);
        t.row_in("G1: its later fragments are denied too", web, &udp_pkt(PEER, HOST, 2000, 9999).with_payload(100).with_frag(Frag::later(0x4242, 1408, false)).to_frame(), DropFragDenied, None);
        let ok4 = udp_pkt(PEER, HOST, 2000, 5500).with_payload(1400).with_frag(Frag::first(0x4343));
        t.row("G1: an allowed IPv4 first fragment", TcIn, web, &ok4.to_frame(), PassRuleNew, Some(10));
        t.row("G1: its later fragment", XdpIn, web, &udp_pkt(PEER, HOST, 2000, 5500).with_payload(100).with_frag(Frag::later(0x4343, 1408, false)).to_frame(), PassFragment, Some(10));
        t.row_in("G1: a later fragment matching a conntrack flow but no first fragment", web, &udp_pkt(PEER, HOST, 2000, 5500).with_frag(Frag::later(0x4444, 1408, false)).to_frame(), DropFragOrphan, None);
        t.row_in("G1: overlap: a TCP fragment at offset 8 rewrites the header", web, &syn(PEER, HOST, 1, 22).with_frag(Frag::later(0x4545, 8, false)).to_frame(), DropBadFragment, None);
        t.row_in("G1: a UDP fragment at offset 8 clears the 8-byte header", web, &udp_pkt(PEER, HOST, 2000, 5500).with_frag(Frag::later(0x4343, 8, false)).to_frame(), PassFragment, Some(10));
        t.row_in("G1: a TCP fragment at offset 16 (< 20)", web, &syn(PEER, HOST, 1, 22).with_frag(Frag::later(0x4646, 16, false)).to_frame(), DropBadFragment, None);
        t.row_in("G1: a first fragment too short for the TCP header", web, &syn(PEER, HOST, 1, 22).with_frag(Frag::first(0x4747)).build().cut_l4(12).bytes, DropBadFragment, None);
        t.row_in("G1: a later fragment of another protocol at offset 8 (no minimum)", web, &Packet::other(addr(FAR), addr(HOST), 47).with_frag(Frag::later(0x4848, 8, false)).to_frame(), DropFragOrphan, None);
        t.row("G1: an exempt (DHCP) first fragment", TcIn, web, &udp_pkt("192.0.2.1", HOST, 67, 68).with_payload(600).with_frag(Frag::first(0x4949)).to_frame(), PassDhcp, None);
        t.row("G1: ... lets its datagram through", TcIn, web, &udp_pkt("192.0.2.1", HOST, 67, 68).with_frag(Frag::later(0x4949, 608, false)).to_frame(), PassFragment, None);
        // Recorded: the five first fragments above that parsed (the short one did not).
        let recs = t.dp.fragment_records().expect("fragment records");
        assert_eq!(recs.len(), 5, "fragment records: {recs:?}");
        t.finish();
    });
}

#[test]
#[rustfmt::skip]
fn fixtures_c4_untracked_x1_x2() {
    in_netns(|net| {
        let web = net.lo;
        // ingress ssh from the world, egress all to the world: ssh is untracked (C4).
        let p = PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("0.0.0.0/0")) // 1
            .egress("sg-a", all(), cidr("0.0.0.0/0")) // 2
            .ingress("sg-a", tcp(25), cidr("198.51.100.0/24")) // 3
            .ingress("sg-a", udp(53), cidr("0.0.0.0/0")) // 4
            .iface("web", &[HOST], &["sg-a"])
            .build();
        let mut t = Table::new("c4", net, p, &[("web", web)]);
        let s = syn(PEER, HOST, 40000, 22);
        t.row("C4: world ssh with egress all-to-world is untracked", XdpIn, web, &s.to_frame(), PassRuleUntracked, Some(1));
        t.row("C4: every packet of it is judged by the rules", TcIn, web, &ack(PEER, HOST, 40000, 22).to_frame(), PassRuleUntracked, Some(1));
        t.row("C4: a /24 rule is tracked even with egress all", XdpIn, web, &syn(PEER, HOST, 40001, 25).to_frame(), PassRuleNew, Some(3));
        t.row("C4: UDP from the world is untracked as well", XdpIn, web, &udp_pkt(FAR, HOST, 5353, 53).to_frame(), PassRuleUntracked, Some(4));
        t.row("C4: ICMP is always tracked (egress all, ping out)", TcOut, web, &Packet::echo_request(addr(HOST), addr(FAR), 3, 1).to_frame(), PassRuleNew, Some(2));
        t.row("C4: egress to the world without an ingress allow-all is tracked", TcOut, web, &syn(HOST, FAR, 40002, 443).to_frame(), PassRuleNew, Some(2));
        let n_ct = t.dp.conntrack().expect("conntrack").len();
        assert_eq!(n_ct, 3, "tracked: smtp, ping, https; untracked ssh and dns made none");

        // X1 / X2: remove the ssh, smtp, dns rules.
        t.set_policy(
            PolicyBuilder::new()
                .rule_with_id(&rule_id(2).0, "sg-a", sg_agent::policy::Direction::Egress, all(), cidr("0.0.0.0/0"))
                .iface("web", &[HOST], &["sg-a"])
                .build(),
        );
        t.row("X2: the untracked ssh flow stops at once", XdpIn, web, &ack(PEER, HOST, 40000, 22).to_frame(), DropNoRule, None);
        t.row("X1: the tracked smtp flow (rule removed) keeps flowing", TcOut, web, &syn(PEER, HOST, 40001, 25).reply().to_frame(), PassCtReply, Some(3));
        t.row("X1: ... in both directions", XdpIn, web, &ack(PEER, HOST, 40001, 25).to_frame(), PassCtOriginal, Some(3));
        t.row("X1: a new smtp connection is judged by the new rules", XdpIn, web, &syn(PEER, HOST, 40003, 25).to_frame(), DropNoRule, None);
        t.finish();
    });
}

#[test]
#[rustfmt::skip]
fn fixtures_icmp_type_code_f4() {
    in_netns(|net| {
        let web = net.lo;
        let p = PolicyBuilder::new()
            .ingress("sg-a", Protocol::Icmp(sg_agent::policy::IcmpMatch::TypeCode(3, 4)), cidr("0.0.0.0/0")) // 1
            .ingress("sg-a", icmp_type(11), cidr("203.0.113.0/24")) // 2
            .ingress("sg-a", icmpv6_all(), cidr("2001:db8:1::/48")) // 3
            .ingress("sg-a", icmp_all(), cidr("198.51.100.7/32")) // 4
            .iface("web", &[HOST, HOST6], &["sg-a"])
            .build();
        let mut t = Table::new("f4", net, p, &[("web", web)]);
        let inner = syn(HOST, FAR, 1, 2);
        t.row_in("F4: type 3 code 4 rule allows 3/4", web, &inner.error_reply(addr(FAR), 3, 4).to_frame(), PassRuleUntracked, Some(1));
        t.row_in("F4: ... not 3/3", web, &inner.error_reply(addr(FAR), 3, 3).to_frame(), DropNoRule, None);
        t.row_in("F4: type 11 rule allows every code", web, &inner.error_reply(addr(FAR), 11, 1).to_frame(), PassRuleUntracked, Some(2));
        t.row_in("F4: ... from its /24 only", web, &syn(HOST, "198.51.100.8", 1, 2).error_reply(addr("198.51.100.8"), 11, 0).to_frame(), DropNoRule, None);
        t.row_in("F4: icmpv6 all allows any type", web, &Packet::icmp(addr(PEER6), addr(HOST6), 200, 7).to_frame(), PassRuleUntracked, Some(3));
        t.row("F4: icmp all allows echo (which opens a flow)", XdpIn, web, &Packet::echo_request(addr(PEER), addr(HOST), 1, 1).to_frame(), PassRuleNew, Some(4));
        t.row_in("F4: an ICMPv4 rule does not allow ICMPv6", web, &Packet::echo_request(addr("2001:db8:9::1"), addr(HOST6), 1, 1).to_frame(), DropNoRule, None);
        t.finish();
    });
}

/// C4 + X2 (design.md "C4"): the server's reply to an untracked world ssh flow is part of that
/// untracked flow (the reverse packet is allowed untracked), so it opens no state, and
/// removing the ingress rule cuts the live session at once.
#[test]
#[rustfmt::skip]
fn fixtures_c4_reply_of_untracked_flow_stays_untracked_so_x2_cuts_it() {
    in_netns(|net| {
        let web = net.lo;
        let p = PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("0.0.0.0/0")) // 1
            .egress("sg-a", all(), cidr("0.0.0.0/0")) // 2
            .iface("web", &[HOST], &["sg-a"])
            .build();
        let mut t = Table::new("c4-x2", net, p, &[("web", web)]);
        let s = syn(PEER, HOST, 40000, 22);
        t.row("C4: world ssh, egress all: untracked", XdpIn, web, &s.to_frame(), PassRuleUntracked, Some(1));
        t.row("C4: the reply belongs to the untracked flow: no state", TcOut, web, &s.reply().to_frame(), PassRuleUntracked, Some(2));
        t.row("C4: the client's ACK is judged by the rules again", XdpIn, web, &ack(PEER, HOST, 40000, 22).to_frame(), PassRuleUntracked, Some(1));
        t.row("C4: an outbound flow to another port stays tracked", TcOut, web, &syn(HOST, PEER, 40001, 443).to_frame(), PassRuleNew, Some(2));
        t.set_policy(
            PolicyBuilder::new()
                .rule_with_id(&rule_id(2).0, "sg-a", sg_agent::policy::Direction::Egress, all(), cidr("0.0.0.0/0"))
                .iface("web", &[HOST], &["sg-a"])
                .build(),
        );
        t.row("X2: removing ingress 22 from 0.0.0.0/0 cuts the live session", XdpIn, web, &ack(PEER, HOST, 40000, 22).to_frame(), DropNoRule, None);
        t.finish();
    });
}
