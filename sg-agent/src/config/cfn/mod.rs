//! CloudFormation templates, read as they are: `AWS::EC2::SecurityGroup` (inline rules),
//! `SecurityGroupIngress`/`SecurityGroupEgress` resources, `Instance`, `NetworkInterface`,
//! `NetworkInterfaceAttachment` and `PrefixList`, into a [`Draft`]; network ACLs with their
//! entries, associations and subnets: nacl.rs.
//!
//! The template is first evaluated as CloudFormation evaluates it (stack.rs, eval.rs,
//! conditions.rs, params.rs: parameters with their values, pseudo parameters, conditions and
//! the intrinsic functions); this module then reads the evaluated tree, resolving `Ref` and
//! `Fn::GetAtt` to the template's groups and prefix lists. What stays unknown until deployed
//! is an error only where the value matters, with why; an unknown value that names a group
//! (an import, a group-id parameter without value) is a group defined elsewhere (warning).
//! Other resource types are ignored, counted in one warning.
//!
//! Group ids: a group's `GroupName` when it has the shape of an id (`sg-web`), else its
//! logical id. A literal id (`SourceSecurityGroupId: sg-web`) resolves to the group whose
//! GroupName or logical id matches; when none does it names a group defined elsewhere, which
//! has no members here (warning; an empty placeholder group). `Ref`/`GetAtt` to an undefined
//! logical id is an error.

mod conditions;
mod eval;
mod host;
pub mod inputs;
mod nacl;
mod params;
mod stack;

use std::collections::{BTreeMap, HashMap};

use eval::{Place, Why};
pub use inputs::{GivenParameter, ParameterUse, TemplateInputs};

use super::diag::{Sink, did_you_mean};
use super::draft::{
    DEntry, DGroup, DInterface, DPeer, DPrefixList, DRule, DTimeouts, Draft, L, TimeoutField,
};
use super::read::{At, Fields, fields, list, parse_int};
use super::values::{self, looks_like_group_id, looks_like_prefix_list_id};
use crate::policy::{Direction, Family, Origin};

const TOP_KEYS: &[&str] = &[
    "AWSTemplateFormatVersion",
    "Description",
    "Metadata",
    "Parameters",
    "Rules",
    "Mappings",
    "Conditions",
    "Transform",
    "Resources",
    "Outputs",
];

const RESOURCE_KEYS: &[&str] = &[
    "Type",
    "Properties",
    "DependsOn",
    "Condition",
    "Metadata",
    "DeletionPolicy",
    "UpdateReplacePolicy",
    "CreationPolicy",
    "UpdatePolicy",
    // Legacy, accepted by CloudFormation on custom resources (Custom::, CustomResource).
    "Version",
];

const SG: &str = "AWS::EC2::SecurityGroup";
const SG_INGRESS: &str = "AWS::EC2::SecurityGroupIngress";
const SG_EGRESS: &str = "AWS::EC2::SecurityGroupEgress";
const INSTANCE: &str = "AWS::EC2::Instance";
const ENI: &str = "AWS::EC2::NetworkInterface";
const ENI_ATTACHMENT: &str = "AWS::EC2::NetworkInterfaceAttachment";
const PREFIX_LIST: &str = "AWS::EC2::PrefixList";

/// Properties of AWS::EC2::Instance (those sg reads and those it ignores). An unknown one is
/// a warning, not an error: this list may lag behind AWS.
const INSTANCE_PROPS: &[&str] = &[
    "AdditionalInfo",
    "Affinity",
    "AvailabilityZone",
    "BlockDeviceMappings",
    "CpuOptions",
    "CreditSpecification",
    "DisableApiTermination",
    "EbsOptimized",
    "ElasticGpuSpecifications",
    "ElasticInferenceAccelerators",
    "EnclaveOptions",
    "HibernationOptions",
    "HostId",
    "HostResourceGroupArn",
    "IamInstanceProfile",
    "ImageId",
    "InstanceInitiatedShutdownBehavior",
    "InstanceType",
    "Ipv6AddressCount",
    "Ipv6Addresses",
    "KernelId",
    "KeyName",
    "LaunchTemplate",
    "LicenseSpecifications",
    "MetadataOptions",
    "Monitoring",
    "NetworkInterfaces",
    "PlacementGroupName",
    "PrivateDnsNameOptions",
    "PrivateIpAddress",
    "PropagateTagsToVolumeOnCreation",
    "RamdiskId",
    "SecurityGroupIds",
    "SecurityGroups",
    "SourceDestCheck",
    "SsmAssociations",
    "SubnetId",
    "Tags",
    "Tenancy",
    "UserData",
    "Volumes",
];

const INSTANCE_NIC_PROPS: &[&str] = &[
    "AssociateCarrierIpAddress",
    "AssociatePublicIpAddress",
    "ConnectionTrackingSpecification",
    "DeleteOnTermination",
    "Description",
    "DeviceIndex",
    "EnaSrdSpecification",
    "GroupSet",
    "Ipv6AddressCount",
    "Ipv6Addresses",
    "NetworkInterfaceId",
    "PrivateIpAddress",
    "PrivateIpAddresses",
    "SecondaryPrivateIpAddressCount",
    "SubnetId",
];

const ENI_PROPS: &[&str] = &[
    "ConnectionTrackingSpecification",
    "Description",
    "EnablePrimaryIpv6",
    "GroupSet",
    "InterfaceType",
    "Ipv4PrefixCount",
    "Ipv4Prefixes",
    "Ipv6AddressCount",
    "Ipv6Addresses",
    "Ipv6PrefixCount",
    "Ipv6Prefixes",
    "PrivateIpAddress",
    "PrivateIpAddresses",
    "SecondaryPrivateIpAddressCount",
    "SourceDestCheck",
    "SubnetId",
    "Tags",
];

/// The tag naming the local Linux device of an instance or ENI (sg's own convention).
pub(crate) const DEVICE_TAG: &str = "sg:device";
/// The id of the VPC default group, modelled when an instance names no group (D3).
pub(crate) const DEFAULT_GROUP_ID: &str = "default";

/// What a CloudFormation value evaluated to.
#[derive(Clone, Debug)]
enum Val {
    Str(L<String>),
    /// A group id (from Ref/GetAtt of a SecurityGroup resource).
    Group(L<String>),
    /// A prefix list id (from Ref/GetAtt of a PrefixList resource).
    PrefixList(L<String>),
    List(Vec<Val>),
    /// Not known before deploying, and why (at the expression).
    Unknown(Why, Origin),
}

struct Res<'n> {
    logical: String,
    ty: String,
    props: Option<Fields<'n>>,
    at: At<'n>,
}

struct Cfn<'n, 's> {
    sink: &'s mut Sink,
    /// The template's parameter names (for "did you mean").
    params: Vec<String>,
    /// Why an expression left as written has no value (eval.rs).
    why: HashMap<Place, Why>,
    /// Values taken from a parameter's Default: place -> parameter.
    defaults: HashMap<Place, String>,
    res: Vec<Res<'n>>,
    by_logical: HashMap<String, usize>,
    /// Group logical id -> (group id, literal GroupName).
    groups: BTreeMap<String, (String, Option<String>)>,
    /// Prefix list logical id -> (id, literal PrefixListName).
    pls: BTreeMap<String, (String, Option<String>)>,
    external_groups: BTreeMap<String, Origin>,
    /// Rules the template's SecurityGroupIngress/Egress add to a group defined elsewhere.
    external_rules: BTreeMap<String, Vec<DRule>>,
    external_pls: BTreeMap<String, Origin>,
    /// Where an interface without groups was found (the VPC default group is then modelled).
    default_needed: Option<Origin>,
    /// Instance and ENI logical id -> the name its interfaces are called by (for `--bind`).
    aliases: HashMap<String, String>,
}

fn plain_literal(at: &At) -> Option<String> {
    if at.node.tag.as_deref().is_some_and(|t| !t.starts_with("!!")) || at.is_null() {
        return None;
    }
    at.node.scalar().map(str::to_string)
}

/// Reads a template evaluated with `inputs`: the draft, and the parameters it used.
pub(crate) fn read(
    sink: &mut Sink,
    root: &At,
    inputs: &TemplateInputs,
) -> (Draft, Vec<ParameterUse>) {
    let mut d = Draft::default();
    let Some(top) = fields(sink, root, "the template") else {
        return (d, Vec::new());
    };
    top.check_keys_with(sink, "a CloudFormation template", TOP_KEYS, |k| {
        (k == "Modules").then(|| {
            "`Modules` is Rain's (rain pkg), not CloudFormation: expand the template with `rain pkg TEMPLATE > expanded.yaml` and check the expanded one".to_string()
        })
    });
    if let Some(t) = top.get("Transform") {
        sink.warn_hint(
            &t.origin(sink),
            "transforms (SAM, macros) are not expanded",
            "run `aws cloudformation package`/deploy --dry-run tools first if the transform adds security groups",
        );
    }
    let st = stack::evaluate(sink, &top, inputs);
    let root = At::root(&st.root);
    let top = Fields { at: root };
    let mut c = Cfn {
        sink,
        params: st.resolver.params.keys().cloned().collect(),
        why: st.resolver.why,
        defaults: st.resolver.defaults,
        res: Vec::new(),
        by_logical: HashMap::new(),
        groups: BTreeMap::new(),
        pls: BTreeMap::new(),
        external_groups: BTreeMap::new(),
        external_rules: BTreeMap::new(),
        external_pls: BTreeMap::new(),
        default_needed: None,
        aliases: HashMap::new(),
    };
    let used = st.resolver.used.into_values().collect();
    let Some(resources) = top.get("Resources") else {
        c.sink.error_hint(
            &top.origin(c.sink),
            "the template has no `Resources`",
            "a CloudFormation template lists its security groups under Resources",
        );
        return (d, used);
    };
    if !st.excluded.is_empty() {
        c.sink.warn(
            &resources.origin(c.sink),
            format!(
                "left out because their Condition is false: {}",
                st.excluded.join(", ")
            ),
        );
    }
    let Some(rf) = fields(c.sink, &resources, "Resources") else {
        return (d, used);
    };
    c.resources(&rf);
    c.index(&resources);
    c.prefix_lists(&mut d);
    c.groups(&mut d);
    c.interfaces(&mut d);
    c.bind(&mut d, inputs);
    c.as_host(&mut d, inputs, &st.excluded);
    c.network_acls(&mut d);
    c.finish(&mut d);
    (d, used)
}

impl<'n> Cfn<'n, '_> {
    /// The resources in template order, each with its type and Properties.
    fn resources(&mut self, rf: &Fields<'n>) {
        for (logical, _, v) in rf.entries() {
            let Some(f) = fields(self.sink, &v, "a resource") else {
                continue;
            };
            f.check_keys(self.sink, "a resource", RESOURCE_KEYS);
            let Some(ty) = f.get("Type").and_then(|t| plain_literal(&t)) else {
                self.sink.error(
                    &f.origin(self.sink),
                    format!("resource {logical} has no `Type`"),
                );
                continue;
            };
            // Only the Properties sg reads need to be a mapping once evaluated.
            let props = match f.get("Properties") {
                Some(p) if stack::READ_TYPES.contains(&ty.as_str()) => {
                    fields(self.sink, &p, "Properties")
                }
                _ => None,
            };
            self.by_logical.insert(logical.clone(), self.res.len());
            self.res.push(Res {
                logical,
                ty,
                props,
                at: v,
            });
        }
    }

    /// The indexes of the resources of type `ty`, in template order.
    fn of_type(&self, ty: &str) -> Vec<usize> {
        (0..self.res.len())
            .filter(|&i| self.res[i].ty == ty)
            .collect()
    }

    /// Resource `i`'s Properties (None when it has none).
    fn props(&self, i: usize) -> Option<Fields<'n>> {
        self.res[i]
            .props
            .as_ref()
            .map(|p| Fields { at: p.at.clone() })
    }

    /// Group and prefix list ids; the resource types sg does not read, counted in one warning.
    fn index(&mut self, resources: &At<'n>) {
        let mut ignored: BTreeMap<&str, usize> = BTreeMap::new();
        let with_nacls = nacl::has_nacls(self.res.iter().map(|r| r.ty.as_str()));
        for r in &self.res {
            let name = |key: &str| {
                r.props
                    .as_ref()
                    .and_then(|p| p.get(key))
                    .and_then(|v| plain_literal(&v))
            };
            match r.ty.as_str() {
                SG => {
                    let gname = name("GroupName");
                    let id = match &gname {
                        Some(n) if looks_like_group_id(n) => n.clone(),
                        _ => r.logical.clone(),
                    };
                    self.groups.insert(r.logical.clone(), (id, gname));
                }
                PREFIX_LIST => {
                    let pname = name("PrefixListName");
                    let id = match &pname {
                        Some(n) if looks_like_prefix_list_id(n) => n.clone(),
                        _ => r.logical.clone(),
                    };
                    self.pls.insert(r.logical.clone(), (id, pname));
                }
                SG_INGRESS | SG_EGRESS | INSTANCE | ENI | ENI_ATTACHMENT => {}
                nacl::NACL | nacl::NACL_ENTRY | nacl::NACL_ASSOCIATION => {}
                nacl::SUBNET if with_nacls => {}
                other => *ignored.entry(other).or_default() += 1,
            }
        }
        if !ignored.is_empty() {
            let n: usize = ignored.values().sum();
            let list: Vec<String> = ignored
                .iter()
                .map(|(t, k)| {
                    if *k == 1 {
                        (*t).to_string()
                    } else {
                        format!("{t} x{k}")
                    }
                })
                .collect();
            let at = resources.origin(self.sink);
            self.sink.warn(
                &at,
                format!(
                    "{n} resource{} of other types ignored (they do not change security groups): {}",
                    if n == 1 { "" } else { "s" },
                    list.join(", ")
                ),
            );
        }
    }

    fn unsupported(&mut self, at: &At, what: &str) {
        self.sink.error_hint(
            &at.origin(self.sink),
            format!("{what} cannot be evaluated without deploying the template"),
            "write the value literally",
        );
    }

    /// Why the expression at `at` was left unevaluated, if it was.
    fn why_at(&self, at: &At<'n>) -> Option<Why> {
        if !eval::is_call(at.node) {
            return None;
        }
        self.why.get(&(at.node.line, at.node.column)).cloned()
    }

    /// Reports an unknown value where a known one is needed.
    fn report_unknown(&mut self, why: &Why, at: &Origin, what: &str) {
        stack::report(self.sink, at, why, &format!("{what} is unknown"));
    }

    /// The logical id named by a `Ref` (tag or long form), if the node is one.
    fn ref_name(&mut self, at: &At<'n>) -> Option<Option<L<String>>> {
        if at.node.tag.as_deref() == Some("!Ref") {
            return Some(plain_text(at).map(|s| L::new(s, at.origin(self.sink))));
        }
        let entries = at.node.as_map()?;
        if entries.len() == 1 && entries[0].0.scalar() == Some("Ref") {
            let v = at.child("Ref", &entries[0].1);
            return Some(plain_text(&v).map(|s| L::new(s, v.origin(self.sink))));
        }
        None
    }

    /// `(logical id, attribute)` of a GetAtt (tag or long form), if the node is one.
    fn getatt(&mut self, at: &At<'n>) -> Option<Option<(L<String>, String)>> {
        let (node_at, is) = if at.node.tag.as_deref() == Some("!GetAtt") {
            (at.clone(), true)
        } else if let Some(entries) = at.node.as_map()
            && entries.len() == 1
            && entries[0].0.scalar() == Some("Fn::GetAtt")
        {
            (at.child("Fn::GetAtt", &entries[0].1), true)
        } else {
            (at.clone(), false)
        };
        if !is {
            return None;
        }
        let origin = node_at.origin(self.sink);
        let parsed = if let Some(s) = node_at.node.scalar() {
            s.split_once('.')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        } else if let Some(items) = node_at.node.as_seq() {
            match items {
                [a, b] => match (a.scalar(), b.scalar()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            }
        } else {
            None
        };
        Some(parsed.map(|(a, b)| (L::new(a, origin), b)))
    }

    fn undefined(&mut self, name: &L<String>, how: &str) {
        let mut known: Vec<&str> = self.by_logical.keys().map(String::as_str).collect();
        if how == "Ref" {
            known.extend(self.params.iter().map(String::as_str));
        }
        let hint = match did_you_mean(&name.v, &known) {
            Some(k) => format!("did you mean {k}?"),
            None => "define the resource in this template, or write the id literally".to_string(),
        };
        self.sink.error_hint(
            &name.at,
            format!("{how} to {}, which is not defined in this template", name.v),
            hint,
        );
    }

    /// Evaluates a value node: literal scalars, lists, Ref, GetAtt.
    fn eval(&mut self, at: &At<'n>) -> Option<Val> {
        if let Some(w) = self.why_at(at) {
            return Some(Val::Unknown(w, at.origin(self.sink)));
        }
        if let Some(r) = self.ref_name(at) {
            let Some(name) = r else {
                self.sink.error(
                    &at.origin(self.sink),
                    "Ref takes the logical id of a resource or parameter",
                );
                return None;
            };
            return self.eval_ref(name);
        }
        if let Some(g) = self.getatt(at) {
            let Some((name, attr)) = g else {
                self.sink.error_hint(
                    &at.origin(self.sink),
                    "Fn::GetAtt takes `Resource.Attribute` or [Resource, Attribute]",
                    "e.g. !GetAtt WebSecurityGroup.GroupId",
                );
                return None;
            };
            return self.eval_getatt(name, &attr);
        }
        if let Some(t) = at.node.tag.as_deref()
            && !t.starts_with("!!")
        {
            self.unsupported(at, t);
            return None;
        }
        if let Some(entries) = at.node.as_map() {
            if entries.len() == 1
                && let Some(k) = entries[0].0.scalar()
                && (k.starts_with("Fn::") || k == "Condition")
            {
                self.unsupported(at, k);
                return None;
            }
            self.sink
                .error(&at.origin(self.sink), "expected a value, found a mapping");
            return None;
        }
        if let Some(items) = at.node.as_seq() {
            let vals = items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| self.eval(&at.item(i, n)))
                .collect();
            return Some(Val::List(vals));
        }
        if at.is_null() {
            self.sink.error(
                &at.origin(self.sink),
                "expected a value, found nothing (null)",
            );
            return None;
        }
        Some(Val::Str(L::new(
            at.node.scalar().unwrap_or_default().to_string(),
            at.origin(self.sink),
        )))
    }

    fn eval_ref(&mut self, name: L<String>) -> Option<Val> {
        if let Some((id, _)) = self.groups.get(&name.v) {
            return Some(Val::Group(L::new(id.clone(), name.at)));
        }
        if let Some((id, _)) = self.pls.get(&name.v) {
            return Some(Val::PrefixList(L::new(id.clone(), name.at)));
        }
        if let Some(&i) = self.by_logical.get(&name.v) {
            let ty = self.res[i].ty.clone();
            self.sink.error(
                &name.at,
                format!(
                    "Ref to {} ({ty}) gives a physical id sg cannot use here",
                    name.v
                ),
            );
            return None;
        }
        if self.params.contains(&name.v) || name.v.starts_with("AWS::") {
            // eval.rs replaced every parameter it could evaluate and said why of the others.
            self.sink
                .error(&name.at, format!("the value of {} is unknown", name.v));
            return None;
        }
        self.undefined(&name, "Ref");
        None
    }

    fn eval_getatt(&mut self, name: L<String>, attr: &str) -> Option<Val> {
        if let Some((id, _)) = self.groups.get(&name.v) {
            if attr == "GroupId" {
                return Some(Val::Group(L::new(id.clone(), name.at)));
            }
            self.sink.error_hint(
                &name.at,
                format!("{}.{attr} is not a security group id", name.v),
                format!("use !GetAtt {}.GroupId", name.v),
            );
            return None;
        }
        if let Some((id, _)) = self.pls.get(&name.v) {
            if attr == "PrefixListId" {
                return Some(Val::PrefixList(L::new(id.clone(), name.at)));
            }
            self.sink.error_hint(
                &name.at,
                format!("{}.{attr} is not a prefix list id", name.v),
                format!("use !GetAtt {}.PrefixListId", name.v),
            );
            return None;
        }
        if let Some(&i) = self.by_logical.get(&name.v) {
            let ty = self.res[i].ty.clone();
            if ty == "AWS::EC2::VPC" && attr == "DefaultSecurityGroup" {
                // The VPC's default group: modelled as the one default group (D3).
                if self.default_needed.is_none() {
                    self.default_needed = Some(name.at.clone());
                }
                return Some(Val::Group(L::new(DEFAULT_GROUP_ID.to_string(), name.at)));
            }
            if ty == "AWS::ElasticLoadBalancing::LoadBalancer"
                && attr.starts_with("SourceSecurityGroup")
            {
                let w = Why {
                    message: format!("the source security group of the Classic Load Balancer {} is created by ELB", name.v),
                    hint: Some("its members are the load balancer's nodes, unknown here; rules naming it allow nothing on this host".to_string()),
                    group: Some(format!("{}.SourceSecurityGroup", name.v)),
                };
                return Some(Val::Unknown(w, name.at));
            }
            self.sink.error_hint(
                &name.at,
                format!(
                    "Fn::GetAtt {}.{attr} ({ty}) is known only once the stack is deployed",
                    name.v
                ),
                "write the value literally",
            );
            return None;
        }
        self.undefined(&name, "Fn::GetAtt");
        None
    }

    fn string(&mut self, at: &At<'n>, what: &str) -> Option<L<String>> {
        match self.eval(at)? {
            Val::Str(s) => Some(s),
            Val::Group(g) | Val::PrefixList(g) => {
                self.sink.error(
                    &g.at,
                    format!("{what} must be a string, not the id {}", g.v),
                );
                None
            }
            Val::List(_) => {
                self.sink.error(
                    &at.origin(self.sink),
                    format!("{what} must be a string, found a list"),
                );
                None
            }
            Val::Unknown(w, o) => {
                self.report_unknown(&w, &o, what);
                None
            }
        }
    }

    fn int(&mut self, at: &At<'n>, what: &str) -> Option<L<i64>> {
        let s = self.string(at, what)?;
        parse_int(self.sink, s, what)
    }

    /// A descriptive text: a literal, or dropped with a warning (it cannot change what is
    /// allowed, so it is not worth refusing the template).
    fn cosmetic(&mut self, at: &At<'n>) -> Option<L<String>> {
        match plain_literal(at) {
            Some(s) => Some(L::new(s, at.origin(self.sink))),
            None => {
                self.sink.warn(
                    &at.origin(self.sink),
                    "this text is not a literal; it is left out",
                );
                None
            }
        }
    }

    /// A value naming a security group: Ref/GetAtt, or a literal id, GroupName or logical id.
    fn group_of(&mut self, v: Val) -> Option<L<String>> {
        match v {
            Val::Group(g) => Some(g),
            Val::Str(s) => {
                let t = s.v.trim();
                if let Some(id) = defined(&self.groups, t) {
                    return Some(L::new(id.to_string(), s.at));
                }
                if looks_like_group_id(t) {
                    if !self.external_groups.contains_key(t) {
                        self.sink.warn_hint(
                            &s.at,
                            format!("security group {t} is not defined in this template; it has no members here, so rules referencing it allow nothing"),
                            "define it in the template (GroupName or logical id) if its members should be reachable",
                        );
                        self.external_groups.insert(t.to_string(), s.at.clone());
                    }
                    return Some(L::new(t.to_string(), s.at));
                }
                let known: Vec<&str> = self.groups.keys().map(String::as_str).collect();
                let hint = match did_you_mean(t, &known) {
                    Some(k) => format!("did you mean {k}?"),
                    None => {
                        "use !Ref to a security group of this template or an id sg-...".to_string()
                    }
                };
                self.sink.error_hint(
                    &s.at,
                    format!("`{t}` is not a security group of this template nor a group id"),
                    hint,
                );
                None
            }
            Val::PrefixList(p) => {
                self.sink.error(
                    &p.at,
                    format!("{} is a prefix list, not a security group", p.v),
                );
                None
            }
            Val::List(_) => None,
            Val::Unknown(w, o) => self.external_of(w, o, "group"),
        }
    }

    /// An unknown value where a group or prefix list is expected: one defined elsewhere when
    /// the value names one (an import, a group-id parameter), else an error.
    fn external_of(&mut self, w: Why, o: Origin, kind: &str) -> Option<L<String>> {
        let Some(id) = w.group.as_deref().map(external_id) else {
            self.report_unknown(&w, &o, &format!("the security {kind}"));
            return None;
        };
        let (map, what) = if kind == "group" {
            (&mut self.external_groups, "security group")
        } else {
            (&mut self.external_pls, "prefix list")
        };
        if !map.contains_key(&id) {
            map.insert(id.clone(), o.clone());
            let hint = w.hint.clone().unwrap_or_default();
            self.sink.warn_hint(
                &o,
                format!("{}: taken as a {what} `{id}` defined elsewhere, with no members here, so rules referencing it allow nothing", w.message),
                hint,
            );
        }
        Some(L::new(id, o))
    }

    fn prefix_list_of(&mut self, v: Val) -> Option<L<String>> {
        match v {
            Val::PrefixList(p) => Some(p),
            Val::Str(s) => {
                let t = s.v.trim();
                if let Some(id) = defined(&self.pls, t) {
                    return Some(L::new(id.to_string(), s.at));
                }
                if looks_like_prefix_list_id(t) {
                    if !self.external_pls.contains_key(t) {
                        self.sink.warn(
                            &s.at,
                            format!("prefix list {t} is not defined in this template; its entries are unknown, so rules using it allow nothing"),
                        );
                        self.external_pls.insert(t.to_string(), s.at.clone());
                    }
                    return Some(L::new(t.to_string(), s.at));
                }
                self.sink.error_hint(
                    &s.at,
                    format!("`{t}` is not a prefix list of this template nor a prefix list id"),
                    "use !Ref to an AWS::EC2::PrefixList of this template or an id pl-...",
                );
                None
            }
            Val::Group(g) => {
                self.sink.error(
                    &g.at,
                    format!("{} is a security group, not a prefix list", g.v),
                );
                None
            }
            Val::List(_) => None,
            Val::Unknown(w, o) => self.external_of(w, o, "prefix list"),
        }
    }

    fn flatten(v: Val, out: &mut Vec<Val>) {
        match v {
            Val::List(items) => items.into_iter().for_each(|i| Self::flatten(i, out)),
            other => out.push(other),
        }
    }

    /// A list of group references (SecurityGroupIds, GroupSet, SecurityGroups).
    fn group_list(&mut self, at: &At<'n>) -> Vec<L<String>> {
        let Some(v) = self.eval(at) else {
            return Vec::new();
        };
        let mut items = Vec::new();
        Self::flatten(v, &mut items);
        items.into_iter().filter_map(|v| self.group_of(v)).collect()
    }

    fn prefix_lists(&mut self, d: &mut Draft) {
        for i in self.of_type(PREFIX_LIST) {
            if let Some(pl) = self.prefix_list(i) {
                d.prefix_lists.push(pl);
            }
        }
    }

    /// One AWS::EC2::PrefixList resource.
    fn prefix_list(&mut self, i: usize) -> Option<DPrefixList> {
        let logical = self.res[i].logical.clone();
        let at = self.res[i].at.clone();
        let Some(p) = self.props(i) else {
            self.sink.error(
                &at.origin(self.sink),
                format!("prefix list {logical} has no Properties"),
            );
            return None;
        };
        p.check_keys(
            self.sink,
            "AWS::EC2::PrefixList Properties",
            &[
                "AddressFamily",
                "Entries",
                "MaxEntries",
                "PrefixListName",
                "Tags",
            ],
        );
        let family = self
            .required(&p, "AddressFamily", &format!("prefix list {logical}"))
            .and_then(|v| self.address_family(&v));
        let max_entries = self
            .required(&p, "MaxEntries", &format!("prefix list {logical}"))
            .and_then(|v| self.int(&v, "MaxEntries"));
        let name = self
            .required(&p, "PrefixListName", &format!("prefix list {logical}"))
            .and_then(|v| self.cosmetic(&v));
        let entries = self.prefix_list_entries(&p);
        let id = self.pls[&logical].0.clone();
        Some(DPrefixList {
            id: L::new(id, at.origin(self.sink)),
            check_id: false,
            name,
            family,
            max_entries,
            version: None,
            entries,
            external: false,
            at: at.origin(self.sink),
        })
    }

    /// Property `key` of `p`; its absence is an error: "`owner` needs `key`".
    fn required(&mut self, p: &Fields<'n>, key: &str, owner: &str) -> Option<At<'n>> {
        let v = p.get(key);
        if v.is_none() {
            self.sink
                .error(&p.origin(self.sink), format!("{owner} needs {key}"));
        }
        v
    }

    fn address_family(&mut self, v: &At<'n>) -> Option<L<Family>> {
        let s = self.string(v, "AddressFamily")?;
        match values::family(&s.v) {
            Ok(f) => Some(L::new(f, s.at)),
            Err(_) => {
                self.sink.error_hint(
                    &s.at,
                    format!("AddressFamily `{}` is not IPv4 or IPv6", s.v),
                    "use IPv4 or IPv6",
                );
                None
            }
        }
    }

    fn prefix_list_entries(&mut self, p: &Fields<'n>) -> Vec<DEntry> {
        let mut entries = Vec::new();
        let Some(es) = p.get("Entries") else {
            return entries;
        };
        let Some(items) = list(self.sink, &es, "Entries") else {
            return entries;
        };
        for e in items {
            let Some(ef) = fields(self.sink, &e, "an entry") else {
                continue;
            };
            ef.check_keys(self.sink, "a prefix list entry", &["Cidr", "Description"]);
            let Some(c) = ef.get("Cidr") else {
                self.sink
                    .error(&ef.origin(self.sink), "an entry needs a Cidr");
                continue;
            };
            let Some(cidr) = self.string(&c, "Cidr") else {
                continue;
            };
            let description = ef.get("Description").and_then(|v| self.cosmetic(&v));
            entries.push(DEntry { cidr, description });
        }
        entries
    }

    /// One rule: inline in a group's list, or a stand-alone ingress/egress resource's
    /// Properties (then with the group it targets).
    fn rule(
        &mut self,
        at: &At<'n>,
        dir: Direction,
        standalone: bool,
    ) -> Option<(Option<Val>, DRule)> {
        let what = if standalone {
            format!(
                "an {} resource's Properties",
                if dir == Direction::Ingress {
                    SG_INGRESS
                } else {
                    SG_EGRESS
                }
            )
        } else {
            format!("an {} rule", dir.name())
        };
        if let Some(w) = self.why_at(at) {
            let o = at.origin(self.sink);
            self.report_unknown(&w, &o, &what);
            return None;
        }
        let f = fields(self.sink, at, &what)?;
        self.check_rule_keys(&f, &what, dir, standalone);
        let rule_at = f.origin(self.sink);
        let target = if standalone {
            self.rule_target(&f, &rule_at)?
        } else {
            None
        };
        if let Some(o) = f.get("SourceSecurityGroupOwnerId") {
            self.sink.warn(
                &o.origin(self.sink),
                "SourceSecurityGroupOwnerId is ignored (the group is looked up by id)",
            );
        }
        let Some(proto_at) = f.get("IpProtocol") else {
            self.sink.error_hint(
                &rule_at,
                "the rule needs IpProtocol",
                "tcp, udp, icmp, icmpv6, -1 or an IANA number",
            );
            return None;
        };
        let protocol = self.string(&proto_at, "IpProtocol")?;
        // A port that does not read drops the rule (reported already): judging it without
        // the port would only add a misleading F3 error.
        let port = |key: &str, this: &mut Self| match f.get(key) {
            None => Ok(None),
            Some(v) => this.int(&v, key).map(Some).ok_or(()),
        };
        let (Ok(from), Ok(to)) = (port("FromPort", self), port("ToPort", self)) else {
            return None;
        };
        let description = f.get("Description").and_then(|v| self.cosmetic(&v));
        let (key, v) = self.rule_peer_key(&f, dir, &rule_at)?;
        let peer = self.rule_peer(key, &v, dir)?;
        Some((
            target,
            DRule {
                direction: dir,
                protocol,
                from,
                to,
                peer,
                id: None,
                description,
                at: rule_at,
            },
        ))
    }

    /// The properties a rule may have (they depend on its direction and whether it stands
    /// alone), with a hint for the other direction's names.
    fn check_rule_keys(&mut self, f: &Fields<'n>, what: &str, dir: Direction, standalone: bool) {
        let mut known: Vec<&str> = vec![
            "IpProtocol",
            "FromPort",
            "ToPort",
            "CidrIp",
            "CidrIpv6",
            "Description",
        ];
        match dir {
            Direction::Ingress => known.extend([
                "SourceSecurityGroupId",
                "SourceSecurityGroupName",
                "SourceSecurityGroupOwnerId",
                "SourcePrefixListId",
            ]),
            Direction::Egress => {
                known.extend(["DestinationSecurityGroupId", "DestinationPrefixListId"]);
            }
        }
        if standalone {
            known.push("GroupId");
            if dir == Direction::Ingress {
                known.push("GroupName");
            }
        }
        f.check_keys_with(self.sink, what, &known, |k| match (k, dir) {
            ("SourceSecurityGroupId" | "SourcePrefixListId", Direction::Egress) => {
                Some("egress rules use DestinationSecurityGroupId / DestinationPrefixListId".into())
            }
            ("DestinationSecurityGroupId" | "DestinationPrefixListId", Direction::Ingress) => {
                Some("ingress rules use SourceSecurityGroupId / SourcePrefixListId".into())
            }
            _ => None,
        });
    }

    /// The group a stand-alone rule resource adds to (Some(None): named, but it did not
    /// evaluate; None: not named, reported).
    fn rule_target(&mut self, f: &Fields<'n>, rule_at: &Origin) -> Option<Option<Val>> {
        match (f.get("GroupId"), f.get("GroupName")) {
            (Some(g), _) | (None, Some(g)) => Some(self.eval(&g)),
            (None, None) => {
                self.sink.error_hint(
                    rule_at,
                    "the rule does not say which group it belongs to",
                    "give GroupId (e.g. !Ref WebSecurityGroup)",
                );
                None
            }
        }
    }

    /// The one peer property of a rule (F5: exactly one), with its value.
    fn rule_peer_key(
        &mut self,
        f: &Fields<'n>,
        dir: Direction,
        rule_at: &Origin,
    ) -> Option<(&'static str, At<'n>)> {
        let (group_key, pl_key) = peer_keys(dir);
        let mut peers: Vec<(&'static str, At)> = [
            "CidrIp",
            "CidrIpv6",
            group_key,
            "SourceSecurityGroupName",
            pl_key,
        ]
        .iter()
        .filter_map(|k| f.get(k).map(|v| (*k, v)))
        .collect();
        if peers.len() == 1 {
            return peers.pop();
        }
        let names = match dir {
            Direction::Ingress => "CidrIp, CidrIpv6, SourceSecurityGroupId, SourcePrefixListId",
            Direction::Egress => {
                "CidrIp, CidrIpv6, DestinationSecurityGroupId, DestinationPrefixListId"
            }
        };
        let msg = if peers.is_empty() {
            "the rule names no peer (F5)".to_string()
        } else {
            let found: Vec<&str> = peers.iter().map(|(k, _)| *k).collect();
            format!(
                "the rule names {} peers ({}); a rule has exactly one (F5)",
                peers.len(),
                found.join(", ")
            )
        };
        self.sink.error_hint(
            rule_at,
            msg,
            format!("give exactly one of {names}; write one rule per peer"),
        );
        None
    }

    /// The peer a rule's peer property `key` names.
    fn rule_peer(&mut self, key: &str, v: &At<'n>, dir: Direction) -> Option<L<DPeer>> {
        let cidr = |this: &mut Self, family: Family, hint: &str| {
            let s = this.string(v, key)?;
            this.world_by_default(&s);
            Some(L::new(
                DPeer::Cidr {
                    text: s.v,
                    expect: Some((family, hint.into())),
                },
                s.at,
            ))
        };
        match key {
            "CidrIp" => cidr(
                self,
                Family::V4,
                "CidrIp holds IPv4 CIDRs; put IPv6 ones in CidrIpv6",
            ),
            "CidrIpv6" => cidr(
                self,
                Family::V6,
                "CidrIpv6 holds IPv6 CIDRs; put IPv4 ones in CidrIp",
            ),
            k if k == peer_keys(dir).1 => {
                let val = self.eval(v)?;
                let p = self.prefix_list_of(val)?;
                Some(L::new(DPeer::PrefixList(p.v), p.at))
            }
            _ => {
                let val = self.eval(v)?;
                // By name, `default` is the VPC's default group (unless the template names
                // one of its groups so).
                if key == "SourceSecurityGroupName"
                    && let Val::Str(s) = &val
                    && s.v == "default"
                    && defined(&self.groups, "default").is_none()
                {
                    if self.default_needed.is_none() {
                        self.default_needed = Some(s.at.clone());
                    }
                    return Some(L::new(
                        DPeer::Group(DEFAULT_GROUP_ID.to_string()),
                        s.at.clone(),
                    ));
                }
                let g = self.group_of(val)?;
                Some(L::new(DPeer::Group(g.v), g.at))
            }
        }
    }

    /// Warns when a parameter's Default, not a value given, opens a rule to the world.
    fn world_by_default(&mut self, s: &L<String>) {
        let cidr = s.v.trim();
        // Any address with prefix length 0 is every address (`192.168.1.0/0` too).
        if !cidr.ends_with("/0") {
            return;
        }
        if let Some(p) = self.defaults.get(&(s.at.line, s.at.column)).cloned() {
            self.sink.warn_hint(
                &s.at,
                format!("the Default of parameter {p} opens this rule to {cidr}: every address"),
                format!("give the addresses that need access: --parameter {p}=CIDR"),
            );
        }
    }

    /// The security groups, then the stand-alone rule resources that add to them.
    fn groups(&mut self, d: &mut Draft) {
        for i in self.of_type(SG) {
            if let Some(g) = self.group(i) {
                d.groups.push(g);
            }
        }
        // Stand-alone rule resources add to their group, after its own lists and defaults.
        for i in 0..self.res.len() {
            let dir = match self.res[i].ty.as_str() {
                SG_INGRESS => Direction::Ingress,
                SG_EGRESS => Direction::Egress,
                _ => continue,
            };
            self.standalone_rule(d, i, dir);
        }
    }

    /// One AWS::EC2::SecurityGroup resource with its inline rules.
    fn group(&mut self, i: usize) -> Option<DGroup> {
        let logical = self.res[i].logical.clone();
        let origin = self.res[i].at.origin(self.sink);
        let Some(p) = self.props(i) else {
            self.sink.error_hint(
                &origin,
                format!("security group {logical} has no Properties"),
                "GroupDescription is required",
            );
            return None;
        };
        p.check_keys(
            self.sink,
            "AWS::EC2::SecurityGroup Properties",
            &[
                "GroupDescription",
                "GroupName",
                "SecurityGroupEgress",
                "SecurityGroupIngress",
                "Tags",
                "VpcId",
            ],
        );
        let (id, _) = self.groups[&logical].clone();
        let name = match p.get("GroupName") {
            Some(v) => plain_literal(&v).map(|s| L::new(s, v.origin(self.sink))),
            None => Some(L::new(logical.clone(), origin.clone())),
        };
        let description = match p.get("GroupDescription") {
            Some(v) => self.cosmetic(&v),
            None => {
                self.sink.error_hint(
                    &p.origin(self.sink),
                    format!("security group {logical} has no GroupDescription"),
                    "CloudFormation requires GroupDescription",
                );
                None
            }
        };
        let ingress = self.rule_list(&p, "SecurityGroupIngress", Direction::Ingress);
        let egress = self.rule_list(&p, "SecurityGroupEgress", Direction::Egress);
        let id = L::new(id, origin.clone());
        // Logical ids are ids by the template's own rules, not `sg-...`.
        Some(DGroup::defined(
            id,
            false,
            name,
            description,
            [ingress, egress],
            origin,
        ))
    }

    /// A group's inline rule list `key` (None when absent: the group keeps EC2's default),
    /// with where it is or would be.
    fn rule_list(
        &mut self,
        p: &Fields<'n>,
        key: &str,
        dir: Direction,
    ) -> (Option<Vec<DRule>>, Origin) {
        let Some(v) = p.get(key) else {
            return (None, p.at.with_suffix(&format!(".{key}")).origin(self.sink));
        };
        let o = v.origin(self.sink);
        let mut out = Vec::new();
        if let Some(w) = self.why_at(&v) {
            self.report_unknown(&w, &o, key);
            return (Some(out), o);
        }
        if let Some(items) = list(self.sink, &v, key) {
            for item in items {
                if let Some((_, r)) = self.rule(&item, dir, false) {
                    out.push(r);
                }
            }
        }
        (Some(out), o)
    }

    /// An AWS::EC2::SecurityGroupIngress/Egress resource: one rule added to its group.
    fn standalone_rule(&mut self, d: &mut Draft, i: usize, dir: Direction) {
        let logical = self.res[i].logical.clone();
        let Some(p) = self.res[i].props.as_ref().map(|p| p.at.clone()) else {
            let o = self.res[i].at.origin(self.sink);
            self.sink.error(&o, format!("{logical} has no Properties"));
            return;
        };
        let Some((Some(target), rule)) = self.rule(&p, dir, true) else {
            return;
        };
        let Some(gid) = self.group_of(target) else {
            return;
        };
        match d.groups.iter_mut().find(|g| g.id.v == gid.v) {
            Some(g) => g.extra.push(rule),
            // CloudFormation adds the rule to the existing group, and a member of that group
            // here (an instance listing it) gets it: kept, beside rules sg cannot know. A
            // group sg only names after an unknown value (an import, a list parameter
            // without value) may stand for several groups: its rules are not kept.
            None if looks_like_group_id(&gid.v) => {
                self.sink.warn(
                    &gid.at,
                    format!("{logical} adds a rule to {}, which is defined elsewhere: the rule is kept, the group's other rules are not known here", gid.v),
                );
                self.external_rules.entry(gid.v).or_default().push(rule);
            }
            None => {
                self.sink.warn(
                    &gid.at,
                    format!("{logical} adds a rule to {}, which is defined elsewhere and unknown here; the rule is ignored here", gid.v),
                );
            }
        }
    }

    fn tags(&mut self, p: &Fields<'n>) -> (Option<String>, Option<L<String>>) {
        let (mut name, mut device) = (None, None);
        let Some(t) = p.get("Tags") else {
            return (name, device);
        };
        let Some(items) = t.node.as_seq() else {
            return (name, device);
        };
        for (i, n) in items.iter().enumerate() {
            let item = t.item(i, n);
            let key = item
                .node
                .get("Key")
                .and_then(|k| k.scalar())
                .unwrap_or_default();
            let Some(v) = item.node.get("Value") else {
                continue;
            };
            let value = item.child("Value", v);
            match key {
                "Name" => name = plain_literal(&value),
                DEVICE_TAG => device = self.string(&value, DEVICE_TAG),
                _ => {}
            }
        }
        (name, device)
    }

    fn conntrack(&mut self, p: &Fields<'n>) -> DTimeouts {
        let mut t = DTimeouts::default();
        let Some(c) = p.get("ConnectionTrackingSpecification") else {
            return t;
        };
        let Some(f) = fields(self.sink, &c, "ConnectionTrackingSpecification") else {
            return t;
        };
        let map = [
            ("TcpEstablishedTimeout", TimeoutField::TcpEstablished),
            ("UdpStreamTimeout", TimeoutField::UdpStream),
            ("UdpTimeout", TimeoutField::UdpSingle),
        ];
        let known: Vec<&str> = map.iter().map(|(k, _)| *k).collect();
        f.check_keys(self.sink, "ConnectionTrackingSpecification", &known);
        for (k, field) in map {
            if let Some(v) = f.get(k)
                && let Some(n) = self.int(&v, k)
            {
                t.values.push((field, n));
            }
        }
        t
    }

    /// PrivateIpAddress, PrivateIpAddresses and Ipv6Addresses of an instance, NIC or ENI.
    fn addresses(&mut self, p: &Fields<'n>, out: &mut Vec<L<String>>) {
        if let Some(v) = p.get("PrivateIpAddress")
            && let Some(s) = self.address(&v, "PrivateIpAddress")
        {
            out.push(s);
        }
        if let Some(v) = p.get("PrivateIpAddresses")
            && let Some(items) = list(self.sink, &v, "PrivateIpAddresses")
        {
            for item in items {
                let Some(f) = fields(self.sink, &item, "a private address") else {
                    continue;
                };
                f.check_keys(
                    self.sink,
                    "a private address",
                    &["PrivateIpAddress", "Primary"],
                );
                if let Some(a) = f.get("PrivateIpAddress")
                    && let Some(s) = self.address(&a, "PrivateIpAddress")
                    && !out.iter().any(|o| o.v == s.v)
                {
                    out.push(s);
                }
            }
        }
        if let Some(v) = p.get("Ipv6Addresses")
            && let Some(items) = list(self.sink, &v, "Ipv6Addresses")
        {
            for item in items {
                let Some(f) = fields(self.sink, &item, "an IPv6 address") else {
                    continue;
                };
                f.check_keys(self.sink, "an IPv6 address", &["Ipv6Address"]);
                if let Some(a) = f.get("Ipv6Address")
                    && let Some(s) = self.address(&a, "Ipv6Address")
                {
                    out.push(s);
                }
            }
        }
        for k in [
            "Ipv6AddressCount",
            "SecondaryPrivateIpAddressCount",
            "Ipv4Prefixes",
            "Ipv6Prefixes",
            "Ipv4PrefixCount",
            "Ipv6PrefixCount",
        ] {
            if let Some(v) = p.get(k) {
                self.sink.warn_hint(
                    &v.origin(self.sink),
                    format!("{k}: addresses AWS picks at launch are unknown here, so rules referencing this interface's groups cannot include them"),
                    "list the addresses explicitly",
                );
            }
        }
    }

    /// An address; one known only at deploy time is left out with a warning, as EC2 picks
    /// addresses sg cannot know either (Ipv6AddressCount).
    fn address(&mut self, v: &At<'n>, what: &str) -> Option<L<String>> {
        if let Some(w) = self.why_at(v) {
            let o = v.origin(self.sink);
            let hint = w
                .hint
                .clone()
                .unwrap_or_else(|| "write the address literally".to_string());
            self.sink.warn_hint(
                &o,
                format!("{what} is unknown ({}): rules referencing this interface's groups cannot include it", w.message),
                hint,
            );
            return None;
        }
        self.string(v, what)
    }

    /// A network interface's GroupSet, with where it is; without one, the VPC default group.
    fn group_set(&mut self, f: &Fields<'n>, at: &Origin, what: &str) -> (Vec<L<String>>, Origin) {
        match f.get("GroupSet") {
            Some(g) => (self.group_list(&g), g.origin(self.sink)),
            None => (self.no_groups(at, what), at.clone()),
        }
    }

    fn no_groups(&mut self, at: &Origin, what: &str) -> Vec<L<String>> {
        self.sink.warn_hint(
            at,
            format!("{what} names no security group: EC2 attaches the VPC default group, modelled as group `{DEFAULT_GROUP_ID}` (D3: all traffic from its own members, all egress)"),
            "list SecurityGroupIds to choose the groups",
        );
        if self.default_needed.is_none() {
            self.default_needed = Some(at.clone());
        }
        vec![L::new(DEFAULT_GROUP_ID.to_string(), at.clone())]
    }

    /// Interfaces: of instances (their own, or inline NetworkInterfaces), then stand-alone
    /// ENIs, named after the instance they are attached to (inline or by an attachment).
    fn interfaces(&mut self, d: &mut Draft) {
        // ENI logical id -> (instance name, device index), from instances and attachments.
        let mut attached: HashMap<String, (String, i64)> = HashMap::new();
        for i in self.of_type(INSTANCE) {
            self.instance(d, i, &mut attached);
        }
        for i in self.of_type(ENI_ATTACHMENT) {
            if let Some((eni, to)) = self.attachment(i) {
                attached.insert(eni, to);
            }
        }
        for i in self.of_type(ENI) {
            let iface = self.eni(i, &attached);
            d.interfaces.push(iface);
        }
    }

    /// One AWS::EC2::Instance: its own interface, or those of its NetworkInterfaces.
    fn instance(&mut self, d: &mut Draft, i: usize, attached: &mut HashMap<String, (String, i64)>) {
        let logical = self.res[i].logical.clone();
        let origin = self.res[i].at.origin(self.sink);
        let Some(p) = self.props(i) else {
            let groups = self.no_groups(&origin, &format!("instance {logical}"));
            self.sink.warn(
                &origin,
                format!("instance {logical} has no Properties, hence no known address"),
            );
            d.interfaces.push(DInterface {
                name: L::new(logical.clone(), origin.clone()),
                instance: logical,
                device: None,
                addresses: Vec::new(),
                groups,
                groups_at: origin.clone(),
                timeouts: DTimeouts::default(),
                audit: None,
                at: origin,
            });
            return;
        };
        self.warn_unknown(&p, "AWS::EC2::Instance", INSTANCE_PROPS);
        if let Some(lt) = p.get("LaunchTemplate") {
            self.sink.warn(
                &lt.origin(self.sink),
                "launch templates are not read: groups and addresses must be on the instance",
            );
        }
        let (tag_name, device) = self.tags(&p);
        let name = tag_name.unwrap_or_else(|| logical.clone());
        self.aliases.insert(logical.clone(), name.clone());
        let Some(nics) = p.get("NetworkInterfaces") else {
            let iface = self.instance_own_interface(&p, &logical, name, device, origin);
            d.interfaces.push(iface);
            return;
        };
        for k in [
            "SecurityGroupIds",
            "SecurityGroups",
            "PrivateIpAddress",
            "Ipv6Addresses",
            "Ipv6AddressCount",
        ] {
            if let Some(v) = p.get(k) {
                self.sink.error_hint(
                    &v.origin(self.sink),
                    format!("{k} cannot be combined with NetworkInterfaces (EC2 rejects it)"),
                    "put groups (GroupSet) and addresses on the network interface",
                );
            }
        }
        if device.is_some() {
            self.sink.warn(&origin, format!("the {DEVICE_TAG} tag of an instance with NetworkInterfaces is ignored; tag the interfaces' ENIs"));
        }
        let Some(items) = list(self.sink, &nics, "NetworkInterfaces") else {
            return;
        };
        let only_one = items.len() == 1;
        for (n, item) in items.iter().enumerate() {
            let Some(nf) = fields(self.sink, item, "a network interface") else {
                continue;
            };
            let nic = Nic {
                n,
                only_one,
                instance: &name,
                logical: &logical,
            };
            if let Some(iface) = self.instance_nic(&nf, &nic, attached) {
                d.interfaces.push(iface);
            }
        }
    }

    /// The one interface of an instance without NetworkInterfaces: its groups and addresses
    /// are the instance's.
    fn instance_own_interface(
        &mut self,
        p: &Fields<'n>,
        logical: &str,
        name: String,
        device: Option<L<String>>,
        origin: Origin,
    ) -> DInterface {
        let mut groups = Vec::new();
        let mut groups_at = p.origin(self.sink);
        for k in ["SecurityGroupIds", "SecurityGroups"] {
            if let Some(v) = p.get(k) {
                groups_at = v.origin(self.sink);
                groups.extend(self.group_list(&v));
            }
        }
        if groups.is_empty() && !(p.has("SecurityGroupIds") || p.has("SecurityGroups")) {
            groups = self.no_groups(&origin, &format!("instance {logical}"));
        }
        let mut addresses = Vec::new();
        self.addresses(p, &mut addresses);
        DInterface {
            name: L::new(name.clone(), origin.clone()),
            instance: name,
            device,
            addresses,
            groups,
            groups_at,
            timeouts: DTimeouts::default(),
            audit: None,
            at: origin,
        }
    }

    /// One entry of an instance's NetworkInterfaces: an interface, or (NetworkInterfaceId)
    /// the attachment of an ENI of the template, recorded in `attached`.
    fn instance_nic(
        &mut self,
        nf: &Fields<'n>,
        nic: &Nic,
        attached: &mut HashMap<String, (String, i64)>,
    ) -> Option<DInterface> {
        let Nic {
            n,
            only_one,
            instance: name,
            logical,
        } = *nic;
        self.warn_unknown(nf, "a network interface", INSTANCE_NIC_PROPS);
        let index = match nf.get("DeviceIndex") {
            Some(v) => self.int(&v, "DeviceIndex").map_or(n as i64, |i| i.v),
            None => {
                self.sink.error(
                    &nf.origin(self.sink),
                    "a network interface needs a DeviceIndex",
                );
                n as i64
            }
        };
        if let Some(eni) = nf.get("NetworkInterfaceId") {
            match self.ref_name(&eni) {
                Some(Some(r)) if self.by_logical.get(&r.v).is_some_and(|&j| self.res[j].ty == ENI) => {
                    attached.insert(r.v, (name.to_string(), index));
                }
                Some(Some(r)) if !self.by_logical.contains_key(&r.v) => self.undefined(&r, "Ref"),
                _ => self.sink.warn(
                    &eni.origin(self.sink),
                    "this network interface is not an AWS::EC2::NetworkInterface of this template; it is ignored",
                ),
            }
            return None;
        }
        let nic_origin = nf.origin(self.sink);
        let (groups, groups_at) = self.group_set(
            nf,
            &nic_origin,
            &format!("network interface {n} of instance {logical}"),
        );
        let mut addresses = Vec::new();
        self.addresses(nf, &mut addresses);
        let timeouts = self.conntrack(nf);
        // An instance's only interface is named after the instance (as in the native
        // format); with several, `instance/ethN` after their device index.
        let iface_name = if only_one {
            name.to_string()
        } else {
            format!("{name}/eth{index}")
        };
        Some(DInterface {
            name: L::new(iface_name, nic_origin.clone()),
            instance: name.to_string(),
            device: None,
            addresses,
            groups,
            groups_at,
            timeouts,
            audit: None,
            at: nic_origin,
        })
    }

    /// An AWS::EC2::NetworkInterfaceAttachment joining an instance and an ENI of the
    /// template: (ENI logical id, (instance name, device index)).
    fn attachment(&mut self, i: usize) -> Option<(String, (String, i64))> {
        let p = self.props(i)?;
        p.check_keys(
            self.sink,
            "AWS::EC2::NetworkInterfaceAttachment Properties",
            &[
                "DeleteOnTermination",
                "DeviceIndex",
                "EnaSrdSpecification",
                "InstanceId",
                "NetworkInterfaceId",
            ],
        );
        let target = |this: &mut Self, key: &str, ty: &str| -> Option<String> {
            let v = p.get(key)?;
            match this.ref_name(&v) {
                Some(Some(r)) => match this.by_logical.get(&r.v) {
                    Some(&j) if this.res[j].ty == ty => Some(r.v),
                    Some(_) => None,
                    None => {
                        this.undefined(&r, "Ref");
                        None
                    }
                },
                _ => None,
            }
        };
        let (Some(inst), Some(eni)) = (
            target(self, "InstanceId", INSTANCE),
            target(self, "NetworkInterfaceId", ENI),
        ) else {
            let o = p.origin(self.sink);
            self.sink.warn(&o, "this attachment does not join an instance and an interface of this template; it is ignored");
            return None;
        };
        let index = p
            .get("DeviceIndex")
            .and_then(|v| self.int(&v, "DeviceIndex"))
            .map_or(1, |i| i.v);
        let inst_name = self
            .props(self.by_logical[&inst])
            .and_then(|pp| self.tags(&pp).0)
            .unwrap_or(inst);
        Some((eni, (inst_name, index)))
    }

    /// One AWS::EC2::NetworkInterface, named after the instance it is attached to if any.
    fn eni(&mut self, i: usize, attached: &HashMap<String, (String, i64)>) -> DInterface {
        let logical = self.res[i].logical.clone();
        let origin = self.res[i].at.origin(self.sink);
        let (tag_name, device, groups, groups_at, addresses, timeouts) = match &self.props(i) {
            Some(p) => {
                self.warn_unknown(p, "AWS::EC2::NetworkInterface", ENI_PROPS);
                let (tag_name, device) = self.tags(p);
                let (groups, groups_at) =
                    self.group_set(p, &origin, &format!("network interface {logical}"));
                let mut addresses = Vec::new();
                self.addresses(p, &mut addresses);
                (
                    tag_name,
                    device,
                    groups,
                    groups_at,
                    addresses,
                    self.conntrack(p),
                )
            }
            None => {
                let groups = self.no_groups(&origin, &format!("network interface {logical}"));
                (
                    None,
                    None,
                    groups,
                    origin.clone(),
                    Vec::new(),
                    DTimeouts::default(),
                )
            }
        };
        let (name, instance) = match attached.get(&logical) {
            Some((inst, idx)) => (format!("{inst}/eth{idx}"), inst.clone()),
            None => {
                let n = tag_name.unwrap_or_else(|| logical.clone());
                (n.clone(), n)
            }
        };
        self.aliases.insert(logical.clone(), name.clone());
        DInterface {
            name: L::new(name, origin.clone()),
            instance,
            device,
            addresses,
            groups,
            groups_at,
            timeouts,
            audit: None,
            at: origin,
        }
    }

    fn warn_unknown(&mut self, f: &Fields<'n>, what: &str, known: &[&str]) {
        for (key, k, _) in f.entries() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = match did_you_mean(&key, known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "sg ignores it".to_string(),
            };
            self.sink.warn_hint(
                &k.origin(self.sink),
                format!("unknown property `{key}` in {what}"),
                hint,
            );
        }
    }

    fn finish(&mut self, d: &mut Draft) {
        // Ids sg derived (an import's name) need not have the shape of an id.
        for (id, at) in std::mem::take(&mut self.external_groups) {
            let check = looks_like_group_id(&id);
            let extra = self.external_rules.remove(&id).unwrap_or_default();
            let mut g = DGroup::external(id, at);
            g.check_id = check;
            g.extra = extra;
            d.groups.push(g);
        }
        for (id, at) in std::mem::take(&mut self.external_pls) {
            let check = looks_like_prefix_list_id(&id);
            let mut pl = DPrefixList::external(id, at);
            pl.check_id = check;
            d.prefix_lists.push(pl);
        }
        if let Some(at) = self.default_needed.take()
            && !d.groups.iter().any(|g| g.id.v == DEFAULT_GROUP_ID)
        {
            d.groups.push(DGroup {
                id: L::new(DEFAULT_GROUP_ID.to_string(), at.clone()),
                check_id: false,
                name: Some(L::new("default".to_string(), at.clone())),
                description: Some(L::new("default VPC security group".to_string(), at.clone())),
                ingress: None,
                ingress_at: at.clone(),
                egress: None,
                egress_at: at.clone(),
                extra: Vec::new(),
                default_group: true,
                external: false,
                at,
            });
        }
    }
}

/// The id of the group or prefix list of the template that `t` names by logical id, id or
/// name (`defined`: logical id -> (id, name), as `Cfn.groups` and `Cfn.pls` hold them).
fn defined<'a>(
    defined: &'a BTreeMap<String, (String, Option<String>)>,
    t: &str,
) -> Option<&'a str> {
    defined
        .iter()
        .find(|(logical, (id, name))| *logical == t || id == t || name.as_deref() == Some(t))
        .map(|(_, (id, _))| id.as_str())
}

/// The id of a group or prefix list sg knows only by a name (an export's, a parameter's):
/// the name with `${...}` unwrapped and what an id cannot hold made `-`, so it survives
/// export to the native format (`${Parent}-SG` -> `Parent-SG`).
fn external_id(name: &str) -> String {
    let id: String = name
        .replace("${", "")
        .replace('}', "")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_matches('-');
    if id.is_empty() {
        "unknown".to_string()
    } else {
        id.chars().take(64).collect()
    }
}

/// Which entry of an instance's NetworkInterfaces is read, and whose.
#[derive(Clone, Copy)]
struct Nic<'a> {
    /// Its position in the list (the device index when it gives none).
    n: usize,
    /// The instance has only this one (it is then named after the instance).
    only_one: bool,
    /// The instance's name (its Name tag or logical id).
    instance: &'a str,
    logical: &'a str,
}

/// A rule's group and prefix list peer properties in `dir`.
fn peer_keys(dir: Direction) -> (&'static str, &'static str) {
    match dir {
        Direction::Ingress => ("SourceSecurityGroupId", "SourcePrefixListId"),
        Direction::Egress => ("DestinationSecurityGroupId", "DestinationPrefixListId"),
    }
}

/// The text of a plain scalar (no tag check: used under Ref/GetAtt).
fn plain_text(at: &At) -> Option<String> {
    at.node
        .scalar()
        .filter(|_| !at.is_null())
        .map(str::to_string)
}
