//! The dataplane: the only code that imports aya. It loads the embedded eBPF object (map
//! capacities set before load), attaches the programs to interfaces, swaps policy
//! generations atomically ([`Dataplane::apply`]), reads counters and conntrack, and runs frames
//! through the programs with BPF_PROG_TEST_RUN for the fixture and differential tests.
//!
//! It must not decide anything about policy: it writes what the compiler produced
//! ([`MapImage`]) and reports what the kernel counted. One file per concern:
//! ```text
//! mod.rs      load, capacities, the typed map handles
//! apply.rs    generation swap with an in-memory mirror of the kernel's policy maps
//! attach.rs   XDP / TC ingress and TC egress hooks, fallbacks and their hints
//! read.rs     rule/reason counters, conntrack statistics and entries, flush, sweep
//! testrun.rs  BPF_PROG_TEST_RUN of one frame, with the reason and rule it was charged to
//! verify.rs   what a generation means, independent of scope and class numbering
//! ```
//! Pinning hangs off [`LoadOptions::pin_dir`] (a bpffs directory): maps are pinned by name
//! under `<pin_dir>/abi-<ABI_VERSION>/` and adopted by the next load (policy, conntrack and
//! counters survive a restart), and the mirror is rebuilt from the kernel so the next apply
//! works against the truth. The links are pinned too ([`Dataplane::attach_pinned`], attach.rs):
//! enforcement survives the process, and an upgrade replaces the programs inside them with
//! `attach_to_link`.

mod apply;
mod attach;
mod clock;
mod hook;
mod read;
mod testrun;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};
use sg_common::{
    Config, FlowKey, FlowVal, FragKey, FragVal, IfaceConf, IfaceKey, PeerData, PortKey, PortPage,
    RuleCounter, capacity, config_flags, ct_flags, iface_flags, maps, progs,
};

pub use apply::ApplyReport;
pub use attach::{
    AttachReport, IngressHook, PinGuard, PinnedIface, XdpMode, ifindex, pinned_capacities,
    pinned_ifaces, unpin_iface,
};
pub use hook::{DriverInfo, HookChoice, HookPlan, HookSpec, auto_hook, driver_info};
pub use read::{CtEntry, CtStats, CtTable, ip_of, monotonic_ns};
pub use testrun::{Hook, RunResult};
pub use verify::Meaning;

/// Map capacities (`max_entries`), set before the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub ifaces: u32,
    /// Both generations together: an apply writes the next beside the live one.
    pub peers: u32,
    pub ports: u32,
    /// Confirmed flows (C6's "allowance" for established flows).
    pub ct: u32,
    /// Unconfirmed flows.
    pub ct_new: u32,
    pub frags: u32,
    /// Rule counter slots; slot 0 means "no rule".
    pub rule_slots: u32,
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub events_bytes: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            ifaces: capacity::IFACES,
            peers: capacity::PEERS,
            ports: capacity::PORTS,
            ct: capacity::CT,
            ct_new: capacity::CT_NEW,
            frags: capacity::FRAGS,
            rule_slots: capacity::RULE_SLOTS,
            events_bytes: capacity::EVENTS_BYTES,
        }
    }
}

/// One `--capacity NAME=N`: the size of one map, by its capacity name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacitySpec {
    field: CapacityField,
    n: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CapacityField {
    Ifaces,
    Peers,
    Ports,
    Ct,
    CtNew,
    Frags,
    RuleSlots,
    EventsBytes,
}

impl CapacityField {
    /// The names users give, in the order the help lists them.
    const ALL: [(&'static str, CapacityField); 8] = [
        ("ifaces", CapacityField::Ifaces),
        ("peers", CapacityField::Peers),
        ("ports", CapacityField::Ports),
        ("ct", CapacityField::Ct),
        ("ct_new", CapacityField::CtNew),
        ("frags", CapacityField::Frags),
        ("rule_slots", CapacityField::RuleSlots),
        ("events_bytes", CapacityField::EventsBytes),
    ];
}

impl std::str::FromStr for CapacitySpec {
    type Err = crate::error::Error;

    /// `NAME=N` with N > 0 (surrounding blanks are tolerated, as before).
    fn from_str(spec: &str) -> Result<CapacitySpec, Self::Err> {
        let bad = || {
            crate::error::Error::InvalidInput(String::from(
                "expected NAME=N with NAME one of ifaces, peers, ports, ct, ct_new, frags, \
                 rule_slots, events_bytes, and N > 0",
            ))
        };
        let (name, n) = spec.split_once('=').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let field = CapacityField::ALL
            .iter()
            .find(|(known, _)| *known == name.trim())
            .map(|(_, f)| *f)
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        Ok(CapacitySpec { field, n })
    }
}

impl Capacities {
    /// The defaults with each `--capacity NAME=N` applied in turn (a later one wins).
    pub fn with_specs(specs: &[CapacitySpec]) -> Capacities {
        let mut c = Capacities::default();
        for s in specs {
            c.set(*s);
        }
        c
    }

    /// Sets the one capacity `spec` names.
    pub fn set(&mut self, spec: CapacitySpec) {
        let field = match spec.field {
            CapacityField::Ifaces => &mut self.ifaces,
            CapacityField::Peers => &mut self.peers,
            CapacityField::Ports => &mut self.ports,
            CapacityField::Ct => &mut self.ct,
            CapacityField::CtNew => &mut self.ct_new,
            CapacityField::Frags => &mut self.frags,
            CapacityField::RuleSlots => &mut self.rule_slots,
            CapacityField::EventsBytes => &mut self.events_bytes,
        };
        *field = spec.n;
    }

    /// Small private tables sized for one policy (`explain`'s throw-away copy): room for
    /// every rule's counter slot and the default peer and port tables.
    pub fn small_for(policy: &crate::policy::Policy) -> Capacities {
        let rules = policy.all_rules().count() as u32;
        let mut c = Capacities::small();
        c.rule_slots = c
            .rule_slots
            .max((rules + 2).next_power_of_two())
            .max(Capacities::default().rule_slots);
        c.peers = Capacities::default().peers;
        c.ports = Capacities::default().ports;
        c
    }

    /// Small tables for tests: fast to create, fast to scan, easy to fill.
    pub fn small() -> Capacities {
        Capacities {
            ifaces: 64,
            peers: 4096,
            ports: 4096,
            ct: 1024,
            ct_new: 1024,
            frags: 256,
            rule_slots: 1024,
            events_bytes: 1 << 16,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub capacities: Capacities,
    /// A directory on a bpffs (e.g. /sys/fs/bpf/sg): maps are pinned there by name and
    /// adopted by the next load. None: everything lives as long as this process.
    pub pin_dir: Option<PathBuf>,
    /// The eBPF object to load; None: the one embedded at build time
    /// ([`crate::EBPF_OBJECT`]).
    pub object: Option<Vec<u8>>,
}

/// Typed handles of the maps the agent reads and writes.
pub(crate) struct Maps {
    pub active: Array<MapData, u32>,
    pub ifaces: HashMap<MapData, IfaceKey, IfaceConf>,
    pub peers: LpmTrie<MapData, PeerData, sg_common::PeerVal>,
    pub ports: HashMap<MapData, PortKey, PortPage>,
    pub ct: HashMap<MapData, FlowKey, FlowVal>,
    pub ct_new: HashMap<MapData, FlowKey, FlowVal>,
    pub frags: HashMap<MapData, FragKey, FragVal>,
    pub rule_cnt: PerCpuArray<MapData, RuleCounter>,
    pub reason_cnt: PerCpuArray<MapData, u64>,
    pub ct_stats: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, Config>,
    pub nacl_ports: Array<MapData, u64>,
}

/// A loaded sg program set with its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    caps: Capacities,
    mirror: apply::Mirror,
    attached: BTreeMap<u32, attach::Attachment>,
    /// The event ring, taken from the object on first use.
    events: Option<aya::maps::RingBuf<MapData>>,
}

/// Maps are pinned in `<pin_dir>/abi-<ABI_VERSION>/`.
const ABI_DIR_PREFIX: &str = "abi-";

impl Dataplane {
    /// Loads the object, creating (or, with `pin_dir`, adopting) its maps, and loads the three
    /// programs into the kernel. Nothing is attached yet; every packet of an interface without
    /// policy is dropped once it is (`DropNoPolicy`).
    pub fn load(opts: LoadOptions) -> Result<Dataplane> {
        let c = opts.capacities;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::IFACES, c.ifaces)
            .map_max_entries(maps::PEERS, c.peers)
            .map_max_entries(maps::PORTS, c.ports)
            .map_max_entries(maps::CT, c.ct)
            .map_max_entries(maps::CT_NEW, c.ct_new)
            .map_max_entries(maps::FRAGS, c.frags)
            .map_max_entries(maps::RULE_COUNTERS, c.rule_slots)
            .map_max_entries(maps::EVENTS, c.events_bytes);
        let pin_paths: Vec<(&'static str, PathBuf)>;
        if let Some(dir) = &opts.pin_dir {
            let maps_dir = prepare_pin_dir(dir)?;
            pin_paths = maps::ALL.iter().map(|n| (*n, maps_dir.join(n))).collect();
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let object: &[u8] = opts.object.as_deref().unwrap_or(crate::EBPF_OBJECT);
        let mut ebpf = loader.load(object).context(
            "loading the sg eBPF object (maps and programs); run as root (CAP_BPF, CAP_NET_ADMIN)",
        )?;

        {
            let name = progs::XDP_INGRESS;
            let p: &mut Xdp = program(&mut ebpf, name)?;
            p.load()
                .with_context(|| format!("loading program {name} (the verifier log follows)"))?;
        }
        for name in [progs::TC_INGRESS, progs::TC_EGRESS] {
            let p: &mut SchedClassifier = program(&mut ebpf, name)?;
            p.load()
                .with_context(|| format!("loading program {name} (the verifier log follows)"))?;
        }

        let maps = Maps {
            active: typed(&mut ebpf, maps::ACTIVE)?,
            ifaces: typed(&mut ebpf, maps::IFACES)?,
            peers: typed(&mut ebpf, maps::PEERS)?,
            ports: typed(&mut ebpf, maps::PORTS)?,
            ct: typed(&mut ebpf, maps::CT)?,
            ct_new: typed(&mut ebpf, maps::CT_NEW)?,
            frags: typed(&mut ebpf, maps::FRAGS)?,
            rule_cnt: typed(&mut ebpf, maps::RULE_COUNTERS)?,
            reason_cnt: typed(&mut ebpf, maps::REASON_COUNTERS)?,
            ct_stats: typed(&mut ebpf, maps::CT_STATS)?,
            config: typed(&mut ebpf, maps::CONFIG)?,
            nacl_ports: typed(&mut ebpf, maps::NACL_PORTS)?,
        };
        let mut dp = Dataplane {
            ebpf,
            maps,
            caps: c,
            mirror: apply::Mirror::default(),
            attached: BTreeMap::new(),
            events: None,
        };
        // Adopted (pinned) maps may hold a live policy: start from what the kernel has.
        dp.mirror = apply::Mirror::read(&dp.maps).context("reading the policy maps")?;
        dp.calibrate_clock()?;
        Ok(dp)
    }

    pub fn capacities(&self) -> Capacities {
        self.caps
    }

    /// The generation SG_ACTIVE names (0 or 1).
    pub fn active_generation(&self) -> u32 {
        self.mirror.active
    }

    /// The generation the next image must carry (the one not live).
    pub fn next_generation(&self) -> u32 {
        1 - self.mirror.active
    }

    /// Events per second per CPU (0: none). Other settings stay.
    pub fn set_events_per_sec(&mut self, n: u32) -> Result<()> {
        let c = self.config()?;
        self.write_config(Config {
            events_per_sec: n,
            ..c
        })
    }

    /// Audit mode on or off (L3). Other settings stay.
    pub fn set_audit(&mut self, on: bool) -> Result<()> {
        let c = self.config()?;
        let flags = if on {
            c.flags | config_flags::AUDIT
        } else {
            c.flags & !config_flags::AUDIT
        };
        self.write_config(Config { flags, ..c })
    }

    /// Whether audit mode is on (L3).
    pub fn audit(&self) -> Result<bool> {
        Ok(self.config()?.flags & config_flags::AUDIT != 0)
    }

    /// Deletes the flows created while audit mode was on (L3: they end with it), except on
    /// interfaces still in audit mode of their own. Returns how many.
    pub fn end_audited_flows(&mut self) -> Result<usize> {
        let still = self.audit_ifaces();
        self.delete_flows(|k, v| v.flags & ct_flags::AUDIT != 0 && !still.contains(&k.ifindex))
    }

    /// Audit mode on or off for one interface of the live generation (L3), written in place:
    /// its other settings, the other interfaces and the generation stay. False when the live
    /// generation has no such interface. The caller holds the apply lock (SG_ACTIVE is read
    /// and written back).
    pub fn set_iface_audit(&mut self, ifindex: u32, on: bool) -> Result<bool> {
        let g = self.mirror.active;
        let key = IfaceKey {
            generation: g,
            ifindex,
        };
        let Some(conf) = self.mirror.gens[g as usize].ifaces.get(&key).copied() else {
            return Ok(false);
        };
        let flags = if on {
            conf.flags | iface_flags::AUDIT
        } else {
            conf.flags & !iface_flags::AUDIT
        };
        let conf = IfaceConf { flags, ..conf };
        self.maps
            .ifaces
            .insert(key, conf, 0)
            .context("writing SG_IFACES")?;
        self.mirror.gens[g as usize].ifaces.insert(key, conf);
        // SG_ACTIVE says whether the live generation has an auditing interface (a drop looks
        // its interface up only then): set after the interface's flag, cleared after the last
        // one's, so the datapath never skips an interface that audits. Same generation, other
        // bits kept: no flip.
        let v = self.maps.active.get(&0, 0).context("reading SG_ACTIVE")?;
        let v = if self.audit_ifaces().is_empty() {
            v & !sg_common::active::AUDIT_IFACES
        } else {
            v | sg_common::active::AUDIT_IFACES
        };
        self.maps
            .active
            .set(0, v, 0)
            .with_context(|| format!("writing {} = {v:#x}", maps::ACTIVE))?;
        Ok(true)
    }

    /// The interfaces (ifindex) the live generation puts in audit mode of their own (L3).
    pub fn audit_ifaces(&self) -> BTreeSet<u32> {
        self.mirror.gens[self.mirror.active as usize]
            .ifaces
            .iter()
            .filter(|(_, v)| v.flags & iface_flags::AUDIT != 0)
            .map(|(k, _)| k.ifindex)
            .collect()
    }

    /// Deletes the flows audit admitted on `ifindexes`, whose own audit mode ended (L3).
    /// Returns how many.
    pub fn end_audited_flows_on(&mut self, ifindexes: &BTreeSet<u32>) -> Result<usize> {
        self.delete_flows(|k, v| v.flags & ct_flags::AUDIT != 0 && ifindexes.contains(&k.ifindex))
    }

    /// Makes the datapath read its clock as calibrated jiffies (`Config::now_ns`), unless
    /// SG_CONFIG holds a calibration already (pinned maps adopted: the same boot, the same
    /// clocks). A clock that cannot be calibrated stays on the kernel's helper (tick 0): the
    /// same time, slower, and logged.
    fn calibrate_clock(&mut self) -> Result<()> {
        let c = self.config()?;
        if c.tick_ns != 0 {
            return Ok(());
        }
        let name = progs::CLOCK;
        let p: &mut Xdp = program(&mut self.ebpf, name)?;
        p.load()
            .with_context(|| format!("loading program {name} (the verifier log follows)"))?;
        match clock::calibrate(p) {
            Ok(cal) => self.write_config(Config {
                tick_ns: cal.tick_ns,
                clock_offset_ns: cal.offset_ns,
                ..c
            }),
            Err(e) => {
                log::warn!("the datapath clock stays on the kernel's helper: {e:#}");
                Ok(())
            }
        }
    }

    fn config(&self) -> Result<Config> {
        self.maps.config.get(&0, 0).context("reading SG_CONFIG")
    }

    fn write_config(&mut self, c: Config) -> Result<()> {
        self.maps.config.set(0, c, 0).context("writing SG_CONFIG")
    }
}

/// Creates the pin directory and returns where this ABI's maps live: `<dir>/abi-<N>`. bpffs
/// holds only BPF objects (no plain files), so the ABI is in the directory name. Maps pinned
/// under another ABI's directory are refused, never adopted: their layouts differ.
fn prepare_pin_dir(dir: &std::path::Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating pin directory {}; hint: it must be on a bpffs (mount -t bpf bpf /sys/fs/bpf)",
            dir.display()
        )
    })?;
    let ours = format!("{ABI_DIR_PREFIX}{}", sg_common::ABI_VERSION);
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(ABI_DIR_PREFIX) && name != ours {
            bail!(
                "{} holds maps pinned under {name}, this agent speaks ABI {}; hint: stop the \
                 old agent and remove {} (conntrack state is lost)",
                dir.display(),
                sg_common::ABI_VERSION,
                dir.join(&name).display()
            );
        }
    }
    let maps = dir.join(ours);
    std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
    Ok(maps)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| {
        anyhow!("the eBPF object has no program {name}: was it built from an older sg-ebpf?")
    })?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn typed<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or_else(|| {
        anyhow!("the eBPF object has no map {name}: was it built from an older sg-ebpf?")
    })?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type or layout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_specs_set_one_map_each_and_later_ones_win() {
        let specs: Vec<CapacitySpec> = ["ct=1048576", " ports = 24 ", "ct=8", "events_bytes=4096"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let c = Capacities::with_specs(&specs);
        assert_eq!((c.ct, c.ports, c.events_bytes), (8, 24, 4096));
        assert_eq!(c.peers, Capacities::default().peers);
    }

    #[test]
    fn bad_capacity_specs_are_invalid_input() {
        for bad in ["ports=lots", "ports", "ct=0", "conntrack=5", "ct=-1", "=5"] {
            let e = bad.parse::<CapacitySpec>().unwrap_err();
            assert!(matches!(e, crate::error::Error::InvalidInput(_)), "{bad}");
            assert!(e.to_string().contains("expected NAME=N"), "{bad}: {e}");
        }
    }
}
