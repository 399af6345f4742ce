//! The options that say how a CloudFormation template is deployed (`--parameter`,
//! `--parameters-file`, `--region`, `--account-id`, `--stack-name`, `--import`) and where
//! (`--bind`, `--as`), shared by every command that reads a policy file, and their
//! conversion to [`config::TemplateInputs`]. They mean nothing for the other formats, which
//! refuse them. `--as` is where this host's facts come in: its default-route devices, read
//! here from /proc/net so that the config layer stays pure.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::TemplateInputs;

#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "CloudFormation template inputs")]
pub struct TemplateArgs {
    /// A template parameter's value, over its Default, e.g. SSHLocation=198.51.100.0/24.
    /// Repeatable; wins over --parameters-file.
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    parameters: Vec<String>,
    /// Parameter values in a JSON file, as `aws cloudformation create-stack --parameters
    /// file://` ([{"ParameterKey": .., "ParameterValue": ..}]) or `deploy
    /// --parameter-overrides` (["Key=Value"] or {"Parameters": {..}}) read it. Repeatable.
    #[arg(long, value_name = "FILE")]
    parameters_file: Vec<PathBuf>,
    /// AWS::Region (and what Fn::GetAZs, AWS::Partition, AWS::URLSuffix follow). Default
    /// us-east-1.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// AWS::AccountId. Default 123456789012.
    #[arg(long, value_name = "ID")]
    account_id: Option<String>,
    /// AWS::StackName. Default sg-stack.
    #[arg(long, value_name = "NAME")]
    stack_name: Option<String>,
    /// What Fn::ImportValue of NAME evaluates to (another stack's export), e.g.
    /// vpc-ClientSecurityGroup=sg-0123456789abcdef0. Repeatable.
    #[arg(long = "import", value_name = "NAME=VALUE")]
    imports: Vec<String>,
    /// The local device that carries an instance's (or network interface's) interface, by
    /// logical id, e.g. WebServer=eth0 (Instance/eth1 for one of several). Repeatable.
    #[arg(long = "bind", value_name = "LOGICAL_ID=DEVICE")]
    binds: Vec<String>,
    /// This host is that instance (or network interface) of the template, by logical id or
    /// Name tag: its groups apply to this host's uplink, the device(s) of the default route
    /// (--bind names another; an instance's other interfaces need a --bind each).
    #[arg(long = "as", value_name = "LOGICAL_ID")]
    as_instance: Option<String>,
}

impl TemplateArgs {
    /// The inputs, files first, then `--parameter` (later wins). A malformed option or an
    /// unreadable file is invalid input (exit 2).
    pub fn inputs(&self) -> Result<TemplateInputs> {
        let bad = crate::error::invalid;
        let mut i = TemplateInputs {
            region: self.region.clone(),
            account_id: self.account_id.clone(),
            stack_name: self.stack_name.clone(),
            ..TemplateInputs::default()
        };
        for f in &self.parameters_file {
            i.add_parameters_file(f).map_err(bad)?;
        }
        for p in &self.parameters {
            i.add_parameter(p).map_err(bad)?;
        }
        for p in &self.imports {
            i.add_import(p).map_err(bad)?;
        }
        for b in &self.binds {
            i.add_bind(b).map_err(bad)?;
        }
        if let Some(id) = &self.as_instance {
            i.as_instance = Some(id.clone());
            i.host_devices = default_route_devices();
        }
        Ok(i)
    }
}

/// The devices of this namespace's default routes (IPv4 from /proc/net/route, IPv6 from
/// /proc/net/ipv6_route), without repeats, in that order. Unreadable files: none.
fn default_route_devices() -> Vec<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_routes(&v4, &v6)
}

/// [`default_route_devices`] of the two files' text. An IPv4 line is `Iface Destination
/// Gateway Flags RefCnt Use Metric Mask ...` (hex); an IPv6 line `dest plen src plen
/// next-hop metric refcnt use flags iface`. The kernel's unreachable IPv6 default on `lo`
/// is not a route out.
fn default_routes(v4: &str, v6: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |dev: &str| {
        if dev != "lo" && !out.iter().any(|d| d == dev) {
            out.push(dev.to_string());
        }
    };
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            add(f[0]);
        }
    }
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" {
            add(f[9]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::default_routes;

    #[test]
    fn default_routes_are_read_from_both_route_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t00000000\t01000A0A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth2\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(default_routes(v4, v6), ["eth0", "eth1", "eth2"]);
        assert!(default_routes("", "").is_empty());
    }
}
