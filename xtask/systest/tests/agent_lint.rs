//! `sg-agent lint` without a file, on the policy a namespace enforces: the rules that matched
//! no packet since the apply (SG008) are found from the real counters, with the age; a rule
//! that carried traffic is not; `--fail-on` decides the exit code.

use std::process::Output;

use sg_testkit::agent_harness::*;

fn findings(o: &Output) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("lint --json: {e}\n{}", text(o)));
    v["findings"].as_array().unwrap().clone()
}

#[test]
fn lint_on_the_enforced_policy_reports_rules_that_matched_nothing_with_the_age() {
    let site = Site::serving("lint");
    let b = site.policy("b.yaml", POLICY_B);
    site.apply(&b);
    // Traffic under the `app` rule (tcp 5001 from the subnet) only.
    assert!(site.tcp(5001, None), "tcp 5001 must pass under policy B");
    let app = site.counted_rule("description", "app");
    assert!(app["packets"].as_u64().unwrap() > 0, "{app}");

    let o = site.agent(&["--json", "lint"]);
    assert!(
        o.status.success(),
        "info findings pass --fail-on error:\n{}",
        text(&o)
    );
    let unused: Vec<_> = findings(&o)
        .into_iter()
        .filter(|f| f["id"] == "SG008")
        .collect();
    let subjects: Vec<&str> = unused
        .iter()
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        unused.len(),
        3,
        "ping, app6 and `only in B` carried nothing: {unused:#?}"
    );
    assert!(
        !subjects.contains(&app["id"].as_str().unwrap()),
        "{subjects:?}"
    );
    for f in &unused {
        assert!(
            f["why"]
                .as_str()
                .unwrap()
                .contains("since the policy was applied"),
            "{f}"
        );
        // Located in the applied file.
        assert!(f["file"].as_str().unwrap().ends_with("b.yaml"), "{f}");
    }

    let o = site.agent(&["lint", "--fail-on", "info"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("info SG008") && out.contains("(enforced, applied"),
        "{out}"
    );
}
