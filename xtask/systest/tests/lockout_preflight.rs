//! Never lock me out, part 2 (L2): the pre-flight of `sg-agent apply` run by an administrator
//! inside a real SSH session (my-ip -> inst, sshd sets SSH_CONNECTION). The reference model
//! judges a new connection from the session's client to the SSH port on the interface that
//! holds the server address: a policy that would drop it is refused (exit 2, nothing changed,
//! the message names the interface, its groups and the rule needed) unless `--force`.
use std::net::IpAddr;
use std::process::Output;

use sg_lab::bed::Bed;
use sg_lab::bed::Server::*;
use sg_lab::scenario::{HTTPS_ONLY, INST, MY_IP, SSH_FROM_MY_IP};
use sg_testkit::agent_harness::text;

const GOOD: &str = SSH_FROM_MY_IP;

/// SSH from my-ip's IPv4 address only, and from a network the administrator is not in.
const V4_ONLY: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 22, source: [198.51.100.10/32, 203.0.113.0/24]}
"#;

/// The SSH rule is gone.
const NO_SSH: &str = HTTPS_ONLY;

/// A policy file of `groups` with inst its only member, in sg-web.
fn policy(bed: &Bed, groups: &str) -> String {
    let p = bed.members_policy(groups, &[("inst", "sg-web")]);
    p.display().to_string()
}

/// `sg-agent ARGS` on inst in an SSH session from my-ip to `to` (sshd sets SSH_CONNECTION).
fn over_ssh(bed: &Bed, to: IpAddr, args: &str) -> Output {
    bed.over_ssh("my-ip", to, &bed.agent_cmd_for_ssh(args))
}

fn new_ssh_works(bed: &Bed, to: IpAddr) -> bool {
    bed.new_ssh_works("my-ip", to)
}

fn source(bed: &Bed) -> serde_json::Value {
    bed.agents.status(&bed.host("inst").ns).expect("status")["source"].clone()
}

/// L2: over SSH, a policy that drops SSH from the administrator's address is refused (exit
/// 2, nothing changed, the message names what is missing); `--force` applies it, and then a
/// new SSH connection is indeed refused. Over IPv6, a policy that keeps only the IPv4 rule is
/// refused naming the /128 the IPv6 client needs.
#[test]
fn l2_preflight_refuses_a_policy_that_drops_the_admins_ssh_unless_forced() {
    let mut bed = Bed::new(&[INST, MY_IP]);
    bed.serve("inst", &[Ssh(22)]);
    bed.apply_to_inst(GOOD, "sg-web");
    let (v4, v6) = (bed.host("inst").v4(), bed.host("inst").v6());
    let before = source(&bed);

    let no_ssh = policy(&bed, NO_SSH);
    let o = over_ssh(&bed, v4, &format!("apply {no_ssh}"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for want in [
        "pre-flight (SSH_CONNECTION 198.51.100.10",
        "interface inst",
        "groups sg-web",
        "source: 198.51.100.10/32",
        "--force",
        "nothing was changed",
    ] {
        assert!(text(&o).contains(want), "{want:?} missing: {}", text(&o));
    }
    assert_eq!(source(&bed), before, "nothing was applied");
    assert!(new_ssh_works(&bed, v4), "still open after the refusal");

    let v4_only = policy(&bed, V4_ONLY);
    let o = over_ssh(&bed, v6, &format!("apply {v4_only}"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("2001:db8:20::10/128"),
        "the IPv6 client's rule: {}",
        text(&o)
    );
    // The same policy is fine for the IPv4 session (the pre-flight judges the session's own
    // client), and says what it checked.
    let o = over_ssh(&bed, v4, &format!("apply {v4_only}"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("pre-flight: a new SSH connection from 198.51.100.10 to port 22"),
        "{}",
        text(&o)
    );

    let o = over_ssh(&bed, v4, &format!("apply --force {no_ssh}"));
    assert!(o.status.success(), "--force overrides: {}", text(&o));
    assert!(text(&o).contains("applied anyway: --force"), "{}", text(&o));
    assert_eq!(source(&bed), no_ssh.as_str());
    assert!(
        !new_ssh_works(&bed, v4),
        "the pre-flight was right: new SSH connections are refused"
    );
    bed.detach_all();
}
