//! The actions: each typed request against the EC2 view of the store. Reads answer from one
//! snapshot; every write reads the store at a revision, changes the policy, validates it with
//! the product's validator and commits only if nothing changed since that revision (retrying
//! on a conflict), so a call is all or nothing (P4) and Describe reads the caller's writes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::backend::Backend;
use super::change::{self, Change};
use super::fault::Fault;
use super::tags::{self, tag_map};
use super::view::{Account, IpPermission, Meta, SgRule, State, any_match, group_filter_values};
use super::wire::{Call, Filter, GroupRef, Listing, Page, PeerKind, Permission, Request, Tag};
use super::{interfaces, lookups, nacl, prefix_lists, rule_edits};
use crate::config::validate::derive_rule_id;
use crate::policy::{Direction, Group, GroupId, Policy, Rule};

/// How often a write reads again after a concurrent change before giving up (503).
const ATTEMPTS: usize = 8;
/// An id no store group has: the scratch group the validator reads permissions in.
const PROBE: &str = "sg-sg-api-probe";

/// A group as DescribeSecurityGroups answers it.
#[derive(Clone, Debug)]
pub struct GroupView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc: String,
    pub ingress: Vec<IpPermission>,
    pub egress: Vec<IpPermission>,
    pub tags: BTreeMap<String, String>,
}

/// What an action answers (xml.rs-side shapes live in answer.rs).
#[derive(Clone, Debug)]
pub enum Answer {
    Created {
        group_id: String,
        tags: BTreeMap<String, String>,
    },
    Deleted {
        group_id: String,
    },
    Groups {
        groups: Vec<GroupView>,
        next: Option<String>,
    },
    Authorized {
        rules: Vec<SgRule>,
    },
    Revoked {
        rules: Vec<SgRule>,
    },
    Rules {
        rules: Vec<SgRule>,
        next: Option<String>,
    },
    /// `<return>true</return>` only.
    Done,
    Caller,
    /// (resource id, resource type, key, value) of DescribeTags.
    Tags {
        tags: Vec<(String, &'static str, String, String)>,
        next: Option<String>,
    },
    /// (VPC id, is the default, CIDR block when known).
    Vpcs {
        vpcs: Vec<(String, bool, Option<String>)>,
    },
    Vpc {
        id: String,
        cidr: String,
    },
    /// An answer whose one list is empty: the element's name.
    EmptySet(&'static str),
    Interfaces {
        interfaces: Vec<super::interfaces::InterfaceView>,
        next: Option<String>,
    },
    PrefixList {
        list: super::prefix_lists::PrefixListView,
        /// `create-complete`, `modify-complete`, `delete-complete`
        state: &'static str,
    },
    PrefixLists {
        lists: Vec<super::prefix_lists::PrefixListView>,
        next: Option<String>,
    },
    Entries {
        cidrs: Vec<String>,
        next: Option<String>,
    },
    /// CreateNetworkAcl.
    NetworkAcl {
        acl: super::nacl::NaclView,
    },
    NetworkAcls {
        acls: Vec<super::nacl::NaclView>,
        next: Option<String>,
    },
    /// ReplaceNetworkAclAssociation: the new association's id.
    NaclAssociation {
        id: String,
    },
    Subnets {
        subnets: Vec<super::nacl::SubnetView>,
        next: Option<String>,
    },
}

pub(super) type Finish = Box<dyn FnOnce(&Policy) -> Answer + Send>;

pub struct Api {
    pub backend: Backend,
    pub account: Account,
}

impl Api {
    pub async fn execute(&self, call: &Call, serial: &str) -> Result<Answer, Fault> {
        let acct = &self.account;
        match &call.request {
            Request::DescribeSecurityGroups {
                ids,
                names,
                filters,
                page,
            } => describe_groups(&self.backend.read().await?, acct, ids, names, filters, page),
            Request::DescribeSecurityGroupRules {
                rule_ids,
                filters,
                page,
            } => describe_rules(&self.backend.read().await?, rule_ids, filters, page),
            Request::GetCallerIdentity => Ok(Answer::Caller),
            Request::DescribeSecurityGroupReferences { .. }
            | Request::DescribeStaleSecurityGroups
            | Request::DescribeTags { .. }
            | Request::DescribeVpcs { .. } => {
                lookups::read(&self.backend.read().await?, acct, &call.request)
            }
            Request::DescribeNetworkInterfaces(Listing { ids, filters, page }) => {
                interfaces::describe(&self.backend.read().await?, acct, ids, filters, page)
            }
            Request::DescribePrefixLists(_) | Request::GetPrefixListEntries { .. } => {
                prefix_lists::read(&self.backend.read().await?, acct, &call.request)
            }
            Request::DescribeNetworkAcls(_) | Request::DescribeSubnets(_) => {
                nacl::read(&self.backend.read().await?, acct, &call.request)
            }
            write => {
                self.write(call.dry_run, serial, |s| plan(s, acct, write))
                    .await
            }
        }
    }

    async fn write(
        &self,
        dry_run: bool,
        serial: &str,
        plan: impl Fn(&State) -> Result<(Change, Finish), Fault>,
    ) -> Result<Answer, Fault> {
        for _ in 0..ATTEMPTS {
            let state = self.backend.read().await?;
            let (change, finish) = plan(&state)?;
            let policy = change::candidate(&state, &change)?;
            if dry_run {
                return Err(Fault::dry_run());
            }
            let (puts, deletes) = change::values(&policy, &change, serial);
            if self.backend.commit(state.revision, puts, deletes).await? {
                return Ok(finish(&policy));
            }
        }
        Err(Fault {
            status: 503,
            code: "Unavailable",
            message: format!("the store kept changing: {ATTEMPTS} attempts conflicted"),
        })
    }
}

fn plan(s: &State, acct: &Account, req: &Request) -> Result<(Change, Finish), Fault> {
    match req {
        Request::CreateSecurityGroup {
            name,
            description,
            vpc_id,
            tags,
        } => create(s, acct, name, description, vpc_id.as_deref(), tags),
        Request::DeleteSecurityGroup { group } => delete(s, acct, group),
        Request::Authorize {
            direction,
            group,
            permissions,
            tags,
        } => authorize(s, acct, *direction, group, permissions, tags),
        Request::Revoke {
            direction,
            group,
            permissions,
            rule_ids,
        } => revoke(s, acct, *direction, group, permissions, rule_ids),
        Request::CreateTags { resources, tags } => {
            let tags: Vec<(String, Option<String>)> = tags
                .iter()
                .map(|t| (t.key.clone(), Some(t.value.clone())))
                .collect();
            tags::retag(s, resources, &tags, true)
        }
        Request::DeleteTags { resources, tags } => tags::retag(s, resources, tags, false),
        Request::UpdateDescriptions {
            direction,
            group,
            permissions,
            by_id,
        } => rule_edits::describe(s, acct, *direction, group, permissions, by_id),
        Request::ModifySecurityGroupRules { group, rules } => {
            rule_edits::modify(s, acct, group, rules)
        }
        Request::ModifyNetworkInterfaceAttribute { id, groups } => {
            interfaces::modify(s, id, groups)
        }
        Request::CreateVpc { cidr } => create_vpc(cidr),
        Request::CreatePrefixList { .. }
        | Request::ModifyPrefixList { .. }
        | Request::DeletePrefixList { .. } => prefix_lists::plan(s, req),
        Request::CreateNetworkAcl { .. }
        | Request::PutNetworkAclEntry { .. }
        | Request::DeleteNetworkAclEntry { .. }
        | Request::DeleteNetworkAcl { .. }
        | Request::ReplaceNetworkAclAssociation { .. } => nacl::plan(s, acct, req),
        Request::DescribeSecurityGroups { .. }
        | Request::DescribeSecurityGroupRules { .. }
        | Request::DescribeSecurityGroupReferences { .. }
        | Request::DescribeStaleSecurityGroups
        | Request::DescribeTags { .. }
        | Request::DescribeVpcs { .. }
        | Request::DescribeNetworkInterfaces(_)
        | Request::DescribePrefixLists(_)
        | Request::GetPrefixListEntries { .. }
        | Request::DescribeNetworkAcls(_)
        | Request::DescribeSubnets(_)
        | Request::GetCallerIdentity => Err(Fault::internal(
            "sg-agent api: a read was planned as a write (a bug: please report it)",
        )),
    }
}

fn create(
    s: &State,
    acct: &Account,
    name: &str,
    description: &str,
    vpc_id: Option<&str>,
    tags: &[Tag],
) -> Result<(Change, Finish), Fault> {
    if name == "default" {
        return Err(Fault::client(
            "InvalidGroup.Reserved",
            "The security group name 'default' is reserved (P8)",
        ));
    }
    if name.starts_with("sg-") {
        return Err(Fault::invalid(format!(
            "Invalid value '{name}' for groupName. Group names may not be in the format sg-*."
        )));
    }
    let vpc = vpc_id.unwrap_or(&acct.vpc);
    let known = vpc == acct.vpc || s.meta.values().any(|m| m.vpc_id.as_deref() == Some(vpc));
    if !known {
        return Err(Fault::client(
            "InvalidVpcID.NotFound",
            format!("The vpc ID '{vpc}' does not exist"),
        ));
    }
    if s.policy
        .groups
        .values()
        .any(|g| g.name == name && s.vpc_of(&g.id, acct) == vpc)
    {
        return Err(Fault::client(
            "InvalidGroup.Duplicate",
            format!("The security group '{name}' already exists for VPC '{vpc}'"),
        ));
    }
    let id = new_id("sg-");
    let tags = tag_map(tags)?;
    let meta = Meta {
        vpc_id: (vpc != acct.vpc).then(|| vpc.to_string()),
        tags: tags.clone(),
        ..Meta::default()
    };
    let mut change = Change::default();
    // Egress left out: the validator gives the new group D2's default egress.
    change.put(
        &id,
        json!({"id": id, "name": name, "description": description}),
        meta,
    );
    let finish: Finish = Box::new(move |_| Answer::Created { group_id: id, tags });
    Ok((change, finish))
}

/// A VPC is its default group (D3: `default: true`, all from itself, all out), which names
/// the VPC in its metadata and cannot be deleted.
fn create_vpc(cidr: &str) -> Result<(Change, Finish), Fault> {
    let net: ipnet::Ipv4Net = cidr.parse().map_err(|_| {
        Fault::invalid(format!(
            "Value ({cidr}) for parameter cidrBlock is invalid."
        ))
    })?;
    if !(16..=28).contains(&net.prefix_len()) {
        return Err(Fault::client(
            "InvalidVpc.Range",
            format!("The CIDR '{cidr}' is invalid (a VPC is a /16 to a /28)."),
        ));
    }
    let (vpc, gid) = (new_id("vpc-"), new_id("sg-"));
    let meta = Meta {
        vpc_id: Some(vpc.clone()),
        vpc_cidr: Some(net.trunc().to_string()),
        ..Meta::default()
    };
    let mut change = Change::default();
    change.put(
        &gid,
        json!({"id": gid, "default": true, "description": "default VPC security group"}),
        meta,
    );
    let cidr = net.trunc().to_string();
    Ok((change, Box::new(move |_| Answer::Vpc { id: vpc, cidr })))
}

fn delete(s: &State, acct: &Account, group: &GroupRef) -> Result<(Change, Finish), Fault> {
    let g = s.group(group, acct)?;
    if g.name == "default" {
        return Err(Fault::client(
            "CannotDelete",
            format!(
                "the specified group: \"{}\" name: \"default\" cannot be deleted by a user",
                g.id
            ),
        ));
    }
    let on_interface = s.policy.interfaces.iter().any(|i| i.groups.contains(&g.id));
    let referenced = s
        .policy
        .all_rules()
        .any(|r| r.group != g.id && r.peer == crate::policy::Peer::Group(g.id.clone()));
    if on_interface || referenced {
        return Err(Fault::client(
            "DependencyViolation",
            format!("resource {} has a dependent object", g.id),
        ));
    }
    let mut change = Change::default();
    change.delete(g.id.as_str());
    let group_id = g.id.to_string();
    Ok((change, Box::new(move |_| Answer::Deleted { group_id })))
}

/// One native rule per peer of each permission (P3), for the validator to read.
pub(super) fn native_rules(
    s: &State,
    acct: &Account,
    dir: Direction,
    perms: &[Permission],
) -> Result<Vec<Value>, Fault> {
    let peer_key = match dir {
        Direction::Ingress => "source",
        Direction::Egress => "destination",
    };
    let mut out = Vec::new();
    for p in perms {
        let proto = p.protocol.trim().to_ascii_lowercase();
        let mut base = serde_json::Map::new();
        match proto.parse::<i64>() {
            Ok(n) => base.insert("protocol".into(), n.into()),
            Err(_) => base.insert("protocol".into(), proto.clone().into()),
        };
        match proto.as_str() {
            "tcp" | "udp" | "6" | "17" => {
                let (Some(from), Some(to)) = (p.from, p.to) else {
                    return Err(Fault::invalid(
                        "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange",
                    ));
                };
                base.insert("ports".into(), format!("{from}-{to}").into());
            }
            "icmp" | "1" | "icmpv6" | "58" => {
                if let Some(t) = p.from {
                    base.insert("type".into(), t.into());
                    base.insert("code".into(), p.to.unwrap_or(-1).into());
                }
            }
            _ => {}
        }
        if p.peers.is_empty() {
            return Err(Fault::missing(
                "IpPermissions.N.IpRanges, Ipv6Ranges, PrefixListIds or Groups",
            ));
        }
        for peer in &p.peers {
            let mut r = base.clone();
            let v = match &peer.peer {
                PeerKind::Cidr(c) => c.clone(),
                PeerKind::PrefixList(id) => id.clone(),
                PeerKind::Group(g) => s.group(g, acct)?.id.to_string(),
            };
            r.insert(peer_key.into(), v.into());
            if let Some(d) = &peer.description {
                r.insert("description".into(), d.as_str().into());
            }
            out.push(Value::Object(r));
        }
    }
    Ok(out)
}

/// The permissions as the validator understands them: read in a scratch group beside the
/// store's policy (canonical CIDRs, protocol numbers, ports). A duplicate among them is
/// InvalidPermission.Duplicate (P4).
pub(super) fn typed_rules(s: &State, dir: Direction, rules: &[Value]) -> Result<Vec<Rule>, Fault> {
    let mut doc = s.doc.clone();
    let (this, other) = (dir.name(), dir.opposite().name());
    doc["security_groups"]
        .as_array_mut()
        .expect("a rendered document has security_groups")
        .push(json!({"id": PROBE, this: rules, other: []}));
    let policy = change::validate(&doc)?;
    Ok(policy.groups[&GroupId(PROBE.into())].rules(dir).to_vec())
}

/// The rule of `g` (direction `dir`) that allows what `r` allows, if any (the description
/// does not count, P4).
pub(super) fn same_rule<'a>(g: &'a Group, dir: Direction, r: &Rule) -> Option<&'a Rule> {
    g.rules(dir)
        .iter()
        .find(|e| e.protocol == r.protocol && e.peer == r.peer)
}

fn authorize(
    s: &State,
    acct: &Account,
    dir: Direction,
    group: &GroupRef,
    perms: &[Permission],
    rule_tags: &[Tag],
) -> Result<(Change, Finish), Fault> {
    let g = s.group(group, acct)?;
    if perms.is_empty() {
        return Err(Fault::missing("IpPermissions"));
    }
    let rules = native_rules(s, acct, dir, perms)?;
    let typed = typed_rules(s, dir, &rules)?;
    if let Some(dup) = typed.iter().find_map(|r| same_rule(g, dir, r)) {
        return Err(Fault::client(
            "InvalidPermission.Duplicate",
            format!(
                "the specified rule \"{}\" already exists",
                SgRule::of(dup).words()
            ),
        ));
    }
    let mut value = change::group_value(s, &g.id)?;
    let list = value[dir.name()].as_array_mut();
    match list {
        Some(l) => l.extend(rules),
        None => value[dir.name()] = Value::Array(rules),
    }
    let mut meta = s.meta(&g.id);
    let tags = tag_map(rule_tags)?;
    if !tags.is_empty() {
        for r in &typed {
            // The id the validator will give the new rule (docs/policy-format.md).
            let id = derive_rule_id(&g.id, dir, &r.protocol, &r.peer);
            meta.rule_tags.insert(id.to_string(), tags.clone());
        }
    }
    let mut change = Change::default();
    change.put(g.id.as_str(), value, meta);
    let id = g.id.clone();
    let finish: Finish = Box::new(move |p: &Policy| {
        let g = &p.groups[&id];
        let rules = typed
            .iter()
            .filter_map(|r| same_rule(g, dir, r))
            .map(|r| SgRule {
                tags: tags.clone(),
                ..SgRule::of(r)
            })
            .collect();
        Answer::Authorized { rules }
    });
    Ok((change, finish))
}

fn revoke(
    s: &State,
    acct: &Account,
    dir: Direction,
    group: &GroupRef,
    perms: &[Permission],
    rule_ids: &[String],
) -> Result<(Change, Finish), Fault> {
    let g = s.group(group, acct)?;
    if perms.is_empty() && rule_ids.is_empty() {
        return Err(Fault::missing("IpPermissions or SecurityGroupRuleId"));
    }
    let mut gone: Vec<&Rule> = Vec::new();
    for id in rule_ids {
        let r = g
            .rules(dir)
            .iter()
            .find(|r| r.id.as_str() == id)
            .ok_or_else(|| {
                Fault::client(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{id}' does not exist"),
                )
            })?;
        gone.push(r);
    }
    if !perms.is_empty() {
        let typed = typed_rules(s, dir, &native_rules(s, acct, dir, perms)?)?;
        for r in &typed {
            // P5: one missing rule and nothing is revoked.
            let found = same_rule(g, dir, r).ok_or_else(|| {
                Fault::client(
                    "InvalidPermission.NotFound",
                    "The specified rule does not exist in this security group.",
                )
            })?;
            gone.push(found);
        }
    }
    let ids: Vec<&str> = gone.iter().map(|r| r.id.as_str()).collect();
    let mut value = change::group_value(s, &g.id)?;
    if let Some(list) = value.get_mut(dir.name()).and_then(Value::as_array_mut) {
        list.retain(|r| !r["id"].as_str().is_some_and(|id| ids.contains(&id)));
    }
    let mut meta = s.meta(&g.id);
    meta.rule_tags.retain(|id, _| !ids.contains(&id.as_str()));
    let mut change = Change::default();
    change.put(g.id.as_str(), value, meta);
    let mut rules: Vec<SgRule> = gone.iter().map(|r| SgRule::of(r)).collect();
    rules.dedup_by(|a, b| a.id == b.id);
    Ok((change, Box::new(move |_| Answer::Revoked { rules })))
}

/// `prefix` + 17 lowercase hex digits, as EC2's ids are.
pub(super) fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 9];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        // Unique enough without a random device: the clock's nanoseconds.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..8].copy_from_slice(&(t as u64).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..17])
}

/// A page of `items`: MaxResults (5-1000) and an offset token.
pub(super) fn paginate<T>(items: Vec<T>, page: &Page) -> Result<(Vec<T>, Option<String>), Fault> {
    let start = match &page.next_token {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| Fault::invalid(format!("Invalid value '{t}' for NextToken")))?,
        None => 0,
    };
    let max = match page.max_results {
        None => usize::MAX,
        Some(n @ 5..=1000) => usize::try_from(n).expect("in range"),
        Some(n) => {
            return Err(Fault::invalid(format!(
                "Value ( {n} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000."
            )));
        }
    };
    let total = items.len();
    let out: Vec<T> = items.into_iter().skip(start).take(max).collect();
    let end = start.saturating_add(out.len());
    Ok((out, (end < total).then(|| end.to_string())))
}

fn describe_groups(
    s: &State,
    acct: &Account,
    ids: &[String],
    names: &[String],
    filters: &[Filter],
    page: &Page,
) -> Result<Answer, Fault> {
    let mut picked: Vec<&Group> = Vec::new();
    for id in ids {
        picked.push(s.group(&GroupRef::Id(id.clone()), acct)?);
    }
    for name in names {
        picked.push(s.group(&GroupRef::Name(name.clone()), acct)?);
    }
    if ids.is_empty() && names.is_empty() {
        picked = s.policy.groups.values().collect();
    }
    picked.sort_by(|a, b| a.id.cmp(&b.id));
    picked.dedup_by(|a, b| a.id == b.id);
    let mut kept = Vec::new();
    for g in picked {
        let mut keep = true;
        for f in filters {
            let values = group_filter_values(&f.name, g, s, acct)
                .ok_or_else(|| Fault::invalid(format!("The filter '{}' is invalid", f.name)))?;
            keep &= any_match(f, &values);
        }
        if keep {
            kept.push(g);
        }
    }
    let (groups, next) = paginate(kept, page)?;
    let groups = groups
        .into_iter()
        .map(|g| GroupView {
            id: g.id.to_string(),
            name: g.name.clone(),
            description: g.description.clone(),
            vpc: s.vpc_of(&g.id, acct).to_string(),
            ingress: super::view::permissions(&g.ingress),
            egress: super::view::permissions(&g.egress),
            tags: s.meta(&g.id).tags,
        })
        .collect();
    Ok(Answer::Groups { groups, next })
}

fn describe_rules(
    s: &State,
    rule_ids: &[String],
    filters: &[Filter],
    page: &Page,
) -> Result<Answer, Fault> {
    for id in rule_ids {
        if !s.policy.all_rules().any(|r| r.id.as_str() == id) {
            return Err(Fault::client(
                "InvalidSecurityGroupRuleId.NotFound",
                format!("The security group rule ID '{id}' does not exist"),
            ));
        }
    }
    let mut rules = Vec::new();
    for mut r in s.policy.all_rules().map(SgRule::of) {
        r.tags = s
            .meta(&GroupId(r.group_id.clone()))
            .rule_tags
            .remove(&r.id)
            .unwrap_or_default();
        if !rule_ids.is_empty() && !rule_ids.contains(&r.id) {
            continue;
        }
        let mut keep = true;
        for f in filters {
            let values = match f.name.as_str() {
                "group-id" => vec![r.group_id.clone()],
                "security-group-rule-id" => vec![r.id.clone()],
                "tag-key" => r.tags.keys().cloned().collect(),
                n if n.starts_with("tag:") => r.tags.get(&n[4..]).cloned().into_iter().collect(),
                _ => {
                    return Err(Fault::invalid(format!(
                        "The filter '{}' is invalid",
                        f.name
                    )));
                }
            };
            keep &= any_match(f, &values);
        }
        if keep {
            rules.push(r);
        }
    }
    let (rules, next) = paginate(rules, page)?;
    Ok(Answer::Rules { rules, next })
}

/// What the API's unit tests share: the test account, a store holding a policy, and the store
/// after a write (what the next call and every agent read).
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use super::{Answer, Fault, Request, State, change, plan};
    use crate::api::Account;
    use crate::policy::Policy;
    use crate::store::layout::{self, Snapshot};

    pub fn acct() -> Account {
        Account {
            owner: "123456789012".into(),
            vpc: "vpc-0a1b2c3d".into(),
            region: "us-east-1".into(),
        }
    }

    pub fn snapshot(values: Vec<(String, Vec<u8>)>) -> State {
        State::new(Snapshot::new(3, values)).unwrap()
    }

    /// The store holding `p`, as `store import` writes it.
    pub fn holding(p: &Policy) -> State {
        snapshot(
            layout::policy_values(p)
                .into_iter()
                .map(|(k, v)| (k.path(), v))
                .collect(),
        )
    }

    /// The store after a request: what an agent (and the next call) would read.
    pub fn after(s: &State, req: &Request) -> Result<(State, Answer), Fault> {
        let (change, finish) = plan(s, &acct(), req)?;
        let policy = change::candidate(s, &change)?;
        let (puts, deletes) = change::values(&policy, &change, "t");
        let mut values: BTreeMap<String, Vec<u8>> = s
            .snapshot
            .values
            .iter()
            .map(|(k, v)| (k.path(), v.clone()))
            .collect();
        for d in deletes {
            values.remove(&d);
        }
        values.extend(puts);
        Ok((snapshot(values.into_iter().collect()), finish(&policy)))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{after, holding};
    use super::*;
    use crate::api::wire::PeerSpec;
    use crate::config;
    use crate::store::layout::{self, Key};

    const GROUPS: &str = "
security_groups:
  - {id: sg-web, name: web, description: Web tier}
  - id: sg-db
    name: db
    ingress: [{protocol: tcp, ports: 3306, source: sg-web, description: mysql}]
";

    fn state() -> State {
        holding(&config::load_str(GROUPS, "t").unwrap().policy)
    }

    fn https(cidrs: &[&str], desc: Option<&str>) -> Request {
        Request::Authorize {
            direction: Direction::Ingress,
            group: GroupRef::Id("sg-web".into()),
            permissions: vec![Permission {
                protocol: "tcp".into(),
                from: Some(443),
                to: Some(443),
                peers: cidrs
                    .iter()
                    .map(|c| PeerSpec {
                        peer: PeerKind::Cidr((*c).into()),
                        description: desc.map(str::to_string),
                    })
                    .collect(),
            }],
            tags: vec![],
        }
    }

    /// P3, F6: one permission, two peers, two rules with EC2-shaped ids, in the store value
    /// that agents read (layout::decode) and the next call sees.
    #[test]
    fn p3_one_rule_per_peer_is_written_where_agents_read_it() {
        let (s, answer) = after(
            &state(),
            &https(&["198.51.100.0/24", "203.0.113.0/24"], Some("x")),
        )
        .unwrap();
        let Answer::Authorized { rules } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(rules.len(), 2);
        assert!(
            rules
                .iter()
                .all(|r| r.id.len() == 21 && r.id.starts_with("sgr-"))
        );
        let web = &s.policy.groups[&GroupId("sg-web".into())];
        assert_eq!(web.ingress.len(), 2);
        assert_eq!(web.ingress[0].description.as_deref(), Some("x"));
        let key = Key::Group("sg-web".into());
        let payload = layout::decode(&key, &s.snapshot.values[&key]).unwrap();
        assert_eq!(payload["ingress"].as_array().unwrap().len(), 2);
    }

    /// P4: a duplicate of an existing rule (whatever its description or host bits) or within
    /// the call rejects the whole call.
    #[test]
    fn p4_duplicates_reject_the_call() {
        let (s, _) = after(&state(), &https(&["198.51.100.0/24"], None)).unwrap();
        for req in [
            https(&["192.0.2.0/24", "198.51.100.0/24"], None),
            https(&["198.51.100.9/24"], Some("other")),
            https(&["192.0.2.0/24", "192.0.2.0/24"], None),
        ] {
            let e = after(&s, &req).err().unwrap();
            assert_eq!(e.code, "InvalidPermission.Duplicate", "{req:?}: {e}");
        }
    }

    /// P5: revoking a missing rule changes nothing; P6: a referenced group stays.
    #[test]
    fn p5_p6_missing_rules_and_groups_in_use() {
        let Request::Authorize { permissions, .. } = https(&["192.0.2.0/24"], None) else {
            unreachable!()
        };
        let revoke = Request::Revoke {
            direction: Direction::Ingress,
            group: GroupRef::Id("sg-web".into()),
            permissions,
            rule_ids: vec![],
        };
        let e = after(&state(), &revoke).err().unwrap();
        assert_eq!(e.code, "InvalidPermission.NotFound");
        let delete = Request::DeleteSecurityGroup {
            group: GroupRef::Name("web".into()),
        };
        assert_eq!(
            after(&state(), &delete).err().unwrap().code,
            "DependencyViolation"
        );
    }

    /// P8 and the metadata: a created group keeps its tags beside the payload; `default` is
    /// reserved and names are unique in the VPC.
    #[test]
    fn p8_created_groups_keep_their_tags_and_names_are_unique() {
        let create = |name: &str| Request::CreateSecurityGroup {
            name: name.into(),
            description: "App tier".into(),
            vpc_id: None,
            tags: vec![Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        };
        let (s, answer) = after(&state(), &create("app")).unwrap();
        let Answer::Created { group_id, .. } = answer else {
            panic!()
        };
        let id = GroupId(group_id);
        assert_eq!(s.meta(&id).tags["env"], "prod");
        assert_eq!(s.policy.groups[&id].egress.len(), 2, "D2");
        let code = |n: &str| after(&s, &create(n)).err().unwrap().code;
        assert_eq!(code("app"), "InvalidGroup.Duplicate");
        assert_eq!(code("web"), "InvalidGroup.Duplicate");
        assert_eq!(code("default"), "InvalidGroup.Reserved");
    }
}
