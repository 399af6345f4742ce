//! `sg-agent store ...`: the fleet's store from the command line: import a policy file,
//! export the store as one native file, and the hosts' status. `StoreArgs` (where the store
//! is) is shared with `sg-agent daemon --store`.

use std::path::PathBuf;

use anyhow::Result;

use super::{Globals, load_policy};
use crate::store::etcd::Endpoints;
use crate::store::{StoreOptions, admin};

/// Where the store is.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// The etcd cluster: etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS).
    #[arg(long = "store", value_name = "URL")]
    pub endpoints: Option<Endpoints>,
    /// A root-only file naming the CA, client certificate and key for etcd's TLS.
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pub store_credentials: Option<PathBuf>,
    /// The prefix of every key sg writes.
    #[arg(long, value_name = "PREFIX", default_value = "/sg/")]
    pub store_prefix: String,
}

impl StoreArgs {
    pub fn options(&self) -> Option<StoreOptions> {
        Some(StoreOptions {
            endpoints: self.endpoints.clone()?,
            credentials: self.store_credentials.clone(),
            prefix: self.store_prefix.clone(),
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    cmd: StoreCmd,
}

#[derive(clap::Subcommand)]
enum StoreCmd {
    /// Validate a policy file (native, CloudFormation or describe JSON) and make it the
    /// store's, in one transaction; nothing is written on error.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the store's policy as one native YAML file (`sg-agent check` accepts it).
    Export,
    /// The hosts, the revision each enforces, and who is behind.
    Status,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let Some(opts) = a.store.options() else {
        return Err(crate::error::usage(
            "`sg-agent store` needs --store etcd://HOST:PORT",
        ));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut store = opts.connect().await?;
        match &a.cmd {
            StoreCmd::Import { file } => {
                let loaded = load_policy(file)?;
                let out = admin::import(&mut store, &loaded, &file.display().to_string()).await?;
                if g.json {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!(
                        "imported {} into {}: revision {}, {} keys written, {} deleted, {} unchanged",
                        file.display(),
                        opts.describe(),
                        out.revision,
                        out.written,
                        out.deleted,
                        out.unchanged
                    );
                }
            }
            StoreCmd::Export => {
                let snap = admin::snapshot(&mut store).await?;
                print!(
                    "# sg store {} at revision {}\n{}",
                    opts.describe(),
                    snap.revision,
                    snap.yaml()?
                );
            }
            StoreCmd::Status => print_status(g, &admin::status(&mut store).await?)?,
        }
        Ok(())
    })
}

fn print_status(g: &Globals, s: &admin::StoreStatus) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "store revision {} (policy {}): {} groups, {} prefix lists, {} instances, {} hosts",
        s.revision,
        s.hash,
        s.groups,
        s.prefix_lists,
        s.instances,
        s.hosts.len()
    );
    println!(
        "{:<24} {:<6} {:>9} {:<10} {:>6}  INTERFACES / ERROR",
        "HOST", "ALIVE", "REVISION", "STATE", "BEHIND"
    );
    for h in &s.hosts {
        let (rev, state, note) = match &h.ack {
            None => ("-".to_string(), "no ack", String::new()),
            Some(a) => (
                a.revision.to_string(),
                if h.current { "current" } else { "behind" },
                a.error.clone().unwrap_or_default(),
            ),
        };
        println!(
            "{:<24} {:<6} {:>9} {:<10} {:>6}  {}{}",
            h.host,
            if h.alive { "yes" } else { "no" },
            rev,
            state,
            h.behind,
            h.registered.join(","),
            if note.is_empty() {
                String::new()
            } else {
                format!(" {note}")
            }
        );
    }
    Ok(())
}
