//! A LAN of namespaces: one "switch" namespace holding bridges, and hosts (EC2 instances and
//! outside clients) each with an `eth0` plugged into one of them. Every host can reach every
//! other host of its bridge on-link, like instances and clients in one VPC-plus-internet
//! picture; what stops traffic is sg, nothing else. A host may get more interfaces on other
//! bridges (several ENIs, E5). Also a routed path with a narrow link in the middle (PMTUD, I2).
//!
//! Knows nothing about policies or BPF; creates nothing outside its own namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use sg_testkit::netns::{Netns, veth};

/// Subnets every host routes on-link (the documentation ranges the lab draws from).
const ON_LINK: &[&str] = &[
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:db8:10::/64",
    "2001:db8:20::/64",
    "2001:db8:30::/64",
];

/// What a host looks like before it exists.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// MTU of its eth0 (PMTUD tests use a smaller one on one host).
    pub mtu: u32,
}

impl HostSpec {
    pub fn new(name: &str, v4: &str, v6: &str) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            v4: v4.parse().expect("valid IPv4 literal"),
            v6: v6.parse().expect("valid IPv6 literal"),
            mtu: 1500,
        }
    }
}

pub struct Host {
    pub spec: HostSpec,
    pub ns: Netns,
    /// Interfaces beyond eth0: (device, IPv4, IPv6).
    pub nics: Vec<(String, Ipv4Addr, Ipv6Addr)>,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn v4(&self) -> IpAddr {
        IpAddr::V4(self.spec.v4)
    }
    pub fn v6(&self) -> IpAddr {
        IpAddr::V6(self.spec.v6)
    }
    /// eth0's address of one family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6() } else { self.v4() }
    }
    /// The address of one family on a device (`eth0` or one added with [`Lan::add_nic`]).
    pub fn addr_on(&self, dev: &str, v6: bool) -> Option<IpAddr> {
        if dev == "eth0" {
            return Some(self.addr(v6));
        }
        self.nics
            .iter()
            .find(|n| n.0 == dev)
            .map(|n| if v6 { IpAddr::V6(n.2) } else { IpAddr::V4(n.1) })
    }
}

/// How a LAN names its namespaces.
#[derive(Clone, Debug)]
pub enum Naming {
    /// `sgt<pid>-<tag><n>`: unique, swept when the creating process is gone (tests).
    Unique,
    /// `<prefix><host name>`, e.g. `sglab-web-1`: readable, for a lab a person explores.
    Fixed(String),
}

pub struct Lan {
    /// Dropped first: hosts' links go with the switch.
    pub hosts: Vec<Host>,
    pub switch: Netns,
    naming: Naming,
    bridges: Vec<String>,
    ports: usize,
}

impl Lan {
    pub fn new(specs: &[HostSpec]) -> Result<Lan> {
        Lan::with_naming(Naming::Unique, specs)
    }

    pub fn with_naming(naming: Naming, specs: &[HostSpec]) -> Result<Lan> {
        let switch = match &naming {
            Naming::Unique => Netns::new("sw")?,
            Naming::Fixed(p) => Netns::named(&format!("{p}switch"))?,
        };
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
            naming,
            bridges: vec!["br0".into()],
            ports: 0,
        };
        for s in specs {
            lan.add_host(s.clone())?;
        }
        Ok(lan)
    }

    /// Adds another bridge (another L2 segment) to the switch; returns its name.
    pub fn add_bridge(&mut self) -> Result<String> {
        let br = format!("br{}", self.bridges.len());
        self.switch.ip(&["link", "add", &br, "type", "bridge"])?;
        self.switch.ip(&["link", "set", &br, "up"])?;
        self.bridges.push(br.clone());
        Ok(br)
    }

    /// Plugs a new host into br0 (e.g. "launch one more web server").
    pub fn add_host(&mut self, spec: HostSpec) -> Result<&Host> {
        self.add_host_on(spec, "br0")
    }

    /// Plugs a new host's eth0 into one bridge. The host routes every documentation range
    /// on-link through eth0.
    pub fn add_host_on(&mut self, spec: HostSpec, bridge: &str) -> Result<&Host> {
        if self.hosts.iter().any(|h| h.spec.name == spec.name) {
            bail!("host {} exists", spec.name);
        }
        let short: String = spec
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let ns = match &self.naming {
            Naming::Unique => Netns::new(&short[..short.len().min(6)])?,
            Naming::Fixed(p) => Netns::named(&format!("{p}{}", spec.name))?,
        };
        let port = self.port_name(bridge, &short)?;
        veth(&ns, "eth0", &self.switch, &port)?;
        self.switch.ip(&["link", "set", &port, "master", bridge])?;
        let mtu = spec.mtu.to_string();
        ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        ns.ip(&["addr", "add", &format!("{}/24", spec.v4), "dev", "eth0"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", spec.v6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        for net in ON_LINK {
            // The host's own subnet already has its connected route.
            let _ = ns.ip(&["route", "add", net, "dev", "eth0"]);
        }
        self.hosts.push(Host {
            spec,
            ns,
            nics: Vec::new(),
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Gives an existing host one more interface `dev` on `bridge` with a /24 and a /64
    /// (another ENI). Its subnets then route through `dev` rather than eth0.
    pub fn add_nic(
        &mut self,
        host: &str,
        dev: &str,
        bridge: &str,
        v4: &str,
        v6: &str,
    ) -> Result<()> {
        let v4: Ipv4Addr = v4.parse().context("IPv4 literal")?;
        let v6: Ipv6Addr = v6.parse().context("IPv6 literal")?;
        let i = self
            .hosts
            .iter()
            .position(|h| h.spec.name == host)
            .with_context(|| format!("no host {host}"))?;
        let short: String = host.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let port = self.port_name(bridge, &short)?;
        let ns = &self.hosts[i].ns;
        veth(ns, dev, &self.switch, &port)?;
        self.switch.ip(&["link", "set", &port, "master", bridge])?;
        let o = v4.octets();
        let net4 = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
        let s = v6.segments();
        let net6 = format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
        // eth0 claimed every documentation range on-link; this subnet now lives on `dev`.
        let _ = ns.ip(&["route", "del", &net4, "dev", "eth0"]);
        let _ = ns.ip(&["route", "del", &net6, "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
        self.hosts[i].nics.push((dev.to_string(), v4, v6));
        Ok(())
    }

    /// A fresh name for the switch side of a link (<= 15 bytes).
    fn port_name(&mut self, bridge: &str, short: &str) -> Result<String> {
        if !self.bridges.iter().any(|b| b == bridge) {
            bail!("no bridge {bridge}");
        }
        let port = format!("p{}{}", self.ports, &short[..short.len().min(9)]);
        self.ports += 1;
        Ok(port)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.spec.name == name)
            .with_context(|| format!("no host {name} in the lab"))
            .unwrap()
    }

    pub fn try_host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.spec.name == name)
    }

    /// Leaves every namespace in place when the LAN drops (`sg-lab --keep`).
    pub fn keep(&mut self) {
        self.switch.keep();
        for h in &mut self.hosts {
            h.ns.keep();
        }
    }
}

/// client -- r1 ==narrow link== r2 -- server: two routers with a link of a smaller MTU between
/// them, so neither end host sees the small MTU on its own link (TCP's MSS does not shrink)
/// and only path MTU discovery (ICMP "fragmentation needed", ICMPv6 "packet too big" from r1)
/// makes large transfers work (I2): r2, in front of the narrow link as seen from the server,
/// answers the server's large segments. Forwarding is enabled in the routers' namespaces only.
pub struct RoutedPath {
    pub client: Host,
    pub server: Host,
    pub routers: Vec<Netns>,
}

impl RoutedPath {
    /// Client 198.51.100.10 / 2001:db8:20::10, server 192.0.2.11 / 2001:db8:10::11, the
    /// routers' link 203.0.113.0/24 / 2001:db8:30::/64 with `narrow_mtu`.
    pub fn new(narrow_mtu: u32) -> Result<RoutedPath> {
        let client_ns = Netns::new("pcli")?;
        let r1 = Netns::new("r1")?;
        let r2 = Netns::new("r2")?;
        let server_ns = Netns::new("psrv")?;
        veth(&client_ns, "eth0", &r1, "eth0")?;
        veth(&r1, "eth1", &r2, "eth1")?;
        veth(&r2, "eth0", &server_ns, "eth0")?;
        for r in [&r1, &r2] {
            r.sysctl("net.ipv4.ip_forward", "1")?;
            r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        let mtu = narrow_mtu.to_string();
        r1.ip(&["link", "set", "eth1", "mtu", &mtu])?;
        r2.ip(&["link", "set", "eth1", "mtu", &mtu])?;
        let addr = |ns: &Netns, dev: &str, a: &str| -> Result<()> {
            if a.contains(':') {
                ns.ip(&["addr", "add", a, "dev", dev, "nodad"])
            } else {
                ns.ip(&["addr", "add", a, "dev", dev])
            }
        };
        // Each device's IPv4 and IPv6 address: client - r1 - (narrow link) - r2 - server.
        for (ns, dev, v4, v6) in [
            (&client_ns, "eth0", "198.51.100.10/24", "2001:db8:20::10/64"),
            (&r1, "eth0", "198.51.100.1/24", "2001:db8:20::1/64"),
            (&r1, "eth1", "203.0.113.1/24", "2001:db8:30::1/64"),
            (&r2, "eth1", "203.0.113.2/24", "2001:db8:30::2/64"),
            (&r2, "eth0", "192.0.2.1/24", "2001:db8:10::1/64"),
            (&server_ns, "eth0", "192.0.2.11/24", "2001:db8:10::11/64"),
        ] {
            addr(ns, dev, v4)?;
            addr(ns, dev, v6)?;
        }
        client_ns.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        client_ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:20::1"])?;
        server_ns.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        server_ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:10::1"])?;
        r1.ip(&["route", "add", "192.0.2.0/24", "via", "203.0.113.2"])?;
        r1.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:10::/64",
            "via",
            "2001:db8:30::2",
        ])?;
        r2.ip(&["route", "add", "198.51.100.0/24", "via", "203.0.113.1"])?;
        r2.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:20::/64",
            "via",
            "2001:db8:30::1",
        ])?;
        let host = |name: &str, v4: &str, v6: &str, ns: Netns| Host {
            spec: HostSpec::new(name, v4, v6),
            ns,
            nics: Vec::new(),
        };
        Ok(RoutedPath {
            client: host("client", "198.51.100.10", "2001:db8:20::10", client_ns),
            server: host("server", "192.0.2.11", "2001:db8:10::11", server_ns),
            routers: vec![r1, r2],
        })
    }
}
