//! A CloudFormation template applied unedited on a host that is one of its instances:
//! `sg-agent apply TEMPLATE --as WebServer` puts the instance's groups on this host's uplink
//! (the device of its default route) and real traffic obeys them (E1, E5). Without `--as`
//! the template binds to nothing, and the error says how to bind it.

use sg_testkit::agent_harness::*;

/// Policy A of the harness as a template: tcp 5001 from the subnet, ping from cli. The
/// instance has no address (templates rarely give one): only `--as` places it.
const TEMPLATE: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: web
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 5001, ToPort: 5001, CidrIp: 192.0.2.0/24, Description: app}
        - {IpProtocol: icmp, FromPort: 8, ToPort: -1, CidrIp: 192.0.2.10/32, Description: ping}
        - {IpProtocol: tcp, FromPort: 5001, ToPort: 5001, CidrIpv6: "2001:db8:10::/64", Description: app6}
  WebServer:
    Type: AWS::EC2::Instance
    Properties:
      ImageId: ami-0123456789abcdef0
      SecurityGroupIds: [!Ref Web]
"#;

#[test]
fn e5_apply_as_an_instance_of_a_template_enforces_its_groups_on_this_hosts_uplink() {
    let site = Site::serving("as");
    // This host's uplink: the device of its default route.
    site.srv_ip(&["route", "add", "default", "via", CLI, "dev", "eth0"]);
    let t = site.policy("stack.yaml", TEMPLATE);
    let t = t.to_str().unwrap();
    assert!(
        site.tcp(5003, None),
        "control: tcp 5003 must pass without sg"
    );

    // Unedited and without --as: nothing binds; the hint names --as, --bind and the instance.
    let o = site.agent(&["apply", t]);
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("`--as ID`") && err.contains("`--bind ID=DEVICE`"),
        "{err}"
    );
    assert!(err.contains("its instances: WebServer"), "{err}");

    // --as names something that is not an instance: refused, with the candidates.
    let o = site.agent(&["check", t, "--as", "Web"]);
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--as Web: Web is an AWS::EC2::SecurityGroup"),
        "{err}"
    );
    assert!(err.contains("WebServer"), "{err}");

    // check shows where the instance lands; apply enforces it there.
    let out = site.agent_ok(&["check", t, "--as", "WebServer"]);
    assert!(out.contains("WebServer device eth0"), "{out}");
    let out = site.agent_ok(&["apply", t, "--as", "WebServer"]);
    assert!(out.contains("attached eth0"), "{out}");
    assert_enforces_a(&site, "after apply --as WebServer");
    assert!(site.tcp6(5001), "tcp 5001 over IPv6 (app6) failed");
}
