//! The compiler, one SEMANTICS.md id at a time: small hand-written policies with the answer
//! the spec gives, checked against both the compiled lookup and the reference model (so a
//! test fails when either drifts from the spec, not only when they disagree). Plus the image
//! properties the dataplane relies on: determinism, slot stability, the generation bit.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sg_agent::compile::{CompileError, CompileOptions, compile, compile_indexed, membership_delta};
use sg_agent::image::{MapImage, SlotTable};
use sg_agent::model::decide::{Decision, allowing_rules, decide};
use sg_agent::policy::{
    Direction, Family, Group, GroupId, IcmpMatch, Interface, Origin, Peer, Policy, PortRange,
    PrefixList, PrefixListId, Protocol, Rule, RuleId, Timeouts,
};
use sg_common::rule_flags::UNTRACKED;
use sg_testkit::lookup::{LookupResult, check_canonical, lookup};
use sg_testkit::random::all_bound;

use Direction::{Egress, Ingress};

// ----------------------------------------------------------------------------------------
// A tiny policy builder
// ----------------------------------------------------------------------------------------

#[derive(Default)]
struct Builder {
    policy: Policy,
    next: u64,
}

impl Builder {
    fn group(&mut self, name: &str) -> GroupId {
        self.next += 1;
        let id = GroupId(format!("sg-{:017x}", self.next));
        self.policy.groups.insert(
            id.clone(),
            Group {
                id: id.clone(),
                name: name.to_string(),
                description: String::new(),
                ingress: vec![],
                egress: vec![],
                origin: Origin::default(),
            },
        );
        id
    }

    /// Rule ids grow with creation order unless given.
    fn rule(&mut self, g: &GroupId, dir: Direction, protocol: Protocol, peer: Peer) -> RuleId {
        self.next += 1;
        let id = RuleId(format!("sgr-{:017x}", self.next));
        self.rule_with_id(id, g, dir, protocol, peer)
    }

    fn rule_with_id(
        &mut self,
        id: RuleId,
        g: &GroupId,
        direction: Direction,
        protocol: Protocol,
        peer: Peer,
    ) -> RuleId {
        let rule = Rule {
            id: id.clone(),
            group: g.clone(),
            direction,
            protocol,
            peer,
            description: None,
            origin: Origin::default(),
        };
        let group = self.policy.groups.get_mut(g).unwrap();
        match direction {
            Ingress => group.ingress.push(rule),
            Egress => group.egress.push(rule),
        }
        id
    }

    fn iface(&mut self, name: &str, addresses: &[&str], groups: &[&GroupId]) {
        self.policy.interfaces.push(Interface {
            name: name.to_string(),
            instance: format!("i-{name}"),
            device: None,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            groups: groups.iter().map(|g| (*g).clone()).collect(),
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        });
    }

    fn prefix_list(&mut self, entries: &[&str]) -> PrefixListId {
        self.next += 1;
        let id = PrefixListId(format!("pl-{:017x}", self.next));
        let entries: Vec<IpNet> = entries.iter().map(|e| e.parse().unwrap()).collect();
        self.policy.prefix_lists.insert(
            id.clone(),
            PrefixList {
                id: id.clone(),
                name: "list".to_string(),
                family: Family::of_net(&entries[0]),
                max_entries: entries.len() as u32,
                version: 1,
                entries,
                origin: Origin::default(),
            },
        );
        id
    }
}

fn cidr(s: &str) -> Peer {
    Peer::Cidr(s.parse().unwrap())
}

fn tcp(from: u16, to: u16) -> Protocol {
    Protocol::Tcp(PortRange { from, to })
}

fn udp(from: u16, to: u16) -> Protocol {
    Protocol::Udp(PortRange { from, to })
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn icmp(t: u8, c: u8) -> u16 {
    u16::from(t) << 8 | u16::from(c)
}

/// Compile options with room for every rule of these tests.
fn options(generation: u32) -> CompileOptions {
    CompileOptions {
        generation,
        slot_capacity: 1 << 16,
    }
}

fn build(p: &Policy, generation: u32) -> MapImage {
    let opts = options(generation);
    let image = compile(p, &all_bound(p), &SlotTable::default(), &opts).unwrap();
    check_canonical(&image).unwrap();
    image
}

/// The compiled lookup's answer as a Decision.
fn looked_up(
    p: &Policy,
    image: &MapImage,
    iface: &str,
    q: (Direction, IpAddr, u8, u16),
) -> Decision {
    let ifindex = all_bound(p)[iface];
    match lookup(image, ifindex, q.0, q.1, q.2, q.3) {
        LookupResult::Allow(v) => Decision::Allow {
            rule: image.slots.rule(v.slot).expect("slot of a rule").clone(),
            tracked: v.flags & UNTRACKED == 0,
        },
        LookupResult::Deny => Decision::Deny,
        LookupResult::NoPolicy => panic!("{iface} is bound"),
    }
}

/// The spec's answer for one packet: the model and the compiled lookup must both give it.
fn judge(p: &Policy, iface: &str, dir: Direction, remote: &str, proto: u8, port: u16) -> Decision {
    let remote: IpAddr = remote.parse().unwrap();
    let model = decide(p, iface, dir, remote, proto, port);
    let compiled = looked_up(p, &build(p, 0), iface, (dir, remote, proto, port));
    assert_eq!(
        model, compiled,
        "model and compiled lookup disagree on {iface} {dir:?} {remote} {proto}/{port}"
    );
    model
}

/// One lookup and what it must decide: (interface, direction, remote, protocol, port, decision).
type Case<'a> = (&'a str, Direction, &'a str, u8, u16, Decision);

/// Judges every case (the model and the compiled lookup must agree: [`judge`]) and asserts
/// its decision, naming the case.
fn expect_cases(p: &Policy, cases: &[Case]) {
    for (i, (iface, dir, remote, proto, port, want)) in cases.iter().enumerate() {
        let got = judge(p, iface, *dir, remote, *proto, *port);
        assert_eq!(
            &got, want,
            "case {i}: {iface} {dir:?} {remote} {proto}/{port}"
        );
    }
}

/// How many entries an apply of `after` over `before` writes or deletes.
fn changed_entries<K: Ord, V: PartialEq>(before: &BTreeMap<K, V>, after: &BTreeMap<K, V>) -> usize {
    let written = after
        .iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .count();
    written + before.keys().filter(|k| !after.contains_key(k)).count()
}

fn allow(rule: &RuleId) -> Decision {
    Decision::Allow {
        rule: rule.clone(),
        tracked: true,
    }
}

fn allow_untracked(rule: &RuleId) -> Decision {
    Decision::Allow {
        rule: rule.clone(),
        tracked: false,
    }
}

// ----------------------------------------------------------------------------------------
// Evaluation
// ----------------------------------------------------------------------------------------

#[test]
fn e1_nothing_is_allowed_without_a_rule() {
    let mut b = Builder::default();
    let g = b.group("empty");
    b.iface("web", &["192.0.2.10"], &[&g]);
    #[rustfmt::skip]
    expect_cases(&b.policy, &[
        ("web", Ingress, "192.0.2.1", TCP, 22, Decision::Deny),
        ("web", Ingress, "2001:db8::1", UDP, 53, Decision::Deny),
        ("web", Egress, "192.0.2.1", TCP, 22, Decision::Deny),
        ("web", Egress, "2001:db8::1", UDP, 53, Decision::Deny),
    ]);
}

#[test]
fn e2_ingress_and_egress_are_separate_rule_sets() {
    let mut b = Builder::default();
    let g = b.group("web");
    let r = b.rule(&g, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    b.iface("web", &["192.0.2.10"], &[&g]);
    #[rustfmt::skip]
    expect_cases(&b.policy, &[
        ("web", Ingress, "192.0.2.1", TCP, 22, allow(&r)),
        ("web", Egress, "192.0.2.1", TCP, 22, Decision::Deny),
    ]);
}

#[test]
fn e3_rules_of_every_group_of_the_interface_are_merged() {
    let mut b = Builder::default();
    let a = b.group("ssh");
    let c = b.group("dns");
    let ra = b.rule(&a, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    let rc = b.rule(&c, Ingress, udp(53, 53), cidr("198.51.100.0/24"));
    b.iface("both", &["203.0.113.1"], &[&a, &c]);
    b.iface("ssh-only", &["203.0.113.2"], &[&a]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("both", Ingress, "192.0.2.9", TCP, 22, allow(&ra)),
        ("both", Ingress, "198.51.100.9", UDP, 53, allow(&rc)),
        ("both", Ingress, "198.51.100.9", TCP, 22, Decision::Deny),
        ("ssh-only", Ingress, "198.51.100.9", UDP, 53, Decision::Deny),
    ]);
}

#[test]
fn e3_group_order_and_repeats_do_not_matter_interfaces_share_scopes() {
    let mut b = Builder::default();
    let a = b.group("a");
    let c = b.group("c");
    b.rule(&a, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    b.rule(&c, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("one", &["203.0.113.1"], &[&a, &c]);
    b.iface("two", &["203.0.113.2"], &[&c, &a]);
    b.iface("three", &["203.0.113.3"], &[&a, &c, &a]);
    b.iface("other", &["203.0.113.4"], &[&a]);
    let image = build(&b.policy, 0);
    let conf = |i: u32| image.ifaces.values().nth(i as usize).copied().unwrap();
    let (one, two, three, other) = (conf(0), conf(1), conf(2), conf(3));
    assert_eq!((one.scope_in, one.scope_out), (two.scope_in, two.scope_out));
    assert_eq!(
        (one.scope_in, one.scope_out),
        (three.scope_in, three.scope_out)
    );
    assert_ne!(one.scope_in, other.scope_in);
    assert_ne!(
        one.scope_in, one.scope_out,
        "directions have their own scopes"
    );
}

#[test]
fn e4_the_longest_matching_prefix_is_charged_before_narrower_ports() {
    let mut b = Builder::default();
    let g = b.group("g");
    let wide_peer = b.rule(&g, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    let host_all = b.rule(&g, Ingress, Protocol::All, cidr("192.0.2.7/32"));
    let world = b.rule(&g, Ingress, tcp(22, 22), cidr("0.0.0.0/0"));
    b.iface("web", &["203.0.113.1"], &[&g]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.7", TCP, 22, allow(&host_all)),
        ("web", Ingress, "192.0.2.8", TCP, 22, allow(&wide_peer)),
        ("web", Ingress, "198.51.100.1", TCP, 22, allow(&world)),
    ]);
    let every = allowing_rules(p, "web", Ingress, "192.0.2.7".parse().unwrap(), TCP, 22);
    let ids: Vec<&RuleId> = every.iter().map(|r| &r.id).collect();
    assert_eq!(ids, vec![&host_all, &wide_peer, &world], "E4 order");
}

#[test]
fn e4_at_one_prefix_the_rule_covering_the_fewest_points_is_charged() {
    let mut b = Builder::default();
    let g = b.group("g");
    let net = "192.0.2.0/24";
    let all = b.rule(&g, Ingress, Protocol::All, cidr(net));
    let low = b.rule(&g, Ingress, tcp(0, 1023), cidr(net));
    let narrow = b.rule(&g, Ingress, tcp(20, 30), cidr(net));
    let icmp_all = b.rule(&g, Ingress, Protocol::Icmp(IcmpMatch::All), cidr(net));
    let icmp_type = b.rule(&g, Ingress, Protocol::Icmp(IcmpMatch::Type(3)), cidr(net));
    let icmp_one = b.rule(
        &g,
        Ingress,
        Protocol::Icmp(IcmpMatch::TypeCode(3, 4)),
        cidr(net),
    );
    b.iface("web", &["203.0.113.1"], &[&g]);
    let p = &b.policy;
    let at = |proto, port| judge(p, "web", Ingress, "192.0.2.1", proto, port);
    assert_eq!(at(TCP, 22), allow(&narrow));
    assert_eq!(at(TCP, 1000), allow(&low));
    assert_eq!(at(TCP, 1024), allow(&all));
    assert_eq!(at(UDP, 22), allow(&all));
    assert_eq!(at(ICMP, icmp(3, 4)), allow(&icmp_one));
    assert_eq!(at(ICMP, icmp(3, 1)), allow(&icmp_type));
    assert_eq!(at(ICMP, icmp(8, 0)), allow(&icmp_all));
    assert_eq!(at(ICMPV6, icmp(3, 4)), allow(&all));
}

#[test]
fn e4_ties_go_to_the_smallest_rule_id() {
    let mut b = Builder::default();
    let g = b.group("g");
    let h = b.group("h");
    let big = RuleId("sgr-0ffffffffffffffff".to_string());
    let small = RuleId("sgr-00000000000000001".to_string());
    // Added in the opposite order, in two groups: neither order decides.
    b.rule_with_id(big.clone(), &g, Ingress, tcp(80, 80), cidr("192.0.2.0/24"));
    b.rule_with_id(
        small.clone(),
        &h,
        Ingress,
        tcp(80, 80),
        cidr("192.0.2.0/24"),
    );
    b.iface("web", &["203.0.113.1"], &[&g, &h]);
    assert_eq!(
        judge(&b.policy, "web", Ingress, "192.0.2.1", TCP, 80),
        allow(&small)
    );
}

#[test]
fn e6_port_ranges_are_inclusive_destination_ports() {
    let mut b = Builder::default();
    let g = b.group("g");
    let r = b.rule(&g, Egress, udp(1000, 2000), cidr("2001:db8::/32"));
    b.iface("web", &["2001:db8::10"], &[&g]);
    let p = &b.policy;
    let at = |port| judge(p, "web", Egress, "2001:db8::1", UDP, port);
    assert_eq!(at(999), Decision::Deny);
    assert_eq!(at(1000), allow(&r));
    assert_eq!(at(1500), allow(&r));
    assert_eq!(at(2000), allow(&r));
    assert_eq!(at(2001), Decision::Deny);
}

#[test]
fn f2_all_and_other_protocol_numbers_match_every_port() {
    let mut b = Builder::default();
    let g = b.group("g");
    let gre = b.rule(&g, Ingress, Protocol::Number(47), cidr("192.0.2.0/24"));
    let all = b.rule(&g, Ingress, Protocol::All, cidr("198.51.100.0/24"));
    b.iface("web", &["203.0.113.1"], &[&g]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.1", 47, 0, allow(&gre)),
        ("web", Ingress, "192.0.2.1", 50, 0, Decision::Deny),
        ("web", Ingress, "192.0.2.1", TCP, 47, Decision::Deny),
    ]);
    for (proto, port) in [
        (TCP, 0),
        (TCP, 65535),
        (UDP, 7),
        (ICMP, icmp(8, 0)),
        (132, 0),
    ] {
        assert_eq!(
            judge(p, "web", Ingress, "198.51.100.1", proto, port),
            allow(&all)
        );
    }
}

#[test]
fn f4_icmp_type_and_code_with_wildcards() {
    let mut b = Builder::default();
    let g = b.group("g");
    let net = "192.0.2.0/24";
    let unreachable = b.rule(&g, Ingress, Protocol::Icmp(IcmpMatch::Type(3)), cidr(net));
    let echo = b.rule(
        &g,
        Ingress,
        Protocol::Icmp(IcmpMatch::TypeCode(8, 0)),
        cidr(net),
    );
    let v6_all = b.rule(
        &g,
        Ingress,
        Protocol::Icmpv6(IcmpMatch::All),
        cidr("2001:db8::/32"),
    );
    b.iface("web", &["203.0.113.1"], &[&g]);
    let p = &b.policy;
    let v4 = |proto, port| judge(p, "web", Ingress, "192.0.2.1", proto, port);
    assert_eq!(v4(ICMP, icmp(3, 0)), allow(&unreachable));
    assert_eq!(v4(ICMP, icmp(3, 255)), allow(&unreachable));
    assert_eq!(v4(ICMP, icmp(4, 0)), Decision::Deny);
    assert_eq!(v4(ICMP, icmp(2, 255)), Decision::Deny);
    assert_eq!(v4(ICMP, icmp(8, 0)), allow(&echo));
    assert_eq!(v4(ICMP, icmp(8, 1)), Decision::Deny);
    assert_eq!(v4(ICMPV6, icmp(8, 0)), Decision::Deny, "icmp is not icmpv6");
    let v6 = |port| judge(p, "web", Ingress, "2001:db8::1", ICMPV6, port);
    assert_eq!(v6(icmp(128, 0)), allow(&v6_all));
    assert_eq!(v6(icmp(255, 255)), allow(&v6_all));
}

// ----------------------------------------------------------------------------------------
// Referenced groups and prefix lists
// ----------------------------------------------------------------------------------------

#[test]
fn r1_a_group_reference_allows_every_member_bound_here_or_not() {
    let mut b = Builder::default();
    let web = b.group("web");
    let db = b.group("db");
    let r = b.rule(&db, Ingress, tcp(5432, 5432), Peer::Group(web.clone()));
    b.iface("db", &["198.51.100.5"], &[&db]);
    b.iface("web-1", &["192.0.2.11", "2001:db8::11"], &[&web]);
    b.iface("web-2", &["192.0.2.12"], &[&web]);
    // web-2 lives on another host: not bound here, still a member.
    let mut bindings = all_bound(&b.policy);
    bindings.remove("web-2");
    let image = compile(
        &b.policy,
        &bindings,
        &SlotTable::default(),
        &CompileOptions::default(),
    )
    .unwrap();
    let q = |remote: &str| {
        let remote = remote.parse().unwrap();
        let got = lookup(&image, bindings["db"], Ingress, remote, TCP, 5432);
        assert_eq!(
            decide(&b.policy, "db", Ingress, remote, TCP, 5432) != Decision::Deny,
            matches!(got, LookupResult::Allow(_))
        );
        got
    };
    let slot = image.slots.slot(&r).unwrap();
    for member in ["192.0.2.11", "2001:db8::11", "192.0.2.12"] {
        assert!(
            matches!(q(member), LookupResult::Allow(v) if v.slot == slot),
            "{member}"
        );
    }
    assert_eq!(q("192.0.2.13"), LookupResult::Deny);
    assert_eq!(
        q("198.51.100.5"),
        LookupResult::Deny,
        "db does not carry web"
    );
}

#[test]
fn r1_new_members_are_allowed_at_the_next_compile() {
    let mut b = Builder::default();
    let web = b.group("web");
    let db = b.group("db");
    let r = b.rule(&db, Ingress, tcp(5432, 5432), Peer::Group(web.clone()));
    b.iface("db", &["198.51.100.5"], &[&db]);
    b.iface("web-1", &["192.0.2.11"], &[&web]);
    assert_eq!(
        judge(&b.policy, "db", Ingress, "192.0.2.21", TCP, 5432),
        Decision::Deny
    );
    b.iface("web-2", &["192.0.2.21"], &[&web]);
    assert_eq!(
        judge(&b.policy, "db", Ingress, "192.0.2.21", TCP, 5432),
        allow(&r)
    );
}

#[test]
fn r2_the_referenced_groups_own_rules_are_not_imported() {
    let mut b = Builder::default();
    let open = b.group("open");
    let app = b.group("app");
    b.rule(&open, Ingress, Protocol::All, cidr("0.0.0.0/0"));
    b.rule(&app, Ingress, tcp(80, 80), Peer::Group(open.clone()));
    b.iface("app", &["198.51.100.5"], &[&app]);
    b.iface("lb", &["192.0.2.5"], &[&open]);
    #[rustfmt::skip]
    expect_cases(&b.policy, &[
        ("app", Ingress, "203.0.113.9", TCP, 80, Decision::Deny),
        ("app", Ingress, "192.0.2.5", TCP, 22, Decision::Deny),
    ]);
}

#[test]
fn r3_a_self_reference_allows_members_to_each_other_d4_not_without_it() {
    let mut b = Builder::default();
    let cluster = b.group("cluster");
    let plain = b.group("plain");
    let r = b.rule(
        &cluster,
        Ingress,
        Protocol::All,
        Peer::Group(cluster.clone()),
    );
    b.iface("n1", &["192.0.2.1", "2001:db8::1"], &[&cluster]);
    b.iface("n2", &["192.0.2.2"], &[&cluster]);
    b.iface("p1", &["192.0.2.3"], &[&plain]);
    b.iface("p2", &["192.0.2.4"], &[&plain]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("n1", Ingress, "192.0.2.2", UDP, 9, allow(&r)),
        ("n2", Ingress, "2001:db8::1", TCP, 9, allow(&r)),
    ]);
    assert_eq!(
        judge(p, "n1", Ingress, "192.0.2.1", TCP, 9),
        allow(&r),
        "itself too"
    );
    assert_eq!(judge(p, "n1", Ingress, "192.0.2.3", TCP, 9), Decision::Deny);
    assert_eq!(
        judge(p, "p1", Ingress, "192.0.2.4", TCP, 9),
        Decision::Deny,
        "D4"
    );
}

#[test]
fn r4_every_prefix_list_entry_matches_and_its_longest_covering_entry_counts() {
    let mut b = Builder::default();
    let g = b.group("g");
    let pl = b.prefix_list(&["192.0.2.0/24", "192.0.2.0/28", "203.0.113.0/30"]);
    let list = b.rule(&g, Ingress, tcp(0, 65535), Peer::PrefixList(pl));
    let mid = b.rule(&g, Ingress, tcp(22, 22), cidr("192.0.2.0/26"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    // 192.0.2.5: the list matches at /28, longer than /26.
    assert_eq!(judge(p, "web", Ingress, "192.0.2.5", TCP, 22), allow(&list));
    // 192.0.2.50: the list only at /24, so the /26 rule is charged.
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.50", TCP, 22, allow(&mid)),
        ("web", Ingress, "203.0.113.3", TCP, 1, allow(&list)),
        ("web", Ingress, "203.0.113.4", TCP, 1, Decision::Deny),
    ]);
}

// ----------------------------------------------------------------------------------------
// Overlaps and families
// ----------------------------------------------------------------------------------------

#[test]
fn overlapping_cidrs_a_more_specific_prefix_carries_the_union() {
    let mut b = Builder::default();
    let g = b.group("g");
    let dns = b.rule(&g, Ingress, udp(53, 53), cidr("0.0.0.0/0"));
    let http = b.rule(&g, Ingress, tcp(80, 80), cidr("192.0.2.0/24"));
    let https = b.rule(&g, Ingress, tcp(443, 443), cidr("192.0.2.0/25"));
    let ping = b.rule(
        &g,
        Ingress,
        Protocol::Icmp(IcmpMatch::Type(8)),
        cidr("192.0.2.7/32"),
    );
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    let from7 = |proto, port| judge(p, "web", Ingress, "192.0.2.7", proto, port);
    assert_eq!(from7(UDP, 53), allow(&dns));
    assert_eq!(from7(TCP, 80), allow(&http));
    assert_eq!(from7(TCP, 443), allow(&https));
    assert_eq!(from7(ICMP, icmp(8, 0)), allow(&ping));
    assert_eq!(from7(TCP, 22), Decision::Deny);
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.200", TCP, 443, Decision::Deny),
        ("web", Ingress, "192.0.2.200", TCP, 80, allow(&http)),
    ]);
}

#[test]
fn ipv4_remotes_never_match_ipv6_rules_and_ipv4_mapped_remotes_are_ipv4() {
    let mut b = Builder::default();
    let g = b.group("g");
    b.rule(&g, Ingress, Protocol::All, cidr("::/0"));
    b.rule(&g, Ingress, Protocol::All, cidr("::/64"));
    let v4 = b.rule(&g, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "203.0.113.1", TCP, 22, Decision::Deny),
        ("web", Ingress, "192.0.2.1", TCP, 23, Decision::Deny),
        ("web", Ingress, "::ffff:192.0.2.1", TCP, 22, allow(&v4)),
        ("web", Ingress, "::ffff:203.0.113.1", TCP, 22, Decision::Deny),
    ]);
    assert!(matches!(
        judge(p, "web", Ingress, "2001:db8::1", TCP, 22),
        Decision::Allow { .. }
    ));
}

#[test]
fn ipv6_cidrs_inside_the_ipv4_mapped_block_match_nothing_and_mapped_members_are_ipv4() {
    let mut b = Builder::default();
    let g = b.group("g");
    let peers = b.group("peers");
    b.rule(&g, Ingress, Protocol::All, cidr("::ffff:192.0.2.0/120"));
    let members = b.rule(&g, Ingress, tcp(80, 80), Peer::Group(peers.clone()));
    b.iface("web", &["198.51.100.1"], &[&g]);
    b.iface("peer", &["::ffff:203.0.113.9"], &[&peers]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.1", TCP, 22, Decision::Deny),
        ("web", Ingress, "::ffff:192.0.2.1", TCP, 22, Decision::Deny),
        ("web", Ingress, "203.0.113.9", TCP, 80, allow(&members)),
        ("web", Ingress, "::ffff:203.0.113.9", TCP, 80, allow(&members)),
    ]);
}

// ----------------------------------------------------------------------------------------
// C4: untracked flows
// ----------------------------------------------------------------------------------------

#[test]
fn c4_untracked_when_a_world_rule_allows_and_the_opposite_direction_allows_all_to_world() {
    let mut b = Builder::default();
    let g = b.group("g");
    let ssh = b.rule(&g, Ingress, tcp(22, 22), cidr("0.0.0.0/0"));
    let out = b.rule(&g, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    assert_eq!(
        judge(p, "web", Ingress, "203.0.113.1", TCP, 22),
        allow_untracked(&ssh)
    );
    // Egress: allowed by a /0 rule, but ingress has no all-ports rule to /0.
    assert_eq!(
        judge(p, "web", Egress, "203.0.113.1", TCP, 443),
        allow(&out)
    );
}

/// C4 in the interface flags: a scope with no untracked point is marked TRACKED_ONLY, so the
/// kernel skips the "does this answer an untracked flow" lookup for the other direction.
#[test]
fn c4_a_scope_without_untracked_points_is_flagged_tracked_only() {
    let flags = |p: &Policy| build(p, 0).ifaces.values().next().unwrap().flags;
    let (in_only, out_only) = (
        sg_common::iface_flags::TRACKED_ONLY_IN,
        sg_common::iface_flags::TRACKED_ONLY_OUT,
    );
    // The seed article's web server: HTTPS from the world, all out to the world. Ingress 443
    // is untracked; egress is not (ingress does not allow all TCP from the world).
    let mut b = Builder::default();
    let g = b.group("web");
    b.rule(&g, Ingress, tcp(443, 443), cidr("0.0.0.0/0"));
    b.rule(&g, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    assert_eq!(flags(&b.policy), out_only);
    // Only a /24 in: nothing untracked either way.
    let mut b = Builder::default();
    let g = b.group("db");
    b.rule(&g, Ingress, tcp(3306, 3306), cidr("192.0.2.0/24"));
    b.rule(&g, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("db", &["198.51.100.2"], &[&g]);
    assert_eq!(flags(&b.policy), in_only | out_only);
    // All in from the IPv6 world and all out to it: both directions untracked (C4 is per
    // family; the IPv6 rules decide).
    let mut b = Builder::default();
    let g = b.group("open");
    b.rule(&g, Ingress, Protocol::All, cidr("::/0"));
    b.rule(&g, Egress, Protocol::All, cidr("::/0"));
    b.iface("open", &["2001:db8::1"], &[&g]);
    assert_eq!(flags(&b.policy), 0);
}

#[test]
fn c4_any_allowing_world_rule_counts_even_when_another_rule_is_charged() {
    let mut b = Builder::default();
    let g = b.group("g");
    b.rule(&g, Ingress, tcp(22, 22), cidr("0.0.0.0/0"));
    let office = b.rule(&g, Ingress, tcp(0, 1023), cidr("192.0.2.0/24"));
    b.rule(&g, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.1", TCP, 22, allow_untracked(&office)),
        ("web", Ingress, "192.0.2.1", TCP, 23, allow(&office)),
    ]);
}

#[test]
fn c4_the_opposite_rule_must_cover_all_ports_of_the_protocol_to_world_of_the_family() {
    let case = |egress: Vec<(Protocol, Peer)>, proto: u8, remote: &str| -> bool {
        let mut b = Builder::default();
        let g = b.group("g");
        let pl = b.prefix_list(&["0.0.0.0/0"]);
        b.rule(&g, Ingress, Protocol::All, cidr("0.0.0.0/0"));
        b.rule(&g, Ingress, Protocol::All, cidr("::/0"));
        for (proto, peer) in egress {
            let peer = match peer {
                Peer::PrefixList(_) => Peer::PrefixList(pl.clone()),
                other => other,
            };
            b.rule(&g, Egress, proto, peer);
        }
        b.iface("web", &["198.51.100.1"], &[&g]);
        match judge(&b.policy, "web", Ingress, remote, proto, 80) {
            Decision::Allow { tracked, .. } => !tracked,
            Decision::Deny => panic!("allowed by the /0 all rules"),
        }
    };
    let pl = Peer::PrefixList(PrefixListId(String::new()));
    let v4 = "203.0.113.1";
    assert!(case(vec![(tcp(0, 65535), cidr("0.0.0.0/0"))], TCP, v4));
    assert!(
        !case(vec![(tcp(0, 65535), cidr("0.0.0.0/0"))], UDP, v4),
        "udp"
    );
    assert!(
        !case(vec![(tcp(1, 65535), cidr("0.0.0.0/0"))], TCP, v4),
        "not all ports"
    );
    assert!(
        !case(vec![(Protocol::All, pl)], TCP, v4),
        "a prefix list is not a CIDR"
    );
    assert!(
        !case(vec![(Protocol::All, cidr("::/0"))], TCP, v4),
        "other family"
    );
    assert!(case(
        vec![(Protocol::All, cidr("::/0"))],
        UDP,
        "2001:db8::1"
    ));
    assert!(
        !case(vec![(Protocol::All, cidr("0.0.0.0/1"))], TCP, v4),
        "not /0"
    );
}

#[test]
fn c4_icmp_and_other_protocols_are_always_tracked() {
    let mut b = Builder::default();
    let g = b.group("g");
    let inr = b.rule(&g, Ingress, Protocol::All, cidr("0.0.0.0/0"));
    b.rule(&g, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("web", &["198.51.100.1"], &[&g]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "203.0.113.1", ICMP, icmp(8, 0), allow(&inr)),
        ("web", Ingress, "203.0.113.1", 47, 0, allow(&inr)),
        ("web", Ingress, "203.0.113.1", UDP, 53, allow_untracked(&inr)),
    ]);
}

// ----------------------------------------------------------------------------------------
// The image: determinism, slots, generations, bindings
// ----------------------------------------------------------------------------------------

fn sample_policy() -> (Policy, Vec<RuleId>) {
    let mut b = Builder::default();
    let web = b.group("web");
    let db = b.group("db");
    let pl = b.prefix_list(&["203.0.113.0/24", "203.0.113.128/25"]);
    let ids = vec![
        b.rule(&web, Ingress, tcp(443, 443), cidr("0.0.0.0/0")),
        b.rule(&web, Ingress, tcp(22, 22), Peer::PrefixList(pl)),
        b.rule(&web, Egress, Protocol::All, cidr("0.0.0.0/0")),
        b.rule(&web, Egress, Protocol::All, cidr("::/0")),
        b.rule(&db, Ingress, tcp(5432, 5432), Peer::Group(web.clone())),
        b.rule(&db, Ingress, Protocol::All, Peer::Group(db.clone())),
    ];
    b.iface("web-1", &["192.0.2.11", "2001:db8::11"], &[&web]);
    b.iface("web-2", &["192.0.2.12"], &[&web, &db]);
    b.iface("db-1", &["198.51.100.5"], &[&db]);
    (b.policy, ids)
}

#[test]
fn compile_is_deterministic_and_ignores_input_order() {
    let (p, _) = sample_policy();
    assert_eq!(build(&p, 0), build(&p, 0));
    // Same bindings (by name), everything listed in another order.
    let bindings = all_bound(&p);
    let mut shuffled = p.clone();
    shuffled.interfaces.reverse();
    for i in &mut shuffled.interfaces {
        i.groups.reverse();
        i.addresses.reverse();
    }
    for g in shuffled.groups.values_mut() {
        g.ingress.reverse();
        g.egress.reverse();
    }
    let opts = CompileOptions::default();
    let none = SlotTable::default();
    assert_eq!(
        compile(&p, &bindings, &none, &opts),
        compile(&shuffled, &bindings, &none, &opts)
    );
}

#[test]
fn slots_survive_recompiles_for_unchanged_rule_ids() {
    let (mut p, ids) = sample_policy();
    let first = build(&p, 0);
    // Remove one rule, add one, recompile with the previous slots.
    let removed = ids[1].clone();
    let web = p.groups.values_mut().find(|g| g.name == "web").unwrap();
    web.ingress.retain(|r| r.id != removed);
    let mut added = web.ingress[0].clone();
    added.id = RuleId("sgr-0aaaaaaaaaaaaaaaa".to_string());
    added.protocol = tcp(8443, 8443);
    web.ingress.push(added.clone());
    let bindings = all_bound(&p);
    let second = compile(&p, &bindings, &first.slots, &CompileOptions::default()).unwrap();
    for id in ids.iter().filter(|id| **id != removed) {
        assert_eq!(first.slots.slot(id), second.slots.slot(id), "{id}");
    }
    assert_eq!(second.slots.slot(&removed), None);
    assert_ne!(
        second.slots.slot(&added.id),
        first.slots.slot(&removed),
        "not reused at once"
    );
    let q = (Ingress, "203.0.113.200".parse().unwrap(), TCP, 443);
    assert_eq!(
        looked_up(&p, &first, "web-1", q),
        looked_up(&p, &second, "web-1", q)
    );
}

#[test]
fn the_generation_is_in_bit_31_of_every_scope_and_class_id_and_ids_are_never_zero() {
    let (p, _) = sample_policy();
    for generation in [0, 1] {
        let image = build(&p, generation);
        assert_eq!(image.generation, generation);
        let bit = |id: u32| {
            assert_ne!(id, 0);
            assert_ne!(id & !(1 << 31), 0, "the id part is never 0 either");
            id >> 31
        };
        for (k, conf) in &image.ifaces {
            assert_eq!(k.generation, generation);
            assert_eq!(bit(conf.scope_in), generation);
            assert_eq!(bit(conf.scope_out), generation);
        }
        for (k, chain) in &image.peers {
            assert_eq!(bit(u32::from_be_bytes(k.data.scope)), generation);
            for class in chain.classes.iter().take_while(|&&c| c != 0) {
                assert_eq!(bit(*class), generation);
            }
        }
        for k in image.ports.keys() {
            assert_eq!(bit(k.class), generation);
        }
    }
    // Both generations answer alike.
    let (g0, g1) = (build(&p, 0), build(&p, 1));
    for remote in [
        "192.0.2.12",
        "203.0.113.130",
        "2001:db8::11",
        "198.51.100.5",
    ] {
        for (proto, port) in [(TCP, 22), (TCP, 443), (TCP, 5432), (UDP, 53)] {
            let q = (Ingress, remote.parse().unwrap(), proto, port);
            assert_eq!(looked_up(&p, &g0, "db-1", q), looked_up(&p, &g1, "db-1", q));
        }
    }
    let err = compile(
        &p,
        &all_bound(&p),
        &SlotTable::default(),
        &CompileOptions {
            generation: 2,
            slot_capacity: 100,
        },
    );
    assert_eq!(err, Err(CompileError::BadGeneration(2)));
}

#[test]
fn an_interface_without_a_binding_has_no_policy() {
    let (p, _) = sample_policy();
    let image = build(&p, 0);
    let remote = "192.0.2.1".parse().unwrap();
    assert_eq!(
        lookup(&image, 999, Ingress, remote, TCP, 443),
        LookupResult::NoPolicy
    );
    // The image's generation is part of the interface key.
    let mut other = image.clone();
    other.generation = 1;
    assert_eq!(
        lookup(&other, 10, Ingress, remote, TCP, 443),
        LookupResult::NoPolicy
    );
    assert_eq!(
        decide(&p, "nope", Ingress, remote, TCP, 443),
        Decision::Deny
    );
}

#[test]
fn bad_bindings_and_too_few_slots_are_errors() {
    let (p, _) = sample_policy();
    let opts = CompileOptions::default();
    let none = SlotTable::default();
    let mut bindings = all_bound(&p);
    bindings.insert("ghost".to_string(), 77);
    assert_eq!(
        compile(&p, &bindings, &none, &opts),
        Err(CompileError::UnknownInterface("ghost".to_string()))
    );
    let mut bindings = all_bound(&p);
    bindings.insert("web-2".to_string(), bindings["web-1"]);
    assert!(matches!(
        compile(&p, &bindings, &none, &opts),
        Err(CompileError::DuplicateIfindex { .. })
    ));
    let tiny = CompileOptions {
        generation: 0,
        slot_capacity: 3,
    };
    assert!(matches!(
        compile(&p, &all_bound(&p), &none, &tiny),
        Err(CompileError::Slots(_))
    ));
}

#[test]
fn the_module_doc_worked_example_compiles_as_documented() {
    let mut b = Builder::default();
    let a = b.group("a");
    let sgb = b.group("b");
    let r1 = b.rule(&a, Ingress, tcp(22, 22), cidr("0.0.0.0/0"));
    let r2 = b.rule(&a, Ingress, tcp(0, 1023), cidr("192.0.2.0/24"));
    let r3 = b.rule(&a, Ingress, Protocol::All, Peer::Group(sgb.clone()));
    let r4 = b.rule(
        &a,
        Ingress,
        Protocol::Icmp(IcmpMatch::Type(8)),
        cidr("192.0.2.0/24"),
    );
    b.rule(&a, Egress, Protocol::All, cidr("0.0.0.0/0"));
    b.iface("web", &["203.0.113.1"], &[&a]);
    b.iface("peer", &["192.0.2.7"], &[&sgb]);
    let p = &b.policy;
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "198.51.100.1", TCP, 22, allow_untracked(&r1)),
        ("web", Ingress, "192.0.2.9", TCP, 22, allow_untracked(&r2)),
        ("web", Ingress, "192.0.2.9", TCP, 80, allow(&r2)),
        ("web", Ingress, "192.0.2.9", ICMP, icmp(8, 3), allow(&r4)),
        ("web", Ingress, "192.0.2.7", TCP, 22, allow_untracked(&r3)),
        ("web", Ingress, "192.0.2.7", UDP, 9, allow(&r3)),
    ]);
    // Chains and page counts of each prefix's own class, as the module doc lists them.
    let image = build(p, 0);
    let scope_in = image.ifaces.values().next().unwrap().scope_in;
    let mut per_class: Vec<(u32, usize, usize)> = image
        .peers
        .iter()
        .filter(|(k, _)| u32::from_be_bytes(k.data.scope) == scope_in)
        .map(|(k, chain)| {
            let n = image
                .ports
                .keys()
                .filter(|e| e.class == chain.classes[0])
                .count();
            let len = chain.classes.iter().take_while(|&&c| c != 0).count();
            (k.prefix_len - 128, len, n)
        })
        .collect();
    per_class.sort();
    // A is small, so B's class holds A's segment too (r2 overrides it at tcp 22): one class
    // of a tcp and an icmp page; C has its every-protocol page and the tcp page C4 needs.
    assert_eq!(per_class, vec![(0, 1, 1), (24, 1, 2), (32, 1, 2)]);
}

/// E4 step 1 through nesting deeper than a peer value's class chain (`CLASS_CHAIN`): seven
/// nested prefixes, each allowing its own port range, overlapping the others. The first
/// levels become a chain, the deeper ones are merged into the chain's first class; every
/// (address, port) must still be charged to the longest prefix that allows it.
#[test]
fn nesting_deeper_than_the_class_chain_keeps_the_longest_prefix_winning() {
    let mut b = Builder::default();
    let g = b.group("web");
    let nets = [
        "0.0.0.0/0",
        "192.0.2.0/24",
        "192.0.2.0/25",
        "192.0.2.0/26",
        "192.0.2.0/28",
        "192.0.2.0/31",
        "192.0.2.1/32",
    ];
    let mut rules = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        // Ranges shift with depth: 100i..100i+150 overlaps the next level's.
        let from = 100 * i as u16;
        rules.push(b.rule(&g, Ingress, tcp(from, from + 150), cidr(net)));
        // Enough single ports that every level's class is too big to be merged into the
        // next one (compile::MERGE_PAGES): the chain fills up.
        for j in 0..70u16 {
            let port = 20_000 + 100 * i as u16 + 2 * j;
            b.rule(&g, Ingress, tcp(port, port), cidr(net));
        }
    }
    // An ICMP rule halfway down and a UDP rule at the bottom: other protocols fall through.
    let icmp_rule = b.rule(
        &g,
        Ingress,
        Protocol::Icmp(IcmpMatch::Type(8)),
        cidr(nets[3]),
    );
    let udp_rule = b.rule(&g, Ingress, udp(53, 53), cidr(nets[6]));
    b.iface("web", &["203.0.113.1"], &[&g]);
    let p = &b.policy;
    let image = build(p, 0);
    assert!(
        image
            .peers
            .values()
            .any(|v| v.classes[sg_common::CLASS_CHAIN - 1] != 0),
        "some chain is full"
    );
    for remote in [
        "192.0.2.1",
        "192.0.2.0",
        "192.0.2.2",
        "192.0.2.20",
        "192.0.2.40",
        "192.0.2.100",
        "192.0.2.200",
        "198.51.100.1",
    ] {
        for port in (0..800)
            .step_by(7)
            .chain([149, 150, 151, 249, 250, 251, 650, 651])
        {
            judge(p, "web", Ingress, remote, TCP, port);
        }
        judge(p, "web", Ingress, remote, UDP, 53);
        judge(p, "web", Ingress, remote, ICMP, icmp(8, 0));
    }
    // Spot checks against the spec by hand.
    #[rustfmt::skip]
    expect_cases(p, &[
        ("web", Ingress, "192.0.2.1", TCP, 650, allow(&rules[6])),
        ("web", Ingress, "192.0.2.1", TCP, 560, allow(&rules[5])),
        ("web", Ingress, "192.0.2.1", TCP, 120, allow(&rules[1])),
        ("web", Ingress, "192.0.2.1", TCP, 50, allow(&rules[0])),
        ("web", Ingress, "192.0.2.1", TCP, 700, allow(&rules[6])),
        ("web", Ingress, "192.0.2.1", TCP, 751, Decision::Deny),
        ("web", Ingress, "192.0.2.1", UDP, 53, allow(&udp_rule)),
        ("web", Ingress, "192.0.2.0", UDP, 53, Decision::Deny),
        ("web", Ingress, "192.0.2.1", ICMP, icmp(8, 0), allow(&icmp_rule)),
        ("web", Ingress, "192.0.2.100", TCP, 350, allow(&rules[2])),
        ("web", Ingress, "192.0.2.100", TCP, 351, Decision::Deny),
    ]);
}

/// A change of membership only changes the new member's host entries: every scope and class
/// id of the rest of the image stays the same, so an apply writes a handful of entries.
#[test]
fn a_membership_change_leaves_the_rest_of_the_image_alone() {
    let mut b = Builder::default();
    let web = b.group("web");
    let db = b.group("db");
    for i in 0..40u16 {
        b.rule(
            &db,
            Ingress,
            tcp(1000 + i, 1000 + 2 * i),
            cidr(&format!("192.0.2.{}/32", i + 10)),
        );
    }
    b.rule(&db, Ingress, tcp(3306, 3306), Peer::Group(web.clone()));
    b.rule(&db, Ingress, tcp(22, 22), cidr("192.0.2.0/24"));
    b.iface("db-1", &["203.0.113.10"], &[&db]);
    b.iface("web-1", &["192.0.2.11"], &[&web]);
    let bind = BTreeMap::from([("db-1".to_string(), 10)]);
    let opts = options(1);
    let before = compile(&b.policy, &bind, &SlotTable::default(), &opts).unwrap();
    b.iface("web-2", &["192.0.2.77"], &[&web]);
    let after = compile(&b.policy, &bind, &before.slots, &opts).unwrap();
    assert_eq!(before.ifaces, after.ifaces, "scope ids are stable");
    let changed_peers = changed_entries(&before.peers, &after.peers);
    let changed_ports = changed_entries(&before.ports, &after.ports);
    assert_eq!(changed_peers, 1, "only web-2's host entry is new");
    assert!(
        changed_ports <= 2,
        "at most web-2's own class: {changed_ports}"
    );
    assert_eq!(
        judge(&b.policy, "db-1", Ingress, "192.0.2.77", TCP, 3306),
        Decision::Allow {
            rule: before
                .slots
                .by_rule
                .keys()
                .find(|r| {
                    b.policy
                        .all_rules()
                        .any(|x| &x.id == *r && matches!(x.peer, Peer::Group(_)))
                })
                .unwrap()
                .clone(),
            tracked: true,
        }
    );
}

/// R1: a membership delta reuses the live compile's rule table (rule ranks, points, slots);
/// asked of the index of another policy's compile, it is refused with the rule it lacks
/// instead of charging a wrong rule.
#[test]
fn r1_a_delta_of_an_index_from_another_policy_is_refused() {
    let mut b = Builder::default();
    let web = b.group("web");
    let db = b.group("db");
    b.rule(&db, Ingress, tcp(3306, 3306), Peer::Group(web.clone()));
    b.iface("db-1", &["203.0.113.10"], &[&db]);
    b.iface("web-1", &["192.0.2.11"], &[&web]);
    let bind = BTreeMap::from([("db-1".to_string(), 10)]);
    let opts = options(0);
    let (image, index) = compile_indexed(&b.policy, &bind, &SlotTable::default(), &opts).unwrap();
    // The right index: a delta that gives web-2 the rule.
    let before = b.policy.clone();
    b.iface("web-2", &["192.0.2.77"], &[&web]);
    let delta = membership_delta(&before, &b.policy, &bind, &image, &index)
        .unwrap()
        .expect("a membership change");
    assert_eq!(delta.peers.len(), 1, "web-2's host entry");
    // Another policy with one more rule, changed the same way, against the first index.
    let mut other = before.clone();
    let extra = other.groups[&db].ingress[0].clone();
    let extra = Rule {
        id: RuleId("sgr-00000000000000fff".into()),
        ..extra
    };
    other.groups.get_mut(&db).unwrap().ingress.push(extra);
    let mut other_after = other.clone();
    other_after.interfaces = b.policy.interfaces.clone();
    let err = membership_delta(&other, &other_after, &bind, &image, &index).unwrap_err();
    assert!(
        matches!(&err, CompileError::StaleIndex(id) if id == "sgr-00000000000000fff"),
        "{err}"
    );
}
