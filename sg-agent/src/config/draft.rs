//! The draft: what a front-end (native, CloudFormation, describe JSON) read from its file,
//! in one shape, every value still as written and located. The middle step between raw text
//! and the validated `Policy`.
//!
//! Front-ends own field names and structure (unknown keys, wrong types, CloudFormation
//! references); `validate` owns meaning (ranges, families, references, duplicates, quotas).
//! This module holds plain data only (and the placeholders the front-ends share).

use crate::policy::{Direction, Family, Origin};

/// A value and where it was written.
#[derive(Clone, Debug)]
pub(crate) struct L<T> {
    pub v: T,
    pub at: Origin,
}

impl<T> L<T> {
    pub fn new(v: T, at: Origin) -> L<T> {
        L { v, at }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub groups: Vec<DGroup>,
    pub prefix_lists: Vec<DPrefixList>,
    pub interfaces: Vec<DInterface>,
    pub quotas: Option<DQuotas>,
    /// Defaults for every interface (C5).
    pub timeouts: DTimeouts,
    pub network_acls: Vec<DNacl>,
    pub subnets: Vec<DSubnet>,
}

#[derive(Debug)]
pub(crate) struct DQuotas {
    pub rules_per_group: Option<L<i64>>,
    pub groups_per_interface: Option<L<i64>>,
    /// A24: network ACL rules per NACL, direction and family, `*` included.
    pub nacl_rules_per_list: Option<L<i64>>,
    pub at: Origin,
}

/// The conntrack timeouts a file can set (C5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutField {
    TcpEstablished,
    TcpEmbryonic,
    TcpClosing,
    UdpSingle,
    UdpStream,
    Icmp,
    Other,
}

impl TimeoutField {
    pub const ALL: [(TimeoutField, &'static str); 7] = [
        (TimeoutField::TcpEstablished, "tcp_established"),
        (TimeoutField::TcpEmbryonic, "tcp_embryonic"),
        (TimeoutField::TcpClosing, "tcp_closing"),
        (TimeoutField::UdpSingle, "udp_single"),
        (TimeoutField::UdpStream, "udp_stream"),
        (TimeoutField::Icmp, "icmp"),
        (TimeoutField::Other, "other"),
    ];
}

/// Timeouts given explicitly; the rest come from the defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct DTimeouts {
    pub values: Vec<(TimeoutField, L<i64>)>,
}

#[derive(Debug)]
pub(crate) struct DGroup {
    pub id: L<String>,
    /// The id was written as an id (native, describe): check its shape. CloudFormation logical
    /// ids are ids by the template's own rules and are not `sg-...`.
    pub check_id: bool,
    pub name: Option<L<String>>,
    pub description: Option<L<String>>,
    /// None: omitted (D1: no rules; D3 for the default group: all from itself).
    pub ingress: Option<Vec<DRule>>,
    pub ingress_at: Origin,
    /// None: omitted (D2: all traffic to 0.0.0.0/0 and ::/0).
    pub egress: Option<Vec<DRule>>,
    pub egress_at: Origin,
    /// Rules added from outside the group's own definition (CloudFormation
    /// SecurityGroupIngress/SecurityGroupEgress resources): they add to whatever the lists
    /// above yield, defaults included, as AuthorizeSecurityGroup* does.
    pub extra: Vec<DRule>,
    /// D3: the VPC default group.
    pub default_group: bool,
    /// Referenced but defined elsewhere (a warning was given): no rules, no members here.
    pub external: bool,
    pub at: Origin,
}

/// A rule list as a file gives it: None when omitted, and where it stands (or would).
pub(crate) type DRules = (Option<Vec<DRule>>, Origin);

impl DGroup {
    /// A group as a file defines it, from its ingress and egress lists: nothing added from
    /// outside yet, not the VPC default group.
    pub fn defined(
        id: L<String>,
        check_id: bool,
        name: Option<L<String>>,
        description: Option<L<String>>,
        [(ingress, ingress_at), (egress, egress_at)]: [DRules; 2],
        at: Origin,
    ) -> DGroup {
        DGroup {
            id,
            check_id,
            name,
            description,
            ingress,
            ingress_at,
            egress,
            egress_at,
            extra: Vec::new(),
            default_group: false,
            external: false,
            at,
        }
    }

    /// A group referenced but defined elsewhere: no rules, no members here.
    pub fn external(id: String, at: Origin) -> DGroup {
        DGroup {
            id: L::new(id, at.clone()),
            check_id: true,
            name: None,
            description: None,
            ingress: Some(Vec::new()),
            ingress_at: at.clone(),
            egress: Some(Vec::new()),
            egress_at: at.clone(),
            extra: Vec::new(),
            default_group: false,
            external: true,
            at,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum DPeer {
    /// `expect`: the field only takes this family; the string is the hint when it does not.
    Cidr {
        text: String,
        expect: Option<(Family, String)>,
    },
    Group(String),
    PrefixList(String),
}

#[derive(Clone, Debug)]
pub(crate) struct DRule {
    pub direction: Direction,
    /// As written: `tcp`, `6`, `-1`, `all`, `gre` ...
    pub protocol: L<String>,
    /// Port range start, or ICMP type. AWS's FromPort.
    pub from: Option<L<i64>>,
    /// Port range end, or ICMP code. AWS's ToPort.
    pub to: Option<L<i64>>,
    pub peer: L<DPeer>,
    pub id: Option<L<String>>,
    pub description: Option<L<String>>,
    pub at: Origin,
}

#[derive(Debug)]
pub(crate) struct DEntry {
    pub cidr: L<String>,
    pub description: Option<L<String>>,
}

#[derive(Debug)]
pub(crate) struct DPrefixList {
    pub id: L<String>,
    pub check_id: bool,
    pub name: Option<L<String>>,
    pub family: Option<L<Family>>,
    pub max_entries: Option<L<i64>>,
    pub version: Option<L<i64>>,
    pub entries: Vec<DEntry>,
    /// Referenced but defined elsewhere (a warning was given): no entries.
    pub external: bool,
    pub at: Origin,
}

impl DPrefixList {
    /// A prefix list referenced but defined elsewhere: its entries are unknown.
    pub fn external(id: String, at: Origin) -> DPrefixList {
        DPrefixList {
            id: L::new(id, at.clone()),
            check_id: true,
            name: None,
            family: None,
            max_entries: None,
            version: None,
            entries: Vec::new(),
            external: true,
            at,
        }
    }
}

#[derive(Debug)]
pub(crate) struct DInterface {
    pub name: L<String>,
    pub instance: String,
    pub device: Option<L<String>>,
    pub addresses: Vec<L<String>>,
    /// Group ids (front-ends resolve their own reference syntax first).
    pub groups: Vec<L<String>>,
    pub groups_at: Origin,
    pub timeouts: DTimeouts,
    /// Where `audit: true` was written (native only): this interface's device runs in audit
    /// mode (L3).
    pub audit: Option<Origin>,
    pub at: Origin,
}

/// A network ACL as written (A2-A12). Its `*` rules are never here: front-ends drop the ones
/// an output shows (A6).
#[derive(Debug)]
pub(crate) struct DNacl {
    pub id: L<String>,
    /// The id was written as an id (native, describe): check its shape (as [`DGroup`]).
    pub check_id: bool,
    /// The VPC's default NACL (A9).
    pub default: bool,
    /// None: omitted (the default NACL gets A9's entries, a custom one none: A11).
    pub inbound: Option<Vec<DNaclEntry>>,
    pub inbound_at: Origin,
    pub outbound: Option<Vec<DNaclEntry>>,
    pub outbound_at: Origin,
    pub at: Origin,
}

#[derive(Clone, Debug)]
pub(crate) struct DNaclEntry {
    pub number: L<i64>,
    /// As written: `allow`, `deny`.
    pub action: L<String>,
    /// As written: `tcp`, `6`, `-1` ...
    pub protocol: L<String>,
    /// The port range (from, to), when given.
    pub ports: Option<(L<i64>, L<i64>)>,
    /// The ICMP (type, code), when given; either may be missing as written.
    pub icmp: Option<DIcmp>,
    pub cidr: L<String>,
    /// The field only takes this family; the string is the hint when it does not.
    pub cidr_expect: Option<(Family, String)>,
    pub at: Origin,
}

/// An ICMP (type, code) as written; either may be missing.
pub(crate) type DIcmp = (Option<L<i64>>, Option<L<i64>>);

/// A subnet as written (A12).
#[derive(Debug)]
pub(crate) struct DSubnet {
    pub id: L<String>,
    pub check_id: bool,
    /// Its IPv4 CIDR (required: the validator says so when it is missing).
    pub cidr: Option<L<String>>,
    pub ipv6_cidr: Option<L<String>>,
    /// None: the default NACL (A12).
    pub network_acl: Option<L<String>>,
    pub router_device: Option<L<String>>,
    pub at: Origin,
}
