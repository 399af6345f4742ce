//! The throughput rig: two namespaces created by the bench (sender and receiver) joined by one
//! veth pair, a 64-byte UDP flood from the sender, iperf3 TCP streams, and the receiver's
//! packet count. Filters (nftables, sg) are installed on the receiver by the caller; this
//! module knows nothing about them.
//!
//! What is counted: UDP datagrams that reached the receiver's UDP layer (`InDatagrams +
//! InErrors` of the receiver namespace's /proc/net/snmp), i.e. everything the filter let
//! through. The flood goes to a socket that is never read, so the receiver's cost stops at the
//! socket queue (its drops are `RcvbufErrors`, counted in `InErrors`).
//!
//! Counting window: a generator runs for warm-up + window + a margin; the counters are read at
//! the start and the end of the window, so start-up costs never enter a figure.
//!
//! Bounds: every generator stops at a deadline and after a packet budget; external tools run
//! under `timeout --foreground -s KILL`.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use super::frames::{self, Ends};
use super::rawbpf::Prog;
use super::workload::{DENIED_PORT, RECEIVER_V4, SENDER_V4, TCP_ALLOWED, UDP_ALLOWED};
use sg_testkit::netns::{Netns, veth};

/// The CPU the generator runs on; the receiver's softirq work follows it unless
/// [`Pair::set_receiver_pinned`] moved it to its own kernel thread on [`RECEIVER_CPU`].
pub const GENERATOR_CPU: usize = 0;
pub const RECEIVER_CPU: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// BPF_PROG_TEST_RUN with live frames of an XDP program redirecting to the sender's veth.
    LiveFrames,
    /// netsniff-ng's trafgen (PF_PACKET ring), one CPU.
    Trafgen,
    /// A Rust loop of sendmmsg(64 datagrams) on a connected UDP socket.
    Sendmmsg,
    /// iperf3 -u -b 0 -l 22.
    Iperf3Udp,
}

impl Generator {
    pub const ALL: [Generator; 4] = [
        Generator::LiveFrames,
        Generator::Trafgen,
        Generator::Sendmmsg,
        Generator::Iperf3Udp,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Generator::LiveFrames => "xdp_live_frames",
            Generator::Trafgen => "trafgen",
            Generator::Sendmmsg => "sendmmsg",
            Generator::Iperf3Udp => "iperf3_udp",
        }
    }
}

/// Two namespaces and the veth between them; everything goes away on drop.
pub struct Pair {
    // Field order is drop order: the helper process dies before its namespace goes.
    counter_proc: Child,
    sink: Option<UdpSocket>,
    pub sender_dev: String,
    pub receiver_dev: String,
    pub sender_ifindex: u32,
    pub receiver_ifindex: u32,
    pub ends: Ends,
    pub receiver: Netns,
    pub sender: Netns,
    receiver_pinned: bool,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.counter_proc.kill();
        let _ = self.counter_proc.wait();
    }
}

fn read_sys(ns: &Netns, path: &str) -> Result<String> {
    ns.run_ok(&["cat", path], Duration::from_secs(5))
}

/// The receiver's side of a flood: a process that keeps its namespace's counters readable
/// (`counter_proc`) and the UDP socket the flood goes to, never read.
pub fn receiver_sink(receiver: &Netns, addr: Ipv4Addr) -> Result<(Child, UdpSocket)> {
    let counter_proc = receiver
        .cmd("sleep")
        .arg("100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("spawn the receiver's counter process")?;
    let sink = receiver
        .enter(|| UdpSocket::bind(SocketAddrV4::new(addr, UDP_ALLOWED)))?
        .context("bind the receiver's UDP sink")?;
    Ok((counter_proc, sink))
}

/// A device's MAC address in `ns` (the frames the generators build carry it).
pub fn mac(ns: &Netns, dev: &str) -> Result<String> {
    Ok(read_sys(ns, &format!("/sys/class/net/{dev}/address"))?
        .trim()
        .to_string())
}

impl Pair {
    /// Sender 198.51.100.1 and receiver 198.51.100.2 on one veth, static neighbours (no ARP
    /// during a run), GRO on the receiver's veth: it gives the veth a NAPI context, without
    /// which frames redirected by XDP into it are dropped silently (docs/toolchain.md).
    pub fn new() -> Result<Pair> {
        let sender = Netns::new("bsnd")?;
        let receiver = Netns::new("brcv")?;
        let pid = std::process::id() % 1_000_000;
        let sender_dev = format!("b{pid}g");
        let receiver_dev = format!("b{pid}r");
        veth(&sender, &sender_dev, &receiver, &receiver_dev)?;
        sender.ip(&[
            "addr",
            "add",
            &format!("{SENDER_V4}/24"),
            "dev",
            &sender_dev,
        ])?;
        receiver.ip(&[
            "addr",
            "add",
            &format!("{RECEIVER_V4}/24"),
            "dev",
            &receiver_dev,
        ])?;
        let sender_mac = mac(&sender, &sender_dev)?;
        let receiver_mac = mac(&receiver, &receiver_dev)?;
        sender.ip(&[
            "neigh",
            "replace",
            &RECEIVER_V4.to_string(),
            "lladdr",
            &receiver_mac,
            "dev",
            &sender_dev,
            "nud",
            "permanent",
        ])?;
        receiver.ip(&[
            "neigh",
            "replace",
            &SENDER_V4.to_string(),
            "lladdr",
            &sender_mac,
            "dev",
            &receiver_dev,
            "nud",
            "permanent",
        ])?;
        receiver.run_ok(
            &["ethtool", "-K", &receiver_dev, "gro", "on"],
            Duration::from_secs(5),
        )?;
        let ends = Ends {
            src_mac: frames::parse_mac(&sender_mac).context("sender MAC")?,
            dst_mac: frames::parse_mac(&receiver_mac).context("receiver MAC")?,
            src: SENDER_V4,
            dst: RECEIVER_V4,
        };
        let (counter_proc, sink) = receiver_sink(&receiver, RECEIVER_V4)?;
        let sender_ifindex = sender.ifindex(&sender_dev)?;
        let receiver_ifindex = receiver.ifindex(&receiver_dev)?;
        Ok(Pair {
            counter_proc,
            sink: Some(sink),
            sender_dev,
            receiver_dev,
            sender_ifindex,
            receiver_ifindex,
            ends,
            receiver,
            sender,
            receiver_pinned: false,
        })
    }

    /// `true`: moves the receiver's veth NAPI processing to its own kernel thread on
    /// [`RECEIVER_CPU`], so that generator and receiver do not share a CPU. `false`: back to
    /// softirq processing on the CPU that queued the packet (the generator's).
    pub fn set_receiver_pinned(&mut self, on: bool) -> Result<()> {
        // `ip netns exec` mounts the namespace's own /sys.
        self.receiver.run_ok(
            &[
                "sh",
                "-c",
                &format!(
                    "echo {} > /sys/class/net/{}/threaded",
                    u8::from(on),
                    self.receiver_dev
                ),
            ],
            Duration::from_secs(5),
        )?;
        self.receiver_pinned = false;
        if !on {
            return Ok(());
        }
        let prefix = format!("napi/{}-", self.receiver_dev);
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                && comm.trim().starts_with(&prefix)
            {
                pids.push(pid);
            }
        }
        if pids.is_empty() {
            bail!("no NAPI thread {prefix}* after enabling threaded NAPI");
        }
        for pid in pids {
            pin(pid, RECEIVER_CPU)?;
        }
        self.receiver_pinned = true;
        Ok(())
    }

    pub fn receiver_pinned(&self) -> bool {
        self.receiver_pinned
    }

    /// UDP datagrams that reached the receiver's UDP layer so far.
    pub fn delivered(&self) -> Result<u64> {
        let path = format!("/proc/{}/net/snmp", self.counter_proc.id());
        let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        udp_delivered(&s)
    }

    /// Floods UDP 198.51.100.1 -> 198.51.100.2:[`UDP_ALLOWED`] with `g`; returns delivered
    /// packets per second over the window.
    pub fn flood(&self, g: Generator, warmup: Duration, window: Duration) -> Result<f64> {
        let total = warmup + window + Duration::from_millis(200);
        let measure = || -> Result<f64> {
            std::thread::sleep(warmup);
            let (c1, t1) = (self.delivered()?, Instant::now());
            std::thread::sleep(window);
            let (c2, t2) = (self.delivered()?, Instant::now());
            Ok((c2 - c1) as f64 / (t2 - t1).as_secs_f64())
        };
        match g {
            Generator::LiveFrames | Generator::Sendmmsg => flood_from(
                &self.sender,
                self.sender_ifindex,
                &self.ends,
                g,
                total,
                measure,
            ),
            Generator::Trafgen => {
                // trafgen's sending worker is a forked child that outlives a killed parent:
                // its own budget ends it soon after the deadline even if the group kill fails.
                let tg_budget = (total.as_secs_f64() * 3e6) as u64;
                let cfg = trafgen_config(&frames::udp(&self.ends, 40000, UDP_ALLOWED))?;
                let secs = format!("{:.1}", total.as_secs_f64());
                let child = spawn_group(
                    self.sender
                        .cmd("timeout")
                        .args(["--foreground", "-s", "KILL", &secs])
                        .args(["taskset", "-c", &GENERATOR_CPU.to_string()])
                        .args(["trafgen", "-o", &self.sender_dev, "-i"])
                        .arg(&cfg.0)
                        .args(["-P", "1", "-Q", "-C", "-n", &tg_budget.to_string()])
                        .stderr(Stdio::null()),
                )
                .context("start trafgen (apt install netsniff-ng)")?;
                let r = measure();
                // It stops at its deadline; the guard kills what is left of its group.
                child.wait_output();
                let rate = r?;
                if rate == 0.0 {
                    bail!("trafgen delivered nothing");
                }
                Ok(rate)
            }
            Generator::Iperf3Udp => {
                // iperf3's server must own the port: the sink steps aside for the run.
                let secs = total.as_secs_f64();
                let port = (UDP_ALLOWED + 1000).to_string();
                let _server = spawn_group(
                    self.receiver
                        .cmd("timeout")
                        .args(["--foreground", "-s", "KILL", &format!("{:.1}", secs + 5.0)])
                        .args(["iperf3", "-s", "-1", "-p", &port, "-A"])
                        .arg(RECEIVER_CPU.to_string())
                        .stderr(Stdio::null()),
                )
                .context("start iperf3 server")?;
                std::thread::sleep(Duration::from_millis(300));
                let client = spawn_group(
                    self.sender
                        .cmd("timeout")
                        .args(["--foreground", "-s", "KILL", &format!("{:.1}", secs + 2.0)])
                        .args(["iperf3", "-c", &RECEIVER_V4.to_string(), "-p", &port])
                        .args([
                            "-u",
                            "-b",
                            "0",
                            "-l",
                            "22",
                            "-t",
                            &format!("{secs:.1}"),
                            "-A",
                        ])
                        .arg(GENERATOR_CPU.to_string())
                        .stderr(Stdio::null()),
                )
                .context("start iperf3 client")?;
                let r = measure();
                client.wait_output();
                r
            }
        }
    }

    /// One iperf3 TCP stream sender -> receiver for `secs`; Gbit/s received.
    pub fn tcp_stream(&self, secs: u32) -> Result<f64> {
        let port = TCP_ALLOWED.to_string();
        let _server = spawn_group(
            self.receiver
                .cmd("timeout")
                .args(["--foreground", "-s", "KILL", &(secs + 10).to_string()])
                .args(["iperf3", "-s", "-1", "-p", &port, "-A"])
                .arg(RECEIVER_CPU.to_string())
                .stderr(Stdio::null()),
        )
        .context("start iperf3 server")?;
        // The server needs a moment to listen; the client retries a few times.
        let mut last = String::new();
        for _ in 0..20 {
            let out = self.sender.run(
                &[
                    "iperf3",
                    "-c",
                    &RECEIVER_V4.to_string(),
                    "-p",
                    &port,
                    "-t",
                    &secs.to_string(),
                    "-J",
                    "-A",
                    &GENERATOR_CPU.to_string(),
                ],
                Duration::from_secs(u64::from(secs) + 8),
            )?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_str(&text).context("iperf3 -J output")?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    return Ok(bps / 1e9);
                }
                last = format!("no end.sum_received in: {}", v["error"]);
                // A server that was not listening yet: try again.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            last = text;
            if !last.contains("Connection refused") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 TCP run failed: {}", last.trim())
    }

    /// Does the receiver get UDP to `port` and TCP connections to `port`? Used to prove that a
    /// filter really filters before it is measured. `None` for TCP when `tcp` is false.
    pub fn reachable(&mut self, port: u16, tcp: bool) -> Result<(bool, Option<bool>)> {
        // The flood's sink owns UDP_ALLOWED; it is read here (it is never read elsewhere).
        let sink_port = port == UDP_ALLOWED;
        let sock = if sink_port {
            self.sink.take().context("sink in use")?
        } else {
            self.receiver
                .enter(|| UdpSocket::bind(SocketAddrV4::new(RECEIVER_V4, port)))??
        };
        sock.set_nonblocking(true)?;
        let mut buf = [0u8; 64];
        while sock.recv(&mut buf).is_ok() {}
        self.send_probes(SENDER_V4, port, b"sg-bench probe")?;
        let mut got = false;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            if sock.recv(&mut buf).is_ok() {
                got = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if sink_port {
            sock.set_nonblocking(false)?;
            self.sink = Some(sock);
        }
        let tcp_ok = if tcp {
            Some(self.tcp_reaches(port)?)
        } else {
            None
        };
        Ok((got, tcp_ok))
    }

    /// Does a TCP connection sender -> receiver:`port` complete (within 500 ms)?
    pub fn tcp_reaches(&self, port: u16) -> Result<bool> {
        let listener = self
            .receiver
            .enter(|| TcpListener::bind(SocketAddrV4::new(RECEIVER_V4, port)))??;
        let ok = self.sender.enter(|| {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(RECEIVER_V4, port).into(),
                Duration::from_millis(500),
            )
            .is_ok()
        })?;
        drop(listener);
        Ok(ok)
    }

    /// Reads and discards everything queued on the sink.
    pub fn drain_sink(&self) -> Result<()> {
        let sink = self.sink.as_ref().context("sink in use")?;
        sink.set_nonblocking(true)?;
        let mut buf = [0u8; 64];
        while sink.recv(&mut buf).is_ok() {}
        sink.set_nonblocking(false)?;
        Ok(())
    }

    /// Waits (at most `timeout`) for a datagram from `src` on the sink; returns when it was
    /// read.
    pub fn wait_from(&self, src: Ipv4Addr, timeout: Duration) -> Result<Instant> {
        let sink = self.sink.as_ref().context("sink in use")?;
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        sink.set_read_timeout(Some(Duration::from_millis(20)))?;
        let r = loop {
            if t0.elapsed() > timeout {
                break Err(anyhow!("no datagram from {src} within {timeout:?}"));
            }
            if let Ok((_, from)) = sink.recv_from(&mut buf)
                && from.ip() == std::net::IpAddr::V4(src)
            {
                break Ok(Instant::now());
            }
        };
        sink.set_read_timeout(None)?;
        r
    }

    /// Sends five datagrams of `payload` from `src` (an address of the sender, any port) to
    /// the receiver's `port`.
    fn send_probes(&self, src: Ipv4Addr, port: u16, payload: &[u8]) -> Result<()> {
        self.sender.enter(|| -> Result<()> {
            let s = UdpSocket::bind(SocketAddrV4::new(src, 0))?;
            for _ in 0..5 {
                s.send_to(payload, SocketAddrV4::new(RECEIVER_V4, port))?;
            }
            Ok(())
        })?
    }

    /// Sends a few datagrams from `src` (an address of the sender) to the sink; true if one
    /// arrived within `wait`.
    pub fn udp_from_reaches(&self, src: Ipv4Addr, wait: Duration) -> Result<bool> {
        self.drain_sink()?;
        self.send_probes(src, UDP_ALLOWED, b"probe")?;
        Ok(self.wait_from(src, wait).is_ok())
    }

    /// Checks a filter installed on the receiver: the allowed UDP and TCP ports pass, the
    /// denied port is dropped. Without a filter (`filtered` false) the denied port must pass:
    /// that proves the check itself can tell.
    pub fn check_filter(&mut self, what: &str, filtered: bool) -> Result<()> {
        let (udp_ok, _) = self.reachable(UDP_ALLOWED, false)?;
        let (_, tcp_ok) = self.reachable(TCP_ALLOWED, true)?;
        let (udp_denied, tcp_denied) = self.reachable(DENIED_PORT, true)?;
        let tcp_denied = tcp_denied.unwrap_or(false);
        if !udp_ok || tcp_ok != Some(true) {
            bail!(
                "{what}: an allowed flow did not pass (UDP {UDP_ALLOWED}: {udp_ok}, TCP \
                 {TCP_ALLOWED}: {tcp_ok:?})"
            );
        }
        if filtered && (udp_denied || tcp_denied) {
            bail!(
                "{what}: a denied flow passed (UDP {DENIED_PORT}: {udp_denied}, TCP \
                 {DENIED_PORT}: {tcp_denied})"
            );
        }
        if !filtered && (!udp_denied || !tcp_denied) {
            bail!("{what}: without a filter, port {DENIED_PORT} must be reachable");
        }
        Ok(())
    }

    /// Installs an nftables ruleset (text) in the receiver's namespace.
    pub fn nft_apply(&self, ruleset: &str) -> Result<Duration> {
        let path = temp_file("nft", ruleset.as_bytes())?;
        let t0 = Instant::now();
        let out = self.receiver.run(
            &["nft", "-f", &path.0.display().to_string()],
            Duration::from_secs(120),
        )?;
        let took = t0.elapsed();
        if !out.status.success() {
            bail!(
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .chars()
                    .take(2000)
                    .collect::<String>()
            );
        }
        Ok(took)
    }

    pub fn nft_flush(&self) -> Result<()> {
        let out = self.receiver.run(
            &["nft", "delete", "table", "inet", super::nft::TABLE],
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!("nft delete table: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// Runs an in-process generator ([`Generator::LiveFrames`] or [`Generator::Sendmmsg`]) in
/// `sender` for at most `total`, frames `ends` (the first hop's MACs, the final addresses: a
/// routed destination works too) out of `ifindex`, while `measure` runs on this thread;
/// returns what `measure` returned. The generator stops when `measure` is done.
pub fn flood_from(
    sender: &Netns,
    ifindex: u32,
    ends: &Ends,
    g: Generator,
    total: Duration,
    measure: impl FnOnce() -> Result<f64>,
) -> Result<f64> {
    // The packet budget: far above what this machine can send in `total`.
    let budget = (total.as_secs_f64() * 20e6) as u64;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let ends = *ends;
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            sender.enter(move || -> Result<()> {
                pin(0, GENERATOR_CPU)?;
                match g {
                    Generator::LiveFrames => {
                        let frame = frames::udp(&ends, 40000, UDP_ALLOWED);
                        let prog = Prog::xdp_redirect(ifindex)?;
                        live_frames(&prog, &frame, ifindex, total, budget, rx)
                    }
                    Generator::Sendmmsg => sendmmsg_flood(&ends, total, budget, rx),
                    other => bail!("{} is not an in-process generator", other.name()),
                }
            })
        });
        let r = measure();
        let _ = tx.send(());
        let g = h.join().map_err(|_| anyhow!("generator thread panicked"))?;
        g??;
        r
    })
}

/// `Udp: InDatagrams ... InErrors` from /proc/net/snmp: InDatagrams + InErrors.
pub fn udp_delivered(snmp: &str) -> Result<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let head: Vec<&str> = head.split_whitespace().collect();
    let vals: Vec<&str> = vals.split_whitespace().collect();
    let get = |name: &str| -> Result<u64> {
        let i = head
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no Udp {name}"))?;
        vals.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad Udp {name}"))
    };
    Ok(get("InDatagrams")? + get("InErrors")?)
}

/// A helper process in its own process group: `timeout --foreground` does not kill its child
/// when it is killed itself, so the guard kills the whole group (by its id) when dropped.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Waits for the process to end by itself (every helper runs under `timeout`), then kills
    /// whatever is left of its group (forked workers).
    fn wait_output(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.wait();
            kill_group(c.id() as i32);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            kill_group(c.id() as i32);
            let _ = c.wait();
        }
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: plain syscall; the group is the one spawn_group created for this helper.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

fn spawn_group(c: &mut std::process::Command) -> Result<ChildGuard> {
    use std::os::unix::process::CommandExt;
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if c.get_program().is_empty() {
        bail!("empty command");
    }
    let child = c
        .spawn()
        .with_context(|| format!("spawn {:?}", c.get_args().collect::<Vec<_>>()))?;
    Ok(ChildGuard(Some(child)))
}

/// A file removed on drop.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn temp_file(tag: &str, bytes: &[u8]) -> Result<TempFile> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("sg-bench-{}-{tag}-{n}", std::process::id()));
    std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
    Ok(TempFile(p))
}

fn trafgen_config(frame: &[u8]) -> Result<TempFile> {
    let bytes: Vec<String> = frame.iter().map(|b| format!("{b:#04x}")).collect();
    temp_file(
        "trafgen",
        format!("{{ {} }}\n", bytes.join(", ")).as_bytes(),
    )
}

/// Pins a thread (0: the calling thread) to one CPU.
pub fn pin(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({tid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn live_frames(
    prog: &Prog,
    frame: &[u8],
    ifindex: u32,
    total: Duration,
    budget: u64,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<()> {
    let t0 = Instant::now();
    let mut sent = 0u64;
    // ~30-60 ms per call here: short enough to stop on time.
    let chunk = 1u32 << 15;
    while t0.elapsed() < total && sent < budget && stop.try_recv().is_err() {
        prog.send_live(frame, ifindex, chunk)?;
        sent += u64::from(chunk);
    }
    Ok(())
}

fn sendmmsg_flood(
    ends: &Ends,
    total: Duration,
    budget: u64,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind(SocketAddrV4::new(ends.src, 40001))?;
    s.connect(SocketAddrV4::new(ends.dst, UDP_ALLOWED))?;
    const BATCH: usize = 64;
    let payload = [b'x'; 22];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid "no name, no control" header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut i = 0u32;
    while sent < budget {
        // Checking the clock every 64 batches keeps it off the hot path.
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) && (t0.elapsed() >= total || stop.try_recv().is_ok()) {
            break;
        }
        // SAFETY: msgs points at BATCH valid headers whose iovecs point at `payload`.
        let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_delivered_sums_datagrams_and_errors() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 10 3 7 1 7\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(udp_delivered(snmp).unwrap(), 17);
        assert!(udp_delivered("Ip: x\nIp: 1\n").is_err());
    }
}
