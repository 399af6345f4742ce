//! Never lock me out, part 1 (L1): `sg-agent apply --confirm DURATION` run by an
//! administrator inside a real SSH session (my-ip -> inst, sshd sets SSH_CONNECTION). A bad
//! policy locks new SSH connections out and comes back by itself at the deadline; a confirm in
//! time keeps a change; other applies wait; the watchdog killed during the window leaves the
//! revert to the next agent start (a simulated reboot: the marker under the state dir).
//! Deadlines are a few seconds; every wait is bounded.
use std::process::Output;
use std::time::{Duration, Instant};

use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::scenario::{HTTPS_ONLY, INST, MY_IP, SSH_FROM_MY_IP};
use sg_testkit::agent_harness::text;

const GOOD: &str = SSH_FROM_MY_IP;

/// A mistake: the SSH rule is gone, only HTTPS is left.
const BAD: &str = HTTPS_ONLY;

/// A change that keeps SSH: HTTPS added.
const MORE: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: [198.51.100.10/32, "2001:db8:20::10/128"]}
      - {protocol: tcp, ports: 443, source: [0.0.0.0/0, "::/0"]}
"#;

/// inst serving SSH, GOOD applied from the test (no SSH session, no pre-flight).
fn bed() -> Bed {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Ssh(22)]);
    bed.apply_to_inst(GOOD, "sg-web");
    bed
}

/// A policy file of `groups` with inst its only member, in sg-web.
fn policy(bed: &Bed, groups: &str) -> String {
    let p = bed.members_policy(groups, &[("inst", "sg-web")]);
    p.display().to_string()
}

/// `sg-agent ARGS` on inst, typed by the administrator in an SSH session from my-ip.
fn over_ssh(bed: &Bed, args: &str) -> Output {
    over_ssh_sh(bed, &bed.agent_cmd_for_ssh(args))
}

/// Runs a shell command line on inst in one SSH session from my-ip.
fn over_ssh_sh(bed: &Bed, cmd: &str) -> Output {
    bed.over_ssh("my-ip", bed.host("inst").v4(), cmd)
}

/// Whether a NEW SSH connection from my-ip to inst gets in.
fn new_ssh_works(bed: &Bed) -> bool {
    bed.new_ssh_works("my-ip", bed.host("inst").v4())
}

/// `sg-agent --json status` on inst from the test (an agent start: it reverts an overdue
/// change), with its stderr.
fn status(bed: &Bed) -> (serde_json::Value, String) {
    let o = bed
        .agents
        .run(&bed.host("inst").ns, &["--json", "status"])
        .expect("status ran");
    assert!(o.status.success(), "status: {}", text(&o));
    (
        serde_json::from_slice(&o.stdout).expect("status JSON"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// L1: a bad policy applied with `--confirm 6s` over SSH (forced past the pre-flight, L2,
/// as a mistake it cannot see would be) locks new connections out; with no confirm it
/// reverts at the deadline by itself, after the SSH session that set it has ended, and a new
/// SSH connection works again. The revert is in status and counters.
#[test]
fn l1_an_unconfirmed_lockout_reverts_at_the_deadline_and_ssh_works_again() {
    let bed = bed();
    let good = status(&bed).0["source"].clone();
    let bad = policy(&bed, BAD);
    let o = over_ssh(&bed, &format!("apply --confirm 6s --force {bad}"));
    let applied = Instant::now();
    assert!(o.status.success(), "apply --confirm over ssh: {}", text(&o));
    let out = text(&o);
    assert!(out.contains("watchdog (pid"), "who holds the timer: {out}");
    assert!(out.contains("applied anyway: --force"), "{out}");
    assert!(
        !new_ssh_works(&bed),
        "the bad policy must lock new SSH connections out (the control of this test)"
    );
    assert!(
        applied.elapsed() < Duration::from_secs(6),
        "the lock-out was checked before the deadline"
    );
    // The revert comes by itself: poll with new connections, bounded.
    let mut back = false;
    while !back && applied.elapsed() < Duration::from_secs(25) {
        back = new_ssh_works(&bed);
    }
    assert!(back, "L1: no revert within 25 s of a 6 s deadline");
    assert!(
        applied.elapsed() >= Duration::from_secs(5),
        "reverted before the deadline ({:?})",
        applied.elapsed()
    );
    let (st, err) = status(&bed);
    assert_eq!(st["source"], good, "the previous policy is enforced again");
    assert!(st["confirm"].is_null(), "nothing pending: {st:#}");
    assert_eq!(st["confirm_reverts"], 1, "{st:#}");
    assert!(
        !err.contains("reverted"),
        "the watchdog reverted, not this start: {err}"
    );
    let c = bed
        .agents
        .run(&bed.host("inst").ns, &["--json", "counters"])
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(c["confirm_reverts"], 1, "counters say so");
    bed.detach_all();
}

/// L1: a change confirmed in time (from a NEW SSH connection) stays past its deadline;
/// while it waits, another apply is refused with the deadline and both ways out; confirming
/// over the very connection that applied warns that it proves nothing.
#[test]
fn l1_a_change_confirmed_in_time_stays_and_other_applies_wait() {
    let bed = bed();
    let more = policy(&bed, MORE);
    let o = over_ssh(&bed, &format!("apply --confirm 6s {more}"));
    let applied = Instant::now();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("pre-flight: a new SSH connection from 198.51.100.10"),
        "L2 checked it: {}",
        text(&o)
    );
    let other = over_ssh(&bed, &format!("apply {}", policy(&bed, GOOD)));
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    for want in [
        "waiting for confirmation",
        "s left",
        "sg-agent confirm",
        "--rollback",
    ] {
        assert!(text(&other).contains(want), "{want:?}: {}", text(&other));
    }
    let c = over_ssh(&bed, "confirm");
    assert!(c.status.success(), "confirm: {}", text(&c));
    assert!(text(&c).contains("confirmed:"), "{}", text(&c));
    assert!(
        !text(&c).contains("warning"),
        "a new connection: {}",
        text(&c)
    );
    assert!(applied.elapsed() < Duration::from_secs(6), "in time");
    std::thread::sleep(
        Duration::from_secs(6).saturating_sub(applied.elapsed()) + Duration::from_secs(2),
    );
    let (st, _) = status(&bed);
    assert_eq!(
        st["source"],
        more.as_str(),
        "L1: the confirmed change stays"
    );
    assert_eq!(st["confirm_reverts"], 0, "{st:#}");
    assert!(new_ssh_works(&bed));

    // Applied and confirmed over one connection: kept, with a warning.
    let good = policy(&bed, GOOD);
    let cmd = format!(
        "{} && {}",
        bed.agent_cmd_for_ssh(&format!("apply --confirm 20s {good}")),
        bed.agent_cmd_for_ssh("confirm")
    );
    let o = over_ssh_sh(&bed, &cmd);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning: this confirmation comes over the SSH connection"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("its flow is tracked since"),
        "the flow's age from conntrack: {}",
        text(&o)
    );
    let (st, _) = status(&bed);
    assert!(st["confirm"].is_null(), "confirmed: {st:#}");
    bed.detach_all();
}

/// L1: the timer survives its holder: with the watchdog killed during the window nothing
/// reverts at the deadline (no process is left to do it), and the next agent start (what a
/// reboot or a crash leaves: the marker under the state dir) reverts, so SSH works again.
/// `confirm --rollback` goes back at once.
#[test]
fn l1_the_watchdog_killed_in_the_window_leaves_the_revert_to_the_next_agent_start() {
    let bed = bed();
    let bad = policy(&bed, BAD);
    let o = over_ssh(&bed, &format!("apply --confirm 3s --force {bad}"));
    let applied = Instant::now();
    assert!(o.status.success(), "{}", text(&o));
    let pid = {
        let o = bed
            .agents
            .run(&bed.host("inst").ns, &["--json", "status"])
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        st["confirm"]["watchdog_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("a watchdog pid in status: {st:#}")) as i32
    };
    // SAFETY: plain syscall on the watchdog this test's apply started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(applied.elapsed()) + Duration::from_secs(2),
    );
    assert!(
        !new_ssh_works(&bed),
        "past the deadline with no timer: still locked out (the control)"
    );
    let (st, err) = status(&bed);
    assert!(
        err.contains("was not confirmed in time: reverted"),
        "this agent start reverts: {err}"
    );
    assert!(st["confirm"].is_null(), "{st:#}");
    assert_eq!(st["confirm_reverts"], 1);
    assert!(new_ssh_works(&bed), "L1: SSH works again after the revert");

    // A rollback asked for over SSH (a change that keeps SSH, so the session can ask).
    let more = policy(&bed, MORE);
    let o = over_ssh(&bed, &format!("apply --confirm 60s {more}"));
    assert!(o.status.success(), "{}", text(&o));
    let r = over_ssh(&bed, "confirm --rollback");
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("reverted:"), "{}", text(&r));
    let (st, _) = status(&bed);
    assert!(st["confirm"].is_null(), "{st:#}");
    assert_eq!(st["confirm_reverts"], 2);
    bed.detach_all();
}

/// L1 with a daemon running: the daemon holds the timer (no watchdog is started), reverts the
/// unconfirmed lock-out at the deadline, and says so in its log and its metrics.
#[test]
fn l1_with_a_daemon_the_daemon_reverts_and_says_so_in_log_and_metrics() {
    let mut bed = bed();
    let good = policy(&bed, GOOD);
    let daemon = bed.daemon("inst", &["--config", &good]);
    let bad = policy(&bed, BAD);
    let o = over_ssh(&bed, &format!("apply --confirm 4s --force {bad}"));
    let applied = Instant::now();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the daemon (pid"),
        "the daemon holds the timer: {}",
        text(&o)
    );
    assert!(!text(&o).contains("watchdog (pid"), "{}", text(&o));
    assert!(!new_ssh_works(&bed), "locked out (the control)");
    let mut back = false;
    while !back && applied.elapsed() < Duration::from_secs(20) {
        back = new_ssh_works(&bed);
    }
    assert!(
        back,
        "L1: the daemon did not revert within 20 s of a 4 s deadline"
    );
    assert!(
        daemon.log().contains("reverted the unconfirmed apply"),
        "the daemon's log: {}",
        daemon.log()
    );
    let m = bed
        .host("inst")
        .ns
        .run_ok(
            &["curl", "-s", "http://127.0.0.1:9617/metrics"],
            Duration::from_secs(10),
        )
        .expect("scrape");
    assert!(m.contains("sg_confirm_reverts_total 1\n"), "{m}");
    assert!(m.contains("sg_confirm_pending 0\n"), "{m}");
    bed.hold(daemon);
    bed.detach_all();
}
