//! The port half of the compiler: for one peer class, which rule wins every (protocol, port)
//! point (E4), and how that function becomes `SG_PORTS` LPM entries.
//!
//! A [`PortMap`] is the winner function as segments; [`level`] builds it for rules that share
//! one peer prefix, [`overlay`] puts a longer prefix's rules over its parent's map, and
//! [`encode`] turns a map plus the scope's C4 set into entries. Nothing here knows addresses,
//! groups or the policy types.

use std::collections::{BTreeMap, BTreeSet};

use sg_common::{PORT_CLASS_BITS, PORT_FULL_BITS, PORT_PROTO_BITS, RuleVal, rule_flags};

/// A rule, by its index in the policy's rules sorted by id: a smaller index is a smaller id.
pub(super) type Winner = u32;

/// E4 steps 2 and 3 among rules of one prefix: (points covered, rule index); smaller wins.
type Preference = (u32, Winner);

/// The (protocol, port) points one rule covers (F1-F4). ICMP is the "port" `type << 8 | code`
/// and a protocol without ports covers 0..=65535, so every rule but -1 is one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Points {
    /// Protocol -1.
    All,
    Range {
        proto: u8,
        from: u16,
        to: u16,
    },
}

impl Points {
    /// E4 step 2: the number of points covered.
    pub(super) fn count(&self) -> u32 {
        match self {
            Points::All => 256 * 65536,
            Points::Range { from, to, .. } => u32::from(*to) - u32::from(*from) + 1,
        }
    }
}

/// `val` holds from `start` up to the next segment's start (the last one up to 65535). A
/// segment list always starts at 0 and never has two adjacent segments with equal values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Seg<T> {
    pub start: u16,
    pub val: T,
}

/// For every (protocol, port) point, the winning rule, or None.
///
/// Invariant: a protocol in `protos` has a full segment list that already accounts for `all`;
/// a protocol not in it is `all` everywhere. A protocol whose list would be the single value
/// `all` is left out, so equal maps are equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PortMap {
    pub all: Option<Winner>,
    pub protos: BTreeMap<u8, Vec<Seg<Option<Winner>>>>,
}

impl PortMap {
    /// No winner anywhere.
    pub(super) fn is_empty(&self) -> bool {
        self.all.is_none() && self.protos.is_empty()
    }

    fn segs(&self, proto: u8) -> Vec<Seg<Option<Winner>>> {
        self.protos.get(&proto).cloned().unwrap_or_else(|| {
            vec![Seg {
                start: 0,
                val: self.all,
            }]
        })
    }

    fn insert(&mut self, proto: u8, segs: Vec<Seg<Option<Winner>>>) {
        if segs.len() == 1 && segs[0].val == self.all {
            self.protos.remove(&proto);
        } else {
            self.protos.insert(proto, segs);
        }
    }
}

/// The winner function of rules that all match through the same peer prefix: at each point
/// the rule covering the fewest points, then the smallest id (E4 steps 2 and 3; step 1 is a
/// tie at one prefix).
///
/// Cost: O(k log k) for k rules (one sweep per protocol).
pub(super) fn level(rules: &[(Points, Winner)]) -> PortMap {
    let all = rules
        .iter()
        .filter(|(p, _)| *p == Points::All)
        .map(|(_, w)| *w)
        .min();
    let mut by_proto: BTreeMap<u8, Vec<(u16, u16, Preference)>> = BTreeMap::new();
    for (p, w) in rules {
        if let Points::Range { proto, from, to } = *p {
            by_proto
                .entry(proto)
                .or_default()
                .push((from, to, (p.count(), *w)));
        }
    }
    let mut map = PortMap {
        all,
        protos: BTreeMap::new(),
    };
    for (proto, ranges) in by_proto {
        // Sweep: +rule at `from`, -rule after `to`; the best active rule holds until the next
        // boundary. Any -1 rule of the same level covers more points, so it only fills gaps.
        let mut events: Vec<(u32, bool, Preference)> = Vec::with_capacity(ranges.len() * 2);
        for (from, to, key) in ranges {
            events.push((u32::from(from), true, key));
            events.push((u32::from(to) + 1, false, key));
        }
        events.sort_unstable();
        let mut active: BTreeMap<Preference, u32> = BTreeMap::new();
        let mut segs: Vec<Seg<Option<Winner>>> = Vec::new();
        let mut i = 0;
        let mut pos = 0u32;
        while pos <= 65535 {
            while i < events.len() && events[i].0 == pos {
                let (_, add, key) = events[i];
                if add {
                    *active.entry(key).or_default() += 1;
                } else if let Some(n) = active.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&key);
                    }
                }
                i += 1;
            }
            let val = active.keys().next().map(|(_, w)| *w).or(all);
            push_seg(&mut segs, pos as u16, val);
            pos = events.get(i).map_or(65536, |e| e.0);
        }
        map.insert(proto, segs);
    }
    map
}

/// The map of a prefix whose own rules (`own`, from [`level`]) sit over its parent's map:
/// every own rule matches through a longer prefix than any inherited one, so E4 step 1 makes
/// it win wherever it matches, and the parent decides elsewhere.
///
/// Cost: O(|parent| + |own|).
pub(super) fn overlay(parent: &PortMap, own: &PortMap) -> PortMap {
    if own.all.is_some() {
        // An own -1 rule matches every point: nothing of the parent shows through.
        return own.clone();
    }
    let mut map = PortMap {
        all: parent.all,
        protos: parent.protos.clone(),
    };
    for (&proto, own_segs) in &own.protos {
        let segs = combine(&parent.segs(proto), own_segs, |base, top| top.or(base));
        map.insert(proto, segs);
    }
    map
}

/// Point-wise `f(a, b)` of two segment lists.
pub(super) fn combine<A: Copy, B: Copy, C: Copy + PartialEq>(
    a: &[Seg<A>],
    b: &[Seg<B>],
    f: impl Fn(A, B) -> C,
) -> Vec<Seg<C>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    loop {
        let start = a[i].start.max(b[j].start);
        push_seg(&mut out, start, f(a[i].val, b[j].val));
        let next_a = a.get(i + 1).map_or(65536, |s| u32::from(s.start));
        let next_b = b.get(j + 1).map_or(65536, |s| u32::from(s.start));
        let next = next_a.min(next_b);
        if next > 65535 {
            return out;
        }
        if next_a == next {
            i += 1;
        }
        if next_b == next {
            j += 1;
        }
    }
}

fn push_seg<T: PartialEq>(segs: &mut Vec<Seg<T>>, start: u16, val: T) {
    if segs.last().is_none_or(|s| s.val != val) {
        segs.push(Seg { start, val });
    }
}

/// C4 for one (scope, family): the TCP and UDP ports at which a packet is untracked (some /0
/// CIDR rule allows it and the opposite direction allows all of that protocol to /0). Empty
/// lists mean "never".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Untracked {
    pub tcp: Vec<(u16, u16)>,
    pub udp: Vec<(u16, u16)>,
}

impl Untracked {
    fn ports(&self, proto: u8) -> &[(u16, u16)] {
        match proto {
            sg_common::proto::TCP => &self.tcp,
            sg_common::proto::UDP => &self.udp,
            _ => &[],
        }
    }
}

/// Sorted, merged, non-overlapping inclusive ranges -> a full boolean segment list.
fn range_segs(ranges: &[(u16, u16)]) -> Vec<Seg<bool>> {
    let mut segs = Vec::new();
    let mut pos = 0u32;
    for &(from, to) in ranges {
        if u32::from(from) > pos {
            push_seg(&mut segs, pos as u16, false);
        }
        push_seg(&mut segs, from, true);
        pos = u32::from(to) + 1;
    }
    if pos <= 65535 {
        push_seg(&mut segs, pos as u16, false);
    }
    segs
}

/// Sorts and merges overlapping or adjacent inclusive ranges.
pub(super) fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(from) <= u32::from(last.1) + 1 => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

/// One `SG_PORTS` entry of a class, without the class id: (prefix length, protocol, first
/// port of the block, value). Sorted lists of these are what classes are deduplicated on.
pub(super) type PortEntry = (u32, u8, u16, RuleVal);

/// The entries a class needs so that the longest-prefix lookup of (protocol, port) returns the
/// winner of `map` with the UNTRACKED flag of `untracked`.
///
/// - A winner for every protocol (`map.all`) is the entry at prefix 32. It cannot carry a
///   flag that differs by protocol, so TCP/UDP get their own entries where C4 applies.
/// - Per protocol, adjacent equal values are merged, then the protocol's entry at prefix 40
///   (its default) is chosen as the value that saves the most block entries, and every
///   interval with another value is split into maximal aligned power-of-two blocks
///   (prefix 40 + 16 - log2(size)).
/// - Points with no winner get no entry: a miss, so the next class of the chain answers (or
///   the packet is denied). Such points only exist when there is no -1 winner, so nothing
///   shorter in the class can answer for them.
pub(super) fn encode(map: &PortMap, untracked: &Untracked, slot_of: &[u32]) -> Vec<PortEntry> {
    let val = |w: Winner, untracked: bool| RuleVal {
        slot: slot_of[w as usize],
        flags: if untracked { rule_flags::UNTRACKED } else { 0 },
    };
    let fallback: Option<RuleVal> = map.all.map(|w| val(w, false));
    let mut entries = Vec::new();
    if let Some(v) = fallback {
        entries.push((PORT_CLASS_BITS, 0, 0, v));
    }
    let mut protos: BTreeSet<u8> = map.protos.keys().copied().collect();
    for p in [sg_common::proto::TCP, sg_common::proto::UDP] {
        if !untracked.ports(p).is_empty() {
            protos.insert(p);
        }
    }
    for proto in protos {
        let flags = range_segs(untracked.ports(proto));
        let segs = combine(&map.segs(proto), &flags, |w, u| w.map(|w| val(w, u)));
        encode_proto(proto, &segs, fallback, &mut entries);
    }
    entries.sort_unstable();
    entries
}

fn encode_proto(
    proto: u8,
    segs: &[Seg<Option<RuleVal>>],
    fallback: Option<RuleVal>,
    entries: &mut Vec<PortEntry>,
) {
    let interval = |i: usize| {
        let to = segs.get(i + 1).map_or(65535, |s| s.start - 1);
        (segs[i].start, to)
    };
    // Blocks each value would need if it were not the default.
    let mut blocks: BTreeMap<RuleVal, usize> = BTreeMap::new();
    let mut has_gap = false;
    for (i, s) in segs.iter().enumerate() {
        match s.val {
            Some(v) => {
                let (from, to) = interval(i);
                *blocks.entry(v).or_default() += block_count(from, to);
            }
            None => has_gap = true,
        }
    }
    // The default is what the protocol's prefix-40 entry says, or the fallback (prefix 32, or
    // a miss) when there is none. A gap can only be expressed by the fallback being a miss.
    let default = if has_gap {
        debug_assert!(fallback.is_none(), "a -1 winner leaves no gap");
        None
    } else {
        let total: usize = blocks.values().sum();
        let fallback_cost = total - fallback.and_then(|f| blocks.get(&f)).copied().unwrap_or(0);
        let mut best = (fallback_cost, fallback);
        for (&v, &n) in &blocks {
            let cost = total - n + 1;
            if cost < best.0 {
                best = (cost, Some(v));
            }
        }
        best.1
    };
    if default != fallback
        && let Some(v) = default
    {
        entries.push((PORT_PROTO_BITS, proto, 0, v));
    }
    for (i, s) in segs.iter().enumerate() {
        if let Some(v) = s.val
            && s.val != default
        {
            let (from, to) = interval(i);
            for (start, len) in blocks_of(from, to) {
                entries.push((len, proto, start, v));
            }
        }
    }
}

/// Maximal aligned power-of-two blocks covering `from..=to`: (first port, prefix length).
pub(super) fn blocks_of(from: u16, to: u16) -> impl Iterator<Item = (u16, u32)> {
    let mut pos = u32::from(from);
    let end = u32::from(to) + 1;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        // The largest block aligned at `pos` that still fits before `end`.
        let mut size = if pos == 0 {
            65536
        } else {
            1 << pos.trailing_zeros()
        };
        while pos + size > end {
            size >>= 1;
        }
        let start = pos as u16;
        pos += size;
        Some((start, PORT_FULL_BITS - size.trailing_zeros()))
    })
}

fn block_count(from: u16, to: u16) -> usize {
    blocks_of(from, to).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(proto: u8, from: u16, to: u16) -> Points {
        Points::Range { proto, from, to }
    }

    #[test]
    fn blocks_are_maximal_and_aligned() {
        assert_eq!(blocks_of(0, 65535).collect::<Vec<_>>(), vec![(0, 40)]);
        assert_eq!(blocks_of(22, 22).collect::<Vec<_>>(), vec![(22, 56)]);
        assert_eq!(
            blocks_of(0, 21).collect::<Vec<_>>(),
            vec![(0, 52), (16, 54), (20, 55)]
        );
        assert_eq!(
            blocks_of(1, 65535).count(),
            16,
            "1, 2-3, 4-7, ..., 32768-65535"
        );
        assert_eq!(
            blocks_of(0x0800, 0x08ff).collect::<Vec<_>>(),
            vec![(0x0800, 48)]
        );
    }

    #[test]
    fn level_prefers_the_narrowest_then_the_smallest_id() {
        let m = level(&[
            (r(6, 0, 1023), 5),
            (r(6, 22, 22), 7),
            (r(6, 22, 22), 6),
            (Points::All, 9),
        ]);
        assert_eq!(m.all, Some(9));
        assert_eq!(
            m.protos[&6],
            vec![
                Seg {
                    start: 0,
                    val: Some(5)
                },
                Seg {
                    start: 22,
                    val: Some(6)
                },
                Seg {
                    start: 23,
                    val: Some(5)
                },
                Seg {
                    start: 1024,
                    val: Some(9)
                },
            ]
        );
    }

    #[test]
    fn overlay_keeps_the_parent_where_the_child_is_silent() {
        let parent = level(&[(Points::All, 1)]);
        let child = overlay(&parent, &level(&[(r(17, 53, 53), 2)]));
        assert_eq!(child.all, Some(1));
        assert_eq!(
            child.protos[&17],
            vec![
                Seg {
                    start: 0,
                    val: Some(1)
                },
                Seg {
                    start: 53,
                    val: Some(2)
                },
                Seg {
                    start: 54,
                    val: Some(1)
                },
            ]
        );
    }

    #[test]
    fn encode_picks_the_cheapest_default() {
        let slots: Vec<u32> = (0..10).map(|i| i + 100).collect();
        let v = |slot, flags| RuleVal { slot, flags };
        let u = rule_flags::UNTRACKED;
        let c4 = Untracked {
            tcp: vec![(22, 22)],
            udp: vec![],
        };
        // tcp 0-1023 -> rule 2 over a -1 rule 3, port 22 untracked: 0-21, 23-1023 need 10
        // blocks, 1024-65535 six; the /40 default is rule 2 and only rule 3's blocks remain.
        let e = encode(&level(&[(r(6, 0, 1023), 2), (Points::All, 3)]), &c4, &slots);
        let mut want = vec![
            (32, 0, 0, v(103, 0)),
            (40, 6, 0, v(102, 0)),
            (56, 6, 22, v(102, u)),
        ];
        want.extend(blocks_of(1024, 65535).map(|(s, l)| (l, 6, s, v(103, 0))));
        want.sort();
        assert_eq!(e, want);
        // Without a -1 rule the ports above 1023 must miss, so no /40 default is possible.
        let e = encode(&level(&[(r(6, 0, 1023), 2)]), &c4, &slots);
        assert_eq!(e.len(), 11);
        assert!(e.iter().all(|&(len, ..)| len > 40));
    }
}
