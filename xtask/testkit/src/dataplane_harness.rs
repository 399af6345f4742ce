//! The kernel level of the test kit (BPF_PROG_TEST_RUN on loaded programs), shared by the
//! privileged dataplane tests: a private network namespace per test, the dataplane loader,
//! the production compile for a loaded dataplane (`compile_for`), the fixed policies of the
//! differential tests, a tiny independent policy -> MapImage builder with its port-page tree,
//! and a fixture-table runner.
//!
//! The image builder (`mini_compile`) is deliberately naive and separate from `compile`: it
//! writes the map layout straight from sg-common's comments and docs/design.md (one scope per
//! interface and direction, one class per distinct peer prefix, port pages from a plain sweep
//! of each protocol's ports, paginated by [`page_tree`]), so the fixtures test the kernel program
//! against the contract rather than against the production compiler. It is exact for the
//! small policies the fixtures use; it is not fast and not minimal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;
use sg_agent::compile::{CompileOptions, compile};
use sg_agent::dataplane::{Capacities, Dataplane, Hook, LoadOptions, ifindex};
use sg_agent::image::{LpmKey, MapImage, SlotTable};
use sg_agent::model::build::rule_id;
use sg_agent::policy::{Direction, IcmpMatch, Peer, Policy, Protocol, Rule, RuleId};
use sg_common::{
    IfaceConf, IfaceKey, PAGE_SEGS, PeerData, PortKey, PortPage, Reason, RuleVal, rule_flags,
};

/// The address plan of the dataplane tests: the protected host (web, on lo), the database,
/// the peers, servers and routers around them.
pub mod plan {
    /// The protected host (the `web` interface, lo).
    pub const HOST: &str = "192.0.2.10";
    pub const HOST6: &str = "2001:db8::10";
    /// The `db` interface (veth a).
    pub const DB: &str = "192.0.2.20";
    /// A peer inside the /24 that ssh is allowed from.
    pub const PEER: &str = "198.51.100.7";
    pub const PEER6: &str = "2001:db8:1::7";
    /// A server on the internet.
    pub const FAR: &str = "203.0.113.9";
    pub const SERVER6: &str = "2001:db8:2::1";
    /// Routers that send ICMP errors about the flows.
    pub const ROUTER: &str = "203.0.113.254";
    pub const ROUTER6: &str = "2001:db8:ff::1";
}

// ---------------------------------------------------------------------------------------------
// Network namespace
// ---------------------------------------------------------------------------------------------

/// The devices of a test's private network namespace.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    /// lo: ifindex 1.
    pub lo: u32,
    /// One end of a veth pair created for the test.
    pub a: u32,
    /// The other end.
    pub b: u32,
}

/// Runs `f` on a thread of its own inside a fresh network namespace holding lo and a veth
/// pair (sgt0/sgt1). The namespace belongs to that thread alone, so it disappears with the
/// thread, whatever happens: nothing is left on the host. Panics propagate.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce(Net) -> T + Send + 'static) -> T {
    let h = std::thread::spawn(move || {
        // SAFETY: plain syscalls; CLONE_NEWNET only affects the calling thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed: {} (these tests need root)",
            std::io::Error::last_os_error()
        );
        let tid = unsafe { libc::gettid() };
        let ns = format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id());
        let out = Command::new("nsenter")
            .args([
                ns.as_str(),
                "ip",
                "link",
                "add",
                "sgt0",
                "type",
                "veth",
                "peer",
                "name",
                "sgt1",
            ])
            .output()
            .expect("running nsenter ip link add");
        assert!(
            out.status.success(),
            "creating the test veth pair failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let net = Net {
            lo: ifindex("lo").expect("lo in the test netns"),
            a: ifindex("sgt0").expect("sgt0 in the test netns"),
            b: ifindex("sgt1").expect("sgt1 in the test netns"),
        };
        f(net)
    });
    match h.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

pub fn load() -> Dataplane {
    Dataplane::load(LoadOptions {
        capacities: Capacities::small(),
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"))
}

/// `policy` compiled with the production compiler (no previous slots) for `dp`'s next
/// generation and rule-slot capacity: the image a test then applies.
pub fn compile_for(
    dp: &Dataplane,
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
) -> anyhow::Result<MapImage> {
    let opts = CompileOptions {
        generation: dp.next_generation(),
        slot_capacity: dp.capacities().rule_slots,
    };
    Ok(compile(policy, bindings, &SlotTable::default(), &opts)?)
}

// ---------------------------------------------------------------------------------------------
// Fixed policies
// ---------------------------------------------------------------------------------------------

/// The hand-written policies the differential tests share (dataplane_vs_model,
/// hardening_packet_fuzz): every rule kind (ports, ranges, ICMP types, all, protocol
/// numbers, group and prefix-list peers), tracked and untracked, both families.
pub fn fixed_policies() -> Vec<(&'static str, Policy)> {
    use sg_agent::model::build::*;
    vec![
        (
            "mixed",
            PolicyBuilder::new()
                .ingress("sg-a", tcp(22), cidr("198.51.100.0/24"))
                .ingress("sg-a", tcp_range(0, 65535), cidr("198.51.100.128/25"))
                .ingress("sg-a", udp_range(1000, 2000), cidr("2001:db8:1::/48"))
                .ingress("sg-a", icmp_type(8), cidr("0.0.0.0/0"))
                .ingress("sg-a", icmpv6_all(), cidr("2001:db8::/32"))
                .egress("sg-a", udp(53), cidr("0.0.0.0/0"))
                .egress("sg-a", tcp(443), cidr("::/0"))
                .ingress("sg-a", Protocol::Number(132), sg("sg-a"))
                .ingress("sg-b", all(), sg("sg-a"))
                .egress("sg-b", all(), cidr("203.0.113.0/24"))
                .iface("web", &["192.0.2.10", "2001:db8::10"], &["sg-a"])
                .iface("db", &["192.0.2.11"], &["sg-a", "sg-b"])
                .iface("lb", &["192.0.2.12", "2001:db8::12"], &["sg-b"])
                .build(),
        ),
        (
            "untracked",
            PolicyBuilder::new()
                .ingress("sg-w", tcp_range(0, 1024), cidr("0.0.0.0/0"))
                .ingress("sg-w", tcp(22), cidr("198.51.100.0/24"))
                .ingress("sg-w", udp(53), cidr("::/0"))
                .egress("sg-w", all(), cidr("0.0.0.0/0"))
                .egress("sg-w", udp_range(0, 65535), cidr("::/0"))
                .ingress("sg-w", icmp_all(), cidr("0.0.0.0/0"))
                .iface("web", &["192.0.2.10", "2001:db8::10"], &["sg-w"])
                .build(),
        ),
        (
            "prefix-lists",
            PolicyBuilder::new()
                .prefix_list(
                    "pl-1",
                    &["198.51.100.0/25", "198.51.100.192/26", "203.0.113.7/32"],
                )
                .prefix_list("pl-6", &["2001:db8:1::/64", "2001:db8:1:0:8000::/65"])
                .ingress("sg-p", tcp_range(1000, 1999), pl("pl-1"))
                .ingress("sg-p", tcp(1500), cidr("198.51.100.0/24"))
                .ingress("sg-p", udp(53), pl("pl-6"))
                .ingress("sg-p", icmpv6_type(128), pl("pl-6"))
                .egress("sg-p", tcp_range(0, 65535), pl("pl-1"))
                .egress("sg-p", all(), sg("sg-p"))
                .egress("sg-p", Protocol::Number(47), cidr("0.0.0.0/0"))
                .iface("a", &["192.0.2.10", "2001:db8::10"], &["sg-p"])
                .iface("b", &["192.0.2.20", "2001:db8::20"], &["sg-p"])
                .build(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// mini_compile
// ---------------------------------------------------------------------------------------------

/// A prefix in the 128-bit address space the maps use (IPv4 at ::ffff:0:0/96).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct P128 {
    addr: u128,
    len: u8,
    v4: bool,
}

impl P128 {
    fn of(net: &IpNet) -> P128 {
        match net {
            IpNet::V4(n) => P128 {
                addr: (0xffffu128 << 32) | u128::from(u32::from(n.network())),
                len: 96 + n.prefix_len(),
                v4: true,
            },
            IpNet::V6(n) => P128 {
                addr: u128::from(n.network()),
                len: n.prefix_len(),
                v4: false,
            },
        }
    }
    fn host(a: &IpAddr) -> P128 {
        P128::of(&IpNet::from(*a))
    }
    fn covers(&self, o: &P128) -> bool {
        if self.v4 != o.v4 || self.len > o.len {
            return false;
        }
        let mask = if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.len))
        };
        (self.addr & mask) == (o.addr & mask)
    }
}

/// (protocol range, port range) boxes a rule allows, and its E4 width.
fn boxes(p: &Protocol) -> (Vec<(u8, u8, u16, u16)>, u64) {
    let icmp = |proto: u8, m: &IcmpMatch| match *m {
        IcmpMatch::All => (vec![(proto, proto, 0, 65535)], 65536),
        IcmpMatch::Type(t) => {
            let lo = u16::from(t) << 8;
            (vec![(proto, proto, lo, lo | 255)], 256)
        }
        IcmpMatch::TypeCode(t, c) => {
            let v = (u16::from(t) << 8) | u16::from(c);
            (vec![(proto, proto, v, v)], 1)
        }
    };
    match p {
        Protocol::All => (vec![(0, 255, 0, 65535)], 256 * 65536),
        Protocol::Tcp(r) => (vec![(6, 6, r.from, r.to)], u64::from(r.width())),
        Protocol::Udp(r) => (vec![(17, 17, r.from, r.to)], u64::from(r.width())),
        Protocol::Icmp(m) => icmp(1, m),
        Protocol::Icmpv6(m) => icmp(58, m),
        Protocol::Number(n) => (vec![(*n, *n, 0, 65535)], 65536),
    }
}

struct ClassRule {
    id: RuleId,
    /// Longest of the rule's prefixes covering the class prefix.
    len: u8,
    width: u64,
    boxes: Vec<(u8, u8, u16, u16)>,
    /// Per protocol (6, 17): C4 holds for packets this rule allows.
    untracked: [bool; 2],
}

/// Builds generation `generation`'s image of `policy` for the bound interfaces (policy interface name
/// -> ifindex), keeping counter slots of `prev`.
pub fn mini_compile(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    prev: &SlotTable,
    generation: u32,
    slot_capacity: u32,
) -> MapImage {
    let gbit = generation << 31;
    let mut ids: Vec<&RuleId> = policy.all_rules().map(|r| &r.id).collect();
    ids.sort();
    let slots = SlotTable::assign(prev, ids, slot_capacity).expect("slots");
    let mut img = MapImage {
        generation,
        slots,
        ..MapImage::default()
    };
    let mut next_class = 1u32;
    for (n, (name, &ifindex)) in bindings.iter().enumerate() {
        let iface = policy
            .interface(name)
            .expect("bound interface in the policy");
        let n = n as u32;
        let (scope_in, scope_out) = (gbit | (2 * n + 1), gbit | (2 * n + 2));
        img.ifaces.insert(
            IfaceKey {
                generation,
                ifindex,
            },
            IfaceConf {
                scope_in,
                scope_out,
                flags: 0,
                _pad: 0,
                timeouts: iface.timeouts,
            },
        );
        let groups: BTreeSet<_> = iface.groups.iter().collect();
        let rules = |d: Direction| -> Vec<&Rule> {
            groups
                .iter()
                .filter_map(|g| policy.groups.get(*g))
                .flat_map(|g| g.rules(d))
                .collect()
        };
        for (dir, scope) in [
            (Direction::Ingress, scope_in),
            (Direction::Egress, scope_out),
        ] {
            let here = rules(dir);
            let opposite = rules(dir.opposite());
            // Each rule's prefixes.
            let rule_prefixes: Vec<(&Rule, Vec<P128>)> = here
                .iter()
                .map(|r| (*r, prefixes(policy, &r.peer)))
                .collect();
            let mut all: BTreeSet<P128> = rule_prefixes
                .iter()
                .flat_map(|(_, ps)| ps.iter().copied())
                .collect();
            // The IPv4 root, so IPv4 remotes never fall into an IPv6 prefix like ::/0.
            all.insert(P128::of(&"0.0.0.0/0".parse().unwrap()));
            for p in all {
                let class = gbit | next_class;
                next_class += 1;
                let members: Vec<ClassRule> = rule_prefixes
                    .iter()
                    .filter_map(|(r, ps)| {
                        let len = ps.iter().filter(|q| q.covers(&p)).map(|q| q.len).max()?;
                        let (boxes, width) = boxes(&r.protocol);
                        let world = matches!(&r.peer, Peer::Cidr(n) if n.prefix_len() == 0);
                        let untracked = [6u8, 17]
                            .map(|proto| world && opposite_allows_all(&opposite, proto, p.v4));
                        Some(ClassRule {
                            id: r.id.clone(),
                            len,
                            width,
                            boxes,
                            untracked,
                        })
                    })
                    .collect();
                img.peers.insert(
                    LpmKey {
                        prefix_len: 32 + u32::from(p.len),
                        data: PeerData {
                            scope: scope.to_be_bytes(),
                            addr: p.addr.to_be_bytes(),
                        },
                    },
                    sg_common::PeerVal {
                        classes: [class, 0, 0, 0],
                    },
                );
                let slot = |id: &RuleId| img.slots.slot(id).expect("slot");
                for (proto, any, pages) in class_pages(&members, slot) {
                    for (n, page) in pages.into_iter().enumerate() {
                        let key = PortKey {
                            class,
                            proto,
                            any,
                            page: n as u16,
                        };
                        img.ports.insert(key, page);
                    }
                }
            }
        }
    }
    img
}

fn prefixes(policy: &Policy, peer: &Peer) -> Vec<P128> {
    match peer {
        Peer::Cidr(n) => vec![P128::of(n)],
        Peer::PrefixList(id) => policy.prefix_lists[id]
            .entries
            .iter()
            .map(P128::of)
            .collect(),
        Peer::Group(g) => policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(g))
            .flat_map(|i| i.addresses.iter().map(P128::host))
            .collect(),
    }
}

/// C4's opposite-direction condition: a /0 CIDR rule of the family allowing all of `proto`.
fn opposite_allows_all(opposite: &[&Rule], proto: u8, v4: bool) -> bool {
    opposite.iter().any(|r| {
        let world =
            matches!(&r.peer, Peer::Cidr(n) if n.prefix_len() == 0 && n.addr().is_ipv4() == v4);
        world
            && match r.protocol {
                Protocol::All => true,
                Protocol::Tcp(pr) => proto == 6 && pr.from == 0 && pr.to == 65535,
                Protocol::Udp(pr) => proto == 17 && pr.from == 0 && pr.to == 65535,
                _ => false,
            }
    })
}

/// The E4 winner among `rules` (longest prefix, then fewest points, then smallest id).
fn best<'a>(rules: impl Iterator<Item = &'a ClassRule>) -> Option<&'a ClassRule> {
    rules.min_by(|x, y| {
        y.len
            .cmp(&x.len)
            .then(x.width.cmp(&y.width))
            .then(x.id.cmp(&y.id))
    })
}

/// A class's pages, as `(protocol, any, pages by number)`: the every-protocol page when some
/// rule covers every protocol, and a tree for each protocol some narrower rule names (and for
/// TCP/UDP when C4 may flag them), its segments found by a sweep over the rules' port bounds.
fn class_pages(rules: &[ClassRule], slot: impl Fn(&RuleId) -> u32) -> Vec<(u8, u8, Vec<PortPage>)> {
    let no_rule = RuleVal { slot: 0, flags: 0 };
    let every = |r: &ClassRule| r.boxes.contains(&(0, 255, 0, 65535));
    let mut out = Vec::new();
    if let Some(r) = best(rules.iter().filter(|r| every(r))) {
        let v = RuleVal {
            slot: slot(&r.id),
            flags: 0,
        };
        out.push((0, 1, vec![PortPage::uniform(v)]));
    }
    let mut protos: BTreeSet<u8> = rules
        .iter()
        .flat_map(|r| r.boxes.iter())
        .filter(|b| b.0 == b.1)
        .map(|b| b.0)
        .collect();
    if rules.iter().any(|r| r.untracked[0]) {
        protos.insert(6);
    }
    if rules.iter().any(|r| r.untracked[1]) {
        protos.insert(17);
    }
    for proto in protos {
        let boxes = |r: &ClassRule| -> Vec<(u16, u16)> {
            r.boxes
                .iter()
                .filter(|b| b.0 <= proto && proto <= b.1)
                .map(|b| (b.2, b.3))
                .collect()
        };
        let mut bounds: BTreeSet<u32> = BTreeSet::from([0]);
        for r in rules {
            for (lo, hi) in boxes(r) {
                bounds.insert(u32::from(lo));
                bounds.insert(u32::from(hi) + 1);
            }
        }
        let mut segs: Vec<(u16, RuleVal)> = Vec::new();
        for &start in bounds.iter().filter(|&&b| b <= 65535) {
            let port = start as u16;
            let covering = rules
                .iter()
                .filter(|r| boxes(r).iter().any(|&(lo, hi)| lo <= port && port <= hi));
            let v = match best(covering) {
                None => no_rule,
                Some(r) => {
                    let untracked = match proto {
                        6 => rules.iter().any(|x| {
                            x.untracked[0]
                                && boxes(x).iter().any(|&(lo, hi)| lo <= port && port <= hi)
                        }),
                        17 => rules.iter().any(|x| {
                            x.untracked[1]
                                && boxes(x).iter().any(|&(lo, hi)| lo <= port && port <= hi)
                        }),
                        _ => false,
                    };
                    RuleVal {
                        slot: slot(&r.id),
                        flags: if untracked { rule_flags::UNTRACKED } else { 0 },
                    }
                }
            };
            if segs.last().is_none_or(|s| s.1 != v) {
                segs.push((port, v));
            }
        }
        out.push((proto, 0, page_tree(&segs)));
    }
    out
}

/// The page tree of `segs`, page 0 the root: up to `PAGE_SEGS` segments a page, runs of
/// `PAGE_SEGS`, `PAGE_SEGS`^2, ... segments per child page, children numbered depth first.
/// Written from sg-common's page layout, apart from the compiler's own pagination, so the
/// kernel's walk is tested against the contract.
pub fn page_tree(segs: &[(u16, RuleVal)]) -> Vec<PortPage> {
    let mut pages = Vec::new();
    paginate(segs, &mut pages);
    pages
}

/// Writes the page of `segs` (and its children) at the end of `pages`; returns its number.
fn paginate(segs: &[(u16, RuleVal)], pages: &mut Vec<PortPage>) -> u16 {
    let n = pages.len();
    pages.push(PortPage::uniform(RuleVal { slot: 0, flags: 0 }));
    let items: Vec<(u16, RuleVal)> = if segs.len() <= PAGE_SEGS {
        segs.to_vec()
    } else {
        let mut per = PAGE_SEGS;
        while per * PAGE_SEGS < segs.len() {
            per *= PAGE_SEGS;
        }
        segs.chunks(per)
            .map(|run| {
                let child = paginate(run, pages);
                let v = RuleVal {
                    slot: u32::from(child),
                    flags: rule_flags::PAGE,
                };
                (run[0].0, v)
            })
            .collect()
    };
    pages[n] = PortPage::of(&items);
    n as u16
}

// ---------------------------------------------------------------------------------------------
// Fixture tables
// ---------------------------------------------------------------------------------------------

/// Runs fixture rows against a loaded dataplane, collecting every failure (so one run shows
/// the whole table's state) and panicking at the end if any row failed.
pub struct Table {
    pub dp: Dataplane,
    pub net: Net,
    pub policy: Policy,
    pub bindings: BTreeMap<String, u32>,
    pub image: MapImage,
    /// rule id -> slot over every image applied (flows outlive their rules: X1).
    pub slot_of: BTreeMap<RuleId, u32>,
    pub name: &'static str,
    rows: usize,
    failures: Vec<String>,
}

impl Table {
    pub fn new(name: &'static str, net: Net, policy: Policy, bindings: &[(&str, u32)]) -> Table {
        let mut dp = load();
        let bindings: BTreeMap<String, u32> =
            bindings.iter().map(|(n, i)| (n.to_string(), *i)).collect();
        let g = dp.next_generation();
        let image = mini_compile(&policy, &bindings, &SlotTable::default(), g, 1024);
        dp.apply(&image)
            .unwrap_or_else(|e| panic!("{name}: applying the first image: {e:#}"));
        let slot_of = image.slots.by_rule.clone();
        Table {
            dp,
            net,
            policy,
            bindings,
            image,
            slot_of,
            name,
            rows: 0,
            failures: Vec::new(),
        }
    }

    /// Compiles and applies a new policy (the next generation).
    pub fn set_policy(&mut self, policy: Policy) {
        let g = self.dp.next_generation();
        let image = mini_compile(&policy, &self.bindings, &self.image.slots, g, 1024);
        self.dp
            .apply(&image)
            .unwrap_or_else(|e| panic!("{}: applying a new image: {e:#}", self.name));
        self.slot_of
            .extend(image.slots.by_rule.iter().map(|(r, s)| (r.clone(), *s)));
        self.policy = policy;
        self.image = image;
    }

    /// One fixture row: `intent` (cite the SEMANTICS id), the hook and interface, the frame,
    /// the expected reason and the rule (builder number) expected to be charged.
    pub fn row(
        &mut self,
        intent: &str,
        hook: Hook,
        ifindex: u32,
        frame: &[u8],
        reason: Reason,
        rule: Option<u64>,
    ) {
        self.rows += 1;
        let want_slot = rule.map(|n| {
            *self.slot_of.get(&rule_id(n)).unwrap_or_else(|| {
                panic!(
                    "{}: row {intent:?} names rule {n}, not in any image",
                    self.name
                )
            })
        });
        match self.dp.run_frame(hook, frame, ifindex) {
            Err(e) => self
                .failures
                .push(format!("{intent} [{hook:?}]: run failed: {e:#}")),
            Ok(r) => {
                let mut bad = Vec::new();
                if r.reason != reason {
                    bad.push(format!("reason {:?}, want {reason:?}", r.reason));
                }
                if r.pass != reason.is_pass() {
                    bad.push(format!(
                        "action {} (pass={}), want pass={}",
                        r.action,
                        r.pass,
                        reason.is_pass()
                    ));
                }
                if r.slot != want_slot {
                    bad.push(format!(
                        "charged slot {:?}, want {want_slot:?} (rule {rule:?})",
                        r.slot
                    ));
                }
                if !bad.is_empty() {
                    self.failures
                        .push(format!("{intent} [{hook:?}]: {}", bad.join("; ")));
                }
            }
        }
    }

    /// The same stateless row on both ingress hooks (XDP and TC).
    pub fn row_in(
        &mut self,
        intent: &str,
        ifindex: u32,
        frame: &[u8],
        reason: Reason,
        rule: Option<u64>,
    ) {
        self.row(intent, Hook::XdpIn, ifindex, frame, reason, rule);
        self.row(intent, Hook::TcIn, ifindex, frame, reason, rule);
    }

    pub fn finish(self) {
        let passed = self.rows - self.failures.len();
        eprintln!(
            "fixture table {}: {passed}/{} rows pass",
            self.name, self.rows
        );
        if !self.failures.is_empty() {
            panic!(
                "fixture table {}: {} of {} rows failed:\n  {}",
                self.name,
                self.failures.len(),
                self.rows,
                self.failures.join("\n  ")
            );
        }
    }
}
