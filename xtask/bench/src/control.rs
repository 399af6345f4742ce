//! Control-plane figures: compile + apply of a large policy (first apply, and a replacement
//! while one is live), the time from a membership change until a packet from the new member
//! is allowed (real traffic through sg on the bench's veth), the memory of every map and the
//! bytes per conntrack entry, and conntrack filled to capacity with established flows kept
//! (C6).

use std::collections::BTreeMap;

use sg_agent::image::MapImage;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use sg_common::Reason;

use super::frames::{self, Ends, tcp_flags};
use super::kernel::{capacities_for, compile_first, compile_for};
use super::veth::Pair;
use super::{Options, workload};
use sg_agent::dataplane::{Capacities, Dataplane, Hook, IngressHook, LoadOptions};
use sg_testkit::netns::Netns;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlPlane {
    pub rules: usize,
    /// First policy on an empty dataplane.
    pub compile_ms: f64,
    pub apply_ms: f64,
    /// Start of apply until the generation flip (the new policy enforced).
    pub apply_to_flip_ms: f64,
    /// A second policy of the same size replacing the live one (written beside it, flip,
    /// old generation deleted).
    pub replace_compile_ms: f64,
    pub replace_apply_ms: f64,
    pub replace_to_flip_ms: f64,
    /// compile + apply (to the flip) of the replacement: the issue's "compile + apply 10k
    /// rules atomically".
    pub compile_apply_ms: f64,
    /// From the membership change (policy edited in memory) until the first packet from the
    /// new member reached the receiver through sg: compile + apply + the packet.
    pub membership_visible_ms: Option<f64>,
    /// Of that: computing the delta (`compile::membership_delta`) and writing it
    /// (`Dataplane::apply_delta`); the rest is the packet's way to the receiver.
    pub membership_delta_ms: Option<f64>,
    pub membership_write_ms: Option<f64>,
    pub membership_error: Option<String>,
    pub maps: Vec<MapMemory>,
    pub maps_total_bytes: u64,
    pub ct_bytes_per_entry: Option<f64>,
    pub ct_new_bytes_per_entry: Option<f64>,
    pub conntrack: Option<CtCapacity>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapMemory {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    /// The kernel's accounting (`memlock` in fdinfo).
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CtCapacity {
    /// Capacities of SG_CT (confirmed) and SG_CT_NEW.
    pub ct_capacity: u32,
    pub ct_new_capacity: u32,
    /// Established flows opened before the flood.
    pub established: usize,
    /// New flows the flood stored before the table refused more.
    pub new_flows_stored: u64,
    /// New flows refused (DropCtFull, EC2's conntrack_allowance_exceeded).
    pub refused: u64,
    /// Established flows that still passed after the flood.
    pub established_kept: usize,
    /// Growth of the kernel's accounting of SG_CT / SG_CT_NEW per entry stored (the maps
    /// allocate entries as they fill, so capacity / memory says nothing).
    pub ct_bytes_per_entry: Option<f64>,
    pub ct_new_bytes_per_entry: Option<f64>,
}

fn map_bytes(name: &str) -> Result<u64> {
    map_memory()?
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.bytes)
        .ok_or_else(|| anyhow::anyhow!("no map {name} in this process"))
}

pub fn run(opts: &Options, pair: &Pair, hook: IngressHook) -> Result<ControlPlane> {
    let n = *opts.veth_rules.iter().max().unwrap_or(&10_000);
    let n = if opts.quick { n } else { n.max(10_000) };
    let mut c = ControlPlane {
        rules: n,
        ..ControlPlane::default()
    };
    let ifindex = pair.receiver_ifindex;
    let policy = workload::policy(n, opts.seed);
    let t0 = Instant::now();
    let image = compile_first(&policy, ifindex)?;
    c.compile_ms = ms(t0.elapsed());
    let caps = capacities_for(&image, n, 0);
    let mut dp = Dataplane::load(LoadOptions {
        capacities: caps,
        ..LoadOptions::default()
    })?;
    let t1 = Instant::now();
    let rep = dp.apply(&image)?;
    c.apply_ms = ms(t1.elapsed());
    c.apply_to_flip_ms = ms(rep.to_flip);

    // A different policy of the same size replaces it.
    let other = workload::policy(n, opts.seed ^ 0xa5a5);
    let t2 = Instant::now();
    let image2 = compile_for(
        &other,
        ifindex,
        dp.next_generation(),
        &image.slots,
        caps.rule_slots,
    )?;
    c.replace_compile_ms = ms(t2.elapsed());
    let t3 = Instant::now();
    let rep2 = dp.apply(&image2)?;
    c.replace_apply_ms = ms(t3.elapsed());
    c.replace_to_flip_ms = ms(rep2.to_flip);
    c.compile_apply_ms = c.replace_compile_ms + c.replace_to_flip_ms;
    eprintln!(
        "control: {n} rules: compile {:.1} ms, apply {:.1} ms (flip at {:.1}); replace: \
         compile {:.1} ms, apply {:.1} ms (flip at {:.1})",
        c.compile_ms,
        c.apply_ms,
        c.apply_to_flip_ms,
        c.replace_compile_ms,
        c.replace_apply_ms,
        c.replace_to_flip_ms
    );

    // Back to the bench policy, attached, then the membership change.
    let bindings: BTreeMap<String, u32> = [(workload::RECEIVER_IFACE.to_string(), ifindex)].into();
    let (image3, index3) = sg_agent::compile::compile_indexed(
        &policy,
        &bindings,
        &image2.slots,
        &sg_agent::compile::CompileOptions {
            generation: dp.next_generation(),
            slot_capacity: caps.rule_slots,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    dp.apply(&image3)?;
    match membership(pair, &mut dp, &policy, &bindings, &image3, &index3, hook) {
        Ok(m) => {
            c.membership_visible_ms = Some(ms(m.visible));
            c.membership_delta_ms = Some(ms(m.delta));
            c.membership_write_ms = Some(ms(m.write));
        }
        Err(e) => c.membership_error = Some(format!("{e:#}")),
    }
    eprintln!(
        "control: membership change visible after {:?} ms (delta {:?} ms, writes {:?} ms) {:?}",
        c.membership_visible_ms, c.membership_delta_ms, c.membership_write_ms, c.membership_error
    );
    c.maps = map_memory()?;
    c.maps_total_bytes = c.maps.iter().map(|m| m.bytes).sum();
    drop(dp);
    let ct = ct_capacity(opts)?;
    c.ct_bytes_per_entry = ct.ct_bytes_per_entry;
    c.ct_new_bytes_per_entry = ct.ct_new_bytes_per_entry;
    c.conntrack = Some(ct);
    Ok(c)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The newcomer (198.51.100.3 on the sender) probes UDP to the receiver's sink while the
/// policy changes; the receiver notes when its first datagram arrives.
/// The times of one membership change, each from the change.
struct Membership {
    /// The delta computed.
    delta: Duration,
    /// The delta written (in effect for the next packet).
    write: Duration,
    /// The first packet of the new member arrived.
    visible: Duration,
}

fn membership(
    pair: &Pair,
    dp: &mut Dataplane,
    policy: &sg_agent::policy::Policy,
    bindings: &BTreeMap<String, u32>,
    live: &MapImage,
    index: &sg_agent::compile::Index,
    hook: IngressHook,
) -> Result<Membership> {
    let dev = pair.receiver_dev.clone();
    pair.receiver.enter(|| dp.attach(&dev, hook))??;
    let r = (|| -> Result<Membership> {
        let newcomer = workload::NEWCOMER_V4;
        pair.sender.ip(&[
            "addr",
            "replace",
            &format!("{newcomer}/32"),
            "dev",
            &pair.sender_dev,
        ])?;
        // Before the change the newcomer is nobody: its probes must not pass.
        if pair.udp_from_reaches(newcomer, Duration::from_millis(300))? {
            bail!("the newcomer's UDP reached the receiver before it became a member");
        }
        let changed = workload::with_newcomer(policy);
        let stop = AtomicBool::new(false);
        pair.drain_sink()?;
        std::thread::scope(|s| -> Result<Membership> {
            let prober = s.spawn(|| probe(pair, &stop));
            std::thread::sleep(Duration::from_millis(50));
            // What the daemon does on a reload that only changes memberships: the delta of
            // the live image, written in place.
            let t0 = Instant::now();
            let mut delta_at = t0;
            let mut write_at = t0;
            let arrived =
                sg_agent::compile::membership_delta(policy, &changed, bindings, live, index)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|d| d.ok_or_else(|| anyhow::anyhow!("not a membership change")))
                    .and_then(|delta| {
                        delta_at = Instant::now();
                        dp.apply_delta(&delta)
                    })
                    .and_then(|_| {
                        write_at = Instant::now();
                        pair.wait_from(newcomer, Duration::from_secs(30))
                    });
            stop.store(true, Ordering::SeqCst);
            prober
                .join()
                .map_err(|_| anyhow::anyhow!("prober panicked"))??;
            Ok(Membership {
                delta: delta_at - t0,
                write: write_at - delta_at,
                visible: arrived?.duration_since(t0),
            })
        })
    })();
    pair.receiver.enter(|| dp.detach(&dev))??;
    r
}

/// Sends from the newcomer every ~20 us until told to stop (at most 30 s: an apply of a
/// large policy takes seconds on a loaded machine).
fn probe(pair: &Pair, stop: &AtomicBool) -> Result<()> {
    pair.sender.enter(|| -> Result<()> {
        let s = UdpSocket::bind(SocketAddrV4::new(workload::NEWCOMER_V4, 0))?;
        let to = SocketAddr::V4(SocketAddrV4::new(
            workload::RECEIVER_V4,
            workload::UDP_ALLOWED,
        ));
        let t0 = Instant::now();
        while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
            let _ = s.send_to(b"newcomer", to);
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    })?
}

/// Every BPF map this process holds, from /proc/self/fdinfo (names from `bpftool`).
fn map_memory() -> Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo")?.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (Some(id), Some(t), Some(max), Some(mem)) = (
            field("map_id:"),
            field("map_type:"),
            field("max_entries:"),
            field("memlock:"),
        ) else {
            continue;
        };
        if out.iter().any(|m: &MapMemory| m.id == id as u32) {
            continue;
        }
        out.push(MapMemory {
            id: id as u32,
            name: map_name(id as u32).unwrap_or_default(),
            map_type: t as u32,
            max_entries: max,
            bytes: mem,
        });
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}

fn map_name(id: u32) -> Option<String> {
    let o = std::process::Command::new("bpftool")
        .args(["map", "show", "id", &id.to_string(), "-j"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["name"].as_str().map(str::to_string)
}

/// C6 with default capacities: open established flows, flood new ones until the table
/// refuses, then check every established flow still passes.
fn ct_capacity(opts: &Options) -> Result<CtCapacity> {
    let ns = Netns::new("bct")?;
    let seed = opts.seed;
    let established = if opts.quick { 200 } else { 2000 };
    ns.enter(move || -> Result<CtCapacity> {
        let lo = 1;
        let policy = workload::policy(100, seed);
        let image = compile_first(&policy, lo)?;
        let caps = Capacities::default();
        let mut dp = Dataplane::load(LoadOptions {
            capacities: caps,
            ..LoadOptions::default()
        })?;
        dp.apply(&image)?;
        let ct0 = map_bytes(sg_common::maps::CT)?;
        let new0 = map_bytes(sg_common::maps::CT_NEW)?;
        let end = |src: std::net::Ipv4Addr| Ends {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst: workload::RECEIVER_V4,
        };
        let port = workload::TCP_ALLOWED;
        let sender = end(workload::SENDER_V4);
        let mut acks = Vec::new();
        for i in 0..established {
            let sport = 1024 + i as u16;
            let syn = frames::tcp(&sender, sport, port, tcp_flags::SYN, 1, 0);
            let synack = frames::tcp(
                &sender.reversed(),
                port,
                sport,
                tcp_flags::SYN | tcp_flags::ACK,
                7,
                2,
            );
            let ack = frames::tcp(&sender, sport, port, tcp_flags::ACK, 2, 8);
            dp.bench_frame(Hook::XdpIn, &syn, lo, 1)?;
            dp.bench_frame(Hook::TcOut, &synack, lo, 1)?;
            dp.bench_frame(Hook::XdpIn, &ack, lo, 1)?;
            acks.push(ack);
        }
        let confirmed = dp.ct_stats()?.ct_count;
        if confirmed != established as u64 {
            bail!("{established} handshakes confirmed {confirmed} flows");
        }
        let ct1 = map_bytes(sg_common::maps::CT)?;
        // Flood: SYNs from other sources until the unconfirmed table refuses 1000 of them.
        let before = dp.reason_counters()?;
        let mut sent = 0u64;
        let limit = u64::from(caps.ct_new) * 2;
        'flood: for h in [1u8, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] {
            let src = end(std::net::Ipv4Addr::new(198, 51, 100, h));
            for sport in 1024..=65535u16 {
                let syn = frames::tcp(&src, sport, port, tcp_flags::SYN, 1, 0);
                dp.bench_frame(Hook::XdpIn, &syn, lo, 1)?;
                sent += 1;
                if sent.is_multiple_of(1024) {
                    let r = dp.reason_counters()?;
                    let refused = r[&Reason::DropCtFull] - before[&Reason::DropCtFull];
                    if refused >= 1000 || sent >= limit {
                        break 'flood;
                    }
                }
            }
        }
        let after = dp.reason_counters()?;
        let stats = dp.ct_stats()?;
        let new1 = map_bytes(sg_common::maps::CT_NEW)?;
        let per = |a: u64, b: u64, n: u64| (n > 0).then(|| b.saturating_sub(a) as f64 / n as f64);
        let mut kept = 0;
        for ack in &acks {
            if dp.run_frame(Hook::XdpIn, ack, lo)?.reason == Reason::PassCtOriginal {
                kept += 1;
            }
        }
        Ok(CtCapacity {
            ct_capacity: caps.ct,
            ct_new_capacity: caps.ct_new,
            established,
            new_flows_stored: stats.new_count,
            refused: after[&Reason::DropCtFull] - before[&Reason::DropCtFull],
            established_kept: kept,
            ct_bytes_per_entry: per(ct0, ct1, confirmed),
            ct_new_bytes_per_entry: per(new0, new1, stats.new_count),
        })
    })?
}
