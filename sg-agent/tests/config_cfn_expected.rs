//! Ten corpus templates (../shared/corpus/cfn) against what CloudFormation would create:
//! each fixture in tests/fixtures/cfn-expected is the `aws ec2 describe-security-groups`
//! output of the stack, written by hand from the template and AWS's documentation of
//! AWS::EC2::SecurityGroup / SecurityGroupIngress / SecurityGroupEgress (the README there
//! says which template, which parameters, and why each rule is what it is). The template is
//! read by sg's CloudFormation path, the fixture by its describe path, and the two policies
//! are compared group by group, rule by rule, field by field (direction, protocol, ports,
//! peer, description; and each group's description).
//!
//! Groups are matched by logical id: the fixture's `aws:cloudformation:logical-id` tag and
//! the template's resource; a group the stack did not create (a parameter's, an import's) by
//! its id. The default egress rule (D2: all protocols to 0.0.0.0/0 and ::/0, only when the
//! template gives no egress) and the normalisations of IpProtocol (F1, F2: `-1`, a number,
//! ports dropped) and ICMP (F4) are exactly what these fixtures pin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sg_agent::config::{TemplateInputs, load_file_with};
use sg_agent::policy::{Direction, IcmpMatch, Peer, Policy, Protocol, Rule};

/// (fixture, the corpus template (end of its file name), options: `Key=Value` parameters and
/// `import:Name=Value`). Every stack is named `demo`, in us-east-1.
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "ec2-with-waitcondition",
        "EC2__ec2_with_waitcondition_template.yaml",
        &[],
    ),
    (
        "refarch-wordpress-securitygroups",
        "aws-refarch-wordpress-02-securitygroups.yaml",
        &[],
    ),
    (
        "ecs-refarch-security-groups",
        "ecs-refarch-cloudformation__infrastructure__security-groups.yaml",
        &["EnvironmentName=demo"],
    ),
    (
        "ecs-fargate-public-vpc",
        "ECS__FargateLaunchType__clusters__public-vpc.yaml",
        &[],
    ),
    (
        "gitlab-server-pkg",
        "Solutions__GitLab__GitLabServer-pkg.yaml",
        &[],
    ),
    (
        "widdix-fargate-cluster",
        "widdix+aws-cf-templates__fargate__cluster.yaml",
        &["ParentVPCStack=vpc"],
    ),
    (
        "widdix-vpc-nat-instance",
        "widdix+aws-cf-templates__vpc__vpc-nat-instance.yaml",
        &["ParentVPCStack=vpc", "import:vpc-CidrBlock=198.51.100.0/24"],
    ),
    (
        "eks-refarch-nodegroup",
        "amazon-eks-refarch-cloudformation__cloudformation__nodegroup.yaml",
        &[
            "ClusterName=eks",
            "ClusterControlPlaneSecurityGroup=sg-0c0ffee0c0ffee000",
        ],
    ),
    (
        "aurora-serverless",
        "community__services__RDS__aurora-serverless__template.yml",
        &["VpcSecurityGroupId=sg-0d0b0d0b0d0b0d0b0"],
    ),
    (
        "anfw-distributed-1az",
        "anfw-distributed-1az-single-firewall-template.yaml",
        &[],
    ),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/cfn")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cfn-expected")
        .join(format!("{name}.json"))
}

fn template(part: &str) -> PathBuf {
    let dir = corpus();
    let mut hits: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus is not at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(part))
        .collect();
    assert_eq!(hits.len(), 1, "{part}: {hits:?}");
    hits.remove(0)
}

fn inputs(opts: &[&str]) -> TemplateInputs {
    let mut i = TemplateInputs {
        stack_name: Some("demo".into()),
        ..TemplateInputs::default()
    };
    for o in opts {
        match o.strip_prefix("import:") {
            Some(imp) => i.add_import(imp).unwrap(),
            None => i.add_parameter(o).unwrap(),
        }
    }
    i
}

/// One rule as describe-security-groups spells its fields: IpProtocol as AWS normalises it,
/// FromPort/ToPort (absent for `-1` and other numbers), the peer and the description.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Fields {
    direction: &'static str,
    protocol: String,
    ports: Option<(i32, i32)>,
    peer: String,
    description: Option<String>,
}

impl Fields {
    fn of(r: &Rule, name: &BTreeMap<String, String>) -> Self {
        let icmp = |m: &IcmpMatch| match *m {
            IcmpMatch::All => (-1, -1),
            IcmpMatch::Type(t) => (i32::from(t), -1),
            IcmpMatch::TypeCode(t, c) => (i32::from(t), i32::from(c)),
        };
        let (protocol, ports) = match &r.protocol {
            Protocol::All => ("-1".to_string(), None),
            Protocol::Tcp(p) => ("tcp".into(), Some((i32::from(p.from), i32::from(p.to)))),
            Protocol::Udp(p) => ("udp".into(), Some((i32::from(p.from), i32::from(p.to)))),
            Protocol::Icmp(m) => ("icmp".into(), Some(icmp(m))),
            Protocol::Icmpv6(m) => ("icmpv6".into(), Some(icmp(m))),
            Protocol::Number(n) => (n.to_string(), None),
        };
        let peer = match &r.peer {
            Peer::Cidr(c) => c.to_string(),
            Peer::PrefixList(p) => p.0.clone(),
            Peer::Group(g) => format!("group {}", name.get(&g.0).unwrap_or(&g.0)),
        };
        Fields {
            direction: match r.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            },
            protocol,
            ports,
            peer,
            description: r.description.clone(),
        }
    }

    fn show(&self) -> String {
        let ports = self
            .ports
            .map_or(String::new(), |(f, t)| format!(" {f}..{t}"));
        let desc = self
            .description
            .as_ref()
            .map_or(String::new(), |d| format!(" {d:?}"));
        format!(
            "{} {}{ports} {}{desc}",
            self.direction, self.protocol, self.peer
        )
    }
}

/// A policy's groups by logical id (ids sg or AWS gave, mapped through `name`): their
/// description and their rules, sorted.
type Groups = BTreeMap<String, (String, Vec<Fields>)>;

fn groups(p: &Policy, name: &BTreeMap<String, String>) -> Groups {
    p.groups
        .values()
        .map(|g| {
            let mut rules: Vec<Fields> = g
                .ingress
                .iter()
                .chain(&g.egress)
                .map(|r| Fields::of(r, name))
                .collect();
            rules.sort();
            // A group the stack did not create: its description is not the template's.
            match name.get(&g.id.0) {
                Some(logical) => (logical.clone(), (g.description.clone(), rules)),
                None => (g.id.0.clone(), ("(defined elsewhere)".to_string(), rules)),
            }
        })
        // A group only referenced (a placeholder, defined elsewhere) has nothing to compare.
        .filter(|(_, (_, rules))| !rules.is_empty())
        .collect()
}

/// Template side: a group created by resource `Resources.X` is X.
fn template_names(p: &Policy) -> BTreeMap<String, String> {
    p.groups
        .values()
        .filter_map(|g| {
            let logical = g.origin.path.strip_prefix("Resources.")?;
            (!logical.contains('.')).then(|| (g.id.0.clone(), logical.to_string()))
        })
        .collect()
}

/// Fixture side: the `aws:cloudformation:logical-id` tag of each group.
fn fixture_names(json: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for g in json["SecurityGroups"].as_array().unwrap() {
        let tag = g["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["Key"] == "aws:cloudformation:logical-id");
        if let Some(t) = tag {
            out.insert(
                g["GroupId"].as_str().unwrap().to_string(),
                t["Value"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// Every difference between the two sides, naming the group and the field.
fn differences(want: &Groups, got: &Groups) -> Vec<String> {
    let mut out = Vec::new();
    for (g, (wdesc, wrules)) in want {
        let Some((gdesc, grules)) = got.get(g) else {
            out.push(format!(
                "group {g}: CloudFormation creates it; sg has no such group"
            ));
            continue;
        };
        if wdesc != gdesc {
            out.push(format!(
                "group {g}: field description: CloudFormation {wdesc:?}, sg {gdesc:?}"
            ));
        }
        let missing: Vec<&Fields> = wrules.iter().filter(|r| !grules.contains(r)).collect();
        let extra: Vec<&Fields> = grules.iter().filter(|r| !wrules.contains(r)).collect();
        let mut paired: Vec<&Fields> = Vec::new();
        for w in &missing {
            // The nearest rule sg has instead: same direction and peer, or same protocol.
            let near = extra
                .iter()
                .find(|e| e.direction == w.direction && e.peer == w.peer)
                .or_else(|| {
                    extra.iter().find(|e| {
                        e.direction == w.direction && e.protocol == w.protocol && e.ports == w.ports
                    })
                });
            match near {
                Some(e) => {
                    paired.push(e);
                    let mut fields = Vec::new();
                    if e.protocol != w.protocol {
                        fields.push(format!("protocol {} vs {}", w.protocol, e.protocol));
                    }
                    if e.ports != w.ports {
                        fields.push(format!("ports {:?} vs {:?}", w.ports, e.ports));
                    }
                    if e.peer != w.peer {
                        fields.push(format!("peer {} vs {}", w.peer, e.peer));
                    }
                    if e.description != w.description {
                        fields.push(format!(
                            "description {:?} vs {:?}",
                            w.description, e.description
                        ));
                    }
                    out.push(format!(
                        "group {g}: rule {} differs in {} (CloudFormation vs sg)",
                        w.show(),
                        fields.join(", ")
                    ));
                }
                None => out.push(format!(
                    "group {g}: CloudFormation has rule {}; sg does not",
                    w.show()
                )),
            }
        }
        for e in extra.iter().filter(|e| !paired.contains(e)) {
            out.push(format!(
                "group {g}: sg has rule {}; CloudFormation does not",
                e.show()
            ));
        }
    }
    for g in got.keys().filter(|g| !want.contains_key(*g)) {
        if !got[g].1.is_empty() {
            out.push(format!(
                "group {g}: sg has it with rules; CloudFormation does not"
            ));
        }
    }
    out
}

#[test]
fn ten_templates_read_as_cloudformation_creates_them_field_by_field() {
    let mut failures = Vec::new();
    for (name, part, opts) in CASES {
        let t = load_file_with(&template(part), &inputs(opts))
            .unwrap_or_else(|d| panic!("{part} must load:\n{d}"));
        let path = fixture(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let f = load_file_with(&path, &TemplateInputs::default())
            .unwrap_or_else(|d| panic!("{name}.json must load:\n{d}"));
        let want = groups(&f.policy, &fixture_names(&json));
        let got = groups(&t.policy, &template_names(&t.policy));
        for d in differences(&want, &got) {
            failures.push(format!("{name} ({part}): {d}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
