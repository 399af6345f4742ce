//! The options that say how a CloudFormation template is deployed (`--parameter`,
//! `--parameters-file`, `--region`, `--account-id`, `--stack-name`, `--import`), shared by
//! every command that reads a policy file, and their conversion to
//! [`config::TemplateInputs`]. They mean nothing for the other formats, which refuse them.

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
        Ok(i)
    }
}
