//! `--ingress-hook auto`, the default, on real devices (issue 19): a veth gets TC, because native XDP there turns off GRO/TSO, and apply and `status` say why;
//! `--ingress-hook DEV=xdp` forces native XDP on that device only, from the first apply or on
//! a device attached before. Traffic is filtered under every hook (E1: what no rule allows is
//! refused; an allowed port connects).

use sg_testkit::agent_harness::*;

/// A second device in srv beside eth0: a veth (its peer stays in srv too) with a member's
/// address, so a forced hook can be seen to stay on its device.
const SIDE: &str = "sgs0";
const VETH_WHY: &str = "auto: driver veth; native XDP would turn off GRO/TSO here";

fn site_with_two_devices(tag: &str) -> (Site, String) {
    let site = Site::serving(tag);
    site.srv_ip(&["link", "add", SIDE, "type", "veth", "peer", "name", "sgs1"]);
    site.srv_ip(&["addr", "add", "198.51.100.21/24", "dev", SIDE]);
    site.srv_ip(&["link", "set", SIDE, "up"]);
    site.srv_ip(&["link", "set", "sgs1", "up"]);
    let policy = format!(
        "security_groups:\n  - id: sg-web\n    ingress:\n      \
         - {{protocol: tcp, ports: 5001, source: 192.0.2.0/24}}\n\
         instances:\n  - {{name: web-1, addresses: [{SRV}], groups: [sg-web]}}\n  \
         - {{name: side-1, addresses: [198.51.100.21], groups: [sg-web]}}\n"
    );
    let p = site.policy("hooks.yaml", &policy);
    (site, p.to_str().unwrap().to_string())
}

/// E1 with real traffic: the allowed port connects, a port no rule allows is refused.
fn assert_filtered(site: &Site, when: &str) {
    assert!(site.tcp(5001, None), "{when}: tcp 5001 (allowed) failed");
    assert!(!site.tcp(5003, None), "{when}: tcp 5003 (denied) passed");
}

/// apply's JSON line for one attached device ("eth0: ingress ..., egress ...").
fn attached<'a>(out: &'a serde_json::Value, dev: &str) -> &'a str {
    out["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("{dev} not attached: {out}"))
}

/// `status`'s line for one device.
fn status_line(site: &Site, dev: &str) -> String {
    let st = site.agent_ok(&["status"]);
    st.lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev} (")))
        .unwrap_or_else(|| panic!("{dev} not in status:\n{st}"))
        .to_string()
}

#[test]
fn the_default_hook_on_a_veth_is_tc_and_apply_and_status_say_why() {
    let (site, policy) = site_with_two_devices("hauto");
    assert!(site.tcp(5003, None), "control: tcp 5003 open without sg");
    let out = site.agent_json(&["apply", &policy]);
    let eth0 = attached(&out, "eth0");
    assert!(
        eth0.contains("ingress tc") && eth0.contains(VETH_WHY),
        "{eth0}"
    );
    let side = attached(&out, SIDE);
    assert!(
        side.contains("ingress tc") && side.contains(VETH_WHY),
        "{side}"
    );
    assert_eq!(site.xdp_prog_id("eth0"), 0, "XDP on eth0 under auto");
    assert_eq!(site.xdp_prog_id(SIDE), 0, "XDP on {SIDE} under auto");
    let ifindex = site.srv.ifindex("eth0").unwrap();
    assert!(
        site.link_pins().contains(&format!("{ifindex}-in-tc")),
        "{:?}",
        site.link_pins()
    );
    // The text form says it too.
    let text = site.agent_ok(&["apply", "--dry-run", &policy]);
    assert!(text.contains("no change"), "{text}");
    let line = status_line(&site, "eth0");
    assert!(line.contains(&format!("ingress tc ({VETH_WHY})")), "{line}");
    assert_filtered(&site, "auto (TC on the veth)");

    // A device attached before switches when forced by name; the other keeps TC.
    let out = site.agent_json(&["apply", "--ingress-hook", "eth0=xdp", &policy]);
    assert!(
        out["notes"]
            .to_string()
            .contains("eth0: ingress hook now xdp (native) (forced: --ingress-hook eth0=xdp)"),
        "{out}"
    );
    assert_eq!(xdp_mode(&site.srv, "eth0"), "native", "{out}");
    assert_eq!(xdp_mode(&site.srv, SIDE), "none", "{out}");
    let line = status_line(&site, "eth0");
    assert!(
        line.contains("ingress xdp (forced: --ingress-hook eth0=xdp)"),
        "{line}"
    );
    assert!(
        site.link_pins().contains(&format!("{ifindex}-in-xdp"))
            && !site.link_pins().contains(&format!("{ifindex}-in-tc")),
        "{:?}",
        site.link_pins()
    );
    assert_filtered(&site, "eth0 switched to XDP");
    site.agent_ok(&["detach"]);
    site.assert_clean();
}

#[test]
fn ingress_hook_dev_eq_xdp_forces_native_xdp_on_that_device_only() {
    let (site, policy) = site_with_two_devices("hforce");
    let out = site.agent_ok(&["apply", "--ingress-hook", "eth0=xdp", &policy]);
    assert!(
        out.contains("eth0: ingress xdp (native) (forced: --ingress-hook eth0=xdp)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&format!("{SIDE}: ingress tc")) && l.contains(VETH_WHY)),
        "{out}"
    );
    assert_eq!(xdp_mode(&site.srv, "eth0"), "native");
    assert_ne!(site.xdp_prog_id("eth0"), 0);
    assert_eq!(xdp_mode(&site.srv, SIDE), "none");
    assert_filtered(&site, "eth0 forced to native XDP");

    // A re-apply under the default keeps the forced hook and says why.
    site.agent_ok(&["apply", &policy]);
    assert_eq!(xdp_mode(&site.srv, "eth0"), "native");
    let line = status_line(&site, "eth0");
    assert!(
        line.contains("ingress xdp (forced: --ingress-hook eth0=xdp)"),
        "{line}"
    );
    assert_filtered(&site, "re-applied under the default");
    site.agent_ok(&["detach"]);
    site.assert_clean();
}
