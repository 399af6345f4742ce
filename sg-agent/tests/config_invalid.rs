//! Invalid inputs, as a table: each row is the input, where the error must be reported
//! (line:column), a fragment of the message, the YAML path shown under it, and a fragment of
//! the hint. The whole rendered diagnostic is checked:
//!
//! ```text
//! t.yaml:LINE:COL: error: MESSAGE
//!   at: path
//!   hint: ...
//! ```
//! Hostile inputs (alias bombs, deep nesting, huge files) must fail fast with such an error.

use std::time::{Duration, Instant};

use sg_agent::config::{Severity, load_file, load_str};

struct Case {
    name: &'static str,
    input: String,
    /// "LINE:COL"
    at: &'static str,
    message: &'static str,
    /// The `at:` line; empty when the diagnostic has none.
    path: &'static str,
    /// A fragment of the hint; empty when none is checked.
    hint: &'static str,
}

fn c(
    name: &'static str,
    input: impl Into<String>,
    at: &'static str,
    message: &'static str,
    path: &'static str,
    hint: &'static str,
) -> Case {
    Case {
        name,
        input: input.into(),
        at,
        message,
        path,
        hint,
    }
}

/// A group sg-web whose ingress rules follow (from line 4).
const G: &str = "security_groups:\n  - id: sg-web\n    ingress:\n";
/// A group sg-web whose egress rules follow (from line 4).
const E: &str = "security_groups:\n  - id: sg-web\n    egress:\n";

fn g(rules: &str) -> String {
    format!("{G}{rules}")
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let mut v = vec![
        // --- the text itself ---
        c("yaml syntax error", "security_groups: [\n", "2:1", "YAML syntax error", "", ""),
        c("duplicate key", "security_groups: []\nsecurity_groups: []\n", "2:1", "duplicate key `security_groups` (first written at line 1, column 1)", "", "unique keys"),
        c("empty file", "", "1:1", "the file holds no policy (it is empty)", "", ""),
        c("two documents", "security_groups: []\n---\nsecurity_groups: []\n", "2:1", "more than one YAML document", "", "sg reads one document"),
        c("recursive alias", "security_groups: &x [*x]\n", "1:22", "recursive alias", "", ""),
        c("complex key", "? [a]\n: b\n", "1:3", "a mapping key must be a scalar", "", ""),
        // --- format detection ---
        c("unknown shape", "foo: 1\n", "1:1", "cannot tell the format of this file", "", "a native policy has `security_groups:`"),
        c("near-miss top-level key", "SecurityGroup: []\n", "1:1", "cannot tell the format", "", "`SecurityGroup`: did you mean `SecurityGroups`?"),
        c("top level is a list", "- sg-web\n", "1:1", "expected a mapping at the top of the file, found a list", "", "CloudFormation template `Resources:`"),
        // --- native structure ---
        c("unknown top-level key", "security_groups: []\ninstance: []\n", "2:1", "unknown field `instance` in the policy", "instance", "did you mean `instances`?"),
        c("unknown format version", "version: 2\nsecurity_groups: []\n", "1:10", "unknown format version 2", "version", "version 1"),
        c("groups not a list", "security_groups: {id: sg-web}\n", "1:18", "security_groups must be a list, found a mapping", "security_groups", ""),
        c("group without id", "security_groups:\n  - name: web\n", "2:5", "a security group needs an `id`", "security_groups[0]", "e.g. id: sg-web"),
        c("group id shape", "security_groups:\n  - id: web\n", "2:9", "`web` is not a security group id", "security_groups[0].id", "`sg-` followed by"),
        c("duplicate group id", "security_groups:\n  - id: sg-a\n  - id: sg-a\n", "3:9", "security group sg-a is defined twice (first at line 2, column 9)", "security_groups[1].id", ""),
        c("unknown group field", "security_groups:\n  - id: sg-a\n    ingres: []\n", "3:5", "unknown field `ingres` in a security group", "security_groups[0].ingres", "did you mean `ingress`?"),
        c("rules key instead of ingress", "security_groups:\n  - id: sg-a\n    rules: []\n", "3:5", "unknown field `rules`", "security_groups[0].rules", "rules go under `ingress:`"),
        c("null ingress", "security_groups:\n  - id: sg-a\n    ingress:\n", "3:12", "`ingress` is empty (null)", "security_groups[0].ingress", "write `ingress: []`"),
        c("null egress is neither omitted nor empty", "security_groups:\n  - id: sg-a\n    egress:\n", "3:11", "`egress` is empty (null)", "security_groups[0].egress", "D2: all traffic to 0.0.0.0/0 and ::/0"),
        c("default not a boolean", "security_groups:\n  - id: sg-a\n    default: yes\n", "3:14", "default must be true or false, found `yes`", "security_groups[0].default", ""),
        c("description with a quote", "security_groups:\n  - id: sg-a\n    description: it's mine\n", "3:18", "character '\\'' (position 3) is not allowed by AWS", "security_groups[0].description", "allowed: a-z A-Z 0-9 spaces"),
        c("group name with a non-ASCII letter", "security_groups:\n  - id: sg-a\n    name: café\n", "3:11", "character 'é' (position 4) is not allowed by AWS", "security_groups[0].name", ""),
        // --- rules: protocol (F1, F2) ---
        c("rule without protocol", g("      - {ports: 22, source: 10.0.0.0/8}\n"), "4:9", "a rule needs a `protocol`", "security_groups[0].ingress[0]", "tcp, udp, icmp"),
        c("misspelt protocol", g("      - {protocol: tpc, ports: 22, source: 10.0.0.0/8}\n"), "4:20", "unknown protocol `tpc`", "security_groups[0].ingress[0].protocol", "did you mean `tcp`?"),
        c("protocol number too big", g("      - {protocol: 256, source: 10.0.0.0/8}\n"), "4:20", "protocol number 256 is outside 0-255", "security_groups[0].ingress[0].protocol", "IANA protocol number"),
        c("unknown rule field", g("      - {protocol: tcp, port: 22, source: 10.0.0.0/8}\n"), "4:25", "unknown field `port` in an ingress rule", "security_groups[0].ingress[0].port", "write `ports: 443`"),
        // --- rules: ports (F3) ---
        c("tcp without ports", g("      - {protocol: tcp, source: 10.0.0.0/8}\n"), "4:9", "a tcp rule needs a port range (F3)", "security_groups[0].ingress[0]", "0-65535 for every port"),
        c("udp port out of range", g("      - {protocol: udp, ports: 70000, source: 10.0.0.0/8}\n"), "4:32", "port 70000 is outside 0-65535 (F3)", "security_groups[0].ingress[0].ports", ""),
        c("tcp port -1", g("      - {protocol: tcp, ports: -1, source: 10.0.0.0/8}\n"), "4:32", "port -1 is outside 0-65535 (F3)", "security_groups[0].ingress[0].ports", "for every port write the range 0-65535"),
        c("reversed range", g("      - {protocol: tcp, ports: 90-80, source: 10.0.0.0/8}\n"), "4:32", "the port range 90-80 is reversed (F3)", "security_groups[0].ingress[0].ports", "write 80-90"),
        c("ports not a number", g("      - {protocol: tcp, ports: https, source: 10.0.0.0/8}\n"), "4:32", "`https` is not a port or a port range", "security_groups[0].ingress[0].ports", "write one port (443)"),
        c("ports mapping missing to", g("      - {protocol: tcp, ports: {from: 1}, source: 10.0.0.0/8}\n"), "4:32", "ports needs both `from` and `to`", "security_groups[0].ingress[0].ports", ""),
        // --- rules: ICMP (F4) ---
        c("icmp without type", g("      - {protocol: icmp, source: 10.0.0.0/8}\n"), "4:9", "an icmp rule needs an ICMP type (F4)", "security_groups[0].ingress[0]", "-1 means every type"),
        c("icmp type out of range", g("      - {protocol: icmp, type: 300, source: 10.0.0.0/8}\n"), "4:32", "ICMP type 300 is outside -1..255 (F4)", "security_groups[0].ingress[0].type", ""),
        c("icmp type -1 with a code", g("      - {protocol: icmp, type: -1, code: 0, source: 10.0.0.0/8}\n"), "4:42", "ICMP type -1 (every type) cannot take code 0 (F4)", "security_groups[0].ingress[0].code", "type -1 forces code -1"),
        c("icmp with ports", g("      - {protocol: icmp, ports: 8, source: 10.0.0.0/8}\n"), "4:33", "icmp rules have no ports", "security_groups[0].ingress[0].ports", "ICMP `type:`"),
        c("tcp with an icmp type", g("      - {protocol: tcp, ports: 22, type: 8, source: 10.0.0.0/8}\n"), "4:42", "`type` and `code` are for icmp and icmpv6 rules, not tcp", "security_groups[0].ingress[0].type", ""),
        c("icmp code without type", g("      - {protocol: icmpv6, code: 0, source: \"::/0\"}\n"), "4:9", "an ICMP `code` needs a `type`", "security_groups[0].ingress[0]", ""),
        c("icmp with an IPv6 peer", g("      - {protocol: icmp, type: 8, source: \"2001:db8::/32\"}\n"), "4:43", "an icmp rule cannot have an IPv6 peer", "security_groups[0].ingress[0].source", "use protocol icmpv6"),
        c("icmpv6 with an IPv4 peer", g("      - {protocol: icmpv6, type: 128, source: 10.0.0.0/8}\n"), "4:47", "an icmpv6 rule cannot have an IPv4 peer", "security_groups[0].ingress[0].source", "use protocol icmp"),
        // --- rules: peers (F5) ---
        c("rule without source", g("      - {protocol: tcp, ports: 22}\n"), "4:9", "an ingress rule needs a `source`", "security_groups[0].ingress[0]", "a CIDR, a group id"),
        c("empty source list", g("      - {protocol: tcp, ports: 22, source: []}\n"), "4:44", "`source` lists no peer", "security_groups[0].ingress[0].source", "at least one peer"),
        c("egress rule with source", format!("{E}      - {{protocol: tcp, ports: 22, source: 10.0.0.0/8}}\n"), "4:36", "unknown field `source` in an egress rule", "security_groups[0].egress[0].source", "egress rules name a `destination`"),
        c("peer that is no peer", g("      - {protocol: tcp, ports: 22, source: anywhere}\n"), "4:44", "`anywhere` is not a peer", "security_groups[0].ingress[0].source", "self, or a prefix list id"),
        c("address without prefix length", g("      - {protocol: tcp, ports: 22, source: 198.51.100.10}\n"), "4:44", "`198.51.100.10` is an address, not a CIDR", "security_groups[0].ingress[0].source", "write `198.51.100.10/32`"),
        c("prefix length too long", g("      - {protocol: tcp, ports: 22, source: [10.0.0.0/8, 10.0.0.0/33]}\n"), "4:57", "`10.0.0.0/33` is not a valid CIDR", "security_groups[0].ingress[0].source[1]", "prefix 0-32"),
        c("undefined group", g("      - {protocol: tcp, ports: 22, source: sg-wbe}\n"), "4:44", "security group sg-wbe is not defined", "security_groups[0].ingress[0].source", "did you mean sg-web?"),
        c("undefined prefix list", g("      - {protocol: tcp, ports: 22, source: pl-123}\n"), "4:44", "prefix list pl-123 is not defined", "security_groups[0].ingress[0].source", "define the prefix list"),
        c("peer mapping with two kinds", g("      - {protocol: tcp, ports: 22, source: [{cidr: 10.0.0.0/8, group: self}]}\n"), "4:45", "a peer is exactly one of cidr, group, prefix_list; found 2", "security_groups[0].ingress[0].source[0]", "F5"),
        // --- rules: ids, descriptions, duplicates (F6) ---
        c("rule id too short", g("      - {id: sgr-123, protocol: tcp, ports: 22, source: 10.0.0.0/8}\n"), "4:14", "`sgr-123` is not a security group rule id", "security_groups[0].ingress[0].id", "exactly 17 lowercase hex digits"),
        c("one id for several peers", g( "      - {id: sgr-0c1d2e3f4a5b6c7d8, protocol: tcp, ports: 22, source: [10.0.0.0/8, 11.0.0.0/8]}\n", ), "4:14", "a rule with 2 peers expands into 2 rules, which cannot share one id", "security_groups[0].ingress[0].id", "give each peer its own id"),
        c("rule id used twice", format!( "{G}      - {{id: sgr-0c1d2e3f4a5b6c7d8, protocol: tcp, ports: 22, source: 10.0.0.0/8}}\n  - id: sg-db\n    ingress:\n      - {{id: sgr-0c1d2e3f4a5b6c7d8, protocol: tcp, ports: 23, source: 10.0.0.0/8}}\n" ), "7:14", "rule id sgr-0c1d2e3f4a5b6c7d8 is used twice (first at line 4, column 14)", "security_groups[1].ingress[0].id", "rule ids are unique"),
        c("duplicate rule", g( "      - {protocol: tcp, ports: 22, source: 10.0.0.0/8}\n      - {protocol: \"6\", ports: 22-22, source: 10.0.0.0/8, description: again}\n", ), "5:9", "duplicate rule: group sg-web already has this ingress rule (line 4, column 9)", "security_groups[0].ingress[1]", "AWS rejects duplicate rules"),
        c("duplicate after canonicalisation", g("      - {protocol: tcp, ports: 22, source: [10.0.0.0/8, 10.9.9.9/8]}\n"), "4:9", "duplicate rule", "security_groups[0].ingress[0]", ""),
        c("description too long", format!( "{G}      - {{protocol: tcp, ports: 22, source: 10.0.0.0/8, description: {}}}\n", "x".repeat(256) ), "4:69", "the text is 256 characters long; AWS allows at most 255", "security_groups[0].ingress[0].description", ""),
        // --- prefix lists (R4) ---
        c("prefix list id shape", "prefix_lists:\n  - {id: office, entries: [10.0.0.0/8]}\n", "2:10", "`office` is not a prefix list id", "prefix_lists[0].id", "`pl-` followed by"),
        c("prefix list of two families", "prefix_lists:\n  - {id: pl-a, family: ipv4, entries: [10.0.0.0/8, \"2001:db8::/32\"]}\n", "2:52", "2001:db8::/32 is an IPv6 CIDR in an IPv4 prefix list", "prefix_lists[0].entries[1]", "one address family (R4)"),
        c("prefix list duplicate entry", "prefix_lists:\n  - {id: pl-a, entries: [10.0.0.0/8, 10.1.0.0/8]}\n", "2:38", "10.0.0.0/8 is listed twice in prefix list pl-a", "prefix_lists[0].entries[1]", ""),
        c("prefix list over its max entries", "prefix_lists:\n  - {id: pl-a, max_entries: 1, entries: [10.0.0.0/8, 11.0.0.0/8]}\n", "2:29", "prefix list pl-a has 2 entries but max entries is 1", "prefix_lists[0].max_entries", "raise max entries"),
        c("prefix list without family or entries", "prefix_lists:\n  - {id: pl-a}\n", "2:5", "prefix list pl-a has no address family", "prefix_lists[0]", "ipv4 or ipv6"),
        c("prefix list family unknown", "prefix_lists:\n  - {id: pl-a, family: ipv5}\n", "2:24", "`ipv5` is not an address family", "prefix_lists[0].family", "ipv4 or ipv6"),
        // --- quotas (Q1-Q3) ---
        c("Q1 rules per group and direction", format!("quotas: {{rules_per_group: 2}}\n{G}      - {{protocol: tcp, ports: 1, source: 10.0.0.0/8}}\n      - {{protocol: tcp, ports: 2, source: 10.0.0.0/8}}\n      - {{protocol: tcp, ports: 3, source: 10.0.0.0/8}}\n"), "5:7", "security group sg-web has 3 IPv4 ingress rules; the limit is 2 per group and direction (Q1)", "security_groups[0].ingress", "raise quotas.rules_per_group"),
        c("Q1 counts a prefix list as its max entries", format!("prefix_lists: [{{id: pl-a, max_entries: 61, entries: [10.0.0.0/8]}}]\n{E}      - {{protocol: tcp, ports: 1, destination: pl-a}}\n"), "5:7", "security group sg-web has 61 IPv4 egress rules; the limit is 60 per group and direction (Q1)", "security_groups[0].egress", "prefix lists count as their max entries"),
        c("Q1 counts a group reference in both families", format!("quotas: {{rules_per_group: 1}}\n{G}      - {{protocol: tcp, ports: 1, source: [\"2001:db8::/32\", self]}}\n"), "5:7", "security group sg-web has 2 IPv6 ingress rules; the limit is 1", "security_groups[0].ingress", ""),
        c("groups_per_interface above 16", "quotas: {groups_per_interface: 17}\nsecurity_groups: []\n", "1:32", "groups_per_interface 17 is outside 1..16", "quotas.groups_per_interface", "maximum 16 (Q2)"),
        c("quota product above 1000", "quotas: {rules_per_group: 100, groups_per_interface: 16}\nsecurity_groups: []\n", "1:9", "quotas allow 100 rules per group x 16 groups per interface = 1600, above AWS's limit of 1000 (Q2)", "quotas", "lower rules_per_group"),
        c("unknown timeout", "timeouts: {tcp_establish: 60}\nsecurity_groups: []\n", "1:12", "unknown field `tcp_establish` in timeouts", "timeouts.tcp_establish", "did you mean `tcp_established`?"),
        c("timeout below AWS's bound", "timeouts: {tcp_established: 10}\nsecurity_groups: []\n", "1:29", "the TCP established timeout 10 s is outside AWS's bounds 60..432000 s (C5)", "timeouts.tcp_established", "from 60 to 432000"),
        c("interface timeout above AWS's bound", format!( "{G}      - {{protocol: tcp, ports: 22, source: 10.0.0.0/8}}\ninstances:\n  - {{name: a, groups: [sg-web], timeouts: {{udp_single: 61}}}}\n" ), "6:56", "the UDP single exchange timeout 61 s is outside AWS's bounds 30..60 s (C5)", "instances[0].timeouts.udp_single", ""),
        c("sg's own timeout bound", "timeouts: {tcp_closing: 1}\nsecurity_groups: []\n", "1:25", "the TCP closing timeout 1 s is outside sg's bounds 5..300 s (C5)", "timeouts.tcp_closing", ""),
        // --- instances and interfaces (E3, E5, Q2) ---
        c("instance without name", format!("{G}      []\ninstances:\n  - {{groups: [sg-web]}}\n"), "6:5", "an instance needs a `name`", "instances[0]", "e.g. name: web-1"),
        c("interface carries no group", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, addresses: [192.0.2.1]}\n", "3:5", "interface a carries no security group", "instances[0]", "at least one group"),
        c("interface group undefined", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-b]}\n", "3:24", "security group sg-b is not defined", "instances[0].groups[0]", "did you mean sg-a?"),
        c("group listed twice on an interface", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a, sg-a]}\n", "3:30", "group sg-a is listed twice on interface a", "instances[0].groups[1]", ""),
        c("too many groups on an interface (Q2)", "security_groups: [{id: sg-a}, {id: sg-b}, {id: sg-c}, {id: sg-d}, {id: sg-e}, {id: sg-f}]\ninstances:\n  - {name: a, groups: [sg-a, sg-b, sg-c, sg-d, sg-e, sg-f]}\n", "3:23", "interface a carries 6 security groups; the limit is 5 per interface (Q2)", "instances[0].groups", "raise quotas.groups_per_interface"),
        c("address with a prefix length", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a], addresses: [192.0.2.1/24]}\n", "3:43", "`192.0.2.1/24` has a prefix length", "instances[0].addresses[0]", "write `192.0.2.1`"),
        c("address that is not one", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a], addresses: [web-1]}\n", "3:43", "`web-1` is not an IPv4 or IPv6 address", "instances[0].addresses[0]", ""),
        c("address on two interfaces", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a], addresses: [192.0.2.1]}\n  - {name: b, groups: [sg-a], addresses: [\"192.0.2.1\"]}\n", "4:43", "address 192.0.2.1 is already assigned to interface a (line 3, column 43)", "instances[1].addresses[0]", "belongs to one interface"),
        c("two instances with one name", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a]}\n  - {name: a, groups: [sg-a]}\n", "4:12", "interface a is defined twice (first at line 3, column 12)", "instances[1].name", ""),
        c("device name too long", "security_groups: [{id: sg-a}]\ninstances:\n  - {name: a, groups: [sg-a], device: a-very-long-device-name}\n", "3:39", "`a-very-long-device-name` is not a Linux interface name", "instances[0].device", "1-15 characters"),
        c("interfaces and instance-level addresses", "security_groups: [{id: sg-a}]\ninstances:\n  - name: a\n    addresses: [192.0.2.1]\n    interfaces:\n      - {groups: [sg-a]}\n", "4:16", "`addresses` belongs to an interface when the instance lists `interfaces`", "instances[0].addresses", "move `addresses` into the interface"),
        c("CloudFormation tag in a native file", "security_groups:\n  - id: !Ref Web\n", "2:9", "the tag !Ref has no meaning here", "security_groups[0].id", "CloudFormation tags"),
    ];
    v.extend(cfn_cases());
    v.extend(describe_cases());
    v.extend(hostile_cases());
    v
}

/// A CloudFormation group resource `Sg` whose ingress rules follow (from line 7).
const CFN: &str = "Resources:\n  Sg:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: web\n      SecurityGroupIngress:\n";

fn cfn(rules: &str) -> String {
    format!("{CFN}{rules}")
}

#[rustfmt::skip]
fn cfn_cases() -> Vec<Case> {
    const P: &str = "Resources.Sg.Properties.SecurityGroupIngress[0]";
    vec![
        c("cfn Ref to an undefined resource", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, SourceSecurityGroupId: !Ref Sgg}\n", ), "7:78", "Ref to Sgg, which is not defined in this template", "Resources.Sg.Properties.SecurityGroupIngress[0].SourceSecurityGroupId", "did you mean Sg?"),
        c("cfn GetAtt to an undefined resource", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, SourceSecurityGroupId: {\"Fn::GetAtt\": [Web, GroupId]}}\n", ), "7:93", "Fn::GetAtt to Web, which is not defined in this template", "Resources.Sg.Properties.SecurityGroupIngress[0].SourceSecurityGroupId.Fn::GetAtt", ""),
        c("cfn GetAtt of the wrong attribute", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, SourceSecurityGroupId: !GetAtt Sg.VpcId}\n", ), "7:78", "Sg.VpcId is not a security group id", "Resources.Sg.Properties.SecurityGroupIngress[0].SourceSecurityGroupId", "use !GetAtt Sg.GroupId"),
        c("cfn CidrIp holding IPv6", cfn("        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: \"::/0\"}\n"), "7:63", "::/0 is an IPv6 CIDR where an IPv4 CIDR is expected", "Resources.Sg.Properties.SecurityGroupIngress[0].CidrIp", "put IPv6 ones in CidrIpv6"),
        c("cfn CidrIpv6 holding IPv4", cfn("        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIpv6: 10.0.0.0/8}\n"), "7:65", "10.0.0.0/8 is an IPv4 CIDR where an IPv6 CIDR is expected", "Resources.Sg.Properties.SecurityGroupIngress[0].CidrIpv6", "put IPv4 ones in CidrIp"),
        c("cfn rule with two peers", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: 10.0.0.0/8, SourceSecurityGroupId: !Ref Sg}\n", ), "7:11", "the rule names 2 peers (CidrIp, SourceSecurityGroupId); a rule has exactly one (F5)", P, "write one rule per peer"),
        c("cfn rule without peer", cfn("        - {IpProtocol: tcp, FromPort: 22, ToPort: 22}\n"), "7:11", "the rule names no peer (F5)", P, "give exactly one of CidrIp"),
        c("cfn rule without IpProtocol", cfn("        - {FromPort: 22, ToPort: 22, CidrIp: 10.0.0.0/8}\n"), "7:11", "the rule needs IpProtocol", P, ""),
        c("cfn tcp rule without ports", cfn("        - {IpProtocol: tcp, CidrIp: 10.0.0.0/8}\n"), "7:11", "a tcp rule needs a port range (F3)", P, ""),
        c("cfn Sub naming nothing", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: !Sub \"${Net}/8\"}\n", ), "7:63", "CidrIp is unknown: ${Net} in Fn::Sub names no parameter, resource or variable", "Resources.Sg.Properties.SecurityGroupIngress[0].CidrIp", "write the value literally"),
        c("cfn parameter without default", format!( "Parameters:\n  MyIp: {{Type: String}}\n{}", cfn("        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: !Ref MyIp}\n") ), "9:63", "parameter MyIp has no Default", "Resources.Sg.Properties.SecurityGroupIngress[0].CidrIp", "--parameter MyIp=VALUE"),
        c("cfn literal that is no group", cfn( "        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, SourceSecurityGroupId: web-tier}\n", ), "7:78", "`web-tier` is not a security group of this template nor a group id", "Resources.Sg.Properties.SecurityGroupIngress[0].SourceSecurityGroupId", ""),
        c("cfn egress with a source field", "Resources:\n  Sg:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: web\n      SecurityGroupEgress:\n        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, SourceSecurityGroupId: !Ref Sg}\n", "7:55", "unknown field `SourceSecurityGroupId` in an egress rule", "Resources.Sg.Properties.SecurityGroupEgress[0].SourceSecurityGroupId", "egress rules use DestinationSecurityGroupId"),
        c("cfn group without description", "Resources:\n  Sg:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupName: web\n", "5:7", "security group Sg has no GroupDescription", "Resources.Sg.Properties", "CloudFormation requires GroupDescription"),
        c("cfn misspelt group property", "Resources:\n  Sg:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: web\n      SecurityGroupIngres: []\n", "6:7", "unknown field `SecurityGroupIngres` in AWS::EC2::SecurityGroup Properties", "Resources.Sg.Properties.SecurityGroupIngres", "did you mean `SecurityGroupIngress`?"),
        c("cfn template without resources", "AWSTemplateFormatVersion: \"2010-09-09\"\nResource: {}\n", "2:1", "unknown field `Resource` in a CloudFormation template", "Resource", "did you mean `Resources`?"),
        c("cfn instance mixing NetworkInterfaces and SecurityGroupIds", "Resources:\n  Vm:\n    Type: AWS::EC2::Instance\n    Properties:\n      SecurityGroupIds: [sg-x]\n      NetworkInterfaces: []\n", "5:25", "SecurityGroupIds cannot be combined with NetworkInterfaces (EC2 rejects it)", "Resources.Vm.Properties.SecurityGroupIds", "GroupSet"),
        c("cfn ports as words", cfn("        - {IpProtocol: tcp, FromPort: ssh, ToPort: 22, CidrIp: 10.0.0.0/8}\n"), "7:39", "FromPort must be a whole number, found `ssh`", "Resources.Sg.Properties.SecurityGroupIngress[0].FromPort", ""),
        c("cfn prefix list missing MaxEntries", "Resources:\n  Pl:\n    Type: AWS::EC2::PrefixList\n    Properties: {PrefixListName: office, AddressFamily: IPv4}\n", "4:17", "prefix list Pl needs MaxEntries", "Resources.Pl.Properties", ""),
    ]
}

#[rustfmt::skip]
fn describe_cases() -> Vec<Case> {
    vec![
        c("describe IpRanges holding IPv6", r#"{"SecurityGroups": [{"GroupId": "sg-a", "IpPermissionsEgress": [], "IpPermissions": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "::/0"}]}]}]}"#, "1:131", "::/0 is an IPv6 CIDR where an IPv4 CIDR is expected", "SecurityGroups[0].IpPermissions[0].IpRanges[0].CidrIp", "put IPv6 ones in Ipv6Ranges"),
        c("describe group without GroupId", r#"{"SecurityGroups": [{"GroupName": "web"}]}"#, "1:21", "a security group needs a GroupId", "SecurityGroups[0]", ""),
        c("describe misspelt permission field", r#"{"SecurityGroups": [{"GroupId": "sg-a", "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "IpRange": []}]}]}"#, "1:109", "unknown field `IpRange` in a permission", "SecurityGroups[0].IpPermissions[0].IpRange", "did you mean `IpRanges`?"),
        c("describe tcp without ports", r#"{"SecurityGroups": [{"GroupId": "sg-a", "IpPermissions": [{"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]}]}"#, "1:94", "a tcp rule needs a port range (F3)", "SecurityGroups[0].IpPermissions[0].IpRanges[0]", ""),
    ]
}

#[rustfmt::skip]
fn hostile_cases() -> Vec<Case> {
    // Billion laughs: ten nested levels of ten aliases each expand to 10^10 nodes.
    let mut bomb = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x-a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("security_groups: []\n");
    // Deep nesting, flow style and block style.
    let deep_flow = format!("security_groups: {}{}\n", "[".repeat(200), "]".repeat(200));
    let mut deep_block = String::from("security_groups:\n");
    for i in 0..100 {
        deep_block.push_str(&format!("{}- \n", "  ".repeat(i + 1)));
    }
    // A huge file: 17 MiB of comments.
    let huge = format!(
        "security_groups: []\n{}",
        "# padding padding padding padding padding padding\n".repeat(17 * 1024 * 1024 / 50 + 1)
    );
    vec![
        c("alias bomb (billion laughs)", bomb, "6:47", "the document expands to more than 1000000 nodes", "", "alias bomb"),
        c("deep flow nesting", deep_flow, "1:81", "nesting is deeper than 64 levels", "", ""),
        c("deep block nesting", deep_block, "65:129", "nesting is deeper than 64 levels", "", ""),
        c("huge file", huge, "1:1", "the limit is 16 MiB", "", "split the policy"),
    ]
}

fn check(case: &Case) -> Result<(), String> {
    let t = Instant::now();
    let result = load_str(&case.input, "t.yaml");
    let elapsed = t.elapsed();
    let diags = match result {
        Ok(l) => return Err(format!("loaded, but must fail\n{}", l.summary())),
        Err(d) => d,
    };
    if elapsed > Duration::from_secs(2) {
        return Err(format!("took {elapsed:?}: must fail fast"));
    }
    let head = format!("t.yaml:{}: error: ", case.at);
    let Some(d) = diags
        .0
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .find(|d| d.starts_with(&head) && d.lines().next().unwrap().contains(case.message))
    else {
        return Err(format!(
            "no error `{head}...{}...` in:\n{diags}",
            case.message
        ));
    };
    let mut lines = d.lines().skip(1);
    let mut next = lines.next();
    if case.path.is_empty() {
        if next.is_some_and(|l| l.starts_with("  at: ")) {
            return Err(format!("unexpected path in:\n{d}"));
        }
    } else {
        if next != Some(&format!("  at: {}", case.path)) {
            return Err(format!("path must be `{}` in:\n{d}", case.path));
        }
        next = lines.next();
    }
    if !case.hint.is_empty()
        && !next.is_some_and(|l| l.starts_with("  hint: ") && l.contains(case.hint))
    {
        return Err(format!("hint must contain `{}` in:\n{d}", case.hint));
    }
    Ok(())
}

#[test]
fn every_invalid_input_is_rejected_with_a_located_message() {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = check(case) {
            failures.push(format!("--- {} ---\n{e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = g(
        "      - {protocol: tpc, ports: 22, source: 10.0.0.0/8}\n      - {protocol: tcp, ports: 99999, source: 10.0.0.0/8}\n      - {protocol: tcp, ports: 22, source: sg-nope}\n",
    );
    let d = load_str(&text, "t.yaml").unwrap_err();
    let lines: Vec<u32> = d.errors().map(|d| d.origin.line).collect();
    assert_eq!(lines, [4, 5, 6], "{d}");
    assert!(d.to_string().ends_with("3 errors, 0 warnings"), "{d}");
}

#[test]
fn huge_file_on_disk_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap(); // sparse: costs no disk
    let t = Instant::now();
    let e = load_file(&path).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(
        e.contains("huge.yaml:1:1: error: the input is 17825792 bytes; the limit is 16 MiB"),
        "{e}"
    );
}

#[test]
fn file_that_is_not_utf8_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.yaml");
    std::fs::write(&path, b"security_groups: [\xff]\n").unwrap();
    let e = load_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("bin.yaml:1:1: error: the file is not UTF-8 (byte 18 is invalid)"),
        "{e}"
    );
}

#[test]
fn a_port_that_does_not_read_is_reported_alone() {
    let text = format!(
        "{CFN}        - {{IpProtocol: tcp, FromPort: ssh, ToPort: 22, CidrIp: 10.0.0.0/8}}\n"
    );
    let d = load_str(&text, "t.yaml").unwrap_err();
    assert_eq!(d.errors().count(), 1, "{d}");
}
