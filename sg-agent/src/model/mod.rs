//! The reference model of SEMANTICS.md: a plain, slow, obviously correct evaluator of the
//! packet-judging contract in docs/design.md, with its own conntrack and fragment memory.
//!
//! [`Model::process`] walks the pipeline in the contract's order:
//! ```text
//! parse limits -> exemptions (N1, N2) -> later fragments (G1) -> conntrack (C1-C3)
//!   -> related ICMP errors (I2) -> policy via `decide` (E1-E6) -> state only after allow (C4)
//! ```
//!
//! On a router ([`Model::with_router`]) an interface facing a subnet is judged by the subnet's
//! network ACL instead, statelessly:
//! ```text
//! parse limits -> exemptions -> later fragments (G1, A27) -> router-local (A21)
//!   -> the NACL list via `nacl::decide_list` (A1-A8, A13, A14) -> never state (A1, A22)
//! ```
//! It shares nothing with the compiler (`compile`, `image`, the test kit's lookup oracle) nor
//! with the kernel program: no map layouts, no prefix tries, no flow-key structs. Only the
//! validated [`Policy`], the stateless [`decide::decide`] and the [`Reason`] vocabulary of the
//! verdicts are common, so a differential test against the real program proves something.
//!
//! It judges abstract [`Packet`]s, which are always well formed: malformed frames are the
//! fixture tables' business. The two parse limits that an abstract packet can express (more
//! than two VLAN tags, more than eight IPv6 extension headers) are modelled.
//!
//! Time is a plain counter ([`Model::advance`]); nothing expires unless a test moves it.

pub mod build;
pub mod decide;
pub mod nacl;

use std::collections::BTreeMap;
use std::net::IpAddr;

use sg_common::Reason;

use crate::packet::{L4, Packet, tcp_flags};
use crate::policy::{Direction, Policy, RuleId, SubnetId, Timeouts};
use decide::{Decision, decide};

/// The verdict on one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub pass: bool,
    pub reason: Reason,
    /// The rule charged (E4): the allowing rule, or the rule that opened the flow for
    /// conntrack hits, related errors and later fragments; on a NACL interface the deciding
    /// NACL rule, allow or deny ([`nacl::rule_id`]). None for exemptions and other drops.
    pub rule: Option<RuleId>,
}

impl Outcome {
    fn new(reason: Reason, rule: Option<RuleId>) -> Outcome {
        Outcome {
            pass: reason.is_pass(),
            reason,
            rule,
        }
    }
}

/// Later fragments are matched to their first fragment for this long (design: 30 s).
const FRAG_TIMEOUT_NS: u64 = 30 * NS;
const NS: u64 = 1_000_000_000;

/// A flow, normalised so both directions find it: local is the protected interface's side
/// (destination on ingress, source on egress). Ports: TCP/UDP ports; ICMP echo: the echo id
/// as the local port, and as the remote port which side opened the flow
/// (`sg_common::ECHO_OPENED_BY_PEER` when the peer's request came in, 0 when the host's went
/// out); other protocols: both 0 (C3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    pub iface: String,
    pub proto: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub lport: u16,
    pub rport: u16,
}

/// Where a flow is in its life (names follow docs/design.md's timeout table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowState {
    /// TCP: opened, no reply yet. Others: packets one way only.
    New,
    /// TCP: a reply seen, handshake not complete. Others: a reply seen.
    Replied,
    /// TCP: handshake complete. UDP/other: more than one packet each way.
    Established,
    /// TCP: FIN seen.
    Closing,
    /// TCP: RST seen.
    Reset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Direction of the packet that opened the flow.
    pub origin: Direction,
    pub rule: RuleId,
    pub state: FlowState,
    /// Moved to the confirmed table (TCP established; UDP/other stream).
    pub confirmed: bool,
    pub created_ns: u64,
    pub seen_ns: u64,
    /// Packets [original direction, reply direction].
    pub packets: [u64; 2],
    /// Captured from the interface at creation (C5).
    pub timeouts: Timeouts,
}

impl Flow {
    /// The idle timeout that applies in the flow's current state (C5).
    pub fn timeout_s(&self, proto: u8) -> u32 {
        let t = &self.timeouts;
        match proto {
            6 => match self.state {
                FlowState::New | FlowState::Replied => t.tcp_embryonic,
                FlowState::Established => t.tcp_established,
                FlowState::Closing | FlowState::Reset => t.tcp_closing,
            },
            17 => match self.state {
                FlowState::Established => t.udp_stream,
                _ => t.udp_single,
            },
            1 | 58 => t.icmp,
            _ => t.other,
        }
    }
}

/// Which fragments belong together: (interface, direction, protocol, IP id, src, dst).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FragId {
    iface: String,
    dir: Direction,
    proto: u8,
    id: u32,
    src: IpAddr,
    dst: IpAddr,
}

#[derive(Clone, Debug)]
struct FragRecord {
    first_ns: u64,
    pass: bool,
    rule: Option<RuleId>,
}

/// The role of a packet in a flow's life, for ICMP echo: a request only matches the flow in
/// the direction that opened it, a reply only in the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoRole {
    Request,
    Reply,
}

pub struct Model {
    policy: Policy,
    now_ns: u64,
    flows: BTreeMap<FlowId, Flow>,
    frags: BTreeMap<FragId, FragRecord>,
    /// (confirmed, unconfirmed) table capacities; None: unlimited.
    capacity: Option<(usize, usize)>,
    exceeded: u64,
    /// A router's interfaces facing subnets: interface name -> subnet (issue 17).
    router_ports: BTreeMap<String, SubnetId>,
    /// The router's own addresses (A21), canonical.
    router_addrs: Vec<IpAddr>,
}

impl Model {
    pub fn new(policy: Policy) -> Model {
        Model {
            policy,
            now_ns: 0,
            flows: BTreeMap::new(),
            frags: BTreeMap::new(),
            capacity: None,
            exceeded: 0,
            router_ports: BTreeMap::new(),
            router_addrs: Vec::new(),
        }
    }

    /// A router: `ports` (interface name -> the subnet it faces) enforce their subnets'
    /// network ACLs; traffic to or from `addrs` (the router's own) is not filtered there (A21).
    pub fn with_router(mut self, ports: BTreeMap<String, SubnetId>, addrs: Vec<IpAddr>) -> Model {
        self.router_ports = ports;
        self.router_addrs = addrs.into_iter().map(decide::canonical).collect();
        self
    }

    /// Limits the confirmed and unconfirmed flow tables (C6), like the kernel's SG_CT and
    /// SG_CT_NEW.
    pub fn with_capacity(mut self, confirmed: usize, unconfirmed: usize) -> Model {
        self.capacity = Some((confirmed, unconfirmed));
        self
    }

    /// A new policy; flows stay (X1: a tracked flow outlives its rule).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn advance(&mut self, secs: u64) {
        self.now_ns += secs * NS;
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn flows(&self) -> &BTreeMap<FlowId, Flow> {
        &self.flows
    }

    /// Flows that could not be stored because their table was full (C6).
    pub fn exceeded(&self) -> u64 {
        self.exceeded
    }

    pub fn flush(&mut self) {
        self.flows.clear();
    }

    /// Judges one packet seen on `iface` in direction `dir`, updating conntrack and fragment
    /// memory as the kernel would.
    pub fn process(&mut self, iface: &str, dir: Direction, pkt: &Packet) -> Outcome {
        // Parse limits an abstract packet can express.
        if pkt.vlan.len() > 2 {
            return Outcome::new(Reason::DropVlanDepth, None);
        }
        if pkt.is_v6() && pkt.ext.len() + usize::from(pkt.frag.is_some()) > 8 {
            return Outcome::new(Reason::DropBadExtHdr, None);
        }
        // IPv4-mapped addresses never appear on the wire (RFC 4291 2.5.5.2).
        if [pkt.src, pkt.dst]
            .iter()
            .any(|a| matches!(a, IpAddr::V6(v) if v.to_ipv4_mapped().is_some()))
        {
            return Outcome::new(Reason::DropBadIp, None);
        }

        // Exemptions (N1, N2) need the transport header, so never apply to later fragments.
        // An exempt first fragment is recorded like any other (below), so the rest of its
        // datagram passes too.
        let exempt = if pkt.is_later_fragment() {
            None
        } else {
            exemption(dir, pkt)
        };

        // Fragments (G1).
        if let Some(f) = pkt.frag {
            let fid = FragId {
                iface: iface.to_string(),
                dir,
                proto: pkt.proto(),
                // IPv4 identification is 16 bits.
                id: if pkt.is_v6() { f.id } else { f.id & 0xffff },
                src: pkt.src,
                dst: pkt.dst,
            };
            if f.is_later() {
                if f.offset_bytes < min_transport_header(pkt) {
                    return Outcome::new(Reason::DropBadFragment, None);
                }
                return match self.frags.get(&fid) {
                    Some(r) if self.now_ns - r.first_ns <= FRAG_TIMEOUT_NS => {
                        if r.pass {
                            Outcome::new(Reason::PassFragment, r.rule.clone())
                        } else {
                            Outcome::new(Reason::DropFragDenied, None)
                        }
                    }
                    _ => Outcome::new(Reason::DropFragOrphan, None),
                };
            }
            if f.more {
                let out = match exempt {
                    Some(r) => Outcome::new(r, None),
                    None => self.judge(iface, dir, pkt),
                };
                self.frags.insert(
                    fid,
                    FragRecord {
                        first_ns: self.now_ns,
                        pass: out.pass,
                        rule: out.rule.clone(),
                    },
                );
                return out;
            }
            // Offset 0 and no more fragments (IPv6 atomic fragment): a normal packet.
        }
        match exempt {
            Some(r) => Outcome::new(r, None),
            None => self.judge(iface, dir, pkt),
        }
    }

    /// A router's interface facing `subnet` (A13, A14): a packet arriving from the subnet
    /// (hook ingress) leaves it and meets the outbound list by its destination; a packet
    /// sent into the subnet (hook egress) meets the inbound list by its source. No state, no
    /// related ICMP (A1, A22).
    fn judge_nacl(&self, subnet: &SubnetId, dir: Direction, pkt: &Packet) -> Outcome {
        let (list, remote) = match dir {
            Direction::Ingress => (Direction::Egress, pkt.dst),
            Direction::Egress => (Direction::Ingress, pkt.src),
        };
        if self.router_addrs.contains(&decide::canonical(remote)) {
            return Outcome::new(Reason::PassRouterLocal, None);
        }
        let acl = self
            .policy
            .subnet(subnet)
            .and_then(|s| self.policy.network_acls.get(&s.network_acl));
        let Some(acl) = acl else {
            return Outcome::new(Reason::DropNaclRule, None);
        };
        let d = nacl::decide_list(acl, list, remote, pkt.proto(), match_port(pkt));
        let reason = if d.allow {
            Reason::PassNaclRule
        } else {
            Reason::DropNaclRule
        };
        Outcome::new(reason, Some(nacl::rule_id(&acl.id, list, d.rule)))
    }

    /// Conntrack, related ICMP, policy, state: everything after parsing.
    fn judge(&mut self, iface: &str, dir: Direction, pkt: &Packet) -> Outcome {
        if let Some(subnet) = self.router_ports.get(iface) {
            return self.judge_nacl(subnet, dir, pkt);
        }
        // Conntrack (C1-C3): hits never consult the rules (X1).
        if let Some((id, role)) = flow_id(iface, dir, pkt)
            && let Some(out) = self.hit(&id, role, dir, pkt)
        {
            return out;
        }

        // Related ICMP errors (I2): the quoted packet travelled the other way.
        // Any live flow of that key counts (no echo roles: the quote is evidence of the
        // flow, not a packet of it).
        if let L4::IcmpError { ty, inner, .. } = &pkt.l4
            && carries_packet(pkt.is_v6(), *ty)
            && quote_is_readable(pkt, inner)
            && let Some((id, _)) = flow_id(iface, dir.opposite(), inner)
            && let Some(flow) = self.live_flow(&id)
        {
            return Outcome::new(Reason::PassRelated, Some(flow.rule.clone()));
        }

        // Policy (E1-E6): fail closed for an interface the policy does not know.
        if self.policy.interface(iface).is_none() {
            return Outcome::new(Reason::DropNoPolicy, None);
        }
        let remote = match dir {
            Direction::Ingress => pkt.src,
            Direction::Egress => pkt.dst,
        };
        let Decision::Allow { rule, tracked } = decide(
            &self.policy,
            iface,
            dir,
            remote,
            pkt.proto(),
            match_port(pkt),
        ) else {
            return Outcome::new(Reason::DropNoRule, None);
        };

        // State, only after allow (C2, C3, C4).
        if !self.opens_flow(iface, dir, remote, pkt, tracked) {
            return Outcome::new(Reason::PassRuleUntracked, Some(rule));
        }
        self.open_flow(iface, dir, pkt, rule)
    }

    /// Whether an allowed packet creates state (C4).
    fn opens_flow(
        &self,
        iface: &str,
        dir: Direction,
        remote: IpAddr,
        pkt: &Packet,
        tracked: bool,
    ) -> bool {
        match &pkt.l4 {
            // C4: TCP and UDP may be untracked; ICMP and others are always tracked. A packet
            // that answers an untracked flow (the reverse packet would be allowed untracked)
            // is part of that flow and creates no state either, or X2 would not hold.
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => {
                tracked
                    && !matches!(
                        decide(
                            &self.policy,
                            iface,
                            dir.opposite(),
                            remote,
                            pkt.proto(),
                            *sport
                        ),
                        Decision::Allow { tracked: false, .. }
                    )
            }
            L4::IcmpEcho { request, .. } => *request,
            L4::Other { .. } => true,
            L4::IcmpOther { .. } | L4::IcmpError { .. } => false,
        }
    }

    /// Creates the unconfirmed flow of a packet `rule` allowed, as the kernel would: not when
    /// its key is taken, and not past the unconfirmed table's capacity.
    fn open_flow(&mut self, iface: &str, dir: Direction, pkt: &Packet, rule: RuleId) -> Outcome {
        let (id, _) = flow_id(iface, dir, pkt).expect("a trackable packet has a flow id");
        if self.flows.contains_key(&id) {
            // The key is taken by a live flow this packet could not use: allowed, but
            // stateless, as in the kernel (an insert losing to an entry it cannot use). Echo
            // keys carry their opener, so no echo request meets its peer's flow here.
            return Outcome::new(Reason::PassRuleUntracked, Some(rule));
        }
        if let Some((_, unconfirmed)) = self.capacity
            && self.count(false) >= unconfirmed
        {
            self.exceeded += 1;
            return Outcome::new(Reason::DropCtFull, None);
        }
        let timeouts = self
            .policy
            .interface(iface)
            .map(|i| i.timeouts)
            .unwrap_or(Timeouts::AWS_DEFAULT);
        let state = match &pkt.l4 {
            L4::Tcp { flags, .. } if flags & tcp_flags::RST != 0 => FlowState::Reset,
            L4::Tcp { flags, .. } if flags & tcp_flags::FIN != 0 => FlowState::Closing,
            _ => FlowState::New,
        };
        self.flows.insert(
            id,
            Flow {
                origin: dir,
                rule: rule.clone(),
                state,
                confirmed: false,
                created_ns: self.now_ns,
                seen_ns: self.now_ns,
                packets: [1, 0],
                timeouts,
            },
        );
        Outcome::new(Reason::PassRuleNew, Some(rule))
    }

    fn count(&self, confirmed: bool) -> usize {
        self.flows
            .values()
            .filter(|f| f.confirmed == confirmed)
            .count()
    }

    /// The flow, unless its idle timeout has passed (then it is forgotten: a miss).
    fn live_flow(&mut self, id: &FlowId) -> Option<&Flow> {
        let expired = match self.flows.get(id) {
            None => return None,
            Some(f) => self.now_ns - f.seen_ns > u64::from(f.timeout_s(id.proto)) * NS,
        };
        if expired {
            self.flows.remove(id);
            return None;
        }
        self.flows.get(id)
    }

    /// A conntrack hit: advance the flow's state and pass, or None for a miss.
    fn hit(
        &mut self,
        id: &FlowId,
        role: Option<EchoRole>,
        dir: Direction,
        pkt: &Packet,
    ) -> Option<Outcome> {
        let flow = self.live_flow(id)?;
        if !role_matches(flow, role, dir) {
            return None;
        }
        let original = flow.origin == dir;
        let mut next = flow.clone();
        next.seen_ns = self.now_ns;
        next.packets[usize::from(!original)] += 1;
        next.state = match &pkt.l4 {
            L4::Tcp { flags, .. } => tcp_next(next.state, original, *flags),
            _ => {
                // UDP, ICMP echo and other protocols: two or more packets each way is a
                // stream, confirmed like an established TCP connection.
                if next.packets[0] >= 2 && next.packets[1] >= 2 {
                    FlowState::Established
                } else if !original && next.state == FlowState::New {
                    FlowState::Replied
                } else {
                    next.state
                }
            }
        };
        // Promotion to the confirmed table: TCP established, UDP/other stream. When that
        // table is full the promoting packet is dropped and the flow stays unconfirmed (C6).
        if !next.confirmed && next.state == FlowState::Established {
            if let Some((confirmed_cap, _)) = self.capacity
                && self.count(true) >= confirmed_cap
            {
                self.exceeded += 1;
                return Some(Outcome::new(Reason::DropCtFull, None));
            }
            next.confirmed = true;
        }
        let rule = next.rule.clone();
        self.flows.insert(id.clone(), next);
        let reason = if original {
            Reason::PassCtOriginal
        } else {
            Reason::PassCtReply
        };
        Some(Outcome::new(reason, Some(rule)))
    }
}

fn role_matches(flow: &Flow, role: Option<EchoRole>, dir: Direction) -> bool {
    match role {
        None => true,
        Some(EchoRole::Request) => flow.origin == dir,
        Some(EchoRole::Reply) => flow.origin != dir,
    }
}

/// Whether the firewall can read the flow out of an ICMP error's quote: same family as the
/// error, not a later fragment, at least 8 bytes quoted after the IP header (I2: "the inner
/// IP header plus 8 bytes must be present"; `Packet::quoted` quotes up to 8), and (IPv6) no
/// extension headers between the quoted header and its transport (not walked in a quote).
fn quote_is_readable(err: &Packet, inner: &Packet) -> bool {
    if inner.is_v6() != err.is_v6() || inner.is_later_fragment() || inner.transport_len() < 8 {
        return false;
    }
    !(inner.is_v6() && (!inner.ext.is_empty() || inner.frag.is_some()))
}

/// TCP state after a packet (design's table): a reply moves NEW to REPLIED, a non-SYN packet
/// from the opener after a reply completes the handshake, FIN closes, RST resets.
fn tcp_next(state: FlowState, original: bool, flags: u8) -> FlowState {
    if flags & tcp_flags::RST != 0 {
        return FlowState::Reset;
    }
    if state == FlowState::Reset {
        return state;
    }
    if flags & tcp_flags::FIN != 0 {
        return FlowState::Closing;
    }
    match state {
        FlowState::New if !original => FlowState::Replied,
        FlowState::Replied if original && flags & tcp_flags::SYN == 0 => FlowState::Established,
        s => s,
    }
}

/// The normalised flow a packet belongs to, or None when it belongs to none (ICMP messages
/// other than echo request/reply: errors are handled as related, the rest never has state).
fn flow_id(iface: &str, dir: Direction, pkt: &Packet) -> Option<(FlowId, Option<EchoRole>)> {
    let (local, remote) = match dir {
        Direction::Ingress => (pkt.dst, pkt.src),
        Direction::Egress => (pkt.src, pkt.dst),
    };
    let (lport, rport, role) = match &pkt.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => match dir {
            Direction::Ingress => (*dport, *sport, None),
            Direction::Egress => (*sport, *dport, None),
        },
        // The id is the local port; the remote port says which side opened the flow: a
        // request opens it in its own direction, a reply answers one opened in the other. So
        // a ping and its reply meet, and pings with one id from both sides are two flows.
        L4::IcmpEcho { request, id, .. } => {
            let opened_inbound = (dir == Direction::Ingress) == *request;
            (
                *id,
                if opened_inbound {
                    sg_common::ECHO_OPENED_BY_PEER
                } else {
                    0
                },
                Some(if *request {
                    EchoRole::Request
                } else {
                    EchoRole::Reply
                }),
            )
        }
        L4::Other { .. } => (0, 0, None),
        L4::IcmpOther { .. } | L4::IcmpError { .. } => return None,
    };
    Some((
        FlowId {
            iface: iface.to_string(),
            proto: pkt.proto(),
            local,
            remote,
            lport,
            rport,
        },
        role,
    ))
}

/// The "port" rules match (E6, F4): TCP/UDP destination port, ICMP `type << 8 | code`, else 0.
fn match_port(pkt: &Packet) -> u16 {
    match &pkt.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport,
        L4::Other { .. } => 0,
        _ => {
            let (t, c) = pkt.icmp_type_code().expect("ICMP");
            (u16::from(t) << 8) | u16::from(c)
        }
    }
}

/// ICMP errors that quote the packet that caused them (I2).
fn carries_packet(v6: bool, ty: u8) -> bool {
    if v6 {
        matches!(ty, 1..=4)
    } else {
        matches!(ty, 3 | 11 | 12)
    }
}

/// The minimum transport header a later fragment's offset must clear (G1: overlap attacks).
fn min_transport_header(pkt: &Packet) -> u16 {
    match &pkt.l4 {
        L4::Tcp { .. } => 20,
        L4::Udp { .. } => 8,
        L4::IcmpEcho { .. } | L4::IcmpOther { .. } | L4::IcmpError { .. } => 8,
        L4::Other { .. } => 0,
    }
}

/// Traffic security groups never filter (N1, N2; the list is in docs/design.md).
fn exemption(dir: Direction, pkt: &Packet) -> Option<Reason> {
    let v6 = pkt.is_v6();
    match &pkt.l4 {
        L4::IcmpEcho { .. } | L4::IcmpOther { .. } | L4::IcmpError { .. } if v6 => {
            let (t, _) = pkt.icmp_type_code()?;
            (133..=137).contains(&t).then_some(Reason::PassNdp)
        }
        L4::Udp { sport, dport } => {
            let (server, client) = if v6 { (547, 546) } else { (67, 68) };
            let dhcp = match dir {
                Direction::Ingress => *sport == server && *dport == client,
                Direction::Egress => *sport == client && *dport == server,
            };
            dhcp.then_some(Reason::PassDhcp)
        }
        _ => None,
    }
}
