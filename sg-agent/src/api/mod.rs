//! `sg-agent api`: the EC2 Query API over the policy store, etcd or this host's policy file
//! (docs/api.md; SEMANTICS P1-P10).
//! The aws CLI, boto3 and anything else that speaks EC2 manage sg's security groups through
//! it; every write goes to the store through the one validator, and every agent following the
//! store enforces it (P10).
//!
//! ```text
//! server.rs   HTTP (hyper), bounded bodies, SigV4 check, one call -> one XML document
//! sigv4.rs    AWS Signature V4 verification against a root-only key file
//! wire.rs     form body -> typed Call (the wire names the CLI sends)
//! view.rs     a store snapshot as EC2 sees it (groups, rules, VPC, tags, filters)
//! actions.rs  each action: reads from a snapshot, writes as read-validate-compare-and-swap
//! rule_edits.rs  ModifySecurityGroupRules, UpdateSecurityGroupRuleDescriptions*
//! interfaces.rs  DescribeNetworkInterfaces, ModifyNetworkInterfaceAttribute (groups)
//! prefix_lists.rs  the managed prefix list actions (R4, P9)
//! nacl.rs     the network ACL actions and DescribeSubnets (A1-A27)
//! tags.rs     CreateTags, DeleteTags on groups and rules (kept in the group's metadata)
//! lookups.rs  DescribeTags, DescribeVpcs, the (empty) reference and stale-group answers
//! change.rs   a write applied to the native document, validated, turned into store values
//! backend.rs  the store: etcd or the local file (503 when it cannot be reached)
//! answer.rs   typed answers -> EC2's XML; xml.rs the writer and the error document
//! fault.rs    EC2's error codes and HTTP statuses
//! ```
//! It must not hold policy logic of its own: rules, ids, defaults and quotas are the
//! validator's (config), ids of rules are the validator's derivation.

pub mod actions;
pub mod answer;
pub mod backend;
pub mod change;
pub mod fault;
pub mod interfaces;
pub mod lookups;
pub mod nacl;
pub mod prefix_lists;
pub mod rule_edits;
pub mod server;
pub mod sigv4;
pub mod tags;
pub mod view;
pub mod wire;
pub mod xml;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context as _, Result};

pub use view::Account;

/// What `sg-agent api` was started with.
#[derive(Clone, Debug)]
pub struct Options {
    pub store: backend::Where,
    pub listen: SocketAddr,
    /// None: no signature check (`--no-auth`).
    pub keys: Option<sigv4::Keys>,
    pub account: Account,
}

/// Binds, then serves until `shutdown` resolves. `ready` gets the bound address (port 0
/// picks a free one).
pub async fn run(
    opts: Options,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("api: listen on {}", opts.listen))?;
    ready(listener.local_addr()?);
    let backend = backend::Backend::new(opts.store);
    let server = server::Server {
        api: actions::Api {
            backend,
            account: opts.account,
        },
        keys: opts.keys,
    };
    server::serve(server, listener, shutdown).await
}
