//! The commands behind `sg-agent`: each takes parsed arguments, does its work through the
//! library's layers, and prints text or JSON. Errors that mean "your input is wrong" are
//! [`InvalidInput`] (exit code 2, nothing changed); everything else is a runtime error.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config;

/// Options every command shares.
pub struct Globals {
    pub json: bool,
    pub state_dir: Option<PathBuf>,
}

/// Bad input (file, command line): exit code 2, and nothing was applied.
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

pub fn usage(msg: &str) -> anyhow::Error {
    InvalidInput(format!("usage error: {msg}; see sg-agent --help")).into()
}

/// Loads and validates a policy file; warnings go to stderr.
pub fn load_policy(file: &Path) -> Result<config::Loaded> {
    match config::load_file(file) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{w}");
            }
            Ok(l)
        }
        Err(d) => Err(InvalidInput(d.to_string()).into()),
    }
}

/// `sg-agent check FILE`
pub fn check(g: &Globals, file: &Path) -> Result<()> {
    let loaded = load_policy(file)?;
    if g.json {
        let p = &loaded.policy;
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "format": loaded.format.name(),
            "groups": p.groups.values().map(|gr| serde_json::json!({
                "id": gr.id.as_str(), "name": gr.name,
                "ingress": gr.ingress.len(), "egress": gr.egress.len(),
            })).collect::<Vec<_>>(),
            "prefix_lists": p.prefix_lists.len(),
            "interfaces": p.interfaces.iter().map(|i| serde_json::json!({
                "name": i.name, "addresses": i.addresses,
                "groups": i.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", loaded.summary());
        println!("{}: OK", file.display());
    }
    Ok(())
}
