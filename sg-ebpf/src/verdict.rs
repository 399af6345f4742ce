//! The verdict funnel: every packet leaves through [`finish`], which counts it (per reason,
//! and per rule when a rule or a flow's rule let it through), emits an event when one is due,
//! and returns the hook's action value.
//!
//! Owns the counters. It must not decide anything: the verdict is made before it is called.
use sg_common::{NO_RULE_SLOT, Reason};

use crate::{
    ctx::Hook,
    events,
    maps::{SG_REASON_CNT, SG_RULE_CNT, bump},
    parse::Pkt,
};

/// Why a packet passes or drops, and which rule is charged (`NO_RULE_SLOT`: none).
#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Reason,
    pub slot: u32,
}

impl Verdict {
    /// A verdict no rule is charged for (exemptions, malformed packets, drops).
    #[inline(always)]
    pub const fn of(reason: Reason) -> Verdict {
        Verdict {
            reason,
            slot: NO_RULE_SLOT,
        }
    }

    /// A verdict that charges rule `slot`.
    #[inline(always)]
    pub const fn rule(reason: Reason, slot: u32) -> Verdict {
        Verdict { reason, slot }
    }
}

/// A verdict, or none, as one `u64`: what steps compiled as BPF-to-BPF calls return.
///
/// verifier: "R6 pointer arithmetic with <<= operator prohibited" -- a non-inlined function
/// returning `Option<Verdict>` or a `Result` gets its return value assembled with shifts, and
/// on paths where a part is undefined (the `None` case) LLVM shifts whatever the register
/// happens to hold, once a stack pointer. Packing by hand defines every bit on every path.
pub type Packed = u64;
const PACKED_NONE: Packed = u64::MAX;

#[inline(always)]
pub fn pack(v: Option<Verdict>) -> Packed {
    match v {
        Some(v) => (v.slot as u64) << 32 | v.reason as u64,
        None => PACKED_NONE,
    }
}

#[inline(always)]
pub fn unpack(p: Packed) -> Option<Verdict> {
    if p == PACKED_NONE {
        return None;
    }
    Some(Verdict {
        reason: reason_from(p as u32),
        slot: (p >> 32) as u32,
    })
}

/// The `Reason` whose value `v` is; only ever called on values made from a `Reason`.
#[inline(always)]
pub fn reason_from(v: u32) -> Reason {
    // SAFETY: every caller passes `some_reason as u32` back (pack/unpack).
    unsafe { core::mem::transmute::<u32, Reason>(v) }
}

/// Counts, emits and returns. Rule counters move only for packets that pass: a rule allows,
/// it never drops (E1).
#[inline(always)]
pub fn finish<C: Hook>(pkt: &Pkt, v: Verdict) -> u32 {
    bump(&SG_REASON_CNT, v.reason as u32);
    let pass = v.reason.is_pass();
    if pass
        && v.slot != NO_RULE_SLOT
        && let Some(c) = SG_RULE_CNT.get_ptr_mut(v.slot)
    {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += pkt.len as u64;
        }
    }
    if !pass || matches!(v.reason, Reason::PassRuleNew) {
        events::emit(pkt, &v);
    }
    if pass { C::PASS } else { C::DROP }
}
