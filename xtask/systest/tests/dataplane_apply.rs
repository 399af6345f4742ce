//! Dataplane::apply against the kernel: the generation swap is atomic in the sense that
//! matters (E7, design "Atomic policy change"): after an apply only the new generation's
//! entries exist, counters stay readable, and a failed apply leaves the old policy enforced
//! with nothing of the new one in the kernel. Also the conntrack and counter readers, C6 and
//! attaching to a real device.
//!
//! Privileged (root: BPF, network namespaces). Never skipped: without root they fail.

use std::collections::BTreeMap;

use sg_agent::dataplane::{Capacities, Dataplane, Hook, IngressHook, LoadOptions, XdpMode};
use sg_agent::image::{LpmKey, MapImage, SlotTable};
use sg_agent::model::build::*;
use sg_agent::packet::{Packet, tcp_flags};
use sg_agent::policy::Policy;
use sg_common::{PeerData, Reason};
use sg_testkit::dataplane_harness::plan::{HOST, PEER};
use sg_testkit::dataplane_harness::{in_netns, load, mini_compile};

fn ssh_policy() -> Policy {
    PolicyBuilder::new()
        .ingress("sg-a", tcp(22), cidr("198.51.100.0/24")) // 1
        .iface("web", &[HOST], &["sg-a"])
        .build()
}

fn http_policy() -> Policy {
    PolicyBuilder::new()
        .rule_with_id(
            &rule_id(2).0,
            "sg-a",
            sg_agent::policy::Direction::Ingress,
            tcp(80),
            cidr("198.51.100.0/24"),
        )
        .iface("web", &[HOST], &["sg-a"])
        .build()
}

fn image(dp: &Dataplane, p: &Policy, ifindex: u32, prev: &SlotTable) -> MapImage {
    let b: BTreeMap<String, u32> = [("web".to_string(), ifindex)].into();
    mini_compile(
        p,
        &b,
        prev,
        dp.next_generation(),
        dp.capacities().rule_slots,
    )
}

/// Applies `ssh_policy` on `ifindex` as the first generation; returns its image.
fn apply_ssh(dp: &mut Dataplane, ifindex: u32) -> MapImage {
    let a = image(dp, &ssh_policy(), ifindex, &SlotTable::default());
    dp.apply(&a)
        .unwrap_or_else(|e| panic!("apply ssh_policy: {e:#}"));
    a
}

/// A dataplane loaded with these map capacities.
fn load_with(capacities: Capacities) -> Dataplane {
    Dataplane::load(LoadOptions {
        capacities,
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("load: {e:#}"))
}

fn verdict(dp: &mut Dataplane, ifindex: u32, dport: u16, sport: u16) -> Reason {
    let f = Packet::syn(addr(PEER), addr(HOST), sport, dport).to_frame();
    dp.run_frame(Hook::XdpIn, &f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e:#}"))
        .reason
}

#[test]
fn apply_swaps_generations_and_the_next_apply_writes_only_the_difference() {
    in_netns(|net| {
        let mut dp = load();
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 1),
            Reason::DropNoPolicy,
            "nothing applied yet"
        );
        let a = image(&dp, &ssh_policy(), net.lo, &SlotTable::default());
        let ga = a.generation;
        let r = dp.apply(&a).unwrap_or_else(|e| panic!("apply A: {e:#}"));
        assert_eq!(r.generation, ga);
        assert_eq!(dp.active_generation(), ga);
        assert_eq!(r.written, a.ifaces.len() + a.peers.len() + a.ports.len());
        dp.verify_mirror()
            .unwrap_or_else(|e| panic!("mirror after A: {e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 22, 2), Reason::PassRuleNew);
        assert_eq!(verdict(&mut dp, net.lo, 80, 3), Reason::DropNoRule);

        let b = image(&dp, &http_policy(), net.lo, &a.slots);
        assert_ne!(b.generation, ga, "the next image goes beside the live one");
        let r = dp.apply(&b).unwrap_or_else(|e| panic!("apply B: {e:#}"));
        assert_eq!(dp.active_generation(), b.generation);
        assert_eq!(
            r.written, r.entries,
            "generation {} was empty",
            b.generation
        );
        // The kernel holds B, and A's entries are kept, not live, as the base of the next
        // apply (read back from the maps, not the mirror).
        dp.verify_mirror()
            .unwrap_or_else(|e| panic!("mirror after B: {e:#}"));
        assert_eq!(
            dp.generation_entries(ga),
            (a.ifaces.len(), a.peers.len(), a.ports.len()),
            "the old generation stays as the base of the next apply"
        );
        let (i, p, q) = dp.generation_entries(b.generation);
        assert_eq!((i, p, q), (b.ifaces.len(), b.peers.len(), b.ports.len()));
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 4),
            Reason::DropNoRule,
            "E7: ssh rule gone at once"
        );
        assert_eq!(verdict(&mut dp, net.lo, 80, 5), Reason::PassRuleNew);
        // X1: the ssh flow opened under A still passes.
        assert_eq!(verdict(&mut dp, net.lo, 22, 2), Reason::PassCtOriginal);

        // Counters: rule 1 (gone) kept its packets; rule 2 counts its own.
        let c = dp.rule_counters().expect("rule counters");
        assert_eq!(c[&rule_id(2)].packets, 1);
        assert!(
            !c.contains_key(&rule_id(1)),
            "counters by rule follow the applied image"
        );
        assert_eq!(
            dp.rule_counter(a.slots.slot(&rule_id(1)).unwrap())
                .unwrap()
                .packets,
            2
        );
        let reasons = dp.reason_counters().expect("reason counters");
        assert_eq!(reasons[&Reason::PassRuleNew], 2);
        assert_eq!(reasons[&Reason::DropNoRule], 2);
        assert_eq!(reasons[&Reason::DropNoPolicy], 1);
        assert_eq!(reasons[&Reason::PassCtOriginal], 1);

        // And back again: generations alternate. Generation A still holds A, so going back
        // to the same policy writes nothing and only flips.
        let c2 = image(&dp, &ssh_policy(), net.lo, &b.slots);
        assert_eq!(c2.generation, ga);
        let r = dp.apply(&c2).unwrap_or_else(|e| panic!("apply C: {e:#}"));
        assert_eq!(dp.active_generation(), ga);
        // Exactly the entries in which C differs from A were written or deleted (the ssh
        // rule has a new counter slot: its slot was given up when B dropped it).
        let differ = |x: &MapImage, y: &MapImage| {
            fn d<K: Ord, V: PartialEq>(x: &BTreeMap<K, V>, y: &BTreeMap<K, V>) -> usize {
                x.iter().filter(|(k, v)| y.get(*k) != Some(*v)).count()
            }
            fn gone<K: Ord, V>(x: &BTreeMap<K, V>, y: &BTreeMap<K, V>) -> usize {
                y.keys().filter(|k| !x.contains_key(*k)).count()
            }
            (
                d(&x.ifaces, &y.ifaces) + d(&x.peers, &y.peers) + d(&x.ports, &y.ports),
                gone(&x.ifaces, &y.ifaces) + gone(&x.peers, &y.peers) + gone(&x.ports, &y.ports),
            )
        };
        assert_eq!((r.written, r.stale_removed), differ(&c2, &a), "{r:?}");
        assert!(r.written < r.entries, "{r:?}");
        dp.verify_mirror()
            .unwrap_or_else(|e| panic!("mirror after C: {e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 22, 6), Reason::PassRuleNew);
        assert_eq!(verdict(&mut dp, net.lo, 80, 7), Reason::DropNoRule);
    });
}

#[test]
fn failed_apply_leaves_the_old_policy_in_force() {
    in_netns(|net| {
        let mut dp = load();
        let a = apply_ssh(&mut dp, net.lo);
        let mut b = image(&dp, &http_policy(), net.lo, &a.slots);
        // A key the kernel rejects (prefix longer than the trie's 160 bits), sorted after the
        // image's real peers: some of B is written before the failure.
        let scope = b.ifaces.values().next().unwrap().scope_in;
        b.peers.insert(
            LpmKey {
                prefix_len: 161,
                data: PeerData {
                    scope: scope.to_be_bytes(),
                    addr: [0xff; 16],
                },
            },
            sg_common::PeerVal {
                classes: [(b.generation << 31) | 999, 0, 0, 0],
            },
        );
        let err = dp
            .apply(&b)
            .expect_err("the kernel must reject the bad key");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("rolled back") && msg.contains("SG_PEERS"),
            "{msg}"
        );
        assert_eq!(
            dp.active_generation(),
            a.generation,
            "the flip never happened"
        );
        assert_eq!(
            dp.generation_entries(b.generation),
            (0, 0, 0),
            "nothing of B left"
        );
        dp.verify_mirror()
            .unwrap_or_else(|e| panic!("kernel and mirror disagree: {e:#}"));
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 1),
            Reason::PassRuleNew,
            "A still enforced"
        );
        assert_eq!(
            verdict(&mut dp, net.lo, 80, 2),
            Reason::DropNoRule,
            "B never enforced"
        );

        // The same image without the bad key applies fine afterwards.
        let b = image(&dp, &http_policy(), net.lo, &a.slots);
        dp.apply(&b).unwrap_or_else(|e| panic!("apply B: {e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 80, 3), Reason::PassRuleNew);
    });
}

/// A router port needs a slot of SG_NACL_PORTS (the datapath's only way to a network ACL):
/// an image with one beyond the array is refused before anything is written, with a hint,
/// and the enforced policy stays (A13).
#[test]
fn a_router_port_beyond_the_port_array_is_refused_and_the_old_policy_stays() {
    in_netns(|net| {
        let mut dp = load();
        let a = apply_ssh(&mut dp, net.lo);
        let mut b = image(&dp, &http_policy(), net.lo, &a.slots);
        let (&k, &conf) = b.ifaces.iter().next().unwrap();
        let far = sg_common::capacity::NACL_PORT_SLOTS / 2;
        b.ifaces.insert(
            sg_common::IfaceKey { ifindex: far, ..k },
            sg_common::IfaceConf {
                flags: sg_common::iface_flags::NACL,
                ..conf
            },
        );
        let msg = format!("{:#}", dp.apply(&b).expect_err("refused"));
        assert!(
            msg.contains(&format!("ifindex {far}")) && msg.contains("hint:"),
            "{msg}"
        );
        assert_eq!(dp.active_generation(), a.generation, "no flip");
        assert_eq!(
            dp.generation_entries(b.generation),
            (0, 0, 0),
            "nothing written"
        );
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 1),
            Reason::PassRuleNew,
            "A enforced"
        );
    });
}

#[test]
fn apply_into_full_maps_fails_cleanly_with_a_hint() {
    in_netns(|net| {
        let mut caps = Capacities::small();
        let dp0 = load();
        let a0 = image(&dp0, &ssh_policy(), net.lo, &SlotTable::default());
        drop(dp0);
        // Room for one generation's ports only.
        caps.ports = a0.ports.len() as u32;
        let mut dp = load_with(caps);
        let a = apply_ssh(&mut dp, net.lo);
        let b = image(&dp, &http_policy(), net.lo, &a.slots);
        let err = dp.apply(&b).expect_err("two generations do not fit");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("SG_PORTS") && msg.contains("capacity"),
            "{msg}"
        );
        assert_eq!(dp.active_generation(), a.generation);
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 22, 1), Reason::PassRuleNew);
    });
}

#[test]
fn apply_refuses_the_live_generation_and_foreign_generation_bits() {
    in_netns(|net| {
        let mut dp = load();
        // Nothing is live after a load: an image of the active generation (0) is accepted,
        // written beside an empty generation 1 made active first, and then flipped to.
        assert_eq!(dp.active_generation(), 0);
        let b: BTreeMap<String, u32> = [("web".to_string(), net.lo)].into();
        let zero = mini_compile(&ssh_policy(), &b, &SlotTable::default(), 0, 1024);
        dp.apply(&zero)
            .unwrap_or_else(|e| panic!("apply generation 0 first: {e:#}"));
        assert_eq!(dp.active_generation(), 0);
        assert_eq!(verdict(&mut dp, net.lo, 22, 9), Reason::PassRuleNew);
        let mut dp = load();
        let a = apply_ssh(&mut dp, net.lo);
        let err = dp.apply(&a).expect_err("A's generation is live now");
        assert!(format!("{err:#}").contains("live"), "{err:#}");
        let mut bad = image(&dp, &http_policy(), net.lo, &a.slots);
        let k = *bad.peers.keys().next().unwrap();
        let mut v = bad.peers.remove(&k).unwrap();
        v.classes[0] ^= 1 << 31;
        bad.peers.insert(k, v);
        let err = dp
            .apply(&bad)
            .expect_err("a class id of the other generation");
        assert!(format!("{err:#}").contains("another generation"), "{err:#}");
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 22, 1), Reason::PassRuleNew);
    });
}

#[test]
fn conntrack_entries_stats_and_flush() {
    in_netns(|net| {
        let mut dp = load();
        apply_ssh(&mut dp, net.lo);
        let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22);
        for (hook, p, want) in [
            (Hook::XdpIn, syn.clone(), Reason::PassRuleNew),
            (Hook::TcOut, syn.reply(), Reason::PassCtReply),
            (
                Hook::TcIn,
                Packet::tcp(addr(PEER), addr(HOST), 40000, 22, tcp_flags::ACK),
                Reason::PassCtOriginal,
            ),
        ] {
            let r = dp
                .run_frame(hook, &p.to_frame(), net.lo)
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(r.reason, want, "{p:?}");
        }
        assert_eq!(verdict(&mut dp, net.lo, 22, 40001), Reason::PassRuleNew);
        let ct = dp.conntrack().expect("conntrack");
        assert_eq!(ct.len(), 2, "{ct:?}");
        let est = ct
            .iter()
            .find(|e| e.key.rport == 40000)
            .expect("the handshaken flow");
        assert_eq!(est.table, sg_agent::dataplane::CtTable::Confirmed);
        assert_eq!(est.state_name(), "established");
        assert_eq!((est.local, est.remote), (addr(HOST), addr(PEER)));
        assert_eq!(
            (est.key.lport, est.key.proto, est.key.ifindex),
            (22, 6, net.lo)
        );
        assert_eq!(est.val.packets, [2, 1]);
        assert_eq!(est.timeout.as_secs(), 432_000);
        assert!(est.timeout_left.as_secs() > 431_000);
        let new = ct
            .iter()
            .find(|e| e.key.rport == 40001)
            .expect("the embryonic flow");
        assert_eq!(new.table, sg_agent::dataplane::CtTable::New);
        assert_eq!(new.state_name(), "new");
        assert_eq!(new.timeout.as_secs(), 30);
        let s = dp.ct_stats().expect("ct stats");
        assert_eq!(
            (s.new_inserts, s.new_deletes, s.ct_inserts),
            (2, 1, 1),
            "{s:?}"
        );
        assert_eq!((s.ct_count, s.new_count), (1, 1));
        assert_eq!(s.ct_available, u64::from(dp.capacities().ct) - 1);

        assert_eq!(dp.flush_conntrack().expect("flush"), 2);
        assert!(dp.conntrack().expect("conntrack").is_empty());
        let s = dp.ct_stats().expect("ct stats");
        assert_eq!(
            (
                s.user_ct_deletes,
                s.user_new_deletes,
                s.ct_count,
                s.new_count
            ),
            (1, 1, 0, 0)
        );
        // X1 only holds while the entry exists: after a flush the reply is judged by rules.
        let r = dp
            .run_frame(Hook::TcOut, &syn.reply().to_frame(), net.lo)
            .unwrap();
        assert_eq!(r.reason, Reason::DropNoRule);
        // Nothing expired: the sweep deletes nothing.
        assert_eq!(verdict(&mut dp, net.lo, 22, 40002), Reason::PassRuleNew);
        assert_eq!(dp.sweep_conntrack().expect("sweep"), 0);
    });
}

#[test]
fn c6_full_conntrack_drops_new_flows_and_counts_exceeded() {
    in_netns(|net| {
        let mut caps = Capacities::small();
        caps.ct_new = 4;
        let mut dp = load_with(caps);
        apply_ssh(&mut dp, net.lo);
        for sport in 1..=4 {
            assert_eq!(verdict(&mut dp, net.lo, 22, sport), Reason::PassRuleNew);
        }
        assert_eq!(verdict(&mut dp, net.lo, 22, 5), Reason::DropCtFull);
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 1),
            Reason::PassCtOriginal,
            "existing flows live on"
        );
        let s = dp.ct_stats().expect("ct stats");
        assert_eq!(
            (s.exceeded, s.new_count, s.new_available),
            (1, 4, 0),
            "{s:?}"
        );
    });
}

#[test]
fn attach_and_detach_on_a_veth() {
    in_netns(|net| {
        let mut dp = load();
        let r = dp
            .attach("sgt0", IngressHook::Xdp(XdpMode::Native))
            .unwrap_or_else(|e| panic!("attach XDP: {e:#}"));
        assert_eq!(r.ifindex, net.a);
        assert!(r.ingress.starts_with("xdp"), "{r:?}");
        assert!(r.egress.starts_with("tcx"), "TCX on this kernel: {r:?}");
        assert!(
            dp.attach("sgt0", IngressHook::Tc).is_err(),
            "attached twice"
        );
        let r = dp
            .attach(&net.b.to_string(), IngressHook::Tc)
            .unwrap_or_else(|e| panic!("attach TC by ifindex: {e:#}"));
        assert_eq!(r.ingress, "tcx ingress");
        let mut both = vec![net.a, net.b];
        both.sort();
        assert_eq!(dp.attached(), both);
        let links = std::process::Command::new("ip")
            .args(["-d", "link", "show", "sgt0"])
            .output()
            .expect("ip link show");
        assert!(
            String::from_utf8_lossy(&links.stdout).contains("xdp"),
            "the kernel shows no XDP program on sgt0"
        );
        dp.detach("sgt0")
            .unwrap_or_else(|e| panic!("detach: {e:#}"));
        dp.detach("sgt1")
            .unwrap_or_else(|e| panic!("detach: {e:#}"));
        let links = std::process::Command::new("ip")
            .args(["-d", "link", "show", "sgt0"])
            .output()
            .expect("ip link show");
        assert!(
            !String::from_utf8_lossy(&links.stdout).contains("prog/xdp"),
            "XDP still attached after detach"
        );
        // Detached for real: attaching again works.
        dp.attach("sgt0", IngressHook::Xdp(XdpMode::Skb))
            .unwrap_or_else(|e| panic!("re-attach: {e:#}"));
        assert!(dp.detach("lo").is_err(), "lo was never attached");
    });
}

#[test]
fn test_run_cost_per_packet() {
    in_netns(|net| {
        let mut dp = load();
        apply_ssh(&mut dp, net.lo);
        let syn = Packet::syn(addr(PEER), addr(HOST), 40000, 22).to_frame();
        let miss = Packet::syn(addr("203.0.113.1"), addr(HOST), 40000, 22).to_frame();
        assert_eq!(
            dp.run_frame(Hook::XdpIn, &syn, net.lo).unwrap().reason,
            Reason::PassRuleNew
        );
        let n = 200_000;
        let before = dp.reason_counters().unwrap();
        let hit = dp.bench_frame(Hook::XdpIn, &syn, net.lo, n).unwrap();
        let tc = dp.bench_frame(Hook::TcIn, &syn, net.lo, n).unwrap();
        let drop = dp.bench_frame(Hook::XdpIn, &miss, net.lo, n).unwrap();
        let after = dp.reason_counters().unwrap();
        assert_eq!(
            after[&Reason::PassCtOriginal] - before[&Reason::PassCtOriginal],
            2 * u64::from(n)
        );
        assert_eq!(
            after[&Reason::DropNoRule] - before[&Reason::DropNoRule],
            u64::from(n)
        );
        eprintln!(
            "test_run ns/packet: XDP conntrack hit {}, TC conntrack hit {}, XDP policy miss {}",
            hit.as_nanos(),
            tc.as_nanos(),
            drop.as_nanos()
        );
    });
}

/// A private bpffs mount; unmounted and its (empty) mount point removed on drop.
struct Bpffs(std::path::PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: plain syscall on a path we mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Mounts a private bpffs for this thread (its own mount namespace, propagation cut off from
/// the host), so pins vanish with the thread and nothing touches the host's /sys/fs/bpf.
fn private_bpffs() -> Bpffs {
    use std::ffi::CString;
    // SAFETY: plain syscalls on this thread; CLONE_NEWNS with CLONE_FS affects only it.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNS): {}",
        std::io::Error::last_os_error()
    );
    let root = CString::new("/").unwrap();
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "making mounts private: {}",
        std::io::Error::last_os_error()
    );
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let target = CString::new(dir.to_str().unwrap()).unwrap();
    let fs = CString::new("bpf").unwrap();
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mounting bpffs: {}", std::io::Error::last_os_error());
    Bpffs(dir)
}

#[test]
fn pinned_maps_survive_a_reload_and_refuse_another_abi() {
    in_netns(|net| {
        let bpffs = private_bpffs();
        let pin = bpffs.0.join("sg");
        let opts = || LoadOptions {
            capacities: Capacities::small(),
            pin_dir: Some(pin.clone()),
            ..LoadOptions::default()
        };
        let mut dp = Dataplane::load(opts()).unwrap_or_else(|e| panic!("load pinned: {e:#}"));
        let a = apply_ssh(&mut dp, net.lo);
        assert_eq!(verdict(&mut dp, net.lo, 22, 1), Reason::PassRuleNew);
        drop(dp);
        let abi = format!("abi-{}", sg_common::ABI_VERSION);
        assert!(
            pin.join(abi).join("SG_CT_NEW").exists(),
            "maps pinned by name"
        );

        // A new agent adopts the maps: the policy, the flows and the counters are still there.
        let mut dp = Dataplane::load(opts()).unwrap_or_else(|e| panic!("reload pinned: {e:#}"));
        assert_eq!(dp.active_generation(), a.generation);
        assert_eq!(
            dp.generation_entries(a.generation),
            (a.ifaces.len(), a.peers.len(), a.ports.len()),
            "the mirror is rebuilt from the kernel"
        );
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            verdict(&mut dp, net.lo, 22, 1),
            Reason::PassCtOriginal,
            "flows survive"
        );
        assert_eq!(
            dp.rule_counter(a.slots.slot(&rule_id(1)).unwrap())
                .unwrap()
                .packets,
            2
        );
        let b = image(&dp, &http_policy(), net.lo, &a.slots);
        dp.apply(&b)
            .unwrap_or_else(|e| panic!("apply after reload: {e:#}"));
        assert_eq!(dp.active_generation(), b.generation);
        assert_eq!(verdict(&mut dp, net.lo, 80, 2), Reason::PassRuleNew);
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
        drop(dp);

        std::fs::create_dir(pin.join("abi-999")).unwrap();
        let err = Dataplane::load(opts())
            .err()
            .expect("another ABI must be refused");
        assert!(format!("{err:#}").contains("abi-999"), "{err:#}");
    });
}

/// R1 through a delta: an instance joins a referenced group and the live generation is
/// patched in place (no flip); its traffic passes at once, the mirror matches the kernel, and
/// a delta for a generation that is not live is refused.
#[test]
fn a_membership_delta_is_applied_in_place_and_only_to_the_live_generation() {
    use sg_agent::compile::{CompileOptions, compile_indexed, membership_delta};
    in_netns(|net| {
        let mut dp = load();
        let base = || {
            PolicyBuilder::new()
                .ingress("sg-db", tcp(3306), sg("sg-web"))
                .group("sg-web")
                .iface("web", &[HOST], &["sg-db"])
        };
        let before = base().build();
        let after = base().iface("app-1", &[PEER], &["sg-web"]).build();
        let b: BTreeMap<String, u32> = [("web".to_string(), net.lo)].into();
        let opts = CompileOptions {
            generation: dp.next_generation(),
            slot_capacity: dp.capacities().rule_slots,
        };
        let (live, index) =
            compile_indexed(&before, &b, &SlotTable::default(), &opts).expect("compile");
        dp.apply(&live).unwrap_or_else(|e| panic!("apply: {e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 3306, 1), Reason::DropNoRule);
        let g = dp.active_generation();

        let delta = membership_delta(&before, &after, &b, &live, &index)
            .expect("delta")
            .expect("a membership change");
        assert_eq!(delta.peers.len(), 1, "{delta:?}");
        // Not for the other generation.
        let mut stale = delta.clone();
        stale.generation = 1 - g;
        let err = dp.apply_delta(&stale).expect_err("not live");
        assert!(format!("{err:#}").contains("live"), "{err:#}");

        let r = dp
            .apply_delta(&delta)
            .unwrap_or_else(|e| panic!("apply delta: {e:#}"));
        assert_eq!(r.generation, g);
        assert_eq!(dp.active_generation(), g, "no flip");
        assert_eq!(verdict(&mut dp, net.lo, 3306, 2), Reason::PassRuleNew);
        assert_eq!(verdict(&mut dp, net.lo, 3307, 3), Reason::DropNoRule);
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
        let mut patched = live.clone();
        delta.patch(&mut patched);
        assert_eq!(
            dp.generation_entries(g),
            (
                patched.ifaces.len(),
                patched.peers.len(),
                patched.ports.len()
            )
        );

        // And back: the member leaves, the host entry goes.
        let mut index = index;
        index.absorb(delta);
        let back = membership_delta(&after, &before, &b, &patched, &index)
            .expect("delta")
            .expect("a membership change");
        assert_eq!(back.peers.values().filter(|v| v.is_none()).count(), 1);
        dp.apply_delta(&back)
            .unwrap_or_else(|e| panic!("apply delta back: {e:#}"));
        assert_eq!(verdict(&mut dp, net.lo, 3306, 4), Reason::DropNoRule);
        dp.verify_mirror().unwrap_or_else(|e| panic!("{e:#}"));
    });
}
