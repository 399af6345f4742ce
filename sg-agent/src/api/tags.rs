//! CreateTags and DeleteTags on groups (`sg-...`) and on rules (`sgr-...`): the tags live in
//! the owning group's metadata beside its policy payload (view::Meta), never in the policy.

use std::collections::BTreeMap;

use super::actions::{Answer, Finish};
use super::change::{self, Change};
use super::fault::Fault;
use super::view::{Meta, State};
use super::wire::Tag;
use crate::policy::GroupId;

/// EC2's bound of tags per resource.
const MAX_TAGS: usize = 50;

/// CreateTags (`add`) and DeleteTags (a key alone deletes whatever the value).
pub fn retag(
    s: &State,
    resources: &[String],
    tags: &[(String, Option<String>)],
    add: bool,
) -> Result<(Change, Finish), Fault> {
    if resources.is_empty() {
        return Err(Fault::missing("ResourceId"));
    }
    // Several resources of one group edit one metadata value.
    let mut metas: BTreeMap<GroupId, Meta> = BTreeMap::new();
    for r in resources {
        let (group, rule) = owner(s, r)?;
        let meta = metas.entry(group.clone()).or_insert_with(|| s.meta(&group));
        let set = match &rule {
            None => &mut meta.tags,
            Some(id) => meta.rule_tags.entry(id.clone()).or_default(),
        };
        for (k, v) in tags {
            if add {
                check_tag(k, v.as_deref().unwrap_or_default())?;
                set.insert(k.clone(), v.clone().unwrap_or_default());
            } else if v.as_ref().is_none_or(|v| set.get(k) == Some(v)) {
                set.remove(k);
            }
        }
        if set.len() > MAX_TAGS {
            return Err(Fault::client(
                "TagLimitExceeded",
                format!(
                    "The maximum number of tags ({MAX_TAGS}) for resource {r} has been reached"
                ),
            ));
        }
        meta.rule_tags.retain(|_, t| !t.is_empty());
    }
    let mut change = Change::default();
    for (id, meta) in metas {
        change.put(id.as_str(), change::group_value(s, &id)?, meta);
    }
    Ok((change, Box::new(|_| Answer::Done)))
}

/// The group a resource id belongs to, and the rule id when it is a rule.
fn owner(s: &State, r: &str) -> Result<(GroupId, Option<String>), Fault> {
    if r.starts_with("sgr-") {
        let rule = s
            .policy
            .all_rules()
            .find(|x| x.id.as_str() == r)
            .ok_or_else(|| {
                Fault::client(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{r}' does not exist"),
                )
            })?;
        return Ok((rule.group.clone(), Some(r.to_string())));
    }
    if !r.starts_with("sg-") {
        return Err(Fault::client(
            "InvalidID",
            format!("The ID '{r}' is not valid (sg tags security groups and their rules)"),
        ));
    }
    let id = GroupId(r.to_string());
    if !s.policy.groups.contains_key(&id) {
        return Err(Fault::group_not_found(r));
    }
    Ok((id, None))
}

fn check_tag(key: &str, value: &str) -> Result<(), Fault> {
    if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
        return Err(Fault::invalid(format!(
            "Invalid tag '{key}': keys have 1 to 128 characters, values at most 256"
        )));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(Fault::invalid(
            "Tag keys starting with 'aws:' are reserved for internal use",
        ));
    }
    Ok(())
}

/// TagSpecification tags, checked.
pub fn tag_map(tags: &[Tag]) -> Result<BTreeMap<String, String>, Fault> {
    let mut m = BTreeMap::new();
    for t in tags {
        check_tag(&t.key, &t.value)?;
        m.insert(t.key.clone(), t.value.clone());
    }
    if m.len() > MAX_TAGS {
        return Err(Fault::client(
            "TagLimitExceeded",
            format!("at most {MAX_TAGS} tags per resource"),
        ));
    }
    Ok(m)
}
