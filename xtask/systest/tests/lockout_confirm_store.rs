//! Never lock me out, part 1c (L1, with S1/S2): a daemon following the store with
//! `--confirm-changes DURATION` applies each revision that changes the policy under a
//! confirmation window. A store change (what `sg-agent api` and `store import` write alike)
//! that nobody confirms on the host is reverted there at the deadline; the store still holds
//! it, and the host neither applies it again in a loop nor claims to enforce it: its ack
//! names the reverted revision, its metrics too, until a newer revision arrives. A real etcd
//! and real TCP between host namespaces; every wait is bounded.
use std::time::{Duration, Instant};

use sg_testkit::fleet::{CONVERGE, DB, Fleet, METRICS, POLICY_A, STARTUP, WEB1, ack, metric};
use sg_testkit::netns::Proc;

/// `sg-agent daemon --store ... --confirm-changes WITHIN` on db, registering eth0 in sg-db.
fn db_daemon(f: &Fleet, within: &str) -> Proc {
    let endpoints = f.etcd.endpoints();
    f.ns("db")
        .spawn(&[
            sg_testkit::agent_bin(),
            "daemon",
            "--store",
            &endpoints,
            "--host",
            "db",
            "--register",
            "eth0=sg-db",
            "--lease-ttl",
            "10",
            "--metrics",
            METRICS,
            "--confirm-changes",
            within,
        ])
        .expect("daemon started")
}

/// L1 over the store: MySQL moved from 3306 to 3307 in the store (a rule change, E7) reaches
/// db under a 6 s window; unconfirmed, db goes back to 3306 at the deadline. The store keeps
/// 3307: db's ack names the reverted revision and the one it enforces, its metrics say the
/// revision is not enforced, and it is not applied again. A newer revision (A again) is
/// applied and acknowledged as current.
#[test]
fn l1_a_store_change_under_confirm_changes_reverts_on_the_host_and_is_not_applied_again() {
    let mut f = Fleet::new(1, &[("db", DB), ("web1", WEB1)]);
    f.serve("db", &[3306, 3307]);
    f.import(&f.write("a.yaml", POLICY_A));
    f.start_agent("web1", "eth0=sg-web", 10);
    // Declared after the fleet: dropped (killed) before the fleet detaches every host.
    let d = db_daemon(&f, "6s");
    f.wait_current(&["db", "web1"], STARTUP);
    assert!(f.connects("web1", DB, 3306), "R1: web1 is in sg-web");
    assert!(
        !d.log().contains("waiting for `sg-agent confirm`"),
        "nothing to go back to at the start, and registrations are memberships: {}",
        d.log()
    );

    let b = sg_testkit::fleet::policy_b();
    f.import(&f.write("b.yaml", &b));
    f.wait(
        "db to apply the new revision under a window",
        CONVERGE,
        || d.log().contains("waiting for `sg-agent confirm`"),
    );
    let applied = Instant::now();
    assert!(f.connects("web1", DB, 3307), "E7: the store's change is in");
    assert!(!f.connects("web1", DB, 3306));

    f.wait(
        "the revert (nobody confirms)",
        Duration::from_secs(30),
        || f.connects("web1", DB, 3306),
    );
    assert!(
        applied.elapsed() >= Duration::from_secs(5),
        "reverted before the deadline ({:?})",
        applied.elapsed()
    );
    assert!(
        !f.connects("web1", DB, 3307),
        "L1: the reverted rule is gone"
    );
    let st = f.wait_status("db's ack to name the reverted revision", CONVERGE, |s| {
        ack(s, "db")["error"]
            .as_str()
            .is_some_and(|e| e.contains("reverted"))
    });
    let a = ack(&st, "db");
    assert!(
        a["tried"].as_i64() > a["revision"].as_i64(),
        "the ack names the enforced revision, older than the reverted one: {a:#}"
    );
    let m = f.metrics("db");
    assert_eq!(
        metric(&m, "sg_confirm_reverted_not_enforced"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "sg_store_revision_reverted").is_some_and(|r| r > 0.0),
        "{m}"
    );

    // No loop: the store still holds 3307; db keeps 3306.
    std::thread::sleep(Duration::from_secs(3));
    assert!(f.connects("web1", DB, 3306));
    assert_eq!(
        d.log().matches("waiting for `sg-agent confirm`").count(),
        1,
        "{}",
        d.log()
    );

    // A newer revision is applied: A again (what db enforces: no window), acknowledged as
    // the store's current policy.
    f.import(&f.write("a2.yaml", POLICY_A));
    f.wait_current(&["db", "web1"], CONVERGE);
    assert_eq!(
        metric(&f.metrics("db"), "sg_store_revision_reverted"),
        Some(0.0)
    );
    assert!(f.connects("web1", DB, 3306));
    drop(d);
}
