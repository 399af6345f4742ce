//! The `sg-agent` binary: process setup, then the command line of [`sg_agent::cli`]. Prints
//! the whole error chain and maps errors to the documented exit codes: 0 success, 1 runtime
//! error, 2 invalid input or usage (nothing was changed). docs/agent.md is the reference of
//! every command.
#![warn(clippy::too_many_lines)]
use std::process::ExitCode;

use sg_agent::cli::Cli;
use sg_agent::error;

fn main() -> ExitCode {
    // Pins, state and flow logs are root-only whatever the caller's umask.
    // SAFETY: plain syscall.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse_args();
    if let Err(e) = sg_agent::state::join_host_mount_namespace() {
        eprintln!("error: {e:#}");
        return ExitCode::from(1);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if !cli.is_daemon() {
        // `sg-agent counters | head` ends quietly; the daemon keeps ignoring SIGPIPE (a closed
        // flow log pipe is an error it reports, not a reason to die).
        // SAFETY: plain syscall, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = error::kind(&e);
            if kind == error::Kind::Invalid {
                // Located input errors read best as they are, without the context chain.
                eprintln!(
                    "{}",
                    error::find(&e).map_or_else(|| format!("{e:#}"), ToString::to_string)
                );
                eprintln!("nothing was changed");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(kind.exit_code())
        }
    }
}
