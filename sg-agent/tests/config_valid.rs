//! Valid inputs: every example loads, the seed article's examples produce exactly its rules,
//! the CloudFormation twin of the lab equals the native file, describe-security-groups JSON,
//! defaults (D1-D3), derived rule ids, and loading speed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sg_agent::config::{Format, Loaded, load_file, load_str};
use sg_agent::policy::{
    Direction, Family, Group, GroupId, IcmpMatch, Interface, Peer, Policy, PortRange, PrefixListId,
    Protocol, Rule, RuleId,
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn load_example(name: &str) -> Loaded {
    let path = examples().join(name);
    load_file(&path).unwrap_or_else(|e| panic!("{name} must load:\n{e}"))
}

fn load(text: &str) -> Loaded {
    load_str(text, "t.yaml").unwrap_or_else(|e| panic!("must load:\n{e}\n--- input ---\n{text}"))
}

fn group<'a>(p: &'a Policy, id: &str) -> &'a Group {
    p.groups
        .get(&GroupId(id.into()))
        .unwrap_or_else(|| panic!("group {id} missing"))
}

fn cidr(s: &str) -> Peer {
    Peer::Cidr(s.parse().unwrap())
}

fn gid(s: &str) -> Peer {
    Peer::Group(GroupId(s.into()))
}

fn tcp(from: u16, to: u16) -> Protocol {
    Protocol::Tcp(PortRange { from, to })
}

/// (protocol, peer, description) of a rule list, the part of a rule that decides verdicts.
fn shape(rules: &[Rule]) -> Vec<(Protocol, Peer, Option<String>)> {
    rules
        .iter()
        .map(|r| (r.protocol, r.peer.clone(), r.description.clone()))
        .collect()
}

/// (protocol, peer) of a rule list.
fn protocol_peer(rules: &[Rule]) -> Vec<(Protocol, Peer)> {
    rules.iter().map(|r| (r.protocol, r.peer.clone())).collect()
}

fn d2() -> Vec<(Protocol, Peer, Option<String>)> {
    vec![
        (Protocol::All, cidr("0.0.0.0/0"), None),
        (Protocol::All, cidr("::/0"), None),
    ]
}

#[test]
fn every_example_loads_with_its_detected_format() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".yaml") || name.ends_with(".json")) {
            continue;
        }
        let loaded = load_file(&path).unwrap_or_else(|e| panic!("{name} must load:\n{e}"));
        let want = if name.ends_with(".cfn.yaml") {
            Format::CloudFormation
        } else if name.ends_with(".json") {
            Format::DescribeJson
        } else {
            Format::Native
        };
        assert_eq!(loaded.format, want, "{name}");
        assert!(!loaded.policy.groups.is_empty(), "{name}");
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} examples found");
}

#[test]
fn seed_https_rule_is_exactly_the_articles_rule_with_its_id() {
    let l = load_example("seed-https.yaml");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let p = &l.policy;
    assert_eq!(p.groups.len(), 1);
    let g = group(p, "sg-0a1b2c3d");
    assert_eq!(g.ingress.len(), 1);
    let r = &g.ingress[0];
    assert_eq!(r.id, RuleId("sgr-0c1d2e3f4a5b6c7d8".into()));
    assert_eq!(r.group, GroupId("sg-0a1b2c3d".into()));
    assert_eq!(r.direction, Direction::Ingress);
    assert_eq!(r.protocol, tcp(443, 443));
    assert_eq!(r.peer, cidr("0.0.0.0/0"));
    assert_eq!(r.description.as_deref(), Some("Public HTTPS"));
    assert_eq!((r.origin.line, r.origin.column), (13, 9));
    // D2: the egress list is omitted.
    assert_eq!(shape(&g.egress), d2());
}

#[test]
fn seed_web_db_allows_mysql_from_the_web_group_only() {
    let l = load_example("seed-web-db.yaml");
    let p = &l.policy;
    let db = group(p, "sg-db");
    assert_eq!(
        shape(&db.ingress),
        [(
            tcp(3306, 3306),
            gid("sg-web"),
            Some("Allow web tier to DB".to_string())
        )]
    );
    assert!(
        group(p, "sg-web").ingress.is_empty(),
        "D1: no ingress unless given"
    );
    let web1 = p.interface("web-1").unwrap();
    assert_eq!(web1.groups, [GroupId("sg-web".into())]);
}

#[test]
fn seed_cloudformation_snippet_loads_as_is_and_warns_about_the_literal_sg_web() {
    let l = load_example("seed-web-db.cfn.yaml");
    assert_eq!(l.format, Format::CloudFormation);
    let p = &l.policy;
    // No GroupName: the logical id is the group id.
    let db = group(p, "DbSecurityGroup");
    assert_eq!(db.description, "Database tier");
    assert_eq!(
        shape(&db.ingress),
        [(
            tcp(3306, 3306),
            gid("sg-web"),
            Some("Allow web tier to DB".to_string())
        )]
    );
    assert_eq!(shape(&db.egress), d2(), "D2: SecurityGroupEgress omitted");
    // sg-web is defined elsewhere: an empty placeholder and one warning, located.
    let web = group(p, "sg-web");
    assert!(web.ingress.is_empty() && web.egress.is_empty());
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = l.warnings[0].to_string();
    assert!(w.contains("seed-web-db.cfn.yaml:11:34: warning: security group sg-web is not defined in this template"), "{w}");
    assert!(
        w.contains(
            "at: Resources.DbSecurityGroup.Properties.SecurityGroupIngress[0].SourceSecurityGroupId"
        ),
        "{w}"
    );
}

/// Everything but where it was written.
fn strip(p: &Policy) -> (Vec<(Group, Vec<Rule>)>, Vec<Interface>) {
    let groups = p
        .groups
        .values()
        .map(|g| {
            let mut rules: Vec<Rule> = g.ingress.iter().chain(&g.egress).cloned().collect();
            for r in &mut rules {
                r.origin = Default::default();
            }
            rules.sort_by(|a, b| a.id.cmp(&b.id));
            let mut g = g.clone();
            g.ingress.clear();
            g.egress.clear();
            g.origin = Default::default();
            (g, rules)
        })
        .collect();
    let ifaces = p
        .interfaces
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.origin = Default::default();
            i
        })
        .collect();
    (groups, ifaces)
}

#[test]
fn lab_cloudformation_twin_equals_the_native_lab() {
    let native = load_example("ec2-lab.yaml");
    let cfn = load_example("ec2-lab.cfn.yaml");
    assert_eq!(native.format, Format::Native);
    assert_eq!(cfn.format, Format::CloudFormation);
    assert!(native.warnings.is_empty(), "{:?}", native.warnings);
    // The VPC and the subnet are ignored, in one summary warning; nothing else is worth one.
    assert_eq!(cfn.warnings.len(), 1, "{:?}", cfn.warnings);
    assert_eq!(
        cfn.warnings[0].message,
        "2 resources of other types ignored (they do not change security groups): AWS::EC2::Subnet, AWS::EC2::VPC"
    );
    let (ng, ni) = strip(&native.policy);
    let (cg, ci) = strip(&cfn.policy);
    assert_eq!(ng, cg);
    assert_eq!(ni, ci);
    assert_eq!(native.policy.quotas, cfn.policy.quotas);
}

#[test]
fn lab_has_the_specified_rules_and_members() {
    let p = load_example("ec2-lab.yaml").policy;
    let web = group(&p, "sg-web");
    let my4 = cidr("198.51.100.10/32");
    let my6 = cidr("2001:db8:20::10/128");
    assert_eq!(
        protocol_peer(&web.ingress),
        [
            (tcp(443, 443), cidr("0.0.0.0/0")),
            (tcp(443, 443), cidr("::/0")),
            (tcp(22, 22), my4.clone()),
            (tcp(22, 22), my6.clone()),
            (Protocol::Icmp(IcmpMatch::Type(8)), my4),
            (Protocol::Icmpv6(IcmpMatch::Type(128)), my6),
        ]
    );
    let db = group(&p, "sg-db");
    assert_eq!(
        protocol_peer(&db.ingress),
        [
            (tcp(3306, 3306), gid("sg-web")),
            (Protocol::Icmp(IcmpMatch::Type(8)), gid("sg-web")),
            (Protocol::Icmpv6(IcmpMatch::Type(128)), gid("sg-web")),
        ]
    );
    for g in [web, db] {
        assert_eq!(shape(&g.egress), d2(), "{}: D2", g.id);
    }
    let members: Vec<(&str, Vec<IpAddr>, &str)> = p
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.addresses.clone(), i.groups[0].as_str()))
        .collect();
    let a = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        members,
        [
            (
                "web-1",
                vec![a("192.0.2.11"), a("2001:db8:10::11")],
                "sg-web"
            ),
            (
                "web-2",
                vec![a("192.0.2.12"), a("2001:db8:10::12")],
                "sg-web"
            ),
            ("db-1", vec![a("192.0.2.21"), a("2001:db8:10::21")], "sg-db"),
        ]
    );
}

#[test]
fn describe_json_expands_permissions_into_one_rule_per_peer() {
    let l = load_example("describe-security-groups.json");
    assert_eq!(l.format, Format::DescribeJson);
    let p = &l.policy;
    assert!(
        p.interfaces.is_empty(),
        "describe output carries no membership"
    );
    let web = group(p, "sg-0123456789abcdef0");
    assert_eq!(web.name, "web");
    assert_eq!(web.description, "Web tier");
    let pl = PrefixListId("pl-0a1b2c3d4e5f60718".into());
    assert_eq!(
        shape(&web.ingress),
        [
            (
                tcp(443, 443),
                cidr("0.0.0.0/0"),
                Some("Public HTTPS".to_string())
            ),
            (
                tcp(443, 443),
                cidr("::/0"),
                Some("Public HTTPS".to_string())
            ),
            (
                tcp(22, 22),
                cidr("198.51.100.10/32"),
                Some("SSH from my IP only".to_string())
            ),
            (
                tcp(22, 22),
                Peer::PrefixList(pl.clone()),
                Some("Office networks".to_string())
            ),
            (
                Protocol::Icmp(IcmpMatch::Type(8)),
                cidr("198.51.100.10/32"),
                Some("Ping from my IP".to_string())
            ),
        ]
    );
    assert_eq!(shape(&web.egress), d2());
    // The output shows egress as it is: an empty list is no egress (not D2).
    let db = group(p, "sg-0fedcba9876543210");
    assert!(db.egress.is_empty());
    assert_eq!(db.ingress[0].peer, gid("sg-0123456789abcdef0"));
    // The default group's self reference (D3 as AWS shows it).
    let def = group(p, "sg-0aaaabbbbccccdddd");
    assert_eq!(
        shape(&def.ingress),
        [(Protocol::All, gid("sg-0aaaabbbbccccdddd"), None)]
    );
    let office = &p.prefix_lists[&pl];
    assert_eq!(
        (office.family, office.max_entries, office.version),
        (Family::V4, 10, 3)
    );
    assert_eq!(office.entries.len(), 2);
}

const WEB: &str = "security_groups:\n  - id: sg-web\n";

/// Loads sg-web with the given ingress rule lines (each `      - {...}\n`).
fn load_web_ingress(rules: &str) -> Loaded {
    load(&format!("{WEB}    ingress:\n{rules}"))
}

/// The protocols of sg-web's ingress rules, in order, for the given rule lines.
fn web_ingress_protocols(rules: &str) -> Vec<Protocol> {
    let p = load_web_ingress(rules).policy;
    group(&p, "sg-web")
        .ingress
        .iter()
        .map(|r| r.protocol)
        .collect()
}

#[test]
fn d2_omitted_egress_allows_everything_and_explicit_empty_allows_nothing() {
    let p = load(&format!("{WEB}  - id: sg-closed\n    egress: []\n")).policy;
    assert_eq!(shape(&group(&p, "sg-web").egress), d2());
    assert!(group(&p, "sg-web").ingress.is_empty(), "D1");
    assert!(group(&p, "sg-closed").egress.is_empty());
}

#[test]
fn d3_default_group_admits_its_own_members_and_explicit_ingress_replaces_that() {
    let p = load(
        "security_groups:\n  - id: sg-def\n    default: true\n  - id: sg-def2\n    default: true\n    ingress: []\n",
    )
    .policy;
    let g = group(&p, "sg-def");
    assert_eq!(g.name, "default");
    assert_eq!(shape(&g.ingress), [(Protocol::All, gid("sg-def"), None)]);
    assert_eq!(shape(&g.egress), d2());
    assert!(group(&p, "sg-def2").ingress.is_empty());
}

#[test]
fn cloudformation_instance_without_groups_gets_the_vpc_default_group() {
    let l = load(
        "Resources:\n  Box:\n    Type: AWS::EC2::Instance\n    Properties:\n      PrivateIpAddress: 192.0.2.5\n",
    );
    let p = &l.policy;
    let i = p.interface("Box").unwrap();
    assert_eq!(i.groups, [GroupId("default".into())]);
    assert_eq!(
        shape(&group(p, "default").ingress),
        [(Protocol::All, gid("default"), None)]
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("VPC default group")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn derived_rule_ids_are_deterministic_content_hashes() {
    let text =
        format!("{WEB}    ingress:\n      - {{protocol: tcp, ports: 443, source: 0.0.0.0/0}}\n");
    let a = load(&text).policy;
    let b = load(&format!("# a comment moves every line\n{text}")).policy;
    let ra = &group(&a, "sg-web").ingress[0];
    let rb = &group(&b, "sg-web").ingress[0];
    assert_eq!(ra.id, rb.id, "ids do not depend on position");
    // sha256("sg-web|ingress|tcp:443-443|cidr:0.0.0.0/0"), computed independently
    // (python3 hashlib), first 17 hex digits.
    assert_eq!(ra.id.as_str(), "sgr-6ffedcc6e325157a8");
    // The D2 rule of the seed group: sha256("sg-0a1b2c3d|egress|all|cidr:0.0.0.0/0").
    let seed = load_example("seed-https.yaml").policy;
    assert_eq!(
        group(&seed, "sg-0a1b2c3d").egress[0].id.as_str(),
        "sgr-4c57ce48fd333fd10"
    );
    // Descriptions are not part of the identity; protocol spelling is normalised first.
    let c = load(&format!(
        "{WEB}    ingress:\n      - {{protocol: \"6\", ports: 443-443, source: 0.0.0.0/0, description: x}}\n"
    ))
    .policy;
    assert_eq!(group(&c, "sg-web").ingress[0].id, ra.id);
}

#[test]
fn every_rule_id_is_unique_and_well_formed() {
    let p = load_example("policy.yaml").policy;
    let mut ids: Vec<&str> = p.all_rules().map(|r| r.id.as_str()).collect();
    for id in &ids {
        assert!(id.len() == 21 && id.starts_with("sgr-"), "{id}");
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{id}"
        );
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn f1_f2_protocol_spellings_normalise() {
    let protos = web_ingress_protocols(
        "      - {protocol: \"17\", ports: 53, source: 192.0.2.0/24}\n      - {protocol: ICMPv6, source: \"::/0\"}\n      - {protocol: gre, source: 192.0.2.0/24}\n      - {protocol: \"-1\", source: self}\n      - {protocol: \"1\", type: -1, source: 192.0.2.0/24}\n",
    );
    assert_eq!(
        protos,
        [
            Protocol::Udp(PortRange { from: 53, to: 53 }),
            Protocol::Icmpv6(IcmpMatch::All),
            Protocol::Number(47),
            Protocol::All,
            Protocol::Icmp(IcmpMatch::All),
        ]
    );
}

#[test]
fn f2_ports_on_an_all_ports_protocol_are_ignored_with_a_warning() {
    let l = load_web_ingress("      - {protocol: esp, ports: 500, source: 192.0.2.0/24}\n");
    assert_eq!(
        group(&l.policy, "sg-web").ingress[0].protocol,
        Protocol::Number(50)
    );
    assert!(l.warnings[0].message.contains("F2"), "{:?}", l.warnings);
}

#[test]
fn f4_icmp_type_and_code() {
    let protos = web_ingress_protocols(
        "      - {protocol: icmp, type: 3, code: 4, source: 0.0.0.0/0}\n      - {protocol: icmp, type: 8, code: -1, source: 10.0.0.0/8}\n",
    );
    assert_eq!(
        protos,
        [
            Protocol::Icmp(IcmpMatch::TypeCode(3, 4)),
            Protocol::Icmp(IcmpMatch::Type(8))
        ]
    );
}

#[test]
fn f5_cidr_with_host_bits_is_canonicalised_with_a_located_warning() {
    let l = load_web_ingress("      - {protocol: tcp, ports: 22, source: 10.1.2.3/8}\n");
    assert_eq!(
        group(&l.policy, "sg-web").ingress[0].peer,
        cidr("10.0.0.0/8")
    );
    assert_eq!(l.warnings.len(), 1);
    let w = l.warnings[0].to_string();
    assert!(
        w.starts_with("t.yaml:4:44: warning: `10.1.2.3/8` has host bits set; using 10.0.0.0/8"),
        "{w}"
    );
}

#[test]
fn ports_forms_all_read_the_same() {
    let protos = web_ingress_protocols(
        "      - {protocol: tcp, ports: 1024-65535, source: 10.0.0.0/8}\n      - {protocol: tcp, ports: {from: 1024, to: 65535}, source: 10.0.0.1/32}\n      - {protocol: tcp, ports: all, source: 10.0.0.2/32}\n      - {protocol: udp, ports: \"53\", source: 10.0.0.3/32}\n",
    );
    assert_eq!(
        protos,
        [
            tcp(1024, 65535),
            tcp(1024, 65535),
            tcp(0, 65535),
            Protocol::Udp(PortRange { from: 53, to: 53 })
        ]
    );
}

#[test]
fn q1_counts_ipv4_and_ipv6_rules_apart() {
    // 60 IPv4 and 60 IPv6 ingress rules: within the default quota (Q1).
    let mut text = String::from(WEB);
    text.push_str("    ingress:\n");
    for i in 0..60 {
        text.push_str(&format!(
            "      - {{protocol: tcp, ports: {}, source: [10.0.0.0/8, \"2001:db8::/32\"]}}\n",
            1000 + i
        ));
    }
    let p = load(&text).policy;
    assert_eq!(group(&p, "sg-web").ingress.len(), 120);
}

#[test]
fn quotas_and_timeouts_apply_with_interface_overrides() {
    let l = load_example("policy.yaml");
    let p = &l.policy;
    assert_eq!(
        (
            p.quotas.rules_per_group,
            p.quotas.groups_per_interface,
            p.quotas.rules_per_interface
        ),
        (100, 10, 1000)
    );
    let web1 = p.interface("web-1").unwrap();
    assert_eq!(web1.device.as_deref(), Some("eth0"));
    assert_eq!(
        (
            web1.timeouts.tcp_established,
            web1.timeouts.udp_stream,
            web1.timeouts.udp_single
        ),
        (86400, 120, 30)
    );
    let db0 = p.interface("db-1/eth0").unwrap();
    assert_eq!(
        (db0.timeouts.tcp_established, db0.timeouts.udp_stream),
        (3600, 120)
    );
    let db1 = p.interface("db-1/eth1").unwrap();
    assert_eq!(
        (
            db1.timeouts.udp_single,
            db1.timeouts.udp_stream,
            db1.timeouts.tcp_established
        ),
        (60, 180, 86400)
    );
    assert_eq!(db1.device.as_deref(), Some("ens6"));
}

#[test]
fn native_policy_written_as_json_loads() {
    let l = load(
        r#"{"security_groups": [{"id": "sg-a", "ingress": [{"protocol": "tcp", "ports": 22, "source": ["192.0.2.0/24"]}]}]}"#,
    );
    assert_eq!(l.format, Format::Native);
    assert_eq!(group(&l.policy, "sg-a").ingress[0].protocol, tcp(22, 22));
}

#[test]
fn yaml_anchors_and_merge_keys_are_expanded() {
    // Top-level `x-` keys are ignored: a place for anchors.
    let l = load(
        "x-ssh: &ssh {protocol: tcp, ports: 22}\nsecurity_groups:\n  - id: sg-a\n    ingress:\n      - <<: *ssh\n        source: 192.0.2.0/24\n      - <<: *ssh\n        ports: 2222\n        source: 192.0.2.0/24\n",
    );
    let protos: Vec<Protocol> = group(&l.policy, "sg-a")
        .ingress
        .iter()
        .map(|r| r.protocol)
        .collect();
    assert_eq!(protos, [tcp(22, 22), tcp(2222, 2222)]);
}

#[test]
fn cloudformation_features_resolve() {
    let text = r#"
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Admins:
    Type: CommaDelimitedList
    Default: "sg-admins"
Resources:
  Office:
    Type: AWS::EC2::PrefixList
    Properties:
      PrefixListName: office
      AddressFamily: IPv4
      MaxEntries: 5
      Entries:
        - {Cidr: 203.0.113.0/28, Description: HQ}
  App:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: App tier
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: "8080", ToPort: "8080", SourcePrefixListId: !Ref Office}
        - {IpProtocol: "-1", SourceSecurityGroupId: !Ref App}
  AdminsGroup:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupName: sg-admins
      GroupDescription: Admins
      SecurityGroupEgress: []
  AppEgress:
    Type: AWS::EC2::SecurityGroupEgress
    Properties:
      GroupId: !GetAtt App.GroupId
      IpProtocol: tcp
      FromPort: 5432
      ToPort: 5432
      DestinationPrefixListId: !GetAtt Office.PrefixListId
  Eni:
    Type: AWS::EC2::NetworkInterface
    Properties:
      GroupSet: !Ref Admins
      PrivateIpAddresses:
        - {PrivateIpAddress: 192.0.2.40, Primary: true}
        - {PrivateIpAddress: 192.0.2.41, Primary: false}
      ConnectionTrackingSpecification:
        TcpEstablishedTimeout: 3600
        UdpTimeout: 60
      Tags:
        - {Key: sg:device, Value: veth-app}
  Host:
    Type: AWS::EC2::Instance
    Properties:
      SecurityGroupIds: [!Ref App]
      PrivateIpAddress: 192.0.2.30
      Tags: [{Key: Name, Value: app-1}]
  Attach:
    Type: AWS::EC2::NetworkInterfaceAttachment
    Properties:
      InstanceId: !Ref Host
      NetworkInterfaceId: !Ref Eni
      DeviceIndex: 1
"#;
    let l = load(text);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let p = &l.policy;
    let office = PrefixListId("Office".into());
    assert_eq!(p.prefix_lists[&office].max_entries, 5);
    let app = group(p, "App");
    assert_eq!(
        shape(&app.ingress),
        [
            (tcp(8080, 8080), Peer::PrefixList(office.clone()), None),
            (Protocol::All, gid("App"), None)
        ]
    );
    // A stand-alone egress resource adds to the D2 default, as AuthorizeSecurityGroupEgress does.
    let mut want = d2();
    want.push((tcp(5432, 5432), Peer::PrefixList(office), None));
    assert_eq!(shape(&app.egress), want);
    assert!(group(p, "sg-admins").egress.is_empty());
    let eni = p
        .interface("app-1/eth1")
        .expect("the attached ENI is named after its instance");
    assert_eq!(eni.groups, [GroupId("sg-admins".into())]);
    assert_eq!(eni.device.as_deref(), Some("veth-app"));
    assert_eq!(eni.addresses.len(), 2);
    assert_eq!(
        (eni.timeouts.tcp_established, eni.timeouts.udp_single),
        (3600, 60)
    );
    assert_eq!(
        p.interface("app-1").unwrap().groups,
        [GroupId("App".into())]
    );
}

#[test]
fn summary_names_format_groups_and_interfaces() {
    let s = load_example("ec2-lab.yaml").summary();
    assert!(s.contains("format: native"), "{s}");
    assert!(s.contains("sg-web: 6 ingress, 2 egress rules"), "{s}");
    assert!(s.contains("sg-db: 3 ingress, 2 egress rules"), "{s}");
    assert!(
        s.contains("web-2 [192.0.2.12, 2001:db8:10::12]: sg-web"),
        "{s}"
    );
}

#[test]
fn ten_thousand_rules_in_sixteen_groups_load_fast() {
    // 16 groups x 625 rules (313 IPv4 + 312 IPv6 per group): quotas raised accordingly,
    // keeping rules_per_group x groups_per_interface <= 1000 (Q2).
    let mut text =
        String::from("quotas: {rules_per_group: 320, groups_per_interface: 3}\nsecurity_groups:\n");
    for g in 0..16 {
        text.push_str(&format!("  - id: sg-g{g}\n    ingress:\n"));
        for r in 0..625u32 {
            let peer = if r % 2 == 0 {
                format!("10.{}.{}.0/24", r / 256, r % 256)
            } else {
                format!("\"2001:db8:{g:x}:{r:x}::/64\"")
            };
            text.push_str(&format!(
                "      - {{protocol: tcp, ports: {}, source: {peer}}}\n",
                1 + r
            ));
        }
    }
    text.push_str(
        "instances:\n  - {name: i, addresses: [192.0.2.1], groups: [sg-g0, sg-g1, sg-g2]}\n",
    );
    let t = Instant::now();
    let l = load(&text);
    let elapsed = t.elapsed();
    println!(
        "10000 rules in 16 groups loaded in {elapsed:?} ({} bytes)",
        text.len()
    );
    assert_eq!(
        l.policy
            .all_rules()
            .filter(|r| r.direction == Direction::Ingress)
            .count(),
        10_000
    );
    // Generous: a debug build on a loaded 2-core machine. Release is far below a second.
    assert!(elapsed.as_secs() < 10, "{elapsed:?}");
}

#[test]
fn interface_without_addresses_or_device_is_loaded_with_a_warning() {
    let l = load("security_groups: [{id: sg-a}]\ninstances:\n  - {name: lonely, groups: [sg-a]}\n");
    assert_eq!(l.policy.interfaces.len(), 1);
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "t.yaml:3:5: warning: interface lonely has neither addresses nor a device"
        ),
        "{w:?}"
    );
}

#[test]
fn lab_policy_binds_the_host_of_web_2_by_address() {
    use sg_agent::bind::{LocalIface, bind};
    let p = load_example("ec2-lab.cfn.yaml").policy;
    let host = [
        LocalIface {
            name: "lo".into(),
            ifindex: 1,
            addresses: vec!["127.0.0.1".parse().unwrap()],
        },
        LocalIface {
            name: "eth0".into(),
            ifindex: 4,
            addresses: vec!["192.0.2.12".parse().unwrap(), "fe80::12".parse().unwrap()],
        },
    ];
    let b = bind(&p, &host).unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].interface.as_str(), b[0].device.as_str(), b[0].ifindex),
        ("web-2", "eth0", 4)
    );
}
