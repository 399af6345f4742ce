//! The network ACL half of the compiler (issue 17): a router's interfaces facing subnets ->
//! their subnets' NACL lists as scopes of `SG_PEERS`/`SG_PORTS`, and `IfaceConf`s flagged
//! [`iface_flags::NACL`].
//!
//! It owns the first-match-by-number reading of a list (A4-A8, A17-A19), the router-local
//! prefixes (A21) and the NACL counter slot ids. Like the rest of the compiler it is pure and
//! shares nothing with the reference model (`model::nacl`) but the policy types.
//!
//! # Algorithm
//!
//! 1. **Scopes.** Every NACL a router port's subnet uses gets two scopes, its inbound and its
//!    outbound list: ids hashed from the NACL id and the list ([`super::Ids`]), so they stay
//!    stable across compiles and two subnets with one NACL share them. The port's `IfaceConf`
//!    has `scope_in` = the inbound list (hook egress: traffic entering the subnet, matched on
//!    its source) and `scope_out` = the outbound list (hook ingress: traffic leaving it,
//!    matched on its destination) (A13, A14).
//! 2. **Prefixes, per (list, family).** The family root (0.0.0.0/0 or ::/0), every entry's
//!    CIDR of the family, and a host prefix per router address of the family. IPv4 lives at
//!    `::ffff:0:0/96` and always finds at least its root, which is longer than every IPv6
//!    prefix covering that block: an IPv6 entry never matches IPv4 traffic (A8). IPv6 prefixes
//!    inside the block are left out (nothing IPv6 reaches them; mapped remotes are IPv4).
//! 3. **One class per prefix.** An LPM hit on prefix P means the entries whose CIDR holds the
//!    remote are exactly those whose CIDR covers P (every entry CIDR is a prefix of the trie).
//!    So P's class answers each (protocol, port) point with the lowest-numbered entry covering
//!    P and the point (A4: first match; prefix length plays no role), else the family's `*`
//!    rule (A6). A `-1` or port-less protocol entry covers every port (A17), so a `-1` entry
//!    ends the list. Every point has an answer: the class never falls through, so no chain.
//!    A router address's host prefix answers every point with [`ROUTER_LOCAL_SLOT`] and
//!    [`rule_flags::ROUTER_LOCAL`] (A21: sg's host equivalent of the VPC's own services).
//!    A prefix whose class is that of its innermost written cover is not written: the LPM
//!    answers from the cover with the same class (fewer trie nodes on the path).
//! 4. **Pages.** `ports::encode` (no C4: nothing is tracked), then every segment of a deny
//!    entry (numbered or `*`) gets [`rule_flags::DENY`]. Classes are interned with the
//!    security groups' ([`super::Classes`]): equal classes share one id.
//!
//! Counter slots: every numbered entry and each list's two `*` rules of a bound NACL, with the
//! ids of [`slot_id`] (`acl-x/in/100`, `acl-x/out/*v4`, `acl-x/out/*v6`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sg_common::{IfaceConf, IfaceKey, PeerVal, Timeouts, iface_flags, rule_flags};

use super::ports::{PortMap, Seg, Untracked, Winner};
use super::{Classes, CompileError, Fnv, Prefix, points, unresolved};
use crate::image::SlotTable;
use crate::policy::{
    Direction, Family, NaclAction, NaclEntry, NaclId, NetworkAcl, Policy, RuleId, SubnetId,
};

/// A router's interface facing a subnet: the subnet's NACL is enforced there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterPort {
    pub subnet: SubnetId,
    pub ifindex: u32,
}

/// What a host that routes between subnets adds to a compile. Empty (the default) on a host
/// that only protects its own interfaces: then the compile is exactly the security groups'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Router {
    pub ports: Vec<RouterPort>,
    /// The router's own addresses: traffic to or from them is not filtered by a NACL (A21).
    pub addrs: Vec<IpAddr>,
}

/// The slot value of the router-local "rule" (A21). Never charged (the pipeline passes these
/// packets with no rule), and no counter has this index; it only has to differ from
/// `NO_RULE_SLOT` so that the class answers.
pub const ROUTER_LOCAL_SLOT: u32 = u32::MAX;

/// The counter slot id of a NACL rule: `{acl}/{in|out}/{number}` for a numbered entry,
/// `{acl}/{in|out}/*v4` or `*v6` for a `*` rule (`number` None) of `family`.
pub fn slot_id(acl: &NaclId, list: Direction, number: Option<u16>, family: Family) -> RuleId {
    let dir = match list {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let rule = match (number, family) {
        (Some(n), _) => n.to_string(),
        (None, Family::V4) => "*v4".to_string(),
        (None, Family::V6) => "*v6".to_string(),
    };
    RuleId(format!("{acl}/{dir}/{rule}"))
}

/// The NACLs of the router's ports' subnets, each once.
fn bound_acls<'p>(
    policy: &'p Policy,
    router: &Router,
) -> Result<BTreeMap<&'p NaclId, &'p NetworkAcl>, CompileError> {
    let mut acls = BTreeMap::new();
    for port in &router.ports {
        let subnet = policy
            .subnet(&port.subnet)
            .ok_or_else(|| unresolved("subnet", port.subnet.as_str(), "a router port"))?;
        let acl = policy
            .network_acls
            .get(&subnet.network_acl)
            .ok_or_else(|| {
                unresolved(
                    "network ACL",
                    subnet.network_acl.as_str(),
                    subnet.id.as_str(),
                )
            })?;
        acls.insert(&acl.id, acl);
    }
    Ok(acls)
}

/// The counter slot ids of every rule of the NACLs the router enforces, in a fixed order.
pub(super) fn slot_ids(policy: &Policy, router: &Router) -> Result<Vec<RuleId>, CompileError> {
    let mut ids = Vec::new();
    for (id, acl) in bound_acls(policy, router)? {
        for list in [Direction::Ingress, Direction::Egress] {
            ids.extend(
                acl.entries(list)
                    .iter()
                    .map(|e| slot_id(id, list, Some(e.number), Family::of_net(&e.cidr))),
            );
            for fam in [Family::V4, Family::V6] {
                ids.push(slot_id(id, list, None, fam));
            }
        }
    }
    Ok(ids)
}

/// Steps 1-4: the router's ports' `IfaceConf`s, their lists' peer entries and classes. A port
/// on an ifindex a security-group interface already uses is an error.
pub(super) fn compile(
    policy: &Policy,
    router: &Router,
    slots: &SlotTable,
    generation: u32,
    classes: &mut Classes,
) -> Result<(), CompileError> {
    let acls = bound_acls(policy, router)?;
    let mut scopes: BTreeMap<&NaclId, (u32, u32)> = BTreeMap::new();
    for id in acls.keys() {
        let mut h = Fnv::new();
        h.bytes(b"nacl\0").bytes(id.as_str().as_bytes());
        let scope_in = classes.ids.take(h.clone().bytes(b"\0in").finish())?;
        let scope_out = classes.ids.take(h.bytes(b"\0out").finish())?;
        scopes.insert(id, (scope_in, scope_out));
    }
    let mut seen: BTreeMap<u32, &SubnetId> = BTreeMap::new();
    for port in &router.ports {
        let key = IfaceKey {
            generation,
            ifindex: port.ifindex,
        };
        let first = seen
            .insert(port.ifindex, &port.subnet)
            .map(|s| s.to_string());
        if first.is_some() || classes.image.ifaces.contains_key(&key) {
            return Err(CompileError::DuplicateIfindex {
                ifindex: port.ifindex,
                first: first.unwrap_or_else(|| "a security-group interface".into()),
                second: port.subnet.to_string(),
            });
        }
        let acl = &policy.subnet(&port.subnet).expect("bound_acls").network_acl;
        let (scope_in, scope_out) = scopes[acl];
        let conf = IfaceConf {
            scope_in,
            scope_out,
            flags: iface_flags::NACL,
            _pad: 0,
            timeouts: Timeouts::AWS_DEFAULT,
        };
        classes.image.ifaces.insert(key, conf);
    }
    for (id, acl) in &acls {
        let (scope_in, scope_out) = scopes[id];
        for (list, scope) in [
            (Direction::Ingress, scope_in),
            (Direction::Egress, scope_out),
        ] {
            for fam in [Family::V4, Family::V6] {
                let table = ListTable::new(acl, list, fam, slots);
                list_entries(scope, &table, &router.addrs, classes)?;
            }
        }
    }
    Ok(())
}

/// One (list, family): its entries in number order with their points and prefixes, the `*`
/// rule last. A winner is an index into `entries` (then the `*` rule, then router-local), so
/// the smallest covering winner is the lowest number.
struct ListTable<'a> {
    fam: Family,
    entries: Vec<(&'a NaclEntry, Prefix)>,
    /// By winner.
    slot_of: Vec<u32>,
    /// Slots whose segments get `rule_flags::DENY`.
    deny: BTreeSet<u32>,
}

impl<'a> ListTable<'a> {
    fn new(acl: &'a NetworkAcl, list: Direction, fam: Family, slots: &SlotTable) -> Self {
        let slot = |n: Option<u16>| {
            slots
                .slot(&slot_id(&acl.id, list, n, fam))
                .expect("slot_ids names every NACL rule")
        };
        let mut entries: Vec<&NaclEntry> = acl
            .entries(list)
            .iter()
            .filter(|e| Family::of_net(&e.cidr) == fam)
            .collect();
        entries.sort_by_key(|e| e.number);
        let mut slot_of: Vec<u32> = entries.iter().map(|e| slot(Some(e.number))).collect();
        let mut deny: BTreeSet<u32> = entries
            .iter()
            .filter(|e| e.action == NaclAction::Deny)
            .map(|e| slot(Some(e.number)))
            .collect();
        let star = slot(None);
        slot_of.extend([star, ROUTER_LOCAL_SLOT]);
        deny.insert(star);
        ListTable {
            fam,
            entries: entries
                .into_iter()
                .map(|e| (e, Prefix::net(&e.cidr)))
                .collect(),
            slot_of,
            deny,
        }
    }

    fn star(&self) -> Winner {
        self.entries.len() as Winner
    }

    fn router_local(&self) -> Winner {
        self.entries.len() as Winner + 1
    }

    fn root(&self) -> Prefix {
        match self.fam {
            Family::V4 => Prefix::V4_ROOT,
            Family::V6 => Prefix {
                family: Family::V6,
                addr: 0,
                len: 0,
            },
        }
    }
}

/// Steps 2-4 for one (scope, family).
fn list_entries(
    scope: u32,
    table: &ListTable,
    router_addrs: &[IpAddr],
    classes: &mut Classes,
) -> Result<(), CompileError> {
    let hosts: BTreeSet<Prefix> = router_addrs
        .iter()
        .map(|a| Prefix::host(*a))
        .filter(|p| p.family == table.fam)
        .collect();
    let mut prefixes: BTreeSet<Prefix> = BTreeSet::from([table.root()]);
    for (_, p) in &table.entries {
        // IPv6 prefixes inside ::ffff:0:0/96: nothing IPv6 reaches them (A8).
        if p.family == Family::V4 || !Prefix::V4_ROOT.covers(p) {
            prefixes.insert(*p);
        }
    }
    prefixes.extend(hosts.iter().copied());
    // The prefixes written so far that cover the current one, innermost last (the order
    // meets a prefix after every prefix covering it).
    let mut written: Vec<(Prefix, u32)> = Vec::new();
    for p in prefixes {
        let map = if hosts.contains(&p) {
            PortMap {
                all: Some(table.router_local()),
                protos: BTreeMap::new(),
            }
        } else {
            let covering: Vec<_> = table
                .entries
                .iter()
                .enumerate()
                .filter(|(_, (_, q))| q.covers(&p))
                .map(|(w, (e, _))| (points(&e.protocol), w as Winner))
                .collect();
            first_match(&covering, table.star())
        };
        let mut entries = super::ports::encode(&map, &Untracked::default(), &table.slot_of);
        for (_, _, _, page) in &mut entries {
            for v in &mut page.vals {
                if v.flags & rule_flags::PAGE != 0 {
                    continue;
                }
                if table.deny.contains(&v.slot) {
                    v.flags |= rule_flags::DENY;
                } else if v.slot == ROUTER_LOCAL_SLOT {
                    v.flags |= rule_flags::ROUTER_LOCAL;
                }
            }
        }
        let (class, _) = classes.intern(entries)?;
        while written.last().is_some_and(|(q, _)| !q.covers(&p)) {
            written.pop();
        }
        // The LPM answers a remote under p from the longest written prefix covering it: with
        // p left out, from p's innermost written cover. When that has p's class the answer
        // is the same, and the trie is smaller (the family root is always written).
        if written.last().is_some_and(|&(_, c)| c == class) {
            continue;
        }
        written.push((p, class));
        let mut val = PeerVal::default();
        val.classes[0] = class;
        classes.image.peers.insert(p.key(scope), val);
    }
    Ok(())
}

/// The winner function of a list's entries covering one prefix, `(points, winner)` in number
/// order: at each point the first entry covering it (A4), else `star` (A6). A `-1` entry
/// covers every point, so nothing after it matters.
fn first_match(entries: &[(super::ports::Points, Winner)], star: Winner) -> PortMap {
    use super::ports::Points;
    let mut fallback = star;
    let mut by_proto: BTreeMap<u8, Vec<(u16, u16, Winner)>> = BTreeMap::new();
    for &(p, w) in entries {
        match p {
            Points::All => {
                fallback = w;
                break;
            }
            Points::Range { proto, from, to } => {
                by_proto.entry(proto).or_default().push((from, to, w))
            }
        }
    }
    let mut protos = BTreeMap::new();
    for (proto, ranges) in by_proto {
        // Sweep: +entry at `from`, -entry after `to`; the smallest active winner holds until
        // the next boundary.
        let mut events: Vec<(u32, bool, Winner)> = Vec::with_capacity(ranges.len() * 2);
        for (from, to, w) in ranges {
            events.push((u32::from(from), true, w));
            events.push((u32::from(to) + 1, false, w));
        }
        events.sort_unstable();
        let mut active: BTreeMap<Winner, u32> = BTreeMap::new();
        let mut segs: Vec<Seg<Option<Winner>>> = Vec::new();
        let mut i = 0;
        let mut pos = 0u32;
        while pos <= 65535 {
            while i < events.len() && events[i].0 == pos {
                let (_, add, w) = events[i];
                let n = active.entry(w).or_default();
                if add {
                    *n += 1;
                } else {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&w);
                    }
                }
                i += 1;
            }
            let val = Some(active.keys().next().copied().unwrap_or(fallback));
            if segs.last().is_none_or(|s| s.val != val) {
                segs.push(Seg {
                    start: pos as u16,
                    val,
                });
            }
            pos = events.get(i).map_or(65536, |e| e.0);
        }
        if !(segs.len() == 1 && segs[0].val == Some(fallback)) {
            protos.insert(proto, segs);
        }
    }
    PortMap {
        all: Some(fallback),
        protos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompileOptions, compile_indexed, compile_router, membership_delta};
    use crate::model::build::{PolicyBuilder, cidr, tcp};
    use crate::policy::{Origin, Subnet};

    fn policy(deny_number: u16) -> Policy {
        let mut p = PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("0.0.0.0/0"))
            .iface("web", &["192.0.2.10"], &["sg-a"])
            .build();
        let id = NaclId("acl-1".into());
        let entry = |number, action| NaclEntry {
            number,
            action,
            protocol: tcp(22),
            cidr: "198.51.100.0/24".parse().unwrap(),
            origin: Origin::default(),
        };
        p.network_acls.insert(
            id.clone(),
            NetworkAcl {
                id: id.clone(),
                is_default: false,
                inbound: vec![entry(deny_number, NaclAction::Deny)],
                outbound: vec![entry(100, NaclAction::Allow)],
                origin: Origin::default(),
            },
        );
        for (i, s) in ["192.0.2.64/26", "192.0.2.128/26"].iter().enumerate() {
            p.subnets.push(Subnet {
                id: SubnetId(format!("subnet-{i}")),
                cidrs: vec![s.parse().unwrap()],
                network_acl: id.clone(),
                router_device: None,
                origin: Origin::default(),
            });
        }
        p
    }

    fn router() -> Router {
        Router {
            ports: (0..2)
                .map(|i| RouterPort {
                    subnet: SubnetId(format!("subnet-{i}")),
                    ifindex: 10 + i,
                })
                .collect(),
            addrs: vec!["192.0.2.65".parse().unwrap()],
        }
    }

    #[test]
    fn subnets_sharing_a_nacl_share_its_scopes_and_ids_are_stable() {
        let p = policy(50);
        let bindings = [("web".to_string(), 1)].into();
        let opts = CompileOptions::default();
        let compile = || compile_router(&p, &bindings, &SlotTable::default(), &opts, &router());
        let (a, _) = compile().unwrap();
        let (b, _) = compile().unwrap();
        assert_eq!(a, b, "the same input gives the same image");
        let conf = |ifindex| {
            a.ifaces[&IfaceKey {
                generation: 0,
                ifindex,
            }]
        };
        assert_eq!(conf(10).flags, iface_flags::NACL);
        assert_eq!(
            (conf(10).scope_in, conf(10).scope_out),
            (conf(11).scope_in, conf(11).scope_out)
        );
        assert_ne!(conf(1).flags & iface_flags::NACL, iface_flags::NACL);
        for id in [
            "acl-1/in/50",
            "acl-1/in/*v4",
            "acl-1/in/*v6",
            "acl-1/out/100",
            "acl-1/out/*v6",
        ] {
            assert!(
                a.slots.slot(&RuleId(id.into())).is_some(),
                "no slot for {id}"
            );
        }
        // Without a router the compile is the security groups' alone.
        let (plain, _) = compile_indexed(&p, &bindings, &SlotTable::default(), &opts).unwrap();
        assert!(
            plain
                .ifaces
                .values()
                .all(|c| c.flags & iface_flags::NACL == 0)
        );
        assert!(plain.slots.by_rule.keys().all(|r| !r.0.starts_with("acl-")));
    }

    #[test]
    fn unknown_subnets_and_taken_ifindexes_are_errors() {
        let p = policy(50);
        let opts = CompileOptions::default();
        let mut r = router();
        r.ports[0].subnet = SubnetId("subnet-x".into());
        let e = compile_router(&p, &BTreeMap::new(), &SlotTable::default(), &opts, &r);
        assert!(matches!(
            e,
            Err(CompileError::Unresolved { what: "subnet", .. })
        ));
        let bindings = [("web".to_string(), 10)].into();
        let e = compile_router(&p, &bindings, &SlotTable::default(), &opts, &router());
        assert!(matches!(
            e,
            Err(CompileError::DuplicateIfindex { ifindex: 10, .. })
        ));
    }

    #[test]
    fn a25_a_nacl_change_is_never_a_membership_delta() {
        let (before, after) = (policy(50), policy(150));
        let bindings = [("web".to_string(), 1)].into();
        let opts = CompileOptions::default();
        let (image, index) =
            compile_router(&before, &bindings, &SlotTable::default(), &opts, &router()).unwrap();
        let d = membership_delta(&before, &after, &bindings, &image, &index).unwrap();
        assert!(
            d.is_none(),
            "a renumbered NACL entry must be compiled whole"
        );
    }
}
