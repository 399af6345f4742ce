//! The API on one host without etcd (issue 16 item 4; SEMANTICS P4, P10, E7): `sg-agent api
//! --config FILE` writes the very policy file `sg-agent daemon --config FILE` enforces, and
//! the daemon applies each write at once (the API sends it SIGHUP; the daemons here poll only
//! hourly, so nothing else could). The real aws CLI and boto3 call it; real TCP between the
//! site's namespaces judges the result. Root only.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sg_testkit::agent_harness::{CLI, CLI2, SRV, Site, log_text, monotonic_s, probe_result};
use sg_testkit::aws::ApiServer;
use sg_testkit::netns::Netns;

/// sg-srv on srv's interface admits nothing yet (D1); the API adds the rules.
const POLICY: &str = r#"
security_groups:
  - {id: sg-srv, name: srv, description: the server}
instances:
  - name: srv-1
    addresses: [192.0.2.11, "2001:db8:10::11"]
    groups: [sg-srv]
"#;

fn api_on(ns: &Netns, file: &Path, dir: &Path) -> ApiServer {
    ApiServer::start_on(ns, &["--config", file.to_str().unwrap()], dir, true)
}

/// A daemon that reloads only when told (SIGHUP) or on a file change it polls for hourly.
fn daemon_on(site: &Site, file: &Path) -> sg_testkit::agent_harness::Bg {
    let log = site.dir.join("daemon.log");
    site.daemon(file, &["--poll", "3600"], &[], &log)
}

/// P10, E7 on one host: `aws ec2 authorize-security-group-ingress` against the local store
/// lets cli reach srv:5001 as soon as the daemon reloads the file the API wrote (no etcd
/// anywhere); the file keeps the rule id and loads with `sg-agent check`; revoking the rule
/// by id refuses new connections again. Prints call -> enforced in milliseconds.
#[test]
fn p10_local_store_authorize_opens_real_tcp_and_revoke_closes_new_connections_without_etcd() {
    let mut site = Site::new("alc");
    site.serve(&["tcp:5001"]);
    let file = site.policy("policy.yaml", POLICY);
    let _daemon = daemon_on(&site, &file);
    assert!(!site.tcp(5001, None), "E1/D1: nothing allows 5001 yet");
    let api = api_on(&site.srv, &file, &site.dir.join("api"));

    let prober = site.probe_bg(&["until-tcp", SRV, "5001", CLI, "30"]);
    // Let the prober start knocking.
    std::thread::sleep(Duration::from_millis(300));
    let t_call = monotonic_s();
    let out = api.aws_ok(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        "sg-srv",
        "--protocol",
        "tcp",
        "--port",
        "5001",
        "--cidr",
        &format!("{CLI}/32"),
    ]);
    let t_returned = monotonic_s();
    let res = probe_result(prober, Duration::from_secs(40));
    assert_eq!(res["ok"], true, "cli never reached srv:5001: {res}");
    let at = res["at"].as_f64().unwrap();
    eprintln!(
        "measured (local store): authorize call {:.0} ms; call returned -> enforced {:.0} ms \
         (negative: enforced before the CLI had printed); call sent -> enforced {:.0} ms",
        (t_returned - t_call) * 1000.0,
        (at - t_returned) * 1000.0,
        (at - t_call) * 1000.0
    );
    let log = site.dir.join("daemon.log");
    assert!(
        log_text(&log).contains("reloaded on SIGHUP"),
        "the API woke the daemon:\n{}",
        log_text(&log)
    );
    let rule_id = out["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&rule_id),
        "F6: the file keeps the rule id:\n{text}"
    );
    site.agent_ok(&["check", file.to_str().unwrap()]);
    // Read-your-writes through the same file.
    let described = api.aws_ok(&[
        "ec2",
        "describe-security-group-rules",
        "--security-group-rule-ids",
        &rule_id,
    ]);
    assert_eq!(described["SecurityGroupRules"][0]["FromPort"], 5001);

    let t_revoke = monotonic_s();
    revoke_by_id(&api, &rule_id);
    site.wait(
        "new connections to 5001 to be refused",
        Duration::from_secs(20),
        || !site.tcp(5001, None),
    );
    eprintln!(
        "measured (local store): revoke call sent -> new connections refused within {:.0} ms \
         (1 s probe timeout included)",
        (monotonic_s() - t_revoke) * 1000.0
    );
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&rule_id));

    // The same with a warm client (boto3, no interpreter start per call): from the call's
    // answer to the first connection through, on the clock the prober uses.
    for round in 0..3 {
        let prober = site.probe_bg(&["until-tcp", SRV, "5001", CLI, "30"]);
        std::thread::sleep(Duration::from_millis(300));
        let t = api.boto3(&format!(
            r#"
import time
t0 = time.monotonic()
r = ec2.authorize_security_group_ingress(GroupId="sg-srv", IpPermissions=[{{
    "IpProtocol": "tcp", "FromPort": 5001, "ToPort": 5001,
    "IpRanges": [{{"CidrIp": "{CLI}/32"}}]}}])
t1 = time.monotonic()
print(json.dumps({{"sent": t0, "answered": t1,
                  "id": r["SecurityGroupRules"][0]["SecurityGroupRuleId"]}}))
"#
        ));
        let res = probe_result(prober, Duration::from_secs(40));
        assert_eq!(res["ok"], true, "round {round}: never enforced: {res}");
        let at = res["at"].as_f64().unwrap();
        let (sent, answered) = (t["sent"].as_f64().unwrap(), t["answered"].as_f64().unwrap());
        eprintln!(
            "measured (local store, boto3) round {round}: call {:.0} ms; answered -> enforced \
             {:.0} ms; sent -> enforced {:.0} ms",
            (answered - sent) * 1000.0,
            (at - answered) * 1000.0,
            (at - sent) * 1000.0
        );
        let id = t["id"].as_str().unwrap();
        revoke_by_id(&api, id);
        site.wait("5001 refused again", Duration::from_secs(20), || {
            !site.tcp(5001, None)
        });
    }
}

/// P4 with two writers: two API servers on one file, each adding ten rules and ten tags as
/// fast as boto3 can, at the same time. Every rule and every tag is there afterwards (the
/// compare-and-swap under the file's lock retried whoever lost a race), and the file loads.
#[test]
fn p4_two_api_servers_on_one_file_lose_no_update() {
    let ns = Netns::new("alw").expect("namespace");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "security_groups:\n  - {id: sg-a, name: a, description: A}\n",
    )
    .unwrap();
    let a = api_on(&ns, &file, &dir.path().join("a"));
    let b = api_on(&ns, &file, &dir.path().join("b"));
    let script = |first: u16| {
        format!(
            r#"
ids = []
for p in range({first}, {first} + 10):
    r = ec2.authorize_security_group_ingress(GroupId="sg-a", IpPermissions=[{{
        "IpProtocol": "tcp", "FromPort": p, "ToPort": p,
        "IpRanges": [{{"CidrIp": "192.0.2.0/24"}}]}}])
    ids.append(r["SecurityGroupRules"][0]["SecurityGroupRuleId"])
    ec2.create_tags(Resources=["sg-a"], Tags=[{{"Key": "port-" + str(p), "Value": "w{first}"}}])
print(json.dumps(ids))
"#
        )
    };
    let (ids_a, ids_b) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.boto3(&script(6000)));
        let hb = s.spawn(|| b.boto3(&script(7000)));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let mut written: Vec<String> = ids_a
        .as_array()
        .unwrap()
        .iter()
        .chain(ids_b.as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    written.sort();
    let rules = a.aws_ok(&[
        "ec2",
        "describe-security-group-rules",
        "--filters",
        "Name=group-id,Values=sg-a",
    ]);
    let mut ingress: Vec<String> = rules["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsEgress"] == false)
        .map(|r| r["SecurityGroupRuleId"].as_str().unwrap().to_string())
        .collect();
    ingress.sort();
    assert_eq!(ingress, written, "every authorized rule is in the file");
    let groups = b.aws_ok(&["ec2", "describe-security-groups", "--group-ids", "sg-a"]);
    let tags = groups["SecurityGroups"][0]["Tags"].as_array().unwrap();
    assert_eq!(tags.len(), 20, "every tag is in the file: {tags:?}");
    let p = sg_agent::config::load_file(&file).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.policy.groups.values().next().unwrap().ingress.len(), 20);
}

/// P4, P7: a write the file cannot take is refused with AWS's error and the file keeps its
/// bytes, and the daemon keeps enforcing it: a call over the rules quota, a call with one
/// duplicate among its peers (the other peer is not added either), and any write while a
/// hand edit left the file invalid (the API never overwrites what it cannot read).
#[test]
fn p4_a_write_the_file_cannot_take_is_refused_and_the_file_and_enforcement_stay() {
    let mut site = Site::new("ali");
    site.serve(&["tcp:5001"]);
    let file = site.policy(
        "policy.yaml",
        &format!(
            "quotas: {{rules_per_group: 3}}\n{}",
            POLICY.replace(
                "description: the server}",
                "description: the server,\n     ingress: [{protocol: tcp, ports: 5001, source: \
                 192.0.2.10/32}]}"
            )
        ),
    );
    let _daemon = daemon_on(&site, &file);
    assert!(site.tcp(5001, None) && !site.tcp(5001, Some(CLI2)));
    let api = api_on(&site.srv, &file, &site.dir.join("api"));
    let before = std::fs::read(&file).unwrap();
    let authorize = |perm: &str| {
        vec![
            "ec2".to_string(),
            "authorize-security-group-ingress".into(),
            "--group-id".into(),
            "sg-srv".into(),
            "--ip-permissions".into(),
            perm.into(),
        ]
    };
    let call = |args: &[String], code: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        api.aws_err(&args, code)
    };
    call(
        &authorize(
            "IpProtocol=tcp,FromPort=5002,ToPort=5002,IpRanges=[{CidrIp=192.0.2.10/32},{CidrIp=192.0.2.12/32},{CidrIp=192.0.2.13/32}]",
        ),
        "RulesPerSecurityGroupLimitExceeded",
    );
    assert_eq!(std::fs::read(&file).unwrap(), before, "P7: nothing written");
    call(
        &authorize(&format!(
            "IpProtocol=tcp,FromPort=5001,ToPort=5001,IpRanges=[{{CidrIp={CLI2}/32}},{{CidrIp={CLI}/32}}]"
        )),
        "InvalidPermission.Duplicate",
    );
    assert_eq!(std::fs::read(&file).unwrap(), before, "P4: nothing written");
    assert!(
        !site.tcp(5001, Some(CLI2)),
        "P4: the other peer of the refused call was not added"
    );

    // A hand edit the validator refuses: the daemon keeps the enforced policy, the API
    // answers 500 and leaves the edit for its author to fix.
    let broken = String::from_utf8(before.clone())
        .unwrap()
        .replace("192.0.2.10/32", "sg-nowhere");
    std::fs::write(&file, &broken).unwrap();
    call(
        &authorize(&format!(
            "IpProtocol=tcp,FromPort=5002,ToPort=5002,IpRanges=[{{CidrIp={CLI}/32}}]"
        )),
        "InternalError",
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), broken);
    assert!(site.tcp(5001, None), "the enforced policy stays");
    let out: Value = api.aws_ok(&["sts", "get-caller-identity"]);
    assert!(out["Account"].is_string());
}

/// `aws ec2 revoke-security-group-ingress --group-id sg-srv --security-group-rule-ids ID`.
fn revoke_by_id(api: &ApiServer, id: &str) {
    api.aws_ok(&[
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        "sg-srv",
        "--security-group-rule-ids",
        id,
    ]);
}
