//! The CloudFormation corpus (../shared/corpus/cfn: 186 real-world templates nobody here
//! wrote, MANIFEST.tsv names their origins) read unedited, with no option given: at least
//! UNDERSTOOD of them load, and every other one is rejected for the reason listed in REJECTED
//! (checked against its first error), so the count cannot drop silently and a reason cannot
//! change unnoticed. Where an option makes a rejected template pass, the test gives it and
//! checks that it does.

use std::path::{Path, PathBuf};

use sg_agent::config::{TemplateInputs, load_file, load_file_with};

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

fn inputs(opts: &[&str]) -> TemplateInputs {
    let mut i = TemplateInputs::default();
    for o in opts {
        match o.strip_prefix("import:") {
            Some(imp) => i.add_import(imp).unwrap(),
            None => i.add_parameter(o).unwrap(),
        }
    }
    i
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
        if let Err(d) = load_file_with(f, &inputs(opts)) {
            panic!("{part} with {opts:?}:\n{d}");
        }
    }
}
