//! Compile time and image size for synthetic policies of 10 to 100,000 rules over 16 groups
//! with many distinct CIDRs (both families, nested at random) and port ranges.
//!
//! `cargo bench -p sg-agent --bench compile` (release). Prints one line per size: best wall
//! time of a few runs, and the number of peer entries, port pages and peer classes.
//! Addresses are synthetic (10.0.0.0/8, 2001:db8::/32): nothing here touches a network.

use sg_bench::workload::{self, GROUPS, PREFIX_LISTS};
use sg_testkit::random::fuzz::Rng;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_agent::compile::{CompileOptions, compile};
use sg_agent::image::SlotTable;
use sg_agent::policy::{
    Direction, GroupId, IcmpMatch, Interface, Origin, Peer, Policy, PortRange, Protocol, Rule,
    RuleId, Timeouts,
};

const INTERFACES: usize = 16;

fn v4_net(rng: &mut Rng) -> IpNet {
    let a = Ipv4Addr::from(0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff));
    let len = 16 + rng.below(17) as u8;
    IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc())
}

fn v6_net(rng: &mut Rng) -> IpNet {
    let low = u128::from(rng.next_u64()) << 32 | u128::from(rng.next_u64() as u32);
    let a = Ipv6Addr::from(0x2001_0db8u128 << 96 | low);
    let len = 48 + rng.below(81) as u8;
    IpNet::V6(Ipv6Net::new(a, len).unwrap().trunc())
}

fn protocol(rng: &mut Rng) -> Protocol {
    let port = |rng: &mut Rng| rng.below(65536) as u16;
    match rng.below(100) {
        0..55 => {
            let p = port(rng);
            Protocol::Tcp(PortRange { from: p, to: p })
        }
        55..70 => {
            let from = port(rng);
            let to = from.saturating_add(rng.below(2000) as u16);
            Protocol::Tcp(PortRange { from, to })
        }
        70..80 => {
            let from = port(rng);
            let to = from.saturating_add(rng.below(100) as u16);
            Protocol::Udp(PortRange { from, to })
        }
        80..90 => match rng.below(3) {
            0 => Protocol::Icmp(IcmpMatch::TypeCode(
                rng.below(256) as u8,
                rng.below(16) as u8,
            )),
            1 => Protocol::Icmpv6(IcmpMatch::Type(rng.below(256) as u8)),
            _ => Protocol::Icmp(IcmpMatch::All),
        },
        90..95 => Protocol::All,
        _ => Protocol::Number([47, 50, 51, 132][rng.below(4)]),
    }
}

fn policy(rules: usize, seed: u64) -> Policy {
    let mut rng = Rng::new(seed);
    let (gid, pid) = (workload::group_id, workload::list_id);
    let mut p = workload::skeleton(&mut rng);
    for n in 0..rules {
        let g = n % GROUPS;
        // The first rules of each group are the usual world rules: egress all (D2) and
        // ingress 443 from anywhere; the rest are random.
        let (direction, protocol, peer) = match n / GROUPS {
            0 => (
                Direction::Egress,
                Protocol::All,
                Peer::Cidr("0.0.0.0/0".parse().unwrap()),
            ),
            1 => (
                Direction::Egress,
                Protocol::All,
                Peer::Cidr("::/0".parse().unwrap()),
            ),
            2 => (
                Direction::Ingress,
                Protocol::Tcp(PortRange { from: 443, to: 443 }),
                Peer::Cidr("0.0.0.0/0".parse().unwrap()),
            ),
            _ => {
                let dir = workload::direction(&mut rng);
                let peer = match rng.below(100) {
                    0..60 => Peer::Cidr(v4_net(&mut rng)),
                    60..90 => Peer::Cidr(v6_net(&mut rng)),
                    90..95 => Peer::PrefixList(pid(rng.below(PREFIX_LISTS))),
                    _ => Peer::Group(gid(rng.below(GROUPS))),
                };
                (dir, protocol(&mut rng), peer)
            }
        };
        let rule = Rule {
            id: RuleId(format!("sgr-{:017x}", rng.next_u64())),
            group: gid(g),
            direction,
            protocol,
            peer,
            description: None,
            origin: Origin::default(),
        };
        let group = p.groups.get_mut(&gid(g)).unwrap();
        match direction {
            Direction::Ingress => group.ingress.push(rule),
            Direction::Egress => group.egress.push(rule),
        }
    }
    // One interface carries all 16 groups; the others three each.
    for i in 0..INTERFACES {
        let groups: Vec<GroupId> = if i == 0 {
            (0..GROUPS).map(gid).collect()
        } else {
            let set: BTreeSet<usize> = (0..3).map(|_| rng.below(GROUPS)).collect();
            set.into_iter().map(gid).collect()
        };
        p.interfaces.push(Interface {
            name: format!("if-{i}"),
            instance: format!("i-{i}"),
            device: None,
            addresses: vec![
                IpAddr::V4(Ipv4Addr::from(
                    0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff),
                )),
                IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8u128 << 96 | u128::from(rng.next_u64()),
                )),
            ],
            groups,
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        });
    }
    p
}

fn main() {
    // `cargo bench` passes --bench; a name filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!(
        "{:>8} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "rules", "scopes", "ms (best)", "peers", "ports", "classes"
    );
    for rules in [10usize, 1_000, 10_000, 100_000] {
        if filter
            .as_ref()
            .is_some_and(|f| !rules.to_string().contains(f.as_str()))
        {
            continue;
        }
        let p = policy(rules, 0x5eed + rules as u64);
        let bindings = sg_testkit::random::all_bound(&p);
        let opts = CompileOptions {
            generation: 1,
            slot_capacity: 1 << 20,
        };
        let runs = if rules >= 100_000 { 3 } else { 10 };
        let mut best = Duration::MAX;
        let mut image = None;
        for _ in 0..runs {
            let start = Instant::now();
            let img = compile(&p, &bindings, &SlotTable::default(), &opts).expect("compiles");
            best = best.min(start.elapsed());
            image = Some(img);
        }
        let image = image.expect("at least one run");
        let scopes: BTreeSet<u32> = image
            .ifaces
            .values()
            .flat_map(|c| [c.scope_in, c.scope_out])
            .collect();
        let classes: BTreeSet<u32> = image
            .peers
            .values()
            .flat_map(|v| v.classes)
            .filter(|&c| c != 0)
            .collect();
        println!(
            "{:>8} {:>6} {:>10.2} {:>10} {:>10} {:>8}",
            rules,
            scopes.len(),
            best.as_secs_f64() * 1000.0,
            image.peers.len(),
            image.ports.len(),
            classes.len()
        );
    }
}
