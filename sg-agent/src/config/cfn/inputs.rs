//! What a template is deployed with, given on the command line: parameter values
//! (`--parameter Key=Value`, `--parameters-file`), the region, account and stack name the
//! pseudo parameters evaluate to, the exports of other stacks (`--import Name=Value`) and
//! which local devices carry the template's interfaces (`--bind`, `--as`).
//!
//! Owns the parameter file formats `aws cloudformation` accepts: create-stack's
//! `[{"ParameterKey": .., "ParameterValue": ..}]`, deploy's `["Key=Value"]` and the
//! `{"Parameters": {..}}` of a template configuration file. It does not know templates: a
//! value is checked against its parameter's declaration where the template is read.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Values and names a template is evaluated with. Empty: every parameter takes its
/// Default, the pseudo parameters theirs (us-east-1, account 123456789012).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TemplateInputs {
    /// Parameter values in the order given; a later one overrides an earlier one.
    pub parameters: Vec<GivenParameter>,
    /// `--region`: AWS::Region (and what Fn::GetAZs, AWS::Partition, AWS::URLSuffix follow).
    pub region: Option<String>,
    /// `--account-id`: AWS::AccountId.
    pub account_id: Option<String>,
    /// `--stack-name`: AWS::StackName.
    pub stack_name: Option<String>,
    /// `--import Name=Value`: what Fn::ImportValue of Name evaluates to.
    pub imports: BTreeMap<String, String>,
    /// `--bind LogicalId=DEVICE`: the local device that carries an instance's or ENI's
    /// interface (`Instance/ethN` for one of several).
    pub binds: BTreeMap<String, String>,
    /// `--as LogicalId`: this host is that instance (or network interface).
    #[serde(rename = "as")]
    pub as_instance: Option<String>,
    /// The devices `--as` binds the instance's interface to when neither `--bind` nor the
    /// `sg:device` tag names one: this namespace's default-route devices, as the command
    /// line found them (the config layer reads no host state).
    pub host_devices: Vec<String>,
}

/// A parameter value given by the user, and where it was given.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GivenParameter {
    pub key: String,
    pub value: String,
    /// `--parameter` or `file PATH`, as the summary shows it.
    pub source: String,
}

/// A parameter (or pseudo parameter) the template used, with the value it took.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParameterUse {
    pub name: String,
    pub value: String,
    /// `default`, `--parameter`, `file PATH`, `--region` ...
    pub source: String,
}

/// `Key=Value` (the value may contain `=`; the key may not be empty).
fn key_value(spec: &str, what: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{what} takes Key=Value, found `{spec}`")),
    }
}

impl TemplateInputs {
    /// `--parameter Key=Value`.
    pub fn add_parameter(&mut self, spec: &str) -> Result<(), String> {
        let (key, value) = key_value(spec, "--parameter")?;
        self.parameters.push(GivenParameter {
            key,
            value,
            source: "--parameter".to_string(),
        });
        Ok(())
    }

    /// `--import Name=Value`.
    pub fn add_import(&mut self, spec: &str) -> Result<(), String> {
        let (key, value) = key_value(spec, "--import")?;
        self.imports.insert(key, value);
        Ok(())
    }

    /// `--bind LogicalId=DEVICE`.
    pub fn add_bind(&mut self, spec: &str) -> Result<(), String> {
        let (key, device) = key_value(spec, "--bind")?;
        if device.trim().is_empty() {
            return Err(format!("--bind {key}: the device name is empty"));
        }
        self.binds.insert(key, device.trim().to_string());
        Ok(())
    }

    /// `--parameters-file PATH`: its values, in the file's order.
    pub fn add_parameters_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let source = format!("file {}", path.display());
        for (key, value) in parse_parameters(&text).map_err(|e| format!("{source}: {e}"))? {
            self.parameters.push(GivenParameter {
                key,
                value,
                source: source.clone(),
            });
        }
        Ok(())
    }

    /// The value given last for `key`, with its source.
    pub(crate) fn given(&self, key: &str) -> Option<&GivenParameter> {
        self.parameters.iter().rev().find(|p| p.key == key)
    }
}

/// A parameter value as JSON writes it: strings, and numbers or booleans as their text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(text)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// The three formats: create-stack's list of objects, deploy's list of `Key=Value`, and a
/// template configuration file's `{"Parameters": {...}}`.
pub(crate) fn parse_parameters(text_in: &str) -> Result<Vec<(String, String)>, String> {
    const FORMATS: &str = "expected [{\"ParameterKey\": ..., \"ParameterValue\": ...}], [\"Key=Value\"] or {\"Parameters\": {\"Key\": \"Value\"}}";
    let v: Value =
        serde_json::from_str(text_in).map_err(|e| format!("not JSON ({e}); {FORMATS}"))?;
    let mut out = Vec::new();
    match &v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(key_value(s, &format!("item {i}"))?),
                    Value::Object(o) => {
                        let key = o.get("ParameterKey").and_then(Value::as_str);
                        let value = o.get("ParameterValue").and_then(text);
                        match (key, value) {
                            (Some(k), Some(v)) => out.push((k.to_string(), v)),
                            // UsePreviousValue keeps the deployed stack's value: not known here.
                            (Some(k), None) if o.contains_key("UsePreviousValue") => {
                                return Err(format!(
                                    "item {i} ({k}) uses the previous value of a deployed stack, which is unknown here; give ParameterValue"
                                ));
                            }
                            _ => {
                                return Err(format!(
                                    "item {i} needs ParameterKey and ParameterValue"
                                ));
                            }
                        }
                    }
                    _ => return Err(format!("item {i}: {FORMATS}")),
                }
            }
        }
        Value::Object(o) => {
            let Some(Value::Object(p)) = o.get("Parameters") else {
                return Err(FORMATS.to_string());
            };
            for (k, v) in p {
                let v = text(v).ok_or_else(|| format!("parameter {k}: expected a string"))?;
                out.push((k.clone(), v));
            }
        }
        _ => return Err(FORMATS.to_string()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_parameter_file_formats_read_alike() {
        let want = vec![
            ("SSHLocation".to_string(), "198.51.100.0/24".to_string()),
            ("Port".to_string(), "22".to_string()),
        ];
        let create = r#"[{"ParameterKey": "SSHLocation", "ParameterValue": "198.51.100.0/24"},
                         {"ParameterKey": "Port", "ParameterValue": "22"}]"#;
        let deploy = r#"["SSHLocation=198.51.100.0/24", "Port=22"]"#;
        let config = r#"{"Parameters": {"SSHLocation": "198.51.100.0/24", "Port": 22}}"#;
        assert_eq!(parse_parameters(create).unwrap(), want);
        assert_eq!(parse_parameters(deploy).unwrap(), want);
        // A JSON object's keys come in name order; a parameter is given once in it anyway.
        let mut got = parse_parameters(config).unwrap();
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_parameter_file_says_what_is_expected() {
        let e = parse_parameters(r#"[{"ParameterKey": "A"}]"#).unwrap_err();
        assert!(e.contains("ParameterValue"), "{e}");
        let e = parse_parameters(r#"["novalue"]"#).unwrap_err();
        assert!(e.contains("Key=Value"), "{e}");
        let e = parse_parameters("{").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e =
            parse_parameters(r#"[{"ParameterKey": "A", "UsePreviousValue": true}]"#).unwrap_err();
        assert!(e.contains("previous value"), "{e}");
    }

    #[test]
    fn a_later_value_overrides_an_earlier_one() {
        let mut i = TemplateInputs::default();
        i.add_parameter("A=1").unwrap();
        i.add_parameter("A=x=y").unwrap();
        assert_eq!(i.given("A").unwrap().value, "x=y");
        assert!(i.add_parameter("=1").is_err());
        i.add_import("vpc-Sg=sg-0123").unwrap();
        assert_eq!(i.imports["vpc-Sg"], "sg-0123");
    }
}
