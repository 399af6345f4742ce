//! The kernel's policy lookup (docs/design.md pipeline step 6), in userspace, over a
//! [`MapImage`]: `SG_IFACES` with the image's generation, then the `SG_PEERS` LPM lookup with
//! the direction's scope, then the `SG_PORTS` LPM lookup with each class of the chain until
//! one hits. Used by the property
//! tests against the reference model and by `explain`.
//!
//! It mirrors sg-ebpf, not the compiler: it reads nothing but the image, and its LPM is the
//! kernel's rule (among the entries whose first `prefix_len` bits equal the key's, the longest
//! wins), done by brute force per prefix length. It must stay slow and literal rather than
//! share the compiler's structures. It does not know conntrack, exemptions or fragments.

use std::net::IpAddr;
use std::ops::Bound;

use sg_common::{PEER_SCOPE_BITS, PORT_FULL_BITS, PeerData, PortData, RuleVal};

use crate::image::{LpmKey, MapImage};
use crate::policy::Direction;

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
    // The first class of the chain with an entry answers; 0 ends the chain.
    for class in chain.classes.into_iter().take_while(|&c| c != 0) {
        let port_key = PortData {
            class: class.to_be_bytes(),
            proto,
            port: port.to_be_bytes(),
            _pad: 0,
        };
        if let Some(val) = lpm(&image.ports, &port_key, PORT_FULL_BITS) {
            return LookupResult::Allow(val);
        }
    }
    LookupResult::Deny
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

impl LpmData for PortData {
    fn bytes(&self) -> Vec<u8> {
        let mut v = self.class.to_vec();
        v.push(self.proto);
        v.extend_from_slice(&self.port);
        v.push(self._pad);
        v
    }
    fn from_bytes(b: &[u8]) -> Self {
        PortData {
            class: b[0..4].try_into().expect("4 bytes"),
            proto: b[4],
            port: b[5..7].try_into().expect("2 bytes"),
            _pad: b[7],
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

/// Every LPM key in the image has no bit set past its prefix length: the kernel ignores those
/// bits, so two keys differing only there would be one entry (the later overwriting the
/// earlier). Returns the first offending key, formatted.
pub fn check_canonical(image: &MapImage) -> Result<(), String> {
    for k in image.peers.keys() {
        if with_tail(&k.data, k.prefix_len, false) != k.data {
            return Err(format!("peer key {k:?} has bits past its prefix"));
        }
    }
    for k in image.ports.keys() {
        if with_tail(&k.data, k.prefix_len, false) != k.data {
            return Err(format!("port key {k:?} has bits past its prefix"));
        }
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
