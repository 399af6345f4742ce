//! Paths through the lab as fixture rows: who talks to whom with which real client, what EC2
//! would do (allow or deny, and the SEMANTICS id that says so), and what happened. The lab
//! prints them as its table; tests assert that every row is OK. One line of intent per row.
//!
//! Probes of one table run concurrently (a dropped packet costs the client's whole timeout);
//! each is an independent client process with its own 5-tuple.
//!
//! Owns the fixture shape, running and rendering; knows nothing of policies: what a path
//! should do is written by the caller, next to the policy it applies.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::services::{self as svc, LabFiles, Outcome};
use crate::topology::{Host, Lan, RoutedPath};

/// The real client a probe runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Svc {
    /// curl over TLS.
    Https(u16),
    /// curl over plain HTTP.
    Http(u16),
    /// ssh, running `echo`.
    Ssh(u16),
    /// nc to a TCP echo server (optionally from a fixed source port).
    Tcp { port: u16, sport: Option<u16> },
    /// The database on 3306: the mariadb client when the lab runs MariaDB, else nc to the
    /// echo server standing in for it.
    Db { port: u16, mariadb: bool },
    /// A UDP request/response (`size` bytes: large ones are fragmented).
    Udp {
        port: u16,
        size: usize,
        sport: Option<u16>,
    },
    /// ping / ping -6.
    Ping,
    /// A packet of an IP protocol without ports, echoed by the raw echo server.
    Raw(u8),
}

impl Svc {
    pub fn tcp(port: u16) -> Svc {
        Svc::Tcp { port, sport: None }
    }
    pub fn udp(port: u16) -> Svc {
        Svc::Udp {
            port,
            size: 64,
            sport: None,
        }
    }

    /// "https tcp/443", "ping icmpv6", ...
    pub fn label(&self, v6: bool) -> String {
        match self {
            Svc::Https(p) => format!("https tcp/{p}"),
            Svc::Http(p) => format!("http tcp/{p}"),
            Svc::Ssh(p) => format!("ssh tcp/{p}"),
            Svc::Tcp { port, sport: None } => format!("nc tcp/{port}"),
            Svc::Tcp {
                port,
                sport: Some(s),
            } => format!("nc tcp/{port} from port {s}"),
            Svc::Db {
                port,
                mariadb: true,
            } => format!("mariadb tcp/{port}"),
            Svc::Db {
                port,
                mariadb: false,
            } => format!("nc tcp/{port} (echo)"),
            Svc::Udp { port, size, sport } => {
                let mut s = format!("udp/{port}");
                if *size > 1400 {
                    let _ = write!(s, " {size} B (fragmented)");
                }
                if let Some(sp) = sport {
                    let _ = write!(s, " from port {sp}");
                }
                s
            }
            Svc::Ping => if v6 { "ping icmpv6" } else { "ping icmp" }.to_string(),
            Svc::Raw(p) => format!("ip proto {p}"),
        }
    }
}

/// What EC2 would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allow,
    Deny,
}

/// One path to try: `from` (a host name) to `to` (a host name, optionally `host/dev` for an
/// interface other than eth0, or an address literal), over IPv4 or IPv6.
#[derive(Clone, Debug)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub v6: bool,
    pub svc: Svc,
    pub expect: Expect,
    /// The SEMANTICS ids (and a word of why) that give the expectation, e.g. "R1".
    pub why: String,
}

/// The families a table line probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
    /// IPv4, then IPv6: two probes.
    Both,
}
pub use Fam::{Both, V4, V6};

/// One line of a probe table: from, to, families, client, what EC2 does, why (SEMANTICS ids).
/// `("my-ip", "web-1", Both, Svc::Ssh(22), Allow, "F5")`.
pub type Line<'a> = (&'a str, &'a str, Fam, Svc, Expect, &'a str);

/// The probes of a table, in its order (a `Both` line gives its IPv4 probe, then its IPv6 one).
pub fn table(lines: &[Line]) -> Vec<Probe> {
    let mut out = Vec::with_capacity(lines.len() * 2);
    for (from, to, fam, svc, expect, why) in lines {
        let families: &[bool] = match fam {
            V4 => &[false],
            V6 => &[true],
            Both => &[false, true],
        };
        for &v6 in families {
            out.push(Probe {
                from: (*from).into(),
                to: (*to).into(),
                v6,
                svc: svc.clone(),
                expect: *expect,
                why: (*why).into(),
            });
        }
    }
    out
}

/// One line of the table: the probe and what the client saw.
#[derive(Clone, Debug)]
pub struct Row {
    pub probe: Probe,
    pub addr: IpAddr,
    pub observed: Outcome,
}

impl Row {
    pub fn ok(&self) -> bool {
        match self.probe.expect {
            Expect::Allow => self.observed == Outcome::Reached,
            // A refusal means the packet got through to a closed port: not what sg must do.
            Expect::Deny => self.observed == Outcome::NoAnswer,
        }
    }
}

/// Where probes find their hosts.
pub trait Hosts: Sync {
    fn find(&self, name: &str) -> Option<&Host>;
}

impl Hosts for Lan {
    fn find(&self, name: &str) -> Option<&Host> {
        self.try_host(name)
    }
}

impl Hosts for RoutedPath {
    fn find(&self, name: &str) -> Option<&Host> {
        [&self.client, &self.server]
            .into_iter()
            .find(|h| h.name() == name)
    }
}

impl Hosts for [&Host] {
    fn find(&self, name: &str) -> Option<&Host> {
        self.iter().copied().find(|h| h.name() == name)
    }
}

fn target(hosts: &dyn Hosts, to: &str, v6: bool) -> Result<IpAddr> {
    if let Ok(a) = to.parse::<IpAddr>() {
        return Ok(a);
    }
    let (name, dev) = to.split_once('/').unwrap_or((to, "eth0"));
    let h = hosts
        .find(name)
        .with_context(|| format!("no host {name} in the lab"))?;
    h.addr_on(dev, v6)
        .with_context(|| format!("{name} has no device {dev}"))
}

/// Runs one probe.
pub fn run_probe(hosts: &dyn Hosts, files: &LabFiles, p: &Probe) -> Result<Row> {
    let from = hosts
        .find(&p.from)
        .with_context(|| format!("no host {} in the lab", p.from))?;
    let addr = target(hosts, &p.to, p.v6)?;
    let observed = match &p.svc {
        Svc::Https(port) => svc::curl_probe(from, addr, *port, true)?,
        Svc::Http(port) => svc::curl_probe(from, addr, *port, false)?,
        Svc::Ssh(port) => svc::ssh_probe(from, files, addr, *port)?,
        Svc::Tcp { port, sport } => svc::tcp_probe(from, addr, *port, *sport)?,
        Svc::Db {
            port,
            mariadb: true,
        } => svc::mysql_probe(from, addr, *port)?,
        Svc::Db {
            port,
            mariadb: false,
        } => svc::tcp_probe(from, addr, *port, None)?,
        Svc::Udp { port, size, sport } => svc::udp_probe(from, files, addr, *port, *size, *sport)?,
        Svc::Ping => svc::ping_probe(from, addr)?,
        Svc::Raw(proto) => {
            if svc::raw_probe(from, files, addr, *proto, None)?.reply {
                Outcome::Reached
            } else {
                Outcome::NoAnswer
            }
        }
    };
    Ok(Row {
        probe: p.clone(),
        addr,
        observed,
    })
}

/// Runs probes, up to `PARALLEL` at a time (a pool of workers taking the next probe), and
/// returns the rows in the probes' order.
pub fn run_probes(hosts: &dyn Hosts, files: &LabFiles, probes: &[Probe]) -> Result<Vec<Row>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const PARALLEL: usize = 12;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Row>>>> =
        Mutex::new((0..probes.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(probes.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(p) = probes.get(i) else { return };
                    let r = run_probe(hosts, files, p);
                    results.lock().expect("not poisoned")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("probe thread panicked"))))
        .collect()
}

/// The table: path, service, expected (with ids), observed, OK/MISMATCH.
pub fn render(rows: &[Row]) -> String {
    let path = |r: &Row| {
        let fam = if r.probe.v6 { "IPv6" } else { "IPv4" };
        format!("{} -> {} ({fam} {})", r.probe.from, r.probe.to, r.addr)
    };
    let expected = |r: &Row| {
        format!(
            "{} ({})",
            match r.probe.expect {
                Expect::Allow => "allow",
                Expect::Deny => "deny",
            },
            r.probe.why
        )
    };
    let w_path = rows.iter().map(|r| path(r).len()).max().unwrap_or(4).max(4);
    let w_svc = rows
        .iter()
        .map(|r| r.probe.svc.label(r.probe.v6).len())
        .max()
        .unwrap_or(7)
        .max(7);
    let w_exp = rows
        .iter()
        .map(|r| expected(r).len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w_path$}  {:<w_svc$}  {:<w_exp$}  {:<9}  result",
        "path", "service", "expected", "observed"
    );
    let _ = writeln!(out, "{}", "-".repeat(w_path + w_svc + w_exp + 9 + 8 + 8));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w_path$}  {:<w_svc$}  {:<w_exp$}  {:<9}  {}",
            path(r),
            r.probe.svc.label(r.probe.v6),
            expected(r),
            r.observed.word(),
            if r.ok() { "OK" } else { "MISMATCH" }
        );
    }
    out
}

/// Panics with the whole table when a row is not as expected (tests).
pub fn assert_rows(rows: &[Row]) {
    let bad = rows.iter().filter(|r| !r.ok()).count();
    assert!(
        bad == 0,
        "{bad} of {} paths not as expected:\n{}",
        rows.len(),
        render(rows)
    );
}

/// Runs the probes and asserts every row (tests).
pub fn expect_all(hosts: &dyn Hosts, files: &LabFiles, probes: &[Probe]) -> Vec<Row> {
    let rows = run_probes(hosts, files, probes).expect("probes ran");
    assert_rows(&rows);
    rows
}
