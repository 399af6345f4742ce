//! `sg-agent apply FILE [--dry-run] [--ingress-hook [DEV=]HOOK]... [--confirm DURATION]
//! [--force]`: the apply transaction ([`crate::agent::Agent::apply`]) and what it changed, as
//! text or JSON. From an SSH session (`SSH_CONNECTION`) the apply is checked first (L2); with
//! `--confirm` the timer that reverts it is started (L1, [`super::confirm`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::{Globals, HookArgs, desc, open_agent};
use crate::agent::{ApplyOptions, ApplyOutcome, Diff, FileSource, SshConnection};
use crate::error;

#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    /// Print what would change and touch nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pub(super) hooks: HookArgs,
    #[command(flatten)]
    template: super::template::TemplateArgs,
    /// Revert to the policy enforced now unless `sg-agent confirm` arrives within DURATION
    /// (e.g. 90s, 5m, 1m30s; a plain number is seconds). Survives the end of the session.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    confirm: Option<Duration>,
    /// Apply even when the SSH pre-flight finds that the policy would refuse a new SSH
    /// connection from this session's client.
    #[arg(long)]
    force: bool,
    /// Audit mode (L3) from the moment the policy is in: what it drops passes and is reported
    /// (`audit_would_drop_*`); `sg-agent audit off` enforces it.
    #[arg(long, conflicts_with = "dry_run")]
    audit: bool,
}

/// `90`, `90s`, `5m`, `1m30s`, `1h`, `500ms`: at least one second in total, at most a day.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = rest.parse::<u64>() {
        rest = "";
        total = Duration::from_secs(n);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before a unit (s, m, h, ms)"))?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            u => return Err(format!("{s:?}: unknown unit {u:?} (use s, m, h or ms)")),
        };
        rest = &rest[unit..];
    }
    if total < Duration::from_secs(1) || total > Duration::from_secs(86400) {
        return Err(format!("{s:?}: a deadline between 1 s and 24 h"));
    }
    Ok(total)
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    let src = FileSource(a.file.clone(), a.template.inputs()?);
    if a.confirm.is_some() && a.dry_run {
        return Err(error::usage("--confirm and --dry-run exclude each other"));
    }
    let out = agent.apply(
        &src,
        ApplyOptions {
            dry_run: a.dry_run,
            ingress: a.hooks.plan(),
            admin: SshConnection::from_env(),
            force: a.force,
            confirm: a.confirm,
            confirm_policy_only: false,
        },
    )?;
    if a.audit {
        agent.dataplane()?.set_audit(true)?;
    }
    let timer = match (a.confirm, agent.pending()?) {
        (Some(_), Some(p)) => Some(super::confirm::start_timer(g, &agent, &p)?),
        _ => None,
    };
    if g.json {
        let mut v = serde_json::to_value(&out)?;
        if let (Some(t), Some(p)) = (&timer, agent.pending()?) {
            v["confirm"] = serde_json::json!({ "pending": p, "timer": t });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_apply(&out);
        if a.audit {
            println!(
                "audit mode ON: what this policy drops passes and is counted (audit_would_drop_*); sg-agent audit off enforces it"
            );
        }
        if let Some(t) = timer {
            println!("{t}; confirm with `sg-agent confirm` (from a new SSH session)");
        }
    }
    Ok(())
}

/// The text form of an apply's outcome: a line per change, then the timing.
pub fn print_apply(out: &ApplyOutcome) {
    let verb = if out.dry_run {
        "would change"
    } else {
        "changed"
    };
    if out.diff.is_empty() {
        println!(
            "{}: no change to groups, rules, members or interfaces",
            out.source
        );
    } else {
        println!("{}: {verb}:", out.source);
    }
    print_diff(&out.diff);
    for a in &out.attached {
        println!("  attached {a}");
    }
    for a in &out.detached {
        println!("  detached {a}");
    }
    for n in &out.notes {
        println!("  note: {n}");
    }
    if out.dry_run {
        println!(
            "dry run: nothing was changed (compile {:.1} ms)",
            out.compile_ms
        );
    } else {
        println!(
            "applied generation {} ({} map entries): in effect after {:.1} ms (compile {:.1} ms, total {:.1} ms)",
            out.generation, out.entries, out.to_effect_ms, out.compile_ms, out.total_ms
        );
    }
}

fn print_diff(d: &Diff) {
    for gr in &d.groups_added {
        println!("  + group {gr}");
    }
    for gr in &d.groups_removed {
        println!("  - group {gr}");
    }
    for (sign, rules) in [("+", &d.rules_added), ("-", &d.rules_removed)] {
        for (id, r) in rules {
            println!(
                "  {sign} rule {id} {} {}: {}{}",
                r.group,
                r.direction,
                r.text,
                desc(&r.description)
            );
        }
    }
    for (gr, (add, rem)) in &d.members {
        for m in add {
            println!("  + member {m} of {gr}");
        }
        for m in rem {
            println!("  - member {m} of {gr}");
        }
    }
    for (sign, ifs) in [("+", &d.interfaces_added), ("~", &d.interfaces_changed)] {
        for (dev, i) in ifs {
            println!(
                "  {sign} interface {dev} ({}) groups {}",
                i.interface,
                i.groups.join(", ")
            );
        }
    }
    for (dev, i) in &d.interfaces_removed {
        println!("  - interface {dev} ({})", i.interface);
    }
}
