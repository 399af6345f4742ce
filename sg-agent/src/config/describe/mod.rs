//! `aws ec2 describe-security-groups` output (JSON, or the same structure in YAML) into a
//! [`Draft`]: `SecurityGroups[]` with `IpPermissions`/`IpPermissionsEgress`, each permission
//! expanded into one rule per range, group pair and prefix list, as AWS itself stores them.
//!
//! Also reads an optional top-level `PrefixLists` (the shape of
//! `describe-managed-prefix-lists`, each item optionally with the `Entries` of
//! `get-managed-prefix-list-entries`). The output carries no membership, so the policy has no
//! interfaces; groups and prefix lists referenced but absent become empty placeholders with a
//! warning. Egress lists are taken as they are (the output already shows the D2 default).
//!
//! Network ACLs (`NetworkAcls` of `describe-network-acls`, with the subnets' CIDRs from a
//! `Subnets` key of `describe-subnets`): describe/nacl.rs.

mod nacl;

use std::collections::BTreeMap;

use super::diag::Sink;
use super::draft::{DEntry, DGroup, DPeer, DPrefixList, DRule, Draft, L};
use super::read::{At, fields, int, list, string};
use super::values;
use crate::policy::{Direction, Family, Origin};

const TOP_KEYS: &[&str] = &[
    "SecurityGroups",
    "PrefixLists",
    "NetworkAcls",
    "Subnets",
    "NextToken",
    "ResponseMetadata",
];
const GROUP_KEYS: &[&str] = &[
    "Description",
    "GroupName",
    "IpPermissions",
    "OwnerId",
    "GroupId",
    "IpPermissionsEgress",
    "Tags",
    "VpcId",
    "SecurityGroupArn",
];
const PERMISSION_KEYS: &[&str] = &[
    "IpProtocol",
    "FromPort",
    "ToPort",
    "IpRanges",
    "Ipv6Ranges",
    "PrefixListIds",
    "UserIdGroupPairs",
];
const PREFIX_LIST_KEYS: &[&str] = &[
    "PrefixListId",
    "AddressFamily",
    "State",
    "StateMessage",
    "PrefixListArn",
    "PrefixListName",
    "MaxEntries",
    "Version",
    "Tags",
    "OwnerId",
    "Entries",
];

struct Refs {
    groups: BTreeMap<String, Origin>,
    prefix_lists: BTreeMap<String, Origin>,
}

pub(crate) fn read(sink: &mut Sink, root: &At) -> Draft {
    let mut d = Draft::default();
    let Some(top) = fields(sink, root, "the describe-security-groups output") else {
        return d;
    };
    top.check_keys(sink, "describe-security-groups output", TOP_KEYS);
    let mut refs = Refs {
        groups: BTreeMap::new(),
        prefix_lists: BTreeMap::new(),
    };
    if let Some(pls) = top.get("PrefixLists")
        && let Some(items) = list(sink, &pls, "PrefixLists")
    {
        d.prefix_lists = items.iter().filter_map(|i| prefix_list(sink, i)).collect();
    }
    if let Some(gs) = top.get("SecurityGroups")
        && let Some(items) = list(sink, &gs, "SecurityGroups")
    {
        d.groups = items
            .iter()
            .filter_map(|i| group(sink, i, &mut refs))
            .collect();
    }
    if top.has("SecurityGroups") {
        sink.warn_hint(
            &top.origin(sink),
            "describe-security-groups output says which groups exist, not which interfaces carry them: the policy has no interfaces",
            "use the native format or CloudFormation to also describe instances",
        );
    }
    nacl::read(sink, &top, &mut d);
    for (id, at) in refs.groups {
        if d.groups.iter().any(|g| g.id.v == id) {
            continue;
        }
        sink.warn(
            &at,
            format!("security group {id} is not in this output; it has no members here, so rules referencing it allow nothing"),
        );
        d.groups.push(DGroup::external(id, at));
    }
    for (id, at) in refs.prefix_lists {
        if d.prefix_lists.iter().any(|p| p.id.v == id) {
            continue;
        }
        sink.warn_hint(
            &at,
            format!("prefix list {id} is not in this output; its entries are unknown, so rules using it allow nothing"),
            "add a PrefixLists section (describe-managed-prefix-lists output with Entries)",
        );
        d.prefix_lists.push(DPrefixList::external(id, at));
    }
    d
}

fn prefix_list(sink: &mut Sink, at: &At) -> Option<DPrefixList> {
    let f = fields(sink, at, "a prefix list")?;
    f.check_keys(sink, "a prefix list", PREFIX_LIST_KEYS);
    let Some(id) = f.get("PrefixListId") else {
        sink.error(&f.origin(sink), "a prefix list needs a PrefixListId");
        return None;
    };
    let id = string(sink, &id, "PrefixListId")?;
    let family = f.get("AddressFamily").and_then(|v| {
        let s = string(sink, &v, "AddressFamily")?;
        match values::family(&s.v) {
            Ok(fam) => Some(L::new(fam, s.at)),
            Err(_) => {
                sink.error_hint(
                    &s.at,
                    format!("AddressFamily `{}` is not IPv4 or IPv6", s.v),
                    "use IPv4 or IPv6",
                );
                None
            }
        }
    });
    let mut entries = Vec::new();
    if let Some(es) = f.get("Entries")
        && let Some(items) = list(sink, &es, "Entries")
    {
        for e in items {
            let Some(ef) = fields(sink, &e, "an entry") else {
                continue;
            };
            ef.check_keys(sink, "a prefix list entry", &["Cidr", "Description"]);
            let Some(c) = ef.get("Cidr") else {
                sink.error(&ef.origin(sink), "an entry needs a Cidr");
                continue;
            };
            let Some(cidr) = string(sink, &c, "Cidr") else {
                continue;
            };
            let description = ef
                .get("Description")
                .and_then(|v| string(sink, &v, "Description"));
            entries.push(DEntry { cidr, description });
        }
    }
    Some(DPrefixList {
        id,
        check_id: true,
        name: f
            .get("PrefixListName")
            .and_then(|v| string(sink, &v, "PrefixListName")),
        family,
        max_entries: f
            .get("MaxEntries")
            .and_then(|v| int(sink, &v, "MaxEntries")),
        version: f.get("Version").and_then(|v| int(sink, &v, "Version")),
        entries,
        external: false,
        at: f.origin(sink),
    })
}

fn group(sink: &mut Sink, at: &At, refs: &mut Refs) -> Option<DGroup> {
    let f = fields(sink, at, "a security group")?;
    f.check_keys(sink, "a security group", GROUP_KEYS);
    let Some(id) = f.get("GroupId") else {
        sink.error(&f.origin(sink), "a security group needs a GroupId");
        return None;
    };
    let id = string(sink, &id, "GroupId")?;
    let mut perms = |key: &str, dir: Direction, sink: &mut Sink| -> (Option<Vec<DRule>>, Origin) {
        let Some(v) = f.get(key) else {
            let o = f.at.with_suffix(&format!(".{key}")).origin(sink);
            if dir == Direction::Egress {
                sink.warn(
                    &f.origin(sink),
                    format!("{key} is missing: the group has no egress rules"),
                );
            }
            return (Some(Vec::new()), o);
        };
        let mut out = Vec::new();
        if let Some(items) = list(sink, &v, key) {
            for p in items {
                permission(sink, &p, dir, refs, &mut out);
            }
        }
        (Some(out), v.origin(sink))
    };
    let ingress = perms("IpPermissions", Direction::Ingress, sink);
    let egress = perms("IpPermissionsEgress", Direction::Egress, sink);
    let name = f
        .get("GroupName")
        .and_then(|v| string(sink, &v, "GroupName"));
    let description = f
        .get("Description")
        .and_then(|v| string(sink, &v, "Description"));
    let at = f.origin(sink);
    Some(DGroup::defined(
        id,
        true,
        name,
        description,
        [ingress, egress],
        at,
    ))
}

/// The peer lists of a permission: (list, the entry's value key, the entry's known keys).
const PEER_LISTS: [(&str, &str, &[&str]); 4] = [
    ("IpRanges", "CidrIp", &["CidrIp", "Description"]),
    ("Ipv6Ranges", "CidrIpv6", &["CidrIpv6", "Description"]),
    (
        "PrefixListIds",
        "PrefixListId",
        &["PrefixListId", "Description"],
    ),
    (
        "UserIdGroupPairs",
        "GroupId",
        &[
            "Description",
            "GroupId",
            "GroupName",
            "PeeringStatus",
            "UserId",
            "VpcId",
            "VpcPeeringConnectionId",
        ],
    ),
];

/// One IpPermission: one rule per CIDR, IPv6 CIDR, prefix list and group pair.
fn permission(sink: &mut Sink, at: &At, dir: Direction, refs: &mut Refs, out: &mut Vec<DRule>) {
    let Some(f) = fields(sink, at, "a permission") else {
        return;
    };
    f.check_keys(sink, "a permission", PERMISSION_KEYS);
    let rule_at = f.origin(sink);
    let Some(p) = f.get("IpProtocol") else {
        sink.error(&rule_at, "a permission needs an IpProtocol");
        return;
    };
    let Some(protocol) = string(sink, &p, "IpProtocol") else {
        return;
    };
    // A port that does not read drops the permission (reported already).
    let port = |key: &str, sink: &mut Sink| match f.get(key) {
        None => Ok(None),
        Some(v) => int(sink, &v, key).map(Some).ok_or(()),
    };
    let (Ok(from), Ok(to)) = (port("FromPort", sink), port("ToPort", sink)) else {
        return;
    };
    let before = out.len();
    for (list_key, value_key, known) in PEER_LISTS {
        let Some(l) = f.get(list_key) else { continue };
        let Some(items) = list(sink, &l, list_key) else {
            continue;
        };
        for item in items {
            let Some(e) = peer_entry(sink, &item, (list_key, value_key, known), refs) else {
                continue;
            };
            out.push(DRule {
                direction: dir,
                protocol: protocol.clone(),
                from: from.clone(),
                to: to.clone(),
                peer: e.peer,
                id: None,
                description: e.description,
                at: e.at,
            });
        }
    }
    if out.len() == before {
        sink.warn(
            &rule_at,
            "this permission names no peer (no ranges, prefix lists or groups); it allows nothing",
        );
    }
}

/// What one entry of a permission's peer list gives its rule.
struct PeerEntry {
    peer: L<DPeer>,
    description: Option<L<String>>,
    at: Origin,
}

/// One entry of a peer list ([`PEER_LISTS`]); the groups and prefix lists it names are
/// recorded in `refs`.
fn peer_entry(
    sink: &mut Sink,
    item: &At,
    (list_key, value_key, known): (&str, &str, &[&str]),
    refs: &mut Refs,
) -> Option<PeerEntry> {
    let itf = fields(sink, item, list_key)?;
    itf.check_keys(sink, &format!("an entry of {list_key}"), known);
    let Some(v) = itf.get(value_key) else {
        sink.error(
            &itf.origin(sink),
            format!("an entry of {list_key} needs {value_key}"),
        );
        return None;
    };
    let text = string(sink, &v, value_key)?;
    let peer = match value_key {
        "CidrIp" => DPeer::Cidr {
            text: text.v,
            expect: Some((
                Family::V4,
                "IpRanges hold IPv4 CIDRs; put IPv6 ones in Ipv6Ranges".into(),
            )),
        },
        "CidrIpv6" => DPeer::Cidr {
            text: text.v,
            expect: Some((
                Family::V6,
                "Ipv6Ranges hold IPv6 CIDRs; put IPv4 ones in IpRanges".into(),
            )),
        },
        "PrefixListId" => {
            refs.prefix_lists
                .entry(text.v.clone())
                .or_insert_with(|| text.at.clone());
            DPeer::PrefixList(text.v)
        }
        _ => {
            refs.groups
                .entry(text.v.clone())
                .or_insert_with(|| text.at.clone());
            DPeer::Group(text.v)
        }
    };
    Some(PeerEntry {
        peer: L::new(peer, text.at),
        description: itf
            .get("Description")
            .and_then(|v| string(sink, &v, "Description")),
        at: itf.origin(sink),
    })
}
