//! Fleet convergence (issue 15, item 5; issue 16, item 4): real `sg-agent daemon --store`
//! processes, one per network namespace, following one etcd. Three kinds of change, each made
//! several times: a membership change (a new instance joins sg-web: one key written), a rule
//! change (sg-db authorizes another UDP port from sg-web: its group key rewritten) and the same
//! rule change made through the EC2 API (`sg-agent api` on the store, an
//! AuthorizeSecurityGroupIngress call as the aws CLI sends it). For each: the time from the
//! store's commit (and from the write or call being sent) to every agent's acknowledgement, to
//! the first real packet allowed on sampled hosts, and the CPU every agent spent.
//!
//! ```text
//!  etcd 192.0.2.221 ── br0 ─┬─ h0  203.0.113.1   sg-agent daemon --register eth0=sg-web
//!                           ├─ h1  203.0.113.2   sg-agent daemon --register eth0=sg-db
//!                           ├─ ...               (sampled sg-db hosts receive the probes)
//!                           ├─ new1..  192.0.2.201..  the new instances: UDP senders, no agent
//!                           └─ obs 192.0.2.210   etcdctl watch --prefix /sg/ (the observer),
//!                                                the putter, sg-agent api on :8787
//! ```
//!
//! Clocks: every time is the machine's wall clock in ms. The commit is when the observer's
//! watch delivers the change (an etcd client on the same bridge as the agents, like them);
//! an acknowledgement is when it delivers the host's ack naming a revision at or after the
//! change's. Also kept: the same from the moment the put was answered (sent through etcd's
//! JSON gateway on one kept-alive connection: the bench spends no process start per change),
//! and the agent's own clock in its ack (`unix_ms`: before its write to the store). The
//! observer runs at a higher priority than the agents so that a busy machine delays what it
//! sees as little as possible.
//! CPU: each agent's threads' run time (`/proc/PID/task/*/schedstat`, ns) over a window
//! around the change, less what the same agent spends idle in as long (measured before).
//!
//! It owns the namespaces, the etcd member and the agents it starts, and removes them (and the
//! agents' pins) on every exit path, also on error. It measures; it asserts nothing on timings.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use sg_testkit::etcd::{EtcdCluster, EtcdOptions};
use sg_testkit::netns::Netns;

use super::Options;

/// Membership changes send to this port (sg-db and sg-web allow it from sg-web); rule
/// change k authorizes RULE_PORT + k on sg-db.
const MEMBER_PORT: u16 = 7000;
const RULE_PORT: u16 = 7100;
/// API change k authorizes API_PORT + k on sg-db.
const API_PORT: u16 = 7200;
/// Where `sg-agent api` listens, in the observer's namespace.
const API_LISTEN: &str = "192.0.2.210:8787";
const SAMPLED: usize = 5;
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 221);
const OBSERVER_ADDR: &str = "192.0.2.210";
/// Agents started together (each verifies its BPF programs: about a second of CPU).
pub const BATCH: usize = 10;

const POLICY: &str = "\
version: 1
security_groups:
  - id: sg-web
    description: bench web tier
    ingress:
      - {protocol: tcp, ports: 80, source: 0.0.0.0/0}
      - {protocol: udp, ports: 7000, source: sg-web}
  - id: sg-db
    description: bench database tier
    ingress:
      - {protocol: tcp, ports: 3306, source: sg-web}
      - {protocol: udp, ports: 7000, source: sg-web}
";

/// Percentiles of one set of samples (nearest rank), ms.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    pub fn of(v: &[f64]) -> Dist {
        if v.is_empty() {
            return Dist::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Dist {
            n: s.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

/// The figures of one kind of change, over all its changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KindFigures {
    pub changes: usize,
    /// (agent, change) pairs acknowledged, of expected.
    pub acks: usize,
    pub expected: usize,
    /// Commit (seen by the observer) -> the agent's ack seen by the observer.
    pub ack_ms: Dist,
    /// the put returned -> the ack seen.
    pub ack_from_put_return_ms: Dist,
    /// The put (or API call) sent -> the ack seen: what the caller waits for.
    pub ack_from_put_start_ms: Dist,
    /// The put (or API call) sent -> the first probe that reached a sampled host.
    pub first_packet_from_put_start_ms: Dist,
    /// Commit seen -> the agent's own clock in its ack (before its write).
    pub agent_ack_ms: Dist,
    /// Commit seen -> the first probe that reached a sampled host, over (host, change).
    pub first_packet_ms: Dist,
    /// Agent CPU per (agent, change), less the agent's idle CPU over the same window.
    pub cpu_ms: Dist,
    /// The same without subtracting idle.
    pub cpu_raw_ms: Dist,
    /// How long the put took (request sent to answer read).
    pub put_ms: Dist,
}

/// One change.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChangeFigure {
    pub kind: String,
    pub key: String,
    pub revision: i64,
    pub put_ms: f64,
    /// Put started -> commit seen by the observer.
    pub commit_seen_after_put_start_ms: f64,
    pub ack_ms: Dist,
    pub slowest_host: String,
    pub first_packet_ms: Vec<Option<f64>>,
    pub cpu_ms_mean: f64,
    /// Over the same window: all agents together, etcd, and the whole machine (busy time of
    /// every CPU, /proc/stat: agents + etcd + the kernel's network work + anything else).
    pub agents_cpu_ms: f64,
    pub etcd_cpu_ms: f64,
    pub machine_busy_ms: f64,
    pub window_s: f64,
    /// Hosts that did not acknowledge in time.
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetFigures {
    pub agents: usize,
    pub changes_per_kind: usize,
    /// First agent started -> every agent enforcing the store's current policy.
    pub startup_s: f64,
    /// Mean over agents of the CPU an idle agent spends (`--poll 1`), ms per second.
    pub idle_cpu_ms_per_s: f64,
    pub sampled_hosts: Vec<String>,
    pub membership: KindFigures,
    pub rule: KindFigures,
    /// The rule change made through the EC2 API (AuthorizeSecurityGroupIngress).
    pub api: KindFigures,
    pub changes: Vec<ChangeFigure>,
    /// Where each agent's log is (lines prefixed with the wall clock, unix seconds).
    pub logs: String,
    pub errors: Vec<String>,
}

/// The `sg-agent` binary: `SG_AGENT_BIN`, else beside this program (target/release), else
/// one directory up (a test in target/<profile>/deps).
pub fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SG_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("this program's directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("sg-agent");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "no sg-agent binary beside {}: build it (`cargo build --release -p sg-agent`; cargo \
         xtask bench does) or set SG_AGENT_BIN",
        exe.display()
    )
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Runs the section with `opts.fleet_agents` agents and `opts.fleet_changes` changes of each
/// kind.
pub fn run(opts: &Options) -> Result<FleetFigures> {
    let n = opts.fleet_agents;
    if !(1..=250).contains(&n) {
        bail!("--fleet-agents {n}: 1..=250 (one 203.0.113.0/24 address each)");
    }
    let changes = opts.fleet_changes.clamp(1, 9);
    let bin = agent_bin()?;
    let logs = opts.out.join("fleet-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let rig = Rig::new(n, changes, &bin)?;
    let mut agents = Agents::default();
    let mut f = FleetFigures {
        agents: n,
        changes_per_kind: changes,
        logs: logs.display().to_string(),
        ..FleetFigures::default()
    };
    let t0 = Instant::now();
    rig.start_agents(&mut agents, &logs)?;
    rig.wait_converged(n, Duration::from_secs(60 + 3 * n as u64))?;
    f.startup_s = t0.elapsed().as_secs_f64();
    eprintln!("fleet: {n} agents enforcing after {:.1} s", f.startup_s);
    std::thread::sleep(Duration::from_secs(2));
    let idle = agents.idle_rates(Duration::from_secs(4))?;
    f.idle_cpu_ms_per_s = idle.iter().sum::<f64>() / idle.len() as f64;
    f.sampled_hosts = rig.sampled.iter().map(|&i| host_name(i)).collect();
    let mut samples = [Samples::default(), Samples::default(), Samples::default()];
    for kind in [Kind::Membership, Kind::Rule, Kind::Api] {
        for k in 1..=changes {
            match rig.change(kind, k, &agents, &idle, &mut samples[kind as usize]) {
                Ok(c) => f.changes.push(c),
                Err(e) => f.errors.push(format!("{} change {k}: {e:#}", kind.name())),
            }
        }
    }
    f.membership = samples[0].figures(changes, n);
    f.rule = samples[1].figures(changes, n);
    f.api = samples[2].figures(changes, n);
    drop(agents);
    Ok(f)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Membership = 0,
    Rule = 1,
    Api = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Membership => "membership",
            Kind::Rule => "rule",
            Kind::Api => "api",
        }
    }
}

/// What one kind's changes measured, before the percentiles.
#[derive(Default)]
struct Samples {
    ack: Vec<f64>,
    ack_from_put: Vec<f64>,
    ack_from_put_start: Vec<f64>,
    agent_ack: Vec<f64>,
    first_packet: Vec<f64>,
    first_packet_from_put_start: Vec<f64>,
    cpu: Vec<f64>,
    cpu_raw: Vec<f64>,
    put: Vec<f64>,
}

impl Samples {
    fn figures(&self, changes: usize, agents: usize) -> KindFigures {
        KindFigures {
            changes,
            acks: self.ack.len(),
            expected: changes * agents,
            ack_ms: Dist::of(&self.ack),
            ack_from_put_return_ms: Dist::of(&self.ack_from_put),
            ack_from_put_start_ms: Dist::of(&self.ack_from_put_start),
            first_packet_from_put_start_ms: Dist::of(&self.first_packet_from_put_start),
            agent_ack_ms: Dist::of(&self.agent_ack),
            first_packet_ms: Dist::of(&self.first_packet),
            cpu_ms: Dist::of(&self.cpu),
            cpu_raw_ms: Dist::of(&self.cpu_raw),
            put_ms: Dist::of(&self.put),
        }
    }
}

/// The etcd member, the hosts, the new instances' namespaces and the observer. Dropped after
/// the agents (they run in its namespaces).
struct Rig {
    /// Held for its drop: the API serves as long as the rig lives.
    _api: ApiServer,
    observer: Observer,
    putter: Putter,
    cluster: EtcdCluster,
    bin: PathBuf,
    agents: usize,
    /// Indexes of the sampled sg-db hosts.
    sampled: Vec<usize>,
}

impl Rig {
    fn new(n: usize, changes: usize, bin: &Path) -> Result<Rig> {
        let mut cluster = EtcdCluster::start(
            1,
            EtcdOptions {
                addrs: vec![ETCD_ADDR],
                ready_timeout: Duration::from_secs(30),
                ..EtcdOptions::default()
            },
        )?;
        for i in 0..n {
            cluster.add_host(&host_name(i), &host_addr(i).to_string())?;
        }
        for k in 1..=changes {
            cluster.add_host(&format!("new{k}"), &new_addr(k).to_string())?;
        }
        cluster.add_host("obs", OBSERVER_ADDR)?;
        let url = format!("http://{ETCD_ADDR}:2379");
        let observer = Observer::start(&cluster.host("obs").ns, &url)?;
        let putter = Putter::start(&cluster.host("obs").ns, &ETCD_ADDR.to_string())?;
        let api = ApiServer::start(&cluster.host("obs").ns, bin)?;
        let db: Vec<usize> = (0..n).filter(|i| i % 2 == 1).collect();
        let step = (db.len() / SAMPLED).max(1);
        let sampled = db.iter().copied().step_by(step).take(SAMPLED).collect();
        let rig = Rig {
            _api: api,
            cluster,
            observer,
            putter,
            bin: bin.to_path_buf(),
            agents: n,
            sampled,
        };
        rig.import()?;
        Ok(rig)
    }

    fn store_url(&self) -> String {
        format!("etcd://{ETCD_ADDR}:2379")
    }

    fn obs(&self) -> &Netns {
        &self.cluster.host("obs").ns
    }

    /// `sg-agent store import` of the bench's policy (two groups, no instances: every host
    /// registers its own).
    fn import(&self) -> Result<()> {
        let file = std::env::temp_dir().join(format!("sg-bench-fleet-{}.yaml", std::process::id()));
        std::fs::write(&file, POLICY)?;
        let bin = self.bin.to_string_lossy();
        let r = self.obs().run_ok(
            &[
                &bin,
                "store",
                "--store",
                &self.store_url(),
                "import",
                &file.to_string_lossy(),
            ],
            Duration::from_secs(30),
        );
        let _ = std::fs::remove_file(&file);
        r.map(|_| ())
    }

    /// Starts every agent, `BATCH` at a time, each batch acknowledged before the next starts.
    fn start_agents(&self, agents: &mut Agents, logs: &Path) -> Result<()> {
        for batch in (0..self.agents).collect::<Vec<_>>().chunks(BATCH) {
            let from = self.observer.len();
            for &i in batch {
                agents.start(&self.cluster, &self.bin, &self.store_url(), i, logs)?;
            }
            let names: Vec<String> = batch.iter().map(|&i| host_name(i)).collect();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                agents.check_running()?;
                let seen = self.observer.since(from);
                let acked = names.iter().filter(|h| {
                    let key = ack_key(h);
                    seen.iter()
                        .any(|s| s.key == key && parse_ack(&s.value).is_some_and(|a| a.ok))
                });
                if acked.count() == names.len() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "agents {names:?} did not acknowledge within 120 s (logs in {})",
                        logs.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("fleet: {} agents acknowledged", batch[batch.len() - 1] + 1);
        }
        Ok(())
    }

    /// Waits until `store status` says every host is alive and enforces the current policy.
    fn wait_converged(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let bin = self.bin.to_string_lossy();
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.obs().run_ok(
                &[
                    &bin,
                    "--json",
                    "store",
                    "--store",
                    &self.store_url(),
                    "status",
                ],
                Duration::from_secs(30),
            )?;
            let v: Value = serde_json::from_str(&out).context("store status --json")?;
            let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
            let current = hosts
                .iter()
                .filter(|h| h["alive"] == true && h["current"] == true)
                .count();
            if current == n {
                return Ok(());
            }
            last = format!(
                "{current} of {n} hosts current at revision {}",
                v["revision"]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("the fleet did not converge within {timeout:?}: {last}")
    }

    /// Makes change `k` of `kind` and measures it.
    fn change(
        &self,
        kind: Kind,
        k: usize,
        agents: &Agents,
        idle: &[f64],
        s: &mut Samples,
    ) -> Result<ChangeFigure> {
        let (key, write, sender, port) = match kind {
            Kind::Membership => {
                let name = format!("bench-new{k}");
                let inst = json!({"schema": 1, "instance": {"name": name,
                    "addresses": [new_addr(k).to_string()], "groups": ["sg-web"]}});
                (
                    format!("/sg/v1/instances/{name}"),
                    Write::Put(inst.to_string()),
                    k,
                    MEMBER_PORT,
                )
            }
            Kind::Rule => {
                let key = "/sg/v1/groups/sg-db".to_string();
                let cur = self
                    .cluster
                    .etcdctl_in(self.obs(), &["get", &key, "--print-value-only"])?;
                let mut v: Value = serde_json::from_str(cur.trim()).context("sg-db's value")?;
                let port = RULE_PORT + k as u16;
                let rule = json!({"protocol": "udp", "ports": port.to_string(),
                    "source": "sg-web", "description": format!("bench rule change {k}")});
                v["group"]["ingress"]
                    .as_array_mut()
                    .context("sg-db's ingress list")?
                    .push(rule);
                (key, Write::Put(v.to_string()), 1, port)
            }
            Kind::Api => {
                // As `aws ec2 authorize-security-group-ingress --group-id sg-db
                // --ip-permissions IpProtocol=udp,FromPort=P,ToPort=P,UserIdGroupPairs=
                // [{GroupId=sg-web}]` sends it.
                let port = API_PORT + k as u16;
                let body = format!(
                    "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId=sg-db\
                     &IpPermissions.1.IpProtocol=udp&IpPermissions.1.FromPort={port}\
                     &IpPermissions.1.ToPort={port}&IpPermissions.1.Groups.1.GroupId=sg-web"
                );
                ("/sg/v1/groups/sg-db".to_string(), Write::Api(body), 1, port)
            }
        };
        let targets: Vec<(&Netns, Ipv4Addr)> = self
            .sampled
            .iter()
            .map(|&i| (&self.cluster.host(&host_name(i)).ns, host_addr(i)))
            .collect();
        let sender_ns = &self.cluster.host(&format!("new{sender}")).ns;
        let mark = self.observer.len();
        let etcd_pid = self.cluster.pid(0).unwrap_or(0);
        let (etcd0, busy0) = (task_cpu_ns(etcd_pid), machine_busy_ms());
        let cpu0 = agents.cpu_ns();
        let w0 = Instant::now();
        let mut put = (0.0, 0.0, 0i64);
        let firsts = first_packets(sender_ns, new_addr(sender), &targets, port, || {
            put = self.putter.write(&key, &write)?;
            Ok(())
        })?;
        let (put_start, put_end, revision) = put;
        // An API call's value is the API's to choose: the first write of the key is the call's.
        let commit = self
            .observer
            .wait_for(
                mark,
                |s| s.key == key && write.value().is_none_or(|v| s.value == v),
                Duration::from_secs(10),
            )?
            .at_ms;
        let acks = self.wait_acks(mark, revision, Duration::from_secs(30));
        // A fixed window (at least 3 s, and 1 s past the last ack) for every change's CPU.
        let last_ack = acks.values().map(|a| a.0).fold(commit, f64::max);
        let until = (last_ack - put_start + 1000.0).max(3000.0);
        while (w0.elapsed().as_secs_f64() * 1e3) < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu1 = agents.cpu_ns();
        let (etcd1, busy1) = (task_cpu_ns(etcd_pid), machine_busy_ms());
        let window_s = w0.elapsed().as_secs_f64();
        let mut c = ChangeFigure {
            kind: kind.name().into(),
            key: key.clone(),
            revision,
            put_ms: put_end - put_start,
            commit_seen_after_put_start_ms: commit - put_start,
            window_s,
            etcd_cpu_ms: etcd1.saturating_sub(etcd0) as f64 / 1e6,
            machine_busy_ms: busy1 - busy0,
            ..ChangeFigure::default()
        };
        let mut lat = Vec::new();
        let mut slowest = (f64::MIN, String::new());
        for i in 0..self.agents {
            let h = host_name(i);
            match acks.get(&h) {
                Some(&(seen, agent_ms)) => {
                    lat.push(seen - commit);
                    s.ack.push(seen - commit);
                    s.ack_from_put.push(seen - put_end);
                    s.ack_from_put_start.push(seen - put_start);
                    s.agent_ack.push(agent_ms - commit);
                    if seen - commit > slowest.0 {
                        slowest = (seen - commit, h);
                    }
                }
                None => c.missing.push(h),
            }
        }
        c.ack_ms = Dist::of(&lat);
        c.slowest_host = slowest.1;
        s.put.push(c.put_ms);
        let mut cpu = Vec::new();
        for (i, (a, b)) in cpu0.iter().zip(&cpu1).enumerate() {
            let raw = (b.saturating_sub(*a)) as f64 / 1e6;
            s.cpu_raw.push(raw);
            let net = raw - idle[i] * window_s;
            s.cpu.push(net);
            cpu.push(net);
        }
        c.cpu_ms_mean = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
        c.agents_cpu_ms = cpu0
            .iter()
            .zip(&cpu1)
            .map(|(a, b)| b.saturating_sub(*a) as f64 / 1e6)
            .sum();
        c.first_packet_ms = firsts.iter().map(|t| t.map(|t| t - commit)).collect();
        s.first_packet.extend(c.first_packet_ms.iter().flatten());
        s.first_packet_from_put_start
            .extend(firsts.iter().flatten().map(|t| t - put_start));
        eprintln!(
            "fleet: {} change {k} (revision {revision}): acks p50 {:.0} ms p99 {:.0} ms max \
             {:.0} ms ({}), first packets {:?} ms, agent CPU {:.2} ms; in {:.1} s: all agents \
             {:.0} ms, etcd {:.0} ms, machine busy {:.0} ms; {} missing",
            kind.name(),
            c.ack_ms.p50,
            c.ack_ms.p99,
            c.ack_ms.max,
            c.slowest_host,
            c.first_packet_ms
                .iter()
                .map(|v| v.map(|v| v.round()))
                .collect::<Vec<_>>(),
            c.cpu_ms_mean,
            c.window_s,
            c.agents_cpu_ms,
            c.etcd_cpu_ms,
            c.machine_busy_ms,
            c.missing.len()
        );
        Ok(c)
    }

    /// Each host's first ack enforcing `revision` or later: (seen, the agent's unix_ms).
    fn wait_acks(
        &self,
        mut from: usize,
        revision: i64,
        timeout: Duration,
    ) -> BTreeMap<String, (f64, f64)> {
        let deadline = Instant::now() + timeout;
        let mut got = BTreeMap::new();
        while got.len() < self.agents && Instant::now() < deadline {
            let seen = self.observer.since(from);
            from += seen.len();
            for s in seen {
                let Some(host) = s
                    .key
                    .strip_prefix("/sg/status/")
                    .and_then(|r| r.strip_suffix("/ack"))
                else {
                    continue;
                };
                if let Some(a) = parse_ack(&s.value)
                    && a.ok
                    && a.revision >= revision
                {
                    got.entry(host.to_string()).or_insert((s.at_ms, a.unix_ms));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }
}

fn host_name(i: usize) -> String {
    format!("h{i}")
}

fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, u8::try_from(i + 1).expect("at most 250 hosts"))
}

fn new_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 200 + u8::try_from(k).expect("at most 9 changes"))
}

fn ack_key(host: &str) -> String {
    format!("/sg/status/{host}/ack")
}

struct AckSeen {
    revision: i64,
    unix_ms: f64,
    ok: bool,
}

fn parse_ack(value: &str) -> Option<AckSeen> {
    let v: Value = serde_json::from_str(value).ok()?;
    let a = &v["ack"];
    Some(AckSeen {
        revision: a["revision"].as_i64()?,
        unix_ms: a["unix_ms"].as_f64()?,
        ok: a["error"].is_null() && a["revision"].as_i64()? > 0,
    })
}

/// A UDP receiver on each target and one sender (from `src` in `sender`) probing them all
/// every 2 ms while `change` runs; returns when each target got a probe (or 15 s passed):
/// the wall clock of each target's first probe. A probe that arrives before the change is an
/// error: the port was open already.
fn first_packets(
    sender: &Netns,
    src: Ipv4Addr,
    targets: &[(&Netns, Ipv4Addr)],
    port: u16,
    change: impl FnOnce() -> Result<()>,
) -> Result<Vec<Option<f64>>> {
    let stop = AtomicBool::new(false);
    let firsts: Vec<Mutex<Option<f64>>> = targets.iter().map(|_| Mutex::new(None)).collect();
    let to: Vec<SocketAddr> = targets
        .iter()
        .map(|(_, a)| SocketAddr::V4(SocketAddrV4::new(*a, port)))
        .collect();
    std::thread::scope(|sc| -> Result<Vec<Option<f64>>> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let mut receivers = Vec::new();
        for ((ns, _), first) in targets.iter().zip(&firsts) {
            let (stop, tx) = (&stop, ready_tx.clone());
            receivers.push(sc.spawn(move || ns.enter(|| receive(port, stop, first, &tx))));
        }
        drop(ready_tx);
        for _ in targets {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .context("a probe receiver did not start")??;
        }
        let all_in = || firsts.iter().all(|f| f.lock().is_ok_and(|f| f.is_some()));
        let sending = sc.spawn(|| sender.enter(|| send(src, &to, &stop)));
        // Time for ARP and for an open port to show itself.
        std::thread::sleep(Duration::from_millis(300));
        let early = firsts.iter().any(|f| f.lock().is_ok_and(|f| f.is_some()));
        let changed = if early {
            Err(anyhow::anyhow!(
                "a probe to port {port} passed before the change"
            ))
        } else {
            change()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while changed.is_ok() && !all_in() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::SeqCst);
        sending
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))???;
        for r in receivers {
            r.join()
                .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        }
        changed?;
        Ok(firsts
            .iter()
            .map(|f| f.lock().ok().and_then(|f| *f))
            .collect())
    })
}

fn receive(
    port: u16,
    stop: &AtomicBool,
    first: &Mutex<Option<f64>>,
    ready: &std::sync::mpsc::Sender<Result<()>>,
) {
    let sock = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .map(|()| s)
    }) {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("bind UDP {port}: {e}")));
            return;
        }
    };
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
        if sock.recv_from(&mut buf).is_ok() {
            let at = now_ms();
            if let Ok(mut f) = first.lock()
                && f.is_none()
            {
                *f = Some(at);
            }
        }
    }
}

fn send(src: Ipv4Addr, to: &[SocketAddr], stop: &AtomicBool) -> Result<()> {
    let s = UdpSocket::bind(SocketAddrV4::new(src, 0))?;
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
        for a in to {
            // Refused or unreachable before the path opens: keep probing.
            let _ = s.send_to(b"sg-bench fleet probe", a);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// One event the observer's watch delivered.
#[derive(Clone, Debug)]
struct Seen {
    /// Wall clock (ms) when its first line was read.
    at_ms: f64,
    key: String,
    value: String,
}

/// `etcdctl watch --prefix /sg/` (policy and status) in a namespace of its own, read line by line as it
/// prints (type, key, value per event); killed on drop.
struct Observer {
    child: Child,
    seen: Arc<Mutex<Vec<Seen>>>,
    reader: Option<JoinHandle<()>>,
}

impl Observer {
    fn start(ns: &Netns, url: &str) -> Result<Observer> {
        let mut c = ns.cmd("nice");
        c.args([
            "-n",
            "-10",
            "etcdctl",
            "--endpoints",
            url,
            "watch",
            "--prefix",
            "/sg/",
        ])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = c.spawn().context("spawn etcdctl watch")?;
        let out = child.stdout.take().context("etcdctl's stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let reader = std::thread::spawn(move || read_events(out, &sink));
        let o = Observer {
            child,
            seen,
            reader: Some(reader),
        };
        // The watch is live once etcdctl has connected; a put it sees proves it.
        std::thread::sleep(Duration::from_millis(300));
        Ok(o)
    }

    fn len(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }

    fn since(&self, from: usize) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|s| s.get(from..).map(<[Seen]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The first event from index `from` on that `f` accepts.
    fn wait_for(&self, from: usize, f: impl Fn(&Seen) -> bool, timeout: Duration) -> Result<Seen> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.since(from).into_iter().find(|s| f(s)) {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("the observer's watch did not deliver the change within {timeout:?}")
    }
}

fn read_events(out: std::process::ChildStdout, sink: &Mutex<Vec<Seen>>) {
    // The reader keeps up with a busy machine: it runs before the agents.
    // SAFETY: plain syscall on this thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10);
    }
    let mut lines = BufReader::new(out).lines();
    loop {
        let Some(Ok(kind)) = lines.next() else { return };
        let at_ms = now_ms();
        let (Some(Ok(key)), Some(Ok(value))) = (lines.next(), lines.next()) else {
            return;
        };
        if kind != "PUT" && kind != "DELETE" {
            continue;
        }
        if let Ok(mut s) = sink.lock() {
            s.push(Seen { at_ms, key, value });
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// How a change is written: a put of the value, or an EC2 API call (its form body).
enum Write {
    Put(String),
    Api(String),
}

impl Write {
    fn value(&self) -> Option<&str> {
        match self {
            Write::Put(v) => Some(v),
            Write::Api(_) => None,
        }
    }
}

/// Writes from one kept-alive connection each to etcd's JSON gateway and to `sg-agent api`:
/// one line in (`["put", key, value]` or `["api", key, form body]`), one line out
/// (`[sent_ms, answered_ms, revision]`, the machine's wall clock; an API call's revision is
/// the key's mod_revision read after the answer). A change costs the machine a request, not a
/// process start (an `etcdctl put` or `aws` is ~150 ms of CPU that would compete with the
/// agents it measures).
const PUTTER_PY: &str = r#"
import base64, http.client, json, sys, time
etcd, api = sys.argv[1], sys.argv[2]
c = http.client.HTTPConnection(etcd, 2379, timeout=10)
a = http.client.HTTPConnection(*api.split(":"), timeout=10)
b64 = lambda s: base64.b64encode(s.encode()).decode()
def post(conn, path, body, ctype):
    conn.request("POST", path, body, {"Content-Type": ctype})
    r = conn.getresponse()
    return r.status, r.read()
for line in sys.stdin:
    op, k, v = json.loads(line)
    t0 = time.time() * 1e3
    if op == "put":
        st, d = post(c, "/v3/kv/put", json.dumps({"key": b64(k), "value": b64(v)}), "application/json")
        t1 = time.time() * 1e3
        rev = int(json.loads(d)["header"]["revision"]) if st == 200 else -st
    else:
        st, d = post(a, "/", v, "application/x-www-form-urlencoded; charset=utf-8")
        t1 = time.time() * 1e3
        if st == 200:
            st, d = post(c, "/v3/kv/range", json.dumps({"key": b64(k)}), "application/json")
            rev = int(json.loads(d)["kvs"][0]["mod_revision"]) if st == 200 else -st
        else:
            sys.stderr.write(d.decode(errors="replace") + "\n")
            rev = -st
    print(json.dumps([t0, t1, rev]), flush=True)
"#;

struct Putter {
    child: Child,
    io: Mutex<(
        std::process::ChildStdin,
        std::io::Lines<BufReader<std::process::ChildStdout>>,
    )>,
}

impl Putter {
    fn start(ns: &Netns, etcd: &str) -> Result<Putter> {
        let mut child = ns
            .cmd("python3")
            .args(["-c", PUTTER_PY, etcd, API_LISTEN])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn the putter")?;
        let stdin = child.stdin.take().context("the putter's stdin")?;
        let stdout = child.stdout.take().context("the putter's stdout")?;
        Ok(Putter {
            child,
            io: Mutex::new((stdin, BufReader::new(stdout).lines())),
        })
    }

    fn write(&self, key: &str, w: &Write) -> Result<(f64, f64, i64)> {
        let mut io = self.io.lock().map_err(|_| anyhow::anyhow!("putter lock"))?;
        let line = match w {
            Write::Put(v) => json!(["put", key, v]),
            Write::Api(body) => json!(["api", key, body]),
        };
        writeln!(io.0, "{line}").context("to the putter")?;
        let line = io.1.next().context("the putter ended")??;
        let (t0, t1, rev): (f64, f64, i64) =
            serde_json::from_str(&line).with_context(|| format!("the putter said {line}"))?;
        if rev < 0 {
            bail!("write {key}: HTTP {} (the answer is on stderr)", -rev);
        }
        Ok((t0, t1, rev))
    }
}

impl Drop for Putter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sg-agent api --no-auth` on the store, in the observer's namespace; killed on drop.
struct ApiServer {
    child: Child,
}

impl ApiServer {
    fn start(ns: &Netns, bin: &Path) -> Result<ApiServer> {
        let store = format!("etcd://{ETCD_ADDR}:2379");
        let mut child = ns
            .cmd(&bin.to_string_lossy())
            .args([
                "api",
                "--store",
                &store,
                "--listen",
                API_LISTEN,
                "--no-auth",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start sg-agent api")?;
        let out = child.stdout.take().context("the API's stdout")?;
        let api = ApiServer { child };
        // Its first line says it listens (printed once the socket is bound); the rest is
        // drained so that the API never writes into a closed pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(first))) if first.contains("listening") => Ok(api),
            other => bail!("sg-agent api did not start: {other:?}"),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One running agent.
struct Agent {
    host: String,
    child: Child,
    /// Its namespace's inode: where its pins and state are (`netns-<inode>`).
    inode: u64,
    log: Option<JoinHandle<()>>,
}

/// The agents; on drop every one is killed and its pins and state removed (the namespaces
/// go afterwards, with the rig).
#[derive(Default)]
struct Agents(Vec<Agent>);

impl Agents {
    fn start(
        &mut self,
        cluster: &EtcdCluster,
        bin: &Path,
        store: &str,
        i: usize,
        logs: &Path,
    ) -> Result<()> {
        let host = host_name(i);
        let ns = &cluster.host(&host).ns;
        let role = if i.is_multiple_of(2) {
            "sg-web"
        } else {
            "sg-db"
        };
        let mut c = ns.cmd(&bin.to_string_lossy());
        c.args(["daemon", "--store", store, "--host", &host])
            .args(["--register", &format!("eth0={role}")])
            .args([
                "--lease-ttl",
                "10",
                "--metrics",
                "127.0.0.1:9617",
                "--poll",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .with_context(|| format!("start the agent of {host}"))?;
        let err = child.stderr.take().context("the agent's stderr")?;
        let path = logs.join(format!("{host}.log"));
        let log = std::thread::spawn(move || stamp_lines(err, &path));
        self.0.push(Agent {
            host,
            child,
            inode: ns.inode()?,
            log: Some(log),
        });
        Ok(())
    }

    fn check_running(&mut self) -> Result<()> {
        for a in &mut self.0 {
            if let Some(st) = a.child.try_wait()? {
                bail!("the agent of {} exited ({st}); see its log", a.host);
            }
        }
        Ok(())
    }

    /// Every agent's run time so far (all its threads), ns.
    fn cpu_ns(&self) -> Vec<u64> {
        self.0.iter().map(|a| task_cpu_ns(a.child.id())).collect()
    }

    /// Each agent's CPU while nothing changes, ms per second.
    fn idle_rates(&self, over: Duration) -> Result<Vec<f64>> {
        let a = self.cpu_ns();
        let t0 = Instant::now();
        std::thread::sleep(over);
        let b = self.cpu_ns();
        let secs = t0.elapsed().as_secs_f64();
        Ok(a.iter()
            .zip(&b)
            .map(|(a, b)| b.saturating_sub(*a) as f64 / 1e6 / secs)
            .collect())
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = a.child.kill();
        }
        for a in &mut self.0 {
            let _ = a.child.wait();
            for dir in ["/sys/fs/bpf/sg", "/run/sg"] {
                let p = Path::new(dir).join(format!("netns-{}", a.inode));
                let _ = std::fs::remove_dir_all(p);
            }
            if let Some(l) = a.log.take() {
                let _ = l.join();
            }
        }
    }
}

/// Sum of the run time of every thread of `pid` (`/proc/PID/task/*/schedstat`, first field).
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy time of all CPUs since boot (/proc/stat: everything but idle and iowait), ms.
fn machine_busy_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: guest time is inside user already.
    let busy: u64 = f.iter().take(8).sum::<u64>() - f.get(3).unwrap_or(&0) - f.get(4).unwrap_or(&0);
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    busy as f64 * 1e3 / hz as f64
}

/// Copies an agent's stderr to `path`, each line prefixed with the wall clock (unix seconds
/// with ms: env_logger's own stamps have whole seconds).
fn stamp_lines(err: std::process::ChildStderr, path: &Path) {
    let Ok(mut f) = std::fs::File::create(path) else {
        return;
    };
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { return };
        let _ = writeln!(f, "{:.3} {line}", now_ms() / 1e3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let d = Dist::of(&v);
        assert_eq!((d.n, d.p50, d.p99, d.max), (200, 100.0, 198.0, 200.0));
        assert_eq!(Dist::of(&[7.0]).p99, 7.0);
        assert_eq!(Dist::of(&[]).n, 0);
    }

    #[test]
    fn acks_parse_with_their_revision_and_error() {
        let a = parse_ack(
            r#"{"schema":1,"ack":{"revision":12,"tried":12,"hash":"ab","generation":3,"unix_ms":1700000000123,"error":null}}"#,
        )
        .unwrap();
        assert_eq!(
            (a.revision, a.unix_ms, a.ok),
            (12, 1_700_000_000_123.0, true)
        );
        let refused = parse_ack(
            r#"{"schema":1,"ack":{"revision":0,"tried":5,"hash":"","generation":0,"unix_ms":1,"error":"bad"}}"#,
        )
        .unwrap();
        assert!(!refused.ok);
    }
}
