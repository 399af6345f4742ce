//! Conntrack exhaustion (C6): a flood of new flows from many spoofed sources to an allowed
//! port fills the unconfirmed table; flows established before the flood keep working (all of
//! them, both ways, on every hook), the flood's excess is dropped as `DropCtFull`, and the
//! `exceeded` statistic moves by exactly the number of flows refused.
//!
//! Why it holds (docs/design.md "Conntrack states and timeouts"): flows are created in
//! `SG_CT_NEW` and move to `SG_CT` once confirmed (TCP handshake complete, UDP stream), both
//! plain hash maps that never evict, so half-open flows cannot push established ones out.
//! Every packet is also judged by the reference model with the same capacities; kernel and
//! model must agree on every one.
//!
//! The figures (capacities, flood size, accepted, refused, survival) are printed with
//! `--nocapture` and recorded in docs/hardening.md.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sg_agent::dataplane::{Capacities, CtStats, CtTable, Dataplane, Hook, LoadOptions};
use sg_agent::image::MapImage;
use sg_agent::model::Model;
use sg_agent::model::build::*;
use sg_agent::packet::{Packet, tcp_flags};
use sg_agent::policy::{Direction, Policy};
use sg_common::Reason;
use sg_testkit::dataplane_harness::plan::{HOST, HOST6};
use sg_testkit::dataplane_harness::{compile_for, in_netns};

/// Confirmed and unconfirmed table capacities: small, so a test-sized flood fills them.
const CT: u32 = 256;
const CT_NEW: u32 = 512;
/// Flows established before the flood: TCP (half IPv4, half IPv6) and UDP streams.
const ESTABLISHED_TCP: u16 = 200;
const ESTABLISHED_UDP: u16 = 20;
/// Handshakes half done (SYN, SYN-ACK) when the flood starts.
const HALF_OPEN: u16 = 20;
/// Spoofed SYNs (and UDP datagrams) in the flood.
const FLOOD_TCP: u32 = 4 * CT_NEW;
const FLOOD_UDP: u32 = CT_NEW / 2;

/// Ingress web (80) from anywhere and UDP 5000-5999 from a /24; egress only DNS, so TCP and
/// UDP flows are tracked (C4 does not apply) and replies pass by conntrack alone (C1).
fn policy(embryonic_s: u32) -> Policy {
    let mut p = PolicyBuilder::new()
        .ingress("sg-web", tcp(80), cidr("0.0.0.0/0")) // 1
        .ingress("sg-web", tcp(80), cidr("::/0")) // 2
        .ingress("sg-web", udp_range(5000, 5999), cidr("198.51.100.0/24")) // 3
        .egress("sg-web", udp(53), cidr("0.0.0.0/0")) // 4
        .iface("web", &[HOST, HOST6], &["sg-web"])
        .build();
    p.interfaces[0].timeouts.tcp_embryonic = embryonic_s;
    p
}

fn a(s: &str) -> IpAddr {
    addr(s)
}

/// A dataplane with the given capacities, the policy applied (production compiler) to `dev`,
/// and the reference model with the same capacities.
struct Rig {
    dp: Dataplane,
    image: MapImage,
    model: Model,
    dev: u32,
    /// Runs per kernel reason, and kernel/model disagreements.
    reasons: BTreeMap<Reason, u64>,
    disagreements: Vec<String>,
}

impl Rig {
    fn new(dev: u32, policy: Policy) -> Rig {
        let caps = Capacities {
            ct: CT,
            ct_new: CT_NEW,
            ..Capacities::small()
        };
        let mut dp = Dataplane::load(LoadOptions {
            capacities: caps,
            ..LoadOptions::default()
        })
        .unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"));
        let bindings = BTreeMap::from([("web".to_string(), dev)]);
        let image =
            compile_for(&dp, &policy, &bindings).unwrap_or_else(|e| panic!("compiling: {e:#}"));
        dp.apply(&image)
            .unwrap_or_else(|e| panic!("applying: {e:#}"));
        let model = Model::new(policy).with_capacity(CT as usize, CT_NEW as usize);
        Rig {
            dp,
            image,
            model,
            dev,
            reasons: BTreeMap::new(),
            disagreements: Vec::new(),
        }
    }

    /// Runs `p` through `hook` in the kernel only: the model is not told (its clock does not
    /// move by itself, so it cannot follow expiry).
    fn kernel_run(&mut self, hook: Hook, p: &Packet) -> sg_agent::dataplane::RunResult {
        self.dp
            .run_frame(hook, &p.to_frame(), self.dev)
            .unwrap_or_else(|e| panic!("{hook:?} {p:?}: {e:#}"))
    }

    /// Runs `p` through `hook`, checks the model agrees, returns the kernel's reason.
    fn send(&mut self, hook: Hook, p: &Packet) -> Reason {
        let got = self.kernel_run(hook, p);
        let dir = if hook.is_ingress() {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let want = self.model.process("web", dir, p);
        let rule = got.slot.and_then(|s| self.image.slots.rule(s).cloned());
        if (got.reason, rule.as_ref()) != (want.reason, want.rule.as_ref())
            && self.disagreements.len() < 10
        {
            self.disagreements.push(format!(
                "{hook:?} {p:?}: kernel {:?} {rule:?}, model {:?} {:?}",
                got.reason, want.reason, want.rule
            ));
        }
        *self.reasons.entry(got.reason).or_default() += 1;
        got.reason
    }

    fn stats(&self) -> CtStats {
        self.dp.ct_stats().expect("conntrack statistics")
    }

    fn count(&self, table: CtTable) -> usize {
        self.dp
            .conntrack()
            .expect("conntrack entries")
            .iter()
            .filter(|e| e.table == table)
            .count()
    }

    fn assert_agreement(&self) {
        assert!(
            self.disagreements.is_empty(),
            "kernel and model disagree:\n  {}",
            self.disagreements.join("\n  ")
        );
    }
}

/// The `i`th client: IPv4 from 198.51.100.0/24 for even i, IPv6 from 2001:db8:1::/64 else.
fn client(i: u16) -> IpAddr {
    if i.is_multiple_of(2) {
        a(&format!("198.51.100.{}", 1 + (i / 2) % 250))
    } else {
        a(&format!("2001:db8:1::{:x}", 1 + i))
    }
}

fn host_for(c: IpAddr) -> IpAddr {
    if c.is_ipv4() { a(HOST) } else { a(HOST6) }
}

/// The `i`th spoofed flood source: 203.0.113.0/24 and 2001:db8:f::/48, varied ports.
fn spoofed(i: u32) -> (IpAddr, u16) {
    let port = 1024 + (i * 7919 % 60000) as u16;
    if i % 3 == 2 {
        (
            a(&format!("2001:db8:f::{:x}:{:x}", i >> 16, i & 0xffff)),
            port,
        )
    } else {
        (a(&format!("203.0.113.{}", i % 256)), port)
    }
}

/// The query of established UDP flow `i` (198.51.100.200 + i, port 30000 + i, to 5353).
fn established_udp(i: u16) -> Packet {
    Packet::udp(
        a(&format!("198.51.100.{}", 200 + i)),
        a(HOST),
        30000 + i,
        5353,
    )
}

/// A full TCP handshake through the programs: SYN in, SYN-ACK out, ACK in.
fn handshake(r: &mut Rig, c: IpAddr, sport: u16, ingress: Hook) -> [Reason; 3] {
    let h = host_for(c);
    let syn = Packet::syn(c, h, sport, 80);
    [
        r.send(ingress, &syn),
        r.send(Hook::TcOut, &syn.reply()),
        r.send(ingress, &Packet::tcp(c, h, sport, 80, tcp_flags::ACK)),
    ]
}

#[test]
fn c6_flood_fills_ct_new_established_flows_all_survive_and_exceeded_counts() {
    in_netns(|net| {
        let mut r = Rig::new(net.lo, policy(30));
        let ingress = |i: u16| {
            if i.is_multiple_of(2) {
                Hook::XdpIn
            } else {
                Hook::TcIn
            }
        };

        // 1. Established flows: TCP handshakes and UDP streams (two exchanges each way).
        for i in 0..ESTABLISHED_TCP {
            let got = handshake(&mut r, client(i), 40000 + i, ingress(i));
            assert_eq!(
                got,
                [
                    Reason::PassRuleNew,
                    Reason::PassCtReply,
                    Reason::PassCtOriginal
                ],
                "handshake {i}"
            );
        }
        for i in 0..ESTABLISHED_UDP {
            let q = established_udp(i);
            for _ in 0..2 {
                r.send(ingress(i), &q);
                r.send(Hook::TcOut, &q.reply());
            }
        }
        let established = usize::from(ESTABLISHED_TCP + ESTABLISHED_UDP);
        assert_eq!(
            r.count(CtTable::Confirmed),
            established,
            "all established flows confirmed"
        );
        // Half-open handshakes: SYN in, SYN-ACK out; the ACK comes after the flood.
        for i in 0..HALF_OPEN {
            let c = a(&format!("198.51.100.{}", 100 + i));
            let syn = Packet::syn(c, a(HOST), 50000 + i, 80);
            r.send(Hook::XdpIn, &syn);
            r.send(Hook::TcOut, &syn.reply());
        }
        let before = r.stats();
        assert_eq!(before.exceeded, 0);

        // 2. The flood: spoofed SYNs to the allowed port, then spoofed UDP to the allowed
        //    range, until CT_NEW is full and far beyond.
        let t = Instant::now();
        let (mut accepted, mut refused) = (0u64, 0u64);
        for i in 0..FLOOD_TCP + FLOOD_UDP {
            let (src, sport) = spoofed(i);
            let p = if i < FLOOD_TCP {
                Packet::syn(src, host_for(src), sport, 80)
            } else {
                let src = a(&format!("198.51.100.{}", i % 250));
                Packet::udp(src, a(HOST), sport, 5000 + (i % 1000) as u16)
            };
            match r.send(if i % 2 == 0 { Hook::XdpIn } else { Hook::TcIn }, &p) {
                Reason::PassRuleNew => accepted += 1,
                Reason::DropCtFull => refused += 1,
                other => panic!("flood packet {i}: unexpected {other:?}"),
            }
        }
        let flood_time = t.elapsed();
        let during = r.stats();
        let free_before = u64::from(CT_NEW) - u64::from(HALF_OPEN);
        assert_eq!(
            accepted, free_before,
            "the flood takes exactly the free unconfirmed entries"
        );
        assert_eq!(refused, u64::from(FLOOD_TCP + FLOOD_UDP) - free_before);
        assert_eq!(
            during.exceeded - before.exceeded,
            refused,
            "exceeded counts every refusal"
        );
        assert_eq!(
            (during.new_count, during.new_available),
            (u64::from(CT_NEW), 0)
        );
        assert_eq!(
            r.count(CtTable::New),
            CT_NEW as usize,
            "CT_NEW holds exactly its capacity"
        );
        assert_eq!(
            r.count(CtTable::Confirmed),
            established,
            "the flood touched no confirmed flow"
        );
        // A legitimate new client is refused too while the table is full (EC2 does the same).
        let late = Packet::syn(a("198.51.100.250"), a(HOST), 45000, 80);
        assert_eq!(r.send(Hook::XdpIn, &late), Reason::DropCtFull);

        // 3. Every established flow still works, both ways, on every hook.
        let mut survived = 0;
        let mut total = 0;
        for i in 0..ESTABLISHED_TCP {
            let (c, sport) = (client(i), 40000 + i);
            let h = host_for(c);
            let data_in =
                Packet::tcp(c, h, sport, 80, tcp_flags::ACK | tcp_flags::PSH).with_payload(100);
            let data_out = Packet::tcp(h, c, 80, sport, tcp_flags::ACK).with_payload(1000);
            let got = [
                r.send(Hook::XdpIn, &data_in),
                r.send(Hook::TcIn, &data_in),
                r.send(Hook::TcOut, &data_out),
            ];
            total += 3;
            survived += got
                .iter()
                .zip([
                    Reason::PassCtOriginal,
                    Reason::PassCtOriginal,
                    Reason::PassCtReply,
                ])
                .filter(|(g, w)| **g == *w)
                .count();
        }
        for i in 0..ESTABLISHED_UDP {
            let q = established_udp(i);
            total += 2;
            survived += usize::from(r.send(Hook::TcIn, &q) == Reason::PassCtOriginal);
            survived += usize::from(r.send(Hook::TcOut, &q.reply()) == Reason::PassCtReply);
        }
        assert_eq!(survived, total, "established flows that kept working");
        // Half-open handshakes complete after the flood: their entries were never evicted and
        // SG_CT has room for them.
        for i in 0..HALF_OPEN {
            let c = a(&format!("198.51.100.{}", 100 + i));
            let ack = Packet::tcp(c, a(HOST), 50000 + i, 80, tcp_flags::ACK);
            assert_eq!(
                r.send(Hook::TcIn, &ack),
                Reason::PassCtOriginal,
                "half-open {i}"
            );
        }
        r.assert_agreement();

        eprintln!(
            "C6 exhaustion: capacities CT {CT} / CT_NEW {CT_NEW}; established before the flood \
             {ESTABLISHED_TCP} TCP + {ESTABLISHED_UDP} UDP, half-open {HALF_OPEN}; flood \
             {FLOOD_TCP} spoofed SYNs + {FLOOD_UDP} UDP: {accepted} accepted (the free \
             unconfirmed entries), {refused} DropCtFull, exceeded +{}; established flows \
             passing afterwards {survived}/{total} ({:.0}%), half-open completed \
             {HALF_OPEN}/{HALF_OPEN}; {:.1} us per flood packet (test_run with counter reads); \
             kernel and model agreed on all {} packets",
            during.exceeded - before.exceeded,
            100.0 * survived as f64 / total as f64,
            flood_time.as_secs_f64() * 1e6 / f64::from(FLOOD_TCP + FLOOD_UDP),
            r.reasons.values().sum::<u64>()
        );
    });
}

/// The confirmed table has its own capacity: attackers completing handshakes from real
/// addresses fill SG_CT; further promotions are refused (`DropCtFull`, counted) while the
/// flows already confirmed keep working, and the refused flows stay unconfirmed.
#[test]
fn c6_promotions_beyond_ct_are_refused_and_confirmed_flows_keep_working() {
    in_netns(|net| {
        let mut r = Rig::new(net.a, policy(30));
        // Fill SG_CT completely with established flows.
        for i in 0..CT as u16 {
            let got = handshake(&mut r, client(i), 20000 + i, Hook::XdpIn);
            assert_eq!(got[2], Reason::PassCtOriginal, "handshake {i}");
        }
        assert_eq!(r.count(CtTable::Confirmed), CT as usize);
        let before = r.stats();
        // More complete handshakes: the SYN and SYN-ACK pass (CT_NEW has room), the
        // handshake-completing ACK cannot be promoted.
        let extra = 50u16;
        for i in 0..extra {
            let c = a(&format!("203.0.113.{}", 1 + i));
            let got = handshake(&mut r, c, 60000 + i, Hook::TcIn);
            assert_eq!(
                got,
                [Reason::PassRuleNew, Reason::PassCtReply, Reason::DropCtFull],
                "promotion {i} beyond SG_CT's capacity"
            );
        }
        let after = r.stats();
        assert_eq!(after.exceeded - before.exceeded, u64::from(extra));
        assert_eq!(r.count(CtTable::Confirmed), CT as usize);
        assert_eq!(
            r.count(CtTable::New),
            usize::from(extra),
            "refused flows stay unconfirmed"
        );
        // Every confirmed flow still passes both ways.
        for i in 0..CT as u16 {
            let (c, sport) = (client(i), 20000 + i);
            let h = host_for(c);
            assert_eq!(
                r.send(Hook::TcIn, &Packet::tcp(c, h, sport, 80, tcp_flags::ACK)),
                Reason::PassCtOriginal
            );
            assert_eq!(
                r.send(Hook::TcOut, &Packet::tcp(h, c, 80, sport, tcp_flags::ACK)),
                Reason::PassCtReply
            );
        }
        r.assert_agreement();
        eprintln!(
            "C6 confirmed table: CT {CT} full of established flows; {extra} more completed \
             handshakes refused at promotion (exceeded +{}); {CT}/{CT} confirmed flows still \
             pass both ways",
            after.exceeded - before.exceeded
        );
    });
}

/// Recovery after a flood: embryonic entries expire after `tcp_embryonic` seconds, but a
/// full table only frees them when something deletes them (the datapath deletes an expired
/// entry when a packet of the same flow meets it; the agent's sweeper deletes the rest). So
/// until a sweep, new flows are still refused; right after one, they pass.
#[test]
fn c6_flood_entries_expire_and_a_sweep_frees_the_table() {
    in_netns(|net| {
        let embryonic = 1;
        let mut r = Rig::new(net.b, policy(embryonic));
        for i in 0..CT_NEW {
            let (src, sport) = spoofed(i);
            let p = Packet::syn(src, host_for(src), sport, 80);
            assert_eq!(
                r.send(Hook::XdpIn, &p),
                Reason::PassRuleNew,
                "flood SYN {i}"
            );
        }
        let late = Packet::syn(a("198.51.100.9"), a(HOST), 41000, 80);
        let got = r.kernel_run(Hook::XdpIn, &late);
        assert_eq!(got.reason, Reason::DropCtFull, "table full");
        // The kernel clock runs; the model's does not move by itself.
        std::thread::sleep(Duration::from_millis(1000 * u64::from(embryonic) + 200));
        let got = r.kernel_run(Hook::XdpIn, &late);
        assert_eq!(
            got.reason,
            Reason::DropCtFull,
            "expired entries still occupy the table until swept (design: sweeper)"
        );
        let t = Instant::now();
        let swept = r.dp.sweep_conntrack().expect("sweep");
        let sweep_time = t.elapsed();
        assert_eq!(swept, CT_NEW as usize, "every flood entry had expired");
        let got = r.kernel_run(Hook::XdpIn, &late);
        assert_eq!(
            got.reason,
            Reason::PassRuleNew,
            "a new client gets in after the sweep"
        );
        let s = r.stats();
        assert_eq!(s.user_new_deletes, u64::from(CT_NEW));
        eprintln!(
            "C6 recovery: {CT_NEW} embryonic flood entries (timeout {embryonic} s) block new \
             flows until swept; the sweep deleted {swept} in {:.1} ms, then new flows pass",
            sweep_time.as_secs_f64() * 1e3
        );
    });
}
