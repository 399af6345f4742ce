//! Network ACLs and subnets as policy input (SEMANTICS.md "Network ACLs", A1-A27): the
//! native keys, `describe-network-acls` JSON and CloudFormation, validated by the one
//! validator with located errors. One test (or table) per A id it can check before any
//! packet flows; the three formats load the same NACLs into the same policy.

use sg_agent::config::{Diagnostics, Format, Loaded, load_str};
use sg_agent::policy::{
    IcmpMatch, NaclAction, NaclEntry, NaclId, NetworkAcl, Policy, PortRange, Protocol, Subnet,
    SubnetId,
};

fn load(text: &str) -> Loaded {
    load_str(text, "t.yaml").unwrap_or_else(|e| panic!("must load:\n{e}\n--- input ---\n{text}"))
}

fn fail(text: &str) -> Diagnostics {
    match load_str(text, "t.yaml") {
        Ok(_) => panic!("must fail:\n{text}"),
        Err(e) => e,
    }
}

/// The rendered errors (`t.yaml:L:C: error: ...\n  at: ...\n  hint: ...`).
fn errors(text: &str) -> Vec<String> {
    fail(text).errors().map(ToString::to_string).collect()
}

/// Asserts that one error contains every fragment.
fn assert_error(text: &str, fragments: &[&str]) {
    let all = errors(text);
    assert!(
        all.iter().any(|e| fragments.iter().all(|f| e.contains(f))),
        "no error has all of {fragments:?}; errors:\n{}",
        all.join("\n")
    );
}

fn warnings(l: &Loaded) -> Vec<String> {
    l.warnings.iter().map(ToString::to_string).collect()
}

fn acl<'a>(p: &'a Policy, id: &str) -> &'a NetworkAcl {
    p.network_acls
        .get(&NaclId(id.into()))
        .unwrap_or_else(|| panic!("network ACL {id} missing"))
}

/// (number, action, protocol, cidr) of a list: what decides verdicts.
fn shape(es: &[NaclEntry]) -> Vec<(u16, NaclAction, Protocol, String)> {
    es.iter()
        .map(|e| (e.number, e.action, e.protocol, e.cidr.to_string()))
        .collect()
}

/// A default list's entry in [`shape`]'s terms: rule `n` allows all traffic from `cidr`.
fn all(n: u16, cidr: &str) -> (u16, NaclAction, Protocol, String) {
    (n, NaclAction::Allow, Protocol::All, cidr.to_string())
}

/// A native policy with one NACL `acl-a` whose inbound entries follow (from line 4), and a
/// subnet using it.
fn inbound(entries: &str) -> String {
    format!(
        "network_acls:\n  - id: acl-a\n    inbound:\n{entries}subnets:\n  - {{id: subnet-a, cidr: 198.51.100.0/24, ipv6_cidr: \"2001:db8:1::/64\", network_acl: acl-a}}\n"
    )
}

fn first_inbound(entries: &str) -> NaclEntry {
    let l = load(&inbound(entries));
    acl(&l.policy, "acl-a").inbound[0].clone()
}

const ALL_V4: &str = "0.0.0.0/0";

#[test]
fn a3_rule_numbers_are_1_to_32766_and_32767_up_is_reserved() {
    assert_eq!(
        first_inbound("      - {number: 32766, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n")
            .number,
        32766
    );
    assert_eq!(
        first_inbound("      - {number: 1, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n").number,
        1
    );
    assert_error(
        &inbound("      - {number: 32767, action: deny, protocol: -1, cidr: 0.0.0.0/0}\n"),
        &[
            "t.yaml:4:18: error: rule number 32767 is reserved: 32767-65535 belong to AWS (A3)",
            "at: network_acls[0].inbound[0].number",
            "hint: use a number from 1 to 32766",
        ],
    );
    assert_error(
        &inbound("      - {number: 0, action: deny, protocol: -1, cidr: 0.0.0.0/0}\n"),
        &["rule number 0 is outside 1-32766 (A3)"],
    );
    assert_error(
        &inbound("      - {number: 70000, action: deny, protocol: -1, cidr: 0.0.0.0/0}\n"),
        &["rule number 70000 is outside 1-32766 (A3)"],
    );
}

#[test]
fn a4_lists_are_sorted_by_number_in_the_policy() {
    let l = load(&inbound(
        "      - {number: 300, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n      - {number: 100, action: deny, protocol: -1, cidr: 203.0.113.0/24}\n      - {number: 200, action: allow, protocol: -1, cidr: \"::/0\"}\n",
    ));
    let numbers: Vec<u16> = acl(&l.policy, "acl-a")
        .inbound
        .iter()
        .map(|e| e.number)
        .collect();
    assert_eq!(numbers, [100, 200, 300]);
}

#[test]
fn a5_each_entry_allows_or_denies() {
    let e = first_inbound("      - {number: 1, action: DENY, protocol: -1, cidr: 0.0.0.0/0}\n");
    assert_eq!(e.action, NaclAction::Deny);
    assert_error(
        &inbound("      - {number: 1, action: permit, protocol: -1, cidr: 0.0.0.0/0}\n"),
        &[
            "`permit` is not a rule action (A5)",
            "hint: a network ACL entry allows or denies",
        ],
    );
    assert_error(
        &inbound("      - {number: 1, protocol: -1, cidr: 0.0.0.0/0}\n"),
        &["a network ACL entry needs a `action`"],
    );
}

#[test]
fn a6_the_star_rules_are_never_in_the_lists_and_describe_drops_them() {
    // Native: the lists hold what was written; the `*` rule cannot be written (A3).
    let l = load(&inbound(
        "      - {number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n",
    ));
    assert_eq!(acl(&l.policy, "acl-a").inbound.len(), 1);
    // describe-network-acls shows them: they are dropped.
    let l = load(DESCRIBE);
    let a = acl(&l.policy, "acl-0a1b2c3d4e5f60718");
    assert!(
        a.inbound
            .iter()
            .chain(&a.outbound)
            .all(|e| e.number <= 32766)
    );
    // A `*` rule that is not deny-all is not the `*` rule AWS shows: refused.
    let edited = DESCRIBE.replace(
        r#""Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767, "Egress": false"#,
        r#""Protocol": "-1", "RuleAction": "allow", "RuleNumber": 32767, "Egress": false"#,
    );
    assert_ne!(edited, DESCRIBE);
    assert_error(
        &edited,
        &[
            "entry 32767 is the `*` rule, which denies all traffic from 0.0.0.0/0; this one is allow -1 0.0.0.0/0 (A6)",
            "hint: the `*` rule cannot be changed",
        ],
    );
}

#[test]
fn a7_a_number_is_unique_per_nacl_and_direction_across_both_families() {
    assert_error(
        &inbound(
            "      - {number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n      - {number: 100, action: allow, protocol: -1, cidr: \"::/0\"}\n",
        ),
        &[
            "t.yaml:5:18: error: rule number 100 is used twice in the inbound list of network ACL acl-a (first at line 4, column 18) (A7)",
            "IPv4 and IPv6 entries alike",
        ],
    );
    // The same number in the other direction, or in another NACL, is another rule.
    let l = load(
        "network_acls:\n  - id: acl-a\n    inbound: [{number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}]\n    outbound: [{number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}]\n  - id: acl-b\n    inbound: [{number: 100, action: deny, protocol: -1, cidr: 0.0.0.0/0}]\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, network_acl: acl-a}\n  - {id: subnet-b, cidr: 198.51.100.128/25, network_acl: acl-b}\n",
    );
    assert_eq!(
        l.policy.network_acls.len(),
        3,
        "acl-a, acl-b and the default"
    );
}

#[test]
fn a10_ipv6_adds_the_101_rule_only_to_a_default_list_never_modified() {
    // The VPC has IPv6 (a subnet has an IPv6 CIDR); the default NACL's inbound list was
    // modified (written), its outbound list never was: only the outbound one gets 101 ::/0.
    let l = load(
        "network_acls:\n  - id: acl-main\n    default: true\n    inbound: [{number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}]\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, ipv6_cidr: \"2001:db8:1::/64\"}\n",
    );
    let d = acl(&l.policy, "acl-main");
    assert_eq!(shape(&d.inbound), vec![all(100, ALL_V4)]);
    assert_eq!(shape(&d.outbound), vec![all(100, ALL_V4), all(101, "::/0")]);
    // A custom NACL never gets it (A11: it denies all until rules are added).
    let l = load(
        "network_acls:\n  - {id: acl-custom}\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, ipv6_cidr: \"2001:db8:1::/64\", network_acl: acl-custom}\n",
    );
    let c = acl(&l.policy, "acl-custom");
    assert!(c.inbound.is_empty() && c.outbound.is_empty());
}

#[test]
fn a9_the_default_nacl_is_modelled_when_subnets_name_none() {
    // No NACL at all: acl-default with 100 (IPv4) and, a subnet having IPv6, 101 (IPv6).
    let l = load(
        "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, ipv6_cidr: \"2001:db8:1::/64\"}\n  - {id: subnet-b, cidr: 198.51.100.128/25}\n",
    );
    let d = acl(&l.policy, "acl-default");
    assert!(d.is_default);
    let want = vec![all(100, ALL_V4), all(101, "::/0")];
    assert_eq!(shape(&d.inbound), want);
    assert_eq!(shape(&d.outbound), want);
    assert!(
        l.policy
            .subnets
            .iter()
            .all(|s| s.network_acl.as_str() == "acl-default")
    );
    // Without IPv6 subnets: 100 only.
    let l = load("subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25}\n");
    assert_eq!(
        shape(&acl(&l.policy, "acl-default").inbound),
        vec![all(100, ALL_V4)]
    );
    // A default NACL given with one list omitted gets A9's entries for that list only.
    let l = load(
        "network_acls:\n  - id: acl-main\n    default: true\n    inbound: [{number: 5, action: deny, protocol: -1, cidr: 203.0.113.0/24}]\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25}\n",
    );
    assert_eq!(l.policy.network_acls.len(), 1, "no second default");
    let d = acl(&l.policy, "acl-main");
    assert_eq!(
        shape(&d.inbound),
        vec![(5, NaclAction::Deny, Protocol::All, "203.0.113.0/24".into())]
    );
    assert_eq!(shape(&d.outbound), vec![all(100, ALL_V4)]);
    assert_eq!(l.policy.subnets[0].network_acl.as_str(), "acl-main");
    // At most one default.
    assert_error(
        "network_acls:\n  - {id: acl-a, default: true}\n  - {id: acl-b, default: true}\n",
        &["network ACLs acl-a and acl-b are both the default one (A9)"],
    );
    // The modelled default's id is taken only by the default.
    assert_error(
        "network_acls:\n  - {id: acl-default}\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25}\n",
        &["acl-default is the id of the default network ACL"],
    );
}

#[test]
fn a11_a_custom_nacl_without_entries_denies_everything() {
    let l = load(
        "network_acls:\n  - id: acl-a\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, network_acl: acl-a}\n",
    );
    let a = acl(&l.policy, "acl-a");
    assert!(!a.is_default);
    assert!(a.inbound.is_empty() && a.outbound.is_empty());
    assert_error(
        "network_acls:\n  - id: acl-a\n    inbound:\n",
        &["`inbound` is empty (null)", "A11"],
    );
}

#[test]
fn a12_every_subnet_has_one_nacl_its_cidrs_and_an_id_of_its_own() {
    let l = load(&inbound(
        "      - {number: 1, action: allow, protocol: -1, cidr: 0.0.0.0/0}\n",
    ));
    assert_eq!(
        l.policy.subnets,
        vec![Subnet {
            id: SubnetId("subnet-a".into()),
            cidrs: vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8:1::/64".parse().unwrap()
            ],
            network_acl: NaclId("acl-a".into()),
            router_device: None,
            origin: l.policy.subnets[0].origin.clone(),
        }]
    );
    let cases: &[(&str, &[&str])] = &[
        (
            "network_acls: [{id: acl-web}]\nsubnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, network_acl: acl-wbe}\n",
            &[
                "t.yaml:3:56: error: network ACL acl-wbe is not defined",
                "at: subnets[0].network_acl",
                "hint: did you mean acl-web?",
            ],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25}\n  - {id: subnet-a, cidr: 198.51.100.128/25}\n",
            &["subnet subnet-a is defined twice (first at line 2, column 10)"],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/24}\n  - {id: subnet-b, cidr: 198.51.100.128/25}\n",
            &[
                "subnet subnet-b's CIDR 198.51.100.128/25 overlaps 198.51.100.0/24 of subnet subnet-a (line 2, column 26)",
                "never overlap",
            ],
        ),
        (
            "subnets:\n  - {id: subnet-a, ipv6_cidr: \"2001:db8:1::/64\"}\n",
            &["subnet subnet-a has no IPv4 CIDR (A12)"],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: \"2001:db8:1::/64\"}\n",
            &["2001:db8:1::/64 is an IPv6 CIDR where an IPv4 CIDR is expected"],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, ipv6_cidr: 198.51.100.128/25}\n",
            &["198.51.100.128/25 is an IPv4 CIDR where an IPv6 CIDR is expected"],
        ),
        (
            "subnets:\n  - {id: web, cidr: 198.51.100.0/25}\n",
            &["`web` is not a subnet id"],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, router_device: \"a b\"}\n",
            &["`a b` is not a Linux interface name"],
        ),
        (
            "network_acls: [{id: nacl-a}]\n",
            &["`nacl-a` is not a network ACL id"],
        ),
        (
            "network_acls: [{id: acl-a}, {id: acl-a}]\n",
            &["network ACL acl-a is defined twice"],
        ),
        (
            "subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, nacl: acl-a}\n",
            &[
                "unknown field `nacl` in a subnet",
                "write `network_acl: acl-...`",
            ],
        ),
    ];
    for (text, fragments) in cases {
        assert_error(text, fragments);
    }
    // A NACL no subnet uses: a warning, not an error.
    let l = load("network_acls: [{id: acl-a}]\n");
    assert!(
        warnings(&l)
            .iter()
            .any(|w| w.contains("network ACL acl-a is associated with no subnet")),
        "{:?}",
        warnings(&l)
    );
    // The router's device facing the subnet.
    let l = load("subnets:\n  - {id: subnet-a, cidr: 198.51.100.0/25, router_device: r-web}\n");
    assert_eq!(l.policy.subnets[0].router_device.as_deref(), Some("r-web"));
}

#[test]
fn a17_protocol_all_and_other_numbers_match_every_port() {
    let e = |text: &str| first_inbound(&format!("      - {text}\n"));
    let all = e("{number: 1, action: allow, protocol: -1, ports: 22, cidr: 0.0.0.0/0}");
    assert_eq!(all.protocol, Protocol::All);
    assert_eq!(
        e("{number: 1, action: allow, protocol: gre, cidr: 0.0.0.0/0}").protocol,
        Protocol::Number(47)
    );
    assert_eq!(
        e("{number: 1, action: allow, protocol: 47, ports: 1-2, cidr: 0.0.0.0/0}").protocol,
        Protocol::Number(47)
    );
    // 58 with an IPv4 CIDR: every ICMPv6 packet, whatever type is given.
    assert_eq!(
        e("{number: 1, action: allow, protocol: 58, cidr: 0.0.0.0/0}").protocol,
        Protocol::Number(58)
    );
    assert_eq!(
        e("{number: 1, action: allow, protocol: 6, ports: 443, cidr: 0.0.0.0/0}").protocol,
        Protocol::Tcp(PortRange { from: 443, to: 443 })
    );
    // The ignored ports are worth a warning.
    let l = load(&inbound(
        "      - {number: 1, action: allow, protocol: -1, ports: 22, cidr: 0.0.0.0/0}\n",
    ));
    assert!(
        warnings(&l).iter().any(|w| w.contains(
            "the port range or ICMP type is ignored: protocol all (-1) matches all of its traffic (A17)"
        )),
        "{:?}",
        warnings(&l)
    );
    assert_error(
        &inbound("      - {number: 1, action: allow, protocol: 256, cidr: 0.0.0.0/0}\n"),
        &["protocol number 256 is outside 0-255"],
    );
}

#[test]
fn a18_tcp_and_udp_entries_need_a_port_range() {
    assert_eq!(
        first_inbound(
            "      - {number: 1, action: allow, protocol: udp, ports: 1024-65535, cidr: 0.0.0.0/0}\n"
        )
        .protocol,
        Protocol::Udp(PortRange {
            from: 1024,
            to: 65535
        })
    );
    assert_error(
        &inbound("      - {number: 1, action: allow, protocol: tcp, cidr: 0.0.0.0/0}\n"),
        &[
            "t.yaml:4:9: error: a tcp network ACL entry needs a port range (A18)",
            "at: network_acls[0].inbound[0]",
            "ephemeral ports",
        ],
    );
    assert_error(
        &inbound(
            "      - {number: 1, action: allow, protocol: tcp, ports: 65535-1024, cidr: 0.0.0.0/0}\n",
        ),
        &["the port range 65535-1024 is reversed (A18)"],
    );
    assert_error(
        &inbound(
            "      - {number: 1, action: allow, protocol: tcp, ports: {from: 1, to: 70000}, cidr: 0.0.0.0/0}\n",
        ),
        &["port 70000 is outside 0-65535 (A18)"],
    );
}

#[test]
fn a19_icmp_entries_need_a_type_and_a_code() {
    let e = |text: &str| first_inbound(&format!("      - {text}\n")).protocol;
    assert_eq!(
        e("{number: 1, action: allow, protocol: icmp, type: 3, code: 4, cidr: 0.0.0.0/0}"),
        Protocol::Icmp(IcmpMatch::TypeCode(3, 4))
    );
    assert_eq!(
        e("{number: 1, action: allow, protocol: 1, type: -1, code: -1, cidr: 0.0.0.0/0}"),
        Protocol::Icmp(IcmpMatch::All)
    );
    assert_eq!(
        e("{number: 1, action: allow, protocol: 58, type: 2, code: -1, cidr: \"::/0\"}"),
        Protocol::Icmpv6(IcmpMatch::Type(2))
    );
    assert_error(
        &inbound("      - {number: 1, action: allow, protocol: icmp, type: 8, cidr: 0.0.0.0/0}\n"),
        &[
            "an icmp network ACL entry needs an ICMP type and code (A19)",
            "-1 means every type or code",
        ],
    );
    assert_error(
        &inbound("      - {number: 1, action: allow, protocol: 58, cidr: \"::/0\"}\n"),
        &["an icmpv6 network ACL entry needs an ICMP type and code (A19)"],
    );
    assert_error(
        &inbound(
            "      - {number: 1, action: allow, protocol: icmp, type: 300, code: 0, cidr: 0.0.0.0/0}\n",
        ),
        &["ICMP type 300 is outside -1..255 (A19)"],
    );
}

#[test]
fn a20_cidrs_are_canonicalised() {
    let l = load(&inbound(
        "      - {number: 1, action: deny, protocol: -1, cidr: 203.0.113.77/24}\n",
    ));
    assert_eq!(
        acl(&l.policy, "acl-a").inbound[0].cidr.to_string(),
        "203.0.113.0/24"
    );
    assert!(
        warnings(&l)
            .iter()
            .any(|w| w.contains("`203.0.113.77/24` has host bits set; using 203.0.113.0/24 (A20)"))
    );
    assert_error(
        &inbound("      - {number: 1, action: deny, protocol: -1, cidr: 203.0.113.7}\n"),
        &["`203.0.113.7` is an address, not a CIDR", "203.0.113.7/32"],
    );
}

/// `n` numbered IPv4 entries (and `n6` IPv6 ones) in one inbound list.
fn numbered(n: u16, n6: u16) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&format!(
            "      - {{number: {i}, action: allow, protocol: -1, cidr: 0.0.0.0/0}}\n"
        ));
    }
    for i in 1..=n6 {
        s.push_str(&format!(
            "      - {{number: {}, action: allow, protocol: -1, cidr: \"::/0\"}}\n",
            1000 + i
        ));
    }
    s
}

#[test]
fn a24_twenty_rules_per_list_and_family_including_the_star_rule() {
    // 19 numbered + `*` = 20 per family: both families full at once is fine.
    let l = load(&inbound(&numbered(19, 19)));
    assert_eq!(acl(&l.policy, "acl-a").inbound.len(), 38);
    assert_error(
        &inbound(&numbered(20, 0)),
        &[
            "t.yaml:4:7: error: network ACL acl-a has 20 IPv4 inbound entries and the `*` rule: 21, above the limit of 20 per network ACL, direction and family (A24)",
            "hint: remove entries, or raise quotas.nacl_rules_per_list",
        ],
    );
    // The quota is adjustable (AWS: to 40; sg lets a lab go further).
    let raised = format!(
        "quotas: {{nacl_rules_per_list: 40}}\n{}",
        inbound(&numbered(39, 0))
    );
    assert_eq!(load(&raised).policy.quotas.nacl_rules_per_list, 40);
    assert_error(
        &format!(
            "quotas: {{nacl_rules_per_list: 40}}\n{}",
            inbound(&numbered(40, 0))
        ),
        &["40 IPv4 inbound entries and the `*` rule: 41, above the limit of 40"],
    );
    assert_error(
        "quotas: {nacl_rules_per_list: 0}\nnetwork_acls: []\n",
        &["nacl_rules_per_list 0 is outside 1..32767"],
    );
    // 200 NACLs per VPC.
    let mut many = String::from("network_acls:\n");
    for i in 0..201 {
        many.push_str(&format!("  - {{id: acl-{i}}}\n"));
    }
    assert_error(
        &many,
        &["the policy has 201 network ACLs; the limit is 200 per VPC (A24)"],
    );
}

/// The same VPC in the three formats: a default NACL, a custom one for the web subnet, the
/// database subnet left with the default.
const NATIVE: &str = r#"
network_acls:
  - id: acl-0a1b2c3d4e5f60718
    default: true
    inbound:
      - {number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}
      - {number: 101, action: allow, protocol: -1, cidr: "::/0"}
    outbound:
      - {number: 100, action: allow, protocol: -1, cidr: 0.0.0.0/0}
      - {number: 101, action: allow, protocol: -1, cidr: "::/0"}
  - id: acl-web
    inbound:
      - {number: 100, action: allow, protocol: tcp, ports: 443, cidr: 0.0.0.0/0}
      - {number: 110, action: allow, protocol: tcp, ports: 1024-65535, cidr: 0.0.0.0/0}
      - {number: 120, action: deny, protocol: -1, cidr: 203.0.113.0/24}
      - {number: 130, action: allow, protocol: icmpv6, type: 2, code: 0, cidr: "2001:db8::/32"}
      - {number: 140, action: allow, protocol: icmp, type: 3, code: 4, cidr: 0.0.0.0/0}
    outbound:
      - {number: 100, action: allow, protocol: tcp, ports: 1024-65535, cidr: 0.0.0.0/0}
      - {number: 110, action: allow, protocol: udp, ports: 53, cidr: 198.51.100.0/24}
subnets:
  - id: subnet-web
    cidr: 198.51.100.0/25
    ipv6_cidr: "2001:db8:1::/64"
    network_acl: acl-web
  - id: subnet-db
    cidr: 198.51.100.128/25
"#;

const DESCRIBE: &str = r#"{
  "NetworkAcls": [
    {
      "Associations": [
        {"NetworkAclAssociationId": "aclassoc-01", "NetworkAclId": "acl-0a1b2c3d4e5f60718", "SubnetId": "subnet-db"}
      ],
      "Entries": [
        {"CidrBlock": "0.0.0.0/0", "Egress": true, "Protocol": "-1", "RuleAction": "allow", "RuleNumber": 100},
        {"Ipv6CidrBlock": "::/0", "Egress": true, "Protocol": "-1", "RuleAction": "allow", "RuleNumber": 101},
        {"CidrBlock": "0.0.0.0/0", "Egress": true, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767},
        {"Ipv6CidrBlock": "::/0", "Egress": true, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32768},
        {"CidrBlock": "0.0.0.0/0", "Egress": false, "Protocol": "-1", "RuleAction": "allow", "RuleNumber": 100},
        {"Ipv6CidrBlock": "::/0", "Egress": false, "Protocol": "-1", "RuleAction": "allow", "RuleNumber": 101},
        {"CidrBlock": "0.0.0.0/0", "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767, "Egress": false},
        {"Ipv6CidrBlock": "::/0", "Egress": false, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32768}
      ],
      "IsDefault": true,
      "NetworkAclId": "acl-0a1b2c3d4e5f60718",
      "Tags": [],
      "VpcId": "vpc-0a1b2c3d",
      "OwnerId": "111122223333"
    },
    {
      "Associations": [
        {"NetworkAclAssociationId": "aclassoc-02", "NetworkAclId": "acl-web", "SubnetId": "subnet-web"}
      ],
      "Entries": [
        {"CidrBlock": "0.0.0.0/0", "Egress": true, "PortRange": {"From": 1024, "To": 65535}, "Protocol": "6", "RuleAction": "allow", "RuleNumber": 100},
        {"CidrBlock": "198.51.100.0/24", "Egress": true, "PortRange": {"From": 53, "To": 53}, "Protocol": "17", "RuleAction": "allow", "RuleNumber": 110},
        {"CidrBlock": "0.0.0.0/0", "Egress": true, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767},
        {"Ipv6CidrBlock": "::/0", "Egress": true, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32768},
        {"CidrBlock": "0.0.0.0/0", "Egress": false, "PortRange": {"From": 443, "To": 443}, "Protocol": "6", "RuleAction": "allow", "RuleNumber": 100},
        {"CidrBlock": "0.0.0.0/0", "Egress": false, "PortRange": {"From": 1024, "To": 65535}, "Protocol": "6", "RuleAction": "allow", "RuleNumber": 110},
        {"CidrBlock": "203.0.113.0/24", "Egress": false, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 120},
        {"Ipv6CidrBlock": "2001:db8::/32", "Egress": false, "IcmpTypeCode": {"Code": 0, "Type": 2}, "Protocol": "58", "RuleAction": "allow", "RuleNumber": 130},
        {"CidrBlock": "0.0.0.0/0", "Egress": false, "IcmpTypeCode": {"Code": 4, "Type": 3}, "Protocol": "1", "RuleAction": "allow", "RuleNumber": 140},
        {"CidrBlock": "0.0.0.0/0", "Egress": false, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767},
        {"Ipv6CidrBlock": "::/0", "Egress": false, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32768}
      ],
      "IsDefault": false,
      "NetworkAclId": "acl-web",
      "Tags": [{"Key": "Name", "Value": "web"}],
      "VpcId": "vpc-0a1b2c3d",
      "OwnerId": "111122223333"
    }
  ],
  "Subnets": [
    {"SubnetId": "subnet-web", "CidrBlock": "198.51.100.0/25", "VpcId": "vpc-0a1b2c3d", "State": "available",
     "Ipv6CidrBlockAssociationSet": [{"AssociationId": "subnet-cidr-assoc-01", "Ipv6CidrBlock": "2001:db8:1::/64", "Ipv6CidrBlockState": {"State": "associated"}}]},
    {"SubnetId": "subnet-db", "CidrBlock": "198.51.100.128/25", "VpcId": "vpc-0a1b2c3d", "State": "available",
     "Ipv6CidrBlockAssociationSet": []}
  ]
}"#;

/// The template names the default NACL `acl-0a1b2c3d4e5f60718`? It cannot: the VPC's default
/// NACL is not a resource. So the twin gives the default entries to no NACL and compares
/// the custom one and the subnets; the modelled default is checked on its own.
const CFN: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Vpc:
    Type: AWS::EC2::VPC
    Properties: {CidrBlock: 198.51.100.0/24}
  WebAcl:
    Type: AWS::EC2::NetworkAcl
    Properties:
      VpcId: !Ref Vpc
      Tags: [{Key: Name, Value: acl-web}]
  In100:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 100, Protocol: 6, RuleAction: allow, CidrBlock: 0.0.0.0/0, PortRange: {From: 443, To: 443}}
  In110:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 110, Protocol: 6, RuleAction: allow, Egress: false, CidrBlock: 0.0.0.0/0, PortRange: {From: 1024, To: 65535}}
  In120:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 120, Protocol: -1, RuleAction: deny, CidrBlock: 203.0.113.0/24}
  In130:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 130, Protocol: 58, RuleAction: allow, Ipv6CidrBlock: "2001:db8::/32", Icmp: {Type: 2, Code: 0}}
  In140:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 140, Protocol: 1, RuleAction: allow, CidrBlock: 0.0.0.0/0, Icmp: {Type: 3, Code: 4}}
  Out100:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 100, Protocol: 6, RuleAction: allow, Egress: true, CidrBlock: 0.0.0.0/0, PortRange: {From: 1024, To: 65535}}
  Out110:
    Type: AWS::EC2::NetworkAclEntry
    Properties: {NetworkAclId: !Ref WebAcl, RuleNumber: 110, Protocol: 17, RuleAction: allow, Egress: "true", CidrBlock: 198.51.100.0/24, PortRange: {From: 53, To: 53}}
  WebSubnet:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: !Select [0, !Cidr ["198.51.100.0/24", 2, 7]]
      Ipv6CidrBlock: "2001:db8:1::/64"
      Tags: [{Key: Name, Value: subnet-web}]
  DbSubnet:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: 198.51.100.128/25
      Tags: [{Key: Name, Value: subnet-db}]
  WebAssociation:
    Type: AWS::EC2::SubnetNetworkAclAssociation
    Properties: {SubnetId: !Ref WebSubnet, NetworkAclId: !Ref WebAcl}
"#;

/// The NACLs and subnets without their origins: what the three formats must agree on.
fn comparable(p: &Policy) -> (Vec<NetworkAcl>, Vec<Subnet>) {
    let strip = |es: &[NaclEntry]| {
        es.iter()
            .map(|e| NaclEntry {
                origin: Default::default(),
                ..e.clone()
            })
            .collect::<Vec<_>>()
    };
    let acls = p
        .network_acls
        .values()
        .map(|a| NetworkAcl {
            inbound: strip(&a.inbound),
            outbound: strip(&a.outbound),
            origin: Default::default(),
            ..a.clone()
        })
        .collect();
    let subnets = p
        .subnets
        .iter()
        .map(|s| Subnet {
            origin: Default::default(),
            ..s.clone()
        })
        .collect();
    (acls, subnets)
}

#[test]
fn the_same_nacls_load_alike_from_native_describe_and_cloudformation() {
    let native = load(NATIVE);
    let describe = load_str(DESCRIBE, "t.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(native.format, Format::Native);
    assert_eq!(describe.format, Format::DescribeJson);
    assert_eq!(comparable(&native.policy), comparable(&describe.policy));
    assert!(native.warnings.is_empty(), "{:?}", warnings(&native));

    // CloudFormation cannot name the VPC's default NACL: it is modelled (A9) as acl-default
    // with the same entries (the web subnet has IPv6, so 101 too).
    let cfn = load_str(CFN, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfn.format, Format::CloudFormation);
    let renamed = NATIVE.replace("acl-0a1b2c3d4e5f60718", "acl-default");
    assert_eq!(comparable(&cfn.policy), comparable(&load(&renamed).policy));
    let web = acl(&cfn.policy, "acl-web");
    assert_eq!(
        shape(&web.inbound)[3],
        (
            130,
            NaclAction::Allow,
            Protocol::Icmpv6(IcmpMatch::TypeCode(2, 0)),
            "2001:db8::/32".into()
        )
    );
}

#[test]
fn describe_without_the_subnets_cidrs_says_where_to_get_them() {
    let no_subnets = {
        let cut = DESCRIBE.find(",\n  \"Subnets\"").unwrap();
        format!("{}\n}}", &DESCRIBE[..cut])
    };
    let e = errors(&no_subnets);
    assert!(
        e.iter().any(|e| e.contains(
            "subnet subnet-db is associated with network ACL acl-0a1b2c3d4e5f60718, but its CIDRs are not in this document"
        ) && e.contains("aws ec2 describe-subnets")),
        "{e:?}"
    );
}

#[test]
fn cloudformation_nacl_errors_are_located_in_the_template() {
    let bad = CFN.replace(
        "NetworkAclId: !Ref WebAcl, RuleNumber: 120",
        "NetworkAclId: !Ref WebAc, RuleNumber: 120",
    );
    assert_error(
        &bad,
        &[
            "Ref to WebAc, which is not defined in this template",
            "did you mean WebAcl?",
        ],
    );
    let bad = CFN.replace("RuleNumber: 140", "RuleNumber: 40000");
    assert_error(
        &bad,
        &[
            "rule number 40000 is reserved: 32767-65535 belong to AWS (A3)",
            "at: Resources.In140.Properties.RuleNumber",
        ],
    );
    let twice = format!(
        "{CFN}  WebAssociation2:\n    Type: AWS::EC2::SubnetNetworkAclAssociation\n    Properties: {{SubnetId: !Ref WebSubnet, NetworkAclId: !Ref WebAcl}}\n"
    );
    assert_error(
        &twice,
        &[
            "subnet subnet-web is associated with a second network ACL",
            "(A12)",
        ],
    );
}

#[test]
fn one_describe_document_may_hold_security_groups_network_acls_and_subnets() {
    let both = DESCRIBE.replacen(
        "{\n",
        r#"{
  "SecurityGroups": [
    {"GroupId": "sg-web", "GroupName": "web", "Description": "web",
     "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
     "IpPermissionsEgress": []}
  ],
"#,
        1,
    );
    let l = load_str(&both, "t.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.format, Format::DescribeJson);
    assert_eq!(l.policy.groups.len(), 1);
    assert_eq!(
        comparable(&l.policy),
        comparable(&load_str(DESCRIBE, "t.json").unwrap().policy)
    );
    let summary = l.summary();
    assert!(
        summary.contains("network ACLs: 2\n  acl-0a1b2c3d4e5f60718 (default): 2 inbound, 2 outbound entries (and the `*` rules)\n  acl-web: 5 inbound, 2 outbound entries"),
        "{summary}"
    );
    assert!(
        summary.contains("subnets: 2\n  subnet-db [198.51.100.128/25]: acl-0a1b2c3d4e5f60718\n  subnet-web [198.51.100.0/25, 2001:db8:1::/64]: acl-web"),
        "{summary}"
    );
}
