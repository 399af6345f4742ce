//! The hook abstraction: what the pipeline needs from XDP and TC, and nothing else.
//!
//! Owns [`Hook`] (packet bounds, ifindex, length, the pass/drop action values) and the one
//! bounds-checked packet accessor, [`ptr_at`]. It must not interpret packet bytes: parsing
//! lives in `parse.rs`.
//!
//! Every read of packet bytes goes through [`Hook::load`] (direct access, the hot path) or
//! [`Hook::load_cold`] (a helper), which copy a fixed-size value out of the packet. Callers
//! never hold packet pointers, so nothing breaks when a TC read has to fall back to
//! `bpf_skb_load_bytes` (a non-linear skb) and the verifier never has to track a packet
//! pointer across a helper call.
use core::{
    mem::{MaybeUninit, size_of},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// The largest offset a direct read may start at. Direct reads happen at small offsets only
/// (at most 22 + 60 for a TCP header behind two VLAN tags and IPv4 options); headers that
/// can sit further out are read with `load_cold`, which has no such bound.
pub const MAX_OFF: usize = 1024;

/// How much of a non-linear skb TC pulls into its linear part when a header is not there:
/// every direct read (`Hook::load`) ends within it (two VLAN tags, IPv4 with 40 bytes of
/// options and a TCP header: 22 + 60 + 20 = 102 bytes).
const PULL_LEN: u32 = 128;

/// What the pipeline needs from a hook. Implemented for XDP and TC; the pipeline is generic
/// over it and monomorphised per program.
pub trait Hook {
    /// The action values for "let it through" and "drop it".
    const PASS: u32;
    const DROP: u32;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The protected interface: XDP's ingress ifindex, TC's skb->ifindex (the device the
    /// packet is received on or sent from).
    fn ifindex(&self) -> u32;
    /// The whole frame's length in bytes, from the Ethernet header on (XDP: the linear
    /// buffer; TC: skb->len, which also counts non-linear data).
    fn len(&self) -> u32;
    /// Copies the `T` at packet offset `off`, or `None` when the frame is too short.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    /// Like [`Hook::load`], through a helper (`bpf_xdp_load_bytes`/`bpf_skb_load_bytes`):
    /// a few ns slower, but the offset is a plain helper argument the verifier need not track.
    ///
    /// verifier: "BPF program is too large. Processed 1000001 insn" -- direct access makes
    /// every offset it is used with *precise*, and precision propagates back to wherever the
    /// offset came from. Offsets that can take many values (after an IPv6 extension header
    /// walk; the ICMP error's quoted headers at `Pkt.l4_off + 8`, which depends on VLAN tags,
    /// IPv4 options and extension headers) then split verification into one pass per value
    /// through the whole rest of the pipeline. Measured on sg_xdp_in: 321k instructions
    /// processed with direct reads everywhere, ~60k with this on the cold paths.
    fn load_cold<T: Copy>(&self, off: usize) -> Option<T>;
}

/// The one bounds-checked accessor: a pointer to a whole `T` at `off` inside the linear
/// packet data, or `None`.
///
/// Fixed-size accesses only: the verifier tracks `data + off + size_of::<T>() <= data_end`
/// for a constant size; a variable-length access loses the packet-pointer range (aya#1562).
#[inline(always)]
pub fn ptr_at<C: Hook, T>(ctx: &C, off: usize) -> Option<*const T> {
    // verifier: "math between pkt pointer and register with unbounded min value is not
    // allowed" -- give the variable offset an explicit upper bound before adding it.
    if off > MAX_OFF {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

impl Hook for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

    #[inline(always)]
    fn data(&self) -> usize {
        // verifier: "R2 pointer arithmetic on pkt_end prohibited" -- a plain load lets LLVM's
        // argument promotion pass `data_end` into a non-inlined step as a u32 and re-extend
        // it there (a shift of the pkt_end pointer). Volatile context loads stay loads.
        unsafe { read_volatile(&(*self.ctx).data) as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        unsafe { read_volatile(&(*self.ctx).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (Hook::data_end(self) - Hook::data(self)) as u32
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        // Unaligned packet loads are fine: the verifier only enforces alignment with
        // BPF_F_STRICT_ALIGNMENT or on architectures without efficient unaligned access.
        ptr_at::<_, T>(self, off).map(|p| unsafe { p.read() })
    }
    #[inline(always)]
    fn load_cold<T: Copy>(&self, off: usize) -> Option<T> {
        via_helper(|buf, len| unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, buf, len) })
    }
}

/// A `T` filled by a `bpf_*_load_bytes` helper (returning 0 on success).
#[inline(always)]
fn via_helper<T: Copy>(f: impl FnOnce(*mut core::ffi::c_void, u32) -> i64) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    if f(v.as_mut_ptr() as *mut _, size_of::<T>() as u32) == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

impl Hook for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;

    #[inline(always)]
    fn data(&self) -> usize {
        // verifier: "pointer arithmetic on pkt_end prohibited" (see the XDP impl).
        unsafe { read_volatile(&(*self.skb.skb).data) as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        unsafe { read_volatile(&(*self.skb.skb).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        if let Some(p) = ptr_at::<_, T>(self, off) {
            return Some(unsafe { p.read() });
        }
        // The header lies beyond the linear part of a non-linear skb (or beyond the frame).
        // Pull the headers into the linear part once, as Cilium's revalidate_data_pull does,
        // and read them directly from then on: one helper call per packet instead of a
        // `bpf_skb_load_bytes` copy per header (skbs built from page fragments, e.g. by
        // AF_PACKET senders, arrive with only the Ethernet header linear). The stack pulls
        // the same headers right after us anyway (ip_rcv's pskb_may_pull), so the copy is
        // moved, not added. Only when a read failed: a pull also makes the skb writable,
        // which copies the head of a cloned skb (egress TCP segments are clones, but their
        // headers are always linear, so they never get here).
        let end = (off + size_of::<T>()) as u32;
        let len = Hook::len(self);
        if end <= len
            && self.pull_data(len.min(PULL_LEN.max(end))).is_ok()
            && let Some(p) = ptr_at::<_, T>(self, off)
        {
            return Some(unsafe { p.read() });
        }
        // Truncated (past skb->len), or the pull failed: the helper copies from the paged
        // part, and fails with -EFAULT past skb->len, which is exactly "truncated".
        self.load_cold(off)
    }
    #[inline(always)]
    fn load_cold<T: Copy>(&self, off: usize) -> Option<T> {
        via_helper(|buf, len| unsafe {
            bpf_skb_load_bytes(self.skb.skb as *const _, off as u32, buf, len)
        })
    }
}
