//! The etcd harness the fleet's tests stand on (`sg_testkit::etcd`): real etcd members in
//! namespaces of their own answer hosts on their bridge, survive the faults the fleet tests
//! inject (a member killed, stopped, paused; compaction), and leave nothing behind, also
//! after a panic. Root only: these tests fail, never skip, without it.
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use sg_lab::topology::{HostSpec, Lan};
use sg_testkit::etcd::{EtcdCluster, EtcdOptions};
use sg_testkit::netns::{require_root, wait_until};

/// What a cluster made, to look for after it is gone.
struct Traces {
    namespaces: Vec<String>,
    dir: String,
    pids: Vec<u32>,
}

fn traces(c: &EtcdCluster) -> Traces {
    Traces {
        namespaces: c.namespaces(),
        dir: c.dir().display().to_string(),
        pids: (0..c.len()).filter_map(|i| c.pid(i)).collect(),
    }
}

/// Nothing of the cluster is left: no namespace, no etcd started with its data dir, no pid of
/// its members alive, no temp dir.
fn assert_gone(t: &Traces) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in &t.namespaces {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind:\n{list}"
        );
    }
    let pgrep = Command::new("pgrep")
        .args(["-af", &t.dir])
        .output()
        .unwrap();
    assert!(
        pgrep.stdout.is_empty(),
        "processes of {} left behind: {}",
        t.dir,
        String::from_utf8_lossy(&pgrep.stdout)
    );
    for pid in &t.pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "etcd pid {pid} still exists"
        );
    }
    assert!(
        !std::path::Path::new(&t.dir).exists(),
        "temp dir {} left behind",
        t.dir
    );
}

/// Waits (10 s) until member `m` (`who`) serves `key` = `value`: it caught up.
fn catch_up(c: &EtcdCluster, who: &str, m: usize, (key, value): (&str, &str)) {
    wait_until(
        &format!("{who} to catch up"),
        Duration::from_secs(10),
        || {
            c.etcdctl_at(m, &["get", key, "--print-value-only"])
                .is_ok_and(|v| v.trim() == value)
        },
    )
    .unwrap();
}

/// Nothing listens on etcd's ports in this (the default) namespace.
fn assert_nothing_listens_here() {
    let ss = Command::new("ss").args(["-Hltn"]).output().unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    for port in [":2379", ":2380"] {
        assert!(
            !ss.lines().any(|l| l.contains(port)),
            "something listens on {port} in the default namespace:\n{ss}"
        );
    }
}

#[test]
fn a_one_member_cluster_answers_put_and_get_from_a_host_namespace() {
    require_root();
    let t;
    {
        let mut c = EtcdCluster::start(1, EtcdOptions::default()).unwrap();
        t = traces(&c);
        assert_eq!(c.endpoints(), "etcd://192.0.2.221:2379");
        let h = c.add_host("h1", "192.0.2.101").unwrap();
        assert_eq!(h.addr, Ipv4Addr::new(192, 0, 2, 101));
        // The host's device carries its address (an agent binds by it).
        let addrs =
            h.ns.run_ok(
                &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                Duration::from_secs(5),
            )
            .unwrap();
        assert!(addrs.contains("192.0.2.101/24"), "{addrs}");
        assert!(
            c.add_host("h2", "192.0.2.101").is_err(),
            "a second host on h1's address"
        );
        assert!(
            c.add_host("h3", "192.0.2.221").is_err(),
            "a host on a member's address"
        );
        let h = c.host("h1");
        c.etcdctl_in(&h.ns, &["put", "/sg/harness", "one"]).unwrap();
        let got = c
            .etcdctl_in(&h.ns, &["get", "/sg/harness", "--print-value-only"])
            .unwrap();
        assert_eq!(got.trim(), "one");
        // And from the member's side.
        assert_eq!(
            c.etcdctl(&["get", "/sg/harness", "--print-value-only"])
                .unwrap()
                .trim(),
            "one"
        );
        assert_nothing_listens_here();
    }
    assert_gone(&t);
}

#[test]
fn a_cluster_on_a_lab_lans_bridge_answers_the_labs_hosts() {
    require_root();
    let t;
    let lan_ns;
    {
        let lan = Lan::new(&[HostSpec::new("web-1", "192.0.2.10", "2001:db8:10::10")]).unwrap();
        lan_ns = lan.switch.name().to_string();
        let opts = EtcdOptions {
            addrs: vec![Ipv4Addr::new(203, 0, 113, 221)],
            ..EtcdOptions::default()
        };
        let c = EtcdCluster::start_on(&lan.switch, "br0", 1, opts).unwrap();
        t = traces(&c);
        assert!(
            !t.namespaces.contains(&lan_ns),
            "a borrowed switch is not the cluster's"
        );
        let web = &lan.host("web-1").ns;
        c.etcdctl_in(web, &["put", "/sg/lab", "web"]).unwrap();
        let got = c
            .etcdctl_in(web, &["get", "/sg/lab", "--print-value-only"])
            .unwrap();
        assert_eq!(got.trim(), "web");
        drop(c);
        assert_gone(&t);
        // The lab's switch outlives the cluster; the LAN removes it.
        assert!(std::path::Path::new("/run/netns").join(&lan_ns).exists());
    }
    assert!(!std::path::Path::new("/run/netns").join(&lan_ns).exists());
}

#[test]
fn three_members_keep_answering_with_one_killed_and_the_killed_member_rejoins() {
    require_root();
    let t;
    {
        let c = EtcdCluster::start(3, EtcdOptions::default()).unwrap();
        t = traces(&c);
        assert_eq!(
            c.endpoints(),
            "etcd://192.0.2.221:2379,192.0.2.222:2379,192.0.2.223:2379"
        );
        let members = c.etcdctl(&["member", "list"]).unwrap();
        assert_eq!(
            members.lines().filter(|l| l.contains("started")).count(),
            3,
            "{members}"
        );
        c.etcdctl(&["put", "before", "1"]).unwrap();

        let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
        c.kill(1).unwrap();
        assert!(!c.is_running(1));
        // If it led, the two others elect a new leader first (about a second).
        let after = c.wait_leader(Duration::from_secs(15)).unwrap();
        assert_ne!(after, 1, "a killed member leads");
        if leader != 1 {
            assert_eq!(after, leader, "killing a follower changed the leader");
        }
        // Two of three are a quorum: writes and reads go on.
        c.etcdctl(&["put", "during", "2"]).unwrap();
        assert_eq!(
            c.etcdctl(&["get", "during", "--print-value-only"])
                .unwrap()
                .trim(),
            "2"
        );
        assert!(
            c.etcdctl_at(1, &["get", "during"]).is_err(),
            "a killed member answered"
        );

        c.start_member(1).unwrap();
        // The restarted member serves, with what was written while it was down.
        catch_up(&c, "the restarted member", 1, ("during", "2"));
        assert_eq!(
            c.etcdctl_at(1, &["get", "before", "--print-value-only"])
                .unwrap()
                .trim(),
            "1"
        );
        c.wait_healthy(&[0, 1, 2], Duration::from_secs(10)).unwrap();

        // A paused member is a hung machine: the others go on; resumed, it catches up.
        c.pause(2).unwrap();
        assert!(!c.is_running(2));
        assert_ne!(c.wait_leader(Duration::from_secs(15)).unwrap(), 2);
        c.etcdctl(&["put", "paused", "3"]).unwrap();
        c.resume(2).unwrap();
        catch_up(&c, "the resumed member", 2, ("paused", "3"));
        assert_nothing_listens_here();
    }
    assert_gone(&t);
}

#[test]
fn stop_then_start_and_kill_then_start_keep_the_data() {
    require_root();
    let t;
    {
        let c = EtcdCluster::start(1, EtcdOptions::default()).unwrap();
        t = traces(&c);
        c.etcdctl(&["put", "kept", "yes"]).unwrap();
        let pid = c.pid(0).unwrap();

        c.stop(0).unwrap();
        assert!(!c.is_running(0));
        assert!(c.pid(0).is_none());
        assert!(
            c.etcdctl(&["get", "kept"]).is_err(),
            "a stopped cluster answered"
        );
        c.start_member(0).unwrap();
        assert_ne!(c.pid(0), Some(pid), "start_member started a new process");
        assert_eq!(
            c.etcdctl(&["get", "kept", "--print-value-only"])
                .unwrap()
                .trim(),
            "yes"
        );

        c.etcdctl(&["put", "kept2", "also"]).unwrap();
        c.kill(0).unwrap();
        c.start_member(0).unwrap();
        assert_eq!(
            c.etcdctl(&["get", "kept", "--print-value-only"])
                .unwrap()
                .trim(),
            "yes"
        );
        assert_eq!(
            c.etcdctl(&["get", "kept2", "--print-value-only"])
                .unwrap()
                .trim(),
            "also"
        );
        // A member that runs cannot be started twice.
        assert!(c.start_member(0).is_err());
    }
    assert_gone(&t);
}

#[test]
fn compaction_removes_old_revisions_and_keeps_the_current_state() {
    require_root();
    let t;
    {
        let c = EtcdCluster::start(1, EtcdOptions::default()).unwrap();
        t = traces(&c);
        c.etcdctl(&["put", "k", "v1"]).unwrap();
        let old = c.revision().unwrap();
        c.etcdctl(&["put", "k", "v2"]).unwrap();
        let got = c
            .etcdctl(&["get", "k", "--print-value-only", &format!("--rev={old}")])
            .unwrap();
        assert_eq!(got.trim(), "v1", "before compaction the old revision reads");

        let rev = c.compact().unwrap();
        assert!(rev > old, "compacted at {rev}, after {old}");
        let err = c
            .etcdctl(&["get", "k", &format!("--rev={old}")])
            .expect_err("a read below the compacted revision must fail");
        assert!(format!("{err:#}").contains("compacted"), "{err:#}");
        assert_eq!(
            c.etcdctl(&["get", "k", "--print-value-only"])
                .unwrap()
                .trim(),
            "v2"
        );
        assert_eq!(c.revision().unwrap(), rev, "compaction is not a write");
    }
    assert_gone(&t);
}

#[test]
fn drop_leaves_nothing_behind_even_after_a_panic() {
    require_root();
    let seen = std::sync::Mutex::new(None);
    let sleeper = format!("sleep {}", 600_000 + std::process::id());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = EtcdCluster::start(3, EtcdOptions::default()).unwrap();
        c.add_host("h1", "192.0.2.101").unwrap();
        c.add_host_dev("h2", "ens5", "203.0.113.102").unwrap();
        // A process a test left running in a host namespace (detached: nothing of the test
        // would kill it) goes with the cluster too.
        c.host("h2")
            .ns
            .run_ok(
                &["sh", "-c", &format!("setsid {sleeper} >/dev/null 2>&1 &")],
                Duration::from_secs(5),
            )
            .unwrap();
        assert!(pgrep(&sleeper), "the sleeper did not start");
        // The 203.0.113.0/24 host reaches the 192.0.2.0/24 members on-link.
        c.etcdctl_in(&c.host("h2").ns, &["put", "x", "y"]).unwrap();
        c.pause(0).unwrap();
        *seen.lock().unwrap() = Some(traces(&c));
        panic!("the test fails while the cluster runs");
    }));
    assert!(r.is_err());
    let t = seen.lock().unwrap().take().unwrap();
    assert_eq!(t.namespaces.len(), 6, "3 members, 2 hosts, 1 switch");
    assert_gone(&t);
    wait_until("the sleeper to be killed", Duration::from_secs(5), || {
        !pgrep(&sleeper)
    })
    .unwrap();
}

fn pgrep(pattern: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

#[test]
fn a_member_that_cannot_start_fails_start_with_its_log_and_leaves_nothing() {
    require_root();
    let opts = EtcdOptions {
        extra_args: vec!["--no-such-flag".into()],
        ..EtcdOptions::default()
    };
    let err = match EtcdCluster::start(1, opts) {
        Ok(_) => panic!("etcd with an unknown flag started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited"), "{err}");
    assert!(
        err.contains("no-such-flag"),
        "the error carries etcd's log: {err}"
    );
    let bad = EtcdOptions {
        addrs: vec!["10.0.0.1".parse().unwrap()],
        ..EtcdOptions::default()
    };
    assert!(
        EtcdCluster::start(1, bad).is_err(),
        "an address outside the test ranges"
    );
}
