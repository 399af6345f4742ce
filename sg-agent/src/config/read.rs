//! Located reading of the YAML tree: a cursor that knows its path, mapping field access with
//! unknown-key detection ("did you mean"), and typed scalar reads with clear "expected X,
//! found Y" errors.
//!
//! Shared by the three front-ends. It must not know any format's field names.

use super::diag::{Sink, did_you_mean};
use super::draft::L;
use super::yaml::Node;
use crate::policy::Origin;

/// A node and the path that led to it (`security_groups[0].ingress[2]`).
#[derive(Clone)]
pub(crate) struct At<'n> {
    pub node: &'n Node,
    pub path: String,
}

impl<'n> At<'n> {
    pub fn root(node: &'n Node) -> At<'n> {
        At {
            node,
            path: String::new(),
        }
    }

    pub fn child(&self, key: &str, node: &'n Node) -> At<'n> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        At { node, path }
    }

    pub fn item(&self, i: usize, node: &'n Node) -> At<'n> {
        At {
            node,
            path: format!("{}[{i}]", self.path),
        }
    }

    /// The same node under a path with a suffix (for things synthesised at a place, such as
    /// default rules).
    pub fn with_suffix(&self, suffix: &str) -> At<'n> {
        At {
            node: self.node,
            path: format!("{}{suffix}", self.path),
        }
    }

    pub fn origin(&self, sink: &Sink) -> Origin {
        Origin {
            file: sink.file.clone(),
            line: self.node.line,
            column: self.node.column,
            path: self.path.clone(),
        }
    }

    pub fn is_null(&self) -> bool {
        self.node.is_null()
    }
}

/// A mapping being read.
pub(crate) struct Fields<'n> {
    pub at: At<'n>,
}

impl<'n> Fields<'n> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<At<'n>> {
        self.node_entries()
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| self.at.child(key, v))
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Keys and values in order.
    pub fn entries(&self) -> Vec<(String, At<'n>, At<'n>)> {
        self.node_entries()
            .iter()
            .map(|(k, v)| {
                let key = k.scalar().unwrap_or_default().to_string();
                (key.clone(), self.at.child(&key, k), self.at.child(&key, v))
            })
            .collect()
    }

    fn node_entries(&self) -> &'n [(std::rc::Rc<Node>, std::rc::Rc<Node>)] {
        self.at.node.as_map().unwrap_or_default()
    }

    pub fn origin(&self, sink: &Sink) -> Origin {
        self.at.origin(sink)
    }

    /// Reports every key not in `known` as an error at the key. `what` names the mapping in
    /// messages ("a security group"). Returns false when something was unknown.
    pub fn check_keys(&self, sink: &mut Sink, what: &str, known: &[&str]) -> bool {
        self.check_keys_with(sink, what, known, |_| None)
    }

    /// Like [`Fields::check_keys`], with a caller-specific hint for some keys (tried first).
    pub fn check_keys_with(
        &self,
        sink: &mut Sink,
        what: &str,
        known: &[&str],
        special: impl Fn(&str) -> Option<String>,
    ) -> bool {
        let mut ok = true;
        for (key, k, _) in self.entries() {
            if known.contains(&key.as_str()) {
                continue;
            }
            ok = false;
            let hint = special(&key).unwrap_or_else(|| match did_you_mean(&key, known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known fields: {}", known.join(", ")),
            });
            sink.error_hint(
                &k.origin(sink),
                format!("unknown field `{key}` in {what}"),
                hint,
            );
        }
        ok
    }
}

/// Reads a mapping; reports what was found otherwise.
pub(crate) fn fields<'n>(sink: &mut Sink, at: &At<'n>, what: &str) -> Option<Fields<'n>> {
    if at.node.as_map().is_some() {
        no_tag(sink, at);
        return Some(Fields { at: at.clone() });
    }
    sink.error(
        &at.origin(sink),
        format!("{what} must be a mapping, found {}", at.node.describe()),
    );
    None
}

/// Reads a list; reports what was found otherwise.
pub(crate) fn list<'n>(sink: &mut Sink, at: &At<'n>, what: &str) -> Option<Vec<At<'n>>> {
    match at.node.as_seq() {
        Some(items) => {
            no_tag(sink, at);
            Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| at.item(i, n))
                    .collect(),
            )
        }
        None => {
            let hint = if at.is_null() {
                " (write [] for an empty list)"
            } else {
                ""
            };
            sink.error(
                &at.origin(sink),
                format!("{what} must be a list, found {}{hint}", at.node.describe()),
            );
            None
        }
    }
}

/// A scalar or a list of them: both `x` and `[x, y]` read as a list.
pub(crate) fn one_or_list<'n>(sink: &mut Sink, at: &At<'n>, what: &str) -> Option<Vec<At<'n>>> {
    if at.node.as_seq().is_some() {
        return list(sink, at, what);
    }
    Some(vec![at.clone()])
}

/// Custom tags mean something only in CloudFormation, which reads them before calling here.
fn no_tag(sink: &mut Sink, at: &At) -> bool {
    match &at.node.tag {
        Some(t) if !t.starts_with("!!") => {
            sink.error_hint(
                &at.origin(sink),
                format!("the tag {t} has no meaning here"),
                "CloudFormation tags (!Ref, !GetAtt ...) are read only in CloudFormation templates; remove the tag",
            );
            false
        }
        _ => true,
    }
}

/// Any scalar's text (numbers and booleans are text too), not null.
pub(crate) fn string(sink: &mut Sink, at: &At, what: &str) -> Option<L<String>> {
    match at.node.scalar() {
        Some(s) if !at.is_null() => {
            if !no_tag(sink, at) {
                return None;
            }
            Some(L::new(s.to_string(), at.origin(sink)))
        }
        _ => {
            sink.error(
                &at.origin(sink),
                format!("{what} must be a string, found {}", at.node.describe()),
            );
            None
        }
    }
}

/// An integer, written plain (`443`) or quoted (`"443"`, as CloudFormation often has it).
pub(crate) fn int(sink: &mut Sink, at: &At, what: &str) -> Option<L<i64>> {
    let s = string(sink, at, what)?;
    parse_int(sink, s, what)
}

pub(crate) fn parse_int(sink: &mut Sink, s: L<String>, what: &str) -> Option<L<i64>> {
    match s.v.trim().parse::<i64>() {
        Ok(v) => Some(L::new(v, s.at)),
        Err(_) => {
            sink.error(
                &s.at,
                format!("{what} must be a whole number, found `{}`", s.v),
            );
            None
        }
    }
}

/// `true`/`false` (YAML 1.2 core schema, any case).
pub(crate) fn boolean(sink: &mut Sink, at: &At, what: &str) -> Option<bool> {
    let s = string(sink, at, what)?;
    match s.v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            sink.error(
                &s.at,
                format!("{what} must be true or false, found `{}`", s.v),
            );
            None
        }
    }
}
