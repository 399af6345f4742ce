//! The compiler: a validated [`Policy`] and the interface bindings -> one generation's
//! [`MapImage`] (the contents of `SG_IFACES`, `SG_PEERS`, `SG_PORTS`, plus the rule counter
//! slots). Pure and deterministic: the same input gives the same image, byte for byte.
//!
//! It owns the union of the interface's groups (E3), overlap resolution (a more specific
//! prefix carries what its covering prefixes allow), the E4 choice of the charged rule, the C4 untracked flag, the port/ICMP encoding and the scope/class numbering.
//! A router's network ACLs (issue 17) are compiled by [`nacl`] into the same maps, from
//! [`compile_router`].
//! It must not touch the kernel, read files, or share code with the reference model
//! (`model::decide`), which the property tests compare it against.
//!
//! # Algorithm
//!
//! 1. **Rules and slots.** Every rule of the policy gets an index in id order (so comparing
//!    indexes is E4 step 3) and a counter slot from [`SlotTable::assign`] (stable per id).
//! 2. **Membership (R1).** Every interface of the policy, bound here or not, adds its
//!    addresses as host prefixes (/32, /128) to each group it carries.
//! 3. **Scopes.** Bound interfaces with the same set of groups (order and repeats ignored,
//!    E3) share one scope per direction: ids `gen << 31 | h`, h a hash of the sorted group
//!    set and the direction (see [`Ids`]), so a scope keeps its id when other interfaces
//!    come and go. Each interface gets an `IfaceConf`.
//! 4. **Peer prefixes.** In a scope, each rule contributes its prefixes: its CIDR, its prefix
//!    list's entries (R4), or its referenced group's member host prefixes (R1, R3 when the
//!    group is its own). Addresses live in one 128-bit space with IPv4 at `::ffff:0:0/96`.
//!    IPv6 prefixes inside that block are dropped (nothing IPv6 can match them: an
//!    IPv4-mapped remote is judged as IPv4). When an IPv6 prefix contains it (e.g. `::/0`),
//!    the IPv4 root `0.0.0.0/0` is added, possibly with no rule, as a barrier so that IPv4
//!    remotes never fall through to an IPv6 class.
//! 5. **Class chains, one walk per (scope, family).** Prefixes sorted by (address, length)
//!    come parents first; a stack gives each prefix its nearest covering prefix. A rule
//!    matching through prefix P matches through a longer prefix than every rule inherited
//!    from P's ancestors, so by E4 step 1 P's own rules win wherever they match and the
//!    parent decides elsewhere: P's winner function is `overlay(parent's, level(P's own
//!    rules))`, where `level` picks per point the rule with the fewest points, then the
//!    smallest id. This is exactly "the union of the covering prefixes' rules, each at its
//!    longest covering prefix". The kernel evaluates the overlay itself: P's peer value is a
//!    chain of classes, `[level(P's own), ...parent's chain]`, and the first class with a
//!    rule at the packet's (protocol, port) decides. So every prefix stores only its own
//!    rules' segments and `SG_PORTS` stays linear in the rules, instead of repeating every
//!    ancestor's segments under each nested prefix. Each extra class costs the kernel one
//!    hash lookup, so a parent whose first class is small (at most `MERGE_PAGES` pages) is
//!    merged instead: P's class is `overlay(parent's first, level(P's own))`, a few copied
//!    segments for one lookup less. The chain holds at most `CLASS_CHAIN` classes; past that
//!    P merges into its parent's first class whatever its size. A prefix with a -1 rule ends
//!    the chain (nothing shows through it).
//! 6. **C4.** The untracked TCP/UDP ports depend only on (scope, family): the ports some /0
//!    CIDR rule of that family allows, when the opposite direction allows all of the
//!    protocol to the same /0. Every class of the family inherits those /0 rules, so the flag
//!    at a point is "point in that set".
//! 7. **Port pages** (`ports::encode`): a -1 winner is the class's every-protocol page;
//!    TCP/UDP made explicit where C4 applies (that page cannot say "untracked for TCP
//!    only"); every other protocol of the map is a tree of pages of up to `PAGE_SEGS`
//!    segments (adjacent equal values merged), one page for most classes.
//! 8. **Dedupe.** Classes are keyed by their sorted page lists and numbered
//!    `gen << 31 | h`, h a hash of the entries ([`Ids`]): prefixes whose levels answer alike
//!    share one class, across scopes too, and a class keeps its id from one compile to the
//!    next, so an apply only writes what changed. A prefix whose chain equals its nearest
//!    covering prefix's gets no peer entry (the lookup falls back to the parent and reaches
//!    the same chain).
//!
//! # Worked example
//!
//! A scope's ingress rules (its egress has `-1 to 0.0.0.0/0`, so C4 holds for TCP from /0):
//!
//! ```text
//! r1  tcp 22       from 0.0.0.0/0
//! r2  tcp 0-1023   from 192.0.2.0/24
//! r3  all (-1)     from sg-b, whose only member is 192.0.2.7
//! r4  icmp 8/-1    from 192.0.2.0/24
//! ```
//!
//! Peer trie (IPv4 mapped, prefix length 32 + 96 + len) and class chains:
//!
//! ```text
//! 0.0.0.0/0     [A]      A = level{r1}
//! 192.0.2.0/24  [B]      B = overlay(A, level{r2, r4}): A is small, so it is copied in;
//!                        with more than MERGE_PAGES pages in A this would be [B', A]
//!                        with B' = level{r2, r4}
//! 192.0.2.7/32  [C]      C = level{r3}: a -1 rule, nothing of A or B shows through
//! ```
//!
//! Port pages (key: segments as `start value`, `-` = slot 0, no rule):
//!
//! ```text
//! A: tcp:  0 -, 22 r1 UNTRACKED, 23 -
//! B: tcp:  0 r2, 22 r2 UNTRACKED, 23 r2, 1024 -
//!          (r2 wins at 22 over A's r1: longer prefix; C4 looks at the point, not the rule)
//!    icmp: 0 -, 0x0800 r4, 0x0900 -
//! C: any:  0 r3
//!    tcp:  0 r3, 22 r3 UNTRACKED, 23 r3 (the every-protocol page cannot carry a TCP-only
//!          flag)
//! ```
//!
//! A packet from 192.0.2.7 to tcp 22 finds [C], then `tcp 22 -> r3 UNTRACKED`; from
//! 192.0.2.9 to tcp 80 it finds [B] and the segment 23 -> r2 (tracked); to tcp 2000 B has no
//! rule: denied; to udp 53 B has no udp page and no every-protocol page: denied.

pub mod nacl;
mod ports;

pub use nacl::{Router, RouterPort};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use sg_common::{
    CLASS_CHAIN, IfaceConf, IfaceKey, PEER_SCOPE_BITS, PeerData, PeerVal, PortKey, PortPage,
    iface_flags,
};

use crate::image::{LpmKey, MapImage, SlotTable, SlotsExhausted};
use crate::policy::{
    Direction, Family, GroupId, IcmpMatch, Peer, Policy, PortRange, Protocol, RuleId,
};
use ports::{Points, PortMap, Untracked, Winner};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// 0 or 1: carried in bit 31 of every scope and class id and in the `IfaceKey`s.
    pub generation: u32,
    /// Number of rule counter slots in the dataplane (slot 0 is never used).
    pub slot_capacity: u32,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            generation: 0,
            slot_capacity: sg_common::capacity::RULE_SLOTS,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CompileError {
    /// The generation is neither 0 nor 1.
    BadGeneration(u32),
    /// A binding names an interface the policy does not have.
    UnknownInterface(String),
    /// Two bindings name the same ifindex.
    DuplicateIfindex {
        ifindex: u32,
        first: String,
        second: String,
    },
    /// A reference the validator should have rejected (the policy was not validated).
    Unresolved {
        what: &'static str,
        id: String,
        by: String,
    },
    /// Two rules share an id: their counters could not be told apart.
    DuplicateRuleId(String),
    /// More scopes or classes than ids fit in 31 bits.
    TooManyIds(&'static str),
    Slots(SlotsExhausted),
    /// A delta was asked of an `Index` that is not of the live policy's compile: it lacks
    /// this rule.
    StaleIndex(String),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::BadGeneration(g) => write!(f, "generation {g} is neither 0 nor 1"),
            CompileError::UnknownInterface(n) => {
                write!(f, "interface {n:?} is bound but not in the policy")
            }
            CompileError::DuplicateIfindex {
                ifindex,
                first,
                second,
            } => write!(
                f,
                "interfaces {first:?} and {second:?} are both bound to ifindex {ifindex}"
            ),
            CompileError::Unresolved { what, id, by } => {
                write!(f, "{what} {id} referenced by {by} is not in the policy")
            }
            CompileError::DuplicateRuleId(id) => write!(f, "rule id {id} is used twice"),
            CompileError::TooManyIds(what) => write!(f, "too many {what} for 31-bit ids"),
            CompileError::Slots(e) => e.fmt(f),
            CompileError::StaleIndex(id) => write!(
                f,
                "rule {id} is not in the compile index of the live policy (recompile it whole)"
            ),
        }
    }
}

impl std::error::Error for CompileError {}

/// Compiles `policy` for the interfaces in `bindings` (policy interface name -> ifindex) into
/// generation `opts.generation`. `previous_slots` keeps counter slots stable across applies.
pub fn compile(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    previous_slots: &SlotTable,
    opts: &CompileOptions,
) -> Result<MapImage, CompileError> {
    compile_indexed(policy, bindings, previous_slots, opts).map(|(image, _)| image)
}

/// [`compile`], plus the class index that [`membership_delta`] needs to change the image
/// later without compiling it again.
pub fn compile_indexed(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    previous_slots: &SlotTable,
    opts: &CompileOptions,
) -> Result<(MapImage, Index), CompileError> {
    compile_router(policy, bindings, previous_slots, opts, &Router::default())
}

/// [`compile_indexed`] on a router: also the network ACLs of the subnets behind
/// `router.ports` ([`nacl`]). With an empty `router` it is exactly [`compile_indexed`].
/// A [`membership_delta`] of its image stays valid only while `router` is unchanged.
pub fn compile_router(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    previous_slots: &SlotTable,
    opts: &CompileOptions,
    router: &Router,
) -> Result<(MapImage, Index), CompileError> {
    if opts.generation > 1 {
        return Err(CompileError::BadGeneration(opts.generation));
    }
    let gen_bit = opts.generation << 31;

    // 1. Rules in id order, and their slots (the NACL rules' after them).
    let nacl_ids = nacl::slot_ids(policy, router)?;
    let (table, slots) = rule_table(policy, previous_slots, opts.slot_capacity, &nacl_ids)?;

    // 2. Membership (R1): all interfaces, bound or not.
    let members = memberships(policy)?;

    // 3. Scopes of the bound interfaces.
    let bound = bound_interfaces(policy, bindings)?;
    let sets: BTreeSet<Vec<GroupId>> = bound.iter().map(|(i, _)| group_set(i)).collect();
    let mut ids = Ids::new(gen_bit);
    let mut scope_ids: BTreeMap<&Vec<GroupId>, (u32, u32)> = BTreeMap::new();
    for set in &sets {
        scope_ids.insert(set, ids.scopes(set)?);
    }

    let mut image = MapImage {
        generation: opts.generation,
        ..MapImage::default()
    };
    // 6. C4 per scope, direction (ingress, egress) and family (V4, V6): for the port pages
    // and for the interfaces' TRACKED_ONLY flags.
    let c4 = untracked_by_scope(policy, scope_ids.keys().copied());
    for (iface, ifindex) in &bound {
        let set = group_set(iface);
        let key = IfaceKey {
            generation: opts.generation,
            ifindex: *ifindex,
        };
        let mut conf = iface_conf(iface, scope_ids[&set], &c4[&set]);
        if policy.audit.contains(&iface.name) {
            // L3: the program passes and reports what this interface's scopes drop.
            conf.flags |= iface_flags::AUDIT;
        }
        image.ifaces.insert(key, conf);
    }

    // 4-8. Per scope: prefixes, classes, entries.
    let mut classes = Classes {
        ids,
        by_entries: HashMap::new(),
        base: None,
        image: &mut image,
    };
    for (set, &(scope_in, scope_out)) in &scope_ids {
        for (d, (dir, scope)) in [
            (Direction::Ingress, scope_in),
            (Direction::Egress, scope_out),
        ]
        .into_iter()
        .enumerate()
        {
            let here = scope_rules(policy, set, dir);
            let prefixes = scope_prefixes(policy, &members, &here, &table.winner, |_| true)?;
            for (c4, fam) in c4[set][d].iter().zip([Family::V4, Family::V6]) {
                let fam_prefixes = prefixes.iter().filter(|(p, _)| p.family == fam);
                walk(scope, fam_prefixes, &table, c4, &mut classes)?;
            }
        }
    }
    nacl::compile(policy, router, &slots, opts.generation, &mut classes)?;
    let index = Index {
        taken: classes.ids.taken,
        by_entries: classes.by_entries,
        rules: table,
    };
    image.slots = slots;
    Ok((image, index))
}

/// Step 1: the [`RuleTable`] (rules ranked in id order), and the counter slots (kept from
/// `previous_slots` where the id is unchanged).
fn rule_table(
    policy: &Policy,
    previous_slots: &SlotTable,
    slot_capacity: u32,
    nacl_ids: &[RuleId],
) -> Result<(RuleTable, SlotTable), CompileError> {
    let mut rules: Vec<&crate::policy::Rule> = policy.all_rules().collect();
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = rules.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(CompileError::DuplicateRuleId(w[0].id.to_string()));
    }
    let ids = rules.iter().map(|r| &r.id).chain(nacl_ids);
    let slots =
        SlotTable::assign(previous_slots, ids, slot_capacity).map_err(CompileError::Slots)?;
    let table = RuleTable {
        winner: rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i as Winner))
            .collect(),
        points: rules.iter().map(|r| points(&r.protocol)).collect(),
        slot_of: rules
            .iter()
            .map(|r| slots.slot(&r.id).expect("assign gives every id a slot"))
            .collect(),
    };
    Ok((table, slots))
}

/// Step 3: the bound interfaces with their ifindex; one interface per ifindex.
fn bound_interfaces<'p>(
    policy: &'p Policy,
    bindings: &BTreeMap<String, u32>,
) -> Result<Vec<(&'p crate::policy::Interface, u32)>, CompileError> {
    let mut bound = Vec::new();
    let mut by_ifindex: BTreeMap<u32, &str> = BTreeMap::new();
    for (name, &ifindex) in bindings {
        let iface = policy
            .interface(name)
            .ok_or_else(|| CompileError::UnknownInterface(name.clone()))?;
        if let Some(first) = by_ifindex.insert(ifindex, name) {
            return Err(CompileError::DuplicateIfindex {
                ifindex,
                first: first.to_string(),
                second: name.clone(),
            });
        }
        bound.push((iface, ifindex));
    }
    Ok(bound)
}

/// Step 6 for every scope: its untracked ports, per direction (ingress, egress) and family.
fn untracked_by_scope<'s>(
    policy: &Policy,
    sets: impl Iterator<Item = &'s Vec<GroupId>>,
) -> BTreeMap<&'s Vec<GroupId>, [[Untracked; 2]; 2]> {
    sets.map(|set| {
        let per_dir = [Direction::Ingress, Direction::Egress].map(|d| scope_c4(policy, set, d));
        (set, per_dir)
    })
    .collect()
}

/// An interface's groups as a set: its scope (order and repeats do not matter).
fn group_set(i: &crate::policy::Interface) -> Vec<GroupId> {
    let set: BTreeSet<GroupId> = i.groups.iter().cloned().collect();
    set.into_iter().collect()
}

/// An interface's SG_IFACES value: its scopes, and TRACKED_ONLY for a direction whose scope
/// has no untracked ports (C4) in either family.
fn iface_conf(
    iface: &crate::policy::Interface,
    (scope_in, scope_out): (u32, u32),
    [c4_in, c4_out]: &[[Untracked; 2]; 2],
) -> IfaceConf {
    let mut flags = 0;
    if c4_in.iter().all(Untracked::is_empty) {
        flags |= iface_flags::TRACKED_ONLY_IN;
    }
    if c4_out.iter().all(Untracked::is_empty) {
        flags |= iface_flags::TRACKED_ONLY_OUT;
    }
    IfaceConf {
        scope_in,
        scope_out,
        flags,
        _pad: 0,
        timeouts: iface.timeouts,
    }
}

/// Step 6 for one scope: the untracked ports per family (V4, V6).
fn scope_c4(policy: &Policy, set: &[GroupId], dir: Direction) -> [Untracked; 2] {
    let here = scope_rules(policy, set, dir);
    let opposite = scope_rules(policy, set, dir.opposite());
    [Family::V4, Family::V6].map(|fam| untracked(&here, &opposite, fam))
}

/// The rules of one direction of the groups in `set`: a scope's rule set (E3).
fn scope_rules<'p>(
    policy: &'p Policy,
    set: &[GroupId],
    dir: Direction,
) -> Vec<&'p crate::policy::Rule> {
    set.iter()
        .filter_map(|g| policy.groups.get(g))
        .flat_map(|g| g.rules(dir))
        .collect()
}

/// Group -> the host prefixes of its members (R1), over every interface, bound or not.
fn memberships(policy: &Policy) -> Result<BTreeMap<&GroupId, BTreeSet<Prefix>>, CompileError> {
    let mut members: BTreeMap<&GroupId, BTreeSet<Prefix>> = BTreeMap::new();
    for i in &policy.interfaces {
        for g in &i.groups {
            if !policy.groups.contains_key(g) {
                return Err(unresolved("group", g.as_str(), &i.name));
            }
            let set = members.entry(g).or_default();
            set.extend(i.addresses.iter().map(|a| Prefix::host(*a)));
        }
    }
    Ok(members)
}

/// Step 4 for one (scope, direction): each peer prefix with the rules matching through it,
/// only the prefixes `keep` accepts. IPv6 prefixes inside ::ffff:0:0/96 can match nothing
/// and are left out; an IPv6 prefix containing that block adds the IPv4 barrier.
fn scope_prefixes(
    policy: &Policy,
    members: &BTreeMap<&GroupId, BTreeSet<Prefix>>,
    here: &[&crate::policy::Rule],
    winner: &HashMap<RuleId, Winner>,
    keep: impl Fn(&Prefix) -> bool,
) -> Result<BTreeMap<Prefix, Vec<Winner>>, CompileError> {
    let mapped = Prefix::V4_ROOT;
    let mut prefixes: BTreeMap<Prefix, Vec<Winner>> = BTreeMap::new();
    let mut barrier = false;
    let mut kept: Vec<Prefix> = Vec::new();
    for r in here {
        kept.clear();
        let mut add = |p: Prefix| {
            if p.family == Family::V6 && mapped.covers(&p) {
                return;
            }
            barrier |= p.family == Family::V6 && p.covers(&mapped);
            if keep(&p) {
                kept.push(p);
            }
        };
        match &r.peer {
            Peer::Cidr(net) => add(Prefix::net(net)),
            Peer::PrefixList(id) => {
                let pl = policy
                    .prefix_lists
                    .get(id)
                    .ok_or_else(|| unresolved("prefix list", id.as_str(), r.id.as_str()))?;
                pl.entries.iter().for_each(|e| add(Prefix::net(e)));
            }
            Peer::Group(g) => {
                if !policy.groups.contains_key(g) {
                    return Err(unresolved("group", g.as_str(), r.id.as_str()));
                }
                members.get(g).into_iter().flatten().for_each(|p| add(*p));
            }
        }
        if kept.is_empty() {
            continue;
        }
        // Looked up only for a rule with a prefix `keep` accepts: a membership delta keeps the
        // few prefixes covering one host, out of every rule of the scope.
        let w = *winner
            .get(&r.id)
            .ok_or_else(|| CompileError::StaleIndex(r.id.to_string()))?;
        for p in &kept {
            prefixes.entry(*p).or_default().push(w);
        }
    }
    if barrier && keep(&mapped) {
        prefixes.entry(mapped).or_default();
    }
    Ok(prefixes)
}

/// What a membership change does to a compiled image: new values (None: delete) for the peer
/// entries of the hosts whose groups changed, and the entries of the classes they need that
/// the image lacks. Every other entry of the image is unchanged (see [`membership_delta`]).
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub generation: u32,
    pub peers: BTreeMap<LpmKey<PeerData>, Option<PeerVal>>,
    pub ports: BTreeMap<PortKey, PortPage>,
    new_ids: BTreeSet<u32>,
    new_classes: HashMap<Vec<ports::PortEntry>, u32>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.ports.is_empty()
    }

    /// Makes `image` what compiling the new policy would give (plus the classes nothing
    /// references any more: they stay until the next full compile).
    pub fn patch(&self, image: &mut MapImage) {
        for (k, v) in &self.peers {
            match v {
                Some(v) => image.peers.insert(*k, *v),
                None => image.peers.remove(k),
            };
        }
        image.ports.extend(self.ports.iter().map(|(k, v)| (*k, *v)));
    }
}

/// The rules, prefix lists and bound interfaces' groups of two policies are the same: only
/// memberships (interfaces, their addresses and groups, bound or not) may differ.
fn same_but_members(a: &Policy, b: &Policy, bindings: &BTreeMap<String, u32>) -> bool {
    // Compared as iterators: a membership change of a 10k-rule policy compares them all, and
    // collecting both sides first cost more than the comparison.
    fn rules(p: &Policy) -> impl Iterator<Item = (RuleKey<'_>, &GroupId)> {
        p.groups.values().flat_map(|g| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .flat_map(|d| g.rules(d))
                .map(move |r| ((&r.id, r.direction, &r.protocol, &r.peer), &g.id))
        })
    }
    fn lists(p: &Policy) -> Vec<(&crate::policy::PrefixListId, &Vec<IpNet>)> {
        p.prefix_lists
            .values()
            .map(|l| (&l.id, &l.entries))
            .collect()
    }
    fn bound<'p>(
        p: &'p Policy,
        bindings: &BTreeMap<String, u32>,
    ) -> Option<Vec<(BTreeSet<&'p GroupId>, crate::policy::Timeouts)>> {
        bindings
            .keys()
            .map(|n| {
                p.interface(n)
                    .map(|i| (i.groups.iter().collect(), i.timeouts))
            })
            .collect()
    }
    let before = bound(a, bindings);
    // A router's NACL classes are not recomputed by a delta.
    a.network_acls == b.network_acls
        && a.subnets == b.subnets
        // A delta writes no SG_IFACES entry, so an interface's audit flag changes whole.
        && a.audit == b.audit
        && a.groups.keys().eq(b.groups.keys())
        && rules(a).eq(rules(b))
        && lists(a) == lists(b)
        && before.is_some()
        && before == bound(b, bindings)
}

type RuleKey<'a> = (&'a crate::policy::RuleId, Direction, &'a Protocol, &'a Peer);

/// When `after` differs from `before` (compiled into `image`, with `index`, for `bindings`)
/// only by memberships, the change as a [`Delta`] of `image`; None when anything else
/// changed (then compile it whole).
///
/// A host prefix's chain depends only on the prefixes covering it, so only the peer entries
/// of hosts that joined or left a group can change: each is recomputed by walking its
/// covering prefixes alone, with the classes interned against `index` (same content, same
/// id). The property tests check that the patched image answers like a full compile.
pub fn membership_delta(
    before: &Policy,
    after: &Policy,
    bindings: &BTreeMap<String, u32>,
    image: &MapImage,
    index: &Index,
) -> Result<Option<Delta>, CompileError> {
    if !same_but_members(before, after, bindings) {
        return Ok(None);
    }
    let (m0, m1) = (memberships(before)?, memberships(after)?);
    let mut hosts: BTreeSet<Prefix> = BTreeSet::new();
    for g in m0.keys().chain(m1.keys()) {
        let (a, b) = (m0.get(g), m1.get(g));
        let (a, b) = (
            a.cloned().unwrap_or_default(),
            b.cloned().unwrap_or_default(),
        );
        hosts.extend(a.symmetric_difference(&b));
    }
    let gen_bit = image.generation << 31;
    let mut delta = Delta {
        generation: image.generation,
        ..Delta::default()
    };
    if hosts.is_empty() {
        return Ok(Some(delta));
    }
    // The rules are the live compile's (same_but_members): its rule table stands, and the
    // delta costs no sort or index of every rule.
    let table = &index.rules;
    let sets: BTreeSet<Vec<GroupId>> = bindings
        .keys()
        .filter_map(|n| after.interface(n))
        .map(|i| {
            i.groups
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .collect();
    let mut scope_ids = Ids::new(gen_bit);
    let mut scratch = MapImage::default();
    let mut classes = Classes {
        ids: Ids::new(gen_bit),
        by_entries: HashMap::new(),
        base: Some(index),
        image: &mut scratch,
    };
    for set in &sets {
        let (scope_in, scope_out) = scope_ids.scopes(set)?;
        for (dir, scope) in [
            (Direction::Ingress, scope_in),
            (Direction::Egress, scope_out),
        ] {
            let here = scope_rules(after, set, dir);
            let c4 = scope_c4(after, set, dir);
            for h in &hosts {
                let covering = scope_prefixes(after, &m1, &here, &table.winner, |p| {
                    p.family == h.family && p.covers(h)
                })?;
                classes.image.peers.clear();
                let c4 = &c4[usize::from(h.family == Family::V6)];
                walk(scope, covering.iter(), table, c4, &mut classes)?;
                let key = h.key(scope);
                let new = classes.image.peers.get(&key).copied();
                if image.peers.get(&key).copied() != new {
                    delta.peers.insert(key, new);
                }
            }
        }
    }
    delta.new_ids = classes.ids.taken;
    delta.new_classes = classes.by_entries;
    delta.ports = std::mem::take(&mut scratch.ports);
    Ok(Some(delta))
}

fn unresolved(what: &'static str, id: &str, by: &str) -> CompileError {
    CompileError::Unresolved {
        what,
        id: id.to_string(),
        by: by.to_string(),
    }
}

/// A prefix in the 128-bit key space (IPv4 mapped into `::ffff:0:0/96`). Ordered by family,
/// then address, then length: a walk in this order meets every prefix after the prefixes
/// covering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prefix {
    family: Family,
    addr: u128,
    /// In the 128-bit space: 96 + len for IPv4.
    len: u32,
}

impl Prefix {
    const MAPPED: u128 = 0xffff << 32;
    /// IPv4 0.0.0.0/0, i.e. `::ffff:0:0/96`.
    const V4_ROOT: Prefix = Prefix {
        family: Family::V4,
        addr: Self::MAPPED,
        len: 96,
    };

    fn net(net: &IpNet) -> Prefix {
        // Canonicalise even though validation did: two spellings of one prefix must land on
        // one trie key, not overwrite each other.
        match net.trunc() {
            IpNet::V4(n) => Prefix {
                family: Family::V4,
                addr: Self::MAPPED | u128::from(u32::from(n.network())),
                len: 96 + u32::from(n.prefix_len()),
            },
            IpNet::V6(n) => Prefix {
                family: Family::V6,
                addr: u128::from(n.network()),
                len: u32::from(n.prefix_len()),
            },
        }
    }

    /// A member address as a host prefix; an IPv4-mapped IPv6 address is its IPv4 address.
    fn host(a: IpAddr) -> Prefix {
        let a = match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            IpAddr::V4(_) => a,
        };
        match a {
            IpAddr::V4(v4) => Prefix {
                family: Family::V4,
                addr: Self::MAPPED | u128::from(u32::from(v4)),
                len: 128,
            },
            IpAddr::V6(v6) => Prefix {
                family: Family::V6,
                addr: u128::from(v6),
                len: 128,
            },
        }
    }

    /// `self` contains `other` in the key space (families ignored).
    fn covers(&self, other: &Prefix) -> bool {
        self.len <= other.len
            && (self.len == 0 || (self.addr ^ other.addr) >> (128 - self.len) == 0)
    }

    fn key(&self, scope: u32) -> LpmKey<PeerData> {
        LpmKey {
            prefix_len: PEER_SCOPE_BITS + self.len,
            data: PeerData {
                scope: scope.to_be_bytes(),
                addr: self.addr.to_be_bytes(),
            },
        }
    }
}

/// Stable 31-bit ids for scopes and classes: `gen << 31 | h`, h from a 64-bit FNV-1a hash
/// of what the id names (never 0). Two names that land on one h are told apart by probing
/// upward, in the compiler's deterministic order, so the same input always gives the same
/// ids; an id only changes when what it names does (or, rarely, on such a collision).
struct Ids {
    gen_bit: u32,
    taken: BTreeSet<u32>,
}

impl Ids {
    fn new(gen_bit: u32) -> Ids {
        Ids {
            gen_bit,
            taken: BTreeSet::new(),
        }
    }

    /// The ids `scope_in`/`scope_out` of the interfaces carrying `set`.
    fn scopes(&mut self, set: &[GroupId]) -> Result<(u32, u32), CompileError> {
        let mut h = Fnv::new();
        for g in set {
            h.bytes(g.as_str().as_bytes());
            h.bytes(&[0]);
        }
        let scope_in = self.take(h.clone().bytes(b"in").finish())?;
        let scope_out = self.take(h.bytes(b"out").finish())?;
        Ok((scope_in, scope_out))
    }

    fn take(&mut self, hash: u64) -> Result<u32, CompileError> {
        self.take_beside(hash, None)
    }

    /// [`Ids::take`], also avoiding the ids of `base`.
    fn take_beside(&mut self, hash: u64, base: Option<&Index>) -> Result<u32, CompileError> {
        if self.taken.len() >= (1 << 31) - 2 {
            return Err(CompileError::TooManyIds("scopes and classes"));
        }
        let mut h = ((hash ^ (hash >> 31) ^ (hash >> 62)) as u32) & 0x7fff_ffff;
        while h == 0 || self.taken.contains(&h) || base.is_some_and(|b| b.taken.contains(&h)) {
            h = (h + 1) & 0x7fff_ffff;
        }
        self.taken.insert(h);
        Ok(self.gen_bit | h)
    }
}

/// FNV-1a, 64 bits: small, deterministic across builds and platforms.
#[derive(Clone)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Fnv {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The class numbering and the image being filled.
struct Classes<'a> {
    ids: Ids,
    by_entries: HashMap<Vec<ports::PortEntry>, u32>,
    /// Classes an earlier compile already has (a delta only writes the ones it lacks).
    base: Option<&'a Index>,
    image: &'a mut MapImage,
}

/// The scope and class ids of a compiled image, each class's entries and the compile's rule
/// table: what a [`membership_delta`] needs to reuse the image's classes, pick fresh ids and
/// skip step 1.
#[derive(Clone, Debug, Default)]
pub struct Index {
    taken: BTreeSet<u32>,
    by_entries: HashMap<Vec<ports::PortEntry>, u32>,
    rules: RuleTable,
}

/// Step 1: every rule's rank in id order (its `Winner`; E4 step 3, the smaller id wins), its
/// (protocol, port) points and its counter slot. Only memberships may differ between a
/// policy and the next one a delta compiles, so the full compile's table serves the deltas.
#[derive(Clone, Debug, Default)]
struct RuleTable {
    winner: HashMap<RuleId, Winner>,
    /// By winner.
    points: Vec<Points>,
    /// By winner.
    slot_of: Vec<u32>,
}

impl Index {
    /// Takes in the classes a delta added (after it was applied).
    pub fn absorb(&mut self, delta: Delta) {
        self.taken.extend(delta.new_ids);
        self.by_entries.extend(delta.new_classes);
    }
}

impl Classes<'_> {
    /// The class id of `entries` and how many entries it has.
    fn intern(&mut self, entries: Vec<ports::PortEntry>) -> Result<(u32, usize), CompileError> {
        let n = entries.len();
        if let Some(&id) = self.by_entries.get(&entries) {
            return Ok((id, n));
        }
        if let Some(&id) = self.base.and_then(|b| b.by_entries.get(&entries)) {
            return Ok((id, n));
        }
        let mut h = Fnv::new();
        for (proto, any, page, p) in &entries {
            h.bytes(&[*proto, *any]).bytes(&page.to_le_bytes());
            for (start, val) in p.starts.iter().zip(&p.vals) {
                h.bytes(&start.to_le_bytes())
                    .bytes(&val.slot.to_le_bytes())
                    .bytes(&val.flags.to_le_bytes());
            }
        }
        let id = self.ids.take_beside(h.finish(), self.base)?;
        for &(proto, any, page, p) in &entries {
            self.image.ports.insert(
                PortKey {
                    class: id,
                    proto,
                    any,
                    page,
                },
                p,
            );
        }
        self.by_entries.insert(entries, id);
        Ok((id, n))
    }
}

/// A prefix on the walk's stack: its chain, and the winner map of the chain's first class
/// (what deeper prefixes merge into when the chain is full).
struct Level {
    prefix: Prefix,
    first: PortMap,
    /// Pages of the chain's first class.
    first_len: usize,
    chain: Vec<u32>,
}

/// A covering prefix's first class with at most this many pages is merged into a nested
/// prefix's class rather than asked after it: a few copied segments buy one lookup less.
const MERGE_PAGES: usize = 8;

/// Step 5 for one (scope, family): the peer entries and their class chains.
fn walk<'p>(
    scope: u32,
    prefixes: impl Iterator<Item = (&'p Prefix, &'p Vec<Winner>)>,
    table: &RuleTable,
    c4: &Untracked,
    classes: &mut Classes,
) -> Result<(), CompileError> {
    let (points, slot_of) = (&table.points, &table.slot_of);
    let mut stack: Vec<Level> = Vec::new();
    for (p, own) in prefixes {
        while stack.last().is_some_and(|l| !l.prefix.covers(p)) {
            stack.pop();
        }
        let mut own: Vec<(Points, Winner)> = own.iter().map(|&w| (points[w as usize], w)).collect();
        own.sort_unstable_by_key(|&(_, w)| w);
        own.dedup();
        let own = ports::level(&own);
        let parent = stack.last();
        let (first, first_len, chain) = match parent {
            // A prefix without rules (the IPv4 barrier) denies everything it covers.
            None if own.is_empty() => (own, 0, Vec::new()),
            Some(q) if own.is_empty() => (q.first.clone(), q.first_len, q.chain.clone()),
            // Nothing of the parent shows through a -1 rule.
            None => {
                let (c, n) = classes.intern(ports::encode(&own, c4, slot_of))?;
                (own, n, vec![c])
            }
            Some(_) if own.all.is_some() => {
                let (c, n) = classes.intern(ports::encode(&own, c4, slot_of))?;
                (own, n, vec![c])
            }
            // A small first class is copied into this prefix's class (one lookup fewer for
            // what it covers); a big one is asked after it, while the chain has room.
            Some(q) if q.first_len > MERGE_PAGES && q.chain.len() < CLASS_CHAIN => {
                let (c, n) = classes.intern(ports::encode(&own, c4, slot_of))?;
                let mut chain = Vec::with_capacity(q.chain.len() + 1);
                chain.push(c);
                chain.extend_from_slice(&q.chain);
                (own, n, chain)
            }
            Some(q) => {
                let merged = ports::overlay(&q.first, &own);
                let (c, n) = classes.intern(ports::encode(&merged, c4, slot_of))?;
                let mut chain = q.chain.clone();
                match chain.first_mut() {
                    Some(first) => *first = c,
                    None => chain.push(c),
                }
                (merged, n, chain)
            }
        };
        if parent.is_none_or(|q| q.chain != chain) {
            let mut val = PeerVal::default();
            val.classes[..chain.len()].copy_from_slice(&chain);
            classes.image.peers.insert(p.key(scope), val);
        }
        stack.push(Level {
            prefix: *p,
            first,
            first_len,
            chain,
        });
    }
    Ok(())
}

/// A rule's points (F1-F4): ICMP as `type << 8 | code`, other numbers all ports (F2).
fn points(p: &Protocol) -> Points {
    let icmp = |proto: u8, m: &IcmpMatch| {
        let (from, to) = match *m {
            IcmpMatch::All => (0, 65535),
            IcmpMatch::Type(t) => (u16::from(t) << 8, u16::from(t) << 8 | 0xff),
            IcmpMatch::TypeCode(t, c) => {
                let v = u16::from(t) << 8 | u16::from(c);
                (v, v)
            }
        };
        Points::Range { proto, from, to }
    };
    match p {
        Protocol::All => Points::All,
        Protocol::Tcp(r) => Points::Range {
            proto: sg_common::proto::TCP,
            from: r.from,
            to: r.to,
        },
        Protocol::Udp(r) => Points::Range {
            proto: sg_common::proto::UDP,
            from: r.from,
            to: r.to,
        },
        Protocol::Icmp(m) => icmp(sg_common::proto::ICMP, m),
        Protocol::Icmpv6(m) => icmp(sg_common::proto::ICMPV6, m),
        Protocol::Number(n) => Points::Range {
            proto: *n,
            from: 0,
            to: 65535,
        },
    }
}

/// Step 6 (C4) for one (scope, direction, family).
fn untracked(
    here: &[&crate::policy::Rule],
    opposite: &[&crate::policy::Rule],
    fam: Family,
) -> Untracked {
    let world = |r: &&&crate::policy::Rule| matches!(&r.peer, Peer::Cidr(n) if n.prefix_len() == 0 && Family::of_net(n) == fam);
    let ports_for = |proto: u8| -> Vec<(u16, u16)> {
        let opposite_all = opposite.iter().filter(world).any(|r| match r.protocol {
            Protocol::All => true,
            Protocol::Tcp(range) | Protocol::Udp(range) => {
                r.protocol.number() == Some(proto) && range == PortRange::ALL
            }
            _ => false,
        });
        if !opposite_all {
            return Vec::new();
        }
        let ranges = here
            .iter()
            .filter(world)
            .filter_map(|r| match r.protocol {
                Protocol::All => Some((0, 65535)),
                Protocol::Tcp(range) | Protocol::Udp(range)
                    if r.protocol.number() == Some(proto) =>
                {
                    Some((range.from, range.to))
                }
                _ => None,
            })
            .collect();
        ports::merge_ranges(ranges)
    };
    Untracked {
        tcp: ports_for(sg_common::proto::TCP),
        udp: ports_for(sg_common::proto::UDP),
    }
}
