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
use sg_agent::model::build::*;
use sg_agent::policy::{Direction, Policy, Protocol};
use sg_testkit::dataplane_harness::{in_netns, load, mini_compile};
use sg_testkit::random::packets::{Step, arb_sequence};

fn policies() -> Vec<(&'static str, Policy)> {
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
                .iface("a", &["192.0.2.10", "2001:db8::10"], &["sg-p"])
                .iface("b", &["192.0.2.20", "2001:db8::20"], &["sg-p"])
                .build(),
        ),
    ]
}

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
        for (name, policy) in policies() {
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
