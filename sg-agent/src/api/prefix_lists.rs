//! Managed prefix lists (R4, P9): create, modify (naming the current version, else
//! PrefixListVersionMismatch; entry changes make a new version), delete (not while a rule uses
//! it), describe and their entries. The lists are the store's `v1/prefix-lists/<id>` values,
//! validated with everything else (family, max entries, and the quotas of the rules using
//! them: a list counts as its max entries). sg keeps the current version only, and no entry
//! descriptions (the policy has none).

use serde_json::{Value, json};

use super::Account;
use super::actions::{Answer, Finish, new_id, paginate};
use super::change::Change;
use super::fault::Fault;
use super::view::{State, any_match};
use super::wire::{Filter, Listing, Request};
use crate::policy::{Family, Peer, PrefixList, PrefixListId};

/// One list as EC2 shows it.
#[derive(Clone, Debug)]
pub struct PrefixListView {
    pub id: String,
    pub name: String,
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    pub max_entries: u32,
    pub version: u64,
}

fn not_found(id: &str) -> Fault {
    Fault::client(
        "InvalidPrefixListID.NotFound",
        format!("The prefix list ID '{id}' does not exist"),
    )
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn view(pl: &PrefixList) -> PrefixListView {
    PrefixListView {
        id: pl.id.to_string(),
        name: pl.name.clone(),
        family: family_name(pl.family),
        max_entries: pl.max_entries,
        version: pl.version,
    }
}

/// A list defined here (an `external` placeholder has max entries 0 and no entries).
fn defined<'a>(s: &'a State, id: &str) -> Result<&'a PrefixList, Fault> {
    s.policy
        .prefix_lists
        .get(&PrefixListId(id.to_string()))
        .filter(|pl| pl.max_entries > 0)
        .ok_or_else(|| not_found(id))
}

fn native(id: &str, name: &str, family: &str, max: i64, version: u64, entries: &[String]) -> Value {
    json!({"id": id, "name": name, "family": family, "max_entries": max,
           "version": version, "entries": entries})
}

fn answer(state: &'static str, id: String) -> Finish {
    Box::new(move |p| {
        let pl = &p.prefix_lists[&PrefixListId(id)];
        Answer::PrefixList {
            list: view(pl),
            state,
        }
    })
}

/// The writes: Create, Modify, Delete.
pub fn plan(s: &State, req: &Request) -> Result<(Change, Finish), Fault> {
    match req {
        Request::CreatePrefixList {
            name,
            family,
            max_entries,
            entries,
        } => create(name, family, *max_entries, entries),
        Request::ModifyPrefixList { id, .. } => modify(defined(s, id)?, req),
        Request::DeletePrefixList { id } => delete(s, id),
        _ => unreachable!("prefix_lists::plan takes its writes only"),
    }
}

fn create(
    name: &str,
    family: &str,
    max_entries: Option<i64>,
    entries: &[String],
) -> Result<(Change, Finish), Fault> {
    let family = match family {
        "IPv4" => "ipv4",
        "IPv6" => "ipv6",
        f => {
            return Err(Fault::invalid(format!(
                "Invalid value '{f}' for AddressFamily: IPv4 or IPv6"
            )));
        }
    };
    let max = max_entries.ok_or_else(|| Fault::missing("MaxEntries"))?;
    let id = new_id("pl-");
    let mut change = Change::default();
    let v = native(&id, name, family, max, 1, entries);
    change.prefix_lists.insert(id.clone(), Some(v));
    Ok((change, answer("create-complete", id)))
}

fn modify(pl: &PrefixList, req: &Request) -> Result<(Change, Finish), Fault> {
    let Request::ModifyPrefixList {
        id,
        current_version,
        name,
        max_entries,
        add,
        remove,
    } = req
    else {
        unreachable!("a ModifyManagedPrefixList request")
    };
    let edits = !add.is_empty() || !remove.is_empty();
    if edits && current_version.is_none() {
        return Err(Fault::missing("CurrentVersion"));
    }
    if let Some(v) = current_version
        && u64::try_from(*v).ok() != Some(pl.version)
    {
        return Err(Fault::client(
            "PrefixListVersionMismatch",
            format!(
                "The prefix list has the incorrect version number (the current version of {id} is {}; P9)",
                pl.version
            ),
        ));
    }
    let mut entries: Vec<String> = pl.entries.iter().map(ToString::to_string).collect();
    for r in remove {
        let canonical = r.parse::<ipnet::IpNet>().map(|n| n.trunc().to_string());
        let at = entries.iter().position(|e| Ok(e) == canonical.as_ref());
        let at = at.ok_or_else(|| {
            Fault::client(
                "InvalidPrefixListModification",
                format!("The prefix list entry '{r}' does not exist in {id}"),
            )
        })?;
        entries.remove(at);
    }
    entries.extend(add.iter().cloned());
    let version = pl.version + u64::from(edits);
    let max = max_entries.unwrap_or(i64::from(pl.max_entries));
    let family = family_name(pl.family).to_ascii_lowercase();
    let name = name.as_deref().unwrap_or(&pl.name);
    let mut change = Change::default();
    let v = native(id, name, &family, max, version, &entries);
    change.prefix_lists.insert(id.clone(), Some(v));
    Ok((change, answer("modify-complete", id.clone())))
}

fn delete(s: &State, id: &str) -> Result<(Change, Finish), Fault> {
    let pl = view(defined(s, id)?);
    let used = s
        .policy
        .all_rules()
        .any(|r| r.peer == Peer::PrefixList(PrefixListId(id.to_string())));
    if used {
        return Err(Fault::client(
            "DependencyViolation",
            format!("resource {id} has a dependent object"),
        ));
    }
    let mut change = Change::default();
    change.prefix_lists.insert(id.to_string(), None);
    let finish: Finish = Box::new(move |_| Answer::PrefixList {
        list: pl,
        state: "delete-complete",
    });
    Ok((change, finish))
}

/// The reads: DescribeManagedPrefixLists, GetManagedPrefixListEntries.
pub fn read(s: &State, acct: &Account, req: &Request) -> Result<Answer, Fault> {
    match req {
        Request::DescribePrefixLists(Listing { ids, filters, page }) => {
            for id in ids {
                defined(s, id)?;
            }
            let mut out = Vec::new();
            for pl in s.policy.prefix_lists.values().filter(|p| p.max_entries > 0) {
                if !ids.is_empty() && !ids.contains(&pl.id.0) {
                    continue;
                }
                if keep(pl, filters, acct)? {
                    out.push(view(pl));
                }
            }
            let (lists, next) = paginate(out, page)?;
            Ok(Answer::PrefixLists { lists, next })
        }
        Request::GetPrefixListEntries {
            id,
            target_version,
            page,
        } => {
            let pl = defined(s, id)?;
            if let Some(v) = target_version
                && u64::try_from(*v).ok() != Some(pl.version)
            {
                return Err(Fault::invalid(format!(
                    "sg keeps the current version of {id} only ({})",
                    pl.version
                )));
            }
            let cidrs = pl.entries.iter().map(ToString::to_string).collect();
            let (cidrs, next) = paginate(cidrs, page)?;
            Ok(Answer::Entries { cidrs, next })
        }
        _ => unreachable!("prefix_lists::read takes its reads only"),
    }
}

fn keep(pl: &PrefixList, filters: &[Filter], acct: &Account) -> Result<bool, Fault> {
    let mut keep = true;
    for f in filters {
        let v = match f.name.as_str() {
            "prefix-list-id" => pl.id.to_string(),
            "prefix-list-name" => pl.name.clone(),
            "owner-id" => acct.owner.clone(),
            _ => {
                return Err(Fault::invalid(format!(
                    "The filter '{}' is invalid",
                    f.name
                )));
            }
        };
        keep &= any_match(f, &[v]);
    }
    Ok(keep)
}
