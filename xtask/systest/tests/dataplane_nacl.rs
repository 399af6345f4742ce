//! Network ACLs on a router (issue 17, SEMANTICS A1-A27): the real eBPF programs
//! (BPF_PROG_TEST_RUN) on interfaces flagged `iface_flags::NACL`, compiled by the production
//! compiler (`compile::compile_router`), against the reference model (`Model::with_router`).
//!
//! - `kernel_agrees_with_the_model_on_random_nacls`: random NACL policies, router ports and
//!   addresses (`sg_testkit::random::nacl`), packets aimed at their boundaries, through both
//!   hook directions (ingress alternating XDP and TC); every packet must get the same reason
//!   and charge the same rule. At least 100k packets in the default run (`SG_NACL_CASES`
//!   cases of `SG_NACL_PACKETS` shots; seed from `SG_NACL_SEED`, printed). A failure is
//!   shrunk by proptest and printed with the case's lists.
//! - Fixture rows, one per SEMANTICS id, each checked against the kernel and the model.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeMap;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sg_agent::compile::{CompileOptions, Router, RouterPort, compile_router};
use sg_agent::dataplane::{Dataplane, Hook};
use sg_agent::image::{MapImage, SlotTable};
use sg_agent::model::Model;
use sg_agent::model::build::{addr, all, nacl_entry, tcp, tcp_range, udp};
use sg_agent::packet::{Frag, Packet, tcp_flags};
use sg_agent::policy::{
    Direction, IcmpMatch, NaclAction, NaclEntry, NaclId, NetworkAcl, Origin, Policy, Protocol,
    RuleId, Subnet, SubnetId,
};
use sg_common::Reason;
use sg_testkit::dataplane_harness::{in_netns, load};
use sg_testkit::random::nacl::{NaclCase, arb_nacl_case, arb_shots, describe, materialize};
use sg_testkit::random::packets::Step;

/// A loaded dataplane with a router's NACL image applied.
struct Rig {
    dp: Dataplane,
    image: MapImage,
    ifindex: BTreeMap<String, u32>,
    /// The case `apply` applied last: what `check_rows` holds the model to.
    applied: Option<NaclCase>,
}

/// The router of `case` on `devices` (its ports in name order).
fn router_of(case: &NaclCase, ifindex: &BTreeMap<String, u32>) -> Router {
    Router {
        ports: case
            .ports
            .iter()
            .map(|(name, subnet)| RouterPort {
                subnet: subnet.clone(),
                ifindex: ifindex[name],
            })
            .collect(),
        addrs: case.addrs.clone(),
    }
}

/// Compiles `case` for the next generation and applies it (a swap when one is live).
fn apply(rig: &mut Rig, case: &NaclCase) -> sg_agent::dataplane::ApplyReport {
    let router = router_of(case, &rig.ifindex);
    let report = apply_policy(rig, &case.policy, &BTreeMap::new(), &router)
        .unwrap_or_else(|e| panic!("compiling {}: {e}", describe(case)));
    rig.applied = Some(case.clone());
    report
}

/// Compiles `policy` (security groups on `bindings`, NACLs on `router`) for the next
/// generation and applies it: a compile error is returned, an apply error panics.
fn apply_policy(
    rig: &mut Rig,
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    router: &Router,
) -> Result<sg_agent::dataplane::ApplyReport, sg_agent::compile::CompileError> {
    let opts = CompileOptions {
        generation: rig.dp.next_generation(),
        slot_capacity: rig.dp.capacities().rule_slots,
    };
    // Fresh slots: a case's rules get 1..n. Carried over, the cursor would walk through
    // the whole slot table and every test run would read all of its counters.
    let (image, _) = compile_router(policy, bindings, &SlotTable::default(), &opts, router)?;
    let report = rig
        .dp
        .apply(&image)
        .unwrap_or_else(|e| panic!("apply: {e:#}"));
    rig.image = image;
    Ok(report)
}

fn rig(devices: [u32; 3]) -> Rig {
    let ifindex = ["p0", "p1", "p2"]
        .iter()
        .zip(devices)
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    Rig {
        dp: load(),
        image: MapImage::default(),
        ifindex,
        applied: None,
    }
}

fn hook_of(dir: Direction, i: usize) -> Hook {
    match (dir, i % 2) {
        (Direction::Egress, _) => Hook::TcOut,
        (Direction::Ingress, 0) => Hook::XdpIn,
        (Direction::Ingress, _) => Hook::TcIn,
    }
}

/// One packet through the kernel: (reason, charged rule id).
fn kernel(rig: &mut Rig, hook: Hook, s: &Step) -> anyhow::Result<(Reason, Option<RuleId>)> {
    let got = rig
        .dp
        .run_frame(hook, &s.pkt.to_frame(), rig.ifindex[&s.iface])?;
    let rule = got.slot.map(|slot| {
        rig.image
            .slots
            .rule(slot)
            .cloned()
            .unwrap_or(RuleId(format!("slot {slot}")))
    });
    anyhow::ensure!(
        got.pass == got.reason.is_pass(),
        "action and reason differ: {got:?}"
    );
    Ok((got.reason, rule))
}

fn run_steps(
    rig: &mut Rig,
    case: &NaclCase,
    steps: &[Step],
    seen: &mut BTreeMap<Reason, u64>,
) -> Result<(), TestCaseError> {
    rig.dp
        .flush_fragments()
        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    let mut model =
        Model::new(case.policy.clone()).with_router(case.ports.clone(), case.addrs.clone());
    for (i, s) in steps.iter().enumerate() {
        let want = model.process(&s.iface, s.dir, &s.pkt);
        let hook = hook_of(s.dir, i);
        let (reason, rule) =
            kernel(rig, hook, s).map_err(|e| TestCaseError::fail(format!("step {i}: {e:#}")))?;
        *seen.entry(reason).or_default() += 1;
        if reason != want.reason || rule != want.rule {
            return Err(TestCaseError::fail(format!(
                "step {i} ({hook:?} on {}): kernel {reason:?} rule {rule:?}, model {:?} rule {:?}\n  \
                 packet {:?}",
                s.iface, want.reason, want.rule, s.pkt
            )));
        }
    }
    Ok(())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kernel_agrees_with_the_model_on_random_nacls() {
    let cases = env_or("SG_NACL_CASES", 128) as u32;
    let shots = env_or("SG_NACL_PACKETS", 800) as usize;
    let seed = env_or(
        "SG_NACL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!(
        "dataplane_nacl: seed {seed} (SG_NACL_SEED={seed} reproduces), {cases} cases of {shots} \
         shots"
    );
    in_netns(move |net| {
        let mut r = rig([net.a, net.b, net.lo]);
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
        );
        let packets = std::cell::Cell::new(0u64);
        let seen = std::cell::RefCell::new(BTreeMap::new());
        let rig = std::cell::RefCell::new(&mut r);
        let strategy = (arb_nacl_case(), arb_shots(shots..shots + 1));
        let result = runner.run(&strategy, |(case, shots)| {
            let steps = materialize(&case, &shots);
            let mut rig = rig.borrow_mut();
            apply(&mut rig, &case);
            packets.set(packets.get() + steps.len() as u64);
            run_steps(&mut rig, &case, &steps, &mut seen.borrow_mut())
                .map_err(|e| TestCaseError::fail(format!("{e}\ncase:\n{}", describe(&case))))
        });
        if let Err(e) = result {
            panic!("seed {seed}: kernel and model disagree on a NACL: {e}");
        }
        let n = packets.get();
        let seen = seen.into_inner();
        eprintln!("dataplane_nacl: {n} packets compared, by reason: {seen:?}");
        // The generator must reach every NACL verdict, or the comparison proves little.
        for r in [
            Reason::PassNaclRule,
            Reason::DropNaclRule,
            Reason::PassRouterLocal,
            Reason::PassFragment,
            Reason::DropFragDenied,
        ] {
            assert!(seen.contains_key(&r), "no packet got {r:?}: {seen:?}");
        }
        assert!(
            n >= u64::from(cases) * shots as u64,
            "only {n} packets were compared"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Fixture rows
// ---------------------------------------------------------------------------------------------

const ACL: &str = "acl-0000000000000000a";
const WEB: &str = "192.0.2.10";
const WEB6: &str = "2001:db8:a0::10";
const CLIENT: &str = "198.51.100.7";
const FAR: &str = "203.0.113.9";
const CLIENT6: &str = "2001:db8:1::7";
const ROUTER: &str = "192.0.2.1";

fn allow(number: u16, protocol: Protocol, cidr: &str) -> NaclEntry {
    nacl_entry(number, NaclAction::Allow, protocol, cidr)
}

fn deny(number: u16, protocol: Protocol, cidr: &str) -> NaclEntry {
    nacl_entry(number, NaclAction::Deny, protocol, cidr)
}

/// One subnet (192.0.2.0/26, 2001:db8:a0::/64) behind port p0, with a NACL of these lists.
fn case(inbound: Vec<NaclEntry>, outbound: Vec<NaclEntry>, addrs: &[&str]) -> NaclCase {
    let id = NaclId(ACL.into());
    let acl = NetworkAcl {
        id: id.clone(),
        is_default: false,
        inbound,
        outbound,
        origin: Origin::default(),
    };
    let subnet = SubnetId("subnet-0000000000000000a".into());
    NaclCase {
        policy: Policy {
            network_acls: [(id.clone(), acl)].into(),
            subnets: vec![Subnet {
                id: subnet.clone(),
                cidrs: vec![
                    "192.0.2.0/26".parse().unwrap(),
                    "2001:db8:a0::/64".parse().unwrap(),
                ],
                network_acl: id,
                router_device: Some("p0".into()),
                origin: Origin::default(),
            }],
            ..Policy::default()
        },
        ports: [("p0".to_string(), subnet)].into(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

/// A packet entering the subnet (hook egress, the inbound list).
fn into(pkt: Packet) -> Step {
    Step {
        iface: "p0".into(),
        dir: Direction::Egress,
        pkt,
    }
}

/// A packet leaving the subnet (hook ingress, the outbound list).
fn out_of(pkt: Packet) -> Step {
    Step {
        iface: "p0".into(),
        dir: Direction::Ingress,
        pkt,
    }
}

/// The rule id a row expects: `in/100`, `out/*v4`...
fn rule(r: &str) -> Option<RuleId> {
    Some(RuleId(format!("{ACL}/{r}")))
}

/// Fixture table: (intent, packet, expected reason, expected rule). Each row is checked on
/// the kernel (XDP and TC for ingress) and on the model, in order, on the case last applied.
type Row = (&'static str, Step, Reason, Option<RuleId>);

fn check_rows(rig: &mut Rig, rows: &[Row]) {
    let case = rig.applied.clone().expect("check_rows after apply");
    let mut model =
        Model::new(case.policy.clone()).with_router(case.ports.clone(), case.addrs.clone());
    for (i, (intent, step, reason, rule)) in rows.iter().enumerate() {
        let m = model.process(&step.iface, step.dir, &step.pkt);
        assert_eq!(
            (m.reason, &m.rule),
            (*reason, rule),
            "row {i} ({intent}): the model"
        );
        let hooks: &[Hook] = match step.dir {
            Direction::Egress => &[Hook::TcOut],
            // A later fragment must follow its own first fragment once, on one hook.
            Direction::Ingress if step.pkt.frag.is_some() => &[Hook::TcIn],
            Direction::Ingress => &[Hook::XdpIn, Hook::TcIn],
        };
        for &hook in hooks {
            let got = kernel(rig, hook, step).unwrap_or_else(|e| panic!("row {i}: {e:#}"));
            assert_eq!(
                (got.0, &got.1),
                (*reason, rule),
                "row {i} ({intent}): the kernel on {hook:?}"
            );
        }
    }
}

fn with_rig(f: impl FnOnce(&mut Rig) + Send + 'static) {
    in_netns(move |net| {
        let mut r = rig([net.a, net.b, net.lo]);
        f(&mut r);
    });
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::syn(addr(src), addr(dst), sport, dport)
}

#[test]
fn a1_stateless_an_allowed_ssh_syn_creates_nothing_and_its_reply_meets_the_outbound_list() {
    with_rig(|rig| {
        let c = case(vec![allow(100, tcp(22), "0.0.0.0/0")], vec![], &[]);
        apply(rig, &c);
        let in_syn = syn(CLIENT, WEB, 40000, 22);
        let reply = in_syn.reply();
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A1: SSH in allowed by 100", into(in_syn.clone()), Reason::PassNaclRule, rule("in/100")),
            ("A1: no outbound rule for the client's port: its reply is dropped", out_of(reply.clone()), Reason::DropNaclRule, rule("out/*v4")),
            ("A1: the next SYN is judged again, no flow", into(in_syn), Reason::PassNaclRule, rule("in/100")),
        ]);
        assert!(
            rig.dp.conntrack().unwrap().is_empty(),
            "A1: a NACL interface created conntrack state"
        );
    });
}

#[test]
fn a4_lowest_number_decides_whatever_the_prefix_length_and_renumbering_flips_it() {
    with_rig(|rig| {
        let first = case(
            vec![
                allow(100, tcp(22), "0.0.0.0/0"),
                deny(90, tcp(22), "198.51.100.0/24"),
            ],
            vec![],
            &[],
        );
        // Entries are sorted by validation; the compiler and the model must not rely on it.
        apply(rig, &first);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A4: 90 denies the /24 first", into(syn(CLIENT, WEB, 40000, 22)), Reason::DropNaclRule, rule("in/90")),
            ("A4: elsewhere 100 allows", into(syn(FAR, WEB, 40000, 22)), Reason::PassNaclRule, rule("in/100")),
        ]);
        let renumbered = case(
            vec![
                allow(100, tcp(22), "0.0.0.0/0"),
                deny(110, tcp(22), "198.51.100.0/24"),
            ],
            vec![],
            &[],
        );
        apply(rig, &renumbered);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A4: the deny renumbered below the allow no longer decides (/24 or not)", into(syn(CLIENT, WEB, 40000, 22)), Reason::PassNaclRule, rule("in/100")),
        ]);
    });
}

#[test]
fn a5_a6_allow_and_deny_rules_and_the_star_rules_are_charged() {
    with_rig(|rig| {
        let c = case(
            vec![
                deny(10, udp(53), "203.0.113.0/24"),
                allow(20, udp(53), "0.0.0.0/0"),
                allow(30, udp(53), "::/0"),
            ],
            vec![],
            &[],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A5: deny 10", into(Packet::udp(addr(FAR), addr(WEB), 5000, 53)), Reason::DropNaclRule, rule("in/10")),
            ("A5: allow 20", into(Packet::udp(addr(CLIENT), addr(WEB), 5000, 53)), Reason::PassNaclRule, rule("in/20")),
            ("A6: nothing matched (IPv4): *", into(Packet::udp(addr(CLIENT), addr(WEB), 5000, 54)), Reason::DropNaclRule, rule("in/*v4")),
            ("A6: nothing matched (IPv6): *", into(Packet::udp(addr(CLIENT6), addr(WEB6), 5000, 54)), Reason::DropNaclRule, rule("in/*v6")),
        ]);
        let counters = rig.dp.rule_counters().unwrap();
        let moved = |r: &str| {
            counters
                .get(&RuleId(format!("{ACL}/{r}")))
                .map_or(0, |c| c.packets)
        };
        assert_eq!(moved("in/10"), 1, "A5: the deny's counter counts its drops");
        assert_eq!(
            moved("in/*v4"),
            1,
            "A6: the * rule's counter counts its drops"
        );
        assert_eq!(moved("in/*v6"), 1);
    });
}

#[test]
fn a8_an_entry_of_one_family_never_matches_the_other() {
    with_rig(|rig| {
        let c = case(
            vec![
                allow(100, all(), "::/0"),
                allow(110, all(), "::ffff:0:0/96"),
                allow(120, all(), "0.0.0.0/0"),
            ],
            vec![allow(100, all(), "0.0.0.0/0")],
            &[],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A8: IPv4 skips the IPv6 entries, 120 allows", into(syn(CLIENT, WEB, 1, 80)), Reason::PassNaclRule, rule("in/120")),
            ("A8: IPv6 meets 100", into(syn(CLIENT6, WEB6, 1, 80)), Reason::PassNaclRule, rule("in/100")),
            ("A8: outbound IPv6 has only an IPv4 entry: *", out_of(syn(WEB6, CLIENT6, 1, 80)), Reason::DropNaclRule, rule("out/*v6")),
        ]);
    });
}

#[test]
fn a17_minus_one_and_other_protocol_numbers_match_every_port() {
    with_rig(|rig| {
        let c = case(
            vec![
                allow(10, Protocol::Number(132), "198.51.100.0/24"),
                allow(20, Protocol::Number(58), "0.0.0.0/0"),
                deny(30, all(), "203.0.113.0/24"),
                allow(40, tcp(80), "0.0.0.0/0"),
            ],
            vec![],
            &[],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A17: 132 (SCTP), any port", into(Packet::other(addr(CLIENT), addr(WEB), 132)), Reason::PassNaclRule, rule("in/10")),
            ("A17: -1 denies every port of every protocol", into(syn(FAR, WEB, 1, 80)), Reason::DropNaclRule, rule("in/30")),
            ("A17: tcp 80 elsewhere", into(syn(CLIENT, WEB, 1, 80)), Reason::PassNaclRule, rule("in/40")),
            ("A17: 132 not from the /24: *", into(Packet::other(addr(FAR), addr(WEB), 132)), Reason::DropNaclRule, rule("in/30")),
        ]);
    });
}

#[test]
fn a18_tcp_udp_match_the_destination_port_in_both_directions() {
    with_rig(|rig| {
        let c = case(
            vec![allow(100, tcp(80), "0.0.0.0/0")],
            vec![allow(100, tcp_range(32768, 60999), "0.0.0.0/0")],
            &[],
        );
        apply(rig, &c);
        let request = syn(CLIENT, WEB, 40000, 80);
        let mut reply = request.reply();
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A18: the request's destination port 80", into(request.clone()), Reason::PassNaclRule, rule("in/100")),
            ("A18: the reply's destination port is the client's ephemeral port", out_of(reply.clone()), Reason::PassNaclRule, rule("out/100")),
            ("A18: a source port 80 does not match tcp 80", into(syn(CLIENT, WEB, 80, 1000)), Reason::DropNaclRule, rule("in/*v4")),
        ]);
        reply = Packet::tcp(
            addr(WEB),
            addr(CLIENT),
            80,
            1023,
            tcp_flags::ACK | tcp_flags::SYN,
        );
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A18: a client port outside the range: *", out_of(reply), Reason::DropNaclRule, rule("out/*v4")),
        ]);
    });
}

#[test]
fn a19_icmp_type_and_code_with_wildcards() {
    with_rig(|rig| {
        let c = case(
            vec![
                allow(10, Protocol::Icmp(IcmpMatch::Type(8)), "0.0.0.0/0"),
                allow(20, Protocol::Icmp(IcmpMatch::TypeCode(3, 4)), "0.0.0.0/0"),
                deny(30, Protocol::Icmp(IcmpMatch::All), "0.0.0.0/0"),
                allow(40, Protocol::Icmpv6(IcmpMatch::TypeCode(128, 0)), "::/0"),
            ],
            vec![],
            &[],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A19: echo request, type 8 any code", into(Packet::echo_request(addr(CLIENT), addr(WEB), 7, 1)), Reason::PassNaclRule, rule("in/10")),
            ("A19: 3/4 exactly", into(Packet::icmp(addr(CLIENT), addr(WEB), 3, 4)), Reason::PassNaclRule, rule("in/20")),
            ("A19: 3/3 falls to the ICMP -1 deny", into(Packet::icmp(addr(CLIENT), addr(WEB), 3, 3)), Reason::DropNaclRule, rule("in/30")),
            ("A19: ICMPv6 128/0", into(Packet::echo_request(addr(CLIENT6), addr(WEB6), 7, 1)), Reason::PassNaclRule, rule("in/40")),
            ("A19: ICMPv6 129: *", into(Packet::icmp(addr(CLIENT6), addr(WEB6), 129, 0)), Reason::DropNaclRule, rule("in/*v6")),
        ]);
    });
}

#[test]
fn a21_the_routers_own_addresses_are_not_filtered() {
    with_rig(|rig| {
        let c = case(
            vec![deny(1, all(), "0.0.0.0/0")],
            vec![deny(1, all(), "0.0.0.0/0")],
            &[ROUTER],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A21: to the router from the subnet", out_of(syn(WEB, ROUTER, 40000, 53)), Reason::PassRouterLocal, None),
            ("A21: from the router into the subnet", into(Packet::udp(addr(ROUTER), addr(WEB), 67, 5000)), Reason::PassRouterLocal, None),
            ("A21: anyone else meets the list", out_of(syn(WEB, CLIENT, 40000, 53)), Reason::DropNaclRule, rule("out/1")),
        ]);
    });
}

#[test]
fn a22_a_frag_needed_error_is_passed_by_no_state_only_by_an_icmp_rule() {
    with_rig(|rig| {
        let c = case(
            vec![allow(100, tcp(80), "0.0.0.0/0")],
            vec![allow(100, tcp_range(1024, 65535), "0.0.0.0/0")],
            &[],
        );
        apply(rig, &c);
        let request = syn(CLIENT, WEB, 40000, 80);
        let reply = request.reply();
        // A router on the client's side says the reply was too big.
        let error = reply.error_reply(addr(FAR), 3, 4);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A22: the request", into(request), Reason::PassNaclRule, rule("in/100")),
            ("A22: its reply", out_of(reply.clone()), Reason::PassNaclRule, rule("out/100")),
            ("A22: frag needed about the reply: no related pass, *", into(error.clone()), Reason::DropNaclRule, rule("in/*v4")),
        ]);
        let c = case(
            vec![
                allow(100, tcp(80), "0.0.0.0/0"),
                allow(110, Protocol::Icmp(IcmpMatch::TypeCode(3, 4)), "0.0.0.0/0"),
            ],
            vec![allow(100, tcp_range(1024, 65535), "0.0.0.0/0")],
            &[],
        );
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A22: an explicit ICMP 3/4 rule passes it", into(error), Reason::PassNaclRule, rule("in/110")),
        ]);
    });
}

#[test]
fn a27_later_fragments_follow_the_first_fragments_nacl_verdict() {
    with_rig(|rig| {
        let c = case(
            vec![allow(
                100,
                Protocol::Udp(sg_agent::policy::PortRange {
                    from: 5000,
                    to: 5000,
                }),
                "0.0.0.0/0",
            )],
            vec![],
            &[],
        );
        apply(rig, &c);
        let frag = |dport: u16, id: u32, later: bool| {
            let mut p = Packet::udp(addr(CLIENT), addr(WEB), 40000, dport).with_payload(64);
            p.frag = Some(if later {
                Frag::later(id, 64, false)
            } else {
                Frag::first(id)
            });
            if later {
                p.payload_len = 40;
            }
            into(p)
        };
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A27: allowed first fragment", frag(5000, 7, false), Reason::PassNaclRule, rule("in/100")),
            ("A27: its later fragment passes, charging 100", frag(5000, 7, true), Reason::PassFragment, rule("in/100")),
            ("A27: denied first fragment", frag(5001, 8, false), Reason::DropNaclRule, rule("in/*v4")),
            ("A27: its later fragment is dropped", frag(5001, 8, true), Reason::DropFragDenied, None),
        ]);
    });
}

#[test]
fn a25_a26_a_new_generation_with_a_deny_cuts_the_very_next_packet_and_swaps_whole() {
    with_rig(|rig| {
        let before = case(
            vec![allow(100, tcp(22), "0.0.0.0/0")],
            vec![allow(100, tcp_range(1024, 65535), "0.0.0.0/0")],
            &[],
        );
        apply(rig, &before);
        let ssh = Packet::tcp(addr(CLIENT), addr(WEB), 40000, 22, tcp_flags::ACK);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("live session, in", into(ssh.clone()), Reason::PassNaclRule, rule("in/100")),
            ("live session, out", out_of(ssh.reply()), Reason::PassNaclRule, rule("out/100")),
        ]);
        // Both lists change in one generation.
        let after = case(
            vec![
                deny(50, tcp(22), "198.51.100.0/24"),
                allow(100, tcp(22), "0.0.0.0/0"),
            ],
            vec![
                deny(50, all(), "198.51.100.0/24"),
                allow(100, tcp_range(1024, 65535), "0.0.0.0/0"),
            ],
            &[],
        );
        apply(rig, &after);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("A25: the very next packet of the session meets the deny", into(ssh.clone()), Reason::DropNaclRule, rule("in/50")),
            ("A26: the other list changed in the same swap", out_of(ssh.reply()), Reason::DropNaclRule, rule("out/50")),
        ]);
    });
}

#[test]
fn a25_an_interface_that_becomes_a_nacl_interface_loses_its_flows() {
    use sg_agent::model::build::{PolicyBuilder, cidr};
    in_netns(|net| {
        let mut r = rig([net.a, net.b, net.lo]);
        // First a security-group interface on p0's device with an established SSH flow.
        let sg = PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("0.0.0.0/0"))
            .iface("p0", &[WEB], &["sg-a"])
            .build();
        let bindings: BTreeMap<String, u32> = [("p0".to_string(), net.a)].into();
        apply_policy(&mut r, &sg, &bindings, &Router::default()).unwrap();
        let syn_in = syn(CLIENT, WEB, 40000, 22);
        let (reason, _) = kernel(
            &mut r,
            Hook::TcIn,
            &Step {
                iface: "p0".into(),
                dir: Direction::Ingress,
                pkt: syn_in.clone(),
            },
        )
        .unwrap();
        assert_eq!(reason, Reason::PassRuleNew);
        assert!(!r.dp.conntrack().unwrap().is_empty());
        // Then the same device faces a subnet whose NACL denies everything.
        let c = case(vec![], vec![], &[]);
        let report = apply(&mut r, &c);
        assert!(
            report.flows_removed >= 1,
            "the SG flow of the device was not deleted: {report:?}"
        );
        assert!(r.dp.conntrack().unwrap().is_empty());
        // The same packet on the same hook (the flow's key): now the outbound list judges it.
        #[rustfmt::skip]
        check_rows(&mut r, &[
            ("A25: no leftover flow passes", out_of(syn_in), Reason::DropNaclRule, rule("out/*v4")),
        ]);
    });
}

#[test]
fn n1_n2_exemptions_stay_on_a_nacl_interface() {
    with_rig(|rig| {
        let c = case(vec![], vec![], &[]);
        apply(rig, &c);
        #[rustfmt::skip]
        check_rows(rig, &[
            ("N2: a DHCP client's request (68 -> 67) at hook egress, as on any interface", into(Packet::udp(addr(CLIENT), addr(WEB), 68, 67)), Reason::PassDhcp, None),
            ("N1: neighbour solicitation", into(Packet::icmp(addr("2001:db8:a0::1"), addr(WEB6), 135, 0)), Reason::PassNdp, None),
        ]);
    });
}
