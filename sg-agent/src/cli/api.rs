//! `sg-agent api`: serve the EC2 Query API (docs/api.md) on this host's policy file (the
//! local store: `--config FILE`, /etc/sg/policy.yaml by default, the file `sg-agent daemon
//! --config` enforces) or on the fleet's etcd (`--store`). Listens on 127.0.0.1 unless told
//! otherwise; requests must be signed with a key of the credentials file unless `--no-auth`
//! says explicitly that anyone who reaches the port may write.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;

use super::Globals;
use super::store::StoreArgs;
use crate::api::{self, Account, backend::Where, sigv4::Keys};
use crate::store::local::LocalStore;

/// The local store's file when neither --config nor --store is given: the systemd
/// service's (dist/sg-agent.service).
const DEFAULT_POLICY: &str = "/etc/sg/policy.yaml";

#[derive(clap::Args)]
pub struct Args {
    /// The policy file of this host's daemon, written in place (the local store, no etcd).
    #[arg(long, value_name = "FILE", conflicts_with = "endpoints")]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Where to listen (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// A root-only file of `ACCESS_KEY_ID = SECRET_ACCESS_KEY` lines: requests must carry a
    /// valid Signature V4 of one of them (AuthFailure otherwise).
    #[arg(long, value_name = "FILE", required_unless_present = "no_auth")]
    credentials: Option<PathBuf>,
    /// Accept unsigned requests: anyone who reaches the port may change every group. A lab
    /// only.
    #[arg(long, conflicts_with = "credentials")]
    no_auth: bool,
    /// The account id in answers (OwnerId, ARNs).
    #[arg(long, value_name = "ID", default_value = "123456789012")]
    account: String,
    /// The VPC of groups created without --vpc-id, and of every imported group.
    #[arg(long, value_name = "VPC", default_value = "vpc-0a1b2c3d")]
    vpc: String,
    /// The region named in ARNs.
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    region: String,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let store = match a.store.options() {
        Some(etcd) => Where::Etcd(etcd),
        None => Where::Local(LocalStore {
            path: a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY)),
            state_dir: g.state_dir.clone(),
        }),
    };
    let keys = a.credentials.as_deref().map(Keys::from_file).transpose()?;
    let auth = if keys.is_some() {
        "Signature V4 required"
    } else {
        "NO AUTHENTICATION (--no-auth)"
    };
    let opts = api::Options {
        store: store.clone(),
        listen: a.listen,
        keys,
        account: Account {
            owner: a.account.clone(),
            vpc: a.vpc.clone(),
            region: a.region.clone(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(api::run(
        opts,
        |addr| {
            // The first line says where: tests and scripts read the port from it.
            println!(
                "sg-agent api: listening on http://{addr} ({auth}), store {}",
                store.describe()
            );
        },
        crate::daemon::shutdown_signal(),
    ))
}
