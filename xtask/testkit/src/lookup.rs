//! The kernel's policy lookup (docs/design.md pipeline step 6), in userspace, over a
//! [`MapImage`]: `SG_IFACES` with the image's generation, then the `SG_PEERS` LPM lookup with
//! the direction's scope, then each class of the chain in `SG_PORTS` until one answers. Used by
//! the property tests against the reference model and by `explain`.
//!
//! It mirrors sg-ebpf, not the compiler: it reads nothing but the image. Its LPM is the
//! kernel's rule (among the entries whose first `prefix_len` bits equal the key's, the longest
//! wins), done by brute force per prefix length; a page's segment is the last start at or
//! below the point, by a linear scan (the kernel's binary search agrees when the starts are
//! sorted, which [`check_canonical`] checks). It must stay slow and literal rather than share
//! the compiler's structures. It does not know conntrack, exemptions or fragments.

use std::net::IpAddr;
use std::ops::Bound;

use sg_common::{
    NO_RULE_SLOT, PAGE_LEVELS, PAGE_SEGS, PEER_SCOPE_BITS, PeerData, PortKey, PortPage, RuleVal,
    rule_flags,
};

use sg_agent::image::{LpmKey, MapImage};
use sg_agent::policy::Direction;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupResult {
    /// The interface has no entry in the image's generation (`DropNoPolicy`).
    NoPolicy,
    /// No peer class or no port entry (`DropNoRule`).
    Deny,
    Allow(RuleVal),
}

/// The policy verdict for one packet, as the kernel computes it.
///
/// `port`: the destination port for TCP/UDP (E6), `type << 8 | code` for ICMP/ICMPv6, 0
/// otherwise.
pub fn lookup(
    image: &MapImage,
    ifindex: u32,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> LookupResult {
    let key = sg_common::IfaceKey {
        generation: image.generation,
        ifindex,
    };
    let Some(conf) = image.ifaces.get(&key) else {
        return LookupResult::NoPolicy;
    };
    let scope = match dir {
        Direction::Ingress => conf.scope_in,
        Direction::Egress => conf.scope_out,
    };
    let addr = match remote {
        IpAddr::V4(a) => sg_common::v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    let peer = PeerData {
        scope: scope.to_be_bytes(),
        addr,
    };
    let Some(chain) = lpm(&image.peers, &peer, PEER_SCOPE_BITS + 128) else {
        return LookupResult::Deny;
    };
    // The first class of the chain with a rule at the point answers; 0 ends the chain.
    for class in chain.classes.into_iter().take_while(|&c| c != 0) {
        if let Some(val) = class_rule(image, class, proto, port) {
            return LookupResult::Allow(val);
        }
    }
    LookupResult::Deny
}

/// A class's rule at (proto, port): its tree for the protocol, else its every-protocol page;
/// at most `PAGE_LEVELS` pages deep, a missing page is no rule.
fn class_rule(image: &MapImage, class: u32, proto: u8, port: u16) -> Option<RuleVal> {
    let mut key = PortKey {
        class,
        proto,
        any: 0,
        page: 0,
    };
    if !image.ports.contains_key(&key) {
        key = PortKey {
            class,
            proto: 0,
            any: 1,
            page: 0,
        };
    }
    for _ in 0..PAGE_LEVELS {
        let val = segment(image.ports.get(&key)?, port);
        if val.flags & rule_flags::PAGE == 0 {
            return (val.slot != NO_RULE_SLOT).then_some(val);
        }
        key.page = val.slot as u16;
    }
    None
}

/// The value of the last segment of `page` starting at or below `point`.
fn segment(page: &PortPage, point: u16) -> RuleVal {
    let i = (0..PAGE_SEGS)
        .rev()
        .find(|&i| page.starts[i] <= point)
        .unwrap_or(0);
    page.vals[i]
}

/// Byte views of LPM key data, most significant bit first (the kernel's order).
pub trait LpmData: Copy + Ord {
    fn bytes(&self) -> Vec<u8>;
    fn from_bytes(b: &[u8]) -> Self;
}

impl LpmData for PeerData {
    fn bytes(&self) -> Vec<u8> {
        let mut v = self.scope.to_vec();
        v.extend_from_slice(&self.addr);
        v
    }
    fn from_bytes(b: &[u8]) -> Self {
        PeerData {
            scope: b[0..4].try_into().expect("4 bytes"),
            addr: b[4..20].try_into().expect("16 bytes"),
        }
    }
}

/// `data` with every bit from `len` on set to `fill`.
fn with_tail<T: LpmData>(data: &T, len: u32, fill: bool) -> T {
    let mut b = data.bytes();
    for (i, byte) in b.iter_mut().enumerate() {
        let first_bit = i as u32 * 8;
        if first_bit + 8 <= len {
            continue;
        }
        let keep = len.saturating_sub(first_bit); // bits of this byte inside the prefix
        let mask: u8 = if keep == 0 { 0 } else { 0xff << (8 - keep) };
        *byte = if fill { *byte | !mask } else { *byte & mask };
    }
    T::from_bytes(&b)
}

/// The kernel's LPM rule: the entry with the longest `prefix_len` <= `key_len` whose first
/// `prefix_len` bits equal the key's. Every entry of one length whose first bits match lies
/// between the key with its tail cleared and the key with its tail set (the data types order
/// lexicographically, bit order), so each length is one range query.
pub fn lpm<T: LpmData, V: Copy>(
    map: &std::collections::BTreeMap<LpmKey<T>, V>,
    key: &T,
    key_len: u32,
) -> Option<V> {
    (0..=key_len).rev().find_map(|len| {
        let lo = LpmKey {
            prefix_len: len,
            data: with_tail(key, len, false),
        };
        let hi = LpmKey {
            prefix_len: len,
            data: with_tail(key, len, true),
        };
        let mut hits = map.range((Bound::Included(lo), Bound::Included(hi)));
        let first = hits.next().map(|(_, v)| *v);
        debug_assert!(
            first.is_none() || hits.next().is_none(),
            "two entries of one prefix length match: a key has bits set past its prefix"
        );
        first
    })
}

/// The image is what the kernel's lookup assumes, and what this module's literal one does not
/// need: every LPM key has no bit set past its prefix length (the kernel ignores those bits,
/// so two keys differing only there would be one entry, the later overwriting the earlier);
/// every page's starts are sorted (the kernel searches them by halves) and a root's begin at
/// 0, and every page is reachable from a root within `PAGE_LEVELS` pages with its first start
/// equal to the start of the segment pointing to it. Returns the first offence, formatted.
pub fn check_canonical(image: &MapImage) -> Result<(), String> {
    for k in image.peers.keys() {
        if with_tail(&k.data, k.prefix_len, false) != k.data {
            return Err(format!("peer key {k:?} has bits past its prefix"));
        }
    }
    let mut reached = std::collections::BTreeSet::new();
    for (k, page) in &image.ports {
        if !page.starts.windows(2).all(|w| w[0] <= w[1]) {
            return Err(format!("page {k:?} has unsorted starts {:?}", page.starts));
        }
        if k.any > 1 || (k.any == 1 && (k.proto != 0 || k.page != 0)) {
            return Err(format!(
                "port key {k:?} is not a protocol's or the any page"
            ));
        }
        if k.page != 0 {
            continue;
        }
        if page.starts[0] != 0 {
            return Err(format!("root page {k:?} starts at {}", page.starts[0]));
        }
        // Walk the tree: (key, depth); children must exist and begin where they are entered.
        let mut todo = vec![(*k, 1)];
        while let Some((key, depth)) = todo.pop() {
            reached.insert(key);
            let page = &image.ports[&key];
            for (start, val) in page.starts.iter().zip(&page.vals) {
                if val.flags & rule_flags::PAGE == 0 {
                    continue;
                }
                let child = PortKey {
                    page: val.slot as u16,
                    ..key
                };
                let Some(c) = image.ports.get(&child) else {
                    return Err(format!("page {key:?} points to missing page {child:?}"));
                };
                if depth >= PAGE_LEVELS || val.slot > u32::from(u16::MAX) {
                    return Err(format!("page {child:?} is deeper than {PAGE_LEVELS} pages"));
                }
                if c.starts[0] != *start {
                    return Err(format!(
                        "page {child:?} starts at {} not {start}",
                        c.starts[0]
                    ));
                }
                todo.push((child, depth + 1));
            }
        }
    }
    if let Some(k) = image.ports.keys().find(|k| !reached.contains(k)) {
        return Err(format!("page {k:?} is not reachable from its root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn peer(scope: u32, a: [u8; 4], len: u32) -> LpmKey<PeerData> {
        LpmKey {
            prefix_len: PEER_SCOPE_BITS + 96 + len,
            data: PeerData {
                scope: scope.to_be_bytes(),
                addr: sg_common::v4_mapped(a),
            },
        }
    }

    #[test]
    fn longest_matching_prefix_wins_and_scopes_are_separate() {
        let mut m = BTreeMap::new();
        m.insert(peer(1, [0, 0, 0, 0], 0), 10u32);
        m.insert(peer(1, [192, 0, 2, 0], 24), 11);
        m.insert(peer(1, [192, 0, 2, 128], 25), 12);
        m.insert(peer(2, [192, 0, 2, 0], 24), 20);
        let k = |scope: u32, a| PeerData {
            scope: u32::to_be_bytes(scope),
            addr: sg_common::v4_mapped(a),
        };
        assert_eq!(lpm(&m, &k(1, [192, 0, 2, 200]), 160), Some(12));
        assert_eq!(lpm(&m, &k(1, [192, 0, 2, 127]), 160), Some(11));
        assert_eq!(lpm(&m, &k(1, [198, 51, 100, 1]), 160), Some(10));
        assert_eq!(lpm(&m, &k(2, [198, 51, 100, 1]), 160), None);
        assert_eq!(lpm(&m, &k(3, [192, 0, 2, 1]), 160), None);
    }

    #[test]
    fn canonical_check_finds_bits_past_the_prefix() {
        let mut image = MapImage::default();
        image
            .peers
            .insert(peer(1, [192, 0, 2, 0], 24), sg_common::PeerVal::default());
        assert_eq!(check_canonical(&image), Ok(()));
        image
            .peers
            .insert(peer(1, [192, 0, 2, 1], 24), sg_common::PeerVal::default());
        assert!(check_canonical(&image).is_err());
    }
}
