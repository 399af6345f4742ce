//! `cargo xtask fuzz`: long fuzz runs (in progress).
use anyhow::Result;

use crate::bootstrap::Toolchain;

pub fn run(_tc: &Toolchain, _args: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask fuzz is not implemented yet")
}
