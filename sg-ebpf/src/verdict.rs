//! What every step decides: a [`Verdict`] (the reason a packet passes or drops, and the rule
//! charged), and its packed form for the steps compiled as BPF-to-BPF calls.
//!
//! Plain values only: counting, events and the action value are the funnel's (`funnel.rs`).
use sg_common::{NO_RULE_SLOT, Reason};

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
