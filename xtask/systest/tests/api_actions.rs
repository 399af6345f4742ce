//! Every action of `sg-agent api` through boto3 and the aws CLI, success and error paths
//! with EC2's codes (issue 16; SEMANTICS P1-P8, D2, F5, F6, Q1): groups (create, describe
//! with filters and pages, delete), rules (authorize, revoke, describe), tags, DryRun, STS,
//! Signature V4 and the store being unreachable. Each test is one etcd (root: it runs in a
//! namespace) and one API server.

use serde_json::{Value, json};
use sg_testkit::aws::{ApiServer, SECRET, api_on_store};
use sg_testkit::fleet::Fleet;

/// sg-web is on an interface (web-1), sg-default is a VPC default group (D3); quotas are low
/// so that P7 is reachable in a test.
const GROUPS: &str = r#"
quotas: {rules_per_group: 4}
security_groups:
  - {id: sg-default, default: true, description: default VPC security group}
  - {id: sg-web, name: web, description: Web tier}
  - {id: sg-db, name: db, description: Database tier}
instances:
  - {name: web-1, addresses: [192.0.2.11], groups: [sg-web]}
"#;

/// Python helpers every script gets beside the test kit's `code(f, **kw)`: `status(...)`,
/// the HTTP status.
const HELPERS: &str = r#"
def status(f, **kw):
    try:
        f(**kw)
        return 200
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
out = {}
"#;

fn start(auth: bool) -> (Fleet, ApiServer) {
    start_with(GROUPS, auth)
}

fn start_with(policy: &str, auth: bool) -> (Fleet, ApiServer) {
    api_on_store(policy, auth)
}

fn run(api: &ApiServer, body: &str) -> Value {
    api.boto3(&format!(
        "{HELPERS}{body}\nprint(json.dumps(out, default=str))\n"
    ))
}

/// P8, P6, D2, DryRun: CreateSecurityGroup (tags, reserved and duplicate names), Describe
/// by id, name, filters and pages, CreateTags/DeleteTags, DeleteSecurityGroup refused while
/// in use (interface, reference) and for the default group.
#[test]
fn p6_p8_groups_are_created_described_tagged_and_deleted_with_ec2s_errors() {
    let (_f, api) = start(true);
    let out = run(
        &api,
        r#"
g = ec2.create_security_group(GroupName="app", Description="App tier",
    TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "env", "Value": "prod"}]}])
gid = g["GroupId"]
out["create"] = g
out["dup"] = code(ec2.create_security_group, GroupName="app", Description="again")
out["reserved"] = code(ec2.create_security_group, GroupName="default", Description="x")
out["sg_name"] = code(ec2.create_security_group, GroupName="sg-x", Description="x")
out["bad_vpc"] = code(ec2.create_security_group, GroupName="x", Description="x", VpcId="vpc-nowhere")
out["bad_description"] = code(ec2.create_security_group, GroupName="x", Description="caf\u00e9")
out["missing"] = code(ec2_raw.create_security_group, GroupName="x")
out["dry"] = code(ec2.create_security_group, GroupName="dry", Description="d", DryRun=True)
out["dry_status"] = status(ec2.create_security_group, GroupName="dry", Description="d", DryRun=True)
out["dry_absent"] = code(ec2.describe_security_groups, GroupNames=["dry"])
out["described"] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
out["by_name"] = [g["GroupId"] for g in ec2.describe_security_groups(GroupNames=["app"])["SecurityGroups"]]
def ids(filters):
    return [g["GroupId"] for g in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]]
out["f_tag"] = ids([{"Name": "tag:env", "Values": ["prod"]}])
out["f_glob"] = ids([{"Name": "group-name", "Values": ["d?", "w*b"]}])
out["f_vpc"] = len(ids([{"Name": "vpc-id", "Values": ["vpc-0a1b2c3d"]}]))
out["f_and"] = ids([{"Name": "group-name", "Values": ["app", "db"]}, {"Name": "tag-key", "Values": ["env"]}])
out["f_bad"] = code(ec2.describe_security_groups, Filters=[{"Name": "colour", "Values": ["x"]}])
out["not_found"] = code(ec2.describe_security_groups, GroupIds=["sg-00000000000000000"])
for i in range(4):
    ec2.create_security_group(GroupName=f"extra-{i}", Description="extra")
pages = ec2.get_paginator("describe_security_groups").paginate(PaginationConfig={"PageSize": 5})
out["pages"] = [len(p["SecurityGroups"]) for p in pages]
out["bad_max"] = code(ec2_raw.describe_security_groups, MaxResults=2)
ec2.create_tags(Resources=[gid], Tags=[{"Key": "team", "Value": "a"}])
ec2.delete_tags(Resources=[gid], Tags=[{"Key": "env"}])
out["tags"] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["Tags"]
out["tag_missing"] = code(ec2.create_tags, Resources=["sg-00000000000000000"], Tags=[{"Key": "a", "Value": "b"}])
out["tag_aws"] = code(ec2.create_tags, Resources=[gid], Tags=[{"Key": "aws:x", "Value": "b"}])
ec2.authorize_security_group_ingress(GroupId="sg-db", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": gid}]}])
out["del_referenced"] = code(ec2.delete_security_group, GroupId=gid)
out["del_interface"] = code(ec2.delete_security_group, GroupId="sg-web")
out["del_default"] = code(ec2.delete_security_group, GroupId="sg-default")
out["del_dry"] = code(ec2.delete_security_group, GroupId="sg-web", DryRun=True)
ec2.revoke_security_group_ingress(GroupId="sg-db", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": gid}]}])
out["deleted"] = ec2.delete_security_group(GroupId=gid)["Return"]
out["gone"] = code(ec2.describe_security_groups, GroupIds=[gid])
out["del_by_name"] = code(ec2.delete_security_group, GroupName="extra-0")
out["del_unknown"] = code(ec2.delete_security_group, GroupId=gid)
"#,
    );
    let g = &out["create"];
    let gid = g["GroupId"].as_str().unwrap();
    assert!(gid.starts_with("sg-") && gid.len() == 20, "{out:#}");
    assert_eq!(
        g["Tags"],
        json!([{"Key": "env", "Value": "prod"}]),
        "{out:#}"
    );
    for (k, want) in [
        ("dup", "InvalidGroup.Duplicate"),
        ("reserved", "InvalidGroup.Reserved"),
        ("sg_name", "InvalidParameterValue"),
        ("bad_vpc", "InvalidVpcID.NotFound"),
        ("bad_description", "InvalidParameterValue"),
        ("dry", "DryRunOperation"),
        ("dry_absent", "InvalidGroup.NotFound"),
        ("f_bad", "InvalidParameterValue"),
        ("not_found", "InvalidGroup.NotFound"),
        ("bad_max", "InvalidParameterValue"),
        ("tag_missing", "InvalidGroup.NotFound"),
        ("tag_aws", "InvalidParameterValue"),
        ("del_referenced", "DependencyViolation"),
        ("del_interface", "DependencyViolation"),
        ("del_default", "CannotDelete"),
        ("gone", "InvalidGroup.NotFound"),
        ("del_by_name", "ok"),
        ("del_unknown", "InvalidGroup.NotFound"),
    ] {
        assert_eq!(out[k], want, "{k}: {out:#}");
    }
    assert_eq!(out["missing"], "MissingParameter", "{out:#}");
    assert_eq!(out["dry_status"], 412, "{out:#}");
    // DryRun never writes, even when the call would fail for a dependency.
    assert_eq!(out["del_dry"], "DependencyViolation", "{out:#}");
    let d = &out["described"];
    assert_eq!(d["GroupName"], "app");
    assert_eq!(d["Description"], "App tier");
    assert_eq!(d["VpcId"], "vpc-0a1b2c3d");
    assert_eq!(d["IpPermissions"], json!([]), "D1: {out:#}");
    let egress: Vec<&Value> = d["IpPermissionsEgress"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(egress.len(), 1, "D2: {out:#}");
    assert_eq!(egress[0]["IpProtocol"], "-1");
    assert_eq!(
        egress[0]["IpRanges"],
        json!([{"CidrIp": "0.0.0.0/0"}]),
        "D2: {out:#}"
    );
    assert_eq!(
        egress[0]["Ipv6Ranges"],
        json!([{"CidrIpv6": "::/0"}]),
        "D2: {out:#}"
    );
    assert_eq!(out["by_name"], json!([gid]));
    assert_eq!(out["f_tag"], json!([gid]));
    assert_eq!(out["f_glob"], json!(["sg-db", "sg-web"]), "{out:#}");
    assert_eq!(out["f_vpc"], 4, "{out:#}");
    assert_eq!(out["f_and"], json!([gid]), "{out:#}");
    // 3 imported + app + 4 extra, 5 a page.
    assert_eq!(out["pages"], json!([5, 3]), "{out:#}");
    assert_eq!(
        out["tags"],
        json!([{"Key": "team", "Value": "a"}]),
        "{out:#}"
    );
    assert_eq!(out["deleted"], true);
}

/// P3, P4, P5, P7, F5: one permission with several peers is one rule per peer; a duplicate
/// anywhere in a call (also one differing only by description) rejects the whole call; a
/// revoke of a missing rule changes nothing; the rule quota answers with AWS's code; egress
/// rules and DescribeSecurityGroupRules; DryRun writes nothing.
#[test]
fn p3_p4_p5_p7_rules_are_all_or_nothing_with_ec2s_errors() {
    let (_f, api) = start(true);
    let out = run(
        &api,
        r#"
def perm(*cidrs, port=443, desc=None):
    rs = [{"CidrIp": c} | ({"Description": desc} if desc else {}) for c in cidrs]
    return [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": rs}]
def rules(gid, egress=False):
    rs = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
    return sorted((r["IpProtocol"], r.get("FromPort"), r.get("CidrIpv4") or r.get("CidrIpv6") or r.get("ReferencedGroupInfo", {}).get("GroupId")) for r in rs if r["IsEgress"] == egress)
a = ec2.authorize_security_group_ingress(GroupId="sg-web", IpPermissions=perm("198.51.100.0/24", "203.0.113.0/24"))
out["p3"] = [r["SecurityGroupRuleId"] for r in a["SecurityGroupRules"]]
out["p4_mixed"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("192.0.2.0/24", "203.0.113.0/24"))
out["p4_in_call"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("192.0.2.0/24", "192.0.2.0/24"))
out["p4_desc"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("198.51.100.0/24", desc="other words"))
out["p4_host_bits"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("198.51.100.7/24"))
out["after_p4"] = rules("sg-web")
out["p5"] = code(ec2.revoke_security_group_ingress, GroupId="sg-web", IpPermissions=perm("198.51.100.0/24", "192.0.2.0/24"))
out["after_p5"] = rules("sg-web")
out["dry"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("192.0.2.0/24"), DryRun=True)
out["after_dry"] = rules("sg-web")
out["p7_ok"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("192.0.2.0/26", "192.0.2.64/26"))
out["p7"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=perm("192.0.2.128/26"))
out["bad_cidr"] = code(ec2.authorize_security_group_ingress, GroupId="sg-db", IpPermissions=perm("192.0.2.0/33"))
out["no_ports"] = code(ec2.authorize_security_group_ingress, GroupId="sg-db", IpPermissions=[{"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "192.0.2.0/24"}]}])
out["bad_proto"] = code(ec2.authorize_security_group_ingress, GroupId="sg-db", IpPermissions=[{"IpProtocol": "tcpp", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "192.0.2.0/24"}]}])
out["bad_peer"] = code(ec2.authorize_security_group_ingress, GroupId="sg-db", IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-00000000000000000"}]}])
out["bad_group"] = code(ec2.authorize_security_group_ingress, GroupId="sg-00000000000000000", IpPermissions=perm("192.0.2.0/24"))
e = ec2.authorize_security_group_egress(GroupId="sg-db", IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32", "Description": "dns"}]}])
out["egress_rule"] = e["SecurityGroupRules"][0]
out["revoke_default_egress"] = code(ec2.revoke_security_group_egress, GroupId="sg-db", IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
out["egress_after"] = rules("sg-db", egress=True)
out["self_ref"] = code(ec2.authorize_security_group_ingress, GroupId="sg-db", IpPermissions=[{"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "UserIdGroupPairs": [{"GroupId": "sg-db"}]}])
out["by_id"] = len(ec2.describe_security_group_rules(SecurityGroupRuleIds=out["p3"])["SecurityGroupRules"])
out["by_id_missing"] = code(ec2.describe_security_group_rules, SecurityGroupRuleIds=["sgr-00000000000000000"])
out["rules_bad_filter"] = code(ec2.describe_security_group_rules, Filters=[{"Name": "colour", "Values": ["x"]}])
out["caller"] = sts.get_caller_identity()["Account"]
"#,
    );
    let p3 = out["p3"].as_array().unwrap();
    assert_eq!(p3.len(), 2, "P3: {out:#}");
    assert_ne!(p3[0], p3[1], "P3: {out:#}");
    for (k, want) in [
        ("p4_mixed", "InvalidPermission.Duplicate"),
        ("p4_in_call", "InvalidPermission.Duplicate"),
        ("p4_desc", "InvalidPermission.Duplicate"),
        ("p4_host_bits", "InvalidPermission.Duplicate"),
        ("p5", "InvalidPermission.NotFound"),
        ("dry", "DryRunOperation"),
        ("p7_ok", "ok"),
        ("p7", "RulesPerSecurityGroupLimitExceeded"),
        ("bad_cidr", "InvalidParameterValue"),
        ("no_ports", "InvalidParameterValue"),
        ("bad_proto", "InvalidParameterValue"),
        ("bad_peer", "InvalidGroup.NotFound"),
        ("bad_group", "InvalidGroup.NotFound"),
        ("revoke_default_egress", "ok"),
        ("self_ref", "ok"),
        ("by_id_missing", "InvalidSecurityGroupRuleId.NotFound"),
        ("rules_bad_filter", "InvalidParameterValue"),
    ] {
        assert_eq!(out[k], want, "{k}: {out:#}");
    }
    let two = json!([
        ["tcp", 443, "198.51.100.0/24"],
        ["tcp", 443, "203.0.113.0/24"]
    ]);
    assert_eq!(
        out["after_p4"], two,
        "P4: nothing of a rejected call: {out:#}"
    );
    assert_eq!(out["after_p5"], two, "P5: no change: {out:#}");
    assert_eq!(out["after_dry"], two, "DryRun: no change: {out:#}");
    let e = &out["egress_rule"];
    assert_eq!(e["IsEgress"], true);
    assert_eq!(e["CidrIpv6"], "2001:db8::/32");
    assert_eq!(e["Description"], "dns");
    assert_eq!(
        out["egress_after"],
        json!([["-1", -1, "::/0"], ["udp", 53, "2001:db8::/32"]]),
        "{out:#}"
    );
    assert_eq!(out["by_id"], 2);
    assert_eq!(out["caller"], "123456789012");
}

/// P2: a request signed with the wrong secret, or not signed, is AuthFailure (HTTP 401) and
/// changes nothing; the right secret works. `--no-auth` accepts unsigned requests.
#[test]
fn p2_signature_v4_rejects_a_bad_secret_and_accepts_the_right_one() {
    let (f, api) = start(true);
    let create = [
        "ec2",
        "create-security-group",
        "--group-name",
        "x",
        "--description",
        "x",
    ];
    let o = api.aws_signed("not-the-secret", &create);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("(AuthFailure)"),
        "{err}"
    );
    let mut unsigned = create.to_vec();
    unsigned.push("--no-sign-request");
    api.aws_err(&unsigned, "AuthFailure");
    let d = api.aws_ok(&["ec2", "describe-security-groups", "--group-names", "web"]);
    assert_eq!(d["SecurityGroups"][0]["GroupId"], "sg-web");
    api.aws_err(
        &["ec2", "describe-security-groups", "--group-names", "x"],
        "InvalidGroup.NotFound",
    );
    assert_eq!(api.aws_signed(SECRET, &create).status.code(), Some(0));
    drop(api);

    let open = ApiServer::on_fleet(&f, "api-open", false);
    let d = open.aws_ok(&[
        "ec2",
        "describe-security-groups",
        "--group-names",
        "x",
        "--no-sign-request",
    ]);
    assert_eq!(d["SecurityGroups"][0]["GroupName"], "x");
}

/// P1: the store unreachable is 503 Unavailable (clients retry); the API serves again when
/// the store is back, without a restart.
#[test]
fn p1_an_unreachable_store_is_503_and_the_api_recovers() {
    let (f, api) = start(true);
    api.aws_ok(&["ec2", "describe-security-groups"]);
    f.etcd.stop(0).unwrap();
    let out = run(
        &api,
        r#"
out["status"] = status(ec2.describe_security_groups)
out["code"] = code(ec2.describe_security_groups)
"#,
    );
    assert_eq!(out, json!({"status": 503, "code": "Unavailable"}));
    f.etcd.start_member(0).unwrap();
    f.etcd
        .wait_healthy(&[0], std::time::Duration::from_secs(30))
        .unwrap();
    let d = api.aws_ok(&["ec2", "describe-security-groups"]);
    assert_eq!(d["SecurityGroups"].as_array().unwrap().len(), 3);
}

/// F6, P5: ModifySecurityGroupRules changes a rule and keeps its id;
/// UpdateSecurityGroupRuleDescriptions* edit descriptions by rule id and by permission;
/// unknown ids and permissions are EC2's NotFound codes. DescribeTags, DescribeVpcs, CreateVpc
/// (D3: with its default group; P8: names unique per VPC) and the empty reference and
/// stale-group sets.
#[test]
fn f6_rules_are_modified_in_place_and_descriptions_updated() {
    let (_f, api) = start(true);
    let out = run(
        &api,
        r#"
a = ec2.authorize_security_group_ingress(GroupId="sg-web", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "198.51.100.0/24", "Description": "ssh"}]}])
rid = a["SecurityGroupRules"][0]["SecurityGroupRuleId"]
ec2.modify_security_group_rules(GroupId="sg-web", SecurityGroupRules=[{"SecurityGroupRuleId": rid,
    "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 2222, "ToPort": 2222, "CidrIpv4": "203.0.113.0/24", "Description": "ssh moved"}}])
def rule(rid):
    r = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rid])["SecurityGroupRules"][0]
    return [r["SecurityGroupRuleId"], r["FromPort"], r.get("CidrIpv4"), r.get("Description")]
out["modified"] = rule(rid)
out["modify_missing"] = code(ec2.modify_security_group_rules, GroupId="sg-web", SecurityGroupRules=[{"SecurityGroupRuleId": "sgr-00000000000000000",
    "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "192.0.2.0/24"}}])
ec2.update_security_group_rule_descriptions_ingress(GroupId="sg-web", SecurityGroupRuleDescriptions=[{"SecurityGroupRuleId": rid, "Description": "by id"}])
out["by_id"] = rule(rid)
ec2.update_security_group_rule_descriptions_ingress(GroupId="sg-web", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 2222, "ToPort": 2222, "IpRanges": [{"CidrIp": "203.0.113.0/24", "Description": "by permission"}]}])
out["by_perm"] = rule(rid)
out["update_missing"] = code(ec2.update_security_group_rule_descriptions_ingress, GroupId="sg-web", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "IpRanges": [{"CidrIp": "192.0.2.0/24", "Description": "x"}]}])
out["update_egress_wrong_dir"] = code(ec2.update_security_group_rule_descriptions_egress, GroupId="sg-web", SecurityGroupRuleDescriptions=[{"SecurityGroupRuleId": rid, "Description": "x"}])
ec2.create_tags(Resources=["sg-db"], Tags=[{"Key": "tier", "Value": "data"}])
out["tags"] = [[t["ResourceId"], t["ResourceType"], t["Key"], t["Value"]] for t in ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": ["sg-db"]}])["Tags"]]
out["vpcs"] = [[v["VpcId"], v["IsDefault"]] for v in ec2.describe_vpcs()["Vpcs"]]
vpc = ec2.create_vpc(CidrBlock="198.51.100.0/24")["Vpc"]
out["new_vpc"] = [vpc["CidrBlock"], vpc["IsDefault"], vpc["VpcId"] in [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]]]
in_vpc = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["SecurityGroups"]
out["vpc_default"] = [[g["GroupName"], len(g["IpPermissions"])] for g in in_vpc]
out["same_name_other_vpc"] = code(ec2.create_security_group, GroupName="web", Description="web in the new VPC", VpcId=vpc["VpcId"])
out["vpc_default_delete"] = code(ec2.delete_security_group, GroupId=in_vpc[0]["GroupId"])
out["vpc_bad_cidr"] = code(ec2.create_vpc, CidrBlock="10.0.0.0/8")
out["vpc_missing"] = code(ec2.describe_vpcs, VpcIds=["vpc-nowhere"])
out["refs"] = ec2.describe_security_group_references(GroupId=["sg-db"])["SecurityGroupReferenceSet"]
out["refs_missing"] = code(ec2.describe_security_group_references, GroupId=["sg-00000000000000000"])
out["stale"] = ec2.describe_stale_security_groups(VpcId="vpc-0a1b2c3d")["StaleSecurityGroupSet"]
t = ec2.authorize_security_group_ingress(GroupId="sg-db", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 3306, "ToPort": 3306, "UserIdGroupPairs": [{"GroupId": "sg-web"}]}],
    TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": [{"Key": "owner", "Value": "dba"}]}])
tid = t["SecurityGroupRules"][0]["SecurityGroupRuleId"]
out["rule_tags_created"] = t["SecurityGroupRules"][0].get("Tags")
ec2.create_tags(Resources=[tid, rid], Tags=[{"Key": "env", "Value": "prod"}])
ec2.delete_tags(Resources=[tid], Tags=[{"Key": "owner"}])
def rule_tags(f):
    rs = ec2.describe_security_group_rules(Filters=f)["SecurityGroupRules"]
    return sorted([r["SecurityGroupRuleId"] == tid, sorted((x["Key"], x["Value"]) for x in r["Tags"])] for r in rs)
out["rule_tags"] = rule_tags([{"Name": "tag:env", "Values": ["prod"]}])
out["rule_tag_kinds"] = sorted(t["ResourceType"] for t in ec2.describe_tags(Filters=[{"Name": "key", "Values": ["env"]}])["Tags"])
ec2.revoke_security_group_ingress(GroupId="sg-db", SecurityGroupRuleIds=[tid])
out["rule_tags_after_revoke"] = rule_tags([{"Name": "tag-key", "Values": ["env"]}])
out["rule_tag_missing"] = code(ec2.create_tags, Resources=["sgr-00000000000000000"], Tags=[{"Key": "a", "Value": "b"}])
"#,
    );
    let rid = out["modified"][0].clone();
    assert_eq!(
        out["modified"],
        json!([rid, 2222, "203.0.113.0/24", "ssh moved"]),
        "{out:#}"
    );
    assert_eq!(out["by_id"][3], "by id", "{out:#}");
    assert_eq!(out["by_perm"][3], "by permission", "{out:#}");
    for (k, want) in [
        ("modify_missing", "InvalidSecurityGroupRuleId.NotFound"),
        ("update_missing", "InvalidPermission.NotFound"),
        (
            "update_egress_wrong_dir",
            "InvalidSecurityGroupRuleId.NotFound",
        ),
        ("vpc_missing", "InvalidVpcID.NotFound"),
        ("refs_missing", "InvalidGroup.NotFound"),
    ] {
        assert_eq!(out[k], want, "{k}: {out:#}");
    }
    assert_eq!(
        out["tags"],
        json!([["sg-db", "security-group", "tier", "data"]])
    );
    assert_eq!(out["vpcs"], json!([["vpc-0a1b2c3d", true]]));
    // D3, P8: a new VPC comes with its default group; names are unique per VPC.
    assert_eq!(
        out["new_vpc"],
        json!(["198.51.100.0/24", false, true]),
        "{out:#}"
    );
    assert_eq!(out["vpc_default"], json!([["default", 1]]), "D3: {out:#}");
    assert_eq!(out["same_name_other_vpc"], "ok", "P8: {out:#}");
    assert_eq!(out["vpc_default_delete"], "CannotDelete", "{out:#}");
    assert_eq!(out["vpc_bad_cidr"], "InvalidVpc.Range", "{out:#}");
    assert_eq!(out["refs"], json!([]));
    assert_eq!(out["stale"], json!([]));
    // Tags on rules: TagSpecification on authorize, CreateTags/DeleteTags by rule id, filters,
    // DescribeTags; a revoked rule's tags go with it.
    assert_eq!(
        out["rule_tags_created"],
        json!([{"Key": "owner", "Value": "dba"}]),
        "{out:#}"
    );
    assert_eq!(
        out["rule_tags"],
        json!([[false, [["env", "prod"]]], [true, [["env", "prod"]]]]),
        "{out:#}"
    );
    assert_eq!(
        out["rule_tag_kinds"],
        json!(["security-group-rule", "security-group-rule"]),
        "{out:#}"
    );
    assert_eq!(
        out["rule_tags_after_revoke"],
        json!([[false, [["env", "prod"]]]]),
        "{out:#}"
    );
    assert_eq!(
        out["rule_tag_missing"], "InvalidSecurityGroupRuleId.NotFound",
        "{out:#}"
    );
}

/// P4 under concurrency: two API servers on one store, 2 x 10 authorizations of one group
/// at once, all succeed and none is lost (each write is a compare-and-swap on the revision it
/// read, retried on conflict).
#[test]
fn p4_concurrent_writers_on_one_store_lose_no_rule() {
    // AWS's default quota (60): room for the 20 rules.
    let (f, api) = start_with(&GROUPS.replace("quotas: {rules_per_group: 4}", ""), true);
    let other = ApiServer::on_fleet(&f, "api-2", true);
    let out = run(
        &api,
        &format!(
            r#"
import threading
other = boto3.client("ec2", endpoint_url="{url}")
errors = []
def add(client, port):
    try:
        client.authorize_security_group_ingress(GroupId="sg-db", IpPermissions=[
            {{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{{"CidrIp": "192.0.2.0/24"}}]}}])
    except Exception as e:
        errors.append(str(e))
threads = [threading.Thread(target=add, args=(c, p)) for i in range(10) for c, p in ((ec2, 1000 + i), (other, 2000 + i))]
for t in threads: t.start()
for t in threads: t.join()
g = ec2.describe_security_groups(GroupIds=["sg-db"])["SecurityGroups"][0]
out["ports"] = sorted(p["FromPort"] for p in g["IpPermissions"])
out["errors"] = errors
"#,
            url = other.url
        ),
    );
    let want: Vec<u16> = (1000..1010).chain(2000..2010).collect();
    assert_eq!(out["errors"], json!([]), "{out:#}");
    assert_eq!(out["ports"], json!(want), "{out:#}");
}

/// E3, E5, P6, P7: DescribeNetworkInterfaces shows the store's interfaces with their groups;
/// ModifyNetworkInterfaceAttribute replaces an imported interface's groups (then the group is
/// in use: DependencyViolation); more groups than Q2 allows is
/// SecurityGroupsPerInterfaceLimitExceeded, nothing written.
#[test]
fn p7_interfaces_are_described_and_their_groups_replaced_within_the_quota() {
    let (_f, api) = start(true);
    let out = run(
        &api,
        r#"
def iface(eid):
    i = ec2.describe_network_interfaces(NetworkInterfaceIds=[eid])["NetworkInterfaces"][0]
    return [i["NetworkInterfaceId"], i["PrivateIpAddress"], sorted(g["GroupId"] for g in i["Groups"])]
out["before"] = iface("web-1")
ec2.modify_network_interface_attribute(NetworkInterfaceId="web-1", Groups=["sg-web", "sg-db"])
out["after"] = iface("web-1")
out["by_group"] = [i["NetworkInterfaceId"] for i in ec2.describe_network_interfaces(Filters=[{"Name": "group-id", "Values": ["sg-db"]}])["NetworkInterfaces"]]
out["in_use"] = code(ec2.delete_security_group, GroupId="sg-db")
many = [ec2.create_security_group(GroupName=f"g{i}", Description="x")["GroupId"] for i in range(4)]
out["six"] = code(ec2.modify_network_interface_attribute, NetworkInterfaceId="web-1", Groups=["sg-web", "sg-db"] + many)
out["after_six"] = len(iface("web-1")[2])
out["unknown_eni"] = code(ec2.modify_network_interface_attribute, NetworkInterfaceId="eni-0123", Groups=["sg-web"])
out["unknown_group"] = code(ec2.modify_network_interface_attribute, NetworkInterfaceId="web-1", Groups=["sg-00000000000000000"])
out["describe_unknown"] = code(ec2.describe_network_interfaces, NetworkInterfaceIds=["eni-0123"])
"#,
    );
    assert_eq!(
        out["before"],
        json!(["web-1", "192.0.2.11", ["sg-web"]]),
        "{out:#}"
    );
    assert_eq!(
        out["after"],
        json!(["web-1", "192.0.2.11", ["sg-db", "sg-web"]]),
        "{out:#}"
    );
    assert_eq!(out["by_group"], json!(["web-1"]));
    for (k, want) in [
        ("in_use", "DependencyViolation"),
        ("six", "SecurityGroupsPerInterfaceLimitExceeded"),
        ("unknown_eni", "InvalidNetworkInterfaceID.NotFound"),
        ("unknown_group", "InvalidGroup.NotFound"),
        ("describe_unknown", "InvalidNetworkInterfaceID.NotFound"),
    ] {
        assert_eq!(out[k], want, "{k}: {out:#}");
    }
    assert_eq!(out["after_six"], 2, "P7: nothing written: {out:#}");
}

/// R4, P9, P7: managed prefix lists: created at version 1, modified only when the current
/// version is named (PrefixListVersionMismatch otherwise), each entry change a new version;
/// a rule using a list counts its max entries against Q1; a list in use cannot be deleted.
#[test]
fn p9_prefix_lists_are_versioned_and_count_their_max_entries() {
    let (_f, api) = start(true);
    let out = run(
        &api,
        r#"
pl = ec2.create_managed_prefix_list(PrefixListName="office", AddressFamily="IPv4", MaxEntries=2,
    Entries=[{"Cidr": "198.51.100.0/24"}])["PrefixList"]
pid = pl["PrefixListId"]
out["created"] = [pl["State"], pl["Version"], pl["MaxEntries"], pl["AddressFamily"]]
m = ec2.modify_managed_prefix_list(PrefixListId=pid, CurrentVersion=1, AddEntries=[{"Cidr": "203.0.113.0/24"}])["PrefixList"]
out["modified"] = [m["State"], m["Version"]]
out["stale_version"] = code(ec2.modify_managed_prefix_list, PrefixListId=pid, CurrentVersion=1, RemoveEntries=[{"Cidr": "203.0.113.0/24"}])
out["no_version"] = code(ec2_raw.modify_managed_prefix_list, PrefixListId=pid, RemoveEntries=[{"Cidr": "203.0.113.0/24"}])
out["over_max"] = code(ec2.modify_managed_prefix_list, PrefixListId=pid, CurrentVersion=2, AddEntries=[{"Cidr": "192.0.2.0/24"}])
out["entries"] = sorted(e["Cidr"] for e in ec2.get_managed_prefix_list_entries(PrefixListId=pid)["Entries"])
out["described"] = [[p["PrefixListId"] == pid, p["PrefixListName"]] for p in ec2.describe_managed_prefix_lists(Filters=[{"Name": "prefix-list-name", "Values": ["office"]}])["PrefixLists"]]
out["unknown"] = code(ec2.describe_managed_prefix_lists, PrefixListIds=["pl-00000000000000000"])
ec2.authorize_security_group_ingress(GroupId="sg-web", IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "PrefixListIds": [{"PrefixListId": pid}]}])
out["rule_counts_max"] = code(ec2.authorize_security_group_ingress, GroupId="sg-web", IpPermissions=[{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "192.0.2.0/26"}, {"CidrIp": "192.0.2.64/26"}, {"CidrIp": "192.0.2.128/26"}]}])
out["in_use"] = code(ec2.delete_managed_prefix_list, PrefixListId=pid)
ec2.revoke_security_group_ingress(GroupId="sg-web", IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "PrefixListIds": [{"PrefixListId": pid}]}])
out["deleted"] = ec2.delete_managed_prefix_list(PrefixListId=pid)["PrefixList"]["State"]
out["gone"] = code(ec2.get_managed_prefix_list_entries, PrefixListId=pid)
"#,
    );
    assert_eq!(
        out["created"],
        json!(["create-complete", 1, 2, "IPv4"]),
        "{out:#}"
    );
    assert_eq!(out["modified"], json!(["modify-complete", 2]), "{out:#}");
    for (k, want) in [
        ("stale_version", "PrefixListVersionMismatch"),
        ("no_version", "MissingParameter"),
        ("over_max", "InvalidParameterValue"),
        ("unknown", "InvalidPrefixListID.NotFound"),
        ("rule_counts_max", "RulesPerSecurityGroupLimitExceeded"),
        ("in_use", "DependencyViolation"),
        ("deleted", "delete-complete"),
        ("gone", "InvalidPrefixListID.NotFound"),
    ] {
        assert_eq!(out[k], want, "{k}: {out:#}");
    }
    assert_eq!(
        out["entries"],
        json!(["198.51.100.0/24", "203.0.113.0/24"]),
        "{out:#}"
    );
    assert_eq!(out["described"], json!([[true, "office"]]));
}
