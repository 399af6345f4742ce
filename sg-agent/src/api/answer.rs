//! Each [`Answer`] as the XML document EC2 sends for its action, member names as botocore's
//! EC2 model spells them (`securityGroupInfo`, `ipPermissions`, `groups`, `ipRanges`,
//! `securityGroupRuleSet`, `tagSet`, ...).

use std::collections::BTreeMap;

use super::actions::{Answer, GroupView};
use super::interfaces::InterfaceView;
use super::nacl::{NaclView, SubnetView};
use super::prefix_lists::PrefixListView;
use super::view::{Account, IpPermission, RulePeer, SgRule};
use super::xml::{STS_NS, Xml};

/// The document for `action`'s answer.
#[expect(
    clippy::too_many_lines,
    reason = "one short arm per answer: the table of EC2's documents reads best whole"
)]
pub fn xml(action: &str, answer: &Answer, acct: &Account, request_id: &str) -> String {
    if let Answer::Caller = answer {
        return caller(acct, request_id);
    }
    let mut x = Xml::ec2(action, request_id);
    match answer {
        Answer::Created { group_id, tags } => {
            x.leaf("return", true).leaf("groupId", group_id);
            tag_set(&mut x, tags);
            x.leaf("securityGroupArn", arn(acct, "security-group", group_id));
        }
        Answer::Deleted { group_id } => {
            x.leaf("return", true).leaf("groupId", group_id);
        }
        Answer::Groups { groups, next } => {
            x.list("securityGroupInfo", groups, |x, g| group(x, g, acct));
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::Authorized { rules } => {
            x.leaf("return", true);
            x.list("securityGroupRuleSet", rules, |x, r| rule(x, r, acct));
        }
        Answer::Revoked { rules } => {
            x.leaf("return", true);
            x.list("revokedSecurityGroupRuleSet", rules, revoked);
        }
        Answer::Rules { rules, next } => {
            x.list("securityGroupRuleSet", rules, |x, r| rule(x, r, acct));
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::Done => {
            x.leaf("return", true);
        }
        Answer::Tags { tags, next } => {
            x.list("tagSet", tags, |x, (id, kind, k, v)| {
                x.leaf("resourceId", id)
                    .leaf("resourceType", kind)
                    .leaf("key", k)
                    .leaf("value", v);
            });
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::Vpcs { vpcs } => {
            x.list("vpcSet", vpcs, |x, (id, default, cidr)| {
                vpc(x, id, *default, cidr.as_deref(), acct);
            });
        }
        Answer::Vpc { id, cidr } => {
            x.open("vpc");
            vpc(&mut x, id, false, Some(cidr), acct);
            x.close("vpc");
        }
        Answer::Interfaces { interfaces, next } => {
            x.list("networkInterfaceSet", interfaces, |x, i| {
                interface(x, i, acct)
            });
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::PrefixList { list, state } => {
            x.open("prefixList");
            prefix_list(&mut x, list, state, acct);
            x.close("prefixList");
        }
        Answer::PrefixLists { lists, next } => {
            x.list("prefixListSet", lists, |x, l| {
                prefix_list(x, l, "create-complete", acct);
            });
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::Entries { cidrs, next } => {
            x.list("entrySet", cidrs, |x, c| {
                x.leaf("cidr", c);
            });
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::NetworkAcl { .. }
        | Answer::NetworkAcls { .. }
        | Answer::NaclAssociation { .. }
        | Answer::Subnets { .. } => nacl_answer(&mut x, answer, acct),
        Answer::EmptySet(name) => {
            x.list(name, &[] as &[()], |_, ()| {});
        }
        Answer::Caller => unreachable!("answered above"),
    }
    x.finish(action)
}

fn arn(acct: &Account, kind: &str, id: &str) -> String {
    format!("arn:aws:ec2:{}:{}:{kind}/{id}", acct.region, acct.owner)
}

fn tag_set(x: &mut Xml, tags: &BTreeMap<String, String>) {
    let tags: Vec<(&String, &String)> = tags.iter().collect();
    x.list("tagSet", &tags, |x, (k, v)| {
        x.leaf("key", k).leaf("value", v);
    });
}

fn group(x: &mut Xml, g: &GroupView, acct: &Account) {
    x.leaf("ownerId", &acct.owner)
        .leaf("groupId", &g.id)
        .leaf("groupName", &g.name)
        .leaf("groupDescription", &g.description)
        .leaf("vpcId", &g.vpc);
    x.list("ipPermissions", &g.ingress, |x, p| permission(x, p, acct));
    x.list("ipPermissionsEgress", &g.egress, |x, p| {
        permission(x, p, acct)
    });
    tag_set(x, &g.tags);
    x.leaf("securityGroupArn", arn(acct, "security-group", &g.id));
}

fn permission(x: &mut Xml, p: &IpPermission, acct: &Account) {
    x.leaf("ipProtocol", &p.protocol);
    if let Some((from, to)) = p.ports {
        x.leaf("fromPort", from).leaf("toPort", to);
    }
    let pick = |f: fn(&RulePeer) -> Option<&String>| -> Vec<(String, Option<String>)> {
        p.peers
            .iter()
            .filter_map(|(peer, d)| f(peer).map(|v| (v.clone(), d.clone())))
            .collect()
    };
    let groups = pick(|p| match p {
        RulePeer::Group(g) => Some(g),
        _ => None,
    });
    x.list("groups", &groups, |x, (id, d)| {
        x.leaf_opt("description", d.as_ref());
        x.leaf("userId", &acct.owner).leaf("groupId", id);
    });
    let v4 = pick(|p| match p {
        RulePeer::Cidr4(c) => Some(c),
        _ => None,
    });
    x.list("ipRanges", &v4, |x, (c, d)| {
        x.leaf("cidrIp", c).leaf_opt("description", d.as_ref());
    });
    let v6 = pick(|p| match p {
        RulePeer::Cidr6(c) => Some(c),
        _ => None,
    });
    x.list("ipv6Ranges", &v6, |x, (c, d)| {
        x.leaf("cidrIpv6", c).leaf_opt("description", d.as_ref());
    });
    let pls = pick(|p| match p {
        RulePeer::PrefixList(id) => Some(id),
        _ => None,
    });
    x.list("prefixListIds", &pls, |x, (id, d)| {
        x.leaf("prefixListId", id)
            .leaf_opt("description", d.as_ref());
    });
}

fn rule(x: &mut Xml, r: &SgRule, acct: &Account) {
    x.leaf("securityGroupRuleId", &r.id)
        .leaf("groupId", &r.group_id)
        .leaf("groupOwnerId", &acct.owner)
        .leaf("isEgress", r.egress)
        .leaf("ipProtocol", &r.protocol)
        .leaf("fromPort", r.from)
        .leaf("toPort", r.to);
    match &r.peer {
        RulePeer::Cidr4(c) => {
            x.leaf("cidrIpv4", c);
        }
        RulePeer::Cidr6(c) => {
            x.leaf("cidrIpv6", c);
        }
        RulePeer::PrefixList(p) => {
            x.leaf("prefixListId", p);
        }
        RulePeer::Group(g) => {
            x.open("referencedGroupInfo")
                .leaf("groupId", g)
                .leaf("userId", &acct.owner)
                .close("referencedGroupInfo");
        }
    }
    x.leaf_opt("description", r.description.as_ref());
    tag_set(x, &r.tags);
    x.leaf(
        "securityGroupRuleArn",
        arn(acct, "security-group-rule", &r.id),
    );
}

fn vpc(x: &mut Xml, id: &str, default: bool, cidr: Option<&str>, acct: &Account) {
    x.leaf("vpcId", id)
        .leaf("ownerId", &acct.owner)
        .leaf("state", "available")
        .leaf_opt("cidrBlock", cidr)
        .leaf("isDefault", default);
}

fn prefix_list(x: &mut Xml, l: &PrefixListView, state: &str, acct: &Account) {
    x.leaf("prefixListId", &l.id)
        .leaf("addressFamily", l.family)
        .leaf("state", state)
        .leaf("prefixListArn", arn(acct, "prefix-list", &l.id))
        .leaf("prefixListName", &l.name)
        .leaf("maxEntries", l.max_entries)
        .leaf("version", l.version)
        .leaf("ownerId", &acct.owner);
    x.list("tagSet", &[] as &[()], |_, ()| {});
}

fn interface(x: &mut Xml, i: &InterfaceView, acct: &Account) {
    x.leaf("networkInterfaceId", &i.id)
        .leaf("description", &i.instance)
        .leaf("ownerId", &acct.owner)
        .leaf("vpcId", &i.vpc)
        .leaf("status", "in-use")
        .leaf("interfaceType", "interface")
        .leaf("requesterManaged", false)
        .leaf("sourceDestCheck", true)
        .leaf_opt("privateIpAddress", i.v4.first());
    x.list("groupSet", &i.groups, |x, (id, name)| {
        x.leaf("groupId", id).leaf("groupName", name);
    });
    let v4: Vec<(usize, &String)> = i.v4.iter().enumerate().collect();
    x.list("privateIpAddressesSet", &v4, |x, (n, a)| {
        x.leaf("privateIpAddress", a).leaf("primary", *n == 0);
    });
    x.list("ipv6AddressesSet", &i.v6, |x, a| {
        x.leaf("ipv6Address", a);
    });
    x.list("tagSet", &[] as &[()], |_, ()| {});
}

/// A RevokedSecurityGroupRule (its peer group is `referencedGroupId`, flat).
fn revoked(x: &mut Xml, r: &SgRule) {
    x.leaf("securityGroupRuleId", &r.id)
        .leaf("groupId", &r.group_id)
        .leaf("isEgress", r.egress)
        .leaf("ipProtocol", &r.protocol)
        .leaf("fromPort", r.from)
        .leaf("toPort", r.to);
    let (tag, v) = match &r.peer {
        RulePeer::Cidr4(c) => ("cidrIpv4", c),
        RulePeer::Cidr6(c) => ("cidrIpv6", c),
        RulePeer::PrefixList(p) => ("prefixListId", p),
        RulePeer::Group(g) => ("referencedGroupId", g),
    };
    x.leaf(tag, v)
        .leaf_opt("description", r.description.as_ref());
}

/// The answers of the network ACL actions and DescribeSubnets.
fn nacl_answer(x: &mut Xml, answer: &Answer, acct: &Account) {
    match answer {
        Answer::NetworkAcl { acl } => {
            x.open("networkAcl");
            network_acl(x, acl, acct);
            x.close("networkAcl");
        }
        Answer::NetworkAcls { acls, next } => {
            x.list("networkAclSet", acls, |x, a| network_acl(x, a, acct));
            x.leaf_opt("nextToken", next.as_ref());
        }
        Answer::NaclAssociation { id } => {
            x.leaf("newAssociationId", id);
        }
        Answer::Subnets { subnets, next } => {
            x.list("subnetSet", subnets, |x, s| subnet(x, s, acct));
            x.leaf_opt("nextToken", next.as_ref());
        }
        _ => unreachable!("nacl_answer takes the NACL answers only"),
    }
}

/// A NetworkAcl: `default` is botocore's `IsDefault`; `icmpTypeCode` and `portRange` only
/// where the protocol has them.
fn network_acl(x: &mut Xml, a: &NaclView, acct: &Account) {
    x.leaf("networkAclId", &a.id)
        .leaf("vpcId", &a.vpc)
        .leaf("default", a.default);
    x.list("entrySet", &a.entries, |x, e| {
        x.leaf("ruleNumber", e.number)
            .leaf("protocol", &e.protocol)
            .leaf("ruleAction", e.action)
            .leaf("egress", e.egress);
        let cidr_tag = if e.cidr.addr().is_ipv4() {
            "cidrBlock"
        } else {
            "ipv6CidrBlock"
        };
        x.leaf(cidr_tag, e.cidr);
        if let Some((t, c)) = e.icmp {
            x.open("icmpTypeCode")
                .leaf("code", c)
                .leaf("type", t)
                .close("icmpTypeCode");
        }
        if let Some((from, to)) = e.ports {
            x.open("portRange")
                .leaf("from", from)
                .leaf("to", to)
                .close("portRange");
        }
    });
    x.list("associationSet", &a.associations, |x, (assoc, subnet)| {
        x.leaf("networkAclAssociationId", assoc)
            .leaf("networkAclId", &a.id)
            .leaf("subnetId", subnet);
    });
    tag_set(x, &a.tags);
    x.leaf("ownerId", &acct.owner);
}

fn subnet(x: &mut Xml, s: &SubnetView, acct: &Account) {
    x.leaf("subnetId", &s.id)
        .leaf("subnetArn", arn(acct, "subnet", &s.id))
        .leaf("state", "available")
        .leaf("vpcId", &s.vpc)
        .leaf("ownerId", &acct.owner)
        .leaf_opt("cidrBlock", s.cidr.as_ref())
        .leaf("availableIpAddressCount", s.available)
        .leaf("defaultForAz", false)
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false);
    let v6: Vec<&String> = s.ipv6_cidr.iter().collect();
    x.list("ipv6CidrBlockAssociationSet", &v6, |x, c| {
        x.leaf(
            "associationId",
            format!("subnet-cidr-assoc-{}", s.id.trim_start_matches("subnet-")),
        )
        .leaf("ipv6CidrBlock", c)
        .open("ipv6CidrBlockState")
        .leaf("state", "associated")
        .close("ipv6CidrBlockState");
    });
    x.list("tagSet", &[] as &[()], |_, ()| {});
}

/// STS's GetCallerIdentity: the account's root.
fn caller(acct: &Account, request_id: &str) -> String {
    let mut x = Xml::bare();
    x.open_ns("GetCallerIdentityResponse", STS_NS)
        .open("GetCallerIdentityResult")
        .leaf("Arn", format!("arn:aws:iam::{}:root", acct.owner))
        .leaf("UserId", &acct.owner)
        .leaf("Account", &acct.owner)
        .close("GetCallerIdentityResult")
        .open("ResponseMetadata")
        .leaf("RequestId", request_id)
        .close("ResponseMetadata")
        .close("GetCallerIdentityResponse");
    x.into_string()
}
