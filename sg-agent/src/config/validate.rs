//! Draft -> validated `Policy`: every F and Q line of SEMANTICS.md, references, duplicates,
//! address families, timeouts, defaults (D1-D3) and derived rule ids; network ACLs and
//! subnets by `nacl`, called from here.
//!
//! Reports every problem it finds into the sink and keeps going with what is valid, so one run
//! shows all mistakes. It must not know file formats or field names: messages speak of
//! groups, rules, ports and peers; the origin's path says where in the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::diag::{Sink, did_you_mean};
use super::draft::{
    DGroup, DInterface, DPeer, DPrefixList, DRule, DTimeouts, Draft, L, TimeoutField,
};
use super::nacl::{self, MAX_NACL_RULES_PER_LIST};
use super::values::{self, Bad, ProtoName, family_name};
use crate::policy::{
    Direction, Family, Group, GroupId, IcmpMatch, Interface, Origin, Peer, Policy, PortRange,
    PrefixList, PrefixListId, Protocol, Quotas, Rule, RuleId, Timeouts,
};

/// AWS's bound on rules per group x groups per interface (Q2).
pub const MAX_RULES_PER_INTERFACE: u32 = 1000;
/// AWS's hard cap on groups per interface (Q2).
pub const MAX_GROUPS_PER_INTERFACE: u32 = 16;

/// Bounds per timeout (seconds). AWS's for the three it documents (C5); sg's for the others
/// (docs/policy-format.md explains them).
pub(crate) const TIMEOUT_BOUNDS: [(TimeoutField, &str, u32, u32); 7] = [
    (TimeoutField::TcpEstablished, "TCP established", 60, 432_000),
    (TimeoutField::TcpEmbryonic, "TCP embryonic", 5, 300),
    (TimeoutField::TcpClosing, "TCP closing", 5, 300),
    (TimeoutField::UdpSingle, "UDP single exchange", 30, 60),
    (TimeoutField::UdpStream, "UDP stream", 60, 180),
    (TimeoutField::Icmp, "ICMP", 5, 300),
    (TimeoutField::Other, "other protocols", 60, 3600),
];

pub(super) fn report(sink: &mut Sink, at: &Origin, bad: Bad) {
    match bad.hint {
        Some(h) => sink.error_hint(at, bad.message, h),
        None => sink.error(at, bad.message),
    }
}

/// The text hashed into a derived rule id. Documented in docs/policy-format.md; changing it
/// changes every derived id.
pub fn canonical_rule_text(group: &GroupId, dir: Direction, p: &Protocol, peer: &Peer) -> String {
    fn icmp(m: &IcmpMatch) -> String {
        match m {
            IcmpMatch::All => "-1:-1".into(),
            IcmpMatch::Type(t) => format!("{t}:-1"),
            IcmpMatch::TypeCode(t, c) => format!("{t}:{c}"),
        }
    }
    let proto = match p {
        Protocol::All => "all".to_string(),
        Protocol::Tcp(r) => format!("tcp:{}-{}", r.from, r.to),
        Protocol::Udp(r) => format!("udp:{}-{}", r.from, r.to),
        Protocol::Icmp(m) => format!("icmp:{}", icmp(m)),
        Protocol::Icmpv6(m) => format!("icmpv6:{}", icmp(m)),
        Protocol::Number(n) => format!("proto:{n}"),
    };
    let peer = match peer {
        Peer::Cidr(n) => format!("cidr:{n}"),
        Peer::Group(g) => format!("group:{g}"),
        Peer::PrefixList(p) => format!("pl:{p}"),
    };
    format!("{group}|{}|{proto}|{peer}", dir.name())
}

/// `sgr-` + the first 17 hex digits of SHA-256 over [`canonical_rule_text`].
pub fn derive_rule_id(group: &GroupId, dir: Direction, p: &Protocol, peer: &Peer) -> RuleId {
    let digest = Sha256::digest(canonical_rule_text(group, dir, p, peer).as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(21);
    id.push_str("sgr-");
    for b in digest.iter().take(9) {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id.truncate(21); // sgr- and 17 hex digits
    RuleId(id)
}

fn timeouts(sink: &mut Sink, base: Timeouts, given: &DTimeouts) -> Timeouts {
    let mut t = base;
    for (field, v) in &given.values {
        let (_, name, lo, hi) = TIMEOUT_BOUNDS
            .iter()
            .find(|(f, ..)| f == field)
            .copied()
            .expect("every field has bounds");
        let aws = matches!(
            field,
            TimeoutField::TcpEstablished | TimeoutField::UdpSingle | TimeoutField::UdpStream
        );
        if v.v < i64::from(lo) || v.v > i64::from(hi) {
            sink.error_hint(
                &v.at,
                format!(
                    "the {name} timeout {} s is outside {} bounds {lo}..{hi} s (C5)",
                    v.v,
                    if aws { "AWS's" } else { "sg's" }
                ),
                format!("use a value from {lo} to {hi}"),
            );
            continue;
        }
        let s = v.v as u32;
        match field {
            TimeoutField::TcpEstablished => t.tcp_established = s,
            TimeoutField::TcpEmbryonic => t.tcp_embryonic = s,
            TimeoutField::TcpClosing => t.tcp_closing = s,
            TimeoutField::UdpSingle => t.udp_single = s,
            TimeoutField::UdpStream => t.udp_stream = s,
            TimeoutField::Icmp => t.icmp = s,
            TimeoutField::Other => t.other = s,
        }
    }
    t
}

fn quotas(sink: &mut Sink, d: &Draft) -> Quotas {
    let mut q = Quotas::default();
    let Some(dq) = &d.quotas else { return q };
    let mut ok = true;
    if let Some(r) = &dq.rules_per_group {
        if (1..=i64::from(MAX_RULES_PER_INTERFACE)).contains(&r.v) {
            q.rules_per_group = r.v as u32;
        } else {
            ok = false;
            sink.error_hint(
                &r.at,
                format!(
                    "rules_per_group {} is outside 1..{MAX_RULES_PER_INTERFACE}",
                    r.v
                ),
                "AWS's default is 60 (Q1)",
            );
        }
    }
    if let Some(g) = &dq.groups_per_interface {
        if (1..=i64::from(MAX_GROUPS_PER_INTERFACE)).contains(&g.v) {
            q.groups_per_interface = g.v as u32;
        } else {
            ok = false;
            sink.error_hint(
                &g.at,
                format!(
                    "groups_per_interface {} is outside 1..{MAX_GROUPS_PER_INTERFACE}",
                    g.v
                ),
                "AWS's default is 5 and its maximum 16 (Q2)",
            );
        }
    }
    if let Some(n) = &dq.nacl_rules_per_list {
        if (1..=i64::from(MAX_NACL_RULES_PER_LIST)).contains(&n.v) {
            q.nacl_rules_per_list = n.v as u32;
        } else {
            sink.error_hint(
                &n.at,
                format!(
                    "nacl_rules_per_list {} is outside 1..{MAX_NACL_RULES_PER_LIST}",
                    n.v
                ),
                "AWS's default is 20 (the `*` rule included) and its maximum 40 (A24); sg lets a lab raise it",
            );
        }
    }
    let product = q.rules_per_group * q.groups_per_interface;
    if ok && product > MAX_RULES_PER_INTERFACE {
        sink.error_hint(
            &dq.at,
            format!(
                "quotas allow {} rules per group x {} groups per interface = {product}, above AWS's limit of {MAX_RULES_PER_INTERFACE} (Q2)",
                q.rules_per_group, q.groups_per_interface
            ),
            "lower rules_per_group or groups_per_interface",
        );
    }
    q
}

struct Ctx<'a> {
    sink: &'a mut Sink,
    groups: HashMap<String, usize>,
    prefix_lists: BTreeMap<PrefixListId, PrefixList>,
    /// Placeholder lists (defined elsewhere): their family is unknown.
    external_lists: Vec<PrefixListId>,
}

impl Ctx<'_> {
    fn known_groups(&self) -> Vec<&str> {
        self.groups.keys().map(String::as_str).collect()
    }
}

fn prefix_lists(ctx: &mut Ctx, d: &Draft) {
    let mut seen: HashMap<String, Origin> = HashMap::new();
    for pl in &d.prefix_lists {
        let sink = &mut *ctx.sink;
        if pl.check_id
            && let Err(b) = values::prefix_list_id(&pl.id.v)
        {
            report(sink, &pl.id.at, b);
            continue;
        }
        if let Some(first) = seen.get(&pl.id.v) {
            twice(
                sink,
                &pl.id.at,
                format!("prefix list {} is defined twice", pl.id.v),
                first,
            );
            continue;
        }
        seen.insert(pl.id.v.clone(), pl.id.at.clone());
        let id = PrefixListId(pl.id.v.clone());
        if pl.external {
            ctx.external_lists.push(id.clone());
            ctx.prefix_lists.insert(
                id.clone(),
                PrefixList {
                    id,
                    name: String::new(),
                    family: Family::V4,
                    max_entries: 0,
                    version: 0,
                    entries: Vec::new(),
                    origin: pl.at.clone(),
                },
            );
            continue;
        }
        if let Some(list) = prefix_list(sink, pl, id.clone()) {
            ctx.prefix_lists.insert(id, list);
        }
    }
}

/// A prefix list defined here (not a placeholder): its name, entries, family, size, version.
fn prefix_list(sink: &mut Sink, pl: &DPrefixList, id: PrefixListId) -> Option<PrefixList> {
    let name = match &pl.name {
        Some(n) if n.v.chars().count() > 255 => {
            sink.error(&n.at, "a prefix list name has at most 255 characters");
            n.v.clone()
        }
        Some(n) => n.v.clone(),
        None => pl.id.v.clone(),
    };
    let mut family = pl.family.as_ref().map(|f| f.v);
    let entries = prefix_list_entries(sink, pl, &mut family);
    let Some(family) = family else {
        sink.error_hint(
            &pl.at,
            format!("prefix list {} has no address family", pl.id.v),
            "give its family (ipv4 or ipv6)",
        );
        return None;
    };
    let max_entries = match &pl.max_entries {
        Some(m) if !(1..=1000).contains(&m.v) => {
            sink.error(&m.at, format!("max entries {} is outside 1..1000", m.v));
            return None;
        }
        Some(m) if (m.v as usize) < entries.len() => {
            sink.error_hint(
                &m.at,
                format!(
                    "prefix list {} has {} entries but max entries is {}",
                    pl.id.v,
                    entries.len(),
                    m.v
                ),
                "raise max entries (it is what rules using the list count against quotas, R4)",
            );
            return None;
        }
        Some(m) => m.v as u32,
        None => entries.len().max(1) as u32,
    };
    let version = match &pl.version {
        Some(v) if v.v < 1 => {
            sink.error(&v.at, format!("version {} must be 1 or more", v.v));
            return None;
        }
        Some(v) => v.v as u64,
        None => 1,
    };
    Some(PrefixList {
        id,
        name,
        family,
        max_entries,
        version,
        entries,
        origin: pl.at.clone(),
    })
}

/// The entries of a prefix list, canonical and once each. `family` is the list's: the one
/// it declares, else that of its first entry; an entry of the other family is an error (R4).
fn prefix_list_entries(
    sink: &mut Sink,
    pl: &DPrefixList,
    family: &mut Option<Family>,
) -> Vec<ipnet::IpNet> {
    let mut entries = Vec::new();
    let mut entry_seen: HashMap<ipnet::IpNet, Origin> = HashMap::new();
    for e in &pl.entries {
        if let Some(desc) = &e.description
            && let Err(b) = values::description(&desc.v)
        {
            report(sink, &desc.at, b);
        }
        let (net, host_bits) = match values::cidr(&e.cidr.v) {
            Ok(v) => v,
            Err(b) => {
                report(sink, &e.cidr.at, b);
                continue;
            }
        };
        if host_bits {
            sink.warn(
                &e.cidr.at,
                format!("`{}` has host bits set; using {net} (F5)", e.cidr.v.trim()),
            );
        }
        let f = Family::of_net(&net);
        match *family {
            None => *family = Some(f),
            Some(want) if want != f => {
                sink.error_hint(
                    &e.cidr.at,
                    format!(
                        "{net} is an {} CIDR in an {} prefix list",
                        family_name(f),
                        family_name(want)
                    ),
                    "a prefix list holds one address family (R4); use a second list for the other family",
                );
                continue;
            }
            Some(_) => {}
        }
        if let Some(first) = entry_seen.get(&net) {
            twice(
                sink,
                &e.cidr.at,
                format!("{net} is listed twice in prefix list {}", pl.id.v),
                first,
            );
            continue;
        }
        entry_seen.insert(net, e.cidr.at.clone());
        entries.push(net);
    }
    entries
}

/// Reports `what` (a thing defined or listed twice) at `at`, pointing at the first one.
pub(super) fn twice(sink: &mut Sink, at: &Origin, what: String, first: &Origin) {
    sink.error(
        at,
        format!(
            "{what} (first at line {}, column {})",
            first.line, first.column
        ),
    );
}

fn check_text(sink: &mut Sink, t: &Option<L<String>>) {
    if let Some(t) = t
        && let Err(b) = values::description(&t.v)
    {
        report(sink, &t.at, b);
    }
}

fn port(sink: &mut Sink, v: &L<i64>) -> Option<u16> {
    match u16::try_from(v.v) {
        Ok(p) => Some(p),
        Err(_) => {
            sink.error_hint(
                &v.at,
                format!("port {} is outside 0-65535 (F3)", v.v),
                "for every port write the range 0-65535",
            );
            None
        }
    }
}

fn icmp_value(sink: &mut Sink, v: &L<i64>, what: &str) -> Option<i16> {
    if (-1..=255).contains(&v.v) {
        Some(v.v as i16)
    } else {
        sink.error_hint(
            &v.at,
            format!("ICMP {what} {} is outside -1..255 (F4)", v.v),
            "-1 means every type or code",
        );
        None
    }
}

fn protocol(sink: &mut Sink, r: &DRule) -> Option<Protocol> {
    let name = match values::protocol(&r.protocol.v) {
        Ok(p) => p,
        Err(b) => {
            report(sink, &r.protocol.at, b);
            return None;
        }
    };
    match name {
        ProtoName::All | ProtoName::Number(_) => Some(any_port_protocol(sink, r, name)),
        ProtoName::Tcp | ProtoName::Udp => {
            let range = port_range(sink, r, name)?;
            Some(if name == ProtoName::Tcp {
                Protocol::Tcp(range)
            } else {
                Protocol::Udp(range)
            })
        }
        ProtoName::Icmp | ProtoName::Icmpv6 => {
            let m = icmp_match(sink, r, name)?;
            Some(if name == ProtoName::Icmp {
                Protocol::Icmp(m)
            } else {
                Protocol::Icmpv6(m)
            })
        }
    }
}

/// `all` or a protocol number: every port whatever range is given (F2).
fn any_port_protocol(sink: &mut Sink, r: &DRule, name: ProtoName) -> Protocol {
    // Say so when a range that is not "everything" was written: probably a mistake.
    let narrow = match (&r.from, &r.to) {
        (None, None) => false,
        (Some(a), Some(b)) => !((a.v == -1 && b.v == -1) || (a.v == 0 && b.v == 65535)),
        _ => true,
    };
    if narrow {
        let at = r.from.as_ref().or(r.to.as_ref()).map_or(&r.at, |v| &v.at);
        sink.warn_hint(
            at,
            format!(
                "the port range is ignored: protocol {} allows every port (F2)",
                if name == ProtoName::All {
                    "all (-1)".to_string()
                } else {
                    name.name()
                }
            ),
            "remove the ports, or use tcp/udp to filter by port",
        );
    }
    match name {
        ProtoName::Number(n) => Protocol::Number(n),
        _ => Protocol::All,
    }
}

/// The port range of a tcp or udp rule (F3).
fn port_range(sink: &mut Sink, r: &DRule, name: ProtoName) -> Option<PortRange> {
    let (Some(f), Some(t)) = (&r.from, &r.to) else {
        sink.error_hint(
            &r.at,
            format!("a {} rule needs a port range (F3)", name.name()),
            "give one port (443), a range (1024-65535), or 0-65535 for every port",
        );
        return None;
    };
    let (from, to) = (port(sink, f), port(sink, t));
    let (from, to) = (from?, to?);
    if from > to {
        sink.error_hint(
            &f.at,
            format!("the port range {from}-{to} is reversed (F3)"),
            format!("write {to}-{from}"),
        );
        return None;
    }
    Some(PortRange { from, to })
}

/// The type and code of an icmp or icmpv6 rule (F4).
fn icmp_match(sink: &mut Sink, r: &DRule, name: ProtoName) -> Option<IcmpMatch> {
    let (ty, code) = match (&r.from, &r.to) {
        (None, None) if name == ProtoName::Icmpv6 => return Some(IcmpMatch::All),
        (None, _) => {
            sink.error_hint(
                &r.at,
                format!("an {} rule needs an ICMP type (F4)", name.name()),
                "give the type (8 is echo request) and optionally the code; -1 means every type",
            );
            return None;
        }
        (Some(ty), code) => (ty, code),
    };
    let t = icmp_value(sink, ty, "type");
    let c = match code {
        Some(c) => icmp_value(sink, c, "code"),
        None => Some(-1),
    };
    let (t, c) = (t?, c?);
    match (t, c) {
        (-1, -1) => Some(IcmpMatch::All),
        (-1, c) => {
            let at = code.as_ref().map_or(&r.at, |c| &c.at);
            sink.error_hint(
                at,
                format!("ICMP type -1 (every type) cannot take code {c} (F4)"),
                "type -1 forces code -1: remove the code or write -1",
            );
            None
        }
        (t, -1) => Some(IcmpMatch::Type(t as u8)),
        (t, c) => Some(IcmpMatch::TypeCode(t as u8, c as u8)),
    }
}

/// A CIDR written at `at`, canonicalised (host bits cleared, with a warning citing `id`), of
/// the family `expect` names when it names one (its hint said otherwise). Shared by group
/// rules (F5), network ACL entries (A20) and subnets.
pub(super) fn canonical_cidr(
    sink: &mut Sink,
    text: &str,
    at: &Origin,
    expect: Option<&(Family, String)>,
    id: &str,
) -> Option<ipnet::IpNet> {
    let (net, host_bits) = match values::cidr(text) {
        Ok(v) => v,
        Err(b) => {
            report(sink, at, b);
            return None;
        }
    };
    let f = Family::of_net(&net);
    if let Some((want, hint)) = expect
        && *want != f
    {
        sink.error_hint(
            at,
            format!(
                "{net} is an {} CIDR where an {} CIDR is expected",
                family_name(f),
                family_name(*want)
            ),
            hint.clone(),
        );
        return None;
    }
    if host_bits {
        sink.warn(
            at,
            format!("`{}` has host bits set; using {net} ({id})", text.trim()),
        );
    }
    Some(net)
}

fn peer(ctx: &mut Ctx, r: &DRule, proto: Option<&Protocol>) -> Option<Peer> {
    let at = &r.peer.at;
    let (p, fam) = match &r.peer.v {
        DPeer::Cidr { text, expect } => {
            let net = canonical_cidr(ctx.sink, text, at, expect.as_ref(), "F5")?;
            (Peer::Cidr(net), Some(Family::of_net(&net)))
        }
        DPeer::Group(g) => {
            if !ctx.groups.contains_key(g) {
                let known = ctx.known_groups();
                let hint = match did_you_mean(g, &known) {
                    Some(k) => format!("did you mean {k}?"),
                    None => "define the group, or check the id".to_string(),
                };
                ctx.sink
                    .error_hint(at, format!("security group {g} is not defined"), hint);
                return None;
            }
            (Peer::Group(GroupId(g.clone())), None)
        }
        DPeer::PrefixList(p) => {
            let id = PrefixListId(p.clone());
            let Some(pl) = ctx.prefix_lists.get(&id) else {
                let known: Vec<&str> = ctx.prefix_lists.keys().map(PrefixListId::as_str).collect();
                let hint = match did_you_mean(p, &known) {
                    Some(k) => format!("did you mean {k}?"),
                    None => "define the prefix list, or check the id".to_string(),
                };
                ctx.sink
                    .error_hint(at, format!("prefix list {p} is not defined"), hint);
                return None;
            };
            let fam = (!ctx.external_lists.contains(&id)).then_some(pl.family);
            (Peer::PrefixList(id), fam)
        }
    };
    // ICMP is IPv4's and ICMPv6 is IPv6's: a peer of the other family can never match.
    let bad = match (proto, fam) {
        (Some(Protocol::Icmp(_)), Some(Family::V6)) => Some(("icmp", "IPv6", "icmpv6")),
        (Some(Protocol::Icmpv6(_)), Some(Family::V4)) => Some(("icmpv6", "IPv4", "icmp")),
        _ => None,
    };
    if let Some((proto, fam, other)) = bad {
        ctx.sink.error_hint(
            at,
            format!("an {proto} rule cannot have an {fam} peer: the families differ"),
            format!("use protocol {other} for {fam} peers"),
        );
        return None;
    }
    Some(p)
}

struct RuleCheck<'a> {
    /// (direction, protocol, peer) -> where first written, for this group.
    content: HashMap<(Direction, Protocol, Peer), Origin>,
    /// Rule ids across the policy.
    ids: &'a mut HashMap<RuleId, Origin>,
}

fn rule(ctx: &mut Ctx, check: &mut RuleCheck, gid: &GroupId, r: &DRule) -> Option<Rule> {
    let proto = protocol(ctx.sink, r);
    let peer = peer(ctx, r, proto.as_ref());
    check_text(ctx.sink, &r.description);
    let given_id = match &r.id {
        Some(id) => match values::rule_id(&id.v) {
            Ok(()) => Some(RuleId(id.v.clone())),
            Err(b) => {
                report(ctx.sink, &id.at, b);
                return None;
            }
        },
        None => None,
    };
    let (proto, peer) = (proto?, peer?);
    let key = (r.direction, proto, peer.clone());
    if let Some(first) = check.content.get(&key) {
        ctx.sink.error_hint(
            &r.at,
            format!(
                "duplicate rule: group {gid} already has this {} rule (line {}, column {})",
                r.direction.name(),
                first.line,
                first.column
            ),
            "AWS rejects duplicate rules (same protocol, ports and peer); remove one",
        );
        return None;
    }
    check.content.insert(key, r.at.clone());
    let id = given_id.unwrap_or_else(|| derive_rule_id(gid, r.direction, &proto, &peer));
    let id_at = r.id.as_ref().map_or(&r.at, |i| &i.at);
    if let Some(first) = check.ids.get(&id) {
        ctx.sink.error_hint(
            id_at,
            format!(
                "rule id {id} is used twice (first at line {}, column {})",
                first.line, first.column
            ),
            "rule ids are unique; remove the id to have one derived from the rule",
        );
        return None;
    }
    check.ids.insert(id.clone(), id_at.clone());
    Some(Rule {
        id,
        group: gid.clone(),
        direction: r.direction,
        protocol: proto,
        peer,
        description: r.description.as_ref().map(|d| d.v.clone()),
        origin: r.at.clone(),
    })
}

fn default_rule(dir: Direction, peer: DPeer, at: &Origin) -> DRule {
    DRule {
        direction: dir,
        protocol: L::new("-1".into(), at.clone()),
        from: None,
        to: None,
        peer: L::new(peer, at.clone()),
        id: None,
        description: None,
        at: at.clone(),
    }
}

fn groups(ctx: &mut Ctx, d: &Draft, q: &Quotas) -> BTreeMap<GroupId, Group> {
    // Pass 1: ids, so rules may reference groups defined later in the file.
    let valid = group_ids(ctx, d);
    // Pass 2: their rules.
    let mut ids: HashMap<RuleId, Origin> = HashMap::new();
    let mut out = BTreeMap::new();
    for g in valid {
        let group = group(ctx, g, &mut ids);
        rule_quota(ctx, g, &group, q);
        out.insert(group.id.clone(), group);
    }
    out
}

/// The groups whose id is valid and defined once, indexed in `ctx.groups`.
fn group_ids<'d>(ctx: &mut Ctx, d: &'d Draft) -> Vec<&'d DGroup> {
    let mut valid: Vec<&DGroup> = Vec::new();
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for g in &d.groups {
        if g.check_id
            && let Err(b) = values::group_id(&g.id.v)
        {
            report(ctx.sink, &g.id.at, b);
            continue;
        }
        if let Some(first) = seen.get(g.id.v.as_str()) {
            twice(
                ctx.sink,
                &g.id.at,
                format!("security group {} is defined twice", g.id.v),
                first,
            );
            continue;
        }
        seen.insert(&g.id.v, &g.id.at);
        ctx.groups.insert(g.id.v.clone(), valid.len());
        valid.push(g);
    }
    valid
}

/// One group with its rules: the lists it gives, or the defaults (D1-D3), then the rules
/// added by other resources. `ids` holds the rule ids of every group so far.
fn group(ctx: &mut Ctx, g: &DGroup, ids: &mut HashMap<RuleId, Origin>) -> Group {
    let gid = GroupId(g.id.v.clone());
    check_text(ctx.sink, &g.name);
    check_text(ctx.sink, &g.description);
    let mut check = RuleCheck {
        content: HashMap::new(),
        ids,
    };
    let mut group = Group {
        id: gid.clone(),
        name: g.name.as_ref().map_or_else(
            || {
                if g.default_group {
                    "default".to_string()
                } else {
                    g.id.v.clone()
                }
            },
            |n| n.v.clone(),
        ),
        description: g
            .description
            .as_ref()
            .map(|d| d.v.clone())
            .unwrap_or_default(),
        ingress: Vec::new(),
        egress: Vec::new(),
        origin: g.at.clone(),
    };
    // A group defined elsewhere has only the rules the input adds to it (a template's
    // SecurityGroupIngress/Egress on an imported group).
    if g.external && g.extra.is_empty() {
        return group;
    }
    let (ingress_default, egress_default) = (default_ingress(g), default_egress(g));
    let ingress: &[DRule] = g.ingress.as_deref().unwrap_or(&ingress_default);
    let egress: &[DRule] = g.egress.as_deref().unwrap_or(&egress_default);
    for r in ingress.iter().chain(egress).chain(&g.extra) {
        if let Some(rule) = rule(ctx, &mut check, &gid, r) {
            match rule.direction {
                Direction::Ingress => group.ingress.push(rule),
                Direction::Egress => group.egress.push(rule),
            }
        }
    }
    group
}

/// The ingress rules of a group that lists none: D3 for the default group (everything from
/// its own members), else none (D1).
fn default_ingress(g: &DGroup) -> Vec<DRule> {
    if !g.default_group {
        return Vec::new();
    }
    vec![default_rule(
        Direction::Ingress,
        DPeer::Group(g.id.v.clone()),
        &g.ingress_at,
    )]
}

/// The egress rules of a group that lists none (D2): all protocols to anywhere, both families.
fn default_egress(g: &DGroup) -> Vec<DRule> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .map(|c| {
            default_rule(
                Direction::Egress,
                DPeer::Cidr {
                    text: c.to_string(),
                    expect: None,
                },
                &g.egress_at,
            )
        })
        .collect()
}

fn rule_quota(ctx: &mut Ctx, g: &DGroup, group: &Group, q: &Quotas) {
    for dir in Direction::BOTH {
        let (mut v4, mut v6) = (0u64, 0u64);
        for r in group.rules(dir) {
            match &r.peer {
                Peer::Cidr(n) => match Family::of_net(n) {
                    Family::V4 => v4 += 1,
                    Family::V6 => v6 += 1,
                },
                Peer::Group(_) => {
                    v4 += 1;
                    v6 += 1;
                }
                Peer::PrefixList(p) => {
                    if let Some(pl) = ctx.prefix_lists.get(p) {
                        match pl.family {
                            Family::V4 => v4 += u64::from(pl.max_entries),
                            Family::V6 => v6 += u64::from(pl.max_entries),
                        }
                    }
                }
            }
        }
        let at = match dir {
            Direction::Ingress => &g.ingress_at,
            Direction::Egress => &g.egress_at,
        };
        for (n, fam) in [(v4, Family::V4), (v6, Family::V6)] {
            if n > u64::from(q.rules_per_group) {
                ctx.sink.error_hint(
                    at,
                    format!(
                        "security group {} has {n} {} {} rules; the limit is {} per group and direction (Q1)",
                        group.id,
                        family_name(fam),
                        dir.name(),
                        q.rules_per_group
                    ),
                    "prefix lists count as their max entries; remove rules, or raise quotas.rules_per_group (rules_per_group x groups_per_interface stays <= 1000)",
                );
            }
        }
    }
}

fn interfaces(ctx: &mut Ctx, d: &Draft, q: &Quotas, defaults: Timeouts) -> Vec<Interface> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, &Origin> = HashMap::new();
    let mut owners: HashMap<IpAddr, (&str, &Origin)> = HashMap::new();
    for i in &d.interfaces {
        let sink = &mut *ctx.sink;
        let mut ok = true;
        if let Some(first) = names.get(i.name.v.as_str()) {
            twice(
                sink,
                &i.name.at,
                format!("interface {} is defined twice", i.name.v),
                first,
            );
            ok = false;
        } else {
            names.insert(&i.name.v, &i.name.at);
        }
        if let Some(dev) = &i.device {
            ok &= device_name(sink, dev);
        }
        let (addresses, addresses_ok) = interface_addresses(sink, i, &mut owners);
        let (groups, groups_ok) = interface_groups(ctx, i);
        ok &= addresses_ok & groups_ok;
        let sink = &mut *ctx.sink;
        ok &= group_count(sink, i, q);
        if i.addresses.is_empty() && i.device.is_none() {
            sink.warn_hint(
                &i.at,
                format!("interface {} has neither addresses nor a device", i.name.v),
                "the agent cannot find it on a host, and rules referencing its groups allow no address of it (R1)",
            );
        }
        let t = timeouts(sink, defaults, &i.timeouts);
        if ok {
            out.push(Interface {
                name: i.name.v.clone(),
                instance: i.instance.clone(),
                device: i.device.as_ref().map(|d| d.v.clone()),
                addresses,
                groups,
                timeouts: t,
                origin: i.at.clone(),
            });
        }
    }
    out
}

/// Whether `dev` can name a Linux interface (reported when not).
pub(super) fn device_name(sink: &mut Sink, dev: &L<String>) -> bool {
    let v = &dev.v;
    let bad =
        v.is_empty() || v.len() > 15 || v.contains(['/', ' ', '\t', ':']) || v == "." || v == "..";
    if bad {
        sink.error_hint(
            &dev.at,
            format!("`{v}` is not a Linux interface name"),
            "1-15 characters, no `/`, `:` or spaces (see `ip link`)",
        );
    }
    !bad
}

/// An interface's addresses, each owned by one interface (`owners`: the owners so far), and
/// whether all were valid.
fn interface_addresses<'d>(
    sink: &mut Sink,
    i: &'d DInterface,
    owners: &mut HashMap<IpAddr, (&'d str, &'d Origin)>,
) -> (Vec<IpAddr>, bool) {
    let mut ok = true;
    let mut addresses = Vec::new();
    for a in &i.addresses {
        match values::address(&a.v) {
            Ok(addr) => {
                if let Some((owner, first)) = owners.get(&addr) {
                    sink.error_hint(
                        &a.at,
                        format!(
                            "address {addr} is already assigned to interface {owner} (line {}, column {})",
                            first.line, first.column
                        ),
                        "an address belongs to one interface",
                    );
                    ok = false;
                } else {
                    owners.insert(addr, (&i.name.v, &a.at));
                    addresses.push(addr);
                }
            }
            Err(b) => {
                report(sink, &a.at, b);
                ok = false;
            }
        }
    }
    (addresses, ok)
}

/// An interface's groups, each defined and listed once, and whether all were.
fn interface_groups(ctx: &mut Ctx, i: &DInterface) -> (Vec<GroupId>, bool) {
    let mut ok = true;
    let mut groups: Vec<GroupId> = Vec::new();
    for g in &i.groups {
        if !ctx.groups.contains_key(&g.v) {
            let known = ctx.known_groups();
            let hint = match did_you_mean(&g.v, &known) {
                Some(k) => format!("did you mean {k}?"),
                None => "define the group, or check the id".to_string(),
            };
            ctx.sink.error_hint(
                &g.at,
                format!("security group {} is not defined", g.v),
                hint,
            );
            ok = false;
            continue;
        }
        let gid = GroupId(g.v.clone());
        if groups.contains(&gid) {
            ctx.sink.error(
                &g.at,
                format!("group {} is listed twice on interface {}", g.v, i.name.v),
            );
            ok = false;
            continue;
        }
        groups.push(gid);
    }
    (groups, ok)
}

/// Whether an interface carries at least one group and at most the quota (Q2).
fn group_count(sink: &mut Sink, i: &DInterface, q: &Quotas) -> bool {
    let mut ok = true;
    if i.groups.is_empty() {
        sink.error_hint(
            &i.groups_at,
            format!("interface {} carries no security group", i.name.v),
            "EC2 gives every interface at least one group; list its groups",
        );
        ok = false;
    }
    if i.groups.len() > q.groups_per_interface as usize {
        sink.error_hint(
            &i.groups_at,
            format!(
                "interface {} carries {} security groups; the limit is {} per interface (Q2)",
                i.name.v,
                i.groups.len(),
                q.groups_per_interface
            ),
            "remove groups, or raise quotas.groups_per_interface (at most 16)",
        );
        ok = false;
    }
    ok
}

/// The last step: reports into `sink`; the result is only meaningful when no error was added.
pub(crate) fn validate(d: &Draft, sink: &mut Sink) -> Policy {
    let q = quotas(sink, d);
    let defaults = timeouts(sink, Timeouts::AWS_DEFAULT, &d.timeouts);
    let mut ctx = Ctx {
        sink,
        groups: HashMap::new(),
        prefix_lists: BTreeMap::new(),
        external_lists: Vec::new(),
    };
    prefix_lists(&mut ctx, d);
    let groups = groups(&mut ctx, d, &q);
    let interfaces = interfaces(&mut ctx, d, &q, defaults);
    let audit = audited(ctx.sink, d, &interfaces);
    let (network_acls, subnets) = nacl::validate(ctx.sink, d, &q);
    Policy {
        groups,
        prefix_lists: ctx.prefix_lists,
        interfaces,
        quotas: Quotas {
            rules_per_interface: MAX_RULES_PER_INTERFACE,
            ..q
        },
        network_acls,
        subnets,
        audit,
    }
}

/// The valid interfaces written with `audit: true` (L3), each named in a warning: audit mode
/// is a state to leave, not to forget.
fn audited(sink: &mut Sink, d: &Draft, valid: &[Interface]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, at) in d
        .interfaces
        .iter()
        .filter_map(|i| Some((i, i.audit.as_ref()?)))
    {
        if valid.iter().any(|v| v.name == i.name.v) {
            sink.warn_hint(
                at,
                format!(
                    "interface {} is in audit mode: what its groups drop passes and is counted \
                     as audit_would_drop_* (L3)",
                    i.name.v
                ),
                "remove `audit: true` and apply again to enforce",
            );
            out.insert(i.name.v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_rule_ids_have_the_f6_shape_and_depend_on_content() {
        let g = GroupId("sg-web".into());
        let p = Protocol::Tcp(PortRange { from: 443, to: 443 });
        let peer = Peer::Cidr("0.0.0.0/0".parse().unwrap());
        let a = derive_rule_id(&g, Direction::Ingress, &p, &peer);
        assert!(values::rule_id(a.as_str()).is_ok(), "{a}");
        assert_eq!(a, derive_rule_id(&g, Direction::Ingress, &p, &peer));
        assert_ne!(a, derive_rule_id(&g, Direction::Egress, &p, &peer));
        assert_eq!(
            canonical_rule_text(&g, Direction::Ingress, &p, &peer),
            "sg-web|ingress|tcp:443-443|cidr:0.0.0.0/0"
        );
    }

    /// Two web hosts on eth0 and eth1 of one machine, web-2 written with `audit` (as given).
    fn audit_policy(audit: &str) -> String {
        format!(
            "security_groups:\n  - id: sg-web\n    ingress:\n      - protocol: tcp\n        \
             ports: 443\n        source: 0.0.0.0/0\ninstances:\n  - name: web-1\n    \
             device: eth0\n    addresses: [192.0.2.11]\n    groups: [sg-web]\n  - name: \
             web-2\n    device: eth1\n    addresses: [192.0.2.12]\n    groups: [sg-web]\n    \
             audit: {audit}\n"
        )
    }

    #[test]
    fn audit_true_puts_that_interface_alone_in_audit_mode_with_a_located_warning_l3() {
        let l = crate::config::load_str(&audit_policy("true"), "t.yaml").unwrap();
        assert_eq!(l.policy.audit, BTreeSet::from(["web-2".to_string()]));
        let w = l.warnings.iter().find(|d| d.message.contains("audit mode"));
        let w = w.expect("audit mode is warned about");
        assert_eq!(
            (w.origin.line, w.severity),
            (16, crate::config::Severity::Warning)
        );
        assert!(w.message.contains("interface web-2"), "{}", w.message);
        let off = crate::config::load_str(&audit_policy("false"), "t.yaml").unwrap();
        assert!(off.policy.audit.is_empty());
    }

    #[test]
    fn audit_is_true_or_false_and_belongs_to_an_interface() {
        let e = crate::config::load_str(&audit_policy("sometimes"), "t.yaml").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("t.yaml:16:12"), "{e}");
        assert!(
            e.contains("audit must be true or false, found `sometimes`"),
            "{e}"
        );
        let listed = "security_groups:\n  - id: sg-web\ninstances:\n  - name: web-1\n    \
                      audit: true\n    interfaces:\n      - device: eth1\n        \
                      groups: [sg-web]\n";
        let e = crate::config::load_str(listed, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml:5:12"), "{e}");
        assert!(
            e.contains("`audit` belongs to an interface when the instance lists `interfaces`"),
            "{e}"
        );
        let inner = listed.replace("    audit: true\n", "").replace(
            "        groups: [sg-web]\n",
            "        groups: [sg-web]\n        audit: true\n",
        );
        let l = crate::config::load_str(&inner, "t.yaml").unwrap();
        assert_eq!(l.policy.audit, BTreeSet::from(["web-1".to_string()]));
    }

    #[test]
    fn audit_compiles_into_the_flag_of_that_interface_only_and_is_no_membership_delta() {
        use crate::compile::{CompileOptions, compile_indexed, membership_delta};
        use sg_common::iface_flags::AUDIT;
        let p = crate::config::load_str(&audit_policy("true"), "t.yaml")
            .unwrap()
            .policy;
        let bind = BTreeMap::from([("web-1".to_string(), 7), ("web-2".to_string(), 8)]);
        let opts = CompileOptions {
            generation: 0,
            slot_capacity: 1024,
        };
        let slots = crate::image::SlotTable::default();
        let (image, index) = compile_indexed(&p, &bind, &slots, &opts).unwrap();
        let audited: Vec<(u32, bool)> = image
            .ifaces
            .iter()
            .map(|(k, v)| (k.ifindex, v.flags & AUDIT != 0))
            .collect();
        assert_eq!(audited, [(7, false), (8, true)]);
        // Ending audit changes SG_IFACES, which a membership delta never writes.
        let mut enforcing = p.clone();
        enforcing.audit.clear();
        let d = membership_delta(&p, &enforcing, &bind, &image, &index).unwrap();
        assert!(d.is_none());
    }

    #[test]
    fn audit_survives_the_native_document_a_revert_goes_back_to() {
        let p = crate::config::load_str(&audit_policy("true"), "t.yaml")
            .unwrap()
            .policy;
        let doc = crate::store::native::document(&p);
        let text = crate::store::native::to_yaml(&doc);
        let again = crate::config::load_str(&text, "again.yaml").unwrap().policy;
        assert_eq!(again.audit, p.audit);
    }
}
