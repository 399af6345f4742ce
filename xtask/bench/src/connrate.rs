//! The connection rate (issue 19 item 4): TCP connect, request, response and close per second
//! between the two namespaces of the veth rig ([`Pair`]), with no filter, with nftables and
//! with sg on the hook `--ingress-hook auto` chooses for the receiver's veth, for a tracked
//! and an untracked (C4) policy.
//!
//! Load: [`CLIENTS`] client threads in the sender's namespace (pinned to the generator's CPU),
//! each a loop of connect, a [`REQUEST`]-byte request, a [`RESPONSE`]-byte response, close;
//! one server thread per client in the receiver's namespace (pinned to the receiver's CPU),
//! each on its own port of [`PORTS`]. Bounded: every loop ends at a deadline and after a
//! connection budget; threads only, nothing outlives a measurement.
//!
//! Ports and TIME_WAIT: the client closes first (FIN, the usual graceful close), so its
//! sockets go to TIME_WAIT. The sender's namespace gets `net.ipv4.tcp_tw_reuse = 1` (connect
//! may reuse a port whose TIME_WAIT is older than 1 s) and `ip_local_port_range 1024 65535`.
//! A port is reused for the same destination only after the kernel walked the range for that
//! destination; one destination port per client multiplies that cycle by [`CLIENTS`], so
//! within one round (a few seconds) a 5-tuple is not reused and every connection is a new
//! flow for sg (the figure `sg_flows_created_per_conn` checks it).
//!
//! sg's conntrack: nothing sweeps it here (no agent), and closed flows linger for their
//! closing timeout (30 s, `Timeouts::AWS_DEFAULT`). Both tables are sized to the connection
//! budget of a round, so they cannot fill, and are flushed after every sg round (sg detached);
//! drops because a table was full (`DropCtFull`) are counted anyway.
//!
//! Rounds alternate like the throughput figures: the configuration on, a measurement, off,
//! the reference (no filter); the ratio is the median of the per-round ratios. There are
//! 2n + 1 rounds of half the throughput window ([`section_options`]).

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use sg_common::Reason;

use super::veth::{GENERATOR_CPU, Pair, RECEIVER_CPU, pin};
use super::workload::{DENIED_PORT, RECEIVER_IFACE, RECEIVER_V4, SENDER_V4};
use super::{Options, kernel, median, nft};
use sg_agent::dataplane::{
    Dataplane, DriverInfo, HookChoice, HookPlan, IngressHook, LoadOptions, driver_info,
};
use sg_agent::policy::{
    Direction, Group, GroupId, Interface, Origin, Peer, Policy, PortRange, Protocol, Rule, RuleId,
    Timeouts,
};

/// Concurrent client connections (one thread each), and server threads.
pub const CLIENTS: usize = 4;
/// The servers' ports, one per client: inside the bench's reserved band (no random rule).
pub const PORTS: PortRange = PortRange {
    from: 8080,
    to: 8080 + CLIENTS as u16 - 1,
};
pub const REQUEST: usize = 64;
pub const RESPONSE: usize = 256;
/// Far above what a machine of this class completes per second: the connection budget of a
/// measurement is this times its duration, and sg's tables are sized to it.
const MAX_CONN_PER_S: f64 = 200_000.0;
/// Connect, read and write timeouts of one connection: a dropped packet costs a retransmit
/// (1 s), after which the connection counts as failed.
const IO_TIMEOUT: Duration = Duration::from_millis(1500);
/// What the client's TIME_WAIT handling is, for the report.
pub const CLOSE: &str = "client closes first (FIN); sender namespace: net.ipv4.tcp_tw_reuse=1, \
                         ip_local_port_range 1024 65535; one server port per client";

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnRate {
    pub clients: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub window_s: f64,
    pub rounds: usize,
    pub close: &'static str,
    /// What `--ingress-hook auto` chose on the receiver's veth, and why.
    pub default_hook: String,
    pub default_hook_reason: String,
    /// sg's conntrack capacities (confirmed, unconfirmed) in this section.
    pub ct_capacity: (u32, u32),
    pub figures: Vec<ConnRateFigure>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnRateFigure {
    /// "nft" (ct state established,related accept, then the rule) or "sg_default".
    pub config: String,
    /// "tracked" (the rule from a /24) or "untracked" (C4: 0.0.0.0/0, egress all).
    pub policy: &'static str,
    /// sg's ingress hook ("tc", "xdp"); None for nftables.
    pub hook: Option<&'static str>,
    pub conns_per_s: f64,
    pub reference_conns_per_s: f64,
    /// Median over rounds of (configuration / reference of the same round).
    pub ratio_vs_no_filter: f64,
    pub ratios: Vec<f64>,
    /// Connections that failed (timeouts, resets), configuration and reference rounds.
    pub failed: u64,
    pub reference_failed: u64,
    /// sg: new conntrack entries per connection made (1 tracked, 0 untracked).
    pub sg_flows_created_per_conn: Option<f64>,
    /// sg: most confirmed entries at the end of a round (before the flush).
    pub sg_ct_peak_entries: Option<u64>,
    /// sg: packets dropped because a conntrack table was full (DropCtFull), all rounds.
    pub sg_ct_full_drops: Option<u64>,
}

/// The hook `--ingress-hook auto` gives the receiver's veth (the agent's own decision).
pub fn default_hook(pair: &Pair) -> Result<(IngressHook, String)> {
    let dev = pair.receiver_dev.clone();
    let (hook, why) = pair.receiver.enter(move || {
        HookPlan::default().choose(&dev, || -> Option<DriverInfo> { driver_info(&dev) })
    })?;
    Ok((hook, why.unwrap_or_default()))
}

pub fn hook_name(h: IngressHook) -> &'static str {
    HookChoice::Fixed(h).name()
}

/// One group on the receiver: TCP [`PORTS`] from `peer`, egress all to 0.0.0.0/0.
pub fn policy(peer: IpNet) -> Policy {
    let gid = GroupId("sg-0000000000000c0a1".into());
    let rule = |n: u8, direction, protocol, peer| Rule {
        id: RuleId(format!("sgr-00000000000000c0{n}")),
        group: gid.clone(),
        direction,
        protocol,
        peer: Peer::Cidr(peer),
        description: None,
        origin: Origin::default(),
    };
    let world = IpNet::V4(Ipv4Net::default());
    let mut p = Policy::default();
    p.groups.insert(
        gid.clone(),
        Group {
            id: gid.clone(),
            name: "connrate".into(),
            description: String::new(),
            ingress: vec![rule(1, Direction::Ingress, Protocol::Tcp(PORTS), peer)],
            egress: vec![rule(2, Direction::Egress, Protocol::All, world)],
            origin: Origin::default(),
        },
    );
    p.interfaces.push(Interface {
        name: RECEIVER_IFACE.to_string(),
        instance: "i-receiver".into(),
        device: None,
        addresses: vec![RECEIVER_V4.into()],
        groups: vec![gid],
        timeouts: Timeouts::AWS_DEFAULT,
        origin: Origin::default(),
    });
    p
}

/// The two policies: tracked (the sender's /24) and untracked (C4).
pub fn policies() -> [(&'static str, Policy); 2] {
    let net24 = Ipv4Net::new(SENDER_V4, 24).expect("/24").trunc();
    [
        ("tracked", policy(IpNet::V4(net24))),
        ("untracked", policy(IpNet::V4(Ipv4Net::default()))),
    ]
}

/// Runs the section on the rig. Needs root.
pub fn run(opts: &Options, pair: &mut Pair) -> Result<ConnRate> {
    let opts = &section_options(opts);
    // The throughput section may have left the receiver's NAPI on its own thread.
    pair.set_receiver_pinned(false)?;
    pair.sender.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    pair.sender
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let (hook, why) = default_hook(pair)?;
    let budget = conn_budget(opts);
    let ct = (budget as u32)
        .next_power_of_two()
        .max(sg_agent::dataplane::Capacities::default().ct);
    let mut out = ConnRate {
        clients: CLIENTS,
        request_bytes: REQUEST,
        response_bytes: RESPONSE,
        window_s: opts.window.as_secs_f64(),
        rounds: opts.rounds,
        close: CLOSE,
        default_hook: hook_name(hook).into(),
        default_hook_reason: why,
        ct_capacity: (ct, ct),
        ..ConnRate::default()
    };
    if !pair.tcp_reaches(PORTS.from)? || !pair.tcp_reaches(DENIED_PORT)? {
        bail!(
            "without a filter, TCP {} and {DENIED_PORT} must connect",
            PORTS.from
        );
    }
    for (name, policy) in policies() {
        if let Err(e) = nft_figure(opts, pair, name, &policy, &mut out) {
            out.errors.push(format!("nft, {name}: {e:#}"));
        }
        if let Err(e) = sg_figure(opts, pair, name, &policy, hook, ct, &mut out) {
            out.errors.push(format!("sg, {name}: {e:#}"));
        }
    }
    Ok(out)
}

/// More, shorter rounds than the throughput figures (2n + 1 of half the window): a connection
/// loop is at its pace within milliseconds, and on a shared machine the load moves on the
/// scale of seconds, so finer alternation pairs each measurement with a closer reference.
fn section_options(opts: &Options) -> Options {
    Options {
        rounds: 2 * opts.rounds + 1,
        window: opts.window / 2,
        warmup: Duration::from_millis(100),
        ..opts.clone()
    }
}

/// Connections a measurement may make in all (see [`MAX_CONN_PER_S`]).
fn conn_budget(opts: &Options) -> u64 {
    (measure_span(opts).as_secs_f64() * MAX_CONN_PER_S) as u64
}

fn measure_span(opts: &Options) -> Duration {
    opts.warmup + opts.window + Duration::from_millis(50)
}

/// nftables (one rule per SG rule after `ct state established,related accept`).
fn nft_figure(
    opts: &Options,
    pair: &mut Pair,
    name: &'static str,
    policy: &Policy,
    out: &mut ConnRate,
) -> Result<()> {
    let text = nft::ruleset(
        policy,
        RECEIVER_IFACE,
        &pair.receiver_dev,
        nft::Style::PerRule,
    )?;
    pair.nft_apply(&text)?;
    let checked = check_filter(pair);
    pair.nft_flush()?;
    checked.context("nftables")?;
    let mut toggle = |pair: &mut Pair, on: bool| -> Result<()> {
        if on {
            pair.nft_apply(&text).map(|_| ())
        } else {
            pair.nft_flush()
        }
    };
    let f = rounds(opts, pair, &mut toggle)?;
    out.figures.push(f.figure("nft", name, None));
    Ok(())
}

/// sg with the default hook; conntrack flushed after every configuration round.
fn sg_figure(
    opts: &Options,
    pair: &mut Pair,
    name: &'static str,
    policy: &Policy,
    hook: IngressHook,
    ct: u32,
    out: &mut ConnRate,
) -> Result<()> {
    let image = kernel::compile_first(policy, pair.receiver_ifindex)?;
    let mut caps = kernel::capacities_for(&image, policy.all_rules().count(), ct);
    caps.ct = ct;
    let mut dp = Dataplane::load(LoadOptions {
        capacities: caps,
        ..LoadOptions::default()
    })?;
    dp.apply(&image)?;
    let dev = pair.receiver_dev.clone();
    // Read after the rounds, written by the toggle: cells, not borrows.
    let (created, peak) = (Cell::new(0u64), Cell::new(0u64));
    let mut toggle = |pair: &mut Pair, on: bool| -> Result<()> {
        let ns = &pair.receiver;
        if on {
            let rep = ns.enter(|| dp.attach(&dev, hook))??;
            if !rep.notes.is_empty() {
                bail!("attach fell back: {:?}", rep.notes);
            }
            return Ok(());
        }
        ns.enter(|| dp.detach(&dev))??;
        let s = dp.ct_stats()?;
        peak.set(peak.get().max(s.ct_count));
        created.set(s.new_inserts);
        dp.flush_conntrack()?;
        Ok(())
    };
    toggle(pair, true)?;
    let checked = check_filter(pair);
    toggle(pair, false)?;
    checked.context("sg")?;
    let created_before = created.get();
    let f = rounds(opts, pair, &mut toggle)?;
    let (flows, peak) = (created.get() - created_before, peak.get());
    let full = dp
        .reason_counters()?
        .get(&Reason::DropCtFull)
        .copied()
        .unwrap_or(0)
        + dp.ct_stats()?.exceeded;
    let mut fig = f.figure("sg_default", name, Some(hook_name(hook)));
    fig.sg_flows_created_per_conn = Some(flows as f64 / f.made.max(1) as f64);
    fig.sg_ct_peak_entries = Some(peak);
    fig.sg_ct_full_drops = Some(full);
    eprintln!(
        "connrate sg_default ({}) {name}: {flows} flows created for {} connections, peak {peak} \
         entries, {full} dropped (table full)",
        hook_name(hook),
        f.made
    );
    out.figures.push(fig);
    Ok(())
}

/// The allowed ports connect and the denied one does not.
fn check_filter(pair: &Pair) -> Result<()> {
    for p in [PORTS.from, PORTS.to] {
        if !pair.tcp_reaches(p)? {
            bail!("TCP {p} (allowed) did not connect");
        }
    }
    if pair.tcp_reaches(DENIED_PORT)? {
        bail!("TCP {DENIED_PORT} (denied) connected");
    }
    Ok(())
}

/// The rounds of one configuration, collected.
#[derive(Default)]
struct Rounds {
    vals: Vec<f64>,
    refs: Vec<f64>,
    failed: u64,
    reference_failed: u64,
    /// Connections attempted in configuration rounds (warm-up included).
    made: u64,
}

impl Rounds {
    fn figure(
        &self,
        config: &str,
        policy: &'static str,
        hook: Option<&'static str>,
    ) -> ConnRateFigure {
        let ratios: Vec<f64> = self
            .vals
            .iter()
            .zip(&self.refs)
            .map(|(v, r)| v / r)
            .collect();
        ConnRateFigure {
            config: config.into(),
            policy,
            hook,
            conns_per_s: median(&self.vals),
            reference_conns_per_s: median(&self.refs),
            ratio_vs_no_filter: median(&ratios),
            ratios,
            failed: self.failed,
            reference_failed: self.reference_failed,
            sg_flows_created_per_conn: None,
            sg_ct_peak_entries: None,
            sg_ct_full_drops: None,
        }
    }
}

fn rounds(
    opts: &Options,
    pair: &mut Pair,
    toggle: &mut dyn FnMut(&mut Pair, bool) -> Result<()>,
) -> Result<Rounds> {
    let mut r = Rounds::default();
    for _ in 0..opts.rounds {
        toggle(pair, true)?;
        let on = measure(opts, pair);
        toggle(pair, false)?;
        let on = on?;
        let rf = measure(opts, pair)?;
        r.vals.push(on.rate);
        r.refs.push(rf.rate);
        r.failed += on.failed;
        r.reference_failed += rf.failed;
        r.made += on.made;
    }
    eprintln!("connrate: {:.0?} vs {:.0?} conn/s", r.vals, r.refs);
    Ok(r)
}

struct Sample {
    /// Connections completed per second over the window.
    rate: f64,
    failed: u64,
    /// Connections attempted in all.
    made: u64,
}

/// Servers and clients for warm-up + window; connections completed per second in the window.
fn measure(opts: &Options, pair: &Pair) -> Result<Sample> {
    let deadline = Instant::now() + measure_span(opts);
    let budget = conn_budget(opts) / CLIENTS as u64;
    let listeners = pair.receiver.enter(|| -> Result<Vec<TcpListener>> {
        (PORTS.from..=PORTS.to)
            .map(|p| {
                let l = TcpListener::bind(SocketAddrV4::new(RECEIVER_V4, p))?;
                accept_timeout(&l, Duration::from_millis(50))?;
                Ok(l)
            })
            .collect()
    })??;
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let made = AtomicU64::new(0);
    let counters = (&done, &failed, &made);
    // Servers outlive the clients (a connection begun just before the deadline is answered),
    // and stop soon after the last one.
    let clients_left = AtomicUsize::new(CLIENTS);
    std::thread::scope(|s| -> Result<Sample> {
        let mut handles = Vec::new();
        for l in &listeners {
            let clients_left = &clients_left;
            handles.push(s.spawn(move || serve(l, clients_left, deadline + 2 * IO_TIMEOUT)));
        }
        for port in PORTS.from..=PORTS.to {
            let (sender, clients_left) = (&pair.sender, &clients_left);
            handles.push(s.spawn(move || {
                let r = sender.enter(|| client(port, deadline, budget, counters));
                clients_left.fetch_sub(1, Ordering::Relaxed);
                r?
            }));
        }
        std::thread::sleep(opts.warmup);
        let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(opts.window);
        let (c2, t2) = (done.load(Ordering::Relaxed), Instant::now());
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a connrate thread panicked"))??;
        }
        Ok(Sample {
            rate: (c2 - c1) as f64 / (t2 - t1).as_secs_f64(),
            failed: failed.load(Ordering::Relaxed),
            made: made.load(Ordering::Relaxed),
        })
    })
}

/// SO_RCVTIMEO on a listener: a blocking accept returns EAGAIN after `t`, so server loops
/// see their deadline without being woken.
fn accept_timeout(l: &TcpListener, t: Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads size_of::<timeval>() bytes from `tv`, a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One server: accept, read the request, answer, read until the client's close, close; until
/// every client is done (or the hard deadline).
fn serve(l: &TcpListener, clients_left: &AtomicUsize, deadline: Instant) -> Result<()> {
    pin(0, RECEIVER_CPU)?;
    let mut req = [0u8; REQUEST];
    let resp = [b'r'; RESPONSE];
    while clients_left.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        let mut c = match l.accept() {
            Ok((c, _)) => c,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("accept"),
        };
        // A failed exchange is the client's to count.
        let _ = (|| -> std::io::Result<()> {
            c.set_read_timeout(Some(IO_TIMEOUT))?;
            c.set_write_timeout(Some(IO_TIMEOUT))?;
            c.read_exact(&mut req)?;
            c.write_all(&resp)?;
            let mut rest = [0u8; 16];
            while c.read(&mut rest)? > 0 {}
            Ok(())
        })();
    }
    Ok(())
}

/// One client: connections to `port` until the deadline or the budget.
fn client(
    port: u16,
    deadline: Instant,
    budget: u64,
    (done, failed, made): (&AtomicU64, &AtomicU64, &AtomicU64),
) -> Result<()> {
    pin(0, GENERATOR_CPU)?;
    let to: SocketAddr = SocketAddrV4::new(RECEIVER_V4, port).into();
    let req = [b'q'; REQUEST];
    let mut resp = [0u8; RESPONSE];
    let mut n = 0u64;
    while n < budget && Instant::now() < deadline {
        n += 1;
        made.fetch_add(1, Ordering::Relaxed);
        match exchange(&to, &req, &mut resp) {
            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}

/// One connection: connect, request, response, close.
fn exchange(to: &SocketAddr, req: &[u8], resp: &mut [u8]) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(to, IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.write_all(req)?;
    c.read_exact(resp)?;
    // Dropped: close(), a FIN first; this side keeps the TIME_WAIT.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_policies_compile_and_translate_to_one_nftables_rule_per_sg_rule() {
        for (name, p) in policies() {
            assert_eq!(p.all_rules().count(), 2, "{name}");
            kernel::compile_for(&p, 7, 1, &Default::default(), 1 << 20)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let text = nft::ruleset(&p, RECEIVER_IFACE, "veth0", nft::Style::PerRule).unwrap();
            assert!(
                text.contains("ct state established,related accept"),
                "{text}"
            );
            assert!(text.contains("8080-8083"), "{name}: {text}");
        }
        let [(_, tracked), (_, untracked)] = policies();
        let peer = |p: &Policy| p.all_rules().next().map(|r| r.peer.clone());
        assert_eq!(
            peer(&tracked),
            Some(Peer::Cidr("198.51.100.0/24".parse().unwrap()))
        );
        assert_eq!(
            peer(&untracked),
            Some(Peer::Cidr("0.0.0.0/0".parse().unwrap()))
        );
    }
}
