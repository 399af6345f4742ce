//! Network ACLs in a template: `AWS::EC2::NetworkAcl`, its `AWS::EC2::NetworkAclEntry`
//! resources, `AWS::EC2::SubnetNetworkAclAssociation` and the `AWS::EC2::Subnet`s they
//! concern, into the draft's network ACLs and subnets.
//!
//! Read only when the template has one of the three network ACL types: a template without
//! them leaves the VPC's default NACL (A9) allowing everything, so its subnets would change
//! nothing (and their CIDRs are often known only once deployed). A subnet without an
//! association has the VPC's default NACL, which `nacl` (validation) models (A9, A12).
//!
//! Ids, as for groups: a NACL's or subnet's `Name` tag when it has the shape of an id
//! (`acl-web`, `subnet-web`), else its logical id. A subnet's `sg:device` tag names the
//! router's device facing it.

use std::collections::BTreeMap;

use super::super::diag::did_you_mean;
use super::super::draft::{DNacl, DNaclEntry, DSubnet, Draft, L};
use super::super::read::{At, Fields, fields};
use super::super::values::{looks_like_nacl_id, looks_like_subnet_id};
use super::{Cfn, Val};
use crate::policy::{Family, Origin};

pub(super) const NACL: &str = "AWS::EC2::NetworkAcl";
pub(super) const NACL_ENTRY: &str = "AWS::EC2::NetworkAclEntry";
pub(super) const NACL_ASSOCIATION: &str = "AWS::EC2::SubnetNetworkAclAssociation";
pub(super) const SUBNET: &str = "AWS::EC2::Subnet";

const ENTRY_PROPS: &[&str] = &[
    "CidrBlock",
    "Egress",
    "Icmp",
    "Ipv6CidrBlock",
    "NetworkAclId",
    "PortRange",
    "Protocol",
    "RuleAction",
    "RuleNumber",
];

/// Properties of AWS::EC2::Subnet; an unknown one is a warning (this list may lag AWS's).
const SUBNET_PROPS: &[&str] = &[
    "AssignIpv6AddressOnCreation",
    "AvailabilityZone",
    "AvailabilityZoneId",
    "CidrBlock",
    "EnableDns64",
    "EnableLniAtDeviceIndex",
    "Ipv4IpamPoolId",
    "Ipv4NetmaskLength",
    "Ipv6CidrBlock",
    "Ipv6CidrBlocks",
    "Ipv6IpamPoolId",
    "Ipv6Native",
    "Ipv6NetmaskLength",
    "MapPublicIpOnLaunch",
    "OutpostArn",
    "PrivateDnsNameOptionsOnLaunch",
    "Tags",
    "VpcId",
];

/// Whether the template has network ACL resources (then its subnets are read too).
pub(super) fn has_nacls(types: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    types
        .into_iter()
        .any(|t| matches!(t.as_ref(), NACL | NACL_ENTRY | NACL_ASSOCIATION))
}

impl<'n> Cfn<'n, '_> {
    /// The network ACLs with their entries, and the subnets with their association.
    pub(super) fn network_acls(&mut self, d: &mut Draft) {
        if !has_nacls(self.res.iter().map(|r| r.ty.as_str())) {
            return;
        }
        let nacl_ids = self.named_ids(NACL, looks_like_nacl_id);
        let subnet_ids = self.named_ids(SUBNET, looks_like_subnet_id);
        let mut acls: Vec<DNacl> = Vec::new();
        for i in self.of_type(NACL) {
            let at = self.res[i].at.origin(self.sink);
            if let Some(p) = self.props(i) {
                p.check_keys(
                    self.sink,
                    "AWS::EC2::NetworkAcl Properties",
                    &["Tags", "VpcId"],
                );
            }
            acls.push(DNacl {
                id: L::new(nacl_ids[&self.res[i].logical].clone(), at.clone()),
                check_id: false,
                default: false,
                inbound: Some(Vec::new()),
                inbound_at: at.clone(),
                outbound: Some(Vec::new()),
                outbound_at: at.clone(),
                at,
            });
        }
        for i in self.of_type(NACL_ENTRY) {
            let Some((nacl, egress, entry)) = self.nacl_entry(i, &nacl_ids) else {
                continue;
            };
            if let Some(acl) = acls.iter_mut().find(|a| a.id.v == nacl) {
                let list = if egress {
                    &mut acl.outbound
                } else {
                    &mut acl.inbound
                };
                list.get_or_insert_with(Vec::new).push(entry);
            }
        }
        let associations = self.associations(&nacl_ids, &subnet_ids);
        for i in self.of_type(SUBNET) {
            if let Some(mut s) = self.subnet(i, &subnet_ids) {
                s.network_acl = associations.get(&s.id.v).cloned();
                d.subnets.push(s);
            }
        }
        d.network_acls.extend(acls);
    }

    /// Resource `i`'s Properties when they are a mapping, whatever its type: Subnet is not
    /// among the types read in every template (stack.rs `READ_TYPES`), so its evaluated
    /// Properties are taken here.
    fn any_props(&self, i: usize) -> Option<Fields<'n>> {
        if let Some(p) = self.props(i) {
            return Some(p);
        }
        let at = &self.res[i].at;
        let p = at.node.get("Properties")?;
        p.as_map()?;
        Some(Fields {
            at: at.child("Properties", p),
        })
    }

    /// Logical id -> id for the resources of type `ty`: the Name tag when it has the shape
    /// of an id, else the logical id.
    fn named_ids(&mut self, ty: &str, is_id: fn(&str) -> bool) -> BTreeMap<String, String> {
        let mut ids = BTreeMap::new();
        for i in self.of_type(ty) {
            let name = match self.any_props(i) {
                Some(p) => self.tags(&p).0,
                None => None,
            };
            let logical = self.res[i].logical.clone();
            let id = name.filter(|n| is_id(n)).unwrap_or_else(|| logical.clone());
            ids.insert(logical, id);
        }
        ids
    }

    /// The id of the resource a `NetworkAclId`/`SubnetId` value names (`ids`: logical id ->
    /// id of that type): a Ref, or a literal logical id or id.
    fn resource_id(
        &mut self,
        at: &At<'n>,
        ids: &BTreeMap<String, String>,
        what: &str,
    ) -> Option<L<String>> {
        if let Some(r) = self.ref_name(at) {
            let name = r?;
            if let Some(id) = ids.get(&name.v) {
                return Some(L::new(id.clone(), name.at));
            }
            if let Some(&i) = self.by_logical.get(&name.v) {
                let ty = self.res[i].ty.clone();
                self.sink.error(
                    &name.at,
                    format!("Ref to {} ({ty}) is not a {what}", name.v),
                );
                return None;
            }
            self.undefined(&name, "Ref");
            return None;
        }
        match self.eval(at)? {
            Val::Str(s) => {
                let t = s.v.trim();
                if let Some((_, id)) = ids.iter().find(|(l, id)| *l == t || *id == t) {
                    return Some(L::new(id.clone(), s.at));
                }
                let known: Vec<&str> = ids.keys().map(String::as_str).collect();
                let hint = match did_you_mean(t, &known) {
                    Some(k) => format!("did you mean {k}?"),
                    None => format!("use !Ref to a {what} of this template"),
                };
                self.sink.error_hint(
                    &s.at,
                    format!("`{t}` is not a {what} of this template"),
                    hint,
                );
                None
            }
            Val::Unknown(w, o) => {
                self.report_unknown(&w, &o, &format!("the {what}"));
                None
            }
            Val::Group(g) | Val::PrefixList(g) => {
                self.sink.error(&g.at, format!("{} is not a {what}", g.v));
                None
            }
            Val::List(_) => {
                self.sink.error(
                    &at.origin(self.sink),
                    format!("expected one {what}, found a list"),
                );
                None
            }
        }
    }

    /// One AWS::EC2::NetworkAclEntry: (its NACL's id, whether egress, the entry).
    fn nacl_entry(
        &mut self,
        i: usize,
        nacl_ids: &BTreeMap<String, String>,
    ) -> Option<(String, bool, DNaclEntry)> {
        let logical = self.res[i].logical.clone();
        let Some(p) = self.props(i) else {
            let o = self.res[i].at.origin(self.sink);
            self.sink
                .error(&o, format!("network ACL entry {logical} has no Properties"));
            return None;
        };
        p.check_keys(
            self.sink,
            "AWS::EC2::NetworkAclEntry Properties",
            ENTRY_PROPS,
        );
        let owner = format!("network ACL entry {logical}");
        let entry_at = p.origin(self.sink);
        let nacl = self.required(&p, "NetworkAclId", &owner);
        let number = self.required(&p, "RuleNumber", &owner);
        let protocol = self.required(&p, "Protocol", &owner);
        let action = self.required(&p, "RuleAction", &owner);
        let nacl = self.resource_id(&nacl?, nacl_ids, "network ACL");
        let number = self.int(&number?, "RuleNumber");
        let protocol = self.string(&protocol?, "Protocol");
        let action = self.string(&action?, "RuleAction");
        let egress = match p.get("Egress") {
            Some(v) => self.boolean(&v, "Egress")?,
            None => false,
        };
        let (cidr, expect) = self.entry_cidr(&p, &owner)?;
        let ports = match p.get("PortRange") {
            Some(v) => {
                let (a, b) = self.int_pair(&v, "PortRange", ("From", "To"));
                Some((a?, b?))
            }
            None => None,
        };
        let icmp = p
            .get("Icmp")
            .map(|v| self.int_pair(&v, "Icmp", ("Type", "Code")));
        let entry = DNaclEntry {
            number: number?,
            action: action?,
            protocol: protocol?,
            ports,
            icmp,
            cidr,
            cidr_expect: Some(expect),
            at: entry_at,
        };
        Some((nacl?.v, egress, entry))
    }

    /// An entry's one CIDR: CidrBlock (IPv4) or Ipv6CidrBlock, with the family it must have.
    fn entry_cidr(&mut self, p: &Fields<'n>, owner: &str) -> Option<(L<String>, (Family, String))> {
        match (p.get("CidrBlock"), p.get("Ipv6CidrBlock")) {
            (Some(c), None) => Some((
                self.string(&c, "CidrBlock")?,
                (
                    Family::V4,
                    "CidrBlock holds IPv4 CIDRs; put IPv6 ones in Ipv6CidrBlock".into(),
                ),
            )),
            (None, Some(c)) => Some((
                self.string(&c, "Ipv6CidrBlock")?,
                (
                    Family::V6,
                    "Ipv6CidrBlock holds IPv6 CIDRs; put IPv4 ones in CidrBlock".into(),
                ),
            )),
            _ => {
                self.sink.error_hint(
                    &p.origin(self.sink),
                    format!("{owner} needs exactly one of CidrBlock and Ipv6CidrBlock"),
                    "an entry matches one CIDR; write one entry per CIDR",
                );
                None
            }
        }
    }

    /// `true`/`false` (CloudFormation also takes them quoted).
    fn boolean(&mut self, at: &At<'n>, what: &str) -> Option<bool> {
        let s = self.string(at, what)?;
        match s.v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.sink.error(
                    &s.at,
                    format!("{what} must be true or false, found `{}`", s.v),
                );
                None
            }
        }
    }

    /// Two integers of a mapping (`PortRange` From/To, `Icmp` Type/Code); each None when
    /// absent or unreadable (reported when unreadable).
    fn int_pair(
        &mut self,
        at: &At<'n>,
        what: &str,
        (a, b): (&str, &str),
    ) -> (Option<L<i64>>, Option<L<i64>>) {
        let Some(f) = fields(self.sink, at, what) else {
            return (None, None);
        };
        f.check_keys(self.sink, what, &[a, b]);
        let x = f.get(a).and_then(|v| self.int(&v, a));
        let y = f.get(b).and_then(|v| self.int(&v, b));
        (x, y)
    }

    /// Subnet id -> the id of its NACL (with where the association is), from the
    /// SubnetNetworkAclAssociation resources; a subnet associated twice is an error (A12).
    fn associations(
        &mut self,
        nacl_ids: &BTreeMap<String, String>,
        subnet_ids: &BTreeMap<String, String>,
    ) -> BTreeMap<String, L<String>> {
        let mut out: BTreeMap<String, L<String>> = BTreeMap::new();
        for i in self.of_type(NACL_ASSOCIATION) {
            let logical = self.res[i].logical.clone();
            let Some(p) = self.props(i) else {
                let o = self.res[i].at.origin(self.sink);
                self.sink
                    .error(&o, format!("association {logical} has no Properties"));
                continue;
            };
            p.check_keys(
                self.sink,
                "AWS::EC2::SubnetNetworkAclAssociation Properties",
                &["NetworkAclId", "SubnetId"],
            );
            let owner = format!("association {logical}");
            let nacl = self.required(&p, "NetworkAclId", &owner);
            let subnet = self.required(&p, "SubnetId", &owner);
            let nacl = nacl.and_then(|v| self.resource_id(&v, nacl_ids, "network ACL"));
            let subnet = subnet.and_then(|v| self.resource_id(&v, subnet_ids, "subnet"));
            let (Some(nacl), Some(subnet)) = (nacl, subnet) else {
                continue;
            };
            if let Some(first) = out.get(&subnet.v) {
                let first: &Origin = &first.at;
                self.sink.error_hint(
                    &subnet.at,
                    format!(
                        "subnet {} is associated with a second network ACL (first at line {}, column {})",
                        subnet.v, first.line, first.column
                    ),
                    "a subnet has exactly one network ACL (A12): remove one association",
                );
                continue;
            }
            out.insert(subnet.v, nacl);
        }
        out
    }

    /// One AWS::EC2::Subnet: its id, CIDRs and router device (association added by the
    /// caller).
    fn subnet(&mut self, i: usize, subnet_ids: &BTreeMap<String, String>) -> Option<DSubnet> {
        let logical = self.res[i].logical.clone();
        let at = self.res[i].at.clone();
        let Some(p) = self.any_props(i) else {
            let o = at.origin(self.sink);
            self.sink
                .error(&o, format!("subnet {logical} has no Properties"));
            return None;
        };
        self.warn_unknown(&p, "AWS::EC2::Subnet Properties", SUBNET_PROPS);
        let cidr = p
            .get("CidrBlock")
            .and_then(|v| self.string(&v, "CidrBlock"));
        let ipv6_cidr = p
            .get("Ipv6CidrBlock")
            .and_then(|v| self.string(&v, "Ipv6CidrBlock"));
        let (_, router_device) = self.tags(&p);
        Some(DSubnet {
            id: L::new(subnet_ids[&logical].clone(), at.origin(self.sink)),
            check_id: false,
            cidr,
            ipv6_cidr,
            network_acl: None,
            router_device,
            at: at.origin(self.sink),
        })
    }
}
