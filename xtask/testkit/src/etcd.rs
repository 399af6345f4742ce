//! Real etcd servers (Debian's etcd-server, 3.4) for the fleet's tests, the lab and the bench:
//! a cluster of 1 or 3 members, each in a network namespace of its own, plugged into a bridge
//! that lives in a namespace too, plus "host" namespaces on the same bridge where agents run
//! and reach the members at their addresses. Fault controls stop, kill, restart, pause and
//! compact; everything is removed on drop, also when a test panics.
//!
//! Built on [`crate::netns`] (namespaces, veths, the stale sweeper); it never creates,
//! addresses or listens on anything in the caller's namespace: etcd listens only on its
//! member's address inside the member's namespace. Addresses come from 192.0.2.0/24 and
//! 203.0.113.0/24 only, and every namespace routes both on-link, so members and hosts of
//! either range reach each other over the bridge.
//!
//! ```text
//!   switch ns (own, or a Lan's)   br0 ── e<id>m0 ─ eth0 [sgt<pid>-etcd<n>]  etcd m0 192.0.2.221
//!                                     ├─ e<id>m1 ─ eth0 [sgt<pid>-etcd<n>]  etcd m1 192.0.2.222
//!                                     └─ e<id>h0 ─ eth0 [sgt<pid>-h1<n>]    host h1 192.0.2.101
//! ```

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// The ranges a cluster's members and hosts may use (documentation ranges: never routed).
const RANGES: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
];

/// Temp directories (data dirs and logs) are named `sg-etcd-<pid>-<id>`, so a later run can
/// remove those of a run that was killed before its drop (see [`sweep_stale_dirs`]).
const DIR_PREFIX: &str = "sg-etcd-";

/// Numbers clusters within this process: part of their temp directory and port names.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Members' addresses in order; a cluster of n members uses the first n. Defaults to
    /// 192.0.2.221, .222, .223 (clear of the addresses the lab's hosts use).
    pub addrs: Vec<Ipv4Addr>,
    /// How long [`EtcdCluster::start`] (and [`EtcdCluster::start_member`]) wait for health.
    pub ready_timeout: Duration,
    /// How long [`EtcdCluster::stop`] waits for a member to exit after SIGTERM before it
    /// sends SIGKILL.
    pub stop_timeout: Duration,
    /// Extra flags for every member's etcd (e.g. `--auto-compaction-retention=1`).
    pub extra_args: Vec<String>,
}

impl Default for EtcdOptions {
    fn default() -> EtcdOptions {
        EtcdOptions {
            addrs: (221..=223).map(|d| Ipv4Addr::new(192, 0, 2, d)).collect(),
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(10),
            extra_args: Vec::new(),
        }
    }
}

/// A namespace on the cluster's bridge where tests run agents (or etcdctl): its `dev` carries
/// `addr`/24, so an agent binding by address finds it on the device.
pub struct EtcdHost {
    pub name: String,
    pub dev: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
}

/// One etcd member: its namespace, its data dir (kept across restarts) and its process.
struct Member {
    name: String,
    addr: Ipv4Addr,
    ns: Netns,
    data_dir: PathBuf,
    /// etcd's stdout and stderr, appended to across restarts.
    log: PathBuf,
    proc: Mutex<MemberProc>,
}

#[derive(Default)]
struct MemberProc {
    /// The `ip netns exec` child, which execs etcd: its pid is etcd's.
    child: Option<Child>,
    paused: bool,
}

/// Where the bridge lives: a namespace the cluster made, or one it borrows (a `Lan`'s
/// switch), which it never deletes.
enum Switch {
    Owned(Netns),
    Borrowed(String),
}

impl Switch {
    fn name(&self) -> &str {
        match self {
            Switch::Owned(ns) => ns.name(),
            Switch::Borrowed(name) => name,
        }
    }
}

/// A running etcd cluster and the host namespaces beside it. All methods take `&self` except
/// [`EtcdCluster::add_host`], so a test can hold a host while it kills and restarts members.
pub struct EtcdCluster {
    id: u32,
    members: Vec<Member>,
    hosts: Vec<EtcdHost>,
    switch: Switch,
    bridge: String,
    dir: PathBuf,
    opts: EtcdOptions,
    /// `m0=http://A0:2380,...`: every member's `--initial-cluster`.
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3) on a bridge in a namespace of their own and waits until
    /// every member reports healthy (bounded by `opts.ready_timeout`; the error carries the
    /// tail of each member's log).
    pub fn start(n: usize, opts: EtcdOptions) -> Result<EtcdCluster> {
        let switch = Netns::new("esw")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        EtcdCluster::build(Switch::Owned(switch), "br0", n, opts)
    }

    /// Like [`EtcdCluster::start`], but plugs the members into `bridge` of an existing switch
    /// namespace (an `sg_lab::topology::Lan`'s `switch` and `br0`), so the lab's hosts reach
    /// them. The switch namespace stays when the cluster drops; the member's links go with it.
    pub fn start_on(
        switch: &Netns,
        bridge: &str,
        n: usize,
        opts: EtcdOptions,
    ) -> Result<EtcdCluster> {
        EtcdCluster::build(Switch::Borrowed(switch.name().to_string()), bridge, n, opts)
    }

    fn build(switch: Switch, bridge: &str, n: usize, opts: EtcdOptions) -> Result<EtcdCluster> {
        if n == 0 || n > opts.addrs.len() {
            bail!(
                "a cluster of {n} members needs 1..={} addresses",
                opts.addrs.len()
            );
        }
        for (i, a) in opts.addrs[..n].iter().enumerate() {
            check_addr(*a)?;
            if opts.addrs[..i].contains(a) {
                bail!("two etcd members share the address {a}");
            }
        }
        sweep_stale_dirs();
        let id = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://{}:{PEER_PORT}", opts.addrs[i]))
            .collect::<Vec<_>>()
            .join(",");
        // Made before anything else exists, so every early return below cleans up.
        let mut cluster = EtcdCluster {
            id,
            members: Vec::new(),
            hosts: Vec::new(),
            switch,
            bridge: bridge.to_string(),
            dir,
            opts,
            initial_cluster,
        };
        for i in 0..n {
            let addr = cluster.opts.addrs[i];
            let ns = Netns::new("etcd")?;
            cluster.plug(&ns, "eth0", addr, &format!("e{id}m{i}"))?;
            cluster.members.push(Member {
                name: format!("m{i}"),
                addr,
                ns,
                data_dir: cluster.dir.join(format!("m{i}.etcd")),
                log: cluster.dir.join(format!("m{i}.log")),
                proc: Mutex::new(MemberProc::default()),
            });
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.start_members(&all)?;
        Ok(cluster)
    }

    /// Links `dev` in `ns` to the bridge through a switch port named `port`, gives it
    /// `addr`/24 and routes both documentation ranges on-link through it.
    fn plug(&self, ns: &Netns, dev: &str, addr: Ipv4Addr, port: &str) -> Result<()> {
        let sw = self.switch.name();
        ns.ip(&[
            "link", "add", dev, "type", "veth", "peer", "name", port, "netns", sw,
        ])?;
        ip_in(sw, &["link", "set", port, "master", &self.bridge])?;
        ip_in(sw, &["link", "set", port, "up"])?;
        ns.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        for (net, len) in RANGES {
            // The address's own /24 already has its connected route.
            let _ = ns.ip(&["route", "add", &format!("{net}/{len}"), "dev", dev]);
        }
        Ok(())
    }

    /// Adds a host namespace on the bridge whose `eth0` carries `addr`/24.
    pub fn add_host(&mut self, name: &str, addr: &str) -> Result<&EtcdHost> {
        self.add_host_dev(name, "eth0", addr)
    }

    /// Adds a host namespace on the bridge whose `dev` carries `addr`/24.
    pub fn add_host_dev(&mut self, name: &str, dev: &str, addr: &str) -> Result<&EtcdHost> {
        if self.hosts.iter().any(|h| h.name == name) {
            bail!("host {name} exists");
        }
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("host {name}: IPv4 address {addr}"))?;
        check_addr(addr)?;
        if self.members.iter().any(|m| m.addr == addr) || self.hosts.iter().any(|h| h.addr == addr)
        {
            bail!("host {name}: {addr} is taken by an etcd member or another host");
        }
        let short: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let ns = Netns::new(&short[..short.len().min(6)])?;
        let port = format!("e{}h{}", self.id, self.hosts.len());
        self.plug(&ns, dev, addr, &port)?;
        self.hosts.push(EtcdHost {
            name: name.to_string(),
            dev: dev.to_string(),
            addr,
            ns,
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// A host added with [`EtcdCluster::add_host`]; panics if there is none of that name.
    pub fn host(&self, name: &str) -> &EtcdHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} beside the etcd cluster"))
    }

    pub fn hosts(&self) -> &[EtcdHost] {
        &self.hosts
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a cluster has at least one member. (Clippy pairs `len` with it.)
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The store address agents take: `etcd://A0:2379,A1:2379,...` (every member).
    pub fn endpoints(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}:{CLIENT_PORT}", m.addr))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Every member's client URL, `http://A:2379`.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    pub fn client_url(&self, member: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.member(member).addr)
    }

    pub fn member_addr(&self, member: usize) -> Ipv4Addr {
        self.member(member).addr
    }

    /// The member's namespace (it stays while the member is stopped or killed).
    pub fn member_ns(&self, member: usize) -> &Netns {
        &self.member(member).ns
    }

    /// etcd's pid for a running (or paused) member.
    pub fn pid(&self, member: usize) -> Option<u32> {
        self.lock(member).child.as_ref().map(Child::id)
    }

    /// Whether the member's process is alive and not paused.
    pub fn is_running(&self, member: usize) -> bool {
        let mut p = self.lock(member);
        let alive = p
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        alive && !p.paused
    }

    /// The temp directory holding every member's data dir and log (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of every namespace the cluster made (members, hosts, its own switch).
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.members.iter().map(|m| m.ns.name().into()).collect();
        names.extend(self.hosts.iter().map(|h| h.ns.name().to_string()));
        if let Switch::Owned(ns) = &self.switch {
            names.push(ns.name().to_string());
        }
        names
    }

    /// What a member's etcd wrote so far (all its runs).
    pub fn log(&self, member: usize) -> String {
        std::fs::read_to_string(&self.member(member).log).unwrap_or_default()
    }

    fn member(&self, i: usize) -> &Member {
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("no etcd member {i} (the cluster has {})", self.len()))
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, MemberProc> {
        // A panic while holding the lock left plain data behind: still usable.
        self.member(i)
            .proc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a member that is not running (never started, stopped or killed) with its data
    /// dir as it was, and waits until it is healthy. That needs a quorum: to bring back a
    /// cluster that lost it, start several at once with [`EtcdCluster::start_members`].
    pub fn start_member(&self, member: usize) -> Result<()> {
        self.start_members(&[member])
    }

    /// Starts these members together, then waits (bounded) until each is healthy.
    pub fn start_members(&self, members: &[usize]) -> Result<()> {
        for &i in members {
            self.spawn(i)?;
        }
        self.wait_healthy(members, self.opts.ready_timeout)
    }

    fn spawn(&self, i: usize) -> Result<()> {
        let m = self.member(i);
        let mut p = self.lock(i);
        if let Some(c) = p.child.as_mut()
            && c.try_wait()?.is_none()
        {
            bail!("etcd member {i} is running already");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("open {}", m.log.display()))?;
        let client = format!("http://{}:{CLIENT_PORT}", m.addr);
        let peer = format!("http://{}:{PEER_PORT}", m.addr);
        let mut c = m.ns.cmd("etcd");
        c.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            // Read only when the data dir is new: a restart rejoins with what it has.
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The environment's ETCD_* settings would quietly join the flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                c.env_remove(k);
            }
        }
        let child = c
            .spawn()
            .with_context(|| format!("spawn etcd member {i} in {}", m.ns))?;
        *p = MemberProc {
            child: Some(child),
            paused: false,
        };
        Ok(())
    }

    /// Waits until each of `members` answers `etcdctl endpoint health` on its own URL; fails
    /// at once when one of them exits, and after `timeout` with every member's log tail.
    pub fn wait_healthy(&self, members: &[usize], timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        let mut waiting: Vec<usize> = members.to_vec();
        while !waiting.is_empty() {
            for &i in &waiting {
                let exited = match self.lock(i).child.as_mut() {
                    Some(c) => c.try_wait()?,
                    None => bail!("etcd member {i} is not running"),
                };
                if let Some(status) = exited {
                    bail!(
                        "etcd member {i} exited ({status}) before it was healthy:\n{}",
                        self.log_tails()
                    );
                }
            }
            waiting.retain(|&i| !self.healthy(i));
            if waiting.is_empty() {
                break;
            }
            if t0.elapsed() > timeout {
                bail!(
                    "etcd members {waiting:?} not healthy after {timeout:?}:\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits (bounded) until every running member reports the same leader and that leader
    /// is one of them, and returns its index. After a kill or pause the followers keep
    /// believing in the lost leader for an election timeout (1 s), and writes stall until
    /// the election: a test that injects a fault waits here before it writes.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            if let Some(leader) = self.agreed_leader() {
                return Ok(leader);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the running etcd members agree on no live leader after {timeout:?}:\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the leader every running member names, if they agree and it runs.
    fn agreed_leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in (0..self.len()).filter(|&i| self.is_running(i)) {
            let out = self
                .etcdctl_at(i, &["endpoint", "status", "-w", "json"])
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let status = &v[0]["Status"];
            ids.push((i, status["header"]["member_id"].as_u64()?));
            leaders.push(status["leader"].as_u64()?);
        }
        let first = *leaders.first()?;
        if leaders.iter().any(|&l| l != first) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == first).map(|(i, _)| *i)
    }

    /// One health probe of one member (a quorum read through it), bounded by etcdctl's own
    /// timeouts and a kill after 8 s.
    fn healthy(&self, member: usize) -> bool {
        let url = self.client_url(member);
        let out = self.etcdctl_command(&self.member(0).ns, &url, &["endpoint", "health"]);
        out.is_ok()
    }

    /// Unique per cluster, so members of two clusters never take each other for peers.
    fn token(&self) -> String {
        format!("{DIR_PREFIX}{}-{}", std::process::id(), self.id)
    }

    /// Every member's log, for error messages: its last lines, preceded by the last few
    /// lines above them that look like the reason (etcd prints a bad flag's complaint first,
    /// then pages of usage).
    fn log_tails(&self) -> String {
        const TAIL: usize = 20;
        const REASONS: usize = 5;
        let mut s = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let (head, tail) = lines.split_at(lines.len().saturating_sub(TAIL));
            let reasons: Vec<&str> = head
                .iter()
                .copied()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    ["error", "fatal", "panic", "flag provided"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            let reasons = &reasons[reasons.len().saturating_sub(REASONS)..];
            let _ = writeln!(s, "--- member {i} ({}) {}:", m.addr, m.log.display());
            for l in reasons {
                let _ = writeln!(s, "{l}");
            }
            if !reasons.is_empty() {
                let _ = writeln!(s, "...");
            }
            for l in tail {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }

    /// SIGTERM, then waits (bounded by `stop_timeout`) for the member to exit; SIGKILL if it
    /// did not. A paused member is continued so it can handle the signal. Its data stays.
    pub fn stop(&self, member: usize) -> Result<()> {
        let mut p = self.lock(member);
        let Some(child) = p.child.as_mut() else {
            bail!("etcd member {member} is not running");
        };
        signal(child, libc::SIGTERM);
        signal(child, libc::SIGCONT);
        let exited = wait_exit(child, self.opts.stop_timeout)?;
        if !exited {
            let _ = child.kill();
            child.wait()?;
        }
        p.child = None;
        p.paused = false;
        if !exited {
            bail!(
                "etcd member {member} ignored SIGTERM for {:?} and was killed",
                self.opts.stop_timeout
            );
        }
        Ok(())
    }

    /// SIGKILL (a crash: no graceful shutdown), and reaps the process. Its data stays.
    pub fn kill(&self, member: usize) -> Result<()> {
        let mut p = self.lock(member);
        let Some(mut child) = p.child.take() else {
            bail!("etcd member {member} is not running");
        };
        p.paused = false;
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// SIGSTOP: the member stops answering (clients and peers time out) but keeps its
    /// sockets, like a machine that hangs.
    pub fn pause(&self, member: usize) -> Result<()> {
        let mut p = self.lock(member);
        let Some(child) = p.child.as_mut() else {
            bail!("etcd member {member} is not running");
        };
        signal(child, libc::SIGSTOP);
        p.paused = true;
        Ok(())
    }

    /// SIGCONT after [`EtcdCluster::pause`].
    pub fn resume(&self, member: usize) -> Result<()> {
        let mut p = self.lock(member);
        let Some(child) = p.child.as_mut() else {
            bail!("etcd member {member} is not running");
        };
        signal(child, libc::SIGCONT);
        p.paused = false;
        Ok(())
    }

    /// The client URLs of the members that run and are not paused (all of them if none
    /// does, so the caller sees etcdctl's own error).
    fn live_urls(&self) -> String {
        let live: Vec<String> = (0..self.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.client_url(i))
            .collect();
        if live.is_empty() {
            self.client_urls().join(",")
        } else {
            live.join(",")
        }
    }

    /// `etcdctl ARGS` (API v3) against the live members, run in member 0's namespace (it stays
    /// on the bridge whatever its etcd does); returns stdout, fails unless it exits 0.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        self.etcdctl_in(&self.member(0).ns, args)
    }

    /// Like [`EtcdCluster::etcdctl`], run inside `ns` (a host's namespace: "can a host reach
    /// the store?").
    pub fn etcdctl_in(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        self.etcdctl_command(ns, &self.live_urls(), args)
    }

    /// Like [`EtcdCluster::etcdctl`], but only through `member`'s own client URL (does this
    /// member serve, and what does it hold?).
    pub fn etcdctl_at(&self, member: usize, args: &[&str]) -> Result<String> {
        self.etcdctl_command(&self.member(0).ns, &self.client_url(member), args)
    }

    fn etcdctl_command(&self, ns: &Netns, endpoints: &str, args: &[&str]) -> Result<String> {
        let mut c = ns.cmd("timeout");
        c.args(["--foreground", "-s", "KILL", "8", "etcdctl"])
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=1s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null());
        let out = c
            .output()
            .with_context(|| format!("run etcdctl {args:?} in {ns}"))?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?} at {endpoints} in {ns} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The store's current revision (from the header of a read).
    pub fn revision(&self) -> Result<i64> {
        let out = self.etcdctl(&["get", "sg-harness-revision-probe", "-w", "json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("etcdctl get -w json: {out}"))?;
        v["header"]["revision"]
            .as_i64()
            .with_context(|| format!("no header.revision in {out}"))
    }

    /// Compacts the store at its current revision (physically: the old revisions are gone
    /// when this returns) and returns that revision. Watches and reads below it then fail
    /// with "required revision has been compacted".
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.etcdctl(&["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            let mut p = m.proc.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut child) = p.child.take() {
                // SIGKILL ends a stopped process too; wait reaps it.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The namespaces (hosts', members', an owned switch's) drop after this, each killing
        // whatever still runs in it (agents started by the test) and taking its links along.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails unless `a` is in 192.0.2.0/24 or 203.0.113.0/24.
fn check_addr(a: Ipv4Addr) -> Result<()> {
    let ok = RANGES.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - u32::from(*len));
        u32::from(a) & mask == u32::from(*net)
    });
    if !ok {
        bail!("{a}: etcd test clusters use 192.0.2.0/24 and 203.0.113.0/24 only");
    }
    Ok(())
}

/// `ip -n NS ARGS...` for a namespace known by name only (a borrowed switch).
fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit pid_t");
    // SAFETY: plain syscall on our own unreaped child (its pid cannot be reused yet).
    unsafe { libc::kill(pid, sig) };
}

/// Polls until the child exits (true, reaped) or `timeout` passes (false).
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<bool> {
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if t0.elapsed() > timeout {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the temp directories of clusters whose process is gone (a killed test run never
/// dropped them; its namespaces and etcd processes are swept by [`crate::netns`]).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
