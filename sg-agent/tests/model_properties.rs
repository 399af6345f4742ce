//! Properties of the reference model over random packet sequences (testgen::packets) against
//! a few hand-written policies: the verdict vocabulary is used consistently, and C1/X1 hold
//! for every flow the sequence opens.

use proptest::prelude::*;
use sg_agent::model::Model;
use sg_agent::model::build::*;
use sg_agent::packet::L4;
use sg_agent::policy::{Policy, Protocol};
use sg_common::Reason::*;
use sg_testkit::random::packets::arb_sequence;

fn policies() -> Vec<Policy> {
    vec![
        PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("198.51.100.0/24"))
            .ingress("sg-a", udp_range(1000, 2000), cidr("2001:db8:1::/48"))
            .ingress("sg-a", icmp_type(8), cidr("0.0.0.0/0"))
            .egress("sg-a", udp(53), cidr("0.0.0.0/0"))
            .ingress("sg-a", Protocol::Number(132), sg("sg-a"))
            .iface("eth0", &["192.0.2.10", "2001:db8::10"], &["sg-a"])
            .iface("eth1", &["192.0.2.11"], &["sg-a"])
            .build(),
        // C4-heavy: world rules with allow-all the other way.
        PolicyBuilder::new()
            .ingress("sg-w", tcp_range(0, 1024), cidr("0.0.0.0/0"))
            .ingress("sg-w", udp(53), cidr("::/0"))
            .egress("sg-w", all(), cidr("0.0.0.0/0"))
            .egress("sg-w", all(), cidr("::/0"))
            .ingress("sg-w", icmpv6_all(), cidr("::/0"))
            .iface("eth0", &["192.0.2.10", "2001:db8::10"], &["sg-w"])
            .build(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Passing reasons that involve a rule name one; drops and exemptions never do.
    #[test]
    fn verdict_vocabulary_is_consistent(
        (pi, steps) in (0..2usize).prop_flat_map(|i| (Just(i), arb_sequence(&policies()[i], 1..40)))
    ) {
        let mut m = Model::new(policies()[pi].clone());
        for s in &steps {
            let o = m.process(&s.iface, s.dir, &s.pkt);
            prop_assert_eq!(o.pass, o.reason.is_pass());
            let needs_rule = matches!(
                o.reason,
                PassRuleNew | PassRuleUntracked | PassCtOriginal | PassCtReply | PassRelated
            );
            if needs_rule {
                prop_assert!(o.rule.is_some(), "{:?} without a rule for {:?}", o.reason, s);
            }
            if !o.pass || matches!(o.reason, PassNonIp | PassNdp | PassDhcp) {
                prop_assert!(o.rule.is_none(), "{:?} with a rule", o.reason);
            }
        }
    }

    /// C1 and X1: once a flow is opened (PassRuleNew), its reply passes by conntrack, also
    /// after the policy is replaced by an empty one.
    #[test]
    fn opened_flows_let_replies_through_even_after_the_rules_go(
        (pi, steps) in (0..2usize).prop_flat_map(|i| (Just(i), arb_sequence(&policies()[i], 1..40)))
    ) {
        let mut m = Model::new(policies()[pi].clone());
        let mut opened = Vec::new();
        for s in &steps {
            let o = m.process(&s.iface, s.dir, &s.pkt);
            if o.reason == PassRuleNew && !s.pkt.is_later_fragment() && s.pkt.frag.is_none() {
                opened.push((s.clone(), o.rule.clone()));
            }
        }
        let mut empty = policies()[pi].clone();
        for g in empty.groups.values_mut() {
            g.ingress.clear();
            g.egress.clear();
        }
        m.set_policy(empty);
        for (s, rule) in opened {
            let reply = s.pkt.reply();
            // An echo request's reply is a reply; the reply of anything else is the other
            // direction of the same flow.
            let o = m.process(&s.iface, s.dir.opposite(), &reply);
            prop_assert!(o.pass, "reply of {:?} dropped: {:?}", s, o);
            prop_assert_eq!(o.rule, rule);
            if let L4::IcmpEcho { .. } = s.pkt.l4 {
                prop_assert_eq!(o.reason, PassCtReply);
            }
        }
    }
}
