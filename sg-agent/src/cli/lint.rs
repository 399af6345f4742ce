//! `sg-agent lint [FILE] [--fail-on SEVERITY]`: the best-practice checks of [`crate::lint`]
//! on a policy file (loaded exactly as `check` loads it; needs no privileges) or, without a
//! FILE, on the policy this namespace enforces, with its counters (SG008). Exit 1 when a
//! finding reaches `--fail-on`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};

use super::template::TemplateArgs;
use super::{Globals, load_policy_with, open_agent};
use crate::lint::{self, Finding, Severity};
use crate::policy::{Policy, RuleId};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (any format `check` reads). Without it: the enforced policy, with
    /// the rules that matched no packet since it was applied.
    pub(super) file: Option<PathBuf>,
    /// Exit 1 when a finding has this severity or a higher one.
    #[arg(long, value_name = "SEVERITY", default_value = "error")]
    pub(super) fail_on: Severity,
    #[command(flatten)]
    template: TemplateArgs,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    if a.file.is_none() && a.template != TemplateArgs::default() {
        // The enforced policy was evaluated with the inputs saved at its apply.
        return Err(crate::error::usage(
            "template options need a FILE (the enforced policy keeps the inputs it was applied with)",
        ));
    }
    let (source, findings) = match &a.file {
        Some(file) => {
            let loaded = load_policy_with(file, &a.template.inputs()?)?;
            (file.display().to_string(), lint::lint(&loaded.policy))
        }
        None => live(g)?,
    };
    print(g.json, &source, &findings)?;
    let failing = findings.iter().filter(|f| f.severity >= a.fail_on).count();
    if failing > 0 {
        bail!(
            "{failing} finding(s) at or above {} (--fail-on {})",
            a.fail_on,
            a.fail_on
        );
    }
    Ok(())
}

/// The enforced policy (its saved text, re-validated) and its rule counters; the age is the
/// time since the last apply (a rule kept from an earlier apply has counted for longer).
fn live(g: &Globals) -> Result<(String, Vec<Finding>)> {
    let mut agent = open_agent(g)?;
    let loaded = agent.applied_policy()?;
    let counters = agent.counters()?;
    let packets: BTreeMap<RuleId, u64> = counters
        .rules
        .iter()
        .map(|r| (RuleId(r.id.clone()), r.packets))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age = now.saturating_sub(agent.state().applied_at);
    let p: &Policy = &loaded.policy;
    let mut findings = lint::lint(p);
    findings.extend(lint::matched_nothing(p, &packets, age));
    let source = format!(
        "{} (enforced, applied {} ago)",
        agent.state().source,
        lint::age(age)
    );
    Ok((source, findings))
}

fn print(json: bool, source: &str, findings: &[Finding]) -> Result<()> {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    if json {
        let v = serde_json::json!({
            "source": source,
            "findings": findings.iter().map(|f| serde_json::json!({
                "id": f.id, "severity": f.severity.name(), "subject": f.subject,
                "file": f.origin.file, "line": f.origin.line, "column": f.origin.column,
                "path": f.origin.path, "why": f.why, "hint": f.hint,
            })).collect::<Vec<_>>(),
            "errors": count(Severity::Error),
            "warnings": count(Severity::Warning),
            "infos": count(Severity::Info),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for f in findings {
        println!(
            "{}: {} {} {}: {}\n  hint: {}",
            f.origin, f.severity, f.id, f.subject, f.why, f.hint
        );
    }
    println!(
        "{source}: {} error(s), {} warning(s), {} info",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    Ok(())
}
