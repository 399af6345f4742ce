//! `sg-agent status`: interfaces, programs and modes, groups per interface, generation,
//! conntrack fill, and the inconsistencies found.

use anyhow::Result;

use super::{Globals, open_agent};
use crate::agent::Status;

pub fn run(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let s = a.status()?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("sg-agent {} (ABI {})", s.version, s.abi);
    println!(
        "policy:      {} (applied at unix {})",
        s.source, s.applied_at
    );
    println!("generation:  {} ({} rules)", s.generation, s.rules);
    if s.kernel_generation != s.generation {
        println!("kernel:      generation {} is active", s.kernel_generation);
    }
    println!("pins:        {}", s.pins);
    println!("state:       {}", s.state);
    println!(
        "conntrack:   {} confirmed ({} free of {}), {} unconfirmed ({} free of {}), exceeded {}",
        s.conntrack.ct_count,
        s.conntrack.ct_available,
        s.ct_capacity,
        s.conntrack.new_count,
        s.conntrack.new_available,
        s.ct_new_capacity,
        s.conntrack.exceeded
    );
    println!("interfaces:");
    for i in &s.interfaces {
        let audit = match i.audit {
            Some("policy") => "; AUDIT mode (policy: audit: true)",
            Some(_) => "; AUDIT mode (sg-agent audit on)",
            None => "",
        };
        println!(
            "  {} (ifindex {}, {}): ingress {}, egress {}; groups {}{audit}",
            i.device,
            i.ifindex,
            i.interface,
            i.ingress,
            i.egress,
            i.groups.join(", ")
        );
    }
    if s.audit {
        println!("audit:       ON on every interface (sg-agent audit off)");
    }
    print_confirm(&s);
    for w in &s.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// L1: the change waiting for `sg-agent confirm` (who set it, what comes back and when), and
/// the last revert (when, why, what came back).
fn print_confirm(s: &Status) {
    if let Some(p) = &s.confirm {
        println!(
            "confirm:     {} waits for `sg-agent confirm`: {}; else {} comes back{}",
            p.source,
            p.describe_deadline(),
            p.previous.source,
            p.watchdog_pid
                .map(|w| format!(" (watchdog pid {w})"))
                .unwrap_or_default()
        );
        let by = match p.ssh_connection.as_deref().map(ssh_client) {
            Some(c) => format!("SSH client {c}"),
            None => "a session without SSH_CONNECTION".into(),
        };
        println!("             set by {by} at {}", utc(p.set_at_ms));
    }
    if s.confirm_reverts > 0 {
        println!("reverted:    {} unconfirmed applies", s.confirm_reverts);
    }
    if let Some(r) = &s.last_revert {
        let why = if r.why.is_empty() {
            "reason not recorded"
        } else {
            &r.why
        };
        let restored = if r.restored.is_empty() {
            String::new()
        } else {
            format!(", {} came back", r.restored)
        };
        println!(
            "last revert: {} at {} (applied {}): {why}{restored}",
            r.source,
            utc(r.at_ms),
            utc(r.set_at_ms)
        );
    }
}

/// The client's address and port of an `SSH_CONNECTION` value ("client port server port").
fn ssh_client(conn: &str) -> String {
    let mut it = conn.split_whitespace();
    match (it.next(), it.next()) {
        (Some(ip), Some(port)) => format!("{ip} port {port}"),
        _ => conn.to_string(),
    }
}

/// Milliseconds since the epoch as a UTC date and time, for people.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_300_000_000), "2026-12-03 12:13:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn the_ssh_client_is_the_first_half_of_ssh_connection() {
        assert_eq!(
            ssh_client("192.0.2.10 50022 192.0.2.1 22"),
            "192.0.2.10 port 50022"
        );
        assert_eq!(ssh_client("garbled"), "garbled");
    }
}
