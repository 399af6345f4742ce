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

/// Every namespace this crate creates starts with this, followed by the creating process id:
/// `sg<pid>x<n>` (short enough to stay readable in `ip netns list`).
pub const NS_PREFIX: &str = "sgt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with every process still in it) on drop.
pub struct Netns {
    name: String,
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
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Do not answer pings to broadcast and keep DAD from delaying IPv6 addresses.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
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
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        let mut c = self.cmd(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = c
            .spawn()
            .with_context(|| format!("spawn {args:?} in {}", self.name))?;
        Ok(Proc {
            child,
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
        delete_namespace(&self.name);
    }
}

/// Kills every process in a namespace, then deletes it.
fn delete_namespace(name: &str) {
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
            delete_namespace(&name);
        }
    }
}

/// A process started by [`Netns::spawn`]; killed on drop.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    /// Fails if the process has already exited (e.g. a server that could not bind).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("{} exited early ({status}): {err}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
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
