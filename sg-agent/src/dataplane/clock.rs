//! The datapath clock's calibration (`sg_common::Config::now_ns`): the datapath reads time as
//! jiffies (a load the verifier inlines) scaled by a tick length and offset measured here,
//! once per boot, with the object's `sg_clock` program.
//!
//! Owns the measurement only; `Dataplane::load` writes the result into SG_CONFIG. A clock
//! that cannot be calibrated leaves `tick_ns` at 0: the datapath then reads the same clock
//! through the kernel's helper, slower but right.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// The kernel's tick lengths (`TICK_NSEC` = round(1e9 / HZ)) for the HZ values Linux offers.
const TICKS_NS: [u64; 5] = [10_000_000, 4_000_000, 3_333_333, 1_000_000, 2_000_000];

/// How long the calibration may wait for jiffies to move (two ticks at HZ = 100, and room).
const PATIENCE: Duration = Duration::from_millis(100);

/// A tick length and offset such that `jiffies * tick_ns + offset` is CLOCK_MONOTONIC_COARSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    pub tick_ns: u32,
    pub offset_ns: u64,
}

/// Measures the calibration with `prog` (the loaded `sg_clock`): samples (jiffies, coarse
/// ns) until jiffies has moved, takes the tick from the two samples, snapped to the nearest
/// kernel tick length, and the offset from the last sample. Both clocks advance in the same
/// timer tick, so the offsets of the two samples agree to well within a tick; when they do
/// not (a sample taken across an update), it samples again.
pub fn calibrate(prog: &Xdp) -> Result<Calibration> {
    let deadline = Instant::now() + PATIENCE;
    let first = sample(prog)?;
    loop {
        sleep(Duration::from_micros(500));
        let last = sample(prog)?;
        if let Some(c) = from_samples(first, last) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "jiffies and CLOCK_MONOTONIC_COARSE did not advance together within {PATIENCE:?} \
                 (samples {first:?} and {last:?})"
            );
        }
    }
}

/// The calibration two (jiffies, coarse ns) samples give, if jiffies moved between them and
/// both agree with one kernel tick length.
fn from_samples(a: (u64, u64), b: (u64, u64)) -> Option<Calibration> {
    let (dj, dc) = (b.0.checked_sub(a.0)?, b.1.checked_sub(a.1)?);
    if dj == 0 {
        return None;
    }
    let measured = dc / dj;
    let tick = TICKS_NS.into_iter().min_by_key(|t| t.abs_diff(measured))?;
    let offset = |s: (u64, u64)| s.1.wrapping_sub(s.0.wrapping_mul(tick));
    // Within a tick of each other, and a tick within 10 % of the measured one.
    let agree = offset(a).abs_diff(offset(b)) < tick && tick.abs_diff(measured) * 10 < tick;
    agree.then(|| Calibration {
        tick_ns: tick as u32,
        offset_ns: offset(b),
    })
}

/// One (jiffies, coarse ns) sample: `sg_clock` test-run on a 64-byte zero frame.
fn sample(prog: &Xdp) -> Result<(u64, u64)> {
    let input = [0u8; 64];
    let mut out = [0u8; 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .context("test-running sg_clock")?;
    if r.return_value != 2 {
        bail!("sg_clock returned {} (XDP_PASS expected)", r.return_value);
    }
    let word = |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_samples_a_tick_apart_give_the_kernel_tick_and_a_shared_offset() {
        // HZ = 250: one tick is 4 ms; the coarse clock moved by a tick (with 3 us of
        // timekeeping granularity) while jiffies moved by one.
        let a = (4_294_967_296, 9_000_000_000);
        let b = (a.0 + 1, a.1 + 4_000_003);
        let c = from_samples(a, b).unwrap();
        assert_eq!(c.tick_ns, 4_000_000);
        let now = |j: u64| {
            j.wrapping_mul(u64::from(c.tick_ns))
                .wrapping_add(c.offset_ns)
        };
        assert_eq!(now(b.0), b.1);
        assert!(now(a.0).abs_diff(a.1) < 10_000);
        // Ten ticks later the clock is ten ticks later.
        assert_eq!(now(b.0 + 10), b.1 + 40_000_000);
    }

    #[test]
    fn samples_without_a_tick_between_them_or_off_every_tick_length_give_nothing() {
        assert_eq!(from_samples((5, 100), (5, 200)), None);
        // jiffies went backwards.
        assert_eq!(from_samples((6, 100), (5, 200)), None);
        // 6 ms per tick: no kernel HZ has that tick.
        assert_eq!(from_samples((5, 0), (6, 6_000_000)), None);
    }
}
