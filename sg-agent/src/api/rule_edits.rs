//! Edits of existing rules that keep their ids: ModifySecurityGroupRules (a rule becomes
//! another, same id) and UpdateSecurityGroupRuleDescriptionsIngress/Egress (by rule id, or by
//! permission: the rule that allows what a permission's peer allows gets that peer's
//! description, none removing it). Plans for [`super::actions`]' write loop.

use serde_json::Value;

use super::Account;
use super::actions::{Answer, Finish, native_rules, same_rule, typed_rules};
use super::change::{self, Change};
use super::fault::Fault;
use super::view::State;
use super::wire::{GroupRef, Permission, RuleUpdate};
use crate::policy::Direction;

fn rule_not_found(id: &str) -> Fault {
    Fault::client(
        "InvalidSecurityGroupRuleId.NotFound",
        format!("The security group rule ID '{id}' does not exist"),
    )
}

/// The rule entry of `id` in a group's native value (either direction).
fn entry<'a>(value: &'a mut Value, dir: Direction, id: &str) -> Option<&'a mut Value> {
    value
        .get_mut(dir.name())?
        .as_array_mut()?
        .iter_mut()
        .find(|r| r["id"] == id)
}

fn set_description(rule: &mut Value, d: Option<&str>) {
    if let Some(m) = rule.as_object_mut() {
        match d {
            Some(d) => m.insert("description".into(), d.into()),
            None => m.remove("description"),
        };
    }
}

pub fn describe(
    s: &State,
    acct: &Account,
    dir: Direction,
    group: &GroupRef,
    perms: &[Permission],
    by_id: &[(String, Option<String>)],
) -> Result<(Change, Finish), Fault> {
    let g = s.group(group, acct)?;
    if perms.is_empty() && by_id.is_empty() {
        return Err(Fault::missing(
            "IpPermissions or SecurityGroupRuleDescription",
        ));
    }
    let mut value = change::group_value(s, &g.id)?;
    for (id, d) in by_id {
        let rule = entry(&mut value, dir, id).ok_or_else(|| rule_not_found(id))?;
        set_description(rule, d.as_deref());
    }
    if !perms.is_empty() {
        let wanted = native_rules(s, acct, dir, perms)?;
        let typed = typed_rules(s, dir, &wanted)?;
        for (r, w) in typed.iter().zip(&wanted) {
            let existing = same_rule(g, dir, r).ok_or_else(|| {
                Fault::client(
                    "InvalidPermission.NotFound",
                    "The specified rule does not exist in this security group.",
                )
            })?;
            let rule = entry(&mut value, dir, existing.id.as_str())
                .ok_or_else(|| rule_not_found(existing.id.as_str()))?;
            set_description(rule, w["description"].as_str());
        }
    }
    let mut change = Change::default();
    change.put(g.id.as_str(), value, s.meta(&g.id));
    Ok((change, Box::new(|_| Answer::Done)))
}

pub fn modify(
    s: &State,
    acct: &Account,
    group: &GroupRef,
    rules: &[RuleUpdate],
) -> Result<(Change, Finish), Fault> {
    let g = s.group(group, acct)?;
    if rules.is_empty() {
        return Err(Fault::missing("SecurityGroupRule"));
    }
    let mut value = change::group_value(s, &g.id)?;
    for u in rules {
        let dir = Direction::BOTH
            .into_iter()
            .find(|d| g.rules(*d).iter().any(|r| r.id.as_str() == u.id))
            .ok_or_else(|| rule_not_found(&u.id))?;
        let mut new = native_rules(s, acct, dir, std::slice::from_ref(&u.permission))?
            .pop()
            .expect("one peer, one rule");
        // The id stays: the validator keeps a given id.
        new["id"] = u.id.clone().into();
        let rule = entry(&mut value, dir, &u.id).ok_or_else(|| rule_not_found(&u.id))?;
        *rule = new;
    }
    let mut change = Change::default();
    change.put(g.id.as_str(), value, s.meta(&g.id));
    Ok((change, Box::new(|_| Answer::Done)))
}
