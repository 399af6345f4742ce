//! The template as the stack would have it, before the reader looks at it: parameter values
//! checked against their declarations, resources whose Condition is false left out, and the
//! Properties of the others evaluated (eval.rs). Resource types sg does not read are
//! evaluated too (a Ref to them must still resolve) but their parameters are not listed as
//! used.
//!
//! Also owns what is not CloudFormation at all: a Rain module (`Type: !Rain::Module`) is named
//! as such, located, with the command that expands it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use super::eval::{Out, Resolver, Why, call};
use super::inputs::TemplateInputs;
use super::nacl::{NACL, NACL_ASSOCIATION, NACL_ENTRY};
use super::params::ParamDef;
use super::{ENI, ENI_ATTACHMENT, INSTANCE, PREFIX_LIST, SG, SG_EGRESS, SG_INGRESS};
use crate::config::diag::{Sink, did_you_mean};
use crate::config::read::{At, Fields};
use crate::config::yaml::{Kind, Node};

/// Resource types whose properties sg reads.
pub(super) const READ_TYPES: &[&str] = &[
    SG,
    SG_INGRESS,
    SG_EGRESS,
    INSTANCE,
    ENI,
    ENI_ATTACHMENT,
    PREFIX_LIST,
    NACL,
    NACL_ENTRY,
    NACL_ASSOCIATION,
];

/// The evaluated template and what the reader needs of the evaluation.
pub(super) struct Stack<'i> {
    /// The template with Resources evaluated and excluded resources removed.
    pub root: Rc<Node>,
    pub resolver: Resolver<'i>,
    /// Resources of types sg reads that a false Condition leaves out, in template order.
    pub excluded: Vec<String>,
}

/// Evaluates the template `top` (the root mapping) with `inputs`.
pub(super) fn evaluate<'i>(sink: &mut Sink, top: &Fields, inputs: &'i TemplateInputs) -> Stack<'i> {
    let section = |k: &str| top.get(k).map(|a| Rc::new(a.node.clone()));
    let mut params = BTreeMap::new();
    if let Some(p) = top.get("Parameters")
        && let Some(entries) = p.node.as_map()
    {
        for (k, v) in entries {
            if let Some(name) = k.scalar() {
                params.insert(name.to_string(), ParamDef::read(v));
            }
        }
    }
    let resources: HashSet<String> = top
        .get("Resources")
        .and_then(|r| r.node.as_map())
        .map(|e| {
            e.iter()
                .filter_map(|(k, _)| k.scalar().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let ids = top
        .get("Resources")
        .and_then(|r| r.node.as_map())
        .map(|e| {
            e.iter()
                .filter_map(|(k, v)| Some((k.scalar()?.to_string(), id_of(k.scalar()?, v)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut resolver = Resolver {
        inputs,
        params,
        mappings: section("Mappings"),
        conditions: section("Conditions"),
        cond_cache: HashMap::new(),
        resources,
        ids,
        used: BTreeMap::new(),
        recording: false,
        why: HashMap::new(),
        defaults: HashMap::new(),
    };
    check_inputs(sink, top, &resolver);
    let mut excluded = Vec::new();
    let entries: Vec<(Rc<Node>, Rc<Node>)> = top
        .at
        .node
        .as_map()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| {
            if k.scalar() == Some("Resources") && v.as_map().is_some() {
                let at = top.at.child("Resources", v);
                (
                    k.clone(),
                    resources_evaluated(sink, &at, &mut resolver, &mut excluded),
                )
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let n = top.at.node;
    let root = Rc::new(Node::synth(
        Kind::Map(entries),
        n.tag.clone(),
        n.line,
        n.column,
    ));
    Stack {
        root,
        resolver,
        excluded,
    }
}

/// The id the reader gives a group or prefix list resource (its GroupName or PrefixListName
/// when that has the shape of an id, else its logical id), which `Ref` to it evaluates to
/// inside a string (Fn::Join, Fn::Split, Fn::Sub).
fn id_of(logical: &str, res: &Node) -> Option<(String, String)> {
    let ty = res.get("Type")?.scalar()?;
    let (key, attr, shaped): (&str, &str, fn(&str) -> bool) = match ty {
        SG => (
            "GroupName",
            "GroupId",
            crate::config::values::looks_like_group_id,
        ),
        PREFIX_LIST => (
            "PrefixListName",
            "PrefixListId",
            crate::config::values::looks_like_prefix_list_id,
        ),
        _ => return None,
    };
    let name = res
        .get("Properties")
        .and_then(|p| p.get(key))
        .filter(|n| n.tag.is_none())
        .and_then(|n| n.scalar());
    let id = match name {
        Some(n) if shaped(n) => n.to_string(),
        _ => logical.to_string(),
    };
    Some((attr.to_string(), id))
}

/// Every value given names a parameter of the template and is one it allows.
fn check_inputs(sink: &mut Sink, top: &Fields, r: &Resolver) {
    let origin = top.origin(sink);
    let known: Vec<&str> = r.params.keys().map(String::as_str).collect();
    let mut seen = HashSet::new();
    for g in r.inputs.parameters.iter().rev() {
        if !seen.insert(g.key.as_str()) {
            continue;
        }
        let Some(def) = r.params.get(&g.key) else {
            let hint = match did_you_mean(&g.key, &known) {
                Some(k) => format!("did you mean {k}?"),
                None if known.is_empty() => "the template has no Parameters".to_string(),
                None => format!("its parameters: {}", known.join(", ")),
            };
            sink.error_hint(
                &origin,
                format!("{} gives parameter {}, which this template does not declare (CloudFormation refuses it)", g.source, g.key),
                hint,
            );
            continue;
        };
        if let Some(allowed) = &def.allowed
            && !def.is_list()
            && !allowed.contains(&g.value)
        {
            let at = top
                .get("Parameters")
                .and_then(|p| p.node.get(&g.key).map(|n| p.child(&g.key, n)))
                .map_or_else(|| origin.clone(), |a| a.origin(sink));
            sink.error_hint(
                &at,
                format!(
                    "{} gives {}={}, which is not one of its AllowedValues",
                    g.source, g.key, g.value
                ),
                format!("allowed: {}", allowed.join(", ")),
            );
        }
    }
}

/// The Resources mapping evaluated: a false Condition removes its resource, Properties are
/// evaluated, Type, Condition and the other attributes stay as written. The resources sg
/// reads go first, so the parameters their conditions use are recorded before another
/// resource's evaluation caches those conditions; the template's order is kept.
fn resources_evaluated(
    sink: &mut Sink,
    at: &At,
    r: &mut Resolver,
    excluded: &mut Vec<String>,
) -> Rc<Node> {
    let entries = at.node.as_map().unwrap_or_default();
    let mut out: Vec<(usize, Entry)> = Vec::new();
    for read_pass in [true, false] {
        for (i, (k, v)) in entries.iter().enumerate() {
            let ty = v.get("Type").and_then(|t| t.scalar()).unwrap_or_default();
            if READ_TYPES.contains(&ty) != read_pass {
                continue;
            }
            if let Some(e) = resource_evaluated(sink, at, (k, v), r, excluded) {
                out.push((i, e));
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    let n = at.node;
    let out = out.into_iter().map(|(_, e)| e).collect();
    Rc::new(Node::synth(Kind::Map(out), n.tag.clone(), n.line, n.column))
}

/// A mapping's entry: key and value.
type Entry = (Rc<Node>, Rc<Node>);

/// One resource evaluated; None when it is left out (a false Condition, a Rain module).
fn resource_evaluated(
    sink: &mut Sink,
    at: &At,
    (k, v): (&Rc<Node>, &Rc<Node>),
    r: &mut Resolver,
    excluded: &mut Vec<String>,
) -> Option<Entry> {
    let logical = k.scalar().unwrap_or_default().to_string();
    let res_at = at.child(&logical, v);
    let ty_node = v.get("Type");
    if let Some(t) = ty_node
        && let Some(module) = rain_module(t)
    {
        let o = res_at.child("Type", t).origin(sink);
        sink.error_hint(
            &o,
            format!("resource {logical} is a Rain module ({module}): Rain's syntax, not CloudFormation"),
            "expand the modules first (`rain pkg TEMPLATE > expanded.yaml`) and check the expanded template",
        );
        return None;
    }
    let ty = ty_node.and_then(|t| t.scalar()).unwrap_or_default();
    let read = READ_TYPES.contains(&ty);
    r.recording = read;
    if let Some(c) = v.get("Condition") {
        match c.scalar().map(|name| r.condition(name)) {
            Some(Ok(false)) => {
                if read {
                    excluded.push(logical);
                }
                r.recording = false;
                return None;
            }
            Some(Err(w)) if read => {
                let o = res_at.child("Condition", c).origin(sink);
                report(
                    sink,
                    &o,
                    &w,
                    &format!("whether resource {logical} exists is unknown"),
                );
            }
            _ => {}
        }
    }
    let entries = v
        .as_map()
        .unwrap_or_default()
        .iter()
        .map(|(pk, pv)| match pk.scalar() {
            Some("Properties") => (pk.clone(), r.properties(ty, pv)),
            _ => (pk.clone(), pv.clone()),
        })
        .collect();
    r.recording = false;
    let node = Node::synth(Kind::Map(entries), v.tag.clone(), v.line, v.column);
    Some((k.clone(), Rc::new(node)))
}

/// `!Rain::Module path` (YAML) or `{"Rain::Module": path}` (JSON), as written.
fn rain_module(t: &Node) -> Option<String> {
    if let Some(tag) = t.tag.as_deref()
        && tag.starts_with("!Rain::")
    {
        return Some(format!("`{tag} {}`", t.scalar().unwrap_or_default()));
    }
    match t.as_map() {
        Some([(k, v)]) if k.scalar().is_some_and(|k| k.starts_with("Rain::")) => Some(format!(
            "`{}: {}`",
            k.scalar().unwrap_or_default(),
            v.scalar().unwrap_or_default()
        )),
        _ => None,
    }
}

/// Whether sg reads property `key` of a resource of type `ty` (its parameters are then
/// listed as used).
fn reads(ty: &str, key: &str) -> bool {
    match ty {
        INSTANCE => matches!(
            key,
            "SecurityGroupIds"
                | "SecurityGroups"
                | "PrivateIpAddress"
                | "Ipv6Addresses"
                | "NetworkInterfaces"
                | "Tags"
        ),
        ENI => matches!(
            key,
            "GroupSet"
                | "PrivateIpAddress"
                | "PrivateIpAddresses"
                | "Ipv6Addresses"
                | "ConnectionTrackingSpecification"
                | "Tags"
        ),
        SG | NACL => !matches!(key, "VpcId" | "Tags"),
        _ => true,
    }
}

impl Resolver<'_> {
    /// A resource's Properties evaluated, property by property when they are a mapping (an
    /// evaluation to AWS::NoValue: an empty mapping).
    fn properties(&mut self, ty: &str, value: &Rc<Node>) -> Rc<Node> {
        let recording = self.recording;
        let node = match value.as_map() {
            Some(entries) if call(value).is_none() => {
                let entries = entries
                    .iter()
                    .filter_map(|(k, v)| {
                        self.recording = recording && reads(ty, k.scalar().unwrap_or_default());
                        match self.resolve(v) {
                            Out::Node(x) => Some((k.clone(), x)),
                            Out::NoValue => None,
                        }
                    })
                    .collect();
                Out::Node(Rc::new(Node::synth(
                    Kind::Map(entries),
                    value.tag.clone(),
                    value.line,
                    value.column,
                )))
            }
            _ => self.resolve(value),
        };
        self.recording = recording;
        match node {
            Out::Node(n) => n,
            Out::NoValue => Rc::new(Node::synth(
                Kind::Map(Vec::new()),
                None,
                value.line,
                value.column,
            )),
        }
    }
}

/// Reports `why` as an error at `origin`, prefixed by what it leaves unknown.
pub(super) fn report(sink: &mut Sink, origin: &crate::policy::Origin, why: &Why, what: &str) {
    let hint = why
        .hint
        .clone()
        .unwrap_or_else(|| "write the value literally, or give the inputs it depends on (--parameter, --import, --region)".to_string());
    sink.error_hint(origin, format!("{what}: {}", why.message), hint);
}
