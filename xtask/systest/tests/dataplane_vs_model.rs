//! Differential test: the real eBPF program (BPF_PROG_TEST_RUN) against the reference model,
//! packet by packet, over random packet sequences (testgen::packets) for a few policies.
//! Every packet must get the same reason and charge the same rule.
//!
//! The policies here are hand-written (every interface bound to a device of the test's
//! namespace); random policies from testgen can be plugged in the same way. Ingress packets
//! alternate between the XDP and the TC ingress program, so both are compared.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeMap;

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sg_agent::dataplane::{Dataplane, Hook};
use sg_agent::image::{MapImage, SlotTable};
use sg_agent::model::Model;
use sg_agent::policy::{Direction, Policy};
use sg_testkit::dataplane_harness::{self, in_netns, load, mini_compile};
use sg_testkit::random::packets::{Step, arb_sequence};

struct Bench {
    dp: Dataplane,
    image: MapImage,
    ifindex: BTreeMap<String, u32>,
}

fn run_sequence(b: &mut Bench, policy: &Policy, steps: &[Step]) -> Result<(), TestCaseError> {
    b.dp.flush_conntrack()
        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    b.dp.flush_fragments()
        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    let mut model = Model::new(policy.clone());
    for (i, s) in steps.iter().enumerate() {
        let want = model.process(&s.iface, s.dir, &s.pkt);
        let hook = match (s.dir, i % 2) {
            (Direction::Egress, _) => Hook::TcOut,
            (Direction::Ingress, 0) => Hook::XdpIn,
            (Direction::Ingress, _) => Hook::TcIn,
        };
        let got =
            b.dp.run_frame(hook, &s.pkt.to_frame(), b.ifindex[&s.iface])
                .map_err(|e| TestCaseError::fail(format!("step {i}: {e:#}")))?;
        let got_rule = got.slot.and_then(|slot| b.image.slots.rule(slot).cloned());
        if got.reason != want.reason || got_rule != want.rule || got.pass != want.pass {
            return Err(TestCaseError::fail(format!(
                "step {i} ({hook:?} on {}): kernel {:?} rule {:?}, model {:?} rule {:?}\n  packet {:?}",
                s.iface, got.reason, got_rule, want.reason, want.rule, s.pkt
            )));
        }
    }
    Ok(())
}

#[test]
fn kernel_agrees_with_the_model_on_random_sequences() {
    in_netns(|net| {
        let devices = [net.lo, net.a, net.b];
        let cases: u32 = std::env::var("SG_DIFF_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        for (name, policy) in dataplane_harness::fixed_policies() {
            let ifindex: BTreeMap<String, u32> = policy
                .interfaces
                .iter()
                .zip(devices)
                .map(|(i, d)| (i.name.clone(), d))
                .collect();
            assert_eq!(
                ifindex.len(),
                policy.interfaces.len(),
                "{name}: more interfaces than devices"
            );
            let mut dp = load();
            let image = mini_compile(
                &policy,
                &ifindex,
                &SlotTable::default(),
                dp.next_generation(),
                1024,
            );
            dp.apply(&image)
                .unwrap_or_else(|e| panic!("{name}: apply: {e:#}"));
            let bench = std::cell::RefCell::new(Bench { dp, image, ifindex });
            let mut runner = TestRunner::new(Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            });
            let result = runner.run(&arb_sequence(&policy, 1..40), |steps| {
                run_sequence(&mut bench.borrow_mut(), &policy, &steps)
            });
            if let Err(e) = result {
                panic!("policy {name}: kernel and model disagree: {e}");
            }
        }
    });
}
