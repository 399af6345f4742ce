//! One test per finding: a policy that raises it (with its location) and one that must not.

use super::*;
use crate::config::load_str;

/// The findings of `id` in a native policy.
fn findings(yaml: &str, id: &str) -> Vec<Finding> {
    let l = load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("must load:\n{e}\n{yaml}"));
    lint(&l.policy).into_iter().filter(|f| f.id == id).collect()
}

/// A group `sg-a` with these ingress rules (YAML list items, indented by 6).
fn ingress(rules: &str) -> String {
    format!("security_groups:\n  - id: sg-a\n    ingress:\n{rules}")
}

#[test]
fn sg001_ssh_or_rdp_from_the_world_is_an_error() {
    let f = findings(
        &ingress(
            "      - {protocol: tcp, ports: 22, source: 0.0.0.0/0, description: ssh}\n\
             \x20     - {protocol: tcp, ports: 3000-4000, source: '::/0', description: rdp}\n",
        ),
        "SG001",
    );
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Error);
    assert!(f[0].why.contains("SSH (port 22)"), "{}", f[0].why);
    assert!(f[1].why.contains("RDP (port 3389)"), "{}", f[1].why);
    // Located where the rule is written.
    assert_eq!((f[0].origin.file.as_str(), f[0].origin.line), ("t.yaml", 4));
    assert!(f[0].origin.path.contains("ingress[0]"), "{}", f[0].origin);

    let none = findings(
        &ingress(
            "      - {protocol: tcp, ports: 22, source: 198.51.100.10/32, description: me}\n\
             \x20     - {protocol: tcp, ports: 443, source: 0.0.0.0/0, description: web}\n\
             \x20     - {protocol: udp, ports: 22, source: 0.0.0.0/0, description: not ssh}\n",
        ),
        "SG001",
    );
    assert!(none.is_empty(), "{none:#?}");
}

#[test]
fn sg002_every_port_or_protocol_from_the_world_is_a_warning() {
    let f = findings(
        &ingress(
            "      - {protocol: all, source: 0.0.0.0/0, description: all}\n\
             \x20     - {protocol: udp, ports: 1-65535, source: '::/0', description: udp}\n",
        ),
        "SG002",
    );
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Warning);

    let none = findings(
        &ingress(
            "      - {protocol: tcp, ports: 1024-65535, source: 0.0.0.0/0, description: high}\n\
             \x20     - {protocol: all, source: 192.0.2.0/24, description: lan}\n",
        ),
        "SG002",
    );
    assert!(none.is_empty(), "{none:#?}");
}

#[test]
fn sg003_a_rule_without_description_is_info_but_aws_defaults_are_not() {
    let f = findings(
        &ingress("      - {protocol: tcp, ports: 443, source: 192.0.2.0/24}\n"),
        "SG003",
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Info);

    // Described rules, the default egress (D2) and the default group's self rule (D3).
    let none = findings(
        "security_groups:\n  - id: sg-a\n    ingress:\n      \
         - {protocol: tcp, ports: 443, source: 192.0.2.0/24, description: lan}\n  \
         - id: sg-default\n    default: true\n",
        "SG003",
    );
    assert!(none.is_empty(), "{none:#?}");
}

#[test]
fn sg004_egress_to_ephemeral_ports_of_an_admitted_peer_is_redundant() {
    let g = |egress: &str| {
        format!(
            "security_groups:\n  - id: sg-a\n    ingress:\n      \
             - {{protocol: tcp, ports: 443, source: 192.0.2.0/24, description: lan}}\n    \
             egress:\n      - {egress}\n"
        )
    };
    let f = findings(
        &g("{protocol: tcp, ports: 1024-65535, destination: 192.0.2.0/25, description: replies}"),
        "SG004",
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(f[0].why.contains("1024-65535"), "{}", f[0].why);
    let f = findings(
        &g("{protocol: tcp, ports: 32768-60999, destination: 192.0.2.7/32, description: r}"),
        "SG004",
    );
    assert_eq!(f.len(), 1, "{f:#?}");

    // Not an ephemeral range, a peer ingress does not admit, another protocol.
    for egress in [
        "{protocol: tcp, ports: 5432, destination: 192.0.2.0/24, description: db}",
        "{protocol: tcp, ports: 1024-65535, destination: 198.51.100.0/24, description: x}",
        "{protocol: udp, ports: 1024-65535, destination: 192.0.2.0/24, description: x}",
    ] {
        let none = findings(&g(egress), "SG004");
        assert!(none.is_empty(), "{egress}: {none:#?}");
    }
}

/// Three groups and interfaces carrying `sets` (a YAML flow list each).
fn tiers(sets: &[&str]) -> String {
    let mut y = String::from("security_groups:\n  - id: sg-all\n  - id: sg-web\n  - id: sg-db\n");
    y.push_str("instances:\n");
    for (i, s) in sets.iter().enumerate() {
        y.push_str(&format!(
            "  - {{name: i{i}, addresses: [192.0.2.{}], groups: {s}}}\n",
            i + 10
        ));
    }
    y
}

#[test]
fn sg005_a_group_on_every_tier_is_a_warning() {
    let f = findings(
        &tiers(&["[sg-all, sg-web]", "[sg-all, sg-db]", "[sg-all, sg-web]"]),
        "SG005",
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].subject, "sg-all");
    assert!(f[0].why.contains("(3) across 2"), "{}", f[0].why);

    // One tier only (every interface carries the same set), or a single interface.
    for sets in [
        &["[sg-all, sg-web]", "[sg-all, sg-web]"][..],
        &["[sg-all, sg-web, sg-db]"][..],
        &["[sg-web]", "[sg-db]"][..],
    ] {
        let none = findings(&tiers(sets), "SG005");
        assert!(none.is_empty(), "{sets:?}: {none:#?}");
    }
}

#[test]
fn sg006_a_rule_covered_by_a_wider_rule_of_its_group_is_redundant() {
    let f = findings(
        &ingress(
            "      - {protocol: tcp, ports: 80-443, source: 192.0.2.0/24, description: wide}\n\
             \x20     - {protocol: tcp, ports: 443, source: 192.0.2.10/32, description: narrow}\n\
             \x20     - {protocol: icmp, type: -1, source: 192.0.2.0/24, description: any icmp}\n\
             \x20     - {protocol: icmp, type: 8, source: 192.0.2.0/24, description: ping}\n",
        ),
        "SG006",
    );
    let subjects: Vec<_> = f.iter().map(|f| f.origin.path.clone()).collect();
    assert_eq!(f.len(), 2, "{f:#?}");
    assert!(subjects[0].ends_with("ingress[1]"), "{subjects:?}");
    assert!(subjects[1].ends_with("ingress[3]"), "{subjects:?}");

    // Overlapping but not covered; another direction; another peer kind.
    let none = findings(
        "security_groups:\n  - id: sg-a\n    ingress:\n      \
         - {protocol: tcp, ports: 80-443, source: 192.0.2.0/24, description: a}\n      \
         - {protocol: tcp, ports: 400-500, source: 192.0.2.0/24, description: b}\n      \
         - {protocol: tcp, ports: 443, source: self, description: c}\n    \
         egress:\n      \
         - {protocol: tcp, ports: 443, destination: 192.0.2.10/32, description: d}\n",
        "SG006",
    );
    assert!(none.is_empty(), "{none:#?}");
}

#[test]
fn sg007_a_group_no_interface_carries_is_info() {
    let f = findings(&tiers(&["[sg-all, sg-web]"]), "SG007");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].subject, "sg-db");
    assert_eq!(f[0].severity, Severity::Info);

    // Every group attached; a file of groups only attaches nothing by design.
    let none = findings(&tiers(&["[sg-all, sg-web]", "[sg-db]"]), "SG007");
    assert!(none.is_empty(), "{none:#?}");
    let none = findings("security_groups:\n  - id: sg-a\n", "SG007");
    assert!(none.is_empty(), "{none:#?}");
}

#[test]
fn sg008_rules_with_zero_packets_on_the_live_policy_carry_the_age() {
    let l = load_str(
        &ingress(
            "      - {protocol: tcp, ports: 22, source: 192.0.2.0/24, description: a}\n\
             \x20     - {protocol: tcp, ports: 80, source: 192.0.2.0/24, description: b}\n",
        ),
        "t.yaml",
    )
    .unwrap();
    let rules: Vec<_> = l.policy.groups.values().next().unwrap().ingress.clone();
    let counts = BTreeMap::from([(rules[0].id.clone(), 0), (rules[1].id.clone(), 5)]);
    let f = matched_nothing(&l.policy, &counts, 3 * 3600 + 120);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].id, "SG008");
    assert_eq!(f[0].subject, rules[0].id.to_string());
    assert!(f[0].why.contains("3h 2m"), "{}", f[0].why);

    // The default egress (D2) carried nothing either: AWS's implicit rules are not reported.
    let egress = &l.policy.groups.values().next().unwrap().egress;
    assert_eq!(egress.len(), 2);
    let mut idle = counts.clone();
    idle.extend(egress.iter().map(|r| (r.id.clone(), 0)));
    assert_eq!(matched_nothing(&l.policy, &idle, 60).len(), 1);

    // Traffic on every rule, or no counter known (not enforced): nothing.
    let busy = BTreeMap::from([(rules[0].id.clone(), 1), (rules[1].id.clone(), 5)]);
    assert!(matched_nothing(&l.policy, &busy, 60).is_empty());
    assert!(matched_nothing(&l.policy, &BTreeMap::new(), 60).is_empty());
}

#[test]
fn ages_read_in_the_two_largest_units() {
    assert_eq!(age(12), "12s");
    assert_eq!(age(7 * 60 + 3), "7m 3s");
    assert_eq!(age(2 * 3600 + 5 * 60), "2h 5m");
    assert_eq!(age(3 * 86400 + 4 * 3600 + 9), "3d 4h");
}

#[test]
fn severities_order_for_fail_on() {
    assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Error);
}
