//! The agent: one namespace's enforcement over time. Ties the layers together in order —
//! validated policy -> binding to local devices -> compile -> attach (pinned links) ->
//! atomic swap -> state file — and answers questions about what is enforced (status,
//! counters, conntrack, explain).
//!
//! ```text
//! mod.rs      the Agent: open, the policy source seam, pins and state loading, the dataplane
//! apply.rs    the apply transaction (whole, dry run, membership delta) and its test stops
//! preflight.rs  L2: would the administrator's next SSH connection still get in (the model)
//! confirm.rs  L1: `--confirm` deadlines, their marker, confirm, rollback and revert
//! audit.rs    L3 per device: `audit on|off DEV` in place, and which devices audit
//! summary.rs  what an applied policy amounts to on this host, and the diff of two of them
//! query.rs    status, counters, conntrack list/flush/sweep and their report types
//! explain.rs  one packet's verdict from the reference model and from the real program
//! detach.rs   the way out: links, maps, pins, state and the daemon removed
//! verify.rs   the live maps against a fresh compile of a policy, by meaning
//! ```
//!
//! It prints nothing (the CLI does) and imports neither the CLI nor the daemon: they drive
//! it. docs/agent.md "Failure behaviour" lists the outcomes.
//!
//! Where policy comes from is one seam, [`PolicySource`]: a file ([`FileSource`]) or the
//! fleet's store (`store::StoreSource`).

mod apply;
mod audit;
mod confirm;
mod detach;
mod explain;
mod path;
mod preflight;
mod query;
mod summary;
mod verify;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use sg_common::ABI_VERSION;

use crate::config::{self, Loaded};
use crate::dataplane::{self, Capacities, Dataplane, LoadOptions, PinGuard};
use crate::error::Error;
use crate::state::{AgentState, StateDir};

pub use apply::{ApplyOptions, ApplyOutcome, parse_hook, test_stop_point};
pub use audit::{AuditedDevice, DeviceAudit};
pub use confirm::{MARKER, Pending, Previous, RevertRecord, RevertWhy, Reverted};
pub use detach::Detached;
pub use explain::{ExplainProto, ExplainQuery, Explanation, IcmpTypeCode};
pub use path::{PathExplanation, PathStep, explain_path};
pub use preflight::{SshConnection, Verdict};
pub use query::{Counters, IfaceStatus, LastRevert, RuleCount, Status, proto_name, ser_ct};
pub use summary::{Diff, diff, rule_line, summarize};
pub use verify::Verified;

/// Where the desired policy comes from: a file or the fleet's store.
pub trait PolicySource {
    /// A human name for messages (a path, a store key).
    fn describe(&self) -> String;
    /// The current policy, validated. Invalid input is an [`Error::InvalidInput`] error.
    fn load(&self) -> Result<Loaded>;
    /// The raw text, kept beside the state so `explain` judges what is enforced.
    fn text(&self) -> Result<String>;
    /// A fingerprint that changes when the policy may have changed (for reloads).
    fn fingerprint(&self) -> Option<(u64, SystemTime)>;
    /// How a CloudFormation text is evaluated (saved beside the text).
    fn inputs(&self) -> config::TemplateInputs {
        config::TemplateInputs::default()
    }
}

/// A policy file (native YAML, CloudFormation or describe-security-groups JSON), and the
/// inputs a template is evaluated with (empty for the other formats).
pub struct FileSource(pub PathBuf, pub config::TemplateInputs);

impl PolicySource for FileSource {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
    fn load(&self) -> Result<Loaded> {
        config::load_file_with(&self.0, &self.1)
            .map_err(|d| Error::InvalidInput(d.to_string()).into())
    }
    fn text(&self) -> Result<String> {
        std::fs::read_to_string(&self.0).with_context(|| format!("read {}", self.0.display()))
    }
    fn fingerprint(&self) -> Option<(u64, SystemTime)> {
        let md = std::fs::metadata(&self.0).ok()?;
        Some((md.len(), md.modified().ok()?))
    }
    fn inputs(&self) -> config::TemplateInputs {
        self.1.clone()
    }
}

/// A policy given as text (a document the daemon put together), validated like a file.
pub struct TextSource {
    pub name: String,
    pub text: String,
}

impl PolicySource for TextSource {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn load(&self) -> Result<Loaded> {
        config::load_str(&self.text, &self.name)
            .map_err(|d| Error::InvalidInput(d.to_string()).into())
    }
    fn text(&self) -> Result<String> {
        Ok(self.text.clone())
    }
    fn fingerprint(&self) -> Option<(u64, SystemTime)> {
        None
    }
}

/// How to open a namespace's agent.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// `--state-dir`: pins under DIR/pins, state under DIR/run. None: the namespace's
    /// defaults (and then pins left by a deleted namespace of the same inode are removed).
    pub state_dir: Option<PathBuf>,
    /// Sizes of the maps this agent creates; adopted (pinned) maps keep theirs.
    pub capacities: Capacities,
    /// A daemon's agent: once it has applied, finding the namespace detached under it (by
    /// `sg-agent detach`) stops an apply with [`Error::DetachedUnderUs`] instead of starting
    /// over.
    pub stop_if_detached: bool,
}

/// One namespace's agent: its state directory, remembered state and loaded dataplane.
pub struct Agent {
    sd: StateDir,
    state: AgentState,
    dp: Option<Dataplane>,
    /// Map sizes for maps created by this agent; updated to the real sizes when the
    /// dataplane is loaded (pinned maps keep theirs).
    capacities: Capacities,
    /// Things worth telling the user that did not stop the command.
    warnings: Vec<String>,
    stop_if_detached: bool,
    /// What this agent last applied whole, kept so that a reload that only changes
    /// memberships is a delta of the live image (a daemon's common case).
    live: Option<apply::Live>,
}

impl Agent {
    /// Opens the namespace's state (without loading anything into the kernel yet). Refuses a
    /// corrupted state file or one written by an agent of another ABI, touching nothing.
    pub fn open(opts: OpenOptions) -> Result<Agent> {
        let sd = StateDir::for_current_netns(opts.state_dir.as_deref())?;
        let mut warnings = Vec::new();
        let state = load_state(&sd, opts.state_dir.is_none(), &mut warnings)?;
        Ok(Agent::new(sd, state, warnings, opts))
    }

    /// Like [`Agent::open`] but for `detach`, the way out: an unreadable or foreign state
    /// does not stop it (it is removed with everything else).
    pub fn open_for_detach(opts: OpenOptions) -> Result<Agent> {
        let sd = StateDir::for_current_netns(opts.state_dir.as_deref())?;
        let mut warnings = Vec::new();
        let state = match sd.load() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                warnings.push(format!("{e:#}"));
                AgentState::default()
            }
        };
        Ok(Agent::new(sd, state, warnings, opts))
    }

    fn new(sd: StateDir, state: AgentState, warnings: Vec<String>, opts: OpenOptions) -> Agent {
        Agent {
            sd,
            state,
            dp: None,
            capacities: opts.capacities,
            warnings,
            stop_if_detached: opts.stop_if_detached,
            live: None,
        }
    }

    /// The namespace's pin and state directories.
    pub fn state_dir(&self) -> &StateDir {
        &self.sd
    }

    /// What the state file records (as of the last open, apply or refresh).
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Things found while opening that did not stop it (stale pins removed, an unreadable
    /// state that `detach` removes anyway).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The map sizes: the requested ones, or the real ones once the dataplane is loaded.
    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// True when this namespace has an applied policy.
    pub fn is_applied(&self) -> bool {
        self.state.abi != 0
    }

    fn require_applied(&self) -> Result<()> {
        if !self.is_applied() {
            let pinned = dataplane::pinned_ifaces(&self.links_dir());
            if !pinned.is_empty() {
                bail!(
                    "nothing is recorded as applied in this network namespace (no state in {}), \
                     but {} interface(s) have pinned sg programs in {}: an apply was \
                     interrupted; hint: sg-agent apply FILE, or sg-agent detach",
                    self.sd.run.display(),
                    pinned.len(),
                    self.links_dir().display()
                );
            }
            bail!(
                "nothing is applied in this network namespace (no state in {}); hint: \
                 sg-agent apply FILE",
                self.sd.run.display()
            );
        }
        Ok(())
    }

    /// Read-only commands adopt the pinned maps; when they are gone they must not create
    /// empty ones in their place.
    fn require_pins(&self) -> Result<()> {
        if self.dp.is_some() {
            // A loaded dataplane holds its maps (a daemon; pins can be put back).
            return Ok(());
        }
        let abi = self
            .maps_dir()
            .join(format!("abi-{ABI_VERSION}"))
            .join(sg_common::maps::ACTIVE);
        if !abi.exists() {
            bail!(
                "a policy is recorded in {} but its pinned maps are gone from {} (removed \
                 by hand?): nothing is enforced; hint: sg-agent apply FILE, or sg-agent detach",
                self.sd.run.display(),
                self.sd.pins.display()
            );
        }
        Ok(())
    }

    /// The loaded dataplane, adopting pinned maps (at their real sizes) and the counter slots
    /// the state remembers.
    pub fn dataplane(&mut self) -> Result<&mut Dataplane> {
        if self.dp.is_none() {
            self.sd.create()?;
            let maps_dir = self.maps_dir();
            let hint = "loading the sg dataplane; hint: run as root (CAP_BPF, CAP_NET_ADMIN, \
                        CAP_PERFMON)";
            self.capacities =
                dataplane::pinned_capacities(&maps_dir, self.capacities).context(hint)?;
            let mut dp = Dataplane::load(LoadOptions {
                capacities: self.capacities,
                pin_dir: Some(maps_dir),
                object: None,
            })
            .context(hint)?;
            if self.is_applied() {
                dp.adopt_slots(&self.state.slot_table());
            }
            self.dp = Some(dp);
        }
        Ok(self.dp.as_mut().expect("just loaded"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.sd.pins.join("links")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.sd.pins.join("maps")
    }

    /// Holds every pinned object open (a daemon does, so removed pins can be put back).
    pub fn hold_pins(&self) -> Result<PinGuard> {
        PinGuard::hold(&self.links_dir(), &self.maps_dir())
    }

    /// Another agent (a CLI `apply` beside a daemon, or one killed half-way) may have changed
    /// the namespace since this one loaded it: re-read the state, and drop the loaded
    /// dataplane when its picture of the kernel is stale, so the next apply never writes
    /// into the live generation. Call with the lock held.
    fn refresh(&mut self) -> Result<()> {
        let mut warnings = Vec::new();
        let disk = load_state(&self.sd, false, &mut warnings)?;
        if disk != self.state {
            self.state = disk;
            self.dp = None;
        } else if let Some(dp) = &self.dp
            && !dp.still_current().unwrap_or(false)
        {
            self.dp = None;
        }
        if self.dp.is_none() {
            self.live = None;
        }
        Ok(())
    }

    /// The policy as last applied (its saved text, re-validated).
    pub fn applied_policy(&self) -> Result<Loaded> {
        self.require_applied()?;
        let text = std::fs::read_to_string(self.sd.applied_policy_file())
            .context("reading the applied policy text")?;
        let name = std::fs::read_to_string(self.sd.run.join("policy.applied.name"))
            .unwrap_or_else(|_| "policy.applied".into());
        // Saved by an agent before template inputs existed: none.
        let inputs = std::fs::read_to_string(self.sd.run.join("policy.applied.inputs"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        config::load_str_with(&text, &name, &inputs)
            .map_err(|d| anyhow!("the applied policy no longer loads: {d}"))
    }
}

/// Reads the state file and checks that this agent may adopt it: same ABI, same network
/// namespace (by cookie: an inode can be reused after its namespace is deleted; the pins of
/// a dead namespace are then removed rather than adopted).
fn load_state(sd: &StateDir, check_netns: bool, warnings: &mut Vec<String>) -> Result<AgentState> {
    let state = sd.load()?.unwrap_or_default();
    if state.abi != 0 && state.abi != ABI_VERSION {
        bail!(
            "the state in {} was written by an agent speaking ABI {}, this one speaks ABI \
             {ABI_VERSION}; enforcement is left as it is. hint: `sg-agent detach` (with either \
             binary) removes it, then apply again (conntrack state is lost)",
            sd.run.display(),
            state.abi,
        );
    }
    if check_netns && state.netns_cookie != 0 {
        // Kernels without SO_NETNS_COOKIE (< 5.14) record 0 and skip the check.
        let here = crate::state::netns_cookie().unwrap_or(state.netns_cookie);
        if here != state.netns_cookie {
            remove_dead_namespace(sd, warnings);
            return Ok(AgentState::default());
        }
    }
    Ok(state)
}

/// The pins and state of a deleted namespace whose inode this one reuses: removed, not
/// adopted (their links point at devices of another namespace).
fn remove_dead_namespace(sd: &StateDir, warnings: &mut Vec<String>) {
    let links = sd.pins.join("links");
    for p in dataplane::pinned_ifaces(&links) {
        let _ = dataplane::unpin_iface(&links, p.ifindex);
    }
    let _ = std::fs::remove_dir_all(&sd.pins);
    let _ = std::fs::remove_dir_all(&sd.run);
    let msg = format!(
        "removed pins and state left by a deleted network namespace whose inode this one \
         reuses ({}, {})",
        sd.pins.display(),
        sd.run.display()
    );
    log::warn!("{msg}");
    warnings.push(msg);
}
