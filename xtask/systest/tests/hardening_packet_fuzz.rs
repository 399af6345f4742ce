//! Packet fuzzing through the real programs (BPF_PROG_TEST_RUN): random stateful sequences
//! from `testgen::packets`, forged replies and ICMP errors, and structure-aware mutations
//! (`testgen::fuzz`), every frame through XDP ingress, TC ingress and TC egress.
//!
//! The oracle, per run (docs/hardening.md "Packet fuzzing"):
//! - the program returns its hook's pass or drop action, never another one (XDP_ABORTED ...),
//!   and exactly one reason counter moves (`Dataplane::run_frame` checks that);
//! - a frame the contract calls malformed is dropped with the contract's reason, a non-IP
//!   frame passes as `PassNonIp`;
//! - a well-formed frame gets exactly the reference model's reason and rule, the model
//!   judging the packet the oracle's own strict parser read out of the bytes. A pass the
//!   model drops is reported as a bypass.
//!
//! `packet_fuzz_ci` is the short run (>= 20,000 frames, under a minute). The long run is
//! `cargo xtask fuzz packets --frames N --seconds S` (the ignored test below, budget from
//! `SG_FUZZ_FRAMES` / `SG_FUZZ_SECONDS`). A failure prints the environment that replays its
//! episode alone (`SG_FUZZ_SEED`, `SG_FUZZ_EPISODE`).
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeSet;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sg_agent::model::build::*;
use sg_agent::policy::Policy;
use sg_common::Reason;
use sg_testkit::dataplane_harness::{self, compile_for, in_netns};
use sg_testkit::random::fuzz::{PacketFuzz, PacketFuzzConfig, PacketFuzzReport};
use sg_testkit::random::{PolicyShape, describe, policy_with};

/// Hand-written policies covering every rule kind, plus small random ones (from the seed).
fn policies(seed: u64) -> Vec<(String, Policy)> {
    let mut out: Vec<(String, Policy)> = dataplane_harness::fixed_policies()
        .into_iter()
        .map(|(name, p)| (name.to_string(), p))
        .collect();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let shape = PolicyShape {
        max_groups: 3,
        max_rules: 5,
        max_interfaces: 3,
        max_prefix_lists: 1,
    };
    for i in 0..2 {
        let p = policy_with(shape).new_tree(&mut runner).unwrap().current();
        out.push((format!("random-{i}"), p));
    }
    out
}

fn run(cfg: PacketFuzzConfig) -> PacketFuzzReport {
    in_netns(move |net| {
        let pols = policies(cfg.seed);
        for (name, p) in &pols {
            eprintln!("policy {name}:\n{}", describe(p));
        }
        let mut fuzz = PacketFuzz::new(pols, &[net.lo, net.a, net.b])
            .unwrap_or_else(|e| panic!("setting up the packet fuzzer: {e:#}"));
        fuzz.run(&cfg)
            .unwrap_or_else(|e| panic!("packet fuzz run (seed {:#x}): {e:#}", cfg.seed))
    })
}

/// The reasons a run need not produce: exempt traffic (NDP, DHCP), the two that take a
/// particular history (a full conntrack table, a denied first fragment before its later ones)
/// the network ACL reasons (this fuzzer's policies are security groups only; the NACL
/// differential, `dataplane_nacl`, reaches those) and audit mode's (off here; `lockout_audit`).
/// Every other reason must appear, so that a fuzzer that stopped reaching a code path (say,
/// every frame malformed, or no stateful sequences) fails instead of passing vacuously.
const NEED_NOT_SEE: [Reason; 10] = [
    Reason::PassNdp,
    Reason::PassDhcp,
    Reason::DropCtFull,
    Reason::DropFragDenied,
    Reason::PassNaclRule,
    Reason::PassRouterLocal,
    Reason::DropNaclRule,
    Reason::AuditNoRule,
    Reason::AuditNaclRule,
    Reason::AuditFragDenied,
];

/// The report must hold no failure; a full run (not a one-episode replay) must also have
/// tried `min_frames` frames, reached every reason but [`NEED_NOT_SEE`] and compared most runs.
fn check(rep: &PacketFuzzReport, min_frames: u64, replay: bool) {
    eprintln!("{rep}");
    assert!(
        rep.failures.is_empty(),
        "the kernel and the oracle disagree ({} failures):\n{rep}",
        rep.failures.len()
    );
    if replay {
        return;
    }
    assert!(
        rep.frames >= min_frames,
        "only {} frames tried, wanted {min_frames}",
        rep.frames
    );
    let seen: BTreeSet<Reason> = rep.kernel_reasons.keys().copied().collect();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| !NEED_NOT_SEE.contains(r) && !seen.contains(r))
        .map(|r| r.name())
        .collect();
    assert!(missing.is_empty(), "no run reached {missing:?}:\n{rep}");
    // Most runs must be judged exactly, not waved through as unmodelled or desynchronised.
    assert!(
        rep.compared * 10 >= rep.runs * 9,
        "only {} of {} runs were compared exactly:\n{rep}",
        rep.compared,
        rep.runs
    );
}

#[test]
fn packet_fuzz_ci_nothing_passes_that_the_model_drops() {
    let cfg = PacketFuzzConfig {
        frames: 40_000,
        ..PacketFuzzConfig::default()
    }
    .from_env()
    .expect("SG_FUZZ_* environment");
    let rep = run(cfg.clone());
    check(&rep, cfg.frames, cfg.only_episode.is_some());
}

/// The long run behind `cargo xtask fuzz packets` (budget from the environment).
#[test]
#[ignore = "long run: cargo xtask fuzz packets"]
fn packet_fuzz_long() {
    let cfg = PacketFuzzConfig {
        frames: 2_000_000,
        time: Some(std::time::Duration::from_secs(600)),
        max_failures: 20,
        ..PacketFuzzConfig::default()
    }
    .from_env()
    .expect("SG_FUZZ_* environment");
    let rep = run(cfg.clone());
    // A time budget may end the run before the frame budget.
    let min = if cfg.time.is_some() { 1 } else { cfg.frames };
    check(&rep, min, cfg.only_episode.is_some());
}

/// C2: pings with one echo id from both sides are two flows, in the kernel and the model.
/// Found by the long packet fuzz run (all 20 of its failures in 1,072,662 frames) when the
/// echo key was (local, remote, id): the two flows collided in one key and the kernel said
/// `PassRuleNew` for the second ping where the model said `PassRuleUntracked`
/// (docs/hardening.md, finding 3). The key now carries the side that opened the flow.
/// Pings both ways between 192.0.2.10 and 203.0.113.9 with id 7, the first flow confirmed
/// before the second opens; egress allows only requests, so the host's reply to the
/// peer's ping passes only by the second flow's state.
#[test]
fn c2_echo_flows_opened_from_both_sides_with_one_id_agree_with_the_model() {
    use sg_agent::dataplane::{Capacities, Dataplane, Hook, LoadOptions};
    use sg_agent::model::Model;
    use sg_agent::packet::{Packet, icmp};
    use sg_agent::policy::Direction;
    in_netns(|net| {
        let policy = PolicyBuilder::new()
            .egress("sg-a", icmp_type(icmp::V4_ECHO_REQUEST), cidr("0.0.0.0/0"))
            .ingress("sg-a", icmp_type(icmp::V4_ECHO_REQUEST), cidr("0.0.0.0/0"))
            .iface("web", &["192.0.2.10"], &["sg-a"])
            .build();
        let mut dp = Dataplane::load(LoadOptions {
            capacities: Capacities::small(),
            ..LoadOptions::default()
        })
        .expect("load");
        let bindings = std::collections::BTreeMap::from([("web".to_string(), net.lo)]);
        let image = compile_for(&dp, &policy, &bindings).expect("compile");
        dp.apply(&image).expect("apply");
        let (l, r) = (addr("192.0.2.10"), addr("203.0.113.9"));
        let out = Packet::echo_request(l, r, 7, 1);
        let inc = Packet::echo_request(r, l, 7, 1);
        use Reason::*;
        let mut bad = Vec::new();
        // The host's flow confirmed (two exchanges, SG_CT) or still unconfirmed (SG_CT_NEW)
        // when the peer's ping arrives: the collision used to behave differently in each.
        for confirmed_first in [true, false] {
            dp.flush_conntrack().expect("flush");
            let mut model = Model::new(policy.clone());
            let mut steps = vec![
                ("host pings the peer", Hook::TcOut, out.clone(), PassRuleNew),
                ("its reply", Hook::XdpIn, out.reply(), PassCtReply),
            ];
            if confirmed_first {
                steps.push(("second ping", Hook::TcOut, out.clone(), PassCtOriginal));
                steps.push((
                    "second reply: confirmed",
                    Hook::XdpIn,
                    out.reply(),
                    PassCtReply,
                ));
            }
            steps.extend([
                (
                    "the peer pings the host with the same id",
                    Hook::XdpIn,
                    inc.clone(),
                    PassRuleNew,
                ),
                // Egress allows only echo requests: only the peer's flow lets this out.
                (
                    "the host's reply to it",
                    Hook::TcOut,
                    inc.reply(),
                    PassCtReply,
                ),
                (
                    "the peer's second ping",
                    Hook::XdpIn,
                    inc.clone(),
                    PassCtOriginal,
                ),
                (
                    "the host pings again: its own flow",
                    Hook::TcOut,
                    out.clone(),
                    PassCtOriginal,
                ),
                (
                    "the peer's reply to that",
                    Hook::XdpIn,
                    out.reply(),
                    PassCtReply,
                ),
            ]);
            for (what, hook, p, expected) in steps {
                let got = dp.run_frame(hook, &p.to_frame(), net.lo).expect("run");
                let dir = if hook.is_ingress() {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let want = model.process("web", dir, &p);
                eprintln!(
                    "(host's flow confirmed first: {confirmed_first}) {what}: kernel {:?}, model {:?}",
                    got.reason, want.reason
                );
                if got.reason != expected || want.reason != expected {
                    bad.push(format!(
                        "(host's flow confirmed first: {confirmed_first}) {what}: kernel {:?}, model {:?}, expected {expected:?}",
                        got.reason, want.reason
                    ));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "kernel or model not as expected:\n  {}",
            bad.join("\n  ")
        );
    });
}
