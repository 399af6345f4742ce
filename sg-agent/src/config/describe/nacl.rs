//! `aws ec2 describe-network-acls` output (`NetworkAcls[]` with `Entries` and `Associations`)
//! and `aws ec2 describe-subnets` output (`Subnets[]`, for the subnets' CIDRs) into the
//! draft's network ACLs and subnets. Shapes as in botocore's EC2 model.
//!
//! The output shows each list's `*` rule (32767 for IPv4, 32768 for IPv6): it is implicit in
//! sg (A6), so it is checked to be the deny-all it must be and dropped. A subnet associated
//! in `Associations` but absent from `Subnets` has no CIDR here: an error, with the command
//! that gives it. Judging values is `nacl`'s (validation), not this module's.

use std::collections::BTreeMap;

use super::super::diag::Sink;
use super::super::draft::{DNacl, DNaclEntry, DSubnet, Draft, L};
use super::super::read::{At, Fields, boolean, fields, int, list, string};
use crate::policy::{Family, Origin};

const NACL_KEYS: &[&str] = &[
    "Associations",
    "Entries",
    "IsDefault",
    "NetworkAclId",
    "Tags",
    "VpcId",
    "OwnerId",
];
const ENTRY_KEYS: &[&str] = &[
    "CidrBlock",
    "Egress",
    "IcmpTypeCode",
    "Ipv6CidrBlock",
    "PortRange",
    "Protocol",
    "RuleAction",
    "RuleNumber",
];
const ASSOCIATION_KEYS: &[&str] = &["NetworkAclAssociationId", "NetworkAclId", "SubnetId"];
/// Keys of a subnet sg knows; others are warned about (the output grows with AWS's features).
const SUBNET_KEYS: &[&str] = &[
    "AvailabilityZone",
    "AvailabilityZoneId",
    "AvailableIpAddressCount",
    "CidrBlock",
    "DefaultForAz",
    "EnableLniAtDeviceIndex",
    "MapPublicIpOnLaunch",
    "MapCustomerOwnedIpOnLaunch",
    "CustomerOwnedIpv4Pool",
    "State",
    "SubnetId",
    "VpcId",
    "OwnerId",
    "AssignIpv6AddressOnCreation",
    "Ipv6CidrBlockAssociationSet",
    "Tags",
    "SubnetArn",
    "OutpostArn",
    "EnableDns64",
    "Ipv6Native",
    "PrivateDnsNameOptionsOnLaunch",
    "BlockPublicAccessStates",
    "Type",
];

/// Reads `NetworkAcls` and `Subnets` of `top` into `d`.
pub(super) fn read(sink: &mut Sink, top: &Fields, d: &mut Draft) {
    let mut subnets: BTreeMap<String, DSubnet> = BTreeMap::new();
    if let Some(ss) = top.get("Subnets")
        && let Some(items) = list(sink, &ss, "Subnets")
    {
        for s in items.iter().filter_map(|i| subnet(sink, i)) {
            subnets.entry(s.id.v.clone()).or_insert(s);
        }
    }
    if let Some(ns) = top.get("NetworkAcls")
        && let Some(items) = list(sink, &ns, "NetworkAcls")
    {
        for item in &items {
            let Some((acl, associations)) = network_acl(sink, item) else {
                continue;
            };
            for (subnet, at) in associations {
                match subnets.get_mut(&subnet.v) {
                    Some(s) => s.network_acl = Some(L::new(acl.id.v.clone(), at)),
                    None => sink.error_hint(
                        &subnet.at,
                        format!("subnet {} is associated with network ACL {}, but its CIDRs are not in this document", subnet.v, acl.id.v),
                        "add the output of `aws ec2 describe-subnets` under a top-level `Subnets` key (the same document may hold SecurityGroups, NetworkAcls and Subnets)",
                    ),
                }
            }
            d.network_acls.push(acl);
        }
    }
    d.subnets.extend(subnets.into_values());
}

/// The subnets a NACL's `Associations` name, each with where.
type Associations = Vec<(L<String>, Origin)>;

/// One network ACL, and the subnets its `Associations` name (subnet id, where).
fn network_acl(sink: &mut Sink, at: &At) -> Option<(DNacl, Associations)> {
    let f = fields(sink, at, "a network ACL")?;
    f.check_keys(sink, "a network ACL", NACL_KEYS);
    let Some(id) = f.get("NetworkAclId") else {
        sink.error(&f.origin(sink), "a network ACL needs a NetworkAclId");
        return None;
    };
    let id = string(sink, &id, "NetworkAclId")?;
    let default = match f.get("IsDefault") {
        Some(v) => boolean(sink, &v, "IsDefault").unwrap_or(false),
        None => false,
    };
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    let entries_at = f.at.with_suffix(".Entries").origin(sink);
    match f.get("Entries") {
        Some(es) => {
            for e in list(sink, &es, "Entries").unwrap_or_default() {
                if let Some((egress, entry)) = entry(sink, &e) {
                    if egress {
                        outbound.push(entry);
                    } else {
                        inbound.push(entry);
                    }
                }
            }
        }
        None => sink.warn(
            &f.origin(sink),
            format!(
                "Entries is missing: network ACL {} denies everything (A11)",
                id.v
            ),
        ),
    }
    let mut associations = Vec::new();
    if let Some(a) = f.get("Associations") {
        for item in list(sink, &a, "Associations").unwrap_or_default() {
            let Some(af) = fields(sink, &item, "an association") else {
                continue;
            };
            af.check_keys(sink, "an association", ASSOCIATION_KEYS);
            if let Some(s) = af
                .get("SubnetId")
                .and_then(|v| string(sink, &v, "SubnetId"))
            {
                associations.push((s, af.origin(sink)));
            } else {
                sink.error(&af.origin(sink), "an association needs a SubnetId");
            }
        }
    }
    let acl = DNacl {
        id,
        check_id: true,
        default,
        inbound: Some(inbound),
        inbound_at: entries_at.clone(),
        outbound: Some(outbound),
        outbound_at: entries_at,
        at: f.origin(sink),
    };
    Some((acl, associations))
}

/// One entry of `Entries`: (whether it is an egress entry, the entry); None when it is the
/// `*` rule (dropped: A6) or does not read (reported).
fn entry(sink: &mut Sink, at: &At) -> Option<(bool, DNaclEntry)> {
    let f = fields(sink, at, "a network ACL entry")?;
    f.check_keys(sink, "a network ACL entry", ENTRY_KEYS);
    let entry_at = f.origin(sink);
    let mut need = |key: &str| {
        let v = f.get(key);
        if v.is_none() {
            sink.error(&entry_at, format!("a network ACL entry needs {key}"));
        }
        v
    };
    let (number, action, protocol, egress) = (
        need("RuleNumber"),
        need("RuleAction"),
        need("Protocol"),
        need("Egress"),
    );
    let number = int(sink, &number?, "RuleNumber")?;
    let action = string(sink, &action?, "RuleAction")?;
    let protocol = string(sink, &protocol?, "Protocol")?;
    let egress = boolean(sink, &egress?, "Egress")?;
    let (cidr, expect) = match (f.get("CidrBlock"), f.get("Ipv6CidrBlock")) {
        (Some(c), None) => (
            string(sink, &c, "CidrBlock")?,
            (
                Family::V4,
                "CidrBlock holds IPv4 CIDRs; IPv6 ones are in Ipv6CidrBlock",
            ),
        ),
        (None, Some(c)) => (
            string(sink, &c, "Ipv6CidrBlock")?,
            (
                Family::V6,
                "Ipv6CidrBlock holds IPv6 CIDRs; IPv4 ones are in CidrBlock",
            ),
        ),
        _ => {
            sink.error(
                &entry_at,
                "a network ACL entry needs exactly one of CidrBlock and Ipv6CidrBlock",
            );
            return None;
        }
    };
    if number.v == 32767 || number.v == 32768 {
        star_rule(sink, &number, &action, &protocol, &cidr);
        return None;
    }
    let ports = match f.get("PortRange") {
        Some(p) => Some(pair(sink, &p, "PortRange", ("From", "To"))?),
        None => None,
    };
    let icmp = match f.get("IcmpTypeCode") {
        Some(p) => {
            let (t, c) = pair(sink, &p, "IcmpTypeCode", ("Type", "Code"))?;
            Some((Some(t), Some(c)))
        }
        None => None,
    };
    Some((
        egress,
        DNaclEntry {
            number,
            action,
            protocol,
            ports,
            icmp,
            cidr,
            cidr_expect: Some((expect.0, expect.1.to_string())),
            at: entry_at,
        },
    ))
}

/// The `*` rule an output shows (A6): it must deny all traffic of its family; it is implicit.
fn star_rule(
    sink: &mut Sink,
    number: &L<i64>,
    action: &L<String>,
    protocol: &L<String>,
    cidr: &L<String>,
) {
    let want = if number.v == 32767 {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let deny_all =
        action.v.eq_ignore_ascii_case("deny") && protocol.v.trim() == "-1" && cidr.v.trim() == want;
    if !deny_all {
        sink.error_hint(
            &number.at,
            format!(
                "entry {} is the `*` rule, which denies all traffic from {want}; this one is {} {} {} (A6)",
                number.v,
                action.v,
                protocol.v,
                cidr.v
            ),
            "the `*` rule cannot be changed: use the unedited output of describe-network-acls",
        );
    }
}

/// A mapping of two integers (`PortRange` {From, To}, `IcmpTypeCode` {Type, Code}).
fn pair(sink: &mut Sink, at: &At, what: &str, (a, b): (&str, &str)) -> Option<(L<i64>, L<i64>)> {
    let f = fields(sink, at, what)?;
    f.check_keys(sink, what, &[a, b]);
    let (Some(x), Some(y)) = (f.get(a), f.get(b)) else {
        sink.error(&f.origin(sink), format!("{what} needs {a} and {b}"));
        return None;
    };
    Some((int(sink, &x, a)?, int(sink, &y, b)?))
}

/// One subnet of `Subnets`: its id, IPv4 CIDR and associated IPv6 CIDR.
fn subnet(sink: &mut Sink, at: &At) -> Option<DSubnet> {
    let f = fields(sink, at, "a subnet")?;
    for (key, k, _) in f.entries() {
        if !SUBNET_KEYS.contains(&key.as_str()) {
            sink.warn(
                &k.origin(sink),
                format!("unknown field `{key}` in a subnet is ignored"),
            );
        }
    }
    let Some(id) = f.get("SubnetId") else {
        sink.error(&f.origin(sink), "a subnet needs a SubnetId");
        return None;
    };
    let id = string(sink, &id, "SubnetId")?;
    let cidr = f
        .get("CidrBlock")
        .and_then(|v| string(sink, &v, "CidrBlock"));
    let mut v6: Vec<L<String>> = Vec::new();
    if let Some(set) = f.get("Ipv6CidrBlockAssociationSet") {
        for item in list(sink, &set, "Ipv6CidrBlockAssociationSet").unwrap_or_default() {
            let Some(af) = fields(sink, &item, "an IPv6 CIDR association") else {
                continue;
            };
            // A CIDR being or already disassociated holds no address of the subnet.
            let state = af.get("Ipv6CidrBlockState").and_then(|s| {
                s.node
                    .get("State")
                    .and_then(|n| n.scalar())
                    .map(str::to_string)
            });
            if state
                .as_deref()
                .is_some_and(|s| s != "associated" && s != "associating")
            {
                continue;
            }
            if let Some(c) = af
                .get("Ipv6CidrBlock")
                .and_then(|v| string(sink, &v, "Ipv6CidrBlock"))
            {
                v6.push(c);
            }
        }
    }
    if v6.len() > 1 {
        sink.error_hint(
            &v6[1].at,
            format!("subnet {} has {} IPv6 CIDRs", id.v, v6.len()),
            "a subnet has at most one IPv6 CIDR (A12)",
        );
    }
    Some(DSubnet {
        id,
        check_id: true,
        cidr,
        ipv6_cidr: v6.into_iter().next(),
        network_acl: None,
        router_device: None,
        at: f.origin(sink),
    })
}
