//! Parameters and pseudo parameters: what `Ref` to one evaluates to. A parameter takes the
//! value given (`--parameter`, `--parameters-file`), else its Default; a list type
//! (`List<...>`, `CommaDelimitedList`) splits it at commas, each item space-trimmed as
//! CloudFormation does. Pseudo parameters follow `--region`, `--account-id` and
//! `--stack-name`, with the defaults a summary shows (us-east-1, 123456789012, sg-stack).
//!
//! Every value used where sg reads is recorded with where it came from, and values taken from
//! a Default are marked at their place (a rule opened to the world by a Default is worth a
//! warning).

use std::rc::Rc;

use super::eval::{Out, Resolver, Why, place, scalar_at, seq_at};
use super::inputs::ParameterUse;
use crate::config::yaml::Node;

const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_ACCOUNT: &str = "123456789012";
const DEFAULT_STACK: &str = "sg-stack";

/// A parameter as the template declares it.
#[derive(Clone, Debug)]
pub(super) struct ParamDef {
    pub ty: String,
    pub default: Option<Rc<Node>>,
    pub allowed: Option<Vec<String>>,
}

impl ParamDef {
    /// Reads one entry of Parameters (a malformed one reads as a String without Default; the
    /// reader reports it where it is used).
    pub fn read(n: &Node) -> ParamDef {
        let text = |k: &str| n.get(k).and_then(|v| v.scalar()).map(str::to_string);
        ParamDef {
            ty: text("Type").unwrap_or_else(|| "String".to_string()),
            default: n.get("Default").cloned(),
            allowed: n.get("AllowedValues").and_then(|v| {
                v.as_seq().map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.scalar().map(str::to_string))
                        .collect()
                })
            }),
        }
    }

    pub fn is_list(&self) -> bool {
        self.ty.starts_with("List<") || self.ty == "CommaDelimitedList"
    }

    /// Its value names security groups (AWS::EC2::SecurityGroup::Id or a list of them).
    pub fn names_groups(&self) -> bool {
        self.ty.contains("AWS::EC2::SecurityGroup::Id")
    }
}

impl Resolver<'_> {
    /// `Ref` written at `n`: a parameter, a pseudo parameter, `AWS::NoValue`, or a resource
    /// (left for the reader).
    pub(super) fn reference(&mut self, n: &Rc<Node>, arg: &Rc<Node>) -> Result<Out, Why> {
        let Some(name) = arg.scalar() else {
            return Err(Why::new(
                "Ref takes the logical id of a resource or parameter",
            ));
        };
        if name == "AWS::NoValue" {
            return Ok(Out::NoValue);
        }
        if self.resources.contains(name)
            || !(self.params.contains_key(name) || name.starts_with("AWS::"))
        {
            return Ok(Out::Node(n.clone()));
        }
        self.parameter(n, name).map(Out::Node)
    }

    /// The value of parameter or pseudo parameter `name`, placed at `n`.
    pub(super) fn parameter(&mut self, n: &Rc<Node>, name: &str) -> Result<Rc<Node>, Why> {
        if name.starts_with("AWS::") && !self.params.contains_key(name) {
            return self.pseudo(n, name);
        }
        let Some(def) = self.params.get(name).cloned() else {
            return Err(Why::new(format!(
                "{name} is not a parameter of this template"
            )));
        };
        let (text, source) = match self.inputs.given(name) {
            Some(g) => (g.value.clone(), g.source.clone()),
            None => match &def.default {
                Some(d) => (self.default_text(d, name)?, "default".to_string()),
                None => {
                    if self.recording {
                        self.used.insert(
                            name.to_string(),
                            ParameterUse {
                                name: name.to_string(),
                                value: String::new(),
                                source: "no Default, not given".to_string(),
                            },
                        );
                    }
                    return Err(Why {
                        message: format!("parameter {name} has no Default and no value was given"),
                        hint: Some(format!(
                            "give it a value: --parameter {name}=VALUE (or --parameters-file)"
                        )),
                        group: def.names_groups().then(|| name.to_string()),
                    });
                }
            },
        };
        if self.recording {
            self.used.insert(
                name.to_string(),
                ParameterUse {
                    name: name.to_string(),
                    value: text.clone(),
                    source: source.clone(),
                },
            );
        }
        if source == "default" {
            self.defaults.insert(place(n), name.to_string());
        }
        Ok(if def.is_list() {
            let items = text
                .split(',')
                .map(|s| scalar_at(s.trim().to_string(), n))
                .collect();
            seq_at(items, n)
        } else {
            scalar_at(text, n)
        })
    }

    /// A Default's text (a list written as YAML reads as its comma-joined items).
    fn default_text(&mut self, d: &Rc<Node>, name: &str) -> Result<String, Why> {
        if let Some(items) = d.as_seq() {
            let texts: Option<Vec<&str>> = items.iter().map(|i| i.scalar()).collect();
            return texts.map(|t| t.join(",")).ok_or_else(|| {
                Why::new(format!(
                    "the Default of {name} is not a string or a list of strings"
                ))
            });
        }
        match d.scalar() {
            Some(s) if !d.is_null() || d.tag.is_some() => Ok(s.to_string()),
            Some(_) => Ok(String::new()),
            None => Err(Why::new(format!("the Default of {name} is not a string"))),
        }
    }

    /// What a pseudo parameter's text is, and where it came from.
    fn pseudo_value(&self, name: &str) -> Option<(String, &'static str)> {
        let i = self.inputs;
        let region = i
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let region_src = if i.region.is_some() {
            "--region"
        } else {
            "default"
        };
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        let account = i
            .account_id
            .clone()
            .unwrap_or_else(|| DEFAULT_ACCOUNT.to_string());
        let stack = i
            .stack_name
            .clone()
            .unwrap_or_else(|| DEFAULT_STACK.to_string());
        Some(match name {
            "AWS::Region" => (region, region_src),
            "AWS::AccountId" => (
                account,
                if i.account_id.is_some() {
                    "--account-id"
                } else {
                    "default"
                },
            ),
            "AWS::StackName" => (
                stack,
                if i.stack_name.is_some() {
                    "--stack-name"
                } else {
                    "default"
                },
            ),
            "AWS::StackId" => (
                format!(
                    "arn:{partition}:cloudformation:{region}:{account}:stack/{stack}/00000000-0000-0000-0000-000000000000"
                ),
                "default",
            ),
            "AWS::Partition" => (partition.to_string(), region_src),
            "AWS::URLSuffix" => (
                if partition == "aws-cn" {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                }
                .to_string(),
                region_src,
            ),
            _ => return None,
        })
    }

    /// The text of a pseudo parameter (AWS::Region for Fn::GetAZs "").
    pub(super) fn pseudo_text(&self, name: &str) -> String {
        self.pseudo_value(name).map(|(v, _)| v).unwrap_or_default()
    }

    fn pseudo(&mut self, n: &Rc<Node>, name: &str) -> Result<Rc<Node>, Why> {
        if name == "AWS::NotificationARNs" {
            return Ok(seq_at(Vec::new(), n));
        }
        let Some((value, source)) = self.pseudo_value(name) else {
            return Err(Why::new(format!("{name} is not a pseudo parameter"))
                .hint("AWS::Region, AWS::AccountId, AWS::StackName, AWS::StackId, AWS::Partition, AWS::URLSuffix, AWS::NoValue, AWS::NotificationARNs"));
        };
        if self.recording {
            self.used.insert(
                name.to_string(),
                ParameterUse {
                    name: name.to_string(),
                    value: value.clone(),
                    source: source.to_string(),
                },
            );
        }
        Ok(scalar_at(value, n))
    }
}
