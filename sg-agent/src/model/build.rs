//! Tiny constructors for hand-written policies: the fixture tables and the model's own tests
//! say "group sg-web, ingress tcp 22 from 0.0.0.0/0, interface eth-a with 192.0.2.10" in one
//! line each. Builds plain validated [`Policy`] values; no validation of its own (callers write
//! canonical CIDRs and well-formed ids), no defaults (a group starts with no rules at all: D2's
//! default egress rule is the config layer's business, so tests say what they mean).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::{
    Direction, Group, GroupId, IcmpMatch, Interface, NaclAction, NaclEntry, Origin, Peer, Policy,
    PortRange, PrefixList, PrefixListId, Protocol, Rule, RuleId, Timeouts,
};

/// The id the builder gives the `n`th rule added (1-based): `sgr-` and 17 hex digits.
pub fn rule_id(n: u64) -> RuleId {
    RuleId(format!("sgr-{n:017x}"))
}

#[derive(Clone, Debug, Default)]
pub struct PolicyBuilder {
    policy: Policy,
    rules: u64,
}

impl PolicyBuilder {
    pub fn new() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A group with no rules in either direction.
    pub fn group(mut self, id: &str) -> PolicyBuilder {
        let gid = GroupId(id.to_string());
        self.policy.groups.insert(
            gid.clone(),
            Group {
                id: gid,
                name: id.to_string(),
                description: String::new(),
                ingress: Vec::new(),
                egress: Vec::new(),
                origin: Origin::default(),
            },
        );
        self
    }

    /// Adds a rule with the next [`rule_id`] (the group is created if needed).
    pub fn rule(
        self,
        group: &str,
        dir: Direction,
        protocol: Protocol,
        peer: Peer,
    ) -> PolicyBuilder {
        let id = rule_id(self.rules + 1);
        self.rule_with_id(&id.0, group, dir, protocol, peer)
    }

    pub fn rule_with_id(
        mut self,
        id: &str,
        group: &str,
        dir: Direction,
        protocol: Protocol,
        peer: Peer,
    ) -> PolicyBuilder {
        self.rules += 1;
        let gid = GroupId(group.to_string());
        if !self.policy.groups.contains_key(&gid) {
            self = self.group(group);
        }
        let rule = Rule {
            id: RuleId(id.to_string()),
            group: gid.clone(),
            direction: dir,
            protocol,
            peer,
            description: None,
            origin: Origin::default(),
        };
        let g = self
            .policy
            .groups
            .get_mut(&gid)
            .expect("group just ensured");
        match dir {
            Direction::Ingress => g.ingress.push(rule),
            Direction::Egress => g.egress.push(rule),
        }
        self
    }

    pub fn ingress(self, group: &str, protocol: Protocol, peer: Peer) -> PolicyBuilder {
        self.rule(group, Direction::Ingress, protocol, peer)
    }

    pub fn egress(self, group: &str, protocol: Protocol, peer: Peer) -> PolicyBuilder {
        self.rule(group, Direction::Egress, protocol, peer)
    }

    /// An interface carrying `groups`, bound to the Linux device of the same name.
    pub fn iface(mut self, name: &str, addrs: &[&str], groups: &[&str]) -> PolicyBuilder {
        self.policy.interfaces.push(Interface {
            name: name.to_string(),
            instance: format!("i-{name}"),
            device: Some(name.to_string()),
            addresses: addrs.iter().map(|a| addr(a)).collect(),
            groups: groups.iter().map(|g| GroupId(g.to_string())).collect(),
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        });
        self
    }

    pub fn prefix_list(mut self, id: &str, entries: &[&str]) -> PolicyBuilder {
        let entries: Vec<IpNet> = entries.iter().map(|e| e.parse().expect("CIDR")).collect();
        let family = crate::policy::Family::of_net(entries.first().expect("non-empty list"));
        let pid = PrefixListId(id.to_string());
        self.policy.prefix_lists.insert(
            pid.clone(),
            PrefixList {
                id: pid,
                name: id.to_string(),
                family,
                max_entries: entries.len() as u32,
                version: 1,
                entries,
                origin: Origin::default(),
            },
        );
        self
    }

    pub fn build(self) -> Policy {
        self.policy
    }
}

/// A numbered network ACL entry (A3-A5) of a canonical CIDR.
pub fn nacl_entry(number: u16, action: NaclAction, protocol: Protocol, cidr: &str) -> NaclEntry {
    NaclEntry {
        number,
        action,
        protocol,
        cidr: cidr.parse().expect("a canonical CIDR literal"),
        origin: Origin::default(),
    }
}

pub fn addr(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// A CIDR peer: `cidr("0.0.0.0/0")`.
pub fn cidr(s: &str) -> Peer {
    Peer::Cidr(s.parse().unwrap_or_else(|e| panic!("bad CIDR {s:?}: {e}")))
}

/// A referenced-group peer (R1).
pub fn sg(id: &str) -> Peer {
    Peer::Group(GroupId(id.to_string()))
}

pub fn pl(id: &str) -> Peer {
    Peer::PrefixList(PrefixListId(id.to_string()))
}

pub fn tcp(port: u16) -> Protocol {
    Protocol::Tcp(PortRange {
        from: port,
        to: port,
    })
}

pub fn tcp_range(from: u16, to: u16) -> Protocol {
    Protocol::Tcp(PortRange { from, to })
}

pub fn udp(port: u16) -> Protocol {
    Protocol::Udp(PortRange {
        from: port,
        to: port,
    })
}

pub fn udp_range(from: u16, to: u16) -> Protocol {
    Protocol::Udp(PortRange { from, to })
}

pub fn icmp_all() -> Protocol {
    Protocol::Icmp(IcmpMatch::All)
}

pub fn icmp_type(t: u8) -> Protocol {
    Protocol::Icmp(IcmpMatch::Type(t))
}

pub fn icmpv6_all() -> Protocol {
    Protocol::Icmpv6(IcmpMatch::All)
}

pub fn icmpv6_type(t: u8) -> Protocol {
    Protocol::Icmpv6(IcmpMatch::Type(t))
}

pub fn all() -> Protocol {
    Protocol::All
}
