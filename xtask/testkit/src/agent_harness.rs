//! Shared by the agent tests (agent_*.rs): they drive the real `sg-agent` binary inside
//! network namespaces and judge it by real traffic.
//!
//! A [`Site`] is two namespaces joined by a veth pair: `srv` (192.0.2.11, 2001:db8:10::11),
//! where sg enforces, and `cli` (192.0.2.10 and 192.0.2.12, 2001:db8:10::10), the outside
//! world. `srv` runs a small Python server (TCP echo, UDP echo, a stream sink) on the ports
//! the tests ask for; probes run from `cli`. Dropping a Site runs `sg-agent detach` in `srv`
//! and removes whatever pins or state are left, before the namespaces go: a failing test
//! leaves nothing behind.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{Netns, require_root, wait_until};

pub const SRV: &str = "192.0.2.11";
pub const SRV6: &str = "2001:db8:10::11";
pub const CLI: &str = "192.0.2.10";
/// A second client address, outside the policies' /32 rules and group memberships.
pub const CLI2: &str = "192.0.2.12";

/// The Python helpers, written once per test into the site's directory. The server takes
/// specs like "tcp:5001", "udp:5353", "sink:5009:/path" and prints "ready" once it listens
/// (the fleet harness serves with it too).
pub(crate) const SERVER_PY: &str = r#"
import socket, sys, threading, json, time
def tcp_echo(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port)); s.listen(64)
    def serve(c):
        try:
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
        except OSError: pass
        c.close()
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp_echo(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port))
    while True:
        d, a = s.recvfrom(65536); s.sendto(d, a)
def sink(port, out):
    # One connection at a time: count bytes and the longest silence between reads.
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port)); s.listen(4)
    while True:
        c, _ = s.accept(); total = 0; gap = 0.0; last = None; err = None
        try:
            while True:
                d = c.recv(65536)
                now = time.monotonic()
                if last is not None: gap = max(gap, now - last)
                last = now
                if not d: break
                total += len(d)
        except OSError as e: err = str(e)
        c.close()
        with open(out, "w") as f: json.dump({"bytes": total, "max_gap_s": gap, "error": err}, f)
for spec in sys.argv[1:]:
    kind, port = spec.split(":")[:2]
    if kind == "tcp": t = threading.Thread(target=tcp_echo, args=(int(port),))
    elif kind == "udp": t = threading.Thread(target=udp_echo, args=(int(port),))
    else: t = threading.Thread(target=sink, args=(int(port), spec.split(":", 2)[2]))
    t.daemon = True; t.start()
print("ready", flush=True)
threading.Event().wait()
"#;

const PROBE_PY: &str = r#"
import socket, sys, time, json
mode = sys.argv[1]
def fam(h): return socket.AF_INET6 if ":" in h else socket.AF_INET
if mode in ("tcp", "udp"):
    host, port = sys.argv[2], int(sys.argv[3]); src = sys.argv[4] if len(sys.argv) > 4 else None
    s = socket.socket(fam(host), socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(1.0)
    if src: s.bind((src, 0))
    try:
        if mode == "tcp":
            s.connect((host, port)); s.sendall(b"sg-probe"); ok = s.recv(64) == b"sg-probe"
        else:
            s.sendto(b"sg-probe", (host, port)); ok = s.recvfrom(64)[0] == b"sg-probe"
    except OSError: ok = False
    sys.exit(0 if ok else 1)
elif mode == "until-tcp":
    # Try a new connection every 10 ms until one gets through; print when (CLOCK_MONOTONIC).
    host, port, src, limit = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    end = time.monotonic() + limit; tries = 0
    print("started", flush=True)
    while time.monotonic() < end:
        s = socket.socket(fam(host)); s.settimeout(0.01); s.bind((src, 0)); tries += 1
        try:
            s.connect((host, port)); t = time.monotonic(); s.close()
            print(json.dumps({"ok": True, "at": t, "tries": tries}), flush=True); sys.exit(0)
        except OSError: s.close()
    print(json.dumps({"ok": False, "tries": tries}), flush=True); sys.exit(1)
elif mode == "stream":
    # Send 1 KiB every 2 ms for SECONDS or until the file STOP exists; report what happened.
    host, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(fam(host)); s.settimeout(5.0); s.connect((host, port))
    print("connected", flush=True)
    stop = sys.argv[5] if len(sys.argv) > 5 else None
    import os
    chunk = b"x" * 1024; sent = 0; err = None; end = time.monotonic() + secs
    try:
        while time.monotonic() < end and not (stop and os.path.exists(stop)):
            s.sendall(chunk); sent += len(chunk); time.sleep(0.002)
        s.shutdown(socket.SHUT_WR); s.settimeout(10.0); s.recv(1)
    except OSError as e: err = str(e)
    s.close()
    print(json.dumps({"sent": sent, "error": err}), flush=True)
elif mode == "hold":
    # Open N connections one after the other (1 s timeout each), then use each open one.
    host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    socks, opened = [], []
    for i in range(n):
        s = socket.socket(fam(host)); s.settimeout(1.0)
        try:
            s.connect((host, port)); s.sendall(b"hi"); ok = s.recv(8) == b"hi"
        except OSError: ok = False
        opened.append(ok); socks.append(s if ok else None)
    used = []
    for s in socks:
        if s is None: used.append(None); continue
        try: s.sendall(b"again"); used.append(s.recv(8) == b"again")
        except OSError: used.append(False)
    print(json.dumps({"opened": opened, "used": used}), flush=True)
"#;

/// Runs a command to completion within `timeout`, killing it otherwise.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish within {timeout:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A server started with its stdout piped, once it has printed "ready" (panics otherwise).
pub(crate) fn ready(mut child: Child, what: String) -> Bg {
    let mut line = [0u8; 6];
    let read = child.stdout.as_mut().map(|o| o.read_exact(&mut line));
    let bg = Bg { child, what };
    assert!(
        matches!(read, Some(Ok(()))) && &line == b"ready\n",
        "{} did not start",
        bg.what
    );
    bg
}

/// A long-running process killed (SIGKILL) and reaped on drop.
pub struct Bg {
    pub child: Child,
    pub what: String,
}

impl Bg {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} did not exit within {timeout:?}", self.what);
    }

    /// SIGTERM, then asserts a clean exit (0) within 20 s, with `log` (the process's log
    /// file) in the message.
    pub fn terminate(&mut self, log: &Path) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(Duration::from_secs(20));
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert_eq!(code, Some(0), "{} on SIGTERM; its log:\n{log}", self.what);
    }

    /// Waits until the process has stopped itself (SIGSTOP: state T in /proc).
    pub fn wait_stopped(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} exited ({st}) instead of stopping: {err}", self.what);
            }
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
            if state == Some(Some('T')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{} did not stop within {timeout:?}", self.what);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The inode of a named network namespace (what the agent's default directories are named
/// after).
/// The text of a log file; empty while it does not exist yet.
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The log file at `path` holds `needle` (the whole log is the failure message).
pub fn assert_logged(path: &Path, needle: &str) {
    let text = log_text(path);
    assert!(
        text.contains(needle),
        "no {needle:?} in {}:\n{text}",
        path.display()
    );
}

pub fn netns_inode(ns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .unwrap_or_else(|e| panic!("stat netns {}: {e}", ns.name()))
        .ino()
}

/// CLOCK_MONOTONIC in seconds (Python's time.monotonic()).
pub fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub struct Site {
    // Dropped after `Drop::drop` ran `detach`: the namespaces go last.
    pub cli: Netns,
    pub srv: Netns,
    pub dir: PathBuf,
    pub pins: PathBuf,
    pub run: PathBuf,
    servers: Vec<Bg>,
}

impl Site {
    /// Two namespaces joined by a veth pair (eth0 in both), addressed, nothing enforced.
    pub fn new(tag: &str) -> Site {
        require_root();
        let srv = Netns::new(&format!("{tag}s")).expect("create srv namespace");
        let cli = Netns::new(&format!("{tag}c")).expect("create cli namespace");
        let ino = netns_inode(&srv);
        let dir = std::env::temp_dir().join(format!("sg-agent-test-{}", srv.name()));
        std::fs::create_dir_all(&dir).expect("test directory");
        std::fs::write(dir.join("server.py"), SERVER_PY).unwrap();
        std::fs::write(dir.join("probe.py"), PROBE_PY).unwrap();
        let site = Site {
            cli,
            srv,
            dir,
            pins: PathBuf::from(format!("/sys/fs/bpf/sg/netns-{ino}")),
            run: PathBuf::from(format!("/run/sg/netns-{ino}")),
            servers: Vec::new(),
        };
        site.plug("eth0", None);
        site.cli
            .ip(&["addr", "add", &format!("{CLI2}/24"), "dev", "eth0"])
            .unwrap();
        site
    }

    /// `ip ARGS` in `srv` (addresses, links), panicking with the error.
    pub fn srv_ip(&self, args: &[&str]) {
        self.srv
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?} in srv: {e:#}"));
    }

    /// (Re)creates the veth pair `dev` <-> cli's eth0, addressed (optionally with a fixed
    /// ifindex in srv).
    pub fn plug(&self, dev: &str, index: Option<u32>) {
        let idx = index.map(|i| i.to_string());
        let mut args = vec!["link", "add", dev];
        if let Some(i) = &idx {
            args.extend(["index", i.as_str()]);
        }
        args.extend([
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.cli.name(),
        ]);
        self.srv.ip(&args).expect("veth");
        self.srv.ip(&["link", "set", dev, "up"]).unwrap();
        self.cli.ip(&["link", "set", "eth0", "up"]).unwrap();
        self.srv
            .ip(&["addr", "add", &format!("{SRV}/24"), "dev", dev])
            .unwrap();
        self.srv
            .ip(&["addr", "add", &format!("{SRV6}/64"), "dev", dev, "nodad"])
            .unwrap();
        self.cli
            .ip(&["addr", "add", &format!("{CLI}/24"), "dev", "eth0"])
            .unwrap();
        self.cli
            .ip(&["addr", "add", "2001:db8:10::10/64", "dev", "eth0", "nodad"])
            .unwrap();
    }

    /// Writes a policy file into the site's directory; its path.
    pub fn policy(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// A site whose srv already serves `SERVER` (the ports of policies A and B).
    pub fn serving(tag: &str) -> Site {
        let mut site = Site::new(tag);
        site.serve(SERVER);
        site
    }

    /// Spawns one of the site's Python scripts in `ns`, its output piped.
    fn python(&self, ns: &Netns, script: &str, args: &[&str]) -> Child {
        let mut c = ns.cmd("python3");
        c.arg(self.dir.join(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap_or_else(|e| panic!("spawn {script}: {e}"))
    }

    /// Starts the Python server in srv: specs like "tcp:5001", "udp:5353", "sink:5009:/path".
    pub fn serve(&mut self, specs: &[&str]) {
        let child = self.python(&self.srv, "server.py", specs);
        self.servers.push(ready(child, "server.py in srv".into()));
    }

    /// `sg-agent ARGS` in srv (bounded to 60 s).
    pub fn agent(&self, args: &[&str]) -> Output {
        self.agent_env(args, &[])
    }

    pub fn agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.srv.cmd(crate::agent_bin());
        c.args(args).env("RUST_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        run_bounded(c, Duration::from_secs(60))
    }

    /// `sg-agent ARGS`, which must exit 0; its stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let o = self.agent(args);
        assert!(
            o.status.success(),
            "sg-agent {args:?} failed:\n{}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `sg-agent --json ARGS`, parsed.
    pub fn agent_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.agent_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON of {args:?}: {e}\n{out}"))
    }

    pub fn apply(&self, policy: &Path) -> serde_json::Value {
        self.agent_json(&["apply", policy.to_str().unwrap()])
    }

    /// Starts `sg-agent ARGS` in srv in the background.
    pub fn agent_bg(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> Bg {
        let mut c = self.srv.cmd(crate::agent_bin());
        c.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
        let f = std::fs::File::create(log).unwrap();
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f));
        let child = c.spawn().expect("spawn sg-agent");
        Bg {
            child,
            what: format!("sg-agent {args:?}"),
        }
    }

    /// One TCP connect + echo from cli (source address `src` or the default), 1 s timeout.
    pub fn tcp(&self, port: u16, src: Option<&str>) -> bool {
        self.probe("tcp", SRV, port, src)
    }

    pub fn tcp6(&self, port: u16) -> bool {
        self.probe("tcp", SRV6, port, None)
    }

    pub fn udp(&self, port: u16) -> bool {
        self.probe("udp", SRV, port, None)
    }

    /// One TCP connect + echo from cli to any address.
    pub fn tcp_to(&self, host: &str, port: u16) -> bool {
        self.probe("tcp", host, port, None)
    }

    fn probe(&self, mode: &str, host: &str, port: u16, src: Option<&str>) -> bool {
        let mut c = self.cli.cmd("python3");
        c.arg(self.dir.join("probe.py"))
            .args([mode, host, &port.to_string()]);
        if let Some(s) = src {
            c.arg(s);
        }
        run_bounded(c, Duration::from_secs(10)).status.success()
    }

    /// One ping from cli (from `src` when given), 1 s timeout.
    pub fn ping(&self, src: Option<&str>) -> bool {
        let mut c = self.cli.cmd("ping");
        c.args(["-c", "1", "-W", "1", "-n"]);
        if let Some(s) = src {
            c.args(["-I", s]);
        }
        c.arg(SRV);
        run_bounded(c, Duration::from_secs(5)).status.success()
    }

    /// A python probe in the background (stream, until-tcp, hold).
    pub fn probe_bg(&self, args: &[&str]) -> Child {
        self.python(&self.cli, "probe.py", args)
    }

    /// The pinned link files (sorted names).
    pub fn link_pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.pins.join("links"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The XDP program id on srv's `dev` (0 when none), from `ip -d link show`.
    pub fn xdp_prog_id(&self, dev: &str) -> u32 {
        let out = self
            .srv
            .run_ok(&["ip", "-d", "link", "show", dev], Duration::from_secs(5))
            .unwrap();
        out.split_whitespace()
            .collect::<Vec<_>>()
            .windows(3)
            .find(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
            .and_then(|w| w[2].parse().ok())
            .unwrap_or(0)
    }

    /// The JSON counters: (rule id -> packets), reason -> packets.
    pub fn counters(&self) -> serde_json::Value {
        self.agent_json(&["counters"])
    }

    /// Packets charged to one rule.
    pub fn rule_packets(&self, rule_id: &str) -> u64 {
        self.counted_rule("id", rule_id)["packets"]
            .as_u64()
            .unwrap()
    }

    /// The rule of the counters whose `field` is `value`.
    pub fn counted_rule(&self, field: &str, value: &str) -> serde_json::Value {
        let c = self.counters();
        let found = c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[field] == value)
            .cloned();
        found.unwrap_or_else(|| panic!("no rule with {field} {value:?} in counters: {c}"))
    }

    /// Waits until `cond` holds (bounded).
    pub fn wait(&self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
        wait_until(what, timeout, cond).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the log file `log` holds `needle` (bounded).
    pub fn wait_log(&self, what: &str, timeout: Duration, log: &Path, needle: &str) {
        self.wait(what, timeout, || log_text(log).contains(needle));
    }

    /// Starts `sg-agent daemon --config <cfg> <args>` logging to `log`.
    pub fn daemon_bg(&self, cfg: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Bg {
        let mut all = vec!["daemon", "--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        self.agent_bg(&all, env, log)
    }

    /// `daemon_bg`, then waits (60 s) for the daemon's first apply, which it reports with its
    /// "metrics on" line.
    pub fn daemon(&self, cfg: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Bg {
        let d = self.daemon_bg(cfg, args, env, log);
        self.wait_log(
            "the daemon's first apply",
            Duration::from_secs(60),
            log,
            "metrics on",
        );
        d
    }

    /// The bytes of the agent's state file.
    pub fn state_file(&self) -> Vec<u8> {
        std::fs::read(self.run.join("state.json")).unwrap()
    }

    /// The link pins are exactly those of `eth0` at `ifindex` (its XDP and tc links).
    pub fn assert_link_pins_of(&self, ifindex: u32, when: &str) {
        assert_eq!(
            self.link_pins(),
            vec![format!("{ifindex}-in-xdp"), format!("{ifindex}-out-tc")],
            "{when}"
        );
    }

    /// Nothing of sg is left for srv: no pins, no state.
    pub fn assert_clean(&self) {
        assert!(
            !self.pins.exists(),
            "pins left in {}: {:?}",
            self.pins.display(),
            std::fs::read_dir(&self.pins)
                .map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
        assert!(!self.run.exists(), "state left in {}", self.run.display());
    }

    /// The address of cli's eth0 peer device for the site's tests.
    pub fn srv_addr(&self) -> IpAddr {
        SRV.parse().unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.servers.clear();
        // Daemons first (they hold pins), then detach, then whatever is still there.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", self.srv.name()])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain syscall on a process inside our test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let mut c = self.srv.cmd(crate::agent_bin());
        c.arg("detach").stdout(Stdio::null()).stderr(Stdio::null());
        let _ = c.status();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.run);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ip` output has the XDP mode in it: "xdp" (native), "xdpgeneric" (SKB).
pub fn xdp_mode(ns: &Netns, dev: &str) -> String {
    let out = ns
        .run_ok(&["ip", "link", "show", dev], Duration::from_secs(5))
        .unwrap();
    if out.contains("xdpgeneric") {
        "generic".into()
    } else if out.contains(" xdp ") || out.contains("xdp/id") {
        "native".into()
    } else {
        "none".into()
    }
}

/// Reads a Python probe's last stdout line as JSON.
pub fn probe_result(child: Child, timeout: Duration) -> serde_json::Value {
    let mut child = child;
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!("probe did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "probe output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sums kernel TCP counters (/proc/net/snmp "Tcp:" row) in a namespace.
pub fn tcp_snmp(ns: &Netns) -> std::collections::BTreeMap<String, i64> {
    proc_net_counters(ns, "/proc/net/snmp", "Tcp:")
}

/// Kernel TCP extension counters (/proc/net/netstat "TcpExt:") in a namespace.
pub fn tcp_ext(ns: &Netns) -> std::collections::BTreeMap<String, i64> {
    proc_net_counters(ns, "/proc/net/netstat", "TcpExt:")
}

/// One row of a /proc/net counter file (a line of names, then a line of values, both
/// starting with `row`), by name.
fn proc_net_counters(ns: &Netns, file: &str, row: &str) -> std::collections::BTreeMap<String, i64> {
    let out = ns.run_ok(&["cat", file], Duration::from_secs(5)).unwrap();
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(row)).collect();
    let names: Vec<&str> = rows[0].split_whitespace().skip(1).collect();
    let vals: Vec<i64> = rows[1]
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    names.into_iter().map(String::from).zip(vals).collect()
}

/// The site's policy: sg-web on web-1 (the `srv` namespace) with the ingress rules of A and
/// `$more` rules after them.
macro_rules! web_policy {
    ($more:literal) => {
        concat!(
            r#"
security_groups:
  - id: sg-web
    ingress:
      - {protocol: tcp, ports: 5001, source: 192.0.2.0/24, description: app}
      - {protocol: icmp, type: 8, source: 192.0.2.10/32, description: ping}
      - {protocol: tcp, ports: 5001, source: "2001:db8:10::/64", description: app6}
"#,
            $more,
            r#"instances:
  - name: web-1
    addresses: [192.0.2.11, "2001:db8:10::11"]
    groups: [sg-web]
"#
        )
    };
}

/// Policy A: tcp 5001 from the subnet (tracked), ping from cli's first address.
pub const POLICY_A: &str = web_policy!("");

/// Policy B: A plus tcp 5002 (a port only B allows).
pub const POLICY_B: &str = web_policy!(
    "      - {protocol: tcp, ports: 5002, source: 192.0.2.0/24, description: only in B}\n"
);

/// The ports the site's server listens on: 5001 (A and B), 5002 (B only), 5003 (never
/// allowed), udp 5353 (never allowed).
pub const SERVER: &[&str] = &["tcp:5001", "tcp:5002", "tcp:5003", "udp:5353"];

/// Asserts what policy A enforces, with real traffic.
pub fn assert_enforces_a(site: &Site, when: &str) {
    assert!(site.tcp(5001, None), "{when}: tcp 5001 (allowed) failed");
    assert!(site.ping(None), "{when}: ping (allowed) failed");
    assert!(!site.tcp(5002, None), "{when}: tcp 5002 (B only) passed");
    assert!(!site.tcp(5003, None), "{when}: tcp 5003 (denied) passed");
}

/// Asserts what policy B enforces, with real traffic.
pub fn assert_enforces_b(site: &Site, when: &str) {
    assert!(site.tcp(5001, None), "{when}: tcp 5001 (allowed) failed");
    assert!(
        site.tcp(5002, None),
        "{when}: tcp 5002 (allowed by B) failed"
    );
    assert!(!site.tcp(5003, None), "{when}: tcp 5003 (denied) passed");
}

/// The id of the rule whose description is `desc` (from `counters`).
pub fn rule_id(site: &Site, desc: &str) -> String {
    site.counted_rule("description", desc)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The count of one pass/drop reason in `sg-agent --json counters` output.
pub fn reason(c: &serde_json::Value, name: &str) -> u64 {
    c["reasons"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name}: {c}"))
}
