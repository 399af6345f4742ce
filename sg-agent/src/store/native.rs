//! A validated [`Policy`] written back in the native format (docs/policy-format.md), piece by
//! piece: the store keeps one value per group, prefix list, instance, network ACL and subnet,
//! and `store export` prints them as one native YAML file. Everything is explicit, so that loading the text
//! gives the same policy again whatever the input's format was: rule ids, group names, the
//! egress list (even when empty: D2 is already applied), quotas and per-interface timeouts.
//!
//! Entry descriptions of prefix lists are not part of the validated policy and are not
//! written. A CloudFormation template names its groups and prefix lists by logical id
//! (`DbSecurityGroup`), which is not a native id: those become `sg-DbSecurityGroup` and
//! `pl-...` (rule ids are written out, so they do not change).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::policy::{
    Direction, Family, Group, IcmpMatch, Interface, NaclAction, NaclEntry, NetworkAcl, Peer,
    Policy, PrefixList, Protocol, Quotas, Rule, Subnet, Timeouts,
};

/// One group: id, name, description and both rule lists.
pub fn group(g: &Group) -> Value {
    json!({
        "id": sg_id(g.id.as_str()),
        "name": g.name,
        "description": g.description,
        "ingress": g.ingress.iter().map(rule).collect::<Vec<_>>(),
        "egress": g.egress.iter().map(rule).collect::<Vec<_>>(),
    })
}

/// One rule with one peer and its id (F6).
fn rule(r: &Rule) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), r.id.as_str().into());
    let (name, detail) = protocol(r.protocol);
    m.insert("protocol".into(), name);
    m.extend(detail);
    let peer_key = match r.direction {
        Direction::Ingress => "source",
        Direction::Egress => "destination",
    };
    m.insert(peer_key.into(), peer(&r.peer).into());
    if let Some(d) = &r.description {
        m.insert("description".into(), d.as_str().into());
    }
    Value::Object(m)
}

/// The protocol's name and the keys that go with it (`ports`, `type`/`code`).
fn protocol(p: Protocol) -> (Value, Map<String, Value>) {
    let mut m = Map::new();
    let name: Value = match p {
        Protocol::All => "all".into(),
        Protocol::Tcp(r) | Protocol::Udp(r) => {
            m.insert("ports".into(), format!("{}-{}", r.from, r.to).into());
            if matches!(p, Protocol::Tcp(_)) {
                "tcp"
            } else {
                "udp"
            }
            .into()
        }
        Protocol::Icmp(i) | Protocol::Icmpv6(i) => {
            let (t, c) = match i {
                IcmpMatch::All => (-1, -1),
                IcmpMatch::Type(t) => (i32::from(t), -1),
                IcmpMatch::TypeCode(t, c) => (i32::from(t), i32::from(c)),
            };
            m.insert("type".into(), t.into());
            m.insert("code".into(), c.into());
            if matches!(p, Protocol::Icmp(_)) {
                "icmp"
            } else {
                "icmpv6"
            }
            .into()
        }
        Protocol::Number(n) => n.into(),
    };
    (name, m)
}

fn peer(p: &Peer) -> String {
    match p {
        Peer::Cidr(net) => net.to_string(),
        Peer::PrefixList(id) => pl_id(id.as_str()),
        Peer::Group(id) => sg_id(id.as_str()),
    }
}

/// A group id as the native format spells it.
pub fn sg_id(id: &str) -> String {
    native_id("sg-", id)
}

/// A prefix list id as the native format spells it.
pub fn pl_id(id: &str) -> String {
    native_id("pl-", id)
}

fn native_id(prefix: &str, id: &str) -> String {
    if id.starts_with(prefix) {
        id.to_string()
    } else {
        format!("{prefix}{id}")
    }
}

pub fn prefix_list(pl: &PrefixList) -> Value {
    // A placeholder for a list defined elsewhere (max_entries 0: a defined list has 1..1000).
    if pl.max_entries == 0 {
        return json!({"id": pl_id(pl.id.as_str()), "external": true});
    }
    json!({
        "id": pl_id(pl.id.as_str()),
        "name": pl.name,
        "family": match pl.family { Family::V4 => "ipv4", Family::V6 => "ipv6" },
        "max_entries": pl.max_entries,
        "version": pl.version,
        "entries": pl.entries.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// One instance (its name) and its interfaces, in the single-interface form when the instance
/// has one interface named after it, else with `interfaces`.
pub fn instance(name: &str, ifaces: &[&Interface]) -> Value {
    instance_audited(name, ifaces, &BTreeSet::new())
}

/// [`instance`], with `audit: true` on the interfaces named in `audit` (L3). The store's keys
/// leave it out: audit mode is a host's, set in its file or by `sg-agent audit on DEV`.
fn instance_audited(name: &str, ifaces: &[&Interface], audit: &BTreeSet<String>) -> Value {
    let interface_keys = |i: &Interface| {
        let mut m = interface_keys(i);
        if audit.contains(&i.name) {
            m.insert("audit".into(), true.into());
        }
        m
    };
    if let [only] = ifaces
        && only.name == name
    {
        let mut m = interface_keys(only);
        m.insert("name".into(), name.into());
        return Value::Object(m);
    }
    let prefix = format!("{name}/");
    let list: Vec<Value> = ifaces
        .iter()
        .map(|i| {
            let mut m = interface_keys(i);
            let own = i.name.strip_prefix(&prefix).unwrap_or(&i.name);
            m.insert("name".into(), own.into());
            Value::Object(m)
        })
        .collect();
    json!({ "name": name, "interfaces": list })
}

/// The policy's interfaces by instance, in the order the instances first appear.
pub fn instances(p: &Policy) -> Vec<(String, Vec<&Interface>)> {
    let mut out: Vec<(String, Vec<&Interface>)> = Vec::new();
    for i in &p.interfaces {
        match out.iter_mut().find(|(n, _)| *n == i.instance) {
            Some((_, v)) => v.push(i),
            None => out.push((i.instance.clone(), vec![i])),
        }
    }
    out
}

fn interface_keys(i: &Interface) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(d) = &i.device {
        m.insert("device".into(), d.as_str().into());
    }
    let addrs: Vec<Value> = i.addresses.iter().map(|a| a.to_string().into()).collect();
    m.insert("addresses".into(), addrs.into());
    let groups: Vec<Value> = i.groups.iter().map(|g| sg_id(g.as_str()).into()).collect();
    m.insert("groups".into(), groups.into());
    if i.timeouts != Timeouts::AWS_DEFAULT {
        m.insert("timeouts".into(), timeouts(&i.timeouts));
    }
    m
}

fn timeouts(t: &Timeouts) -> Value {
    json!({
        "tcp_established": t.tcp_established,
        "tcp_embryonic": t.tcp_embryonic,
        "tcp_closing": t.tcp_closing,
        "udp_single": t.udp_single,
        "udp_stream": t.udp_stream,
        "icmp": t.icmp,
        "other": t.other,
    })
}

pub fn quotas(q: &Quotas) -> Value {
    json!({
        "rules_per_group": q.rules_per_group,
        "groups_per_interface": q.groups_per_interface,
    })
}

/// A network ACL id as the native format spells it.
pub fn acl_id(id: &str) -> String {
    native_id("acl-", id)
}

/// A subnet id as the native format spells it.
pub fn subnet_id(id: &str) -> String {
    native_id("subnet-", id)
}

/// One network ACL: its numbered entries per list (the `*` rules are implicit, A6).
pub fn network_acl(a: &NetworkAcl) -> Value {
    let entry = |e: &NaclEntry| {
        let mut m = Map::new();
        m.insert("number".into(), e.number.into());
        let action = match e.action {
            NaclAction::Allow => "allow",
            NaclAction::Deny => "deny",
        };
        m.insert("action".into(), action.into());
        let (name, detail) = protocol(e.protocol);
        // A17: -1 is how NACLs spell every protocol.
        let name = if e.protocol == Protocol::All {
            (-1).into()
        } else {
            name
        };
        m.insert("protocol".into(), name);
        m.extend(detail);
        m.insert("cidr".into(), e.cidr.to_string().into());
        Value::Object(m)
    };
    json!({
        "id": acl_id(a.id.as_str()),
        "default": a.is_default,
        "inbound": a.inbound.iter().map(entry).collect::<Vec<_>>(),
        "outbound": a.outbound.iter().map(entry).collect::<Vec<_>>(),
    })
}

/// One subnet: its CIDRs, its NACL (A12) and the router's device when named.
pub fn subnet(s: &Subnet) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), subnet_id(s.id.as_str()).into());
    for c in &s.cidrs {
        let key = if c.addr().is_ipv6() {
            "ipv6_cidr"
        } else {
            "cidr"
        };
        m.insert(key.into(), c.to_string().into());
    }
    m.insert("network_acl".into(), acl_id(s.network_acl.as_str()).into());
    if let Some(d) = &s.router_device {
        m.insert("router_device".into(), d.as_str().into());
    }
    Value::Object(m)
}

/// The whole policy as one native document. Network ACLs and subnets only when it has some,
/// so that a policy without them exports as it always did.
pub fn document(p: &Policy) -> Value {
    let mut doc = json!({
        "version": 1,
        "quotas": quotas(&p.quotas),
        "prefix_lists": p.prefix_lists.values().map(prefix_list).collect::<Vec<_>>(),
        "security_groups": p.groups.values().map(group).collect::<Vec<_>>(),
        "instances": instances(p)
            .iter()
            .map(|(n, i)| instance_audited(n, i, &p.audit))
            .collect::<Vec<_>>(),
    });
    if !p.network_acls.is_empty() || !p.subnets.is_empty() {
        doc["network_acls"] = p.network_acls.values().map(network_acl).collect();
        doc["subnets"] = p.subnets.iter().map(subnet).collect();
        doc["quotas"]["nacl_rules_per_list"] = p.quotas.nacl_rules_per_list.into();
    }
    doc
}

/// Block-style YAML for a document of the shapes above (objects, arrays, strings, numbers).
/// Keys come out in the order `json!` keeps them (sorted); strings are quoted unless plainly
/// safe.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(&mut out, v, 0);
    out
}

fn emit(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(&pad);
                out.push_str(k);
                out.push(':');
                child(out, v, indent);
            }
        }
        Value::Array(a) => {
            for item in a {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // The first key on the dash's line, the others under it.
                        let mut lines = String::new();
                        emit(&mut lines, item, indent + 2);
                        out.push(' ');
                        out.push_str(lines.trim_start());
                    }
                    _ => child(out, item, indent),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

/// What follows `key:` or `-`: a scalar or an empty collection on the same line, else the
/// nested block.
fn child(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit(out, v, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit(out, v, indent + 2);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) if plain(s) => s.clone(),
        // A JSON string is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

/// Strings YAML reads back as the same string without quotes: ids, names, IPv4 addresses and
/// CIDRs, port ranges. Numbers, booleans and anything with YAML syntax in it are quoted.
fn plain(s: &str) -> bool {
    let reserved = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
    ];
    let not_a_number = s.contains('/') || s.matches('.').count() >= 2 || s.contains('-');
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || (c.is_ascii_digit() && not_a_number))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !reserved.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config;

    /// A policy with the places where each part was written cleared: what is left is what it
    /// means.
    pub(crate) fn meaning(mut p: Policy) -> Policy {
        for g in p.groups.values_mut() {
            g.origin = Default::default();
            for r in g.ingress.iter_mut().chain(g.egress.iter_mut()) {
                r.origin = Default::default();
            }
        }
        for pl in p.prefix_lists.values_mut() {
            pl.origin = Default::default();
        }
        for i in &mut p.interfaces {
            i.origin = Default::default();
        }
        for a in p.network_acls.values_mut() {
            a.origin = Default::default();
            for e in a.inbound.iter_mut().chain(a.outbound.iter_mut()) {
                e.origin = Default::default();
            }
        }
        for s in &mut p.subnets {
            s.origin = Default::default();
        }
        // The store keeps instances by name; their order means nothing.
        p.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        p
    }

    fn round_trip(name: &str, text: &str) {
        let first = config::load_str(text, name).unwrap_or_else(|d| panic!("{name}: {d}"));
        let doc = document(&first.policy);
        let yaml = to_yaml(&doc);
        let again = config::load_str(&yaml, "export")
            .unwrap_or_else(|d| panic!("{name}: the export does not load: {d}\n{yaml}"));
        // The store's path reads the document as it stands: it must mean what its text does.
        let direct = config::load_value(&doc, "export")
            .unwrap_or_else(|d| panic!("{name}: the document does not load: {d}\n{yaml}"));
        assert_eq!(
            meaning(direct.policy),
            meaning(again.policy.clone()),
            "{name}: the document read as it stands differs from its text"
        );
        let renamed = first.policy.groups.keys().any(|g| !g.0.starts_with("sg-"))
            || first
                .policy
                .prefix_lists
                .keys()
                .any(|p| !p.0.starts_with("pl-"))
            || first
                .policy
                .network_acls
                .keys()
                .any(|a| !a.0.starts_with("acl-"))
            || first
                .policy
                .subnets
                .iter()
                .any(|s| !s.id.0.starts_with("subnet-"));
        if renamed {
            // Logical ids became native ids: the export is where the meaning settles.
            let twice = to_yaml(&document(&again.policy));
            assert_eq!(yaml, twice, "{name}: the export of the export differs");
        } else {
            assert_eq!(
                meaning(first.policy),
                meaning(again.policy),
                "{name}: the export means something else:\n{yaml}"
            );
        }
    }

    #[test]
    fn every_example_survives_export_and_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            round_trip(
                &path.display().to_string(),
                &std::fs::read_to_string(&path).unwrap(),
            );
            n += 1;
        }
        assert!(n >= 5, "examples/ has {n} files");
    }

    /// The regression corpus (../shared/corpus: real templates and describe outputs nobody
    /// here wrote): every file that loads survives export and load.
    #[test]
    fn every_loadable_corpus_file_survives_export_and_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus/cfn");
        let mut files = Vec::new();
        let mut todo = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = todo.pop() {
            let entries = std::fs::read_dir(&d)
                .unwrap_or_else(|e| panic!("the corpus is not at {}: {e}", d.display()));
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if ["yaml", "yml", "json", "template"]
                    .iter()
                    .any(|x| p.extension().is_some_and(|e| e == *x))
                {
                    files.push(p);
                }
            }
        }
        let mut loaded = 0;
        for p in &files {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            if config::load_str(&text, "corpus").is_ok() {
                round_trip(&p.display().to_string(), &text);
                loaded += 1;
            }
        }
        eprintln!("{loaded} of {} corpus files load and survive", files.len());
        assert!(
            files.len() > 250 && loaded > 100,
            "{loaded} of {} files load",
            files.len()
        );
    }

    #[test]
    fn every_protocol_form_and_the_instance_forms_survive() {
        round_trip(
            "forms",
            r#"
quotas: {rules_per_group: 100, groups_per_interface: 10}
timeouts: {udp_single: 45}
prefix_lists:
  - {id: pl-office, name: office, max_entries: 4, version: 7, entries: [203.0.113.0/28]}
  - {id: pl-v6, entries: ["2001:db8:5::/48"]}
  - {id: pl-elsewhere, external: true}
security_groups:
  - id: sg-a
    name: "a: the first"
    description: "symbols: ._-:/()#,@[]+=&;{}!$*"
    ingress:
      - {protocol: tcp, ports: 22, source: [198.51.100.0/24, "2001:db8::/32", pl-office]}
      - {protocol: udp, ports: all, source: sg-b, description: every port}
      - {protocol: icmp, type: 8, source: self}
      - {protocol: icmp, type: 3, code: 4, source: 0.0.0.0/0}
      - {protocol: icmp, type: -1, source: 192.0.2.0/24}
      - {protocol: icmpv6, source: pl-v6}
      - {protocol: gre, source: 203.0.113.7/32}
      - {protocol: tcp, ports: 8443, source: pl-elsewhere}
      - {protocol: all, source: sg-b, id: sgr-0123456789abcdef0}
    egress: []
  - id: sg-b
    default: true
instances:
  - {name: one, device: eth0, addresses: [192.0.2.1], groups: [sg-a, sg-b]}
  - name: two
    interfaces:
      - {addresses: [192.0.2.2, "2001:db8::2"], groups: [sg-b], timeouts: {tcp_established: 3600}}
  - name: three
    interfaces:
      - {name: eth0, addresses: [192.0.2.3], groups: [sg-a]}
      - {name: eth1, device: ens6, addresses: [192.0.2.4], groups: [sg-b]}
"#,
        );
    }

    #[test]
    fn plain_strings_are_the_ones_yaml_reads_back_unchanged() {
        for s in [
            "sg-web",
            "web",
            "192.0.2.0/24",
            "192.0.2.1",
            "0-65535",
            "eth0",
            "a.b_c",
        ] {
            assert!(plain(s), "{s}");
        }
        for s in [
            "::/0",
            "2001:db8::/32",
            "yes",
            "No",
            "1.0",
            "443",
            "",
            "a b",
            "a:b",
            "-x",
            "#",
        ] {
            assert!(!plain(s), "{s}");
        }
    }
}
