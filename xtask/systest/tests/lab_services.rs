//! The lab's real servers and clients work across namespaces without sg, and a probe of a
//! closed port really reports failure: the control for every end-to-end test.
use sg_lab::services::{self as svc, LabFiles};
use sg_lab::topology::{HostSpec, Lan};
use sg_testkit::netns::require_root;

#[test]
fn servers_and_clients_work_without_sg_and_closed_ports_fail() {
    require_root();
    let files = LabFiles::new().unwrap();
    let lan = Lan::new(&[
        HostSpec::new("srv", "192.0.2.11", "2001:db8:10::11"),
        HostSpec::new("cli", "198.51.100.10", "2001:db8:20::10"),
    ])
    .unwrap();
    let (srv, cli) = (lan.host("srv"), lan.host("cli"));
    let _https = svc::https_server(srv, &files, 443).unwrap();
    let _ssh = svc::sshd(srv, &files, 22).unwrap();
    let _echo = svc::tcp_echo(srv, 3306).unwrap();
    let _udp = svc::udp_echo(srv, &files, 5353).unwrap();
    for to in [srv.v4(), srv.v6()] {
        assert!(svc::curl(cli, to, 443, true).unwrap(), "https to {to}");
        assert!(svc::ssh(cli, &files, to, 22).unwrap(), "ssh to {to}");
        assert!(
            svc::tcp_exchange(cli, to, 3306).unwrap(),
            "tcp echo to {to}"
        );
        assert!(
            svc::udp_exchange(cli, &files, to, 5353, 64).unwrap(),
            "udp echo to {to}"
        );
        assert!(
            svc::udp_exchange(cli, &files, to, 5353, 4000).unwrap(),
            "fragmented udp to {to}"
        );
        assert!(svc::ping(cli, to).unwrap(), "ping to {to}");
        assert!(
            !svc::tcp_exchange(cli, to, 3307).unwrap(),
            "closed port 3307 on {to} reported open"
        );
        assert!(
            !svc::curl(cli, to, 8443, true).unwrap(),
            "closed https port on {to} reported open"
        );
    }
}
