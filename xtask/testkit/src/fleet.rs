//! The fleet tests' set-up (fleet_store.rs, fleet_faults.rs): an etcd cluster with host
//! namespaces beside it ([`crate::etcd`]), real `sg-agent daemon --store` processes in those
//! hosts, a TCP echo server and connect probes between hosts (the traffic that proves
//! enforcement), and the store as the operator sees it (`sg-agent store ...`, the acks).
//!
//! Every wait has a deadline and every command a timeout. Dropping a [`Fleet`] kills its
//! agents and servers, runs `sg-agent detach` in every host namespace and removes what is
//! left of their pins and state, before the cluster (and with it the namespaces) goes: a
//! failing test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent_harness::{Bg, SERVER_PY, netns_inode, ready, run_bounded, text};
use crate::etcd::{EtcdCluster, EtcdOptions};
use crate::netns::{Netns, require_root};

/// How long one `sg-agent` command (import, status, verify) may take.
const COMMAND: Duration = Duration::from_secs(30);

/// Where each agent serves its metrics (every host has its own loopback).
pub const METRICS: &str = "127.0.0.1:9617";

/// Bound of every convergence wait (they take well under a second when all is well).
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Bound of the first convergence: agents starting together load their BPF programs on two
/// busy cores (seconds each).
pub const STARTUP: Duration = Duration::from_secs(60);

/// The test hosts' addresses (192.0.2.0/24, the fleet tests' subnet).
pub const DB: &str = "192.0.2.10";
pub const WEB1: &str = "192.0.2.11";
pub const WEB2: &str = "192.0.2.12";
pub const WEB3: &str = "192.0.2.13";
pub const DB2: &str = "192.0.2.20";

/// The fleet's groups: sg-db admits MySQL from sg-web's members only (R1); sg-web serves 8080
/// to the subnet. No instances: hosts register themselves.
pub const POLICY_A: &str = r#"
security_groups:
  - id: sg-web
    description: web servers
    ingress:
      - {protocol: tcp, ports: 8080, source: 192.0.2.0/24, description: http}
  - id: sg-db
    description: databases
    ingress:
      - {protocol: tcp, ports: 3306, source: sg-web, description: mysql from web}
"#;

/// A with MySQL moved to 3307: a rule change (E7).
pub fn policy_b() -> String {
    POLICY_A.replace("ports: 3306", "ports: 3307")
}

/// One TCP connect from SRC to DST:PORT and an echo, within TIMEOUT seconds: exit 0 when it
/// went through, 1 when not (refused, dropped: timed out).
const PROBE_PY: &str = r#"
import socket, sys
src, dst, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(); s.settimeout(timeout); s.bind((src, 0))
try:
    s.connect((dst, port)); s.sendall(b"sg-fleet"); ok = s.recv(64) == b"sg-fleet"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"#;

/// One agent process and its log.
struct Agent {
    host: String,
    proc: Option<Bg>,
    log: PathBuf,
    /// How many times this host's agent was started.
    starts: u32,
}

/// An etcd cluster, hosts beside it, and the agents, servers and files of one test.
pub struct Fleet {
    pub etcd: EtcdCluster,
    /// Policy files, logs, the Python helpers (removed on drop).
    pub dir: PathBuf,
    agents: Vec<Agent>,
    servers: Vec<Bg>,
}

impl Fleet {
    /// A cluster of `members` (1 or 3) with `hosts` (name, IPv4 address of its eth0) beside it.
    pub fn new(members: usize, hosts: &[(&str, &str)]) -> Fleet {
        require_root();
        let mut etcd = EtcdCluster::start(members, EtcdOptions::default())
            .unwrap_or_else(|e| panic!("start etcd: {e:#}"));
        for (name, addr) in hosts {
            etcd.add_host(name, addr)
                .unwrap_or_else(|e| panic!("host {name}: {e:#}"));
        }
        let dir = etcd.dir().join("fleet");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("server.py"), SERVER_PY).unwrap();
        std::fs::write(dir.join("probe.py"), PROBE_PY).unwrap();
        Fleet {
            etcd,
            dir,
            agents: Vec::new(),
            servers: Vec::new(),
        }
    }

    pub fn ns(&self, host: &str) -> &Netns {
        &self.etcd.host(host).ns
    }

    /// The IPv4 address of a host's eth0.
    pub fn addr(&self, host: &str) -> String {
        self.etcd.host(host).addr.to_string()
    }

    /// Writes a file into the test's directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `sg-agent ARGS` run in a host's namespace, or (None) in etcd member 0's namespace,
    /// which stays on the bridge whatever its etcd does and where no agent enforces.
    pub fn sg(&self, host: Option<&str>, args: &[&str]) -> Output {
        let ns = match host {
            Some(h) => self.ns(h),
            None => self.etcd.member_ns(0),
        };
        let mut c = ns.cmd(crate::agent_bin());
        c.args(args).env("RUST_LOG", "warn");
        run_bounded(c, COMMAND)
    }

    /// `sg-agent [--json] store --store <every member> ARGS`, from outside every host.
    pub fn store(&self, json: bool, args: &[&str]) -> Output {
        let endpoints = self.etcd.endpoints();
        let mut all = Vec::new();
        if json {
            all.push("--json");
        }
        all.extend(["store", "--store", endpoints.as_str()]);
        all.extend_from_slice(args);
        self.sg(None, &all)
    }

    /// `store import FILE`, which must succeed; the store revision it wrote (or found).
    pub fn import(&self, file: &Path) -> Value {
        let o = self.store(true, &["import", file.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "import {}:\n{}",
            file.display(),
            text(&o)
        );
        json_of(&o)
    }

    /// `store --json status`.
    pub fn status(&self) -> Value {
        let o = self.store(true, &["status"]);
        assert!(o.status.success(), "store status:\n{}", text(&o));
        json_of(&o)
    }

    /// `store export --with-registrations`: the whole store as one native YAML file (what
    /// `check` and `verify FILE` judge).
    pub fn export(&self) -> String {
        self.export_with(&["export", "--with-registrations"])
    }

    /// `store export`: the policy without the hosts' registrations (what `import` takes back).
    pub fn export_policy(&self) -> String {
        self.export_with(&["export"])
    }

    fn export_with(&self, args: &[&str]) -> String {
        let o = self.store(false, args);
        assert!(o.status.success(), "store {args:?}:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts `sg-agent daemon --store ... --host HOST --register REGISTER --lease-ttl TTL` in
    /// the host's namespace (a new log file per start).
    pub fn start_agent(&mut self, host: &str, register: &str, ttl: u32) {
        let endpoints = self.etcd.endpoints();
        let ttl = ttl.to_string();
        let args = [
            "daemon",
            "--store",
            endpoints.as_str(),
            "--host",
            host,
            "--register",
            register,
            "--lease-ttl",
            ttl.as_str(),
            "--metrics",
            METRICS,
        ];
        let i = match self.agents.iter().position(|a| a.host == host) {
            Some(i) => i,
            None => {
                self.agents.push(Agent {
                    host: host.to_string(),
                    proc: None,
                    log: PathBuf::new(),
                    starts: 0,
                });
                self.agents.len() - 1
            }
        };
        let ns = &self.etcd.host(host).ns;
        let a = &mut self.agents[i];
        assert!(a.proc.is_none(), "the agent of {host} runs already");
        a.starts += 1;
        a.log = self.dir.join(format!("{host}.agent{}.log", a.starts));
        let mut c = ns.cmd(crate::agent_bin());
        c.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&a.log).unwrap()));
        let child = c.spawn().expect("spawn sg-agent daemon");
        a.proc = Some(Bg {
            child,
            what: format!("the agent of {host}"),
        });
    }

    fn agent(&mut self, host: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.host == host)
            .unwrap_or_else(|| panic!("no agent was started on {host}"))
    }

    /// SIGKILL the host's agent (its pins keep enforcing) and reap it.
    pub fn kill_agent(&mut self, host: &str) {
        let mut p = self.agent(host).proc.take().expect("the agent runs");
        p.kill9();
    }

    /// Sends a signal to the host's agent (SIGSTOP, SIGCONT).
    pub fn signal_agent(&mut self, host: &str, sig: i32) {
        self.agent(host)
            .proc
            .as_ref()
            .expect("the agent runs")
            .signal(sig);
    }

    /// Panics (with its log) if the host's agent has exited.
    pub fn assert_agent_runs(&mut self, host: &str) {
        let a = self.agent(host);
        let log = a.log.clone();
        let p = a.proc.as_mut().expect("the agent was started");
        if let Some(st) = p.child.try_wait().expect("try_wait") {
            panic!(
                "the agent of {host} exited ({st}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    /// What the host's agent logged in its current (or last) run.
    pub fn log(&self, host: &str) -> String {
        let a = self
            .agents
            .iter()
            .find(|a| a.host == host)
            .unwrap_or_else(|| panic!("no agent was started on {host}"));
        std::fs::read_to_string(&a.log).unwrap_or_default()
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            s += &format!(
                "--- {} ({}):\n{}\n",
                a.host,
                a.log.display(),
                std::fs::read_to_string(&a.log).unwrap_or_default()
            );
        }
        s
    }

    /// Starts the echo server on `ports` in the host's namespace.
    pub fn serve(&mut self, host: &str, ports: &[u16]) {
        let mut c = self.ns(host).cmd("python3");
        c.arg(self.dir.join("server.py"))
            .args(ports.iter().map(|p| format!("tcp:{p}")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = c.spawn().expect("spawn server.py");
        self.servers
            .push(ready(child, format!("server.py on {host}")));
    }

    /// One TCP connect (and echo) from the host's address to `dst:port`, 1 s timeout: does the
    /// traffic go through?
    pub fn connects(&self, from: &str, dst: &str, port: u16) -> bool {
        self.connects_within(from, dst, port, Duration::from_secs(1))
    }

    pub fn connects_within(&self, from: &str, dst: &str, port: u16, timeout: Duration) -> bool {
        let mut c = self.ns(from).cmd("python3");
        c.arg(self.dir.join("probe.py")).args([
            self.addr(from),
            dst.to_string(),
            port.to_string(),
            format!("{:.3}", timeout.as_secs_f64()),
        ]);
        run_bounded(c, timeout + Duration::from_secs(10))
            .status
            .success()
    }

    /// `sg-agent verify --store ...` in the host's namespace: the oracle (the live maps mean
    /// what a fresh compile of the store's policy means). Panics with the differences.
    pub fn verify_store(&self, host: &str) {
        let endpoints = self.etcd.endpoints();
        let o = self.sg(Some(host), &["verify", "--store", endpoints.as_str()]);
        assert!(
            o.status.success(),
            "verify --store on {host}:\n{}\nagents:\n{}",
            text(&o),
            self.logs()
        );
    }

    /// `sg-agent verify FILE` in the host's namespace, which must pass.
    pub fn verify_file(&self, host: &str, file: &Path) {
        let o = self.sg(Some(host), &["verify", file.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "verify {} on {host}:\n{}",
            file.display(),
            text(&o)
        );
    }

    /// The host agent's Prometheus text (curl in its namespace).
    pub fn metrics(&self, host: &str) -> String {
        let url = format!("http://{METRICS}/metrics");
        self.ns(host)
            .run_ok(
                &["curl", "-sS", "--max-time", "5", &url],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("scrape the agent of {host}: {e:#}"))
    }

    /// `sg-agent --json status` in the host's namespace (what is applied there).
    pub fn local_status(&self, host: &str) -> Value {
        let o = self.sg(Some(host), &["--json", "status"]);
        assert!(o.status.success(), "status on {host}:\n{}", text(&o));
        json_of(&o)
    }

    /// The host's entry in `store status` (Null when the store does not know it).
    pub fn host_status(status: &Value, host: &str) -> Value {
        status["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["host"] == host)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Polls `store status` until `done(status)` holds; the status that satisfied it. Panics
    /// after `timeout` with the last status and the agents' logs.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        let mut last = Value::Null;
        while t0.elapsed() < timeout {
            let o = self.store(true, &["status"]);
            if o.status.success() {
                last = json_of(&o);
                if done(&last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; last store status:\n{:#}\nagents:\n{}",
            last,
            self.logs()
        );
    }

    /// Waits until every one of `hosts` acknowledged the store's current policy without an
    /// error (S2); the status then.
    pub fn wait_current(&self, hosts: &[&str], timeout: Duration) -> Value {
        self.wait_status(
            &format!("{hosts:?} to acknowledge the store's current policy"),
            timeout,
            |s| hosts.iter().all(|h| is_current(&Fleet::host_status(s, h))),
        )
    }

    /// Waits until `cond` holds (bounded), panicking with the agents' logs.
    pub fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; agents:\n{}",
            self.logs()
        );
    }
}

/// A host's status entry says it enforces the store's current policy, without an error.
pub fn is_current(h: &Value) -> bool {
    h["current"] == true && h["ack"].is_object() && h["ack"]["error"].is_null()
}

/// The value of the first sample of `name` (any labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Milliseconds since the Unix epoch (what acks carry in `unix_ms`).
pub fn unix_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(d.as_millis()).expect("fits")
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(o)))
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.servers.clear();
        for a in &mut self.agents {
            if let Some(mut p) = a.proc.take() {
                // A stopped agent dies of SIGKILL too.
                p.kill9();
            }
        }
        // What the agents left enforcing: detach, then whatever pins or state remain.
        for h in self.etcd.hosts() {
            let mut c = h.ns.cmd(crate::agent_bin());
            c.arg("detach").stdout(Stdio::null()).stderr(Stdio::null());
            let _ = run_quietly(c);
            let ino = netns_inode(&h.ns);
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/sg/netns-{ino}"));
            let _ = std::fs::remove_dir_all(format!("/run/sg/netns-{ino}"));
        }
        // self.dir is inside the cluster's directory, removed with it.
    }
}

/// Runs a clean-up command, killing it after 20 s (drop must not hang).
fn run_quietly(mut c: Command) -> Option<i32> {
    let mut child = c.stdin(Stdio::null()).spawn().ok()?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A host's acknowledgement in a `store status --json` answer.
pub fn ack(status: &Value, host: &str) -> Value {
    Fleet::host_status(status, host)["ack"].clone()
}

/// The generation a host acknowledged (0 or 1: a rule change flips it, a membership change
/// does not).
pub fn generation(status: &Value, host: &str) -> u64 {
    ack(status, host)["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ack generation for {host}: {status:#}"))
}
