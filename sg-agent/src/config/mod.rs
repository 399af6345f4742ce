//! Input formats -> validated [`Policy`], with located diagnostics. The only code that knows
//! file formats: the native YAML format (docs/policy-format.md), CloudFormation templates, and
//! `aws ec2 describe-security-groups` / `describe-network-acls` (with `describe-subnets`) JSON
//! output.
//!
//! The pipeline, one step a module:
//! ```text
//! text --yaml--> located tree --detect--> format --native|cfn|describe--> Draft
//!      --validate--> Policy (+ warnings)   or   Diagnostics (every error, located)
//! ```
//! Nothing here touches the kernel, the compiler or the network; the policy it returns is
//! complete (defaults applied, ids derived, references resolved) and obeys every F and Q line
//! of SEMANTICS.md.

mod cfn;
mod describe;
pub mod diag;
mod draft;
mod nacl;
mod native;
mod read;
pub mod validate;
mod values;
pub mod yaml;

use std::fmt::Write as _;
use std::path::Path;
use std::rc::Rc;

pub use cfn::{GivenParameter, ParameterUse, TemplateInputs};
pub use diag::{Diagnostic, Diagnostics, Severity};

use crate::policy::{Origin, Policy};
use diag::{Sink, did_you_mean};
use read::At;

/// Which format a file was recognised as (by its top-level keys, never by a flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// sg's own YAML (`security_groups`, `instances`, ...).
    Native,
    /// A CloudFormation template (`Resources`, `AWSTemplateFormatVersion`).
    CloudFormation,
    /// `aws ec2 describe-security-groups` output (`SecurityGroups`).
    DescribeJson,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::CloudFormation => "CloudFormation",
            Format::DescribeJson => "describe-security-groups JSON",
        }
    }
}

/// A policy that passed validation, and what is worth telling the user about it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
    pub format: Format,
    /// The CloudFormation parameters (and pseudo parameters, imports) the policy used, with
    /// their values and where each came from; empty for other formats.
    pub parameters: Vec<ParameterUse>,
}

/// Reads and validates a policy file. The file's size is checked before it is read.
pub fn load_file(path: &Path) -> Result<Loaded, Diagnostics> {
    load_file_with(path, &TemplateInputs::default())
}

/// [`load_file`], a template evaluated with `inputs` (parameters, region, imports).
pub fn load_file_with(path: &Path, inputs: &TemplateInputs) -> Result<Loaded, Diagnostics> {
    let name = path.display().to_string();
    let fail = |message: String, hint: Option<String>| {
        Diagnostics(vec![Diagnostic {
            severity: Severity::Error,
            origin: Origin {
                file: name.clone(),
                line: 1,
                column: 1,
                path: String::new(),
            },
            message,
            hint,
        }])
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > yaml::MAX_INPUT_BYTES as u64 => {
            return Err(fail(
                format!(
                    "the input is {} bytes; the limit is {} MiB",
                    m.len(),
                    yaml::MAX_INPUT_BYTES >> 20
                ),
                None,
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(fail(format!("cannot read the file: {e}"), None)),
    }
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read the file: {e}"), None))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            format!(
                "the file is not UTF-8 (byte {} is invalid)",
                e.utf8_error().valid_up_to()
            ),
            None,
        )
    })?;
    load_str_with(&text, &name, inputs)
}

const FORMAT_HINT: &str = "a native policy has `security_groups:` (see docs/policy-format.md), a CloudFormation template `Resources:`, describe-security-groups output `SecurityGroups`, describe-network-acls output `NetworkAcls`";

/// Recognises the format from the top-level keys.
fn detect(sink: &mut Sink, root: &At) -> Option<Format> {
    let Some(entries) = root.node.as_map() else {
        sink.error_hint(
            &root.origin(sink),
            format!(
                "expected a mapping at the top of the file, found {}",
                root.node.describe()
            ),
            FORMAT_HINT,
        );
        return None;
    };
    let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.scalar()).collect();
    if keys
        .iter()
        .any(|k| *k == "Resources" || *k == "AWSTemplateFormatVersion")
    {
        return Some(Format::CloudFormation);
    }
    if keys.contains(&"SecurityGroups") || keys.contains(&"NetworkAcls") {
        return Some(Format::DescribeJson);
    }
    if keys.iter().any(|k| native::TOP_KEYS.contains(k)) {
        return Some(Format::Native);
    }
    let mut all: Vec<&str> = native::TOP_KEYS.to_vec();
    all.extend([
        "Resources",
        "AWSTemplateFormatVersion",
        "SecurityGroups",
        "NetworkAcls",
    ]);
    let suggestion = keys
        .iter()
        .find_map(|k| did_you_mean(k, &all).map(|s| format!("`{k}`: did you mean `{s}`? ")));
    sink.error_hint(
        &root.origin(sink),
        "cannot tell the format of this file",
        format!("{}{FORMAT_HINT}", suggestion.unwrap_or_default()),
    );
    None
}

/// Reads and validates a policy given as text; `file_name` is used in messages only.
pub fn load_str(text: &str, file_name: &str) -> Result<Loaded, Diagnostics> {
    load_str_with(text, file_name, &TemplateInputs::default())
}

/// [`load_str`], a template evaluated with `inputs`. Inputs given for a file that is not a
/// template are an error: they would silently mean nothing.
pub fn load_str_with(
    text: &str,
    file_name: &str,
    inputs: &TemplateInputs,
) -> Result<Loaded, Diagnostics> {
    let mut sink = Sink::new(file_name);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            sink.push(
                Severity::Error,
                &Origin {
                    file: file_name.to_string(),
                    line: e.line,
                    column: e.column,
                    path: String::new(),
                },
                e.message,
                e.hint,
            );
            return Err(Diagnostics(sink.into_sorted()));
        }
    };
    load_tree(&root, sink, inputs)
}

/// Reads and validates a policy already held as a JSON document (the policy store's): the
/// same readers and validator as [`load_str`] on its text, without printing and scanning it.
pub fn load_value(doc: &serde_json::Value, name: &str) -> Result<Loaded, Diagnostics> {
    let mut sink = Sink::new(name);
    match yaml::from_json(doc) {
        Ok(root) => load_tree(&root, sink, &TemplateInputs::default()),
        Err(e) => {
            let origin = Origin {
                file: name.to_string(),
                line: 0,
                column: 0,
                path: String::new(),
            };
            sink.push(Severity::Error, &origin, e.message, e.hint);
            Err(Diagnostics(sink.into_sorted()))
        }
    }
}

/// Detects the format of a located tree, reads it (a template evaluated with `inputs`) and
/// validates the result.
fn load_tree(
    root: &Rc<yaml::Node>,
    mut sink: Sink,
    inputs: &TemplateInputs,
) -> Result<Loaded, Diagnostics> {
    let at = At::root(root);
    let Some(format) = detect(&mut sink, &at) else {
        return Err(Diagnostics(sink.into_sorted()));
    };
    if format != Format::CloudFormation && *inputs != TemplateInputs::default() {
        sink.error_hint(
            &at.origin(&sink),
            format!("template inputs (--parameter, --import, --region ...) were given, but this file is {}", format.name()),
            "they apply to CloudFormation templates only; remove them",
        );
    }
    let mut parameters = Vec::new();
    let draft = match format {
        Format::Native => native::read(&mut sink, &at),
        Format::CloudFormation => {
            let (d, used) = cfn::read(&mut sink, &at, inputs);
            parameters = used;
            d
        }
        Format::DescribeJson => describe::read(&mut sink, &at),
    };
    let policy = validate::validate(&draft, &mut sink);
    if sink.has_errors() {
        return Err(Diagnostics(sink.into_sorted()));
    }
    Ok(Loaded {
        policy,
        warnings: sink.into_sorted(),
        format,
        parameters,
    })
}

impl Loaded {
    /// A short human summary: format, groups with their rule counts, prefix lists, interfaces
    /// and their groups.
    pub fn summary(&self) -> String {
        let p = &self.policy;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "format: {} ({} warning{})",
            self.format.name(),
            self.warnings.len(),
            if self.warnings.len() == 1 { "" } else { "s" }
        );
        if !self.parameters.is_empty() {
            let _ = writeln!(s, "parameters used: {}", self.parameters.len());
            for u in &self.parameters {
                if u.value.is_empty() && u.source.starts_with("no ") {
                    let _ = writeln!(s, "  {} unknown ({})", u.name, u.source);
                } else {
                    let _ = writeln!(s, "  {} = {:?} ({})", u.name, u.value, u.source);
                }
            }
        }
        let _ = writeln!(s, "security groups: {}", p.groups.len());
        for g in p.groups.values() {
            let name = if g.name != g.id.0 {
                format!(" ({})", g.name)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {}{name}: {} ingress, {} egress rule{}",
                g.id,
                g.ingress.len(),
                g.egress.len(),
                if g.egress.len() == 1 { "" } else { "s" }
            );
        }
        let _ = writeln!(s, "prefix lists: {}", p.prefix_lists.len());
        for pl in p.prefix_lists.values() {
            let _ = writeln!(
                s,
                "  {} ({}): {} {:?} entries, max {}, version {}",
                pl.id,
                pl.name,
                pl.entries.len(),
                pl.family,
                pl.max_entries,
                pl.version
            );
        }
        let _ = writeln!(s, "interfaces: {}", p.interfaces.len());
        for i in &p.interfaces {
            let addrs: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
            let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
            let dev = i
                .device
                .as_ref()
                .map(|d| format!(" device {d}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {}{dev} [{}]: {}",
                i.name,
                addrs.join(", "),
                groups.join(", ")
            );
        }
        if !p.network_acls.is_empty() || !p.subnets.is_empty() {
            self.nacl_summary(&mut s);
        }
        s
    }

    /// The network ACLs with their entry counts, and the subnets with their CIDRs and NACL.
    fn nacl_summary(&self, s: &mut String) {
        let p = &self.policy;
        let _ = writeln!(s, "network ACLs: {}", p.network_acls.len());
        for n in p.network_acls.values() {
            let _ = writeln!(
                s,
                "  {}{}: {} inbound, {} outbound entries (and the `*` rules)",
                n.id,
                if n.is_default { " (default)" } else { "" },
                n.inbound.len(),
                n.outbound.len()
            );
        }
        let _ = writeln!(s, "subnets: {}", p.subnets.len());
        for sn in &p.subnets {
            let cidrs: Vec<String> = sn.cidrs.iter().map(ToString::to_string).collect();
            let dev = sn
                .router_device
                .as_ref()
                .map(|d| format!(" router device {d}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {}{dev} [{}]: {}",
                sn.id,
                cidrs.join(", "),
                sn.network_acl
            );
        }
    }
}
