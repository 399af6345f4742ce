//! What a generation of the policy maps means, independent of how it was written: per
//! interface and direction, every peer prefix with the port tables of its class chain. Scope
//! and class numbers, and classes nothing references any more (a membership delta leaves
//! them until the next whole apply), do not show. Two generations with the same meaning judge
//! every packet alike: `sg-agent verify` compares the kernel's live generation with a fresh
//! compile of a policy.

use std::collections::BTreeMap;

use anyhow::Result;
use sg_common::{Addr, IfaceConf, IfaceKey, PeerData, PeerVal, PortKey, PortPage, Timeouts};

use super::Dataplane;
use super::apply::{GenEntries, Mirror};
use crate::image::{LpmKey, MapImage};

/// One class's port tables: (protocol, every-protocol page, page number) -> page.
pub type ClassTable = BTreeMap<(u8, u8, u16), PortPage>;

/// One direction of one interface: (prefix length after the scope, address) -> the tables of
/// its class chain, in order.
pub type PeerTables = BTreeMap<(u32, Addr), Vec<ClassTable>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceMeaning {
    pub flags: u32,
    pub timeouts: Timeouts,
    /// Ingress, egress.
    pub dirs: [PeerTables; 2],
}

/// A generation by ifindex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meaning(pub BTreeMap<u32, IfaceMeaning>);

impl Meaning {
    pub fn of_image(img: &MapImage) -> Meaning {
        meaning(&img.ifaces, &img.peers, &img.ports)
    }

    fn of_entries(e: &GenEntries) -> Meaning {
        meaning(&e.ifaces, &e.peers, &e.ports)
    }

    /// The first differences, one line each (at most `max`), for messages.
    pub fn differences(&self, other: &Meaning, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let all: std::collections::BTreeSet<u32> =
            self.0.keys().chain(other.0.keys()).copied().collect();
        for ifindex in all {
            match (self.0.get(&ifindex), other.0.get(&ifindex)) {
                (Some(_), None) => out.push(format!("ifindex {ifindex}: only in the first")),
                (None, Some(_)) => out.push(format!("ifindex {ifindex}: only in the second")),
                (Some(a), Some(b)) if a.flags != b.flags || a.timeouts != b.timeouts => {
                    out.push(format!("ifindex {ifindex}: flags or timeouts differ"));
                }
                (Some(a), Some(b)) => {
                    for (d, name) in [(0, "ingress"), (1, "egress")] {
                        peer_differences(ifindex, name, &a.dirs[d], &b.dirs[d], &mut out);
                    }
                }
                (None, None) => {}
            }
        }
        out.truncate(max);
        out
    }
}

fn peer_differences(
    ifindex: u32,
    dir: &str,
    a: &PeerTables,
    b: &PeerTables,
    out: &mut Vec<String>,
) {
    let keys: std::collections::BTreeSet<&(u32, Addr)> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if a.get(k) != b.get(k) {
            let ip = super::ip_of(&k.1);
            let len = if ip.is_ipv4() {
                k.0.saturating_sub(96)
            } else {
                k.0
            };
            let what = match (a.contains_key(k), b.contains_key(k)) {
                (true, false) => "only in the first",
                (false, true) => "only in the second",
                _ => "port tables differ",
            };
            out.push(format!("ifindex {ifindex} {dir} {ip}/{len}: {what}"));
        }
    }
}

fn meaning(
    ifaces: &BTreeMap<IfaceKey, IfaceConf>,
    peers: &BTreeMap<LpmKey<PeerData>, PeerVal>,
    ports: &BTreeMap<PortKey, PortPage>,
) -> Meaning {
    let mut classes: BTreeMap<u32, ClassTable> = BTreeMap::new();
    for (k, page) in ports {
        classes
            .entry(k.class)
            .or_default()
            .insert((k.proto, k.any, k.page), *page);
    }
    let mut by_scope: BTreeMap<u32, PeerTables> = BTreeMap::new();
    for (k, v) in peers {
        let chain = v
            .classes
            .iter()
            .take_while(|&&c| c != 0)
            .map(|c| classes.get(c).cloned().unwrap_or_default())
            .collect();
        let len = k.prefix_len - sg_common::PEER_SCOPE_BITS;
        by_scope
            .entry(u32::from_be_bytes(k.data.scope))
            .or_default()
            .insert((len, k.data.addr), chain);
    }
    let tables = |scope: u32| by_scope.get(&scope).cloned().unwrap_or_default();
    Meaning(
        ifaces
            .iter()
            .map(|(k, c)| {
                let m = IfaceMeaning {
                    flags: c.flags,
                    timeouts: c.timeouts,
                    dirs: [tables(c.scope_in), tables(c.scope_out)],
                };
                (k.ifindex, m)
            })
            .collect(),
    )
}

impl Dataplane {
    /// The meaning of the live generation, read from the kernel (not the mirror).
    pub fn live_meaning(&self) -> Result<Meaning> {
        let kernel = Mirror::read(&self.maps)?;
        Ok(Meaning::of_entries(&kernel.gens[kernel.active as usize]))
    }
}
