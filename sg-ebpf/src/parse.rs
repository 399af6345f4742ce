//! Parsing: Ethernet (up to two VLAN tags), IPv4 / IPv6 (extension headers), the transport
//! header, normalised at once into one family-agnostic summary, [`Pkt`].
//!
//! Owns every malformed-packet reason (design.md "Pipeline" 1) and the header layouts. It
//! must not judge: no map is read here. Malformed IP is never passed: each case returns its
//! own drop reason.
//!
//! Lengths. "The frame" is what the hook says (`Hook::len`); "the datagram" is what the IP
//! header declares. An IP header must fit the frame and declare no more than the frame
//! holds (Ethernet padding after the datagram is fine); extension and transport headers must
//! fit the datagram.
use sg_common::{Addr, Reason, proto};

use crate::ctx::Hook;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;

/// IPv6 extension headers walked (design.md: hop-by-hop, routing, fragment, destination
/// options, AH), and the most sg walks before giving up (`DropBadExtHdr`).
const NH_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_DSTOPTS: u8 = 60;
pub const MAX_EXT_HDRS: usize = 8;

/// The largest datagram an IP length field can describe. Longer ones exist only as GSO
/// super-packets inside the host (BIG TCP), which carry a length of 0.
const BIG_GSO: u32 = 65535;

/// TCP flag bits (the 14th byte of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
}

/// Fragment position of a packet (G1).
pub const FRAG_NONE: u8 = 0;
/// Offset 0 with more-fragments set: judged like any packet, its verdict recorded.
pub const FRAG_FIRST: u8 = 1;
/// Offset > 0: no transport header; follows the first fragment's verdict.
pub const FRAG_LATER: u8 = 2;

/// The transport as sg treats it: ICMP means ICMP for IPv4 and ICMPv6 for IPv6 (protocol 58
/// inside IPv4, or 1 inside IPv6, is just "another protocol").
pub const L4_OTHER: u8 = 0;
pub const L4_TCP: u8 = 1;
pub const L4_UDP: u8 = 2;
pub const L4_ICMP: u8 = 3;

/// A 16-byte address held as four words in memory order (network order bytes).
///
/// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- kept as words, not `[u8; 16]`. Byte arrays (alignment 1) get split by
/// LLVM into 16 scalars each whenever two addresses are selected between (IPv4 or IPv6),
/// and every byte then takes an 8-byte stack slot: the stack limit (512) was exceeded.
pub type Words = [u32; 4];

/// Bytes 8..12 of an IPv4-mapped address, `00 00 ff ff`, as a word.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An IPv4 address (a word as read from the packet) mapped into `::ffff:0:0/96`.
#[inline(always)]
pub const fn v4_words(a: u32) -> Words {
    [0, 0, V4_MAPPED_WORD, a]
}

/// The `sg_common::Addr` (bytes) of an address held as words.
#[inline(always)]
pub const fn addr(w: &Words) -> Addr {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<Words, Addr>(*w) }
}

/// The family-agnostic summary of an IP packet. Addresses are 16 bytes in network order,
/// IPv4 mapped into `::ffff:0:0/96`. Zeroed fields mean "absent" (a later fragment has no
/// ports, a non-ICMP packet no type).
///
/// It also carries where and when the packet is judged (interface, direction, time), so every
/// step takes one argument for "the packet".
#[derive(Clone, Copy)]
pub struct Pkt {
    /// `bpf_ktime_get_coarse_ns` when judging started (0 until parsing succeeded).
    pub now: u64,
    pub src: Words,
    pub dst: Words,
    /// The protected interface.
    pub ifindex: u32,
    /// Frame length (what the rule and flow byte counters are charged).
    pub len: u32,
    /// Offset of the transport header (related ICMP reads the inner packet after it).
    pub l4_off: u32,
    /// End of the datagram as the IP header declares it.
    pub ip_end: u32,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub frag_id: u32,
    /// The protocol a fragment's datagram is keyed by in `SG_FRAGS`: IPv4's protocol, or the
    /// IPv6 fragment header's next header (the first header of the fragmentable part; what a
    /// later fragment carries, even when the first one has more extension headers after it).
    pub frag_proto: u8,
    /// TCP/UDP ports (host order).
    pub sport: u16,
    pub dport: u16,
    /// ICMP echo identifier (host order).
    pub icmp_id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_off: u16,
    /// IP protocol number (the transport after IPv6 extension headers).
    pub proto: u8,
    /// `L4_*`.
    pub l4: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// 1 for IPv6.
    pub v6: u8,
    /// `FRAG_*`.
    pub frag: u8,
    /// `DIR_*`: the direction the packet is seen in.
    pub dir: u8,
}

impl Pkt {
    #[inline(always)]
    pub const fn new(ifindex: u32, dir: u8, len: u32) -> Pkt {
        Pkt {
            now: 0,
            src: [0; 4],
            dst: [0; 4],
            ifindex,
            len,
            l4_off: 0,
            ip_end: 0,
            frag_id: 0,
            frag_proto: 0,
            sport: 0,
            dport: 0,
            icmp_id: 0,
            frag_off: 0,
            proto: 0,
            l4: L4_OTHER,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            v6: 0,
            frag: FRAG_NONE,
            dir,
        }
    }
}

// Header layouts: only the fields sg reads are named. Multi-byte fields are network order.

#[repr(C)]
#[derive(Clone, Copy)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

/// A VLAN tag after the outer ethertype: TCI, then the inner ethertype.
#[repr(C)]
#[derive(Clone, Copy)]
struct VlanHdr {
    tci: u16,
    proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtcfl: [u8; 4],
    pub payload_len: u16,
    pub next: u8,
    pub hop_limit: u8,
    pub src: Words,
    pub dst: Words,
}

/// The first 8 bytes of any IPv6 extension header (every one is at least 8 bytes long). For
/// the fragment header `b2` is offset/flags and `w` the identification.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExtHdr {
    next: u8,
    len: u8,
    b2: u16,
    w: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
    win: u16,
    csum: u16,
    urg: u16,
}

/// The first 8 bytes of a UDP header, an ICMP/ICMPv6 header, or (inside an ICMP error) of
/// any transport header: ports are `w0`/`w1`, ICMP type/code are the bytes of `w0`, the echo
/// id is `w2`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L4Head {
    pub b0: u8,
    pub b1: u8,
    pub w1: u16,
    pub w2: u16,
    pub w3: u16,
}

/// Parses the frame into `pkt`. `None`: an IP packet, `pkt` filled. `Some(reason)`: the
/// frame's verdict is already known: `PassNonIp` (not IPv4/IPv6 after the VLAN tags: ARP,
/// LLDP, ... N1) or the drop reason of a malformed frame.
///
/// Inlined into the entry point (it used to be a BPF-to-BPF call of its own): the header
/// temporaries cost the entry's frame ~50 bytes of stack, and in exchange the fields the
/// conntrack key is built from can stay in registers, and the call goes. Measured on
/// sg_xdp_in, established TCP flow: ~5 ns of ~52 ns per packet.
#[inline(always)]
pub fn parse<C: Hook>(ctx: &C, pkt: &mut Pkt) -> Option<Reason> {
    parse_inline(ctx, pkt).err()
}

#[inline(always)]
fn parse_inline<C: Hook>(ctx: &C, pkt: &mut Pkt) -> Result<(), Reason> {
    let eth: EthHdr = ctx.load(0).ok_or(Reason::DropBadEth)?;
    let mut ethertype = u16::from_be(eth.proto);
    let mut l3 = ETH_HLEN;
    // Two tags, unrolled (802.1ad outer + 802.1Q inner, or 802.1Q twice).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: VlanHdr = ctx.load(l3).ok_or(Reason::DropBadEth)?;
        ethertype = u16::from_be(tag.proto);
        l3 += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: VlanHdr = ctx.load(l3).ok_or(Reason::DropBadEth)?;
            ethertype = u16::from_be(tag.proto);
            l3 += VLAN_HLEN;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Err(Reason::DropVlanDepth);
            }
        }
    }
    let frame = pkt.len;
    let walked = match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, pkt, l3 as u32, frame).map(|()| false)?,
        ETH_P_IPV6 => parse_v6(ctx, pkt, l3 as u32, frame)?,
        _ => return Err(Reason::PassNonIp),
    };
    if pkt.frag != FRAG_LATER {
        parse_l4(ctx, pkt, walked)?;
    }
    Ok(())
}

/// IPv4: version 4, IHL >= 5, IHL*4 <= total length <= the frame; options skipped by IHL.
#[inline(always)]
fn parse_v4<C: Hook>(ctx: &C, pkt: &mut Pkt, l3: u32, frame: u32) -> Result<(), Reason> {
    let ip: Ipv4Hdr = ctx.load(l3 as usize).ok_or(Reason::DropBadIp)?;
    let ihl = (ip.vihl & 0x0f) as u32 * 4;
    let mut tot_len = u16::from_be(ip.tot_len) as u32;
    if tot_len == 0 && frame - l3 > BIG_GSO {
        // IPv4 BIG TCP: a GSO super-packet over 64 KiB (only TC sees those, never the wire)
        // says 0; its length is the skb's.
        tot_len = frame - l3;
    }
    if ip.vihl >> 4 != 4 || ihl < 20 || tot_len < ihl || tot_len > frame - l3 {
        return Err(Reason::DropBadIp);
    }
    pkt.src = v4_words(ip.src);
    pkt.dst = v4_words(ip.dst);
    pkt.proto = ip.proto;
    pkt.frag_proto = ip.proto;
    pkt.l4_off = l3 + ihl;
    pkt.ip_end = l3 + tot_len;
    let frag = u16::from_be(ip.frag);
    let off = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    pkt.frag_id = u16::from_be(ip.id) as u32;
    pkt.frag_off = off;
    pkt.frag = frag_kind(off, more);
    pkt.l4 = match ip.proto {
        proto::TCP => L4_TCP,
        proto::UDP => L4_UDP,
        proto::ICMP => L4_ICMP,
        _ => L4_OTHER,
    };
    Ok(())
}

/// IPv6: version 6, payload length <= the frame, then at most [`MAX_EXT_HDRS`] extension
/// headers, each inside the datagram. `Ok(true)` when at least one extension header was
/// walked.
///
/// verifier: "BPF program is too large. Processed 1000001 insn" -- the walk reads through
/// `Hook::load_cold` (a helper with a plain offset argument). With direct packet access
/// every offset the walk can reach is precise and each combination of header lengths was
/// verified separately through the rest of the pipeline (195k instructions processed
/// instead of ~60k). The transport header after a walk is read the same way (see
/// `parse_l4`); packets without extension headers keep direct access.
#[inline(always)]
fn parse_v6<C: Hook>(ctx: &C, pkt: &mut Pkt, l3: u32, frame: u32) -> Result<bool, Reason> {
    let ip: Ipv6Hdr = ctx.load(l3 as usize).ok_or(Reason::DropBadIp)?;
    let plen = u16::from_be(ip.payload_len) as u32;
    if ip.vtcfl[0] >> 4 != 6 || 40 + plen > frame - l3 {
        return Err(Reason::DropBadIp);
    }
    pkt.v6 = 1;
    pkt.src = ip.src;
    pkt.dst = ip.dst;
    // IPv4-mapped addresses must not appear on the wire (RFC 4291 2.5.5.2; Linux drops
    // them): they would share the IPv4 key space and could hit an IPv4 flow's state.
    if is_v4_mapped_words(&ip.src) || is_v4_mapped_words(&ip.dst) {
        return Err(Reason::DropBadIp);
    }
    // IPv6 BIG TCP: a GSO super-packet over 64 KiB (TC only) says 0 (with or without a
    // jumbo hop-by-hop option, depending on the kernel); its length is the skb's.
    pkt.ip_end = if plen == 0 && frame - l3 - 40 > BIG_GSO {
        frame
    } else {
        l3 + 40 + plen
    };
    let mut nh = ip.next;
    let mut off = l3 + 40;
    let mut walked = 0;
    // Bounded: at most MAX_EXT_HDRS headers, then the next one must be the transport.
    while walked < MAX_EXT_HDRS {
        if !matches!(nh, NH_HOP | NH_ROUTING | NH_FRAGMENT | NH_DSTOPTS | NH_AH) {
            break;
        }
        walked += 1;
        let h: ExtHdr = ctx.load_cold(off as usize).ok_or(Reason::DropBadExtHdr)?;
        let hlen = match nh {
            NH_FRAGMENT => 8,
            NH_AH => (h.len as u32 + 2) * 4,
            _ => (h.len as u32 + 1) * 8,
        };
        if off + hlen > pkt.ip_end {
            return Err(Reason::DropBadExtHdr);
        }
        if nh == NH_FRAGMENT {
            let fo = u16::from_be(h.b2);
            pkt.frag_id = u32::from_be(h.w);
            pkt.frag_proto = h.next;
            pkt.frag_off = fo >> 3;
            pkt.frag = frag_kind(fo >> 3, fo & 1 != 0);
        }
        nh = h.next;
        off += hlen;
        if pkt.frag == FRAG_LATER {
            // What follows is payload, not headers; `nh` is the datagram's protocol.
            break;
        }
    }
    if pkt.frag != FRAG_LATER
        && matches!(nh, NH_HOP | NH_ROUTING | NH_FRAGMENT | NH_DSTOPTS | NH_AH)
    {
        return Err(Reason::DropBadExtHdr);
    }
    pkt.proto = nh;
    pkt.l4_off = off;
    pkt.l4 = match nh {
        proto::TCP => L4_TCP,
        proto::UDP => L4_UDP,
        proto::ICMPV6 => L4_ICMP,
        _ => L4_OTHER,
    };
    Ok(walked > 0)
}

/// `::ffff:0:0/96` in the in-memory word form of a network-order address.
#[inline(always)]
fn is_v4_mapped_words(a: &Words) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

#[inline(always)]
fn frag_kind(off: u16, more: bool) -> u8 {
    if off != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    }
}

/// The transport header: complete inside the datagram (TCP 20 bytes with data offset >= 5,
/// UDP/ICMP 8). A first fragment too short to hold it is `DropBadFragment` (G1). `cold`:
/// read it through the helper (after an IPv6 extension header walk, see `parse_v6`).
#[inline(always)]
fn parse_l4<C: Hook>(ctx: &C, pkt: &mut Pkt, cold: bool) -> Result<(), Reason> {
    let short = if pkt.frag == FRAG_FIRST {
        Reason::DropBadFragment
    } else {
        Reason::DropBadL4
    };
    let off = pkt.l4_off;
    match pkt.l4 {
        L4_TCP => {
            if off + 20 > pkt.ip_end {
                return Err(short);
            }
            let h: TcpHdr = load_at(ctx, off, cold).ok_or(short)?;
            if h.doff >> 4 < 5 {
                return Err(Reason::DropBadL4);
            }
            pkt.sport = u16::from_be(h.sport);
            pkt.dport = u16::from_be(h.dport);
            pkt.tcp_flags = h.flags;
        }
        L4_UDP | L4_ICMP => {
            if off + 8 > pkt.ip_end {
                return Err(short);
            }
            let h: L4Head = load_at(ctx, off, cold).ok_or(short)?;
            if pkt.l4 == L4_UDP {
                pkt.sport = u16::from_be_bytes([h.b0, h.b1]);
                pkt.dport = u16::from_be(h.w1);
            } else {
                pkt.icmp_type = h.b0;
                pkt.icmp_code = h.b1;
                pkt.icmp_id = u16::from_be(h.w2);
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn load_at<C: Hook, T: Copy>(ctx: &C, off: u32, cold: bool) -> Option<T> {
    if cold {
        ctx.load_cold(off as usize)
    } else {
        ctx.load(off as usize)
    }
}
