//! Every map the dataplane uses, declared once, with the names, key/value types and default
//! capacities of `sg_common` (the agent may change `max_entries` and pins them at load time).
//!
//! Owns the declarations and two tiny counter helpers; no packet logic here.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sg_common::{
    Config, FlowKey, FlowVal, FragKey, FragVal, IfaceConf, IfaceKey, PeerData, PeerVal, PortKey,
    PortPage, RateState, Reason, RuleCounter, capacity, config_flags, ct_stat,
};

/// 0 -> the active policy generation (0 or 1).
#[map(name = "SG_ACTIVE")]
pub static SG_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// (generation, ifindex) -> the interface's scopes, flags and conntrack timeouts.
#[map(name = "SG_IFACES")]
pub static SG_IFACES: HashMap<IfaceKey, IfaceConf> = HashMap::with_max_entries(capacity::IFACES, 0);

/// (scope, remote address) -> peer class. Prefix lengths: see `PeerData`.
#[map(name = "SG_PEERS")]
pub static SG_PEERS: LpmTrie<PeerData, PeerVal> = LpmTrie::with_max_entries(capacity::PEERS, 0);

/// (peer class, protocol, page) -> segments of the class's port line: see `PortKey`.
/// BPF_F_NO_PREALLOC: pages are allocated as the agent writes them (most classes need one or
/// two), and a page the agent deletes stays readable until the packets reading it are done
/// (RCU), where a preallocated element could be reused for another page at once.
#[map(name = "SG_PORTS")]
pub static SG_PORTS: HashMap<PortKey, PortPage> =
    HashMap::with_max_entries(capacity::PORTS, BPF_F_NO_PREALLOC);

// Conntrack: plain hash maps with a fixed capacity, so "insert failed" means "table full"
// (C6) instead of an LRU silently evicting a live flow.
//
// BPF_F_NO_PREALLOC: elements are freed after an RCU grace period instead of going straight
// back to a free list. The datapath writes through value pointers (counters, seen_ns, state)
// while another CPU or the agent's sweeper may delete the same entry; with preallocation the
// freed element can be reused for a different flow at once and such a late write would land
// in that flow. Without it a late write lands in a dead element. Capacity is still enforced
// (-E2BIG when full).

/// Confirmed flows (TCP established, UDP/other/ICMP streams).
#[map(name = "SG_CT")]
pub static SG_CT: HashMap<FlowKey, FlowVal> =
    HashMap::with_max_entries(capacity::CT, BPF_F_NO_PREALLOC);

/// Unconfirmed flows: a flood of half-open flows fills this one, never `SG_CT`.
#[map(name = "SG_CT_NEW")]
pub static SG_CT_NEW: HashMap<FlowKey, FlowVal> =
    HashMap::with_max_entries(capacity::CT_NEW, BPF_F_NO_PREALLOC);

/// First fragments' verdicts (G1). LRU: a stale record may be evicted, which only turns its
/// datagram's later fragments into orphans (dropped).
#[map(name = "SG_FRAGS")]
pub static SG_FRAGS: LruHashMap<FragKey, FragVal> =
    LruHashMap::with_max_entries(capacity::FRAGS, 0);

/// Rule slot -> packets/bytes (per CPU).
#[map(name = "SG_RULE_CNT")]
pub static SG_RULE_CNT: PerCpuArray<RuleCounter> =
    PerCpuArray::with_max_entries(capacity::RULE_SLOTS, 0);

/// Reason -> packets (per CPU).
#[map(name = "SG_REASON_CNT")]
pub static SG_REASON_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// `ct_stat` index -> count (per CPU).
#[map(name = "SG_CT_STATS")]
pub static SG_CT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ct_stat::COUNT, 0);

/// Global knobs written by the agent.
#[map(name = "SG_CONFIG")]
pub static SG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU token bucket for events.
#[map(name = "SG_RATE")]
pub static SG_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);

/// The router ports' scopes by (ifindex, generation): see `sg_common::maps::NACL_PORTS`. An
/// array: the verifier inlines its lookup (an address computation), where the hash lookup of
/// `SG_IFACES` it saves costs ~35 ns (BPF_PROG_TEST_RUN).
#[map(name = "SG_NACL_PORTS")]
pub static SG_NACL_PORTS: Array<u64> = Array::with_max_entries(capacity::NACL_PORT_SLOTS, 0);

/// Drop and new-flow events for the agent.
#[map(name = "SG_EVENTS")]
pub static SG_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Adds one to a per-CPU `u64` counter. Per-CPU and run with migration disabled, so a plain
/// add is exact.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, idx: u32) {
    if let Some(p) = map.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// Audit mode (L3): `SG_CONFIG`'s flag. Read on the drop and flow-creation paths only.
#[inline(always)]
pub fn audit_on() -> bool {
    SG_CONFIG
        .get(0)
        .is_some_and(|c| c.flags & config_flags::AUDIT != 0)
}

/// One `ct_stat` counter.
#[inline(always)]
pub fn ct_stat(idx: u32) {
    bump(&SG_CT_STATS, idx);
}
