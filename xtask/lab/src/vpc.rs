//! The VPC lab of issue 17: the seed article's tiers in two subnets behind a router that
//! enforces their network ACLs (examples/vpc-nacl.yaml), with the outside world on a third
//! leg of the router. Instances and the router each run their own sg-agent applying the SAME
//! policy file: the instances bind their interfaces by address (security groups), the router
//! binds the subnets by their router addresses (NACLs).
//!
//! ```text
//!  my-ip 198.51.100.10  internet 203.0.113.50       (bridge "out")
//!                 \        /
//!                  r-out: 198.51.100.1, 203.0.113.1, 2001:db8:20::1, 2001:db8:30::1
//!  router ---------r-pub:  192.0.2.1/25,   2001:db8:10::1/64 -- web-1 .11, web-2 .12
//!                  r-priv: 192.0.2.129/25, 2001:db8:11::1/64 -- db-1 .140
//! ```
//!
//! Owns the topology, the servers, the probe tables and the policy edits of the NACL rows;
//! the mechanics live in netns / services / agents / probe.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::agents::Agents;
use crate::probe::{self, Both, Expect, Hosts, Probe, Row, Svc, V4, table};
use crate::services::{self as svc, LabFiles};
use crate::topology::{Host, HostSpec};
use sg_testkit::netns::{Netns, Proc, veth};

/// (name, IPv4, IPv6, leg of the router, prefix lengths).
const HOSTS: &[(&str, &str, &str, Leg)] = &[
    ("web-1", "192.0.2.11", "2001:db8:10::11", Leg::Public),
    ("web-2", "192.0.2.12", "2001:db8:10::12", Leg::Public),
    ("db-1", "192.0.2.140", "2001:db8:11::140", Leg::Private),
    ("my-ip", "198.51.100.10", "2001:db8:20::10", Leg::Out),
    ("internet", "203.0.113.50", "2001:db8:30::50", Leg::Out),
];

/// `sg-agent explain` on the lab's row that surprises people (A1): web-1's reply to my IP's
/// SSH client (port 22 to an ephemeral port) leaves the public subnet through its NACL.
pub const EXPLAIN_SSH_REPLY: [&str; 10] = [
    "--from",
    "192.0.2.11",
    "--to",
    "198.51.100.10",
    "--proto",
    "tcp",
    "--sport",
    "22",
    "--port",
    "40000",
];

/// The instances (each applies the policy).
pub const INSTANCES: &[&str] = &["web-1", "web-2", "db-1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Public,
    Private,
    Out,
}

impl Leg {
    fn bridge(self) -> &'static str {
        match self {
            Leg::Public => "br-pub",
            Leg::Private => "br-priv",
            Leg::Out => "br-out",
        }
    }
    /// The router's device on this leg and its addresses (with prefix lengths).
    fn router(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Leg::Public => ("r-pub", &["192.0.2.1/25", "2001:db8:10::1/64"]),
            Leg::Private => ("r-priv", &["192.0.2.129/25", "2001:db8:11::1/64"]),
            Leg::Out => (
                "r-out",
                &[
                    "198.51.100.1/24",
                    "203.0.113.1/24",
                    "2001:db8:20::1/64",
                    "2001:db8:30::1/64",
                ],
            ),
        }
    }
    fn prefix_len(self, v6: bool) -> u8 {
        match (self, v6) {
            (_, true) => 64,
            (Leg::Out, false) => 24,
            _ => 25,
        }
    }
    /// The hosts' gateway: the router's address on this leg for the host's own range.
    fn gateway(self, v4: &str, v6: bool) -> &'static str {
        match (self, v6) {
            (Leg::Public, false) => "192.0.2.1",
            (Leg::Public, true) => "2001:db8:10::1",
            (Leg::Private, false) => "192.0.2.129",
            (Leg::Private, true) => "2001:db8:11::1",
            (Leg::Out, false) if v4.starts_with("198.") => "198.51.100.1",
            (Leg::Out, false) => "203.0.113.1",
            (Leg::Out, true) if v4.starts_with("198.") => "2001:db8:20::1",
            (Leg::Out, true) => "2001:db8:30::1",
        }
    }
}

/// A running VPC lab. Field order is drop order: agents detach first, then servers stop,
/// then hosts, the router and the switch go, then files.
pub struct VpcLab {
    pub agents: Agents,
    servers: Vec<Proc>,
    pub hosts: Vec<Host>,
    pub router: Netns,
    pub switch: Netns,
    pub files: LabFiles,
    /// The lab's copy of the policy: every instance and the router apply it.
    pub policy: PathBuf,
    /// Each `sg-agent apply` output, in order (the router's last).
    pub applied: Vec<(String, String)>,
}

impl Hosts for VpcLab {
    fn find(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name() == name)
    }
}

impl VpcLab {
    /// Builds the VPC, starts the servers and applies `policy` on every instance and on
    /// the router.
    pub fn up(agent: &Path, policy: &Path) -> Result<VpcLab> {
        let files = LabFiles::new()?;
        let copy = files.dir().join("vpc-nacl.yaml");
        std::fs::copy(policy, &copy).with_context(|| format!("copy {}", policy.display()))?;
        let switch = Netns::new("vsw")?;
        let router = Netns::new("vrt")?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for leg in [Leg::Public, Leg::Private, Leg::Out] {
            switch.ip(&["link", "add", leg.bridge(), "type", "bridge"])?;
            switch.ip(&["link", "set", leg.bridge(), "up"])?;
            let (dev, addrs) = leg.router();
            plug(&switch, &router, dev, leg, &format!("p{dev}"))?;
            for a in addrs {
                add_addr(&router, dev, a)?;
            }
        }
        let mut hosts = Vec::new();
        for (i, (name, v4, v6, leg)) in HOSTS.iter().enumerate() {
            let short: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
            let ns = Netns::new(&short[..short.len().min(6)])?;
            plug(&switch, &ns, "eth0", *leg, &format!("ph{i}"))?;
            add_addr(&ns, "eth0", &format!("{v4}/{}", leg.prefix_len(false)))?;
            add_addr(&ns, "eth0", &format!("{v6}/{}", leg.prefix_len(true)))?;
            ns.ip(&["route", "add", "default", "via", leg.gateway(v4, false)])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                leg.gateway(v4, true),
            ])?;
            hosts.push(Host {
                spec: HostSpec::new(name, v4, v6),
                ns,
                nics: Vec::new(),
            });
        }
        let mut lab = VpcLab {
            agents: Agents::new(agent),
            servers: Vec::new(),
            hosts,
            router,
            switch,
            files,
            policy: copy,
            applied: Vec::new(),
        };
        lab.start_servers()?;
        for inst in INSTANCES {
            let out = lab.agents.apply(&lab.host(inst).ns, &lab.policy)?;
            lab.applied.push((inst.to_string(), out));
        }
        let out = lab.apply_router()?;
        lab.applied.push(("router".into(), out));
        Ok(lab)
    }

    fn start_servers(&mut self) -> Result<()> {
        let f = &self.files;
        let mut servers = Vec::new();
        for web in ["web-1", "web-2"] {
            let h = self.host(web);
            servers.push(svc::https_server(h, f, 443)?);
            servers.push(svc::sshd(h, f, 22)?);
        }
        servers.push(svc::tcp_echo(self.host("db-1"), 3306)?);
        self.servers = servers;
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.find(name)
            .with_context(|| format!("no host {name} in the VPC lab"))
            .unwrap()
    }

    /// `sg-agent apply <the lab's policy>` on the router.
    pub fn apply_router(&self) -> Result<String> {
        self.agents.apply(&self.router, &self.policy)
    }

    /// Edits the lab's policy file (`from` must occur exactly once) and applies it on the
    /// router; returns the apply's output.
    pub fn edit_and_apply_router(&self, from: &str, to: &str) -> Result<String> {
        let text = std::fs::read_to_string(&self.policy)?;
        anyhow::ensure!(
            text.matches(from).count() == 1,
            "{from:?} does not occur exactly once in {}",
            self.policy.display()
        );
        std::fs::write(&self.policy, text.replace(from, to))?;
        self.apply_router()
    }

    /// The paths of examples/vpc-nacl.yaml with what EC2 does: each crosses the NACLs of
    /// the subnets it leaves and enters (A14), and the security groups of its ends (A15).
    #[rustfmt::skip]
    pub fn paths(&self) -> Vec<Probe> {
        use Expect::{Allow, Deny};
        let db = Svc::Db { port: 3306, mariadb: false };
        table(&[
            ("internet", "web-1", Both, Svc::Https(443), Allow, "A14 A15 public in 100/101, out 110/111"),
            ("my-ip", "web-1", Both, Svc::Ssh(22), Deny, "A1 SG allows; no outbound rule for my IP's port"),
            ("my-ip", "web-1", Both, Svc::Ping, Deny, "A16 SG allows; no outbound ICMP rule"),
            ("web-1", "web-2", Both, Svc::Https(443), Allow, "A13 within the subnet: no NACL"),
            ("web-1", "db-1", Both, db.clone(), Allow, "A14 public out 100, private in 100"),
            ("web-2", "db-1", V4, db.clone(), Allow, "A4 100 allow before 110 deny"),
            ("internet", "db-1", Both, db, Deny, "A6 private in: the * rule"),
            ("db-1", "web-1", Both, Svc::Https(443), Deny, "A14 private out: 1024-65535 only"),
        ])
    }

    pub fn run(&self, probes: &[Probe]) -> Result<Vec<Row>> {
        probe::run_probes(self, &self.files, probes)
    }

    /// `sg-agent counters` of the router, as printed for people.
    pub fn router_counters(&self) -> Result<String> {
        self.agents.counters_text(&self.router)
    }
}

/// Plugs `ns`'s new device `dev` into `leg`'s bridge through switch port `port`.
fn plug(switch: &Netns, ns: &Netns, dev: &str, leg: Leg, port: &str) -> Result<()> {
    veth(ns, dev, switch, port)?;
    switch.ip(&["link", "set", port, "master", leg.bridge()])?;
    Ok(())
}

fn add_addr(ns: &Netns, dev: &str, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev])
    }
}
