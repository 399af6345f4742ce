//! The commands behind `sg-agent`: each takes parsed arguments, does its work through the
//! library's layers, and prints text or JSON. Errors that mean "your input is wrong" are
//! [`Error::InvalidInput`] (exit code 2, nothing changed); everything else is a runtime error.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::agent::{self, Agent, ApplyOptions, ApplyOutcome, FileSource};
use crate::config;
use crate::dataplane::Capacities;
use crate::error::Error;

/// Options every command shares.
pub struct Globals {
    pub json: bool,
    pub state_dir: Option<PathBuf>,
    /// `--capacity NAME=N`: sizes of maps this agent creates (pinned maps keep theirs).
    pub capacities: Vec<String>,
}

/// Parses `--capacity NAME=N` values over the defaults.
pub fn parse_capacities(specs: &[String]) -> Result<Capacities> {
    let mut c = Capacities::default();
    for spec in specs {
        let bad = || {
            Error::InvalidInput(format!(
                "--capacity {spec}: expected NAME=N with NAME one of ifaces, peers, ports, ct, \
                 ct_new, frags, rule_slots, events_bytes"
            ))
        };
        let (name, n) = spec.split_once('=').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad().into());
        }
        let field = match name.trim() {
            "ifaces" => &mut c.ifaces,
            "peers" => &mut c.peers,
            "ports" => &mut c.ports,
            "ct" => &mut c.ct,
            "ct_new" => &mut c.ct_new,
            "frags" => &mut c.frags,
            "rule_slots" => &mut c.rule_slots,
            "events_bytes" => &mut c.events_bytes,
            _ => return Err(bad().into()),
        };
        *field = n;
    }
    Ok(c)
}

/// Opens the namespace's agent with the global options.
pub fn open_agent(g: &Globals) -> Result<Agent> {
    let mut a = Agent::open(g.state_dir.as_deref())?;
    a.capacities = parse_capacities(&g.capacities)?;
    for w in &a.warnings {
        eprintln!("warning: {w}");
    }
    Ok(a)
}

pub use crate::error::usage;

/// Loads and validates a policy file; warnings go to stderr.
pub fn load_policy(file: &Path) -> Result<config::Loaded> {
    match config::load_file(file) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{w}");
            }
            Ok(l)
        }
        Err(d) => Err(Error::InvalidInput(d.to_string()).into()),
    }
}

/// `sg-agent check FILE`
pub fn check(g: &Globals, file: &Path) -> Result<()> {
    let loaded = load_policy(file)?;
    if g.json {
        let p = &loaded.policy;
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "format": loaded.format.name(),
            "groups": p.groups.values().map(|gr| serde_json::json!({
                "id": gr.id.as_str(), "name": gr.name,
                "ingress": gr.ingress.len(), "egress": gr.egress.len(),
            })).collect::<Vec<_>>(),
            "prefix_lists": p.prefix_lists.len(),
            "interfaces": p.interfaces.iter().map(|i| serde_json::json!({
                "name": i.name, "addresses": i.addresses,
                "groups": i.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", loaded.summary());
        println!("{}: OK", file.display());
    }
    Ok(())
}

/// `sg-agent apply FILE [--dry-run]`
pub fn apply(g: &Globals, file: &Path, dry_run: bool, hook: &str) -> Result<()> {
    let ingress = agent::parse_hook(hook)?;
    let mut a = open_agent(g)?;
    let src = FileSource(file.to_path_buf());
    let out = a.apply(&src, ApplyOptions { dry_run, ingress })?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_apply(&out);
    }
    Ok(())
}

pub fn print_apply(out: &ApplyOutcome) {
    let d = &out.diff;
    let verb = if out.dry_run {
        "would change"
    } else {
        "changed"
    };
    if d.is_empty() {
        println!(
            "{}: no change to groups, rules, members or interfaces",
            out.source
        );
    } else {
        println!("{}: {verb}:", out.source);
    }
    for gr in &d.groups_added {
        println!("  + group {gr}");
    }
    for gr in &d.groups_removed {
        println!("  - group {gr}");
    }
    for (id, r) in &d.rules_added {
        println!(
            "  + rule {id} {} {}: {}{}",
            r.group,
            r.direction,
            r.text,
            desc(&r.description)
        );
    }
    for (id, r) in &d.rules_removed {
        println!(
            "  - rule {id} {} {}: {}{}",
            r.group,
            r.direction,
            r.text,
            desc(&r.description)
        );
    }
    for (gr, (add, rem)) in &d.members {
        for m in add {
            println!("  + member {m} of {gr}");
        }
        for m in rem {
            println!("  - member {m} of {gr}");
        }
    }
    for (dev, i) in &d.interfaces_added {
        println!(
            "  + interface {dev} ({}) groups {}",
            i.interface,
            i.groups.join(", ")
        );
    }
    for (dev, i) in &d.interfaces_changed {
        println!(
            "  ~ interface {dev} ({}) groups {}",
            i.interface,
            i.groups.join(", ")
        );
    }
    for (dev, i) in &d.interfaces_removed {
        println!("  - interface {dev} ({})", i.interface);
    }
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

fn desc(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(" \"{d}\"")).unwrap_or_default()
}

/// `sg-agent status`
pub fn status(g: &Globals) -> Result<()> {
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
        println!(
            "  {} (ifindex {}, {}): ingress {}, egress {}; groups {}",
            i.device,
            i.ifindex,
            i.interface,
            i.ingress,
            i.egress,
            i.groups.join(", ")
        );
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// `sg-agent counters [--watch N]`
pub fn counters(g: &Globals, watch: Option<u64>) -> Result<()> {
    let mut a = open_agent(g)?;
    loop {
        let c = a.counters()?;
        if g.json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            if watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print_counters(&c);
        }
        match watch {
            Some(n) => std::thread::sleep(std::time::Duration::from_secs(n.max(1))),
            None => return Ok(()),
        }
    }
}

pub fn print_counters(c: &agent::Counters) {
    println!(
        "{:<22} {:<12} {:<8} {:>10} {:>12}  rule",
        "rule id", "group", "dir", "packets", "bytes"
    );
    for r in &c.rules {
        println!(
            "{:<22} {:<12} {:<8} {:>10} {:>12}  {}{}",
            r.id,
            r.meta.group,
            r.meta.direction,
            r.packets,
            r.bytes,
            r.meta.text,
            desc(&r.meta.description)
        );
    }
    println!();
    println!("{:<28} {:>10}", "reason", "packets");
    for (r, n) in &c.reasons {
        if *n > 0 || !r.is_pass() {
            println!("{:<28} {:>10}", r.name(), n);
        }
    }
    println!(
        "\nconntrack: {} confirmed, {} unconfirmed, {} available, exceeded {}",
        c.conntrack.ct_count, c.conntrack.new_count, c.conntrack.ct_available, c.conntrack.exceeded
    );
}

/// `sg-agent conntrack [list]`
pub fn conntrack_list(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let entries = a.conntrack()?;
    if g.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "table": format!("{:?}", e.table).to_lowercase(),
                    "ifindex": e.key.ifindex,
                    "proto": agent::proto_name(e.key.proto),
                    "local": e.local, "local_port": e.ports().0,
                    "remote": e.remote, "remote_port": e.ports().1,
                    "state": e.state_name(),
                    "opened": if e.val.origin == sg_common::DIR_INGRESS { "inbound" } else { "outbound" },
                    "tracked": true,
                    "age_s": e.age.as_secs(), "idle_s": e.idle.as_secs(),
                    "timeout_s": e.timeout.as_secs(), "timeout_left_s": e.timeout_left.as_secs(),
                    "packets": e.val.packets, "bytes": e.val.bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<7} {:<28} {:<28} {:<8} {:<11} {:>7} {:>9}",
        "proto", "local", "remote", "opened", "state", "age s", "left s"
    );
    for e in &entries {
        println!(
            "{:<7} {:<28} {:<28} {:<8} {:<11} {:>7} {:>9}",
            agent::proto_name(e.key.proto),
            format!("{}:{}", e.local, e.ports().0),
            format!("{}:{}", e.remote, e.ports().1),
            if e.val.origin == sg_common::DIR_INGRESS {
                "in"
            } else {
                "out"
            },
            e.state_name(),
            e.age.as_secs(),
            e.timeout_left.as_secs()
        );
    }
    println!(
        "{} tracked flows (untracked flows, C4, keep no state)",
        entries.len()
    );
    Ok(())
}

/// `sg-agent conntrack flush`
pub fn conntrack_flush(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let n = a.flush_conntrack()?;
    if g.json {
        println!("{}", serde_json::json!({ "flushed": n }));
    } else {
        println!("flushed {n} tracked flows");
    }
    Ok(())
}

pub use agent::ExplainQuery;

/// `sg-agent explain ...`
pub fn explain(g: &Globals, q: &ExplainQuery) -> Result<()> {
    let mut a = open_agent(g)?;
    let e = a.explain(q)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        let verdict = if e.kernel_pass { "ALLOWED" } else { "DROPPED" };
        println!(
            "{} {} on {} ({}):",
            e.direction, e.packet, e.device, e.interface
        );
        match (&e.kernel_rule, e.kernel_pass) {
            (Some(r), true) => println!("  {verdict}: {} by rule {r}", e.kernel_reason),
            _ => println!("  {verdict}: {}", e.kernel_reason),
        }
        println!(
            "  reference model: {} {}{}",
            if e.model_pass { "pass" } else { "drop" },
            e.model_reason,
            e.model_rule
                .as_ref()
                .map(|r| format!(" rule {r}"))
                .unwrap_or_default()
        );
        println!(
            "  real program ({} via BPF_PROG_TEST_RUN): {} {}{}",
            e.kernel_hook,
            if e.kernel_pass { "pass" } else { "drop" },
            e.kernel_reason,
            e.kernel_rule
                .as_ref()
                .map(|r| format!(" rule {r}"))
                .unwrap_or_default()
        );
        println!(
            "  they {}",
            if e.agree {
                "agree"
            } else {
                "DISAGREE (please report this)"
            }
        );
        if e.allowing.is_empty() {
            println!(
                "  no rule of {} allows it (E1: anything not allowed is dropped)",
                e.groups.join(", ")
            );
            if e.candidates.is_empty() {
                println!(
                    "  the interface's groups have no {} rule for this protocol",
                    e.direction
                );
            } else {
                println!("  {} rules for this protocol:", e.direction);
                for c in &e.candidates {
                    println!("    {c}");
                }
            }
        } else {
            println!("  rules that allow it (the first is charged, E4):");
            for r in &e.allowing {
                println!("    {r}");
            }
        }
        for f in &e.live_flows {
            println!("  live tracked flow with this peer: {f}");
        }
    }
    if e.agree {
        Ok(())
    } else {
        anyhow::bail!("the reference model and the program disagree")
    }
}

/// `sg-agent detach`
pub fn detach(g: &Globals) -> Result<()> {
    let a = Agent::open_for_detach(g.state_dir.as_deref())?;
    for w in &a.warnings {
        eprintln!("warning: {w} (removed anyway)");
    }
    let d = a.detach()?;
    let gone = d.interfaces;
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "detached": gone, "daemon_stopped": d.daemon })
        );
        return Ok(());
    }
    if let Some(pid) = d.daemon {
        println!("stopped the daemon (pid {pid})");
    }
    if gone.is_empty() {
        println!("nothing was attached; pins and state removed");
    } else {
        println!(
            "detached {}; pins and state removed (enforcement stopped)",
            gone.join(", ")
        );
    }
    Ok(())
}

pub use crate::daemon::{DaemonOptions, run as daemon_run};

/// `sg-agent daemon --config FILE`
pub fn daemon(g: &Globals, opts: DaemonOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let caps = parse_capacities(&g.capacities)?;
    rt.block_on(daemon_run(
        g.state_dir.clone(),
        caps,
        opts,
        crate::daemon::shutdown_signal(),
    ))
}
