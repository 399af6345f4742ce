//! `sg-agent verify FILE` or `sg-agent verify --store URL`: does this namespace enforce what
//! the policy says? Exit 0 when the live maps mean what a fresh compile means, 1 with the
//! differences otherwise.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::store::StoreArgs;
use super::{Globals, open_agent};
use crate::agent::{FileSource, PolicySource};
use crate::store::{StoreSource, admin};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["file", "endpoints"]))]
pub struct Args {
    /// The policy file to compare with.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    template: super::template::TemplateArgs,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let src: Box<dyn PolicySource> = match (&a.file, a.store.options()) {
        (Some(f), _) => Box::new(FileSource(f.clone(), a.template.inputs()?)),
        (None, Some(opts)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let snapshot =
                rt.block_on(async { admin::snapshot(&mut opts.connect().await?).await })?;
            Box::new(StoreSource::new(opts.describe(), snapshot))
        }
        (None, None) => unreachable!("clap requires FILE or --store"),
    };
    let v = open_agent(g)?.verify(src.as_ref())?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if !v.differences.is_empty() {
        bail!(
            "the live policy (generation {}) differs from {} (first = {}, second = live):\n  {}",
            v.generation,
            v.source,
            v.source,
            v.differences.join("\n  ")
        );
    }
    if !g.json {
        println!(
            "the live policy (generation {}) means {} on its {} interfaces",
            v.generation, v.source, v.interfaces
        );
    }
    Ok(())
}
