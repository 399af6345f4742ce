//! The smaller reads: DescribeTags (the groups' tags), DescribeVpcs (the VPCs groups live in:
//! the default one and any a group names), and the answers sg gives as empty sets because it
//! has no VPC peering: DescribeSecurityGroupReferences and DescribeStaleSecurityGroups.

use std::collections::BTreeMap;

use super::Account;
use super::actions::{Answer, paginate};
use super::fault::Fault;
use super::view::{State, any_match};
use super::wire::{GroupRef, Request};

pub fn read(s: &State, acct: &Account, req: &Request) -> Result<Answer, Fault> {
    match req {
        Request::DescribeSecurityGroupReferences { ids } => {
            if ids.is_empty() {
                return Err(Fault::missing("GroupId"));
            }
            for id in ids {
                s.group(&GroupRef::Id(id.clone()), acct)?;
            }
            Ok(Answer::EmptySet("securityGroupReferenceSet"))
        }
        Request::DescribeStaleSecurityGroups => Ok(Answer::EmptySet("staleSecurityGroupSet")),
        Request::DescribeTags { filters, page } => {
            let mut tags = Vec::new();
            for g in s.policy.groups.values() {
                let meta = s.meta(&g.id);
                let mut all: Vec<(String, &str, String, String)> = Vec::new();
                for (k, v) in &meta.tags {
                    all.push((g.id.to_string(), "security-group", k.clone(), v.clone()));
                }
                for (rule, t) in &meta.rule_tags {
                    for (k, v) in t {
                        all.push((rule.clone(), "security-group-rule", k.clone(), v.clone()));
                    }
                }
                for (id, kind, k, v) in all {
                    let fields = [
                        ("resource-id", id.clone()),
                        ("resource-type", kind.to_string()),
                        ("key", k.clone()),
                        ("value", v.clone()),
                    ];
                    let mut keep = true;
                    for f in filters {
                        let (_, value) =
                            fields.iter().find(|(n, _)| *n == f.name).ok_or_else(|| {
                                Fault::invalid(format!("The filter '{}' is invalid", f.name))
                            })?;
                        keep &= any_match(f, std::slice::from_ref(value));
                    }
                    if keep {
                        tags.push((id, kind, k, v));
                    }
                }
            }
            let (tags, next) = paginate(tags, page)?;
            Ok(Answer::Tags { tags, next })
        }
        Request::DescribeVpcs { ids } => {
            let mut all: BTreeMap<String, Option<String>> = BTreeMap::new();
            all.insert(acct.vpc.clone(), None);
            for m in s.meta.values() {
                if let Some(v) = &m.vpc_id {
                    let cidr = all.entry(v.clone()).or_default();
                    if m.vpc_cidr.is_some() {
                        cidr.clone_from(&m.vpc_cidr);
                    }
                }
            }
            for id in ids {
                if !all.contains_key(id) {
                    return Err(Fault::client(
                        "InvalidVpcID.NotFound",
                        format!("The vpc ID '{id}' does not exist"),
                    ));
                }
            }
            let vpcs = all
                .into_iter()
                .filter(|(v, _)| ids.is_empty() || ids.contains(v))
                .map(|(v, cidr)| {
                    let default = v == acct.vpc;
                    (v, default, cidr)
                })
                .collect();
            Ok(Answer::Vpcs { vpcs })
        }
        _ => unreachable!("lookups::read takes the lookups only"),
    }
}
