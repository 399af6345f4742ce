//! The `sg-agent` binary: parses the command line and maps errors to exit codes. Everything
//! else lives in the library.
use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Parser)]
#[command(
    name = "sg-agent",
    about = "EC2 security groups on a Linux host, enforced with eBPF"
)]
struct Cli {}

fn main() {
    let version: &'static str = Box::leak(sg_agent::version_string().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let _cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
}
