//! Attaching the programs to an interface: ingress by XDP (native, falling back to generic
//! SKB mode) or TC, egress always TC. TC uses TCX links (kernel >= 6.6), falling back to a
//! clsact qdisc and a netlink filter on older kernels.
//!
//! Which ingress hook is best depends on the device (docs/toolchain.md: native XDP on veth
//! costs TCP throughput, TC keeps GRO), so the caller chooses; this module only makes the
//! choice work or says clearly why it did not.
//!
//! Links live as long as this process unless pinned ([`Dataplane::attach_pinned`]: the agent
//! pins them so enforcement outlives it, and replaces the programs inside them atomically on
//! the next run). A netlink TC filter outlives the process by itself, so detaching removes
//! what was added.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use sg_common::progs;

use super::Dataplane;

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
        });
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
        std::fs::create_dir_all(links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
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
