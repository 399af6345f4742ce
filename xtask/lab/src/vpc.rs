//! The VPC lab of issue 17: the seed article's tiers in two subnets behind a router that
//! enforces their network ACLs (examples/vpc-nacl.yaml), with the outside world on a third
//! leg of the router. Instances and the router each run their own sg-agent applying the SAME
//! policy file: the instances bind their interfaces by address (security groups), the router
//! binds the subnets by their router addresses (NACLs).
//!
//! ```text
//!  my-ip 198.51.100.10  internet 203.0.113.50 ==narrow (MTU 1280)== far 203.0.113.200/26
//!                 \        /                       (bridge "out")
//!                  r-out: 198.51.100.1, 203.0.113.1, 2001:db8:20::1, 2001:db8:30::1
//!  router ---------r-pub:  192.0.2.1/25,   2001:db8:10::1/64 -- web-1 .11, web-2 .12
//!                  r-priv: 192.0.2.129/25, 2001:db8:11::1/64 -- db-1 .140
//! ```
//!
//! `far` sits behind `internet`, which routes for it over a link whose MTU is 1280 on
//! internet's side only: far's own MTU (1500) sets its TCP MSS, so web-1's full-size segments
//! to far need path MTU discovery, and the "fragmentation needed" error comes from internet
//! (not from the router, whose own traffic a NACL never filters, A21), through the public
//! subnet's inbound list (A22).
//!
//! The policy is examples/vpc-nacl.yaml or its CloudFormation twin vpc-nacl.cfn.yaml: the
//! lab's edits (A4, A22) know both formats.
//!
//! Owns the topology, the servers, the probe tables and the policy edits of the NACL rows;
//! the mechanics live in netns / services / agents / probe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agents::Agents;
use crate::probe::{self, Both, Expect, Hosts, Probe, Row, Svc, V4, table};
use crate::services::{self as svc, LabFiles, Outcome};
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

/// The A22 host behind the narrow link: in 203.0.113.0/24 (the public subnet's outbound 110
/// allows the replies to it), routed by `internet`.
const FAR: (&str, &str, &str) = ("far", "203.0.113.200", "2001:db8:30::200");
/// The narrow link's MTU on internet's side.
pub const NARROW_MTU: u32 = 1280;
/// The A22 download: far many segments larger than [`NARROW_MTU`].
pub const A22_BYTES: u64 = 200_000;

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
    /// The policy is the CloudFormation twin.
    cfn: bool,
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
        let name = policy.file_name().context("the policy has no file name")?;
        let cfn = name.to_string_lossy().contains(".cfn.");
        let copy = files.dir().join(name);
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
        hosts.push(far_behind(&hosts, &router)?);
        let mut lab = VpcLab {
            agents: Agents::new(agent),
            servers: Vec::new(),
            hosts,
            router,
            switch,
            files,
            policy: copy,
            applied: Vec::new(),
            cfn,
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

    /// A4: renumbers acl-private's deny of web-2 from 110 to 90, before its allow 100, and
    /// applies it on the router.
    pub fn renumber_deny_a4(&self) -> Result<String> {
        if self.cfn {
            self.edit_and_apply_router(
                "RuleNumber: 110, RuleAction: deny",
                "RuleNumber: 90, RuleAction: deny",
            )
        } else {
            self.edit_and_apply_router("{number: 110, action: deny", "{number: 90, action: deny")
        }
    }

    /// A22: adds acl-public's inbound 140, ICMP 3/4 (fragmentation needed) from anywhere,
    /// and applies it on the router.
    pub fn allow_frag_needed_a22(&self) -> Result<String> {
        if self.cfn {
            self.edit_and_apply_router(
                "  PublicAssociation:",
                "  PublicIn140:\n    Type: AWS::EC2::NetworkAclEntry\n    Properties: {NetworkAclId: \
                 !Ref PublicAcl, Egress: false, RuleNumber: 140, RuleAction: allow, Protocol: 1, \
                 CidrBlock: 0.0.0.0/0, Icmp: {Type: 3, Code: 4}}\n  PublicAssociation:",
            )
        } else {
            let at = "{number: 131, action: allow, protocol: icmpv6, type: 128, code: -1, cidr: \"::/0\"}";
            self.edit_and_apply_router(
                at,
                &format!(
                    "{at}\n      - {{number: 140, action: allow, protocol: icmp, type: 3, code: 4, \
                     cidr: 0.0.0.0/0}}"
                ),
            )
        }
    }

    /// A22's row: far downloads [`A22_BYTES`] from web-1 over HTTPS (curl, bounded by
    /// `limit`); reached when every byte arrived. web-1's segments are larger than the narrow
    /// link, so the transfer needs internet's ICMP 3/4 to pass the router's NACL.
    pub fn a22_download(&self, expect: Expect, why: &str, limit: Duration) -> Result<Row> {
        let web = self.host("web-1");
        let addr = web.addr_on("eth0", false).context("web-1's address")?;
        let got = svc::download(self.host(FAR.0), addr, 443, A22_BYTES, limit)?;
        Ok(Row {
            probe: Probe {
                from: FAR.0.into(),
                to: "web-1".into(),
                v6: false,
                svc: Svc::Https(443),
                expect,
                why: format!("{why}; {got} of {A22_BYTES} bytes in {} s", limit.as_secs()),
            },
            addr,
            observed: if got == A22_BYTES {
                Outcome::Reached
            } else {
                Outcome::NoAnswer
            },
        })
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

/// The A22 host: `far` behind `internet` (which forwards for it) over a veth whose MTU is
/// [`NARROW_MTU`] on internet's side and 1500 on far's; the router reaches it through
/// internet. IPv4 only.
fn far_behind(hosts: &[Host], router: &Netns) -> Result<Host> {
    let internet = &hosts
        .iter()
        .find(|h| h.name() == "internet")
        .context("no internet host")?
        .ns;
    let (name, v4, v6) = FAR;
    let ns = Netns::new(name)?;
    veth(internet, "narrow", &ns, "eth0")?;
    internet.sysctl("net.ipv4.ip_forward", "1")?;
    internet.ip(&["link", "set", "narrow", "mtu", &NARROW_MTU.to_string()])?;
    add_addr(internet, "narrow", "203.0.113.193/26")?;
    add_addr(&ns, "eth0", &format!("{v4}/26"))?;
    ns.ip(&["route", "add", "default", "via", "203.0.113.193"])?;
    router.ip(&["route", "add", "203.0.113.192/26", "via", "203.0.113.50"])?;
    Ok(Host {
        spec: HostSpec::new(name, v4, v6),
        ns,
        nics: Vec::new(),
    })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::path::PathBuf;

    use sg_agent::compile::nacl::{Router, RouterPort};
    use sg_agent::compile::{CompileOptions, compile, compile_router};
    use sg_agent::config::{Format, load_file};
    use sg_agent::image::{MapImage, SlotTable};
    use sg_agent::policy::{Policy, SubnetId};

    fn example(name: &str) -> Policy {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        let loaded = load_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = if name.contains(".cfn.") {
            Format::CloudFormation
        } else {
            Format::Native
        };
        assert_eq!(loaded.format, want, "{name}");
        loaded.policy
    }

    const OPTS: CompileOptions = CompileOptions {
        generation: 1,
        slot_capacity: 1 << 16,
    };

    /// The maps each host of the lab writes: every instance with its interface bound, and
    /// the router with the two subnets on its ports (A13, A14) and its own addresses (A21).
    fn images(p: &Policy) -> Vec<MapImage> {
        let mut out: Vec<MapImage> = super::INSTANCES
            .iter()
            .map(|i| {
                let bindings = BTreeMap::from([(i.to_string(), 2)]);
                compile(p, &bindings, &SlotTable::default(), &OPTS)
                    .unwrap_or_else(|e| panic!("{i}: {e}"))
            })
            .collect();
        let router = Router {
            ports: [("subnet-public", 2), ("subnet-private", 3)]
                .into_iter()
                .map(|(s, ifindex)| RouterPort {
                    subnet: SubnetId(s.into()),
                    ifindex,
                })
                .collect(),
            addrs: [
                "192.0.2.1",
                "192.0.2.129",
                "2001:db8:10::1",
                "2001:db8:11::1",
            ]
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("an address"))
            .collect(),
        };
        let (image, _) = compile_router(p, &BTreeMap::new(), &SlotTable::default(), &OPTS, &router)
            .unwrap_or_else(|e| panic!("router: {e}"));
        out.push(image);
        out
    }

    /// The CloudFormation twin of the VPC lab is the same lab: every instance's and the
    /// router's maps (interfaces, peer tries, port pages, counter slots by rule id) compile
    /// identical from both files, so every verdict is the same (A2-A19 as written twice).
    #[test]
    fn the_cloudformation_twin_compiles_to_the_same_maps() {
        let native = example("vpc-nacl.yaml");
        let cfn = example("vpc-nacl.cfn.yaml");
        for p in [&native, &cfn] {
            let acls: Vec<&str> = p.network_acls.keys().map(|a| a.as_str()).collect();
            assert!(
                acls.contains(&"acl-public") && acls.contains(&"acl-private"),
                "{acls:?}"
            );
            assert_eq!(p.subnets.len(), 2);
        }
        let (a, b) = (images(&native), images(&cfn));
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(!a.ifaces.is_empty(), "image {i} binds nothing");
            assert_eq!(a, b, "image {i} (instances, then the router) differs");
        }
    }
}
