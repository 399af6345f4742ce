//! Never lock me out, part 1b (L1): the daemon's `--confirm-changes DURATION`. A change of the
//! policy file the daemon picks up is applied as `apply --confirm` would be: a bad one locks
//! new SSH connections out and comes back by itself at the deadline (and is not applied
//! again while the file still holds it); a confirm from a new SSH session keeps a change, and
//! a change arriving meanwhile is held until the window closes; memberships added during the
//! window land in both generations, so they survive the revert. Real sshd in the lab's
//! namespaces; every wait is bounded.
use std::path::Path;
use std::time::{Duration, Instant};

use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::scenario::{HTTPS_ONLY, INST, INTERNET, MY_IP, SSH_FROM_MY_IP};
use sg_testkit::agent_harness::text;
use sg_testkit::netns::Proc;

/// sg-web admits SSH from the members of sg-admin (R1); sg-admin has no rules of its own.
const SSH_FROM_ADMINS: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: sg-admin}
  - id: sg-admin
"#;

/// The mistake: sg-web loses its SSH rule (sg-admin stays, with its members).
fn https_only_with_admins() -> String {
    format!("{HTTPS_ONLY}  - id: sg-admin\n")
}

/// A change that keeps SSH: a rule from anywhere added for each of `ports` (two rules each:
/// IPv4 and IPv6).
fn more(ports: &[u16]) -> String {
    let mut text = SSH_FROM_MY_IP.to_string();
    for p in ports {
        text.push_str(&format!(
            "      - {{protocol: tcp, ports: {p}, source: [0.0.0.0/0, \"::/0\"]}}\n"
        ));
    }
    text
}

/// Replaces the daemon's policy file at once (a rename: never read half-written).
fn write_policy(file: &Path, from: &Path) {
    let tmp = file.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy policy");
    std::fs::rename(&tmp, file).expect("rename policy");
}

/// `sg-agent daemon --config FILE --confirm-changes WITHIN` on inst, ready (metrics served).
fn daemon(bed: &Bed, file: &Path, within: &str) -> Proc {
    let file = file.display().to_string();
    bed.daemon("inst", &["--config", &file, "--confirm-changes", within])
}

/// What the daemon logs when it applies a change under a confirmation window.
const WINDOW_OPENED: &str = "waiting for `sg-agent confirm`";

/// Waits (10 s at most) until the daemon has opened `n` confirmation windows in all.
fn wait_windows(d: &Proc, n: usize) {
    wait_log(d, WINDOW_OPENED, n, Duration::from_secs(10));
}

/// Waits until the daemon's log holds `want` at least `n` times.
fn wait_log(d: &Proc, want: &str, n: usize, within: Duration) {
    let t0 = Instant::now();
    while d.log().matches(want).count() < n {
        assert!(
            t0.elapsed() < within,
            "no {want:?} (x{n}) in the daemon's log within {within:?}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(bed: &Bed) -> String {
    bed.host("inst")
        .ns
        .run_ok(
            &["curl", "-s", "http://127.0.0.1:9617/metrics"],
            Duration::from_secs(10),
        )
        .expect("scrape")
}

fn status(bed: &Bed) -> serde_json::Value {
    let o = bed
        .agents
        .run(&bed.host("inst").ns, &["--json", "status"])
        .expect("status ran");
    assert!(o.status.success(), "status: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// L1 (and R1 for the membership): the daemon reloads a policy file that locks the admin
/// out under `--confirm-changes 8s`; an instance that joins sg-admin during the window is
/// applied at once (memberships need no confirmation) and written into the policy a revert
/// goes back to. Nobody confirms: at the deadline the previous rules come back, so a new SSH
/// connection from my-ip works again, and the new member (internet) gets in too. The file
/// still holds the bad rules: the daemon does not apply them again (no revert loop), and says
/// so in its log and metrics.
#[test]
fn l1_a_daemon_reload_under_confirm_changes_reverts_and_keeps_members_added_in_the_window() {
    let mut bed = Bed::new(&[INST, MY_IP, INTERNET]);
    bed.serve("inst", &[Ssh(22)]);
    let members = [("inst", "sg-web"), ("my-ip", "sg-admin")];
    let good = bed.members_policy(SSH_FROM_ADMINS, &members);
    let bad = bed.members_policy(&https_only_with_admins(), &members);
    let joined = [
        ("inst", "sg-web"),
        ("my-ip", "sg-admin"),
        ("internet", "sg-admin"),
    ];
    let bad_joined = bed.members_policy(&https_only_with_admins(), &joined);
    let file = bed.policy(&std::fs::read_to_string(&good).unwrap());
    bed.agents
        .apply(&bed.host("inst").ns, &file)
        .expect("the good policy applied");
    let ssh = |from: &str| bed.new_ssh_works(from, bed.host("inst").v4());
    assert!(ssh("my-ip"), "R1: my-ip is in sg-admin");
    assert!(
        !ssh("internet"),
        "internet is in no group yet (the control)"
    );
    let d = daemon(&bed, &file, "8s");
    assert!(
        !d.log().contains(WINDOW_OPENED),
        "the start changed nothing: no window:\n{}",
        d.log()
    );

    write_policy(&file, &bad);
    wait_windows(&d, 1);
    let applied = Instant::now();
    assert!(
        !ssh("my-ip"),
        "the bad reload locks my-ip out (the control)"
    );
    assert!(!status(&bed)["confirm"].is_null(), "L1: a window is open");

    write_policy(&file, &bad_joined);
    wait_log(&d, "memberships changed while", 1, Duration::from_secs(10));
    assert!(
        applied.elapsed() < Duration::from_secs(8),
        "the membership change came inside the window"
    );

    let mut back = false;
    while !back && applied.elapsed() < Duration::from_secs(30) {
        back = ssh("my-ip");
    }
    assert!(back, "L1: no revert within 30 s of an 8 s deadline");
    assert!(
        applied.elapsed() >= Duration::from_secs(7),
        "reverted before the deadline ({:?})",
        applied.elapsed()
    );
    wait_log(
        &d,
        "reverted the unconfirmed apply",
        1,
        Duration::from_secs(5),
    );
    assert!(
        ssh("internet"),
        "L1: the member added during the window survives the revert"
    );

    // No loop: the file still holds the reverted rules; they stay out.
    std::thread::sleep(Duration::from_secs(3));
    assert!(ssh("my-ip"), "the reverted policy came back");
    assert_eq!(d.log().matches(WINDOW_OPENED).count(), 1, "{}", d.log());
    assert!(d.log().contains("is not applied again"), "{}", d.log());
    let st = status(&bed);
    assert!(st["confirm"].is_null(), "{st:#}");
    assert_eq!(st["confirm_reverts"], 1, "{st:#}");
    let m = metrics(&bed);
    assert!(m.contains("sg_confirm_reverts_total 1\n"), "{m}");
    assert!(m.contains("sg_confirm_reverted_not_enforced 1\n"), "{m}");
    assert!(m.contains("sg_confirm_pending 0\n"), "{m}");
    bed.hold(d);
    bed.detach_all();
}

/// L1: a reload confirmed in time (`sg-agent confirm` from a new SSH session) stays past its
/// deadline. A change of the rules arriving while it waits is held (the daemon says so) and
/// applied when the window closes, under a window of its own.
#[test]
fn l1_a_daemon_reload_confirmed_in_time_stays_and_a_change_meanwhile_is_held() {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Ssh(22)]);
    let members = [("inst", "sg-web")];
    let good = bed.members_policy(SSH_FROM_MY_IP, &members);
    let https = bed.members_policy(&more(&[443]), &members);
    let https_8443 = bed.members_policy(&more(&[443, 8443]), &members);
    let file = bed.policy(&std::fs::read_to_string(&good).unwrap());
    bed.agents
        .apply(&bed.host("inst").ns, &file)
        .expect("the good policy applied");
    let d = daemon(&bed, &file, "8s");
    let confirm = || {
        let o = bed.over_ssh(
            "my-ip",
            bed.host("inst").v4(),
            &bed.agent_cmd_for_ssh("confirm"),
        );
        assert!(o.status.success(), "confirm: {}", text(&o));
        assert!(text(&o).contains("confirmed:"), "{}", text(&o));
    };

    write_policy(&file, &https);
    wait_windows(&d, 1);
    let applied = Instant::now();
    write_policy(&file, &https_8443);
    wait_log(&d, "holding the new policy", 1, Duration::from_secs(10));
    confirm();
    assert!(applied.elapsed() < Duration::from_secs(8), "in time");
    // The held change goes in when the window closes, with a window of its own.
    wait_windows(&d, 2);
    let second = Instant::now();
    confirm();
    assert!(second.elapsed() < Duration::from_secs(8), "in time");
    std::thread::sleep(Duration::from_secs(10));
    let st = status(&bed);
    assert!(st["confirm"].is_null(), "{st:#}");
    assert_eq!(
        st["confirm_reverts"], 0,
        "L1: confirmed changes stay: {st:#}"
    );
    assert_eq!(
        st["rules"], 8,
        "the held change is enforced (SSH, 443 and 8443, each for both families, and the \
         default egress): {st:#}"
    );
    assert!(bed.new_ssh_works("my-ip", bed.host("inst").v4()));
    assert!(!d.log().contains("reverted the unconfirmed"), "{}", d.log());
    bed.hold(d);
    bed.detach_all();
}
