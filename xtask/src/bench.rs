//! `cargo xtask bench`: builds sg-bench in release and runs it (in progress).
use anyhow::Result;

use crate::bootstrap::Toolchain;

pub fn run(_tc: &Toolchain, _quick: bool, _args: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask bench is not implemented yet")
}
