//! The command line as users type it: typed values, usage errors (exit 2) before anything
//! runs, and every flag docs/agent.md documents.

use clap::error::ErrorKind;

use super::*;
use crate::agent::{ExplainProto, IcmpTypeCode};
use crate::policy::Direction;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut all = vec!["sg-agent"];
    all.extend_from_slice(args);
    let m = command().try_get_matches_from(all)?;
    Cli::from_arg_matches(&m)
}

fn usage_error(args: &[&str]) -> clap::Error {
    match parse(args) {
        Ok(_) => panic!("{args:?} parsed"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            e
        }
    }
}

#[test]
fn the_definition_is_consistent() {
    command().debug_assert();
}

#[test]
fn explain_takes_exactly_one_of_in_and_out() {
    let q = |args: &[&str]| match parse(args).unwrap().cmd {
        Cmd::Explain(a) => a.query().unwrap(),
        _ => panic!("not explain"),
    };
    let base = ["--proto", "tcp", "--peer", "198.51.100.10", "--port", "22"];
    let inbound = q(&[&["explain", "--in"], &base[..]].concat());
    assert_eq!(inbound.direction, Direction::Ingress);
    let outbound = q(&[&["explain", "--out"], &base[..]].concat());
    assert_eq!(outbound.direction, Direction::Egress);

    let neither = usage_error(&[&["explain"], &base[..]].concat());
    assert_eq!(
        neither.kind(),
        ErrorKind::MissingRequiredArgument,
        "{neither}"
    );
    let both = usage_error(&[&["explain", "--in", "--out"], &base[..]].concat());
    assert_eq!(both.kind(), ErrorKind::ArgumentConflict, "{both}");
}

#[test]
fn explain_values_are_typed() {
    let a = match parse(&[
        "explain",
        "--out",
        "--proto",
        "ICMP",
        "--peer",
        "2001:db8::1",
        "--icmp",
        "3/4",
        "--iface",
        "eth0",
        "--local",
        "2001:db8::2",
    ])
    .unwrap()
    .cmd
    {
        Cmd::Explain(a) => a.query().unwrap(),
        _ => panic!("not explain"),
    };
    assert_eq!(a.proto, ExplainProto::Icmp);
    assert_eq!(
        a.icmp,
        Some(IcmpTypeCode {
            icmp_type: 3,
            code: 4
        })
    );
    for (flag, bad) in [
        ("--proto", "gre"),
        ("--icmp", "8/x"),
        ("--peer", "host.example"),
        ("--port", "65536"),
    ] {
        let mut args = vec!["explain", "--in"];
        for (f, v) in [("--proto", "icmp"), ("--peer", "192.0.2.1")] {
            if f != flag {
                args.extend([f, v]);
            }
        }
        args.extend([flag, bad]);
        let e = usage_error(&args);
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{flag} {bad}: {e}");
    }
}

#[test]
fn ingress_hooks_are_auto_xdp_xdp_skb_or_tc_defaulting_to_auto_and_forced_per_device() {
    use crate::dataplane::{HookChoice, IngressHook, XdpMode};
    let plan = |args: &[&str]| match parse(args).unwrap().cmd {
        Cmd::Apply(a) => a.hooks.plan(),
        Cmd::Daemon(a) => a.hooks.plan(),
        _ => panic!("not apply"),
    };
    assert_eq!(plan(&["apply", "p.yaml"]), HookPlan::default());
    assert_eq!(plan(&["apply", "p.yaml"]).default, HookChoice::Auto);
    assert_eq!(
        plan(&["apply", "--ingress-hook", "xdp-skb", "p.yaml"]).default,
        HookChoice::Fixed(IngressHook::Xdp(XdpMode::Skb))
    );
    assert_eq!(
        plan(&["apply", "--ingress-hook", "xdp", "p.yaml"]).default,
        HookChoice::Fixed(IngressHook::Xdp(XdpMode::Native))
    );
    assert_eq!(
        plan(&["daemon", "--config", "p.yaml", "--ingress-hook", "tc"]).default,
        HookChoice::Fixed(IngressHook::Tc)
    );
    let both = plan(&[
        "daemon",
        "--config",
        "p.yaml",
        "--ingress-hook",
        "tc",
        "--ingress-hook",
        "eth0=xdp",
    ]);
    assert_eq!(both.default, HookChoice::Fixed(IngressHook::Tc));
    assert_eq!(
        both.forced("eth0"),
        Some(HookChoice::Fixed(IngressHook::Xdp(XdpMode::Native)))
    );
    assert_eq!(both.forced("eth1"), None);
    for bad in ["ebpf", "eth0=ebpf", "=tc"] {
        let e = usage_error(&["apply", "--ingress-hook", bad, "p.yaml"]);
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad}: {e}");
    }
}

#[test]
fn capacities_are_global_repeatable_and_checked_at_parse() {
    let caps = |args: &[&str]| Capacities::with_specs(&parse(args).unwrap().capacities);
    let c = caps(&[
        "--capacity",
        "ct=1048576",
        "--capacity",
        "ports=24",
        "status",
    ]);
    assert_eq!((c.ct, c.ports), (1_048_576, 24));
    let c = caps(&["status", "--capacity", "ports=24"]);
    assert_eq!((c.ct, c.ports), (Capacities::default().ct, 24));
    let e = usage_error(&["--capacity", "ports=lots", "status"]);
    assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
    assert!(e.to_string().contains("expected NAME=N"), "{e}");
}

#[test]
fn every_documented_command_and_flag_parses() {
    for args in [
        &["check", "examples/ec2-lab.yaml"][..],
        &["--json", "--state-dir", "/tmp/sg", "status"],
        &["apply", "--dry-run", "p.yaml"],
        &["counters", "--watch", "2"],
        &["conntrack"],
        &["conntrack", "list"],
        &["conntrack", "flush"],
        &["detach"],
        &[
            "daemon",
            "--config",
            "p.yaml",
            "--metrics",
            "127.0.0.1:9617",
            "--flow-log",
            "-",
            "--flow-log-interval",
            "5",
            "--poll",
            "2",
        ],
        &["completions", "bash"],
        &["man"],
    ] {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    assert!(
        parse(&["daemon", "--config", "p.yaml"])
            .unwrap()
            .is_daemon()
    );
    assert!(!parse(&["status"]).unwrap().is_daemon());
}

/// L1: `--confirm DURATION` takes plain seconds or units, within 1 s..24 h, and `confirm`
/// takes `--rollback`; a bad duration is a usage error before anything runs.
#[test]
fn l1_confirm_durations_are_typed() {
    use std::time::Duration;
    let d = |s: &str| apply::parse_duration(s);
    assert_eq!(d("90"), Ok(Duration::from_secs(90)));
    assert_eq!(d("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(d("1500ms"), Ok(Duration::from_millis(1500)));
    for bad in ["", "0", "500ms", "25h", "5x", "m5", "1.5s"] {
        assert!(d(bad).is_err(), "{bad:?} parsed");
    }
    assert!(parse(&["apply", "--confirm", "2m", "--force", "p.yaml"]).is_ok());
    usage_error(&["apply", "--confirm", "soon", "p.yaml"]);
    assert!(matches!(
        parse(&["confirm", "--rollback"]).unwrap().cmd,
        Cmd::Confirm(_)
    ));
}

#[test]
fn lint_takes_an_optional_file_and_a_typed_fail_on() {
    let lint = |args: &[&str]| match parse(args).unwrap().cmd {
        Cmd::Lint(a) => a,
        _ => panic!("not lint"),
    };
    let a = lint(&["lint", "rules.yaml"]);
    assert_eq!(a.file.as_deref(), Some(Path::new("rules.yaml")));
    assert_eq!(a.fail_on, crate::lint::Severity::Error);
    // No file: the enforced policy.
    let a = lint(&["lint", "--fail-on", "info"]);
    assert_eq!(a.file, None);
    assert_eq!(a.fail_on, crate::lint::Severity::Info);
    let bad = usage_error(&["lint", "--fail-on", "fatal", "rules.yaml"]);
    assert_eq!(bad.kind(), ErrorKind::InvalidValue, "{bad}");
    // Template inputs mean nothing for the enforced policy: exit 2 before anything opens.
    let e = parse(&["lint", "--parameter", "A=b"])
        .unwrap()
        .run()
        .unwrap_err();
    assert_eq!(crate::error::kind(&e), crate::error::Kind::Invalid, "{e:#}");
}

#[test]
fn lint_fails_only_when_a_finding_reaches_fail_on() {
    // The seed's web/db example: rules without SSH from the world, a description on each;
    // its default egress and unattached groups are below `error`.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed-web-db.yaml");
    let file = file.to_str().unwrap();
    let run = |args: &[&str]| parse(args).unwrap().run();
    run(&["lint", file]).expect("no error finding");
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.yaml");
    std::fs::write(
        &open,
        "security_groups:\n  - id: sg-a\n    ingress:\n      \
         - {protocol: tcp, ports: 22, source: 0.0.0.0/0, description: ssh}\n",
    )
    .unwrap();
    let e = run(&["lint", "--json", open.to_str().unwrap()]).expect_err("SSH from the world");
    assert_eq!(crate::error::kind(&e), crate::error::Kind::Runtime, "{e:#}");
    assert!(format!("{e}").contains("--fail-on error"), "{e:#}");
}
