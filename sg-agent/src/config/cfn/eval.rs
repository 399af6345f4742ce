//! CloudFormation's intrinsic functions, evaluated as CloudFormation evaluates them before it
//! creates anything: the template's Resources are rewritten into a tree where every value
//! that can be known from the template and its inputs is a plain scalar or list, placed where
//! its expression was (so later errors point at the expression), and `AWS::NoValue` removes
//! the property or list item it stands for.
//!
//! What cannot be known before deploying (a resource's physical id or attribute, another
//! stack's export not given with `--import`, a parameter without Default or value) is left as
//! written, and why is recorded at its place: the reader reports it only where the value
//! matters (a rule's CIDR), and says nothing of it where sg does not look (a Lambda's code).
//! This module never reports anything itself.
//!
//! `Ref` and `Fn::GetAtt` to resources are left for the reader, which knows what a group's id
//! is. Conditions and `Fn::If` are in conditions.rs; parameters and pseudo parameters in
//! params.rs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;

use super::inputs::{ParameterUse, TemplateInputs};
use super::params::ParamDef;
use crate::config::yaml::{Kind, Node, Style};

/// Why a value was left unevaluated, said where it matters.
#[derive(Clone, Debug)]
pub(super) struct Why {
    pub message: String,
    pub hint: Option<String>,
    /// The value names a security group defined elsewhere (an import, a parameter of type
    /// AWS::EC2::SecurityGroup::Id): where a group is expected it becomes an external group
    /// with this id.
    pub group: Option<String>,
}

impl Why {
    pub fn new(message: impl Into<String>) -> Why {
        Why {
            message: message.into(),
            hint: None,
            group: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Why {
        self.hint = Some(hint.into());
        self
    }
}

/// What evaluating a value gave.
pub(super) enum Out {
    Node(Rc<Node>),
    /// `Ref: AWS::NoValue`: the property or item is removed.
    NoValue,
}

/// A place in the file: a node's line and column.
pub(super) type Place = (u32, u32);

pub(super) fn place(n: &Node) -> Place {
    (n.line, n.column)
}

/// The template's evaluation state.
pub(super) struct Resolver<'i> {
    pub inputs: &'i TemplateInputs,
    pub params: BTreeMap<String, ParamDef>,
    pub mappings: Option<Rc<Node>>,
    pub conditions: Option<Rc<Node>>,
    /// Condition name -> value; None while it is being evaluated (a cycle).
    pub cond_cache: HashMap<String, Option<Result<bool, Why>>>,
    /// Logical ids of the template's resources.
    pub resources: HashSet<String>,
    /// Group and prefix list resources: logical id -> (the attribute giving the id, the id).
    pub ids: HashMap<String, (String, String)>,
    /// Parameters and pseudo parameters used where sg reads, in name order.
    pub used: BTreeMap<String, ParameterUse>,
    /// Whether uses are being recorded (while evaluating what sg reads).
    pub recording: bool,
    /// Why the expression at a place was left unevaluated.
    pub why: HashMap<Place, Why>,
    /// Values that came from a parameter's Default: place -> parameter name.
    pub defaults: HashMap<Place, String>,
}

/// The intrinsic function a node calls, if any: `(name, argument)`. Tags (`!Sub x`) read as
/// their long form (`Fn::Sub: x`); `Condition` is a function only inside conditions.
pub(super) fn call(n: &Rc<Node>) -> Option<(String, Rc<Node>)> {
    if let Some(t) = n.tag.as_deref()
        && let Some(name) = t.strip_prefix('!')
        && !name.starts_with('!')
    {
        let f = match name {
            "Ref" | "Condition" => name.to_string(),
            _ => format!("Fn::{name}"),
        };
        let mut arg = (**n).clone();
        arg.tag = None;
        return Some((f, Rc::new(arg)));
    }
    match n.as_map() {
        Some([(k, v)]) => {
            let k = k.scalar()?;
            (k == "Ref" || k == "Condition" || k.starts_with("Fn::"))
                .then(|| (k.to_string(), v.clone()))
        }
        _ => None,
    }
}

/// Whether a node calls a function (without building its argument).
pub(super) fn is_call(n: &Node) -> bool {
    if let Some(t) = n.tag.as_deref() {
        return t.starts_with('!') && !t.starts_with("!!");
    }
    match n.as_map() {
        Some([(k, _)]) => k
            .scalar()
            .is_some_and(|k| k == "Ref" || k == "Condition" || k.starts_with("Fn::")),
        _ => false,
    }
}

/// A plain scalar at a place.
pub(super) fn scalar_at(text: String, at: &Node) -> Rc<Node> {
    Rc::new(Node::synth(
        Kind::Scalar {
            value: text,
            style: Style::DoubleQuoted,
        },
        None,
        at.line,
        at.column,
    ))
}

/// A list at a place.
pub(super) fn seq_at(items: Vec<Rc<Node>>, at: &Node) -> Rc<Node> {
    Rc::new(Node::synth(Kind::Seq(items), None, at.line, at.column))
}

/// The longest text a function may build: aliases let a small file join a string with
/// itself at every level, so evaluation is bounded like parsing is (CloudFormation's own
/// template limit is 1 MB).
const MAX_TEXT: usize = 1 << 20;

fn bounded(s: &str) -> Result<(), Why> {
    if s.len() > MAX_TEXT {
        return Err(Why::new(format!(
            "the value evaluates to more than {} MiB of text",
            MAX_TEXT >> 20
        )));
    }
    Ok(())
}

/// The items of a function's argument list, `n` of them (or between `min` and `max`).
fn args(arg: &Rc<Node>, f: &str, min: usize, max: usize) -> Result<Vec<Rc<Node>>, Why> {
    match arg.as_seq() {
        Some(items) if (min..=max).contains(&items.len()) => Ok(items.to_vec()),
        _ => Err(Why::new(if min == max {
            format!("{f} takes a list of {min}")
        } else {
            format!("{f} takes a list of {min} to {max}")
        })),
    }
}

impl<'i> Resolver<'i> {
    /// Evaluates a value; what cannot be evaluated stays as written, with why at its place.
    pub fn resolve(&mut self, n: &Rc<Node>) -> Out {
        if let Some((f, arg)) = call(n) {
            return match self.function(n, &f, &arg) {
                Ok(out) => out,
                Err(w) => {
                    self.why.entry(place(n)).or_insert(w);
                    Out::Node(n.clone())
                }
            };
        }
        match &n.kind {
            Kind::Scalar { .. } => Out::Node(n.clone()),
            Kind::Seq(items) => {
                let items = items
                    .iter()
                    .filter_map(|i| match self.resolve(i) {
                        Out::Node(x) => Some(x),
                        Out::NoValue => None,
                    })
                    .collect();
                Out::Node(Rc::new(Node::synth(
                    Kind::Seq(items),
                    n.tag.clone(),
                    n.line,
                    n.column,
                )))
            }
            Kind::Map(entries) => {
                let entries = entries
                    .iter()
                    .filter_map(|(k, v)| match self.resolve(v) {
                        Out::Node(x) => Some((k.clone(), x)),
                        Out::NoValue => None,
                    })
                    .collect();
                Out::Node(Rc::new(Node::synth(
                    Kind::Map(entries),
                    n.tag.clone(),
                    n.line,
                    n.column,
                )))
            }
        }
    }

    /// One function call `f(arg)` written at `n`.
    fn function(&mut self, n: &Rc<Node>, f: &str, arg: &Rc<Node>) -> Result<Out, Why> {
        let node = |x: Rc<Node>| Ok(Out::Node(x));
        match f {
            "Ref" => self.reference(n, arg),
            "Fn::If" => self.fn_if(arg),
            "Fn::Sub" => node(scalar_at(self.sub(n, arg)?, n)),
            "Fn::Join" => {
                let a = args(arg, f, 2, 2)?;
                let delim = self.text(&a[0])?;
                let items = self.list(&a[1])?;
                let mut out = String::new();
                for (k, i) in items.iter().enumerate() {
                    if k > 0 {
                        out.push_str(&delim);
                    }
                    out.push_str(&self.text(i)?);
                    bounded(&out)?;
                }
                node(scalar_at(out, n))
            }
            "Fn::Select" => {
                let a = args(arg, f, 2, 2)?;
                let index = self.text(&a[0])?;
                let items = self.list(&a[1])?;
                let i: usize = index.trim().parse().map_err(|_| {
                    Why::new(format!("Fn::Select's index `{index}` is not a number"))
                })?;
                let len = items.len();
                let item = items.into_iter().nth(i).ok_or_else(|| {
                    Why::new(format!(
                        "Fn::Select index {i} is out of range: the list has {len} items"
                    ))
                })?;
                node(item)
            }
            "Fn::Split" => {
                let a = args(arg, f, 2, 2)?;
                let delim = self.text(&a[0])?;
                let s = self.text(&a[1])?;
                if delim.is_empty() {
                    return Err(Why::new("Fn::Split's delimiter is empty"));
                }
                let parts = s
                    .split(delim.as_str())
                    .map(|p| scalar_at(p.to_string(), n))
                    .collect();
                node(seq_at(parts, n))
            }
            "Fn::FindInMap" => node(self.find_in_map(arg)?),
            "Fn::GetAZs" => {
                let region = match self.text(arg)? {
                    r if r.is_empty() => self.pseudo_text("AWS::Region"),
                    r => r,
                };
                // Which zones an account sees is known only to AWS; three is what every
                // region offers, under the names most accounts see.
                let azs = ["a", "b", "c"]
                    .iter()
                    .map(|z| scalar_at(format!("{region}{z}"), n))
                    .collect();
                node(seq_at(azs, n))
            }
            "Fn::Base64" => {
                let b = base64(self.text(arg)?.as_bytes());
                bounded(&b)?;
                node(scalar_at(b, n))
            }
            "Fn::Cidr" => node(self.cidr(n, arg)?),
            "Fn::Length" => {
                let items = self.list(arg)?;
                node(scalar_at(items.len().to_string(), n))
            }
            "Fn::ImportValue" => self.import(n, arg),
            "Fn::GetAtt" | "Fn::Transform" => Ok(Out::Node(n.clone())),
            other => Err(Why::new(format!(
                "{other} is not a function CloudFormation evaluates in a resource's properties"
            ))),
        }
    }

    /// `Fn::ImportValue`: an export of another stack, known only when given with `--import`.
    fn import(&mut self, n: &Rc<Node>, arg: &Rc<Node>) -> Result<Out, Why> {
        let name = match self.text(arg) {
            Ok(name) => name,
            Err(w) => {
                // The export's name depends on something unknown (typically the other stack's
                // name, a parameter): the group it names is still one defined elsewhere,
                // called by the name as written.
                let written = match call(arg) {
                    Some((f, a)) if f == "Fn::Sub" => a
                        .scalar()
                        .or_else(|| a.as_seq().and_then(|s| s.first()).and_then(|t| t.scalar()))
                        .map(str::to_string),
                    _ => arg.scalar().map(str::to_string),
                };
                let hint = format!(
                    "{}; or give the export's value with --import NAME=VALUE",
                    w.hint.clone().unwrap_or_else(|| w.message.clone())
                );
                return Err(Why {
                    message: format!(
                        "Fn::ImportValue of an export whose name is unknown ({})",
                        w.message
                    ),
                    hint: Some(hint),
                    group: written,
                });
            }
        };
        if let Some(v) = self.inputs.imports.get(&name) {
            if self.recording {
                self.used.insert(
                    format!("import {name}"),
                    ParameterUse {
                        name: format!("Fn::ImportValue {name}"),
                        value: v.clone(),
                        source: "--import".to_string(),
                    },
                );
            }
            return Ok(Out::Node(scalar_at(v.clone(), n)));
        }
        Err(Why {
            message: format!("Fn::ImportValue {name} is an export of another stack, unknown here"),
            hint: Some(format!("give its value: --import '{name}=VALUE'")),
            group: Some(name),
        })
    }

    /// The text a value evaluates to (numbers and booleans are text too).
    pub fn text(&mut self, n: &Rc<Node>) -> Result<String, Why> {
        let Out::Node(v) = self.resolve(n) else {
            return Err(Why::new("AWS::NoValue is not a value here"));
        };
        if let Some(id) = self.id_text(&v) {
            return Ok(id);
        }
        if call(&v).is_some() {
            return Err(self.stuck(&v));
        }
        match &v.kind {
            Kind::Scalar { value, .. } => Ok(value.clone()),
            Kind::Seq(_) => Err(Why::new("expected a string, found a list")),
            Kind::Map(_) => Err(Why::new("expected a string, found a mapping")),
        }
    }

    /// The items a list value evaluates to.
    pub fn list(&mut self, n: &Rc<Node>) -> Result<Vec<Rc<Node>>, Why> {
        let Out::Node(v) = self.resolve(n) else {
            return Err(Why::new("AWS::NoValue is not a list"));
        };
        if call(&v).is_some() {
            return Err(self.stuck(&v));
        }
        match &v.kind {
            Kind::Seq(items) => Ok(items.clone()),
            _ => Err(Why::new(format!("expected a list, found {}", v.describe()))),
        }
    }

    /// The id a Ref or GetAtt (GroupId, PrefixListId) of a group or prefix list resource
    /// gives in a string: the one the reader resolves by logical id or name.
    fn id_text(&self, v: &Rc<Node>) -> Option<String> {
        let (f, arg) = call(v)?;
        let (logical, attr) = match f.as_str() {
            "Ref" => (arg.scalar()?.to_string(), None),
            "Fn::GetAtt" => match (arg.scalar(), arg.as_seq()) {
                (Some(s), _) => {
                    let (a, b) = s.split_once('.')?;
                    (a.to_string(), Some(b.to_string()))
                }
                (None, Some([a, b])) => (a.scalar()?.to_string(), Some(b.scalar()?.to_string())),
                _ => return None,
            },
            _ => return None,
        };
        let (want, id) = self.ids.get(&logical)?;
        (attr.is_none() || attr.as_deref() == Some(want.as_str())).then(|| id.clone())
    }

    /// Why the expression `v` (left as written) has no known value.
    pub fn stuck(&self, v: &Rc<Node>) -> Why {
        if let Some(w) = self.why.get(&place(v)) {
            return w.clone();
        }
        match call(v) {
            Some((f, arg)) if f == "Ref" => {
                let name = arg.scalar().unwrap_or_default();
                if self.resources.contains(name) {
                    Why::new(format!(
                        "Ref to the resource {name} is its physical id, known only once the stack is deployed"
                    ))
                } else {
                    Why::new(format!(
                        "Ref to {name}, which is not defined in this template"
                    ))
                }
            }
            Some((f, _)) if f == "Fn::GetAtt" => Why::new(
                "an attribute of a resource (Fn::GetAtt) is known only once the stack is deployed",
            ),
            Some((f, _)) => Why::new(format!("{f} cannot be evaluated here")),
            None => Why::new("the value is unknown"),
        }
    }

    /// `Fn::Sub`: `String` or `[String, {Var: Value}]`; `${Name}` is a variable, a parameter,
    /// a pseudo parameter or a resource (`${Res.Attr}` an attribute), `${!x}` is `${x}`.
    fn sub(&mut self, n: &Rc<Node>, arg: &Rc<Node>) -> Result<String, Why> {
        let (template, vars) = match arg.as_seq() {
            Some([t, m]) => (t.clone(), m.as_map().map(<[_]>::to_vec).unwrap_or_default()),
            Some(_) => return Err(Why::new("Fn::Sub takes a string or [string, {variables}]")),
            None => (arg.clone(), Vec::new()),
        };
        let s = self.text(&template)?;
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            rest = &after[end + 1..];
            if let Some(lit) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(lit);
                out.push('}');
                continue;
            }
            let name = name.trim();
            if let Some((_, v)) = vars.iter().find(|(k, _)| k.scalar() == Some(name)) {
                out.push_str(&self.text(v)?);
                bounded(&out)?;
            } else if self.params.contains_key(name) || name.starts_with("AWS::") {
                let v = self.parameter(n, name)?;
                out.push_str(&self.text(&v)?);
                bounded(&out)?;
            } else if self.resources.contains(name) {
                return Err(Why::new(format!(
                    "${{{name}}} in Fn::Sub is the physical id of a resource, known only once the stack is deployed"
                )));
            } else if name.contains('.') {
                return Err(Why::new(format!(
                    "${{{name}}} in Fn::Sub is an attribute of a resource, known only once the stack is deployed"
                )));
            } else {
                return Err(Why::new(format!(
                    "${{{name}}} in Fn::Sub names no parameter, resource or variable"
                )));
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `Fn::FindInMap: [MapName, TopKey, SecondKey]` in the template's Mappings.
    fn find_in_map(&mut self, arg: &Rc<Node>) -> Result<Rc<Node>, Why> {
        let a = args(arg, "Fn::FindInMap", 3, 4)?;
        let keys = [self.text(&a[0])?, self.text(&a[1])?, self.text(&a[2])?];
        let found = self
            .mappings
            .clone()
            .and_then(|m| m.get(&keys[0]).cloned())
            .and_then(|m| m.get(&keys[1]).cloned())
            .and_then(|m| m.get(&keys[2]).cloned());
        match (found, a.get(3)) {
            (Some(v), _) => match self.resolve(&v) {
                Out::Node(v) => Ok(v),
                Out::NoValue => Err(Why::new("a mapping's value is AWS::NoValue")),
            },
            // AWS::LanguageExtensions' `{DefaultValue: x}`.
            (None, Some(d)) if d.get("DefaultValue").is_some() => {
                let d = d.get("DefaultValue").cloned().unwrap_or_else(|| d.clone());
                match self.resolve(&d) {
                    Out::Node(v) => Ok(v),
                    Out::NoValue => Err(Why::new("DefaultValue is AWS::NoValue")),
                }
            }
            (None, _) => Err(Why::new(format!(
                "Mappings has no {}.{}.{}",
                keys[0], keys[1], keys[2]
            ))
            .hint("CloudFormation refuses to create the stack: add the key to Mappings, or choose a parameter value that has one")),
        }
    }

    /// `Fn::Cidr: [ipBlock, count, cidrBits]`: `count` consecutive subnets of the block with
    /// `cidrBits` host bits each.
    fn cidr(&mut self, n: &Rc<Node>, arg: &Rc<Node>) -> Result<Rc<Node>, Why> {
        let a = args(arg, "Fn::Cidr", 3, 3)?;
        let block = self.text(&a[0])?;
        let count: u32 = self
            .text(&a[1])?
            .trim()
            .parse()
            .map_err(|_| Why::new("Fn::Cidr's count is not a number"))?;
        let bits: u32 = self
            .text(&a[2])?
            .trim()
            .parse()
            .map_err(|_| Why::new("Fn::Cidr's cidrBits is not a number"))?;
        let subnets = cidr_subnets(&block, count, bits).map_err(Why::new)?;
        Ok(seq_at(
            subnets.into_iter().map(|s| scalar_at(s, n)).collect(),
            n,
        ))
    }
}

/// The subnets `Fn::Cidr` returns (AWS: count 1-256, the subnets must fit in the block).
pub(super) fn cidr_subnets(block: &str, count: u32, bits: u32) -> Result<Vec<String>, String> {
    let net: ipnet::IpNet = block
        .trim()
        .parse()
        .map_err(|_| format!("Fn::Cidr: `{block}` is not a CIDR block"))?;
    let max = u32::from(net.max_prefix_len());
    if !(1..=256).contains(&count) {
        return Err(format!("Fn::Cidr: count {count} is not between 1 and 256"));
    }
    if bits == 0 || bits > max - u32::from(net.prefix_len()) {
        return Err(format!("Fn::Cidr: {bits} subnet bits do not fit in {net}"));
    }
    let len = max - bits;
    let available = 1u128 << ((len - u32::from(net.prefix_len())).min(127));
    if u128::from(count) > available {
        return Err(format!(
            "Fn::Cidr: {net} holds {available} /{len} subnets, not {count}"
        ));
    }
    let start = match net.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let step = 1u128 << bits;
    Ok((0..u128::from(count))
        .map(|i| {
            let a = start + i * step;
            let ip = match net {
                ipnet::IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(a as u32)),
                ipnet::IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(a)),
            };
            format!("{ip}/{len}")
        })
        .collect())
}

/// Standard base64 with padding (what Fn::Base64 returns).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_gives_consecutive_subnets_of_either_family() {
        assert_eq!(
            cidr_subnets("192.0.2.0/24", 3, 6).unwrap(),
            ["192.0.2.0/26", "192.0.2.64/26", "192.0.2.128/26"]
        );
        // The example of the Fn::Cidr documentation, IPv6: /64 subnets of a /56.
        assert_eq!(
            cidr_subnets("2001:db8:0:ff00::/56", 2, 64).unwrap(),
            ["2001:db8:0:ff00::/64", "2001:db8:0:ff01::/64"]
        );
        assert!(
            cidr_subnets("192.0.2.0/24", 5, 6)
                .unwrap_err()
                .contains("holds 4 /26")
        );
        assert!(
            cidr_subnets("192.0.2.0/24", 1, 9)
                .unwrap_err()
                .contains("do not fit")
        );
        assert!(
            cidr_subnets("nope", 1, 8)
                .unwrap_err()
                .contains("not a CIDR block")
        );
    }

    #[test]
    fn base64_pads_as_the_standard_says() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }
}
