//! Draft network ACLs and subnets -> validated ones: rule numbers (A3, A7), actions (A5),
//! protocols with their ports or ICMP type and code (A17-A19), canonical CIDRs (A20), the
//! default NACL (A9), custom NACLs that deny all until given entries (A11), one NACL per
//! subnet (A12) and the quotas (A24).
//!
//! Like `validate`, it reports every problem into the sink and keeps going, and it must not
//! know file formats or field names: messages speak of network ACLs, entries and subnets; the
//! origin's path says where in the file. The `*` rules never reach here (A6): the front-ends
//! drop the ones an output shows, and a number above 32766 is refused as reserved.

use std::collections::{BTreeMap, HashMap, HashSet};

use ipnet::IpNet;

use super::diag::{Sink, did_you_mean};
use super::draft::{DIcmp, DNacl, DNaclEntry, DSubnet, Draft, L};
use super::validate::{canonical_cidr, device_name, report, twice};
use super::values::{self, ProtoName, family_name};
use crate::policy::{
    Direction, Family, IcmpMatch, NaclAction, NaclEntry, NaclId, NetworkAcl, Origin, PortRange,
    Protocol, Quotas, Subnet, SubnetId,
};

/// A24: network ACLs per VPC.
pub const MAX_NACLS: usize = 200;
/// The largest `nacl_rules_per_list` sg accepts: every number 1-32766 and the `*` rule.
pub const MAX_NACL_RULES_PER_LIST: u32 = 32767;
/// The id sg gives the VPC's default network ACL when the input names none (A9).
pub const DEFAULT_NACL_ID: &str = "acl-default";

/// What the lists of a NACL are called in messages: they judge traffic entering (inbound)
/// and leaving (outbound) the subnet.
fn list_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "inbound",
        Direction::Egress => "outbound",
    }
}

/// The network ACLs and the subnets, validated; the default NACL modelled when subnets need
/// one (A9). Reports into `sink`; meaningful only when no error was added.
pub(super) fn validate(
    sink: &mut Sink,
    d: &Draft,
    q: &Quotas,
) -> (BTreeMap<NaclId, NetworkAcl>, Vec<Subnet>) {
    let given = nacl_ids(sink, d);
    let has_v6 = d.subnets.iter().any(|s| s.ipv6_cidr.is_some());
    let named_default = given.iter().find(|n| n.default).map(|n| n.id.v.clone());
    // A9: every VPC has a default NACL; subnets without an association use it (A12).
    let synthesize = !d.subnets.is_empty() && named_default.is_none();
    let default_id = named_default.unwrap_or_else(|| DEFAULT_NACL_ID.to_string());
    if synthesize && let Some(n) = given.iter().find(|n| n.id.v == DEFAULT_NACL_ID) {
        sink.error_hint(
            &n.id.at,
            format!("{DEFAULT_NACL_ID} is the id of the default network ACL, and this one is not marked default (A9)"),
            "mark it as the default network ACL, or give it another id",
        );
    }
    let mut known: Vec<&str> = given.iter().map(|n| n.id.v.as_str()).collect();
    if synthesize {
        known.push(DEFAULT_NACL_ID);
    }
    let subnets = subnets(sink, d, &known, &default_id);
    let mut out = BTreeMap::new();
    for n in &given {
        let acl = nacl(sink, n, has_v6, q);
        out.insert(acl.id.clone(), acl);
    }
    if synthesize {
        let at = d.subnets[0].at.clone();
        let acl = NetworkAcl {
            id: NaclId(DEFAULT_NACL_ID.to_string()),
            is_default: true,
            inbound: a9_entries(has_v6, &at),
            outbound: a9_entries(has_v6, &at),
            origin: at,
        };
        out.insert(acl.id.clone(), acl);
    }
    let used: HashSet<&NaclId> = subnets.iter().map(|s| &s.network_acl).collect();
    // A subnet in error may be the one that meant to use the NACL: no guesswork then.
    let all_subnets = subnets.len() == d.subnets.len();
    for n in given.iter().filter(|_| all_subnets) {
        if !n.default && !used.contains(&NaclId(n.id.v.clone())) {
            sink.warn_hint(
                &n.at,
                format!(
                    "network ACL {} is associated with no subnet: it judges no traffic",
                    n.id.v
                ),
                "associate it with a subnet (A12), or remove it",
            );
        }
    }
    (out, subnets)
}

/// The NACLs whose id is valid and defined once; at most one default (A9) and 200 NACLs
/// (A24).
fn nacl_ids<'d>(sink: &mut Sink, d: &'d Draft) -> Vec<&'d DNacl> {
    let mut valid: Vec<&DNacl> = Vec::new();
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    let mut default: Option<&DNacl> = None;
    for n in &d.network_acls {
        if n.check_id
            && let Err(b) = values::nacl_id(&n.id.v)
        {
            report(sink, &n.id.at, b);
            continue;
        }
        if let Some(first) = seen.get(n.id.v.as_str()) {
            twice(
                sink,
                &n.id.at,
                format!("network ACL {} is defined twice", n.id.v),
                first,
            );
            continue;
        }
        seen.insert(&n.id.v, &n.id.at);
        if n.default {
            if let Some(first) = default {
                sink.error_hint(
                    &n.at,
                    format!(
                        "network ACLs {} and {} are both the default one (A9)",
                        first.id.v, n.id.v
                    ),
                    "a VPC has one default network ACL; the others are custom",
                );
                continue;
            }
            default = Some(n);
        }
        valid.push(n);
    }
    if valid.len() > MAX_NACLS {
        sink.error_hint(
            &valid[MAX_NACLS].at,
            format!(
                "the policy has {} network ACLs; the limit is {MAX_NACLS} per VPC (A24)",
                valid.len()
            ),
            "remove network ACLs: one can serve many subnets (A12)",
        );
    }
    valid
}

/// A9's entries for a list of the default NACL: allow everything from IPv4 (100) and, when a
/// subnet has IPv6, from IPv6 (101). The `*` rules stay implicit (A6).
fn a9_entries(has_v6: bool, at: &Origin) -> Vec<NaclEntry> {
    let mut cidrs: Vec<IpNet> = vec!["0.0.0.0/0".parse().expect("a CIDR")];
    if has_v6 {
        cidrs.push("::/0".parse().expect("a CIDR"));
    }
    (100u16..)
        .zip(cidrs)
        .map(|(number, cidr)| NaclEntry {
            number,
            action: NaclAction::Allow,
            protocol: Protocol::All,
            cidr,
            origin: at.clone(),
        })
        .collect()
}

/// One NACL with both lists: the entries given, else A9's for the default NACL and none for
/// a custom one (A11).
fn nacl(sink: &mut Sink, n: &DNacl, has_v6: bool, q: &Quotas) -> NetworkAcl {
    let id = NaclId(n.id.v.clone());
    let mut list = |dir: Direction| {
        let (given, at) = match dir {
            Direction::Ingress => (&n.inbound, &n.inbound_at),
            Direction::Egress => (&n.outbound, &n.outbound_at),
        };
        match given {
            Some(es) => entries(sink, es, &id, dir, at, q),
            None if n.default => a9_entries(has_v6, at),
            None => Vec::new(),
        }
    };
    let inbound = list(Direction::Ingress);
    let outbound = list(Direction::Egress);
    NetworkAcl {
        id,
        is_default: n.default,
        inbound,
        outbound,
        origin: n.at.clone(),
    }
}

/// One list (`dir`) of NACL `id`: each entry valid, each number once across both families
/// (A7), sorted by number (A4), within the quota per family (A24).
fn entries(
    sink: &mut Sink,
    given: &[DNaclEntry],
    id: &NaclId,
    dir: Direction,
    at: &Origin,
    q: &Quotas,
) -> Vec<NaclEntry> {
    let mut out: Vec<NaclEntry> = Vec::new();
    let mut numbers: HashMap<u16, &Origin> = HashMap::new();
    for e in given {
        // The number is checked first, so that a duplicate is reported even when the rest of
        // the entry is wrong too.
        let Some(number) = rule_number(sink, &e.number) else {
            entry(sink, e, 0);
            continue;
        };
        if let Some(first) = numbers.get(&number) {
            sink.error_hint(
                &e.number.at,
                format!(
                    "rule number {number} is used twice in the {} list of network ACL {id} (first at line {}, column {}) (A7)",
                    list_name(dir),
                    first.line,
                    first.column
                ),
                "a number is unique per network ACL and direction, IPv4 and IPv6 entries alike: renumber one",
            );
            continue;
        }
        numbers.insert(number, &e.number.at);
        out.extend(entry(sink, e, number));
    }
    out.sort_by_key(|e| e.number);
    for fam in [Family::V4, Family::V6] {
        let n = out
            .iter()
            .filter(|e| Family::of_net(&e.cidr) == fam)
            .count() as u64;
        // The `*` rule counts (A24): 19 numbered entries fit the default quota of 20.
        if n + 1 > u64::from(q.nacl_rules_per_list) {
            sink.error_hint(
                at,
                format!(
                    "network ACL {id} has {n} {} {} entries and the `*` rule: {}, above the limit of {} per network ACL, direction and family (A24)",
                    family_name(fam),
                    list_name(dir),
                    n + 1,
                    q.nacl_rules_per_list
                ),
                "remove entries, or raise quotas.nacl_rules_per_list (AWS's default is 20, adjustable to 40)",
            );
        }
    }
    out
}

/// One entry numbered `number` (checked already: A3): its action (A5), canonical CIDR (A20)
/// and protocol (A17-A19).
fn entry(sink: &mut Sink, e: &DNaclEntry, number: u16) -> Option<NaclEntry> {
    let action = action(sink, &e.action);
    let cidr = canonical_cidr(sink, &e.cidr.v, &e.cidr.at, e.cidr_expect.as_ref(), "A20");
    let protocol = cidr.and_then(|c| entry_protocol(sink, e, Family::of_net(&c)));
    Some(NaclEntry {
        number,
        action: action?,
        protocol: protocol?,
        cidr: cidr?,
        origin: e.at.clone(),
    })
}

/// A3: 1-32766; 32767 and above are AWS's (the `*` rules are 32767 and 32768).
fn rule_number(sink: &mut Sink, n: &L<i64>) -> Option<u16> {
    match n.v {
        1..=32766 => Some(n.v as u16),
        32767..=65535 => {
            sink.error_hint(
                &n.at,
                format!("rule number {} is reserved: 32767-65535 belong to AWS (A3)", n.v),
                "use a number from 1 to 32766; the `*` rule that ends each list (32767, 32768) is implicit and cannot be changed (A6)",
            );
            None
        }
        _ => {
            sink.error_hint(
                &n.at,
                format!("rule number {} is outside 1-32766 (A3)", n.v),
                "use a number from 1 to 32766; lower numbers are evaluated first (A4)",
            );
            None
        }
    }
}

/// A5: allow or deny, any case.
fn action(sink: &mut Sink, a: &L<String>) -> Option<NaclAction> {
    match a.v.trim().to_ascii_lowercase().as_str() {
        "allow" => Some(NaclAction::Allow),
        "deny" => Some(NaclAction::Deny),
        _ => {
            sink.error_hint(
                &a.at,
                format!("`{}` is not a rule action (A5)", a.v),
                "a network ACL entry allows or denies: write allow or deny",
            );
            None
        }
    }
}

/// The protocol of an entry whose CIDR is of family `fam`, normalised (A17-A19).
fn entry_protocol(sink: &mut Sink, e: &DNaclEntry, fam: Family) -> Option<Protocol> {
    let name = match values::protocol(&e.protocol.v) {
        Ok(p) => p,
        Err(b) => {
            report(sink, &e.protocol.at, b);
            return None;
        }
    };
    match (name, fam) {
        (ProtoName::All, _) => {
            ignored(sink, e, "all (-1)");
            Some(Protocol::All)
        }
        (ProtoName::Number(n), _) => {
            ignored(sink, e, &n.to_string());
            Some(Protocol::Number(n))
        }
        (ProtoName::Icmpv6, Family::V4) => {
            ignored(sink, e, "58 (icmpv6) with an IPv4 CIDR");
            Some(Protocol::Number(58))
        }
        (ProtoName::Tcp | ProtoName::Udp, _) => {
            if let Some(at) = e.icmp.as_ref().and_then(icmp_at) {
                sink.warn(
                    at,
                    format!(
                        "the ICMP type and code are ignored: a {} entry matches ports (A18)",
                        name.name()
                    ),
                );
            }
            let range = port_range(sink, e, name)?;
            Some(if name == ProtoName::Tcp {
                Protocol::Tcp(range)
            } else {
                Protocol::Udp(range)
            })
        }
        (ProtoName::Icmp | ProtoName::Icmpv6, _) => {
            if let Some((from, _)) = &e.ports {
                sink.warn(
                    &from.at,
                    format!(
                        "the port range is ignored: an {} entry matches an ICMP type and code (A19)",
                        name.name()
                    ),
                );
            }
            if name == ProtoName::Icmp && fam == Family::V6 {
                sink.warn_hint(
                    &e.protocol.at,
                    "an icmp (1) entry with an IPv6 CIDR never matches: IPv6 carries ICMPv6 (A8)",
                    "use protocol 58 (icmpv6) for IPv6 CIDRs",
                );
            }
            let m = icmp_match(sink, e, name)?;
            Some(if name == ProtoName::Icmp {
                Protocol::Icmp(m)
            } else {
                Protocol::Icmpv6(m)
            })
        }
    }
}

/// Where the first of an ICMP type and code was written.
fn icmp_at(icmp: &DIcmp) -> Option<&Origin> {
    icmp.0.as_ref().or(icmp.1.as_ref()).map(|v| &v.at)
}

/// Warns when ports or an ICMP type were given to a protocol that matches all of its traffic
/// whatever they say (A17): probably a mistake.
fn ignored(sink: &mut Sink, e: &DNaclEntry, what: &str) {
    let narrow_ports = e
        .ports
        .as_ref()
        .filter(|(a, b)| !matches!((a.v, b.v), (0, 65535) | (-1, -1)))
        .map(|(a, _)| &a.at);
    let narrow_icmp = e
        .icmp
        .as_ref()
        .filter(|(t, c)| {
            t.as_ref().is_some_and(|t| t.v != -1) || c.as_ref().is_some_and(|c| c.v != -1)
        })
        .and_then(icmp_at);
    if let Some(at) = narrow_ports.or(narrow_icmp) {
        sink.warn_hint(
            at,
            format!("the port range or ICMP type is ignored: protocol {what} matches all of its traffic (A17)"),
            "remove them, or use tcp, udp, icmp (or icmpv6 with an IPv6 CIDR) to filter by port or type",
        );
    }
}

/// A18: a tcp or udp entry's destination port range, required.
fn port_range(sink: &mut Sink, e: &DNaclEntry, name: ProtoName) -> Option<PortRange> {
    let Some((from, to)) = &e.ports else {
        sink.error_hint(
            &e.at,
            format!("a {} network ACL entry needs a port range (A18)", name.name()),
            "give one port (443), a range (1024-65535), or 0-65535 for every port; replies need the clients' ephemeral ports (A23: Linux 32768-60999, ELB and NAT 1024-65535)",
        );
        return None;
    };
    let port = |sink: &mut Sink, v: &L<i64>| match u16::try_from(v.v) {
        Ok(p) => Some(p),
        Err(_) => {
            sink.error_hint(
                &v.at,
                format!("port {} is outside 0-65535 (A18)", v.v),
                "for every port write the range 0-65535",
            );
            None
        }
    };
    let (a, b) = (port(sink, from), port(sink, to));
    let (a, b) = (a?, b?);
    if a > b {
        sink.error_hint(
            &from.at,
            format!("the port range {a}-{b} is reversed (A18)"),
            format!("write {b}-{a}"),
        );
        return None;
    }
    Some(PortRange { from: a, to: b })
}

/// A19: an ICMP entry's type and code, both required; -1 means all.
fn icmp_match(sink: &mut Sink, e: &DNaclEntry, name: ProtoName) -> Option<IcmpMatch> {
    let (Some(ty), Some(code)) = e
        .icmp
        .as_ref()
        .map_or((None, None), |(t, c)| (t.as_ref(), c.as_ref()))
    else {
        sink.error_hint(
            &e.at,
            format!("an {} network ACL entry needs an ICMP type and code (A19)", name.name()),
            "-1 means every type or code: type -1, code -1 for all; type 3, code 4 for path MTU discovery (A22)",
        );
        return None;
    };
    let value = |sink: &mut Sink, v: &L<i64>, what: &str| {
        if (-1..=255).contains(&v.v) {
            Some(v.v as i16)
        } else {
            sink.error_hint(
                &v.at,
                format!("ICMP {what} {} is outside -1..255 (A19)", v.v),
                "-1 means every type or code",
            );
            None
        }
    };
    let (t, c) = (value(sink, ty, "type"), value(sink, code, "code"));
    match (t?, c?) {
        (-1, -1) => Some(IcmpMatch::All),
        (-1, c) => {
            sink.warn(
                &code.at,
                format!("ICMP code {c} is ignored: type -1 matches every type and code (A19)"),
            );
            Some(IcmpMatch::All)
        }
        (t, -1) => Some(IcmpMatch::Type(t as u8)),
        (t, c) => Some(IcmpMatch::TypeCode(t as u8, c as u8)),
    }
}

/// The subnets, valid and sorted by id: each once, with one IPv4 and at most one IPv6 CIDR,
/// none overlapping another, each with one NACL of `known` (`default_id` when it names none:
/// A12).
fn subnets(sink: &mut Sink, d: &Draft, known: &[&str], default_id: &str) -> Vec<Subnet> {
    let mut out: Vec<Subnet> = Vec::new();
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    // Every CIDR accepted so far, with its subnet and where it was written.
    let mut taken: Vec<(IpNet, &str, &Origin)> = Vec::new();
    for s in &d.subnets {
        if s.check_id
            && let Err(b) = values::subnet_id(&s.id.v)
        {
            report(sink, &s.id.at, b);
            continue;
        }
        if let Some(first) = seen.get(s.id.v.as_str()) {
            twice(
                sink,
                &s.id.at,
                format!("subnet {} is defined twice", s.id.v),
                first,
            );
            continue;
        }
        seen.insert(&s.id.v, &s.id.at);
        let cidrs = subnet_cidrs(sink, s, &mut taken);
        let nacl = subnet_nacl(sink, s, known, default_id);
        let device_ok = s
            .router_device
            .as_ref()
            .is_none_or(|dev| device_name(sink, dev));
        if let (Some(cidrs), Some(network_acl), true) = (cidrs, nacl, device_ok) {
            out.push(Subnet {
                id: SubnetId(s.id.v.clone()),
                cidrs,
                network_acl,
                router_device: s.router_device.as_ref().map(|d| d.v.clone()),
                origin: s.at.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A subnet's CIDRs: its IPv4 one, then its IPv6 one if any; none overlaps a CIDR in `taken`
/// (to which they are added).
fn subnet_cidrs<'d>(
    sink: &mut Sink,
    s: &'d DSubnet,
    taken: &mut Vec<(IpNet, &'d str, &'d Origin)>,
) -> Option<Vec<IpNet>> {
    let Some(v4) = &s.cidr else {
        sink.error_hint(
            &s.at,
            format!("subnet {} has no IPv4 CIDR (A12)", s.id.v),
            "a subnet has exactly one IPv4 CIDR, and at most one IPv6 CIDR",
        );
        return None;
    };
    let hint = |f: Family| {
        (
            f,
            format!(
                "a subnet has one IPv4 CIDR and at most one IPv6 CIDR, each in its own field; this one takes {}",
                family_name(f)
            ),
        )
    };
    let mut given: Vec<(&L<String>, Family)> = vec![(v4, Family::V4)];
    given.extend(s.ipv6_cidr.iter().map(|c| (c, Family::V6)));
    let mut cidrs = Vec::new();
    let mut ok = true;
    for (c, fam) in given {
        let Some(net) = canonical_cidr(sink, &c.v, &c.at, Some(&hint(fam)), "A20") else {
            ok = false;
            continue;
        };
        if let Some((other, id, at)) = taken
            .iter()
            .find(|(t, ..)| t.contains(&net.network()) || net.contains(&t.network()))
        {
            sink.error_hint(
                &c.at,
                format!(
                    "subnet {}'s CIDR {net} overlaps {other} of subnet {id} (line {}, column {})",
                    s.id.v, at.line, at.column
                ),
                "the subnets of a VPC never overlap: an address belongs to one subnet (A12)",
            );
            ok = false;
            continue;
        }
        taken.push((net, &s.id.v, &c.at));
        cidrs.push(net);
    }
    ok.then_some(cidrs)
}

/// The NACL a subnet names, or the default one (A12).
fn subnet_nacl(sink: &mut Sink, s: &DSubnet, known: &[&str], default_id: &str) -> Option<NaclId> {
    let Some(n) = &s.network_acl else {
        return Some(NaclId(default_id.to_string()));
    };
    if known.contains(&n.v.as_str()) {
        return Some(NaclId(n.v.clone()));
    }
    let hint = match did_you_mean(&n.v, known) {
        Some(k) => format!("did you mean {k}?"),
        None => {
            "define the network ACL, or leave the subnet with the default one (A12)".to_string()
        }
    };
    sink.error_hint(&n.at, format!("network ACL {} is not defined", n.v), hint);
    None
}
