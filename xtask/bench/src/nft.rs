//! The same policy as an nftables ruleset, for the side-by-side throughput figures: what a
//! careful administrator would write by hand for one interface (the union of its groups, E3).
//!
//! Two styles, both stateful like sg (`ct state established,related accept` first, the NDP
//! and DHCP exemptions N1/N2, a final drop):
//! - [`Style::Sets`]: one lookup per (direction, family, kind) in a named interval set of
//!   concatenations (`ip saddr . tcp dport @in4_tcp`). Concatenated interval sets
//!   (pipapo) refuse overlapping elements, so each set holds a disjoint cover of the union of
//!   what the rules allow, computed here ([`disjoint`]).
//! - [`Style::PerRule`]: one nftables rule per SG rule and address family, in policy order
//!   (group id, then position), evaluated linearly by the kernel.
//!
//! Pure: a policy in, ruleset text out (applied by the bench with `nft -f` in a namespace).
//! Verdicts only: E4 (which rule is charged) and C4 (untracked flows) change nothing about
//! pass or drop for the bench's traffic, so they are not modelled. ICMP type matches on the
//! other family (an `icmp` rule with an IPv6 peer) are refused: nftables has no concise form
//! for them and the bench never generates them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};
use ipnet::IpNet;

use sg_agent::policy::{Direction, Family, IcmpMatch, Peer, Policy, Protocol, Rule};

/// The table the bench owns in the receiver's namespace.
pub const TABLE: &str = "sgbench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Style {
    Sets,
    PerRule,
}

impl Style {
    pub fn name(self) -> &'static str {
        match self {
            Style::Sets => "nft_sets",
            Style::PerRule => "nft_per_rule",
        }
    }
}

/// An inclusive range of addresses (IPv4 as u32 values) and of a second dimension.
type Span<T> = (T, T);
type Box2 = (Span<u128>, Span<u32>);

/// What goes into one set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Every protocol: address only.
    All,
    Tcp,
    Udp,
    /// ICMP or ICMPv6 (by family) type and code: values `type << 8 | code`.
    Icmp,
    /// Protocol numbers (including ICMP with every type).
    Proto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::All => "all",
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Icmp => "icmp",
            Kind::Proto => "proto",
        }
    }
}

/// The nftables ruleset enforcing `iface`'s groups on `device` (input and output hooks).
pub fn ruleset(policy: &Policy, iface: &str, device: &str, style: Style) -> Result<String> {
    let Some(ifc) = policy.interface(iface) else {
        bail!("the policy has no interface {iface}");
    };
    let mut groups = Vec::new();
    for g in policy.groups.keys() {
        if ifc.groups.contains(g) {
            groups.push(g);
        }
    }
    let mut out = String::new();
    // Replace an older copy atomically: `nft -f` runs the file as one transaction.
    writeln!(out, "add table inet {TABLE}\ndelete table inet {TABLE}").expect("string");
    writeln!(out, "table inet {TABLE} {{").expect("string");
    let mut chains = String::new();
    for dir in Direction::BOTH {
        let rules: Vec<&Rule> = groups
            .iter()
            .flat_map(|g| policy.groups[*g].rules(dir).iter())
            .collect();
        let body = match style {
            Style::Sets => sets_body(policy, &rules, dir, &mut out)?,
            Style::PerRule => per_rule_body(policy, &rules, dir)?,
        };
        let (hook, ifkw) = match dir {
            Direction::Ingress => ("input", "iifname"),
            Direction::Egress => ("output", "oifname"),
        };
        writeln!(chains, "\tchain {hook} {{").expect("string");
        writeln!(
            chains,
            "\t\ttype filter hook {hook} priority filter; policy accept;"
        )
        .expect("string");
        writeln!(chains, "\t\t{ifkw} != \"{device}\" accept").expect("string");
        writeln!(chains, "\t\tct state established,related accept").expect("string");
        writeln!(
            chains,
            "\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
             nd-neighbor-advert, nd-redirect }} accept"
        )
        .expect("string");
        let dhcp = match dir {
            Direction::Ingress => [(67, 68), (547, 546)],
            Direction::Egress => [(68, 67), (546, 547)],
        };
        for (s, d) in dhcp {
            writeln!(chains, "\t\tudp sport {s} udp dport {d} accept").expect("string");
        }
        chains.push_str(&body);
        writeln!(chains, "\t\tdrop\n\t}}").expect("string");
    }
    out.push_str(&chains);
    out.push_str("}\n");
    Ok(out)
}

/// The addresses a peer stands for (R1, R4), as inclusive spans per family.
fn peer_spans(policy: &Policy, peer: &Peer) -> Vec<(Family, Span<u128>)> {
    let nets: Vec<IpNet> = match peer {
        Peer::Cidr(n) => vec![*n],
        Peer::PrefixList(id) => policy
            .prefix_lists
            .get(id)
            .map(|l| l.entries.clone())
            .unwrap_or_default(),
        Peer::Group(g) => policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(g))
            .flat_map(|i| i.addresses.iter().map(|a| IpNet::from(*a)))
            .collect(),
    };
    nets.iter().map(|n| (Family::of_net(n), span(n))).collect()
}

fn span(n: &IpNet) -> Span<u128> {
    match n {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// (kind, value span) of a protocol match for a peer of `family`.
fn kind_of(p: &Protocol, family: Family, rule: &Rule) -> Result<(Kind, Span<u32>)> {
    let icmp = |m: &IcmpMatch, proto: u8, own: Family| -> Result<(Kind, Span<u32>)> {
        match m {
            IcmpMatch::All => Ok((Kind::Proto, (proto.into(), proto.into()))),
            _ if family != own => bail!(
                "rule {} matches an ICMP type over the other address family; the nftables \
                 translation does not support that",
                rule.id
            ),
            IcmpMatch::Type(t) => Ok((Kind::Icmp, (u32::from(*t) << 8, u32::from(*t) << 8 | 0xff))),
            IcmpMatch::TypeCode(t, c) => {
                let v = u32::from(*t) << 8 | u32::from(*c);
                Ok((Kind::Icmp, (v, v)))
            }
        }
    };
    match p {
        Protocol::All => Ok((Kind::All, (0, 0))),
        Protocol::Tcp(r) => Ok((Kind::Tcp, (r.from.into(), r.to.into()))),
        Protocol::Udp(r) => Ok((Kind::Udp, (r.from.into(), r.to.into()))),
        Protocol::Icmp(m) => icmp(m, 1, Family::V4),
        Protocol::Icmpv6(m) => icmp(m, 58, Family::V6),
        Protocol::Number(n) => Ok((Kind::Proto, ((*n).into(), (*n).into()))),
    }
}

fn sets_body(
    policy: &Policy,
    rules: &[&Rule],
    dir: Direction,
    sets: &mut String,
) -> Result<String> {
    use std::collections::BTreeMap;
    let mut boxes: BTreeMap<(Family, Kind), Vec<Box2>> = BTreeMap::new();
    for r in rules {
        for (fam, sp) in peer_spans(policy, &r.peer) {
            let (kind, val) = kind_of(&r.protocol, fam, r)?;
            boxes.entry((fam, kind)).or_default().push((sp, val));
        }
    }
    let d = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let mut body = String::new();
    for ((fam, kind), b) in &boxes {
        let (f, addr_t, ip, icmp) = match fam {
            Family::V4 => ("4", "ipv4_addr", "ip", "icmp"),
            Family::V6 => ("6", "ipv6_addr", "ip6", "icmpv6"),
        };
        let name = format!("{d}{f}_{}", kind.name());
        let addr_kw = match dir {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        let (typ, key) = match kind {
            Kind::All => (addr_t.to_string(), format!("{ip} {addr_kw}")),
            Kind::Tcp | Kind::Udp => (
                format!("{addr_t} . inet_service"),
                format!("{ip} {addr_kw} . {} dport", kind.name()),
            ),
            Kind::Icmp => (
                format!("{addr_t} . {icmp}_type . {icmp}_code"),
                format!("{ip} {addr_kw} . {icmp} type . {icmp} code"),
            ),
            Kind::Proto => (
                format!("{addr_t} . inet_proto"),
                format!("{ip} {addr_kw} . meta l4proto"),
            ),
        };
        let mut elems = Vec::new();
        for (a, vals) in disjoint(b) {
            let addr = fmt_span(*fam, a);
            for v in vals {
                match kind {
                    Kind::All => elems.push(addr.clone()),
                    Kind::Icmp => {
                        for (t, c) in split_type_code(v) {
                            elems.push(format!("{addr} . {} . {}", fmt_u(t), fmt_u(c)));
                        }
                    }
                    _ => elems.push(format!("{addr} . {}", fmt_u(v))),
                }
            }
        }
        writeln!(
            sets,
            "\tset {name} {{\n\t\ttype {typ}\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}",
            elems.join(", ")
        )
        .expect("string");
        writeln!(body, "\t\t{key} @{name} accept").expect("string");
    }
    Ok(body)
}

fn per_rule_body(policy: &Policy, rules: &[&Rule], dir: Direction) -> Result<String> {
    let mut body = String::new();
    let addr_kw = match dir {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    for r in rules {
        let spans = peer_spans(policy, &r.peer);
        for fam in [Family::V4, Family::V6] {
            let mine: Vec<Box2> = spans
                .iter()
                .filter(|(f, _)| *f == fam)
                .map(|(_, s)| (*s, (0, 0)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let addrs: Vec<String> = disjoint(&mine)
                .into_iter()
                .map(|(a, _)| fmt_span(fam, a))
                .collect();
            let ip = if fam == Family::V4 { "ip" } else { "ip6" };
            let addr = if addrs.len() == 1 {
                addrs[0].clone()
            } else {
                format!("{{ {} }}", addrs.join(", "))
            };
            let m = match_of(&r.protocol, fam, r)?;
            let sep = if m.is_empty() { "" } else { " " };
            writeln!(body, "\t\t{ip} {addr_kw} {addr}{sep}{m} accept").expect("string");
        }
    }
    Ok(body)
}

/// The protocol part of a per-rule match.
fn match_of(p: &Protocol, family: Family, rule: &Rule) -> Result<String> {
    let ports = |name: &str, from: u16, to: u16| {
        if (from, to) == (0, 65535) {
            format!("meta l4proto {name}")
        } else {
            format!("{name} dport {}", fmt_u((from.into(), to.into())))
        }
    };
    let icmp = |m: &IcmpMatch, name: &str, own: Family| -> Result<String> {
        Ok(match m {
            IcmpMatch::All => format!("meta l4proto {name}"),
            _ if family != own => bail!(
                "rule {} matches an ICMP type over the other address family; the nftables \
                 translation does not support that",
                rule.id
            ),
            IcmpMatch::Type(t) => format!("{name} type {t}"),
            IcmpMatch::TypeCode(t, c) => format!("{name} type {t} {name} code {c}"),
        })
    };
    Ok(match p {
        Protocol::All => String::new(),
        Protocol::Tcp(r) => ports("tcp", r.from, r.to),
        Protocol::Udp(r) => ports("udp", r.from, r.to),
        Protocol::Icmp(m) => icmp(m, "icmp", Family::V4)?,
        Protocol::Icmpv6(m) => icmp(m, "icmpv6", Family::V6)?,
        Protocol::Number(n) => format!("meta l4proto {n}"),
    })
}

/// A disjoint cover of the union of `boxes`: address spans in increasing order, each with the
/// merged (disjoint, increasing, non-adjacent) value spans every address in it has. Adjacent
/// address spans with equal values are joined.
pub(crate) fn disjoint(boxes: &[Box2]) -> Vec<(Span<u128>, Vec<Span<u32>>)> {
    // Elementary segments start at every box start and after every box end.
    let mut points: BTreeSet<u128> = BTreeSet::new();
    for ((lo, hi), _) in boxes {
        points.insert(*lo);
        if *hi < u128::MAX {
            points.insert(hi + 1);
        }
    }
    let points: Vec<u128> = points.into_iter().collect();
    let mut sorted: Vec<&Box2> = boxes.iter().collect();
    sorted.sort_by_key(|((lo, _), _)| *lo);
    let mut next = 0;
    let mut active: Vec<&Box2> = Vec::new();
    let mut out: Vec<(Span<u128>, Vec<Span<u32>>)> = Vec::new();
    for (i, &s) in points.iter().enumerate() {
        let e = points.get(i + 1).map_or(u128::MAX, |n| n - 1);
        active.retain(|((_, hi), _)| *hi >= s);
        while next < sorted.len() && sorted[next].0.0 <= s {
            active.push(sorted[next]);
            next += 1;
        }
        if active.is_empty() {
            continue;
        }
        let mut vals: Vec<Span<u32>> = active.iter().map(|(_, v)| *v).collect();
        vals.sort();
        let mut merged: Vec<Span<u32>> = Vec::new();
        for (lo, hi) in vals {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        match out.last_mut() {
            Some((a, v)) if a.1.checked_add(1) == Some(s) && *v == merged => a.1 = e,
            _ => out.push(((s, e), merged)),
        }
    }
    out
}

/// A span of `type << 8 | code` values as disjoint (type span, code span) boxes.
fn split_type_code((lo, hi): Span<u32>) -> Vec<(Span<u32>, Span<u32>)> {
    let (t1, c1, t2, c2) = (lo >> 8, lo & 0xff, hi >> 8, hi & 0xff);
    if t1 == t2 {
        return vec![((t1, t1), (c1, c2))];
    }
    let mut v = Vec::new();
    let (mut first, mut last) = (t1, t2);
    if c1 != 0 {
        v.push(((t1, t1), (c1, 255)));
        first += 1;
    }
    let tail = c2 != 255;
    if tail {
        last -= 1;
    }
    if first <= last {
        v.push(((first, last), (0, 255)));
    }
    if tail {
        v.push(((t2, t2), (0, c2)));
    }
    v
}

fn fmt_u((lo, hi): Span<u32>) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

fn addr(f: Family, v: u128) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// `a`, `a/len` when the span is a prefix, else `a-b`.
fn fmt_span(f: Family, (lo, hi): Span<u128>) -> String {
    if lo == hi {
        return addr(f, lo).to_string();
    }
    let bits = if f == Family::V4 { 32 } else { 128 };
    let size = hi.wrapping_sub(lo).wrapping_add(1);
    let whole = lo == 0
        && hi
            == if bits == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
    if whole {
        return format!("{}/0", addr(f, 0));
    }
    if size.is_power_of_two() && lo % size == 0 {
        let len = bits - size.trailing_zeros();
        return format!("{}/{len}", addr(f, lo));
    }
    format!("{}-{}", addr(f, lo), addr(f, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_agent::policy::{Group, GroupId, Interface, Origin, PortRange, RuleId, Timeouts};

    fn rule(g: &str, n: u32, dir: Direction, protocol: Protocol, peer: Peer) -> Rule {
        Rule {
            id: RuleId(format!("sgr-{n:017x}")),
            group: GroupId(g.into()),
            direction: dir,
            protocol,
            peer,
            description: None,
            origin: Origin::default(),
        }
    }

    fn cidr(s: &str) -> Peer {
        Peer::Cidr(s.parse().unwrap())
    }

    fn tcp(from: u16, to: u16) -> Protocol {
        Protocol::Tcp(PortRange { from, to })
    }

    /// Two groups on the interface; overlapping CIDRs and ports; a group peer with members of
    /// both families; ICMP; a protocol number; egress all.
    fn small() -> Policy {
        let mut p = Policy::default();
        let a = "sg-00000000000000001";
        let b = "sg-00000000000000002";
        let ing_a = vec![
            rule(
                a,
                1,
                Direction::Ingress,
                tcp(22, 22),
                cidr("198.51.100.0/24"),
            ),
            rule(
                a,
                2,
                Direction::Ingress,
                tcp(20, 25),
                cidr("198.51.100.0/25"),
            ),
            rule(
                a,
                3,
                Direction::Ingress,
                tcp(80, 80),
                Peer::Group(GroupId(b.into())),
            ),
        ];
        let ing_b = vec![
            rule(
                b,
                4,
                Direction::Ingress,
                Protocol::Icmp(IcmpMatch::Type(8)),
                cidr("0.0.0.0/0"),
            ),
            rule(
                b,
                5,
                Direction::Ingress,
                Protocol::Number(47),
                cidr("203.0.113.0/24"),
            ),
            rule(
                b,
                6,
                Direction::Ingress,
                Protocol::All,
                cidr("2001:db8::/32"),
            ),
        ];
        let egr = vec![rule(
            a,
            7,
            Direction::Egress,
            Protocol::All,
            cidr("0.0.0.0/0"),
        )];
        for (id, ingress, egress) in [(a, ing_a, egr), (b, ing_b, vec![])] {
            p.groups.insert(
                GroupId(id.into()),
                Group {
                    id: GroupId(id.into()),
                    name: id.into(),
                    description: String::new(),
                    ingress,
                    egress,
                    origin: Origin::default(),
                },
            );
        }
        for (name, addrs, groups) in [
            ("web", vec!["198.51.100.2"], vec![a, b]),
            ("db", vec!["192.0.2.9", "2001:db8::9"], vec![b]),
        ] {
            p.interfaces.push(Interface {
                name: name.into(),
                instance: name.into(),
                device: None,
                addresses: addrs.iter().map(|s| s.parse().unwrap()).collect(),
                groups: groups.iter().map(|g| GroupId(g.to_string())).collect(),
                timeouts: Timeouts::AWS_DEFAULT,
                origin: Origin::default(),
            });
        }
        p
    }

    const HEAD: &str = "add table inet sgbench
delete table inet sgbench
table inet sgbench {
";

    fn chain_head(hook: &str, kw: &str, dhcp: [(u16, u16); 2]) -> String {
        format!(
            "\tchain {hook} {{
\t\ttype filter hook {hook} priority filter; policy accept;
\t\t{kw} != \"veth0\" accept
\t\tct state established,related accept
\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }} accept
\t\tudp sport {} udp dport {} accept
\t\tudp sport {} udp dport {} accept
",
            dhcp[0].0, dhcp[0].1, dhcp[1].0, dhcp[1].1
        )
    }

    #[test]
    fn per_rule_style_is_one_nft_rule_per_sg_rule_and_family_in_policy_order() {
        let got = ruleset(&small(), "web", "veth0", Style::PerRule).unwrap();
        let output = chain_head("output", "oifname", [(68, 67), (546, 547)]);
        let want = format!(
            "{HEAD}{}{}{output}\t\tip daddr 0.0.0.0/0 accept\n\t\tdrop\n\t}}\n}}\n",
            chain_head("input", "iifname", [(67, 68), (547, 546)]),
            "\t\tip saddr 198.51.100.0/24 tcp dport 22 accept
\t\tip saddr 198.51.100.0/25 tcp dport 20-25 accept
\t\tip saddr { 192.0.2.9, 198.51.100.2 } tcp dport 80 accept
\t\tip6 saddr 2001:db8::9 tcp dport 80 accept
\t\tip saddr 0.0.0.0/0 icmp type 8 accept
\t\tip saddr 203.0.113.0/24 meta l4proto 47 accept
\t\tip6 saddr 2001:db8::/32 accept
\t\tdrop
\t}
",
        );
        assert_eq!(got, want);
    }

    #[test]
    fn sets_style_holds_a_disjoint_cover_of_each_kind() {
        let got = ruleset(&small(), "web", "veth0", Style::Sets).unwrap();
        let want = format!(
            "{HEAD}{}{}{}{}{}{}",
            // 198.51.100.0/25 has 20-25 (22 merged into it); .128/25 only 22; the members.
            "\tset in4_tcp {
\t\ttype ipv4_addr . inet_service
\t\tflags interval
\t\telements = { 192.0.2.9 . 80, 198.51.100.0/31 . 20-25, 198.51.100.2 . 20-25, \
198.51.100.2 . 80, 198.51.100.3-198.51.100.127 . 20-25, 198.51.100.128/25 . 22 }
\t}
\tset in4_icmp {
\t\ttype ipv4_addr . icmp_type . icmp_code
\t\tflags interval
\t\telements = { 0.0.0.0/0 . 8 . 0-255 }
\t}
\tset in4_proto {
\t\ttype ipv4_addr . inet_proto
\t\tflags interval
\t\telements = { 203.0.113.0/24 . 47 }
\t}
\tset in6_all {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { 2001:db8::/32 }
\t}
\tset in6_tcp {
\t\ttype ipv6_addr . inet_service
\t\tflags interval
\t\telements = { 2001:db8::9 . 80 }
\t}
",
            "\tset out4_all {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 0.0.0.0/0 }
\t}
",
            chain_head("input", "iifname", [(67, 68), (547, 546)]),
            "\t\tip saddr . tcp dport @in4_tcp accept
\t\tip saddr . icmp type . icmp code @in4_icmp accept
\t\tip saddr . meta l4proto @in4_proto accept
\t\tip6 saddr @in6_all accept
\t\tip6 saddr . tcp dport @in6_tcp accept
\t\tdrop
\t}
",
            chain_head("output", "oifname", [(68, 67), (546, 547)]),
            "\t\tip daddr @out4_all accept\n\t\tdrop\n\t}\n}\n"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn cross_family_icmp_types_are_refused_not_mistranslated() {
        let mut p = small();
        let g = p.groups.values_mut().next().unwrap();
        g.ingress.push(rule(
            "x",
            9,
            Direction::Ingress,
            Protocol::Icmp(IcmpMatch::Type(8)),
            cidr("2001:db8::/64"),
        ));
        for style in [Style::Sets, Style::PerRule] {
            let e = ruleset(&p, "web", "veth0", style).unwrap_err();
            assert!(e.to_string().contains("other address family"), "{e}");
        }
    }

    /// xorshift for the property below.
    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn disjoint_cover_is_disjoint_and_covers_exactly_the_union() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let boxes: Vec<Box2> = (0..1 + rng(&mut seed) % 12)
                .map(|_| {
                    let a = (rng(&mut seed) % 64) as u128;
                    let b = a + (rng(&mut seed) % 20) as u128;
                    let v = (rng(&mut seed) % 40) as u32;
                    let w = v + (rng(&mut seed) % 10) as u32;
                    ((a, b), (v, w))
                })
                .collect();
            let cover = disjoint(&boxes);
            for w in cover.windows(2) {
                assert!(
                    w[0].0.1 < w[1].0.0,
                    "address spans overlap or are unordered"
                );
            }
            for (_, vals) in &cover {
                for w in vals.windows(2) {
                    assert!(w[0].1 + 1 < w[1].0, "value spans overlap or touch");
                }
            }
            for a in 0..90u128 {
                for v in 0..55u32 {
                    let want = boxes
                        .iter()
                        .any(|((lo, hi), (vl, vh))| *lo <= a && a <= *hi && *vl <= v && v <= *vh);
                    let got = cover.iter().any(|((lo, hi), vals)| {
                        *lo <= a && a <= *hi && vals.iter().any(|(vl, vh)| *vl <= v && v <= *vh)
                    });
                    assert_eq!(got, want, "point ({a}, {v}) of {boxes:?}");
                }
            }
        }
    }

    #[test]
    fn type_code_spans_split_into_boxes() {
        assert_eq!(split_type_code((0x0803, 0x0805)), vec![((8, 8), (3, 5))]);
        assert_eq!(
            split_type_code((0x0803, 0x0b02)),
            vec![((8, 8), (3, 255)), ((9, 10), (0, 255)), ((11, 11), (0, 2))]
        );
        assert_eq!(split_type_code((0x0800, 0x09ff)), vec![((8, 9), (0, 255))]);
    }

    #[test]
    fn spans_print_as_addresses_prefixes_or_ranges() {
        assert_eq!(fmt_span(Family::V4, (0, u32::MAX as u128)), "0.0.0.0/0");
        assert_eq!(fmt_span(Family::V6, (0, u128::MAX)), "::/0");
        let a = u128::from(u32::from(Ipv4Addr::new(192, 0, 2, 0)));
        assert_eq!(fmt_span(Family::V4, (a, a + 255)), "192.0.2.0/24");
        assert_eq!(fmt_span(Family::V4, (a + 1, a + 2)), "192.0.2.1-192.0.2.2");
        assert_eq!(fmt_span(Family::V4, (a + 7, a + 7)), "192.0.2.7");
    }
}
