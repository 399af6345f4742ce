//! Network ACLs end to end (issue 17): the VPC lab of examples/vpc-nacl.yaml, two subnets
//! behind a router namespace running its own sg-agent, real clients (curl, ssh, nc, ping)
//! between namespaces. The router enforces the subnets' NACLs statelessly; the instances
//! enforce their security groups. Rows cite the A ids they show.
use std::path::PathBuf;
use std::time::Duration;

use sg_lab::probe::Svc;
use sg_lab::probe::{Expect::*, V4, assert_rows, table};
use sg_lab::services::tcp_session;
use sg_lab::vpc::{EXPLAIN_SSH_REPLY, VpcLab};
use sg_testkit::netns::require_root;

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/vpc-nacl.yaml")
}

/// One VPC lab at a time: two of them probing at once on this 2-core machine made a probe
/// of the seven-namespace lab miss its client timeout once.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lab() -> (std::sync::MutexGuard<'static, ()>, VpcLab) {
    let guard = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    (guard, lab_up())
}

fn lab_up() -> VpcLab {
    lab_from(&policy())
}

fn lab_from(policy: &std::path::Path) -> VpcLab {
    VpcLab::up(sg_testkit::agent_bin().as_ref(), policy)
        .unwrap_or_else(|e| panic!("the VPC lab: {e:#}"))
}

/// Asserts that the router charged NACL rule `rule` (`acl-public/in/140`) at least once.
fn assert_charged(lab: &VpcLab, rule: &str) {
    let c = lab.agents.counters(&lab.router).expect("router counters");
    assert!(c.rule(rule) >= 1, "{rule} was never charged: {:?}", c.rules);
}

/// A4: the private subnet's deny renumbered from 110 to 90 now comes first for web-2, and
/// for web-2 only.
fn renumber_the_deny_a4(lab: &VpcLab) {
    lab.renumber_deny_a4().unwrap();
    let db = Svc::Db {
        port: 3306,
        mariadb: false,
    };
    #[rustfmt::skip]
    let rows = lab.run(&table(&[
        ("web-2", "db-1", V4, db.clone(), Deny, "A4 renumbered: 90 deny first"),
        ("web-1", "db-1", V4, db, Allow, "A4 only web-2's /32"),
    ])).unwrap();
    assert_rows(&rows);
}

/// A1 A4 A6 A13 A14 A15 A16, IPv4 and IPv6: every path of the VPC as EC2 would have it; the
/// router's counters charge the NACL rules that decided (the `*` rules included); renumbering
/// the private subnet's deny below its allow flips web-2's verdict (A4) and nobody else's.
#[test]
fn vpc_lab_every_path_through_nacls_and_security_groups_as_ec2() {
    let (_one, lab) = lab();
    let router_apply = &lab.applied.last().unwrap().1;
    assert!(
        router_apply.contains("r-pub") && router_apply.contains("r-priv"),
        "{router_apply}"
    );
    let rows = lab.run(&lab.paths()).unwrap();
    assert_rows(&rows);

    let c = lab.agents.counters(&lab.router).expect("router counters");
    // A14: web-1 -> db-1 met the private subnet's inbound 100 (IPv4) and 101 (IPv6).
    assert!(c.rule("acl-private/in/100") >= 1, "{:?}", c.rules);
    assert!(c.rule("acl-private/in/101") >= 1, "{:?}", c.rules);
    // A1 A16: the replies to my IP fell to the public subnet's outbound * rules.
    assert!(c.rule("acl-public/out/*v4") >= 1, "{:?}", c.rules);
    assert!(c.rule("acl-public/out/*v6") >= 1, "{:?}", c.rules);
    assert!(c.reason("drop_nacl_rule") >= 4, "{:?}", c.reasons);
    assert!(c.reason("pass_nacl_rule") >= 8, "{:?}", c.reasons);
    // A13: web-1 -> web-2 never reached the router: its instances' counters saw it.
    let star = c
        .rules
        .iter()
        .find(|r| r.id == "acl-public/out/*v4")
        .unwrap();
    assert_eq!(star.direction, "outbound");
    assert_eq!(star.text, "* deny all traffic to 0.0.0.0/0");

    renumber_the_deny_a4(&lab);
    assert_charged(&lab, "acl-private/in/90");
    lab.agents.detach_all_cleanly();
}

/// A22: path MTU discovery across a narrow link needs an explicit ICMP 3/4 rule at the NACL
/// (no related-ICMP pass there, contrast I2). far's HTTPS download from web-1 (real curl,
/// bounded) stalls while the error internet sends back is dropped by acl-public's inbound
/// `*` rule; with inbound 140 (ICMP 3/4 from anywhere) the same download completes. (web-1's
/// HTTPS flows are untracked, C4, so its security group has its own ICMP 3/4 rule: I2's
/// related pass only exists for tracked flows.)
#[test]
fn a22_pmtud_across_a_narrow_link_needs_an_icmp_3_4_rule() {
    let (_one, lab) = lab();
    let limit = Duration::from_secs(6);
    let stalled = lab
        .a22_download(Deny, "A22 no ICMP 3/4 rule: PMTUD stalls", limit)
        .unwrap();
    assert_charged(&lab, "acl-public/in/*v4");
    lab.allow_frag_needed_a22().unwrap();
    let works = lab
        .a22_download(Allow, "A22 inbound 140 ICMP 3/4", limit)
        .unwrap();
    if !works.ok() {
        eprintln!("{}", lab.router_counters().unwrap_or_default());
        let web1 = lab.agents.counters_text(&lab.host("web-1").ns);
        eprintln!("web-1: {}", web1.unwrap_or_default());
    }
    assert_rows(&[stalled, works]);
    assert_charged(&lab, "acl-public/in/140");
    lab.agents.detach_all_cleanly();
}

/// The CloudFormation twin (examples/vpc-nacl.cfn.yaml) is the same VPC: the lab run from it
/// gives the same table (A1 A4 A6 A13 A14 A15 A16), and its A4 edit flips web-2 alike.
#[test]
fn vpc_lab_from_the_cloudformation_twin_gives_the_same_table() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let lab = lab_from(&policy().with_file_name("vpc-nacl.cfn.yaml"));
    let rows = lab.run(&lab.paths()).unwrap();
    assert_rows(&rows);
    renumber_the_deny_a4(&lab);
    lab.agents.detach_all_cleanly();
}

/// A25 (contrast X1): a new deny cuts an established session at once. Security groups keep
/// a tracked flow whatever the new rules say; a NACL has no state to keep.
#[test]
fn a25_a_new_nacl_deny_cuts_an_established_session_at_once() {
    let (_one, lab) = lab();
    let web = lab.host("web-1");
    let db_addr = lab.host("db-1").addr(false);
    let mut s = tcp_session(web, db_addr, 3306).unwrap();
    s.wait_ready(Duration::from_secs(5)).unwrap();
    assert!(s.round_trip("before", Duration::from_secs(3)));
    lab.edit_and_apply_router(
        "      - {number: 100, action: allow, protocol: tcp, ports: 3306, cidr: 192.0.2.0/25}",
        "      - {number: 80, action: deny, protocol: tcp, ports: 3306, cidr: 192.0.2.11/32}\n      - {number: 100, action: allow, protocol: tcp, ports: 3306, cidr: 192.0.2.0/25}",
    )
    .unwrap();
    assert!(
        !s.round_trip("after", Duration::from_secs(3)),
        "A25: the established session still works after the deny"
    );
    assert_charged(&lab, "acl-private/in/80");
    lab.agents.detach_all_cleanly();
}

/// Item 4: `sg-agent explain --from --to` walks a packet through every layer and names the
/// NACL rule that decided: my IP's SSH gets in (public inbound 110, sg-web's rule), the
/// reply does not get out (public outbound `*`, A1). Read-only: it needs the file only.
#[test]
fn explain_from_to_names_the_deciding_layer_and_rule() {
    let explain = |args: &[&str]| {
        let out = std::process::Command::new(sg_testkit::agent_bin())
            .args(["explain", "--policy"])
            .arg(policy())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = explain(&[
        "--from",
        "198.51.100.10",
        "--to",
        "192.0.2.11",
        "--proto",
        "tcp",
        "--port",
        "22",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("network ACL inbound at subnet-public (acl-public): pass"),
        "{text}"
    );
    assert!(text.contains("rule 110 allows it"), "{text}");
    let (code, text) = explain(&EXPLAIN_SSH_REPLY);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("network ACL outbound at subnet-public (acl-public): drop"),
        "{text}"
    );
    assert!(text.contains("the `*` rule denies (A6)"), "{text}");
}
