//! The reference model against SEMANTICS.md, one behaviour per test, with small hand-built
//! policies. Each test names the id it pins.

use sg_agent::model::build::*;
use sg_agent::model::{FlowState, Model, Outcome};
use sg_agent::packet::{Frag, Packet, icmp, tcp_flags};
use sg_agent::policy::{Direction, Direction::*, Policy};
use sg_common::Reason::{self, *};

const HOST: &str = "192.0.2.10";
const PEER: &str = "198.51.100.7";
const HOST6: &str = "2001:db8::10";
const PEER6: &str = "2001:db8:1::7";

/// Interface `eth0` (192.0.2.10, 2001:db8::10) in group sg-a, with the given rules.
fn with_rules(f: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> Policy {
    f(PolicyBuilder::new().group("sg-a"))
        .iface("eth0", &[HOST, HOST6], &["sg-a"])
        .build()
}

/// ssh in from anywhere, nothing out.
fn ssh_in_only() -> Policy {
    with_rules(|b| b.ingress("sg-a", tcp(22), cidr("0.0.0.0/0")))
}

fn expect(out: &Outcome, reason: Reason, rule: Option<u64>) {
    assert_eq!(out.reason, reason, "{out:?}");
    assert_eq!(out.pass, reason.is_pass());
    assert_eq!(out.rule, rule.map(rule_id), "{out:?}");
}

/// Runs `pkt` through `eth0` in `dir` and checks its reason and charged rule.
fn check(m: &mut Model, dir: Direction, pkt: &Packet, reason: Reason, rule: Option<u64>) {
    expect(&m.process("eth0", dir, pkt), reason, rule);
}

/// A peer's ssh SYN to the host, passed untracked (C4) under `ssh_world_with_egress_all`.
fn untracked_ssh_session() -> (Model, Packet) {
    let mut m = Model::new(ssh_world_with_egress_all());
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleUntracked, Some(1));
    (m, syn)
}

/// ssh in from anywhere with egress allow-all to anywhere: the C4 untracked pair.
fn ssh_world_with_egress_all() -> Policy {
    with_rules(|b| {
        b.ingress("sg-a", tcp(22), cidr("0.0.0.0/0"))
            .egress("sg-a", all(), cidr("0.0.0.0/0"))
    })
}

#[test]
fn e1_unmatched_traffic_is_dropped_and_e6_ports_filter_destination_only() {
    let mut m = Model::new(ssh_in_only());
    let (h, p) = (addr(HOST), addr(PEER));
    check(
        &mut m,
        Ingress,
        &Packet::syn(p, h, 40000, 80),
        DropNoRule,
        None,
    );
    // E6: source port 22 does not match a destination-port-22 rule.
    check(
        &mut m,
        Ingress,
        &Packet::syn(p, h, 22, 40000),
        DropNoRule,
        None,
    );
    check(
        &mut m,
        Ingress,
        &Packet::syn(p, h, 40000, 22),
        PassRuleNew,
        Some(1),
    );
}

#[test]
fn e2_ingress_rules_do_not_allow_egress() {
    let mut m = Model::new(ssh_in_only());
    let out = m.process(
        "eth0",
        Egress,
        &Packet::syn(addr(HOST), addr(PEER), 40000, 22),
    );
    expect(&out, DropNoRule, None);
}

#[test]
fn unknown_interface_fails_closed() {
    let mut m = Model::new(ssh_in_only());
    let out = m.process("eth9", Ingress, &Packet::syn(addr(PEER), addr(HOST), 1, 22));
    expect(&out, DropNoPolicy, None);
}

#[test]
fn c1_replies_pass_against_the_rules_of_their_direction() {
    let mut m = Model::new(ssh_in_only());
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    let synack = syn.reply();
    check(&mut m, Egress, &synack, PassCtReply, Some(1));
    let ack = Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK);
    check(&mut m, Ingress, &ack, PassCtOriginal, Some(1));
    let flow = m.flows().values().next().unwrap();
    assert_eq!(flow.state, FlowState::Established);
    assert!(
        flow.confirmed,
        "established TCP moves to the confirmed table"
    );
    // A different source port is another flow: egress has no rule for it.
    let other = Packet::tcp(addr(HOST), addr(PEER), 22, 40001, tcp_flags::ACK);
    check(&mut m, Egress, &other, DropNoRule, None);
}

#[test]
fn c1_state_is_per_interface() {
    let p = with_rules(|b| b.ingress("sg-a", tcp(22), cidr("0.0.0.0/0"))).clone();
    let mut p = p;
    p.interfaces.push({
        let mut i = p.interfaces[0].clone();
        i.name = "eth1".into();
        i
    });
    let mut m = Model::new(p);
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    expect(&m.process("eth1", Egress, &syn.reply()), DropNoRule, None);
}

#[test]
fn c2_udp_is_tracked_by_five_tuple() {
    let mut m = Model::new(with_rules(|b| b.egress("sg-a", udp(53), cidr("0.0.0.0/0"))));
    let q = Packet::udp(addr(HOST), addr(PEER), 5353, 53);
    check(&mut m, Egress, &q, PassRuleNew, Some(1));
    check(&mut m, Ingress, &q.reply(), PassCtReply, Some(1));
    let mut wrong = q.reply();
    wrong.l4 = sg_agent::packet::L4::Udp {
        sport: 53,
        dport: 5354,
    };
    check(&mut m, Ingress, &wrong, DropNoRule, None);
}

#[test]
fn c2_ingress_echo_rule_lets_replies_out_with_egress_empty() {
    let mut m = Model::new(with_rules(|b| {
        b.ingress("sg-a", icmp_type(icmp::V4_ECHO_REQUEST), cidr("0.0.0.0/0"))
    }));
    let ping = Packet::echo_request(addr(PEER), addr(HOST), 7, 1);
    check(&mut m, Ingress, &ping, PassRuleNew, Some(1));
    check(&mut m, Egress, &ping.reply(), PassCtReply, Some(1));
    // Echo roles: a request from the host with the same id is not a reply of the flow.
    let out_req = Packet::echo_request(addr(HOST), addr(PEER), 7, 2);
    check(&mut m, Egress, &out_req, DropNoRule, None);
    // Another id is another flow.
    let other = Packet::echo_request(addr(PEER), addr(HOST), 8, 1).reply();
    check(&mut m, Egress, &other, DropNoRule, None);
}

#[test]
fn c2_unsolicited_echo_reply_is_judged_by_rules_and_creates_no_state() {
    let mut m = Model::new(with_rules(|b| {
        b.ingress("sg-a", icmp_all(), cidr("0.0.0.0/0"))
    }));
    let reply = Packet::echo_request(addr(HOST), addr(PEER), 9, 1).reply();
    check(&mut m, Ingress, &reply, PassRuleUntracked, Some(1));
    assert!(m.flows().is_empty());
}

#[test]
fn c3_other_protocols_are_tracked_by_addresses_and_protocol() {
    let mut m = Model::new(with_rules(|b| {
        b.egress(
            "sg-a",
            sg_agent::policy::Protocol::Number(47),
            cidr("198.51.100.0/24"),
        )
    }));
    let gre = Packet::other(addr(HOST), addr(PEER), 47);
    check(&mut m, Egress, &gre, PassRuleNew, Some(1));
    check(&mut m, Ingress, &gre.reply(), PassCtReply, Some(1));
    // Another protocol from the same peer is not a reply.
    let esp = Packet::other(addr(PEER), addr(HOST), 50);
    check(&mut m, Ingress, &esp, DropNoRule, None);
    // The C3 timeout is 600 s.
    m.advance(601);
    check(&mut m, Ingress, &gre.reply(), DropNoRule, None);
}

#[test]
fn c4_world_rule_with_opposite_allow_all_is_untracked() {
    let (mut m, syn) = untracked_ssh_session();
    assert!(m.flows().is_empty(), "untracked flows create no state");
    // The reply is allowed by the egress allow-all rule and belongs to the untracked flow
    // (the reverse packet, the SYN, is allowed untracked): still no state.
    check(&mut m, Egress, &syn.reply(), PassRuleUntracked, Some(2));
    assert!(
        m.flows().is_empty(),
        "the reply of an untracked flow created state"
    );
    // An outbound flow to a port the ingress rule does not mirror is tracked as usual.
    check(
        &mut m,
        Egress,
        &Packet::syn(addr(HOST), addr(PEER), 40001, 443),
        PassRuleNew,
        Some(2),
    );
    // IPv6 needs ::/0 rules: the IPv4 pair does not make it untracked... nor allowed.
    let syn6 = Packet::syn(addr(PEER6), addr(HOST6), 40000, 22);
    check(&mut m, Ingress, &syn6, DropNoRule, None);
}

#[test]
fn c4_narrower_peer_or_icmp_stays_tracked() {
    let p = with_rules(|b| {
        b.ingress("sg-a", tcp(22), cidr("198.51.100.0/24"))
            .ingress("sg-a", icmp_all(), cidr("0.0.0.0/0"))
            .egress("sg-a", all(), cidr("0.0.0.0/0"))
    });
    let mut m = Model::new(p);
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    let ping = Packet::echo_request(addr(PEER), addr(HOST), 1, 1);
    check(&mut m, Ingress, &ping, PassRuleNew, Some(2));
    assert_eq!(m.flows().len(), 2);
}

#[test]
fn x1_tracked_flow_survives_removal_of_its_rule() {
    let mut m = Model::new(ssh_in_only());
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    m.set_policy(with_rules(|b| b));
    let ack = Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK);
    check(&mut m, Ingress, &ack, PassCtOriginal, Some(1));
    check(&mut m, Egress, &syn.reply(), PassCtReply, Some(1));
    // A new connection is judged by the new (empty) rules.
    let syn2 = Packet::syn(addr(PEER), addr(HOST), 40001, 22);
    check(&mut m, Ingress, &syn2, DropNoRule, None);
}

#[test]
fn x2_untracked_flow_stops_when_its_rule_goes() {
    let p = ssh_world_with_egress_all();
    let mut m = Model::new(p);
    let ack = Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK);
    check(&mut m, Ingress, &ack, PassRuleUntracked, Some(1));
    m.set_policy(with_rules(|b| b.egress("sg-a", all(), cidr("0.0.0.0/0"))));
    check(&mut m, Ingress, &ack, DropNoRule, None);
}

#[test]
fn i2_icmp_errors_of_tracked_flows_pass_without_icmp_rules() {
    let mut m = Model::new(with_rules(|b| {
        b.egress("sg-a", tcp(443), cidr("0.0.0.0/0"))
    }));
    let syn = Packet::syn(addr(HOST), addr(PEER), 40000, 443).with_payload(1400);
    check(&mut m, Egress, &syn, PassRuleNew, Some(1));
    // Path MTU discovery: a router on the path says "fragmentation needed".
    let router = addr("203.0.113.1");
    let ptb = syn.error_reply(router, icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED);
    check(&mut m, Ingress, &ptb, PassRelated, Some(1));
    // No state change: the flow is still embryonic.
    assert_eq!(m.flows().values().next().unwrap().state, FlowState::New);
    // An error about a flow that does not exist is plain ICMP: no rule, dropped.
    let stray = Packet::syn(addr(HOST), addr(PEER), 40001, 443).error_reply(
        router,
        icmp::V4_TIME_EXCEEDED,
        0,
    );
    check(&mut m, Ingress, &stray, DropNoRule, None);

    // IPv6: packet too big.
    let mut m6 = Model::new(with_rules(|b| b.egress("sg-a", udp(53), cidr("::/0"))));
    let q = Packet::udp(addr(HOST6), addr(PEER6), 5353, 53);
    expect(&m6.process("eth0", Egress, &q), PassRuleNew, Some(1));
    let too_big = q.error_reply(addr("2001:db8:ff::1"), icmp::V6_PACKET_TOO_BIG, 0);
    expect(&m6.process("eth0", Ingress, &too_big), PassRelated, Some(1));
    // An error quoting the flow but travelling the flow's own direction is not related.
    let backwards = q.error_reply(addr(HOST6), icmp::V6_DEST_UNREACH, 4);
    let mut rev = backwards.clone();
    std::mem::swap(&mut rev.src, &mut rev.dst);
    expect(&m6.process("eth0", Egress, &rev), DropNoRule, None);
}

#[test]
fn g1_later_fragments_follow_the_first_fragments_verdict() {
    let mut m = Model::new(with_rules(|b| {
        b.ingress("sg-a", udp(4789), cidr("0.0.0.0/0"))
    }));
    let (h, p) = (addr(HOST), addr(PEER));
    let first = Packet::udp(p, h, 1000, 4789)
        .with_frag(Frag::first(77))
        .with_payload(1472);
    check(&mut m, Ingress, &first, PassRuleNew, Some(1));
    let later = Packet::udp(p, h, 1000, 4789).with_frag(Frag::later(77, 1480, false));
    check(&mut m, Ingress, &later, PassFragment, Some(1));
    // A first fragment that is denied takes its fragments down with it.
    let denied = Packet::udp(p, h, 1000, 9999).with_frag(Frag::first(78));
    check(&mut m, Ingress, &denied, DropNoRule, None);
    let denied_later = Packet::udp(p, h, 1000, 9999).with_frag(Frag::later(78, 1480, false));
    check(&mut m, Ingress, &denied_later, DropFragDenied, None);
    // Orphans: no first fragment seen (other id, other direction, or too late).
    let orphan = Packet::udp(p, h, 1000, 4789).with_frag(Frag::later(79, 1480, false));
    check(&mut m, Ingress, &orphan, DropFragOrphan, None);
    m.advance(31);
    check(&mut m, Ingress, &later, DropFragOrphan, None);
    // Overlap attacks: an offset inside the transport header.
    let overlap = Packet::tcp(p, h, 1, 22, 0).with_frag(Frag::later(80, 8, true));
    check(&mut m, Ingress, &overlap, DropBadFragment, None);
    // A later fragment never matches a conntrack entry on its own.
    let ack = Packet::udp(p, h, 1000, 4789);
    check(&mut m, Ingress, &ack, PassRuleNew, Some(1));
    let stray = Packet::udp(p, h, 1000, 4789).with_frag(Frag::later(81, 8, false));
    check(&mut m, Ingress, &stray, DropFragOrphan, None);
}

#[test]
fn g1_ipv6_atomic_fragment_is_a_normal_packet() {
    let mut m = Model::new(with_rules(|b| b.ingress("sg-a", udp(53), cidr("::/0"))));
    let atomic = Packet::udp(addr(PEER6), addr(HOST6), 1, 53).with_frag(Frag::later(5, 0, false));
    check(&mut m, Ingress, &atomic, PassRuleNew, Some(1));
}

#[test]
fn n1_neighbour_discovery_passes_without_rules() {
    let mut m = Model::new(with_rules(|b| b));
    for ty in 133..=137 {
        let nd = Packet::icmp(addr("fe80::1"), addr("ff02::1"), ty, 0);
        check(&mut m, Ingress, &nd, PassNdp, None);
        check(&mut m, Egress, &nd, PassNdp, None);
    }
    // 138 (router renumbering) is not exempt; nor is ICMPv4 type 133.
    let rr = Packet::icmp(addr("fe80::1"), addr("ff02::1"), 138, 0);
    check(&mut m, Ingress, &rr, DropNoRule, None);
    let v4 = Packet::icmp(addr(PEER), addr(HOST), 133, 0);
    check(&mut m, Ingress, &v4, DropNoRule, None);
}

#[test]
fn n2_dhcp_client_exchange_passes_without_rules() {
    let mut m = Model::new(with_rules(|b| b));
    let (any, bcast) = (addr("0.0.0.0"), addr("255.255.255.255"));
    let (ll, srv) = (addr("fe80::10"), addr("ff02::1:2"));
    let (h, p) = (addr(HOST), addr(PEER));
    #[rustfmt::skip]
    let rows = [
        ("v4 discover out", Egress, Packet::udp(any, bcast, 68, 67), PassDhcp),
        ("v4 offer in", Ingress, Packet::udp(p, h, 67, 68), PassDhcp),
        ("v6 solicit out", Egress, Packet::udp(ll, srv, 546, 547), PassDhcp),
        ("v6 advertise in", Ingress, Packet::udp(addr("fe80::1"), ll, 547, 546), PassDhcp),
        // Server side (the host answering DHCP) is not exempt.
        ("v4 discover in (host as server)", Ingress, Packet::udp(any, bcast, 68, 67), DropNoRule),
        ("v4 offer out (host as server)", Egress, Packet::udp(h, p, 67, 68), DropNoRule),
    ];
    for (why, dir, pkt, reason) in rows {
        let out = m.process("eth0", dir, &pkt);
        assert_eq!(out.reason, reason, "{why}: {out:?}");
        assert_eq!(out.pass, reason.is_pass(), "{why}: {out:?}");
        assert_eq!(out.rule, None, "{why}: {out:?}");
    }
}

#[test]
fn r3_self_reference_allows_members() {
    let p = PolicyBuilder::new()
        .ingress("sg-a", all(), sg("sg-a"))
        .iface("eth0", &[HOST], &["sg-a"])
        .iface("eth1", &["192.0.2.11"], &["sg-a"])
        .build();
    let mut m = Model::new(p);
    let from_member = Packet::udp(addr("192.0.2.11"), addr(HOST), 1, 2);
    check(&mut m, Ingress, &from_member, PassRuleNew, Some(1));
    let from_other = Packet::udp(addr("192.0.2.12"), addr(HOST), 1, 2);
    check(&mut m, Ingress, &from_other, DropNoRule, None);
}

#[test]
fn c6_full_table_drops_new_flows_and_counts() {
    let mut m =
        Model::new(with_rules(|b| b.egress("sg-a", all(), cidr("0.0.0.0/0")))).with_capacity(10, 2);
    for port in 1..=2 {
        let q = Packet::udp(addr(HOST), addr(PEER), 1000, port);
        check(&mut m, Egress, &q, PassRuleNew, Some(1));
    }
    let q = Packet::udp(addr(HOST), addr(PEER), 1000, 3);
    check(&mut m, Egress, &q, DropCtFull, None);
    assert_eq!(m.exceeded(), 1);
    // Existing flows still work.
    let r = Packet::udp(addr(HOST), addr(PEER), 1000, 1).reply();
    check(&mut m, Ingress, &r, PassCtReply, Some(1));
}

#[test]
fn c5_embryonic_tcp_expires_after_its_timeout_established_does_not() {
    let mut m = Model::new(ssh_in_only());
    let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    m.advance(31);
    check(&mut m, Egress, &syn.reply(), DropNoRule, None);

    check(&mut m, Ingress, &syn, PassRuleNew, Some(1));
    check(&mut m, Egress, &syn.reply(), PassCtReply, Some(1));
    let ack = Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK);
    check(&mut m, Ingress, &ack, PassCtOriginal, Some(1));
    m.advance(3600);
    check(&mut m, Egress, &ack.reply(), PassCtReply, Some(1));
}

#[test]
fn vlan_depth_and_ipv6_extension_chain_limits() {
    let mut m = Model::new(ssh_in_only());
    let syn = Packet::syn(addr(PEER), addr(HOST), 1, 22);
    check(
        &mut m,
        Ingress,
        &syn.clone().with_vlan(&[1, 2]),
        PassRuleNew,
        Some(1),
    );
    check(
        &mut m,
        Ingress,
        &syn.with_vlan(&[1, 2, 3]),
        DropVlanDepth,
        None,
    );
    use sg_agent::packet::Ext;
    let p = with_rules(|b| b.ingress("sg-a", tcp(22), cidr("::/0")));
    let mut m6 = Model::new(p);
    let eight = vec![Ext::DestOpts { len8: 0 }; 8];
    let nine = vec![Ext::DestOpts { len8: 0 }; 9];
    let syn6 = Packet::syn(addr(PEER6), addr(HOST6), 1, 22);
    expect(
        &m6.process("eth0", Ingress, &syn6.clone().with_ext(eight)),
        PassRuleNew,
        Some(1),
    );
    expect(
        &m6.process("eth0", Ingress, &syn6.with_ext(nine)),
        DropBadExtHdr,
        None,
    );
}

#[test]
fn c2_echo_flows_with_one_id_opened_from_both_sides_are_two_flows() {
    let mut m = Model::new(with_rules(|b| {
        b.ingress("sg-a", icmp_all(), cidr("0.0.0.0/0")).egress(
            "sg-a",
            icmp_all(),
            cidr("0.0.0.0/0"),
        )
    }));
    let ping_in = Packet::echo_request(addr(PEER), addr(HOST), 7, 1);
    check(&mut m, Ingress, &ping_in, PassRuleNew, Some(1));
    // The host pings the peer with the same id: its own flow, not the peer's.
    let ping_out = Packet::echo_request(addr(HOST), addr(PEER), 7, 1);
    check(&mut m, Egress, &ping_out, PassRuleNew, Some(2));
    let mut origins: Vec<_> = m.flows().values().map(|f| f.origin).collect();
    origins.sort();
    assert_eq!(origins, vec![Ingress, Egress]);
    // Each reply finds its own flow (charging that flow's rule).
    check(&mut m, Ingress, &ping_out.reply(), PassCtReply, Some(2));
    // Two exchanges each way make a stream: confirmed, like UDP.
    check(&mut m, Egress, &ping_in.reply(), PassCtReply, Some(1));
    check(&mut m, Ingress, &ping_in, PassCtOriginal, Some(1));
    check(&mut m, Egress, &ping_in.reply(), PassCtReply, Some(1));
    let peers = m.flows().values().find(|f| f.origin == Ingress).unwrap();
    assert_eq!(
        (peers.state, peers.confirmed),
        (FlowState::Established, true)
    );
    let hosts = m.flows().values().find(|f| f.origin == Egress).unwrap();
    assert_eq!(
        (hosts.state, hosts.confirmed, hosts.packets),
        (FlowState::Replied, false, [1, 1])
    );
}

#[test]
fn g1_exempt_first_fragment_lets_its_datagram_through() {
    let mut m = Model::new(with_rules(|b| b));
    let first = Packet::udp(addr(PEER), addr(HOST), 67, 68).with_frag(Frag::first(9));
    check(&mut m, Ingress, &first, PassDhcp, None);
    let later = Packet::udp(addr(PEER), addr(HOST), 67, 68).with_frag(Frag::later(9, 1480, false));
    check(&mut m, Ingress, &later, PassFragment, None);
}

/// C4 + X2 (design.md "C4"): the server's reply to an untracked world ssh flow belongs to that
/// flow (the reverse packet is allowed untracked), so it opens no state, and removing the
/// ingress rule cuts the live session (AWS: "removing ingress 22 from 0.0.0.0/0 cuts live SSH").
#[test]
fn c4_x2_reply_of_an_untracked_flow_stays_untracked_and_rule_removal_cuts_it() {
    let (mut m, syn) = untracked_ssh_session();
    check(&mut m, Egress, &syn.reply(), PassRuleUntracked, Some(2));
    assert!(m.flows().is_empty(), "an untracked flow left state behind");
    m.set_policy(with_rules(|b| b.egress("sg-a", all(), cidr("0.0.0.0/0"))));
    let ack = Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK);
    check(&mut m, Ingress, &ack, DropNoRule, None);
}
