//! In-kernel cost per packet with BPF_PROG_TEST_RUN on 64-byte frames, inside a namespace the
//! bench creates (the frames claim to arrive on its `lo`; nothing is sent anywhere).
//!
//! Figures (each the median of `medians_of` measurements):
//! - `pass`: a program that only returns XDP_PASS (`repeat` runs per measurement);
//! - `pass_lookup`: XDP_PASS after one hit in a hash map with sg's conntrack key and value
//!   sizes: the yardstick "bare XDP_PASS + one hash lookup";
//! - `established`: sg's XDP ingress on the ACK of a flow whose handshake it saw (conntrack
//!   hit in the confirmed table), `repeat` runs;
//! - `new_dropped`: a SYN no rule allows (both conntrack misses, both policy lookups), `repeat`
//!   runs;
//! - `new_allowed`: a SYN a rule allows, creating its conntrack entry. A flow is new only once,
//!   so each measurement is `repeat / medians_of` distinct flows run once each (`repeat` runs per
//!   figure in all), and conntrack is flushed between measurements. A single run's time
//!   includes the kernel's timer reads around it, so `pass_once` measures the XDP_PASS program
//!   the same way: compare `new_allowed` with `pass_once`, not with `pass`.
//!
//! The dataplane is loaded fresh for every rule count with map capacities sized to the image
//! (both generations, as an apply needs), so large policies fit when memory allows.
//!
//! Ratios are paired: on a shared machine the speed of a CPU moves for seconds at a time, so a
//! ratio of two figures measured minutes apart measures that too. Each `established`
//! measurement is taken right after one of the yardstick `pass_lookup` (the ratio is the
//! median of the per-pair ratios), and each `new_allowed` measurement of a rule count right
//! after one of the smallest rule count, whose dataplane stays loaded for that.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sg_common::Reason;

use super::frames::{self, Ends, tcp_flags};
use super::rawbpf::{BPF_F_NO_PREALLOC, Prog};
use super::{Options, median, workload};
use sg_agent::compile::{CompileOptions, compile};
use sg_agent::dataplane::{Capacities, Dataplane, Hook, LoadOptions};
use sg_agent::image::{MapImage, SlotTable};
use sg_testkit::netns::Netns;

/// `lo` in a fresh namespace.
const LO: u32 = 1;

#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelCost {
    pub repeat: u32,
    pub medians_of: usize,
    pub pass_ns: f64,
    pub pass_lookup_ns: f64,
    /// XDP_PASS timed one run at a time, like `new_allowed`.
    pub pass_once_ns: f64,
    /// XDP_PASS after one insert of a new conntrack-sized entry into a hash map allocated as
    /// it fills (BPF_F_NO_PREALLOC, as sg's conntrack tables), timed one run at a time: the
    /// kernel's own share of `new_allowed`.
    pub insert_once_ns: f64,
    /// The same insert into a preallocated hash map.
    pub insert_prealloc_once_ns: f64,
    pub sizes: Vec<SizeCost>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SizeCost {
    pub rules: usize,
    pub compile_ms: f64,
    pub apply_ms: f64,
    pub peer_entries: usize,
    /// `SG_PORTS` entries: pages.
    pub port_entries: usize,
    pub established_ns: Option<f64>,
    pub new_allowed_ns: Option<f64>,
    pub new_dropped_ns: Option<f64>,
    /// Median of `established / pass_lookup`, each pair measured back to back.
    pub established_ratio_vs_pass_lookup: Option<f64>,
    /// Median of `established / pass`, each pair measured back to back.
    pub established_ratio_vs_pass: Option<f64>,
    /// Median of `new_allowed / new_allowed of the smallest rule count`, back to back.
    pub new_allowed_ratio_vs_smallest: Option<f64>,
    /// Why this size has no figures (e.g. the image does not fit).
    pub error: Option<String>,
}

/// The sender and receiver of the bench's flows, as test_run frames see them.
fn ends(src: Ipv4Addr) -> Ends {
    Ends {
        src_mac: [0x02, 0, 0, 0, 0, 1],
        dst_mac: [0x02, 0, 0, 0, 0, 2],
        src,
        dst: workload::RECEIVER_V4,
    }
}

/// Capacities for an image: both generations of policy entries (an apply writes the next
/// beside the live one) with room for a next policy somewhat larger than this one, rule slots
/// for every rule, conntrack for `new_flows`. The policy tries are allocated as they fill, so
/// room costs nothing until used.
pub fn capacities_for(image: &MapImage, rules: usize, new_flows: u32) -> Capacities {
    let d = Capacities::default();
    let room = |n: usize, min: u32| (3 * n as u64 + 65_536).max(u64::from(min)) as u32;
    Capacities {
        peers: room(image.peers.len(), d.peers),
        ports: room(image.ports.len(), d.ports),
        rule_slots: ((rules as u32 + 16).next_power_of_two()).max(d.rule_slots),
        ct_new: new_flows.max(d.ct_new),
        ..d
    }
}

/// The first image of a freshly loaded dataplane: [`compile_for`] generation 1, fresh slots,
/// a slot for every rule.
pub fn compile_first(policy: &sg_agent::policy::Policy, ifindex: u32) -> Result<MapImage> {
    compile_for(policy, ifindex, 1, &SlotTable::default(), 1 << 30)
}

/// Compiles `policy` for one binding (the receiver on `ifindex`) and the given generation.
pub fn compile_for(
    policy: &sg_agent::policy::Policy,
    ifindex: u32,
    generation: u32,
    previous: &SlotTable,
    slot_capacity: u32,
) -> Result<MapImage> {
    let bindings: BTreeMap<String, u32> = [(workload::RECEIVER_IFACE.to_string(), ifindex)].into();
    compile(
        policy,
        &bindings,
        previous,
        &CompileOptions {
            generation,
            slot_capacity,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("compiling the bench policy")
}

fn median_of(n: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f()?);
    }
    Ok(median(&v))
}

/// `prog` run `n` times, one run per test run (timed like a new flow): the mean ns.
fn once_each(prog: &Prog, frame: &[u8], n: usize) -> Result<f64> {
    let mut total = 0.0;
    for _ in 0..n {
        total += ns(prog.test_run(frame, LO, 1)?.1);
    }
    Ok(total / n as f64)
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

pub fn run(opts: &Options) -> Result<KernelCost> {
    let ns_ = Netns::new("bkern")?;
    let opts = opts.clone();
    ns_.enter(move || -> Result<KernelCost> {
        // One CPU for every figure: test_run runs on the calling CPU.
        super::veth::pin(0, super::veth::GENERATOR_CPU)?;
        let frame = frames::udp(&ends(workload::SENDER_V4), 40000, workload::UDP_ALLOWED);
        let pass = Prog::xdp_pass()?;
        let lookup = Prog::xdp_pass_lookup()?;
        let m = opts.medians_of;
        let mut k = KernelCost {
            repeat: opts.repeat,
            medians_of: m,
            ..KernelCost::default()
        };
        k.pass_ns = median_of(m, || Ok(ns(pass.test_run(&frame, LO, opts.repeat)?.1)))?;
        k.pass_lookup_ns = median_of(m, || Ok(ns(lookup.test_run(&frame, LO, opts.repeat)?.1)))?;
        let per_round = (opts.repeat as usize / m).max(1);
        k.pass_once_ns = median_of(m, || once_each(&pass, &frame, per_round))?;
        let capacity = (per_round as u32 + 1024).next_power_of_two();
        // A fresh map for every measurement: each one inserts `per_round` new entries.
        let insert_once = |map_flags: u32| {
            median_of(m, || {
                once_each(
                    &Prog::xdp_pass_insert(capacity, map_flags)?,
                    &frame,
                    per_round,
                )
            })
        };
        k.insert_once_ns = insert_once(BPF_F_NO_PREALLOC)?;
        k.insert_prealloc_once_ns = insert_once(0)?;
        eprintln!(
            "kernel: pass {:.1} ns, pass+lookup {:.1} ns, pass once {:.1} ns, \
             pass+insert once {:.1} ns (preallocated: {:.1} ns)",
            k.pass_ns,
            k.pass_lookup_ns,
            k.pass_once_ns,
            k.insert_once_ns,
            k.insert_prealloc_once_ns
        );
        let yard = Yardsticks {
            pass: &pass,
            lookup: &lookup,
            frame: &frame,
        };
        // The smallest rule count's dataplane, kept for the paired new-flow ratio.
        let mut smallest: Option<Loaded> = None;
        for &n in &opts.kernel_rules {
            let s = match size(&opts, n, per_round, &yard, &mut smallest) {
                Ok(s) => s,
                Err(e) => SizeCost {
                    rules: n,
                    error: Some(format!("{e:#}")),
                    ..SizeCost::default()
                },
            };
            eprintln!("kernel: {s:?}");
            k.sizes.push(s);
        }
        Ok(k)
    })?
}

struct Yardsticks<'a> {
    pass: &'a Prog,
    lookup: &'a Prog,
    frame: &'a [u8],
}

/// A loaded dataplane with the bench policy of one size and the new flows to time on it.
struct Loaded {
    dp: Dataplane,
    flows: Vec<Vec<u8>>,
}

impl Loaded {
    /// One `new_allowed` measurement: conntrack flushed, every flow run once; the mean ns.
    /// Checks that every run created its flow.
    fn new_allowed(&mut self) -> Result<f64> {
        self.dp.flush_conntrack()?;
        let before = self.dp.reason_counters()?[&Reason::PassRuleNew];
        let mut total = 0.0;
        for f in &self.flows {
            total += ns(self.dp.bench_frame(Hook::XdpIn, f, LO, 1)?);
        }
        let created = self.dp.reason_counters()?[&Reason::PassRuleNew] - before;
        if created != self.flows.len() as u64 {
            bail!(
                "new-flow runs created {created} flows, expected {}",
                self.flows.len()
            );
        }
        Ok(total / self.flows.len() as f64)
    }
}

fn size(
    opts: &Options,
    n: usize,
    per_round: usize,
    yard: &Yardsticks,
    smallest: &mut Option<Loaded>,
) -> Result<SizeCost> {
    let policy = workload::policy(n, opts.seed);
    let t0 = Instant::now();
    // The dataplane starts with generation 0 active and empty, so the first image is
    // generation 1 (Dataplane::next_generation).
    let image = compile_first(&policy, LO)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let caps = capacities_for(&image, n, (per_round as u32 + 1024).next_power_of_two());
    let mut s = SizeCost {
        rules: n,
        compile_ms,
        peer_entries: image.peers.len(),
        port_entries: image.ports.len(),
        ..SizeCost::default()
    };
    let mut dp = Dataplane::load(LoadOptions {
        capacities: caps,
        ..LoadOptions::default()
    })?;
    let image = if dp.next_generation() == 1 {
        image
    } else {
        compile_for(
            &policy,
            LO,
            dp.next_generation(),
            &SlotTable::default(),
            caps.rule_slots,
        )?
    };
    let t1 = Instant::now();
    dp.apply(&image).context("applying the bench policy")?;
    s.apply_ms = t1.elapsed().as_secs_f64() * 1e3;

    let sender = ends(workload::SENDER_V4);
    let back = sender.reversed();
    let port = workload::TCP_ALLOWED;
    // A real handshake makes the flow established (confirmed table).
    let syn = frames::tcp(&sender, 40000, port, tcp_flags::SYN, 1, 0);
    let synack = frames::tcp(&back, port, 40000, tcp_flags::SYN | tcp_flags::ACK, 7, 2);
    let ack = frames::tcp(&sender, 40000, port, tcp_flags::ACK, 2, 8);
    expect(
        &mut dp,
        Hook::XdpIn,
        &syn,
        Reason::PassRuleNew,
        "SYN of the allowed flow",
    )?;
    expect(
        &mut dp,
        Hook::TcOut,
        &synack,
        Reason::PassCtReply,
        "SYN-ACK",
    )?;
    expect(&mut dp, Hook::XdpIn, &ack, Reason::PassCtOriginal, "ACK")?;
    let m = opts.medians_of;
    // Established, each measurement between the two yardsticks'.
    let (mut est, mut vs_lookup, mut vs_pass) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..m {
        let p = ns(yard.pass.test_run(yard.frame, LO, opts.repeat)?.1);
        let y = ns(yard.lookup.test_run(yard.frame, LO, opts.repeat)?.1);
        let e = ns(dp.bench_frame(Hook::XdpIn, &ack, LO, opts.repeat)?);
        est.push(e);
        vs_lookup.push(e / y);
        vs_pass.push(e / p);
    }
    s.established_ns = Some(median(&est));
    s.established_ratio_vs_pass_lookup = Some(median(&vs_lookup));
    s.established_ratio_vs_pass = Some(median(&vs_pass));

    let denied = frames::tcp(&sender, 40001, workload::DENIED_PORT, tcp_flags::SYN, 1, 0);
    expect(
        &mut dp,
        Hook::XdpIn,
        &denied,
        Reason::DropNoRule,
        "SYN of the denied flow",
    )?;
    s.new_dropped_ns = Some(median_of(m, || {
        Ok(ns(dp.bench_frame(Hook::XdpIn, &denied, LO, opts.repeat)?))
    })?);

    // Distinct new flows: 13 sources of TCP_SENDERS (not the receiver, .2) x source ports.
    let sources: Vec<Ipv4Addr> = (1..15u8)
        .filter(|h| *h != 2)
        .map(|h| Ipv4Addr::new(198, 51, 100, h))
        .collect();
    let flows: Vec<Vec<u8>> = (0..per_round)
        .map(|i| {
            let src = sources[i % sources.len()];
            let sport = 1024 + (i / sources.len()) as u16;
            frames::tcp(&ends(src), sport, port, tcp_flags::SYN, 1, 0)
        })
        .collect();
    if per_round / sources.len() > 64_000 {
        bail!("{per_round} new flows per measurement exceed the distinct flows available");
    }
    let mut here = Loaded { dp, flows };
    let (mut allowed, mut vs_smallest) = (Vec::new(), Vec::new());
    for _ in 0..m {
        let a = here.new_allowed()?;
        allowed.push(a);
        if let Some(first) = smallest.as_mut() {
            vs_smallest.push(a / first.new_allowed()?);
        }
    }
    s.new_allowed_ns = Some(median(&allowed));
    if smallest.is_none() {
        vs_smallest = vec![1.0];
        *smallest = Some(here);
    }
    s.new_allowed_ratio_vs_smallest = Some(median(&vs_smallest));
    Ok(s)
}

fn expect(dp: &mut Dataplane, hook: Hook, frame: &[u8], want: Reason, what: &str) -> Result<()> {
    let r = dp.run_frame(hook, frame, LO)?;
    if r.reason != want {
        bail!(
            "{what}: sg said {} ({:?}), expected {}",
            r.reason.name(),
            r,
            want.name()
        );
    }
    Ok(())
}
