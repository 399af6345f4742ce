//! Fleet mode end to end (issue 15, items 2-3; SEMANTICS S1, S2, R1, E7): a real etcd in a
//! namespace, real `sg-agent daemon --store` processes in host namespaces beside it, and real
//! TCP between the hosts. An sg-db host allows "tcp 3306 from sg-web"; web hosts join sg-web
//! by registering their eth0 or by an imported instance.
//!
//! The oracle after every step: each agent acknowledges the store's current policy (same
//! content hash as `store status`) and `sg-agent verify --store` in its namespace passes (its
//! live maps mean what a fresh compile of the store's policy means); traffic shows what is
//! enforced. Root only: these tests fail, never skip, without it.

use std::time::{Duration, Instant};

use serde_json::Value;
use sg_testkit::agent_harness::text;
use sg_testkit::fleet::{
    CONVERGE, DB, Fleet, POLICY_A, STARTUP, WEB1, WEB2, WEB3, ack, generation, is_current,
    policy_b, unix_ms,
};

/// A plus an instance in sg-web that no agent registers (web3 runs none): a membership
/// change made by an import.
fn policy_a_web3() -> String {
    format!("{POLICY_A}instances:\n  - {{name: web-3, addresses: [{WEB3}], groups: [sg-web]}}\n")
}

/// A fleet of `hosts` (db first) with MySQL servers on db, policy A imported, and agents on
/// db (sg-db) and on each host in `web_agents` (sg-web), all acknowledging A.
fn web_db(hosts: &[(&str, &str)], web_agents: &[&str]) -> Fleet {
    let mut f = Fleet::new(1, hosts);
    f.serve("db", &[3306, 3307]);
    f.import(&f.write("a.yaml", POLICY_A));
    f.start_agent("db", "eth0=sg-db", 10);
    for w in web_agents {
        f.start_agent(w, "eth0=sg-web", 10);
    }
    let mut all = vec!["db"];
    all.extend_from_slice(web_agents);
    let t0 = Instant::now();
    f.wait_current(&all, STARTUP);
    eprintln!(
        "measured: {} agents started and acknowledged the import in {:?}",
        all.len(),
        t0.elapsed()
    );
    f
}

/// S1, R1, S2: an import reaches every agent (one content hash, the store's), each verifies;
/// a web host that starts its agent (registering eth0 in sg-web) reaches the db host's MySQL
/// as soon as the db host acknowledges its registration, and so does an instance added to
/// sg-web by an import. Membership changes take the in-place delta: the db host's dataplane
/// generation does not change.
#[test]
fn s1_r1_every_agent_acks_the_import_and_new_sg_web_members_reach_the_db_without_a_new_generation()
{
    let mut f = web_db(
        &[("db", DB), ("web1", WEB1), ("web2", WEB2), ("web3", WEB3)],
        &["web1"],
    );
    let st = f.status();
    for h in ["db", "web1"] {
        assert_eq!(ack(&st, h)["hash"], st["hash"], "{h}: {st:#}");
        f.verify_store(h);
    }
    let hs = Fleet::host_status(&st, "web1");
    assert_eq!(hs["alive"], true, "{st:#}");
    assert_eq!(hs["registered"], serde_json::json!(["eth0"]), "{st:#}");
    assert!(f.connects("web1", DB, 3306), "web1 (sg-web) -> db:3306");
    assert!(!f.connects("web1", DB, 3307), "web1 -> db:3307 (no rule)");
    assert!(!f.connects("web2", DB, 3306), "web2 (in no group yet)");
    assert!(!f.connects("web3", DB, 3306), "web3 (in no group yet)");
    let gen_db = generation(&st, "db");

    // A new agent registers web2's eth0 in sg-web.
    let t0 = Instant::now();
    f.start_agent("web2", "eth0=sg-web", 10);
    let st = f.wait_current(&["db", "web1", "web2"], STARTUP);
    let acked = t0.elapsed();
    f.wait("web2 -> db:3306", CONVERGE, || f.connects("web2", DB, 3306));
    eprintln!(
        "measured: web2's agent started -> every host acknowledged it {acked:?}, first connect \
         through {:?}",
        t0.elapsed()
    );
    assert_eq!(
        generation(&st, "db"),
        gen_db,
        "a membership change flipped a generation on db: {st:#}"
    );
    assert!(f.connects("web1", DB, 3306), "web1 still");
    assert!(!f.connects("web3", DB, 3306), "web3 (in no group yet)");

    // An import adds an instance to sg-web (web3 runs no agent): one key written.
    let sent = unix_ms();
    let out = f.import(&f.write("a-web3.yaml", &policy_a_web3()));
    assert_eq!(out["written"], 1, "only the instance is new: {out:#}");
    assert_eq!(out["deleted"], 0, "{out:#}");
    let st = f.wait_current(&["db", "web1", "web2"], CONVERGE);
    let took = ack(&st, "db")["unix_ms"]
        .as_u64()
        .unwrap()
        .saturating_sub(sent);
    eprintln!("measured: import of web3 -> db applied it {took} ms later (import included)");
    assert!(f.connects("web3", DB, 3306), "web3 (imported into sg-web)");
    assert_eq!(generation(&st, "db"), gen_db, "{st:#}");
    for h in ["db", "web1", "web2"] {
        f.verify_store(h);
    }
    let st = f.status();
    assert_eq!(st["instances"], 1, "{st:#}");
    assert_eq!(st["groups"], 2, "{st:#}");

    // S1: a registration deleted under a live host (an operator's `etcdctl del`) is written
    // back by its agent, and the db host admits web1 again.
    let key = "/sg/v1/hosts/web1/instance";
    let registered = || {
        f.etcd
            .etcdctl(&["get", key, "--print-value-only"])
            .is_ok_and(|v| v.contains("eth0"))
    };
    assert!(registered(), "web1's registration before the delete");
    f.etcd.etcdctl(&["del", key]).unwrap();
    f.wait("web1's registration written back", CONVERGE, registered);
    f.wait("web1 -> db:3306 again", CONVERGE, || {
        f.connects("web1", DB, 3306)
    });
    assert!(
        f.log("web1").contains("registration was removed"),
        "{}",
        f.log("web1")
    );
}

/// E7, S2: a rule change (MySQL moved to 3307) is a new generation on every host, each
/// acknowledges it and verifies, and traffic follows. The export is a native file that
/// `sg-agent check` accepts and that means what the hosts enforce (`verify FILE`).
#[test]
fn e7_s2_a_rule_change_is_a_new_generation_on_every_host_and_the_export_round_trips() {
    let f = web_db(
        &[("db", DB), ("web1", WEB1), ("web2", WEB2)],
        &["web1", "web2"],
    );
    let hosts = ["db", "web1", "web2"];
    let before = f.status();
    assert!(f.connects("web1", DB, 3306));

    let t0 = Instant::now();
    let out = f.import(&f.write("b.yaml", &policy_b()));
    assert_eq!(out["written"], 1, "only sg-db changed: {out:#}");
    let after = f.wait_current(&hosts, CONVERGE);
    eprintln!(
        "measured: a rule change acknowledged by {} hosts in {:?}",
        hosts.len(),
        t0.elapsed()
    );
    for h in hosts {
        // Generations are the two map sets (0/1): a rule change flips to the other.
        assert_ne!(
            generation(&after, h),
            generation(&before, h),
            "{h}: no new generation for a rule change: before {before:#}, after {after:#}"
        );
        assert_eq!(ack(&after, h)["hash"], after["hash"], "{h}");
        assert!(
            ack(&after, h)["revision"].as_i64() >= out["revision"].as_i64(),
            "{h}: acknowledged an older revision than the import's: {after:#} {out:#}"
        );
        f.verify_store(h);
    }
    assert!(f.connects("web1", DB, 3307), "3307 after the change");
    assert!(f.connects("web2", DB, 3307), "3307 after the change");
    assert!(!f.connects("web1", DB, 3306), "3306 after the change");

    // Export: check accepts it, and it means what each host enforces.
    let exported = f.export();
    let file = f.write("export.yaml", &exported);
    let o = f.sg(None, &["check", file.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "check of the export:\n{}\n{exported}",
        text(&o)
    );
    for h in hosts {
        f.verify_file(h, &file);
    }
    assert!(exported.contains("3307"), "{exported}");

    // Without the registrations (they are their hosts', under their leases), the export
    // imports back unchanged: nothing written, nothing deleted.
    let policy = f.export_policy();
    assert!(
        policy.contains("# left out: the interfaces registered by"),
        "{policy}"
    );
    let back = f.import(&f.write("policy.yaml", &policy));
    assert_eq!(
        (back["written"].as_u64(), back["deleted"].as_u64()),
        (Some(0), Some(0)),
        "the export imported back: {back:#}\n{policy}"
    );
}

/// Nothing invalid is ever written: an import of a file with a bad rule exits 2 with the
/// reason, the store revision stays, and no agent applies or acknowledges anything.
#[test]
fn an_invalid_import_exits_2_and_writes_nothing_and_agents_keep_their_policy() {
    let f = web_db(&[("db", DB), ("web1", WEB1)], &["web1"]);
    let before = f.status();
    let bad = policy_b().replace("ports: 3307", "ports: 70000");
    let o = f.store(
        false,
        &["import", f.write("bad.yaml", &bad).to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("70000"),
        "the error names the bad value: {err}"
    );
    // A file referencing a group that does not exist: refused too.
    let dangling = POLICY_A.replace("source: sg-web", "source: sg-nowhere");
    let o = f.store(
        false,
        &[
            "import",
            f.write("dangling.yaml", &dangling).to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Give a wrongly written value time to reach the agents before looking.
    std::thread::sleep(Duration::from_millis(500));
    let after = f.status();
    assert_eq!(
        after["revision"], before["revision"],
        "the store was written"
    );
    assert_eq!(after["hash"], before["hash"]);
    for h in ["db", "web1"] {
        assert_eq!(
            ack(&after, h),
            ack(&before, h),
            "{h} acknowledged something"
        );
        f.verify_store(h);
    }
    assert!(f.connects("web1", DB, 3306));
    assert!(!f.connects("web1", DB, 3307));
}

/// S2 (and S3's "never fail open"): a value written straight into etcd that does not
/// validate (a group with a bad CIDR) is refused by every agent: each acknowledges the
/// revision it tried with an error naming the key, keeps enforcing the last good policy
/// (traffic, `verify` against the export taken before), and `verify --store` refuses the
/// store. Importing a good file again clears the errors.
#[test]
fn s2_an_invalid_value_in_the_store_keeps_enforcement_and_the_ack_names_the_key() {
    let f = web_db(&[("db", DB), ("web1", WEB1)], &["web1"]);
    let good = f.write("good.yaml", &f.export());
    let before = f.status();

    let bad = r#"{"schema":1,"group":{"id":"sg-db","name":"sg-db","description":"databases","ingress":[{"protocol":"tcp","ports":3307,"source":"192.0.2.300/24"}]}}"#;
    let put = f
        .etcd
        .etcdctl(&["put", "-w", "json", "/sg/v1/groups/sg-db", bad])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let put: Value = serde_json::from_str(&put).unwrap();
    let bad_rev = put["header"]["revision"].as_i64().unwrap();
    let st = f.wait_status(
        "both hosts to acknowledge the bad revision with an error",
        CONVERGE,
        |s| {
            ["db", "web1"].iter().all(|h| {
                let a = ack(s, h);
                a["tried"].as_i64() == Some(bad_rev) && a["error"].is_string()
            })
        },
    );
    for h in ["db", "web1"] {
        let (a, was) = (ack(&st, h), ack(&before, h));
        let err = a["error"].as_str().unwrap();
        assert!(
            err.contains("v1/groups/sg-db"),
            "{h}: the error names the key: {err}"
        );
        assert_eq!(
            a["revision"], was["revision"],
            "{h}: enforced revision moved"
        );
        assert_eq!(a["hash"], was["hash"], "{h}: enforced policy changed");
        assert_eq!(a["generation"], was["generation"], "{h}: a new generation");
        assert_eq!(Fleet::host_status(&st, h)["current"], false, "{st:#}");
        f.verify_file(h, &good);
    }
    assert!(f.connects("web1", DB, 3306), "enforcement kept: 3306");
    assert!(
        !f.connects("web1", DB, 3307),
        "the bad value is not enforced"
    );
    let endpoints = f.etcd.endpoints();
    let o = f.sg(Some("db"), &["verify", "--store", endpoints.as_str()]);
    assert!(
        !o.status.success(),
        "verify --store of an invalid store passed"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("v1/groups/sg-db"),
        "{}",
        text(&o)
    );

    // A good import repairs the store; every host is current again, without errors.
    f.import(&f.write("a.yaml", POLICY_A));
    let st = f.wait_current(&["db", "web1"], CONVERGE);
    for h in ["db", "web1"] {
        assert!(is_current(&Fleet::host_status(&st, h)));
        f.verify_store(h);
    }
    assert!(f.connects("web1", DB, 3306));
}
