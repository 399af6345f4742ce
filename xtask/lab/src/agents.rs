//! The real `sg-agent` binary run inside lab hosts, as a person would run it:
//! `ip netns exec NS sg-agent apply FILE`, `counters`, `conntrack`, `detach`, with `--json`
//! where the lab reads the answer. Remembers every namespace it applied in and detaches them
//! all on drop (also when a test panics), then checks that no pins remain under
//! `/sys/fs/bpf/sg`.
//!
//! Owns nothing of the agent's own state: it only drives the binary. It must never run the
//! agent outside a namespace the lab created.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use sg_testkit::netns::{Netns, Proc};

/// Where the agent of a namespace keeps its pins by default (see `state.rs`).
const PIN_ROOT: &str = "/sys/fs/bpf/sg";

/// The sg-agent binary and the namespaces it was applied in.
pub struct Agents {
    bin: PathBuf,
    /// Namespace name -> its inode (where its pins live).
    applied: Mutex<BTreeMap<String, u64>>,
}

/// One rule's counter from `sg-agent counters --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct RuleCount {
    pub id: String,
    pub group: String,
    pub direction: String,
    pub text: String,
    pub description: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

/// `sg-agent counters --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Counters {
    pub rules: Vec<RuleCount>,
    pub reasons: BTreeMap<String, u64>,
}

impl Counters {
    /// Packets charged to a rule id (0 when the rule is not applied).
    pub fn rule(&self, id: &str) -> u64 {
        self.rules
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.packets)
    }
    /// Packets counted under a reason (`pass_related_icmp`, `drop_no_rule`, ...).
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons.get(name).copied().unwrap_or(0)
    }
    /// The rule with this description in this group and direction (tests name rules by
    /// what they say rather than by derived ids).
    pub fn find(&self, group: &str, direction: &str, text: &str) -> Option<&RuleCount> {
        self.rules
            .iter()
            .find(|r| r.group == group && r.direction == direction && r.text == text)
    }
}

/// One tracked flow from `sg-agent conntrack --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Flow {
    pub proto: String,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: String,
    pub opened: String,
    pub idle_s: u64,
    pub timeout_s: u64,
    pub timeout_left_s: u64,
}

impl Agents {
    pub fn new(bin: impl Into<PathBuf>) -> Agents {
        Agents {
            bin: bin.into(),
            applied: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `ip netns exec NS sg-agent ARGS...`, bounded in time, whatever its exit status.
    pub fn run(&self, ns: &Netns, args: &[&str]) -> Result<Output> {
        let bin = self.bin.display().to_string();
        let mut all = vec![bin.as_str()];
        all.extend_from_slice(args);
        ns.run(&all, Duration::from_secs(60))
    }

    fn run_ok(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let out = self.run(ns, args)?;
        if !out.status.success() {
            bail!(
                "sg-agent {} in {} failed ({}):\n{}{}",
                args.join(" "),
                ns.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sg-agent apply FILE` (text output, for people), remembered for detach.
    pub fn apply(&self, ns: &Netns, policy: &Path) -> Result<String> {
        self.apply_with(ns, policy, &[])
    }

    /// `sg-agent apply [EXTRA...] FILE`, e.g. `--ingress-hook tc`.
    pub fn apply_with(&self, ns: &Netns, policy: &Path, extra: &[&str]) -> Result<String> {
        self.remember(ns)?;
        let file = policy.display().to_string();
        let mut args = vec!["apply"];
        args.extend_from_slice(extra);
        args.push(&file);
        self.run_ok(ns, &args)
    }

    /// `sg-agent apply FILE` expected to fail: its exit code and stderr.
    pub fn apply_failing(&self, ns: &Netns, policy: &Path) -> Result<(i32, String)> {
        self.remember(ns)?;
        let out = self.run(ns, &["apply", &policy.display().to_string()])?;
        if out.status.success() {
            bail!(
                "sg-agent apply {} in {} succeeded",
                policy.display(),
                ns.name()
            );
        }
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `ip netns exec NS sg-agent daemon ARGS...` in the background: killed when the returned
    /// process drops; the namespace is detached with the others when these agents drop.
    pub fn daemon(&self, ns: &Netns, args: &[&str]) -> Result<Proc> {
        self.remember(ns)?;
        let bin = self.bin.display().to_string();
        let mut all = vec![bin.as_str(), "daemon"];
        all.extend_from_slice(args);
        ns.spawn(&all)
    }

    fn remember(&self, ns: &Netns) -> Result<()> {
        let ino = ns.inode()?;
        self.applied
            .lock()
            .expect("not poisoned")
            .insert(ns.name().to_string(), ino);
        Ok(())
    }

    pub fn counters(&self, ns: &Netns) -> Result<Counters> {
        let text = self.run_ok(ns, &["--json", "counters"])?;
        serde_json::from_str(&text).context("parsing sg-agent counters --json")
    }

    /// `sg-agent counters` as printed for people.
    pub fn counters_text(&self, ns: &Netns) -> Result<String> {
        self.run_ok(ns, &["counters"])
    }

    pub fn conntrack(&self, ns: &Netns) -> Result<Vec<Flow>> {
        let text = self.run_ok(ns, &["--json", "conntrack"])?;
        serde_json::from_str(&text).context("parsing sg-agent conntrack --json")
    }

    pub fn status_text(&self, ns: &Netns) -> Result<String> {
        self.run_ok(ns, &["status"])
    }

    pub fn status(&self, ns: &Netns) -> Result<serde_json::Value> {
        let text = self.run_ok(ns, &["--json", "status"])?;
        serde_json::from_str(&text).context("parsing sg-agent status --json")
    }

    /// `sg-agent detach` in one namespace, then checks its pins are gone.
    pub fn detach(&self, ns: &Netns) -> Result<()> {
        let ino = self.applied.lock().expect("not poisoned").remove(ns.name());
        self.run_ok(ns, &["detach"])?;
        if let Some(ino) = ino {
            check_unpinned(ns.name(), ino)?;
        }
        Ok(())
    }

    /// [`Agents::detach_all`], which must leave nothing behind: panics with what it left.
    pub fn detach_all_cleanly(&self) {
        let errors = self.detach_all();
        assert!(errors.is_empty(), "cleanup: {errors:#?}");
    }

    /// Detaches every namespace applied in (that still exists); the errors, if any.
    pub fn detach_all(&self) -> Vec<String> {
        let all = std::mem::take(&mut *self.applied.lock().expect("not poisoned"));
        let mut errors = Vec::new();
        for (name, ino) in all {
            if !Path::new("/run/netns").join(&name).exists() {
                errors.push(format!(
                    "{name} was deleted before sg-agent detach: pins may remain in \
                     {PIN_ROOT}/netns-{ino}"
                ));
                continue;
            }
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &name, "timeout", "-s", "KILL", "60"])
                .arg(&self.bin)
                .arg("detach")
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    if let Err(e) = check_unpinned(&name, ino) {
                        errors.push(format!("{e:#}"));
                    }
                }
                Ok(o) => errors.push(format!(
                    "sg-agent detach in {name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => errors.push(format!("sg-agent detach in {name}: {e}")),
            }
        }
        errors
    }

    /// Forgets every namespace without detaching (`sg-lab --keep` leaves enforcement on).
    pub fn keep(&self) {
        self.applied.lock().expect("not poisoned").clear();
    }
}

fn check_unpinned(name: &str, ino: u64) -> Result<()> {
    let p = Path::new(PIN_ROOT).join(format!("netns-{ino}"));
    if p.exists() {
        bail!(
            "sg-agent detach in {name} left pins behind in {}",
            p.display()
        );
    }
    Ok(())
}

impl Drop for Agents {
    fn drop(&mut self) {
        for e in self.detach_all() {
            eprintln!("sg lab cleanup: {e}");
        }
    }
}
