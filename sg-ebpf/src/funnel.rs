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
    policy::audits,
    verdict::Verdict,
};

/// Counts, emits and returns. A rule counter moves for every packet whose verdict charges a
/// rule: a security-group rule only ever allows (E1); a network ACL rule also denies (A5),
/// and its drops are charged to it.
///
/// Audit mode (L3), everywhere or on the packet's interface: a drop the policy decided (no rule, a NACL deny, a later fragment of a
/// denied datagram) passes instead, counted under its `audit_would_drop_*` reason and
/// reported with its drop reason. Malformed packets, interfaces without a policy and a full conntrack table stay
/// dropped: audit mode audits the rules, it does not open the host.
#[inline(always)]
pub fn finish<C: Hook>(pkt: &Pkt, v: Verdict) -> u32 {
    let audit_as = match v.reason {
        Reason::DropNoRule => Some(Reason::AuditNoRule),
        Reason::DropNaclRule => Some(Reason::AuditNaclRule),
        Reason::DropFragDenied => Some(Reason::AuditFragDenied),
        _ => None,
    };
    let (counted, audited) = match audit_as {
        Some(a) if audits(pkt.ifindex) => (a, true),
        _ => (v.reason, false),
    };
    bump(&SG_REASON_CNT, counted as u32);
    let pass = counted.is_pass();
    if v.slot != NO_RULE_SLOT
        && let Some(c) = SG_RULE_CNT.get_ptr_mut(v.slot)
    {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += pkt.len as u64;
        }
    }
    if !pass || audited || matches!(v.reason, Reason::PassRuleNew) {
        events::emit(pkt, &v, audited);
    }
    if pass { C::PASS } else { C::DROP }
}
