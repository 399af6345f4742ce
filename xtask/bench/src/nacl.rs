//! The network ACL part (issue 17): what a router enforcing subnets' NACLs costs.
//!
//! - **Decision cost.** A router port (`lo` of a namespace the bench creates; nothing is
//!   sent) bound to a subnet whose NACL has 20 entries per list (the default quota) and one
//!   with 1,000 (quota raised). The entries interleave allow and deny over nested and disjoint
//!   CIDRs; the test packet is decided by the LAST numbered entry, the worst case of a list
//!   walk (sg answers from one class, so it must cost the same). Beside it, the 1,000-entry
//!   list's dearest packet: a port of its 250 single-port entries covering the remote, three
//!   pages deep in the class where the last entry's port is on the first page.
//!   BPF_PROG_TEST_RUN on TC ingress and XDP, `repeat` runs per measurement; the ratio is
//!   paired like kernel.rs's:
//!   each 1,000-entry measurement right after a 20-entry one, both dataplanes loaded, the
//!   median of the per-pair ratios.
//! - **Forwarding.** sender -- router -- receiver namespaces on two veth pairs, forwarding on
//!   in the router only; a 64-byte UDP flood from the sender through the router, counted at
//!   the receiver's UDP layer in a window (veth.rs's method and generators). The bare router
//!   in alternation with the router running sg on both devices (TC or XDP ingress, TC egress)
//!   with NACLs that allow the flow by their last entry; the ratio is the median of the
//!   per-round ratios. The same rounds with programs that only pass at those hooks
//!   (rawbpf.rs) give the floor: what the hooks cost on this router with nothing in them.
//!
//! It owns the NACL policies of the bench and the routed rig. Like the rest of the bench it
//! goes through `compile` and `dataplane`, never writes maps itself, never asserts on timings.
//! Safety: documentation addresses only, every namespace goes away on drop, every flood is
//! bounded by a deadline and a packet budget (veth.rs).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use sg_agent::compile::nacl::{Router, RouterPort, slot_id};
use sg_agent::compile::{CompileOptions, compile_router};
use sg_agent::dataplane::{Dataplane, Hook, IngressHook, LoadOptions, XdpMode};
use sg_agent::image::{MapImage, SlotTable};
use sg_agent::policy::{
    Direction, Family, NaclAction, NaclEntry, NaclId, NetworkAcl, Origin, Policy, PortRange,
    Protocol, Subnet, SubnetId,
};
use sg_common::Reason;
use sg_testkit::netns::{Netns, veth};

use super::frames::{self, Ends};
use super::rawbpf::{PassHook, Prog};
use super::veth::{Generator, flood_from, mac, pin, receiver_sink, udp_delivered};
use super::workload::UDP_ALLOWED;
use super::{Options, median};

/// `lo` in a fresh namespace.
const LO: u32 = 1;
/// The decision-cost sizes: the default quota and the raised one.
pub const SMALL: usize = 20;
pub const LARGE: usize = 1_000;

/// The routed rig's addresses: subnet A (the sender's) and subnet B (the receiver's).
const SENDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const ROUTER_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The decision-cost packet: from subnet A to a remote the last entry names.
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// A UDP port in the middle of [`list`]'s single-port entries covering the remote (entry
/// `i` = 501 of 1,000), deep in its class's page tree.
pub const DENSE_PORT: u16 = 20_501;

#[derive(Clone, Debug, Default, Serialize)]
pub struct NaclFigures {
    pub repeat: u32,
    pub medians_of: usize,
    pub decision: Vec<DecisionCost>,
    pub forwarding: Vec<ForwardFigure>,
    /// The generator of the forwarding figures.
    pub generator: Option<String>,
    /// What could not be measured, and why.
    pub errors: Vec<String>,
}

/// One hook's decision cost at both sizes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DecisionCost {
    pub hook: String,
    pub small_rules: usize,
    pub large_rules: usize,
    pub small_ns: f64,
    pub large_ns: f64,
    /// Median of `large / small`, each pair measured back to back.
    pub ratio_large_vs_small: f64,
    /// `SG_PEERS` entries and `SG_PORTS` pages of each image.
    pub small_entries: (usize, usize),
    pub large_entries: (usize, usize),
    /// The 1,000-entry list's dearest point: a packet to [`DENSE_PORT`], one of the 250
    /// single-port entries covering the remote, whose class reads three pages for it (the
    /// last entry's port reads one). Median ns, and the paired ratio to the 20-entry figure.
    pub large_dense_ns: f64,
    pub ratio_dense_vs_small: f64,
}

/// Forwarded pps with sg on the router, paired with the bare router.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardFigure {
    pub config: String,
    pub pps: f64,
    pub bare_pps: f64,
    /// Median over rounds of (pps with sg / bare pps of the same round).
    pub ratio_vs_bare: f64,
    /// Packets sg's NACLs passed during the rounds (proof that they judged the flood).
    pub nacl_passed: u64,
}

pub fn run(opts: &Options) -> Result<NaclFigures> {
    let mut f = NaclFigures {
        repeat: opts.repeat,
        medians_of: opts.medians_of,
        ..NaclFigures::default()
    };
    match decision(opts) {
        Ok(d) => f.decision = d,
        Err(e) => f.errors.push(format!("decision cost: {e:#}")),
    }
    if let Err(e) = forwarding(opts, &mut f) {
        f.errors.push(format!("forwarding: {e:#}"));
    }
    Ok(f)
}

/// A list of `n` entries numbered 10, 20, ..: allow and deny interleaved, CIDRs covering
/// `target` (with another protocol or port) or disjoint from it (any protocol), and last an
/// allow of UDP [`UDP_ALLOWED`] to or from `target`/32: the only entry the flow matches.
pub fn list(n: usize, target: Ipv4Addr) -> Vec<NaclEntry> {
    let other = if target.octets()[0] == 198 {
        Ipv4Addr::new(192, 0, 2, 0)
    } else {
        Ipv4Addr::new(198, 51, 100, 0)
    };
    let net = |a: Ipv4Addr, len: u8| IpNet::V4(Ipv4Net::new(a, len).expect("len <= 32").trunc());
    let host = |i: usize| Ipv4Addr::from(u32::from(other) + (i % 256) as u32);
    let action = |i: usize| {
        if i.is_multiple_of(2) {
            NaclAction::Allow
        } else {
            NaclAction::Deny
        }
    };
    let ports = |from: usize| PortRange {
        from: from as u16,
        to: from as u16,
    };
    let mut v: Vec<NaclEntry> = (0..n.saturating_sub(1))
        .map(|i| {
            let (protocol, cidr) = match i % 4 {
                // Covers the target, another protocol.
                0 => (Protocol::Tcp(ports(1000 + i)), net(target, 24)),
                // Covers it at lengths 16..=31, another port.
                1 => (
                    Protocol::Udp(ports(20_000 + i)),
                    net(target, 16 + (i % 16) as u8),
                ),
                // Disjoint hosts, every protocol.
                2 => (Protocol::All, net(host(i), 32)),
                // Disjoint prefixes, the flow's port.
                _ => (
                    Protocol::Udp(ports(UDP_ALLOWED.into())),
                    net(host(i), 24 + (i % 9) as u8),
                ),
            };
            NaclEntry {
                number: 10 * (i as u16 + 1),
                action: action(i),
                protocol,
                cidr,
                origin: Origin::default(),
            }
        })
        .collect();
    v.push(NaclEntry {
        number: 10 * n as u16,
        action: NaclAction::Allow,
        protocol: Protocol::Udp(ports(UDP_ALLOWED.into())),
        cidr: net(target, 32),
        origin: Origin::default(),
    });
    v
}

fn acl(id: &str, n: usize, out_target: Ipv4Addr, in_target: Ipv4Addr) -> NetworkAcl {
    NetworkAcl {
        id: NaclId(id.into()),
        is_default: false,
        inbound: list(n, in_target),
        outbound: list(n, out_target),
        origin: Origin::default(),
    }
}

fn subnet(id: &str, cidr: &str, acl: &str) -> Subnet {
    Subnet {
        id: SubnetId(id.into()),
        cidrs: vec![cidr.parse().expect("a CIDR")],
        network_acl: NaclId(acl.into()),
        router_device: None,
        origin: Origin::default(),
    }
}

/// A policy with NACLs only (no security group): built directly, not validated, with the
/// quota raised to its lists' length.
fn policy(acls: Vec<NetworkAcl>, subnets: Vec<Subnet>, n: usize) -> Policy {
    let mut p = Policy {
        network_acls: acls.into_iter().map(|a| (a.id.clone(), a)).collect(),
        subnets,
        ..Policy::default()
    };
    p.quotas.nacl_rules_per_list = p.quotas.nacl_rules_per_list.max(n as u32 + 1);
    p
}

/// Loads a dataplane sized for `policy` and applies its router image; returns it with the
/// image.
fn load(policy: &Policy, router: &Router, rules: usize) -> Result<(Dataplane, MapImage)> {
    let compile = |generation, slot_capacity| {
        compile_router(
            policy,
            &BTreeMap::new(),
            &SlotTable::default(),
            &CompileOptions {
                generation,
                slot_capacity,
            },
            router,
        )
        .map(|(image, _)| image)
        .map_err(|e| anyhow!("{e}"))
        .context("compiling the bench NACLs")
    };
    // A fresh dataplane's next generation is 1 (Dataplane::next_generation).
    let image = compile(1, 1 << 30)?;
    let caps = super::kernel::capacities_for(&image, rules, 0);
    let mut dp = Dataplane::load(LoadOptions {
        capacities: caps,
        ..LoadOptions::default()
    })?;
    let image = if dp.next_generation() == 1 {
        image
    } else {
        compile(dp.next_generation(), caps.rule_slots)?
    };
    dp.apply(&image).context("applying the bench NACLs")?;
    Ok((dp, image))
}

/// One size of the decision-cost rig: its dataplane, image and the deciding entry's slot.
struct Sized {
    dp: Dataplane,
    image: MapImage,
    slot: u32,
}

/// The counter slot of the outbound entry numbered `number` of the decision-cost NACL.
fn entry_slot(image: &MapImage, number: u16) -> Result<u32> {
    let id = slot_id(
        &NaclId("acl-bench".into()),
        Direction::Egress,
        Some(number),
        Family::V4,
    );
    image
        .slots
        .by_rule
        .get(&id)
        .copied()
        .with_context(|| format!("no counter slot for {id:?}"))
}

/// The entry deciding [`DENSE_PORT`]: `list`'s entry `i` = port - 20000, a deny (odd `i`).
const DENSE_ENTRY: u16 = 10 * (DENSE_PORT - 20_000 + 1);

/// The decision-cost policy of `n` entries per list and its router (one port, on `lo`).
fn sized_policy(n: usize) -> (Policy, Router) {
    let p = policy(
        vec![acl("acl-bench", n, REMOTE, REMOTE)],
        vec![subnet("subnet-bench", "192.0.2.0/24", "acl-bench")],
        n,
    );
    let router = Router {
        ports: vec![RouterPort {
            subnet: SubnetId("subnet-bench".into()),
            ifindex: LO,
        }],
        addrs: Vec::new(),
    };
    (p, router)
}

fn sized(n: usize) -> Result<Sized> {
    let (p, router) = sized_policy(n);
    let (dp, image) = load(&p, &router, 2 * n + 8)?;
    let slot = entry_slot(&image, 10 * n as u16)?;
    Ok(Sized { dp, image, slot })
}

/// Both hooks' decision cost at [`SMALL`] and [`LARGE`] entries per list, paired.
fn decision(opts: &Options) -> Result<Vec<DecisionCost>> {
    let ns_ = Netns::new("bnacl")?;
    let opts = opts.clone();
    ns_.enter(move || -> Result<Vec<DecisionCost>> {
        // One CPU for every figure: test_run runs on the calling CPU.
        pin(0, super::veth::GENERATOR_CPU)?;
        let ends = Ends {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src: SENDER,
            dst: REMOTE,
        };
        let frame = frames::udp(&ends, 40000, UDP_ALLOWED);
        let dense = frames::udp(&ends, 40000, DENSE_PORT);
        let (mut small, mut large) = (sized(SMALL)?, sized(LARGE)?);
        let mut out = Vec::new();
        for (name, hook) in [("tc", Hook::TcIn), ("xdp", Hook::XdpIn)] {
            for s in [&mut small, &mut large] {
                // Leaving the subnet: the outbound list, decided by its last entry.
                let r = s.dp.run_frame(hook, &frame, LO)?;
                if r.reason != Reason::PassNaclRule || r.slot != Some(s.slot) {
                    bail!(
                        "{name}: the NACL said {} (slot {:?}), expected pass_nacl_rule by the \
                         last entry (slot {})",
                        r.reason.name(),
                        r.slot,
                        s.slot
                    );
                }
            }
            let r = large.dp.run_frame(hook, &dense, LO)?;
            let want = entry_slot(&large.image, DENSE_ENTRY)?;
            if r.reason != Reason::DropNaclRule || r.slot != Some(want) {
                bail!(
                    "{name}: UDP {DENSE_PORT} got {} (slot {:?}), expected drop_nacl_rule by \
                     entry {DENSE_ENTRY} (slot {want})",
                    r.reason.name(),
                    r.slot
                );
            }
            let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut c, mut dense_ratios) = (Vec::new(), Vec::new());
            for _ in 0..opts.medians_of.max(1) {
                let x = small.dp.bench_frame(hook, &frame, LO, opts.repeat)?;
                let y = large.dp.bench_frame(hook, &frame, LO, opts.repeat)?;
                let z = large.dp.bench_frame(hook, &dense, LO, opts.repeat)?;
                let (x, y, z) = (
                    x.as_nanos() as f64,
                    y.as_nanos() as f64,
                    z.as_nanos() as f64,
                );
                a.push(x);
                b.push(y);
                c.push(z);
                ratios.push(y / x);
                dense_ratios.push(z / x);
            }
            let d = DecisionCost {
                hook: name.into(),
                small_rules: SMALL,
                large_rules: LARGE,
                small_ns: median(&a),
                large_ns: median(&b),
                ratio_large_vs_small: median(&ratios),
                small_entries: (small.image.peers.len(), small.image.ports.len()),
                large_entries: (large.image.peers.len(), large.image.ports.len()),
                large_dense_ns: median(&c),
                ratio_dense_vs_small: median(&dense_ratios),
            };
            eprintln!("nacl decision: {d:?}");
            out.push(d);
        }
        Ok(out)
    })?
}

/// sender -- router -- receiver; everything goes away on drop.
struct Routed {
    // Field order is drop order: the helper process dies before its namespace goes.
    counter_proc: Child,
    _sink: UdpSocket,
    ends: Ends,
    sender_ifindex: u32,
    router_devs: [String; 2],
    router_ifindexes: [u32; 2],
    _receiver: Netns,
    router: Netns,
    sender: Netns,
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = self.counter_proc.kill();
        let _ = self.counter_proc.wait();
    }
}

fn neigh(ns: &Netns, addr: Ipv4Addr, lladdr: &str, dev: &str) -> Result<()> {
    ns.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        lladdr,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

impl Routed {
    /// Sender 192.0.2.10 -- router 192.0.2.1 | 203.0.113.1 -- receiver 203.0.113.10, static
    /// routes and neighbours (no ARP during a run), GRO on the devices that receive from a
    /// veth (it gives them the NAPI context XDP-redirected frames need: veth.rs).
    fn new() -> Result<Routed> {
        let sender = Netns::new("bnsnd")?;
        let router = Netns::new("bnrtr")?;
        let receiver = Netns::new("bnrcv")?;
        let pid = std::process::id() % 1_000_000;
        let [sa, ra, rb, rr] = ["s", "a", "b", "r"].map(|t| format!("n{pid}{t}"));
        veth(&sender, &sa, &router, &ra)?;
        veth(&router, &rb, &receiver, &rr)?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        for (ns, dev, addr) in [
            (&sender, &sa, SENDER),
            (&router, &ra, ROUTER_A),
            (&router, &rb, ROUTER_B),
            (&receiver, &rr, RECEIVER),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        }
        sender.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &ROUTER_A.to_string(),
        ])?;
        receiver.ip(&["route", "add", "192.0.2.0/24", "via", &ROUTER_B.to_string()])?;
        let (sa_mac, ra_mac) = (mac(&sender, &sa)?, mac(&router, &ra)?);
        let (rb_mac, rr_mac) = (mac(&router, &rb)?, mac(&receiver, &rr)?);
        neigh(&sender, ROUTER_A, &ra_mac, &sa)?;
        neigh(&router, SENDER, &sa_mac, &ra)?;
        neigh(&router, RECEIVER, &rr_mac, &rb)?;
        neigh(&receiver, ROUTER_B, &rb_mac, &rr)?;
        for (ns, dev) in [(&router, &ra), (&receiver, &rr)] {
            ns.run_ok(&["ethtool", "-K", dev, "gro", "on"], Duration::from_secs(5))?;
        }
        let (counter_proc, sink) = receiver_sink(&receiver, RECEIVER)?;
        let ends = Ends {
            src_mac: frames::parse_mac(&sa_mac).context("sender MAC")?,
            dst_mac: frames::parse_mac(&ra_mac).context("router MAC")?,
            src: SENDER,
            dst: RECEIVER,
        };
        Ok(Routed {
            counter_proc,
            _sink: sink,
            ends,
            sender_ifindex: sender.ifindex(&sa)?,
            router_ifindexes: [router.ifindex(&ra)?, router.ifindex(&rb)?],
            router_devs: [ra, rb],
            _receiver: receiver,
            router,
            sender,
        })
    }

    fn delivered(&self) -> Result<u64> {
        let path = format!("/proc/{}/net/snmp", self.counter_proc.id());
        let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        udp_delivered(&s)
    }

    /// Floods sender -> receiver through the router; delivered pps over the window.
    fn flood(&self, g: Generator, opts: &Options) -> Result<f64> {
        let total = opts.warmup + opts.window + Duration::from_millis(200);
        let measure = || -> Result<f64> {
            std::thread::sleep(opts.warmup);
            let (c1, t1) = (self.delivered()?, Instant::now());
            std::thread::sleep(opts.window);
            let (c2, t2) = (self.delivered()?, Instant::now());
            Ok((c2 - c1) as f64 / (t2 - t1).as_secs_f64())
        };
        flood_from(
            &self.sender,
            self.sender_ifindex,
            &self.ends,
            g,
            total,
            measure,
        )
    }

    /// sg on both router devices (`hook` ingress, TC egress), or off.
    fn set_sg(&self, dp: &mut Dataplane, hook: Option<IngressHook>) -> Result<()> {
        for dev in &self.router_devs {
            match hook {
                Some(h) => {
                    let rep = self.router.enter(|| dp.attach(dev, h))??;
                    if !rep.notes.is_empty() {
                        bail!("attach on {dev} fell back: {:?}", rep.notes);
                    }
                }
                None => self.router.enter(|| dp.detach(dev))??,
            }
        }
        Ok(())
    }
}

/// The routed rig's policy: subnet A (sender) and B (receiver), each NACL [`SMALL`] entries
/// per list, the flow allowed by the last entry out of A (to the receiver) and into B (from
/// the sender).
fn routed_policy(r: &Routed) -> (Policy, Router) {
    let p = policy(
        vec![
            acl("acl-a", SMALL, RECEIVER, RECEIVER),
            acl("acl-b", SMALL, SENDER, SENDER),
        ],
        vec![
            subnet("subnet-a", "192.0.2.0/24", "acl-a"),
            subnet("subnet-b", "203.0.113.0/24", "acl-b"),
        ],
        SMALL,
    );
    let router = Router {
        ports: ["subnet-a", "subnet-b"]
            .iter()
            .zip(r.router_ifindexes)
            .map(|(s, ifindex)| RouterPort {
                subnet: SubnetId((*s).into()),
                ifindex,
            })
            .collect(),
        addrs: vec![IpAddr::V4(ROUTER_A), IpAddr::V4(ROUTER_B)],
    };
    (p, router)
}

/// The forwarding figures: the generator chosen on the bare router, then sg with TC and XDP
/// ingress, each in alternation with the bare router.
fn forwarding(opts: &Options, f: &mut NaclFigures) -> Result<()> {
    let rig = Routed::new()?;
    // The generator that forwards the most through the bare router (or the one asked for).
    // Seen here: live frames redirected into the sender's veth reach the receiver at ~1k pps
    // through the router while sendmmsg delivers ~150k, so the choice is measured.
    let cands: Vec<Generator> = match opts.generator {
        Some((g, _)) if matches!(g, Generator::LiveFrames | Generator::Sendmmsg) => vec![g],
        _ => vec![Generator::Sendmmsg, Generator::LiveFrames],
    };
    let mut failures = Vec::new();
    let mut chosen: Option<(Generator, f64)> = None;
    for g in cands {
        match rig.flood(g, opts) {
            Ok(v) if v > chosen.map_or(0.0, |c| c.1) => chosen = Some((g, v)),
            Ok(v) => failures.push(format!("{} delivered {v:.0} pps", g.name())),
            Err(e) => failures.push(format!("{}: {e:#}", g.name())),
        }
    }
    let (g, _) =
        chosen.with_context(|| format!("no generator crosses the router: {failures:?}"))?;
    eprintln!("nacl forwarding: generator {} ({failures:?})", g.name());
    f.generator = Some(g.name().into());
    let (p, router) = routed_policy(&rig);
    let (mut dp, _) = load(&p, &router, 4 * SMALL + 16)?;
    for (name, hook) in [
        ("sg_tc", IngressHook::Tc),
        ("sg_xdp", IngressHook::Xdp(XdpMode::Native)),
    ] {
        match forward(opts, &rig, &mut dp, g, name, hook) {
            Ok(x) => f.forwarding.push(x),
            Err(e) => {
                let _ = rig.set_sg(&mut dp, None);
                f.errors.push(format!("forwarding with {name}: {e:#}"));
            }
        }
    }
    for (name, xdp) in [("pass_only_tc", false), ("pass_only_xdp", true)] {
        match forward_pass_only(opts, &rig, g, name, xdp) {
            Ok(x) => f.forwarding.push(x),
            Err(e) => f.errors.push(format!("forwarding with {name}: {e:#}")),
        }
    }
    Ok(())
}

/// Alternating rounds (the configuration `name` on, then the bare router), as lib.rs's
/// `paired`: `set(true)` puts the configuration on the router, `set(false)` takes it off.
/// The figure's `nacl_passed` is left 0 for the caller.
fn rounds(
    opts: &Options,
    rig: &Routed,
    g: Generator,
    name: &str,
    mut set: impl FnMut(bool) -> Result<()>,
) -> Result<ForwardFigure> {
    let (mut on, mut off, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.rounds.max(1) {
        set(true)?;
        let v = rig.flood(g, opts);
        set(false)?;
        let v = v?;
        let b = rig.flood(g, opts)?;
        on.push(v);
        off.push(b);
        ratios.push(v / b);
    }
    eprintln!("nacl forwarding {name}: {on:.0?} vs bare {off:.0?}");
    Ok(ForwardFigure {
        config: name.into(),
        pps: median(&on),
        bare_pps: median(&off),
        ratio_vs_bare: median(&ratios),
        nacl_passed: 0,
    })
}

/// sg on the router (`hook` ingress, TC egress), in alternation with the bare router.
fn forward(
    opts: &Options,
    rig: &Routed,
    dp: &mut Dataplane,
    g: Generator,
    name: &str,
    hook: IngressHook,
) -> Result<ForwardFigure> {
    let passed =
        |dp: &Dataplane| -> Result<u64> { Ok(dp.reason_counters()?[&Reason::PassNaclRule]) };
    let before = passed(dp)?;
    let mut figure = rounds(opts, rig, g, name, |on| rig.set_sg(dp, on.then_some(hook)))?;
    figure.nacl_passed = passed(dp)? - before;
    eprintln!("nacl forwarding {name}: NACL passed {}", figure.nacl_passed);
    if figure.nacl_passed == 0 {
        bail!("{name}: the NACLs passed nothing: sg did not judge the flood");
    }
    Ok(figure)
}

/// Programs that only pass, at the hooks sg uses (`xdp`: native XDP ingress, else TC
/// ingress; TC egress in both), on both router devices: what the hooks cost on this router
/// with nothing in them, the floor under sg's forwarding figure.
fn forward_pass_only(
    opts: &Options,
    rig: &Routed,
    g: Generator,
    name: &str,
    xdp: bool,
) -> Result<ForwardFigure> {
    let (xdp_pass, tc_pass) = (Prog::xdp_pass()?, Prog::tc_pass()?);
    let mut links = Vec::new();
    rounds(opts, rig, g, name, |on| {
        if !on {
            links.clear();
            return Ok(());
        }
        rig.router.enter(|| -> Result<()> {
            for &ifindex in &rig.router_ifindexes {
                links.push(if xdp {
                    xdp_pass.attach(ifindex, PassHook::XdpNative)?
                } else {
                    tc_pass.attach(ifindex, PassHook::TcIngress)?
                });
                links.push(tc_pass.attach(ifindex, PassHook::TcEgress)?);
            }
            Ok(())
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_common::{PAGE_SEGS, PortKey, PortPage, RuleVal, rule_flags};

    /// What the kernel walks for the decision-cost packet (leaving the subnet: the outbound
    /// list, by its destination): the peer prefixes of the scope covering the remote (the
    /// LPM trie's path holds them) and the deciding class.
    fn peer_walk(image: &MapImage) -> (usize, u32) {
        let conf = image.ifaces.values().next().expect("one router port");
        let mut key = [0u8; 20];
        key[..4].copy_from_slice(&conf.scope_out.to_be_bytes());
        key[14..16].copy_from_slice(&[0xff, 0xff]);
        key[16..].copy_from_slice(&REMOTE.octets());
        let bit = |d: &[u8; 20], i: usize| d[i / 8] >> (7 - i % 8) & 1;
        let mut covering: Vec<_> = image
            .peers
            .iter()
            .filter(|(k, _)| {
                let mut data = [0u8; 20];
                data[..4].copy_from_slice(&k.data.scope);
                data[4..].copy_from_slice(&k.data.addr);
                (0..k.prefix_len as usize).all(|i| bit(&key, i) == bit(&data, i))
            })
            .collect();
        covering.sort_by_key(|(k, _)| k.prefix_len);
        let class = covering.last().expect("the root covers it").1.classes[0];
        (covering.len(), class)
    }

    /// The pages `class` reads for (UDP, `port`), and its answer.
    fn page_walk(image: &MapImage, class: u32, port: u16) -> (usize, RuleVal) {
        let mut key = PortKey {
            class,
            proto: 17,
            any: 0,
            page: 0,
        };
        let mut pages = 0;
        loop {
            let page: &PortPage = &image.ports[&key];
            pages += 1;
            let i = (0..PAGE_SEGS).rfind(|&i| page.starts[i] <= port).unwrap();
            let v = page.vals[i];
            if v.flags & rule_flags::PAGE == 0 {
                return (pages, v);
            }
            key.page = v.slot as u16;
        }
    }

    /// The decision-cost packet's walk at both sizes: the 1,000-entry list answers it from
    /// the same number of LPM prefixes and from one page, like the 20-entry list.
    #[test]
    fn the_last_entry_is_answered_from_one_page_at_both_sizes() {
        let opts = CompileOptions {
            generation: 1,
            slot_capacity: 1 << 20,
        };
        let mut walks = Vec::new();
        for n in [SMALL, LARGE] {
            let (p, router) = sized_policy(n);
            let (image, _) =
                compile_router(&p, &BTreeMap::new(), &SlotTable::default(), &opts, &router)
                    .unwrap();
            let (covering, class) = peer_walk(&image);
            let (pages, val) = page_walk(&image, class, UDP_ALLOWED);
            let last = entry_slot(&image, 10 * n as u16).unwrap();
            assert_eq!(val.slot, last, "{n} entries");
            // Every UDP port's page count: the dense ports (20001, ..) of 1,000 entries need
            // more than one page.
            let mut depths = BTreeMap::new();
            for port in 0..=u16::MAX {
                *depths
                    .entry(page_walk(&image, class, port).0)
                    .or_insert(0u32) += 1;
            }
            eprintln!(
                "{n} entries: {} peers, {} ports pages; the packet: {covering} covering \
                 prefixes, {pages} pages; UDP ports by pages read: {depths:?}",
                image.peers.len(),
                image.ports.len(),
            );
            if n == LARGE {
                let (pages, val) = page_walk(&image, class, DENSE_PORT);
                let entry = entry_slot(&image, DENSE_ENTRY).unwrap();
                assert_eq!(val.slot, entry, "{DENSE_PORT}");
                assert_ne!(
                    val.flags & rule_flags::DENY,
                    0,
                    "entry {DENSE_ENTRY} denies"
                );
                assert_eq!(pages, 3, "{DENSE_PORT} is deep in the class");
            }
            walks.push((covering, pages));
        }
        assert_eq!(walks[0].0, walks[1].0, "covering prefixes");
        assert_eq!((walks[0].1, walks[1].1), (1, 1), "pages");
    }

    /// The bench's 1,000-entry list compiled (deep page trees, prefixes left out) and read as
    /// the kernel does (the test kit's literal lookup) answers like the model (A4, A6):
    /// remotes at every entry CIDR's edges, every port boundary of the list, both protocols.
    #[test]
    fn the_large_list_compiles_to_the_models_answers() {
        use sg_agent::model::nacl::{NaclRule, decide_list, rule_id};
        use sg_testkit::lookup::{LookupResult, check_canonical, lookup};
        let (p, router) = sized_policy(LARGE);
        let opts = CompileOptions {
            generation: 1,
            slot_capacity: 1 << 20,
        };
        let (image, _) =
            compile_router(&p, &BTreeMap::new(), &SlotTable::default(), &opts, &router).unwrap();
        check_canonical(&image).unwrap();
        let acl = &p.network_acls[&NaclId("acl-bench".into())];
        let entries = acl.entries(Direction::Egress);
        let mut remotes = std::collections::BTreeSet::new();
        for e in entries.iter().step_by(37).chain(entries.last()) {
            if let IpNet::V4(n) = e.cidr {
                let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
                remotes.extend([a.wrapping_sub(1), a, b, b.wrapping_add(1)]);
            }
        }
        let mut ports = std::collections::BTreeSet::from([0u16, 65535]);
        for e in entries {
            if let Protocol::Udp(r) | Protocol::Tcp(r) = e.protocol {
                ports.extend([
                    r.from.saturating_sub(1),
                    r.from,
                    r.to,
                    r.to.saturating_add(1),
                ]);
            }
        }
        let mut compared = 0;
        for &remote in &remotes {
            let remote = IpAddr::V4(Ipv4Addr::from(remote));
            for proto in [6u8, 17] {
                for &port in &ports {
                    let want = decide_list(acl, Direction::Egress, remote, proto, port);
                    let rule = match want.rule {
                        NaclRule::Number(n) => Some(n),
                        NaclRule::Star(_) => None,
                    };
                    let slot = image.slots.by_rule[&rule_id(&acl.id, Direction::Egress, want.rule)];
                    let got = lookup(&image, LO, Direction::Egress, remote, proto, port);
                    let LookupResult::Allow(v) = got else {
                        panic!("{remote} {proto}/{port}: {got:?}, the model says {rule:?}");
                    };
                    assert_eq!(
                        (v.slot, v.flags & rule_flags::DENY != 0),
                        (slot, !want.allow),
                        "{remote} {proto}/{port}: the model says {rule:?}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 10_000, "{compared} points");
    }

    /// The flow (UDP 9000 to the target) matches only the last entry; the others interleave
    /// allow and deny.
    #[test]
    fn only_the_last_entry_matches_the_flow() {
        for n in [SMALL, LARGE] {
            let l = list(n, REMOTE);
            assert_eq!(l.len(), n);
            let matches = |e: &NaclEntry| {
                e.cidr.contains(&IpAddr::V4(REMOTE))
                    && match e.protocol {
                        Protocol::All => true,
                        Protocol::Udp(r) => r.contains(UDP_ALLOWED),
                        _ => false,
                    }
            };
            let hits: Vec<u16> = l.iter().filter(|e| matches(e)).map(|e| e.number).collect();
            assert_eq!(hits, [10 * n as u16]);
            assert!(l.iter().any(|e| e.action == NaclAction::Deny));
            assert!(l.windows(2).all(|w| w[0].number < w[1].number));
        }
    }
}
