//! The embedded eBPF object loads, passes the verifier, and judges packets as design.md says.
//!
//! Privileged (root): every test loads its own copy of the object (its own maps, nothing
//! pinned, nothing attached) and runs hand-built frames through the programs with
//! BPF_PROG_TEST_RUN. Failures panic with context (the verifier log for load errors); nothing
//! is skipped.
//!
//! Each packet is checked three ways: the action the program returned, the ONE reason counter
//! that moved (exactly one must move, by one), and where relevant the maps it left behind.
//! The full fixture table and the differential tests against the reference model live
//! elsewhere; these pin the program's plumbing.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramInfo, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use sg_agent::packet::{arp_request, checksum, raw_eth};
use sg_common::{
    Config, DIR_INGRESS, ECHO_OPENED_BY_PEER, Event, FlowKey, FlowVal, IfaceConf, IfaceKey,
    PAGE_SEGS, PeerData, PeerVal, PortKey, PortPage, Reason, RuleCounter, RuleVal, Timeouts,
    ct_flags, ct_stat, ct_state, event_kind, iface_flags, maps, progs, proto, rule_flags,
};
use sg_testkit::dataplane_harness::page_tree;

// Action values (linux/bpf.h, linux/pkt_cls.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// The loopback device: always present, and BPF_PROG_TEST_RUN accepts it for both hooks.
const LO: u32 = 1;

const SCOPE_IN: u32 = 1;
const SCOPE_OUT: u32 = 2;
const CLASS_WEB: u32 = 7;
const SLOT_SSH: u32 = 5;
const SLOT_UDP: u32 = 6;
const SLOT_PING: u32 = 9;
const SLOT_OUT_DNS: u32 = 11;

const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prog {
    XdpIn,
    TcIn,
    TcOut,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::XdpIn => progs::XDP_INGRESS,
            Prog::TcIn => progs::TC_INGRESS,
            Prog::TcOut => progs::TC_EGRESS,
        }
    }
    fn pass(self) -> u32 {
        if self == Prog::XdpIn {
            XDP_PASS
        } else {
            TC_ACT_OK
        }
    }
    fn drop(self) -> u32 {
        if self == Prog::XdpIn {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        }
    }
}

/// One loaded copy of the object.
struct Dp {
    bpf: Ebpf,
    /// Port rules written so far: (class, protocol) -> port (None: every port) -> value.
    ports: BTreeMap<(u32, u8), BTreeMap<Option<u16>, RuleVal>>,
}

impl Dp {
    /// Loads the object with default capacities and all three programs.
    fn new() -> Dp {
        Dp::with(|_| {})
    }

    fn with(tune: impl FnOnce(&mut EbpfLoader)) -> Dp {
        let mut loader = EbpfLoader::new();
        tune(&mut loader);
        let mut bpf = loader
            .load(sg_agent::EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the embedded eBPF object: {e:#}"));
        let xdp: &mut Xdp = bpf
            .program_mut(progs::XDP_INGRESS)
            .unwrap_or_else(|| panic!("{} missing from the object", progs::XDP_INGRESS))
            .try_into()
            .expect("sg_xdp_in is an XDP program");
        xdp.load()
            .unwrap_or_else(|e| panic!("verifier rejected {}: {e}", progs::XDP_INGRESS));
        for name in [progs::TC_INGRESS, progs::TC_EGRESS] {
            let tc: &mut SchedClassifier = bpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} missing from the object"))
                .try_into()
                .unwrap_or_else(|e| panic!("{name} is a classifier: {e}"));
            tc.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e}"));
        }
        Dp {
            bpf,
            ports: BTreeMap::new(),
        }
    }

    fn info(&self, prog: Prog) -> ProgramInfo {
        let r = match prog {
            Prog::XdpIn => self.xdp().info(),
            _ => self.tc(prog).info(),
        };
        r.unwrap_or_else(|e| panic!("program info of {}: {e}", prog.name()))
    }

    fn xdp(&self) -> &Xdp {
        self.bpf
            .program(progs::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn tc(&self, prog: Prog) -> &SchedClassifier {
        self.bpf.program(prog.name()).unwrap().try_into().unwrap()
    }

    /// Runs `frame` through `prog` on interface `ifindex` `repeat` times; returns the action
    /// and the kernel's average ns per run.
    fn run_on(&self, prog: Prog, ifindex: u32, frame: &[u8], repeat: u32) -> (u32, u64) {
        let ctx = match prog {
            Prog::XdpIn => xdp_md(ifindex, frame.len()),
            _ => sk_buff(ifindex),
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        };
        let r = match prog {
            Prog::XdpIn => self.xdp().test_run(opts),
            _ => self.tc(prog).test_run(opts),
        }
        .unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN of {} on {frame:02x?}: {e:?}",
                prog.name()
            )
        });
        (r.return_value, r.duration.as_nanos() as u64)
    }

    /// Runs one frame on loopback and returns (action, the one reason whose counter moved).
    fn judge(&self, prog: Prog, frame: &[u8]) -> (u32, Reason) {
        let before = self.reasons();
        let (action, _) = self.run_on(prog, LO, frame, 1);
        let after = self.reasons();
        let moved: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .map(|&r| (r, after[r as usize] - before[r as usize]))
            .filter(|&(_, d)| d != 0)
            .collect();
        assert!(
            moved.len() == 1 && moved[0].1 == 1,
            "{}: exactly one reason counter must move by one per packet, moved: {moved:?}",
            prog.name()
        );
        (action, moved[0].0)
    }

    /// Asserts the action and the reason of one packet.
    #[track_caller]
    fn expect(&self, prog: Prog, frame: &[u8], reason: Reason) {
        self.expect_rows(&[(prog, frame, reason)]);
    }

    /// Asserts the action and the reason of each packet, in order; a failure names its row.
    #[track_caller]
    fn expect_rows(&self, rows: &[(Prog, &[u8], Reason)]) {
        for (i, &(prog, frame, reason)) in rows.iter().enumerate() {
            let (action, got) = self.judge(prog, frame);
            assert_eq!(got, reason, "row {i}: {}: reason", prog.name());
            let want = if reason.is_pass() {
                prog.pass()
            } else {
                prog.drop()
            };
            assert_eq!(
                action,
                want,
                "row {i}: {}: action for {reason:?}",
                prog.name()
            );
        }
    }

    /// Reason counters summed over CPUs, indexed by reason value.
    fn reasons(&self) -> Vec<u64> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::REASON_COUNTERS))
            .expect("SG_REASON_CNT is a per-CPU array of u64");
        (0..Reason::COUNT)
            .map(|i| m.get(&i, 0).expect("read a reason counter").iter().sum())
            .collect()
    }

    fn stat(&self, idx: u32) -> u64 {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::CT_STATS)).unwrap();
        m.get(&idx, 0).unwrap().iter().sum()
    }

    fn rule_counter(&self, slot: u32) -> RuleCounter {
        let m: PerCpuArray<&MapData, RuleCounter> =
            PerCpuArray::try_from(self.map(maps::RULE_COUNTERS)).unwrap();
        m.get(&slot, 0)
            .unwrap()
            .iter()
            .fold(RuleCounter::default(), |a, c| RuleCounter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
    }

    fn map(&self, name: &str) -> &aya::maps::Map {
        self.bpf
            .map(name)
            .unwrap_or_else(|| panic!("map {name} missing from the object"))
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.bpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} missing from the object"))
    }

    fn flow(&self, map: &str, key: &FlowKey) -> Option<FlowVal> {
        let m: HashMap<&MapData, FlowKey, FlowVal> = HashMap::try_from(self.map(map)).unwrap();
        m.get(key, 0).ok()
    }

    fn put_flow(&mut self, map: &str, key: &FlowKey, val: &FlowVal) {
        let mut m: HashMap<&mut MapData, FlowKey, FlowVal> =
            HashMap::try_from(self.map_mut(map)).unwrap();
        m.insert(key, val, 0).expect("write a conntrack entry");
    }

    fn iface(&mut self, ifindex: u32, flags: u32) {
        let mut m: HashMap<&mut MapData, IfaceKey, IfaceConf> =
            HashMap::try_from(self.map_mut(maps::IFACES)).unwrap();
        let conf = IfaceConf {
            scope_in: SCOPE_IN,
            scope_out: SCOPE_OUT,
            flags,
            _pad: 0,
            timeouts: Timeouts::AWS_DEFAULT,
        };
        m.insert(
            IfaceKey {
                generation: 0,
                ifindex,
            },
            conf,
            0,
        )
        .expect("write SG_IFACES");
    }

    /// A peer prefix in `scope`: `addr` is 16 bytes (IPv4 mapped), `bits` the CIDR length in
    /// the 128-bit space.
    fn peer(&mut self, scope: u32, addr: [u8; 16], bits: u32, class: u32) {
        self.peer_chain(scope, addr, bits, [class, 0, 0, 0]);
    }

    /// A peer prefix whose value is a chain of classes (asked in order, 0 ends it).
    fn peer_chain(&mut self, scope: u32, addr: [u8; 16], bits: u32, classes: [u32; 4]) {
        let mut m: LpmTrie<&mut MapData, PeerData, PeerVal> =
            LpmTrie::try_from(self.map_mut(maps::PEERS)).unwrap();
        let key = Key::new(
            32 + bits,
            PeerData {
                scope: scope.to_be_bytes(),
                addr,
            },
        );
        m.insert(&key, PeerVal { classes }, 0)
            .expect("write SG_PEERS");
    }

    /// A port rule of a class: `proto` None = every protocol (the class's every-protocol
    /// page); `port` None = every port of it. Rewrites the protocol's page (one page: the
    /// single ports of a protocol over its every-port value).
    fn port(&mut self, class: u32, proto: Option<u8>, port: Option<u16>, slot: u32, flags: u32) {
        let val = RuleVal { slot, flags };
        let Some(proto) = proto else {
            let key = PortKey {
                class,
                proto: 0,
                any: 1,
                page: 0,
            };
            self.page(key, PortPage::uniform(val));
            return;
        };
        let rules = self.ports.entry((class, proto)).or_default();
        rules.insert(port, val);
        let base = rules
            .get(&None)
            .copied()
            .unwrap_or(RuleVal { slot: 0, flags: 0 });
        let mut segs: Vec<(u16, RuleVal)> = vec![(0, base)];
        for (&p, &v) in rules.iter().filter_map(|(p, v)| Some((p.as_ref()?, v))) {
            segs.retain(|s| s.0 != p);
            segs.push((p, v));
            if p < u16::MAX && !rules.contains_key(&Some(p + 1)) {
                segs.push((p + 1, base));
            }
        }
        assert!(
            segs.len() <= PAGE_SEGS,
            "one page holds {PAGE_SEGS} segments"
        );
        let key = PortKey {
            class,
            proto,
            any: 0,
            page: 0,
        };
        self.page(key, PortPage::of(&segs));
    }

    fn page(&mut self, key: PortKey, page: PortPage) {
        let mut m: HashMap<&mut MapData, PortKey, PortPage> =
            HashMap::try_from(self.map_mut(maps::PORTS)).unwrap();
        m.insert(key, page, 0).expect("write SG_PORTS");
    }

    /// The policy most tests use, on loopback. Ingress from 192.0.2.0/24 and 2001:db8:1::/48:
    /// TCP 22 (slot 5), UDP 5000 (slot 6), ICMP/ICMPv6 echo request (slot 9). Egress to
    /// 192.0.2.0/24: UDP 53 (slot 11). Nothing else.
    /// The C4 case: an untracked rule (slot 21) for TCP 80 in the web class.
    fn web_80_untracked(&mut self) {
        self.port(
            CLASS_WEB,
            Some(proto::TCP),
            Some(80),
            21,
            rule_flags::UNTRACKED,
        );
    }

    fn standard(&mut self) {
        self.iface(LO, 0);
        self.peer(
            SCOPE_IN,
            v4m(Ipv4Addr::new(192, 0, 2, 0)),
            96 + 24,
            CLASS_WEB,
        );
        self.peer(
            SCOPE_IN,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0).octets(),
            48,
            CLASS_WEB,
        );
        self.port(CLASS_WEB, Some(proto::TCP), Some(22), SLOT_SSH, 0);
        self.port(CLASS_WEB, Some(proto::UDP), Some(5000), SLOT_UDP, 0);
        self.port(CLASS_WEB, Some(proto::ICMP), Some(8 << 8), SLOT_PING, 0);
        self.port(CLASS_WEB, Some(proto::ICMPV6), Some(128 << 8), SLOT_PING, 0);
        self.peer(SCOPE_OUT, v4m(Ipv4Addr::new(192, 0, 2, 0)), 96 + 24, 8);
        self.port(8, Some(proto::UDP), Some(53), SLOT_OUT_DNS, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Test contexts and frames
// ---------------------------------------------------------------------------------------------

/// `struct xdp_md` for BPF_PROG_TEST_RUN: data = 0, data_end = the frame, ingress_ifindex.
fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0, len as u32, 0, ifindex, 0, 0] {
        v.extend_from_slice(&w.to_ne_bytes());
    }
    v
}

/// `struct __sk_buff` (192 bytes) with only `ifindex` (offset 40) set: the kernel rejects
/// any field it does not accept from userspace.
fn sk_buff(ifindex: u32) -> Vec<u8> {
    let mut v = vec![0u8; 192];
    v[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

fn v4m(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

/// An IPv4 header (IHL 5 unless `options` are given) and its payload.
fn ipv4_full(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4));
    let hl = 20 + options.len();
    let mut h = vec![0x40 | (hl / 4) as u8, 0];
    h.extend_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An untagged Ethernet frame carrying an IPv4 packet.
fn eth4(packet: &[u8]) -> Vec<u8> {
    raw_eth(&[], 0x0800, packet)
}

/// An untagged Ethernet frame carrying an IPv6 packet.
fn eth6(packet: &[u8]) -> Vec<u8> {
    raw_eth(&[], 0x86dd, packet)
}

/// A frame holding an IPv4 fragment (REMOTE to LOCAL): `frag` is the flags-and-offset field.
fn frag4_in(proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    eth4(&ipv4_full(proto, REMOTE, LOCAL, id, frag, &[], payload))
}

/// A frame holding an IPv6 fragment (REMOTE6 to LOCAL6): `offset` in 8-byte units.
fn frag6_in(next: u8, offset: u16, more: bool, id: u32, payload: &[u8]) -> Vec<u8> {
    eth6(&ipv6(
        44,
        REMOTE6,
        LOCAL6,
        &frag6(next, offset, more, id, payload),
    ))
}

fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ipv4_full(proto, src, dst, 1, 0, &[], payload)
}

fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte IPv6 extension header (hop-by-hop / destination options with padding).
fn ext8(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(payload);
    h
}

/// An IPv6 fragment header: `offset` in 8-byte units.
fn frag6(next: u8, offset: u16, more: bool, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&(offset << 3 | more as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn icmp(ty: u8, code: u8, id: u16, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(rest);
    h
}

fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    eth4(&ipv4(proto::TCP, src, dst, &tcp(sport, dport, flags)))
}

fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    eth4(&ipv4(proto::UDP, src, dst, &udp(sport, dport, b"hello")))
}

fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, id: u16, rest: &[u8]) -> Vec<u8> {
    eth4(&ipv4(proto::ICMP, src, dst, &icmp(ty, code, id, rest)))
}

/// The conntrack key of an IPv4 flow on loopback.
fn key4(proto: u8, local: Ipv4Addr, lport: u16, remote: Ipv4Addr, rport: u16) -> FlowKey {
    FlowKey {
        ifindex: LO,
        proto,
        _pad: [0; 3],
        lport,
        rport,
        local: v4m(local),
        remote: v4m(remote),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

#[test]
fn all_three_programs_pass_the_verifier_and_every_map_is_declared() {
    let dp = Dp::new();
    for prog in [Prog::XdpIn, Prog::TcIn, Prog::TcOut] {
        let info = dp.info(prog);
        let xlated = info
            .size_translated()
            .unwrap_or_else(|| panic!("{}: no translated size", prog.name()));
        let verified = info
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("{}: no verified instruction count", prog.name()));
        println!(
            "{}: {} instructions after the verifier, {} processed by it, {} bytes jited",
            prog.name(),
            xlated / 8,
            verified,
            info.size_jitted()
        );
        assert!(xlated / 8 > 100, "{}: suspiciously small", prog.name());
    }
    for name in maps::ALL {
        dp.map(name);
    }
}

#[test]
fn capacities_can_be_changed_at_load_time() {
    let dp = Dp::with(|l| {
        l.map_max_entries(maps::CT, 1024)
            .map_max_entries(maps::CT_NEW, 512);
    });
    for (name, want) in [(maps::CT, 1024), (maps::CT_NEW, 512)] {
        let aya::maps::Map::HashMap(m) = dp.map(name) else {
            panic!("{name} is not a hash map");
        };
        let info = m
            .info()
            .unwrap_or_else(|e| panic!("map info of {name}: {e}"));
        assert_eq!(info.max_entries(), want, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

#[test]
fn c1_allowed_syn_creates_state_then_reply_and_handshake_pass_and_promote() {
    let mut dp = Dp::new();
    dp.standard();
    let key = key4(proto::TCP, LOCAL, 22, REMOTE, 40000);

    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40000, LOCAL, 22, SYN),
        Reason::PassRuleNew,
    );
    let f = dp
        .flow(maps::CT_NEW, &key)
        .expect("the SYN created a SG_CT_NEW entry");
    assert_eq!(
        (f.state, f.origin, f.rule_slot),
        (ct_state::NEW, DIR_INGRESS, SLOT_SSH)
    );
    assert_eq!(f.packets, [1, 0]);
    assert_eq!(
        f.timeouts,
        [432_000, 30, 30],
        "TCP timeouts captured from the interface: [established, embryonic, closing]"
    );
    assert!(dp.flow(maps::CT, &key).is_none());

    // The SYN-ACK goes out: no egress rule allows TCP, conntrack does (C1).
    dp.expect(
        Prog::TcOut,
        &tcp4(LOCAL, 22, REMOTE, 40000, SYN | ACK),
        Reason::PassCtReply,
    );
    let f = dp.flow(maps::CT_NEW, &key).unwrap();
    assert_eq!((f.state, f.packets), (ct_state::REPLIED, [1, 1]));

    // The handshake's ACK from the opener: established, moved to SG_CT.
    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40000, LOCAL, 22, ACK),
        Reason::PassCtOriginal,
    );
    assert!(
        dp.flow(maps::CT_NEW, &key).is_none(),
        "promoted out of SG_CT_NEW"
    );
    let f = dp.flow(maps::CT, &key).expect("promoted into SG_CT");
    assert_eq!(f.state, ct_state::ESTABLISHED);
    assert_eq!(f.flags & ct_flags::CONFIRMED, ct_flags::CONFIRMED);
    assert_eq!(f.packets, [2, 1]);

    // Data both ways keeps hitting SG_CT; the TC ingress hook sees the same flow.
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::TcIn, &tcp4(REMOTE, 40000, LOCAL, 22, ACK), Reason::PassCtOriginal),
        (Prog::TcOut, &tcp4(LOCAL, 22, REMOTE, 40000, ACK), Reason::PassCtReply),
    ]);
    // FIN: closing.
    dp.expect(
        Prog::TcOut,
        &tcp4(LOCAL, 22, REMOTE, 40000, FIN | ACK),
        Reason::PassCtReply,
    );
    assert_eq!(dp.flow(maps::CT, &key).unwrap().state, ct_state::CLOSING);

    // The whole flow is charged to the rule that opened it.
    let c = dp.rule_counter(SLOT_SSH);
    assert_eq!(c.packets, 6);
    assert_eq!(c.bytes, 6 * 54);
    assert_eq!(dp.stat(ct_stat::NEW_INSERTS), 1);
    assert_eq!(dp.stat(ct_stat::CT_INSERTS), 1);
    assert_eq!(dp.stat(ct_stat::NEW_DELETES), 1);
}

#[test]
fn e1_packet_no_rule_allows_is_dropped_with_drop_no_rule() {
    let mut dp = Dp::new();
    dp.standard();
    // Wrong port, unknown peer, egress TCP (only UDP 53 out): no rule.
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(REMOTE, 40000, LOCAL, 23, SYN), Reason::DropNoRule),
        (Prog::TcIn, &tcp4(STRANGER, 40000, LOCAL, 22, SYN), Reason::DropNoRule),
        (Prog::TcOut, &tcp4(LOCAL, 40000, REMOTE, 22, SYN), Reason::DropNoRule),
    ]);
    // E2: egress rules are their own set: UDP 53 out passes, UDP 53 in does not.
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::TcOut, &udp4(LOCAL, 5353, REMOTE, 53), Reason::PassRuleNew),
        (Prog::XdpIn, &udp4(REMOTE, 5353, LOCAL, 53), Reason::DropNoRule),
    ]);
    assert_eq!(dp.rule_counter(SLOT_SSH).packets, 0, "drops charge no rule");
}

/// The kernel walks a class's page tree to the segment of the port: three levels for 301
/// segments (a root, two pages of 256 and of 45 segments, their leaves), segment i from port
/// 100 i, every even one a rule of its own, every odd one no rule of the class (denied: the
/// chain has no next class). A protocol without a tree falls to the class's
/// every-protocol page, or to the next class. A tree pointing to a missing page, or deeper
/// than `PAGE_LEVELS` (a page pointing to itself), denies instead of looping.
#[test]
fn e4_a_class_answers_from_the_segment_of_its_page_tree_that_holds_the_port() {
    let mut dp = Dp::new();
    dp.iface(LO, 0);
    let (a, b, broken, looping) = (31, 32, 33, 34);
    let net = |last: u8| v4m(Ipv4Addr::new(192, 0, 2, last));
    dp.peer_chain(SCOPE_IN, net(0), 96 + 24, [a, 0, 0, 0]);
    dp.peer_chain(SCOPE_IN, net(22), 128, [a, b, 0, 0]);
    dp.peer_chain(SCOPE_IN, net(20), 128, [broken, 0, 0, 0]);
    dp.peer_chain(SCOPE_IN, net(21), 128, [looping, b, 0, 0]);
    let segs: Vec<(u16, RuleVal)> = (0..301u32)
        .map(|i| {
            let slot = if i % 2 == 0 { 1000 + i } else { 0 };
            (100 * i as u16, RuleVal { slot, flags: 0 })
        })
        .collect();
    let pages = page_tree(&segs);
    assert_eq!(
        pages.len(),
        1 + (1 + 16) + (1 + 3),
        "the tree this test means"
    );
    for (n, page) in pages.iter().enumerate() {
        let key = PortKey {
            class: a,
            proto: proto::TCP,
            any: 0,
            page: n as u16,
        };
        dp.page(key, *page);
    }
    // b: every protocol, slot 77.
    dp.port(b, None, None, 77, 0);
    let src = Ipv4Addr::new(192, 0, 2, 9);
    let mut sport = 41000;
    let mut charged = BTreeMap::new();
    for i in [
        0u32, 1, 2, 15, 16, 17, 254, 255, 256, 257, 271, 298, 299, 300,
    ] {
        for port in [100 * i, 100 * i + 99, 100 * i + 37] {
            let port = port.min(65535) as u16;
            sport += 1;
            let (want, slot) = if i % 2 == 0 {
                (Reason::PassRuleNew, 1000 + i)
            } else {
                (Reason::DropNoRule, 0)
            };
            dp.expect(Prog::XdpIn, &tcp4(src, sport, LOCAL, port, SYN), want);
            *charged.entry(slot).or_insert(0u64) += 1;
        }
    }
    // The last segment reaches 65535.
    dp.expect(
        Prog::XdpIn,
        &tcp4(src, 40999, LOCAL, 65535, SYN),
        Reason::PassRuleNew,
    );
    *charged.entry(1300).or_insert(0) += 1;
    for (&slot, &n) in charged.iter().filter(|(s, _)| **s != 0) {
        assert_eq!(dp.rule_counter(slot).packets, n, "slot {slot}");
    }
    // a has no UDP tree and no every-protocol page: alone it denies, with b after it b
    // answers, also where a has no rule for a TCP port.
    dp.expect(
        Prog::XdpIn,
        &udp4(src, 40998, LOCAL, 53),
        Reason::DropNoRule,
    );
    let with_b = Ipv4Addr::new(192, 0, 2, 22);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &udp4(with_b, 40998, LOCAL, 53), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(with_b, 40995, LOCAL, 150, SYN), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(with_b, 40994, LOCAL, 250, SYN), Reason::PassRuleNew),
    ]);
    assert_eq!(
        dp.rule_counter(77).packets,
        2,
        "b: the UDP packet and TCP 150"
    );
    assert_eq!(dp.rule_counter(1002).packets, 4, "a's segment 2 (200-299)");
    // A root whose segment points to a page that is not there: no answer, denied.
    let to_missing = RuleVal {
        slot: 9,
        flags: rule_flags::PAGE,
    };
    let root = |class| PortKey {
        class,
        proto: proto::TCP,
        any: 0,
        page: 0,
    };
    dp.page(root(broken), PortPage::uniform(to_missing));
    dp.expect(
        Prog::XdpIn,
        &tcp4(Ipv4Addr::new(192, 0, 2, 20), 40997, LOCAL, 80, SYN),
        Reason::DropNoRule,
    );
    // A page pointing to itself: the walk stops after PAGE_LEVELS pages; the class does not
    // answer, so the next class (b) does.
    let to_self = RuleVal {
        slot: 0,
        flags: rule_flags::PAGE,
    };
    dp.page(root(looping), PortPage::uniform(to_self));
    dp.expect(
        Prog::XdpIn,
        &tcp4(Ipv4Addr::new(192, 0, 2, 21), 40996, LOCAL, 80, SYN),
        Reason::PassRuleNew,
    );
    assert_eq!(dp.rule_counter(77).packets, 3);
}

/// E4 step 1 in the kernel: a peer value is a chain of classes, the first class with an entry
/// for the (protocol, port) decides, a 0 ends the chain, a miss in every class denies.
#[test]
fn e4_the_first_class_of_the_chain_with_an_entry_decides() {
    let mut dp = Dp::new();
    dp.iface(LO, 0);
    let (a, b, c, d) = (21, 22, 23, 24);
    // 192.0.2.0/24 -> [b, a]; 192.0.2.10/32 -> [d, c, b, a] (the longest chain);
    // 192.0.2.11/32 -> [c, 0, b, a]: nothing after the 0 is asked.
    let net = v4m(Ipv4Addr::new(192, 0, 2, 0));
    dp.peer_chain(SCOPE_IN, net, 96 + 24, [b, a, 0, 0]);
    dp.peer_chain(SCOPE_IN, v4m(REMOTE), 128, [d, c, b, a]);
    dp.peer_chain(
        SCOPE_IN,
        v4m(Ipv4Addr::new(192, 0, 2, 11)),
        128,
        [c, 0, b, a],
    );
    dp.port(a, Some(proto::TCP), Some(22), SLOT_SSH, 0);
    dp.port(a, Some(proto::TCP), Some(80), SLOT_UDP, 0);
    dp.port(b, Some(proto::TCP), Some(80), SLOT_PING, 0);
    dp.port(c, Some(proto::UDP), None, SLOT_OUT_DNS, 0);
    let other = Ipv4Addr::new(192, 0, 2, 12);
    let eleven = Ipv4Addr::new(192, 0, 2, 11);
    // The /24 chain: b answers 80 (over a's 80), a answers 22, nobody 23.
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(other, 40001, LOCAL, 80, SYN), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(other, 40002, LOCAL, 22, SYN), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(other, 40003, LOCAL, 23, SYN), Reason::DropNoRule),
    ]);
    assert_eq!(
        dp.rule_counter(SLOT_PING).packets,
        1,
        "b's rule charged for 80"
    );
    assert_eq!(
        dp.rule_counter(SLOT_UDP).packets,
        0,
        "a's 80 is shadowed by b's"
    );
    assert_eq!(dp.rule_counter(SLOT_SSH).packets, 1);
    // The four-class chain reaches a at its last place.
    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40004, LOCAL, 22, SYN),
        Reason::PassRuleNew,
    );
    assert_eq!(dp.rule_counter(SLOT_SSH).packets, 2);
    dp.expect(
        Prog::XdpIn,
        &udp4(REMOTE, 40005, LOCAL, 9),
        Reason::PassRuleNew,
    );
    assert_eq!(dp.rule_counter(SLOT_OUT_DNS).packets, 1);
    // After a 0 nothing is asked: b and a would allow 80 and 22, but the chain ended.
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(eleven, 40006, LOCAL, 80, SYN), Reason::DropNoRule),
        (Prog::XdpIn, &tcp4(eleven, 40007, LOCAL, 22, SYN), Reason::DropNoRule),
        (Prog::XdpIn, &udp4(eleven, 40008, LOCAL, 9), Reason::PassRuleNew),
    ]);
    // An empty chain (the IPv4 barrier the compiler writes) denies.
    dp.peer_chain(SCOPE_IN, v4m(Ipv4Addr::new(0, 0, 0, 0)), 96, [0; 4]);
    dp.expect(
        Prog::XdpIn,
        &tcp4(STRANGER, 40009, LOCAL, 22, SYN),
        Reason::DropNoRule,
    );
}

#[test]
fn interface_without_policy_fails_closed_with_drop_no_policy() {
    let dp = Dp::new();
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(REMOTE, 40000, LOCAL, 22, SYN), Reason::DropNoPolicy),
        (Prog::TcOut, &udp4(LOCAL, 5353, REMOTE, 53), Reason::DropNoPolicy),
    ]);
}

#[test]
fn e7_the_active_generation_selects_the_interface_policy() {
    let mut dp = Dp::new();
    dp.standard(); // generation 0
    let syn = tcp4(REMOTE, 40060, LOCAL, 22, SYN);
    let set_active = |dp: &mut Dp, g: u32| {
        let mut m: Array<&mut MapData, u32> = Array::try_from(dp.map_mut(maps::ACTIVE)).unwrap();
        m.set(0, g, 0).unwrap();
    };
    set_active(&mut dp, 1);
    dp.expect(Prog::XdpIn, &syn, Reason::DropNoPolicy);
    // Generation 1: the same interface, its own scopes (the generation is their top bit),
    // allowing TCP 23 only.
    const G1: u32 = 1 << 31;
    {
        let mut m: HashMap<&mut MapData, IfaceKey, IfaceConf> =
            HashMap::try_from(dp.map_mut(maps::IFACES)).unwrap();
        let conf = IfaceConf {
            scope_in: G1 | SCOPE_IN,
            scope_out: G1 | SCOPE_OUT,
            flags: 0,
            _pad: 0,
            timeouts: Timeouts::AWS_DEFAULT,
        };
        m.insert(
            IfaceKey {
                generation: 1,
                ifindex: LO,
            },
            conf,
            0,
        )
        .unwrap();
    }
    dp.peer(
        G1 | SCOPE_IN,
        v4m(Ipv4Addr::new(192, 0, 2, 0)),
        96 + 24,
        G1 | CLASS_WEB,
    );
    dp.port(G1 | CLASS_WEB, Some(proto::TCP), Some(23), 30, 0);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &syn, Reason::DropNoRule),
        (Prog::XdpIn, &tcp4(REMOTE, 40060, LOCAL, 23, SYN), Reason::PassRuleNew),
    ]);
    // Back to generation 0: port 22 again.
    set_active(&mut dp, 0);
    dp.expect(Prog::XdpIn, &syn, Reason::PassRuleNew);
}

/// SG_ACTIVE's flags (`sg_common::active`) gate what they name: an interface's audit flag
/// (L3, per interface) counts only when the generation says an interface audits, and a slot
/// of SG_NACL_PORTS only when it says it has a router port (A13: otherwise the interface is a
/// security-group interface).
#[test]
fn l3_active_flags_gate_audit_per_interface_and_router_ports() {
    use sg_common::active;
    let mut dp = Dp::new();
    dp.standard();
    dp.iface(LO, iface_flags::AUDIT);
    let set_active = |dp: &mut Dp, v: u32| {
        let mut m: Array<&mut MapData, u32> = Array::try_from(dp.map_mut(maps::ACTIVE)).unwrap();
        m.set(0, v, 0).unwrap();
    };
    let denied = tcp4(REMOTE, 40070, LOCAL, 23, SYN);
    let denied_egress = udp4(LOCAL, 5353, REMOTE, 54);
    // Without AUDIT_IFACES the flag is not read: enforced.
    dp.expect(Prog::XdpIn, &denied, Reason::DropNoRule);
    set_active(&mut dp, active::AUDIT_IFACES);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &denied, Reason::AuditNoRule),
        (Prog::TcIn, &denied, Reason::AuditNoRule),
        (Prog::TcOut, &denied_egress, Reason::AuditNoRule),
        // What the policy allows is unchanged.
        (Prog::XdpIn, &tcp4(REMOTE, 40071, LOCAL, 22, SYN), Reason::PassRuleNew),
    ]);
    // Another interface of the same generation without the flag keeps enforcing.
    let other = 2;
    dp.iface(other, 0);
    let (action, _) = dp.run_on(Prog::XdpIn, other, &denied, 1);
    assert_eq!(action, XDP_DROP, "L3: only the flagged interface audits");
    dp.iface(LO, 0);
    dp.expect(Prog::XdpIn, &denied, Reason::DropNoRule);

    // A slot of SG_NACL_PORTS naming LO's scopes: ignored until ROUTER_PORTS is set.
    {
        let mut m: Array<&mut MapData, u64> =
            Array::try_from(dp.map_mut(maps::NACL_PORTS)).unwrap();
        let slot = sg_common::nacl_port_slot(LO, 0).unwrap();
        m.set(slot, u64::from(SCOPE_IN) << 32 | u64::from(SCOPE_OUT), 0)
            .unwrap();
    }
    set_active(&mut dp, 0);
    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40072, LOCAL, 22, SYN),
        Reason::PassRuleNew,
    );
    set_active(&mut dp, active::ROUTER_PORTS);
    // Now LO is a router port: its "outbound list" (SCOPE_OUT, by destination) has no class
    // for LOCAL, so the stateless NACL path drops with no entry (fail closed).
    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40073, LOCAL, 22, SYN),
        Reason::DropNaclRule,
    );
}

#[test]
fn n1_arp_passes_as_non_ip_on_every_hook() {
    let dp = Dp::new();
    for prog in [Prog::XdpIn, Prog::TcIn, Prog::TcOut] {
        dp.expect(prog, &arp_request(REMOTE, LOCAL), Reason::PassNonIp);
    }
}

#[test]
fn malformed_frames_drop_with_their_own_reason() {
    let mut dp = Dp::new();
    dp.standard();
    let syn = tcp4(REMOTE, 40000, LOCAL, 22, SYN);
    for prog in [Prog::XdpIn, Prog::TcIn] {
        // (A frame shorter than an Ethernet header cannot be test-run: the kernel wants 14.)
        // IPv4 header truncated (10 of its 20 bytes). The kernel refuses to test-run such a
        // frame through TC (EINVAL: it wants the IP header), so XDP only.
        if prog == Prog::XdpIn {
            dp.expect(prog, &syn[..24], Reason::DropBadIp);
        }
        // Total length larger than the frame.
        let mut long = syn.clone();
        long[16..18].copy_from_slice(&200u16.to_be_bytes());
        dp.expect(prog, &long, Reason::DropBadIp);
        // IHL < 5.
        let mut ihl = syn.clone();
        ihl[14] = 0x44;
        dp.expect(prog, &ihl, Reason::DropBadIp);
        // Version 6 inside an IPv4 ethertype.
        let mut ver = syn.clone();
        ver[14] = 0x65;
        dp.expect(prog, &ver, Reason::DropBadIp);
        // TCP header truncated inside the datagram: 10 bytes of TCP.
        let short = eth4(&ipv4(proto::TCP, REMOTE, LOCAL, &tcp(40000, 22, SYN)[..10]));
        dp.expect(prog, &short, Reason::DropBadL4);
        // TCP data offset 4.
        let mut doff = syn.clone();
        doff[14 + 20 + 12] = 0x40;
        dp.expect(prog, &doff, Reason::DropBadL4);
        // UDP with 4 bytes.
        let u = eth4(&ipv4(proto::UDP, REMOTE, LOCAL, &[0, 1, 0, 2]));
        dp.expect(prog, &u, Reason::DropBadL4);
        // A VLAN tag cut short.
        dp.expect(prog, &raw_eth(&[], 0x8100, &[0, 1]), Reason::DropBadEth);
    }
    assert_eq!(
        dp.stat(ct_stat::NEW_INSERTS),
        0,
        "nothing malformed creates state"
    );
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let mut dp = Dp::new();
    dp.standard();
    // 8 bytes of options (NOPs): the TCP header starts at 14 + 28.
    let f = eth4(&ipv4_full(
        proto::TCP,
        REMOTE,
        LOCAL,
        7,
        0,
        &[1; 8],
        &tcp(40001, 22, SYN),
    ));
    dp.expect(Prog::XdpIn, &f, Reason::PassRuleNew);
    assert!(
        dp.flow(maps::CT_NEW, &key4(proto::TCP, LOCAL, 22, REMOTE, 40001))
            .is_some()
    );
}

#[test]
fn vlan_tags_two_are_parsed_a_third_drops() {
    let mut dp = Dp::new();
    dp.standard();
    let ip = ipv4(proto::TCP, REMOTE, LOCAL, &tcp(40002, 22, SYN));
    let mut one = vec![0, 5, 0x08, 0x00];
    one.extend_from_slice(&ip);
    dp.expect(
        Prog::XdpIn,
        &raw_eth(&[], 0x8100, &one),
        Reason::PassRuleNew,
    );
    let mut two = vec![0, 5, 0x81, 0x00, 0, 6, 0x08, 0x00];
    two.extend_from_slice(&ip);
    dp.expect(
        Prog::TcIn,
        &raw_eth(&[], 0x88a8, &two),
        Reason::PassCtOriginal,
    );
    let mut three = vec![0, 5, 0x81, 0x00, 0, 6, 0x81, 0x00, 0, 7, 0x08, 0x00];
    three.extend_from_slice(&ip);
    dp.expect(
        Prog::XdpIn,
        &raw_eth(&[], 0x88a8, &three),
        Reason::DropVlanDepth,
    );
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport() {
    let mut dp = Dp::new();
    dp.standard();
    // hop-by-hop -> destination options -> TCP 22.
    let l4 = tcp(40003, 22, SYN);
    let chain = ext8(60, &ext8(proto::TCP, &l4));
    let f = eth6(&ipv6(0, REMOTE6, LOCAL6, &chain));
    dp.expect(Prog::XdpIn, &f, Reason::PassRuleNew);
    let key = FlowKey {
        ifindex: LO,
        proto: proto::TCP,
        _pad: [0; 3],
        lport: 22,
        rport: 40003,
        local: LOCAL6.octets(),
        remote: REMOTE6.octets(),
    };
    assert!(
        dp.flow(maps::CT_NEW, &key).is_some(),
        "IPv6 flow keyed by 16-byte addresses"
    );
    dp.expect(
        Prog::TcOut,
        &eth6(&ipv6(
            proto::TCP,
            LOCAL6,
            REMOTE6,
            &tcp(22, 40003, SYN | ACK),
        )),
        Reason::PassCtReply,
    );

    // A long hop-by-hop header (328 bytes of options) is walked like a short one.
    let mut hbh = vec![proto::TCP, 40];
    hbh.extend_from_slice(&[1, 4, 0, 0, 0, 0]);
    hbh.extend_from_slice(&[0; 320]);
    hbh.extend_from_slice(&tcp(40006, 22, SYN));
    let f = eth6(&ipv6(0, REMOTE6, LOCAL6, &hbh));
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &f, Reason::PassRuleNew),
        (Prog::TcIn, &f, Reason::PassCtOriginal),
    ]);

    // Nine extension headers: more than sg walks.
    let mut chain = tcp(40004, 22, SYN);
    chain = ext8(proto::TCP, &chain);
    for _ in 0..8 {
        chain = ext8(60, &chain);
    }
    let f = eth6(&ipv6(60, REMOTE6, LOCAL6, &chain));
    dp.expect(Prog::XdpIn, &f, Reason::DropBadExtHdr);
    // An extension header longer than the datagram.
    let mut bad = ext8(proto::TCP, &[]);
    bad[1] = 3; // 32 bytes claimed, 8 present
    let f = eth6(&ipv6(0, REMOTE6, LOCAL6, &bad));
    dp.expect(Prog::TcIn, &f, Reason::DropBadExtHdr);
    // Payload length beyond the frame.
    let mut f = eth6(&ipv6(proto::TCP, REMOTE6, LOCAL6, &tcp(40005, 22, SYN)));
    f[18..20].copy_from_slice(&100u16.to_be_bytes());
    dp.expect(Prog::XdpIn, &f, Reason::DropBadIp);
}

#[test]
fn c2_echo_request_opens_a_flow_its_reply_passes_only_the_other_way() {
    let mut dp = Dp::new();
    dp.standard();
    dp.expect(
        Prog::XdpIn,
        &icmp4(REMOTE, LOCAL, 8, 0, 77, b"ping"),
        Reason::PassRuleNew,
    );
    // Keyed by the id (local port) and the side that opened it (remote port).
    let key = key4(proto::ICMP, LOCAL, 77, REMOTE, ECHO_OPENED_BY_PEER);
    let f = dp
        .flow(maps::CT_NEW, &key)
        .expect("echo flow keyed by id and opener");
    assert_eq!(f.timeouts, [30, 30, 30]);
    assert!(
        dp.flow(maps::CT_NEW, &key4(proto::ICMP, LOCAL, 77, REMOTE, 0))
            .is_none(),
        "the key of a flow this host opens stays free"
    );
    // The reply leaves although no egress rule allows ICMP (C2).
    dp.expect(
        Prog::TcOut,
        &icmp4(LOCAL, REMOTE, 0, 0, 77, b"ping"),
        Reason::PassCtReply,
    );
    // An echo REQUEST out with the same id is not a reply: judged by egress rules.
    dp.expect(
        Prog::TcOut,
        &icmp4(LOCAL, REMOTE, 8, 0, 77, b"ping"),
        Reason::DropNoRule,
    );
    // An echo reply coming in matches no rule and no flow role.
    dp.expect(
        Prog::XdpIn,
        &icmp4(REMOTE, LOCAL, 0, 0, 77, b"ping"),
        Reason::DropNoRule,
    );
    assert_eq!(dp.rule_counter(SLOT_PING).packets, 2);
}

#[test]
fn i2_icmp_errors_quoting_a_tracked_flow_pass_as_related() {
    let mut dp = Dp::new();
    dp.standard();
    dp.expect(
        Prog::XdpIn,
        &tcp4(REMOTE, 40010, LOCAL, 22, SYN),
        Reason::PassRuleNew,
    );
    // PMTU: a router on the way says our segment (LOCAL:22 -> REMOTE:40010) was too big.
    let quoted = ipv4(proto::TCP, LOCAL, REMOTE, &tcp(22, 40010, ACK));
    let router = Ipv4Addr::new(198, 51, 100, 254);
    let frag_needed = icmp4(router, LOCAL, 3, 4, 0, &quoted[..28]);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &frag_needed, Reason::PassRelated),
        (Prog::TcIn, &frag_needed, Reason::PassRelated),
    ]);
    // Time exceeded quoting the same flow.
    dp.expect(
        Prog::XdpIn,
        &icmp4(router, LOCAL, 11, 0, 0, &quoted[..28]),
        Reason::PassRelated,
    );
    // An error quoting a flow we never saw is just ICMP: no rule allows it (I1).
    let other = ipv4(proto::TCP, LOCAL, REMOTE, &tcp(22, 40011, ACK));
    dp.expect(
        Prog::XdpIn,
        &icmp4(router, LOCAL, 3, 4, 0, &other[..28]),
        Reason::DropNoRule,
    );
    // The quote cut short (IP header + 4 bytes): judged as plain ICMP.
    dp.expect(
        Prog::XdpIn,
        &icmp4(router, LOCAL, 3, 4, 0, &quoted[..24]),
        Reason::DropNoRule,
    );
    // Related passes charge the flow's rule and change no state.
    assert_eq!(dp.rule_counter(SLOT_SSH).packets, 4);
    let f = dp
        .flow(maps::CT_NEW, &key4(proto::TCP, LOCAL, 22, REMOTE, 40010))
        .unwrap();
    assert_eq!((f.state, f.packets), (ct_state::NEW, [1, 0]));

    // ICMPv6 packet too big (2) for an IPv6 flow.
    dp.expect(
        Prog::XdpIn,
        &eth6(&ipv6(proto::TCP, REMOTE6, LOCAL6, &tcp(40012, 22, SYN))),
        Reason::PassRuleNew,
    );
    let quoted6 = ipv6(proto::TCP, LOCAL6, REMOTE6, &tcp(22, 40012, ACK));
    let router6 = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe);
    let ptb = eth6(&ipv6(
        proto::ICMPV6,
        router6,
        LOCAL6,
        &icmp(2, 0, 0, &quoted6[..48]),
    ));
    dp.expect(Prog::XdpIn, &ptb, Reason::PassRelated);
}

#[test]
fn n1_n2_neighbour_discovery_and_dhcp_client_traffic_are_exempt() {
    let dp = Dp::new(); // no policy at all: exemptions come first
    let ns = eth6(&ipv6(
        proto::ICMPV6,
        REMOTE6,
        LOCAL6,
        &icmp(135, 0, 0, &[0; 16]),
    ));
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &ns, Reason::PassNdp),
        (Prog::TcOut, &ns, Reason::PassNdp),
    ]);
    let server = Ipv4Addr::new(192, 0, 2, 1);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &udp4(server, 67, LOCAL, 68), Reason::PassDhcp),
        (Prog::TcOut, &udp4(Ipv4Addr::UNSPECIFIED, 68, Ipv4Addr::BROADCAST, 67), Reason::PassDhcp),
    ]);
    // The wrong way round is not the client's exchange.
    dp.expect(
        Prog::XdpIn,
        &udp4(server, 68, LOCAL, 67),
        Reason::DropNoPolicy,
    );
    let v6 = eth6(&ipv6(proto::UDP, REMOTE6, LOCAL6, &udp(547, 546, b"x")));
    dp.expect(Prog::TcIn, &v6, Reason::PassDhcp);
}

#[test]
fn g1_later_fragments_follow_the_first_fragments_verdict() {
    let mut dp = Dp::new();
    dp.standard();
    const MF: u16 = 0x2000;
    // UDP to 5000 (allowed), in two fragments: 8 bytes of UDP header + 16 of data, then the rest.
    let body = udp(40020, 5000, &[7; 40]);
    let first = frag4_in(proto::UDP, 0x1234, MF, &body[..24]);
    let later = frag4_in(proto::UDP, 0x1234, 3, &body[24..]);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &later, Reason::DropFragOrphan),
        (Prog::XdpIn, &first, Reason::PassRuleNew),
        (Prog::XdpIn, &later, Reason::PassFragment),
    ]);
    assert_eq!(
        dp.flow(maps::CT_NEW, &key4(proto::UDP, LOCAL, 5000, REMOTE, 40020))
            .unwrap()
            .packets,
        [1, 0],
        "later fragments do not touch state"
    );
    assert_eq!(dp.rule_counter(SLOT_UDP).packets, 2);
    // Same datagram id seen on the other hook's direction: no record there.
    dp.expect(Prog::TcOut, &later, Reason::DropFragOrphan);

    // A denied first fragment denies the rest.
    let body = udp(40021, 6000, &[7; 40]);
    let first = frag4_in(proto::UDP, 0x1235, MF, &body[..24]);
    let later = frag4_in(proto::UDP, 0x1235, 3, &body[24..]);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &first, Reason::DropNoRule),
        (Prog::TcIn, &later, Reason::DropFragDenied),
    ]);

    // A TCP fragment at offset 8 would rewrite the TCP header: dropped.
    let overlap = frag4_in(proto::TCP, 0x1236, 1, &[0; 16]);
    dp.expect(Prog::XdpIn, &overlap, Reason::DropBadFragment);
    // A first fragment too short for the TCP header.
    let tiny = frag4_in(proto::TCP, 0x1237, MF, &tcp(40022, 22, SYN)[..8]);
    dp.expect(Prog::XdpIn, &tiny, Reason::DropBadFragment);
}

#[test]
fn g1_ipv6_fragments_are_keyed_by_the_fragment_headers_next_header_and_ext_headers_behind_it_fail_closed()
 {
    let mut dp = Dp::new();
    dp.standard();
    let body = udp(40023, 5000, &[7; 40]);
    // UDP right after the fragment header.
    let first = frag6_in(proto::UDP, 0, true, 0xabcd, &body[..24]);
    let later = frag6_in(proto::UDP, 3, false, 0xabcd, &body[24..]);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &later, Reason::DropFragOrphan),
        (Prog::XdpIn, &first, Reason::PassRuleNew),
        (Prog::XdpIn, &later, Reason::PassFragment),
    ]);
    // Destination options inside the fragmentable part: the first fragment's transport is
    // UDP, the later fragment only says "destination options"; both key on the latter, and
    // since where the transport header ends is not recorded for such datagrams, their later
    // fragments are refused (G1, fail closed: they could overlap it).
    let mut part = ext8(proto::UDP, &[]);
    part.extend_from_slice(&udp(40024, 5000, &[7; 40]));
    let first = frag6_in(60, 0, true, 0xabce, &part[..32]);
    let later = frag6_in(60, 4, false, 0xabce, &part[32..]);
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &first, Reason::PassRuleNew),
        (Prog::TcIn, &later, Reason::DropBadFragment),
    ]);
    // An atomic fragment (offset 0, no more fragments) is a normal packet.
    let atomic = frag6_in(proto::TCP, 0, false, 1, &tcp(40025, 22, SYN));
    dp.expect(Prog::XdpIn, &atomic, Reason::PassRuleNew);
}

#[test]
fn c4_untracked_rule_passes_every_packet_without_state() {
    let mut dp = Dp::new();
    dp.standard();
    dp.web_80_untracked();
    for _ in 0..2 {
        dp.expect(
            Prog::XdpIn,
            &tcp4(REMOTE, 40030, LOCAL, 80, SYN),
            Reason::PassRuleUntracked,
        );
    }
    assert!(
        dp.flow(maps::CT_NEW, &key4(proto::TCP, LOCAL, 80, REMOTE, 40030))
            .is_none()
    );
    assert_eq!(dp.rule_counter(21).packets, 2);
}

#[test]
fn c5_udp_stream_is_promoted_after_two_packets_each_way() {
    let mut dp = Dp::new();
    dp.standard();
    let key = key4(proto::UDP, LOCAL, 5000, REMOTE, 40040);
    let q = udp4(REMOTE, 40040, LOCAL, 5000);
    let r = udp4(LOCAL, 5000, REMOTE, 40040);
    dp.expect(Prog::XdpIn, &q, Reason::PassRuleNew);
    assert_eq!(dp.flow(maps::CT_NEW, &key).unwrap().timeouts, [180, 30, 30]);
    dp.expect(Prog::TcOut, &r, Reason::PassCtReply);
    assert_eq!(
        dp.flow(maps::CT_NEW, &key).unwrap().state,
        ct_state::REPLIED
    );
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &q, Reason::PassCtOriginal),
        (Prog::TcOut, &r, Reason::PassCtReply),
    ]);
    assert!(dp.flow(maps::CT_NEW, &key).is_none());
    let f = dp.flow(maps::CT, &key).expect("a UDP stream is confirmed");
    assert_eq!((f.state, f.packets), (ct_state::ESTABLISHED, [2, 2]));
}

#[test]
fn c5_expired_entry_is_deleted_and_the_packet_judged_by_the_rules() {
    let mut dp = Dp::new();
    dp.standard();
    let key = key4(proto::UDP, LOCAL, 5000, REMOTE, 40050);
    // Seen at boot with a 1 s timeout: long expired.
    let stale = FlowVal {
        created_ns: 0,
        seen_ns: 0,
        packets: [1, 0],
        bytes: [60, 0],
        rule_slot: SLOT_UDP,
        timeouts: [1, 1, 1],
        origin: DIR_INGRESS,
        state: ct_state::NEW,
        flags: 0,
        _pad: 0,
        _pad2: 0,
    };
    dp.put_flow(maps::CT_NEW, &key, &stale);
    dp.expect(
        Prog::TcOut,
        &udp4(LOCAL, 5000, REMOTE, 40050),
        Reason::DropNoRule,
    );
    assert!(
        dp.flow(maps::CT_NEW, &key).is_none(),
        "expired entry deleted"
    );
    assert_eq!(dp.stat(ct_stat::NEW_DELETES), 1);

    // The same entry fresh (seen "now" with a long timeout) lets the reply out.
    let fresh = FlowVal {
        seen_ns: u64::MAX / 2,
        timeouts: [600, 600, 600],
        ..stale
    };
    dp.put_flow(maps::CT_NEW, &key, &fresh);
    dp.expect(
        Prog::TcOut,
        &udp4(LOCAL, 5000, REMOTE, 40050),
        Reason::PassCtReply,
    );
}

#[test]
fn c6_full_conntrack_table_drops_new_flows_and_counts_exceeded() {
    let mut dp = Dp::with(|l| {
        l.map_max_entries(maps::CT_NEW, 2);
    });
    dp.standard();
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(REMOTE, 1, LOCAL, 22, SYN), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(REMOTE, 2, LOCAL, 22, SYN), Reason::PassRuleNew),
        (Prog::XdpIn, &tcp4(REMOTE, 3, LOCAL, 22, SYN), Reason::DropCtFull),
    ]);
    assert_eq!(dp.stat(ct_stat::EXCEEDED), 1);
    // Existing flows are unaffected.
    dp.expect(
        Prog::TcOut,
        &tcp4(LOCAL, 22, REMOTE, 1, SYN | ACK),
        Reason::PassCtReply,
    );
}

#[test]
fn events_report_drops_and_new_flows_when_enabled() {
    let mut dp = Dp::new();
    dp.standard();
    dp.iface(LO, iface_flags::LOG_DROPS | iface_flags::LOG_FLOWS);
    // Off by default: no events.
    dp.expect(
        Prog::XdpIn,
        &tcp4(STRANGER, 1, LOCAL, 22, SYN),
        Reason::DropNoRule,
    );
    {
        let mut m: Array<&mut MapData, Config> = Array::try_from(dp.map_mut(maps::CONFIG)).unwrap();
        m.set(
            0,
            Config {
                events_per_sec: 1000,
                ..Config::default()
            },
            0,
        )
        .unwrap();
    }
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(STRANGER, 2, LOCAL, 22, SYN), Reason::DropNoRule),
        (Prog::XdpIn, &tcp4(REMOTE, 3, LOCAL, 22, SYN), Reason::PassRuleNew),
        (Prog::TcOut, &tcp4(LOCAL, 22, REMOTE, 3, SYN | ACK), Reason::PassCtReply),
    ]);
    let mut rb = RingBuf::try_from(dp.map_mut(maps::EVENTS)).unwrap();
    let mut events = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), size_of::<Event>());
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
    }
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.reason, e.src, e.sport, e.dport, e.dir))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                event_kind::DROP,
                Reason::DropNoRule as u8,
                v4m(STRANGER),
                2,
                22,
                DIR_INGRESS
            ),
            (
                event_kind::NEW_FLOW,
                Reason::PassRuleNew as u8,
                v4m(REMOTE),
                3,
                22,
                DIR_INGRESS
            ),
        ]
    );
    assert_eq!(events[1].rule_slot, SLOT_SSH);
}

/// Rough cost per packet (BPF_PROG_TEST_RUN's own average; an empty program costs ~20 ns
/// here). Each case also checks that all N runs got the expected reason.
#[test]
fn test_run_speed_per_packet() {
    let mut dp = Dp::new();
    dp.standard();
    dp.web_80_untracked();
    // An established flow (in SG_CT) and a half-open one (in SG_CT_NEW, looked up second).
    #[rustfmt::skip]
    dp.expect_rows(&[
        (Prog::XdpIn, &tcp4(REMOTE, 9, LOCAL, 22, SYN), Reason::PassRuleNew),
        (Prog::TcOut, &tcp4(LOCAL, 22, REMOTE, 9, SYN | ACK), Reason::PassCtReply),
        (Prog::XdpIn, &tcp4(REMOTE, 9, LOCAL, 22, ACK), Reason::PassCtOriginal),
        (Prog::XdpIn, &tcp4(REMOTE, 10, LOCAL, 22, SYN), Reason::PassRuleNew),
    ]);
    const N: u32 = 200_000;
    #[rustfmt::skip]
    let cases = [
        ("sg_xdp_in conntrack hit (SG_CT)", Prog::XdpIn, tcp4(REMOTE, 9, LOCAL, 22, ACK), Reason::PassCtOriginal),
        ("sg_tc_in  conntrack hit (SG_CT)", Prog::TcIn, tcp4(REMOTE, 9, LOCAL, 22, ACK), Reason::PassCtOriginal),
        ("sg_tc_out conntrack reply (SG_CT)", Prog::TcOut, tcp4(LOCAL, 22, REMOTE, 9, ACK), Reason::PassCtReply),
        ("sg_xdp_in conntrack hit (SG_CT_NEW)", Prog::XdpIn, tcp4(REMOTE, 10, LOCAL, 22, SYN), Reason::PassCtOriginal),
        ("sg_xdp_in policy drop, no rule", Prog::XdpIn, tcp4(STRANGER, 9, LOCAL, 22, SYN), Reason::DropNoRule),
        ("sg_xdp_in policy pass, untracked", Prog::XdpIn, tcp4(REMOTE, 9, LOCAL, 80, SYN), Reason::PassRuleUntracked),
        ("sg_xdp_in non-IP (ARP)", Prog::XdpIn, arp_request(REMOTE, LOCAL), Reason::PassNonIp),
    ];
    for (what, prog, frame, reason) in cases {
        let before = dp.reasons();
        let (action, ns) = dp.run_on(prog, LO, &frame, N);
        let after = dp.reasons();
        let want = if reason.is_pass() {
            prog.pass()
        } else {
            prog.drop()
        };
        assert_eq!(action, want, "{what}");
        for r in Reason::ALL {
            let moved = after[r as usize] - before[r as usize];
            let expected = if r == reason { N as u64 } else { 0 };
            assert_eq!(moved, expected, "{what}: counter of {r:?}");
        }
        println!("{what}: {ns} ns/packet over {N} runs");
    }
}
