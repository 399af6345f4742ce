//! `cargo xtask bench` (the `sg-bench` binary): sg measured side by side with no filter and
//! with nftables, every figure a ratio taken in one run on one machine.
//!
//! ```text
//! generators  which 64-byte UDP generator is fastest and stable here (each measured)
//! kernel      in-kernel cost per packet (BPF_PROG_TEST_RUN): XDP_PASS, XDP_PASS + one hash
//!             lookup, sg established / new allowed / new dropped at 10..100k rules
//! throughput  veth between two bench namespaces: UDP pps and TCP Gbit/s with no filter,
//!             nftables (sets, one rule per SG rule) and sg (XDP or TC ingress)
//! connrate    TCP connect / request / response / close per second over the same veth: no
//!             filter, nftables, sg with the default hook (tracked and untracked policies)
//! control     compile + apply 10k rules, membership change -> packet allowed, map memory,
//!             conntrack capacity
//! nacl        a router enforcing subnets' network ACLs: decision cost at 20 and 1,000
//!             entries per list (BPF_PROG_TEST_RUN), UDP pps forwarded with and without sg
//! fleet       100 real agents (one per namespace) following one etcd: commit -> every
//!             agent's ack, -> the first packet allowed, agent CPU per change
//! report      results.json, results.md, cost.svg
//! ```
//! It owns measuring and reporting. It must not decide verdicts or write maps itself: the
//! policy goes through `compile` and `dataplane` like the agent's would. It never asserts on
//! timings (figures are reported, goals are compared in the report, never enforced).
//!
//! Safety: traffic flows only between the two namespaces the bench creates (documentation
//! addresses), every generator is bounded by a deadline and a packet budget.

pub mod connrate;
pub mod control;
pub mod fleet;
pub mod frames;
pub mod kernel;
pub mod nacl;
pub mod nft;
pub mod rawbpf;
pub mod report;
pub mod veth;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use sg_agent::policy;
use veth::{Generator, Pair};

/// What to run and how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Rule counts for the in-kernel cost.
    pub kernel_rules: Vec<usize>,
    /// Rule counts for the throughput figures.
    pub veth_rules: Vec<usize>,
    /// Counting window of one UDP flood.
    pub window: Duration,
    pub warmup: Duration,
    /// Alternating (reference, configuration) rounds per figure.
    pub rounds: usize,
    /// iperf3 seconds per TCP figure.
    pub tcp_secs: u32,
    /// BPF_PROG_TEST_RUN repeat per figure, and figures per median.
    pub repeat: u32,
    pub medians_of: usize,
    /// Sections to run (all when empty): generators, kernel, throughput, connrate, control,
    /// nacl, fleet.
    pub only: Vec<String>,
    /// Agents of the fleet section, and changes of each kind it makes.
    pub fleet_agents: usize,
    pub fleet_changes: usize,
    /// The generator (and whether the receiver gets its own CPU) when the generators section
    /// does not run or should not choose.
    pub generator: Option<(Generator, bool)>,
    /// The command line, recorded in the results.
    pub command: String,
    pub seed: u64,
}

impl Options {
    pub fn full() -> Options {
        Options {
            quick: false,
            out: PathBuf::from("target/bench"),
            kernel_rules: vec![10, 1_000, 10_000, 100_000],
            veth_rules: vec![10, 1_000, 10_000],
            window: Duration::from_secs(2),
            warmup: Duration::from_millis(400),
            rounds: 3,
            tcp_secs: 3,
            repeat: 1_000_000,
            medians_of: 5,
            only: Vec::new(),
            fleet_agents: 100,
            fleet_changes: 5,
            generator: None,
            command: "cargo xtask bench".into(),
            seed: 0x5eed,
        }
    }

    /// A short run for smoke tests: fewer sizes, short windows, fewer repeats.
    pub fn quick() -> Options {
        Options {
            quick: true,
            kernel_rules: vec![10, 1_000],
            veth_rules: vec![10, 1_000],
            window: Duration::from_millis(500),
            warmup: Duration::from_millis(200),
            rounds: 1,
            tcp_secs: 1,
            repeat: 100_000,
            medians_of: 3,
            fleet_agents: 20,
            fleet_changes: 3,
            command: "cargo xtask bench --quick".into(),
            ..Options::full()
        }
    }

    pub fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mb: u64,
    /// /proc/loadavg at start and end: other work on the machine shifts absolute figures
    /// (ratios taken in one run much less).
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let memory_mb = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mb,
            loadavg_start: read("/proc/loadavg").trim().to_string(),
            loadavg_end: String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GeneratorFigure {
    pub generator: Generator,
    pub name: &'static str,
    /// Delivered packets per second, one per round (no filter).
    pub pps: Vec<f64>,
    pub pps_median: f64,
    /// (max - min) / median over the rounds.
    pub spread: f64,
    /// Whether the receiver's NAPI work ran on its own CPU (threaded NAPI, pinned).
    pub receiver_pinned: bool,
    pub error: Option<String>,
}

/// Everything one run measured (target/bench/results.json).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub command: String,
    pub quick: bool,
    /// The headline ratios (see [`report::Summary`]), at the top level.
    #[serde(flatten)]
    pub summary: report::Summary,
    /// The issue's goals next to the figures.
    pub goals: Vec<report::Goal>,
    pub machine: Machine,
    /// Alternating rounds per throughput figure.
    pub rounds: usize,
    pub started_unix_s: u64,
    pub duration_s: f64,
    pub generators: Vec<GeneratorFigure>,
    /// The generator the throughput figures use.
    pub generator: Option<String>,
    pub receiver_pinned: bool,
    pub udp: Vec<UdpFigure>,
    pub tcp: Vec<TcpFigure>,
    pub kernel: Option<kernel::KernelCost>,
    pub control: Option<control::ControlPlane>,
    pub fleet: Option<fleet::FleetFigures>,
    pub nacl: Option<nacl::NaclFigures>,
    pub conn_rate: Option<connrate::ConnRate>,
    /// What `--ingress-hook auto` chose on the rig's receiver veth, and why (in the summary).
    #[serde(skip)]
    pub default_hook: Option<(&'static str, String)>,
    /// Things that could not be measured, and why.
    pub notes: Vec<String>,
}

/// One configuration's UDP flood figure at one rule count, paired with the unfiltered
/// reference measured in alternation with it.
#[derive(Clone, Debug, Serialize)]
pub struct UdpFigure {
    pub config: String,
    pub rules: usize,
    pub pps: f64,
    pub reference_pps: f64,
    /// Median over rounds of (configuration pps / reference pps of the same round).
    pub ratio_vs_no_filter: f64,
    /// Time to install the filter (nft -f, or compile + apply for sg), ms.
    pub install_ms: f64,
    /// sg's ingress hook ("xdp", "tc"); None for nftables.
    pub hook: Option<&'static str>,
    /// Whether `hook` is what `--ingress-hook auto` chooses on this veth.
    pub default_hook: bool,
    /// The generator of this figure and its reference (see [`Results::generator`]).
    pub generator: &'static str,
    pub receiver_pinned: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TcpFigure {
    pub config: String,
    pub rules: usize,
    pub gbps: f64,
    pub reference_gbps: f64,
    pub ratio_vs_no_filter: f64,
    pub hook: Option<&'static str>,
    pub default_hook: bool,
}

/// The ingress hook of a throughput configuration (`sg_xdp`, `sg_tc`), None for nftables.
pub fn config_hook(config: &str) -> Option<&'static str> {
    match config {
        "sg_xdp" => Some("xdp"),
        "sg_tc" => Some("tc"),
        _ => None,
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    if m > 0.0 { (max - min) / m } else { f64::NAN }
}

/// Runs the selected sections and writes the reports. Needs root.
pub fn run(opts: &Options) -> Result<Results> {
    sg_testkit::netns::require_root();
    let t0 = Instant::now();
    let mut r = Results {
        command: opts.command.clone(),
        quick: opts.quick,
        rounds: opts.rounds,
        machine: Machine::probe(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Results::default()
    };
    if opts.runs("kernel") {
        match kernel::run(opts) {
            Ok(k) => r.kernel = Some(k),
            Err(e) => r.notes.push(format!("in-kernel cost not measured: {e:#}")),
        }
    }
    let needs_rig = ["generators", "throughput", "connrate", "control"]
        .iter()
        .any(|s| opts.runs(s));
    if needs_rig {
        let mut pair = Pair::new()?;
        match connrate::default_hook(&pair) {
            Ok((h, why)) => r.default_hook = Some((connrate::hook_name(h), why)),
            Err(e) => r.notes.push(format!("default hook not known: {e:#}")),
        }
        let measured = if opts.runs("generators") {
            generators(opts, &mut pair, &mut r)
        } else {
            Vec::new()
        };
        let mut cands: Vec<(Generator, bool)> = opts.generator.into_iter().collect();
        cands.extend(measured);
        if cands.is_empty() {
            cands.push((Generator::LiveFrames, false));
        }
        let (g, pinned) = cands[0];
        r.generator = Some(g.name().to_string());
        r.receiver_pinned = pinned;
        if opts.runs("throughput") {
            throughput(opts, &mut pair, &cands, &mut r)?;
        }
        if opts.runs("connrate") {
            match connrate::run(opts, &mut pair) {
                Ok(c) => r.conn_rate = Some(c),
                Err(e) => r.notes.push(format!("connection rate not measured: {e:#}")),
            }
        }
        if opts.runs("control") {
            match control::run(opts, &pair, sg_agent::dataplane::IngressHook::Tc) {
                Ok(c) => r.control = Some(c),
                Err(e) => r.notes.push(format!("control plane not measured: {e:#}")),
            }
        }
    }
    if opts.runs("nacl") {
        match nacl::run(opts) {
            Ok(n) => r.nacl = Some(n),
            Err(e) => r.notes.push(format!("network ACLs not measured: {e:#}")),
        }
    }
    if opts.runs("fleet") {
        match fleet::run(opts) {
            Ok(f) => r.fleet = Some(f),
            Err(e) => r
                .notes
                .push(format!("fleet convergence not measured: {e:#}")),
        }
    }
    r.machine.loadavg_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    r.duration_s = t0.elapsed().as_secs_f64();
    r.summary = report::summarize(&r);
    r.goals = report::goals(&r);
    report::write(&opts.out, &r)?;
    Ok(r)
}

/// Measures every generator without a filter, with the receiver's work on the generator's
/// CPU and on its own; returns the working (generator, receiver pinned) pairs, best first:
/// stable ones (rounds within 25 % of their median) by speed, then the others by speed.
fn generators(opts: &Options, pair: &mut Pair, r: &mut Results) -> Vec<(Generator, bool)> {
    let rounds = opts.rounds.max(2);
    for pinned in [false, true] {
        if let Err(e) = pair.set_receiver_pinned(pinned) {
            r.notes.push(format!("receiver pinned={pinned}: {e:#}"));
            continue;
        }
        for g in Generator::ALL {
            let mut pps = Vec::new();
            let mut error = None;
            for _ in 0..rounds {
                match pair.flood(g, opts.warmup, opts.window) {
                    Ok(x) => pps.push(x),
                    Err(e) => {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            eprintln!(
                "generator {} (receiver pinned: {pinned}): {pps:.0?} {}",
                g.name(),
                error.as_deref().unwrap_or("")
            );
            r.generators.push(GeneratorFigure {
                generator: g,
                name: g.name(),
                pps_median: median(&pps),
                spread: spread(&pps),
                pps,
                receiver_pinned: pinned,
                error,
            });
        }
    }
    let mut ok: Vec<&GeneratorFigure> = r
        .generators
        .iter()
        .filter(|f| f.error.is_none() && f.pps_median > 0.0)
        .collect();
    ok.sort_by(|a, b| {
        (b.spread < 0.25)
            .cmp(&(a.spread < 0.25))
            .then(b.pps_median.total_cmp(&a.pps_median))
    });
    ok.iter()
        .map(|f| (f.generator, f.receiver_pinned))
        .collect()
}

/// UDP and TCP figures for every configuration and rule count, each paired with the
/// unfiltered reference in alternation.
fn throughput(
    opts: &Options,
    pair: &mut Pair,
    cands: &[(Generator, bool)],
    r: &mut Results,
) -> Result<()> {
    pair.check_filter("no filter", false)?;
    for &n in &opts.veth_rules {
        let policy = workload::policy(n, opts.seed);
        for style in [nft::Style::Sets, nft::Style::PerRule] {
            let text = nft::ruleset(&policy, workload::RECEIVER_IFACE, &pair.receiver_dev, style)?;
            let took = pair.nft_apply(&text)?;
            pair.check_filter(&format!("{} at {n} rules", style.name()), true)?;
            pair.nft_flush()?;
            let mut toggle = |pair: &mut Pair, on: bool| -> Result<()> {
                if on {
                    pair.nft_apply(&text).map(|_| ())
                } else {
                    pair.nft_flush()
                }
            };
            paired(opts, pair, cands, style.name(), n, ms(took), &mut toggle, r)?;
        }
        match sg_figures(opts, pair, cands, &policy, n, r) {
            Ok(()) => {}
            Err(e) => r.notes.push(format!("sg at {n} rules not measured: {e:#}")),
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sg figures at one rule count: the policy compiled and applied once, then attached with
/// XDP (native) or TC ingress (TC egress in both) in alternation with no filter.
fn sg_figures(
    opts: &Options,
    pair: &mut Pair,
    cands: &[(Generator, bool)],
    policy: &policy::Policy,
    n: usize,
    r: &mut Results,
) -> Result<()> {
    use sg_agent::dataplane::{Dataplane, IngressHook, LoadOptions, XdpMode};
    let t0 = Instant::now();
    let image = kernel::compile_first(policy, pair.receiver_ifindex)?;
    let compile = t0.elapsed();
    let mut dp = Dataplane::load(LoadOptions {
        capacities: kernel::capacities_for(&image, n, 0),
        ..LoadOptions::default()
    })?;
    let t1 = Instant::now();
    dp.apply(&image)?;
    let install = compile + t1.elapsed();
    for (name, hook) in [
        ("sg_xdp", IngressHook::Xdp(XdpMode::Native)),
        ("sg_tc", IngressHook::Tc),
    ] {
        let dev = pair.receiver_dev.clone();
        let mut toggle = |pair: &mut Pair, on: bool| -> Result<()> {
            let ns = &pair.receiver;
            if on {
                let rep = ns.enter(|| dp.attach(&dev, hook))??;
                if !rep.notes.is_empty() {
                    anyhow::bail!("{name}: attach fell back: {:?}", rep.notes);
                }
                Ok(())
            } else {
                ns.enter(|| dp.detach(&dev))?
            }
        };
        toggle(pair, true)?;
        pair.check_filter(&format!("{name} at {n} rules"), true)?;
        toggle(pair, false)?;
        paired(opts, pair, cands, name, n, ms(install), &mut toggle, r)?;
    }
    Ok(())
}

/// Alternates (configuration, reference) rounds: the filter on, UDP flood and TCP stream, the
/// filter off, the same again; slow drifts of the machine hit both alike.
#[expect(clippy::too_many_arguments, reason = "each call site's loop state")]
fn paired(
    opts: &Options,
    pair: &mut Pair,
    cands: &[(Generator, bool)],
    name: &str,
    n: usize,
    install_ms: f64,
    toggle: &mut dyn FnMut(&mut Pair, bool) -> Result<()>,
    r: &mut Results,
) -> Result<()> {
    let (mut vals, mut refs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tvals, mut trefs, mut tratios) = (Vec::new(), Vec::new(), Vec::new());
    // The preferred generator, unless it cannot drive this configuration (seen: trafgen with
    // the receiver on its own CPU delivers nothing through sg's XDP on veth); the reference
    // rounds always use the same generator as their configuration rounds.
    let mut chosen = None;
    let mut failures = Vec::new();
    for &(g, pinned) in cands {
        pair.set_receiver_pinned(pinned)?;
        toggle(pair, true)?;
        let v = pair.flood(g, opts.warmup, opts.window);
        toggle(pair, false)?;
        match v {
            Ok(v) if v > 0.0 => {
                chosen = Some((g, pinned));
                break;
            }
            Ok(_) => failures.push(format!("{} delivered nothing", g.name())),
            Err(e) => failures.push(format!("{}: {e:#}", g.name())),
        }
    }
    let Some((g, pinned)) = chosen else {
        anyhow::bail!("{name}: no generator could drive it: {failures:?}");
    };
    if !failures.is_empty() {
        r.notes.push(format!(
            "{name} at {n} rules measured with {} (receiver on its own CPU: {pinned}): {}",
            g.name(),
            failures.join("; ")
        ));
    }
    for _ in 0..opts.rounds {
        toggle(pair, true)?;
        let on = pair
            .flood(g, opts.warmup, opts.window)
            .and_then(|v| Ok((v, pair.tcp_stream(opts.tcp_secs)?)));
        toggle(pair, false)?;
        let (v, tv) = on?;
        let rf = pair.flood(g, opts.warmup, opts.window)?;
        let trf = pair.tcp_stream(opts.tcp_secs)?;
        ratios.push(v / rf);
        tratios.push(tv / trf);
        vals.push(v);
        refs.push(rf);
        tvals.push(tv);
        trefs.push(trf);
    }
    eprintln!("{name} at {n} rules: udp {vals:.0?} vs {refs:.0?}; tcp {tvals:.2?} vs {trefs:.2?}");
    let hook = config_hook(name);
    let default_hook = hook.is_some() && hook == r.default_hook.as_ref().map(|d| d.0);
    r.udp.push(UdpFigure {
        config: name.to_string(),
        rules: n,
        pps: median(&vals),
        reference_pps: median(&refs),
        ratio_vs_no_filter: median(&ratios),
        install_ms,
        generator: g.name(),
        receiver_pinned: pinned,
        hook,
        default_hook,
    });
    r.tcp.push(TcpFigure {
        config: name.to_string(),
        rules: n,
        gbps: median(&tvals),
        reference_gbps: median(&trefs),
        ratio_vs_no_filter: median(&tratios),
        hook,
        default_hook,
    });
    Ok(())
}
