//! The local store: the policy file the daemon enforces on this host, seen as the store's keys
//! and values (docs/api.md "One host, no etcd"). `sg-agent api --config FILE` reads and writes
//! it exactly as it reads and writes etcd, so the API has one code path for both.
//!
//! - Read: the file is validated by the one validator, and its policy becomes the keys
//!   `store import` would write (`layout::policy_values`); what other writers keep beside a
//!   value's payload (the EC2 API's `ec2`: VPC, tags) comes back from the file's `x-store`
//!   section. The revision is a hash of the file's bytes: any edit, by the API or by hand,
//!   changes it.
//! - Commit: under an exclusive lock on a file beside the policy, read again and compare the
//!   revision (compare-and-swap, as etcd's transaction), apply the puts and deletes to the
//!   keys, render them as one native policy (`Snapshot::document`) plus what the keys cannot
//!   hold (network ACLs and subnets while the layout has no keys for them), validate the very
//!   text that will be written, then replace the file atomically (temp file, fsync, rename;
//!   mode and owner kept) and send SIGHUP to this namespace's daemon so it applies at once.
//!   A text that does not validate is never written (P4): the daemon's policy stays.
//!
//! Keys outside the layout (`v1/api/serial`, which only etcd's compare needs) are not kept.
//! The file is rewritten in the native format: comments and `x-` keys other than `x-store`
//! are not kept, and a file of another format (a CloudFormation template) is never rewritten.
//! It must not know EC2: the extras beside a payload are opaque JSON.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::layout::{Key, Snapshot, encode, policy_values};
use super::native;
use crate::config::yaml::{self, Kind, Node, Style};
use crate::config::{self, Diagnostics, Format, Loaded};
use crate::error::Error;
use crate::policy::Policy;
use crate::state::StateDir;

/// The file's top-level key holding what the store keeps beside each value's payload, by key.
pub const EXTRAS: &str = "x-store";

/// The first lines of a file the store wrote.
const HEADER: &str = "# Written by `sg-agent api` (the local store: docs/api.md). Edits by hand are \
                      fine; comments are not kept.\n";

/// The policy file of one host as a store.
#[derive(Clone, Debug)]
pub struct LocalStore {
    pub path: PathBuf,
    /// `--state-dir`, to find this namespace's daemon (None: the namespace's default).
    pub state_dir: Option<PathBuf>,
}

/// What a commit did.
#[derive(Debug)]
pub enum Commit {
    /// Written; the new revision.
    Done(i64),
    /// The file changed since the revision: nothing written (read again and retry).
    Conflict,
    /// The result would not validate: nothing written.
    Invalid(Diagnostics),
    /// The file is not one the store may rewrite (why): nothing written.
    Refused(String),
}

/// The file as read: its revision, its keys and values, and what they cannot hold.
struct Current {
    revision: i64,
    kvs: BTreeMap<String, Vec<u8>>,
    /// Parts of the native document the layout has no keys for (kept as they are).
    kept: Value,
    format: Format,
}

impl LocalStore {
    pub fn describe(&self) -> String {
        format!("file {} (local)", self.path.display())
    }

    /// The file's policy keys at its current revision.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let c = read(&self.path)?;
        Ok(Snapshot::new(c.revision, c.kvs))
    }

    /// Applies `puts` and `deletes` if the file is still at `revision`.
    pub fn commit_if_unchanged_since(
        &self,
        revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<Commit> {
        let target = resolved(&self.path);
        let _lock = lock(&target)?;
        let mut c = read(&target)?;
        if c.revision != revision {
            return Ok(Commit::Conflict);
        }
        if c.format != Format::Native {
            return Ok(Commit::Refused(format!(
                "{} is not a native policy file ({:?}): the local store rewrites only native \
                 files, and never a template or a describe output; hint: keep it for \
                 `sg-agent apply`, or write the policy in the native format \
                 (docs/policy-format.md)",
                self.path.display(),
                c.format
            )));
        }
        for k in deletes {
            c.kvs.remove(&k);
        }
        c.kvs.extend(puts);
        let text = render(&c.kvs, &c.kept)?;
        // Exactly what the daemon will read, through the same validator.
        if let Err(d) = config::load_str(&text, &self.path.display().to_string()) {
            return Ok(Commit::Invalid(d));
        }
        write_atomically(&target, text.as_bytes())?;
        wake_daemon(self.state_dir.as_deref());
        Ok(Commit::Done(revision_of(text.as_bytes())))
    }
}

/// The path itself, or the file a symbolic link names (the link stays).
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A sibling of the file: `.NAME.SUFFIX`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Serializes the writers of one file (API processes, across their read-compare-write).
fn lock(path: &Path) -> Result<File> {
    let p = beside(path, "lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("open {}", p.display()))?;
    // SAFETY: plain syscall on a valid fd; the lock ends when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("lock {}: {}", p.display(), std::io::Error::last_os_error());
    }
    Ok(f)
}

/// The revision of a file's bytes (0: no file).
fn revision_of(bytes: &[u8]) -> i64 {
    let h = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    // Positive and never 0.
    (i64::from_le_bytes(first) & i64::MAX).max(1)
}

/// Reads and validates the file. A missing file is an empty policy at revision 0 (the first
/// write creates it).
fn read(path: &Path) -> Result<Current> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Current {
                revision: 0,
                kvs: BTreeMap::new(),
                kept: Value::Object(Map::new()),
                format: Format::Native,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let name = path.display().to_string();
    let loaded: Loaded =
        config::load_str(&text, &name).map_err(|d| Error::InvalidInput(d.to_string()))?;
    let extras = extras_of(&text);
    Ok(Current {
        revision: revision_of(text.as_bytes()),
        kvs: listing(&loaded.policy, &extras),
        kept: kept(&loaded.policy)?,
        format: loaded.format,
    })
}

/// A policy as the store's keys and values (what `store import` writes), with the extras
/// the file keeps beside each value's payload.
pub fn listing(p: &Policy, extras: &Map<String, Value>) -> BTreeMap<String, Vec<u8>> {
    policy_values(p)
        .into_iter()
        .map(|(k, v)| {
            let path = k.path();
            let v = match extras.get(&path).and_then(Value::as_object) {
                Some(extra) => {
                    let mut obj: Map<String, Value> =
                        serde_json::from_slice(&v).expect("encode writes a JSON object");
                    for (name, x) in extra {
                        obj.entry(name.clone()).or_insert_with(|| x.clone());
                    }
                    serde_json::to_vec(&obj).expect("JSON values serialize")
                }
                None => v,
            };
            (path, v)
        })
        .collect()
}

/// The name of a key's payload in its value (`group`, `prefix_list`, ...), learnt from the
/// layout's own encoding.
fn payload_name(key: &Key) -> String {
    let v: Map<String, Value> =
        serde_json::from_slice(&encode(key, Value::Null)).expect("encode writes a JSON object");
    v.into_iter()
        .map(|(k, _)| k)
        .find(|k| k != "schema")
        .expect("a value has a payload")
}

/// Keys and values as the text of one native policy file: the layout's document, what it
/// cannot hold (`kept`), and the extras beside each payload under `x-store`.
pub fn render(kvs: &BTreeMap<String, Vec<u8>>, kept: &Value) -> Result<String> {
    let snapshot = Snapshot::new(0, kvs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (mut doc, _) = snapshot.document()?;
    merge(&mut doc, kept);
    let mut extras = Map::new();
    for (key, bytes) in &snapshot.values {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(bytes) else {
            continue;
        };
        obj.remove("schema");
        obj.remove(&payload_name(key));
        if !obj.is_empty() {
            extras.insert(key.path(), Value::Object(obj));
        }
    }
    let mut text = format!("{HEADER}{}", native::to_yaml(&doc));
    if !extras.is_empty() {
        // One JSON line per key (JSON is YAML): exact for any tag text, still readable.
        text.push_str(&format!("{EXTRAS}:\n"));
        for (path, extra) in &extras {
            text.push_str(&format!("  {}: {extra}\n", Value::String(path.clone())));
        }
    }
    Ok(text)
}

/// What the native document of `p` has that the layout's keys do not render: the parts of
/// the file a write must carry over untouched.
fn kept(p: &Policy) -> Result<Value> {
    let held = Snapshot::new(0, policy_values(p).into_iter().map(|(k, v)| (k.path(), v)));
    Ok(missing(&native::document(p), &held.document()?.0))
}

/// The object entries of `full` absent from `held` (recursively into objects; lists are
/// either held or not).
fn missing(full: &Value, held: &Value) -> Value {
    let mut out = Map::new();
    if let (Value::Object(f), Value::Object(h)) = (full, held) {
        for (k, v) in f {
            match h.get(k) {
                None => {
                    out.insert(k.clone(), v.clone());
                }
                Some(hv) if v.is_object() && hv.is_object() => {
                    let m = missing(v, hv);
                    if m.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(k.clone(), m);
                    }
                }
                Some(_) => {}
            }
        }
    }
    Value::Object(out)
}

/// Adds the entries of `kept` that `doc` lacks (recursively into objects).
fn merge(doc: &mut Value, kept: &Value) {
    let (Value::Object(d), Value::Object(k)) = (doc, kept) else {
        return;
    };
    for (name, v) in k {
        match d.get_mut(name) {
            None => {
                d.insert(name.clone(), v.clone());
            }
            Some(dv) => merge(dv, v),
        }
    }
}

/// The file's `x-store` section (empty when it has none or it is not a mapping).
fn extras_of(text: &str) -> Map<String, Value> {
    let Ok(root) = yaml::parse(text) else {
        return Map::new();
    };
    match root.get(EXTRAS).map(|n| json_of(n)) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A YAML node as JSON: quoted scalars are strings, plain ones JSON's numbers, booleans and
/// null when they read as such.
fn json_of(n: &Node) -> Value {
    match &n.kind {
        Kind::Scalar { value, style } => {
            if *style == Style::Plain
                && let Ok(v) = serde_json::from_str::<Value>(value)
                && !v.is_string()
            {
                return v;
            }
            Value::String(value.clone())
        }
        Kind::Seq(items) => items.iter().map(|i| json_of(i)).collect(),
        Kind::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.scalar().unwrap_or_default().to_string(), json_of(v)))
            .collect::<Map<_, _>>()
            .into(),
    }
}

/// Replaces the file with `bytes` so that a reader sees the old file or the new one, never
/// a part; the mode and owner of the old file are kept (0644 root for a new one).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = beside(path, &format!("tmp-{}", std::process::id()));
    let old = std::fs::metadata(path).ok();
    // A temp file left by a crashed writer of the same pid.
    let _ = std::fs::remove_file(&tmp);
    let write = || -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)?;
        let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
        if let Some(m) = &old {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("chown {}", tmp.display()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        // The rename itself is durable once the directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("write {}", path.display()))
}

/// SIGHUP to this namespace's daemon, so it applies the new file now rather than at its next
/// poll (which catches it anyway: a daemon on another file just reloads its own).
fn wake_daemon(state_dir: Option<&Path>) {
    let Ok(sd) = StateDir::for_current_netns(state_dir) else {
        return;
    };
    // Only a live pid is worth asking about: asking takes the daemon's claim lock for a
    // moment, which a daemon starting at that instant would find taken.
    let pid: Option<i32> = std::fs::read_to_string(sd.run.join("daemon.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // SAFETY: signal 0 only checks that the process exists.
    if !pid.is_some_and(|p| p > 0 && unsafe { libc::kill(p, 0) } == 0) {
        return;
    }
    if let Some((pid, _claim)) = sd.daemon() {
        // SAFETY: plain syscall; the daemon holds its claim, so the pid is the daemon's.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            log::warn!(
                "SIGHUP to the daemon (pid {pid}): {}; it applies the file at its next poll",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_text() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ec2-lab.yaml");
        std::fs::read_to_string(path).unwrap()
    }

    fn store_in(dir: &Path, text: &str) -> LocalStore {
        let path = dir.join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        LocalStore {
            path,
            // No daemon there: nothing to wake.
            state_dir: Some(dir.join("state")),
        }
    }

    fn group_with_extra(s: &Snapshot, id: &str, extra: Value) -> (String, Vec<u8>) {
        let key = Key::Group(id.into());
        let mut v: Value = serde_json::from_slice(&s.values[&key]).unwrap();
        v["ec2"] = extra;
        (key.path(), serde_json::to_vec(&v).unwrap())
    }

    /// The file -> keys -> file -> keys round trip: the keys are those `store import` writes,
    /// the extras beside a payload (tags with YAML syntax in them, a VPC) survive, and a
    /// second rendering is the same text.
    #[test]
    fn a_file_and_its_keys_round_trip_with_the_extras() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), &lab_text());
        let first = s.snapshot().unwrap();
        let lab = config::load_str(&lab_text(), "lab").unwrap().policy;
        let imported = Snapshot::new(
            0,
            policy_values(&lab).into_iter().map(|(k, v)| (k.path(), v)),
        );
        assert_eq!(first.values, imported.values, "the keys of `store import`");

        let extra = serde_json::json!({"vpc_id": "vpc-1", "tags": {"Name": "a: b # c", "n": "5",
            "quote": "\"'", "empty": ""}, "rule_tags": {"sgr-0123456789abcdef0": {"k": "v"}}});
        let put = group_with_extra(&first, "sg-web", extra.clone());
        let done = s
            .commit_if_unchanged_since(first.revision, vec![put.clone()], vec![])
            .unwrap();
        let Commit::Done(rev) = done else {
            panic!("{done:?}")
        };
        let second = s.snapshot().unwrap();
        assert_eq!(second.revision, rev);
        let mut want = first.values.clone();
        want.insert(Key::parse(&put.0).unwrap(), put.1);
        assert_eq!(
            second.values.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want {
            let a: Value = serde_json::from_slice(v).unwrap();
            let b: Value = serde_json::from_slice(&second.values[k]).unwrap();
            assert_eq!(a, b, "{k:?}");
        }
        let text = std::fs::read_to_string(&s.path).unwrap();
        assert!(text.starts_with(HEADER) && text.contains(EXTRAS), "{text}");
        let c = read(&s.path).unwrap();
        assert_eq!(render(&c.kvs, &c.kept).unwrap(), text, "a fixed point");
    }

    /// P4 (compare-and-swap): a commit against an old revision writes nothing, whoever
    /// changed the file (another writer or a hand edit).
    #[test]
    fn p4_a_commit_on_a_stale_revision_is_a_conflict_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), &lab_text());
        let old = s.snapshot().unwrap();
        let edited = format!("{}\n# edited by hand\n", lab_text());
        std::fs::write(&s.path, &edited).unwrap();
        let put = group_with_extra(&old, "sg-web", serde_json::json!({"vpc_id": "vpc-2"}));
        let r = s
            .commit_if_unchanged_since(old.revision, vec![put], vec![])
            .unwrap();
        assert!(matches!(r, Commit::Conflict), "{r:?}");
        assert_eq!(std::fs::read_to_string(&s.path).unwrap(), edited);
    }

    /// P4: keys that would make an invalid policy (a rule naming a group that is deleted)
    /// are refused with the validator's words, and the file keeps its bytes.
    #[test]
    fn p4_a_commit_that_would_not_validate_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), &lab_text());
        let before = std::fs::read(&s.path).unwrap();
        let snap = s.snapshot().unwrap();
        let referenced = snap
            .values
            .keys()
            .find_map(|k| match k {
                Key::Group(id) if id == "sg-web" => Some(k.path()),
                _ => None,
            })
            .unwrap();
        let r = s
            .commit_if_unchanged_since(snap.revision, vec![], vec![referenced])
            .unwrap();
        let Commit::Invalid(d) = r else {
            panic!("{r:?}")
        };
        assert!(d.to_string().contains("sg-web"), "{d}");
        assert_eq!(std::fs::read(&s.path).unwrap(), before);
    }

    /// What the layout has no keys for (network ACLs, subnets) is carried over by a write.
    #[test]
    fn a_write_keeps_what_the_keys_do_not_hold() {
        let nacl = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let with_nacls = std::fs::read_dir(nacl)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find_map(|p| {
                let t = std::fs::read_to_string(&p).ok()?;
                let l = config::load_str(&t, "x").ok()?;
                (l.format == Format::Native && !l.policy.network_acls.is_empty()).then_some(t)
            })
            .expect("an example with network ACLs");
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), &with_nacls);
        let before = config::load_str(&with_nacls, "x").unwrap().policy;
        let snap = s.snapshot().unwrap();
        let r = s
            .commit_if_unchanged_since(snap.revision, vec![], vec![])
            .unwrap();
        assert!(matches!(r, Commit::Done(_)), "{r:?}");
        let after = config::load_file(&s.path).unwrap().policy;
        assert_eq!(
            native::tests::meaning(after),
            native::tests::meaning(before)
        );
    }

    /// A missing file is an empty store; the first write creates it (0644).
    #[test]
    fn a_missing_file_is_an_empty_store_and_a_write_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore {
            path: dir.path().join("new.yaml"),
            state_dir: Some(dir.path().join("state")),
        };
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.revision, 0);
        let g = Key::Group("sg-a".into());
        let value = encode(
            &g,
            serde_json::json!({"id": "sg-a", "name": "a", "description": "A", "ingress": [],
                               "egress": []}),
        );
        let r = s
            .commit_if_unchanged_since(0, vec![(g.path(), value)], vec![])
            .unwrap();
        assert!(matches!(r, Commit::Done(_)), "{r:?}");
        let p = config::load_file(&s.path).unwrap().policy;
        assert_eq!(p.groups.len(), 1);
        let mode = std::fs::metadata(&s.path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    /// A template is read but never rewritten.
    #[test]
    fn a_file_of_another_format_is_never_rewritten() {
        let cfn = "Resources:\n  Web:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      \
                   GroupDescription: web\n";
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), cfn);
        let snap = s.snapshot().unwrap();
        let r = s
            .commit_if_unchanged_since(snap.revision, vec![], vec![])
            .unwrap();
        let Commit::Refused(why) = r else {
            panic!("{r:?}")
        };
        assert!(why.contains("not a native policy file"), "{why}");
        assert_eq!(std::fs::read_to_string(&s.path).unwrap(), cfn);
    }
}
