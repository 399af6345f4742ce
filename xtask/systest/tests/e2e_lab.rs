//! The EC2 lab of the seed article, end to end, exactly as `cargo xtask lab` runs it: every
//! path of the table is as EC2 would have it, the CloudFormation twin gives the same table,
//! the TC ingress hook gives the same table, and a web server launched into sg-web reaches the
//! database at once (R1); and the default lab, the same told through the EC2 API (groups made
//! with the aws CLI, daemons following the store). The database is the TCP echo stand-in (the
//! suite never needs MariaDB).
use std::path::{Path, PathBuf};
use std::time::Duration;

use sg_lab::api::ApiLab;

use sg_lab::probe::assert_rows;
use sg_lab::scenario::{Ec2Lab, LabOptions};
use sg_lab::topology::Naming;
use sg_testkit::netns::require_root;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn lab(policy: &str, hook: Option<&str>) -> Ec2Lab {
    require_root();
    Ec2Lab::up(LabOptions {
        agent: sg_testkit::agent_bin().into(),
        policy: example(policy),
        naming: Naming::Unique,
        want_mariadb: false,
        ingress_hook: hook.map(str::to_string),
        apply: true,
    })
    .unwrap_or_else(|e| panic!("lab with {policy}: {e:#}"))
}

/// E1 E2 E5 D1 D2 D4 F5 R1 R2 I1 I3 C1 (every allowed row's replies), IPv4 and IPv6: the
/// seed scenario's table, then scaling out (R1, E5), with the native policy.
#[test]
fn seed_lab_every_path_as_ec2_and_a_new_web_server_reaches_the_db_at_once_r1() {
    let mut lab = lab("ec2-lab.yaml", None);
    let rows = lab.run(&lab.paths()).unwrap();
    assert_rows(&rows);
    // The counters saw the traffic the table claims (E4: charged to the rule that allowed).
    let c = lab
        .agents
        .counters(&lab.lan.host("db-1").ns)
        .expect("db-1 counters");
    let mysql = c
        .find("sg-db", "ingress", "tcp 3306 from sg-web")
        .expect("the MySQL rule");
    assert!(mysql.packets >= 8, "MySQL rule counted {}", mysql.packets);
    assert!(c.reason("drop_no_rule") >= 8, "{:?}", c.reasons);

    let (more, report) = lab.scale_out().unwrap();
    assert_rows(&more);
    assert!(report.contains("member 192.0.2.13 of sg-web"), "{report}");
    let errors = lab.agents.detach_all();
    assert!(errors.is_empty(), "{errors:?}");
}

/// The lab through the EC2 API (issue 16, item 6), as `cargo xtask lab` runs it: the groups
/// made with the real aws CLI through `sg-agent api` on etcd (P1-P4), every instance's agent a
/// daemon on the store, the same table as the file-driven lab (E1 E2 E5 D2 D4 F5 R1 R2 I1 I3);
/// web-3 launched into sg-web reaches the database (R1); revoking under live SSH sessions
/// keeps the tracked one (X1) and cuts the untracked one (X2, C4); describe-security-groups
/// goes back through `sg-agent check`.
#[test]
fn api_lab_groups_made_with_the_aws_cli_are_enforced_by_daemons_on_the_store() {
    require_root();
    let mut lab = ApiLab::up(
        Path::new(sg_testkit::agent_bin()),
        Naming::Unique,
        false,
        None,
    )
    .unwrap_or_else(|e| panic!("API lab: {e:#}"));
    lab.build_groups().expect("the article's aws commands");
    lab.launch_instances().expect("daemons");
    lab.wait_converged(Duration::from_secs(90))
        .expect("every instance enforces the store's policy");
    let rows = lab.lab.run(&lab.lab.paths()).unwrap();
    assert_rows(&rows);
    let c = lab
        .lab
        .agents
        .counters(&lab.lab.lan.host("db-1").ns)
        .expect("db-1 counters");
    let mysql = c
        .find(&lab.db, "ingress", &format!("tcp 3306 from {}", lab.web))
        .expect("the article's group rule, by the ids the API returned");
    assert!(mysql.packets >= 8, "MySQL rule counted {}", mysql.packets);
    let (more, report) = lab.scale_out().unwrap();
    assert_rows(&more);
    assert!(report.contains("first connection to db-1:3306"), "{report}");
    for l in lab.revoke_under_live_sessions().unwrap() {
        assert_eq!(l.got, l.expected, "{}", l.what);
    }
    let check = lab.describe_round_trip().unwrap();
    assert!(check.contains("security groups: 2"), "{check}");
}

/// The CloudFormation twin (examples/ec2-lab.cfn.yaml) gives the same table: every path as
/// expected (the rows are the native run's rows), its rules carry the same ids as the native
/// file's, and its scale-out (an AWS::EC2::Instance appended) works the same.
#[test]
fn seed_lab_cloudformation_twin_gives_the_same_table() {
    let mut cfn = lab("ec2-lab.cfn.yaml", None);
    assert_eq!(cfn.format.name(), "CloudFormation");
    let rows = cfn.run(&cfn.paths()).unwrap();
    assert_rows(&rows);
    let native = sg_agent::config::load_file(&example("ec2-lab.yaml")).unwrap();
    let mut want: Vec<String> = native.policy.all_rules().map(|r| r.id.0.clone()).collect();
    want.sort();
    let counters = cfn
        .agents
        .counters(&cfn.lan.host("web-1").ns)
        .expect("web-1 counters");
    let mut got: Vec<String> = counters.rules.iter().map(|r| r.id.clone()).collect();
    got.sort();
    assert_eq!(got, want, "the twin's rule ids");
    let (more, _) = cfn.scale_out().unwrap();
    assert_rows(&more);
}

/// The same table with the TC ingress hook instead of XDP (`--ingress-hook tc`).
#[test]
fn seed_lab_with_the_tc_ingress_hook_gives_the_same_table() {
    let lab = lab("ec2-lab.yaml", Some("tc"));
    let status = lab
        .agents
        .status(&lab.lan.host("web-1").ns)
        .expect("status");
    assert_eq!(
        status["interfaces"][0]["ingress"], "tc",
        "web-1 should be on the TC hook: {status}"
    );
    let rows = lab.run(&lab.paths()).unwrap();
    assert_rows(&rows);
}
