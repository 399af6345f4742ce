//! Binding: which local Linux device carries which policy interface, and what the local
//! devices are.
//!
//! [`bind`] is pure: it takes the policy and a list of local devices and decides, following
//! the rules below, or explains every conflict it finds. [`local_interfaces`] reads the
//! current network namespace (getifaddrs), again only when the kernel reported a change of
//! devices or addresses since the last reading. Nothing here attaches programs or writes maps.
//!
//! Rules, in order:
//! 1. A policy interface with `device: D` claims the local device named D.
//!    - If D does not exist here but the interface's addresses are on another local device,
//!      the policy contradicts the host: error.
//!    - If D exists and has addresses, but the interface's addresses are on another device:
//!      error. If D has none of them (and they are nowhere here), the claim is *weak*.
//! 2. A policy interface without `device:` claims the one local device holding any of its
//!    addresses. Addresses spread over several devices: error (add `device:`).
//! 3. Per local device: two strong claims are an error; one strong claim binds (weak claims on
//!    the same device are other hosts' interfaces that reuse the device name, and are dropped);
//!    only weak claims is an error (the addresses do not match the device).
//! 4. Policy interfaces that claim nothing belong to other hosts and are left out.
//!
//! A host is a router for a subnet (it enforces the subnet's network ACL, A13) when one of its
//! devices faces the subnet ([`router_ports`]): the device named by the subnet's
//! `router_device`, or else the device holding the subnet's router address, the first host
//! address of one of its CIDRs (198.51.100.1 in 198.51.100.0/24: the address AWS reserves
//! for the VPC router; no instance may hold it). A device carries either a policy interface
//! (security groups) or router ports, never both.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::{Interface, Policy, Subnet, SubnetId};

/// A device of the local network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIface {
    pub name: String,
    pub ifindex: u32,
    pub addresses: Vec<IpAddr>,
}

/// A policy interface enforced on a local device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The policy interface's name.
    pub interface: String,
    pub device: String,
    pub ifindex: u32,
}

/// One reason the policy cannot be bound to this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindProblem {
    pub message: String,
    pub hint: Option<String>,
}

/// Every reason the policy cannot be bound to this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindError {
    pub problems: Vec<BindProblem>,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}", p.message)?;
            if let Some(h) = &p.hint {
                write!(f, "\n  hint: {h}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for BindError {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strength {
    Strong,
    Weak,
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides which policy interface each local device carries (see the module's rules).
pub fn bind(policy: &Policy, local: &[LocalIface]) -> Result<Vec<Binding>, BindError> {
    let mut problems = Vec::new();
    // Rules 1 and 2: local index -> claims (policy interface index, strength).
    let mut claims: BTreeMap<usize, Vec<(usize, Strength)>> = BTreeMap::new();
    for (pi, p) in policy.interfaces.iter().enumerate() {
        match claim(p, local) {
            Ok(Some((li, strength))) => claims.entry(li).or_default().push((pi, strength)),
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    // Rule 3, per device; out is in policy order.
    let mut out: Vec<(usize, Binding)> = Vec::new();
    for (li, cs) in claims {
        let l = &local[li];
        match choose(policy, l, &cs) {
            Ok(pi) => out.push((
                pi,
                Binding {
                    interface: policy.interfaces[pi].name.clone(),
                    device: l.name.clone(),
                    ifindex: l.ifindex,
                },
            )),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(BindError { problems });
    }
    out.sort_by_key(|(pi, _)| *pi);
    Ok(out.into_iter().map(|(_, b)| b).collect())
}

/// The local device policy interface `p` claims, and how strongly (rules 1 and 2); None when
/// it claims none (rule 4: another host's).
fn claim(p: &Interface, local: &[LocalIface]) -> Result<Option<(usize, Strength)>, BindProblem> {
    // Local devices holding one of p's addresses, and which addresses.
    let mut holders: Vec<(usize, Vec<IpAddr>)> = Vec::new();
    for (li, l) in local.iter().enumerate() {
        let shared: Vec<IpAddr> = p
            .addresses
            .iter()
            .filter(|a| l.addresses.contains(a))
            .copied()
            .collect();
        if !shared.is_empty() {
            holders.push((li, shared));
        }
    }
    let Some(d) = &p.device else {
        return match holders.as_slice() {
            [] => Ok(None),
            [(li, _)] => Ok(Some((*li, Strength::Strong))),
            _ => {
                let spread: Vec<String> = holders
                    .iter()
                    .map(|(h, a)| format!("{} on {}", list(a), local[*h].name))
                    .collect();
                Err(BindProblem {
                    message: format!(
                        "interface {}'s addresses are on several devices ({})",
                        p.name,
                        spread.join("; ")
                    ),
                    hint: Some("add `device:` to say which device carries the interface".into()),
                })
            }
        };
    };
    let Some(li) = local.iter().position(|l| &l.name == d) else {
        let Some((h, addrs)) = holders.first() else {
            return Ok(None);
        };
        let names: Vec<&str> = local.iter().map(|l| l.name.as_str()).collect();
        return Err(BindProblem {
            message: format!(
                "interface {} names device {d}, which does not exist here, but its address {} is on {}",
                p.name,
                list(addrs),
                local[*h].name
            ),
            hint: Some(format!(
                "fix `device:` (local devices: {})",
                names.join(", ")
            )),
        });
    };
    if let Some((other, addrs)) = holders.iter().find(|(h, _)| *h != li) {
        return Err(BindProblem {
            message: format!(
                "interface {} names device {d}, but its address {} is on {}",
                p.name,
                list(addrs),
                local[*other].name
            ),
            hint: Some("fix `device:` or the interface's addresses".into()),
        });
    }
    let strength =
        if holders.is_empty() && !p.addresses.is_empty() && !local[li].addresses.is_empty() {
            Strength::Weak
        } else {
            Strength::Strong
        };
    Ok(Some((li, strength)))
}

/// The one policy interface device `l` carries, among its claims `cs` (rule 3).
fn choose(policy: &Policy, l: &LocalIface, cs: &[(usize, Strength)]) -> Result<usize, BindProblem> {
    let of = |want: Strength| -> Vec<usize> {
        cs.iter()
            .filter(|(_, s)| *s == want)
            .map(|(pi, _)| *pi)
            .collect()
    };
    let (strong, weak) = (of(Strength::Strong), of(Strength::Weak));
    match (strong.as_slice(), weak.as_slice()) {
        ([one], _) => Ok(*one),
        ([], [one]) => {
            let one = &policy.interfaces[*one];
            Err(BindProblem {
                message: format!(
                    "interface {} names device {}, but {} has none of its addresses ({}; the device has {})",
                    one.name,
                    l.name,
                    l.name,
                    list(&one.addresses),
                    list(&l.addresses)
                ),
                hint: Some("fix the addresses, or remove them to bind by device name alone".into()),
            })
        }
        _ => {
            let many = if strong.is_empty() { &weak } else { &strong };
            let who: Vec<&str> = many
                .iter()
                .map(|&pi| policy.interfaces[pi].name.as_str())
                .collect();
            Err(BindProblem {
                message: format!(
                    "device {} matches several policy interfaces: {}",
                    l.name,
                    who.join(", ")
                ),
                hint: Some("a device carries one policy interface: give them distinct addresses or `device:` names".into()),
            })
        }
    }
}

/// A subnet whose network ACL a local device enforces: the device faces the subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterPort {
    pub subnet: SubnetId,
    pub device: String,
    pub ifindex: u32,
}

/// The subnet's router address in `net`: its first host address (network + 1).
pub fn router_address(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()).wrapping_add(1)).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).wrapping_add(1)).into()),
    }
}

/// The local devices facing the policy's subnets (see the module doc), in policy order.
/// `bound` are the devices already carrying policy interfaces: one of them facing a subnet is
/// an error, as are two subnets on one device.
pub fn router_ports(
    policy: &Policy,
    local: &[LocalIface],
    bound: &[Binding],
) -> Result<Vec<RouterPort>, BindError> {
    let mut problems = Vec::new();
    let mut out: Vec<RouterPort> = Vec::new();
    for s in &policy.subnets {
        let Some(l) = facing(s, local) else {
            continue;
        };
        if let Some(b) = bound.iter().find(|b| b.ifindex == l.ifindex) {
            problems.push(BindProblem {
                message: format!(
                    "device {} carries interface {} and also faces subnet {} as its router",
                    l.name, b.interface, s.id
                ),
                hint: Some(format!(
                    "the router address of {} ({}) is reserved for the router: give the instance another address, or set the subnet's `router_device:`",
                    s.id,
                    list(&s.cidrs.iter().map(router_address).collect::<Vec<_>>())
                )),
            });
            continue;
        }
        if let Some(other) = out.iter().find(|p| p.ifindex == l.ifindex) {
            problems.push(BindProblem {
                message: format!(
                    "device {} faces two subnets: {} and {}",
                    l.name, other.subnet, s.id
                ),
                hint: Some("a router device faces one subnet: check the subnets' CIDRs and `router_device:`".into()),
            });
            continue;
        }
        out.push(RouterPort {
            subnet: s.id.clone(),
            device: l.name.clone(),
            ifindex: l.ifindex,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BindError { problems })
    }
}

/// The local device facing subnet `s`: by `router_device`, else by its router address.
fn facing<'l>(s: &Subnet, local: &'l [LocalIface]) -> Option<&'l LocalIface> {
    if let Some(d) = &s.router_device {
        return local.iter().find(|l| &l.name == d);
    }
    let routers: Vec<IpAddr> = s.cidrs.iter().map(router_address).collect();
    local
        .iter()
        .find(|l| l.addresses.iter().any(|a| routers.contains(a)))
}

/// Frees getifaddrs' list however the walk ends.
struct IfAddrs(*mut libc::ifaddrs);

impl Drop for IfAddrs {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a successful getifaddrs and is freed once.
            unsafe { libc::freeifaddrs(self.0) };
        }
    }
}

/// The devices of the current network namespace: name, ifindex and IPv4/IPv6 addresses
/// (devices without addresses included).
///
/// A daemon asks on every apply and every poll, and listing (a netlink dump of links and of
/// addresses, then one ioctl per device) was 7% of its work per change. So each thread keeps
/// the last listing with a netlink socket subscribed to link and address events, and lists
/// again only when an event (or an overflow of the socket) arrived since. The kernel queues
/// the event before the change's syscall returns, so the answer is never older than the
/// call: the same as listing every time.
pub fn local_interfaces() -> std::io::Result<Vec<LocalIface>> {
    thread_local! {
        static CACHE: std::cell::RefCell<Option<Listing>> = const { std::cell::RefCell::new(None) };
    }
    let netns = crate::state::netns_id().ok();
    CACHE.with_borrow_mut(|cache| {
        // A thread that moved to another namespace starts over (its socket hears the old one).
        if cache
            .as_ref()
            .is_none_or(|c| netns.is_none() || c.netns != netns)
        {
            *cache = None;
            // Subscribed before listing: a change made after the listing is heard.
            if let Ok(events) = subscribe() {
                *cache = Some(Listing {
                    netns,
                    events,
                    devices: None,
                });
            }
        }
        let Some(c) = cache.as_mut() else {
            return list_interfaces();
        };
        if drain(&c.events) || c.devices.is_none() {
            c.devices = Some(list_interfaces()?);
        }
        Ok(c.devices.clone().unwrap_or_default())
    })
}

/// One thread's last listing and the socket that says when it is stale.
struct Listing {
    netns: Option<u64>,
    events: std::os::fd::OwnedFd,
    /// None until listed, or after a listing failed.
    devices: Option<Vec<LocalIface>>,
}

/// A netlink socket of the current namespace subscribed to link and address changes.
fn subscribe() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; the fields are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: sa is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads every queued event; whether there was any (an overflow counts: events were lost).
fn drain(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 8192];
    let mut changed = false;
    loop {
        // SAFETY: buf is valid for its length; the socket is non-blocking.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            changed = true;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) if n < 0 => return changed,
            Some(libc::EINTR | libc::ENOBUFS) if n < 0 => changed = true,
            // End of stream or an unexpected error: list again to be sure.
            _ => return true,
        }
    }
}

/// Lists the namespace's devices (getifaddrs).
fn list_interfaces() -> std::io::Result<Vec<LocalIface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` or fails.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let list = IfAddrs(head);
    let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut cur = list.0;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list owned by `list`, alive until it is dropped.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let raw = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // IPv4 address labels ("eth0:1") belong to their device.
        let name = raw.split(':').next().unwrap_or_default().to_string();
        let addrs = by_name.entry(name).or_default();
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: AF_INET means sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 means sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        };
        if let Some(a) = addr
            && !addrs.contains(&a)
        {
            addrs.push(a);
        }
    }
    let mut out = Vec::new();
    for (name, addresses) in by_name {
        let Ok(c) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            continue; // vanished meanwhile
        }
        out.push(LocalIface {
            name,
            ifindex,
            addresses,
        });
    }
    out.sort_by_key(|l| l.ifindex);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GroupId, Origin, Timeouts};

    fn iface(name: &str, device: Option<&str>, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            instance: name.into(),
            device: device.map(Into::into),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            groups: vec![GroupId("sg-web".into())],
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        }
    }

    fn local(name: &str, ifindex: u32, addrs: &[&str]) -> LocalIface {
        LocalIface {
            name: name.into(),
            ifindex,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn policy(ifaces: Vec<Interface>) -> Policy {
        Policy {
            interfaces: ifaces,
            ..Policy::default()
        }
    }

    fn names(b: &[Binding]) -> Vec<(String, String, u32)> {
        b.iter()
            .map(|b| (b.interface.clone(), b.device.clone(), b.ifindex))
            .collect()
    }

    #[test]
    fn binds_by_address_and_leaves_other_hosts_interfaces_out() {
        let p = policy(vec![
            iface("web-1", None, &["192.0.2.11", "2001:db8:10::11"]),
            iface("db-1", None, &["192.0.2.21"]),
        ]);
        let host = [
            local("lo", 1, &["127.0.0.1"]),
            local("eth0", 2, &["192.0.2.11", "fe80::1"]),
        ];
        assert_eq!(
            names(&bind(&p, &host).unwrap()),
            [("web-1".into(), "eth0".into(), 2)]
        );
    }

    #[test]
    fn binds_by_device_name_even_without_addresses() {
        let p = policy(vec![iface("web-1", Some("veth1"), &[])]);
        let host = [local("veth1", 7, &["192.0.2.99"])];
        assert_eq!(
            names(&bind(&p, &host).unwrap()),
            [("web-1".into(), "veth1".into(), 7)]
        );
    }

    #[test]
    fn device_name_reused_by_other_hosts_is_settled_by_address() {
        // A policy for the whole VPC: every instance's device is eth0.
        let p = policy(vec![
            iface("web-1", Some("eth0"), &["192.0.2.11"]),
            iface("db-1", Some("eth0"), &["192.0.2.21"]),
        ]);
        let host = [local("eth0", 2, &["192.0.2.21"])];
        assert_eq!(
            names(&bind(&p, &host).unwrap()),
            [("db-1".into(), "eth0".into(), 2)]
        );
    }

    #[test]
    fn device_whose_addresses_are_elsewhere_is_a_conflict() {
        let p = policy(vec![iface("web-1", Some("eth0"), &["192.0.2.11"])]);
        let host = [
            local("eth0", 2, &["192.0.2.50"]),
            local("eth1", 3, &["192.0.2.11"]),
        ];
        let e = bind(&p, &host).unwrap_err();
        assert!(
            e.to_string()
                .contains("names device eth0, but its address 192.0.2.11 is on eth1"),
            "{e}"
        );
    }

    #[test]
    fn addresses_on_two_devices_are_ambiguous() {
        let p = policy(vec![iface(
            "web-1",
            None,
            &["192.0.2.11", "2001:db8:10::11"],
        )]);
        let host = [
            local("eth0", 2, &["192.0.2.11"]),
            local("eth1", 3, &["2001:db8:10::11"]),
        ];
        let e = bind(&p, &host).unwrap_err();
        assert!(e.to_string().contains("several devices"), "{e}");
        assert!(e.to_string().contains("hint: add `device:`"), "{e}");
    }

    #[test]
    fn one_device_matching_two_interfaces_is_a_conflict() {
        let p = policy(vec![
            iface("a", None, &["192.0.2.11"]),
            iface("b", None, &["192.0.2.12"]),
        ]);
        let host = [local("eth0", 2, &["192.0.2.11", "192.0.2.12"])];
        let e = bind(&p, &host).unwrap_err();
        assert!(
            e.to_string()
                .contains("device eth0 matches several policy interfaces: a, b"),
            "{e}"
        );
    }

    #[test]
    fn named_device_with_foreign_addresses_is_reported() {
        let p = policy(vec![iface("web-1", Some("eth0"), &["192.0.2.11"])]);
        let host = [local("eth0", 2, &["10.1.2.3"])];
        let e = bind(&p, &host).unwrap_err();
        assert!(e.to_string().contains("has none of its addresses"), "{e}");
    }

    #[test]
    fn missing_named_device_with_addresses_here_is_reported() {
        let p = policy(vec![iface("web-1", Some("ens5"), &["192.0.2.11"])]);
        let host = [local("eth0", 2, &["192.0.2.11"])];
        let e = bind(&p, &host).unwrap_err();
        assert!(e.to_string().contains("does not exist here"), "{e}");
    }

    /// The listing kept between calls follows changes: a device created in a namespace of
    /// the test's own, then an address given to it, appear at the next call (needs root;
    /// skipped otherwise).
    #[test]
    fn local_interfaces_see_devices_and_addresses_added_since_the_last_call() {
        let ns = format!("sgbind{}", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(["-n", &ns])
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let created = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        if !created {
            eprintln!("skipped: cannot create a network namespace");
            return;
        }
        let netns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall; only this thread moves into the test's namespace.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
                let names = || -> Vec<String> {
                    local_interfaces()
                        .unwrap()
                        .into_iter()
                        .map(|l| l.name)
                        .collect()
                };
                let before = names();
                let added = ip(&[
                    "link", "add", "sgb0", "type", "veth", "peer", "name", "sgb1",
                ]);
                let after = names();
                let addressed = ip(&["addr", "add", "192.0.2.7/32", "dev", "sgb0"]);
                (
                    added && addressed,
                    before,
                    after,
                    local_interfaces().unwrap(),
                )
            })
            .join()
        });
        std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status()
            .unwrap();
        let (ok, before, after, addrs) = seen.unwrap();
        assert!(ok, "ip link/addr add failed");
        assert!(!before.contains(&"sgb0".to_string()), "{before:?}");
        assert!(after.contains(&"sgb0".to_string()), "{after:?}");
        let dev = addrs.iter().find(|l| l.name == "sgb0").unwrap();
        assert_eq!(dev.addresses, ["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn local_interfaces_lists_loopback() {
        let l = local_interfaces().unwrap();
        let lo = l
            .iter()
            .find(|i| i.name == "lo")
            .expect("lo exists in every namespace");
        assert!(lo.ifindex > 0);
        if !lo.addresses.is_empty() {
            assert!(lo.addresses.iter().any(|a| a.is_loopback()), "{lo:?}");
        }
    }

    fn subnet(id: &str, cidrs: &[&str], device: Option<&str>) -> Subnet {
        Subnet {
            id: SubnetId(id.into()),
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            network_acl: crate::policy::NaclId("acl-default".into()),
            router_device: device.map(Into::into),
            origin: Origin::default(),
        }
    }

    #[test]
    fn a13_router_ports_by_router_address_or_device_name() {
        let p = Policy {
            subnets: vec![
                subnet("subnet-web", &["198.51.100.0/25", "2001:db8:1::/64"], None),
                subnet("subnet-db", &["198.51.100.128/25"], Some("r-db")),
                subnet("subnet-far", &["203.0.113.0/24"], None),
            ],
            ..Policy::default()
        };
        let host = [
            local("r-web", 4, &["2001:db8:1::1"]),
            local("r-db", 5, &["192.0.2.1"]),
            local("eth0", 6, &["198.51.100.10"]),
        ];
        let ports = router_ports(&p, &host, &[]).unwrap();
        let got: Vec<(&str, &str, u32)> = ports
            .iter()
            .map(|r| (r.subnet.as_str(), r.device.as_str(), r.ifindex))
            .collect();
        assert_eq!(got, [("subnet-web", "r-web", 4), ("subnet-db", "r-db", 5)]);
    }

    #[test]
    fn a_device_is_either_an_instance_interface_or_a_router_port() {
        let p = Policy {
            interfaces: vec![iface("web-1", None, &["198.51.100.1"])],
            subnets: vec![subnet("subnet-web", &["198.51.100.0/25"], None)],
            ..Policy::default()
        };
        let host = [local("eth0", 2, &["198.51.100.1"])];
        let bound = bind(&p, &host).unwrap();
        let e = router_ports(&p, &host, &bound).unwrap_err();
        assert!(
            e.to_string().contains("also faces subnet subnet-web"),
            "{e}"
        );
        assert!(e.to_string().contains("reserved for the router"), "{e}");
    }
}
