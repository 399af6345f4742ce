//! Network namespaces and veth links owned by a test or the lab, and the processes run in
//! them. Everything created here is deleted on drop (also when a test panics), and a sweeper
//! removes what a killed run left behind.
//!
//! Safety rules this module enforces: it never creates, addresses or reconfigures anything in
//! the caller's own namespace. Links are created inside a namespace (`ip -n NS link add`) with
//! their peer in another namespace, so no interface ever appears in the host namespace.

use std::fmt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Every namespace this crate creates for tests starts with this, followed by the creating
/// process id: `sgt<pid>-<tag><n>` (short enough to stay readable in `ip netns list`). The
/// lab's kept namespaces use readable fixed names instead ([`Netns::named`]).
pub const NS_PREFIX: &str = "sgt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with every process still in it) on drop.
pub struct Netns {
    name: String,
    /// False once [`Netns::keep`] was called (`sg-lab --keep`): drop leaves it.
    owned: bool,
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Netns {
    /// Creates `sgt<pid>-<tag><n>` with loopback up. Stale namespaces of dead processes are
    /// swept first.
    pub fn new(tag: &str) -> Result<Netns> {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NS_PREFIX}{}-{tag}{n}", std::process::id());
        Netns::create(name)
    }

    /// Creates a namespace with exactly this name (the lab's readable `sglab-web-1`); fails if
    /// it exists. The stale sweeper never touches such names: whoever made them removes them
    /// (`sg-lab --down`).
    pub fn named(name: &str) -> Result<Netns> {
        if name.starts_with(NS_PREFIX) {
            bail!("{name}: the prefix {NS_PREFIX} is reserved for swept test namespaces");
        }
        if Path::new("/run/netns").join(name).exists() {
            bail!("network namespace {name} exists already");
        }
        Netns::create(name.to_string())
    }

    fn create(name: String) -> Result<Netns> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Do not answer pings to broadcast and keep DAD from delaying IPv6 addresses.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the namespace (and whatever runs in it) in place when this value drops.
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// The namespace's inode: the agent's default state lives under
    /// `/sys/fs/bpf/sg/netns-<inode>`, so this says where its pins are.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let p = format!("/run/netns/{}", self.name);
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("stat {p}"))?
            .ino())
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self
            .cmd("sh")
            .args(["-c", &format!("echo {value} > {path}")])
            .output()?;
        if !out.status.success() {
            bail!(
                "sysctl {key}={value} in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A command that runs inside the namespace (`ip netns exec NS PROGRAM`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command in the namespace to completion, bounded by `timeout`, and returns its
    /// output whatever its exit status.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let mut c = self.cmd("timeout");
        c.args(["--foreground", "-s", "KILL", &secs]).args(args);
        c.stdin(Stdio::null());
        c.output()
            .with_context(|| format!("run {args:?} in {}", self.name))
    }

    /// Like [`Netns::run`] but fails unless the command exits 0.
    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let out = self.run(args, timeout)?;
        if !out.status.success() {
            bail!(
                "{args:?} in {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running process in the namespace; it is killed when the returned guard
    /// drops (and, at the latest, when the namespace is deleted).
    ///
    /// Its stderr goes to a log file (not a pipe: a server left running by `sg-lab --keep`
    /// must not die of SIGPIPE when the lab process exits), read back by
    /// [`Proc::check_running`] and removed on drop.
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        let log = std::env::temp_dir().join(format!(
            "sg-lab-{}-{}-{}.log",
            self.name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let err =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut c = self.cmd(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let child = c
            .spawn()
            .with_context(|| format!("spawn {args:?} in {}", self.name))?;
        Ok(Proc {
            child,
            what: format!("{args:?} in {}", self.name),
            log,
            owned: true,
        })
    }

    /// Starts a client that keeps a conversation open (an ssh session, a TCP stream): its
    /// stdin and stdout are pipes; see [`Session`]. Killed on drop.
    pub fn session(&self, args: &[&str]) -> Result<Session> {
        let mut c = self.cmd(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c
            .spawn()
            .with_context(|| format!("spawn {args:?} in {}", self.name))?;
        let stdin = child.stdin.take().context("session stdin")?;
        let stdout = child.stdout.take().context("session stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader thread ends when the process's stdout closes (it is killed on drop).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Session {
            child,
            stdin: Some(stdin),
            lines: rx,
            what: format!("{args:?} in {}", self.name),
        })
    }

    /// Runs `f` on a thread that has entered this namespace (setns affects only the calling
    /// thread), e.g. to load and attach BPF programs to its interfaces.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<R> {
                let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall on a valid fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns({path}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// The ifindex of a device inside this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.run_ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")], SHORT)?;
        out.trim()
            .parse()
            .with_context(|| format!("ifindex of {dev} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            delete_namespace(&self.name);
        }
    }
}

/// Kills every process in a namespace, then deletes it.
pub fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Deletes namespaces named by this module whose creating process is gone (a test run that
/// was killed cannot clean up after itself).
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_agent_state(&name);
            delete_namespace(&name);
        }
    }
}

/// A killed run could not `sg-agent detach`: remove the agent's default pins and state of a
/// namespace about to be swept, so a later namespace that reuses its inode number does not
/// adopt them (the agent's state directory is named after the inode).
fn remove_agent_state(name: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(format!("/run/netns/{name}")) else {
        return;
    };
    for dir in ["/sys/fs/bpf/sg", "/run/sg"] {
        let p = Path::new(dir).join(format!("netns-{}", md.ino()));
        if p.exists() {
            eprintln!("sweeping {} of the dead test namespace {name}", p.display());
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// A process started by [`Netns::spawn`]; killed on drop.
pub struct Proc {
    child: Child,
    what: String,
    log: std::path::PathBuf,
    owned: bool,
}

impl Proc {
    /// Fails if the process has already exited (e.g. a server that could not bind).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let err = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited early ({status}): {}", self.what, err.trim());
        }
        Ok(())
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Leaves the process running (and its log) when this value drops (`sg-lab --keep`).
    pub fn keep(&mut self) {
        self.owned = false;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A client holding a conversation open (see [`Netns::session`]): lines written to its stdin,
/// lines read from its stdout with a deadline. Killed on drop.
pub struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    what: String,
}

impl Session {
    /// Sends `line` and waits up to `timeout` for it to come back (the far end echoes):
    /// true when it did. A dropped packet shows as a timeout (TCP keeps retransmitting).
    pub fn round_trip(&mut self, line: &str, timeout: Duration) -> bool {
        use std::io::Write;
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            return false;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim() == line => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Waits (bounded) until the conversation works: the first round trip of a new session
    /// also waits for its handshake.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        if self.round_trip("sg-session-ready", timeout) {
            return Ok(());
        }
        let status = self.child.try_wait().ok().flatten();
        bail!(
            "{}: no echo within {timeout:?} (process {})",
            self.what,
            status.map_or("still running".to_string(), |s| s.to_string())
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A veth link between two namespaces: `a_dev` in `a`, `b_dev` in `b`, both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

/// Bounded wait for a condition (servers coming up, addresses settling).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

pub const SHORT: Duration = Duration::from_secs(5);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Panics with a clear message unless running as root: privileged tests must fail, never
/// skip, when they cannot run.
pub fn require_root() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this privileged test needs root (network namespaces, BPF); run the suite as root: \
             `cargo xtask test`"
        );
    }
}
