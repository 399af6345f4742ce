//! The namespace harness every privileged test relies on: links carry real traffic and
//! everything is gone after drop.
use std::time::Duration;

use sg_testkit::netns::{Netns, require_root, veth};

#[test]
fn veth_between_namespaces_carries_ping_and_is_removed_on_drop() {
    require_root();
    let name;
    {
        let a = Netns::new("ha").unwrap();
        let b = Netns::new("hb").unwrap();
        name = a.name().to_string();
        veth(&a, "eth0", &b, "eth0").unwrap();
        a.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
            .unwrap();
        b.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
            .unwrap();
        let out = a
            .run(
                &["ping", "-c", "1", "-W", "2", "192.0.2.2"],
                Duration::from_secs(5),
            )
            .unwrap();
        assert!(out.status.success(), "ping across the veth failed: {out:?}");
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} left behind"
    );
}
