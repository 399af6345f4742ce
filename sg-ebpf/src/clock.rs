//! The clock of conntrack idle timeouts and the fragment window: CLOCK_MONOTONIC_COARSE,
//! read as `bpf_jiffies64` scaled by the calibration in `SG_CONFIG` (`Config::now_ns`), and
//! the `sg_clock` program the agent calibrates it with.
//!
//! Owns every clock read of the pipeline. Every use is measured in seconds (C5 timeouts
//! >= 1 s, the 30 s fragment window, G1), so the tick precision of either clock is plenty.
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};

use crate::maps::SG_CONFIG;

/// CLOCK_MONOTONIC_COARSE now, in ns. Calibrated (`tick_ns` set): a jiffies load the
/// verifier inlines, a multiply and an add. Not yet calibrated: the kernel's helper, the same
/// clock at the cost of a call.
#[inline(always)]
pub fn now() -> u64 {
    match SG_CONFIG.get(0) {
        Some(c) if c.tick_ns != 0 => c.now_ns(unsafe { bpf_jiffies64() }),
        _ => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// `sg_clock`: writes jiffies and CLOCK_MONOTONIC_COARSE, read back to back, as two native
/// u64 into the first 16 bytes of the frame it is test-run on, and returns XDP_PASS (2);
/// XDP_ABORTED (0) when the frame is shorter.
#[inline(always)]
pub fn sample(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 16 > end {
        return 0;
    }
    let jiffies = unsafe { bpf_jiffies64() };
    let coarse = unsafe { bpf_ktime_get_coarse_ns() };
    let p = start as *mut u64;
    unsafe {
        p.write_unaligned(jiffies);
        p.add(1).write_unaligned(coarse);
    }
    2
}
