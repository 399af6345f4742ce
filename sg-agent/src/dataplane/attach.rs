//! Attaching the programs to an interface: ingress by XDP (native, falling back to generic
//! SKB mode) or TC, egress always TC. TC uses TCX links (kernel >= 6.6), falling back to a
//! clsact qdisc and a netlink filter on older kernels.
//!
//! Which ingress hook is best depends on the device (docs/toolchain.md: native XDP on veth
//! costs TCP throughput, TC keeps GRO), so the caller chooses; this module only makes the
//! choice work or says clearly why it did not.
//!
//! Also the pin lifecycle of a running agent: links live as long as this process unless
//! pinned ([`Dataplane::attach_pinned`]: the agent pins them so enforcement outlives it, and
//! replaces the programs inside them atomically on the next run); pins whose link lost its
//! device are found and cleaned ([`PinnedIface::live`]); a daemon holds every pinned object
//! open ([`PinGuard`]) so removing the pins does not stop enforcement and they can be put
//! back; adopted maps are measured ([`pinned_capacities`]) and their counter slots adopted
//! ([`Dataplane::adopt_slots`]). A netlink TC filter outlives the process by itself, so
//! detaching removes what was added.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::maps::MapInfo;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use sg_common::progs;

use super::{ABI_DIR_PREFIX, Capacities, Dataplane};
use crate::image::SlotTable;

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver mode; falls back to generic (SKB) mode when the driver refuses, and says so.
    Native,
    /// Generic mode only (works on any device, runs after the skb is built).
    Skb,
}

/// The ingress hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    Xdp(XdpMode),
    Tc,
}

/// How an interface ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachReport {
    pub ifindex: u32,
    pub ingress: String,
    pub egress: String,
    /// Fallbacks taken, with the reason (empty when the first choice worked).
    pub notes: Vec<String>,
}

enum IngressLink {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

pub(crate) struct Attachment {
    ingress: IngressLink,
    egress: SchedClassifierLinkId,
}

impl Dataplane {
    /// Attaches ingress and egress programs to `iface` (a device name or a decimal ifindex).
    pub fn attach(&mut self, iface: &str, ingress: IngressHook) -> Result<AttachReport> {
        let (name, ifindex) = resolve(iface)?;
        if self.attached.contains_key(&ifindex) {
            return Err(anyhow!("{name} (ifindex {ifindex}) is already attached"));
        }
        let mut notes = Vec::new();
        let (ingress_link, ingress_desc) = match ingress {
            IngressHook::Xdp(mode) => {
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                let (id, desc) = attach_xdp(p, &name, ifindex, mode, &mut notes)?;
                (IngressLink::Xdp(id), desc)
            }
            IngressHook::Tc => {
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_INGRESS)?;
                let (id, desc) = attach_tc(p, &name, TcAttachType::Ingress, &mut notes)?;
                (IngressLink::Tc(id), desc)
            }
        };
        let egress = {
            let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_EGRESS)?;
            attach_tc(p, &name, TcAttachType::Egress, &mut notes)
        };
        let (egress_link, egress_desc) = match egress {
            Ok(x) => x,
            Err(e) => {
                // Do not leave half an attachment behind.
                let _ = self.detach_ingress(ingress_link);
                return Err(e);
            }
        };
        self.attached.insert(
            ifindex,
            Attachment {
                ingress: ingress_link,
                egress: egress_link,
            },
        );
        Ok(AttachReport {
            ifindex,
            ingress: ingress_desc,
            egress: egress_desc,
            notes,
        })
    }

    /// Detaches both programs from `iface`.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        let (name, ifindex) = resolve(iface)?;
        let a = self
            .attached
            .remove(&ifindex)
            .ok_or_else(|| anyhow!("{name} (ifindex {ifindex}) is not attached"))?;
        let r1 = self.detach_ingress(a.ingress);
        let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_EGRESS)?;
        let r2 = p
            .detach(a.egress)
            .with_context(|| format!("detaching {} from {name}", progs::TC_EGRESS));
        r1.and(r2)
    }

    /// The ifindexes this dataplane has attached to.
    pub fn attached(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    fn detach_ingress(&mut self, link: IngressLink) -> Result<()> {
        match link {
            IngressLink::Xdp(id) => {
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                p.detach(id).context("detaching the XDP program")
            }
            IngressLink::Tc(id) => {
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_INGRESS)?;
                p.detach(id).context("detaching the TC ingress program")
            }
        }
    }
}

fn attach_xdp(
    p: &mut Xdp,
    name: &str,
    ifindex: u32,
    mode: XdpMode,
    notes: &mut Vec<String>,
) -> Result<(XdpLinkId, String)> {
    if mode == XdpMode::Native {
        match p.attach_to_if_index(ifindex, aya::programs::XdpMode::Driver) {
            Ok(id) => return Ok((id, "xdp (native)".into())),
            Err(e) => notes.push(format!(
                "native XDP on {name} failed ({e}); using generic (SKB) mode, which is slower; \
                 hint: the driver may lack XDP support, or choose the TC ingress hook"
            )),
        }
    }
    let id = p
        .attach_to_if_index(ifindex, aya::programs::XdpMode::Skb)
        .with_context(|| {
            format!(
                "attaching XDP (generic mode) to {name}; hint: another XDP program may be \
                 attached (ip link show {name}), or use the TC ingress hook"
            )
        })?;
    Ok((id, "xdp (generic/skb)".into()))
}

fn attach_tc(
    p: &mut SchedClassifier,
    name: &str,
    at: TcAttachType,
    notes: &mut Vec<String>,
) -> Result<(SchedClassifierLinkId, String)> {
    let dir = if at == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    let tcx_err =
        match p.attach_with_options(name, at, TcAttachOptions::TcxOrder(LinkOrder::default())) {
            Ok(id) => return Ok((id, format!("tcx {dir}"))),
            Err(e) => e,
        };
    // Kernels before 6.6 have no TCX: a clsact qdisc and a netlink filter instead.
    notes.push(format!(
        "TCX {dir} on {name} failed ({tcx_err}); using clsact/netlink"
    ));
    match aya::programs::tc::qdisc_add_clsact(name) {
        Ok(()) => {}
        Err(aya::programs::tc::TcError::AlreadyAttached) => {}
        Err(e) => {
            // Some kernels report an existing clsact as EEXIST through netlink.
            let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(_))
                && e.to_string().contains("exists");
            if !exists {
                return Err(anyhow!(e)).with_context(|| format!("adding a clsact qdisc to {name}"));
            }
        }
    }
    let id = p
        .attach_with_options(name, at, TcAttachOptions::Netlink(NlOptions::default()))
        .with_context(|| format!("attaching TC {dir} to {name} (TCX failed: {tcx_err})"))?;
    Ok((id, format!("tc clsact {dir} (netlink)")))
}

/// A device name or a decimal ifindex -> (name, ifindex).
pub(crate) fn resolve(iface: &str) -> Result<(String, u32)> {
    if let Ok(idx) = iface.parse::<u32>() {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
        if p.is_null() {
            return Err(anyhow!(
                "no interface with ifindex {idx} in this network namespace"
            ));
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
        let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        return Ok((name, idx));
    }
    Ok((iface.to_string(), ifindex(iface)?))
}

/// The ifindex of a device in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(anyhow!(
            "no interface named {name} in this network namespace"
        ));
    }
    Ok(idx)
}

/// Where an interface's pinned links live: `<links_dir>/<ifindex>-in-<hook>` and
/// `<links_dir>/<ifindex>-out-tc`. The hook is in the name so a later agent knows what it is
/// replacing without asking the kernel.
fn pin_path(links_dir: &Path, ifindex: u32, ingress: bool, hook: &str) -> PathBuf {
    let dir = if ingress { "in" } else { "out" };
    links_dir.join(format!("{ifindex}-{dir}-{hook}"))
}

/// The pinned links of one interface, as found in the links directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedIface {
    pub ifindex: u32,
    /// "xdp" or "tc".
    pub ingress_hook: String,
    pub has_egress: bool,
    /// Every pinned link of it is still attached to this ifindex. False when the device was
    /// deleted (the kernel keeps the pinned link but it judges nothing any more).
    pub live: bool,
}

/// Lists the interfaces with pinned links under `links_dir`.
pub fn pinned_ifaces(links_dir: &Path) -> Vec<PinnedIface> {
    let mut out: BTreeMap<u32, PinnedIface> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '-');
        let (Some(idx), Some(dir), Some(hook)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(ifindex) = idx.parse::<u32>() else {
            continue;
        };
        let entry = out.entry(ifindex).or_insert(PinnedIface {
            ifindex,
            ingress_hook: String::new(),
            has_egress: false,
            live: true,
        });
        if pinned_link_ifindex(&e.path()).ok() != Some(ifindex) {
            entry.live = false;
        }
        match dir {
            "in" => entry.ingress_hook = hook.to_string(),
            "out" => entry.has_egress = true,
            _ => {}
        }
    }
    out.into_values().collect()
}

/// Unpins (and so detaches) every link of `ifindex` under `links_dir`.
pub fn unpin_iface(links_dir: &Path, ifindex: u32) -> Result<()> {
    let mut errors = Vec::new();
    for hook in ["xdp", "tc"] {
        for ingress in [true, false] {
            let p = pin_path(links_dir, ifindex, ingress, hook);
            if !p.exists() {
                continue;
            }
            // The link dies with its last reference: the pin, then this fd.
            match PinnedLink::from_pin(&p) {
                Ok(l) => {
                    if let Err(e) = l.unpin() {
                        errors.push(format!("unpin {}: {e}", p.display()));
                    }
                }
                Err(e) => {
                    errors.push(format!("open {}: {e}", p.display()));
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

impl Dataplane {
    /// Attaches to `iface` with links pinned under `links_dir`, so enforcement outlives this
    /// process. When the interface already has pinned links with the same ingress hook, the
    /// programs inside them are replaced atomically (bpf_link_update): there is no instant
    /// without a program, which is how an upgrade or a restart keeps enforcement. A different
    /// ingress hook than before is attached first and the old one removed after.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        ingress: IngressHook,
        links_dir: &Path,
    ) -> Result<AttachReport> {
        let (name, ifindex) = resolve(iface)?;
        create_private_dir(links_dir)?;
        // Pins of this ifindex whose link lost its device (deleted, then a new device got the
        // same ifindex) cannot be updated (ENOLINK): remove them and attach afresh.
        for stale in stale_link_pins(links_dir, ifindex) {
            let _ = std::fs::remove_file(&stale);
        }
        let hook = match ingress {
            IngressHook::Xdp(_) => "xdp",
            IngressHook::Tc => "tc",
        };
        let in_path = pin_path(links_dir, ifindex, true, hook);
        let out_path = pin_path(links_dir, ifindex, false, "tc");
        if in_path.exists() && out_path.exists() {
            return self.replace_pinned(&name, ifindex, ingress, &in_path, &out_path);
        }
        // Another ingress hook may be pinned: attach the new one first (for a moment both
        // judge ingress, each correctly), then drop the old.
        let previous = pinned_ifaces(links_dir)
            .into_iter()
            .find(|p| p.ifindex == ifindex);
        if out_path.exists() {
            // Keep the egress link (replace its program); attach only ingress anew.
            let mut report = self.replace_egress(&name, &out_path)?;
            let (in_desc, notes) = self.attach_ingress_pinned(&name, ifindex, ingress, &in_path)?;
            report.ingress = in_desc;
            report.notes.extend(notes);
            if let Some(p) = previous
                && p.ingress_hook != hook
            {
                let old = pin_path(links_dir, ifindex, true, &p.ingress_hook);
                if let Ok(l) = PinnedLink::from_pin(&old) {
                    let _ = l.unpin();
                }
            }
            return Ok(report);
        }
        let mut report = self.attach(&name, ingress)?;
        let a = self
            .attached
            .remove(&ifindex)
            .expect("attach recorded the links");
        let ingress_pinned = match a.ingress {
            IngressLink::Xdp(id) => {
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                pin_or_keep(p.take_link(id)?, &in_path)
            }
            IngressLink::Tc(id) => {
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_INGRESS)?;
                pin_or_keep(p.take_link(id)?, &in_path)
            }
        };
        let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_EGRESS)?;
        let egress_pinned = pin_or_keep(p.take_link(a.egress)?, &out_path);
        for (what, ok) in [("ingress", ingress_pinned), ("egress", egress_pinned)] {
            if !ok? {
                report.notes.push(format!(
                    "the {what} attachment of {name} is a netlink one and cannot be pinned: it \
                     stays until `sg-agent detach` (or the device goes)"
                ));
            }
        }
        Ok(report)
    }

    fn replace_pinned(
        &mut self,
        name: &str,
        ifindex: u32,
        ingress: IngressHook,
        in_path: &Path,
        out_path: &Path,
    ) -> Result<AttachReport> {
        let fd: FdLink = PinnedLink::from_pin(in_path)
            .with_context(|| format!("opening pinned link {}", in_path.display()))?
            .into();
        let desc = match ingress {
            IngressHook::Xdp(_) => {
                let link = XdpLink::try_from(fd).context("pinned ingress link is not XDP")?;
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                let id = p.attach_to_link(link).with_context(|| {
                    format!("replacing the XDP program on {name} (bpf_link_update)")
                })?;
                drop(p.take_link(id)?);
                "xdp (pinned link, program replaced)"
            }
            IngressHook::Tc => {
                let link =
                    SchedClassifierLink::try_from(fd).context("pinned ingress link is not TC")?;
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_INGRESS)?;
                let id = p.attach_to_link(link).with_context(|| {
                    format!("replacing the TC ingress program on {name} (bpf_link_update)")
                })?;
                drop(p.take_link(id)?);
                "tcx ingress (pinned link, program replaced)"
            }
        };
        let mut report = self.replace_egress(name, out_path)?;
        report.ifindex = ifindex;
        report.ingress = desc.to_string();
        Ok(report)
    }

    fn replace_egress(&mut self, name: &str, out_path: &Path) -> Result<AttachReport> {
        let fd: FdLink = PinnedLink::from_pin(out_path)
            .with_context(|| format!("opening pinned link {}", out_path.display()))?
            .into();
        let link = SchedClassifierLink::try_from(fd).context("pinned egress link is not TC")?;
        let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_EGRESS)?;
        let id = p
            .attach_to_link(link)
            .with_context(|| format!("replacing the TC egress program on {name}"))?;
        drop(p.take_link(id)?);
        Ok(AttachReport {
            ifindex: ifindex(name).unwrap_or(0),
            ingress: String::new(),
            egress: "tcx egress (pinned link, program replaced)".into(),
            notes: Vec::new(),
        })
    }

    fn attach_ingress_pinned(
        &mut self,
        name: &str,
        ifindex: u32,
        ingress: IngressHook,
        in_path: &Path,
    ) -> Result<(String, Vec<String>)> {
        let mut notes = Vec::new();
        let desc = match ingress {
            IngressHook::Xdp(mode) => {
                let p: &mut Xdp = super::program(&mut self.ebpf, progs::XDP_INGRESS)?;
                let (id, desc) = attach_xdp(p, name, ifindex, mode, &mut notes)?;
                if !pin_or_keep(p.take_link(id)?, in_path)? {
                    notes.push(format!("the XDP attachment of {name} could not be pinned"));
                }
                desc
            }
            IngressHook::Tc => {
                let p: &mut SchedClassifier = super::program(&mut self.ebpf, progs::TC_INGRESS)?;
                let (id, desc) = attach_tc(p, name, TcAttachType::Ingress, &mut notes)?;
                if !pin_or_keep(p.take_link(id)?, in_path)? {
                    notes.push(format!(
                        "the TC ingress attachment of {name} could not be pinned"
                    ));
                }
                desc
            }
        };
        Ok((desc, notes))
    }
}

/// Pins an fd-based link at `path` (true), or, for a netlink attachment that has no fd to
/// pin, leaves it in the kernel by forgetting it (false): netlink attachments outlive the
/// process by themselves.
fn pin_or_keep<L>(link: L, path: &Path) -> Result<bool>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    match FdLink::try_from(link) {
        Ok(fd) => {
            let _ = std::fs::remove_file(path);
            fd.pin(path)
                .with_context(|| format!("pinning link at {}", path.display()))?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Creates a directory (and its parents) readable by root only: pins are a control surface.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The pins under `links_dir` named for `ifindex` whose link is not attached to it any more.
fn stale_link_pins(links_dir: &Path, ifindex: u32) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    let prefix = format!("{ifindex}-");
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .filter(|p| pinned_link_ifindex(p).ok() != Some(ifindex))
        .collect()
}

/// The ifindex a pinned XDP or TCX link is attached to; 0 once its device is gone (the
/// kernel detaches the link but the pin keeps it alive). aya 0.14's `LinkInfo` does not
/// expose it, so this asks the kernel directly (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD).
pub(crate) fn pinned_link_ifindex(path: &Path) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = bpf_obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose xdp and tcx
    // members both start with the ifindex (offset 16).
    let mut info = [0u8; 64];
    // union bpf_attr, BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info pointer.
    let mut attr = [0u64; 2];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | (info.len() as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u32::from_ne_bytes(
        info[16..20].try_into().expect("4 bytes"),
    ))
}

/// The capacities of the maps pinned under `<maps_dir>/abi-<N>`, over `requested` for the
/// maps not pinned yet. Adopting a pinned map keeps its size whatever the loader asks for, so
/// the agent must plan with the real sizes (counter slots, "available" conntrack entries).
pub fn pinned_capacities(maps_dir: &Path, requested: Capacities) -> Result<Capacities> {
    use sg_common::maps;
    let dir = maps_dir.join(format!("{ABI_DIR_PREFIX}{}", sg_common::ABI_VERSION));
    let mut c = requested;
    for (name, field) in [
        (maps::IFACES, &mut c.ifaces),
        (maps::PEERS, &mut c.peers),
        (maps::PORTS, &mut c.ports),
        (maps::CT, &mut c.ct),
        (maps::CT_NEW, &mut c.ct_new),
        (maps::FRAGS, &mut c.frags),
        (maps::RULE_COUNTERS, &mut c.rule_slots),
        (maps::EVENTS, &mut c.events_bytes),
    ] {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&p)
            .with_context(|| format!("reading the pinned map {}", p.display()))?;
        *field = info.max_entries();
    }
    Ok(c)
}

impl Dataplane {
    /// True when SG_ACTIVE in the kernel still names the generation this dataplane thinks is
    /// live. A long-lived agent (the daemon) checks it before an apply: another agent that
    /// flipped in between (a CLI apply, or one killed after its flip) makes its picture of
    /// the kernel stale, and writing the "next" generation would then write the live one.
    pub fn still_current(&self) -> Result<bool> {
        let k = self.maps.active.get(&0, 0).context("reading SG_ACTIVE")?;
        Ok(k & 1 == self.mirror.active)
    }

    /// Tells a dataplane that adopted pinned maps which counter slot belongs to which rule
    /// (the agent's state file remembers it): the next apply then zeroes only the slots it
    /// gives to new rules, and counters continue across agent restarts. Without it every
    /// slot looks new to a fresh process and every counter restarts at 0.
    pub fn adopt_slots(&mut self, slots: &SlotTable) {
        self.mirror.known_slots.extend(slots.by_rule.values());
        self.mirror.slots = slots.clone();
    }
}

/// Every pinned link and map of one agent, held open by a running daemon.
///
/// A pinned link lives as long as something references it: the pin, or an open fd. Holding
/// the fds means removing the pins (by mistake, or a tool cleaning bpffs) does not detach
/// anything, and the daemon can pin the very same objects again ([`PinGuard::restore`]):
/// policy, conntrack and counters are kept. Rebuild it after every apply (links come and go
/// with interfaces) and drop it when the namespace is detached on purpose, or the links
/// would stay attached until the daemon exits.
///
/// Raw fds rather than aya's handles: `FdLink::pin` consumes the link, so a failed re-pin
/// would close the last reference and detach it.
pub struct PinGuard {
    held: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// The directories read, and each pin's inode then (bpffs gives every new pin a new
    /// inode): whether the pins are still the ones held, without opening them again.
    dirs: [PathBuf; 2],
    inodes: BTreeSet<(PathBuf, u64)>,
}

impl PinGuard {
    /// Opens every link pinned in `links_dir` and every map pinned under `maps_dir`.
    pub fn hold(links_dir: &Path, maps_dir: &Path) -> Result<PinGuard> {
        let abi = maps_dir.join(format!("{ABI_DIR_PREFIX}{}", sg_common::ABI_VERSION));
        let dirs = [links_dir.to_path_buf(), abi];
        let inodes = pin_inodes(&dirs);
        let mut held = Vec::new();
        for (p, _) in &inodes {
            let fd =
                bpf_obj_get(p).with_context(|| format!("opening pinned object {}", p.display()))?;
            held.push((p.clone(), fd));
        }
        Ok(PinGuard { held, dirs, inodes })
    }

    /// Whether the same pins are there as when held (none added, removed or pinned again):
    /// then holding them again would hold the same objects. A pin replaced between the
    /// listing and the opening in [`PinGuard::hold`] reads as changed: held again.
    pub fn is_current(&self) -> bool {
        pin_inodes(&self.dirs) == self.inodes
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The pins that have disappeared.
    pub fn missing(&self) -> Vec<PathBuf> {
        self.held
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !p.exists())
            .cloned()
            .collect()
    }

    /// Pins the held objects again where their pins disappeared. Returns how many.
    pub fn restore(&self) -> Result<usize> {
        let mut n = 0;
        for (p, fd) in &self.held {
            if p.exists() {
                continue;
            }
            create_private_dir(p.parent().expect("a pin has a directory"))?;
            bpf_obj_pin(fd, p).with_context(|| format!("pinning {} again", p.display()))?;
            n += 1;
        }
        Ok(n)
    }
}

/// The pins in `dirs` with their inodes.
fn pin_inodes(dirs: &[PathBuf]) -> BTreeSet<(PathBuf, u64)> {
    use std::os::unix::fs::DirEntryExt;
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| (e.path(), e.ino()))
        .collect()
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// BPF_OBJ_GET / BPF_OBJ_PIN share one attribute layout: pathname, bpf_fd, file_flags.
fn bpf_obj(cmd: libc::c_long, path: &Path, fd: u32) -> std::io::Result<libc::c_long> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 3];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd);
    // SAFETY: bpf(2) reads `attr` (size given) and the NUL-terminated path it points to.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bpf_obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

fn bpf_obj_pin(fd: &std::os::fd::OwnedFd, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    bpf_obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(|_| ())
}
