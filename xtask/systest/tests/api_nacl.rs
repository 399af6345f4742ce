//! The network ACL actions of `sg-agent api` through the real aws CLI and boto3 (issues 16 and
//! 17; SEMANTICS A2-A12, A24, P1, P4): CreateNetworkAcl, Create/Replace/DeleteNetworkAclEntry,
//! DeleteNetworkAcl, ReplaceNetworkAclAssociation, DescribeNetworkAcls (filters, pages) and
//! DescribeSubnets, success and error paths with EC2's codes, DryRun, and
//! `describe-network-acls` output read back by `sg-agent check` (one validator). Each test is
//! one etcd (root: it runs in a namespace) holding examples/vpc-nacl.yaml, and one API server.
//! The last one is the VPC lab of e2e_nacl.rs with its router following the store: an entry
//! made with the aws CLI changes real traffic at once (A25, P10).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_lab::services::tcp_session;
use sg_lab::vpc::VpcLab;
use sg_testkit::agent_harness::{Bg, run_bounded, text};
use sg_testkit::aws::{ApiServer, api_on_store};
use sg_testkit::etcd::{EtcdCluster, EtcdOptions};
use sg_testkit::fleet::{CONVERGE, Fleet, STARTUP};
use sg_testkit::netns::require_root;

/// The lab's VPC: two subnets with their NACLs (acl-public, acl-private) and the default NACL
/// sg models for them (acl-default, A9).
const VPC: &str = include_str!("../../../examples/vpc-nacl.yaml");
const VPC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/vpc-nacl.yaml");
/// The account's VPC (`sg-agent api --vpc`'s default).
const VPC_ID: &str = "vpc-0a1b2c3d";

fn start() -> (Fleet, ApiServer) {
    api_on_store(VPC, true)
}

/// The entries of one NACL as describe-network-acls shows them: (number, egress, action).
fn entries(api: &ApiServer, id: &str) -> Vec<(i64, bool, String)> {
    let d = api.aws_ok(&["ec2", "describe-network-acls", "--network-acl-ids", id]);
    d["NetworkAcls"][0]["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["RuleNumber"].as_i64().unwrap(),
                e["Egress"].as_bool().unwrap(),
                e["RuleAction"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `create-network-acl-entry` / `replace-network-acl-entry` arguments for a TCP 22 entry.
fn entry_args<'a>(verb: &'a str, acl: &'a str, number: &'a str, action: &'a str) -> Vec<&'a str> {
    vec![
        "ec2",
        verb,
        "--network-acl-id",
        acl,
        "--ingress",
        "--rule-number",
        number,
        "--protocol",
        "tcp",
        "--port-range",
        "From=22,To=22",
        "--cidr-block",
        "198.51.100.0/24",
        "--rule-action",
        action,
    ]
}

/// A11, A6, A7, A3, P4, DryRun: a new NACL denies everything (its answer shows only the `*`
/// rules, IPv4 and IPv6); entries are created, replaced and deleted with the aws CLI; a number
/// taken is NetworkAclEntryAlreadyExists, a number absent InvalidNetworkAclEntry.NotFound, a
/// reserved number InvalidParameterValue from the one validator, and nothing changes.
#[test]
fn a3_a6_a7_a11_entries_are_created_replaced_and_deleted_with_the_aws_cli() {
    let (_f, api) = start();
    let made = api.aws_ok(&[
        "ec2",
        "create-network-acl",
        "--vpc-id",
        VPC_ID,
        "--tag-specifications",
        "ResourceType=network-acl,Tags=[{Key=tier,Value=app}]",
    ]);
    let acl = &made["NetworkAcl"];
    let id = acl["NetworkAclId"].as_str().unwrap().to_string();
    assert!(id.starts_with("acl-") && id.len() == 21, "{made:#}");
    assert_eq!(acl["IsDefault"], false, "{made:#}");
    assert_eq!(acl["VpcId"], VPC_ID);
    assert_eq!(acl["Tags"], json!([{"Key": "tier", "Value": "app"}]));
    let stars: Vec<(i64, bool, String)> = entries(&api, &id);
    assert_eq!(
        stars,
        [
            (32767, true, "deny".into()),
            (32768, true, "deny".into()),
            (32767, false, "deny".into()),
            (32768, false, "deny".into()),
        ],
        "A11: a new NACL denies everything"
    );
    api.aws_err(
        &["ec2", "create-network-acl", "--vpc-id", "vpc-nowhere"],
        "InvalidVpcID.NotFound",
    );

    let create = entry_args("create-network-acl-entry", &id, "100", "allow");
    assert_eq!(api.aws_ok(&create), Value::Null, "no output, as AWS");
    api.aws_err(&create, "NetworkAclEntryAlreadyExists");
    let mut dry = entry_args("create-network-acl-entry", &id, "90", "deny");
    dry.push("--dry-run");
    api.aws_err(&dry, "DryRunOperation");
    for number in ["0", "32767", "40000"] {
        let e = api.aws_err(
            &entry_args("create-network-acl-entry", &id, number, "allow"),
            "InvalidParameterValue",
        );
        assert!(e.contains(number) && e.contains("A3"), "{e}");
    }
    let egress_v6 = [
        "ec2",
        "create-network-acl-entry",
        "--network-acl-id",
        &id,
        "--egress",
        "--rule-number",
        "100",
        "--protocol",
        "58",
        "--icmp-type-code",
        "Type=128,Code=-1",
        "--ipv6-cidr-block",
        "2001:db8:20::/64",
        "--rule-action",
        "allow",
    ];
    api.aws_ok(&egress_v6);
    let d = api.aws_ok(&["ec2", "describe-network-acls", "--network-acl-ids", &id]);
    let all = d["NetworkAcls"][0]["Entries"].as_array().unwrap();
    let entry = |egress: bool, number: u32| {
        all.iter()
            .find(|e| e["Egress"] == egress && e["RuleNumber"] == number)
            .unwrap()
    };
    assert_eq!(
        entry(true, 100),
        &json!({"RuleNumber": 100, "Protocol": "58", "RuleAction": "allow", "Egress": true,
                "Ipv6CidrBlock": "2001:db8:20::/64", "IcmpTypeCode": {"Code": -1, "Type": 128}}),
        "{d:#}"
    );
    assert_eq!(
        entry(false, 100),
        &json!({"RuleNumber": 100, "Protocol": "6", "RuleAction": "allow", "Egress": false,
                "CidrBlock": "198.51.100.0/24", "PortRange": {"From": 22, "To": 22}}),
        "{d:#}"
    );

    api.aws_ok(&entry_args("replace-network-acl-entry", &id, "100", "deny"));
    assert!(entries(&api, &id).contains(&(100, false, "deny".into())));
    api.aws_err(
        &entry_args("replace-network-acl-entry", &id, "7", "deny"),
        "InvalidNetworkAclEntry.NotFound",
    );
    let delete = [
        "ec2",
        "delete-network-acl-entry",
        "--network-acl-id",
        &id,
        "--ingress",
        "--rule-number",
        "100",
    ];
    api.aws_ok(&delete);
    api.aws_err(&delete, "InvalidNetworkAclEntry.NotFound");
    assert!(!entries(&api, &id).contains(&(100, false, "deny".into())));
    api.aws_err(
        &entry_args("create-network-acl-entry", "acl-nowhere", "1", "allow"),
        "InvalidNetworkAclID.NotFound",
    );
}

/// A9, A12: the default NACL and a NACL in use are not deleted (AWS's codes); a subnet moves
/// to another NACL with replace-network-acl-association (a new association id, the old one
/// gone); then its old NACL can be deleted.
#[test]
fn a9_a12_associations_are_replaced_and_nacls_in_use_stay() {
    let (_f, api) = start();
    let del = |id| ["ec2", "delete-network-acl", "--network-acl-id", id];
    api.aws_err(&del("acl-default"), "InvalidParameterValue");
    api.aws_err(&del("acl-public"), "DependencyViolation");
    api.aws_err(&del("acl-nowhere"), "InvalidNetworkAclID.NotFound");

    let d = api.aws_ok(&[
        "ec2",
        "describe-network-acls",
        "--filters",
        "Name=association.subnet-id,Values=subnet-public",
    ]);
    let acls = d["NetworkAcls"].as_array().unwrap();
    assert_eq!(acls.len(), 1, "{d:#}");
    assert_eq!(acls[0]["NetworkAclId"], "acl-public");
    let assoc = acls[0]["Associations"][0]["NetworkAclAssociationId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(assoc.starts_with("aclassoc-"), "{d:#}");
    let replace = [
        "ec2",
        "replace-network-acl-association",
        "--association-id",
        &assoc,
        "--network-acl-id",
        "acl-default",
    ];
    let moved = api.aws_ok(&replace);
    let new = moved["NewAssociationId"].as_str().unwrap();
    assert!(new.starts_with("aclassoc-") && new != assoc, "{moved:#}");
    // The old association id is gone with the move: the same call again is refused.
    api.aws_err(&replace, "InvalidAssociationID.NotFound");
    let d = api.aws_ok(&[
        "ec2",
        "describe-network-acls",
        "--filters",
        "Name=default,Values=true",
    ]);
    let subnets: Vec<&str> = d["NetworkAcls"][0]["Associations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["SubnetId"].as_str().unwrap())
        .collect();
    assert_eq!(subnets, ["subnet-public"], "{d:#}");
    api.aws_ok(&del("acl-public"));
    api.aws_err(&del("acl-public"), "InvalidNetworkAclID.NotFound");
}

/// A24, P4, pages and filters with boto3: the 20th entry of a list and family (the `*` rule
/// counts) is NetworkAclEntryLimitExceeded and writes nothing; DescribeNetworkAcls pages with
/// MaxResults/NextToken and filters by id, VPC and entry; DescribeSubnets shows the subnets'
/// CIDRs.
#[test]
fn a24_quota_pages_and_filters_through_boto3() {
    let (_f, api) = start();
    let out = api.boto3(
        r#"
out = {}
acl = ec2.create_network_acl(VpcId="vpc-0a1b2c3d")["NetworkAcl"]["NetworkAclId"]
entry = dict(NetworkAclId=acl, Protocol="6", RuleAction="allow", Egress=False,
             CidrBlock="203.0.113.0/24", PortRange={"From": 443, "To": 443})
out["fill"] = [code(ec2.create_network_acl_entry, RuleNumber=n, **entry) for n in range(1, 20)]
out["over"] = code(ec2.create_network_acl_entry, RuleNumber=20, **entry)
ins = [e for e in ec2.describe_network_acls(NetworkAclIds=[acl])["NetworkAcls"][0]["Entries"]
       if not e["Egress"] and "CidrBlock" in e]
out["count"] = len(ins)
for _ in range(4):
    ec2.create_network_acl(VpcId="vpc-0a1b2c3d")
p1 = ec2.describe_network_acls(MaxResults=5)
p2 = ec2.describe_network_acls(MaxResults=5, NextToken=p1["NextToken"])
out["pages"] = [len(p1["NetworkAcls"]), len(p2["NetworkAcls"]), "NextToken" in p2]
f = lambda n, v: ec2.describe_network_acls(Filters=[{"Name": n, "Values": v}])["NetworkAcls"]
out["vpc"] = len(f("vpc-id", ["vpc-0a1b2c3d"]))
out["deny3306"] = sorted(a["NetworkAclId"] for a in
    ec2.describe_network_acls(Filters=[{"Name": "entry.rule-action", "Values": ["deny"]},
                                       {"Name": "entry.cidr", "Values": ["192.0.2.12/32"]}])["NetworkAcls"])
out["bad_filter"] = code(ec2.describe_network_acls, Filters=[{"Name": "colour", "Values": ["x"]}])
out["missing"] = code(ec2.describe_network_acls, NetworkAclIds=["acl-nowhere"])
s = ec2.describe_subnets()["Subnets"]
out["subnets"] = sorted((x["SubnetId"], x["CidrBlock"],
    x["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]) for x in s)
out["subnet_missing"] = code(ec2.describe_subnets, SubnetIds=["subnet-nowhere"])
print(json.dumps(out))
"#,
    );
    assert_eq!(out["fill"], json!(vec!["ok"; 19]), "{out:#}");
    assert_eq!(out["over"], "NetworkAclEntryLimitExceeded", "{out:#}");
    assert_eq!(
        out["count"], 20,
        "19 IPv4 entries and the IPv4 `*` rule: {out:#}"
    );
    // acl-default, acl-private, acl-public and 5 created.
    assert_eq!(out["pages"], json!([5, 3, false]), "{out:#}");
    assert_eq!(out["vpc"], 8, "{out:#}");
    assert_eq!(out["deny3306"], json!(["acl-private"]), "{out:#}");
    assert_eq!(out["bad_filter"], "InvalidParameterValue");
    assert_eq!(out["missing"], "InvalidNetworkAclID.NotFound");
    assert_eq!(
        out["subnets"],
        json!([
            ["subnet-private", "192.0.2.128/25", "2001:db8:11::/64"],
            ["subnet-public", "192.0.2.0/25", "2001:db8:10::/64"]
        ]),
        "{out:#}"
    );
    assert_eq!(out["subnet_missing"], "InvalidSubnetID.NotFound");
}

/// One validator: `aws ec2 describe-network-acls` output (with `describe-subnets`' subnets,
/// as docs/policy-format.md says) is a file `sg-agent check` accepts, with the entry the API
/// wrote; `store export` holds the same NACLs.
#[test]
fn describe_network_acls_output_round_trips_through_sg_agent_check() {
    let (f, api) = start();
    api.aws_ok(&entry_args(
        "create-network-acl-entry",
        "acl-public",
        "90",
        "deny",
    ));
    let acls = api.aws_ok(&["ec2", "describe-network-acls"]);
    let subnets = api.aws_ok(&["ec2", "describe-subnets"]);
    let doc = json!({"NetworkAcls": acls["NetworkAcls"], "Subnets": subnets["Subnets"]});
    let file = f.write("describe-nacls.json", &doc.to_string());
    let o = f.sg(None, &["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "check:\n{}\n{doc:#}", text(&o));
    let export = f.export_policy();
    assert!(
        export.contains("acl-public") && export.contains("number: 90"),
        "{export}"
    );
    // The exported policy and the describe output are the same NACLs: export -> import
    // changes nothing the API shows.
    f.import(&f.write("export.yaml", &export));
    assert_eq!(api.aws_ok(&["ec2", "describe-network-acls"]), acls);
}

/// `sg-agent ARGS` in `ns`, which must succeed; its stdout.
fn sg_in(ns: &sg_testkit::netns::Netns, args: &[&str]) -> String {
    let mut c = ns.cmd(sg_testkit::agent_bin());
    c.args(args).env("RUST_LOG", "warn");
    let o = run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "sg-agent {args:?}:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `host`'s ack in the store is the store's current policy.
fn is_current(ns: &sg_testkit::netns::Netns, endpoints: &str, host: &str) -> bool {
    let status: Value = serde_json::from_str(&sg_in(
        ns,
        &["--json", "store", "--store", endpoints, "status"],
    ))
    .unwrap();
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["host"] == host && h["current"] == true)
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// A25, P10, A4 (contrast X1): the VPC lab's router runs `sg-agent daemon --store` on an etcd
/// beside its outside leg. `aws ec2 create-network-acl-entry` adds a deny numbered below the
/// private subnet's allow of MySQL: web-1's established session to db-1:3306 stops at once
/// (a NACL keeps no state); `delete-network-acl-entry` lets it through again.
#[test]
fn a25_an_api_nacl_deny_cuts_a_live_session_and_its_delete_restores_it() {
    require_root();
    let lab = VpcLab::up(sg_testkit::agent_bin().as_ref(), VPC_FILE.as_ref())
        .unwrap_or_else(|e| panic!("the VPC lab: {e:#}"));
    // The etcd member sits on the router's outside bridge (203.0.113.0/24, below the A22
    // host's 203.0.113.192/26, which the router reaches through internet): the router reaches
    // it on its own address, which no NACL filters (A21).
    let opts = EtcdOptions {
        addrs: vec![Ipv4Addr::new(203, 0, 113, 121)],
        ..EtcdOptions::default()
    };
    let etcd = EtcdCluster::start_on(&lab.switch, "br-out", 1, opts).expect("etcd");
    let endpoints = etcd.endpoints();
    let store_ns = etcd.member_ns(0);
    let file = lab.policy.display().to_string();
    sg_in(store_ns, &["store", "--store", &endpoints, "import", &file]);
    let dir = lab.files.dir().join("api");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("router.agent.log");
    let mut c = lab.router.cmd(sg_testkit::agent_bin());
    c.args(["daemon", "--store", &endpoints, "--host", "router"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let router = Bg {
        child: c.spawn().expect("spawn the router's daemon"),
        what: "the router's sg-agent daemon".into(),
    };
    let router_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while !is_current(store_ns, &endpoints, "router") {
        assert!(
            t0.elapsed() < STARTUP,
            "the router did not enforce the store within {STARTUP:?}; its log:\n{}",
            router_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let api = ApiServer::start(store_ns, &endpoints, &dir, true);

    // A new MySQL session from web-1 to db-1, connected.
    let session = || {
        let db = lab.host("db-1").addr(false);
        let mut s = tcp_session(lab.host("web-1"), db, 3306).unwrap();
        s.wait_ready(Duration::from_secs(5)).unwrap();
        s
    };
    let router_applies = |what: &str| {
        wait_for(what, CONVERGE, || {
            is_current(store_ns, &endpoints, "router")
        });
    };
    let mut s = session();
    assert!(
        s.round_trip("before", Duration::from_secs(3)),
        "{}",
        router_log()
    );
    let deny = [
        "ec2",
        "create-network-acl-entry",
        "--network-acl-id",
        "acl-private",
        "--ingress",
        "--rule-number",
        "80",
        "--protocol",
        "tcp",
        "--port-range",
        "From=3306,To=3306",
        "--cidr-block",
        "192.0.2.11/32",
        "--rule-action",
        "deny",
    ];
    let t0 = Instant::now();
    api.aws_ok(&deny);
    let called = t0.elapsed();
    router_applies("the router to apply the deny");
    let enforced = t0.elapsed();
    assert!(
        !s.round_trip("after the deny", Duration::from_secs(3)),
        "A25: the established session still works after the API's deny\n{}",
        router_log()
    );
    eprintln!(
        "measured: create-network-acl-entry call {called:?}; call -> router current {enforced:?}"
    );
    // The entry the API wrote is the one that dropped it: its counter exists only in the
    // store's policy the daemon applied.
    let c = lab.agents.counters(&lab.router).expect("router counters");
    assert!(c.rule("acl-private/in/80") >= 1, "{:?}", c.rules);
    api.aws_ok(&[
        "ec2",
        "delete-network-acl-entry",
        "--network-acl-id",
        "acl-private",
        "--ingress",
        "--rule-number",
        "80",
    ]);
    router_applies("the router to apply the delete");
    let mut again = session();
    assert!(
        again.round_trip("after the delete", Duration::from_secs(3)),
        "the delete did not restore MySQL\n{}",
        router_log()
    );
    // The daemon goes first: it would put back what a detach removes.
    drop(router);
    lab.agents.detach_all_cleanly();
}
