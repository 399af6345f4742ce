//! Input formats -> validated Policy (native YAML, CloudFormation, describe-security-groups
//! JSON), with located diagnostics. The only code that knows file formats. (in progress)
pub mod diag;
pub mod yaml;
