//! Hostile policy files: the CI counterpart of the cargo-fuzz targets in fuzz/ (which run
//! for minutes behind `cargo xtask fuzz config`). Deterministic, so a failure replays:
//!
//! - mutated examples (examples/*.yaml, *.json): byte and line edits, boundary values for
//!   every scalar, splices between files, YAML constructs (anchors, aliases, merge keys,
//!   tags, flow collections) dropped in;
//! - random structured documents built from the three formats' key vocabularies;
//! - bombs: alias bombs, deep nesting, huge inputs, long scalars, many documents, many keys.
//!
//! Every input goes through `testgen::fuzz::config::check`: loading returns (a panic is a
//! failure, with the input printed), a refusal carries a located error, an accepted policy
//! compiles into a canonical image whose lookup agrees with the model. Each input must
//! finish within a time bound; the bombs must be refused with the right error, fast, and
//! within a memory bound (measured on a child process running them alone).
//!
//! Counts: `SG_CONFIG_FUZZ_INPUTS` mutated inputs (default 3000) and as many random
//! documents / 2; `SG_CONFIG_FUZZ_SEED` varies them.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sg_testkit::random::fuzz::Rng;
use sg_testkit::random::fuzz::config::{Checked, Shape, check, text_of};

/// Per-input time bound (debug build; the slowest mutated example takes a few ms).
const INPUT_BOUND: Duration = Duration::from_secs(5);

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn examples() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "the examples are the seeds: {out:?}");
    out
}

/// Runs one input; returns what it did, or the failure (panic, broken property, too slow)
/// with the input for a reproducer.
fn run_one(label: &str, text: &str) -> Result<(Checked, Duration), String> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| check(text, true)));
    let took = t.elapsed();
    let shown = if text.len() > 2000 {
        format!(
            "{}... ({} bytes)",
            &text[..text.floor_char_boundary(2000)],
            text.len()
        )
    } else {
        text.to_string()
    };
    match r {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{label}: PANIC {msg}\n--- input ---\n{shown}\n---"))
        }
        Ok(Err(e)) => Err(format!("{label}: {e}\n--- input ---\n{shown}\n---")),
        Ok(Ok(_)) if took > INPUT_BOUND => Err(format!(
            "{label}: took {took:?} (bound {INPUT_BOUND:?})\n--- input ---\n{shown}\n---"
        )),
        Ok(Ok(c)) => Ok((c, took)),
    }
}

/// Boundary and hostile values for any scalar.
const VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "22",
    "65535",
    "65536",
    "-2",
    "255",
    "256",
    "4294967296",
    "99999999999999999999999999",
    "1e309",
    "0x16",
    "0o17",
    ".inf",
    "''",
    "\"\"",
    "~",
    "null",
    "true",
    "no",
    "tcp",
    "udp",
    "icmp",
    "icmpv6",
    "all",
    "58",
    "-1/-1",
    "sg-",
    "sg-0",
    "sg-0123456789abcdef0",
    "sg-zzzzzzzzzzzzzzzzz",
    "sgr-0123456789abcdef0",
    "pl-0123456789abcdef0",
    "0.0.0.0/0",
    "::/0",
    "192.0.2.1/33",
    "192.0.2.1/24",
    "2001:db8::1/129",
    "::ffff:192.0.2.1/128",
    "256.0.0.1/32",
    "fe80::1%eth0/64",
    "[]",
    "{}",
    "[[[[]]]]",
    "*undefined",
    "!Ref X",
    "!GetAtt [X, GroupId]",
    "!Sub '${AWS::Region}'",
    "!ImportValue x",
    "!!binary aGk=",
    "\"\\u202e\"",
    "é",
    "\"\\x00\"",
    "'a''b'",
    "|\n  block",
    ">-\n  folded",
];

/// One random edit of `text`; `others` are the other seeds (for splices).
fn mutate(rng: &mut Rng, text: &str, others: &[(String, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match rng.below(11) {
        0 => {
            // A scalar after "key:" or "- " replaced by a boundary value.
            let i = rng.below(n);
            let l = &lines[i];
            let cut = l
                .find(": ")
                .map(|p| p + 2)
                .or_else(|| l.find("- ").map(|p| p + 2));
            if let Some(c) = cut {
                lines[i] = format!("{}{}", &l[..c], rng.pick(VALUES));
            }
        }
        1 => {
            lines.remove(rng.below(n));
        }
        2 => {
            let i = rng.below(n);
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        3 => {
            let (i, j) = (rng.below(n), rng.below(n));
            lines.swap(i, j);
        }
        4 => {
            // Indentation moved: structure changes meaning.
            let i = rng.below(n);
            lines[i] = if rng.chance(1, 2) {
                format!("  {}", lines[i])
            } else {
                lines[i].trim_start_matches(' ').to_string()
            };
        }
        5 => {
            let (_, other) = &others[rng.below(others.len())];
            let ol: Vec<&str> = other.lines().collect();
            if !ol.is_empty() {
                let a = rng.below(ol.len());
                let b = (a + 1 + rng.below(8)).min(ol.len());
                let at = rng.below(n + 1);
                for (k, l) in ol[a..b].iter().enumerate() {
                    lines.insert(at + k, l.to_string());
                }
            }
        }
        6 => {
            // Anchors, aliases, merge keys, tags and flow syntax dropped into a line.
            let i = rng.below(n);
            let add = rng.pick(&[
                " &a", " *a", "\n<<: *a", " !Ref", " !!str", " [", " {", " ]", " }", " #", " ? x",
                " : y", " |", "\t",
            ]);
            lines[i].push_str(add);
        }
        7 => {
            let cut = rng.below(text.len() + 1);
            return text[..text.floor_char_boundary(cut)].to_string();
        }
        8 => {
            // Byte-level damage that stays UTF-8.
            let mut b: Vec<char> = text.chars().collect();
            for _ in 0..1 + rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                b[at] = rng.pick(&[
                    'x', '0', '-', ':', ' ', '\n', '"', '\'', '[', '{', '&', '*', '!', '\u{0}',
                    '\u{feff}', 'é', '9',
                ]);
            }
            return b.into_iter().collect();
        }
        9 => {
            // A number nudged: ports, types, quotas, timeouts at their edges.
            let i = rng.below(n);
            let l = &lines[i];
            if let Some(p) = l.rfind(|c: char| c.is_ascii_digit()) {
                let start = l[..=p]
                    .rfind(|c: char| !c.is_ascii_digit())
                    .map_or(0, |s| s + 1);
                if let Ok(v) = l[start..=p].parse::<i64>() {
                    let nv = v + rng.pick(&[-1i64, 1, 65536, -65536, 1 << 32]);
                    lines[i] = format!("{}{nv}{}", &l[..start], &l[p + 1..]);
                }
            }
        }
        _ => {
            // A whole list item duplicated many times (quota edges: Q1, Q2).
            let i = rng.below(n);
            let l = lines[i].clone();
            if l.trim_start().starts_with("- ") {
                for _ in 0..rng.pick(&[5usize, 59, 61, 120]) {
                    lines.insert(i, l.clone());
                }
            }
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[test]
fn mutated_examples_never_panic_hang_or_miscompile() {
    let seeds = examples();
    let inputs = env_u64("SG_CONFIG_FUZZ_INPUTS", 3000);
    let seed = env_u64("SG_CONFIG_FUZZ_SEED", 0xc0f1);
    let (mut accepted, mut queries, mut worst) = (0u64, 0usize, Duration::ZERO);
    let mut failures = Vec::new();
    // The seeds themselves must load (they are the project's examples).
    for (name, text) in &seeds {
        match run_one(name, text) {
            Ok((c, _)) => assert!(c.accepted, "example {name} is refused"),
            Err(e) => failures.push(e),
        }
    }
    for i in 0..inputs {
        let mut rng = Rng::new(sg_testkit::random::fuzz::mix(seed, i));
        let (name, text) = &seeds[rng.below(seeds.len())];
        let mut t = text.clone();
        for _ in 0..1 + rng.below(3) {
            t = mutate(&mut rng, &t, &seeds);
        }
        match run_one(&format!("input {i} (seed {seed:#x}, from {name})"), &t) {
            Ok((c, took)) => {
                accepted += u64::from(c.accepted);
                queries += c.queries;
                worst = worst.max(took);
            }
            Err(e) => failures.push(e),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!(
        "config fuzz: {inputs} mutated examples, {accepted} accepted, {queries} lookup-vs-model \
         queries, slowest input {worst:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Mutations must keep a fair share valid, or the compiler is never reached.
    assert!(
        accepted * 10 >= inputs,
        "only {accepted} of {inputs} mutated inputs were accepted"
    );
}

/// Keys of the three formats, for random structured documents.
const KEYS: &[&str] = &[
    "security_groups",
    "instances",
    "prefix_lists",
    "quotas",
    "timeouts",
    "version",
    "id",
    "name",
    "description",
    "ingress",
    "egress",
    "protocol",
    "ports",
    "type",
    "code",
    "source",
    "destination",
    "addresses",
    "groups",
    "device",
    "entries",
    "max_entries",
    "Resources",
    "Type",
    "Properties",
    "AWSTemplateFormatVersion",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::SecurityGroupIngress",
    "SecurityGroupIngress",
    "SecurityGroupEgress",
    "IpProtocol",
    "FromPort",
    "ToPort",
    "CidrIp",
    "CidrIpv6",
    "SourceSecurityGroupId",
    "GroupId",
    "GroupDescription",
    "SecurityGroups",
    "IpPermissions",
    "IpPermissionsEgress",
    "IpRanges",
    "Ipv6Ranges",
    "PrefixListIds",
    "UserIdGroupPairs",
    "PrefixLists",
    "Tags",
    "Key",
    "Value",
    "sg:device",
    "Ref",
    "Fn::GetAtt",
];

fn random_value(rng: &mut Rng, depth: u32, json: bool) -> String {
    let leaf = depth >= 5 || rng.chance(1, 2);
    if leaf {
        let v = rng.pick(VALUES);
        return if json {
            format!("{v:?}")
        } else {
            v.to_string()
        };
    }
    let n = rng.below(5);
    if rng.chance(1, 2) {
        let items: Vec<String> = (0..n).map(|_| random_value(rng, depth + 1, json)).collect();
        format!("[{}]", items.join(", "))
    } else {
        let mut seen = std::collections::BTreeSet::new();
        let items: Vec<String> = (0..n)
            .filter_map(|_| {
                let k = rng.pick(KEYS);
                seen.insert(k)
                    .then(|| format!("{k:?}: {}", random_value(rng, depth + 1, json)))
            })
            .collect();
        format!("{{{}}}", items.join(", "))
    }
}

#[test]
fn random_structured_documents_never_panic_or_hang() {
    let inputs = env_u64("SG_CONFIG_FUZZ_INPUTS", 3000) / 2;
    let seed = env_u64("SG_CONFIG_FUZZ_SEED", 0xc0f1);
    let mut failures = Vec::new();
    let mut refused = 0;
    for i in 0..inputs {
        let mut rng = Rng::new(sg_testkit::random::fuzz::mix(seed ^ 0xd0c, i));
        let json = rng.chance(1, 2);
        let top = rng.pick(&[Shape::Raw, Shape::CloudFormation, Shape::Describe]);
        let body = random_value(&mut rng, 0, json);
        let Some(text) = text_of(body.as_bytes(), top) else {
            continue;
        };
        match run_one(&format!("document {i} (seed {seed:#x})"), &text) {
            Ok((c, _)) => refused += u64::from(!c.accepted),
            Err(e) => failures.push(e),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!("config fuzz: {inputs} random documents, {refused} refused with located errors");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A hostile input, the error it must get (one of the substrings), its time bound (debug
/// build) and its peak memory bound (MiB, the whole child process).
struct Bomb {
    name: &'static str,
    text: String,
    error: &'static [&'static str],
    bound: Duration,
    mib: i64,
}

impl Bomb {
    /// A bomb refused with one of `error` within `bound_secs`, peaking under 64 MiB.
    fn new(
        name: &'static str,
        text: impl Into<String>,
        error: &'static [&'static str],
        bound_secs: u64,
    ) -> Self {
        Bomb {
            name,
            text: text.into(),
            error,
            bound: Duration::from_secs(bound_secs),
            mib: 64,
        }
    }

    fn with_mib(self, mib: i64) -> Self {
        Bomb { mib, ..self }
    }
}

fn bombs() -> Vec<Bomb> {
    let mut v = Vec::new();
    // Billion laughs: ten aliases of ten aliases of ... of ten scalars.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 10].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    v.push(Bomb::new(
        "billion laughs",
        laughs,
        &["more than 1000000 nodes"],
        1,
    ));
    // Wide fan-out: one big anchor referenced thousands of times.
    let big = vec!["x"; 2000].join(", ");
    let refs = vec!["*a"; 1000].join(", ");
    v.push(Bomb::new(
        "alias fan-out",
        format!("a: &a [{big}]\nb: [{refs}]\n"),
        &["more than 1000000 nodes"],
        2,
    ));
    // Merge keys repeating an anchor (merged keys dedupe, but each alias is still counted).
    let m = (0..50)
        .map(|i| format!("k{i}: {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let merges = vec!["*m"; 30000].join(", ");
    v.push(Bomb::new(
        "merge-key fan-out",
        format!("m: &m {{{m}}}\nsecurity_groups:\n  - <<: [{merges}]\n"),
        &["more than 1000000 nodes"],
        3,
    ));
    v.push(Bomb::new(
        "recursive alias",
        "a: &x [1, *x]\n",
        &["recursive alias"],
        1,
    ));
    // saphyr-parser's own recursion limit may answer first; either way, refused.
    v.push(Bomb::new(
        "deep flow nesting",
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        &["deeper than 64", "recursion limit exceeded"],
        1,
    ));
    v.push(Bomb::new(
        "deep mixed nesting",
        format!("{}{}", "{a: [".repeat(20_000), "]}".repeat(20_000)),
        &["deeper than 64", "recursion limit exceeded"],
        1,
    ));
    let mut block = String::new();
    for d in 0..200 {
        block.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
    }
    v.push(Bomb::new(
        "deep block nesting",
        block,
        &["deeper than 64"],
        1,
    ));
    // Depth reached through an alias of a deep anchor.
    let deep = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    v.push(Bomb::new(
        "deep alias",
        format!("a: &d {deep}\nb: [[[[[[*d]]]]]]\n"),
        &["deeper than 64"],
        1,
    ));
    v.push(Bomb::new(
        "input over 16 MiB",
        format!("security_groups: []\n#{}\n", "x".repeat(17 << 20)),
        &["the limit is 16 MiB"],
        1,
    ));
    // The node budget (1M) is what bounds memory: ~470 bytes a node before the refusal
    // (docs/hardening.md).
    v.push(
        Bomb::new(
            "1.2 million list items",
            format!("[{}]", vec!["0"; 1_200_000].join(",")),
            &["more than 1000000 nodes"],
            30,
        )
        .with_mib(640),
    );
    v.push(Bomb::new(
        "15 MiB description",
        format!(
            "security_groups:\n  - id: sg-0123456789abcdef0\n    description: {}\n",
            "a".repeat(15 << 20)
        ),
        &["255"],
        30,
    ));
    let docs = "security_groups: []\n---\n".repeat(100_000);
    v.push(Bomb::new(
        "many documents",
        docs,
        &["more than one YAML document"],
        1,
    ));
    let keys = (0..100_000)
        .map(|i| format!("  k{i}: 1\n"))
        .collect::<String>();
    v.push(Bomb::new(
        "100k unknown keys",
        format!("security_groups: []\nx-keys:\n{keys}zz: 1\n"),
        &["zz"],
        30,
    ));
    v.push(Bomb::new(
        "duplicate keys",
        "security_groups: []\nsecurity_groups: []\n",
        &["duplicate key"],
        1,
    ));
    v.push(Bomb::new(
        "unclosed flow",
        format!("security_groups: [{}", "{id: x, ".repeat(1000)),
        &["syntax error", "recursion limit exceeded"],
        1,
    ));
    v
}

#[test]
fn bombs_are_refused_fast_with_the_right_error() {
    let mut failures = Vec::new();
    for b in bombs() {
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            sg_agent::config::load_str(&b.text, "bomb.yaml")
        }));
        let took = t.elapsed();
        match r {
            Err(_) => failures.push(format!("{}: PANIC", b.name)),
            Ok(Ok(_)) => failures.push(format!("{}: accepted", b.name)),
            Ok(Err(d)) => {
                let all: Vec<String> = d
                    .errors()
                    .map(|e| format!("{}:{}: {}", e.origin.line, e.origin.column, e.message))
                    .collect();
                if !all.iter().any(|m| b.error.iter().any(|e| m.contains(e))) {
                    failures.push(format!(
                        "{}: errors {:?} lack {:?}",
                        b.name,
                        &all[..all.len().min(3)],
                        b.error
                    ));
                }
                if took > b.bound {
                    failures.push(format!("{}: took {took:?} (bound {:?})", b.name, b.bound));
                }
                eprintln!(
                    "bomb {:<22} {:>9} bytes: refused in {:>8.1} ms: {}",
                    b.name,
                    b.text.len(),
                    took.as_secs_f64() * 1e3,
                    all.first().map(String::as_str).unwrap_or("")
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Peak memory of each bomb, measured on a child process (this test binary filtered to
/// `bombs_child`) that loads that bomb alone: a test thread's allocations would hide in the
/// parent's peak. Reported above the peak of a child that builds the inputs and loads none.
#[test]
fn bombs_stay_within_a_memory_bound() {
    let baseline = child_peak_mib("none");
    let mut failures = Vec::new();
    for b in bombs() {
        let peak = child_peak_mib(b.name) - baseline;
        eprintln!(
            "bomb {:<22} peak RSS {peak:>4} MiB above the baseline (bound {} MiB)",
            b.name, b.mib
        );
        if peak > b.mib {
            failures.push(format!("{}: {peak} MiB (bound {} MiB)", b.name, b.mib));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `bombs_child` for one bomb and returns the child's peak RSS in MiB, as the child
/// itself reads it (VmHWM of its own address space: getrusage's ru_maxrss of a child also
/// counts the parent's address space it was forked from).
fn child_peak_mib(bomb: &str) -> i64 {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "bombs_child",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("SG_BOMB", bomb)
        .output()
        .expect("running a bomb in a child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child loading bomb {bomb:?} failed:\n{text}"
    );
    let kb: i64 = text
        .lines()
        .find_map(|l| l.split_once("SG_BOMB_PEAK_KB=").map(|(_, v)| v))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the child did not report its peak:\n{text}"));
    kb / 1024
}

#[test]
#[ignore = "run by bombs_stay_within_a_memory_bound in a child process"]
fn bombs_child() {
    let Ok(which) = std::env::var("SG_BOMB") else {
        return;
    };
    for b in bombs().into_iter().filter(|b| b.name == which) {
        let r = sg_agent::config::load_str(&b.text, "bomb.yaml");
        assert!(r.is_err(), "{} accepted", b.name);
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .expect("VmHWM in /proc/self/status");
    println!("SG_BOMB_PEAK_KB={hwm}");
}
