//! The API changes real traffic (issue 16; SEMANTICS P10, E7, R1, S1): two hosts in
//! namespaces, each with an `sg-agent daemon --store` registering its eth0 (db in sg-db, web1
//! in sg-web), an echo server on db:3306, and the aws CLI calling `sg-agent api` on the same
//! etcd. The article's group rule opens MySQL from sg-web's members; revoking it by rule id
//! refuses new connections. Root only.

use std::time::Instant;

use sg_testkit::aws::{ARTICLE_DB_PERMISSION, ApiServer};
use sg_testkit::fleet::{CONVERGE, DB, Fleet, STARTUP, WEB1, WEB3};

/// sg-db admits nothing yet (D1): the API adds the rule.
const GROUPS: &str = r#"
security_groups:
  - {id: sg-web, name: web, description: Web tier}
  - {id: sg-db, name: db, description: Database tier}
"#;

/// P10, E7, R1: `aws ec2 authorize-security-group-ingress` (the article's sg-web -> sg-db
/// 3306 rule) lets web1 reach db's MySQL as soon as db's agent applies the store's new
/// revision; `revoke-security-group-ingress --security-group-rule-ids` refuses new
/// connections again (an established flow would stay, X1: not probed here).
#[test]
fn p10_an_api_authorize_opens_real_tcp_and_a_revoke_closes_new_connections() {
    let mut f = Fleet::new(1, &[("db", DB), ("web1", WEB1)]);
    f.serve("db", &[3306]);
    f.import(&f.write("groups.yaml", GROUPS));
    f.start_agent("db", "eth0=sg-db", 10);
    f.start_agent("web1", "eth0=sg-web", 10);
    f.wait_current(&["db", "web1"], STARTUP);
    assert!(!f.connects("web1", DB, 3306), "E1: nothing allows 3306 yet");
    let api = ApiServer::on_fleet(&f, "api", true);

    let t0 = Instant::now();
    let out = api.authorize_ingress("sg-db", &[ARTICLE_DB_PERMISSION]);
    let called = t0.elapsed();
    let rule_id = out["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .to_string();
    f.wait("web1 to reach db:3306 after the API call", CONVERGE, || {
        f.connects("web1", DB, 3306)
    });
    eprintln!(
        "measured: authorize call {called:?}; call -> enforced (web1 connects) {:?}",
        t0.elapsed()
    );
    f.wait_current(&["db", "web1"], CONVERGE);
    f.verify_store("db");

    let t1 = Instant::now();
    api.aws_ok(&[
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        "sg-db",
        "--security-group-rule-ids",
        &rule_id,
    ]);
    f.wait(
        "web1's new connections to db:3306 to be refused",
        CONVERGE,
        || !f.connects("web1", DB, 3306),
    );
    eprintln!("measured: revoke call -> enforced {:?}", t1.elapsed());
    f.wait_current(&["db", "web1"], CONVERGE);
    f.verify_store("db");
}

/// R1, S1, P10: "launch ten more web servers into sg-web, they instantly get access" through
/// the API: an imported instance (web3, no agent of its own) moved into sg-web with
/// `aws ec2 modify-network-interface-attribute --groups` reaches db's MySQL as soon as db's
/// agent applies the change, and loses it when moved out again.
#[test]
fn r1_an_interface_moved_into_sg_web_by_the_api_reaches_the_db() {
    let mut f = Fleet::new(1, &[("db", DB), ("web3", WEB3)]);
    f.serve("db", &[3306]);
    let policy = format!(
        "security_groups:\n\
         \x20 - {{id: sg-web, name: web, description: Web tier}}\n\
         \x20 - {{id: sg-other, name: other, description: elsewhere}}\n\
         \x20 - {{id: sg-db, name: db, description: Database tier,\n\
         \x20     ingress: [{{protocol: tcp, ports: 3306, source: sg-web}}]}}\n\
         instances:\n\
         \x20 - {{name: web-3, addresses: [{WEB3}], groups: [sg-other]}}\n"
    );
    f.import(&f.write("groups.yaml", &policy));
    f.start_agent("db", "eth0=sg-db", 10);
    f.wait_current(&["db"], STARTUP);
    assert!(!f.connects("web3", DB, 3306), "web-3 is not in sg-web yet");
    let api = ApiServer::on_fleet(&f, "api", true);
    let modify = |groups: &[&str]| {
        let mut args = vec![
            "ec2",
            "modify-network-interface-attribute",
            "--network-interface-id",
            "web-3",
            "--groups",
        ];
        args.extend_from_slice(groups);
        api.aws_ok(&args);
    };
    let t0 = Instant::now();
    modify(&["sg-web"]);
    f.wait("web3 to reach db:3306 once in sg-web", CONVERGE, || {
        f.connects("web3", DB, 3306)
    });
    eprintln!(
        "measured: modify-network-interface-attribute -> enforced {:?}",
        t0.elapsed()
    );
    modify(&["sg-other"]);
    f.wait("web3 to be refused once out of sg-web", CONVERGE, || {
        !f.connects("web3", DB, 3306)
    });
    f.wait_current(&["db"], CONVERGE);
    f.verify_store("db");
}
