//! Real servers and real clients run inside lab hosts: an HTTPS server (Python's http.server
//! over TLS with a throw-away self-signed certificate), sshd, TCP and UDP echo servers; and
//! curl, ssh, nc, ping and a UDP client. Every client call is bounded in time.
//!
//! Clients report what happened (`Ok(true)` reached, `Ok(false)` did not) rather than
//! asserting: the lab prints a table, tests assert.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::netns::{Proc, wait_until};
use super::topology::Host;

/// Files shared by servers and clients of one lab run (keys, certificates, scripts).
pub struct LabFiles {
    dir: tempfile_dir::TempDir,
}

mod tempfile_dir {
    //! A tiny self-deleting directory (std only).
    use std::path::{Path, PathBuf};
    pub struct TempDir(PathBuf);
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
            Ok(TempDir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, socket, sys
port, cert, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from %s\n" % name).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = S(("::", port), H)
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert)
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
host, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(timeout)
payload = (b"sg-lab-" * (size // 7 + 1))[:size]
s.sendto(payload, (host, port))
try:
    data, _ = s.recvfrom(65535)
    sys.exit(0 if data == payload else 3)
except socket.timeout:
    sys.exit(1)
"#;

impl LabFiles {
    /// Writes the scripts, a TLS certificate and an SSH key pair.
    pub fn new() -> Result<LabFiles> {
        let dir = tempfile_dir::TempDir::new("files")?;
        let p = dir.path();
        std::fs::write(p.join("https_server.py"), HTTPS_SERVER)?;
        std::fs::write(p.join("udp_echo.py"), UDP_ECHO)?;
        std::fs::write(p.join("udp_client.py"), UDP_CLIENT)?;
        let pem = p.join("server.pem");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg("/CN=sg-lab")
            .arg("-keyout")
            .arg(&pem)
            .arg("-out")
            .arg(p.join("cert.pem"))
            .output()
            .context("openssl (for the lab's HTTPS certificate)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One file with key and certificate, as Python's load_cert_chain wants it.
        let mut both = std::fs::read(&pem)?;
        both.extend(std::fs::read(p.join("cert.pem"))?);
        std::fs::write(&pem, both)?;
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(p.join("id"))
            .output()
            .context("ssh-keygen")?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::copy(p.join("id.pub"), p.join("authorized_keys"))?;
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(p.join("host_key"))
            .output()?;
        anyhow::ensure!(out.status.success(), "ssh-keygen host key failed");
        Ok(LabFiles { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Waits until `port` (TCP) is listening inside the host.
fn wait_listening(h: &Host, port: u16, proc_: &mut Proc) -> Result<()> {
    let hex = format!(":{port:04X} ");
    wait_until(
        &format!("port {port} on {}", h.name()),
        Duration::from_secs(10),
        || {
            let out = h.ns.run(
                &["cat", "/proc/net/tcp6", "/proc/net/tcp"],
                Duration::from_secs(2),
            );
            out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.contains(&hex) && l.contains(" 0A "))
            })
            .unwrap_or(false)
        },
    )
    .or_else(|e| {
        proc_.check_running()?;
        Err(e)
    })
}

/// HTTPS (TLS) server answering `hello from NAME` on `port`, IPv4 and IPv6.
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
    let cfg = files.dir().join(format!("sshd_config_{}", h.name()));
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\n\
             AuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n\
             ClientAliveInterval 0\n",
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
    std::thread::sleep(Duration::from_millis(150));
    p.check_running()?;
    Ok(p)
}

fn url_host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// `curl -k https://ADDR:PORT/`: true when the body says hello.
pub fn curl(from: &Host, to: IpAddr, port: u16, tls: bool) -> Result<bool> {
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
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("hello from"))
}

/// `ssh root@ADDR echo ok` with the lab key: true when the remote command ran.
pub fn ssh(from: &Host, files: &LabFiles, to: IpAddr, port: u16) -> Result<bool> {
    let out = from.ns.run(
        &ssh_args(files, to, port, "echo sg-ok")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        Duration::from_secs(8),
    )?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sg-ok"))
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

/// TCP connect and echo round trip with nc: true when the echo came back.
pub fn tcp_exchange(from: &Host, to: IpAddr, port: u16) -> Result<bool> {
    let script = format!("echo sg-tcp-probe | nc -w 2 -q 1 {to} {port}");
    let out = from
        .ns
        .run(&["sh", "-c", &script], Duration::from_secs(5))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("sg-tcp-probe"))
}

/// One UDP request and its echoed response (`size` bytes; large sizes fragment).
pub fn udp_exchange(
    from: &Host,
    files: &LabFiles,
    to: IpAddr,
    port: u16,
    size: usize,
) -> Result<bool> {
    let out = from.ns.run(
        &[
            "python3",
            &s(&files.path("udp_client.py")),
            &to.to_string(),
            &port.to_string(),
            &size.to_string(),
            "2",
        ],
        Duration::from_secs(5),
    )?;
    Ok(out.status.success())
}

/// One ping (ICMP echo, or ICMPv6 echo for an IPv6 address).
pub fn ping(from: &Host, to: IpAddr) -> Result<bool> {
    let fam = if to.is_ipv6() { "-6" } else { "-4" };
    let out = from.ns.run(
        &["ping", fam, "-c", "1", "-W", "2", &to.to_string()],
        Duration::from_secs(4),
    )?;
    Ok(out.status.success())
}
