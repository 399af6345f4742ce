//! A test bed for the end-to-end tests: a LAN of hosts, the servers started on them, the
//! policies written for them and the real sg-agent applied in them, torn down in the safe
//! order on drop (agents detach while their namespaces exist, then servers, namespaces,
//! files). Helpers panic with context instead of returning errors: they are for tests.
//! Owns only that ordering and bookkeeping; hosts, servers, the agent and probes are the
//! other lab modules'.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::agents::{Agents, Counters, Flow};
use crate::probe::{self, Probe, Row};
use crate::scenario::INST;
use crate::services::{self as svc, LabFiles};
use crate::topology::{Host, HostSpec, Lan};
use sg_testkit::netns::Proc;

/// A server to start on a host.
#[derive(Clone, Copy, Debug)]
pub enum Server {
    Https(u16),
    Http(u16),
    Ssh(u16),
    TcpEcho(u16),
    UdpEcho(u16),
    /// Raw-IP echo of a protocol, optionally also answering with another protocol.
    Raw(u8, Option<u8>),
}

/// Field order is drop order.
pub struct Bed {
    pub agents: Agents,
    servers: Vec<Proc>,
    pub lan: Lan,
    pub files: LabFiles,
    written: std::sync::atomic::AtomicU32,
}

impl Bed {
    /// Hosts on one bridge: (name, IPv4, IPv6), with the sg-agent binary the tests drive
    /// ([`sg_testkit::agent_bin`]).
    pub fn new(hosts: &[(&str, &str, &str)]) -> Bed {
        sg_testkit::netns::require_root();
        let files = LabFiles::new().expect("lab files (openssl, ssh-keygen)");
        let specs: Vec<HostSpec> = hosts
            .iter()
            .map(|(n, a, b)| HostSpec::new(n, a, b))
            .collect();
        let lan = Lan::new(&specs).expect("lab LAN");
        Bed {
            agents: Agents::new(sg_testkit::agent_bin()),
            servers: Vec::new(),
            lan,
            files,
            written: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.lan.host(name)
    }

    /// Starts servers on a host (each checked to be listening).
    pub fn serve(&mut self, host: &str, servers: &[Server]) {
        for s in servers {
            let h = self.lan.host(host);
            let f = &self.files;
            let p = match *s {
                Server::Https(p) => svc::https_server(h, f, p),
                Server::Http(p) => svc::http_server(h, f, p),
                Server::Ssh(p) => svc::sshd(h, f, p),
                Server::TcpEcho(p) => svc::tcp_echo(h, p),
                Server::UdpEcho(p) => svc::udp_echo(h, f, p),
                Server::Raw(p, o) => svc::raw_echo(h, f, p, o),
            }
            .unwrap_or_else(|e| panic!("start {s:?} on {host}: {e:#}"));
            self.servers.push(p);
        }
    }

    /// `sg-agent daemon ARGS --metrics 127.0.0.1:9617` on `host`, once it serves its metrics
    /// (within 30 s, or a panic with its log).
    pub fn daemon(&self, host: &str, args: &[&str]) -> Proc {
        let bin = self.agents.bin().display().to_string();
        let mut argv = vec![bin.as_str(), "daemon"];
        argv.extend(args);
        argv.extend(["--metrics", "127.0.0.1:9617"]);
        let d = self.host(host).ns.spawn(&argv).expect("daemon started");
        let t0 = std::time::Instant::now();
        while !d.log().contains("metrics on") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "daemon not ready within 30 s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Keeps a process started elsewhere alive as long as the bed.
    pub fn hold(&mut self, p: Proc) {
        self.servers.push(p);
    }

    /// Writes a policy file (any format sg reads) and returns its path.
    pub fn policy(&self, text: &str) -> PathBuf {
        let n = self
            .written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = self.files.dir().join(format!("policy-{n}.yaml"));
        std::fs::write(&p, text).expect("write policy");
        p
    }

    /// Writes `text` and runs `sg-agent apply` on each host; returns the last output.
    pub fn apply(&self, hosts: &[&str], text: &str) -> String {
        let p = self.policy(text);
        let mut out = String::new();
        for h in hosts {
            out = self
                .agents
                .apply(&self.host(h).ns, &p)
                .unwrap_or_else(|e| panic!("apply on {h}: {e:#}\npolicy:\n{text}"));
        }
        out
    }

    /// Applies on each member host a policy of `groups` (the `security_groups:` part of the
    /// YAML) whose instances are those hosts, at their own addresses, each a member of its
    /// groups (YAML list items). The policy most end-to-end tests need: it never restates an
    /// address the bed already knows. Returns the last agent's output.
    pub fn apply_members(&self, groups: &str, members: &[(&str, &str)]) -> String {
        let hosts: Vec<&str> = members.iter().map(|(name, _)| *name).collect();
        self.apply(&hosts, &self.members_text(groups, members))
    }

    /// The policy [`Bed::apply_members`] applies, written to a file and not applied.
    pub fn members_policy(&self, groups: &str, members: &[(&str, &str)]) -> PathBuf {
        self.policy(&self.members_text(groups, members))
    }

    fn members_text(&self, groups: &str, members: &[(&str, &str)]) -> String {
        let mut text = format!("{groups}instances:\n");
        for (name, member_of) in members {
            let h = self.host(name);
            text.push_str(&format!(
                "  - {{name: {name}, addresses: [{}, \"{}\"], groups: [{member_of}]}}\n",
                h.v4(),
                h.v6()
            ));
        }
        text
    }

    /// Runs the shell command line `cmd` in one SSH session from host `from` to `to` (port
    /// 22), as an administrator would; sshd sets SSH_CONNECTION. Bounded to 30 s.
    pub fn over_ssh(&self, from: &str, to: IpAddr, cmd: &str) -> Output {
        let argv = svc::ssh_args(&self.files, to, 22, cmd);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.host(from)
            .ns
            .run(&argv, Duration::from_secs(30))
            .expect("ssh ran")
    }

    /// The shell command that runs `sg-agent ARGS` inside an SSH session ([`Bed::over_ssh`]).
    /// The lab's sshd has a private /run (`services::sshd`), so the agent enters this test
    /// process's mount namespace (`nsenter -m`) to share /run/sg and /sys/fs/bpf with the
    /// agents the test runs; it stays in the host's network namespace.
    pub fn agent_cmd_for_ssh(&self, args: &str) -> String {
        format!(
            "nsenter -m -t {} {} {args}",
            std::process::id(),
            self.agents.bin().display()
        )
    }

    /// Whether a new SSH connection from host `from` to `to` gets in (3 s connect timeout).
    pub fn new_ssh_works(&self, from: &str, to: IpAddr) -> bool {
        svc::ssh(self.host(from), &self.files, to, 22).expect("ssh ran")
    }

    /// [`Bed::apply_members`] with inst the only member.
    pub fn apply_to_inst(&self, groups: &str, member_of: &str) -> String {
        self.apply_members(groups, &[(INST.0, member_of)])
    }

    /// Like [`Bed::apply`] with `--ingress-hook HOOK`.
    pub fn apply_hook(&self, hosts: &[&str], hook: &str, text: &str) -> String {
        let p = self.policy(text);
        let mut out = String::new();
        for h in hosts {
            out = self
                .agents
                .apply_with(&self.host(h).ns, &p, &["--ingress-hook", hook])
                .unwrap_or_else(|e| panic!("apply on {h}: {e:#}\npolicy:\n{text}"));
        }
        out
    }

    pub fn counters(&self, host: &str) -> Counters {
        self.agents
            .counters(&self.host(host).ns)
            .unwrap_or_else(|e| panic!("counters on {host}: {e:#}"))
    }

    pub fn conntrack(&self, host: &str) -> Vec<Flow> {
        self.agents
            .conntrack(&self.host(host).ns)
            .unwrap_or_else(|e| panic!("conntrack on {host}: {e:#}"))
    }

    /// Runs the probes and asserts every row, printing the table on failure.
    pub fn expect(&self, probes: &[Probe]) -> Vec<Row> {
        probe::expect_all(&self.lan, &self.files, probes)
    }

    /// Runs the probes without asserting.
    pub fn run(&self, probes: &[Probe]) -> Vec<Row> {
        probe::run_probes(&self.lan, &self.files, probes).expect("probes ran")
    }

    /// Detaches every agent now and checks no pins remain (the drop does the same, but a
    /// test that calls this fails loudly instead of printing).
    pub fn detach_all(&self) {
        self.agents.detach_all_cleanly();
    }
}
