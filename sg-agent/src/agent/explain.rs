//! `explain`: why is (or isn't) this packet allowed? The question is typed ([`ExplainQuery`]);
//! the answer compares the reference model's verdict with the real program's, run with
//! BPF_PROG_TEST_RUN on a private copy of the applied policy (nothing live is touched), and
//! lists the rules that allow the packet, or those that could have, and live flows with the
//! peer. A disagreement between the two is a bug the CLI asks users to report.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use anyhow::{Result, anyhow};

use super::Agent;
use super::query::proto_name;
use super::summary::rule_line;
use crate::compile::{self, CompileOptions, Router, RouterPort};
use crate::dataplane::{Capacities, Dataplane, Hook, LoadOptions, RunResult};
use crate::error::Error;
use crate::image::MapImage;
use crate::model::{Model, decide};
use crate::packet::{L4, Packet};
use crate::policy::{Direction, Interface, Policy, SubnetId};
use crate::state::InterfaceSummary;

/// `explain --proto`: by name or by number (6, 17, 1 and 58 are the named ones). ICMP and
/// ICMPv6 both mean "ICMP of the peer's family".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplainProto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

impl FromStr for ExplainProto {
    type Err = Error;

    fn from_str(s: &str) -> Result<ExplainProto, Error> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => ExplainProto::Tcp,
            "udp" | "17" => ExplainProto::Udp,
            "icmp" | "1" => ExplainProto::Icmp,
            "icmpv6" | "58" => ExplainProto::Icmpv6,
            other => ExplainProto::Number(other.parse().map_err(|_| {
                Error::InvalidInput("use tcp, udp, icmp, icmpv6 or a number 0-255".into())
            })?),
        })
    }
}

/// `explain --icmp TYPE/CODE` (`TYPE` alone means code 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpTypeCode {
    pub icmp_type: u8,
    pub code: u8,
}

impl FromStr for IcmpTypeCode {
    type Err = Error;

    fn from_str(s: &str) -> Result<IcmpTypeCode, Error> {
        let bad = || Error::InvalidInput("TYPE/CODE, e.g. 8/0".into());
        let (t, c) = s.split_once('/').unwrap_or((s, "0"));
        Ok(IcmpTypeCode {
            icmp_type: t.parse().map_err(|_| bad())?,
            code: c.parse().map_err(|_| bad())?,
        })
    }
}

/// `explain`'s question: a new packet between this host and a peer.
#[derive(Clone, Debug)]
pub struct ExplainQuery {
    /// Ingress: the peer is the source; egress: the destination.
    pub direction: Direction,
    pub proto: ExplainProto,
    pub peer: IpAddr,
    /// Destination port (tcp/udp; required for them).
    pub port: Option<u16>,
    /// Source port (tcp/udp; default 40000, an ephemeral port). A NACL judges a reply by it
    /// (A18): the reply's destination port is the client's source port.
    pub sport: Option<u16>,
    /// Default: echo request of the peer's family.
    pub icmp: Option<IcmpTypeCode>,
    /// The local device or policy interface (default: the only enforced one).
    pub iface: Option<String>,
    /// The local address (default: the interface's first of the peer's family).
    pub local: Option<IpAddr>,
}

impl ExplainQuery {
    pub fn packet(&self, src: IpAddr, dst: IpAddr) -> Result<Packet> {
        let port = || {
            self.port
                .ok_or_else(|| Error::InvalidInput("--port N is needed for tcp and udp".into()))
        };
        Ok(match self.proto {
            ExplainProto::Tcp => Packet::syn(src, dst, self.sport.unwrap_or(40000), port()?),
            ExplainProto::Udp => Packet::udp(src, dst, self.sport.unwrap_or(40000), port()?),
            ExplainProto::Icmp | ExplainProto::Icmpv6 => {
                let echo = if self.peer.is_ipv6() { 128 } else { 8 };
                let tc = self.icmp.unwrap_or(IcmpTypeCode {
                    icmp_type: echo,
                    code: 0,
                });
                if tc.icmp_type == echo && tc.code == 0 {
                    Packet::echo_request(src, dst, 4242, 1)
                } else {
                    Packet::icmp(src, dst, tc.icmp_type, tc.code)
                }
            }
            ExplainProto::Number(n) => Packet::other(src, dst, n),
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    pub device: String,
    pub interface: String,
    pub direction: String,
    pub packet: String,
    pub model_pass: bool,
    pub model_reason: String,
    pub model_rule: Option<String>,
    pub kernel_pass: bool,
    pub kernel_reason: String,
    pub kernel_rule: Option<String>,
    pub kernel_hook: String,
    pub agree: bool,
    /// Every rule that allows the packet, the charged one first (E4).
    pub allowing: Vec<String>,
    /// The interface's rules of this direction and protocol (for "why not").
    pub candidates: Vec<String>,
    pub groups: Vec<String>,
    pub live_flows: Vec<String>,
}

/// The question resolved against the applied policy: which interface, which packet.
struct Case {
    device: String,
    iface: InterfaceSummary,
    pol_iface: Interface,
    local: IpAddr,
    dir: Direction,
    pkt: Packet,
}

/// What the real program did with the packet.
struct Kernel {
    run: RunResult,
    rule: Option<String>,
    hook: Hook,
}

impl Agent {
    /// `explain`: the reference model's verdict and the real program's, for a new packet.
    pub fn explain(&mut self, q: &ExplainQuery) -> Result<Explanation> {
        let policy = self.applied_policy()?.policy;
        let case = self.resolve(&policy, q)?;
        // The reference model, on a fresh flow table: "what would a new flow meet".
        let m = Model::new(policy.clone()).process(&case.iface.interface, case.dir, &case.pkt);
        let k = self.run_program(&policy, &case)?;
        let (allowing, candidates) = rules_for(&policy, &case, q.peer);
        let live_flows = self.live_flows(&case, q.peer);
        let model_rule = m.rule.as_ref().map(|r| r.0.clone());
        Ok(Explanation {
            device: case.device,
            interface: case.iface.interface.clone(),
            direction: case.dir.name().into(),
            packet: describe_packet(&case.pkt),
            model_pass: m.pass,
            model_reason: m.reason.name().into(),
            model_rule: model_rule.clone(),
            kernel_pass: k.run.pass,
            kernel_reason: k.run.reason.name().into(),
            kernel_rule: k.rule.clone(),
            kernel_hook: format!("{:?}", k.hook),
            agree: m.pass == k.run.pass && m.reason == k.run.reason && model_rule == k.rule,
            allowing,
            candidates,
            groups: case.pol_iface.groups.iter().map(|g| g.0.clone()).collect(),
            live_flows,
        })
    }

    /// The interface the question is about, the local address and the packet.
    fn resolve(&self, policy: &Policy, q: &ExplainQuery) -> Result<Case> {
        let (device, iface) = self.pick_interface(q.iface.as_deref())?;
        let pol_iface = policy
            .interface(&iface.interface)
            .ok_or_else(|| anyhow!("{} is not in the applied policy", iface.interface))?
            .clone();
        let local = match q.local {
            Some(a) => a,
            None => *pol_iface
                .addresses
                .iter()
                .find(|a| a.is_ipv6() == q.peer.is_ipv6())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{} has no {} address; hint: --local ADDR",
                        iface.interface,
                        if q.peer.is_ipv6() { "IPv6" } else { "IPv4" }
                    ))
                })?,
        };
        let dir = q.direction;
        let (src, dst) = match dir {
            Direction::Ingress => (q.peer, local),
            Direction::Egress => (local, q.peer),
        };
        let pkt = q.packet(src, dst)?;
        Ok(Case {
            device,
            iface,
            pol_iface,
            local,
            dir,
            pkt,
        })
    }

    /// The real program, in a private copy (fresh maps: nothing live is touched), on the
    /// hook the device is attached with.
    fn run_program(&self, policy: &Policy, case: &Case) -> Result<Kernel> {
        let mut dp = Dataplane::load(LoadOptions {
            capacities: Capacities::small_for(policy),
            pin_dir: None,
            object: None,
        })?;
        let image = self.compile_private(policy)?;
        dp.apply(&image)?;
        let hook = match (
            case.dir,
            self.state.hooks.get(&case.device).map(String::as_str),
        ) {
            (Direction::Egress, _) => Hook::TcOut,
            (Direction::Ingress, Some("tc")) => Hook::TcIn,
            (Direction::Ingress, _) => Hook::XdpIn,
        };
        let run = dp.run_frame(hook, &case.pkt.to_frame(), case.iface.ifindex)?;
        let rule = run
            .slot
            .and_then(|s| image.slots.rule(s).map(|r| r.0.clone()));
        Ok(Kernel { run, rule, hook })
    }

    /// The applied policy compiled as it is enforced (same bindings, router ports and
    /// counter slots).
    fn compile_private(&self, policy: &Policy) -> Result<MapImage> {
        let applied = &self.state.applied;
        let bindings: BTreeMap<String, u32> = applied
            .interfaces
            .values()
            .map(|i| (i.interface.clone(), i.ifindex))
            .collect();
        let router = Router {
            ports: applied
                .routers
                .values()
                .map(|r| RouterPort {
                    subnet: SubnetId(r.subnet.clone()),
                    ifindex: r.ifindex,
                })
                .collect(),
            addrs: applied.router_addrs.clone(),
        };
        compile::compile_router(
            policy,
            &bindings,
            &self.state.slot_table(),
            &CompileOptions {
                generation: 0,
                slot_capacity: Capacities::small_for(policy).rule_slots,
            },
            &router,
        )
        .map(|(image, _)| image)
        .map_err(|e| anyhow!("compiling the applied policy: {e}"))
    }

    /// A live flow of this 5-tuple lets it through whatever the rules say (C1, X1).
    fn live_flows(&mut self, case: &Case, remote: IpAddr) -> Vec<String> {
        let ifindex = case.iface.ifindex;
        self.dataplane()
            .and_then(|d| d.conntrack())
            .map(|es| {
                es.iter()
                    .filter(|e| {
                        e.key.ifindex == ifindex && e.remote == remote && e.local == case.local
                    })
                    .map(|e| {
                        format!(
                            "{} {}:{} <-> {}:{} {} (idle {}s of {}s)",
                            proto_name(e.key.proto),
                            e.local,
                            e.ports().0,
                            e.remote,
                            e.ports().1,
                            e.state_name(),
                            e.idle.as_secs(),
                            e.timeout.as_secs()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pick_interface(&self, want: Option<&str>) -> Result<(String, InterfaceSummary)> {
        let ifs = &self.state.applied.interfaces;
        let enforced = || ifs.keys().cloned().collect::<Vec<_>>().join(", ");
        match want {
            Some(w) => ifs
                .iter()
                .find(|(d, i)| d.as_str() == w || i.interface == w)
                .map(|(d, i)| (d.clone(), i.clone()))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "--iface {w}: not an enforced interface (enforced: {})",
                        enforced()
                    ))
                    .into()
                }),
            None if ifs.len() == 1 => {
                let (d, i) = ifs.iter().next().expect("one");
                Ok((d.clone(), i.clone()))
            }
            None => Err(Error::InvalidInput(format!(
                "several interfaces are enforced ({}); hint: --iface DEVICE",
                enforced()
            ))
            .into()),
        }
    }
}

/// The rules that allow the packet (the charged one first, E4), and the interface's rules of
/// this direction and protocol (to say why not).
fn rules_for(policy: &Policy, case: &Case, remote: IpAddr) -> (Vec<String>, Vec<String>) {
    let pkt = &case.pkt;
    let port = match_port(pkt);
    let iface = &case.iface.interface;
    let allowing = decide::allowing_rules(policy, iface, case.dir, remote, pkt.proto(), port)
        .iter()
        .map(|r| format!("{} ({})", r.id, rule_line(r)))
        .collect();
    let candidates = case
        .pol_iface
        .groups
        .iter()
        .filter_map(|g| policy.groups.get(g))
        .flat_map(|g| g.rules(case.dir).iter())
        .filter(|r| r.protocol.number().is_none() || r.protocol.number() == Some(pkt.proto()))
        .map(|r| format!("{} ({})", r.id, rule_line(r)))
        .collect();
    (allowing, candidates)
}

/// The port rules match: TCP/UDP destination port (E6, A18), ICMP `type << 8 | code` (F4,
/// A19), else 0.
pub(super) fn match_port(pkt: &Packet) -> u16 {
    match &pkt.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport,
        _ => pkt
            .icmp_type_code()
            .map(|(t, c)| u16::from(t) << 8 | u16::from(c))
            .unwrap_or(0),
    }
}

pub(super) fn describe_packet(p: &Packet) -> String {
    match &p.l4 {
        L4::Tcp { sport, dport, .. } => format!("tcp {}:{sport} -> {}:{dport}", p.src, p.dst),
        L4::Udp { sport, dport } => format!("udp {}:{sport} -> {}:{dport}", p.src, p.dst),
        _ => match p.icmp_type_code() {
            Some((t, c)) => format!(
                "{} type {t} code {c} {} -> {}",
                proto_name(p.proto()),
                p.src,
                p.dst
            ),
            None => format!("{} {} -> {}", proto_name(p.proto()), p.src, p.dst),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_read_by_name_or_number_in_any_case() {
        for (s, p) in [
            ("tcp", ExplainProto::Tcp),
            ("TCP", ExplainProto::Tcp),
            ("6", ExplainProto::Tcp),
            ("udp", ExplainProto::Udp),
            ("17", ExplainProto::Udp),
            ("icmp", ExplainProto::Icmp),
            ("1", ExplainProto::Icmp),
            ("ICMPv6", ExplainProto::Icmpv6),
            ("58", ExplainProto::Icmpv6),
            ("47", ExplainProto::Number(47)),
        ] {
            assert_eq!(s.parse::<ExplainProto>().unwrap(), p, "{s}");
        }
        for bad in ["gre", "256", "-1", ""] {
            assert!(bad.parse::<ExplainProto>().is_err(), "{bad}");
        }
    }

    #[test]
    fn icmp_type_code_defaults_the_code_to_zero() {
        let tc = |t, c| IcmpTypeCode {
            icmp_type: t,
            code: c,
        };
        assert_eq!("8/0".parse::<IcmpTypeCode>().unwrap(), tc(8, 0));
        assert_eq!("3/4".parse::<IcmpTypeCode>().unwrap(), tc(3, 4));
        assert_eq!("128".parse::<IcmpTypeCode>().unwrap(), tc(128, 0));
        for bad in ["8/x", "x", "256/0", "8/0/1", ""] {
            assert!(bad.parse::<IcmpTypeCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_and_udp_need_a_port() {
        let q = ExplainQuery {
            direction: Direction::Ingress,
            proto: ExplainProto::Udp,
            peer: "198.51.100.10".parse().unwrap(),
            port: None,
            sport: None,
            icmp: None,
            iface: None,
            local: None,
        };
        let (a, b) = (q.peer, "192.0.2.1".parse().unwrap());
        let e = q.packet(a, b).unwrap_err();
        assert_eq!(crate::error::kind(&e), crate::error::Kind::Invalid);
        let p = ExplainQuery {
            port: Some(53),
            ..q
        }
        .packet(a, b)
        .unwrap();
        assert!(matches!(p.l4, L4::Udp { dport: 53, .. }), "{p:?}");
    }
}
