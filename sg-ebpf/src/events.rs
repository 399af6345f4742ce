//! Events: one ring-buffer record per dropped packet or new flow, when the interface asks for
//! it (`iface_flags`), rate limited per CPU by a token bucket (`SG_CONFIG.events_per_sec`,
//! 0 = off).
//!
//! Owns `SG_RATE` and `SG_EVENTS`. Never logs per packet otherwise: counters do that job.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use sg_common::{Event, Reason, event_kind, iface_flags};

use crate::{
    maps::{SG_CONFIG, SG_EVENTS, SG_RATE},
    parse::{L4_ICMP, Pkt, addr},
    policy,
    verdict::Verdict,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Emits the event for a drop or a new flow, if events are on, the interface wants this kind
/// and the bucket has a token. Interfaces without a policy have no flags: no events.
// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
pub fn emit(pkt: &Pkt, v: &Verdict, audited: bool) {
    let Some(cfg) = SG_CONFIG.get(0) else {
        return;
    };
    let rate = cfg.events_per_sec;
    if rate == 0 {
        return;
    }
    let (kind, want) = if audited {
        (event_kind::AUDIT, iface_flags::LOG_DROPS)
    } else if matches!(v.reason, Reason::PassRuleNew) {
        (event_kind::NEW_FLOW, iface_flags::LOG_FLOWS)
    } else {
        (event_kind::DROP, iface_flags::LOG_DROPS)
    };
    let Some(conf) = policy::iface(policy::active(), pkt.ifindex) else {
        return;
    };
    if conf.flags & want == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_token(now, rate) {
        return;
    }
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        return;
    };
    // ICMP has no ports: the event carries the echo id and type<<8|code instead.
    let (sport, dport) = if pkt.l4 == L4_ICMP {
        (
            pkt.icmp_id,
            (pkt.icmp_type as u16) << 8 | pkt.icmp_code as u16,
        )
    } else {
        (pkt.sport, pkt.dport)
    };
    entry.write(Event {
        ts_ns: now,
        ifindex: pkt.ifindex,
        rule_slot: v.slot,
        len: pkt.len,
        sport,
        dport,
        src: addr(&pkt.src),
        dst: addr(&pkt.dst),
        dir: pkt.dir,
        proto: pkt.proto,
        reason: v.reason as u8,
        kind,
        _pad: 0,
    });
    entry.submit(0);
}

/// Token bucket, per CPU (so no atomics): refills `rate` tokens per second, holds at most one
/// second's worth. Tokens are kept in nano-units (one event = 1e9) to avoid a division.
#[inline(always)]
fn take_token(now: u64, rate: u32) -> bool {
    let Some(st) = SG_RATE.get_ptr_mut(0) else {
        return false;
    };
    let st = unsafe { &mut *st };
    // Clamped so elapsed * rate cannot overflow (1e9 * u32::MAX < 2^63).
    let mut elapsed = now.wrapping_sub(st.last_ns);
    if elapsed > NS_PER_SEC {
        elapsed = NS_PER_SEC;
    }
    let cap = rate as u64 * NS_PER_SEC;
    let mut tokens = st.tokens + elapsed * rate as u64;
    if tokens > cap {
        tokens = cap;
    }
    st.last_ns = now;
    if tokens >= NS_PER_SEC {
        st.tokens = tokens - NS_PER_SEC;
        true
    } else {
        st.tokens = tokens;
        false
    }
}
