//! Attaching the programs to an interface: ingress by XDP (native, falling back to generic
//! SKB mode) or TC, egress always TC. TC uses TCX links (kernel >= 6.6), falling back to a
//! clsact qdisc and a netlink filter on older kernels.
//!
//! Which ingress hook is best depends on the device (docs/toolchain.md: native XDP on veth
//! costs TCP throughput, TC keeps GRO), so the caller chooses; this module only makes the
//! choice work or says clearly why it did not.
//!
//! Links live as long as this process unless pinned (a follow-up: see `LoadOptions::pin_dir`).
//! A netlink TC filter outlives the process, so [`Dataplane::detach`] removes what it added.

use anyhow::{Context, Result, anyhow};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::xdp::XdpLinkId;
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
