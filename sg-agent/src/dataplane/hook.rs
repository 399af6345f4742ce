//! Choosing a device's ingress hook: `--ingress-hook auto` (the default) looks at the device's
//! driver and picks the hook that costs least there; `xdp`, `xdp-skb` and `tc` force one,
//! for every device or for one (`DEV=HOOK`).
//!
//! Why auto is not simply "XDP everywhere": on veth, virtio_net and the other virtual drivers
//! a native XDP program makes the driver give up GRO/TSO and its receive offloads, so a TCP
//! stream gets about a third of its unfiltered throughput (TC keeps 0.92-1.0x, issue 19).
//! Physical NIC drivers keep their offloads under XDP and there XDP is the cheaper hook.
//!
//! The decision is a pure function of the driver ([`auto_hook`]); reading the driver is one
//! ETHTOOL_GDRVINFO ioctl ([`driver_info`]). This module attaches nothing.

use std::collections::BTreeMap;

use super::attach::{IngressHook, XdpMode};

/// A hook as the command line names it: one of the three, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookChoice {
    /// Per device, by its driver ([`auto_hook`]).
    Auto,
    Fixed(IngressHook),
}

impl HookChoice {
    pub fn name(self) -> &'static str {
        match self {
            HookChoice::Auto => "auto",
            HookChoice::Fixed(IngressHook::Xdp(XdpMode::Native)) => "xdp",
            HookChoice::Fixed(IngressHook::Xdp(XdpMode::Skb)) => "xdp-skb",
            HookChoice::Fixed(IngressHook::Tc) => "tc",
        }
    }
}

impl std::str::FromStr for HookChoice {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<HookChoice, Self::Err> {
        match s {
            "auto" => Ok(HookChoice::Auto),
            "xdp" => Ok(HookChoice::Fixed(IngressHook::Xdp(XdpMode::Native))),
            "xdp-skb" => Ok(HookChoice::Fixed(IngressHook::Xdp(XdpMode::Skb))),
            "tc" => Ok(HookChoice::Fixed(IngressHook::Tc)),
            other => Err(crate::error::Error::InvalidInput(format!(
                "unknown ingress hook {other:?}; hint: use auto, xdp, xdp-skb or tc"
            ))),
        }
    }
}

/// One `--ingress-hook` value: `HOOK` (every device) or `DEV=HOOK` (that device only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSpec {
    pub device: Option<String>,
    pub hook: HookChoice,
}

impl std::str::FromStr for HookSpec {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<HookSpec, Self::Err> {
        match s.split_once('=') {
            Some((dev, hook)) if !dev.is_empty() => Ok(HookSpec {
                device: Some(dev.to_string()),
                hook: hook.parse()?,
            }),
            Some(_) => Err(crate::error::Error::InvalidInput(format!(
                "{s:?} names no device; hint: DEV=HOOK, e.g. eth0=xdp"
            ))),
            None => Ok(HookSpec {
                device: None,
                hook: s.parse()?,
            }),
        }
    }
}

/// Which hook each device gets: the default (`auto` unless `--ingress-hook HOOK`) and the
/// devices forced by `--ingress-hook DEV=HOOK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookPlan {
    pub default: HookChoice,
    pub devices: BTreeMap<String, HookChoice>,
}

impl Default for HookPlan {
    fn default() -> HookPlan {
        HookPlan {
            default: HookChoice::Auto,
            devices: BTreeMap::new(),
        }
    }
}

/// The plan as its `--ingress-hook` values, comma-separated: `auto`, `tc,eth0=xdp` (what a
/// pending confirmation records, to attach a revert's devices the same way).
impl std::fmt::Display for HookPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.default.name())?;
        for (dev, hook) in &self.devices {
            write!(f, ",{dev}={}", hook.name())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for HookPlan {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<HookPlan, Self::Err> {
        let specs = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<HookSpec>, _>>()?;
        Ok(HookPlan::from_specs(&specs))
    }
}

impl HookPlan {
    /// The same hook for every device.
    pub fn fixed(hook: IngressHook) -> HookPlan {
        HookPlan {
            default: HookChoice::Fixed(hook),
            devices: BTreeMap::new(),
        }
    }

    /// The plan of the repeated `--ingress-hook` values; a later value for the same device
    /// (or the default) replaces an earlier one, as a repeated flag usually does.
    pub fn from_specs(specs: &[HookSpec]) -> HookPlan {
        let mut plan = HookPlan::default();
        for s in specs {
            match &s.device {
                Some(d) => {
                    plan.devices.insert(d.clone(), s.hook);
                }
                None => plan.default = s.hook,
            }
        }
        plan
    }

    /// The hook forced on `device` by `--ingress-hook DEV=HOOK`, if any.
    pub fn forced(&self, device: &str) -> Option<HookChoice> {
        self.devices.get(device).copied()
    }

    /// The hook `device` gets and why (None when the user chose it for every device, which
    /// needs no explanation). `driver` is asked only under `auto`.
    pub fn choose(
        &self,
        device: &str,
        driver: impl FnOnce() -> Option<DriverInfo>,
    ) -> (IngressHook, Option<String>) {
        let (choice, forced) = match self.forced(device) {
            Some(c) => (c, true),
            None => (self.default, false),
        };
        match choice {
            HookChoice::Auto => {
                let (hook, why) = auto_hook(driver().as_ref());
                (hook, Some(format!("auto: {why}")))
            }
            HookChoice::Fixed(h) if forced => (
                h,
                Some(format!("forced: --ingress-hook {device}={}", choice.name())),
            ),
            HookChoice::Fixed(h) => (h, None),
        }
    }
}

/// What ETHTOOL_GDRVINFO says about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// e.g. "veth", "virtio_net", "ixgbe".
    pub driver: String,
    /// The bus address ("0000:00:05.0"); empty for a device no hardware stands behind.
    pub bus_info: String,
}

/// Drivers whose native XDP turns off GRO/TSO or receive offloads, or that have no native XDP
/// at all (so "xdp" would be generic mode, slower than TC): every virtual device we know.
const TC_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "bridge",
    "bonding",
    "team",
    "vxlan",
    "geneve",
    "macvlan",
    "macvtap",
    "ipvlan",
    "ipvtap",
    "dummy",
    "vrf",
    "wireguard",
    "802.1Q VLAN Support",
    "netkit",
    "nlmon",
    "ifb",
];

/// `auto`'s decision for a device: its hook and the reason, for apply's output and `status`.
///
/// 1. Driver unreadable -> TC: it works on any device, and guessing XDP could cost 3x.
/// 2. A known virtual driver -> TC: native XDP would turn off GRO/TSO there.
/// 3. No bus address (some other software device) -> TC, for the same reason.
/// 4. Otherwise a NIC driver, which keeps its offloads under XDP -> native XDP (falling back
///    to generic mode, with a note, when the driver has no XDP after all).
pub fn auto_hook(info: Option<&DriverInfo>) -> (IngressHook, String) {
    let Some(info) = info else {
        return (
            IngressHook::Tc,
            "driver unreadable; TC works on any device".into(),
        );
    };
    let d = &info.driver;
    if TC_DRIVERS.contains(&d.as_str()) {
        return (
            IngressHook::Tc,
            format!("driver {d}; native XDP would turn off GRO/TSO here"),
        );
    }
    if info.bus_info.is_empty() {
        return (
            IngressHook::Tc,
            format!("driver {d} is a virtual device; native XDP would turn off GRO/TSO here"),
        );
    }
    (
        IngressHook::Xdp(XdpMode::Native),
        format!("driver {d} keeps its offloads under native XDP"),
    )
}

/// The driver of `device` in the current network namespace (ETHTOOL_GDRVINFO), or None when
/// it cannot be read (no such device, or a device without ethtool operations).
pub fn driver_info(device: &str) -> Option<DriverInfo> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32], bus_info[32],
    // erom_version[32], reserved2[12], then five u32 counts.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        counts: [u32; 5],
    }
    const _: () = assert!(std::mem::size_of::<DrvInfo>() == 196);
    if device.is_empty() || device.len() >= libc::IF_NAMESIZE {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        counts: [0; 5],
    };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above) with its NUL.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(device.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a plain datagram socket, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new socket nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads ifr and writes at most size_of::<DrvInfo>() bytes to `info`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &raw mut ifr,
        )
    };
    if rc < 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let driver = text(&info.driver);
    if driver.is_empty() {
        return None;
    }
    Some(DriverInfo {
        driver,
        bus_info: text(&info.bus_info),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, bus: &str) -> DriverInfo {
        DriverInfo {
            driver: driver.into(),
            bus_info: bus.into(),
        }
    }

    #[test]
    fn auto_chooses_tc_on_virtual_drivers_and_native_xdp_on_nic_drivers() {
        use IngressHook::{Tc, Xdp};
        for (driver, bus, want, why) in [
            (
                "veth",
                "",
                Tc,
                "driver veth; native XDP would turn off GRO/TSO here",
            ),
            (
                "virtio_net",
                "0000:00:03.0",
                Tc,
                "driver virtio_net; native XDP would turn off GRO/TSO here",
            ),
            (
                "tun",
                "tap",
                Tc,
                "driver tun; native XDP would turn off GRO/TSO here",
            ),
            (
                "bridge",
                "N/A",
                Tc,
                "driver bridge; native XDP would turn off GRO/TSO here",
            ),
            (
                "bonding",
                "",
                Tc,
                "driver bonding; native XDP would turn off GRO/TSO here",
            ),
            (
                "vxlan",
                "",
                Tc,
                "driver vxlan; native XDP would turn off GRO/TSO here",
            ),
            (
                "geneve",
                "",
                Tc,
                "driver geneve; native XDP would turn off GRO/TSO here",
            ),
            (
                "macvlan",
                "",
                Tc,
                "driver macvlan; native XDP would turn off GRO/TSO here",
            ),
            (
                "ipvlan",
                "",
                Tc,
                "driver ipvlan; native XDP would turn off GRO/TSO here",
            ),
            (
                "dummy",
                "",
                Tc,
                "driver dummy; native XDP would turn off GRO/TSO here",
            ),
            (
                "somevirt",
                "",
                Tc,
                "driver somevirt is a virtual device; native XDP would turn off GRO/TSO here",
            ),
            (
                "ixgbe",
                "0000:01:00.0",
                Xdp(XdpMode::Native),
                "driver ixgbe keeps its offloads under native XDP",
            ),
            (
                "ena",
                "0000:00:05.0",
                Xdp(XdpMode::Native),
                "driver ena keeps its offloads under native XDP",
            ),
            (
                "mlx5_core",
                "0000:3b:00.0",
                Xdp(XdpMode::Native),
                "driver mlx5_core keeps its offloads under native XDP",
            ),
        ] {
            assert_eq!(
                auto_hook(Some(&info(driver, bus))),
                (want, why.to_string()),
                "{driver}"
            );
        }
        assert_eq!(
            auto_hook(None),
            (Tc, "driver unreadable; TC works on any device".to_string())
        );
    }

    #[test]
    fn a_device_forced_by_name_beats_the_default_which_is_auto() {
        let specs: Vec<HookSpec> = ["veth1=xdp", "eth9=xdp-skb"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let plan = HookPlan::from_specs(&specs);
        assert_eq!(plan.default, HookChoice::Auto);
        let veth = || Some(info("veth", ""));
        assert_eq!(
            plan.choose("veth0", veth),
            (
                IngressHook::Tc,
                Some("auto: driver veth; native XDP would turn off GRO/TSO here".into())
            )
        );
        assert_eq!(
            plan.choose("veth1", || panic!("a forced device's driver is not read")),
            (
                IngressHook::Xdp(XdpMode::Native),
                Some("forced: --ingress-hook veth1=xdp".into())
            )
        );
        let tc = HookPlan::from_specs(&["tc".parse().unwrap()]);
        assert_eq!(tc.choose("veth0", veth), (IngressHook::Tc, None));
    }

    #[test]
    fn hook_specs_name_a_hook_and_maybe_a_device() {
        assert_eq!(
            "tc".parse::<HookSpec>().unwrap(),
            HookSpec {
                device: None,
                hook: HookChoice::Fixed(IngressHook::Tc)
            }
        );
        assert_eq!(
            "eth0=auto".parse::<HookSpec>().unwrap(),
            HookSpec {
                device: Some("eth0".into()),
                hook: HookChoice::Auto
            }
        );
        for bad in ["ebpf", "=xdp", "eth0=", "eth0=ebpf"] {
            assert!(bad.parse::<HookSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_driver_of_a_missing_device_is_unreadable() {
        assert_eq!(driver_info("sg-no-such-dev"), None);
        assert_eq!(driver_info(""), None);
    }
}
