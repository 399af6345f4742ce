//! Audit mode per device (L3). `sg-agent audit on DEV` sets the AUDIT flag of one enforced
//! device in the live generation, in place (no compile, no flip), and remembers the device in
//! the state so that later applies keep it; `off` clears both and ends the flows audit
//! admitted on that device. A policy interface written with `audit: true` is in audit mode
//! by its policy: the compiler sets its flag, and only the policy can end it.
//!
//! The global switch (SG_CONFIG) is the dataplane's `set_audit`; this module owns the
//! per-device one and the report of both. It prints nothing.

use anyhow::Result;

use super::Agent;
use crate::error;

/// One device in audit mode, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditedDevice {
    pub device: String,
    pub ifindex: u32,
    /// `policy` (its interface has `audit: true`) or `command` (`sg-agent audit on DEV`).
    pub by: &'static str,
}

/// What `audit on|off DEV` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceAudit {
    pub device: String,
    pub ifindex: u32,
    pub on: bool,
    /// Flows audit admitted on the device, ended by `off`; None when nothing ended them (on,
    /// or the global audit mode still admits them).
    pub flows_ended: Option<usize>,
    /// The global audit mode is on: the device passes what the policy drops either way.
    pub global: bool,
}

impl Agent {
    /// Puts `device` in audit mode or takes it out (see the module comment). Refused for a
    /// device this namespace does not enforce, and `off` for one whose policy interface has
    /// `audit: true`.
    pub fn set_device_audit(&mut self, device: &str, on: bool) -> Result<DeviceAudit> {
        self.require_applied()?;
        self.require_pins()?;
        let _lock = self.sd.lock()?;
        self.refresh()?;
        let (ifindex, interface) = self.enforced_device(device)?;
        if !on
            && let Some(name) = interface
            && self.applied_policy()?.policy.audit.contains(&name)
        {
            return Err(error::invalid(format!(
                "{device} is in audit mode by its policy (interface {name} has `audit: true`); \
                 hint: remove it from the policy and apply again"
            )));
        }
        let dp = self.dataplane()?;
        if !dp.set_iface_audit(ifindex, on)? {
            anyhow::bail!(
                "{device} (ifindex {ifindex}) is not in the live generation; hint: sg-agent \
                 status, then apply again"
            );
        }
        let global = dp.audit()?;
        // After the flag is off no new flow on the device gets the audit mark.
        let flows_ended = match (on, global) {
            (false, false) => Some(dp.end_audited_flows_on(&[ifindex].into())?),
            _ => None,
        };
        let mut st = self.state.clone();
        if on {
            st.audit_devices.insert(device.to_string());
        } else {
            st.audit_devices.remove(device);
        }
        self.sd.save(&st)?;
        self.state = st;
        Ok(DeviceAudit {
            device: device.to_string(),
            ifindex,
            on,
            flows_ended,
            global,
        })
    }

    /// The devices the live generation puts in audit mode of their own, each with why.
    pub fn audited_devices(&mut self) -> Result<Vec<AuditedDevice>> {
        let by_command = self.state.audit_devices.clone();
        let ifaces = self.dataplane()?.audit_ifaces();
        let mut out = Vec::new();
        for (device, ifindex) in self.enforced_devices() {
            if ifaces.contains(&ifindex) {
                let by = if by_command.contains(&device) {
                    "command"
                } else {
                    "policy"
                };
                out.push(AuditedDevice {
                    device,
                    ifindex,
                    by,
                });
            }
        }
        Ok(out)
    }

    /// The ifindex of an enforced device and its policy interface (None for a router port).
    fn enforced_device(&self, device: &str) -> Result<(u32, Option<String>)> {
        let applied = &self.state.applied;
        if let Some(i) = applied.interfaces.get(device) {
            return Ok((i.ifindex, Some(i.interface.clone())));
        }
        if let Some(r) = applied.routers.get(device) {
            return Ok((r.ifindex, None));
        }
        let known: Vec<String> = self.enforced_devices().into_iter().map(|d| d.0).collect();
        Err(error::invalid(format!(
            "{device} is not a device sg enforces in this namespace (enforced: {}); hint: \
             sg-agent status",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    /// Every enforced device (instance interfaces and router ports) and its ifindex.
    fn enforced_devices(&self) -> Vec<(String, u32)> {
        let applied = &self.state.applied;
        let ifaces = applied
            .interfaces
            .iter()
            .map(|(d, i)| (d.clone(), i.ifindex));
        let ports = applied.routers.iter().map(|(d, r)| (d.clone(), r.ifindex));
        ifaces.chain(ports).collect()
    }
}
