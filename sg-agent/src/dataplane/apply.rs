//! Atomic policy change (docs/design.md "Atomic policy change", E7, X1).
//!
//! The policy maps hold two generations side by side: every interface key carries its
//! generation, every scope and class id carries it in its top bit. An apply
//! 1. checks the image (generation bits, counter slots in range),
//! 2. clears leftovers of the target generation (it is not live, so nothing sees them),
//! 3. writes the image's interfaces, peers and ports for the target generation,
//! 4. flips SG_ACTIVE: one 4-byte write, so every packet sees the old policy or the new one,
//!    never a mix.
//!
//! The old generation is left in place: it is not live, and the next apply targets it, so
//! steps 2 and 3 only delete and write what differs between it and the new image (scope and
//! class ids are stable hashes, so an unchanged rule set is unchanged entries). A membership
//! change is then a handful of map writes and one flip, whatever the size of the policy.
//! Before touching the non-live generation an apply makes sure [`QUIESCE`] has passed since
//! the flip that retired it, so no packet still reads it.
//!
//! A failure before the flip deletes whatever of the target generation was written, so the
//! old policy stays in force and nothing is half applied.
//!
//! The mirror is what we know the kernel holds. It is updated entry by entry, only after the
//! kernel accepted the write or the delete, so it never claims more than the truth.
//! Conntrack is never touched (X1).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap, LpmTrie, MapData, MapError, PerCpuValues};
use sg_common::{
    IfaceConf, IfaceKey, PEER_SCOPE_BITS, PeerData, PeerVal, PortKey, PortPage, RuleCounter,
    iface_flags, maps, rule_flags,
};

use super::{Dataplane, Maps};
use crate::image::{LpmKey, MapImage, SlotTable};

/// How long the old generation stays untouched after the flip. A program reads SG_ACTIVE once
/// per packet and then looks up entries of that generation; XDP and TC programs run inside an
/// RCU read-side section per packet (microseconds), so after the flip no reader can still be
/// using the old generation once this has passed. Userspace has no direct way to wait for an
/// RCU grace period, hence a generous margin; only back-to-back applies ever wait for it.
pub const QUIESCE: Duration = Duration::from_millis(10);

/// The policy entries of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GenEntries {
    pub ifaces: BTreeMap<IfaceKey, IfaceConf>,
    pub peers: BTreeMap<LpmKey<PeerData>, PeerVal>,
    pub ports: BTreeMap<PortKey, PortPage>,
}

impl GenEntries {
    pub fn len(&self) -> usize {
        self.ifaces.len() + self.peers.len() + self.ports.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What we know the kernel's policy maps hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mirror {
    pub active: u32,
    pub gens: [GenEntries; 2],
    /// The slot table of the last applied image (for counters by rule id).
    pub slots: SlotTable,
    /// Every slot an applied image ever referenced (where a test run's charge can land).
    pub known_slots: BTreeSet<u32>,
    /// When SG_ACTIVE last changed (None: not by this process).
    pub flipped_at: Option<Instant>,
    /// SG_NACL_PORTS's non-zero slots (the router ports of both generations), by index.
    pub nacl_ports: BTreeMap<u32, u64>,
}

impl Mirror {
    /// Reads the kernel's policy maps (used at load: pinned maps may hold a live policy).
    pub fn read(m: &Maps) -> Result<Mirror> {
        let mut mirror = Mirror {
            active: m.active.get(&0, 0).context("reading SG_ACTIVE")? & 1,
            ..Mirror::default()
        };
        for kv in m.ifaces.iter() {
            let (k, v) = kv.context("reading SG_IFACES")?;
            mirror.gens[(k.generation & 1) as usize].ifaces.insert(k, v);
        }
        for kv in m.peers.iter() {
            let (k, v) = kv.context("reading SG_PEERS")?;
            let g = peer_generation(&k.data());
            mirror.gens[g as usize].peers.insert(lpm(&k), v);
        }
        for kv in m.ports.iter() {
            let (k, v) = kv.context("reading SG_PORTS")?;
            mirror.known_slots.extend(rule_slots(&v));
            mirror.gens[port_generation(&k) as usize].ports.insert(k, v);
        }
        for (i, v) in m.nacl_ports.iter().enumerate() {
            let v = v.context("reading SG_NACL_PORTS")?;
            if v != 0 {
                mirror.nacl_ports.insert(i as u32, v);
            }
        }
        Ok(mirror)
    }
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The generation now active.
    pub generation: u32,
    /// Entries of the new image (interfaces, peers, ports).
    pub entries: usize,
    /// Entries written: the ones the target generation did not already hold.
    pub written: usize,
    /// Entries of the target generation the image does not have, deleted before writing.
    pub stale_removed: usize,
    /// Counter slots newly given to a rule, zeroed before the flip.
    pub counters_zeroed: usize,
    /// From start to flip: how long the change took to take effect.
    pub to_flip: Duration,
    /// Conntrack entries deleted after the flip because their interface became a network ACL
    /// interface (issue 17).
    pub flows_removed: usize,
    /// Conntrack entries deleted after the flip because audit mode (L3) admitted them on an
    /// interface the new image no longer audits.
    pub audit_flows_ended: usize,
}

fn lpm<T: aya::Pod>(k: &Key<T>) -> LpmKey<T> {
    LpmKey {
        prefix_len: k.prefix_len(),
        data: k.data(),
    }
}

fn key<T: aya::Pod>(k: &LpmKey<T>) -> Key<T> {
    Key::new(k.prefix_len, k.data)
}

fn peer_generation(d: &PeerData) -> u32 {
    u32::from(d.scope[0] >> 7)
}

fn port_generation(k: &PortKey) -> u32 {
    k.class >> 31
}

/// The counter slots of the rules a page names (not its child page numbers, not slot 0, not
/// the router-local marker of a network ACL class, which names no counter).
fn rule_slots(page: &PortPage) -> impl Iterator<Item = u32> + '_ {
    let not_rules = rule_flags::PAGE | rule_flags::ROUTER_LOCAL;
    page.vals
        .iter()
        .filter(move |v| v.flags & not_rules == 0 && v.slot != sg_common::NO_RULE_SLOT)
        .map(|v| v.slot)
}

/// Checks that every key and id of the image carries its generation.
fn check_generation(image: &MapImage) -> Result<()> {
    let g = image.generation;
    if g > 1 {
        bail!("image generation {g} is not 0 or 1");
    }
    for (k, v) in &image.ifaces {
        if k.generation != g || v.scope_in >> 31 != g || v.scope_out >> 31 != g {
            bail!(
                "image for generation {g} has an interface entry of another generation: {k:?} \
                 -> {v:?} (a compiler bug)"
            );
        }
    }
    for (k, v) in &image.peers {
        let chain = v.classes.iter().take_while(|&&c| c != 0);
        if peer_generation(&k.data) != g
            || chain.clone().any(|c| c >> 31 != g)
            || v.classes.iter().skip(chain.count()).any(|&c| c != 0)
        {
            bail!(
                "image for generation {g} has a peer entry of another generation or a broken \
                 chain: {k:?} -> {v:?}"
            );
        }
    }
    for k in image.ports.keys() {
        if port_generation(k) != g {
            bail!("image for generation {g} has a port entry of another generation: {k:?}");
        }
    }
    Ok(())
}

/// Checks that every counter slot of the image is a rule's slot within the capacity.
fn check_slots(image: &MapImage, cap: u32) -> Result<()> {
    let slot_values = image
        .slots
        .by_rule
        .values()
        .copied()
        .chain(image.ports.values().flat_map(rule_slots));
    for s in slot_values {
        if s == sg_common::NO_RULE_SLOT || s >= cap {
            bail!(
                "the image uses counter slot {s}, outside 1..{cap}; hint: raise the rule slot \
                 capacity or recompile with it"
            );
        }
    }
    Ok(())
}

/// Every router port needs a slot of SG_NACL_PORTS: that array is the datapath's only way to
/// a network ACL (the general path would treat the port as a security-group interface).
fn check_router_ports(image: &MapImage) -> Result<()> {
    for k in image
        .ifaces
        .iter()
        .filter(|(_, v)| v.flags & iface_flags::NACL != 0)
        .map(|(k, _)| k)
    {
        if sg_common::nacl_port_slot(k.ifindex, image.generation).is_none() {
            bail!(
                "interface ifindex {} faces a subnet, but router ports need an ifindex below {}; \
                 hint: recreate the interface (or its namespace) so it gets a lower ifindex",
                k.ifindex,
                sg_common::capacity::NACL_PORT_SLOTS / 2
            );
        }
    }
    Ok(())
}

/// What generation `image` holds, for the datapath (`sg_common::active`): a router port, an
/// auditing interface.
fn active_flags(image: &MapImage) -> u32 {
    let any = |flag: u32| image.ifaces.values().any(|v| v.flags & flag != 0);
    let mut flags = 0;
    if any(iface_flags::NACL) {
        flags |= sg_common::active::ROUTER_PORTS;
    }
    if any(iface_flags::AUDIT) {
        flags |= sg_common::active::AUDIT_IFACES;
    }
    flags
}

impl Dataplane {
    /// Makes `image` the enforced policy, atomically (see the module comment). On error the
    /// previous policy is still enforced and the kernel holds nothing of the new one (unless
    /// even the rollback failed: the error then says how much is left).
    pub fn apply(&mut self, image: &MapImage) -> Result<ApplyReport> {
        let start = Instant::now();
        check_generation(image)?;
        check_slots(image, self.caps.rule_slots)?;
        check_router_ports(image)?;
        let g = image.generation;

        let mut report = ApplyReport {
            generation: g,
            ..ApplyReport::default()
        };

        if g == self.mirror.active {
            if !self.mirror.gens[g as usize].is_empty() {
                bail!(
                    "the image targets generation {g}, which is live; hint: compile for \
                     generation {} (Dataplane::next_generation)",
                    1 - g
                );
            }
            // Nothing is enforced by the active generation (a fresh load, or an empty
            // policy): make the other generation active first, after clearing it, so the
            // writes below are invisible until the flip.
            let other = 1 - g;
            report.stale_removed += self.clear_generation(other)?;
            self.write_nacl_ports(other, &BTreeMap::new())?;
            self.flip(other, 0)?;
        }

        // 2. The target generation is not live (any more): once packets that read it before
        // the last flip are gone, delete what the image lacks.
        if let Some(at) = self.mirror.flipped_at {
            std::thread::sleep(QUIESCE.saturating_sub(at.elapsed()));
        }
        report.stale_removed += self.remove_missing(g, image)?;

        // Counters of slots newly given to a rule start at zero (E4: a slot is a rule).
        let mut zero = Vec::new();
        for (rule, &slot) in &image.slots.by_rule {
            if self.mirror.slots.slot(rule) != Some(slot) {
                zero.push(slot);
            }
        }

        // Interfaces that become network ACL interfaces: stateless from the flip on (A1,
        // A25). The datapath never looks their flows up again; they go at once rather than
        // idle out, so the table and `flows` stop showing them.
        let live = &self.mirror.gens[(1 - g) as usize].ifaces;
        let was_nacl = |ifindex: u32| {
            live.iter()
                .any(|(k, v)| k.ifindex == ifindex && v.flags & iface_flags::NACL != 0)
        };
        let became_nacl: BTreeSet<u32> = image
            .ifaces
            .iter()
            .filter(|(k, v)| v.flags & iface_flags::NACL != 0 && !was_nacl(k.ifindex))
            .map(|(k, _)| k.ifindex)
            .collect();

        let audit_ending = self.audit_ending(image)?;

        // 3. Write the new generation, then 4. flip. Roll back on any error.
        let written = self
            .zero_counters(&zero)
            .and_then(|()| self.write_generation(image))
            .and_then(|n| self.write_nacl_ports(g, &image.ifaces).map(|()| n));
        let flipped = written.and_then(|n| self.flip(g, active_flags(image)).map(|()| n));
        let n = flipped.map_err(|e| self.roll_back(g, e))?;
        report.written = n;
        report.entries = image.ifaces.len() + image.peers.len() + image.ports.len();
        report.counters_zeroed = zero.len();
        report.to_flip = start.elapsed();
        // After the flip: before it, the old generation could still create state for them.
        // Until this returns their old flows still pass (a window of one map walk); no new
        // flow is created on them any more.
        if !became_nacl.is_empty() {
            report.flows_removed = self.delete_flows(|k, _| became_nacl.contains(&k.ifindex))?;
        }
        if !audit_ending.is_empty() {
            report.audit_flows_ended = self.end_audited_flows_on(&audit_ending)?;
        }

        self.mirror.slots = image.slots.clone();
        self.mirror.known_slots.extend(image.slots.by_rule.values());
        self.mirror
            .known_slots
            .extend(image.ports.values().flat_map(rule_slots));
        Ok(report)
    }

    /// The interfaces whose own audit mode (L3) `image` ends: after the flip the flows audit
    /// admitted there go (flows it admits end when it ends), unless the global audit mode
    /// keeps admitting them.
    fn audit_ending(&self, image: &MapImage) -> Result<BTreeSet<u32>> {
        if self.audit()? {
            return Ok(BTreeSet::new());
        }
        let kept: BTreeSet<u32> = image
            .ifaces
            .iter()
            .filter(|(_, v)| v.flags & iface_flags::AUDIT != 0)
            .map(|(k, _)| k.ifindex)
            .collect();
        Ok(self.audit_ifaces().difference(&kept).copied().collect())
    }

    /// Deletes what a failed apply wrote of generation `g` (not live), and says so on `e`.
    fn roll_back(&mut self, g: u32, e: anyhow::Error) -> anyhow::Error {
        let left = self.clear_generation(g);
        let live = self.mirror.active;
        match left {
            Ok(_) => e.context(format!(
                "apply of generation {g} failed and was rolled back; generation {live} is still \
                 enforced"
            )),
            Err(e2) => e.context(format!(
                "apply of generation {g} failed and the rollback failed too ({e2:#}); generation \
                 {live} is still enforced, {} entries of generation {g} remain and will be \
                 cleared by the next apply",
                self.mirror.gens[g as usize].len()
            )),
        }
    }

    /// Applies a membership change ([`crate::compile::membership_delta`]) to the live
    /// generation in place, without a flip: first the classes it adds (nothing references
    /// them yet), then its peer entries. Only host entries (/32, /128) change and no two of
    /// them nest, so each packet's one peer lookup finds either its host's old entry or its
    /// new one, each whole: one policy or the other, never a mix. Classes nothing references
    /// any more stay until the next whole apply. On error the peer entries already written
    /// are put back.
    pub fn apply_delta(&mut self, delta: &crate::compile::Delta) -> Result<ApplyReport> {
        let start = Instant::now();
        let g = self.mirror.active;
        if delta.generation != g || self.mirror.gens[g as usize].ifaces.is_empty() {
            bail!(
                "the delta is for generation {}, but generation {g} is live{}; hint: compile \
                 the policy whole",
                delta.generation,
                if self.mirror.gens[g as usize].ifaces.is_empty() {
                    " and empty"
                } else {
                    ""
                }
            );
        }
        let host = PEER_SCOPE_BITS + 128;
        for (k, v) in &delta.peers {
            let chain_ok = v.is_none_or(|v| v.classes.iter().all(|&c| c == 0 || c >> 31 == g));
            if k.prefix_len != host || peer_generation(&k.data) != g || !chain_ok {
                bail!("the delta changes {k:?} -> {v:?}: not a host entry of generation {g}");
            }
        }
        for (k, v) in &delta.ports {
            if port_generation(k) != g || rule_slots(v).any(|s| s >= self.caps.rule_slots) {
                bail!("the delta adds {k:?} -> {v:?}: not an entry of generation {g}");
            }
        }
        let (maps, mirror) = (&mut self.maps, &mut self.mirror.gens[g as usize]);
        let mut written = write_missing(
            &mut maps.ports,
            maps::PORTS,
            &mut mirror.ports,
            &delta.ports,
        )?;
        let mut done: Vec<(LpmKey<PeerData>, Option<PeerVal>)> = Vec::new();
        for (k, v) in &delta.peers {
            let old = mirror.peers.get(k).copied();
            if let Err(e) = set_peer(maps, mirror, k, *v) {
                for (k, old) in done.into_iter().rev() {
                    if let Err(e2) = set_peer(maps, mirror, &k, old) {
                        log::warn!("putting back {k:?} after a failed membership change: {e2:#}");
                    }
                }
                return Err(
                    e.context("membership change failed; the entries it wrote were put back")
                );
            }
            done.push((*k, old));
            written += 1;
        }
        Ok(ApplyReport {
            generation: g,
            entries: delta.peers.len() + delta.ports.len(),
            written,
            to_flip: start.elapsed(),
            ..ApplyReport::default()
        })
    }

    /// The entries of one generation as the mirror knows them (for tests and `status`).
    pub fn generation_entries(&self, g: u32) -> (usize, usize, usize) {
        let e = &self.mirror.gens[(g & 1) as usize];
        (e.ifaces.len(), e.peers.len(), e.ports.len())
    }

    /// Reads the policy maps back from the kernel and compares with the mirror: Ok when they
    /// agree (tests; `sg-agent status --check`).
    pub fn verify_mirror(&self) -> Result<()> {
        let kernel = Mirror::read(&self.maps)?;
        if kernel.active != self.mirror.active {
            bail!(
                "SG_ACTIVE is {} in the kernel, {} in the mirror",
                kernel.active,
                self.mirror.active
            );
        }
        for g in 0..2 {
            if kernel.gens[g] != self.mirror.gens[g] {
                bail!(
                    "generation {g} differs: kernel has {} entries, mirror {}",
                    kernel.gens[g].len(),
                    self.mirror.gens[g].len()
                );
            }
        }
        Ok(())
    }

    /// Makes generation `g`'s slots of SG_NACL_PORTS (not live: written before its flip,
    /// like the other policy maps) hold the router ports of `ifaces`, writing only what
    /// changes; the mirror follows each accepted write.
    fn write_nacl_ports(&mut self, g: u32, ifaces: &BTreeMap<IfaceKey, IfaceConf>) -> Result<()> {
        let want: BTreeMap<u32, u64> = ifaces
            .iter()
            .filter(|(_, v)| v.flags & iface_flags::NACL != 0)
            .filter_map(|(k, v)| {
                let slot = sg_common::nacl_port_slot(k.ifindex, g)?;
                Some((slot, u64::from(v.scope_in) << 32 | u64::from(v.scope_out)))
            })
            .collect();
        let stale: Vec<u32> = (self.mirror.nacl_ports.keys())
            .filter(|&&i| i & 1 == g && !want.contains_key(&i))
            .copied()
            .collect();
        let writes = want
            .iter()
            .map(|(&i, &v)| (i, v))
            .chain(stale.iter().map(|&i| (i, 0)));
        for (i, v) in writes {
            if self.mirror.nacl_ports.get(&i).copied().unwrap_or(0) == v {
                continue;
            }
            self.maps
                .nacl_ports
                .set(i, v, 0)
                .with_context(|| format!("writing {} slot {i}", maps::NACL_PORTS))?;
            if v == 0 {
                self.mirror.nacl_ports.remove(&i);
            } else {
                self.mirror.nacl_ports.insert(i, v);
            }
        }
        Ok(())
    }

    /// Makes generation `g` live, with `flags` (`sg_common::active`) saying what it holds.
    fn flip(&mut self, g: u32, flags: u32) -> Result<()> {
        let v = g | flags;
        self.maps
            .active
            .set(0, v, 0)
            .with_context(|| format!("writing {} = {v:#x}", maps::ACTIVE))?;
        self.mirror.active = g;
        self.mirror.flipped_at = Some(Instant::now());
        Ok(())
    }

    fn zero_counters(&mut self, slots: &[u32]) -> Result<()> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for &s in slots {
            let zeros = PerCpuValues::try_from(vec![RuleCounter::default(); ncpu])?;
            self.maps
                .rule_cnt
                .set(s, zeros, 0)
                .with_context(|| format!("zeroing {} slot {s}", maps::RULE_COUNTERS))?;
        }
        Ok(())
    }

    /// Writes the entries of `image` its generation (not live) does not hold yet. Returns how
    /// many it wrote.
    fn write_generation(&mut self, image: &MapImage) -> Result<usize> {
        let g = image.generation as usize;
        let (maps, mirror) = (&mut self.maps, &mut self.mirror.gens[g]);
        // Bottom-up (ports, peers, interfaces) for tidiness only: none of it is visible before
        // the flip.
        Ok(write_missing(
            &mut maps.ports,
            maps::PORTS,
            &mut mirror.ports,
            &image.ports,
        )? + write_missing(
            &mut maps.peers,
            maps::PEERS,
            &mut mirror.peers,
            &image.peers,
        )? + write_missing(
            &mut maps.ifaces,
            maps::IFACES,
            &mut mirror.ifaces,
            &image.ifaces,
        )?)
    }

    /// Deletes the entries of generation `g` that `image` does not have. Returns how many.
    fn remove_missing(&mut self, g: u32, image: &MapImage) -> Result<usize> {
        self.remove_entries(g, Some(image))
    }

    /// Deletes every entry of generation `g`. Returns how many.
    fn clear_generation(&mut self, g: u32) -> Result<usize> {
        self.remove_entries(g, None)
    }

    /// Deletes the entries of generation `g` not in `keep` (all when None), interfaces first
    /// (so a reader never finds an interface whose rules are half gone).
    fn remove_entries(&mut self, g: u32, keep: Option<&MapImage>) -> Result<usize> {
        let (maps, mirror) = (&mut self.maps, &mut self.mirror.gens[(g & 1) as usize]);
        let mut first_err: Option<anyhow::Error> = None;
        let n = remove_unkept(
            &mut maps.ifaces,
            maps::IFACES,
            &mut mirror.ifaces,
            keep.map(|w| &w.ifaces),
            &mut first_err,
        ) + remove_unkept(
            &mut maps.peers,
            maps::PEERS,
            &mut mirror.peers,
            keep.map(|w| &w.peers),
            &mut first_err,
        ) + remove_unkept(
            &mut maps.ports,
            maps::PORTS,
            &mut mirror.ports,
            keep.map(|w| &w.ports),
            &mut first_err,
        );
        match first_err {
            None => Ok(n),
            Some(e) => Err(e),
        }
    }
}

/// One policy map as the apply loops see it: the kernel side of one mirror table.
trait PolicyMap<K, V> {
    fn put(&mut self, k: &K, v: V) -> Result<(), MapError>;
    fn delete(&mut self, k: &K) -> Result<(), MapError>;
}

impl<K: aya::Pod, V: aya::Pod> PolicyMap<K, V> for HashMap<MapData, K, V> {
    fn put(&mut self, k: &K, v: V) -> Result<(), MapError> {
        self.insert(k, v, 0)
    }
    fn delete(&mut self, k: &K) -> Result<(), MapError> {
        self.remove(k)
    }
}

impl<K: aya::Pod, V: aya::Pod> PolicyMap<LpmKey<K>, V> for LpmTrie<MapData, K, V> {
    fn put(&mut self, k: &LpmKey<K>, v: V) -> Result<(), MapError> {
        self.insert(&key(k), v, 0)
    }
    fn delete(&mut self, k: &LpmKey<K>) -> Result<(), MapError> {
        self.remove(&key(k))
    }
}

/// Writes the entries of `want` that `mirror` does not hold as they are. Returns how many.
fn write_missing<K, V>(
    map: &mut impl PolicyMap<K, V>,
    name: &str,
    mirror: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Result<usize>
where
    K: Ord + Copy + std::fmt::Debug,
    V: PartialEq + Copy,
{
    let mut n = 0;
    for (k, v) in want {
        if mirror.get(k) == Some(v) {
            continue;
        }
        set_entry(map, name, mirror, k, Some(*v))?;
        n += 1;
    }
    Ok(n)
}

/// Deletes the entries of `mirror` that `keep` lacks (all when None), going on past a failure
/// (the first one lands in `first_err`). Returns how many it deleted.
fn remove_unkept<K, V>(
    map: &mut impl PolicyMap<K, V>,
    name: &str,
    mirror: &mut BTreeMap<K, V>,
    keep: Option<&BTreeMap<K, V>>,
    first_err: &mut Option<anyhow::Error>,
) -> usize
where
    K: Ord + Copy + std::fmt::Debug,
    V: Copy,
{
    let doomed: Vec<K> = mirror
        .keys()
        .filter(|k| keep.is_none_or(|w| !w.contains_key(k)))
        .copied()
        .collect();
    let mut n = 0;
    for k in doomed {
        match set_entry(map, name, mirror, &k, None) {
            Ok(()) => n += 1,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    n
}

/// Writes (Some) or deletes (None) one entry, then records it in the mirror. Deleting an
/// entry the kernel does not hold is not an error: the mirror was only behind.
fn set_entry<K, V>(
    map: &mut impl PolicyMap<K, V>,
    name: &str,
    mirror: &mut BTreeMap<K, V>,
    k: &K,
    v: Option<V>,
) -> Result<()>
where
    K: Ord + Copy + std::fmt::Debug,
    V: Copy,
{
    match v {
        Some(v) => {
            map.put(k, v).map_err(|e| map_error(name, "insert", k, e))?;
            mirror.insert(*k, v);
        }
        None => {
            match map.delete(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(name, "delete", k, e)),
            }
            mirror.remove(k);
        }
    }
    Ok(())
}

/// Writes (Some) or deletes (None) one peer entry, then records it in the mirror.
fn set_peer(
    maps: &mut Maps,
    mirror: &mut GenEntries,
    k: &LpmKey<PeerData>,
    v: Option<PeerVal>,
) -> Result<()> {
    set_entry(&mut maps.peers, maps::PEERS, &mut mirror.peers, k, v)
}

/// A map error with the map, the operation, the key, and a hint for the common causes.
fn map_error(map: &str, op: &str, k: &impl std::fmt::Debug, e: MapError) -> anyhow::Error {
    let errno = match &e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match errno {
        Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
            "; hint: the map is full: both generations must fit during an apply, raise its \
             capacity"
        }
        Some(libc::EINVAL) => "; hint: the kernel rejected the key (prefix length too long?)",
        _ => "",
    };
    anyhow!(e).context(format!("{op} in {map} failed for {k:?}{hint}"))
}
