//! End to end, frames whose headers are not in the linear part of their skb: an AF_PACKET
//! sender (packet_snd) puts only the link-layer header of a frame larger than a page into the
//! linear part and the rest into page fragments (a TX_RING sender such as trafgen does so for
//! every frame). At TC the program then finds
//! the IP and transport headers beyond `data_end`: it pulls them into the linear part once
//! and reads on directly, and where that cannot work (a frame shorter than what it reads) it
//! falls back to copying, which fails exactly for a truncated frame (docs/design.md
//! "Pipeline" 1). At XDP the veth converts such a frame into a linear buffer first.
//!
//! Whatever the layout, a frame must be judged like the same bytes in one piece: allowed
//! datagrams reach their socket (E1 plus C1: the later ones of the flow pass from conntrack),
//! datagrams no rule allows are dropped (E1), and malformed IP is dropped and counted under
//! its own reason, never passed. IPv4 and IPv6, with and without extension headers, on both
//! ingress hooks.

use std::net::IpAddr;
use std::time::Duration;

use sg_agent::packet::{Ext, Packet};
use sg_testkit::agent_harness::*;
use sg_testkit::netns::{Netns, wait_until};

const POLICY: &str = r#"
security_groups:
  - id: sg-dns
    ingress:
      - {protocol: udp, ports: 5353, source: [192.0.2.0/24, "2001:db8:10::/64"], description: dns}
instances:
  - {name: web-1, addresses: [192.0.2.11, "2001:db8:10::11"], groups: [sg-dns]}
"#;

const ALLOWED: u16 = 5353;
const DENIED: u16 = 6000;
/// Datagrams of each kind sent per family.
const N: u64 = 20;
/// Payload of every datagram: its frame is larger than a page, so AF_PACKET builds it from
/// page fragments (packet_alloc_skb keeps frames under a page linear).
const PAYLOAD: u16 = 5000;
/// An MTU the frames fit in.
const MTU: &str = "9000";

fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let s = ns
        .run_ok(
            &["cat", &format!("/sys/class/net/{dev}/address")],
            Duration::from_secs(5),
        )
        .expect("read the MAC address");
    sg_bench::frames::parse_mac(s.trim()).expect("a MAC address")
}

/// Sends `frames` out of `dev` in `ns` through an AF_PACKET socket, as they are.
fn send_raw(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) {
    let ifindex = ns.ifindex(dev).expect("ifindex") as i32;
    ns.enter(move || {
        // SAFETY: plain socket calls on a socket this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex;
            sll.sll_halen = 6;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n,
                    f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .expect("enter the sender's namespace");
}

/// (datagrams delivered to a socket, datagrams to a closed port) of one family, from the
/// namespace's own SNMP counters.
fn udp_snmp(ns: &Netns, v6: bool) -> (u64, u64) {
    let (file, names) = if v6 {
        ("/proc/net/snmp6", ["Udp6InDatagrams", "Udp6NoPorts"])
    } else {
        ("/proc/net/snmp", ["InDatagrams", "NoPorts"])
    };
    let text = ns
        .run_ok(&["cat", file], Duration::from_secs(5))
        .expect("read SNMP counters");
    let get = |name: &str| -> u64 {
        if v6 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
                .unwrap_or_else(|| panic!("{name} in {file}"))
        } else {
            let udp: Vec<Vec<&str>> = text
                .lines()
                .filter(|l| l.starts_with("Udp:"))
                .map(|l| l.split_whitespace().collect())
                .collect();
            let i = udp[0].iter().position(|h| *h == name).unwrap();
            udp[1][i].parse().unwrap()
        }
    };
    (get(names[0]), get(names[1]))
}

#[test]
fn headers_outside_the_linear_part_are_judged_like_linear_ones_on_both_hooks() {
    let mut site = Site::new("skbl");
    for ns in [&site.cli, &site.srv] {
        ns.ip(&["link", "set", "eth0", "mtu", MTU]).unwrap();
    }
    site.serve(&["udp:5353"]);
    let policy = site.policy("dns.yaml", POLICY);
    let (cli_mac, srv_mac) = (mac(&site.cli, "eth0"), mac(&site.srv, "eth0"));
    // Frames from cli to srv, as cli's NIC would put them on the wire.
    let addressed = |mut f: Vec<u8>| -> Vec<u8> {
        f[..6].copy_from_slice(&srv_mac);
        f[6..12].copy_from_slice(&cli_mac);
        f
    };
    let frame = |p: Packet| addressed(p.to_frame());
    let families: [(IpAddr, IpAddr); 2] = [
        (CLI.parse().unwrap(), SRV.parse().unwrap()),
        ("2001:db8:10::10".parse().unwrap(), SRV6.parse().unwrap()),
    ];
    for hook in ["tc", "xdp"] {
        // Forced by device name: a hook given for every device applies to new devices only,
        // and eth0 is attached already in the second round.
        let forced = format!("eth0={hook}");
        site.agent_ok(&["apply", "--ingress-hook", &forced, policy.to_str().unwrap()]);
        let status = site.agent_ok(&["status"]);
        assert!(
            status.contains(&format!("ingress {hook}")),
            "eth0 runs {hook}:\n{status}"
        );
        for (src, dst) in families {
            let v6 = src.is_ipv6();
            let what = format!("{hook}, v6 {v6}");
            let c0 = site.counters();
            let (in0, noport0) = udp_snmp(&site.srv, v6);
            let mut frames = Vec::new();
            for i in 0..N {
                // One flow of plain datagrams, and (IPv6) one behind a destination options
                // header, whose transport header is read through the copying fallback.
                let mut p = Packet::udp(src, dst, 40000, ALLOWED).with_payload(PAYLOAD);
                if v6 && i % 2 == 1 {
                    p = Packet::udp(src, dst, 40001, ALLOWED)
                        .with_payload(PAYLOAD)
                        .with_ext(vec![Ext::DestOpts { len8: 0 }]);
                }
                frames.push(frame(p));
                frames.push(frame(
                    Packet::udp(src, dst, 40002, DENIED).with_payload(PAYLOAD),
                ));
            }
            // Malformed: the IP header says more than the frame holds (DropBadIp), and a
            // TCP header cut to 10 bytes (DropBadL4).
            let long = Packet::udp(src, dst, 40003, ALLOWED)
                .with_payload(PAYLOAD)
                .build();
            frames.push(addressed(long.set_ip_len(PAYLOAD + 100).into_bytes()));
            let cut = Packet::syn(src, dst, 40004, 22)
                .build()
                .cut_l4(10)
                .pad(PAYLOAD as usize);
            frames.push(addressed(cut.into_bytes()));
            send_raw(&site.cli, "eth0", frames);

            wait_until(
                &format!("{N} datagrams delivered ({what})"),
                Duration::from_secs(5),
                || udp_snmp(&site.srv, v6).0 - in0 >= N,
            )
            .unwrap_or_else(|e| panic!("E1 allowed datagrams: {e}"));
            // Give anything wrongly passed the time to show up.
            std::thread::sleep(Duration::from_millis(200));
            let (in1, noport1) = udp_snmp(&site.srv, v6);
            assert_eq!(
                in1 - in0,
                N,
                "E1 exactly the allowed datagrams arrive ({what})"
            );
            assert_eq!(
                noport1 - noport0,
                0,
                "E1 nothing reaches the closed port ({what})"
            );
            let c1 = site.counters();
            let d = |r: &str| reason(&c1, r) - reason(&c0, r);
            assert_eq!(
                d("pass_rule_new_flow") + d("pass_ct_original"),
                N,
                "E1/C1 allowed datagrams pass by rule, then from conntrack ({what}): {c1}"
            );
            assert!(d("drop_no_rule") >= N, "E1 denied datagrams ({what}): {c1}");
            assert_eq!(
                d("drop_malformed_ip"),
                1,
                "a datagram longer than its frame ({what})"
            );
            assert_eq!(d("drop_malformed_l4"), 1, "a cut TCP header ({what})");
        }
        site.agent_ok(&["detach"]);
    }
}
