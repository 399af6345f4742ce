//! The CloudFormation corpus (../shared/corpus/cfn: 186 real-world templates nobody here
//! wrote, MANIFEST.tsv names their origins) read unedited, with no option given: at least
//! UNDERSTOOD of them load, and every other one is rejected for the reason listed in REJECTED
//! (checked against its first error), so the count cannot drop silently and a reason cannot
//! change unnoticed. Where an option makes a rejected template pass, the test gives it and
//! checks that it does.

use std::path::{Path, PathBuf};

use sg_agent::config::{load_file, load_file_with};
use sg_agent::policy::GroupId;
use sg_testkit::{rule_text, template_inputs};

/// Templates understood with no option given (124 before templates were evaluated).
const UNDERSTOOD: usize = 167;

/// Every rejected template: a part of its file name, the first error's message (a part of
/// it), and the options that make it pass (None: nothing does; the template must change).
const REJECTED: &[(&str, &str, Option<&[&str]>)] = &[
    // Rain's module syntax, not CloudFormation: `rain pkg` expands it first.
    (
        "Solutions__GitLabAndVSCode__GitLabAndVSCode.json",
        "resource Network is a Rain module (`Rain::Module: ../../RainModules/vpc.yml`): Rain's syntax, not CloudFormation",
        None,
    ),
    (
        "Solutions__GitLabAndVSCode__GitLabAndVSCode.yaml",
        "resource Network is a Rain module (`!Rain::Module ../../RainModules/vpc.yml`): Rain's syntax, not CloudFormation",
        None,
    ),
    (
        "Solutions__GitLab__GitLabServer.json",
        "is a Rain module",
        None,
    ),
    (
        "Solutions__GitLab__GitLabServer.yaml",
        "is a Rain module",
        None,
    ),
    ("Solutions__Gitea__Gitea.json", "is a Rain module", None),
    ("Solutions__Gitea__Gitea.yaml", "is a Rain module", None),
    (
        "Solutions__VSCode__VSCodeServer.json",
        "is a Rain module",
        None,
    ),
    (
        "Solutions__VSCode__VSCodeServer.yaml",
        "is a Rain module",
        None,
    ),
    // Not YAML as YAML 1.2 defines it: a quoted scalar's continuation line is not indented
    // more than its key (in Outputs).
    (
        "FindInMap_Inside_Sub.yaml",
        "YAML syntax error: invalid indentation in quoted scalar",
        None,
    ),
    // A rule's peer or port comes from a parameter without Default: known only at deploy.
    (
        "RainModules__load-balancer.yml",
        "the security group is unknown: parameter DestinationSecurityGroupId has no Default and no value was given",
        Some(&["DestinationSecurityGroupId=sg-0123456789abcdef0"]),
    ),
    (
        "VPCPeering-Updates.cfn.json",
        "CidrIp is unknown: parameter PeerVPCCIDR has no Default",
        Some(&["PeerVPCCIDR=198.51.100.0/24", "NumberOfSecurityGroups=1"]),
    ),
    (
        "VPCPeering-Updates.cfn.yaml",
        "CidrIp is unknown: parameter PeerVPCCIDR has no Default",
        Some(&["PeerVPCCIDR=198.51.100.0/24", "NumberOfSecurityGroups=3"]),
    ),
    (
        "quickstart-hashicorp-vault.template",
        "CidrIp is unknown: parameter AccessCIDR has no Default",
        Some(&["AccessCIDR=198.51.100.0/24", "VPCCIDR=192.0.2.0/24"]),
    ),
    (
        "anfw-centralized-ingress-egress-east-west-1az-template.yaml",
        "CidrIp is unknown: parameter AllowedSourceIP has no Default",
        Some(&["AllowedSourceIP=198.51.100.7/32"]),
    ),
    (
        "anfw-centralized-ingress-egress-east-west-2az-template.yaml",
        "CidrIp is unknown: parameter AllowedSourceIP has no Default",
        Some(&["AllowedSourceIP=198.51.100.7/32"]),
    ),
    (
        "storage__templates__fsx.yaml",
        "CidrIp is unknown: parameter IngressCidrIp has no Default",
        Some(&["IngressCidrIp=198.51.100.0/24"]),
    ),
    (
        "state__rds-aurora.yaml",
        "FromPort is unknown: parameter Engine has no Default",
        Some(&["Engine=8.0.mysql-aurora.3.03.0"]),
    ),
    (
        "vpc__vpc-endpoint.yaml",
        "SecurityGroupIngress is unknown: condition UseEmailSMTP: parameter ServiceName has no Default",
        Some(&[
            "ServiceName=email-smtp",
            "ParentVPCStack=vpc",
            "import:vpc-CidrBlock=192.0.2.0/24",
        ]),
    ),
    (
        "vpc__vpc-nat-instance.yaml",
        "CidrIp is unknown: Fn::ImportValue of an export whose name is unknown (parameter ParentVPCStack has no Default",
        Some(&["ParentVPCStack=vpc", "import:vpc-CidrBlock=192.0.2.0/24"]),
    ),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/cfn")
}

/// The templates: the corpus directory's files, not its describe outputs or notes.
fn templates() -> Vec<PathBuf> {
    let dir = corpus();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus is not at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !(n.ends_with(".tsv") || n.ends_with(".txt") || n.ends_with(".md"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_corpus_is_understood_unedited_or_rejected_for_its_listed_reason() {
    let files = templates();
    assert_eq!(files.len(), 186, "the corpus has changed");
    let mut understood = 0;
    let mut problems = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let listed = REJECTED.iter().find(|(n, _, _)| name.ends_with(n));
        match (load_file(f), listed) {
            (Ok(_), None) => understood += 1,
            (Ok(_), Some(_)) => problems.push(format!(
                "{name} is understood now: remove it from REJECTED and raise UNDERSTOOD"
            )),
            (Err(d), None) => problems.push(format!("{name} is rejected:\n{d}")),
            (Err(d), Some((_, why, _))) => {
                let first = d.errors().next().expect("an error");
                let at = &first.origin;
                if !first.message.contains(why) {
                    problems.push(format!(
                        "{name}: the first error is not the listed one ({why}):\n{first}"
                    ));
                }
                // Located: a line and column in the file, a hint to act on.
                if at.line == 0 || at.column == 0 || first.hint.is_none() && !why.contains("YAML") {
                    problems.push(format!(
                        "{name}: the error is not located or has no hint:\n{first}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(understood + REJECTED.len(), files.len());
    assert!(
        understood >= UNDERSTOOD,
        "{understood} of {} templates understood, fewer than {UNDERSTOOD}",
        files.len()
    );
}

#[test]
fn each_rejected_template_passes_with_the_options_listed_for_it() {
    let files = templates();
    for (part, _, opts) in REJECTED {
        let Some(opts) = opts else { continue };
        let f = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(part))
            .unwrap_or_else(|| panic!("{part} is not in the corpus"));
        if let Err(d) = load_file_with(f, &template_inputs(opts)) {
            panic!("{part} with {opts:?}:\n{d}");
        }
    }
}

/// A group CloudFormation would create: its id here, its ingress and egress rules.
type WantGroup<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);
/// An interface: its name and its groups.
type WantIface<'a> = (&'a str, &'a [&'a str]);

/// EC2's egress rules of a group that lists none (D2; SEMANTICS models both families).
const D2: &[&str] = &["all 0.0.0.0/0", "all ::/0"];

/// Loads corpus template `part` with `opts` and compares every group, rule and interface with
/// what CloudFormation would create, written out by hand from the template.
fn same_as_cloudformation(part: &str, opts: &[&str], groups: &[WantGroup], ifaces: &[WantIface]) {
    let f = templates()
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(part))
        .unwrap_or_else(|| panic!("{part} is not in the corpus"));
    let l = load_file_with(&f, &template_inputs(opts)).unwrap_or_else(|d| panic!("{part}:\n{d}"));
    let p = &l.policy;
    let got: Vec<&str> = p.groups.keys().map(|g| g.0.as_str()).collect();
    let mut want: Vec<&str> = groups.iter().map(|g| g.0).collect();
    want.sort_unstable();
    assert_eq!(got, want, "{part} {opts:?}: the groups");
    for (id, ingress, egress) in groups {
        let g = &p.groups[&GroupId((*id).into())];
        let i: Vec<String> = g.ingress.iter().map(rule_text).collect();
        let e: Vec<String> = g.egress.iter().map(rule_text).collect();
        assert_eq!(i, *ingress, "{part} {opts:?}: ingress of {id}");
        assert_eq!(e, *egress, "{part} {opts:?}: egress of {id}");
    }
    let got: Vec<(String, Vec<String>)> = p
        .interfaces
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.groups.iter().map(|g| g.0.clone()).collect(),
            )
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = ifaces
        .iter()
        .map(|(n, gs)| (n.to_string(), gs.iter().map(|g| g.to_string()).collect()))
        .collect();
    assert_eq!(got, want, "{part} {opts:?}: the interfaces");
}

#[test]
fn ten_templates_create_the_rules_cloudformation_would_create() {
    // SSHLocation's Default 192.168.1.0/0 is every IPv4 address once its host bits are gone.
    same_as_cloudformation(
        "EC2__EC2InstanceWithSecurityGroupSample.yaml",
        &[],
        &[("InstanceSecurityGroup", &["tcp 22-22 0.0.0.0/0"], D2)],
        &[("EC2Instance", &["InstanceSecurityGroup"])],
    );
    // HTTP only from the Classic Load Balancer's own source group (defined by ELB).
    same_as_cloudformation(
        "ElasticLoadBalancing__ELBWithLockedDownAutoScaledInstances.yaml",
        &["SSHLocation=198.51.100.0/24"],
        &[
            ("ElasticLoadBalancer-SourceSecurityGroup", &[], &[]),
            (
                "InstanceSecurityGroup",
                &[
                    "tcp 80-80 ElasticLoadBalancer-SourceSecurityGroup",
                    "tcp 22-22 198.51.100.0/24",
                ],
                D2,
            ),
        ],
        &[],
    );
    // IsEC2VPC holds in eu-central-1 and cn-north-1 only: elsewhere the group is not created.
    same_as_cloudformation("RDS__RDS_MySQL_With_Read_Replica.yaml", &[], &[], &[]);
    same_as_cloudformation(
        "RDS__RDS_MySQL_With_Read_Replica.yaml",
        &["region:eu-central-1"],
        &[
            ("DBEC2SecurityGroup", &["tcp 3306-3306 default"], D2),
            ("default", &["all default"], D2),
        ],
        &[],
    );
    // The client group is another stack's export; the bastion's rule exists only when
    // ParentSSHBastionStack is given.
    same_as_cloudformation(
        "widdix+aws-cf-templates__state__rds-mysql.yaml",
        &[],
        &[
            (
                "DatabaseSecurityGroup",
                &["tcp 3306-3306 ParentClientStack-ClientSecurityGroup"],
                D2,
            ),
            ("ParentClientStack-ClientSecurityGroup", &[], &[]),
        ],
        &[],
    );
    same_as_cloudformation(
        "widdix+aws-cf-templates__state__rds-mysql.yaml",
        &[
            "ParentClientStack=client",
            "ParentSSHBastionStack=bastion",
            "import:client-ClientSecurityGroup=sg-0aaaaaaaaaaaaaaaa",
            "import:bastion-SecurityGroup=sg-0bbbbbbbbbbbbbbbb",
        ],
        &[
            (
                "DatabaseSecurityGroup",
                &[
                    "tcp 3306-3306 sg-0aaaaaaaaaaaaaaaa",
                    "tcp 3306-3306 sg-0bbbbbbbbbbbbbbbb",
                ],
                D2,
            ),
            ("sg-0aaaaaaaaaaaaaaaa", &[], &[]),
            ("sg-0bbbbbbbbbbbbbbbb", &[], &[]),
        ],
        &[],
    );
    same_as_cloudformation(
        "widdix+aws-cf-templates__state__elasticache-redis.yaml",
        &[
            "ParentClientStack=app",
            "import:app-ClientSecurityGroup=sg-0cccccccccccccccc",
        ],
        &[
            ("SecurityGroup", &["tcp 6379-6379 sg-0cccccccccccccccc"], D2),
            ("sg-0cccccccccccccccc", &[], &[]),
        ],
        &[],
    );
    same_as_cloudformation(
        "widdix+aws-cf-templates__vpc__vpc-ssh-bastion.yaml",
        &[],
        &[("SecurityGroup", &["tcp 22-22 0.0.0.0/0"], D2)],
        &[],
    );
    // SecurityGroupIds: !Split [',', !GetAtt InstanceSecurityGroup.GroupId]; the Name tag
    // is a Join of a parameter's Default.
    same_as_cloudformation(
        "IoT__amzn2-greengrass-cfn-pkg.yaml",
        &[],
        &[("InstanceSecurityGroup", &["tcp 22-22 0.0.0.0/0"], D2)],
        &[("Greengrass Core Blog -gg_cfn", &["InstanceSecurityGroup"])],
    );
    // The CloudFront origin-facing prefix list of the region, from Mappings.
    for (region, pl) in [("us-east-1", "pl-3b927c52"), ("eu-west-1", "pl-4fa04526")] {
        let http = format!("tcp 80-80 {pl}");
        same_as_cloudformation(
            "Solutions__GitLab__GitLabServer-pkg.yaml",
            &[&format!("region:{region}")],
            &[(
                "InstanceSecurityGroup",
                &[http.as_str()],
                &["all 0.0.0.0/0"],
            )],
            &[("gitlab-server", &["InstanceSecurityGroup"])],
        );
    }
    same_as_cloudformation(
        "cfn-endpoint-waitcondition-no-igw.yaml",
        &[],
        &[
            ("EndpointSG", &["tcp 443-443 0.0.0.0/0"], D2),
            ("PrivateSG", &["tcp 22-22 10.192.0.0/16"], D2),
        ],
        &[("Private", &["PrivateSG"])],
    );
    // CreateSecurityGroup: only when a VpcId is given.
    same_as_cloudformation("security__templates__security-agent.yaml", &[], &[], &[]);
    same_as_cloudformation(
        "security__templates__security-agent.yaml",
        &["VpcId=vpc-0123456789abcdef0"],
        &[("SecurityGroupForScanner", &[], &["all 0.0.0.0/0"])],
        &[],
    );
}
