//! Which local device carries a template's interface, as the command line says it: `--bind
//! KEY=DEVICE` (an instance's or ENI's interface is carried by DEVICE) and `--as KEY` (this
//! host is that instance: its interface is this host's uplink). Templates carry no
//! addresses sg could bind by, so without one of these (or the `sg:device` tag) a template
//! binds to nothing.
//!
//! `--as` binds the instance's interface (an instance with one interface, or its device
//! index 0) to the devices of this namespace's default routes, which the command line found
//! ([`TemplateInputs::host_devices`]): that is the device an EC2 instance's primary ENI is,
//! and it leaves bridges and container veths alone (an instance's group does not filter
//! what its containers say to each other). A `--bind` or `sg:device` tag wins. Other
//! interfaces of a multi-interface instance need a `--bind` each: a guess there would
//! leave one unenforced. This module reads no host state itself.

use super::{Cfn, ENI, INSTANCE, TemplateInputs};
use crate::config::diag::did_you_mean;
use crate::config::draft::{DInterface, Draft, L};
use crate::policy::Origin;

impl Cfn<'_, '_> {
    /// Where an option's error is reported: the top of the template (an option has no line).
    fn top(&self) -> Origin {
        Origin {
            file: self.sink.file.clone(),
            line: 1,
            column: 1,
            path: String::new(),
        }
    }

    /// `--bind KEY=DEVICE`: the interface KEY names (an instance or ENI by logical id or
    /// name, `Instance/ethN` for one of several) is carried by the local DEVICE, as the
    /// `sg:device` tag says it (the option wins over the tag).
    pub(super) fn bind(&mut self, d: &mut Draft, inputs: &TemplateInputs) {
        let top = self.top();
        for (key, device) in &inputs.binds {
            let (base, suffix) = match key.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (key.as_str(), None),
            };
            let base = self.aliases.get(base).map_or(base, String::as_str);
            let name = suffix.map_or_else(|| base.to_string(), |s| format!("{base}/{s}"));
            let mut hits: Vec<usize> = (0..d.interfaces.len())
                .filter(|&i| d.interfaces[i].name.v == name)
                .collect();
            if hits.is_empty() && suffix.is_none() {
                hits = (0..d.interfaces.len())
                    .filter(|&i| d.interfaces[i].instance == base)
                    .collect();
            }
            match hits.as_slice() {
                [i] => {
                    let at = d.interfaces[*i].at.clone();
                    d.interfaces[*i].device = Some(L::new(device.clone(), at));
                }
                [] => {
                    let mut known: Vec<&str> = self.aliases.keys().map(String::as_str).collect();
                    known.extend(d.interfaces.iter().map(|i| i.name.v.as_str()));
                    let hint = match did_you_mean(key, &known) {
                        Some(k) => format!("did you mean {k}?"),
                        None if known.is_empty() => {
                            "the template has no instance or network interface".to_string()
                        }
                        None => format!("its instances and interfaces: {}", known.join(", ")),
                    };
                    self.sink.error_hint(
                        &top,
                        format!(
                            "--bind {key}: no instance or network interface {key} in this template"
                        ),
                        hint,
                    );
                }
                many => {
                    let names: Vec<&str> = many
                        .iter()
                        .map(|&i| d.interfaces[i].name.v.as_str())
                        .collect();
                    self.sink.error_hint(
                        &top,
                        format!("--bind {key}: the instance has {} interfaces", many.len()),
                        format!("bind each: {}", names.join(", ")),
                    );
                }
            }
        }
    }

    /// The logical ids `--as` accepts: the template's instances and network interfaces.
    fn hosts(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .of_type(INSTANCE)
            .into_iter()
            .chain(self.of_type(ENI))
            .map(|i| self.res[i].logical.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The hint that lists what `--as` accepts.
    fn hosts_hint(&self, key: &str) -> String {
        let ids = self.hosts();
        let known: Vec<&str> = ids.iter().map(String::as_str).collect();
        match did_you_mean(key, &known) {
            Some(k) => format!("did you mean --as {k}?"),
            None if ids.is_empty() => "the template has no AWS::EC2::Instance or AWS::EC2::NetworkInterface; bind a device to a group's members in the native format instead".to_string(),
            None => format!(
                "--as takes an AWS::EC2::Instance or AWS::EC2::NetworkInterface: {}",
                ids.join(", ")
            ),
        }
    }

    /// `--as KEY`: this host is the instance (or ENI) KEY, by logical id or Name tag. Runs
    /// after [`Self::bind`], whose devices it keeps.
    pub(super) fn as_host(&mut self, d: &mut Draft, inputs: &TemplateInputs, excluded: &[String]) {
        let Some(key) = inputs.as_instance.as_deref() else {
            return;
        };
        let top = self.top();
        let logical = if self.by_logical.contains_key(key) {
            Some(key.to_string())
        } else {
            self.aliases
                .iter()
                .find(|(l, n)| n.as_str() == key && self.by_logical.contains_key(*l))
                .map(|(l, _)| l.clone())
        };
        let Some(logical) = logical else {
            let message = if excluded.iter().any(|e| e == key) {
                format!("--as {key}: {key} is left out because its Condition is false")
            } else {
                format!("--as {key}: no resource {key} in this template")
            };
            let hint = self.hosts_hint(key);
            self.sink.error_hint(&top, message, hint);
            return;
        };
        let r = &self.res[self.by_logical[&logical]];
        if r.ty != INSTANCE && r.ty != ENI {
            let (at, ty) = (r.at.origin(self.sink), r.ty.clone());
            let hint = self.hosts_hint("");
            self.sink.error_hint(
                &at,
                format!("--as {key}: {logical} is an {ty}, not an instance or network interface"),
                hint,
            );
            return;
        }
        let name = self.aliases.get(&logical).cloned().unwrap_or(logical);
        let mine: Vec<usize> = (0..d.interfaces.len())
            .filter(|&i| {
                let f = &d.interfaces[i];
                f.name.v == name || (r.ty == INSTANCE && f.instance == name)
            })
            .collect();
        self.take_host_devices(d, key, &name, &mine, &inputs.host_devices);
    }

    /// Binds `mine` (the interfaces of the instance `--as KEY` names, called `name`): the
    /// primary one to `devices`, unless a device is named already; the others must be.
    fn take_host_devices(
        &mut self,
        d: &mut Draft,
        key: &str,
        name: &str,
        mine: &[usize],
        devices: &[String],
    ) {
        let top = self.top();
        let primary = match mine {
            [one] => Some(*one),
            _ => mine
                .iter()
                .copied()
                .find(|&i| d.interfaces[i].name.v == format!("{name}/eth0")),
        };
        let unbound: Vec<&str> = mine
            .iter()
            .filter(|&&i| Some(i) != primary && d.interfaces[i].device.is_none())
            .map(|&i| d.interfaces[i].name.v.as_str())
            .collect();
        if !unbound.is_empty() {
            let binds: Vec<String> = unbound
                .iter()
                .map(|n| format!("--bind {n}=DEVICE"))
                .collect();
            self.sink.error_hint(
                &top,
                format!(
                    "--as {key}: the instance's other interfaces need a device: {}",
                    unbound.join(", ")
                ),
                format!("name each: {}", binds.join(" ")),
            );
        }
        let Some(p) = primary.filter(|&p| d.interfaces[p].device.is_none()) else {
            return;
        };
        let [first, more @ ..] = devices else {
            self.sink.error_hint(
                &top,
                format!(
                    "--as {key}: this host has no default route, so its uplink device is not known"
                ),
                format!("name the device: --as {key} --bind {key}=DEVICE"),
            );
            return;
        };
        let at = d.interfaces[p].at.clone();
        d.interfaces[p].device = Some(L::new(first.clone(), at.clone()));
        // Default routes through several devices (IPv4 and IPv6 apart): the instance's
        // interface is each of them, one policy interface per device.
        for dev in more {
            let f = &d.interfaces[p];
            let copy = DInterface {
                name: L::new(format!("{}@{dev}", f.name.v), at.clone()),
                instance: f.instance.clone(),
                device: Some(L::new(dev.clone(), at.clone())),
                addresses: f.addresses.clone(),
                groups: f.groups.clone(),
                groups_at: f.groups_at.clone(),
                timeouts: f.timeouts.clone(),
                audit: f.audit.clone(),
                at: at.clone(),
            };
            d.interfaces.push(copy);
        }
    }
}
