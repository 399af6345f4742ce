//! The benchmark's 64-byte frames (Ethernet + IPv4 + UDP or TCP, checksums valid): what the
//! generator sends and what BPF_PROG_TEST_RUN judges. Only the bench's own flows, never a
//! general packet builder (that is `sg_agent::packet`).

use sg_agent::packet::checksum;
use std::net::Ipv4Addr;

/// Every frame is this long: the usual "64-byte frame" without the 4-byte FCS would be 60;
/// we keep 64 bytes of data so the figures compare with tools that count 64 in memory.
pub const FRAME_LEN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

fn ether_ipv4(e: &Ends, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&e.dst_mac);
    f.extend_from_slice(&e.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&e.src.octets());
    ip[16..20].copy_from_slice(&e.dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

fn pseudo(e: &Ends, proto: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&e.src.octets());
    p[4..8].copy_from_slice(&e.dst.octets());
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A 64-byte UDP datagram (22 bytes of payload).
pub fn udp(e: &Ends, sport: u16, dport: u16) -> Vec<u8> {
    let len = FRAME_LEN - 14 - 20;
    let mut f = ether_ipv4(e, 17, len);
    let mut u = vec![0u8; len];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    for (i, b) in u[8..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let c = checksum(&[&pseudo(e, 17, len), &u]);
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    f.extend_from_slice(&u);
    f
}

/// A 64-byte TCP segment (10 bytes of payload) with the given flags.
pub fn tcp(e: &Ends, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let len = FRAME_LEN - 14 - 20;
    let mut f = ether_ipv4(e, 6, len);
    let mut t = vec![0u8; len];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = checksum(&[&pseudo(e, 6, len), &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&t);
    f
}

impl Ends {
    /// The same two hosts seen from the other side.
    pub fn reversed(&self) -> Ends {
        Ends {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src: self.dst,
            dst: self.src,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` -> bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> Ends {
        Ends {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 51, 100, 1),
            dst: Ipv4Addr::new(198, 51, 100, 2),
        }
    }

    #[test]
    fn frames_are_64_bytes_with_valid_checksums() {
        for f in [
            udp(&ends(), 1000, 9000),
            tcp(&ends(), 1000, 5201, tcp_flags::SYN, 1, 0),
        ] {
            assert_eq!(f.len(), FRAME_LEN);
            // A correct checksum sums (with itself) to zero.
            assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum");
            let l4 = &f[34..];
            assert_eq!(checksum(&[&pseudo(&ends(), f[23], l4.len()), l4]), 0);
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, FRAME_LEN - 14);
        }
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:02\n"),
            Some([2, 10, 255, 0, 1, 2])
        );
        assert_eq!(parse_mac("02:0a"), None);
    }
}
