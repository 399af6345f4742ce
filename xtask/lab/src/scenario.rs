//! The EC2 lab of the seed article, shared by `sg-lab` (`cargo xtask lab`) and the end-to-end
//! tests: web servers in sg-web (HTTPS from anywhere, SSH only from "my IP"), a database in
//! sg-db open on 3306 to sg-web only, default egress. Instances are namespaces on one subnet,
//! each with its own sg-agent applying the SAME policy file and binding by address; "the
//! internet" and "my IP" are namespaces outside. Real servers, real clients, one table.
//!
//! Then it scales out: a new web server joins sg-web and reaches the database at once (R1).
//!
//! Owns the scenario (hosts, servers, paths and their expectations); the mechanics live in
//! netns / topology / services / agents / probe.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::agents::Agents;
use crate::probe::{self, Both, Expect, Probe, Row, Svc, table};
use crate::services::{self as svc, LabFiles};
use crate::topology::{HostSpec, Lan, Naming};
use sg_agent::config::{self, Format};
use sg_testkit::netns::Proc;

/// The instances of examples/ec2-lab.yaml and their addresses (the policy binds by address).
pub const INSTANCES: &[(&str, &str, &str)] = &[
    ("web-1", "192.0.2.11", "2001:db8:10::11"),
    ("web-2", "192.0.2.12", "2001:db8:10::12"),
    ("db-1", "192.0.2.21", "2001:db8:10::21"),
];

/// The instance under test in the end-to-end tests.
pub const INST: (&str, &str, &str) = ("inst", "192.0.2.11", "2001:db8:10::11");
/// "My IP": the administrator's workstation (the SSH rule's /32 and /128).
pub const MY_IP: (&str, &str, &str) = ("my-ip", "198.51.100.10", "2001:db8:20::10");
/// Anybody else on the internet.
pub const INTERNET: (&str, &str, &str) = ("internet", "203.0.113.50", "2001:db8:30::50");

/// The hosts outside the VPC.
pub const CLIENTS: &[(&str, &str, &str)] = &[MY_IP, INTERNET];

/// The web server launched during the run (R1).
pub const NEW_WEB: (&str, &str, &str) = ("web-3", "192.0.2.13", "2001:db8:10::13");

/// sg-web admitting SSH from my-ip alone (IPv4 and IPv6): the administrator's way in (L1,
/// L2).
pub const SSH_FROM_MY_IP: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
"#;

/// sg-web without its SSH rule, only HTTPS from anywhere: the mistake that locks the
/// administrator out (L1, L2).
pub const HTTPS_ONLY: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
"#;

/// The prefix of the namespaces of a lab a person runs (`sg-lab`): `sglab-web-1`, ...
pub const LAB_PREFIX: &str = "sglab-";

/// What stands behind sg-db's port 3306.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A real MariaDB (mariadbd), probed with the mariadb client.
    MariaDb,
    /// socat's TCP echo, probed with nc (MariaDB is not installed, or a test).
    Echo,
}

impl Db {
    pub fn describe(self) -> &'static str {
        match self {
            Db::MariaDb => "MariaDB (mariadbd, probed with the mariadb client)",
            Db::Echo => "a socat TCP echo server standing in for MySQL (MariaDB not used)",
        }
    }
}

pub struct LabOptions {
    /// The sg-agent binary.
    pub agent: PathBuf,
    /// The policy every instance applies: examples/ec2-lab.yaml or its CloudFormation twin.
    pub policy: PathBuf,
    pub naming: Naming,
    /// Use MariaDB when it is installed (the lab); the tests always use the echo server.
    pub want_mariadb: bool,
    /// `sg-agent apply --ingress-hook` (auto, xdp, xdp-skb, tc); None: the agent's default (auto).
    pub ingress_hook: Option<String>,
    /// Every instance applies `policy` at start (the file-driven lab). False: nothing is
    /// applied; the API lab (`crate::api`) runs daemons on a store instead.
    pub apply: bool,
}

/// A running lab. Field order is drop order: agents detach first (while the namespaces
/// still exist), then servers stop, then namespaces go, then files.
pub struct Ec2Lab {
    pub agents: Agents,
    servers: Vec<Proc>,
    pub lan: Lan,
    pub files: LabFiles,
    /// The lab's copy of the policy: every instance applies this file.
    pub policy: PathBuf,
    pub format: Format,
    pub db: Db,
    /// Each instance's `sg-agent apply` output, in order.
    pub applied: Vec<(String, String)>,
    pub ingress_hook: Option<String>,
}

impl Ec2Lab {
    /// Builds the LAN, starts the servers and applies the policy on every instance.
    pub fn up(opts: LabOptions) -> Result<Ec2Lab> {
        let files = LabFiles::new()?;
        let loaded = config::load_file(&opts.policy).map_err(|d| anyhow::anyhow!("{d}"))?;
        let name = opts
            .policy
            .file_name()
            .context("policy file name")?
            .to_owned();
        let policy = files.dir().join(name);
        std::fs::copy(&opts.policy, &policy)
            .with_context(|| format!("copy {}", opts.policy.display()))?;
        let specs: Vec<HostSpec> = INSTANCES
            .iter()
            .chain(CLIENTS)
            .map(|(n, a, b)| HostSpec::new(n, a, b))
            .collect();
        let lan = Lan::with_naming(opts.naming, &specs)?;
        let db = if opts.want_mariadb && svc::mariadb_installed() {
            Db::MariaDb
        } else {
            Db::Echo
        };
        let mut lab = Ec2Lab {
            agents: Agents::new(&opts.agent),
            servers: Vec::new(),
            lan,
            files,
            policy,
            format: loaded.format,
            db,
            applied: Vec::new(),
            ingress_hook: opts.ingress_hook,
        };
        lab.start_servers()?;
        if opts.apply {
            for (inst, _, _) in INSTANCES {
                let out = lab.apply_on(inst)?;
                lab.applied.push((inst.to_string(), out));
            }
        }
        Ok(lab)
    }

    fn start_servers(&mut self) -> Result<()> {
        let lan = &self.lan;
        let f = &self.files;
        for web in ["web-1", "web-2"] {
            let h = lan.host(web);
            self.servers.push(svc::https_server(h, f, 443)?);
            self.servers.push(svc::sshd(h, f, 22)?);
        }
        let db = lan.host("db-1");
        self.servers.push(match self.db {
            Db::MariaDb => svc::mariadb(db, f, 3306)?,
            Db::Echo => svc::tcp_echo(db, 3306)?,
        });
        // Not part of the seed's rules: they make the deny rows meaningful (a port that
        // listens, so "no answer" can only be sg).
        self.servers.push(svc::sshd(db, f, 22)?);
        self.servers.push(svc::https_server(db, f, 443)?);
        self.servers
            .push(svc::http_server(lan.host("internet"), f, 80)?);
        Ok(())
    }

    /// `sg-agent apply <the lab's policy>` on one instance.
    pub fn apply_on(&self, instance: &str) -> Result<String> {
        let h = self.lan.host(instance);
        match &self.ingress_hook {
            Some(hook) => self
                .agents
                .apply_with(&h.ns, &self.policy, &["--ingress-hook", hook]),
            None => self.agents.apply(&h.ns, &self.policy),
        }
    }

    /// A new web server on the LAN (not yet in any group), serving HTTPS like the others.
    pub fn add_web_host(&mut self, (name, v4, v6): (&str, &str, &str)) -> Result<()> {
        self.lan.add_host(HostSpec::new(name, v4, v6))?;
        let h = self.lan.host(name);
        self.servers.push(svc::https_server(h, &self.files, 443)?);
        Ok(())
    }

    pub fn db_svc(&self) -> Svc {
        Svc::Db {
            port: 3306,
            mariadb: self.db == Db::MariaDb,
        }
    }

    /// The seed article's paths, IPv4 and IPv6, with what EC2 does.
    #[rustfmt::skip]
    pub fn paths(&self) -> Vec<Probe> {
        use Expect::{Allow, Deny};
        let db = self.db_svc();
        let https = Svc::Https(443);
        let ssh = Svc::Ssh(22);
        table(&[
            ("internet", "web-1", Both, https.clone(), Allow, "F5 0.0.0.0/0 ::/0"),
            ("internet", "web-2", Both, https.clone(), Allow, "F5 0.0.0.0/0 ::/0"),
            ("my-ip", "web-1", Both, ssh.clone(), Allow, "F5 my IP /32 /128"),
            ("my-ip", "web-2", Both, ssh.clone(), Allow, "F5 my IP /32 /128"),
            ("internet", "web-1", Both, ssh.clone(), Deny, "E1 SSH from my IP only"),
            ("my-ip", "web-1", Both, Svc::Ping, Allow, "I3 echo rule"),
            ("internet", "web-1", Both, Svc::Ping, Deny, "I1 no ICMP rule"),
            ("web-1", "db-1", Both, db.clone(), Allow, "R1 member of sg-web"),
            ("web-2", "db-1", Both, db.clone(), Allow, "R1 member of sg-web"),
            ("web-1", "db-1", Both, Svc::Ping, Allow, "R1 I3"),
            ("internet", "db-1", Both, db.clone(), Deny, "R1 not a member"),
            ("my-ip", "db-1", Both, db.clone(), Deny, "R1 not a member"),
            ("my-ip", "db-1", Both, ssh.clone(), Deny, "E1 sg-db: no SSH"),
            ("internet", "db-1", Both, https.clone(), Deny, "R2 443 not imported"),
            ("web-1", "db-1", Both, https.clone(), Deny, "R2 443 not imported"),
            ("web-1", "web-2", Both, ssh.clone(), Deny, "D4 no self-reference"),
            ("db-1", "web-1", Both, ssh.clone(), Deny, "E1 not my IP"),
            ("db-1", "web-1", Both, https, Allow, "D2 egress, F5 0.0.0.0/0"),
            ("web-1", "internet", Both, Svc::Http(80), Allow, "D2 default egress"),
            ("db-1", "internet", Both, Svc::Http(80), Allow, "D2 default egress"),
        ])
    }

    pub fn run(&self, probes: &[Probe]) -> Result<Vec<Row>> {
        probe::run_probes(&self.lan, &self.files, probes)
    }

    /// Launches web-3 into sg-web: before it is in the policy it cannot reach the database;
    /// after the same policy file lists it and every instance applies it, it can, at once
    /// (R1). Returns the rows and how long db-1's apply took to take effect.
    pub fn scale_out(&mut self) -> Result<(Vec<Row>, String)> {
        use Expect::{Allow, Deny};
        let name = NEW_WEB.0;
        self.add_web_host(NEW_WEB)?;
        let db = self.db_svc();
        #[rustfmt::skip]
        let mut rows = self.run(&table(&[
            (name, "db-1", Both, db.clone(), Deny, "R1 not yet in sg-web"),
        ]))?;
        add_instance(&self.policy, self.format, NEW_WEB)?;
        let t0 = Instant::now();
        let mut report = String::new();
        for inst in [name, "web-1", "web-2", "db-1"] {
            let out = self.apply_on(inst)?;
            if inst == "db-1" {
                report = out
                    .lines()
                    .filter(|l| l.contains("member") || l.starts_with("applied"))
                    .map(|l| format!("    db-1: {}", l.trim()))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
        let all = t0.elapsed();
        // No retries, no waiting: the first attempt after the applies must work.
        #[rustfmt::skip]
        let probes = table(&[
            (name, "db-1", Both, db, Allow, "R1 joined sg-web"),
            (name, "db-1", Both, Svc::Ping, Allow, "R1 I3"),
            ("internet", name, Both, Svc::Https(443), Allow, "E5 sg-web's rules"),
        ]);
        rows.extend(self.run(&probes)?);
        Ok((
            rows,
            format!(
                "{report}\n    web-3, web-1, web-2 and db-1 applied the edited file in {:.0} ms; \
                 the probes above ran right after,\n    without retries",
                all.as_secs_f64() * 1000.0
            ),
        ))
    }

    /// `sg-agent counters` of the named instances, as printed for people.
    pub fn counters_report(&self, instances: &[&str]) -> Result<String> {
        let mut out = String::new();
        for h in &self.lan.hosts {
            if instances.contains(&h.name()) {
                let text = self
                    .agents
                    .counters_text(&h.ns)
                    .unwrap_or_else(|e| format!("(no counters: {e:#})\n"));
                out.push_str(&format!(
                    "--- {} ({}): sg-agent counters ---\n{text}\n",
                    h.name(),
                    h.ns.name()
                ));
            }
        }
        Ok(out)
    }

    /// Leaves everything up (namespaces, servers, agents, files) when this value drops.
    pub fn keep(&mut self) {
        self.agents.keep();
        for p in &mut self.servers {
            p.keep();
        }
        self.lan.keep();
        self.files.keep();
    }
}

/// Appends one instance carrying sg-web to a copy of the lab policy (the edit a person makes
/// to launch a server), then checks the result loads with that instance in sg-web.
pub fn add_instance(
    policy: &Path,
    format: Format,
    (name, v4, v6): (&str, &str, &str),
) -> Result<()> {
    let mut text = std::fs::read_to_string(policy)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    match format {
        Format::Native => text.push_str(&format!(
            "  - name: {name}\n    addresses: [{v4}, \"{v6}\"]\n    groups: [sg-web]\n"
        )),
        Format::CloudFormation => {
            let logical: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            text.push_str(&format!(
                "  {logical}:\n    Type: AWS::EC2::Instance\n    Properties:\n      \
                 ImageId: ami-0123456789abcdef0\n      InstanceType: t3.micro\n      \
                 SecurityGroupIds: [sg-web]\n      PrivateIpAddress: {v4}\n      \
                 Ipv6Addresses:\n        - Ipv6Address: \"{v6}\"\n      Tags:\n        \
                 - Key: Name\n          Value: {name}\n"
            ))
        }
        other => bail!("cannot add an instance to a {} policy", other.name()),
    }
    std::fs::write(policy, &text)?;
    let loaded = config::load_file(policy).map_err(|d| {
        anyhow::anyhow!(
            "adding {name} to {} broke it (its last top-level key must be `instances:` or \
             `Resources:`):\n{d}",
            policy.display()
        )
    })?;
    let ok = loaded
        .policy
        .interface(name)
        .is_some_and(|i| i.groups.iter().any(|g| g.as_str() == "sg-web"));
    if !ok {
        bail!(
            "adding {name} to {}: it does not carry sg-web afterwards (its last top-level key \
             must be `instances:` or `Resources:`)",
            policy.display()
        );
    }
    Ok(())
}
