//! `sg-agent apply FILE [--dry-run] [--ingress-hook [DEV=]HOOK]...`: the apply transaction
//! ([`crate::agent::Agent::apply`]) and what it changed, as text or JSON.

use std::path::PathBuf;

use anyhow::Result;

use super::{Globals, HookArgs, desc, open_agent};
use crate::agent::{ApplyOptions, ApplyOutcome, Diff, FileSource};

#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    /// Print what would change and touch nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pub(super) hooks: HookArgs,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    let src = FileSource(a.file.clone());
    let out = agent.apply(
        &src,
        ApplyOptions {
            dry_run: a.dry_run,
            ingress: a.hooks.plan(),
        },
    )?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_apply(&out);
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
