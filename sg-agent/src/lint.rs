//! `sg-agent lint`'s checks: the seed article's best practices (and a few hygiene rules) held
//! against a validated [`Policy`], each finding with a stable id, a severity, where the rule
//! or group was written and why it matters. docs/agent.md lists every id.
//!
//! Pure functions over the policy (and, for the live check, counters handed in): no I/O, no
//! printing, no kernel. They judge what is written, never what is enforced: that is the
//! compiler's and the reference model's business.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::policy::{
    Direction, Group, GroupId, IcmpMatch, Origin, Peer, Policy, PortRange, Protocol, Rule, RuleId,
};

/// How much a finding matters; `--fail-on` compares with this order (info < warning < error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One finding: `id` is stable across releases (SG001..), `subject` the rule or group id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub subject: String,
    pub origin: Origin,
    /// One line: what is wrong and why it matters.
    pub why: String,
    /// One line: what to do about it.
    pub hint: String,
}

/// SSH (22) and RDP (3389): never open to the whole internet (the seed's first practice).
const ADMIN_PORTS: [(u16, &str); 2] = [(22, "SSH"), (3389, "RDP")];

/// Port ranges that are only ever ephemeral (client) ports: the NACL convention 1024-65535,
/// Linux's default `ip_local_port_range` 32768-60999 and its older 32768-65535, and IANA's
/// (Windows') 49152-65535.
const EPHEMERAL: [PortRange; 4] = [
    PortRange {
        from: 1024,
        to: 65535,
    },
    PortRange {
        from: 32768,
        to: 60999,
    },
    PortRange {
        from: 32768,
        to: 65535,
    },
    PortRange {
        from: 49152,
        to: 65535,
    },
];

/// Every static check (SG001-SG007), findings in the order of the file.
pub fn lint(p: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    for g in p.groups.values() {
        for r in g.ingress.iter().chain(&g.egress) {
            out.extend(admin_port_open_to_world(r));
            out.extend(world_open_all(r));
            out.extend(no_description(r));
            out.extend(reply_only_egress(g, r));
            out.extend(redundant(g, r));
        }
    }
    out.extend(group_on_every_tier(p));
    out.extend(unattached_groups(p));
    // In the order of the file, as a reader walks it.
    out.sort_by(|a, b| {
        let key = |f: &Finding| (f.origin.file.clone(), f.origin.line, f.origin.column, f.id);
        key(a).cmp(&key(b))
    });
    out
}

/// A peer that is the whole internet of its family.
fn is_world(peer: &Peer) -> bool {
    matches!(peer, Peer::Cidr(n) if n.prefix_len() == 0)
}

fn rule_finding(
    r: &Rule,
    id: &'static str,
    severity: Severity,
    why: String,
    hint: &str,
) -> Finding {
    finding(r.id.to_string(), &r.origin, id, severity, why, hint)
}

fn group_finding(
    g: &Group,
    id: &'static str,
    severity: Severity,
    why: String,
    hint: &str,
) -> Finding {
    finding(g.id.to_string(), &g.origin, id, severity, why, hint)
}

fn finding(
    subject: String,
    origin: &Origin,
    id: &'static str,
    severity: Severity,
    why: String,
    hint: &str,
) -> Finding {
    Finding {
        id,
        severity,
        subject,
        origin: origin.clone(),
        why,
        hint: hint.into(),
    }
}

/// SG001 (error): an inbound rule admits TCP port 22 or 3389 (or UDP 3389, RDP's other
/// transport, or every protocol) from 0.0.0.0/0 or ::/0.
fn admin_port_open_to_world(r: &Rule) -> Option<Finding> {
    if r.direction != Direction::Ingress || !is_world(&r.peer) {
        return None;
    }
    let hit = ADMIN_PORTS.iter().find(|(port, _)| match r.protocol {
        Protocol::All => true,
        Protocol::Tcp(range) => range.contains(*port),
        Protocol::Udp(range) => *port == 3389 && range.contains(*port),
        _ => false,
    })?;
    Some(rule_finding(
        r,
        "SG001",
        Severity::Error,
        format!(
            "{} (port {}) is open to the whole internet ({})",
            hit.1,
            hit.0,
            peer_text(&r.peer)
        ),
        "scope the source to your own address or office range (or a group), or use a bastion or Session Manager",
    ))
}

/// SG002 (warning): an inbound rule from 0.0.0.0/0 or ::/0 on every protocol, or on every
/// TCP or UDP port (0-65535 or 1-65535).
fn world_open_all(r: &Rule) -> Option<Finding> {
    if r.direction != Direction::Ingress || !is_world(&r.peer) {
        return None;
    }
    let what = match r.protocol {
        Protocol::All => "every protocol and port",
        Protocol::Tcp(p) if p.from <= 1 && p.to == 65535 => "every TCP port",
        Protocol::Udp(p) if p.from <= 1 && p.to == 65535 => "every UDP port",
        _ => return None,
    };
    Some(rule_finding(
        r,
        "SG002",
        Severity::Warning,
        format!(
            "{what} is open to the whole internet ({})",
            peer_text(&r.peer)
        ),
        "open only the ports the service listens on",
    ))
}

/// AWS's own rules, which it creates without a description: the default egress (D2, all
/// traffic to 0.0.0.0/0 and ::/0) and the default group's self rule (D3).
fn is_implicit_default(r: &Rule) -> bool {
    r.description.is_none()
        && r.protocol == Protocol::All
        && match r.direction {
            Direction::Egress => is_world(&r.peer),
            Direction::Ingress => r.peer == Peer::Group(r.group.clone()),
        }
}

/// SG003 (info): a rule without a description (AWS's implicit default rules excepted).
fn no_description(r: &Rule) -> Option<Finding> {
    let missing = r.description.as_deref().is_none_or(|d| d.trim().is_empty());
    if !missing || is_implicit_default(r) {
        return None;
    }
    Some(rule_finding(
        r,
        "SG003",
        Severity::Info,
        "the rule has no description: its intent is lost once its author forgets it".into(),
        "add `description:` saying who needs it and why",
    ))
}

/// SG004 (warning): an egress TCP/UDP rule whose ports are exactly an ephemeral range (see
/// [`EPHEMERAL`]) towards a peer the same group's ingress already admits on that protocol.
/// Those packets are replies, which conntrack lets out anyway (C1): the rule only opens new
/// outbound flows to high ports, which is rarely what was meant.
fn reply_only_egress(g: &Group, r: &Rule) -> Option<Finding> {
    if r.direction != Direction::Egress {
        return None;
    }
    let (Protocol::Tcp(range) | Protocol::Udp(range)) = r.protocol else {
        return None;
    };
    if !EPHEMERAL.contains(&range) {
        return None;
    }
    let answered = g.ingress.iter().find(|i| {
        peer_covers(&i.peer, &r.peer)
            && (i.protocol == Protocol::All || i.protocol.number() == r.protocol.number())
    })?;
    Some(rule_finding(
        r,
        "SG004",
        Severity::Warning,
        format!(
            "egress to ephemeral ports {}-{} of {}, which ingress rule {} admits: replies \
             already leave (groups are stateful, C1)",
            range.from,
            range.to,
            peer_text(&r.peer),
            answered.id
        ),
        "remove the rule; it only opens new outbound connections to high ports",
    ))
}

/// SG006 (warning): another rule of the same group and direction admits everything this one
/// does: its peer covers this peer (the same group or prefix list, or a CIDR containing this
/// CIDR) and its protocol covers this protocol (all, a port range containing this one, ICMP
/// all types, a type with all codes). Of two identical rules only the later one is reported.
fn redundant(g: &Group, r: &Rule) -> Option<Finding> {
    let rules = g.rules(r.direction);
    let pos = rules.iter().position(|x| x.id == r.id)?;
    let wider = rules.iter().enumerate().find(|(i, w)| {
        *i != pos
            && peer_covers(&w.peer, &r.peer)
            && proto_covers(&w.protocol, &r.protocol)
            // Mutual cover (identical rules): keep the first, report the later.
            && !(*i > pos && peer_covers(&r.peer, &w.peer) && proto_covers(&r.protocol, &w.protocol))
    })?;
    Some(rule_finding(
        r,
        "SG006",
        Severity::Warning,
        format!(
            "redundant: rule {} of the same group and direction admits everything it does (at {})",
            wider.1.id, wider.1.origin
        ),
        "remove it, or narrow the wider rule if this one states the intent",
    ))
}

/// Whether `wide` admits every address `narrow` does, as written (a group or prefix list only
/// covers itself; a CIDR covers CIDRs it contains).
fn peer_covers(wide: &Peer, narrow: &Peer) -> bool {
    match (wide, narrow) {
        (Peer::Cidr(w), Peer::Cidr(n)) => w.contains(n),
        (w, n) => w == n,
    }
}

/// Whether `wide` admits every packet `narrow` does, for the same peer.
fn proto_covers(wide: &Protocol, narrow: &Protocol) -> bool {
    match (wide, narrow) {
        (Protocol::All, _) => true,
        (Protocol::Tcp(w), Protocol::Tcp(n)) | (Protocol::Udp(w), Protocol::Udp(n)) => {
            w.from <= n.from && n.to <= w.to
        }
        (Protocol::Icmp(w), Protocol::Icmp(n)) | (Protocol::Icmpv6(w), Protocol::Icmpv6(n)) => {
            icmp_covers(*w, *n)
        }
        (w, n) => w == n,
    }
}

fn icmp_covers(w: IcmpMatch, n: IcmpMatch) -> bool {
    match (w, n) {
        (IcmpMatch::All, _) => true,
        (IcmpMatch::Type(t), IcmpMatch::Type(u) | IcmpMatch::TypeCode(u, _)) => t == u,
        (w, n) => w == n,
    }
}

/// SG005 (warning): one group on every tier. The tiers are the distinct sets of groups the
/// policy's interfaces carry; when there are at least two interfaces and at least two
/// distinct sets, a group carried by every interface is a catch-all shared by every tier
/// (the seed: one purpose-built group per tier). Reported once per such group.
fn group_on_every_tier(p: &Policy) -> Vec<Finding> {
    let sets: BTreeSet<BTreeSet<&GroupId>> = p
        .interfaces
        .iter()
        .map(|i| i.groups.iter().collect())
        .collect();
    if p.interfaces.len() < 2 || sets.len() < 2 {
        return Vec::new();
    }
    p.groups
        .values()
        .filter(|g| sets.iter().all(|s| s.contains(&g.id)))
        .map(|g| {
            group_finding(
                g,
                "SG005",
                Severity::Warning,
                format!(
                    "attached to every interface ({}) across {} different tiers: a catch-all \
                     whose rules every tier gets",
                    p.interfaces.len(),
                    sets.len()
                ),
                "give each tier (web, app, db) its own group with only the rules it needs",
            )
        })
        .collect()
}

/// SG007 (info): a group no interface carries, in a policy that has interfaces (a file of
/// groups only, e.g. describe-security-groups output, attaches nothing by design).
fn unattached_groups(p: &Policy) -> Vec<Finding> {
    if p.interfaces.is_empty() {
        return Vec::new();
    }
    let used: BTreeSet<&GroupId> = p.interfaces.iter().flat_map(|i| &i.groups).collect();
    p.groups
        .values()
        .filter(|g| !used.contains(&g.id))
        .map(|g| {
            group_finding(
                g,
                "SG007",
                Severity::Info,
                "attached to no interface: its rules are enforced nowhere".into(),
                "attach it to an instance or remove it (rules referencing it then match nobody)",
            )
        })
        .collect()
}

/// SG008 (info), on the enforced policy: rules whose counters show no packet (AWS's implicit
/// default rules excepted: nobody wrote them, so there is nothing to remove). `packets` is
/// the counter per rule id; `age_secs` how long ago the policy was applied (a rule kept by
/// earlier applies has counted for at least that long).
pub fn matched_nothing(p: &Policy, packets: &BTreeMap<RuleId, u64>, age_secs: u64) -> Vec<Finding> {
    p.all_rules()
        .filter(|r| packets.get(&r.id) == Some(&0) && !is_implicit_default(r))
        .map(|r| {
            rule_finding(
                r,
                "SG008",
                Severity::Info,
                format!(
                    "matched no packet in the {} since the policy was applied",
                    age(age_secs)
                ),
                "if nothing needs it, remove it; if something should, check the peer and ports",
            )
        })
        .collect()
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `12s`.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn peer_text(p: &Peer) -> String {
    match p {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(id) => id.to_string(),
        Peer::Group(id) => id.to_string(),
    }
}

#[cfg(test)]
mod tests;
