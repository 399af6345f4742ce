//! The validated policy model: groups, rules, prefix lists, interfaces (group membership),
//! conntrack timeouts and quotas, and the network ACLs of subnets, exactly as SEMANTICS.md
//! talks about them.
//!
//! Everything here has already passed validation (`config`): ids are well formed, references
//! resolve, CIDRs are canonical, quotas hold. This module owns plain data and tiny accessors
//! only. It must not resolve peers into prefixes or decide verdicts: the compiler and the
//! reference model each do that on their own, so that comparing them proves something.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
pub use sg_common::Timeouts;

/// `sg-...`: a security group id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub String);

/// `sgr-` followed by 17 hex digits: a security group rule id (F6).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub String);

/// `pl-...`: a managed prefix list id (R4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixListId(pub String);

/// `acl-...`: a network ACL id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NaclId(pub String);

/// `subnet-...`: a subnet id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetId(pub String);

macro_rules! display_id {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    )*};
}
display_id!(GroupId, RuleId, PrefixListId, NaclId, SubnetId);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn opposite(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }

    /// The `sg_common::DIR_*` value.
    pub fn abi(self) -> u8 {
        match self {
            Direction::Ingress => sg_common::DIR_INGRESS,
            Direction::Egress => sg_common::DIR_EGRESS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
    pub fn of_addr(a: &IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Inclusive destination port range (F3, E6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { from: 0, to: 65535 };
    pub fn contains(&self, port: u16) -> bool {
        self.from <= port && port <= self.to
    }
    pub fn width(&self) -> u32 {
        u32::from(self.to) - u32::from(self.from) + 1
    }
}

/// ICMP/ICMPv6 match (F4): from = type, to = code; -1 means all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpMatch {
    /// Type -1: every type and code.
    All,
    /// A type, every code (code -1).
    Type(u8),
    /// One type and code.
    TypeCode(u8, u8),
}

/// A rule's protocol (F1, F2). Numbers 1, 6, 17 and 58 are always normalised to their named
/// variants; `Number` holds every other protocol and matches all of its traffic (F2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// -1 / all: every protocol and port.
    All,
    Tcp(PortRange),
    Udp(PortRange),
    Icmp(IcmpMatch),
    Icmpv6(IcmpMatch),
    Number(u8),
}

impl Protocol {
    /// The IANA number, or None for `All`.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::All => None,
            Protocol::Tcp(_) => Some(6),
            Protocol::Udp(_) => Some(17),
            Protocol::Icmp(_) => Some(1),
            Protocol::Icmpv6(_) => Some(58),
            Protocol::Number(n) => Some(*n),
        }
    }
}

/// The peer of a rule (F5): source for ingress, destination for egress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A canonical CIDR (host bits cleared).
    Cidr(IpNet),
    /// Every entry of a prefix list (R4).
    PrefixList(PrefixListId),
    /// The addresses of every interface carrying the group (R1); may be the rule's own group
    /// (R3, self-reference).
    Group(GroupId),
}

/// Where something was written, for messages ("rules.yaml:12:7 (groups[1].ingress[0])").
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// The YAML/JSON path, e.g. `security_groups[0].ingress[2]`.
    pub path: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, " ({})", self.path)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Given (F6) or derived deterministically from the rule's content.
    pub id: RuleId,
    pub group: GroupId,
    pub direction: Direction,
    pub protocol: Protocol,
    pub peer: Peer,
    /// At most 255 characters of AWS's allowed set (F6).
    pub description: Option<String>,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    /// D1: empty unless rules are given.
    pub ingress: Vec<Rule>,
    /// D2: one allow-all rule per family when the input omits the list; empty when the input
    /// says so explicitly.
    pub egress: Vec<Rule>,
    pub origin: Origin,
}

impl Group {
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixList {
    pub id: PrefixListId,
    pub name: String,
    pub family: Family,
    /// Counts against rule quotas instead of the number of entries (R4).
    pub max_entries: u32,
    pub version: u64,
    pub entries: Vec<IpNet>,
    pub origin: Origin,
}

/// One network interface of an instance: its private addresses are what rules referencing
/// its groups allow (R1); its groups are what is enforced on it (E5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Unique in the policy: e.g. `web-1` or `web-1/eth1` or an ENI id.
    pub name: String,
    /// The instance it belongs to (for display).
    pub instance: String,
    /// The local Linux device to bind to, when the input names one. Otherwise the agent binds
    /// by matching local addresses against `addresses`.
    pub device: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// E3: at most `quotas.groups_per_interface`; order never matters.
    pub groups: Vec<GroupId>,
    /// C5: validated against AWS's bounds.
    pub timeouts: Timeouts,
    pub origin: Origin,
}

/// Q1/Q2 limits (AWS defaults; configurable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Q1: per group and direction, counted separately for IPv4 and IPv6.
    pub rules_per_group: u32,
    /// Q2: 5 by default, at most 16.
    pub groups_per_interface: u32,
    /// Q2: rules per group x groups per interface.
    pub rules_per_interface: u32,
    /// A24: network ACL rules per NACL, direction and family, the `*` rule included (20 by
    /// default, 40 at most in AWS; sg lets a lab raise it further, e.g. for the bench).
    pub nacl_rules_per_list: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            rules_per_group: 60,
            groups_per_interface: 5,
            rules_per_interface: 1000,
            nacl_rules_per_list: 20,
        }
    }
}

/// A whole validated policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub groups: BTreeMap<GroupId, Group>,
    pub prefix_lists: BTreeMap<PrefixListId, PrefixList>,
    pub interfaces: Vec<Interface>,
    pub quotas: Quotas,
    /// Network ACLs (A2-A12); empty when the input has none.
    pub network_acls: BTreeMap<NaclId, NetworkAcl>,
    /// Subnets, each with exactly one NACL (A12); empty when the input has none.
    pub subnets: Vec<Subnet>,
    /// The interfaces (by name) written with `audit: true`: bound to a device, that device
    /// passes what the policy would drop and reports it (L3). Not a rule: the reference
    /// model ignores it, the compiler sets the interface's AUDIT flag.
    pub audit: BTreeSet<String>,
}

impl Policy {
    /// Each interface's name and groups, in order: what tests compare memberships by.
    #[cfg(test)]
    pub(crate) fn memberships(&self) -> Vec<(String, Vec<String>)> {
        self.interfaces
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.groups.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Every rule of every group, in a stable order (group id, direction, position).
    pub fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.groups
            .values()
            .flat_map(|g| g.ingress.iter().chain(g.egress.iter()))
    }

    pub fn rule(&self, id: &RuleId) -> Option<&Rule> {
        self.all_rules().find(|r| &r.id == id)
    }

    pub fn subnet(&self, id: &SubnetId) -> Option<&Subnet> {
        self.subnets.iter().find(|s| &s.id == id)
    }

    /// The subnet whose CIDR holds `addr` (subnets never overlap: validated).
    pub fn subnet_of(&self, addr: IpAddr) -> Option<&Subnet> {
        self.subnets
            .iter()
            .find(|s| s.cidrs.iter().any(|c| c.contains(&addr)))
    }
}

/// A5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NaclAction {
    Allow,
    Deny,
}

/// One numbered network ACL entry (A3-A5, A17-A20).
///
/// `protocol` is normalised by validation: TCP/UDP carry their port range (A18); ICMP (1, or
/// 58 with an IPv6 CIDR) its type and code (A19); -1 is `All`; every other number, and 58 with
/// an IPv4 CIDR, is `Number(n)`, which matches all of its traffic whatever ports were given
/// (A17).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaclEntry {
    /// 1-32766 (A3); unique per NACL and direction across both families (A7).
    pub number: u16,
    pub action: NaclAction,
    pub protocol: Protocol,
    /// Canonical (A20); its family decides which traffic the entry can match (A8).
    pub cidr: IpNet,
    pub origin: Origin,
}

/// The number AWS shows for the `*` rule of a family (A6).
pub fn nacl_default_number(family: Family) -> u32 {
    match family {
        Family::V4 => 32767,
        Family::V6 => 32768,
    }
}

/// A network ACL: two independent numbered lists (A2). The `*` rules are implicit (A6): they
/// are not in the lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAcl {
    pub id: NaclId,
    /// The VPC's default NACL (A9): it cannot be deleted.
    pub is_default: bool,
    /// Sorted by number.
    pub inbound: Vec<NaclEntry>,
    /// Sorted by number.
    pub outbound: Vec<NaclEntry>,
    pub origin: Origin,
}

impl NetworkAcl {
    /// The list judging traffic entering (`Ingress`: inbound) or leaving (`Egress`: outbound)
    /// the subnet.
    pub fn entries(&self, dir: Direction) -> &[NaclEntry] {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// A subnet: its CIDRs (one IPv4, optionally one IPv6) and its one NACL (A12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: SubnetId,
    pub cidrs: Vec<IpNet>,
    pub network_acl: NaclId,
    /// The router's device facing this subnet, when the input names one. Otherwise a router
    /// binds the subnet to its interface holding an address inside one of `cidrs`.
    pub router_device: Option<String>,
    pub origin: Origin,
}
