//! The port half of the compiler: for one peer class, which rule wins every (protocol, port)
//! point (E4), and how that function becomes `SG_PORTS` pages.
//!
//! A [`PortMap`] is the winner function as segments; [`level`] builds it for rules that share
//! one peer prefix, [`overlay`] puts a longer prefix's rules over its parent's map, and
//! [`encode`] turns a map plus the scope's C4 set into page trees. Nothing here knows addresses,
//! groups or the policy types.

use std::collections::{BTreeMap, BTreeSet};

use sg_common::{NO_RULE_SLOT, PAGE_SEGS, PortPage, RuleVal, rule_flags};

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
    /// No point is untracked.
    pub(super) fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

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

/// One `SG_PORTS` entry of a class, without the class id: (protocol, any, page number, page)
/// as in [`sg_common::PortKey`]. Sorted lists of these are what classes are deduplicated on.
pub(super) type PortEntry = (u8, u8, u16, PortPage);

/// A segment no rule of the class covers: the class does not answer there.
const NO_RULE: RuleVal = RuleVal {
    slot: NO_RULE_SLOT,
    flags: 0,
};

/// The pages a class needs so that the kernel's walk of (protocol, port) returns the winner
/// of `map` with the UNTRACKED flag of `untracked`.
///
/// - A winner for every protocol (`map.all`) is the class's every-protocol page (one
///   segment). It cannot carry a flag that differs by protocol, so TCP/UDP get their own
///   trees where C4 applies.
/// - Every other protocol of the map gets a page tree of its segments (adjacent equal values
///   merged): one page up to `PAGE_SEGS` segments, else a root holding the widest segments
///   itself and pointing to child pages for the runs between them, no deeper than a balanced
///   tree (at most `PAGE_LEVELS`; see `paginate`).
/// - Points with no winner hold slot 0: the next class of the chain answers (or the packet
///   is denied). Such points only exist when there is no -1 winner.
pub(super) fn encode(map: &PortMap, untracked: &Untracked, slot_of: &[u32]) -> Vec<PortEntry> {
    let val = |w: Winner, untracked: bool| RuleVal {
        slot: slot_of[w as usize],
        flags: if untracked { rule_flags::UNTRACKED } else { 0 },
    };
    let mut entries = Vec::new();
    if let Some(w) = map.all {
        entries.push((0, 1, 0, PortPage::uniform(val(w, false))));
    }
    let mut protos: BTreeSet<u8> = map.protos.keys().copied().collect();
    for p in [sg_common::proto::TCP, sg_common::proto::UDP] {
        if !untracked.ports(p).is_empty() {
            protos.insert(p);
        }
    }
    for proto in protos {
        let flags = range_segs(untracked.ports(proto));
        let segs = combine(&map.segs(proto), &flags, |w, u| {
            w.map_or(NO_RULE, |w| val(w, u))
        });
        let mut pages = Vec::new();
        paginate(&segs, &mut pages);
        entries.extend(
            pages
                .into_iter()
                .enumerate()
                .map(|(n, page)| (proto, 0, n as u16, page)),
        );
    }
    entries.sort_unstable();
    entries
}

/// Writes the page tree of `segs` into `pages`; returns its root's number (the first call's
/// is 0). The tree is as deep as a balanced one, the fewest levels that hold every segment, and
/// no segment is deeper; within that, the widest segments sit on the shallowest pages.
fn paginate(segs: &[Seg<RuleVal>], pages: &mut Vec<PortPage>) -> u16 {
    let mut levels = 1;
    while PAGE_SEGS.pow(levels) < segs.len() {
        levels += 1;
    }
    page_tree(segs, levels, pages)
}

/// The page of `segs` (and its children, at most `levels` pages deep in all).
fn page_tree(segs: &[Seg<RuleVal>], levels: u32, pages: &mut Vec<PortPage>) -> u16 {
    let n = pages.len();
    pages.push(PortPage::uniform(NO_RULE));
    let items: Vec<(u16, RuleVal)> = if segs.len() <= PAGE_SEGS {
        segs.iter().map(|s| (s.start, s.val)).collect()
    } else {
        // Segments kept on this page, and runs of the others, each a child page of at most
        // `cap` segments (a run of one is kept here too: a page for it would be a lookup more).
        let cap = PAGE_SEGS.pow(levels - 1);
        let kept = shallow(segs, cap);
        let mut items = Vec::with_capacity(PAGE_SEGS);
        let mut i = 0;
        while i < segs.len() {
            let end = if kept[i] {
                i + 1
            } else {
                (i..segs.len()).find(|&j| kept[j]).unwrap_or(segs.len())
            };
            for run in segs[i..end].chunks(cap) {
                let val = match run {
                    [one] => one.val,
                    _ => RuleVal {
                        slot: u32::from(page_tree(run, levels - 1, pages)),
                        flags: rule_flags::PAGE,
                    },
                };
                items.push((run[0].start, val));
            }
            i = end;
        }
        items
    };
    pages[n] = PortPage::of(&items);
    u16::try_from(n).expect("65536 segments need fewer than 65536 pages")
}

/// Which of `segs` (more than `PAGE_SEGS`) a page keeps for itself, the rest going to children
/// of at most `cap` segments: the widest first, while the page's items (kept segments, plus
/// the children each run between them needs) stay within `PAGE_SEGS`. Wide segments are where
/// most points fall (a stateless NACL's replies land on the wide ephemeral ranges), so they
/// cost one hash lookup; narrow ones cost no more than in a balanced tree.
///
/// Cost: O(n log n).
fn shallow(segs: &[Seg<RuleVal>], cap: usize) -> Vec<bool> {
    let n = segs.len();
    let width = |i: usize| {
        let next = segs.get(i + 1).map_or(65536, |s| u32::from(s.start));
        next - u32::from(segs[i].start)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(width(i)), i));
    let mut kept = vec![false; n];
    let mut bounds: BTreeSet<usize> = BTreeSet::new();
    let mut items = n.div_ceil(cap);
    for i in order {
        // The run of children segments around i: [lo, hi).
        let lo = bounds.range(..i).next_back().map_or(0, |&j| j + 1);
        let hi = bounds.range(i + 1..).next().copied().unwrap_or(n);
        let with = items - (hi - lo).div_ceil(cap) + 1 + (i - lo).div_ceil(cap);
        let with = with + (hi - i - 1).div_ceil(cap);
        if with <= PAGE_SEGS {
            kept[i] = true;
            bounds.insert(i);
            items = with;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(proto: u8, from: u16, to: u16) -> Points {
        Points::Range { proto, from, to }
    }

    /// The segment of `point` under `pages[n]`, literally: the last start at or below it.
    fn find(pages: &[PortPage], n: u16, point: u16) -> RuleVal {
        let p = &pages[n as usize];
        let i = (0..PAGE_SEGS).rfind(|&i| p.starts[i] <= point).unwrap();
        let v = p.vals[i];
        if v.flags & rule_flags::PAGE != 0 {
            find(pages, v.slot as u16, point)
        } else {
            v
        }
    }

    fn depth(pages: &[PortPage], n: u16) -> usize {
        let p = &pages[n as usize];
        1 + p
            .vals
            .iter()
            .filter(|v| v.flags & rule_flags::PAGE != 0)
            .map(|v| depth(pages, v.slot as u16))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn pages_split_long_segment_lists_into_a_shallow_tree() {
        let v = |slot| RuleVal { slot, flags: 0 };
        for (n, pages_want, depth_want) in [
            (1, 1, 1),
            (16, 1, 1),
            // 15 segments on the root, a page for the last 2 (the widest stay on the root).
            (17, 1 + 1, 2),
            (256, 1 + 16, 2),
            // 15 on the root, a page of 16 pages for the other 242.
            (257, 1 + 1 + 16, 3),
            (65536, 1 + 16 + 256 + 4096, 4),
        ] {
            // Segment i starts at i * (65536 / n) with value i + 1.
            let width = 65536 / n as u32;
            let segs: Vec<Seg<RuleVal>> = (0..n as u32)
                .map(|i| Seg {
                    start: (i * width) as u16,
                    val: v(i + 1),
                })
                .collect();
            let mut pages = Vec::new();
            assert_eq!(paginate(&segs, &mut pages), 0, "the root is page 0");
            assert_eq!(pages.len(), pages_want, "{n} segments");
            assert_eq!(depth(&pages, 0), depth_want, "{n} segments");
            assert!(depth_want <= sg_common::PAGE_LEVELS);
            for p in &pages {
                assert!(p.starts.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
            }
            for (i, seg) in segs.iter().enumerate() {
                let last = seg.start as u32 + width - 1;
                for point in [
                    seg.start,
                    last as u16,
                    (seg.start as u32 + width / 2) as u16,
                ] {
                    assert_eq!(find(&pages, 0, point), v(i as u32 + 1), "{n}: {point}");
                }
            }
        }
    }

    /// The pages read for `point` from `pages[n]`.
    fn reads(pages: &[PortPage], n: u16, point: u16) -> usize {
        let p = &pages[n as usize];
        let i = (0..PAGE_SEGS).rfind(|&i| p.starts[i] <= point).unwrap();
        let v = p.vals[i];
        if v.flags & rule_flags::PAGE != 0 {
            1 + reads(pages, v.slot as u16, point)
        } else {
            1
        }
    }

    #[test]
    fn wide_segments_are_answered_from_the_root_and_none_is_deeper_than_balanced() {
        let v = |slot| RuleVal { slot, flags: 0 };
        // Dense single ports between wide gaps (a NACL with hundreds of port entries), and
        // irregular widths from a fixed pseudo-random sequence.
        let mut cases: Vec<Vec<u16>> = Vec::new();
        for dense in [20, 300, 5000] {
            let mut starts = vec![0, 9000, 9001];
            starts.extend((0..dense).map(|i| 20_000 + 2 * i));
            cases.push(starts);
        }
        let mut x: u32 = 12345;
        for n in [40usize, 700, 9000] {
            let mut starts = std::collections::BTreeSet::from([0u16]);
            while starts.len() < n {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // Squared: clustered low, sparse high.
                let r = f64::from(x >> 8) / f64::from(1u32 << 24);
                starts.insert((r * r * 65535.0) as u16);
            }
            cases.push(starts.into_iter().collect());
        }
        for starts in cases {
            let segs: Vec<Seg<RuleVal>> = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| Seg {
                    start,
                    val: v(i as u32 + 1),
                })
                .collect();
            let n = segs.len();
            let mut pages = Vec::new();
            paginate(&segs, &mut pages);
            let mut balanced = 1;
            while PAGE_SEGS.pow(balanced) < n {
                balanced += 1;
            }
            assert!(depth(&pages, 0) <= balanced as usize, "{n} segments");
            for point in 0..=u16::MAX {
                let i = starts.partition_point(|&s| s <= point) - 1;
                assert_eq!(find(&pages, 0, point), v(i as u32 + 1), "{n}: {point}");
            }
            // Each segment kept on the root costs at most 2 of its items (itself and a split
            // run), so the k widest fit beside the runs a balanced root would need.
            let k = (PAGE_SEGS - n.div_ceil(PAGE_SEGS.pow(balanced - 1))) / 2;
            let width = |i: usize| {
                starts.get(i + 1).map_or(65536, |&s| u32::from(s)) - u32::from(starts[i])
            };
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(width(i)), i));
            for &i in &order[..k] {
                assert_eq!(
                    reads(&pages, 0, starts[i]),
                    1,
                    "{n}: segment {i} not on the root"
                );
            }
        }
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
    fn encode_gives_every_protocol_page_and_c4_trees() {
        let slots: Vec<u32> = (0..10).map(|i| i + 100).collect();
        let v = |slot, flags| RuleVal { slot, flags };
        let u = rule_flags::UNTRACKED;
        let c4 = Untracked {
            tcp: vec![(22, 22)],
            udp: vec![],
        };
        // tcp 0-1023 -> rule 2 over a -1 rule 3, port 22 untracked: the -1 page, and one TCP
        // page 0-21 r2, 22 r2 untracked, 23-1023 r2, 1024- r3.
        let e = encode(&level(&[(r(6, 0, 1023), 2), (Points::All, 3)]), &c4, &slots);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], (0, 1, 0, PortPage::uniform(v(103, 0))));
        let (proto, any, page, tcp) = e[1];
        assert_eq!((proto, any, page), (6, 0, 0));
        assert_eq!(tcp.starts[..5], [0, 22, 23, 1024, 1024]);
        assert_eq!(
            tcp.vals[..5],
            [v(102, 0), v(102, u), v(102, 0), v(103, 0), v(103, 0)]
        );
        // Without a -1 rule the ports above 1023 have no rule: slot 0, the class is silent.
        let e = encode(&level(&[(r(6, 0, 1023), 2)]), &c4, &slots);
        assert_eq!(e.len(), 1);
        let tcp = e[0].3;
        assert_eq!(find(&[tcp], 0, 1024), NO_RULE);
        assert_eq!(find(&[tcp], 0, 65535), NO_RULE);
        assert_eq!(find(&[tcp], 0, 22), v(102, u));
        // A protocol with only the -1 winner and no C4 has no tree: the -1 page answers.
        let e = encode(&level(&[(Points::All, 3)]), &Untracked::default(), &slots);
        assert_eq!(e, vec![(0, 1, 0, PortPage::uniform(v(103, 0)))]);
    }
}
