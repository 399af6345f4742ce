//! The seed article's aws CLI commands, verbatim but for `--endpoint-url`, against
//! `sg-agent api` on a real etcd (issue 16; SEMANTICS P1, P3, P5, F6, R1): the output is
//! compared field by field with the article's, and `describe-security-groups` output goes
//! back into `sg-agent check` (one validator reads what the API writes). Root only (the
//! etcd runs in a namespace); the clients are the project's aws CLI and boto3
//! (`cargo xtask bootstrap`).

use serde_json::{Value, json};
use sg_testkit::agent_harness::text;
use sg_testkit::aws::{ARTICLE_DB_PERMISSION, ApiServer, api_on_store};
use sg_testkit::fleet::Fleet;

/// The article's groups before its commands: sg-0a1b2c3d (the HTTPS example), sg-web and
/// sg-db (the tiers), no rules yet.
const ARTICLE_GROUPS: &str = r#"
security_groups:
  - {id: sg-0a1b2c3d, name: web-public, description: Public web}
  - {id: sg-web, name: web, description: Web tier}
  - {id: sg-db, name: db, description: Database tier}
"#;

fn start() -> (Fleet, ApiServer) {
    api_on_store(ARTICLE_GROUPS, true)
}

fn is_rule_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 21
            && s.starts_with("sgr-")
            && s[4..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Every field the article shows, equal; the rule id in EC2's format (F6).
fn assert_article_fields(got: &Value, article: &Value) {
    for (k, want) in article.as_object().unwrap() {
        if k == "SecurityGroupRuleId" {
            assert!(is_rule_id(&got[k]), "{k}: {}", got[k]);
        } else {
            assert_eq!(&got[k], want, "{k} in {got:#}");
        }
    }
}

/// P1, P3, F6: the article's HTTPS rule, then its group-to-group rule (R1), print what the
/// article prints; describe shows both as IpPermissions; revoke with the same parameters
/// (P5) and by SecurityGroupRuleId remove them; a second revoke is InvalidPermission.NotFound.
#[test]
fn p1_p3_the_articles_commands_print_what_the_article_shows() {
    let (_f, api) = start();
    let https = r#"IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=0.0.0.0/0,Description="Public HTTPS"}]"#;
    let out = api.authorize_ingress("sg-0a1b2c3d", &[https]);
    assert_eq!(out["Return"], true, "{out:#}");
    let rules = out["SecurityGroupRules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{out:#}");
    assert_article_fields(
        &rules[0],
        &json!({
            "SecurityGroupRuleId": "sgr-0c1d2e3f4a5b6c7d8",
            "GroupId": "sg-0a1b2c3d",
            "IsEgress": false,
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
            "CidrIpv4": "0.0.0.0/0",
            "Description": "Public HTTPS"
        }),
    );
    let https_id = rules[0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .to_string();

    let out = api.authorize_ingress("sg-db", &[ARTICLE_DB_PERMISSION]);
    let rule = &out["SecurityGroupRules"][0];
    assert_article_fields(
        rule,
        &json!({"GroupId": "sg-db", "IsEgress": false, "IpProtocol": "tcp", "FromPort": 3306,
                "ToPort": 3306, "Description": "Allow web tier to DB"}),
    );
    assert_eq!(rule["ReferencedGroupInfo"]["GroupId"], "sg-web", "{out:#}");

    let d = api.aws_ok(&["ec2", "describe-security-groups", "--group-ids", "sg-db"]);
    let g = &d["SecurityGroups"][0];
    assert_eq!(g["GroupId"], "sg-db");
    assert_eq!(g["GroupName"], "db");
    assert_eq!(g["Description"], "Database tier");
    assert_eq!(g["OwnerId"], "123456789012");
    assert_eq!(
        g["IpPermissions"],
        json!([{
            "IpProtocol": "tcp", "FromPort": 3306, "ToPort": 3306,
            "UserIdGroupPairs": [{"Description": "Allow web tier to DB", "UserId": "123456789012",
                                  "GroupId": "sg-web"}],
            "IpRanges": [], "Ipv6Ranges": [], "PrefixListIds": []
        }]),
        "{d:#}"
    );
    // D2: the imported group has the default egress.
    assert_eq!(g["IpPermissionsEgress"][0]["IpProtocol"], "-1", "{d:#}");

    // "To remove a rule, use revoke-security-group-ingress with the same parameters (or the
    // SecurityGroupRuleId)."
    let same = [
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        "sg-db",
        "--ip-permissions",
        ARTICLE_DB_PERMISSION,
    ];
    assert_eq!(api.aws_ok(&same)["Return"], true);
    api.aws_err(&same, "InvalidPermission.NotFound");
    let by_id = [
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        "sg-0a1b2c3d",
        "--security-group-rule-ids",
        &https_id,
    ];
    assert_eq!(api.aws_ok(&by_id)["Return"], true);
    api.aws_err(&by_id, "InvalidSecurityGroupRuleId.NotFound");
    let d = api.aws_ok(&["ec2", "describe-security-groups"]);
    for g in d["SecurityGroups"].as_array().unwrap() {
        assert_eq!(g["IpPermissions"], json!([]), "{d:#}");
    }
}

/// One validator: `aws ec2 describe-security-groups` output is a policy `sg-agent check`
/// accepts, with the rules, ids and descriptions the API wrote; `store export` then `store
/// import` keeps everything the API shows, tags included.
#[test]
fn describe_output_round_trips_through_sg_agent_check() {
    let (f, api) = start();
    api.authorize_ingress(
        "sg-db",
        &[
            ARTICLE_DB_PERMISSION,
            r#"IpProtocol=icmp,FromPort=8,ToPort=-1,IpRanges=[{CidrIp=198.51.100.0/24}]"#,
        ],
    );
    let d = api.aws_ok(&["ec2", "describe-security-groups"]);
    let file = f.write("describe.json", &d.to_string());
    let o = f.sg(None, &["--json", "check", file.to_str().unwrap()]);
    assert!(o.status.success(), "check:\n{}\n{d:#}", text(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("sg-db") && summary.contains("sg-web"),
        "{summary}"
    );
    // The store's own export agrees with what the API shows (same ids and descriptions), and
    // importing it back changes nothing the API shows, tags included (S1-S2 round trip).
    api.aws_ok(&[
        "ec2",
        "create-tags",
        "--resources",
        "sg-db",
        "--tags",
        "Key=tier,Value=data",
    ]);
    let before = api.aws_ok(&["ec2", "describe-security-groups"]);
    let export = f.export_policy();
    assert!(
        export.contains("Allow web tier to DB") && export.contains("icmp"),
        "{export}"
    );
    f.import(&f.write("export.yaml", &export));
    let after = api.aws_ok(&["ec2", "describe-security-groups"]);
    assert_eq!(after, before, "export -> import changed what the API shows");
    assert_eq!(
        after["SecurityGroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["GroupId"] == "sg-db")
            .unwrap()["Tags"],
        json!([{"Key": "tier", "Value": "data"}])
    );
}
