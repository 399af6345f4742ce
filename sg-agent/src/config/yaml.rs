//! A located YAML tree built from `saphyr-parser` events: scalars keep their text, style and
//! tag; sequences and mappings keep their children; every node knows its line and column.
//! JSON is read by the same code (YAML 1.2 is a superset of JSON).
//!
//! Owns the hard limits that make hostile input harmless: file size, total node count after
//! alias expansion (alias bombs), nesting depth, duplicate keys, and merge keys (`<<`). Aliases
//! are shared (`Rc`), never copied, and their expanded size is counted before they are
//! accepted, so a "billion laughs" document fails in microseconds with a located error.
//!
//! It must not interpret values (no booleans, numbers, ids): the readers above decide what a
//! scalar means in its place.

use std::collections::HashMap;
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// Inputs larger than this are refused before parsing.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;
/// Nodes in the document after expanding every alias.
pub const MAX_NODES: u64 = 1_000_000;
/// Nested sequences and mappings, aliases expanded.
pub const MAX_DEPTH: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    /// The tag as written: `!Ref`, `!GetAtt`, `!!str`, or a verbatim tag.
    pub tag: Option<String>,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    /// Nodes in this subtree, aliases expanded (for the node budget).
    size: u64,
    /// 1 for a scalar (for the depth budget).
    height: u32,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Scalar {
        value: String,
        style: Style,
    },
    Seq(Vec<Rc<Node>>),
    /// Entries in document order; keys are scalars, unique; merge keys already applied.
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

impl Node {
    /// A node built after parsing (a value CloudFormation's functions evaluated to), placed
    /// where the expression it replaces was; size and height are counted as the parser does.
    pub(crate) fn synth(kind: Kind, tag: Option<String>, line: u32, column: u32) -> Node {
        let children: Vec<&Node> = match &kind {
            Kind::Scalar { .. } => Vec::new(),
            Kind::Seq(items) => items.iter().map(|n| &**n).collect(),
            Kind::Map(entries) => entries.iter().flat_map(|(k, v)| [&**k, &**v]).collect(),
        };
        let size = children.iter().fold(1u64, |s, c| s.saturating_add(c.size));
        let height = children.iter().map(|c| c.height).max().unwrap_or(0) + 1;
        Node {
            kind,
            tag,
            line,
            column,
            size,
            height,
        }
    }

    /// The text of a scalar (whatever its style or tag).
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A YAML 1.2 core-schema null: an untagged plain `~`, `null` or nothing.
    pub fn is_null(&self) -> bool {
        match &self.kind {
            Kind::Scalar {
                value,
                style: Style::Plain,
            } => {
                self.tag.is_none() && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL")
            }
            _ => false,
        }
    }

    /// A plain scalar: not quoted, not a block scalar, not tagged.
    pub fn is_plain(&self) -> bool {
        matches!(
            self.kind,
            Kind::Scalar {
                style: Style::Plain,
                ..
            }
        ) && self.tag.is_none()
    }

    pub fn as_seq(&self) -> Option<&[Rc<Node>]> {
        match &self.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Rc<Node>, Rc<Node>)]> {
        match &self.kind {
            Kind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Rc<Node>> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// "a mapping", "a list", "null", "a string" ... for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { .. } if self.is_null() => "nothing (null)",
            Kind::Scalar { .. } => "a scalar",
        }
    }
}

/// A problem found while reading the text itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub line: u32,
    pub column: u32,
    pub message: String,
    pub hint: Option<String>,
}

fn err_at(line: u32, column: u32, message: impl Into<String>, hint: Option<&str>) -> YamlError {
    YamlError {
        line,
        column,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

fn position(span: &Span) -> (u32, u32) {
    let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    (
        clamp(span.start.line()),
        clamp(span.start.col()).saturating_add(1),
    )
}

fn tag_text(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else if tag.handle == "!" || tag.handle.is_empty() {
        format!("!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

fn style_of(s: ScalarStyle) -> Style {
    match s {
        ScalarStyle::Plain => Style::Plain,
        ScalarStyle::SingleQuoted => Style::SingleQuoted,
        ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
        ScalarStyle::Literal => Style::Literal,
        ScalarStyle::Folded => Style::Folded,
    }
}

struct Header {
    line: u32,
    column: u32,
    tag: Option<String>,
    anchor: usize,
}

enum Frame {
    Seq {
        head: Header,
        items: Vec<Rc<Node>>,
    },
    Map {
        head: Header,
        entries: Vec<(Rc<Node>, Rc<Node>)>,
        /// A key waiting for its value.
        key: Option<Rc<Node>>,
        /// Key text -> where it was first written.
        seen: HashMap<String, (u32, u32)>,
        /// Values of `<<` keys, applied when the mapping closes.
        merges: Vec<Rc<Node>>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Node>>,
    root: Option<Rc<Node>>,
    /// Nodes seen so far, aliases counted at their expanded size.
    nodes: u64,
    documents: u32,
}

const MERGE_KEY: &str = "<<";

impl Builder {
    fn count(&mut self, n: u64, at: (u32, u32)) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(err_at(
                at.0,
                at.1,
                format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases counted at \
                     their expanded size)"
                ),
                Some(
                    "each alias (*name) stands for a full copy of its anchor; nested aliases multiply (an alias bomb)",
                ),
            ));
        }
        Ok(())
    }

    fn open(&mut self, at: (u32, u32)) -> Result<(), YamlError> {
        if self.stack.len() as u32 + 1 > MAX_DEPTH {
            return Err(err_at(
                at.0,
                at.1,
                format!("nesting is deeper than {MAX_DEPTH} levels"),
                None,
            ));
        }
        Ok(())
    }

    fn finish_node(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        let node = Rc::new(node);
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push_value(node)
    }

    fn push_value(&mut self, node: Rc<Node>) -> Result<(), YamlError> {
        let Some(top) = self.stack.last_mut() else {
            if self.root.is_some() {
                return Err(err_at(
                    node.line,
                    node.column,
                    "more than one YAML document in the file",
                    Some("sg reads one document: remove the extra `---` section"),
                ));
            }
            self.root = Some(node);
            return Ok(());
        };
        match top {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                entries,
                key,
                seen,
                merges,
                ..
            } => match key.take() {
                None => {
                    let Some(text) = node.scalar() else {
                        return Err(err_at(
                            node.line,
                            node.column,
                            format!("a mapping key must be a scalar, found {}", node.describe()),
                            None,
                        ));
                    };
                    if let Some((l, c)) = seen.get(text) {
                        return Err(err_at(
                            node.line,
                            node.column,
                            format!(
                                "duplicate key `{text}` (first written at line {l}, column {c})"
                            ),
                            Some("YAML mappings need unique keys; remove or merge one of them"),
                        ));
                    }
                    seen.insert(text.to_string(), (node.line, node.column));
                    *key = Some(node);
                }
                Some(k) => {
                    if k.is_plain() && k.scalar() == Some(MERGE_KEY) {
                        let sources: Vec<Rc<Node>> = match &node.kind {
                            Kind::Map(_) => vec![node.clone()],
                            Kind::Seq(items) if items.iter().all(|i| i.as_map().is_some()) => {
                                items.clone()
                            }
                            _ => {
                                return Err(err_at(
                                    node.line,
                                    node.column,
                                    "a merge key (<<) takes a mapping or a list of mappings",
                                    None,
                                ));
                            }
                        };
                        merges.extend(sources);
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
        Ok(())
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), YamlError> {
        let at = position(&span);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(err_at(
                        at.0,
                        at.1,
                        "more than one YAML document in the file",
                        Some("sg reads one document: remove the extra `---` section"),
                    ));
                }
                Ok(())
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.count(1, at)?;
                let node = Node {
                    kind: Kind::Scalar {
                        value: value.into_owned(),
                        style: style_of(style),
                    },
                    tag: tag.map(|t| tag_text(&t)),
                    line: at.0,
                    column: at.1,
                    size: 1,
                    height: 1,
                };
                self.finish_node(node, anchor)
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                let head = Header {
                    line: at.0,
                    column: at.1,
                    tag: tag.as_ref().map(|t| tag_text(t)),
                    anchor,
                };
                self.collection_start(head, matches!(ev, Event::SequenceStart(..)), at)
            }
            Event::SequenceEnd | Event::MappingEnd => self.collection_end(at),
            Event::Alias(id) => self.alias(id, at),
        }
    }

    fn collection_start(
        &mut self,
        head: Header,
        is_seq: bool,
        at: (u32, u32),
    ) -> Result<(), YamlError> {
        self.count(1, at)?;
        self.open(at)?;
        self.stack.push(if is_seq {
            Frame::Seq {
                head,
                items: Vec::new(),
            }
        } else {
            Frame::Map {
                head,
                entries: Vec::new(),
                key: None,
                seen: HashMap::new(),
                merges: Vec::new(),
            }
        });
        Ok(())
    }

    /// Closes the innermost collection into a node, its size and height from its children.
    fn collection_end(&mut self, at: (u32, u32)) -> Result<(), YamlError> {
        let Some(frame) = self.stack.pop() else {
            return Err(err_at(at.0, at.1, "unbalanced collection end", None));
        };
        let (head, kind) = match frame {
            Frame::Seq { head, items } => (head, Kind::Seq(items)),
            Frame::Map {
                head,
                mut entries,
                mut seen,
                merges,
                ..
            } => {
                // Explicit keys win over merged ones; earlier merge sources win over
                // later ones (YAML merge-key semantics).
                for src in &merges {
                    for (k, v) in src.as_map().unwrap_or_default() {
                        let text = k.scalar().unwrap_or_default();
                        if !seen.contains_key(text) {
                            seen.insert(text.to_string(), (k.line, k.column));
                            entries.push((k.clone(), v.clone()));
                        }
                    }
                }
                (head, Kind::Map(entries))
            }
        };
        let (size, height) = measure(&kind);
        let node = Node {
            kind,
            tag: head.tag,
            line: head.line,
            column: head.column,
            size,
            height,
        };
        self.finish_node(node, head.anchor)
    }

    /// An alias: the anchored node again, counted whole against the size and depth limits.
    fn alias(&mut self, id: usize, at: (u32, u32)) -> Result<(), YamlError> {
        let Some(target) = self.anchors.get(&id).cloned() else {
            return Err(err_at(
                at.0,
                at.1,
                "this alias refers to a node that contains it (a recursive alias)",
                None,
            ));
        };
        self.count(target.size, at)?;
        if self.stack.len() as u32 + target.height > MAX_DEPTH {
            return Err(err_at(
                at.0,
                at.1,
                format!("nesting is deeper than {MAX_DEPTH} levels once this alias is expanded"),
                None,
            ));
        }
        self.push_value(target)
    }
}

/// Parses one YAML (or JSON) document into a located tree.
pub fn parse(text: &str) -> Result<Rc<Node>, YamlError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(err_at(
            1,
            1,
            format!(
                "the input is {} bytes; the limit is {} MiB",
                text.len(),
                MAX_INPUT_BYTES >> 20
            ),
            Some("split the policy or remove generated bulk; real policies are far smaller"),
        ));
    }
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        nodes: 0,
        documents: 0,
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((ev, span)) => b.event(ev, span)?,
            Err(e) => {
                let m = e.marker();
                return Err(err_at(
                    u32::try_from(m.line()).unwrap_or(u32::MAX),
                    u32::try_from(m.col()).unwrap_or(u32::MAX).saturating_add(1),
                    format!("YAML syntax error: {}", e.info()),
                    None,
                ));
            }
        }
    }
    match b.root {
        Some(root) if !root.is_null() => Ok(root),
        _ => Err(err_at(1, 1, "the file holds no policy (it is empty)", None)),
    }
}

/// The located tree of a document already held as JSON (the policy store's values): the tree
/// `parse` would build from its JSON text, without printing and scanning that text. Strings
/// are double-quoted scalars, numbers, booleans and null plain ones; nodes have no position
/// (line 0: messages name the store key and path instead). The same limits hold.
pub fn from_json(doc: &serde_json::Value) -> Result<Rc<Node>, YamlError> {
    let mut nodes = 0u64;
    let root = json_node(doc, 1, &mut nodes)?;
    if root.is_null() {
        return Err(err_at(
            0,
            0,
            "the document holds no policy (it is empty)",
            None,
        ));
    }
    Ok(root)
}

fn json_node(v: &serde_json::Value, depth: u32, nodes: &mut u64) -> Result<Rc<Node>, YamlError> {
    use serde_json::Value as J;
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(err_at(
            0,
            0,
            format!("the document has more than {MAX_NODES} nodes"),
            None,
        ));
    }
    if depth > MAX_DEPTH {
        return Err(err_at(
            0,
            0,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
            None,
        ));
    }
    let scalar = |value: String, style| Kind::Scalar { value, style };
    let kind = match v {
        J::Null => scalar("null".into(), Style::Plain),
        J::Bool(b) => scalar(b.to_string(), Style::Plain),
        J::Number(n) => scalar(n.to_string(), Style::Plain),
        J::String(s) => scalar(s.clone(), Style::DoubleQuoted),
        J::Array(items) => Kind::Seq(
            items
                .iter()
                .map(|i| json_node(i, depth + 1, nodes))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => Kind::Map(
            map.iter()
                .map(|(k, v)| {
                    let key = json_node(&J::String(k.clone()), depth + 1, nodes)?;
                    Ok((key, json_node(v, depth + 1, nodes)?))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let (size, height) = measure(&kind);
    Ok(Rc::new(Node {
        kind,
        tag: None,
        line: 0,
        column: 0,
        size,
        height,
    }))
}

/// A node's size (nodes in its subtree) and height (1 for a scalar) from its children.
fn measure(kind: &Kind) -> (u64, u32) {
    let children: Box<dyn Iterator<Item = &Rc<Node>>> = match kind {
        Kind::Seq(items) => Box::new(items.iter()),
        Kind::Map(entries) => Box::new(entries.iter().flat_map(|(k, v)| [k, v])),
        Kind::Scalar { .. } => Box::new(std::iter::empty()),
    };
    let (mut size, mut height) = (1u64, 0u32);
    for c in children {
        size = size.saturating_add(c.size);
        height = height.max(c.height);
    }
    (size, height + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> YamlError {
        parse(text).expect_err("must fail")
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let root = parse("a:\n  b: [x, 'y']\n").unwrap();
        let a = root.get("a").unwrap();
        let b = a.get("b").unwrap();
        assert_eq!((root.line, root.column), (1, 1));
        let items = b.as_seq().unwrap();
        assert_eq!((items[0].line, items[0].column), (2, 7));
        assert_eq!((items[1].line, items[1].column), (2, 10));
        assert!(matches!(
            items[1].kind,
            Kind::Scalar {
                style: Style::SingleQuoted,
                ..
            }
        ));
    }

    #[test]
    fn custom_tags_are_kept() {
        let root = parse("a: !Ref Web\nb: !GetAtt [X, GroupId]\nc: !!str 443\n").unwrap();
        assert_eq!(root.get("a").unwrap().tag.as_deref(), Some("!Ref"));
        assert_eq!(root.get("b").unwrap().tag.as_deref(), Some("!GetAtt"));
        assert_eq!(root.get("c").unwrap().tag.as_deref(), Some("!!str"));
    }

    #[test]
    fn duplicate_keys_are_located_at_the_second_one() {
        let e = err("a: 1\nb: 2\na: 3\n");
        assert_eq!((e.line, e.column), (3, 1));
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let root =
            parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n").unwrap();
        let u = root.get("use").unwrap();
        assert_eq!(u.get("x").unwrap().scalar(), Some("1"));
        assert_eq!(u.get("y").unwrap().scalar(), Some("3"));
        assert_eq!(root.get("list").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn billion_laughs_is_refused_at_the_alias() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let t = std::time::Instant::now();
        let e = err(&doc);
        assert!(t.elapsed().as_millis() < 1000);
        assert!(
            e.message.contains("more than 1000000 nodes"),
            "{}",
            e.message
        );
        // a5 (line 6) is the first anchor whose expansion passes the budget.
        assert_eq!(e.line, 6);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let e = err(&doc);
        assert_eq!((e.line, e.column), (1, 65));
        assert!(e.message.contains("deeper than 64"));
    }

    #[test]
    fn json_is_read() {
        let root = parse("{\n\t\"a\": [1, 2],\n\t\"b\": {\"c\": \"d\"}\n}").unwrap();
        assert_eq!(root.get("b").unwrap().get("c").unwrap().scalar(), Some("d"));
    }

    #[test]
    fn recursive_alias_is_an_error() {
        let e = err("a: &x [1, *x]\n");
        assert!(e.message.contains("recursive"), "{}", e.message);
    }

    #[test]
    fn two_documents_are_refused() {
        let e = err("a: 1\n---\nb: 2\n");
        assert_eq!(e.line, 2);
    }

    /// What a tree says, positions left out: kind, style, text.
    fn shape(n: &Node) -> String {
        match &n.kind {
            Kind::Scalar { value, style } => format!("{style:?}:{value}"),
            Kind::Seq(items) => format!(
                "[{}]",
                items.iter().map(|i| shape(i)).collect::<Vec<_>>().join(",")
            ),
            Kind::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}={}", shape(k), shape(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    #[test]
    fn a_json_document_builds_the_tree_its_text_would() {
        let doc = serde_json::json!({"version": 1, "a": [true, null, -2.5, "x: y", {"n": "80"}],
                                     "empty": [], "m": {}});
        let direct = from_json(&doc).unwrap();
        let parsed = parse(&doc.to_string()).unwrap();
        assert_eq!(shape(&direct), shape(&parsed));
        assert_eq!((direct.size, direct.height), (parsed.size, parsed.height));
    }

    #[test]
    fn a_json_document_meets_the_same_limits() {
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let e = from_json(&deep).expect_err("too deep");
        assert!(e.message.contains("deeper"), "{e:?}");
        assert!(from_json(&serde_json::Value::Null).is_err());
    }
}
