//! Abstract packets and the Ethernet frames built from them.
//!
//! A [`Packet`] says what a test (or `explain`) means: addresses, transport, fragment, VLAN
//! tags, IP options or IPv6 extension headers. [`Packet::to_frame`] turns it into the bytes a
//! NIC would hand to XDP: Ethernet, VLAN tags, IPv4 (options, header checksum) or IPv6
//! (extension headers, fragment header), and TCP/UDP/ICMP/ICMPv6 with correct checksums.
//! [`Frame`] keeps the offsets of each layer so fixtures can break one thing on purpose
//! (truncate, bad IHL, bad lengths, bad extension chains).
//!
//! This module owns bytes only. It must not decide verdicts (that is the model's and the
//! kernel's job) and it shares no parsing code with either: tests parse frames back with
//! their own tiny parser.
//!
//! Fragments: a fragment's frame carries only its slice of the datagram. The first fragment
//! (offset 0) holds the transport header (checksummed over that slice only: the firewall never
//! verifies transport checksums, and reassembly is not ours); a later fragment holds
//! `payload_len` bytes of data and no transport header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag bits (the low byte of the TCP flags field).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// ICMP and ICMPv6 type numbers the firewall cares about.
pub mod icmp {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACH: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAM_PROBLEM: u8 = 12;
    /// Code of "fragmentation needed" under type 3 (path MTU discovery).
    pub const V4_FRAG_NEEDED: u8 = 4;
    pub const V6_DEST_UNREACH: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAM_PROBLEM: u8 = 4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    pub const V6_ROUTER_SOLICIT: u8 = 133;
    pub const V6_NEIGHBOR_SOLICIT: u8 = 135;
    pub const V6_REDIRECT: u8 = 137;
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// IPv6 extension header numbers.
pub mod ext_hdr {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
    pub const NO_NEXT: u8 = 59;
}

/// Fragment information (IPv4 flags/offset, or an IPv6 fragment header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag {
    /// IPv4: the 16-bit identification (upper bits ignored). IPv6: the 32-bit identification.
    pub id: u32,
    /// Offset of this fragment's data in the datagram, in bytes (a multiple of 8).
    pub offset_bytes: u16,
    /// More fragments follow.
    pub more: bool,
}

impl Frag {
    /// A first fragment: offset 0, more fragments follow.
    pub fn first(id: u32) -> Frag {
        Frag {
            id,
            offset_bytes: 0,
            more: true,
        }
    }
    pub fn later(id: u32, offset_bytes: u16, more: bool) -> Frag {
        Frag {
            id,
            offset_bytes,
            more,
        }
    }
    /// True for offset > 0: the frame holds no transport header.
    pub fn is_later(&self) -> bool {
        self.offset_bytes > 0
    }
}

/// An IPv4 option or an IPv6 extension header (written in the order given, before any
/// fragment header).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ext {
    /// IPv4 option bytes, copied verbatim; the header is padded with EOL to a 4-byte multiple.
    V4Option(Vec<u8>),
    /// IPv6 hop-by-hop options: `len8` 8-octet units after the first 8 (PadN filled).
    HopByHop { len8: u8 },
    /// IPv6 destination options, same layout as hop-by-hop.
    DestOpts { len8: u8 },
    /// IPv6 routing header (type 253, experimental; segments left 0).
    Routing { len8: u8 },
    /// IPv6 authentication header: `len4` is the AH payload length field (4-octet units,
    /// minus 2); the header is (len4 + 2) * 4 bytes.
    Ah { len4: u8 },
}

impl Ext {
    /// A router-alert IPv4 option (4 bytes): common, harmless, and makes IHL 6.
    pub fn v4_router_alert() -> Ext {
        Ext::V4Option(vec![0x94, 0x04, 0x00, 0x00])
    }
    fn v6_number(&self) -> u8 {
        match self {
            Ext::V4Option(_) => panic!("an IPv4 option in an IPv6 packet"),
            Ext::HopByHop { .. } => ext_hdr::HOP_BY_HOP,
            Ext::DestOpts { .. } => ext_hdr::DEST_OPTS,
            Ext::Routing { .. } => ext_hdr::ROUTING,
            Ext::Ah { .. } => ext_hdr::AH,
        }
    }
}

/// The transport part of a packet. ICMP vs ICMPv6 follows the address family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Echo request (ping, I3) or reply: ICMP 8/0, ICMPv6 128/129.
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// Any other ICMP/ICMPv6 message without an embedded packet (e.g. ND, timestamp).
    IcmpOther {
        ty: u8,
        code: u8,
    },
    /// An ICMP error carrying the start of the packet that caused it (I2).
    IcmpError {
        ty: u8,
        code: u8,
        inner: Box<Packet>,
    },
    /// Any other IP protocol (no ports). Use the named variants for 1, 6, 17 and 58.
    Other {
        proto: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub frag: Option<Frag>,
    /// VLAN ids, outermost first. With two or more tags the outer one is 802.1ad (0x88a8).
    pub vlan: Vec<u16>,
    /// IPv4 options or IPv6 extension headers.
    pub ext: Vec<Ext>,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// Bytes after the transport header (for a later fragment: the fragment's data).
    pub payload_len: u16,
    /// IPv4 identification when the packet is not a fragment.
    pub ip_id: u16,
}

impl Packet {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Packet {
        Packet {
            src,
            dst,
            l4,
            frag: None,
            vlan: Vec::new(),
            ext: Vec::new(),
            ttl: 64,
            payload_len: 0,
            ip_id: 0x1234,
        }
    }
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Packet {
        Packet::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }
    /// A TCP SYN: the packet that opens a connection.
    pub fn syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Packet {
        Packet::tcp(src, dst, sport, dport, tcp_flags::SYN)
    }
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Packet {
        Packet::new(src, dst, L4::Udp { sport, dport })
    }
    pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Packet {
        Packet::new(
            src,
            dst,
            L4::IcmpEcho {
                request: true,
                id,
                seq,
            },
        )
    }
    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8) -> Packet {
        Packet::new(src, dst, L4::IcmpOther { ty, code })
    }
    pub fn icmp_error(src: IpAddr, dst: IpAddr, ty: u8, code: u8, inner: Packet) -> Packet {
        Packet::new(
            src,
            dst,
            L4::IcmpError {
                ty,
                code,
                inner: Box::new(inner),
            },
        )
    }
    pub fn other(src: IpAddr, dst: IpAddr, proto: u8) -> Packet {
        Packet::new(src, dst, L4::Other { proto })
    }

    pub fn with_vlan(mut self, vlan: &[u16]) -> Packet {
        self.vlan = vlan.to_vec();
        self
    }
    pub fn with_frag(mut self, frag: Frag) -> Packet {
        self.frag = Some(frag);
        self
    }
    pub fn with_ext(mut self, ext: Vec<Ext>) -> Packet {
        self.ext = ext;
        self
    }
    pub fn with_payload(mut self, len: u16) -> Packet {
        self.payload_len = len;
        self
    }
    pub fn with_ttl(mut self, ttl: u8) -> Packet {
        self.ttl = ttl;
        self
    }

    pub fn is_v6(&self) -> bool {
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => panic!(
                "packet mixes address families: {} -> {}",
                self.src, self.dst
            ),
        }
    }

    /// The IP protocol number (ICMP is 1 on IPv4 and 58 on IPv6).
    pub fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } | L4::IcmpOther { .. } | L4::IcmpError { .. } => {
                if self.is_v6() {
                    58
                } else {
                    1
                }
            }
            L4::Other { proto } => *proto,
        }
    }

    /// True when the frame holds no transport header (a fragment with offset > 0).
    pub fn is_later_fragment(&self) -> bool {
        self.frag.is_some_and(|f| f.is_later())
    }

    /// (ICMP type, code) of an ICMP/ICMPv6 packet.
    pub fn icmp_type_code(&self) -> Option<(u8, u8)> {
        let v6 = self.is_v6();
        match &self.l4 {
            L4::IcmpEcho { request, .. } => Some(match (v6, request) {
                (false, true) => (icmp::V4_ECHO_REQUEST, 0),
                (false, false) => (icmp::V4_ECHO_REPLY, 0),
                (true, true) => (icmp::V6_ECHO_REQUEST, 0),
                (true, false) => (icmp::V6_ECHO_REPLY, 0),
            }),
            L4::IcmpOther { ty, code } | L4::IcmpError { ty, code, .. } => Some((*ty, *code)),
            _ => None,
        }
    }

    /// The packet the other end would send back: addresses and ports swapped, an echo request
    /// answered by a reply, a SYN by a SYN-ACK. Fragmentation, options and extension headers are
    /// not carried over.
    pub fn reply(&self) -> Packet {
        let l4 = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let f = if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
                    tcp_flags::SYN | tcp_flags::ACK
                } else {
                    tcp_flags::ACK | (flags & (tcp_flags::FIN | tcp_flags::RST))
                };
                L4::Tcp {
                    sport: *dport,
                    dport: *sport,
                    flags: f,
                }
            }
            L4::Udp { sport, dport } => L4::Udp {
                sport: *dport,
                dport: *sport,
            },
            L4::IcmpEcho { request, id, seq } => L4::IcmpEcho {
                request: !request,
                id: *id,
                seq: *seq,
            },
            other => other.clone(),
        };
        Packet {
            src: self.dst,
            dst: self.src,
            l4,
            frag: None,
            vlan: self.vlan.clone(),
            ext: Vec::new(),
            ttl: 64,
            payload_len: self.payload_len,
            ip_id: self.ip_id.wrapping_add(1),
        }
    }

    /// The ICMP error `from` (a router, or the destination) sends back to this packet's source
    /// about it: e.g. `(3, 4)` fragmentation needed, `(2, 0)` packet too big (ICMPv6).
    pub fn error_reply(&self, from: IpAddr, ty: u8, code: u8) -> Packet {
        let mut inner = self.clone();
        inner.vlan.clear();
        let mut e = Packet::icmp_error(from, self.src, ty, code, inner);
        e.vlan = self.vlan.clone();
        e
    }

    /// The Ethernet frame of this packet.
    pub fn to_frame(&self) -> Vec<u8> {
        self.build().bytes
    }

    /// The frame and the offsets of its layers (for fixtures that break one of them).
    pub fn build(&self) -> Frame {
        let v6 = self.is_v6();
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        for (i, vid) in self.vlan.iter().enumerate() {
            let tpid = if self.vlan.len() >= 2 && i == 0 {
                TPID_8021AD
            } else {
                TPID_8021Q
            };
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        bytes.extend_from_slice(&if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }.to_be_bytes());
        let l3 = bytes.len();
        let ip = self.ip_bytes();
        bytes.extend_from_slice(&ip.bytes);
        Frame {
            bytes,
            l3,
            l4: l3 + ip.l4,
            exts: ip.exts.iter().map(|o| l3 + o).collect(),
            v6,
        }
    }

    /// The IP datagram (no Ethernet): bytes, offset of the transport header, offsets of the
    /// IPv6 extension headers.
    fn ip_bytes(&self) -> IpBytes {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d, l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d, l4),
            _ => panic!(
                "packet mixes address families: {} -> {}",
                self.src, self.dst
            ),
        }
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr, l4: Vec<u8>) -> IpBytes {
        let mut opts = Vec::new();
        for e in &self.ext {
            match e {
                Ext::V4Option(o) => opts.extend_from_slice(o),
                other => panic!("IPv6 extension header {other:?} in an IPv4 packet"),
            }
        }
        while opts.len() % 4 != 0 {
            opts.push(0); // EOL
        }
        let hlen = 20 + opts.len();
        assert!(hlen <= 60, "IPv4 options longer than 40 bytes");
        let total = hlen + l4.len();
        let (id, frag_field) = match self.frag {
            Some(f) => {
                assert!(
                    f.offset_bytes % 8 == 0,
                    "fragment offset not a multiple of 8"
                );
                let mf = if f.more { 0x2000 } else { 0 };
                (f.id as u16, mf | (f.offset_bytes / 8))
            }
            None => (self.ip_id, 0),
        };
        let mut h = Vec::with_capacity(total);
        h.push(0x40 | (hlen / 4) as u8);
        h.push(0);
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag_field.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(&opts);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        IpBytes {
            bytes: h,
            l4: hlen,
            exts: Vec::new(),
        }
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, l4: Vec<u8>) -> IpBytes {
        // The chain: listed extension headers, then the fragment header, then the transport.
        let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
        for e in &self.ext {
            let body = match e {
                Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
                    // 8 * (len8 + 1) bytes: next, len, then one PadN option filling the rest.
                    let n = 8 * (*len8 as usize + 1);
                    let mut b = vec![0u8; n];
                    b[1] = *len8;
                    b[2] = 1; // PadN
                    b[3] = (n - 4) as u8;
                    b
                }
                Ext::Routing { len8 } => {
                    let n = 8 * (*len8 as usize + 1);
                    let mut b = vec![0u8; n];
                    b[1] = *len8;
                    b[2] = 253; // routing type: experimental
                    b[3] = 0; // segments left: nothing to process
                    b
                }
                Ext::Ah { len4 } => {
                    let n = 4 * (*len4 as usize + 2);
                    let mut b = vec![0u8; n];
                    b[1] = *len4;
                    b[4..8].copy_from_slice(&0x100u32.to_be_bytes()); // SPI
                    b
                }
                Ext::V4Option(_) => panic!("an IPv4 option in an IPv6 packet"),
            };
            chain.push((e.v6_number(), body));
        }
        if let Some(f) = self.frag {
            assert!(
                f.offset_bytes % 8 == 0,
                "fragment offset not a multiple of 8"
            );
            let mut b = vec![0u8; 8];
            let off = f.offset_bytes | u16::from(f.more);
            b[2..4].copy_from_slice(&off.to_be_bytes());
            b[4..8].copy_from_slice(&f.id.to_be_bytes());
            chain.push((ext_hdr::FRAGMENT, b));
        }
        let first_next = chain.first().map_or(self.proto(), |(n, _)| *n);
        let mut exts_len = 0;
        for i in 0..chain.len() {
            let next = chain.get(i + 1).map_or(self.proto(), |(n, _)| *n);
            chain[i].1[0] = next;
            exts_len += chain[i].1.len();
        }
        let payload = exts_len + l4.len();
        let mut h = Vec::with_capacity(40 + payload);
        h.extend_from_slice(&[0x60, 0, 0, 0]);
        h.extend_from_slice(&(payload as u16).to_be_bytes());
        h.push(first_next);
        h.push(self.ttl);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let mut exts = Vec::new();
        for (_, b) in &chain {
            exts.push(h.len());
            h.extend_from_slice(b);
        }
        let l4_off = h.len();
        h.extend_from_slice(&l4);
        IpBytes {
            bytes: h,
            l4: l4_off,
            exts,
        }
    }

    /// The transport header and payload, checksummed (or, for a later fragment, just data).
    fn l4_bytes(&self) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload_len).map(|i| (i % 251) as u8).collect();
        if self.is_later_fragment() {
            return payload;
        }
        let v6 = self.is_v6();
        let proto = self.proto();
        let mut b = Vec::new();
        // Offset of the checksum field inside `b`, and whether it covers a pseudo header.
        let csum: Option<(usize, bool)> = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1000u32.to_be_bytes()); // seq
                let ack: u32 = if flags & tcp_flags::ACK != 0 { 1 } else { 0 };
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(5 << 4); // data offset 5 words
                b.push(*flags);
                b.extend_from_slice(&65535u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                b.extend_from_slice(&payload);
                Some((16, true))
            }
            L4::Udp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&payload);
                Some((6, true))
            }
            L4::IcmpEcho { id, seq, .. } => {
                let (ty, code) = self.icmp_type_code().unwrap();
                b.extend_from_slice(&[ty, code, 0, 0]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&payload);
                Some((2, v6))
            }
            L4::IcmpOther { ty, code } => {
                b.extend_from_slice(&[*ty, *code, 0, 0, 0, 0, 0, 0]);
                b.extend_from_slice(&payload);
                Some((2, v6))
            }
            L4::IcmpError { ty, code, inner } => {
                b.extend_from_slice(&[*ty, *code, 0, 0]);
                // Rest of header: the MTU for "fragmentation needed" / "packet too big".
                let rest: u32 = match (v6, *ty, *code) {
                    (false, icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED) => 1280,
                    (true, icmp::V6_PACKET_TOO_BIG, _) => 1280,
                    _ => 0,
                };
                b.extend_from_slice(&rest.to_be_bytes());
                b.extend_from_slice(&inner.quoted());
                Some((2, v6))
            }
            L4::Other { .. } => {
                b.extend_from_slice(&payload);
                None
            }
        };
        if let Some((off, pseudo)) = csum {
            let c = if pseudo {
                let ph = pseudo_header(self.src, self.dst, proto, b.len());
                checksum(&[&ph, &b])
            } else {
                checksum(&[&b])
            };
            // UDP: a computed 0 is sent as 0xffff (0 means "no checksum").
            let c = if proto == 17 && c == 0 { 0xffff } else { c };
            b[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// Bytes after the IP header (and extension headers): the transport header and payload,
    /// or a later fragment's data.
    pub fn transport_len(&self) -> usize {
        self.l4_bytes().len()
    }

    /// What an ICMP error quotes of this packet: its IP header (options and extension headers
    /// included) and the first 8 bytes after it (RFC 792; enough for ports and echo ids). The
    /// quoted total/payload length still describes the whole original packet, as real routers
    /// send it.
    pub fn quoted(&self) -> Vec<u8> {
        let ip = self.ip_bytes();
        let end = (ip.l4 + 8).min(ip.bytes.len());
        ip.bytes[..end].to_vec()
    }
}

struct IpBytes {
    bytes: Vec<u8>,
    l4: usize,
    exts: Vec<usize>,
}

/// The IPv4 or IPv6 pseudo header of a transport checksum.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.push(0);
            p.push(proto);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!("mixed families"),
    }
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each but the last
/// must have an even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A built frame and where its layers start, so fixtures can corrupt one on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header (or a later fragment's data).
    pub l4: usize,
    /// Offsets of the IPv6 extension headers (fragment header included).
    pub exts: Vec<usize>,
    pub v6: bool,
}

impl Frame {
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Cuts the frame to `len` bytes, leaving the IP length fields as they were (so they now
    /// claim more than the frame holds).
    pub fn truncate(mut self, len: usize) -> Frame {
        self.bytes.truncate(len);
        self
    }

    /// Keeps only `keep` bytes of the transport header/payload and fixes the IP length fields
    /// (and the IPv4 header checksum), so only the transport layer is short.
    pub fn cut_l4(mut self, keep: usize) -> Frame {
        self.bytes.truncate(self.l4 + keep);
        let ip_len = self.bytes.len() - self.l3;
        if self.v6 {
            self.set_u16(self.l3 + 4, (ip_len - 40) as u16);
        } else {
            self.set_u16(self.l3 + 2, ip_len as u16);
            self.fix_ipv4_checksum();
        }
        self
    }

    /// Appends bytes after the IP datagram (like Ethernet minimum-size padding).
    pub fn pad(mut self, n: usize) -> Frame {
        self.bytes.extend(std::iter::repeat_n(0u8, n));
        self
    }

    /// Sets the IPv4 IHL field (and fixes the header checksum over the new length, as far as
    /// the frame holds it).
    pub fn set_ipv4_ihl(mut self, ihl: u8) -> Frame {
        assert!(!self.v6);
        self.bytes[self.l3] = (self.bytes[self.l3] & 0xf0) | (ihl & 0x0f);
        self.fix_ipv4_checksum();
        self
    }

    /// Sets the IPv4 total length (checksum fixed) or the IPv6 payload length.
    pub fn set_ip_len(mut self, len: u16) -> Frame {
        if self.v6 {
            self.set_u16(self.l3 + 4, len);
        } else {
            self.set_u16(self.l3 + 2, len);
            self.fix_ipv4_checksum();
        }
        self
    }

    /// Overwrites the IP version nibble.
    pub fn set_ip_version(mut self, version: u8) -> Frame {
        self.bytes[self.l3] = (version << 4) | (self.bytes[self.l3] & 0x0f);
        if !self.v6 {
            self.fix_ipv4_checksum();
        }
        self
    }

    /// Overwrites the TCP data offset (in 32-bit words).
    pub fn set_tcp_data_offset(mut self, words: u8) -> Frame {
        let off = self.l4 + 12;
        self.bytes[off] = (words << 4) | (self.bytes[off] & 0x0f);
        self
    }

    /// Overwrites the length byte of the `i`th IPv6 extension header.
    pub fn set_ext_len(mut self, i: usize, len: u8) -> Frame {
        let off = self.exts[i] + 1;
        self.bytes[off] = len;
        self
    }

    /// Overwrites one byte anywhere.
    pub fn set_byte(mut self, off: usize, v: u8) -> Frame {
        self.bytes[off] = v;
        self
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn fix_ipv4_checksum(&mut self) {
        let ihl = usize::from(self.bytes[self.l3] & 0x0f) * 4;
        let end = (self.l3 + ihl.max(20)).min(self.bytes.len());
        if end < self.l3 + 12 {
            return;
        }
        self.set_u16(self.l3 + 10, 0);
        let c = checksum(&[&self.bytes[self.l3..end]]);
        self.set_u16(self.l3 + 10, c);
    }
}

/// An Ethernet frame of any ethertype (after `vlan` tags) with `payload` after it.
pub fn raw_eth(vlan: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, vid) in vlan {
        b.extend_from_slice(&tpid.to_be_bytes());
        b.extend_from_slice(&vid.to_be_bytes());
    }
    b.extend_from_slice(&ethertype.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An ARP request "who has `target`, tell `sender`" (N1).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    raw_eth(&[], ETHERTYPE_ARP, &p)
}

#[cfg(test)]
mod tests {
    //! Frames are parsed back with a deliberately separate, naive parser, and checksums are
    //! verified the receiver's way (the sum over the covered bytes, checksum included, folds
    //! to 0xffff) rather than recomputed with [`checksum`].
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One's-complement sum of 16-bit words, the receiver's check: 0xffff when valid.
    fn ones_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = data[i] as u32;
            let lo = if i + 1 < data.len() {
                data[i + 1] as u32
            } else {
                0
            };
            s += (hi << 8) | lo;
            s = (s & 0xffff) + (s >> 16);
            i += 2;
        }
        s as u16
    }

    #[derive(Debug, PartialEq)]
    struct Parsed {
        tags: Vec<(u16, u16)>,
        ethertype: u16,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        /// IPv4 (id, MF, offset bytes) or IPv6 fragment header.
        frag: Option<(u32, bool, u16)>,
        exts: Vec<u8>,
        l4: Vec<u8>,
        l4_ok: bool,
    }

    /// Parses a frame the builders made, checking its lengths and checksums on the way.
    fn parse(f: &[u8]) -> Parsed {
        let mut off = 12;
        let mut tags = Vec::new();
        let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
        while et == 0x8100 || et == 0x88a8 {
            tags.push((et, u16::from_be_bytes([f[off + 2], f[off + 3]])));
            off += 4;
            et = u16::from_be_bytes([f[off], f[off + 1]]);
        }
        off += 2;
        let ip = &f[off..];
        match et {
            0x0800 => parse_v4(ip, tags),
            0x86dd => parse_v6(ip, tags),
            _ => panic!("not IP"),
        }
    }

    fn parse_v4(ip: &[u8], tags: Vec<(u16, u16)>) -> Parsed {
        let ihl = (ip[0] & 15) as usize * 4;
        assert_eq!(ip[0] >> 4, 4);
        assert_eq!(ones_sum(&ip[..ihl]), 0xffff, "IPv4 header checksum");
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(total, ip.len(), "IPv4 total length");
        let fo = u16::from_be_bytes([ip[6], ip[7]]);
        let frag = (fo & 0x3fff != 0).then(|| {
            (
                u16::from_be_bytes([ip[4], ip[5]]) as u32,
                fo & 0x2000 != 0,
                (fo & 0x1fff) * 8,
            )
        });
        let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
        let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
        let l4 = ip[ihl..].to_vec();
        let proto = ip[9];
        let l4_ok = l4_checksum_ok(src, dst, proto, &l4, frag.is_some_and(|f| f.2 > 0));
        Parsed {
            tags,
            ethertype: 0x0800,
            src,
            dst,
            proto,
            frag,
            exts: vec![],
            l4,
            l4_ok,
        }
    }

    fn parse_v6(ip: &[u8], tags: Vec<(u16, u16)>) -> Parsed {
        assert_eq!(ip[0] >> 4, 6);
        let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        assert_eq!(plen + 40, ip.len(), "IPv6 payload length");
        let mut s = [0u8; 16];
        s.copy_from_slice(&ip[8..24]);
        let mut d = [0u8; 16];
        d.copy_from_slice(&ip[24..40]);
        let (src, dst) = (IpAddr::from(s), IpAddr::from(d));
        let mut next = ip[6];
        let mut o = 40;
        let mut exts = vec![];
        let mut frag = None;
        while matches!(next, 0 | 43 | 44 | 51 | 60) {
            exts.push(next);
            let len = match next {
                44 => {
                    let fo = u16::from_be_bytes([ip[o + 2], ip[o + 3]]);
                    let id = u32::from_be_bytes([ip[o + 4], ip[o + 5], ip[o + 6], ip[o + 7]]);
                    frag = Some((id, fo & 1 != 0, fo & 0xfff8));
                    8
                }
                51 => (ip[o + 1] as usize + 2) * 4,
                _ => (ip[o + 1] as usize + 1) * 8,
            };
            next = ip[o];
            o += len;
        }
        let l4 = ip[o..].to_vec();
        let l4_ok = l4_checksum_ok(src, dst, next, &l4, frag.is_some_and(|f| f.2 > 0));
        Parsed {
            tags,
            ethertype: 0x86dd,
            src,
            dst,
            proto: next,
            frag,
            exts,
            l4,
            l4_ok,
        }
    }

    fn l4_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], later_frag: bool) -> bool {
        if later_frag {
            return true;
        }
        let mut covered = Vec::new();
        let pseudo = proto == 6 || proto == 17 || proto == 58;
        if pseudo {
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    covered.extend_from_slice(&s.octets());
                    covered.extend_from_slice(&d.octets());
                    covered.extend_from_slice(&[0, proto]);
                    covered.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    covered.extend_from_slice(&s.octets());
                    covered.extend_from_slice(&d.octets());
                    covered.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                    covered.extend_from_slice(&[0, 0, 0, proto]);
                }
                _ => unreachable!(),
            }
        } else if proto != 1 {
            return true; // no checksum to check
        }
        covered.extend_from_slice(l4);
        ones_sum(&covered) == 0xffff
    }

    fn all_l4(src: IpAddr, dst: IpAddr) -> Vec<Packet> {
        let inner = Packet::udp(dst, src, 5353, 53);
        vec![
            Packet::syn(src, dst, 40000, 443),
            Packet::tcp(src, dst, 40000, 443, tcp_flags::ACK).with_payload(33),
            Packet::udp(src, dst, 5000, 53).with_payload(7),
            Packet::echo_request(src, dst, 77, 1).with_payload(56),
            Packet::icmp(src, dst, 13, 0),
            Packet::icmp_error(src, dst, 3, 4, inner.clone()),
            Packet::other(src, dst, 47).with_payload(12),
        ]
    }

    #[test]
    fn ipv4_frames_parse_back_with_valid_checksums() {
        let (a, b) = (v4("192.0.2.1"), v4("198.51.100.7"));
        for p in all_l4(a, b) {
            let f = p.to_frame();
            let q = parse(&f);
            assert_eq!((q.src, q.dst, q.proto), (a, b, p.proto()), "{p:?}");
            assert!(q.l4_ok, "transport checksum of {p:?}");
            assert_eq!(q.ethertype, 0x0800);
        }
        let p = Packet::syn(a, b, 1, 22);
        let q = parse(&p.to_frame());
        assert_eq!(&q.l4[..4], &[0, 1, 0, 22]);
        assert_eq!(q.l4[13], tcp_flags::SYN);
    }

    #[test]
    fn ipv6_frames_parse_back_with_valid_checksums() {
        let (a, b) = (v4("2001:db8::1"), v4("2001:db8:1::2"));
        for p in all_l4(a, b) {
            let q = parse(&p.to_frame());
            assert_eq!((q.src, q.dst, q.proto), (a, b, p.proto()), "{p:?}");
            assert!(q.l4_ok, "transport checksum of {p:?}");
        }
        let q = parse(&Packet::echo_request(a, b, 9, 1).to_frame());
        assert_eq!(q.l4[0], 128);
    }

    #[test]
    fn ipv4_options_extend_the_header() {
        let p = Packet::udp(v4("192.0.2.1"), v4("192.0.2.2"), 1, 2)
            .with_ext(vec![Ext::v4_router_alert(), Ext::V4Option(vec![1])]);
        let f = p.build();
        assert_eq!(f.bytes[f.l3] & 15, 7, "20 + 4 + 1 (padded to 4) bytes");
        let q = parse(&f.bytes);
        assert!(q.l4_ok);
        assert_eq!(&q.l4[..4], &[0, 1, 0, 2]);
    }

    #[test]
    fn ipv6_extension_headers_and_fragment_header_chain_to_the_transport() {
        let p = Packet::tcp(
            v4("2001:db8::1"),
            v4("2001:db8::2"),
            1000,
            22,
            tcp_flags::SYN,
        )
        .with_ext(vec![
            Ext::HopByHop { len8: 0 },
            Ext::DestOpts { len8: 1 },
            Ext::Routing { len8: 0 },
            Ext::Ah { len4: 4 },
        ])
        .with_frag(Frag::first(0xdeadbeef));
        let f = p.build();
        let q = parse(&f.bytes);
        assert_eq!(q.exts, vec![0, 60, 43, 51, 44]);
        assert_eq!(q.frag, Some((0xdeadbeef, true, 0)));
        assert_eq!(q.proto, 6);
        assert!(q.l4_ok);
        assert_eq!(f.exts.len(), 5);
        assert_eq!(f.l4, f.exts[4] + 8);
    }

    #[test]
    fn later_fragments_carry_data_only() {
        let p = Packet::udp(v4("192.0.2.1"), v4("192.0.2.2"), 1, 2)
            .with_frag(Frag::later(0x4242, 1480, false))
            .with_payload(100);
        let q = parse(&p.to_frame());
        assert_eq!(q.frag, Some((0x4242, false, 1480)));
        assert_eq!(q.l4.len(), 100);
        let p6 = Packet::udp(v4("2001:db8::1"), v4("2001:db8::2"), 1, 2)
            .with_frag(Frag::later(7, 8, true))
            .with_payload(16);
        let q6 = parse(&p6.to_frame());
        assert_eq!(q6.frag, Some((7, true, 8)));
        assert_eq!(q6.l4.len(), 16);
    }

    #[test]
    fn vlan_tags_outer_is_8021ad_when_stacked() {
        let p = Packet::udp(v4("192.0.2.1"), v4("192.0.2.2"), 1, 2);
        assert_eq!(
            parse(&p.clone().with_vlan(&[5]).to_frame()).tags,
            vec![(0x8100, 5)]
        );
        assert_eq!(
            parse(&p.clone().with_vlan(&[5, 6, 7]).to_frame()).tags,
            vec![(0x88a8, 5), (0x8100, 6), (0x8100, 7)]
        );
    }

    #[test]
    fn icmp_errors_quote_the_inner_header_and_eight_bytes() {
        let (a, b, r) = (v4("192.0.2.1"), v4("198.51.100.7"), v4("203.0.113.1"));
        let orig = Packet::syn(a, b, 40000, 443).with_payload(1400);
        let err = orig.error_reply(r, icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED);
        let q = parse(&err.to_frame());
        assert_eq!((q.src, q.dst), (r, a));
        assert!(q.l4_ok);
        assert_eq!(q.l4.len(), 8 + 20 + 8);
        let inner = &q.l4[8..];
        assert_eq!(
            &inner[12..16],
            &[192, 0, 2, 1],
            "inner source is the original sender"
        );
        assert_eq!(
            &inner[20..24],
            &[0x9c, 0x40, 0x01, 0xbb],
            "inner ports 40000 -> 443"
        );
        assert_eq!(u16::from_be_bytes([inner[2], inner[3]]), 20 + 20 + 1400);
        assert_eq!(u16::from_be_bytes([q.l4[6], q.l4[7]]), 1280, "next-hop MTU");

        let (a6, b6) = (v4("2001:db8::1"), v4("2001:db8::2"));
        let e6 = Packet::udp(a6, b6, 1, 2).error_reply(b6, icmp::V6_PACKET_TOO_BIG, 0);
        let q6 = parse(&e6.to_frame());
        assert!(q6.l4_ok);
        assert_eq!(q6.l4.len(), 8 + 40 + 8);
        assert_eq!(q6.l4[8 + 6], 17, "inner next header");
    }

    #[test]
    fn reply_swaps_endpoints_and_answers_syn_and_echo() {
        let (a, b) = (v4("192.0.2.1"), v4("192.0.2.2"));
        let r = Packet::syn(a, b, 1000, 22).reply();
        assert_eq!((r.src, r.dst), (b, a));
        assert_eq!(
            r.l4,
            L4::Tcp {
                sport: 22,
                dport: 1000,
                flags: tcp_flags::SYN | tcp_flags::ACK
            }
        );
        let e = Packet::echo_request(a, b, 5, 6).reply();
        assert_eq!(
            e.l4,
            L4::IcmpEcho {
                request: false,
                id: 5,
                seq: 6
            }
        );
        assert_eq!(e.reply().l4, Packet::echo_request(a, b, 5, 6).l4);
    }

    #[test]
    fn malformers_touch_only_what_they_say() {
        let p = Packet::tcp(v4("192.0.2.1"), v4("192.0.2.2"), 1, 2, tcp_flags::ACK);
        let f = p.build().cut_l4(10);
        assert_eq!(f.bytes.len(), 14 + 20 + 10);
        assert_eq!(u16::from_be_bytes([f.bytes[16], f.bytes[17]]), 30);
        assert_eq!(
            ones_sum(&f.bytes[14..34]),
            0xffff,
            "IPv4 checksum still valid"
        );
        let g = p.build().set_ipv4_ihl(4);
        assert_eq!(g.bytes[14], 0x44);
        let h = p.build().set_tcp_data_offset(4);
        assert_eq!(h.bytes[14 + 20 + 12] >> 4, 4);
        let t = p.build().truncate(20);
        assert_eq!(t.bytes.len(), 20);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum (with carries) to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        // Odd length: the last byte is padded with a zero byte.
        assert_eq!(checksum(&[&[0x01, 0x02, 0x03]]), !0x0402);
    }
}
