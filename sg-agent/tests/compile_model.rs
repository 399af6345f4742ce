//! The compiler against the reference model: for random valid policies and queries aimed at
//! their edges, the kernel lookup over the compiled image (`lookup`) must give exactly the
//! model's decision (`model::decide`): allow or deny, the charged rule (E4, through the slot
//! table) and the tracked flag (C4). Then a mutation check: the same comparison must notice a
//! deliberately broken image, so the property cannot pass vacuously.
//!
//! Case count: `PROPTEST_CASES` policies (default 1000) x 100 queries.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sg_agent::compile::{CompileOptions, compile, compile_indexed, membership_delta};
use sg_agent::image::{MapImage, SlotTable};
use sg_agent::model::decide::{Decision, allowing_rules, decide};
use sg_agent::policy::Policy;
use sg_common::iface_flags;
use sg_common::rule_flags::{self, UNTRACKED};
use sg_testkit::lookup::{LookupResult, check_canonical, lookup};
use sg_testkit::random::{PolicyShape, Query, describe, minimize, policy, policy_and_queries};

const QUERIES_PER_POLICY: usize = 100;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Binds the interfaces selected by `mask` (bit i: interface i) to ifindexes 100 + i.
fn bindings(policy: &Policy, mask: u32) -> BTreeMap<String, u32> {
    policy
        .interfaces
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, iface)| (iface.name.clone(), 100 + i as u32))
        .collect()
}

/// "web ingress remote 192.0.2.1 proto 6 port 22".
fn query(q: &Query) -> String {
    let (iface, dir, remote, proto, port) = (&q.iface, q.dir.name(), q.remote, q.proto, q.port);
    format!("{iface} {dir} remote {remote} proto {proto} port {port}")
}

/// One query: the model's decision against the lookup in the image. Interfaces not bound
/// must answer NoPolicy.
fn check(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    image: &MapImage,
    q: &Query,
) -> Result<(), String> {
    let Some(&ifindex) = bindings.get(&q.iface) else {
        let unbound_index = 100 + policy.interfaces.len() as u32 + 7;
        return match lookup(image, unbound_index, q.dir, q.remote, q.proto, q.port) {
            LookupResult::NoPolicy => Ok(()),
            other => Err(format!("unbound interface answered {other:?}")),
        };
    };
    let want = decide(policy, &q.iface, q.dir, q.remote, q.proto, q.port);
    let got = lookup(image, ifindex, q.dir, q.remote, q.proto, q.port);
    let agree = match (&want, got) {
        (Decision::Deny, LookupResult::Deny) => true,
        (Decision::Allow { rule, tracked }, LookupResult::Allow(v)) => {
            image.slots.slot(rule) == Some(v.slot) && (v.flags & UNTRACKED == 0) == *tracked
        }
        _ => false,
    };
    // C4 points exist in a scope the compiler marked tracked-only: the kernel would skip the
    // answer check (design.md, pipeline) where it matters.
    if let (Decision::Allow { tracked: false, .. }, true) = (&want, agree) {
        let key = sg_common::IfaceKey {
            generation: image.generation,
            ifindex,
        };
        let bit = match q.dir {
            sg_agent::policy::Direction::Ingress => iface_flags::TRACKED_ONLY_IN,
            sg_agent::policy::Direction::Egress => iface_flags::TRACKED_ONLY_OUT,
        };
        if image.ifaces[&key].flags & bit != 0 {
            return Err(format!(
                "{} is untracked but the scope is flagged tracked-only\npolicy:\n{}",
                query(q),
                describe(policy)
            ));
        }
    }
    if agree {
        return Ok(());
    }
    let got = match got {
        LookupResult::Allow(v) => format!(
            "Allow {{ rule: {:?}, tracked: {} }} (slot {}, flags {:#x})",
            image.slots.rule(v.slot).map(|r| r.as_str()),
            v.flags & UNTRACKED == 0,
            v.slot,
            v.flags
        ),
        other => format!("{other:?}"),
    };
    let allowing: Vec<String> = allowing_rules(policy, &q.iface, q.dir, q.remote, q.proto, q.port)
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    Err(format!(
        "model and compiled lookup disagree\n\
         query: {}\n\
         model:  {want:?}\n\
         lookup: {got}\n\
         allowing rules, E4 order: {allowing:?}\n\
         policy:\n{}",
        query(q),
        describe(policy)
    ))
}

fn compile_for(
    policy: &Policy,
    bindings: &BTreeMap<String, u32>,
    generation: u32,
) -> Result<MapImage, String> {
    let opts = CompileOptions {
        generation,
        slot_capacity: 1 << 16,
    };
    let image = compile(policy, bindings, &SlotTable::default(), &opts)
        .map_err(|e| format!("compile failed: {e}"))?;
    check_canonical(&image)?;
    Ok(image)
}

/// Compiles and checks every query. On the first disagreement, the error is the report for
/// a minimal policy (`testgen::minimize`) that still disagrees on that query.
fn run_case(
    policy: &Policy,
    mask: u32,
    generation: u32,
    queries: &[Query],
    mutate: impl Fn(&mut MapImage),
) -> Result<(), String> {
    let bound = bindings(policy, mask);
    let mut image = compile_for(policy, &bound, generation)?;
    mutate(&mut image);
    let Some(q) = queries
        .iter()
        .find(|q| check(policy, &bound, &image, q).is_err())
    else {
        return Ok(());
    };
    // Minimise with every interface bound: binding changes no answer of a bound interface.
    let outcome = |p: &Policy| -> Result<(), String> {
        let bindings = bindings(p, u32::MAX);
        let mut image = compile_for(p, &bindings, generation)?;
        mutate(&mut image);
        check(p, &bindings, &image, q)
    };
    let small = minimize(policy, |p| outcome(p).is_err());
    Err(outcome(&small)
        .err()
        .unwrap_or_else(|| check(policy, &bound, &image, q).unwrap_err()))
}

/// (policy, queries, interface binding mask: mostly all bound, sometimes a subset so that
/// unbound interfaces still provide membership (R1), generation).
fn cases_strategy() -> impl Strategy<Value = ((Policy, Vec<Query>), u32, u32)> {
    (
        policy_and_queries(PolicyShape::default(), QUERIES_PER_POLICY),
        prop_oneof![3 => Just(u32::MAX), 1 => any::<u32>()],
        0u32..=1,
    )
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: None,
        // run_case already reports a minimal policy for the failing query; proptest's own
        // shrinking regenerates the queries with the policy and gets little further.
        max_shrink_iters: 16,
        ..Config::default()
    })]

    #[test]
    fn compiled_lookup_agrees_with_the_model(
        ((policy, queries), mask, generation) in cases_strategy()
    ) {
        if let Err(e) = run_case(&policy, mask, generation, &queries, |_| {}) {
            return Err(TestCaseError::fail(e));
        }
    }
}

proptest! {
    #![proptest_config(Config {
        cases: cases() / 5,
        failure_persistence: None,
        ..Config::default()
    })]

    /// Same input, same image; and recompiling with the image's own slot table keeps every
    /// slot (the dataplane then writes no counter changes).
    #[test]
    fn compile_is_deterministic_and_keeps_its_own_slots(policy in policy(), generation in 0u32..=1) {
        let all = bindings(&policy, u32::MAX);
        let first = compile_for(&policy, &all, generation).map_err(TestCaseError::fail)?;
        let again = compile_for(&policy, &all, generation).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&first, &again);
        let opts = CompileOptions { generation, slot_capacity: 1 << 16 };
        let next = compile(&policy, &all, &first.slots, &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&first.slots.by_rule, &next.slots.by_rule);
    }
}

/// Runs the comparison over deterministic random cases with `mutate` applied to every image
/// and returns the first disagreement found, if any.
fn first_mismatch(mutate: impl Fn(&mut MapImage), max_cases: u32) -> Option<String> {
    let mut runner = TestRunner::deterministic();
    let strategy = cases_strategy();
    for _ in 0..max_cases {
        let ((policy, queries), mask, generation) =
            strategy.new_tree(&mut runner).expect("generate").current();
        if let Err(e) = run_case(&policy, mask, generation, &queries, &mutate) {
            return Some(e);
        }
    }
    None
}

fn assert_caught(name: &str, mutate: impl Fn(&mut MapImage)) {
    let found = first_mismatch(mutate, 300);
    assert!(
        found.is_some(),
        "the property did not notice the broken compiler `{name}`"
    );
}

#[test]
fn unmutated_images_pass_the_same_cases() {
    assert_eq!(first_mismatch(|_| {}, 300), None);
}

/// The property is only as good as its cases: they must allow and deny, charge one of
/// several allowing rules (E4), produce untracked flows (C4), use both families and leave
/// some interfaces unbound.
#[test]
fn generated_cases_cover_allow_deny_e4_contention_and_c4() {
    let mut runner = TestRunner::deterministic();
    let strategy = cases_strategy();
    let (mut allow, mut deny, mut untracked, mut contended, mut v6, mut unbound) =
        (0, 0, 0, 0, 0, 0);
    let mut total = 0;
    for _ in 0..200 {
        let ((policy, queries), mask, _) = strategy.new_tree(&mut runner).unwrap().current();
        let bound = bindings(&policy, mask);
        for q in &queries {
            total += 1;
            if !bound.contains_key(&q.iface) {
                unbound += 1;
            }
            v6 += usize::from(q.remote.is_ipv6());
            match decide(&policy, &q.iface, q.dir, q.remote, q.proto, q.port) {
                Decision::Deny => deny += 1,
                Decision::Allow { tracked, .. } => {
                    allow += 1;
                    untracked += usize::from(!tracked);
                }
            }
            let n = allowing_rules(&policy, &q.iface, q.dir, q.remote, q.proto, q.port).len();
            contended += usize::from(n > 1);
        }
    }
    let pct = |n: usize| n * 100 / total;
    println!(
        "{total} queries: allow {}%, deny {}%, untracked {}%, several allowing rules {}%, \
         IPv6 {}%, unbound {}%",
        pct(allow),
        pct(deny),
        pct(untracked),
        pct(contended),
        pct(v6),
        pct(unbound)
    );
    assert!(pct(allow) >= 30 && pct(deny) >= 20);
    assert!(pct(untracked) >= 3);
    assert!(pct(contended) >= 10);
    assert!(pct(v6) >= 20);
    assert!(unbound > 0);
}

#[test]
fn mutation_dropping_untracked_flags_is_caught() {
    assert_caught("C4 flag cleared", |image| {
        for page in image.ports.values_mut() {
            for v in page.vals.iter_mut() {
                v.flags &= !UNTRACKED;
            }
        }
    });
}

#[test]
fn mutation_flagging_every_scope_tracked_only_is_caught() {
    assert_caught("TRACKED_ONLY everywhere", |image| {
        for conf in image.ifaces.values_mut() {
            conf.flags |= iface_flags::TRACKED_ONLY_IN | iface_flags::TRACKED_ONLY_OUT;
        }
    });
}

#[test]
fn mutation_dropping_host_prefixes_is_caught() {
    assert_caught("no /32 or /128 peer entries", |image| {
        image.peers.retain(|k, _| k.prefix_len < 160);
    });
}

#[test]
fn mutation_charging_one_rule_per_class_is_caught() {
    // Every segment of a class charges the class's first rule: the E4 choice is lost.
    assert_caught("one charged rule per class", |image| {
        let mut first: BTreeMap<u32, u32> = BTreeMap::new();
        for (k, page) in image.ports.iter_mut() {
            for v in page.vals.iter_mut() {
                if v.flags & rule_flags::PAGE == 0 && v.slot != 0 {
                    v.slot = *first.entry(k.class).or_insert(v.slot);
                }
            }
        }
    });
}

#[test]
fn mutation_dropping_all_protocol_entries_is_caught() {
    // Protocol -1 rules lose their every-protocol pages.
    assert_caught("no every-protocol pages", |image| {
        image.ports.retain(|k, _| k.any == 0);
    });
}

#[test]
fn mutation_ignoring_more_specific_prefixes_is_caught() {
    // Only the shortest prefixes of each scope remain: nested CIDRs, prefix-list entries and
    // members inside a wider prefix fall back to the wider prefix's class.
    assert_caught("covered peer entries dropped", |image| {
        let keys: Vec<_> = image.peers.keys().copied().collect();
        image.peers.retain(|k, _| {
            !keys.iter().any(|q| {
                q.prefix_len < k.prefix_len
                    && q.data.scope == k.data.scope
                    && covers(&q.data.addr, q.prefix_len - 32, &k.data.addr)
            })
        });
    });
}

fn covers(net: &[u8; 16], len: u32, addr: &[u8; 16]) -> bool {
    let (n, a) = (u128::from_be_bytes(*net), u128::from_be_bytes(*addr));
    len == 0 || (n ^ a) >> (128 - len) == 0
}

#[test]
fn mutation_shifting_segment_starts_is_caught() {
    // Off by one: every segment after a leaf page's first starts one port later (the lookup
    // still sees a well-formed tree: only the answers move).
    assert_caught("segment starts one port late", |image| {
        let leaf = |p: &sg_common::PortPage| p.vals.iter().all(|v| v.flags & rule_flags::PAGE == 0);
        for page in image.ports.values_mut().filter(|p| leaf(p)) {
            for i in 1..page.starts.len() {
                if page.starts[i] > page.starts[0] && page.starts[i] < u16::MAX {
                    page.starts[i] += 1;
                }
            }
        }
    });
}

/// One membership change of `p` that keeps the bound interfaces' groups (R1): an address of
/// an interface replaced, an unbound interface's groups changed, a new unbound interface, or
/// an unbound interface removed. `pick` drives the choices.
fn change_membership(
    p: &Policy,
    bound: &BTreeMap<String, u32>,
    pick: &[u64; 4],
    addr: std::net::IpAddr,
) -> Policy {
    let mut p = p.clone();
    let groups: Vec<_> = p.groups.keys().cloned().collect();
    let unbound: Vec<usize> = (0..p.interfaces.len())
        .filter(|&i| !bound.contains_key(&p.interfaces[i].name))
        .collect();
    match pick[0] % 4 {
        0 if !p.interfaces.is_empty() => {
            let n = p.interfaces.len();
            let i = &mut p.interfaces[pick[1] as usize % n];
            let n = i.addresses.len().max(1);
            let at = pick[2] as usize % n;
            if at < i.addresses.len() {
                i.addresses[at] = addr;
            } else {
                i.addresses.push(addr);
            }
        }
        1 if !unbound.is_empty() && !groups.is_empty() => {
            let i = &mut p.interfaces[unbound[pick[1] as usize % unbound.len()]];
            i.groups = groups
                .iter()
                .enumerate()
                .filter(|(k, _)| pick[2] >> k & 1 == 1)
                .map(|(_, g)| g.clone())
                .take(5)
                .collect();
        }
        3 if !unbound.is_empty() => {
            p.interfaces
                .remove(unbound[pick[1] as usize % unbound.len()]);
        }
        _ if !groups.is_empty() => {
            let mut i =
                p.interfaces
                    .first()
                    .cloned()
                    .unwrap_or_else(|| sg_agent::policy::Interface {
                        name: String::new(),
                        instance: "i-new".into(),
                        device: None,
                        addresses: vec![],
                        groups: vec![],
                        timeouts: sg_agent::policy::Timeouts::AWS_DEFAULT,
                        origin: Default::default(),
                    });
            i.name = format!("newcomer-{}", pick[3] % 1000);
            i.addresses = vec![addr];
            i.groups = vec![groups[pick[1] as usize % groups.len()].clone()];
            if p.interface(&i.name).is_none() {
                p.interfaces.push(i);
            }
        }
        _ => {}
    }
    p
}

proptest! {
    #![proptest_config(Config {
        cases: cases() / 5,
        failure_persistence: None,
        max_shrink_iters: 16,
        ..Config::default()
    })]

    /// A membership change applied as a delta (`membership_delta` patched into the live
    /// image) gives the peer entries of a full compile of the new policy, and its lookups
    /// agree with the model of the new policy.
    #[test]
    fn membership_delta_matches_a_full_compile(
        ((policy, queries), mask, generation) in cases_strategy(),
        changes in proptest::collection::vec(
            (any::<[u64; 4]>(), sg_testkit::random::member_address()),
            1..4,
        ),
    ) {
        let bound = bindings(&policy, mask);
        let opts = CompileOptions { generation, slot_capacity: 1 << 16 };
        let (mut image, mut index) = compile_indexed(&policy, &bound, &SlotTable::default(), &opts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut before = policy.clone();
        for (pick, addr) in &changes {
            let after = change_membership(&before, &bound, pick, *addr);
            let delta = membership_delta(&before, &after, &bound, &image, &index)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .ok_or_else(|| TestCaseError::fail("a membership change was not recognised"))?;
            delta.patch(&mut image);
            index.absorb(delta);
            let full = compile(&after, &bound, &image.slots, &opts)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&image.peers, &full.peers, "policy after:\n{}", describe(&after));
            prop_assert_eq!(&image.ifaces, &full.ifaces);
            prop_assert!(full.ports.iter().all(|(k, v)| image.ports.get(k) == Some(v)));
            for q in &queries {
                check(&after, &bound, &image, q).map_err(TestCaseError::fail)?;
            }
            before = after;
        }
        // A rule change is not a membership change.
        if let Some(g) = before.groups.keys().next().cloned() {
            let mut other = before.clone();
            other.groups.get_mut(&g).unwrap().ingress.clear();
            other.groups.get_mut(&g).unwrap().egress.clear();
            let has_rules = before.groups[&g].ingress.len() + before.groups[&g].egress.len() > 0;
            let d = membership_delta(&before, &other, &bound, &image, &index)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(d.is_none(), has_rules);
        }
    }
}
