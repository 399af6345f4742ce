//! Every byte that crosses the kernel boundary, defined once: map names, map keys and values,
//! pass/drop reasons, counter indexes, event records and the ABI version.
//!
//! `no_std`, no allocation, no logic beyond tiny constructors and name tables: the eBPF program
//! and the agent both compile this crate, so anything here runs in the verifier's world too.
//!
//! Conventions (they matter: these structs are hash and LPM keys):
//! - `#[repr(C)]`, `Copy`, explicit `_pad` fields (implicit padding would put uninitialised
//!   bytes into hash keys), no `bool`, and a size assertion next to each struct.
//! - Addresses are always 16 bytes in network order. IPv4 is stored IPv4-mapped
//!   (`::ffff:a.b.c.d`), so one key layout and one code path serve both families.
//! - Ports are host order in conntrack keys (they are compared, never prefix-matched) and
//!   network order inside LPM keys (prefix bits are read most-significant first).
#![no_std]

use core::mem::size_of;

/// Bumped whenever a layout below or the meaning of a map changes. The agent refuses to adopt
/// pinned state whose ABI version differs from its own.
pub const ABI_VERSION: u32 = 3;

/// Map names: at most 15 bytes (the kernel truncates object names).
pub mod maps {
    /// `Array<u32>[1]`: the active policy generation (bit 0) and what that generation holds
    /// ([`crate::active`]). Flipping it is the atomic swap.
    pub const ACTIVE: &str = "SG_ACTIVE";
    /// `HashMap<IfaceKey, IfaceConf>`: per (generation, ifindex) configuration.
    pub const IFACES: &str = "SG_IFACES";
    /// `LpmTrie<PeerData, PeerVal>`: (scope, remote address) -> chain of peer classes.
    pub const PEERS: &str = "SG_PEERS";
    /// `HashMap<PortKey, PortPage>`: (peer class, protocol, page) -> segments of the port line.
    pub const PORTS: &str = "SG_PORTS";
    /// `HashMap<FlowKey, FlowVal>`: confirmed (established) flows.
    pub const CT: &str = "SG_CT";
    /// `HashMap<FlowKey, FlowVal>`: unconfirmed flows (embryonic TCP, UDP single exchanges,
    /// ICMP echo). Kept apart so a flood of half-open flows cannot evict established ones.
    pub const CT_NEW: &str = "SG_CT_NEW";
    /// `LruHashMap<FragKey, FragVal>`: verdicts of first fragments, applied to the rest (G1).
    pub const FRAGS: &str = "SG_FRAGS";
    /// `PerCpuArray<RuleCounter>`: per rule slot packets/bytes.
    pub const RULE_COUNTERS: &str = "SG_RULE_CNT";
    /// `PerCpuArray<u64>`: one counter per [`Reason`].
    pub const REASON_COUNTERS: &str = "SG_REASON_CNT";
    /// `PerCpuArray<u64>`: conntrack table statistics, indexed by [`ct_stat`].
    pub const CT_STATS: &str = "SG_CT_STATS";
    /// `Array<Config>[1]`: global knobs written by the agent.
    pub const CONFIG: &str = "SG_CONFIG";
    /// `PerCpuArray<RateState>[1]`: token bucket for events.
    pub const RATE: &str = "SG_RATE";
    /// `RingBuf`: [`Event`] records (drops and new flows), rate limited.
    pub const EVENTS: &str = "SG_EVENTS";
    /// `Array<u64>[capacity::NACL_PORT_SLOTS]`: the router ports ([`crate::iface_flags::NACL`])
    /// by ifindex, per generation (index [`crate::nacl_port_slot`]): `scope_in << 32 |
    /// scope_out` of the port in that generation, 0 when the interface is not a router port
    /// there. Written like the other policy maps (a generation's slots before its flip), it
    /// is the only way a packet reaches a network ACL: a router port's packets skip the
    /// `SG_IFACES` and conntrack lookups (A1: a router port never has state). The agent
    /// refuses a router port whose ifindex has no slot; other interfaces read it only when
    /// the active generation has a router port ([`crate::active::ROUTER_PORTS`]).
    pub const NACL_PORTS: &str = "SG_NACL_PORTS";

    /// Every map of the object (pinning, adoption, tests).
    pub const ALL: [&str; 14] = [
        ACTIVE,
        IFACES,
        PEERS,
        PORTS,
        CT,
        CT_NEW,
        FRAGS,
        RULE_COUNTERS,
        REASON_COUNTERS,
        CT_STATS,
        CONFIG,
        RATE,
        EVENTS,
        NACL_PORTS,
    ];
}

/// Program names: at most 15 bytes.
pub mod progs {
    pub const XDP_INGRESS: &str = "sg_xdp_in";
    pub const TC_INGRESS: &str = "sg_tc_in";
    pub const TC_EGRESS: &str = "sg_tc_out";
}

/// Default capacities (the agent may override `max_entries` at load time).
pub mod capacity {
    pub const IFACES: u32 = 1024;
    /// Both generations together: a swap writes the new one before deleting the old.
    pub const PEERS: u32 = 1 << 20;
    /// Pages (160 bytes each, allocated as written).
    pub const PORTS: u32 = 1 << 20;
    pub const CT: u32 = 1 << 18;
    pub const CT_NEW: u32 = 1 << 16;
    pub const FRAGS: u32 = 8192;
    pub const RULE_SLOTS: u32 = 1 << 16;
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Slots of [`crate::maps::NACL_PORTS`]: two per ifindex, for ifindexes below 4096.
    pub const NACL_PORT_SLOTS: u32 = 8192;
}

/// Packet direction as seen from the protected interface.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// IP protocol numbers the dataplane treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// A 16-byte address in network order; IPv4 is IPv4-mapped (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// The IPv4-mapped prefix `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Maps an IPv4 address (network order) into the 16-byte form.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// True when a 16-byte address is IPv4-mapped.
#[inline(always)]
pub fn is_v4_mapped(a: &Addr) -> bool {
    a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

// ---------------------------------------------------------------------------------------------
// Policy maps
// ---------------------------------------------------------------------------------------------

/// Key of [`maps::IFACES`]. The generation is part of the key so the next policy can be written
/// beside the live one and made visible by one write to [`maps::ACTIVE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceKey {
    pub generation: u32,
    pub ifindex: u32,
}
const _: () = assert!(size_of::<IfaceKey>() == 8);

/// Conntrack idle timeouts in seconds (SEMANTICS C5). TCP embryonic (SYN seen, handshake not
/// complete) and closing (FIN or RST seen) are sg's choice: see README "Connection tracking".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeouts {
    pub tcp_established: u32,
    pub tcp_embryonic: u32,
    pub tcp_closing: u32,
    pub udp_single: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub other: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Timeouts>() == 32);

impl Timeouts {
    /// AWS's defaults (C5) and sg's choices for the states AWS does not document.
    pub const AWS_DEFAULT: Timeouts = Timeouts {
        tcp_established: 432_000,
        tcp_embryonic: 30,
        tcp_closing: 30,
        udp_single: 30,
        udp_stream: 180,
        icmp: 30,
        other: 600,
        _pad: 0,
    };
}

/// Value of [`maps::IFACES`]: which rule sets apply to this interface.
///
/// `scope_in`/`scope_out` select the interface's merged ingress/egress rule sets in
/// [`maps::PEERS`]. Interfaces carrying the same groups share scopes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceConf {
    pub scope_in: u32,
    pub scope_out: u32,
    /// [`iface_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    pub timeouts: Timeouts,
}
const _: () = assert!(size_of::<IfaceConf>() == 48);

/// The [`maps::NACL_PORTS`] index of `ifindex` in `generation` (0 or 1); None beyond the
/// array.
#[inline(always)]
pub const fn nacl_port_slot(ifindex: u32, generation: u32) -> Option<u32> {
    if ifindex < capacity::NACL_PORT_SLOTS / 2 {
        Some(ifindex * 2 + (generation & 1))
    } else {
        None
    }
}

/// The value of [`maps::ACTIVE`]: the live generation, and what it holds, written in the same
/// 4-byte store that makes it live, so a packet never sees one generation's flags with the
/// other's maps. The flags spare every packet of a host that needs neither the reads they gate.
pub mod active {
    /// The live generation (0 or 1).
    pub const GENERATION: u32 = 1 << 0;
    /// The generation has a router port ([`crate::maps::NACL_PORTS`]): only then does the
    /// pipeline read that array before conntrack.
    pub const ROUTER_PORTS: u32 = 1 << 1;
    /// An interface of the generation audits ([`crate::iface_flags::AUDIT`]): only then does a
    /// drop look its interface up to learn whether it audits.
    pub const AUDIT_IFACES: u32 = 1 << 2;
}

pub mod iface_flags {
    /// Emit [`crate::Event`]s for dropped packets on this interface.
    pub const LOG_DROPS: u32 = 1 << 0;
    /// Emit [`crate::Event`]s for new allowed flows on this interface.
    pub const LOG_FLOWS: u32 = 1 << 1;
    /// The ingress scope has no untracked (C4) point: no egress packet can answer an
    /// untracked flow, so the datapath skips that lookup. Unset is always correct, only slower.
    pub const TRACKED_ONLY_IN: u32 = 1 << 2;
    /// The egress scope has no untracked (C4) point (see [`TRACKED_ONLY_IN`]).
    pub const TRACKED_ONLY_OUT: u32 = 1 << 3;
    /// A router's interface facing a subnet: the subnet's network ACL is enforced here,
    /// statelessly (A1, A13-A14). Ingress (traffic leaving the subnet) meets the NACL's
    /// outbound list in `scope_out`, matched on the destination address; egress (traffic
    /// entering the subnet) meets its inbound list in `scope_in`, matched on the source
    /// address. No conntrack, no related-ICMP pass (A22).
    pub const NACL: u32 = 1 << 4;
    /// Audit mode (L3) on this interface only: what [`crate::config_flags::AUDIT`] does for
    /// every interface. The generation carries [`crate::active::AUDIT_IFACES`] when any of its
    /// interfaces has it.
    pub const AUDIT: u32 = 1 << 5;
}

/// Data part of a [`maps::PEERS`] LPM key.
///
/// ```text
///  bits 0..32    scope (big endian): one (generation, rule set, direction); always fully
///                matched, so scopes never see each other's prefixes
///  bits 32..160  remote address, IPv4 mapped into ::ffff:0:0/96
/// ```
/// prefix length = 32 + 96 + cidr_len for IPv4, 32 + cidr_len for IPv6. The value is a
/// [`PeerVal`]: the chain of peer classes that decide for the addresses the prefix covers and
/// no longer prefix in this scope covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerData {
    pub scope: [u8; 4],
    pub addr: Addr,
}
const _: () = assert!(size_of::<PeerData>() == 20);

/// Prefix length of the scope part of a [`PeerData`] key.
pub const PEER_SCOPE_BITS: u32 = 32;

/// Longest chain of peer classes in a [`PeerVal`].
pub const CLASS_CHAIN: usize = 4;

/// Value of [`maps::PEERS`]: the peer classes to ask, in order, for the (protocol, port) of a
/// packet; the first [`maps::PORTS`] hit decides, a miss in all of them denies. `classes[0]`
/// holds the rules of the longest prefix, each next one those of shorter covering prefixes
/// (the compiler's "overlay": a longer prefix's rules win wherever they match, E4 step 1).
/// Unused places are 0 (no class id is 0) and only follow used ones.
///
/// A chain instead of one merged class keeps `SG_PORTS` linear in the rules: a merged class
/// would repeat its ancestors' entries under every nested prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerVal {
    pub classes: [u32; CLASS_CHAIN],
}
const _: () = assert!(size_of::<PeerVal>() == 16);

/// Key of [`maps::PORTS`]: one page of a peer class's port table for one protocol.
///
/// A class answers a (protocol, port) point from the page tree of `(class, proto, any 0)`;
/// when it has none, from the one page of `(class, proto 0, any 1)`, its winner for every
/// protocol (rule -1); when it has neither, it does not answer (the next class of the chain
/// does). Page 0 is a tree's root; other pages are reached only through a
/// [`rule_flags::PAGE`] segment of their parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub class: u32,
    /// IP protocol; 0 when `any` is 1.
    pub proto: u8,
    /// 1: the class's every-protocol page.
    pub any: u8,
    pub page: u16,
}
const _: () = assert!(size_of::<PortKey>() == 8);

/// Segments per [`PortPage`].
pub const PAGE_SEGS: usize = 16;
/// Deepest page tree: `PAGE_SEGS^PAGE_LEVELS` = 65536 segments, one per port at most.
pub const PAGE_LEVELS: usize = 4;

/// Value of [`maps::PORTS`]: up to [`PAGE_SEGS`] segments of a class's port line. Segment `i`
/// holds `vals[i]` from point `starts[i]` up to the next larger start (or the end of the range
/// the page covers); a point's segment is the last `i` with `starts[i] <= point`.
///
/// Invariants (the compiler keeps them; `lookup::check_canonical` checks them): `starts` is
/// non-decreasing; `starts[0]` is the first point the page covers (0 for a root); unused slots
/// repeat the last segment, so a binary search over all `PAGE_SEGS` needs no count. A value is
/// a rule (slot and flags), no rule (slot 0: the class does not answer there) or, with
/// [`rule_flags::PAGE`], the number of the child page that splits the segment further.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPage {
    pub starts: [u16; PAGE_SEGS],
    pub vals: [RuleVal; PAGE_SEGS],
}
const _: () = assert!(size_of::<PortPage>() == 160);

impl PortPage {
    /// A page whose every point has `val`.
    pub const fn uniform(val: RuleVal) -> PortPage {
        PortPage {
            starts: [0; PAGE_SEGS],
            vals: [val; PAGE_SEGS],
        }
    }

    /// The page of `segs` (at most [`PAGE_SEGS`] `(start, value)` pairs, sorted, not empty),
    /// the last one repeated into the unused slots.
    pub fn of(segs: &[(u16, RuleVal)]) -> PortPage {
        let (last_start, last_val) = segs[segs.len() - 1];
        let mut page = PortPage {
            starts: [last_start; PAGE_SEGS],
            vals: [last_val; PAGE_SEGS],
        };
        for (i, &(start, val)) in segs.iter().enumerate() {
            page.starts[i] = start;
            page.vals[i] = val;
        }
        page
    }
}

/// A segment's value in a [`PortPage`], and the policy lookup's answer: the rule charged for
/// the packet (E4: see README) and flags that hold for every packet the segment covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleVal {
    /// Counter slot of the charged rule (index into [`maps::RULE_COUNTERS`]); 0 in a page
    /// segment no rule of the class covers.
    pub slot: u32,
    /// [`rule_flags`] bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<RuleVal>() == 8);

pub mod rule_flags {
    /// C4: the flow is not tracked; every packet is judged by the rules.
    pub const UNTRACKED: u32 = 1 << 0;
    /// A network ACL rule that denies (A5); the packet is dropped and the rule charged.
    pub const DENY: u32 = 1 << 1;
    /// A network ACL "rule" for the router's own addresses (A21): passed, nothing charged.
    pub const ROUTER_LOCAL: u32 = 1 << 2;
    /// In a [`super::PortPage`] only: `slot` is the number of the child page (same class and
    /// protocol) that splits this segment; not a rule.
    pub const PAGE: u32 = 1 << 31;
}

/// Rule slot 0 means "no rule" (exemptions, conntrack hits of flows opened before counters).
pub const NO_RULE_SLOT: u32 = 0;

// ---------------------------------------------------------------------------------------------
// Conntrack
// ---------------------------------------------------------------------------------------------

/// Key of [`maps::CT`] and [`maps::CT_NEW`]: one flow on one interface, normalised to
/// (local, remote) so that both directions find the same entry.
///
/// The ifindex is part of the key: a packet on one interface can never use or refresh state
/// of another. Ports: TCP/UDP ports; ICMP echo: `lport = id`, `rport` = which side opened
/// the flow ([`ECHO_OPENED_BY_PEER`] or 0), so pings with one id from both sides are two
/// flows; other protocols (C3): both 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
    pub lport: u16,
    pub rport: u16,
    pub local: Addr,
    pub remote: Addr,
}
const _: () = assert!(size_of::<FlowKey>() == 44);

/// `FlowKey::rport` of an ICMP echo flow opened by the remote side (an echo request came
/// in); 0 when this host opened it (an echo request went out).
pub const ECHO_OPENED_BY_PEER: u16 = 1;

/// Value of the conntrack maps.
///
/// Concurrency: two CPUs may update one entry at once (both directions of a flow). Counters
/// and timestamps are plain stores; a lost increment or a slightly older `seen_ns` is harmless
/// (it only shortens an idle timeout by the gap between two packets).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowVal {
    /// CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`, tick precision) at creation.
    pub created_ns: u64,
    /// CLOCK_MONOTONIC_COARSE at the last packet that refreshed the flow.
    pub seen_ns: u64,
    /// [original direction, reply direction]
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Rule that opened the flow; its counter is charged for the whole flow.
    pub rule_slot: u32,
    /// Timeouts (seconds) captured from the interface at creation: TCP [established,
    /// embryonic, closing]; UDP [stream, single, single]; ICMP and others [t, t, t].
    pub timeouts: [u32; 3],
    /// Direction of the packet that opened the flow (`DIR_*`).
    pub origin: u8,
    /// [`ct_state`] value.
    pub state: u8,
    /// [`ct_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<FlowVal>() == 72);

pub mod ct_state {
    /// TCP: SYN seen from the opener, no reply yet. Others: packets one way only.
    pub const NEW: u8 = 1;
    /// TCP: SYN-ACK (any reply) seen, handshake not complete. Others: one reply seen.
    pub const REPLIED: u8 = 2;
    /// TCP: handshake complete. UDP/other: more than one exchange each way (stream).
    pub const ESTABLISHED: u8 = 3;
    /// TCP: FIN seen in either direction.
    pub const CLOSING: u8 = 4;
    /// TCP: RST seen.
    pub const RESET: u8 = 5;
}

pub mod ct_flags {
    /// The flow lives in [`crate::maps::CT`] (confirmed) rather than CT_NEW.
    pub const CONFIRMED: u8 = 1 << 0;
    /// Created while audit mode was on (L3): deleted when it ends.
    pub const AUDIT: u8 = 1 << 1;
}

/// Indexes into [`maps::CT_STATS`].
pub mod ct_stat {
    /// Entries inserted into CT (confirmed) by the datapath.
    pub const CT_INSERTS: u32 = 0;
    /// Entries deleted from CT by the datapath (expired on lookup, promotion races).
    pub const CT_DELETES: u32 = 1;
    pub const NEW_INSERTS: u32 = 2;
    pub const NEW_DELETES: u32 = 3;
    /// EC2's conntrack_allowance_exceeded: a flow could not be stored, its packet dropped.
    pub const EXCEEDED: u32 = 4;
    /// Deletions done by the agent (GC, flush): written by userspace only, into CPU 0.
    pub const USER_CT_DELETES: u32 = 5;
    pub const USER_NEW_DELETES: u32 = 6;
    pub const COUNT: u32 = 8;
}

/// Key of [`maps::FRAGS`] (G1): the first fragment's verdict, applied to later fragments of
/// the same datagram on the same interface and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub ifindex: u32,
    pub dir: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    pub _pad2: u32,
    pub src: Addr,
    pub dst: Addr,
}
const _: () = assert!(size_of::<FragKey>() == 48);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragVal {
    /// CLOCK_MONOTONIC_COARSE when the first fragment was judged.
    pub first_ns: u64,
    pub rule_slot: u32,
    /// 1 pass, 0 drop.
    pub pass: u8,
    /// The first fragment's [`Reason`].
    pub reason: u8,
    /// Where the first fragment's transport header (its minimum length) ends, in bytes from
    /// the start of the fragmentable part; u16::MAX when unknown (IPv6 extension headers in
    /// the fragmentable part). A later fragment starting before it would overlap (rewrite)
    /// the header the first fragment was judged on (G1).
    pub l4_end: u16,
}
const _: () = assert!(size_of::<FragVal>() == 16);

/// Later fragments older than this (after the first) are no longer matched.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

// ---------------------------------------------------------------------------------------------
// Counters, config and events
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<RuleCounter>() == 16);

/// Value of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Events per second per CPU; 0 disables events.
    pub events_per_sec: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
}

pub mod config_flags {
    /// Audit mode (L3): a packet the policy drops (no rule, a NACL deny, a later fragment of
    /// such a datagram) passes, counted under its `Audit*` reason (`audit_would_drop_*`) and reported as an
    /// [`crate::event_kind::AUDIT`] event; flows created meanwhile carry
    /// [`crate::ct_flags::AUDIT`] so that ending audit mode can end them.
    pub const AUDIT: u32 = 1 << 0;
}
const _: () = assert!(size_of::<Config>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateState {
    pub tokens: u64,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<RateState>() == 16);

pub mod event_kind {
    pub const DROP: u8 = 1;
    pub const NEW_FLOW: u8 = 2;
    /// A packet the policy drops, passed by audit mode (L3); `reason` is the drop's.
    pub const AUDIT: u8 = 3;
}

/// One record in [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub rule_slot: u32,
    pub len: u32,
    pub sport: u16,
    pub dport: u16,
    pub src: Addr,
    pub dst: Addr,
    pub dir: u8,
    pub proto: u8,
    /// [`Reason`] as u8.
    pub reason: u8,
    /// [`event_kind`].
    pub kind: u8,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Event>() == 64);

/// Why a packet passed or was dropped. One counter each in [`maps::REASON_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // --- pass ---
    /// A rule allowed a new flow; conntrack entry created.
    PassRuleNew = 0,
    /// A rule allowed the packet of an untracked flow (C4).
    PassRuleUntracked = 1,
    /// Conntrack hit in the direction that opened the flow.
    PassCtOriginal = 2,
    /// Conntrack hit in the reply direction (C1).
    PassCtReply = 3,
    /// ICMP error whose inner header matches a tracked flow (I2).
    PassRelated = 4,
    /// Later fragment of a datagram whose first fragment passed (G1).
    PassFragment = 5,
    /// Non-IP frame (ARP, LLDP, ...) (N1).
    PassNonIp = 6,
    /// ICMPv6 router/neighbour discovery 133-137 (N1).
    PassNdp = 7,
    /// DHCPv4/DHCPv6 client exchange (N2).
    PassDhcp = 8,
    /// A network ACL rule allowed the packet (A5); stateless, nothing created.
    PassNaclRule = 9,
    /// Traffic to or from the router's own addresses on a NACL interface (A21).
    PassRouterLocal = 10,
    /// Audit mode (L3) passed a packet no rule allows (it would be `DropNoRule`).
    AuditNoRule = 11,
    /// Audit mode (L3) passed a packet a NACL rule denies (it would be `DropNaclRule`).
    AuditNaclRule = 12,
    /// Audit mode (L3) passed a later fragment of a denied datagram (`DropFragDenied`).
    AuditFragDenied = 13,
    // --- drop ---
    /// No rule allows the packet (E1).
    DropNoRule = 16,
    /// The interface has no policy in the active generation (fail closed).
    DropNoPolicy = 17,
    /// Conntrack table full (C6, conntrack_allowance_exceeded).
    DropCtFull = 18,
    /// Later fragment with no first fragment seen (G1).
    DropFragOrphan = 19,
    /// Later fragment of a datagram whose first fragment was dropped (G1).
    DropFragDenied = 20,
    /// Ethernet header or VLAN tag truncated.
    DropBadEth = 21,
    /// More VLAN tags than sg parses (2).
    DropVlanDepth = 22,
    /// IP header truncated, bad version, IHL < 5, total length inconsistent.
    DropBadIp = 23,
    /// IPv6 extension header chain too long, truncated or malformed.
    DropBadExtHdr = 24,
    /// TCP/UDP/ICMP header truncated or malformed (e.g. TCP data offset < 5).
    DropBadL4 = 25,
    /// First fragment too short to hold the transport header, or a fragment with an offset
    /// that overlaps the transport header.
    DropBadFragment = 26,
    /// A network ACL rule denied the packet: a numbered deny or the `*` rule (A5, A6).
    DropNaclRule = 27,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
        Reason::PassRuleNew,
        Reason::PassRuleUntracked,
        Reason::PassCtOriginal,
        Reason::PassCtReply,
        Reason::PassRelated,
        Reason::PassFragment,
        Reason::PassNonIp,
        Reason::PassNdp,
        Reason::PassDhcp,
        Reason::PassNaclRule,
        Reason::PassRouterLocal,
        Reason::AuditNoRule,
        Reason::AuditNaclRule,
        Reason::AuditFragDenied,
        Reason::DropNoRule,
        Reason::DropNoPolicy,
        Reason::DropCtFull,
        Reason::DropFragOrphan,
        Reason::DropFragDenied,
        Reason::DropBadEth,
        Reason::DropVlanDepth,
        Reason::DropBadIp,
        Reason::DropBadExtHdr,
        Reason::DropBadL4,
        Reason::DropBadFragment,
        Reason::DropNaclRule,
    ];
    /// Size of [`maps::REASON_COUNTERS`].
    pub const COUNT: u32 = 32;

    #[inline(always)]
    pub const fn is_pass(self) -> bool {
        (self as u32) < 16
    }

    pub fn from_u32(v: u32) -> Option<Reason> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == v {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Stable snake_case name used by the CLI, metrics and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassRuleNew => "pass_rule_new_flow",
            Reason::PassRuleUntracked => "pass_rule_untracked",
            Reason::PassCtOriginal => "pass_ct_original",
            Reason::PassCtReply => "pass_ct_reply",
            Reason::PassRelated => "pass_related_icmp",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassNdp => "pass_ndp",
            Reason::PassDhcp => "pass_dhcp",
            Reason::PassNaclRule => "pass_nacl_rule",
            Reason::PassRouterLocal => "pass_router_local",
            Reason::AuditNoRule => "audit_would_drop_no_rule",
            Reason::AuditNaclRule => "audit_would_drop_nacl_rule",
            Reason::AuditFragDenied => "audit_would_drop_fragment_denied",
            Reason::DropNoRule => "drop_no_rule",
            Reason::DropNoPolicy => "drop_no_policy",
            Reason::DropCtFull => "drop_conntrack_full",
            Reason::DropFragOrphan => "drop_fragment_orphan",
            Reason::DropFragDenied => "drop_fragment_denied",
            Reason::DropBadEth => "drop_malformed_ethernet",
            Reason::DropVlanDepth => "drop_vlan_depth",
            Reason::DropBadIp => "drop_malformed_ip",
            Reason::DropBadExtHdr => "drop_malformed_ipv6_ext",
            Reason::DropBadL4 => "drop_malformed_l4",
            Reason::DropBadFragment => "drop_malformed_fragment",
            Reason::DropNaclRule => "drop_nacl_rule",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), Copy, has no implicit padding (asserted by size) and is
    // valid for any bit pattern.
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceConf {}
    unsafe impl aya::Pod for Timeouts {}
    unsafe impl aya::Pod for PeerData {}
    unsafe impl aya::Pod for PeerVal {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortPage {}
    unsafe impl aya::Pod for RuleVal {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowVal {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragVal {}
    unsafe impl aya::Pod for RuleCounter {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for Event {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_program_names_fit_the_kernel() {
        let progs = [progs::XDP_INGRESS, progs::TC_INGRESS, progs::TC_EGRESS];
        for n in maps::ALL.iter().chain(progs.iter()) {
            assert!(n.len() <= 15, "{n} is longer than 15 bytes");
        }
    }

    #[test]
    fn reasons_round_trip_and_fit_their_counter_array() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
            assert!((r as u32) < Reason::COUNT);
        }
        assert!(Reason::PassDhcp.is_pass() && !Reason::DropNoRule.is_pass());
    }

    #[test]
    fn v4_mapping() {
        let a = v4_mapped([192, 0, 2, 1]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[192, 0, 2, 1]);
        assert!(!is_v4_mapped(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ]));
    }
}
