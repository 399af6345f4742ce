//! Running one frame through a loaded program with BPF_PROG_TEST_RUN: the fixture tables and
//! the differential tests judge the real program this way, without any traffic.
//!
//! The verdict's reason and rule are learnt from the counters the program keeps anyway: the
//! reason counters and the rule counters of every slot an applied image used are read before
//! and after the run, and exactly one reason must have moved. That is exact as long as nothing
//! else runs the program meanwhile (a dataplane used for test runs should not be attached to
//! a busy interface; a violation is reported, never guessed around).
//!
//! Contexts: XDP needs an `xdp_md` whose `ingress_ifindex` names a real device in the calling
//! thread's network namespace (the kernel resolves it); TC takes an `__sk_buff` prefix with
//! `ifindex` set (1 = lo, otherwise a real device as well).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use sg_common::{Reason, progs};

use super::Dataplane;

/// Which program judges the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `sg_xdp_in`: ingress via XDP.
    XdpIn,
    /// `sg_tc_in`: ingress via TC.
    TcIn,
    /// `sg_tc_out`: egress via TC.
    TcOut,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::XdpIn, Hook::TcIn, Hook::TcOut];

    pub fn is_ingress(self) -> bool {
        self != Hook::TcOut
    }

    /// True when the program's return value lets the packet through.
    pub fn passes(self, action: u32) -> bool {
        const XDP_PASS: u32 = 2;
        const TC_ACT_OK: u32 = 0;
        const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: continue with the default action
        match self {
            Hook::XdpIn => action == XDP_PASS,
            Hook::TcIn | Hook::TcOut => action == TC_ACT_OK || action == TC_ACT_UNSPEC,
        }
    }
}

/// The program's verdict on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The program's return value (XDP action or TC action).
    pub action: u32,
    /// What `action` means: the packet goes on.
    pub pass: bool,
    /// The reason counter that moved.
    pub reason: Reason,
    /// The rule slot charged, if any (slot 0, "no rule", is never reported).
    pub slot: Option<u32>,
    /// The kernel's measurement of the run.
    pub duration: Duration,
}

/// `struct xdp_md` (6 x u32): data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex. The kernel wants data 0, data_end = frame length, data_meta 0.
fn xdp_ctx(len: usize, ifindex: u32) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    c[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// The first 44 bytes of `struct __sk_buff`, up to and including `ifindex` (offset 40). The
/// kernel accepts a shorter context and zero-fills the rest; fields before `ifindex` must stay
/// zero (except mark/priority).
fn skb_ctx(ifindex: u32) -> [u8; 44] {
    let mut c = [0u8; 44];
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

impl Dataplane {
    /// Runs `frame` through the program of `hook` as if it arrived on / left by `ifindex`.
    pub fn run_frame(&mut self, hook: Hook, frame: &[u8], ifindex: u32) -> Result<RunResult> {
        let reasons_before = self.reason_counters()?;
        let slots_before = self.known_slot_counters()?;
        let (action, duration) = self.test_run(hook, frame, ifindex, 1)?;
        let reasons_after = self.reason_counters()?;
        let slots_after = self.known_slot_counters()?;

        let moved: Vec<(Reason, u64)> = reasons_after
            .iter()
            .map(|(r, n)| (*r, n - reasons_before.get(r).copied().unwrap_or(0)))
            .filter(|(_, d)| *d != 0)
            .collect();
        let reason = match moved.as_slice() {
            [(r, 1)] => *r,
            [] => bail!(
                "{hook:?} returned {action} but no reason counter moved: the program does not \
                 count its verdicts (placeholder object?)"
            ),
            _ => bail!(
                "reason counters moved by more than one packet during one test run ({moved:?}): \
                 is the program also attached to a live interface?"
            ),
        };
        let charged: Vec<u32> = slots_after
            .iter()
            .filter(|(s, c)| slots_before.get(s).map_or(0, |b| b.packets) != c.packets)
            .map(|(s, _)| *s)
            .filter(|s| *s != sg_common::NO_RULE_SLOT)
            .collect();
        let slot = match charged.as_slice() {
            [] => None,
            [s] => Some(*s),
            _ => bail!("more than one rule counter moved during one test run: {charged:?}"),
        };
        Ok(RunResult {
            action,
            pass: hook.passes(action),
            reason,
            slot,
            duration,
        })
    }

    /// Runs `frame` `repeat` times (the kernel loops) and returns the mean time per run.
    /// Conntrack and counters change as if the packets were real.
    pub fn bench_frame(
        &mut self,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<Duration> {
        let (_, d) = self.test_run(hook, frame, ifindex, repeat)?;
        Ok(d)
    }

    fn test_run(
        &mut self,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, Duration)> {
        let xctx = xdp_ctx(frame.len(), ifindex);
        let sctx = skb_ctx(ifindex);
        let ctx: &[u8] = if hook == Hook::XdpIn { &xctx } else { &sctx };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx),
            repeat,
            ..TestRunOptions::new()
        };
        let r = match hook {
            Hook::XdpIn => {
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                p.test_run(opts)
            }
            Hook::TcIn | Hook::TcOut => {
                let name = if hook == Hook::TcIn {
                    progs::TC_INGRESS
                } else {
                    progs::TC_EGRESS
                };
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, name)?;
                p.test_run(opts)
            }
        }
        .map_err(|e| anyhow!(e))
        .with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN of {hook:?} on a {}-byte frame, ifindex {ifindex}; hint: the \
                 ifindex must name a device in this thread's network namespace and frames must \
                 hold at least an Ethernet header",
                frame.len()
            )
        })?;
        Ok((r.return_value, r.duration))
    }
}
