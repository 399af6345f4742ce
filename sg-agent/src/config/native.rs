//! The native format (docs/policy-format.md): `security_groups`, `prefix_lists`, `instances`,
//! `quotas`, `timeouts`. Reads the YAML tree into a [`Draft`], reporting unknown or misplaced
//! fields and wrong shapes.
//!
//! Owns the native field names and shorthands (`ports: 443`, `ports: 1024-65535`, a rule with
//! several peers, `self`, the single-interface instance). It must not judge values (ranges,
//! families, references): `validate` does, for every format alike.

use super::diag::Sink;
use super::draft::{
    DEntry, DGroup, DInterface, DNacl, DNaclEntry, DPeer, DPrefixList, DQuotas, DRule, DSubnet,
    DTimeouts, Draft, L, TimeoutField,
};
use super::read::{At, Fields, boolean, fields, int, list, one_or_list, string};
use super::values::{self, ProtoName};
use crate::policy::{Direction, Origin};

/// Top-level keys of a native file (also used to recognise the format).
pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "quotas",
    "timeouts",
    "prefix_lists",
    "security_groups",
    "instances",
    "network_acls",
    "subnets",
];

pub(crate) fn read(sink: &mut Sink, root: &At) -> Draft {
    let mut d = Draft::default();
    let Some(top) = fields(sink, root, "the policy") else {
        return d;
    };
    // `x-...` keys are free for the user (e.g. to hold YAML anchors), as in docker-compose.
    let extensions: Vec<String> = top
        .entries()
        .into_iter()
        .map(|(k, ..)| k)
        .filter(|k| k.starts_with("x-"))
        .collect();
    let mut known: Vec<&str> = TOP_KEYS.to_vec();
    known.extend(extensions.iter().map(String::as_str));
    top.check_keys(sink, "the policy", &known);
    if let Some(v) = top.get("version")
        && let Some(n) = int(sink, &v, "version")
        && n.v != 1
    {
        sink.error_hint(
            &n.at,
            format!("unknown format version {}", n.v),
            "this sg reads version 1",
        );
    }
    if let Some(q) = top.get("quotas") {
        d.quotas = quotas(sink, &q);
    }
    if let Some(t) = top.get("timeouts") {
        d.timeouts = timeouts(sink, &t);
    }
    if let Some(pls) = top.get("prefix_lists")
        && let Some(items) = list(sink, &pls, "prefix_lists")
    {
        d.prefix_lists = items.iter().filter_map(|i| prefix_list(sink, i)).collect();
    }
    if let Some(gs) = top.get("security_groups")
        && let Some(items) = list(sink, &gs, "security_groups")
    {
        d.groups = items.iter().filter_map(|i| group(sink, i)).collect();
    }
    if let Some(is) = top.get("instances")
        && let Some(items) = list(sink, &is, "instances")
    {
        for i in &items {
            instance(sink, i, &mut d.interfaces);
        }
    }
    if let Some(ns) = top.get("network_acls")
        && let Some(items) = list(sink, &ns, "network_acls")
    {
        d.network_acls = items.iter().filter_map(|i| network_acl(sink, i)).collect();
    }
    if let Some(ss) = top.get("subnets")
        && let Some(items) = list(sink, &ss, "subnets")
    {
        d.subnets = items.iter().filter_map(|i| subnet(sink, i)).collect();
    }
    // A file of network ACLs alone is a policy too (a router enforces only them).
    if !top.has("security_groups") && !top.has("network_acls") {
        sink.warn(&top.origin(sink), "the policy defines no security groups");
    }
    d
}

fn quotas(sink: &mut Sink, at: &At) -> Option<DQuotas> {
    let f = fields(sink, at, "quotas")?;
    f.check_keys(
        sink,
        "quotas",
        &[
            "rules_per_group",
            "groups_per_interface",
            "nacl_rules_per_list",
        ],
    );
    Some(DQuotas {
        rules_per_group: f
            .get("rules_per_group")
            .and_then(|v| int(sink, &v, "rules_per_group")),
        groups_per_interface: f
            .get("groups_per_interface")
            .and_then(|v| int(sink, &v, "groups_per_interface")),
        nacl_rules_per_list: f
            .get("nacl_rules_per_list")
            .and_then(|v| int(sink, &v, "nacl_rules_per_list")),
        at: f.origin(sink),
    })
}

fn timeouts(sink: &mut Sink, at: &At) -> DTimeouts {
    let mut t = DTimeouts::default();
    let Some(f) = fields(sink, at, "timeouts") else {
        return t;
    };
    let names: Vec<&str> = TimeoutField::ALL.iter().map(|(_, n)| *n).collect();
    f.check_keys(sink, "timeouts", &names);
    for (field, name) in TimeoutField::ALL {
        if let Some(v) = f.get(name)
            && let Some(n) = int(sink, &v, name)
        {
            t.values.push((field, n));
        }
    }
    t
}

fn prefix_list(sink: &mut Sink, at: &At) -> Option<DPrefixList> {
    let f = fields(sink, at, "a prefix list")?;
    f.check_keys(
        sink,
        "a prefix list",
        &[
            "id",
            "name",
            "family",
            "max_entries",
            "version",
            "entries",
            "external",
        ],
    );
    let Some(id) = f.get("id") else {
        sink.error_hint(
            &f.origin(sink),
            "a prefix list needs an `id`",
            "e.g. id: pl-0123456789abcdef0",
        );
        return None;
    };
    let id = string(sink, &id, "id")?;
    if let Some(ext) = f.get("external")
        && boolean(sink, &ext, "external") == Some(true)
    {
        // Referenced here, defined elsewhere (describe output, a template's parameter): its
        // entries are unknown, so it matches nothing here.
        let others = ["name", "family", "max_entries", "version", "entries"];
        if let Some(k) = others.iter().find(|k| f.get(k).is_some()) {
            sink.error_hint(
                &ext.origin(sink),
                format!("an external prefix list has no `{k}`"),
                "external: true means its entries are not known here; drop it to define the list",
            );
        }
        return Some(DPrefixList::external(id.v, f.origin(sink)));
    }
    let family = f.get("family").and_then(|v| {
        let s = string(sink, &v, "family")?;
        match values::family(&s.v) {
            Ok(fam) => Some(L::new(fam, s.at)),
            Err(b) => {
                sink.error_hint(&s.at, b.message, b.hint.unwrap_or_default());
                None
            }
        }
    });
    let entries = entries(sink, &f);
    Some(DPrefixList {
        id,
        check_id: true,
        name: f.get("name").and_then(|v| string(sink, &v, "name")),
        family,
        max_entries: f
            .get("max_entries")
            .and_then(|v| int(sink, &v, "max_entries")),
        version: f.get("version").and_then(|v| int(sink, &v, "version")),
        entries,
        external: false,
        at: f.origin(sink),
    })
}

/// A prefix list's `entries`: CIDRs, or mappings with a `cidr` and a `description`.
fn entries(sink: &mut Sink, f: &Fields) -> Vec<DEntry> {
    let mut entries = Vec::new();
    if let Some(es) = f.get("entries")
        && let Some(items) = list(sink, &es, "entries")
    {
        for e in items {
            if e.node.as_map().is_some() {
                let Some(ef) = fields(sink, &e, "a prefix list entry") else {
                    continue;
                };
                ef.check_keys(sink, "a prefix list entry", &["cidr", "description"]);
                let Some(c) = ef.get("cidr") else {
                    sink.error(&ef.origin(sink), "a prefix list entry needs a `cidr`");
                    continue;
                };
                let Some(cidr) = string(sink, &c, "cidr") else {
                    continue;
                };
                let description = ef
                    .get("description")
                    .and_then(|v| string(sink, &v, "description"));
                entries.push(DEntry { cidr, description });
            } else if let Some(cidr) = string(sink, &e, "a prefix list entry") {
                entries.push(DEntry {
                    cidr,
                    description: None,
                });
            }
        }
    }
    entries
}

fn group(sink: &mut Sink, at: &At) -> Option<DGroup> {
    let f = fields(sink, at, "a security group")?;
    f.check_keys_with(
        sink,
        "a security group",
        &["id", "name", "description", "default", "ingress", "egress"],
        |k| match k {
            "rules" | "inbound" | "outbound" => {
                Some("rules go under `ingress:` (inbound) and `egress:` (outbound)".into())
            }
            _ => None,
        },
    );
    let Some(id_at) = f.get("id") else {
        sink.error_hint(
            &f.origin(sink),
            "a security group needs an `id`",
            "e.g. id: sg-web",
        );
        return None;
    };
    let id = string(sink, &id_at, "id")?;
    let default_group = match f.get("default") {
        Some(v) => boolean(sink, &v, "default").unwrap_or(false),
        None => false,
    };
    let mut rules = |dir: Direction| -> (Option<Vec<DRule>>, crate::policy::Origin) {
        let key = dir.name();
        match f.get(key) {
            None => (None, f.at.with_suffix(&format!(".{key}")).origin(sink)),
            Some(v) if v.is_null() => {
                let hint = match dir {
                    Direction::Egress => {
                        "write `egress: []` for no egress rules, or remove the key for the default (D2: all traffic to 0.0.0.0/0 and ::/0)"
                    }
                    Direction::Ingress => {
                        "write `ingress: []` for no ingress rules, or remove the key"
                    }
                };
                sink.error_hint(&v.origin(sink), format!("`{key}` is empty (null)"), hint);
                (Some(Vec::new()), v.origin(sink))
            }
            Some(v) => {
                let origin = v.origin(sink);
                let mut out = Vec::new();
                if let Some(items) = list(sink, &v, key) {
                    for item in items {
                        rule(sink, &item, dir, &id.v, &mut out);
                    }
                }
                (Some(out), origin)
            }
        }
    };
    let ingress = rules(Direction::Ingress);
    let egress = rules(Direction::Egress);
    let name = f.get("name").and_then(|v| string(sink, &v, "name"));
    let description = f
        .get("description")
        .and_then(|v| string(sink, &v, "description"));
    let at = f.origin(sink);
    let mut group = DGroup::defined(id, true, name, description, [ingress, egress], at);
    group.default_group = default_group;
    Some(group)
}

/// `ports`: `443`, `"1024-65535"`, `all`, or `{from: 1024, to: 65535}`.
fn ports(sink: &mut Sink, at: &At) -> Option<(L<i64>, L<i64>)> {
    if at.node.as_map().is_some() {
        let f = fields(sink, at, "ports")?;
        f.check_keys(sink, "ports", &["from", "to"]);
        let (Some(a), Some(b)) = (f.get("from"), f.get("to")) else {
            sink.error_hint(
                &f.origin(sink),
                "ports needs both `from` and `to`",
                "or write ports: 443 for one port",
            );
            return None;
        };
        return Some((int(sink, &a, "from")?, int(sink, &b, "to")?));
    }
    let s = string(sink, at, "ports")?;
    let t = s.v.trim();
    if t.eq_ignore_ascii_case("all") {
        return Some((L::new(0, s.at.clone()), L::new(65535, s.at)));
    }
    let bad = |sink: &mut Sink| {
        sink.error_hint(
            &s.at,
            format!("`{t}` is not a port or a port range"),
            "write one port (443), a range (\"1024-65535\"), or all",
        );
    };
    // A leading '-' is a (negative, invalid) number, not a range separator.
    let (a, b) = match t.char_indices().skip(1).find(|(_, c)| *c == '-') {
        Some((i, _)) => (&t[..i], &t[i + 1..]),
        None => (t, t),
    };
    match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
        (Ok(a), Ok(b)) => Some((L::new(a, s.at.clone()), L::new(b, s.at))),
        _ => {
            bad(sink);
            None
        }
    }
}

fn peer_of(sink: &mut Sink, text: &L<String>, own: &str) -> Option<DPeer> {
    let t = text.v.trim();
    if t == "self" {
        return Some(DPeer::Group(own.to_string()));
    }
    if t.starts_with("sg-") {
        return Some(DPeer::Group(t.to_string()));
    }
    if t.starts_with("pl-") {
        return Some(DPeer::PrefixList(t.to_string()));
    }
    if !t.contains('/') && t.parse::<std::net::IpAddr>().is_err() {
        sink.error_hint(
            &text.at,
            format!("`{t}` is not a peer"),
            "a peer is a CIDR (203.0.113.0/24, 2001:db8::/32), a group id (sg-...), self, or a prefix list id (pl-...)",
        );
        return None;
    }
    Some(DPeer::Cidr {
        text: t.to_string(),
        expect: None,
    })
}

const RULE_KEYS_IN: &[&str] = &[
    "id",
    "protocol",
    "ports",
    "type",
    "code",
    "source",
    "description",
];
const RULE_KEYS_OUT: &[&str] = &[
    "id",
    "protocol",
    "ports",
    "type",
    "code",
    "destination",
    "description",
];

/// One rule as written: it expands into one [`DRule`] per peer.
fn rule(sink: &mut Sink, at: &At, dir: Direction, own: &str, out: &mut Vec<DRule>) {
    let what = format!("an {} rule", dir.name());
    let Some(f) = fields(sink, at, &what) else {
        return;
    };
    let peer_key = check_rule_keys(sink, &f, &what, dir);
    let rule_at = f.origin(sink);
    let Some(protocol) = f.get("protocol") else {
        sink.error_hint(
            &rule_at,
            "a rule needs a `protocol`",
            "tcp, udp, icmp, icmpv6, all (-1) or an IANA number",
        );
        return;
    };
    let Some(protocol) = string(sink, &protocol, "protocol") else {
        return;
    };
    let Some(range) = rule_range(sink, &f, &protocol, &rule_at) else {
        return;
    };
    let description = f
        .get("description")
        .and_then(|v| string(sink, &v, "description"));
    let id = f.get("id").and_then(|v| string(sink, &v, "id"));
    let Some(items) = rule_peers(sink, &f, dir, &rule_at, id.as_ref()) else {
        return;
    };
    for item in items {
        let Some((p, p_id, p_desc)) = peer_item(sink, &item, peer_key, own) else {
            continue;
        };
        out.push(DRule {
            direction: dir,
            protocol: protocol.clone(),
            from: range.as_ref().map(|r| r.0.clone()),
            to: range.as_ref().map(|r| r.1.clone()),
            peer: p,
            id: p_id.or_else(|| id.clone()),
            description: p_desc.or_else(|| description.clone()),
            at: rule_at.clone(),
        });
    }
}

/// The name of a rule's peer field in `dir`.
fn peer_key(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "source",
        Direction::Egress => "destination",
    }
}

/// Reports a rule's unknown fields, with a hint for the names of other formats and of the
/// other direction. Returns the name of its peer field.
fn check_rule_keys(sink: &mut Sink, f: &Fields, what: &str, dir: Direction) -> &'static str {
    let peer_key = peer_key(dir);
    let known = match dir {
        Direction::Ingress => RULE_KEYS_IN,
        Direction::Egress => RULE_KEYS_OUT,
    };
    f.check_keys_with(sink, what, known, |k| match (k, dir) {
        ("destination", Direction::Ingress) => Some("ingress rules name a `source`".into()),
        ("source", Direction::Egress) => Some("egress rules name a `destination`".into()),
        ("from_port" | "to_port" | "FromPort" | "ToPort" | "port", _) => {
            Some("write `ports: 443` or `ports: 1024-65535` (ICMP: `type:` and `code:`)".into())
        }
        ("cidr" | "group" | "prefix_list" | "peer" | "peers", _) => {
            Some(format!("peers go under `{peer_key}:`"))
        }
        _ => None,
    });
    peer_key
}

/// A rule's port range, or its ICMP type and code (code -1: any); Some(None) when it gives
/// none, None when it is wrong (reported).
fn rule_range(
    sink: &mut Sink,
    f: &Fields,
    protocol: &L<String>,
    rule_at: &Origin,
) -> Option<Option<(L<i64>, L<i64>)>> {
    let name = values::protocol(&protocol.v).ok();
    let is_icmp = matches!(name, Some(ProtoName::Icmp | ProtoName::Icmpv6));
    let mut range = None;
    if let Some(p) = f.get("ports") {
        if is_icmp {
            sink.error_hint(
                &p.origin(sink),
                format!("{} rules have no ports", protocol.v),
                "write the ICMP `type:` (and `code:`) instead",
            );
            return None;
        }
        range = Some(ports(sink, &p)?);
    }
    let (ty, code) = (f.get("type"), f.get("code"));
    if !is_icmp
        && name.is_some()
        && let Some(x) = ty.as_ref().or(code.as_ref())
    {
        sink.error_hint(
            &x.origin(sink),
            format!(
                "`type` and `code` are for icmp and icmpv6 rules, not {}",
                protocol.v
            ),
            "use `ports:` for tcp and udp",
        );
        return None;
    }
    if is_icmp {
        if code.is_some() && ty.is_none() {
            sink.error_hint(
                rule_at,
                "an ICMP `code` needs a `type`",
                "e.g. type: 3, code: 4",
            );
            return None;
        }
        if let Some(t) = &ty {
            let t = int(sink, t, "type")?;
            let c = match &code {
                Some(c) => int(sink, c, "code")?,
                None => L::new(-1, t.at.clone()),
            };
            range = Some((t, c));
        }
    }
    Some(range)
}

/// The items of a rule's peer field (at least one; several only without a rule-wide id).
fn rule_peers<'n>(
    sink: &mut Sink,
    f: &Fields<'n>,
    dir: Direction,
    rule_at: &Origin,
    id: Option<&L<String>>,
) -> Option<Vec<At<'n>>> {
    let peer_key = peer_key(dir);
    let Some(peers_at) = f.get(peer_key) else {
        sink.error_hint(
            rule_at,
            format!("an {} rule needs a `{peer_key}`", dir.name()),
            "a CIDR, a group id (sg-...), self, a prefix list id (pl-...), or a list of them",
        );
        return None;
    };
    let items = one_or_list(sink, &peers_at, peer_key)?;
    if items.is_empty() {
        sink.error_hint(
            &peers_at.origin(sink),
            format!("`{peer_key}` lists no peer"),
            "a rule needs at least one peer",
        );
        return None;
    }
    if items.len() > 1
        && let Some(id) = id
    {
        sink.error_hint(
            &id.at,
            format!("a rule with {} peers expands into {} rules, which cannot share one id", items.len(), items.len()),
            format!("give each peer its own id ({peer_key}: [{{cidr: ..., id: sgr-...}}]) or remove the id"),
        );
        return None;
    }
    Some(items)
}

/// A peer with its own id and description, when given (the rule's apply otherwise).
type PeerItem = (L<DPeer>, Option<L<String>>, Option<L<String>>);

/// One item of a rule's peer field: a text (`203.0.113.0/24`, `sg-web`, `self`, `pl-...`) or
/// a mapping with exactly one of cidr, group, prefix_list and its own id and description.
fn peer_item(sink: &mut Sink, item: &At, peer_key: &str, own: &str) -> Option<PeerItem> {
    if item.node.as_map().is_none() {
        let text = string(sink, item, peer_key)?;
        let peer = peer_of(sink, &text, own)?;
        return Some((L::new(peer, text.at), None, None));
    }
    let pf = fields(sink, item, "a peer")?;
    pf.check_keys(
        sink,
        "a peer",
        &["cidr", "group", "prefix_list", "id", "description"],
    );
    let kinds: Vec<(&str, At)> = ["cidr", "group", "prefix_list"]
        .iter()
        .filter_map(|k| pf.get(k).map(|v| (*k, v)))
        .collect();
    if kinds.len() != 1 {
        sink.error_hint(
            &pf.origin(sink),
            format!(
                "a peer is exactly one of cidr, group, prefix_list; found {}",
                kinds.len()
            ),
            "F5: one peer per entry; list several entries instead",
        );
        return None;
    }
    let (kind, v) = &kinds[0];
    let text = string(sink, v, kind)?;
    let peer = match *kind {
        "cidr" => DPeer::Cidr {
            text: text.v.clone(),
            expect: None,
        },
        "group" if text.v.trim() == "self" => DPeer::Group(own.to_string()),
        "group" => DPeer::Group(text.v.trim().to_string()),
        _ => DPeer::PrefixList(text.v.trim().to_string()),
    };
    let pid = pf.get("id").and_then(|v| string(sink, &v, "id"));
    let pdesc = pf
        .get("description")
        .and_then(|v| string(sink, &v, "description"));
    Some((L::new(peer, text.at), pid, pdesc))
}

const IFACE_KEYS: &[&str] = &["device", "addresses", "groups", "timeouts", "audit"];

fn instance(sink: &mut Sink, at: &At, out: &mut Vec<DInterface>) {
    let Some(f) = fields(sink, at, "an instance") else {
        return;
    };
    let mut known = vec!["name", "interfaces"];
    known.extend_from_slice(IFACE_KEYS);
    f.check_keys(sink, "an instance", &known);
    let Some(name_at) = f.get("name") else {
        sink.error_hint(
            &f.origin(sink),
            "an instance needs a `name`",
            "e.g. name: web-1",
        );
        return;
    };
    let Some(name) = string(sink, &name_at, "name") else {
        return;
    };
    match f.get("interfaces") {
        None => out.push(interface(sink, &f, name.clone(), &name.v)),
        Some(ifs) => {
            for k in IFACE_KEYS {
                if let Some(v) = f.get(k) {
                    sink.error_hint(
                        &v.origin(sink),
                        format!(
                            "`{k}` belongs to an interface when the instance lists `interfaces`"
                        ),
                        format!("move `{k}` into the interface it describes"),
                    );
                }
            }
            let Some(items) = list(sink, &ifs, "interfaces") else {
                return;
            };
            let only_one = items.len() == 1;
            for (i, item) in items.iter().enumerate() {
                let Some(iff) = fields(sink, item, "an interface") else {
                    continue;
                };
                let mut known = vec!["name"];
                known.extend_from_slice(IFACE_KEYS);
                iff.check_keys(sink, "an interface", &known);
                // An instance's only, unnamed interface is named after the instance; others
                // are `instance/name`, name defaulting to eth0, eth1, ... by position.
                let full = match iff.get("name") {
                    Some(n) => match string(sink, &n, "name") {
                        Some(n) => L::new(format!("{}/{}", name.v, n.v), n.at),
                        None => continue,
                    },
                    None if only_one => L::new(name.v.clone(), iff.origin(sink)),
                    None => L::new(format!("{}/eth{i}", name.v), iff.origin(sink)),
                };
                out.push(interface(sink, &iff, full, &name.v));
            }
        }
    }
}

fn interface(sink: &mut Sink, f: &Fields, name: L<String>, instance: &str) -> DInterface {
    let mut addresses = Vec::new();
    if let Some(a) = f.get("addresses")
        && let Some(items) = one_or_list(sink, &a, "addresses")
    {
        addresses = items
            .iter()
            .filter_map(|i| string(sink, i, "an address"))
            .collect();
    }
    let mut groups = Vec::new();
    let groups_at = match f.get("groups") {
        Some(g) => {
            if let Some(items) = one_or_list(sink, &g, "groups") {
                groups = items
                    .iter()
                    .filter_map(|i| string(sink, i, "a group id"))
                    .collect();
            }
            g.origin(sink)
        }
        None => f.origin(sink),
    };
    DInterface {
        name,
        instance: instance.to_string(),
        device: f.get("device").and_then(|v| string(sink, &v, "device")),
        addresses,
        groups,
        groups_at,
        timeouts: f
            .get("timeouts")
            .map(|t| timeouts(sink, &t))
            .unwrap_or_default(),
        audit: f.get("audit").and_then(|v| {
            boolean(sink, &v, "audit")
                .filter(|on| *on)
                .map(|_| v.origin(sink))
        }),
        at: f.origin(sink),
    }
}

/// One network ACL: `id`, `default`, and its `inbound` and `outbound` numbered entries.
fn network_acl(sink: &mut Sink, at: &At) -> Option<DNacl> {
    let f = fields(sink, at, "a network ACL")?;
    f.check_keys_with(
        sink,
        "a network ACL",
        &["id", "default", "inbound", "outbound"],
        |k| match k {
            "ingress" | "egress" | "entries" | "rules" => {
                Some("network ACL entries go under `inbound:` and `outbound:`".into())
            }
            _ => None,
        },
    );
    let Some(id_at) = f.get("id") else {
        sink.error_hint(
            &f.origin(sink),
            "a network ACL needs an `id`",
            "e.g. id: acl-0123456789abcdef0",
        );
        return None;
    };
    let id = string(sink, &id_at, "id")?;
    let default = match f.get("default") {
        Some(v) => boolean(sink, &v, "default").unwrap_or(false),
        None => false,
    };
    let mut entries = |key: &str| -> (Option<Vec<DNaclEntry>>, Origin) {
        let Some(v) = f.get(key) else {
            return (None, f.at.with_suffix(&format!(".{key}")).origin(sink));
        };
        let origin = v.origin(sink);
        if v.is_null() {
            sink.error_hint(
                &origin,
                format!("`{key}` is empty (null)"),
                format!(
                    "write `{key}: []` for no entries (everything denied, A11), or remove the key"
                ),
            );
            return (Some(Vec::new()), origin);
        }
        let items = list(sink, &v, key).unwrap_or_default();
        let out = items.iter().filter_map(|i| nacl_entry(sink, i)).collect();
        (Some(out), origin)
    };
    let (inbound, inbound_at) = entries("inbound");
    let (outbound, outbound_at) = entries("outbound");
    Some(DNacl {
        id,
        check_id: true,
        default,
        inbound,
        inbound_at,
        outbound,
        outbound_at,
        at: f.origin(sink),
    })
}

const NACL_ENTRY_KEYS: &[&str] = &[
    "number", "action", "protocol", "ports", "type", "code", "cidr",
];

/// One numbered entry: `{number, action, protocol, ports | type + code, cidr}`.
fn nacl_entry(sink: &mut Sink, at: &At) -> Option<DNaclEntry> {
    let what = "a network ACL entry";
    let f = fields(sink, at, what)?;
    f.check_keys_with(sink, what, NACL_ENTRY_KEYS, |k| match k {
        "rule_number" | "rule" => Some("write `number: 100`".into()),
        "source" | "destination" | "peer" | "cidr_block" | "ipv6_cidr" => {
            Some("an entry names one `cidr` (IPv4 or IPv6)".into())
        }
        "from_port" | "to_port" | "port" => {
            Some("write `ports: 443` or `ports: 1024-65535` (ICMP: `type:` and `code:`)".into())
        }
        _ => None,
    });
    let entry_at = f.origin(sink);
    let mut need = |key: &str, example: &str| {
        let v = f.get(key);
        if v.is_none() {
            sink.error_hint(
                &entry_at,
                format!("a network ACL entry needs a `{key}`"),
                format!("e.g. {key}: {example}"),
            );
        }
        v
    };
    let (number, action, protocol, cidr) = (
        need("number", "100"),
        need("action", "allow"),
        need("protocol", "tcp"),
        need("cidr", "0.0.0.0/0"),
    );
    let number = int(sink, &number?, "number");
    let action = string(sink, &action?, "action");
    let protocol = string(sink, &protocol?, "protocol");
    let cidr = string(sink, &cidr?, "cidr");
    let ports = match f.get("ports") {
        Some(p) => Some(ports(sink, &p)?),
        None => None,
    };
    let (ty, code) = (f.get("type"), f.get("code"));
    let icmp = if ty.is_some() || code.is_some() {
        let ty = match ty {
            Some(t) => Some(int(sink, &t, "type")?),
            None => None,
        };
        let code = match code {
            Some(c) => Some(int(sink, &c, "code")?),
            None => None,
        };
        Some((ty, code))
    } else {
        None
    };
    Some(DNaclEntry {
        number: number?,
        action: action?,
        protocol: protocol?,
        ports,
        icmp,
        cidr: cidr?,
        cidr_expect: None,
        at: entry_at,
    })
}

/// One subnet: `id`, `cidr`, `ipv6_cidr`, `network_acl`, `router_device`.
fn subnet(sink: &mut Sink, at: &At) -> Option<DSubnet> {
    let f = fields(sink, at, "a subnet")?;
    f.check_keys_with(
        sink,
        "a subnet",
        &["id", "cidr", "ipv6_cidr", "network_acl", "router_device"],
        |k| match k {
            "cidrs" | "cidr_block" => Some("write `cidr:` (IPv4) and `ipv6_cidr:`".into()),
            "nacl" | "acl" | "network_acl_id" => Some("write `network_acl: acl-...`".into()),
            "device" => Some("write `router_device:`".into()),
            _ => None,
        },
    );
    let Some(id_at) = f.get("id") else {
        sink.error_hint(
            &f.origin(sink),
            "a subnet needs an `id`",
            "e.g. id: subnet-web",
        );
        return None;
    };
    let id = string(sink, &id_at, "id")?;
    let mut text = |key: &str| f.get(key).and_then(|v| string(sink, &v, key));
    Some(DSubnet {
        id,
        check_id: true,
        cidr: text("cidr"),
        ipv6_cidr: text("ipv6_cidr"),
        network_acl: text("network_acl"),
        router_device: text("router_device"),
        at: f.origin(sink),
    })
}
