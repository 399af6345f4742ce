//! Real servers and real clients run inside lab hosts: an HTTPS server (Python's http.server
//! over TLS with a throw-away self-signed certificate), sshd, MariaDB when installed, TCP and
//! UDP echo servers, a raw-IP echo for "other" protocols; and curl, ssh, nc, ping, the
//! mariadb client, UDP clients and a crafted-fragment sender. Every client call is bounded in
//! time.
//!
//! Clients report what happened ([`Outcome`]: reached, no answer, refused) rather than
//! asserting: the lab prints a table, tests assert. "No answer" is what a packet dropped by sg
//! looks like from the client (sg never answers); "refused" means the packet got through and
//! nothing listened, so a lab probes only ports where a server runs.
//!
//! Owns the servers' and clients' command lines and the small Python helpers they need; runs
//! everything inside a host's namespace (`ip netns exec`), never in the caller's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::topology::Host;
use sg_testkit::netns::{Proc, wait_until};

/// What a client saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange completed (the reply came back and was the expected one).
    Reached,
    /// Nothing came back in time: dropped on the way (by sg, in this lab).
    NoAnswer,
    /// The far host answered with a TCP reset or ICMP unreachable: nothing listens there.
    Refused,
}

impl Outcome {
    pub fn reached(self) -> bool {
        self == Outcome::Reached
    }
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Reached => "reached",
            Outcome::NoAnswer => "no answer",
            Outcome::Refused => "refused",
        }
    }
}

/// Files shared by servers and clients of one lab run (keys, certificates, scripts).
pub struct LabFiles {
    dir: tempfile_dir::TempDir,
}

mod tempfile_dir {
    //! A tiny self-deleting directory (std only).
    use std::path::{Path, PathBuf};
    pub struct TempDir(pub PathBuf, pub bool);
    impl TempDir {
        pub fn new(tag: &str) -> std::io::Result<TempDir> {
            let p = std::env::temp_dir().join(format!(
                "sg-lab-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p, true))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            if self.1 {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, socket, sys
port, cert, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/zero/"):
            n = int(self.path[6:])
            self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
            chunk = b"\0" * 65536
            while n > 0:
                self.wfile.write(chunk[:min(n, len(chunk))]); n -= len(chunk)
            return
        body = ("hello from %s\n" % name).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = S(("::", port), H)
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert)
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// Echoes every datagram from PORT; with ALT, also sends the same bytes from port ALT (a
/// "reply" that is not part of the client's 5-tuple, C2).
const UDP_ECHO: &str = r#"
import socket, sys
def sock(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
s = sock(int(sys.argv[1]))
alt = sock(int(sys.argv[2])) if len(sys.argv) > 2 else None
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
    if alt:
        alt.sendto(data, peer)
"#;

/// Exit 0: the echo came back; 1: nothing in time; 2: ICMP unreachable (refused); 3: wrong
/// bytes. A connected socket sees ICMP errors as ECONNREFUSED.
/// The UDP socket every UDP client script opens: the family of the address it talks to, bound
/// to a given port (with SO_REUSEADDR, so that a test can reuse a source port at once) or to
/// any. A module beside the scripts, which import it.
const SGLAB_UDP: &str = r#"
import socket
def udp_socket(v6, port=0):
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "0.0.0.0", port))
    return s
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
from sglab_udp import udp_socket
host, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sport = int(sys.argv[5]) if len(sys.argv) > 5 else 0
s = udp_socket(":" in host, sport)
s.settimeout(timeout)
s.connect((host, port))
payload = (b"sg-lab-" * (size // 7 + 1))[:size]
try:
    s.send(payload)
    data = s.recv(65535)
    sys.exit(0 if data == payload else 3)
except socket.timeout:
    sys.exit(1)
except ConnectionRefusedError:
    sys.exit(2)
"#;

/// Sends one datagram from an unconnected socket and prints the source port of every reply
/// that arrives within the timeout (the kernel would filter a connected socket's replies).
const UDP_REPLIES: &str = r#"
import socket, sys, time
from sglab_udp import udp_socket
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = udp_socket(":" in host)
s.sendto(b"sg-replies", (host, port))
end = time.time() + timeout
while True:
    left = end - time.time()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        break
    print(peer[1], flush=True)
"#;

/// Binds UDP PORT and exits 0 when a datagram arrives within the timeout, 1 otherwise.
/// Prints "ready" once bound.
const UDP_RECV: &str = r#"
import socket, sys
from sglab_udp import udp_socket
port, v6, timeout = int(sys.argv[1]), sys.argv[2] == "6", float(sys.argv[3])
s = udp_socket(v6, port)
s.settimeout(timeout)
print("ready", flush=True)
try:
    s.recvfrom(65535)
    sys.exit(0)
except socket.timeout:
    sys.exit(1)
"#;

/// Sends three datagrams from SPORT to HOST:PORT, 100 ms apart.
const UDP_SEND: &str = r#"
import sys, time
from sglab_udp import udp_socket
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = udp_socket(":" in host, sport)
for _ in range(3):
    s.sendto(b"sg-oneway", (host, port)); time.sleep(0.1)
"#;

/// Raw IP echo for a protocol without ports (C3, F1): answers each "sg-probe" packet of
/// protocol P with an "sg-reply" of protocol P and, given Q, also an "sg-other" of protocol Q.
const RAW_ECHO: &str = r#"
import socket, select, sys
p = int(sys.argv[1]); q = int(sys.argv[2]) if len(sys.argv) > 2 else 0
socks = {}
for fam in (socket.AF_INET, socket.AF_INET6):
    s = socket.socket(fam, socket.SOCK_RAW, p)
    o = socket.socket(fam, socket.SOCK_RAW, q) if q else None
    socks[s] = (fam, o)
while True:
    r, _, _ = select.select(list(socks), [], [])
    for s in r:
        fam, o = socks[s]
        data, peer = s.recvfrom(65535)
        if fam == socket.AF_INET:
            data = data[(data[0] & 15) * 4:]
        if not data.startswith(b"sg-probe"):
            continue
        s.sendto(b"sg-reply" + data[8:], (peer[0], 0))
        if o is not None:
            o.sendto(b"sg-other" + data[8:], (peer[0], 0))
"#;

/// Sends one "sg-probe" of protocol P to HOST and prints "reply" / "other" for each answer
/// of protocol P / Q that arrives from HOST within the timeout.
const RAW_PROBE: &str = r#"
import os, socket, select, sys, time
host, p, q, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_RAW, p)
o = socket.socket(fam, socket.SOCK_RAW, q) if q else None
token = os.urandom(6).hex().encode()
try:
    s.sendto(b"sg-probe" + token, (host, 0))
except OSError as e:
    # A packet dropped by a TC egress program comes back to a raw socket as ENOBUFS.
    print("send failed: %s" % e, file=sys.stderr)
    sys.exit(0)
want = socket.inet_pton(fam, host)
end = time.time() + timeout
seen = set()
while True:
    left = end - time.time()
    if left <= 0:
        break
    r, _, _ = select.select([x for x in (s, o) if x is not None], [], [], left)
    for x in r:
        data, peer = x.recvfrom(65535)
        if socket.inet_pton(fam, peer[0]) != want:
            continue
        if fam == socket.AF_INET:
            data = data[(data[0] & 15) * 4:]
        if data == b"sg-reply" + token and "reply" not in seen:
            seen.add("reply"); print("reply", flush=True)
        if data == b"sg-other" + token and "other" not in seen:
            seen.add("other"); print("other", flush=True)
    if "reply" in seen and (o is None or "other" in seen):
        break
"#;

/// Sends a lone non-first fragment (offset 1480 bytes, no more fragments) of a UDP datagram
/// to HOST, whose first fragment never comes (G1): the crafted header is the only way to send
/// one. IPv4 with IP_HDRINCL; IPv6 as a raw socket of next header 44 carrying the fragment
/// header.
const ORPHAN_FRAGMENT: &str = r#"
import os, socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
payload = b"sg-orphan-fragment" * 20
ident = int.from_bytes(os.urandom(4), "big")
if ":" in dst:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 44)
    frag = struct.pack("!BBHI", 17, 0, (1480 // 8) << 3, ident)
    s.sendto(frag + payload, (dst, 0))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xffff, 1480 // 8, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(hdr + payload, (dst, 0))
"#;

impl LabFiles {
    /// Writes the scripts, a TLS certificate and an SSH key pair.
    pub fn new() -> Result<LabFiles> {
        let dir = tempfile_dir::TempDir::new("files")?;
        let p = dir.path();
        for (name, text) in [
            ("https_server.py", HTTPS_SERVER),
            ("sglab_udp.py", SGLAB_UDP),
            ("udp_echo.py", UDP_ECHO),
            ("udp_client.py", UDP_CLIENT),
            ("udp_replies.py", UDP_REPLIES),
            ("udp_recv.py", UDP_RECV),
            ("udp_send.py", UDP_SEND),
            ("raw_echo.py", RAW_ECHO),
            ("raw_probe.py", RAW_PROBE),
            ("orphan_fragment.py", ORPHAN_FRAGMENT),
        ] {
            std::fs::write(p.join(name), text)?;
        }
        let pem = p.join("server.pem");
        run_tool(
            std::process::Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                ])
                .arg("/CN=sg-lab")
                .arg("-keyout")
                .arg(&pem)
                .arg("-out")
                .arg(p.join("cert.pem")),
            "openssl (for the lab's HTTPS certificate)",
        )?;
        // One file with key and certificate, as Python's load_cert_chain wants it.
        let mut both = std::fs::read(&pem)?;
        both.extend(std::fs::read(p.join("cert.pem"))?);
        std::fs::write(&pem, both)?;
        for key in ["id", "host_key"] {
            run_tool(
                std::process::Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(p.join(key)),
                &format!("ssh-keygen ({key})"),
            )?;
        }
        std::fs::copy(p.join("id.pub"), p.join("authorized_keys"))?;
        Ok(LabFiles { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the directory (keys, scripts, policy copy) in place on drop (`sg-lab --keep`).
    pub fn keep(&mut self) {
        self.dir.1 = false;
    }
}

/// Runs a set-up tool; its stderr is the error when it fails.
fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| what.to_string())?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A kind of socket a test server opens, as the kernel lists it under /proc/net.
#[derive(Clone, Copy)]
enum Bound {
    /// A TCP socket listening on the port (state 0A).
    TcpListen,
    /// A UDP socket bound to the port (state 07).
    Udp,
    /// A raw IPv6 socket of the protocol (raw sockets show their protocol as the local
    /// port; the raw echo opens its IPv6 sockets after its IPv4 ones).
    Raw6,
}

/// Waits until the host has a socket of `kind` on `port` (TCP: listening), so that a
/// probe sent at once finds the server; fails if the server exits first.
fn wait_bound(h: &Host, kind: Bound, port: u16, proc_: &mut Proc) -> Result<()> {
    let (files, state): (&[&str], _) = match kind {
        Bound::TcpListen => (&["/proc/net/tcp6", "/proc/net/tcp"], " 0A "),
        Bound::Udp => (&["/proc/net/udp6", "/proc/net/udp"], " 07 "),
        Bound::Raw6 => (&["/proc/net/raw6"], " 07 "),
    };
    let hex = format!(":{port:04X} ");
    wait_until(
        &format!("port {port} on {}", h.name()),
        Duration::from_secs(20),
        || {
            if proc_.check_running().is_err() {
                return true;
            }
            let args: Vec<&str> = std::iter::once("cat")
                .chain(files.iter().copied())
                .collect();
            let out = h.ns.run(&args, Duration::from_secs(2));
            out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.contains(&hex) && l.contains(state))
            })
            .unwrap_or(false)
        },
    )?;
    proc_.check_running()
}

fn wait_listening(h: &Host, port: u16, proc_: &mut Proc) -> Result<()> {
    wait_bound(h, Bound::TcpListen, port, proc_)
}

/// HTTPS (TLS) server answering `hello from NAME` on `port`, IPv4 and IPv6; `/zero/N` serves
/// N bytes (large transfers, I2).
pub fn https_server(h: &Host, files: &LabFiles, port: u16) -> Result<Proc> {
    let mut p = h.ns.spawn(&[
        "python3",
        &s(&files.path("https_server.py")),
        &port.to_string(),
        &s(&files.path("server.pem")),
        h.name(),
    ])?;
    wait_listening(h, port, &mut p)?;
    Ok(p)
}

/// Plain HTTP server (used as "something on the internet" for egress checks).
pub fn http_server(h: &Host, files: &LabFiles, port: u16) -> Result<Proc> {
    let mut p = h.ns.spawn(&[
        "python3",
        &s(&files.path("https_server.py")),
        &port.to_string(),
        "-",
        h.name(),
    ])?;
    wait_listening(h, port, &mut p)?;
    Ok(p)
}

/// sshd on `port`, key authentication only, with a private /run (unshare -m) so nothing is
/// created on the host.
pub fn sshd(h: &Host, files: &LabFiles, port: u16) -> Result<Proc> {
    let cfg = files.dir().join(format!("sshd_config_{}_{port}", h.name()));
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\n\
             AuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n\
             ClientAliveInterval 0\nMaxStartups 100\n",
            s(&files.path("host_key")),
            s(&files.path("authorized_keys"))
        ),
    )?;
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f {}",
        s(&cfg)
    );
    let mut p = h.ns.spawn(&[
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ])?;
    wait_listening(h, port, &mut p)?;
    Ok(p)
}

/// TCP echo server on `port` (IPv4 and IPv6).
pub fn tcp_echo(h: &Host, port: u16) -> Result<Proc> {
    let listen = format!("TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0");
    let mut p = h.ns.spawn(&["socat", &listen, "EXEC:cat"])?;
    wait_listening(h, port, &mut p)?;
    Ok(p)
}

/// UDP echo server on `port` (IPv4 and IPv6).
pub fn udp_echo(h: &Host, files: &LabFiles, port: u16) -> Result<Proc> {
    let mut p =
        h.ns.spawn(&["python3", &s(&files.path("udp_echo.py")), &port.to_string()])?;
    wait_bound(h, Bound::Udp, port, &mut p)?;
    Ok(p)
}

/// UDP echo server on `port` that also sends every echo from port `alt` (C2).
pub fn udp_echo_with_alt(h: &Host, files: &LabFiles, port: u16, alt: u16) -> Result<Proc> {
    let mut p = h.ns.spawn(&[
        "python3",
        &s(&files.path("udp_echo.py")),
        &port.to_string(),
        &alt.to_string(),
    ])?;
    for port in [port, alt] {
        wait_bound(h, Bound::Udp, port, &mut p)?;
    }
    Ok(p)
}

/// Raw-IP echo for protocol `proto`; with `other`, also answers with a packet of that
/// protocol (C3).
pub fn raw_echo(h: &Host, files: &LabFiles, proto: u8, other: Option<u8>) -> Result<Proc> {
    let mut args = vec![
        "python3".to_string(),
        s(&files.path("raw_echo.py")),
        proto.to_string(),
    ];
    if let Some(o) = other {
        args.push(o.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = h.ns.spawn(&args)?;
    for proto in std::iter::once(proto).chain(other) {
        wait_bound(h, Bound::Raw6, proto.into(), &mut p)?;
    }
    Ok(p)
}

/// True when MariaDB's server and client are installed (`cargo xtask lab` tries to install
/// them; the test suite never needs them).
pub fn mariadb_installed() -> bool {
    [
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadb-install-db",
        "/usr/bin/mariadb",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

/// A real MariaDB on `port`, IPv4 and IPv6 (`bind-address=*`), with a data directory in the
/// lab's files and a user `lab`/`lab` allowed from anywhere (sg decides who gets there).
pub fn mariadb(h: &Host, files: &LabFiles, port: u16) -> Result<Proc> {
    if !mariadb_installed() {
        bail!("MariaDB is not installed (mariadb-server)");
    }
    let dir = files.dir().join(format!("mariadb-{}", h.name()));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        "CREATE USER IF NOT EXISTS 'lab'@'%' IDENTIFIED BY 'lab';\n\
         CREATE USER IF NOT EXISTS 'lab'@'localhost' IDENTIFIED BY 'lab';\n",
    )?;
    h.ns.run_ok(
        &[
            "mariadb-install-db",
            "--no-defaults",
            &format!("--datadir={}", s(&data)),
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        Duration::from_secs(120),
    )
    .context("mariadb-install-db")?;
    let mut p = h.ns.spawn(&[
        "mariadbd",
        "--no-defaults",
        &format!("--datadir={}", s(&data)),
        "--user=root",
        &format!("--port={port}"),
        "--bind-address=*",
        &format!("--socket={}", s(&dir.join("mysqld.sock"))),
        &format!("--pid-file={}", s(&dir.join("mysqld.pid"))),
        &format!("--init-file={}", s(&init)),
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=16M",
    ])?;
    wait_listening(h, port, &mut p)?;
    Ok(p)
}

fn url_host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// `curl -k https://ADDR:PORT/`: reached when the body says hello.
pub fn curl_probe(from: &Host, to: IpAddr, port: u16, tls: bool) -> Result<Outcome> {
    let url = format!(
        "{}://{}:{port}/",
        if tls { "https" } else { "http" },
        url_host(to)
    );
    let out = from.ns.run(
        &[
            "curl",
            "-sk",
            "--connect-timeout",
            "2",
            "--max-time",
            "4",
            &url,
        ],
        Duration::from_secs(6),
    )?;
    Ok(
        if out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("hello from") {
            Outcome::Reached
        } else if out.status.code() == Some(7) {
            // curl: "Failed to connect" (a reset; a timeout is 28).
            Outcome::Refused
        } else {
            Outcome::NoAnswer
        },
    )
}

pub fn curl(from: &Host, to: IpAddr, port: u16, tls: bool) -> Result<bool> {
    Ok(curl_probe(from, to, port, tls)?.reached())
}

/// Downloads `bytes` bytes over HTTPS (`/zero/N`) and returns how many arrived before EOF or
/// the time limit: a large transfer for path MTU discovery (I2).
pub fn download(from: &Host, to: IpAddr, port: u16, bytes: u64, limit: Duration) -> Result<u64> {
    let url = format!("https://{}:{port}/zero/{bytes}", url_host(to));
    let secs = format!("{}", limit.as_secs().max(1));
    let out = from.ns.run(
        &[
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--connect-timeout",
            "3",
            "--max-time",
            &secs,
            &url,
        ],
        limit + Duration::from_secs(3),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().parse().unwrap_or(0))
}

/// The outcome of a client asked to print "sg-ok" from the server: reached when it did,
/// refused when its stderr holds `refused` (the client's words for a reset), else no answer.
fn sg_ok_outcome(out: &std::process::Output, refused: &str) -> Outcome {
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sg-ok") {
        Outcome::Reached
    } else if String::from_utf8_lossy(&out.stderr).contains(refused) {
        Outcome::Refused
    } else {
        Outcome::NoAnswer
    }
}

/// `ssh root@ADDR echo ok` with the lab key.
pub fn ssh_probe(from: &Host, files: &LabFiles, to: IpAddr, port: u16) -> Result<Outcome> {
    let out = from.ns.run(
        &ssh_args(files, to, port, "echo sg-ok")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        Duration::from_secs(8),
    )?;
    Ok(sg_ok_outcome(&out, "Connection refused"))
}

pub fn ssh(from: &Host, files: &LabFiles, to: IpAddr, port: u16) -> Result<bool> {
    Ok(ssh_probe(from, files, to, port)?.reached())
}

/// The argv of an ssh client running `remote_cmd`.
pub fn ssh_args(files: &LabFiles, to: IpAddr, port: u16, remote_cmd: &str) -> Vec<String> {
    vec![
        "ssh".into(),
        "-i".into(),
        s(&files.path("id")),
        "-p".into(),
        port.to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ConnectTimeout=3".into(),
        format!("root@{to}"),
        remote_cmd.into(),
    ]
}

/// An interactive ssh session running `cat` on the far end: every line sent comes back
/// (X1, X2: a live session held open across an apply).
pub fn ssh_session(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    port: u16,
) -> Result<sg_testkit::netns::Session> {
    let args = ssh_args(files, to, port, "cat");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sess = from.ns.session(&args)?;
    sess.wait_ready(Duration::from_secs(10))?;
    Ok(sess)
}

/// A TCP stream to an echo server held open (`socat - TCP:ADDR:PORT`).
pub fn tcp_session(from: &Host, to: IpAddr, port: u16) -> Result<sg_testkit::netns::Session> {
    let target = match to {
        IpAddr::V4(a) => format!("TCP4:{a}:{port}"),
        IpAddr::V6(a) => format!("TCP6:[{a}]:{port}"),
    };
    let mut sess = from.ns.session(&["socat", "-", &target])?;
    sess.wait_ready(Duration::from_secs(10))?;
    Ok(sess)
}

/// TCP connect and echo round trip with nc (optionally from a fixed source port, E6).
pub fn tcp_probe(from: &Host, to: IpAddr, port: u16, sport: Option<u16>) -> Result<Outcome> {
    let sp = sport.map(|p| format!("-p {p} ")).unwrap_or_default();
    let script = format!("echo sg-tcp-probe | nc -v -w 2 -q 1 {sp}{to} {port}");
    let out = from
        .ns
        .run(&["sh", "-c", &script], Duration::from_secs(5))?;
    let err = String::from_utf8_lossy(&out.stderr);
    Ok(
        if String::from_utf8_lossy(&out.stdout).contains("sg-tcp-probe") {
            Outcome::Reached
        } else if err.contains("refused") {
            Outcome::Refused
        } else {
            Outcome::NoAnswer
        },
    )
}

pub fn tcp_exchange(from: &Host, to: IpAddr, port: u16) -> Result<bool> {
    Ok(tcp_probe(from, to, port, None)?.reached())
}

/// The mariadb client runs `SELECT 'sg-ok'` as user lab.
pub fn mysql_probe(from: &Host, to: IpAddr, port: u16) -> Result<Outcome> {
    let out = from.ns.run(
        &[
            "mariadb",
            "--no-defaults",
            "-h",
            &to.to_string(),
            "-P",
            &port.to_string(),
            "-u",
            "lab",
            "-plab",
            "--connect-timeout=3",
            "-N",
            "-B",
            "-e",
            "SELECT CONCAT('sg-','ok')",
        ],
        Duration::from_secs(8),
    )?;
    Ok(sg_ok_outcome(&out, "(111)"))
}

/// One UDP request and its echoed response (`size` bytes; large sizes fragment, G1),
/// optionally from a fixed source port.
pub fn udp_probe(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    port: u16,
    size: usize,
    sport: Option<u16>,
) -> Result<Outcome> {
    let mut args = vec![
        "python3".to_string(),
        s(&files.path("udp_client.py")),
        to.to_string(),
        port.to_string(),
        size.to_string(),
        "2".to_string(),
    ];
    if let Some(p) = sport {
        args.push(p.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = from.ns.run(&args, Duration::from_secs(5))?;
    Ok(match out.status.code() {
        Some(0) => Outcome::Reached,
        Some(2) => Outcome::Refused,
        _ => Outcome::NoAnswer,
    })
}

pub fn udp_exchange(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    port: u16,
    size: usize,
) -> Result<bool> {
    Ok(udp_probe(from, files, to, port, size, None)?.reached())
}

/// Sends one datagram to `to:port` and returns the source ports of the replies that arrived
/// within `wait` (an echo from `port`, maybe others).
pub fn udp_replies(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    port: u16,
    wait: Duration,
) -> Result<Vec<u16>> {
    let out = from.ns.run(
        &[
            "python3",
            &s(&files.path("udp_replies.py")),
            &to.to_string(),
            &port.to_string(),
            &format!("{:.1}", wait.as_secs_f64()),
        ],
        wait + Duration::from_secs(3),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// `from` sends three datagrams from source port `sport` to `to_addr:dport` while `to`
/// listens on `dport`: true when one arrived. The far end sends nothing back, so this
/// observes one direction alone (e.g. a DHCP server's 67 -> 68 answer, N2).
pub fn udp_one_way(
    from: &Host,
    files: &LabFiles,
    sport: u16,
    to: &Host,
    to_addr: IpAddr,
    dport: u16,
) -> Result<bool> {
    use std::io::BufRead;
    let mut listener = to
        .ns
        .cmd("timeout")
        .args(["-s", "KILL", "6", "python3"])
        .arg(files.path("udp_recv.py"))
        .arg(dport.to_string())
        .arg(if to_addr.is_ipv6() { "6" } else { "4" })
        .arg("3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawn the UDP listener")?;
    let mut ready = String::new();
    let stdout = listener.stdout.take().context("listener stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        let _ = listener.kill();
        let _ = listener.wait();
        bail!("the UDP listener on {}:{dport} did not start", to.name());
    }
    from.ns.run_ok(
        &[
            "python3",
            &s(&files.path("udp_send.py")),
            &to_addr.to_string(),
            &dport.to_string(),
            &sport.to_string(),
        ],
        Duration::from_secs(5),
    )?;
    let status = listener.wait()?;
    Ok(status.success())
}

/// What came back from a raw-protocol probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawReplies {
    /// The answer of the probe's own protocol.
    pub reply: bool,
    /// The answer of the other protocol the echo was told to send.
    pub other: bool,
}

/// Sends one packet of protocol `proto` (no ports) to `to`, whose [`raw_echo`] answers.
pub fn raw_probe(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    proto: u8,
    other: Option<u8>,
) -> Result<RawReplies> {
    let out = from.ns.run(
        &[
            "python3",
            &s(&files.path("raw_probe.py")),
            &to.to_string(),
            &proto.to_string(),
            &other.unwrap_or(0).to_string(),
            "1.5",
        ],
        Duration::from_secs(5),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "raw probe from {} failed: {}",
            from.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(RawReplies {
        reply: text.lines().any(|l| l == "reply"),
        other: text.lines().any(|l| l == "other"),
    })
}

/// Sends a non-first IP fragment whose first fragment never existed (G1).
pub fn send_orphan_fragment(from: &Host, files: &LabFiles, to: IpAddr) -> Result<()> {
    from.ns.run_ok(
        &[
            "python3",
            &s(&files.path("orphan_fragment.py")),
            &from.addr(to.is_ipv6()).to_string(),
            &to.to_string(),
        ],
        Duration::from_secs(5),
    )?;
    Ok(())
}

/// One ping (ICMP echo, or ICMPv6 echo for an IPv6 address).
pub fn ping_probe(from: &Host, to: IpAddr) -> Result<Outcome> {
    let fam = if to.is_ipv6() { "-6" } else { "-4" };
    let out = from.ns.run(
        &["ping", fam, "-c", "1", "-W", "2", &to.to_string()],
        Duration::from_secs(4),
    )?;
    Ok(if out.status.success() {
        Outcome::Reached
    } else {
        Outcome::NoAnswer
    })
}

pub fn ping(from: &Host, to: IpAddr) -> Result<bool> {
    Ok(ping_probe(from, to)?.reached())
}
