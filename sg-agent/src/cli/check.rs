//! `sg-agent check FILE`: validate a policy and summarise what was understood. Touches
//! nothing and needs no privileges.

use std::path::PathBuf;

use anyhow::Result;

use super::template::TemplateArgs;
use super::{Globals, load_policy_with};

#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    #[command(flatten)]
    template: TemplateArgs,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let file = &a.file;
    let loaded = load_policy_with(file, &a.template.inputs()?)?;
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
                "name": i.name, "device": i.device, "addresses": i.addresses,
                "groups": i.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "parameters": loaded.parameters,
            "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", loaded.summary());
        println!("{}: OK", file.display());
    }
    Ok(())
}
