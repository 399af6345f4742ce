//! A LAN of namespaces: one "switch" namespace holding a bridge, and hosts (EC2 instances and
//! outside clients) each with an `eth0` plugged into it. Every host can reach every other's
//! subnet on-link, like instances and clients in one VPC-plus-internet picture; what stops
//! traffic is sg, nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use super::netns::{Netns, veth};

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
}

pub struct Lan {
    /// Dropped last: hosts' links go with the switch.
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Lan {
    pub fn new(specs: &[HostSpec]) -> Result<Lan> {
        let switch = Netns::new("sw")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
        };
        for s in specs {
            lan.add_host(s.clone())?;
        }
        Ok(lan)
    }

    /// Plugs a new host into the switch (e.g. "launch one more web server").
    pub fn add_host(&mut self, spec: HostSpec) -> Result<&Host> {
        if self.hosts.iter().any(|h| h.spec.name == spec.name) {
            bail!("host {} exists", spec.name);
        }
        let short: String = spec
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let port = format!("p{}{}", self.hosts.len(), &short[..short.len().min(9)]);
        let ns = Netns::new(&short[..short.len().min(6)])?;
        veth(&ns, "eth0", &self.switch, &port)?;
        self.switch.ip(&["link", "set", &port, "master", "br0"])?;
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
        self.hosts.push(Host { spec, ns });
        Ok(self.hosts.last().expect("just pushed"))
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.spec.name == name)
            .with_context(|| format!("no host {name} in the lab"))
            .unwrap()
    }
}
