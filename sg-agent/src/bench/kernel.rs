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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sg_common::Reason;

use super::frames::{self, Ends, tcp_flags};
use super::rawbpf::Prog;
use super::{Options, median, workload};
use crate::compile::{CompileOptions, compile};
use crate::dataplane::{Capacities, Dataplane, Hook, LoadOptions};
use crate::image::{MapImage, SlotTable};
use crate::lab::netns::Netns;

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

/// Compiles `policy` for one binding (the receiver on `ifindex`) and the given generation.
pub fn compile_for(
    policy: &crate::policy::Policy,
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
        k.pass_once_ns = median_of(m, || {
            let mut total = 0.0;
            for _ in 0..per_round {
                total += ns(pass.test_run(&frame, LO, 1)?.1);
            }
            Ok(total / per_round as f64)
        })?;
        eprintln!(
            "kernel: pass {:.1} ns, pass+lookup {:.1} ns, pass once {:.1} ns",
            k.pass_ns, k.pass_lookup_ns, k.pass_once_ns
        );
        for &n in &opts.kernel_rules {
            let s = match size(&opts, n, per_round) {
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

fn size(opts: &Options, n: usize, per_round: usize) -> Result<SizeCost> {
    let policy = workload::policy(n, opts.seed);
    let t0 = Instant::now();
    // The dataplane starts with generation 0 active and empty, so the first image is
    // generation 1 (Dataplane::next_generation).
    let image = compile_for(&policy, LO, 1, &SlotTable::default(), 1 << 30)?;
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
    s.established_ns = Some(median_of(m, || {
        Ok(ns(dp.bench_frame(Hook::XdpIn, &ack, LO, opts.repeat)?))
    })?);

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
    let before = dp.reason_counters()?;
    let new_allowed = median_of(m, || {
        dp.flush_conntrack()?;
        let mut total = 0.0;
        for f in &flows {
            total += ns(dp.bench_frame(Hook::XdpIn, f, LO, 1)?);
        }
        Ok(total / flows.len() as f64)
    })?;
    let after = dp.reason_counters()?;
    let created = after[&Reason::PassRuleNew] - before[&Reason::PassRuleNew];
    if created != (m * per_round) as u64 {
        bail!(
            "new-flow runs created {created} flows, expected {} (reason counters: {after:?})",
            m * per_round
        );
    }
    s.new_allowed_ns = Some(new_allowed);
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
