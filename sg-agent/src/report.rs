//! Text formats the agent emits for other programs: Prometheus exposition, VPC-Flow-Log-style
//! lines, and the systemd readiness notification. Pure formatting (plus one datagram for
//! sd_notify); it must not read maps or policies itself.

use std::fmt::Write as _;
use std::net::IpAddr;

/// One Prometheus sample.
pub struct Sample<'a> {
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

/// One metric family in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus_family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[Sample]) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for s in samples {
        out.push_str(name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{k}=\"{v}\"");
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", s.value);
    }
}

/// One flow in VPC Flow Logs' default format (version 2 fields, sg's interface name in place
/// of the ENI id and `-` for account id):
/// `version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status`
pub struct FlowRecord {
    pub interface: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since the epoch.
    pub start: u64,
    pub end: u64,
    pub accept: bool,
}

impl FlowRecord {
    pub fn line(&self) -> String {
        format!(
            "2 - {} {} {} {} {} {} {} {} {} {} {} OK",
            self.interface,
            self.src,
            self.dst,
            self.sport,
            self.dport,
            self.proto,
            self.packets,
            self.bytes,
            self.start,
            self.end,
            if self.accept { "ACCEPT" } else { "REJECT" }
        )
    }
}

/// Tells systemd (Type=notify) something, when started by it; a no-op otherwise.
pub fn sd_notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_escapes_labels() {
        let mut s = String::new();
        prometheus_family(
            &mut s,
            "sg_rule_packets_total",
            "counter",
            "Packets allowed by a rule.",
            &[Sample {
                labels: vec![("description", "say \"hi\"\n".into())],
                value: 3.0,
            }],
        );
        assert_eq!(
            s,
            "# HELP sg_rule_packets_total Packets allowed by a rule.\n# TYPE sg_rule_packets_total counter\nsg_rule_packets_total{description=\"say \\\"hi\\\"\\n\"} 3\n"
        );
    }

    #[test]
    fn flow_log_line_has_vpc_field_order() {
        let r = FlowRecord {
            interface: "eth0".into(),
            src: "198.51.100.10".parse().unwrap(),
            dst: "192.0.2.11".parse().unwrap(),
            sport: 40000,
            dport: 443,
            proto: 6,
            packets: 10,
            bytes: 840,
            start: 1,
            end: 2,
            accept: true,
        };
        assert_eq!(
            r.line(),
            "2 - eth0 198.51.100.10 192.0.2.11 40000 443 6 10 840 1 2 ACCEPT OK"
        );
    }

    #[test]
    fn sd_notify_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        // SAFETY: test-local environment change before any thread reads it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &p) };
        sd_notify("READY=1").unwrap();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
