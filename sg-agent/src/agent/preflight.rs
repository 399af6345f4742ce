//! The pre-flight of an apply (L2): would the administrator's next SSH connection still get
//! in? Asks the reference model ([`crate::model::Model`]) about a new TCP connection from the
//! SSH client of the session running the apply (`SSH_CONNECTION`'s client address) to the
//! local SSH port (its server port), on the policy interface bound to the device that holds
//! the server address: the SYN inbound, then the SYN-ACK outbound (the model's conntrack lets
//! a tracked flow's reply out; an untracked one (C4) needs the egress rules).
//!
//! Owns that question and the wording of what is missing; it is not a second decision
//! procedure: every verdict is the model's.

use std::net::IpAddr;

use anyhow::{Result, bail};

use crate::bind::{Binding, LocalIface};
use crate::model::Model;
use crate::packet::Packet;
use crate::policy::{Direction, Policy};

/// An SSH session's endpoints, as sshd sets `SSH_CONNECTION`: "client port server port".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SshConnection {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

impl SshConnection {
    /// Parses `SSH_CONNECTION` ("198.51.100.10 50022 192.0.2.11 22"); IPv6 addresses may
    /// carry a zone (`fe80::1%eth0`), which is dropped.
    pub fn parse(s: &str) -> Result<SshConnection> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [client, cport, server, sport] = f.as_slice() else {
            bail!("SSH_CONNECTION {s:?} is not \"CLIENT PORT SERVER PORT\"");
        };
        let addr = |a: &str| -> Result<IpAddr> {
            let a = a.split('%').next().unwrap_or(a);
            a.parse()
                .map_err(|e| anyhow::anyhow!("SSH_CONNECTION {s:?}: address {a:?}: {e}"))
        };
        let port = |p: &str| -> Result<u16> {
            p.parse()
                .map_err(|e| anyhow::anyhow!("SSH_CONNECTION {s:?}: port {p:?}: {e}"))
        };
        Ok(SshConnection {
            client: canonical(addr(client)?),
            client_port: port(cport)?,
            server: canonical(addr(server)?),
            server_port: port(sport)?,
        })
    }

    /// The session's `SSH_CONNECTION`, when this process runs in one (and it parses).
    pub fn from_env() -> Option<SshConnection> {
        let v = std::env::var("SSH_CONNECTION").ok()?;
        match SshConnection::parse(&v) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("{e:#}; the SSH pre-flight is skipped");
                None
            }
        }
    }
}

impl std::fmt::Display for SshConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.client, self.client_port, self.server, self.server_port
        )
    }
}

/// An IPv4-mapped IPv6 address (sshd on a dual-stack socket) is the IPv4 address it maps.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        IpAddr::V4(_) => a,
    }
}

/// What the pre-flight found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new connection would get in; the text says where it was checked.
    Allowed(String),
    /// The policy does not judge that connection (the server address is on no device the
    /// policy binds): sg would not stand in its way.
    NotCovered(String),
    /// A new connection would be dropped: what is missing.
    LockedOut(String),
}

/// Judges a new SSH connection like `ssh`'s next one, under `policy` bound as `bindings` on
/// a host whose devices are `local`.
pub fn check(
    policy: &Policy,
    bindings: &[Binding],
    local: &[LocalIface],
    ssh: &SshConnection,
) -> Verdict {
    let what = format!(
        "a new SSH connection from {} to port {} of {}",
        ssh.client, ssh.server_port, ssh.server
    );
    let Some(dev) = local
        .iter()
        .find(|l| l.addresses.iter().any(|a| canonical(*a) == ssh.server))
    else {
        return Verdict::NotCovered(format!("{what}: no local device holds {}", ssh.server));
    };
    let Some(b) = bindings.iter().find(|b| b.device == dev.name) else {
        return Verdict::NotCovered(format!(
            "{what}: the policy does not cover {} (it holds {})",
            dev.name, ssh.server
        ));
    };
    let groups = policy
        .interface(&b.interface)
        .map(|i| {
            i.groups
                .iter()
                .map(|g| g.0.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let place = format!(
        "interface {} (device {}, groups {})",
        b.interface,
        b.device,
        if groups.is_empty() { "none" } else { &groups }
    );
    let mut model = Model::new(policy.clone());
    // A new connection comes from a new source port; which one does not matter (E6).
    let syn = Packet::syn(ssh.client, ssh.server, 50000, ssh.server_port);
    let inbound = model.process(&b.interface, Direction::Ingress, &syn);
    if !inbound.pass {
        return Verdict::LockedOut(format!(
            "{what} would be dropped on {place} ({}): no ingress rule allows tcp port {} \
             from {}; needed: an ingress rule `{{protocol: tcp, ports: {}, source: {}}}` (or a \
             wider one) in one of its groups",
            inbound.reason.name(),
            ssh.server_port,
            ssh.client,
            ssh.server_port,
            host_cidr(ssh.client)
        ));
    }
    let outbound = model.process(&b.interface, Direction::Egress, &syn.reply());
    if !outbound.pass {
        return Verdict::LockedOut(format!(
            "{what} is let in on {place}, but its answer would be dropped ({}): the flow is \
             untracked (C4) and no egress rule allows tcp to {}; needed: an egress rule \
             allowing tcp to {} in one of its groups",
            outbound.reason.name(),
            ssh.client,
            host_cidr(ssh.client)
        ));
    }
    Verdict::Allowed(format!(
        "{what} is allowed on {place} by {}",
        inbound.rule.map_or_else(|| "an exemption".into(), |r| r.0)
    ))
}

fn host_cidr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("\"{a}/128\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::{PolicyBuilder, addr, cidr, tcp};

    fn local() -> Vec<LocalIface> {
        vec![LocalIface {
            name: "eth0".into(),
            ifindex: 2,
            addresses: vec![addr("192.0.2.11")],
        }]
    }

    fn bound() -> Vec<Binding> {
        vec![Binding {
            interface: "inst".into(),
            device: "eth0".into(),
            ifindex: 2,
        }]
    }

    fn admin() -> SshConnection {
        SshConnection::parse("198.51.100.10 50123 192.0.2.11 22").unwrap()
    }

    /// L2: a policy that keeps SSH open from the admin's address passes the pre-flight.
    #[test]
    fn l2_ssh_from_the_admin_is_allowed() {
        let p = PolicyBuilder::new()
            .group("sg-web")
            .ingress("sg-web", tcp(22), cidr("198.51.100.10/32"))
            .iface("inst", &["192.0.2.11"], &["sg-web"])
            .build();
        assert!(matches!(
            check(&p, &bound(), &local(), &admin()),
            Verdict::Allowed(_)
        ));
    }

    /// L2: a policy that drops SSH from the admin's address is named as a lock-out, with the
    /// interface, its groups and the rule that would be needed.
    #[test]
    fn l2_a_policy_without_ssh_from_the_admin_locks_out() {
        let p = PolicyBuilder::new()
            .group("sg-web")
            .ingress("sg-web", tcp(443), cidr("0.0.0.0/0"))
            .ingress("sg-web", tcp(22), cidr("203.0.113.0/24"))
            .iface("inst", &["192.0.2.11"], &["sg-web"])
            .build();
        let Verdict::LockedOut(why) = check(&p, &bound(), &local(), &admin()) else {
            panic!("not a lock-out");
        };
        for want in [
            "interface inst",
            "device eth0",
            "sg-web",
            "198.51.100.10/32",
            "22",
        ] {
            assert!(why.contains(want), "{want:?} missing from: {why}");
        }
    }

    /// L2: the server address on a device the policy does not bind is not sg's to judge.
    #[test]
    fn l2_a_device_outside_the_policy_is_not_covered() {
        let p = PolicyBuilder::new()
            .group("sg-web")
            .iface("inst", &["192.0.2.11"], &["sg-web"])
            .build();
        let ssh = SshConnection::parse("198.51.100.10 50123 203.0.113.5 22").unwrap();
        assert!(matches!(
            check(&p, &bound(), &local(), &ssh),
            Verdict::NotCovered(_)
        ));
    }

    /// L2 through `Agent::apply`: refused unless forced, before anything is locked, loaded or
    /// created (so it needs no privileges); a dry run with `--force` carries the finding as a
    /// note.
    #[test]
    fn l2_apply_refuses_a_lockout_before_touching_anything_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = crate::agent::Agent::open(crate::agent::OpenOptions {
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let src = crate::agent::TextSource {
            name: "p.yaml".into(),
            text: "security_groups:\n  - id: sg-a\ninstances:\n  - {name: lo, addresses: \
                   [127.0.0.1], groups: [sg-a]}\n"
                .into(),
        };
        let mut opts = crate::agent::ApplyOptions::new(crate::dataplane::HookPlan::fixed(
            crate::dataplane::IngressHook::Tc,
        ));
        opts.admin = Some(SshConnection::parse("198.51.100.10 50000 127.0.0.1 22").unwrap());
        let e = agent.apply(&src, opts.clone()).unwrap_err();
        assert!(
            crate::error::is(&e, |k| matches!(k, crate::error::Error::WouldLockOut(_))),
            "{e:#}"
        );
        assert_eq!(crate::error::kind(&e).exit_code(), 2);
        assert!(format!("{e:#}").contains("groups sg-a"), "{e:#}");
        assert!(!dir.path().join("run").exists(), "nothing was touched");
        opts.force = true;
        opts.dry_run = true;
        let out = agent.apply(&src, opts).unwrap();
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("applied anyway: --force")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn ssh_connection_parses_sshds_format() {
        let c = SshConnection::parse("2001:db8:20::10%eth0 40000 ::ffff:192.0.2.11 2222").unwrap();
        assert_eq!(c.client, addr("2001:db8:20::10"));
        assert_eq!(c.server, addr("192.0.2.11"));
        assert_eq!((c.client_port, c.server_port), (40000, 2222));
        assert!(SshConnection::parse("198.51.100.10 22").is_err());
        assert!(SshConnection::parse("x 1 192.0.2.1 22").is_err());
    }
}
