//! Where the agent keeps what must outlive one process: BPF pins (maps and links, in bpffs) and
//! a small JSON state file (generation, rule counter slots, what was applied), both distinct
//! per network namespace by default so several lab instances on one kernel never share state.
//! Also the apply lock that serialises agents of one namespace.
//!
//! Owns paths, the state file format and locking; must not know about maps' contents.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::image::SlotTable;
use crate::policy::RuleId;

/// Where the per-namespace directories live by default.
pub const DEFAULT_PINS_ROOT: &str = "/sys/fs/bpf/sg";
pub const DEFAULT_RUN_ROOT: &str = "/run/sg";

/// The two directories of one agent instance.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// bpffs directory holding pinned maps and links.
    pub pins: PathBuf,
    /// Regular directory holding `state.json` and the lock.
    pub run: PathBuf,
}

/// The inode of the calling thread's network namespace: unique per namespace on this kernel.
pub fn netns_id() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata("/proc/thread-self/ns/net")
        .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
        .context("stat /proc/self/ns/net")?;
    Ok(md.ino())
}

/// The network namespace's cookie (SO_NETNS_COOKIE, kernel >= 5.14): unlike its inode, never
/// reused by a later namespace. Recorded in the state so that pins left behind by a deleted
/// namespace are not adopted by a new one that happens to get the same inode.
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain syscalls; the socket is closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        bail!("getsockopt(SO_NETNS_COOKIE): {err}");
    }
    Ok(cookie)
}

impl StateDir {
    /// `/sys/fs/bpf/sg/netns-<inode>` and `/run/sg/netns-<inode>`, or both under `root` when
    /// overridden (`--state-dir`: pins go to `<root>/pins`, which must be on bpffs).
    pub fn for_current_netns(root: Option<&Path>) -> Result<StateDir> {
        match root {
            Some(r) => Ok(StateDir {
                pins: r.join("pins"),
                run: r.join("run"),
            }),
            None => {
                let id = format!("netns-{}", netns_id()?);
                Ok(StateDir {
                    pins: Path::new(DEFAULT_PINS_ROOT).join(&id),
                    run: Path::new(DEFAULT_RUN_ROOT).join(&id),
                })
            }
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.run.join("state.json")
    }

    /// The text of the applied policy (in fleet mode its JSON document: also the local copy
    /// a restarted daemon enforces before the store answers).
    pub fn applied_policy_file(&self) -> PathBuf {
        self.run.join("policy.applied")
    }

    /// Creates both directories, root-only (pins and state are control surfaces: whoever can
    /// write them can change or stop enforcement). Mounts the BPF filesystem at /sys/fs/bpf
    /// first when nothing is mounted there (what systemd does at boot), for the default
    /// location.
    pub fn create(&self) -> Result<()> {
        if self.pins.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
            mount_bpffs(Path::new(BPFFS))?;
        }
        for root in [DEFAULT_PINS_ROOT, DEFAULT_RUN_ROOT] {
            let root = Path::new(root);
            if self.pins.parent() == Some(root) || self.run.parent() == Some(root) {
                create_private_dir(root)?;
            }
        }
        create_private_dir(&self.pins)?;
        create_private_dir(&self.run)?;
        check_bpffs(&self.pins)?;
        Ok(())
    }

    /// Takes the apply lock (blocking): one agent of a namespace changes it at a time.
    pub fn lock(&self) -> Result<Lock> {
        create_private_dir(&self.run)?;
        let path = self.run.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        flock(&f, &path, libc::LOCK_EX)?;
        Ok(Lock { _file: f })
    }

    /// Takes the apply lock only if the state directory still exists (it does not create
    /// it): None means the namespace was detached. For a daemon checking its pins.
    pub fn lock_existing(&self) -> Result<Option<Lock>> {
        let path = self.run.join("lock");
        let f = match File::options().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        flock(&f, &path, libc::LOCK_EX)?;
        // `detach` removes the lock file while holding it: a lock on a removed file locks
        // nothing.
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Lock { _file: f }))
    }

    /// The running daemon of this namespace, if any: its pid and an open handle on its
    /// claim, to wait for it to let go ([`wait_released`]).
    pub fn daemon(&self) -> Option<(i32, File)> {
        let path = self.run.join("daemon.pid");
        let f = File::options().read(true).write(true).open(&path).ok()?;
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return None;
        }
        let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
        Some((pid, f))
    }

    /// Claims the namespace for one daemon (non-blocking); the claim ends with the process.
    pub fn claim_daemon(&self) -> Result<Lock> {
        create_private_dir(&self.run)?;
        let path = self.run.join("daemon.pid");
        let mut f = open_private(&path).with_context(|| format!("open {}", path.display()))?;
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another sg-agent daemon (pid {}) already runs for this network namespace; \
                 hint: systemctl status sg-agent, or stop it first",
                pid.trim()
            );
        }
        use std::io::Write as _;
        f.set_len(0)?;
        write!(f, "{}", std::process::id())?;
        Ok(Lock { _file: f })
    }

    /// The remembered state. A file that does not parse (corrupted, or written by an
    /// unrelated program) is an error that says what to do; nothing is changed.
    pub fn load(&self) -> Result<Option<AgentState>> {
        let p = self.state_file();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                anyhow::anyhow!(
                    "the state file {} is corrupted ({e}); enforcement is left as it is. hint: \
                     `sg-agent detach` removes everything; or move the file away and apply \
                     again: the pinned maps and links are adopted (rule counters restart at 0)",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    /// Writes the state atomically (temp file + rename): a crash leaves the old or the new.
    pub fn save(&self, st: &AgentState) -> Result<()> {
        create_private_dir(&self.run)?;
        replace_private(&self.state_file(), &serde_json::to_vec_pretty(st)?)
    }

    /// Removes the state file and the directories (after the pins are gone), and the shared
    /// parents when they became empty.
    pub fn remove(&self) -> Result<()> {
        // Everything in the run directory is the agent's: state, lock, the applied policy's
        // text, the daemon's pid file.
        if self.run.exists() {
            std::fs::remove_dir_all(&self.run)
                .with_context(|| format!("removing {}", self.run.display()))?;
        }
        let _ = std::fs::remove_dir(&self.pins);
        for d in [self.run.parent(), self.pins.parent()]
            .into_iter()
            .flatten()
        {
            if d != Path::new(BPFFS) && d != Path::new("/run") {
                let _ = std::fs::remove_dir(d);
            }
        }
        Ok(())
    }
}

/// Waits (bounded) until the holder of a daemon claim has exited. True when it has.
pub fn wait_released(f: &File, timeout: std::time::Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Held while changing the namespace's enforcement.
pub struct Lock {
    _file: File,
}

fn flock(f: &File, path: &Path, op: libc::c_int) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        bail!(
            "lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Creates `dir` and missing parents with mode 0700, and tightens `dir` to 0700 when it
/// already existed with a wider mode.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let md = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    Ok(())
}

/// Replaces a file readable by root only whole or not at all (a new file renamed over it):
/// a crash mid-write must not leave a torn state or a torn copy of the applied policy.
/// A file that already holds `bytes` is left alone (a daemon rewrites the same state often).
///
/// An existing file is swapped with the new one (`RENAME_EXCHANGE`) and the old one then
/// removed, rather than renamed over: ext4 (`/run` on some hosts) starts writing a file back
/// to disk when it is renamed over another (`auto_da_alloc`), a disk write per state file per
/// apply, which a fleet of agents on one machine pays for every change. `/run` does not
/// survive a reboot, so that flush buys nothing here; the swap is as atomic as the rename.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    write_private(&tmp, bytes)?;
    match exchange(&tmp, path) {
        Ok(()) => {
            // The old content, now under the temporary name. Left behind, it is harmless:
            // the next replace writes over it.
            if let Err(e) = std::fs::remove_file(&tmp) {
                log::warn!("removing {}: {e}", tmp.display());
            }
            Ok(())
        }
        Err(_) => {
            std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
        }
    }
}

/// Swaps two existing files atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes());
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: plain syscall on two valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens a file readable by root only, created if missing, for reading and writing; what it
/// holds is kept: cutting it is the caller's choice.
fn open_private(path: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Writes a file readable by root only (not atomically: see [`replace_private`]). A file that
/// already holds `bytes` is left alone. An existing file is written over and then cut to
/// length, not truncated first: ext4 starts a disk write when a file truncated to nothing is
/// closed (`auto_da_alloc`). Torn by a crash either way, like before.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut f = open_private(path).with_context(|| format!("write {}", path.display()))?;
    let mut old = Vec::new();
    if f.read_to_end(&mut old).is_ok() && old == bytes {
        return Ok(());
    }
    f.rewind()
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.set_len(bytes.len() as u64))
        .with_context(|| format!("write {}", path.display()))
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// Where the BPF filesystem lives on the host.
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).ok();
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings; mounting needs CAP_SYS_ADMIN, the error says so.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        bail!(
            "mounting the BPF filesystem at {}: {}; hint: mount -t bpf bpf {}",
            p.display(),
            std::io::Error::last_os_error(),
            p.display()
        );
    }
    Ok(())
}

/// `ip netns exec` runs its command in a private mount namespace with its own /sys, where the
/// host's BPF filesystem is not visible and anything mounted vanishes with the command: pins
/// made there would die with the agent. When started that way (its /sys is mounted with a
/// network namespace's name as the source), the agent joins the mount namespace of the
/// nearest ancestor that has the host's /sys, keeping its network namespace. Must run before
/// any thread starts (setns of a mount namespace needs a single-threaded process).
pub fn join_host_mount_namespace() -> Result<()> {
    if !in_netns_exec_mounts(std::process::id()) {
        return Ok(());
    }
    // The nearest ancestor; init (pid 1) when the parents are gone (`ip netns exec NS
    // sg-agent daemon &` from a shell that has exited reparents the agent to init).
    let mut pid = parent_of(std::process::id());
    while let Some(p) = pid {
        if p == 0 {
            break;
        }
        if !in_netns_exec_mounts(p) {
            let path = format!("/proc/{p}/ns/mnt");
            let f = match File::open(&path) {
                Ok(f) => f,
                // init may be out of reach (a container): say what to do instead.
                Err(_) if p == 1 => break,
                Err(e) => return Err(e).with_context(|| format!("open {path}")),
            };
            let cwd = std::env::current_dir().ok();
            // SAFETY: plain syscall on a valid fd; the process is still single-threaded.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
                bail!(
                    "joining the host mount namespace ({path}): {}",
                    std::io::Error::last_os_error()
                );
            }
            // setns moved the working directory to the namespace's root: put it back.
            if let Some(cwd) = cwd {
                let _ = std::env::set_current_dir(cwd);
            }
            return Ok(());
        }
        if p == 1 {
            break;
        }
        pid = parent_of(p);
    }
    bail!(
        "sg-agent runs under `ip netns exec` and no ancestor has the host's /sys: its BPF pins \
         would vanish when it exits; hint: use `nsenter --net=/run/netns/NAME sg-agent ...`"
    )
}

fn in_netns_exec_mounts(pid: u32) -> bool {
    let Ok(mi) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return false;
    };
    mi.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            return false;
        };
        f.get(4) == Some(&"/sys")
            && f.get(sep + 1) == Some(&"sysfs")
            && f.get(sep + 2)
                .is_some_and(|src| *src != "sysfs" && Path::new("/run/netns").join(src).exists())
    })
}

fn parent_of(pid: u32) -> Option<u32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = st.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

fn check_bpffs(p: &Path) -> Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs fills the struct; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem; hint: mount -t bpf bpf /sys/fs/bpf, or point \
             --state-dir at a directory whose `pins` subdirectory is on bpffs",
            p.display()
        );
    }
    Ok(())
}

/// What one agent instance remembers between runs. Fields added later default when an older
/// file lacks them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// sg_common::ABI_VERSION of the agent that wrote the pins.
    pub abi: u32,
    /// The live generation (0/1).
    pub generation: u32,
    /// Rule id -> counter slot, and the allocation cursor.
    pub slots: BTreeMap<String, u32>,
    pub slot_cursor: u32,
    /// The file last applied and when (seconds since the epoch).
    pub source: String,
    pub applied_at: u64,
    /// What the last apply enforced, for `apply` diffs, `status` and `counters`.
    pub applied: Applied,
    /// Ingress hook per device ("xdp", "xdp-skb", "tc").
    pub hooks: BTreeMap<String, String>,
    /// Why a device has its ingress hook ("auto: driver veth; ...", "forced: ..."); no entry
    /// when the user chose the hook for every device.
    pub hook_reasons: BTreeMap<String, String>,
    /// The namespace's cookie ([`netns_cookie`]); 0 in files written before it was recorded.
    pub netns_cookie: u64,
    /// `--confirm` applies reverted because no confirmation came in time, or on
    /// `confirm --rollback` (L1), and when the last one was (seconds since the epoch).
    pub confirm_reverts: u64,
    pub last_revert_at: u64,
    /// Devices `sg-agent audit on DEV` put in audit mode (L3), kept through applies until
    /// `sg-agent audit off DEV`; the policy's own `audit: true` interfaces are not here.
    pub audit_devices: BTreeSet<String>,
}

/// A summary of an applied policy: enough to print diffs and label counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// group id -> name (and network ACL id -> itself, for the NACL rules' counters)
    pub groups: BTreeMap<String, String>,
    /// rule id -> (group, direction, text, description); NACL rules by their counter id
    /// (`acl-x/in/100`), with the NACL as the group and `inbound`/`outbound` as direction
    pub rules: BTreeMap<String, RuleSummary>,
    /// group id -> member addresses
    pub members: BTreeMap<String, Vec<String>>,
    /// device -> (policy interface, ifindex, groups)
    pub interfaces: BTreeMap<String, InterfaceSummary>,
    /// device -> the subnet it faces as a router and that subnet's network ACL (A13).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, RouterSummary>,
    /// The router's own addresses, exempt from its NACLs (A21); empty unless it routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub router_addrs: Vec<std::net::IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterSummary {
    pub subnet: String,
    pub network_acl: String,
    pub ifindex: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub group: String,
    pub direction: String,
    pub text: String,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSummary {
    pub interface: String,
    pub ifindex: u32,
    pub groups: Vec<String>,
}

impl AgentState {
    pub fn slot_table(&self) -> SlotTable {
        SlotTable {
            by_rule: self
                .slots
                .iter()
                .map(|(k, v)| (RuleId(k.clone()), *v))
                .collect(),
            cursor: self.slot_cursor,
        }
    }

    pub fn set_slots(&mut self, t: &SlotTable) {
        self.slots = t.by_rule.iter().map(|(k, v)| (k.0.clone(), *v)).collect();
        self.slot_cursor = t.cursor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_saves_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir {
            pins: dir.path().join("pins"),
            run: dir.path().join("run"),
        };
        assert_eq!(sd.load().unwrap(), None);
        let mut st = AgentState {
            abi: 1,
            generation: 1,
            ..Default::default()
        };
        st.slots.insert("sgr-0123456789abcdef0".into(), 7);
        sd.save(&st).unwrap();
        assert_eq!(sd.load().unwrap(), Some(st.clone()));
        assert_eq!(sd.load().unwrap().unwrap().slot_table().by_rule.len(), 1);
        assert!(!sd.state_file().with_extension("json.tmp").exists());
        let _l = sd.lock().unwrap();
    }

    /// A replaced file holds the new bytes whole, over an older one or none, longer or
    /// shorter, and nothing is left beside it.
    #[test]
    fn files_are_replaced_whole_and_written_to_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for text in ["a longer first text", "short", "short", ""] {
            replace_private(&p, text.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        let q = dir.path().join("g");
        for text in ["a longer first text", "short", "short", "", "again"] {
            write_private(&q, text.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&q).unwrap(), text);
        }
        use std::os::unix::fs::PermissionsExt;
        for f in [&p, &q] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
    }

    #[test]
    fn default_dirs_are_per_network_namespace() {
        let sd = StateDir::for_current_netns(None).unwrap();
        let id = netns_id().unwrap();
        assert!(sd.pins.ends_with(format!("netns-{id}")));
        assert!(sd.run.ends_with(format!("netns-{id}")));
    }
}
