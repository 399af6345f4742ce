//! CloudFormation evaluated as CloudFormation evaluates it: parameters (Default, overrides,
//! lists, AllowedValues), pseudo parameters, conditions and each intrinsic function, imports,
//! and what is not CloudFormation. Each test pins one behaviour, with the rules it produces or
//! the located error (line:col, hint) it reports.

use sg_agent::config::{Diagnostic, Loaded, TemplateInputs, load_str_with};
use sg_agent::policy::{Direction, GroupId, Policy};
use sg_testkit::{rule_text, template_inputs};

fn load(text: &str, opts: &[&str]) -> Loaded {
    load_str_with(text, "t.yaml", &template_inputs(opts))
        .unwrap_or_else(|d| panic!("must load:\n{d}\n--- input ---\n{text}"))
}

/// The first error, as `LINE:COL: message` with its hint.
fn first_error(text: &str, opts: &[&str]) -> Diagnostic {
    let Err(d) = load_str_with(text, "t.yaml", &template_inputs(opts)) else {
        panic!("must fail:\n{text}")
    };
    d.errors().next().unwrap().clone()
}

fn at(d: &Diagnostic) -> (u32, u32) {
    (d.origin.line, d.origin.column)
}

/// The first error, which must stand at `place` (line, column) and say `words`.
fn error_at(text: &str, opts: &[&str], place: (u32, u32), words: &str) -> Diagnostic {
    let e = first_error(text, opts);
    assert_eq!(at(&e), place, "{e}");
    assert!(e.message.contains(words), "{e}");
    e
}

/// `text` with `from` replaced by `to`; `from` must be in it, or the edit tests nothing.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the template");
    text.replace(from, to)
}

fn warnings(l: &Loaded) -> Vec<String> {
    l.warnings.iter().map(|w| w.message.clone()).collect()
}

/// The rules of group `g` in `dir`, as `rule_text` writes them.
fn rules(p: &Policy, g: &str, dir: Direction) -> Vec<String> {
    let grp = p
        .groups
        .get(&GroupId(g.into()))
        .unwrap_or_else(|| panic!("no group {g}: {:?}", p.groups.keys().collect::<Vec<_>>()));
    let list = match dir {
        Direction::Ingress => &grp.ingress,
        Direction::Egress => &grp.egress,
    };
    list.iter().map(rule_text).collect()
}

fn ingress(p: &Policy, g: &str) -> Vec<String> {
    rules(p, g, Direction::Ingress)
}

const SSH: &str = r#"
Parameters:
  SSHLocation:
    Type: String
    Default: 0.0.0.0/0
  Ports:
    Type: CommaDelimitedList
    Default: "80, 443"
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: web
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: !Ref SSHLocation}
        - IpProtocol: tcp
          FromPort: !Select [1, !Ref Ports]
          ToPort: !Select [1, !Ref Ports]
          CidrIp: 192.0.2.0/24
"#;

#[test]
fn a_parameter_takes_its_default_and_a_default_opening_to_the_world_is_warned() {
    let l = load(SSH, &[]);
    assert_eq!(
        ingress(&l.policy, "Web"),
        ["tcp 22-22 0.0.0.0/0", "tcp 443-443 192.0.2.0/24"]
    );
    let w = l
        .warnings
        .iter()
        .find(|w| w.message.contains("Default of parameter SSHLocation"))
        .expect("the warning");
    assert_eq!(at(w), (15, 63), "{w}");
    assert!(
        w.hint
            .as_deref()
            .unwrap()
            .contains("--parameter SSHLocation=")
    );
    let used: Vec<(String, String, String)> = l
        .parameters
        .iter()
        .map(|u| (u.name.clone(), u.value.clone(), u.source.clone()))
        .collect();
    assert_eq!(
        used,
        [
            ("Ports".into(), "80, 443".into(), "default".into()),
            ("SSHLocation".into(), "0.0.0.0/0".into(), "default".into()),
        ]
    );
    assert!(
        l.summary()
            .contains("SSHLocation = \"0.0.0.0/0\" (default)")
    );
}

#[test]
fn a_parameter_given_overrides_its_default_and_says_so() {
    let l = load(SSH, &["SSHLocation=198.51.100.0/24", "Ports=8080,8443"]);
    assert_eq!(
        ingress(&l.policy, "Web"),
        ["tcp 22-22 198.51.100.0/24", "tcp 8443-8443 192.0.2.0/24"]
    );
    assert!(
        !warnings(&l)
            .iter()
            .any(|w| w.contains("Default of parameter"))
    );
    assert!(
        l.summary()
            .contains("SSHLocation = \"198.51.100.0/24\" (--parameter)")
    );
}

#[test]
fn a_parameter_the_template_does_not_declare_or_allow_is_refused() {
    let e = first_error(SSH, &["SSHLocatoin=198.51.100.0/24"]);
    assert!(
        e.message
            .contains("parameter SSHLocatoin, which this template does not declare"),
        "{e}"
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean SSHLocation?"));
    let allowed = edit(
        SSH,
        "    Default: 0.0.0.0/0\n",
        "    Default: 0.0.0.0/0\n    AllowedValues: [0.0.0.0/0, 192.0.2.0/24]\n",
    );
    let not_allowed = "not one of its AllowedValues";
    error_at(
        &allowed,
        &["SSHLocation=198.51.100.0/24"],
        (4, 5),
        not_allowed,
    );
}

#[test]
fn a_parameter_without_default_or_value_is_an_error_where_it_is_used() {
    let t = edit(SSH, "    Default: 0.0.0.0/0\n", "");
    let unknown = "CidrIp is unknown: parameter SSHLocation has no Default and no value was given";
    let e = error_at(&t, &[], (14, 63), unknown);
    assert!(e.hint.unwrap().contains("--parameter SSHLocation=VALUE"));
    load(&t, &["SSHLocation=192.0.2.7/32"]);
}

const CONDITIONS: &str = r#"
Parameters:
  Env: {Type: String, Default: prod}
  Open: {Type: String, Default: "false"}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  IsOpen: !Equals [!Ref Open, "true"]
  ProdAndOpen: !And [!Condition IsProd, !Condition IsOpen]
  ProdOrOpen: {"Fn::Or": [{Condition: IsProd}, {Condition: IsOpen}]}
  NotProd: !Not [!Condition IsProd]
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: web
      SecurityGroupIngress:
        - !If [ProdOrOpen, {IpProtocol: tcp, FromPort: 443, ToPort: 443, CidrIp: 192.0.2.0/24}, !Ref AWS::NoValue]
        - !If [ProdAndOpen, {IpProtocol: tcp, FromPort: 80, ToPort: 80, CidrIp: 0.0.0.0/0}, !Ref AWS::NoValue]
        - IpProtocol: tcp
          FromPort: !If [IsProd, 5432, 3306]
          ToPort: !If [IsProd, 5432, 3306]
          CidrIp: 198.51.100.0/24
      SecurityGroupEgress: !If [NotProd, !Ref AWS::NoValue, []]
  Debug:
    Type: AWS::EC2::SecurityGroup
    Condition: NotProd
    Properties:
      GroupDescription: debug
"#;

#[test]
fn conditions_choose_values_remove_properties_and_leave_out_resources() {
    let l = load(CONDITIONS, &[]);
    let p = &l.policy;
    assert_eq!(
        ingress(p, "Web"),
        ["tcp 443-443 192.0.2.0/24", "tcp 5432-5432 198.51.100.0/24"]
    );
    // IsProd: the egress list is [] (none), not AWS's default.
    assert!(rules(p, "Web", Direction::Egress).is_empty());
    assert!(!p.groups.contains_key(&GroupId("Debug".into())));
    assert!(
        warnings(&l)
            .iter()
            .any(|w| w == "left out because their Condition is false: Debug")
    );

    let l = load(CONDITIONS, &["Env=dev", "Open=true"]);
    let p = &l.policy;
    assert_eq!(
        ingress(p, "Web"),
        ["tcp 443-443 192.0.2.0/24", "tcp 3306-3306 198.51.100.0/24"]
    );
    // NoValue removed SecurityGroupEgress: EC2's default egress (D2).
    assert_eq!(
        rules(p, "Web", Direction::Egress),
        ["all 0.0.0.0/0", "all ::/0"]
    );
    assert!(p.groups.contains_key(&GroupId("Debug".into())));
}

#[test]
fn a_condition_that_cannot_be_known_is_an_error_only_where_it_decides_something() {
    let t = edit(
        CONDITIONS,
        "  Env: {Type: String, Default: prod}",
        "  Env: {Type: String}",
    );
    let no_default = "condition IsProd: parameter Env has no Default";
    error_at(&t, &[], (17, 11), no_default);
    let cyclic = edit(
        CONDITIONS,
        "IsProd: !Equals [!Ref Env, prod]",
        "IsProd: !Condition NotProd",
    );
    let e = first_error(&cyclic, &[]);
    assert!(e.message.contains("depends on itself"), "{e}");
}

const FUNCTIONS: &str = r#"
Mappings:
  Net:
    us-east-1: {Office: 192.0.2.0/24}
    eu-west-1: {Office: 198.51.100.0/24}
Conditions:
  Encodes: !Equals [!Base64 "abc", "YWJj"]
  ThreeZones: !Equals [!Select [2, !GetAZs ""], !Sub "${AWS::Region}c"]
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: !Sub "web in ${AWS::Region}"
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 22, ToPort: 22, CidrIp: !FindInMap [Net, !Ref "AWS::Region", Office]}
        - {IpProtocol: tcp, FromPort: 80, ToPort: 80, CidrIp: !Select [1, !Cidr [203.0.113.0/24, 4, 6]]}
        - {IpProtocol: tcp, FromPort: 81, ToPort: 81, CidrIp: !Join ["/", [203.0.113.9, "32"]]}
        - {IpProtocol: tcp, FromPort: 82, ToPort: 82, CidrIp: !Select [0, !Split [",", "203.0.113.10/32,x"]]}
        - {IpProtocol: tcp, FromPort: 83, ToPort: 83, CidrIp: !Sub ["${Net}.11/32", {Net: 203.0.113}]}
        - {IpProtocol: tcp, FromPort: 84, ToPort: 84, CidrIp: !If [Encodes, 203.0.113.12/32, 203.0.113.13/32]}
        - {IpProtocol: tcp, FromPort: 85, ToPort: 85, CidrIp: !If [ThreeZones, 203.0.113.14/32, 203.0.113.15/32]}
  App:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: app
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 8080, ToPort: 8080, SourceSecurityGroupId: !Select [0, !Split [",", !GetAtt Web.GroupId]]}
"#;

#[test]
fn the_intrinsic_functions_evaluate_as_cloudformation_documents_them() {
    let l = load(FUNCTIONS, &[]);
    assert_eq!(
        ingress(&l.policy, "Web"),
        [
            "tcp 22-22 192.0.2.0/24",
            "tcp 80-80 203.0.113.64/26",
            "tcp 81-81 203.0.113.9/32",
            "tcp 82-82 203.0.113.10/32",
            "tcp 83-83 203.0.113.11/32",
            "tcp 84-84 203.0.113.12/32",
            "tcp 85-85 203.0.113.14/32",
        ]
    );
    assert_eq!(ingress(&l.policy, "App"), ["tcp 8080-8080 Web"]);
    assert_eq!(
        l.policy.groups[&GroupId("Web".into())].description,
        "web in us-east-1"
    );
    // --region: AWS::Region, FindInMap's key, the description.
    let l = load(FUNCTIONS, &["region:eu-west-1"]);
    assert_eq!(ingress(&l.policy, "Web")[0], "tcp 22-22 198.51.100.0/24");
    assert!(
        l.summary()
            .contains("AWS::Region = \"eu-west-1\" (--region)")
    );
}

#[test]
fn a_function_that_fails_is_a_located_error_with_its_reason() {
    let cases: &[(&str, &str, (u32, u32), &str)] = &[
        (
            "!FindInMap [Net, !Ref \"AWS::Region\", Office]",
            "!FindInMap [Net, nowhere, Office]",
            (15, 63),
            "Mappings has no Net.nowhere.Office",
        ),
        (
            "!Select [1, !Cidr [203.0.113.0/24, 4, 6]]",
            "!Select [9, !Cidr [203.0.113.0/24, 4, 6]]",
            (16, 63),
            "Fn::Select index 9 is out of range: the list has 4 items",
        ),
        (
            "!Select [1, !Cidr [203.0.113.0/24, 4, 6]]",
            "!Select [1, !Cidr [203.0.113.0/24, 8, 6]]",
            (16, 63),
            "203.0.113.0/24 holds 4 /26 subnets, not 8",
        ),
        (
            "!Join [\"/\", [203.0.113.9, \"32\"]]",
            "!Join [\"/\", [!GetAtt App.VpcId, \"32\"]]",
            (17, 63),
            "an attribute of a resource (Fn::GetAtt) is known only once the stack is deployed",
        ),
        (
            "!Sub [\"${Net}.11/32\", {Net: 203.0.113}]",
            "!Sub \"${Nothing}.11/32\"",
            (19, 63),
            "${Nothing} in Fn::Sub names no parameter",
        ),
    ];
    for (from, to, place, msg) in cases {
        let t = edit(FUNCTIONS, from, to);
        let e = error_at(&t, &[], *place, msg);
        assert!(e.hint.is_some(), "{e}");
    }
}

const IMPORTS: &str = r#"
Parameters:
  Parent: {Type: String}
  ClientGroup: {Type: "AWS::EC2::SecurityGroup::Id"}
Resources:
  Db:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: db
      VpcId: {"Fn::ImportValue": !Sub "${Parent}-VPC"}
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 5432, ToPort: 5432, SourceSecurityGroupId: !ImportValue app-ClientSecurityGroup}
        - {IpProtocol: tcp, FromPort: 5433, ToPort: 5433, SourceSecurityGroupId: {"Fn::ImportValue": !Sub "${Parent}-Bastion"}}
        - {IpProtocol: tcp, FromPort: 5434, ToPort: 5434, SourceSecurityGroupId: !Ref ClientGroup}
"#;

#[test]
fn an_import_or_group_parameter_without_value_is_a_group_defined_elsewhere() {
    let l = load(IMPORTS, &[]);
    assert_eq!(
        ingress(&l.policy, "Db"),
        [
            "tcp 5432-5432 app-ClientSecurityGroup",
            "tcp 5433-5433 Parent-Bastion",
            "tcp 5434-5434 ClientGroup"
        ]
    );
    let w = warnings(&l);
    assert!(w.iter().any(|w| w.starts_with("Fn::ImportValue app-ClientSecurityGroup is an export of another stack, unknown here: taken as a security group `app-ClientSecurityGroup` defined elsewhere")), "{w:?}");
    // VpcId is not read: its import is nobody's concern.
    assert!(!w.iter().any(|w| w.contains("VPC")), "{w:?}");
    for g in ["app-ClientSecurityGroup", "Parent-Bastion", "ClientGroup"] {
        let grp = &l.policy.groups[&GroupId(g.into())];
        assert!(grp.ingress.is_empty() && grp.egress.is_empty());
    }
    let l = load(
        IMPORTS,
        &[
            "Parent=net",
            "ClientGroup=sg-0123456789abcdef0",
            "import:app-ClientSecurityGroup=sg-0aaaaaaaaaaaaaaaa",
            "import:net-Bastion=sg-0bbbbbbbbbbbbbbbb",
        ],
    );
    assert_eq!(
        ingress(&l.policy, "Db"),
        [
            "tcp 5432-5432 sg-0aaaaaaaaaaaaaaaa",
            "tcp 5433-5433 sg-0bbbbbbbbbbbbbbbb",
            "tcp 5434-5434 sg-0123456789abcdef0"
        ]
    );
}

#[test]
fn an_unknown_import_where_an_address_is_needed_is_a_located_error() {
    let t = edit(
        IMPORTS,
        "SourceSecurityGroupId: !ImportValue app-ClientSecurityGroup",
        "CidrIp: !ImportValue net-Cidr",
    );
    let unknown = "CidrIp is unknown: Fn::ImportValue net-Cidr is an export of another stack";
    let e = error_at(&t, &[], (12, 67), unknown);
    assert_eq!(
        e.hint.as_deref(),
        Some("give its value: --import 'net-Cidr=VALUE'")
    );
    let l = load(&t, &["import:net-Cidr=192.0.2.0/24"]);
    assert_eq!(ingress(&l.policy, "Db")[0], "tcp 5432-5432 192.0.2.0/24");
}

#[test]
fn default_groups_by_name_or_vpc_attribute_and_one_line_for_ignored_resources() {
    let t = r#"
Resources:
  Vpc: {Type: AWS::EC2::VPC, Properties: {CidrBlock: 192.0.2.0/24}}
  Role: {Type: AWS::IAM::Role, Properties: {}}
  Fn1: {Type: AWS::Lambda::Function, Properties: {}}
  Fn2: {Type: AWS::Lambda::Function, Properties: {}}
  Setup: {Type: Custom::Setup, Version: "1.0", Properties: {ServiceToken: x}}
  Db:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: db
      SecurityGroupIngress:
        - {IpProtocol: tcp, FromPort: 3306, ToPort: 3306, SourceSecurityGroupName: default}
        - {IpProtocol: tcp, FromPort: 3307, ToPort: 3307, SourceSecurityGroupId: !GetAtt Vpc.DefaultSecurityGroup}
"#;
    let l = load(t, &[]);
    assert_eq!(
        ingress(&l.policy, "Db"),
        ["tcp 3306-3306 default", "tcp 3307-3307 default"]
    );
    let w = warnings(&l);
    let ignored: Vec<&String> = w.iter().filter(|w| w.contains("ignored")).collect();
    assert_eq!(
        ignored,
        [
            "5 resources of other types ignored (they do not change security groups): AWS::EC2::VPC, AWS::IAM::Role, AWS::Lambda::Function x2, Custom::Setup"
        ]
    );
}

#[test]
fn a_rain_module_is_named_as_what_it_is() {
    let t = r#"
Modules: {}
Resources:
  Network:
    Type: !Rain::Module ../vpc.yml
  Web: {Type: AWS::EC2::SecurityGroup, Properties: {GroupDescription: web}}
"#;
    let d = load_str_with(t, "t.yaml", &TemplateInputs::default()).unwrap_err();
    let errors: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(at(errors[0]), (2, 1));
    assert!(
        errors[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("`Modules` is Rain's")
    );
    assert_eq!(at(errors[1]), (5, 11));
    assert!(errors[1].message.contains("resource Network is a Rain module (`!Rain::Module ../vpc.yml`): Rain's syntax, not CloudFormation"), "{}", errors[1]);
}

#[test]
fn template_inputs_for_a_file_that_is_not_a_template_are_refused() {
    let native = "security_groups:\n  - id: sg-web\n    description: web\n";
    let e = load_str_with(native, "p.yaml", &template_inputs(&["A=1"])).unwrap_err();
    assert!(e.to_string().contains("template inputs"), "{e}");
}

const INSTANCES: &str = r#"
Parameters:
  KeyName: {Type: "AWS::EC2::KeyPair::KeyName"}
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties: {GroupDescription: web}
  WebServer:
    Type: AWS::EC2::Instance
    Properties:
      SecurityGroupIds: [!Ref Web]
      KeyName: !Ref KeyName
      Tags: [{Key: Name, Value: web-1}]
  Router:
    Type: AWS::EC2::Instance
    Properties:
      NetworkInterfaces:
        - {DeviceIndex: 0, GroupSet: [!Ref Web]}
        - {DeviceIndex: 1, GroupSet: [!Ref Web]}
"#;

#[test]
fn bind_names_the_local_device_of_a_template_interface_and_unread_properties_need_no_value() {
    let l = load(
        INSTANCES,
        &["bind:WebServer=veth-web", "bind:Router/eth1=veth-r1"],
    );
    let devices: Vec<(String, Option<String>)> = l
        .policy
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), i.device.clone()))
        .collect();
    assert_eq!(
        devices,
        [
            ("web-1".to_string(), Some("veth-web".to_string())),
            ("Router/eth0".to_string(), None),
            ("Router/eth1".to_string(), Some("veth-r1".to_string())),
        ]
    );
    // KeyName has no value, but sg does not read it: not an error, not listed as used.
    assert!(l.parameters.is_empty(), "{:?}", l.parameters);
    let no_such = "--bind WebSrever: no instance or network interface WebSrever";
    let e = error_at(INSTANCES, &["bind:WebSrever=eth0"], (1, 1), no_such);
    assert_eq!(e.hint.as_deref(), Some("did you mean WebServer?"));
    let e = first_error(INSTANCES, &["bind:Router=eth0"]);
    assert!(e.message.contains("the instance has 2 interfaces"), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("bind each: Router/eth0, Router/eth1")
    );
}

/// (interface, device) of each interface of the policy, in order.
fn devices(l: &Loaded) -> Vec<(String, Option<String>)> {
    l.policy
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), i.device.clone()))
        .collect()
}

fn dev(name: &str, device: Option<&str>) -> (String, Option<String>) {
    (name.to_string(), device.map(str::to_string))
}

#[test]
fn as_makes_this_host_the_instance_its_groups_on_the_default_route_device() {
    // E5: groups attach to interfaces: `--as WebServer` makes this host's uplink (the
    // default route's device) the instance's interface, by logical id or Name tag.
    for key in ["WebServer", "web-1"] {
        let l = load(INSTANCES, &[&format!("as:{key}"), "dev:eth0"]);
        assert_eq!(
            devices(&l),
            [
                dev("web-1", Some("eth0")),
                dev("Router/eth0", None),
                dev("Router/eth1", None)
            ]
        );
        let web = &l.policy.interfaces[0];
        assert_eq!(web.groups, [GroupId("Web".into())]);
    }
    // --bind names another device, and wins.
    let l = load(
        INSTANCES,
        &["as:WebServer", "bind:WebServer=veth-web", "dev:eth0"],
    );
    assert_eq!(devices(&l)[0], dev("web-1", Some("veth-web")));
    // IPv4 and IPv6 default routes through two devices: the interface is each of them.
    let l = load(INSTANCES, &["as:WebServer", "dev:eth0", "dev:eth1"]);
    let d = devices(&l);
    assert_eq!(d[0], dev("web-1", Some("eth0")));
    assert_eq!(d[3], dev("web-1@eth1", Some("eth1")));
    assert_eq!(l.policy.interfaces[3].groups, [GroupId("Web".into())]);
}

#[test]
fn as_an_instance_with_several_interfaces_needs_a_bind_for_each_but_the_first() {
    let e = first_error(INSTANCES, &["as:Router", "dev:eth0"]);
    assert_eq!(at(&e), (1, 1));
    assert_eq!(
        e.message,
        "--as Router: the instance's other interfaces need a device: Router/eth1"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("name each: --bind Router/eth1=DEVICE")
    );
    let l = load(
        INSTANCES,
        &["as:Router", "dev:eth0", "bind:Router/eth1=veth1"],
    );
    assert_eq!(
        devices(&l)[1..],
        [
            dev("Router/eth0", Some("eth0")),
            dev("Router/eth1", Some("veth1"))
        ]
    );
}

#[test]
fn as_a_network_interface_binds_it() {
    let t = r#"
Resources:
  Db:
    Type: AWS::EC2::SecurityGroup
    Properties: {GroupDescription: db}
  DbEni:
    Type: AWS::EC2::NetworkInterface
    Properties: {SubnetId: subnet-1, GroupSet: [!Ref Db]}
"#;
    let l = load(t, &["as:DbEni", "dev:ens5"]);
    assert_eq!(devices(&l), [dev("DbEni", Some("ens5"))]);
}

#[test]
fn as_refuses_what_is_not_an_instance_of_the_template_and_names_the_candidates() {
    let e = first_error(INSTANCES, &["as:WebSrever", "dev:eth0"]);
    assert_eq!(at(&e), (1, 1));
    assert_eq!(
        e.message,
        "--as WebSrever: no resource WebSrever in this template"
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean --as WebServer?"));
    // A group is not a host: located at the resource, with what --as takes.
    let e = first_error(INSTANCES, &["as:Web", "dev:eth0"]);
    assert_eq!(at(&e), (6, 5), "{e}");
    assert_eq!(
        e.message,
        "--as Web: Web is an AWS::EC2::SecurityGroup, not an instance or network interface"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("--as takes an AWS::EC2::Instance or AWS::EC2::NetworkInterface: Router, WebServer")
    );
    // No default route: which device is the uplink is not known; --bind says it.
    let e = first_error(INSTANCES, &["as:WebServer"]);
    assert!(e.message.contains("this host has no default route"), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("name the device: --as WebServer --bind WebServer=DEVICE")
    );
    let l = load(INSTANCES, &["as:WebServer", "bind:WebServer=eth3"]);
    assert_eq!(devices(&l)[0], dev("web-1", Some("eth3")));
    // An instance whose Condition is false is not in the stack.
    let t = r#"
Parameters:
  Env: {Type: String, Default: dev}
Conditions:
  Prod: !Equals [!Ref Env, prod]
Resources:
  Web:
    Type: AWS::EC2::SecurityGroup
    Properties: {GroupDescription: web}
  ProdServer:
    Type: AWS::EC2::Instance
    Condition: Prod
    Properties: {SecurityGroupIds: [!Ref Web]}
"#;
    let e = first_error(t, &["as:ProdServer", "dev:eth0"]);
    assert_eq!(
        e.message,
        "--as ProdServer: ProdServer is left out because its Condition is false"
    );
    assert!(
        load(t, &["as:ProdServer", "dev:eth0", "Env=prod"])
            .policy
            .interfaces[0]
            .device
            .is_some()
    );
}

#[test]
fn text_built_by_functions_is_bounded_like_parsing() {
    // Each level joins ten copies of the one before (aliases are shared, not copied): a
    // small file would otherwise build a string of any size.
    let ten = |x: &str| vec![format!("*{x}"); 10].join(", ");
    let t = format!(
        "Metadata:\n  a: &a \"{}\"\n  b: &b !Join [\"\", [{}]]\n  c: &c !Join [\"\", [{}]]\n  d: &d !Join [\"\", [{}]]\n\
         Resources:\n  Web:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: web\n      SecurityGroupIngress:\n\
         \x20       - {{IpProtocol: tcp, FromPort: 1, ToPort: 1, CidrIp: !Join [\"\", [*d, *d]]}}\n",
        "x".repeat(1000),
        ten("a"),
        ten("b"),
        ten("c"),
    );
    let e = first_error(&t, &[]);
    assert!(e.message.contains("more than 1 MiB of text"), "{e}");
    assert_eq!(at(&e).0, 12);
}

#[test]
fn a_rule_the_template_adds_to_a_group_defined_elsewhere_is_kept_when_the_group_is_known() {
    // CloudFormation adds the rule to the existing group; a member of it here gets it.
    let t = r#"
Parameters:
  ControlPlane: {Type: "AWS::EC2::SecurityGroup::Id"}
Resources:
  Nodes:
    Type: AWS::EC2::SecurityGroup
    Properties: {GroupDescription: nodes}
  ToNodes:
    Type: AWS::EC2::SecurityGroupEgress
    Properties:
      GroupId: !Ref ControlPlane
      DestinationSecurityGroupId: !Ref Nodes
      IpProtocol: tcp
      FromPort: 443
      ToPort: 443
"#;
    let l = load(t, &["ControlPlane=sg-0123456789abcdef0"]);
    assert_eq!(
        rules(&l.policy, "sg-0123456789abcdef0", Direction::Egress),
        ["tcp 443-443 Nodes"]
    );
    assert!(
        warnings(&l).iter().any(|w| w.contains("the rule is kept")),
        "{:?}",
        warnings(&l)
    );
    // Without a value the group is only a name, which may stand for several: not kept.
    let l = load(t, &[]);
    assert!(rules(&l.policy, "ControlPlane", Direction::Egress).is_empty());
    assert!(
        warnings(&l)
            .iter()
            .any(|w| w.contains("the rule is ignored here")),
        "{:?}",
        warnings(&l)
    );
}
