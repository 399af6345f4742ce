//! Hardening fuzzers: hostile frames through the real programs judged against the reference
//! model, and hostile policy files through the parsers and the compiler.
//!
//! Owns five things, one section each:
//! 1. [`Rng`]: a tiny seeded generator, so every episode and every input can be replayed
//!    from `(seed, index)` alone.
//! 2. Frame mutators ([`mutate_packet`], [`mutate_frame`]): structure-aware damage to valid
//!    packets from `testgen::packets` -- truncation at every header boundary, IHL 0..15, IP
//!    length fields, version nibbles, TCP data offsets, IPv6 extension chains up to and past
//!    the limit, VLAN stacks 0..4, fragment fields (tiny firsts, overlaps), bytes of an ICMP
//!    error's quote, random bit flips -- plus forged steps ([`forge`]) that pretend to belong
//!    to real flows (replies from another peer or interface, errors quoting a flow with
//!    another peer, ...).
//! 3. The oracle's reading of a frame ([`read_frame`]): an independent strict parser written
//!    from docs/design.md "Pipeline" 1 and 5; it shares no code with sg-ebpf, and where the
//!    contract is silent (which bounds an ICMP quote must respect) its doc says the choice
//!    it makes. A frame is either
//!    non-IP (`PassNonIp`), malformed (the contract's drop reason), an abstract [`Packet`] the
//!    reference model judges, or well formed but not expressible as a `Packet` (judged by
//!    nobody; such frames only desynchronise the episode if they changed kernel state).
//! 4. The runner ([`PacketFuzz`]): episodes of steps on real programs via BPF_PROG_TEST_RUN,
//!    every frame through XDP ingress, TC ingress and TC egress, each run compared with the
//!    model.
//! 5. The config oracle ([`config`]) shared by the cargo-fuzz targets in fuzz/ and the CI
//!    test `hardening_config_fuzz`.
//!
//! It must not decide verdicts itself: the model (or, for malformed frames, the contract's
//! parse rules) does. It shares no parsing code with sg-ebpf or `packet.rs`'s tests.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sg_common::Reason;

use crate::dataplane_harness::compile_for;
use crate::random::packets::{Pools, Step, arb_actions, materialize};
use sg_agent::dataplane::{Capacities, CtTable, Dataplane, Hook, LoadOptions};
use sg_agent::image::MapImage;
use sg_agent::model::Model;
use sg_agent::packet::{Ext, Frag, Frame, L4, Packet, icmp, tcp_flags};
use sg_agent::policy::{Direction, Policy, RuleId};

// =============================================================================================
// 1. Rng
// =============================================================================================

/// splitmix64: small, fast, and good enough to drive mutations; seeded per episode so any
/// episode replays alone.
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// The seed of item `n` of a run seeded with `seed` (a bijection in `n`).
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0, 0)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        (self.next_u64() % u64::from(den)) < u64::from(num)
    }
    pub fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len())]
    }
    /// One of `s`, or (as often as any one of them) a value from `other`.
    pub fn pick_or<T: Copy>(&mut self, s: &[T], other: impl FnOnce(&mut Rng) -> T) -> T {
        let i = self.below(s.len() + 1);
        if i == s.len() { other(self) } else { s[i] }
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

// =============================================================================================
// 2. Mutators and forgeries
// =============================================================================================

/// Structural damage applied to the abstract packet before it is built (the frame stays
/// consistent: lengths and checksums are right, only the shape is hostile). Returns the
/// names of what was done.
pub fn mutate_packet(rng: &mut Rng, p: &mut Packet) -> Vec<&'static str> {
    let mut done = Vec::new();
    let v6 = p.is_v6();
    if rng.chance(1, 6) {
        // VLAN stacks 0..4: two are parsed, a third is DropVlanDepth.
        let n = rng.below(5);
        p.vlan = (0..n).map(|_| rng.u16() & 0x0fff).collect();
        done.push("packet:vlan-stack");
    }
    if v6 && rng.chance(1, 5) {
        // Extension chains up to and beyond the eight sg walks.
        let n = rng.pick(&[0usize, 1, 2, 3, 6, 7, 8, 9, 10, 12]);
        p.ext = (0..n)
            .map(|_| match rng.below(4) {
                0 => Ext::HopByHop {
                    len8: rng.below(3) as u8,
                },
                1 => Ext::DestOpts {
                    len8: rng.below(3) as u8,
                },
                2 => Ext::Routing {
                    len8: rng.below(2) as u8,
                },
                _ => Ext::Ah {
                    len4: 1 + rng.below(5) as u8,
                },
            })
            .collect();
        done.push("packet:v6-ext-chain");
    }
    if !v6 && rng.chance(1, 10) {
        let n = 1 + rng.below(40);
        p.ext = vec![Ext::V4Option(rng.bytes(n))];
        done.push("packet:v4-options");
    }
    if !matches!(p.l4, L4::IcmpError { .. }) && rng.chance(1, 6) {
        let id = rng.next_u64() as u32 & if v6 { u32::MAX } else { 0xffff };
        if rng.chance(1, 2) {
            p.frag = Some(Frag::first(id));
            done.push("packet:first-fragment");
        } else {
            // Overlapping offsets (below the transport header) and ordinary ones.
            let off8 = rng.pick_or(&[1u16, 2, 3, 4, 5, 185], |r| 1 + r.below(400) as u16);
            p.frag = Some(Frag::later(id, off8 * 8, rng.chance(1, 2)));
            p.payload_len = p.payload_len.clamp(0, 600);
            done.push("packet:later-fragment");
        }
    }
    if rng.chance(1, 12) {
        p.payload_len = rng.pick(&[0u16, 1, 7, 8, 9, 1400]);
        done.push("packet:payload");
    }
    done
}

/// Offsets where a header (or a header's fixed part) ends: the places truncation is
/// interesting at. Includes the quote of an ICMP error.
pub fn boundaries(f: &Frame) -> Vec<usize> {
    // Nothing below 14: BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
    let mut b = vec![14, 15, 16, f.l3.saturating_sub(2), f.l3, f.l3 + 1];
    b.push(f.l3 + if f.v6 { 40 } else { 20 });
    for &e in &f.exts {
        b.extend([e, e + 2, e + 8]);
    }
    for k in [0, 4, 8, 12, 13, 14, 19, 20] {
        b.push(f.l4 + k);
    }
    // ICMP error: the quoted IP header and its 8 transport bytes.
    let q = f.l4 + 8;
    b.extend([q, q + 1, q + 20, q + 28, q + 40, q + 48]);
    b.retain(|&x| x <= f.bytes.len());
    b.sort_unstable();
    b.dedup();
    b
}

/// Values of 16-bit length fields worth trying, around `exact` (the right value).
fn length_values(rng: &mut Rng, exact: usize) -> u16 {
    let e = exact as u16;
    rng.pick_or(
        &[
            0,
            1,
            7,
            8,
            19,
            20,
            21,
            39,
            40,
            41,
            e.wrapping_sub(1),
            e,
            e.wrapping_add(1),
            e.wrapping_add(8),
            0x7fff,
            0xffff,
        ],
        Rng::u16,
    )
}

fn set16(b: &mut [u8], off: usize, v: u16) {
    if off + 2 <= b.len() {
        b[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Shifts every layer offset of `f` at or after `at` by `by` bytes (after an insertion).
fn shift(f: &mut Frame, at: usize, by: usize) {
    if f.l3 >= at {
        f.l3 += by;
    }
    if f.l4 >= at {
        f.l4 += by;
    }
    for e in &mut f.exts {
        if *e >= at {
            *e += by;
        }
    }
}

/// Cuts the frame at `at` and makes the IP length field claim exactly what is left, so only
/// the layers after the cut are short (tiny fragments, cut transport or extension headers).
fn truncate_fixed(f: &mut Frame, at: usize) {
    f.bytes.truncate(at);
    let ip_len = at.saturating_sub(f.l3);
    if f.v6 {
        if ip_len >= 40 {
            set16(&mut f.bytes, f.l3 + 4, (ip_len - 40) as u16);
        }
    } else if ip_len >= 20 {
        set16(&mut f.bytes, f.l3 + 2, ip_len as u16);
    }
}

/// Offset of the IPv6 fragment header among `f.exts` (the header a next-header 44 points at).
fn fragment_header(f: &Frame) -> Option<usize> {
    let mut next_at = f.l3 + 6;
    for &e in &f.exts {
        if f.bytes.get(next_at) == Some(&44) {
            return Some(e);
        }
        next_at = e;
    }
    None
}

/// One to three byte-level mutations of a built frame. Returns their names. Checksums are
/// not fixed: neither the contract nor the kernel program verifies them.
pub fn mutate_frame(rng: &mut Rng, f: &mut Frame) -> Vec<&'static str> {
    let n = 1 + rng.below(3);
    (0..n).map(|_| mutate_once(rng, f)).collect()
}

fn mutate_once(rng: &mut Rng, f: &mut Frame) -> &'static str {
    let len = f.bytes.len();
    match rng.below(18) {
        0 | 1 => {
            let b = boundaries(f);
            let at = (rng.pick(&b) + rng.pick(&[0usize, 0, 0, 1, 2, 3])).min(len);
            f.bytes.truncate(at);
            "truncate"
        }
        2 | 3 => {
            let b = boundaries(f);
            let at = rng.pick(&b).min(len);
            truncate_fixed(f, at);
            "truncate-fix-length"
        }
        4 => {
            if !f.v6 && f.l3 < len {
                let ihl = rng.below(16) as u8;
                f.bytes[f.l3] = (f.bytes[f.l3] & 0xf0) | ihl;
            }
            "ipv4-ihl"
        }
        5 => {
            let exact = len.saturating_sub(f.l3 + if f.v6 { 40 } else { 0 });
            let v = length_values(rng, exact);
            set16(&mut f.bytes, f.l3 + if f.v6 { 4 } else { 2 }, v);
            "ip-length"
        }
        6 => {
            if f.l3 < len {
                let v = rng.below(16) as u8;
                f.bytes[f.l3] = (v << 4) | (f.bytes[f.l3] & 0x0f);
            }
            "ip-version"
        }
        7 => {
            if f.l4 + 12 < len {
                let v = rng.below(16) as u8;
                f.bytes[f.l4 + 12] = (v << 4) | (f.bytes[f.l4 + 12] & 0x0f);
            }
            "tcp-data-offset"
        }
        8 => {
            if !f.exts.is_empty() {
                let e = rng.pick(&f.exts);
                if e + 1 < len {
                    f.bytes[e + 1] = rng.pick_or(&[0, 1, 2, 3, 7, 31, 255], Rng::byte);
                }
            }
            "v6-ext-length"
        }
        9 => {
            // Next-header fields: point anywhere, including back at an extension header
            // (a chain that never ends but for the walk limit).
            let nh = rng.pick_or(&[0u8, 43, 44, 51, 59, 60, 6, 17, 58, 1], Rng::byte);
            if f.v6 && f.l3 + 6 < len {
                let at = if f.exts.is_empty() || rng.chance(1, 3) {
                    f.l3 + 6
                } else {
                    rng.pick(&f.exts)
                };
                if at < len {
                    f.bytes[at] = nh;
                }
            } else if f.l3 + 9 < len {
                f.bytes[f.l3 + 9] = nh;
            }
            "next-header"
        }
        10 => {
            let et = rng.pick_or(
                &[0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x9100],
                Rng::u16,
            );
            set16(&mut f.bytes, f.l3.saturating_sub(2), et);
            "ethertype"
        }
        11 => {
            // VLAN tags at byte level, with the TPIDs sg knows and one it does not.
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let tpid = rng.pick(&[0x8100u16, 0x88a8, 0x9100]);
                let mut tag = tpid.to_be_bytes().to_vec();
                tag.extend_from_slice(&(rng.u16() & 0x0fff).to_be_bytes());
                let at = 12.min(len);
                f.bytes.splice(at..at, tag);
                shift(f, at + 1, 4);
            }
            "vlan-insert"
        }
        12 => {
            // Fragment fields: tiny and overlapping offsets, MF flips.
            let off8 = rng.pick_or(&[0u16, 1, 2, 3, 4, 5], |r| r.u16() & 0x1fff);
            let more = rng.chance(1, 2);
            if f.v6 {
                if let Some(e) = fragment_header(f)
                    && e + 4 <= len
                {
                    set16(&mut f.bytes, e + 2, (off8 << 3) | u16::from(more));
                }
            } else {
                set16(&mut f.bytes, f.l3 + 6, (u16::from(more) << 13) | off8);
            }
            "fragment-field"
        }
        13 => {
            // The quote of an ICMP error: its version/IHL, length, fragment field, protocol,
            // addresses and ports.
            let q = f.l4 + 8;
            let k = rng.pick_or(&[0usize, 0, 6, 6, 9, 9, 12, 16, 20, 22, 24, 40, 42], |r| {
                r.below(48)
            });
            if q + k < len {
                f.bytes[q + k] = rng.pick_or(&[0x45, 0x4f, 0x60, 0x20, 6, 17, 1, 58, 0], Rng::byte);
            }
            "icmp-quote"
        }
        14 => {
            let k = 1 + rng.below(4);
            for _ in 0..k {
                let span = len.clamp(1, 96);
                let at = rng.below(span);
                if at < len {
                    f.bytes[at] ^= 1 << rng.below(8);
                }
            }
            "bit-flip"
        }
        15 => {
            if len > 0 {
                let at = rng.below(len);
                f.bytes[at] = rng.byte();
            }
            "byte-set"
        }
        16 => {
            // ICMP type and code (turn echo into an error, an error into echo, ...) or the
            // first transport bytes (ports).
            if f.l4 + 4 <= len {
                let k = rng.below(4);
                f.bytes[f.l4 + k] =
                    rng.pick_or(&[0u8, 3, 4, 8, 11, 12, 1, 2, 128, 129, 135], Rng::byte);
            }
            "l4-head"
        }
        _ => {
            let n = 1 + rng.below(64);
            let extra = rng.bytes(n);
            f.bytes.extend(extra);
            "append"
        }
    }
}

/// A forged step: something that pretends to belong to an earlier step's flow without
/// being part of it. All are well formed, so the model judges them. None when `steps` holds
/// nothing to forge from.
pub fn forge(
    rng: &mut Rng,
    policy: &Policy,
    pools: &Pools,
    steps: &[Step],
) -> Option<(Step, &'static str)> {
    let candidates: Vec<&Step> = steps
        .iter()
        .filter(|s| !matches!(s.pkt.l4, L4::IcmpError { .. }) && !s.pkt.is_later_fragment())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let s = candidates[rng.below(candidates.len())];
    let v6 = s.pkt.is_v6();
    let other_remote = |rng: &mut Rng| -> IpAddr {
        let pool = if v6 {
            &pools.remotes_v6
        } else {
            &pools.remotes_v4
        };
        pool[rng.below(pool.len())]
    };
    let other_iface = |rng: &mut Rng| -> String {
        let names: Vec<&String> = policy
            .interfaces
            .iter()
            .map(|i| &i.name)
            .filter(|n| **n != s.iface)
            .collect();
        if names.is_empty() {
            s.iface.clone()
        } else {
            names[rng.below(names.len())].clone()
        }
    };
    let router: IpAddr = if v6 {
        "2001:db8:ff::1".parse().unwrap()
    } else {
        "203.0.113.254".parse().unwrap()
    };
    let err_kind = |rng: &mut Rng| -> (u8, u8) {
        if v6 {
            rng.pick(&[
                (icmp::V6_PACKET_TOO_BIG, 0),
                (icmp::V6_DEST_UNREACH, 4),
                (icmp::V6_TIME_EXCEEDED, 0),
            ])
        } else {
            rng.pick(&[
                (icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED),
                (icmp::V4_DEST_UNREACH, 3),
                (icmp::V4_TIME_EXCEEDED, 0),
            ])
        }
    };
    // An ICMP error from the router about `inner`.
    let error_about = |inner: &Packet, rng: &mut Rng| {
        let (ty, code) = err_kind(rng);
        inner.error_reply(router, ty, code)
    };
    let reply_dir = s.dir.opposite();
    // The forgery: `pkt` on `iface`, against the flow's direction.
    let back = |iface: String, pkt: Packet| Step {
        iface,
        dir: reply_dir,
        pkt,
    };
    let (step, what) = match rng.below(7) {
        0 => {
            // An error quoting the flow, but with another peer in the quote.
            let mut inner = s.pkt.clone();
            match s.dir {
                Direction::Egress => inner.dst = other_remote(rng),
                Direction::Ingress => inner.src = other_remote(rng),
            }
            let e = error_about(&inner, rng);
            (back(s.iface.clone(), e), "forge:error-other-peer")
        }
        1 => {
            let e = error_about(&s.pkt, rng);
            (back(other_iface(rng), e), "forge:error-other-interface")
        }
        2 => {
            let mut r = s.pkt.reply();
            match reply_dir {
                Direction::Ingress => r.src = other_remote(rng),
                Direction::Egress => r.dst = other_remote(rng),
            }
            (back(s.iface.clone(), r), "forge:reply-other-peer")
        }
        3 => (
            back(other_iface(rng), s.pkt.reply()),
            "forge:reply-other-interface",
        ),
        4 => {
            // The reply with the local port (or echo id) moved by one.
            let mut r = s.pkt.reply();
            r.l4 = match r.l4 {
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                } => L4::Tcp {
                    sport,
                    dport: dport.wrapping_add(1),
                    flags,
                },
                L4::Udp { sport, dport } => L4::Udp {
                    sport,
                    dport: dport.wrapping_add(1),
                },
                L4::IcmpEcho { request, id, seq } => L4::IcmpEcho {
                    request,
                    id: id.wrapping_add(1),
                    seq,
                },
                other => other,
            };
            (back(s.iface.clone(), r), "forge:reply-other-port")
        }
        5 => {
            // A TCP segment of any kind from the peer's side (ACK, RST, FIN, SYN-ACK).
            let mut r = s.pkt.reply();
            if let L4::Tcp { sport, dport, .. } = r.l4 {
                use tcp_flags::*;
                let flags = rng.pick(&[ACK, RST, RST | ACK, FIN | ACK, SYN | ACK, PSH | ACK]);
                r.l4 = L4::Tcp {
                    sport,
                    dport,
                    flags,
                };
            }
            (back(s.iface.clone(), r), "forge:tcp-reply-flags")
        }
        _ => {
            // An error about the flow whose quoted ports do not match it.
            let mut inner = s.pkt.clone();
            inner.l4 = match inner.l4 {
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                } => L4::Tcp {
                    sport: sport ^ 1,
                    dport,
                    flags,
                },
                L4::Udp { sport, dport } => L4::Udp {
                    sport,
                    dport: dport ^ 1,
                },
                L4::IcmpEcho { request, id, seq } => L4::IcmpEcho {
                    request,
                    id: id ^ 1,
                    seq,
                },
                other => other,
            };
            let e = error_about(&inner, rng);
            (back(s.iface.clone(), e), "forge:error-other-ports")
        }
    };
    Some((step, what))
}

// =============================================================================================
// 3. The oracle's reading of a frame
// =============================================================================================

/// What the contract (docs/design.md "Pipeline" 1 and 5) makes of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Not IPv4/IPv6 after at most two VLAN tags: `PassNonIp` (N1).
    NonIp,
    /// The contract's drop reason for a malformed frame. Stateless: the kernel must drop it
    /// with exactly this reason whatever came before.
    Malformed(Reason),
    /// A well-formed IP packet, as the reference model reads it.
    Packet(Packet),
    /// Well formed, but not expressible as a [`Packet`] without changing its meaning for
    /// the model; the reason says why. Nobody judges these frames.
    Unmodelled(&'static str),
}

impl Reading {
    /// A short class name for statistics.
    pub fn class(&self) -> String {
        match self {
            Reading::NonIp => "non-ip".into(),
            Reading::Malformed(r) => format!("malformed:{}", r.name()),
            Reading::Packet(_) => "modelled".into(),
            Reading::Unmodelled(why) => format!("unmodelled:{why}"),
        }
    }
}

const TPIDS: [u16; 2] = [0x8100, 0x88a8];
const V6_EXT: [u8; 5] = [0, 43, 44, 51, 60];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    fn v4(&self, at: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            self.0[at],
            self.0[at + 1],
            self.0[at + 2],
            self.0[at + 3],
        ))
    }
    fn v6(&self, at: usize) -> IpAddr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.0[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// Parses `frame` the way the contract says the program must, strictly and independently:
///
/// 1. Ethernet: 14 bytes (`DropBadEth`); up to two tags 0x8100/0x88a8, each 4 bytes
///    (`DropBadEth` when cut); a third tag is `DropVlanDepth`; any other ethertype than
///    IPv4/IPv6 is `NonIp`.
/// 2. IPv4: 20 bytes in the frame, version 4, IHL >= 5, IHL*4 <= total length <= the bytes
///    after the tags (`DropBadIp`). IPv6: 40 bytes, version 6, 40 + payload length <= the
///    bytes after the tags, no IPv4-mapped source or destination (`DropBadIp`); then at most eight extension headers (0, 43, 44,
///    51, 60), each complete inside the datagram (`DropBadExtHdr`); a ninth is
///    `DropBadExtHdr`; a later fragment ends the walk (what follows is data).
/// 3. Offset > 0: a later fragment (no transport header). Otherwise the transport must be
///    complete inside the datagram: TCP 20 bytes with data offset >= 5 (`DropBadL4`), UDP,
///    ICMP/ICMPv6 8 bytes (`DropBadL4`, or `DropBadFragment` for a first fragment that is too
///    short).
/// 4. An ICMP error's quote (I2) is read when the inner IP header (IPv4: any IHL >= 5, not a
///    later fragment; IPv6: no extension headers are walked) plus 8 bytes lie inside the
///    error's datagram; otherwise the error is plain ICMP.
pub fn read_frame(frame: &[u8]) -> Reading {
    let b = Bytes(frame);
    let len = frame.len();
    if len < 14 {
        return Reading::Malformed(Reason::DropBadEth);
    }
    let mut et = b.u16(12);
    let mut l3 = 14;
    let mut vlan = Vec::new();
    for _ in 0..2 {
        if !TPIDS.contains(&et) {
            break;
        }
        if l3 + 4 > len {
            return Reading::Malformed(Reason::DropBadEth);
        }
        vlan.push(b.u16(l3) & 0x0fff);
        et = b.u16(l3 + 2);
        l3 += 4;
    }
    if TPIDS.contains(&et) {
        return Reading::Malformed(Reason::DropVlanDepth);
    }
    let r = match et {
        0x0800 => read_v4(&b, l3),
        0x86dd => read_v6(&b, l3),
        _ => return Reading::NonIp,
    };
    match r {
        Reading::Packet(mut p) => {
            p.vlan = vlan;
            Reading::Packet(p)
        }
        other => other,
    }
}

fn read_v4(b: &Bytes, l3: usize) -> Reading {
    let len = b.0.len();
    if l3 + 20 > len {
        return Reading::Malformed(Reason::DropBadIp);
    }
    let vihl = b.u8(l3);
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(b.u16(l3 + 2));
    if vihl >> 4 != 4 || ihl < 20 || total < ihl || total > len - l3 {
        return Reading::Malformed(Reason::DropBadIp);
    }
    let ip_end = l3 + total;
    let l4 = l3 + ihl;
    let id = b.u16(l3 + 4);
    let fo = b.u16(l3 + 6);
    let off8 = fo & 0x1fff;
    let more = fo & 0x2000 != 0;
    let proto = b.u8(l3 + 9);
    let (src, dst) = (b.v4(l3 + 12), b.v4(l3 + 16));
    let frag = if off8 != 0 || more {
        Some(Frag {
            id: u32::from(id),
            offset_bytes: off8 * 8,
            more,
        })
    } else {
        None
    };
    let mut ext = Vec::new();
    if ihl > 20 {
        ext.push(Ext::V4Option(b.0[l3 + 20..l4].to_vec()));
    }
    let ip = IpHeader {
        addrs: (src, dst),
        ttl: b.u8(l3 + 8),
        id: Some(id),
        ext,
        frag,
    };
    read_packet(
        b,
        ip,
        Transport {
            proto,
            at: l4,
            end: ip_end,
        },
    )
}

fn read_v6(b: &Bytes, l3: usize) -> Reading {
    let len = b.0.len();
    if l3 + 40 > len {
        return Reading::Malformed(Reason::DropBadIp);
    }
    let plen = usize::from(b.u16(l3 + 4));
    if b.u8(l3) >> 4 != 6 || 40 + plen > len - l3 {
        return Reading::Malformed(Reason::DropBadIp);
    }
    let ip_end = l3 + 40 + plen;
    let (src, dst) = (b.v6(l3 + 8), b.v6(l3 + 24));
    // IPv4-mapped addresses never appear on the wire (RFC 4291 2.5.5.2): malformed.
    if is_v4_mapped(src) || is_v4_mapped(dst) {
        return Reading::Malformed(Reason::DropBadIp);
    }
    let mut nh = b.u8(l3 + 6);
    let mut off = l3 + 40;
    let mut ext = Vec::new();
    let mut frag: Option<Frag> = None;
    let mut frags = 0;
    let mut after_frag = false;
    let mut walked = 0;
    while walked < 8 && V6_EXT.contains(&nh) {
        walked += 1;
        if off + 8 > len {
            return Reading::Malformed(Reason::DropBadExtHdr);
        }
        let hlen = match nh {
            44 => 8,
            51 => (usize::from(b.u8(off + 1)) + 2) * 4,
            _ => (usize::from(b.u8(off + 1)) + 1) * 8,
        };
        if off + hlen > ip_end {
            return Reading::Malformed(Reason::DropBadExtHdr);
        }
        let len8 = b.u8(off + 1);
        match nh {
            44 => {
                let fo = b.u16(off + 2);
                frag = Some(Frag {
                    id: b.u32(off + 4),
                    offset_bytes: fo & 0xfff8,
                    more: fo & 1 != 0,
                });
                frags += 1;
            }
            _ if frag.is_some() => after_frag = true,
            _ => {}
        }
        match nh {
            0 => ext.push(Ext::HopByHop { len8 }),
            43 => ext.push(Ext::Routing { len8 }),
            51 => ext.push(Ext::Ah { len4: len8 }),
            60 => ext.push(Ext::DestOpts { len8 }),
            _ => {}
        }
        nh = b.u8(off);
        off += hlen;
        if frag.is_some_and(|f| f.is_later()) {
            break;
        }
    }
    let later = frag.is_some_and(|f| f.is_later());
    if !later && V6_EXT.contains(&nh) {
        return Reading::Malformed(Reason::DropBadExtHdr);
    }
    // Fragments are keyed by the fragment header's next header (design: G1); a Packet's
    // fragment header is always last before its transport, so a chain that continues after
    // it (or holds two) cannot be said as a Packet.
    if frags > 1 {
        return Reading::Unmodelled("two fragment headers");
    }
    if after_frag && frag.is_some_and(|f| f.more) && !later {
        return Reading::Unmodelled("extension header after a first fragment's fragment header");
    }
    let ip = IpHeader {
        addrs: (src, dst),
        ttl: b.u8(l3 + 7),
        id: None,
        ext,
        frag,
    };
    read_packet(
        b,
        ip,
        Transport {
            proto: nh,
            at: off,
            end: ip_end,
        },
    )
}

/// Where an IP header says the transport is: its protocol, its offset and the datagram's end.
struct Transport {
    proto: u8,
    at: usize,
    end: usize,
}

/// What a read IP header (IPv6: with its extension chain) says besides where the transport is.
struct IpHeader {
    addrs: (IpAddr, IpAddr),
    ttl: u8,
    /// IPv4's identification; IPv6 has none outside a fragment header.
    id: Option<u16>,
    ext: Vec<Ext>,
    frag: Option<Frag>,
}

/// The packet of a read IP header: its transport read from the bytes, unless the datagram is
/// a later fragment, which holds no transport header (G1).
fn read_packet(b: &Bytes, ip: IpHeader, t: Transport) -> Reading {
    let (src, dst) = ip.addrs;
    let v6 = src.is_ipv6();
    let frag = ip.frag;
    let l4 = if frag.is_some_and(|f| f.is_later()) {
        later_l4(t.proto, v6)
    } else {
        match read_l4(b, t.proto, t.at, t.end, frag.is_some_and(|f| f.more), v6) {
            Ok(l4) => l4,
            Err(r) => return r,
        }
    };
    let mut p = Packet::new(src, dst, l4);
    p.frag = frag;
    p.payload_len = t.end.saturating_sub(t.at).min(usize::from(u16::MAX)) as u16;
    p.ext = ip.ext;
    p.ttl = ip.ttl;
    if let Some(id) = ip.id {
        p.ip_id = id;
    }
    Reading::Packet(p)
}

fn is_v4_mapped(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// The transport of a later fragment: only its protocol matters (and, through the variant,
/// the minimum header size an offset must clear).
fn later_l4(proto: u8, v6: bool) -> L4 {
    match (proto, v6) {
        (6, _) => L4::Tcp {
            sport: 0,
            dport: 0,
            flags: 0,
        },
        (17, _) => L4::Udp { sport: 0, dport: 0 },
        (1, false) | (58, true) => L4::IcmpOther { ty: 0, code: 0 },
        (p, _) => L4::Other { proto: p },
    }
}

/// The transport header at `at` of a datagram ending at `ip_end`.
fn read_l4(
    b: &Bytes,
    proto: u8,
    at: usize,
    ip_end: usize,
    first_frag: bool,
    v6: bool,
) -> Result<L4, Reading> {
    let short = Reading::Malformed(if first_frag {
        Reason::DropBadFragment
    } else {
        Reason::DropBadL4
    });
    let icmp_proto = if v6 { 58 } else { 1 };
    Ok(match proto {
        6 => {
            if at + 20 > ip_end {
                return Err(short);
            }
            if b.u8(at + 12) >> 4 < 5 {
                return Err(Reading::Malformed(Reason::DropBadL4));
            }
            L4::Tcp {
                sport: b.u16(at),
                dport: b.u16(at + 2),
                flags: b.u8(at + 13),
            }
        }
        17 => {
            if at + 8 > ip_end {
                return Err(short);
            }
            L4::Udp {
                sport: b.u16(at),
                dport: b.u16(at + 2),
            }
        }
        p if p == icmp_proto => {
            if at + 8 > ip_end {
                return Err(short);
            }
            let (ty, code) = (b.u8(at), b.u8(at + 1));
            let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
            if ty == req || ty == rep {
                if code != 0 {
                    // A Packet's echo has no code; rules match type<<8|code.
                    return Err(Reading::Unmodelled("echo with a nonzero code"));
                }
                L4::IcmpEcho {
                    request: ty == req,
                    id: b.u16(at + 4),
                    seq: b.u16(at + 6),
                }
            } else {
                let error = if v6 {
                    matches!(ty, 1..=4)
                } else {
                    matches!(ty, 3 | 11 | 12)
                };
                match error.then(|| read_quote(b, at + 8, ip_end, v6)).flatten() {
                    Some(Ok(inner)) => L4::IcmpError {
                        ty,
                        code,
                        inner: Box::new(inner),
                    },
                    Some(Err(r)) => return Err(r),
                    None => L4::IcmpOther { ty, code },
                }
            }
        }
        p => L4::Other { proto: p },
    })
}

/// The packet an ICMP error quotes at `at` (I2). None: unreadable, the error is plain ICMP.
/// The quoted header must lie in the frame and, with 8 transport bytes, inside the error's
/// datagram; IPv4: version 4, IHL >= 5 (options skipped), not a later fragment; IPv6:
/// version 6, the next header is taken as the transport (extension headers are not walked
/// in a quote).
fn read_quote(b: &Bytes, at: usize, ip_end: usize, v6: bool) -> Option<Result<Packet, Reading>> {
    let len = b.0.len();
    let (src, dst, proto, l4) = if v6 {
        if at + 40 > len || b.u8(at) >> 4 != 6 {
            return None;
        }
        (b.v6(at + 8), b.v6(at + 24), b.u8(at + 6), at + 40)
    } else {
        if at + 20 > len {
            return None;
        }
        let vihl = b.u8(at);
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || b.u16(at + 6) & 0x1fff != 0 {
            return None;
        }
        (b.v4(at + 12), b.v4(at + 16), b.u8(at + 9), at + ihl)
    };
    if l4 + 8 > ip_end {
        return None;
    }
    if is_v4_mapped(src) || is_v4_mapped(dst) {
        return Some(Err(Reading::Unmodelled(
            "IPv4-mapped IPv6 address in an ICMP quote",
        )));
    }
    let icmp_proto = if v6 { 58 } else { 1 };
    let l4v = match proto {
        // The quote holds 8 transport bytes: ports, not TCP flags (a flow needs no more).
        6 => L4::Tcp {
            sport: b.u16(l4),
            dport: b.u16(l4 + 2),
            flags: 0,
        },
        17 => L4::Udp {
            sport: b.u16(l4),
            dport: b.u16(l4 + 2),
        },
        p if p == icmp_proto => {
            let ty = b.u8(l4);
            let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
            if ty == req || ty == rep {
                L4::IcmpEcho {
                    request: ty == req,
                    id: b.u16(l4 + 4),
                    seq: b.u16(l4 + 6),
                }
            } else {
                L4::IcmpOther {
                    ty,
                    code: b.u8(l4 + 1),
                }
            }
        }
        p => L4::Other { proto: p },
    };
    let mut inner = Packet::new(src, dst, l4v);
    // What the model needs of a quote is its flow; "Other" quotes are 8 bytes of transport.
    inner.payload_len = if matches!(inner.l4, L4::Other { .. }) {
        8
    } else {
        0
    };
    Some(Ok(inner))
}

// =============================================================================================
// 4. The packet fuzz runner
// =============================================================================================

/// Knobs of a packet fuzz run.
#[derive(Clone, Debug)]
pub struct PacketFuzzConfig {
    pub seed: u64,
    /// Stop after this many frames (each frame is run through all three programs).
    pub frames: u64,
    /// ... or once this much time has passed.
    pub time: Option<Duration>,
    /// Steps per episode; conntrack and fragment memory start empty in every episode.
    pub episode_len: usize,
    /// Run this episode only (replaying a failure).
    pub only_episode: Option<u64>,
    /// Stop after this many failures.
    pub max_failures: usize,
}

impl Default for PacketFuzzConfig {
    fn default() -> Self {
        PacketFuzzConfig {
            seed: 0x5eed,
            frames: 20_000,
            time: None,
            episode_len: 48,
            only_episode: None,
            max_failures: 5,
        }
    }
}

impl PacketFuzzConfig {
    /// Defaults overridden by `SG_FUZZ_FRAMES`, `SG_FUZZ_SECONDS`, `SG_FUZZ_SEED` and
    /// `SG_FUZZ_EPISODE` (what `cargo xtask fuzz packets` and a failure's replay line set).
    pub fn from_env(mut self) -> Result<PacketFuzzConfig> {
        let var = |k: &str| -> Result<Option<u64>> {
            match std::env::var(k) {
                Ok(v) => {
                    let v = v.trim();
                    let n = match v.strip_prefix("0x") {
                        Some(h) => u64::from_str_radix(h, 16),
                        None => v.parse(),
                    };
                    n.map(Some)
                        .with_context(|| format!("{k}={v} is not a number"))
                }
                Err(_) => Ok(None),
            }
        };
        if let Some(n) = var("SG_FUZZ_FRAMES")? {
            self.frames = n;
        }
        if let Some(s) = var("SG_FUZZ_SECONDS")? {
            self.time = Some(Duration::from_secs(s));
        }
        if let Some(s) = var("SG_FUZZ_SEED")? {
            self.seed = s;
        }
        self.only_episode = var("SG_FUZZ_EPISODE")?.or(self.only_episode);
        Ok(self)
    }
}

/// A kernel-vs-oracle failure with what it takes to reproduce it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// `bypass` (the kernel passed what the oracle drops), `disagreement`, `bad-action`,
    /// `run-error`.
    pub kind: &'static str,
    pub detail: String,
    /// The environment that replays the episode alone.
    pub replay: String,
    /// The episode up to the failure: one line per run.
    pub history: String,
}

/// What a run did; [`fmt::Display`] prints the figures for docs/hardening.md.
#[derive(Clone, Debug, Default)]
pub struct PacketFuzzReport {
    pub seed: u64,
    pub episodes: u64,
    pub frames: u64,
    /// Program runs (three per frame).
    pub runs: u64,
    pub elapsed: Duration,
    /// Frames by the oracle's reading ([`Reading::class`]).
    pub readings: BTreeMap<String, u64>,
    /// Runs by the kernel's reason.
    pub kernel_reasons: BTreeMap<Reason, u64>,
    /// Frames by mutation or forgery applied (a frame may count under several).
    pub mutations: BTreeMap<&'static str, u64>,
    /// Frames that went through at least one mutation.
    pub mutated: u64,
    /// Runs compared exactly (reason and rule) with the model or the contract's parse rules.
    pub compared: u64,
    /// Runs the kernel passed.
    pub passed: u64,
    /// Runs after an unmodelled frame changed kernel state in the same episode: only the
    /// stateless checks applied (action, one reason, malformed frames dropped).
    pub desynced: u64,
    /// TC runs the kernel's test harness refused (an IP header shorter than its minimum:
    /// `bpf_prog_test_run_skb` checks that before the program runs).
    pub refused: u64,
    pub failures: Vec<Failure>,
}

impl fmt::Display for PacketFuzzReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "packet fuzz (seed {:#x}): {} frames in {} episodes, {} program runs, {:.1} s ({:.0} frames/s)",
            self.seed,
            self.frames,
            self.episodes,
            self.runs,
            secs,
            self.frames as f64 / secs
        )?;
        writeln!(
            f,
            "  mutated frames {}; runs compared exactly {}, passed {}, desynchronised {}, refused by the harness {}",
            self.mutated, self.compared, self.passed, self.desynced, self.refused
        )?;
        writeln!(f, "  oracle readings:")?;
        for (k, v) in &self.readings {
            writeln!(f, "    {k:<60} {v}")?;
        }
        writeln!(f, "  kernel reasons (runs):")?;
        for (k, v) in &self.kernel_reasons {
            writeln!(f, "    {:<60} {v}", k.name())?;
        }
        writeln!(f, "  mutations and forgeries (frames):")?;
        for (k, v) in &self.mutations {
            writeln!(f, "    {k:<60} {v}")?;
        }
        writeln!(f, "  failures: {}", self.failures.len())?;
        for x in &self.failures {
            writeln!(
                f,
                "  --- {}: {}\n  replay: {}\n{}",
                x.kind, x.detail, x.replay, x.history
            )?;
        }
        Ok(())
    }
}

/// One policy on its own dataplane (so run_frame only scans that policy's counter slots).
struct Bench {
    name: String,
    policy: Policy,
    pools: Pools,
    dp: Dataplane,
    image: MapImage,
    /// Policy interface name -> device.
    device_of: BTreeMap<String, u32>,
    /// Device -> the policy interface the model judges it as (unbound devices get a name the
    /// policy does not have: fail closed, `DropNoPolicy`).
    iface_of: BTreeMap<u32, String>,
}

/// One frame of an episode.
struct Case {
    device: u32,
    frame: Vec<u8>,
    what: Vec<&'static str>,
}

/// Hostile frames through the real programs, judged against the reference model. Every
/// device passed in must exist in the calling thread's network namespace.
pub struct PacketFuzz {
    benches: Vec<Bench>,
    devices: Vec<u32>,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

impl PacketFuzz {
    /// Loads one dataplane per policy and applies it, compiled by the production compiler,
    /// with the policy's first interfaces bound to `devices` in order.
    pub fn new(policies: Vec<(String, Policy)>, devices: &[u32]) -> Result<PacketFuzz> {
        let mut benches = Vec::new();
        for (name, policy) in policies {
            let mut dp = Dataplane::load(LoadOptions {
                capacities: Capacities::small(),
                ..LoadOptions::default()
            })
            .with_context(|| format!("{name}: loading a dataplane"))?;
            let device_of: BTreeMap<String, u32> = policy
                .interfaces
                .iter()
                .zip(devices)
                .map(|(i, d)| (i.name.clone(), *d))
                .collect();
            let image = compile_for(&dp, &policy, &device_of)
                .with_context(|| format!("{name}: compiling"))?;
            dp.apply(&image)
                .with_context(|| format!("{name}: applying"))?;
            let iface_of = devices
                .iter()
                .map(|d| {
                    let n = device_of
                        .iter()
                        .find(|(_, v)| **v == *d)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_else(|| format!("unbound-device-{d}"));
                    (*d, n)
                })
                .collect();
            benches.push(Bench {
                name,
                pools: Pools::of(&policy),
                policy,
                dp,
                image,
                device_of,
                iface_of,
            });
        }
        anyhow::ensure!(!benches.is_empty(), "no policies to fuzz with");
        Ok(PacketFuzz {
            benches,
            devices: devices.to_vec(),
        })
    }

    /// Runs episodes until the frame or time budget is spent (or `max_failures` failures).
    pub fn run(&mut self, cfg: &PacketFuzzConfig) -> Result<PacketFuzzReport> {
        let start = Instant::now();
        let mut rep = PacketFuzzReport {
            seed: cfg.seed,
            ..PacketFuzzReport::default()
        };
        let mut episode = cfg.only_episode.unwrap_or(0);
        loop {
            if rep.frames >= cfg.frames
                || cfg.time.is_some_and(|t| start.elapsed() >= t)
                || rep.failures.len() >= cfg.max_failures
            {
                break;
            }
            self.episode(cfg, episode, &mut rep)?;
            rep.episodes += 1;
            if cfg.only_episode.is_some() {
                break;
            }
            episode += 1;
        }
        rep.elapsed = start.elapsed();
        Ok(rep)
    }

    fn episode(
        &mut self,
        cfg: &PacketFuzzConfig,
        episode: u64,
        rep: &mut PacketFuzzReport,
    ) -> Result<()> {
        let mut rng = Rng::new(mix(cfg.seed, episode));
        let bi = rng.below(self.benches.len());
        // One episode in 16 is "exotic": it also builds frames the model cannot express
        // (IPv4-mapped IPv6 addresses, transports behind an extension header after a first
        // fragment's fragment header), which desynchronise the rest of their episode once
        // they change kernel state. Keeping them apart keeps the other episodes exact.
        let exotic = rng.chance(1, 16);
        let cases = self.generate(bi, &mut rng, cfg.episode_len, exotic)?;
        let devices = self.devices.clone();
        let b = &mut self.benches[bi];
        b.dp.flush_conntrack()?;
        b.dp.flush_fragments()?;
        let mut model = Model::new(b.policy.clone());
        let mut synced = true;
        let mut history = String::new();
        let replay = format!(
            "SG_FUZZ_SEED={:#x} SG_FUZZ_EPISODE={episode} (policy {}, devices {devices:?})",
            cfg.seed, b.name
        );
        for (ci, case) in cases.iter().enumerate() {
            let reading = read_frame(&case.frame);
            rep.frames += 1;
            *rep.readings.entry(reading.class()).or_default() += 1;
            if !case.what.is_empty() {
                rep.mutated += u64::from(case.what.iter().any(|w| !w.starts_with("forge:")));
            }
            for w in &case.what {
                *rep.mutations.entry(w).or_default() += 1;
            }
            let iface = b.iface_of[&case.device].clone();
            let mut hooks = Hook::ALL;
            for i in (1..hooks.len()).rev() {
                hooks.swap(i, rng.below(i + 1));
            }
            for hook in hooks {
                rep.runs += 1;
                let dir = if hook.is_ingress() {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let before = match &reading {
                    Reading::Unmodelled(_) if synced => Some(state(&b.dp)?),
                    _ => None,
                };
                let line_head = format!(
                    "  #{ci} {hook:?} dev {} ({iface}) {:?} frame {}",
                    case.device,
                    case.what,
                    short_hex(&case.frame)
                );
                let fail = |rep: &mut PacketFuzzReport, history: &str, kind, detail: String| {
                    rep.failures.push(Failure {
                        kind,
                        detail: format!("{detail}\n  frame: {}", hex(&case.frame)),
                        replay: replay.clone(),
                        history: last_lines(history, 24),
                    });
                };
                let got = match b.dp.run_frame(hook, &case.frame, case.device) {
                    Ok(r) => r,
                    Err(e) => {
                        if harness_refuses(hook, &case.frame) {
                            rep.refused += 1;
                            let _ =
                                writeln!(history, "{line_head}: refused by the TC test harness");
                            continue;
                        }
                        let _ = writeln!(history, "{line_head}: run error");
                        fail(rep, &history, "run-error", format!("{e:#}"));
                        return Ok(());
                    }
                };
                *rep.kernel_reasons.entry(got.reason).or_default() += 1;
                rep.passed += u64::from(got.pass);
                let rule = got.slot.and_then(|s| b.image.slots.rule(s).cloned());
                let _ = writeln!(
                    history,
                    "{line_head}\n      oracle {} -> kernel {} ({}) rule {:?}",
                    reading.class(),
                    got.reason.name(),
                    got.action,
                    rule.as_ref().map(|r| r.as_str())
                );
                let (pass_action, drop_action) = if hook == Hook::XdpIn {
                    (XDP_PASS, XDP_DROP)
                } else {
                    (TC_ACT_OK, TC_ACT_SHOT)
                };
                let want_action = if got.reason.is_pass() {
                    pass_action
                } else {
                    drop_action
                };
                if got.action != want_action {
                    fail(
                        rep,
                        &history,
                        "bad-action",
                        format!(
                            "{hook:?} returned {} for {:?} (want {want_action})",
                            got.action, got.reason
                        ),
                    );
                    return Ok(());
                }
                // The expected (reason, rule), or None when nobody can say.
                let want: Option<(Reason, Option<RuleId>)> = match &reading {
                    Reading::NonIp => Some((Reason::PassNonIp, None)),
                    Reading::Malformed(r) => Some((*r, None)),
                    Reading::Packet(p) => {
                        let out = model.process(&iface, dir, p);
                        synced.then_some((out.reason, out.rule))
                    }
                    Reading::Unmodelled(_) => {
                        if let Some(before) = before
                            && state(&b.dp)? != before
                        {
                            synced = false;
                        }
                        None
                    }
                };
                let Some((want_reason, want_rule)) = want else {
                    rep.desynced += u64::from(matches!(reading, Reading::Packet(_)));
                    continue;
                };
                rep.compared += 1;
                if got.reason != want_reason || rule != want_rule {
                    let kind = if got.pass && !want_reason.is_pass() {
                        "bypass"
                    } else {
                        "disagreement"
                    };
                    let detail = format!(
                        "{hook:?} on device {} ({iface}): kernel {} rule {:?}, oracle ({}) {} rule {:?}\n  reading: {:?}",
                        case.device,
                        got.reason.name(),
                        rule.as_ref().map(|r| r.as_str()),
                        reading.class(),
                        want_reason.name(),
                        want_rule.as_ref().map(|r| r.as_str()),
                        reading
                    );
                    fail(rep, &history, kind, detail);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The frames of one episode: a random stateful sequence from `testgen::packets`, forged
    /// steps mixed in, then structural and byte-level mutations.
    fn generate(&self, bi: usize, rng: &mut Rng, n: usize, exotic: bool) -> Result<Vec<Case>> {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let b = &self.benches[bi];
        let mut seed = [0u8; 32];
        for c in seed.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        let actions = arb_actions(n..n + 1)
            .new_tree(&mut runner)
            .map_err(|e| anyhow!("sampling actions: {e}"))?
            .current();
        let mut steps: Vec<(Step, Vec<&'static str>)> = materialize(&b.policy, &b.pools, &actions)
            .into_iter()
            .map(|s| (s, Vec::new()))
            .collect();
        for _ in 0..n / 6 {
            let pos = 1 + rng.below(steps.len());
            let earlier: Vec<Step> = steps[..pos].iter().map(|(s, _)| s.clone()).collect();
            if let Some((s, what)) = forge(rng, &b.policy, &b.pools, &earlier) {
                steps.insert(pos, (s, vec![what]));
            }
        }
        // Fragment trains: a first fragment, then later ones at the right offset, at
        // overlapping offsets and at far ones (G1), sometimes IPv6 with the transport behind
        // an extension header after the fragment header.
        let mut expanded = Vec::with_capacity(steps.len() + 8);
        for (step, what) in steps {
            let fragmentable =
                !matches!(step.pkt.l4, L4::IcmpError { .. }) && step.pkt.frag.is_none();
            if !(fragmentable && rng.chance(1, 10)) {
                expanded.push((step, what));
                continue;
            }
            let v6 = step.pkt.is_v6();
            let id = rng.next_u64() as u32 & if v6 { u32::MAX } else { 0xffff };
            let mut first = step.pkt.clone().with_frag(Frag::first(id));
            first.payload_len = first.payload_len.max(24);
            let mut what_first = what.clone();
            what_first.push("packet:fragment-train");
            if exotic && v6 && rng.chance(1, 2) {
                what_first.push("packet:v6-ext-after-fragment-header");
            }
            let right = (first.transport_len() as u16).div_ceil(8) * 8;
            expanded.push((
                Step {
                    pkt: first,
                    ..step.clone()
                },
                what_first,
            ));
            for _ in 0..1 + rng.below(3) {
                let off = rng.pick_or(&[right, 8, 16, 24, right + 8], |r| {
                    8 * (1 + r.below(200) as u16)
                });
                let mut later = step
                    .pkt
                    .clone()
                    .with_frag(Frag::later(id, off, rng.chance(1, 2)));
                later.payload_len = 32;
                let mut w = what.clone();
                w.push("packet:fragment-train");
                expanded.push((
                    Step {
                        pkt: later,
                        ..step.clone()
                    },
                    w,
                ));
            }
        }
        let mut cases = Vec::with_capacity(expanded.len());
        for (step, mut what) in expanded {
            let mut pkt = step.pkt;
            if rng.chance(1, 3) {
                what.extend(mutate_packet(rng, &mut pkt));
            }
            let mut frame = pkt.build();
            if what.contains(&"packet:v6-ext-after-fragment-header") {
                frame = ext_after_fragment_header(&frame);
            }
            if exotic && rng.chance(1, 8) && !frame.v6 {
                frame = v4_mapped_v6(&pkt);
                what.push("packet:v4-mapped-v6");
            }
            if rng.chance(1, 2) {
                what.extend(mutate_frame(rng, &mut frame));
            }
            let device = match b.device_of.get(&step.iface) {
                Some(d) if !rng.chance(1, 10) => *d,
                _ => self.devices[rng.below(self.devices.len())],
            };
            cases.push(Case {
                device,
                frame: frame.bytes,
                what,
            });
        }
        Ok(cases)
    }
}

/// The IPv6 first fragment `f` with an 8-byte destination options header inserted between
/// its fragment header and its transport (legal: destination options may sit in the
/// fragmentable part). The fragment header is then not the last extension header.
fn ext_after_fragment_header(f: &Frame) -> Frame {
    let Some(fh) = fragment_header(f) else {
        return f.clone();
    };
    let mut out = f.clone();
    let transport = out.bytes[fh];
    out.bytes[fh] = 60;
    // next header, length 0 (8 bytes), one PadN option filling the rest.
    let dopt = vec![transport, 0, 1, 4, 0, 0, 0, 0];
    let at = fh + 8;
    out.bytes.splice(at..at, dopt);
    shift(&mut out, at, 8);
    out.exts.push(at);
    out.exts.sort_unstable();
    let plen = u16::from_be_bytes([out.bytes[out.l3 + 4], out.bytes[out.l3 + 5]]) + 8;
    set16(&mut out.bytes, out.l3 + 4, plen);
    out
}

/// The IPv4 packet `p` as IPv6 with both addresses IPv4-mapped (::ffff:a.b.c.d).
fn v4_mapped_v6(p: &Packet) -> Frame {
    let map = |a: IpAddr| match a {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    let mut q = p.clone();
    q.src = map(q.src);
    q.dst = map(q.dst);
    q.ext.clear();
    if let L4::IcmpError { inner, .. } = &mut q.l4 {
        inner.src = map(inner.src);
        inner.dst = map(inner.dst);
        inner.ext.clear();
    }
    if matches!(
        q.l4,
        L4::Other {
            proto: 0 | 43 | 44 | 51 | 60
        }
    ) {
        q.l4 = L4::Other { proto: 59 };
    }
    q.build()
}

/// Conntrack and fragment memory, to see whether an unmodelled frame changed anything.
type State = (
    Vec<(CtTable, sg_common::FlowKey, sg_common::FlowVal)>,
    Vec<(sg_common::FragKey, sg_common::FragVal)>,
);

fn state(dp: &Dataplane) -> Result<State> {
    let mut ct: Vec<_> = dp
        .conntrack()?
        .into_iter()
        .map(|e| (e.table, e.key, e.val))
        .collect();
    ct.sort_by_key(|a| (a.0, a.1));
    let mut fr = dp.fragment_records()?;
    fr.sort_by_key(|a| a.0);
    Ok((ct, fr))
}

/// Frames BPF_PROG_TEST_RUN refuses (EINVAL) before the program runs: anything shorter
/// than an Ethernet header on every hook, and on TC an untagged IPv4/IPv6 frame whose IP
/// header is shorter than its minimum. (A real NIC or the stack never hands such frames to
/// XDP/TC either.)
pub fn harness_refuses(hook: Hook, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return true;
    }
    if hook == Hook::XdpIn {
        return false;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => frame.len() < 14 + 20,
        0x86dd => frame.len() < 14 + 40,
        _ => false,
    }
}

/// The first 96 bytes in hex, for history lines.
fn short_hex(b: &[u8]) -> String {
    if b.len() <= 96 {
        hex(b)
    } else {
        format!("{}... ({} bytes)", hex(&b[..96]), b.len())
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lowercase hex, for reproducers.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

// =============================================================================================
// 5. The config oracle (cargo-fuzz targets and the CI test)
// =============================================================================================

/// What a policy file fuzz input must satisfy, whatever its bytes: loading returns (no
/// panic, no hang: the callers time it), a refusal carries at least one located error, and
/// an accepted policy compiles (or is refused for its size by the slot capacity) into a
/// canonical image whose kernel lookup agrees with the reference model's decision for
/// queries aimed at every rule.
pub mod config {
    use std::net::IpAddr;

    use ipnet::IpNet;

    use crate::lookup::{LookupResult, check_canonical, lookup};
    use sg_agent::compile::{CompileError, CompileOptions, compile};
    use sg_agent::config::{Format, load_str};
    use sg_agent::image::SlotTable;
    use sg_agent::model::decide::{Decision, decide};
    use sg_agent::policy::{Direction, IcmpMatch, Peer, Policy, Protocol};

    /// How a fuzz target's bytes become a policy file, so each target stays inside its format
    /// instead of spending its time on "cannot tell the format".
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Shape {
        /// The bytes as they are (any format).
        Raw,
        /// A CloudFormation template: the bytes follow an `AWSTemplateFormatVersion` line.
        CloudFormation,
        /// describe-security-groups output: the bytes are the `SecurityGroups` array.
        Describe,
    }

    /// The policy text of a fuzz input, or None when the bytes are not UTF-8 (the loader
    /// takes text; `load_file` refuses non-UTF-8 before parsing).
    pub fn text_of(data: &[u8], shape: Shape) -> Option<String> {
        let s = std::str::from_utf8(data).ok()?;
        Some(match shape {
            Shape::Raw => s.to_string(),
            Shape::CloudFormation => format!("AWSTemplateFormatVersion: \"2010-09-09\"\n{s}"),
            Shape::Describe => format!("{{\"SecurityGroups\": {s}\n}}"),
        })
    }

    /// What one input did.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Checked {
        pub accepted: bool,
        pub format: Option<Format>,
        pub errors: usize,
        pub rules: usize,
        /// The compiler refused the policy for its size (more rules than counter slots).
        pub too_big: bool,
        /// Lookup-vs-model queries compared.
        pub queries: usize,
    }

    /// Most queries per input (keeps huge accepted policies from dominating a run).
    const MAX_QUERIES: usize = 256;

    /// Loads `text`; when accepted and `compile_too`, compiles it and compares the kernel
    /// lookup with the model. `Err`: a property broke (a panic is the caller's to catch).
    pub fn check(text: &str, compile_too: bool) -> Result<Checked, String> {
        let loaded = match load_str(text, "fuzz.yaml") {
            Err(d) => {
                let errors = d.errors().count();
                if errors == 0 {
                    return Err(format!("refused without an error: {:?}", d.0));
                }
                return Ok(Checked {
                    errors,
                    ..Checked::default()
                });
            }
            Ok(l) => l,
        };
        let policy = &loaded.policy;
        let mut out = Checked {
            accepted: true,
            format: Some(loaded.format),
            rules: policy.all_rules().count(),
            ..Checked::default()
        };
        if !compile_too {
            return Ok(out);
        }
        let bindings = crate::random::all_bound(policy);
        let image = match compile(
            policy,
            &bindings,
            &SlotTable::default(),
            &CompileOptions::default(),
        ) {
            Ok(img) => img,
            Err(CompileError::Slots(_)) => {
                out.too_big = true;
                return Ok(out);
            }
            Err(e) => return Err(format!("a validated policy did not compile: {e}")),
        };
        check_canonical(&image).map_err(|e| format!("non-canonical image: {e}"))?;
        for (name, &ifindex) in &bindings {
            for dir in Direction::BOTH {
                for (remote, proto, port) in queries(policy, name, dir) {
                    if out.queries >= MAX_QUERIES {
                        return Ok(out);
                    }
                    out.queries += 1;
                    let want = decide(policy, name, dir, remote, proto, port);
                    let got = lookup(&image, ifindex, dir, remote, proto, port);
                    let agree = match (&want, got) {
                        (Decision::Deny, LookupResult::Deny) => true,
                        (Decision::Allow { rule, tracked }, LookupResult::Allow(v)) => {
                            image.slots.slot(rule) == Some(v.slot)
                                && (v.flags & sg_common::rule_flags::UNTRACKED == 0) == *tracked
                        }
                        _ => false,
                    };
                    if !agree {
                        return Err(format!(
                            "compiler and model disagree on {name} {dir:?} {remote} proto {proto} \
                             port {port}: model {want:?}, lookup {got:?}"
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Queries aimed at every rule of the interface's groups in `dir`: an address its peer
    /// covers (first and last of a CIDR, a prefix-list entry, a group member) and the ends of
    /// its protocol match; plus one address and port no rule names.
    fn queries(policy: &Policy, iface: &str, dir: Direction) -> Vec<(IpAddr, u8, u16)> {
        let Some(i) = policy.interface(iface) else {
            return Vec::new();
        };
        let mut out = vec![("203.0.113.77".parse().expect("valid"), 6, 1)];
        for g in &i.groups {
            let Some(group) = policy.groups.get(g) else {
                continue;
            };
            for r in group.rules(dir) {
                let mut remotes: Vec<IpAddr> = Vec::new();
                let ends = |n: &IpNet| [n.network(), n.broadcast()];
                match &r.peer {
                    Peer::Cidr(n) => remotes.extend(ends(n)),
                    Peer::PrefixList(id) => {
                        if let Some(pl) = policy.prefix_lists.get(id) {
                            remotes.extend(pl.entries.iter().take(2).flat_map(ends));
                        }
                    }
                    Peer::Group(g) => remotes.extend(
                        policy
                            .interfaces
                            .iter()
                            .filter(|m| m.groups.contains(g))
                            .flat_map(|m| m.addresses.iter().copied())
                            .take(2),
                    ),
                }
                let tc = |t: u8, c: u8| (u16::from(t) << 8) | u16::from(c);
                let icmp = |proto: u8, m: &IcmpMatch| match *m {
                    IcmpMatch::All => vec![(proto, tc(8, 0))],
                    IcmpMatch::Type(t) => vec![(proto, tc(t, 0)), (proto, tc(t, 255))],
                    IcmpMatch::TypeCode(t, c) => vec![(proto, tc(t, c))],
                };
                let points: Vec<(u8, u16)> = match &r.protocol {
                    Protocol::All => vec![(6, 80), (17, 53), (47, 0)],
                    Protocol::Tcp(p) => vec![(6, p.from), (6, p.to)],
                    Protocol::Udp(p) => vec![(17, p.from), (17, p.to)],
                    Protocol::Icmp(m) => icmp(1, m),
                    Protocol::Icmpv6(m) => icmp(58, m),
                    Protocol::Number(n) => vec![(*n, 0)],
                };
                for remote in &remotes {
                    for &(proto, port) in &points {
                        out.push((*remote, proto, port));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    use sg_agent::model::build::*;

    fn sample_steps(n: usize) -> Vec<Step> {
        let policy = PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("198.51.100.0/24"))
            .ingress("sg-a", udp_range(1000, 2000), cidr("2001:db8:1::/48"))
            .ingress("sg-a", icmp_type(8), cidr("0.0.0.0/0"))
            .egress("sg-a", all(), cidr("0.0.0.0/0"))
            .iface("eth0", &["192.0.2.10", "2001:db8::10"], &["sg-a"])
            .build();
        let pools = Pools::of(&policy);
        let mut runner = TestRunner::deterministic();
        let actions = arb_actions(n..n + 1)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        materialize(&policy, &pools, &actions)
    }

    /// The oracle's parser reads back what packet.rs built (two independent codecs agree on
    /// every generated packet's meaning).
    #[test]
    fn read_frame_reads_back_built_packets() {
        for s in sample_steps(2000) {
            let p = &s.pkt;
            if p.vlan.len() > 2 {
                assert_eq!(
                    read_frame(&p.to_frame()),
                    Reading::Malformed(Reason::DropVlanDepth)
                );
                continue;
            }
            let Reading::Packet(q) = read_frame(&p.to_frame()) else {
                panic!("{p:?} read as {:?}", read_frame(&p.to_frame()));
            };
            assert_eq!(
                (q.src, q.dst, q.proto(), &q.vlan),
                (p.src, p.dst, p.proto(), &p.vlan),
                "{p:?}"
            );
            // IPv4 has no "atomic fragment": offset 0 without MF is no fragment at all.
            let real = |f: &Frag| p.is_v6() || f.is_later() || f.more;
            assert_eq!(
                q.frag.map(|f| (f.offset_bytes, f.more)),
                p.frag.filter(real).map(|f| (f.offset_bytes, f.more))
            );
            assert_eq!(
                q.ext.len(),
                p.ext.len().min(if p.is_v6() { 8 } else { 1 }),
                "{p:?}"
            );
            if !p.is_later_fragment() {
                match (&p.l4, &q.l4) {
                    (L4::IcmpError { inner: a, .. }, L4::IcmpError { inner: b, .. }) => {
                        // A quote's IPv6 extension headers are not walked (I2): its "protocol"
                        // is then the first of them.
                        let proto = match (a.is_v6(), a.ext.first()) {
                            (true, Some(Ext::HopByHop { .. })) => 0,
                            (true, Some(Ext::DestOpts { .. })) => 60,
                            (true, Some(Ext::Routing { .. })) => 43,
                            (true, Some(Ext::Ah { .. })) => 51,
                            (true, _) if a.frag.is_some() => 44,
                            _ => a.proto(),
                        };
                        assert_eq!((a.src, a.dst, proto), (b.src, b.dst, b.proto()), "{p:?}");
                    }
                    (L4::IcmpError { .. }, other) => panic!("{p:?}: quote not read: {other:?}"),
                    (
                        L4::Tcp {
                            sport,
                            dport,
                            flags,
                        },
                        L4::Tcp {
                            sport: s2,
                            dport: d2,
                            flags: f2,
                        },
                    ) => {
                        assert_eq!((sport, dport, flags), (s2, d2, f2));
                    }
                    (a, b) => assert_eq!(a, b, "{p:?}"),
                }
            }
        }
    }

    #[test]
    fn read_frame_gives_the_contracts_reasons() {
        let syn = Packet::syn(addr("198.51.100.7"), addr("192.0.2.10"), 1, 22);
        let cases: Vec<(Vec<u8>, Reason)> = vec![
            (syn.build().set_ipv4_ihl(4).bytes, Reason::DropBadIp),
            (syn.build().set_ip_len(200).bytes, Reason::DropBadIp),
            (syn.build().cut_l4(19).bytes, Reason::DropBadL4),
            (syn.build().set_tcp_data_offset(4).bytes, Reason::DropBadL4),
            (
                syn.clone().with_vlan(&[1, 2, 3]).to_frame(),
                Reason::DropVlanDepth,
            ),
            (
                syn.clone()
                    .with_frag(Frag::first(9))
                    .build()
                    .cut_l4(12)
                    .bytes,
                Reason::DropBadFragment,
            ),
            (
                sg_agent::packet::raw_eth(&[], 0x8100, &[0, 5]),
                Reason::DropBadEth,
            ),
            (
                Packet::udp(addr("2001:db8::1"), addr("2001:db8::2"), 1, 53)
                    .with_ext(vec![Ext::DestOpts { len8: 0 }; 9])
                    .to_frame(),
                Reason::DropBadExtHdr,
            ),
        ];
        for (f, r) in cases {
            assert_eq!(read_frame(&f), Reading::Malformed(r), "{}", hex(&f));
        }
        assert_eq!(
            read_frame(&sg_agent::packet::arp_request(
                "192.0.2.1".parse().unwrap(),
                "192.0.2.2".parse().unwrap()
            )),
            Reading::NonIp
        );
    }

    /// The mutators never panic, whatever they are given (a panic here would abort a long
    /// fuzz run).
    #[test]
    fn mutators_never_panic() {
        let mut rng = Rng::new(7);
        for s in sample_steps(3000) {
            for _ in 0..20 {
                let mut p = s.pkt.clone();
                mutate_packet(&mut rng, &mut p);
                let mut f = p.build();
                for _ in 0..8 {
                    mutate_frame(&mut rng, &mut f);
                }
                let _ = read_frame(&f.bytes);
            }
        }
    }
}
