//! The systemd readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET` per state
//! change (READY, RELOADING, STOPPING, STATUS). Without the variable (not started by systemd)
//! it does nothing.

/// Tells systemd `state`, when started by it; a no-op otherwise.
pub(super) fn sd_notify(state: &str) -> std::io::Result<()> {
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
