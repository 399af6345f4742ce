//! The etcd client of the policy store: connect, list at one revision, watch, transactions,
//! leases. Knows keys and bytes, not policies.
//!
//! Every key in and out of this module is relative to the store's prefix (`/sg/` + `groups/web`
//! is the etcd key `/sg/groups/web`); the key layout itself belongs to `store/mod.rs`. Every call
//! that talks to etcd is bounded by [`Timeouts::request`], so an etcd that is down or partitioned
//! yields an error instead of a hang: the daemon keeps enforcing what it has and retries. The
//! one exception is [`Watch::next`], which waits for changes as long as there are none; HTTP/2
//! keepalive pings end its stream when the connection dies, and the caller reconnects and relists.
//! A watch whose connection lives but which has stopped delivering (etcd-io/etcd#17529) is
//! caught by the watch's own checks ([`Watch`]): it is reported [`WatchBatch::Silent`] within
//! [`Timeouts::watch_progress`] + [`Timeouts::watch_silence`] (+ a last call of a second), and
//! the caller relists.
//! Within that limit a call is repeated only when etcd cannot have received it (the endpoint
//! refused the connection, or the member has no leader), which makes it safe for transactions:
//! with several endpoints, one dead member fails no call.
//!
//! A transaction is all or nothing and holds at most the server's `--max-txn-ops` operations
//! (128 by default); a bigger [`Store::commit`] is refused whole, with that hint.
//!
//! Endpoints: `etcd://HOST:PORT[,HOST:PORT...]` (plain gRPC) or `etcds://HOST:PORT[,...]` (TLS).
//! HOST is a name, an IPv4 address or an IPv6 address in brackets (`[2001:db8::1]:2379`).
//!
//! Credentials file (`key = value` lines, `#` comments; relative paths are relative to the
//! file's directory; like etcdctl's `--cacert`, `--cert`, `--key`, `--user`):
//! ```text
//! ca = /etc/sg/etcd/ca.pem           # for etcds://: the CA that signed the etcd servers' certs
//! cert = /etc/sg/etcd/client.pem     # optional, with key: the client certificate
//! key = /etc/sg/etcd/client-key.pem
//! user = sg-agent                    # optional, with password: etcd's own authentication
//! password = ...
//! ```
//! The file must be owned by root or by the user running sg-agent and must not be accessible by
//! group or others (`chmod 600`): it may hold a password and names the key that proves the
//! host's identity to the store.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::Read as _;
use std::net::Ipv6Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions,
    Txn, TxnOp, WatchFilterType, WatchOptions, WatchStream,
};
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};

/// How long one list page, transaction or lease call may take before it is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP + TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on idle connections, so a watch on a dead connection ends instead of waiting
/// forever. etcd answers pings more frequent than its `--grpc-keepalive-min-time` (5 s by
/// default) with GOAWAY, so stay above it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch that has delivered nothing for this long is asked for its progress (one small
/// message on its stream; a synced watch answers at once with the store's revision).
const WATCH_PROGRESS: Duration = Duration::from_secs(3);
/// How long a watch may stay silent once it owes something: a progress request unanswered, or
/// a change the store has and the watch has not delivered. Then it is reported
/// [`WatchBatch::Silent`] and the caller relists, as after a compaction.
const WATCH_SILENCE: Duration = Duration::from_secs(5);
/// Before a watch is given up as silent, how long it is still read: what arrived while this
/// process was stopped or starved of CPU is read first.
const WATCH_LAST_CALL: Duration = Duration::from_secs(1);
/// Keys per list page: bounds one response's size; later pages read the first page's revision.
const LIST_PAGE: i64 = 1000;
/// gRPC's default 4 MiB message limit is below what one page or one watch batch may carry
/// (etcd accepts values up to 1.5 MiB each).
const MAX_MESSAGE: usize = 64 << 20;

/// The etcd cluster to talk to, parsed from `etcd://HOST:PORT[,HOST:PORT...]` or `etcds://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    tls: bool,
    /// `HOST:PORT` as written, IPv6 hosts in brackets.
    hosts: Vec<String>,
}

impl Endpoints {
    /// Whether the endpoints speak TLS (`etcds://`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The `HOST:PORT` of each endpoint.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect()
    }
}

const ENDPOINTS_SYNTAX: &str = "expected etcd://HOST:PORT[,HOST:PORT...] or etcds://... (TLS)";

impl FromStr for Endpoints {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Endpoints> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("etcds://") {
            (true, rest)
        } else if s.starts_with("http://") || s.starts_with("https://") {
            bail!("{ENDPOINTS_SYNTAX}, got {s:?}: write etcd:// for http and etcds:// for https")
        } else {
            bail!("{ENDPOINTS_SYNTAX}, got {s:?}")
        };
        let hosts = rest
            .split(',')
            .map(parse_host_port)
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("{ENDPOINTS_SYNTAX}, got {s:?}"))?;
        Ok(Endpoints { tls, hosts })
    }
}

/// One `HOST:PORT`, returned as written once valid.
fn parse_host_port(hp: &str) -> Result<String> {
    if hp.is_empty() {
        bail!("empty endpoint");
    }
    let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
        let (addr, port) = inner
            .split_once("]:")
            .ok_or_else(|| anyhow!("{hp:?}: expected [IPV6]:PORT"))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| anyhow!("{hp:?}: {addr:?} is not an IPv6 address"))?;
        (addr, port)
    } else {
        let (host, port) = hp
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{hp:?}: missing :PORT"))?;
        if host.contains(':') {
            bail!("{hp:?}: an IPv6 address goes in brackets, as in [2001:db8::1]:2379");
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if host.is_empty() || !host.chars().all(name_char) {
            bail!("{hp:?}: {host:?} is not a host name or address");
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(hp.to_owned()),
        _ => bail!("{hp:?}: the port of {host} must be a number from 1 to 65535"),
    }
}

impl fmt::Display for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}", self.hosts.join(","))
    }
}

/// What proves this host to etcd: TLS files and/or a user, read from a root-only file.
/// (Debug leaves the password out.)
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The CA of the servers' certificates: required with etcds://.
    ca: Option<PathBuf>,
    /// The client certificate and its key, both or neither.
    cert_key: Option<(PathBuf, PathBuf)>,
    /// etcd's own user and password, both or neither.
    user: Option<(String, String)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca)
            .field("cert_key", &self.cert_key)
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the credentials file (format in the module doc), refusing a file that others could
    /// read or change.
    pub fn from_file(path: &Path) -> Result<Credentials> {
        let mut file = File::open(path)
            .with_context(|| format!("etcd credentials {}: cannot open", path.display()))?;
        // The checks look at the opened file, not at the path again: no swap in between.
        let meta = file.metadata()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        check_private(meta.mode(), meta.uid(), euid)
            .with_context(|| format!("etcd credentials {}", path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("etcd credentials {}: cannot read", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        parse_credentials(&text, dir)
            .with_context(|| format!("etcd credentials {}", path.display()))
    }
}

/// Refuses a credentials file that group or others can access, or that someone other than root
/// or the current user owns (they could rewrite it to point at their own CA).
pub(crate) fn check_private(mode: u32, owner: u32, euid: u32) -> Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "the file is accessible by group or others (mode {:04o}); credentials live in a \
             root-only file: chmod 600 it",
            mode & 0o7777
        );
    }
    if owner != 0 && owner != euid {
        bail!(
            "the file is owned by uid {owner}, not by root or the current user (uid {euid}); \
             credentials live in a root-only file: chown it to root and chmod 600 it"
        );
    }
    Ok(())
}

fn parse_credentials(text: &str, dir: &Path) -> Result<Credentials> {
    let mut fields: [Option<String>; 5] = Default::default();
    const NAMES: [&str; 5] = ["ca", "cert", "key", "user", "password"];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line_no = n + 1;
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("line {line_no}: expected NAME = VALUE"))?;
        let (name, value) = (name.trim(), value.trim());
        let slot = NAMES.iter().position(|n| *n == name).ok_or_else(|| {
            anyhow!("line {line_no}: unknown name {name:?} (expected one of {NAMES:?})")
        })?;
        if fields[slot].replace(value.to_owned()).is_some() {
            bail!("line {line_no}: {name} given twice");
        }
    }
    let [ca, cert, key, user, password] = fields;
    let path = |p: String| dir.join(p);
    let ca = ca.map(path);
    let cert_key = match (cert, key) {
        (Some(c), Some(k)) => Some((path(c), path(k))),
        (None, None) => None,
        _ => bail!("`cert` and `key` go together: give both or neither"),
    };
    let user = match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => bail!("`user` and `password` go together: give both or neither"),
    };
    if ca.is_none() && cert_key.is_some() {
        bail!("a client certificate needs `ca = PATH`, the CA of the etcd servers");
    }
    if ca.is_none() && user.is_none() {
        bail!("nothing to authenticate with: give `ca` (TLS) and/or `user` and `password`");
    }
    Ok(Credentials { ca, cert_key, user })
}

/// The time limits of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// Each request (one list page, a transaction, a lease call, a watch's creation).
    pub request: Duration,
    /// A quiet watch is asked for its progress after this long ([`WATCH_PROGRESS`]).
    pub watch_progress: Duration,
    /// A watch that owes an answer or a change is given up after this long ([`WATCH_SILENCE`]).
    pub watch_silence: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: CONNECT_TIMEOUT,
            request: REQUEST_TIMEOUT,
            watch_progress: WATCH_PROGRESS,
            watch_silence: WATCH_SILENCE,
        }
    }
}

/// A connected etcd client and the key prefix it works under.
pub struct Store {
    client: Client,
    kv: KvClient,
    prefix: String,
    /// The endpoints' `HOST:PORT` list, for error messages.
    label: String,
    timeouts: Timeouts,
    /// Keys per list page ([`LIST_PAGE`]; tests lower it to make listings span pages).
    page: i64,
}

/// Every key under the prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub revision: i64,
    /// Sorted by key; keys relative to the prefix.
    pub kvs: Vec<(String, Vec<u8>)>,
}

/// One change under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes in commit order; the store as of `revision` is the state before them plus them.
    /// One batch may span several revisions (etcd batches a catching-up watch) but never splits
    /// one: a transaction's events arrive together.
    Changes {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// The requested revision was compacted away: the watch has ended and the caller relists.
    Compacted { compact_revision: i64 },
    /// The watch went silent: it left a progress request unanswered, or the store holds a
    /// change it has not delivered, for [`Timeouts::watch_silence`]. etcd can lose a watch's
    /// compaction notice and the events it skipped (etcd-io/etcd#17529: a slow watcher whose
    /// history is compacted while its channel is full). The watch has ended (it is dropped,
    /// which cancels it) and the caller relists, as after [`WatchBatch::Compacted`].
    Silent {
        /// Everything up to this revision was delivered.
        delivered: i64,
        /// The newest store revision the watch's checks saw.
        store: i64,
        /// What it owed: "a progress answer" or "changes".
        owed: &'static str,
    },
}

/// A condition of [`Store::commit_if`]: the key's last modification is at `mod_revision`
/// (0: the key does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub key: String,
    pub mod_revision: i64,
}

impl Store {
    /// Connects with the default [`Timeouts`]; `prefix` is prepended to every key (e.g. `/sg/`).
    pub async fn connect(
        ep: &Endpoints,
        creds: Option<&Credentials>,
        prefix: &str,
    ) -> Result<Store> {
        Store::connect_with(ep, creds, prefix, Timeouts::default()).await
    }

    /// Connects and checks that etcd answers (a count of the keys under the prefix), so a wrong
    /// address, certificate or password is reported here rather than on first use.
    pub async fn connect_with(
        ep: &Endpoints,
        creds: Option<&Credentials>,
        prefix: &str,
        timeouts: Timeouts,
    ) -> Result<Store> {
        let label = ep.hosts.join(",");
        if prefix.is_empty() {
            bail!("etcd {label}: the key prefix is empty (sg keeps its keys under e.g. /sg/)");
        }
        let options = connect_options(ep, creds, timeouts)
            .with_context(|| format!("etcd {label}: connect"))?;
        let urls = ep.urls();
        let connecting = || Client::connect(urls.clone(), Some(options.clone()));
        let client = bounded(&label, timeouts.connect, "connect", connecting).await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let store = Store {
            client,
            kv,
            prefix: prefix.to_owned(),
            label,
            timeouts,
            page: LIST_PAGE,
        };
        let probe = GetOptions::new().with_prefix().with_count_only();
        let key = store.prefix.clone();
        let op = format!("connect (count {key})");
        store
            .kv_call(&op, |mut kv| {
                let (key, probe) = (key.clone(), probe.clone());
                async move { kv.get(key, Some(probe)).await }
            })
            .await?;
        Ok(store)
    }

    /// The endpoints' `HOST:PORT` list, as error messages name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Every key under the prefix at one revision. Pages of 1000 keys; each later page
    /// reads at the first page's revision, and a compaction in between restarts the listing.
    pub async fn list(&mut self) -> Result<Listing> {
        self.list_under("").await
    }

    /// Every key under the prefix followed by `sub` (e.g. `v1/`), at one revision; keys are
    /// still relative to the prefix.
    pub async fn list_under(&mut self, sub: &str) -> Result<Listing> {
        let mut attempts = 0;
        loop {
            match self.list_once(sub).await {
                Err(e) if is_compacted(&e) && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn list_once(&mut self, sub: &str) -> Result<Listing> {
        let base = format!("{}{sub}", self.prefix);
        let op = format!("list {base}");
        let end = prefix_end(base.as_bytes());
        let mut from = base.into_bytes();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.page)
                .with_revision(revision);
            let mut resp = self
                .kv_call(&op, |mut kv| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { kv.get(from, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = header_revision(resp.header());
            }
            let more = resp.more();
            for kv in resp.take_kvs() {
                let (key, value) = kv.into_key_value();
                from = key.clone();
                kvs.push((
                    self.relative(key)
                        .with_context(|| format!("etcd {}: {op}", self.label))?,
                    value,
                ));
            }
            if !more {
                return Ok(Listing { revision, kvs });
            }
            // The next page starts just after the last key read.
            from.push(0);
        }
    }

    /// A watch of every key under the prefix, from `from_revision` (inclusive; typically a
    /// listing's revision + 1).
    pub async fn watch(&mut self, from_revision: i64) -> Result<Watch> {
        self.watch_under("", from_revision).await
    }

    /// A watch of every key under the prefix followed by `sub`; keys are still relative to
    /// the prefix.
    pub async fn watch_under(&mut self, sub: &str, from_revision: i64) -> Result<Watch> {
        self.watch_filtered(sub, from_revision, &[]).await
    }

    /// [`Store::watch_under`] with etcd's server-side event filters; the tests use them for a
    /// watch that really does not deliver some changes.
    async fn watch_filtered(
        &mut self,
        sub: &str,
        from_revision: i64,
        filters: &[WatchFilterType],
    ) -> Result<Watch> {
        let base = format!("{}{sub}", self.prefix);
        let op = format!("watch {base} from revision {from_revision}");
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision)
            .with_filters(filters.to_vec());
        let client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let starting = || {
            let (mut client, key, options) = (client.clone(), base.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        };
        let mut stream = bounded(&self.label, self.timeouts.request, &op, starting).await?;
        // etcd confirms the watch first (or refuses it): wait for that, bounded, so a watch that
        // cannot start is an error here and not a silent wait in `next`.
        let created = stream.message();
        let created = bounded_once(&self.label, self.timeouts.request, &op, created).await?;
        match created {
            Some(resp) if resp.created() && !resp.canceled() => {}
            Some(resp) => bail!(
                "etcd {}: {op}: refused: {}",
                self.label,
                resp.cancel_reason()
            ),
            None => bail!(
                "etcd {}: {op}: the stream ended before the watch started",
                self.label
            ),
        }
        let (start, end) = (base.clone().into_bytes(), prefix_end(base.as_bytes()));
        let delivered = from_revision - 1;
        let keys = self.count_at(&start, &end, delivered).await?;
        let now = Instant::now();
        Ok(Watch {
            stream: Some(stream),
            prefix: self.prefix.clone(),
            label: self.label.clone(),
            op,
            kv: self.kv.clone(),
            range: (start, end),
            timeouts: self.timeouts,
            delivered,
            keys,
            store: delivered,
            live: Liveness {
                heard: now,
                asked: None,
                owed_since: None,
            },
        })
    }

    /// How many keys `[start, end)` held at `revision` (an index read, no values), or None when
    /// that revision is compacted (a watch from it is cancelled as compacted anyway).
    async fn count_at(&self, start: &[u8], end: &[u8], revision: i64) -> Result<Option<i64>> {
        if revision < 1 {
            // Before the first write (etcd would read revision 0 as "now").
            return Ok(Some(0));
        }
        let op = format!("count the keys watched at revision {revision}");
        let options = GetOptions::new()
            .with_range(end.to_vec())
            .with_count_only()
            .with_revision(revision);
        let counted = self
            .kv_call(&op, |mut kv| {
                let (start, options) = (start.to_vec(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await;
        match counted {
            Ok(resp) => Ok(Some(resp.count())),
            Err(e) if is_compacted(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `puts` and removes `deletes` (keys) and everything under `delete_prefixes`, in one
    /// transaction: all or nothing. Returns the revision it committed at. A delete prefix may
    /// cover keys that are also put (replace a subtree): those are written, the rest removed.
    pub async fn commit(
        &mut self,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
        delete_prefixes: Vec<String>,
    ) -> Result<i64> {
        let committed = self.commit_if(&[], puts, deletes, delete_prefixes).await?;
        committed.ok_or_else(|| anyhow!("etcd {}: commit: an unconditional txn failed", self.label))
    }

    /// [`Store::commit`] if every [`Expect`] holds (compare-and-swap): `Some(revision)`, or
    /// `None` when one does not and nothing was written.
    pub async fn commit_if(
        &mut self,
        expect: &[Expect],
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
        delete_prefixes: Vec<String>,
    ) -> Result<Option<i64>> {
        let compares: Vec<Compare> = expect
            .iter()
            .map(|e| {
                let key = self.full_key(&e.key);
                Compare::mod_revision(key, CompareOp::Equal, e.mod_revision)
            })
            .collect();
        self.commit_when(compares, puts, deletes, delete_prefixes)
            .await
    }

    /// [`Store::commit`] if no key under the prefix followed by `sub` was written after
    /// `revision` (a read-modify-write of a listing at that revision): `Some(revision)`, or
    /// `None` when one was and nothing was written. A key deleted meanwhile is not seen by
    /// this comparison: writers that delete also write a key under `sub` in the same
    /// transaction when they need their deletes seen (the EC2 API does).
    pub async fn commit_if_unchanged_since(
        &mut self,
        sub: &str,
        revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<Option<i64>> {
        let range = self.full_key(sub);
        let compare =
            Compare::mod_revision(range, CompareOp::Less, revision.saturating_add(1)).with_prefix();
        self.commit_when(vec![compare], puts, deletes, vec![]).await
    }

    async fn commit_when(
        &mut self,
        compares: Vec<Compare>,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
        delete_prefixes: Vec<String>,
    ) -> Result<Option<i64>> {
        let op = format!(
            "commit under {} ({} puts, {} deletes, {} prefix deletes)",
            self.prefix,
            puts.len(),
            deletes.len(),
            delete_prefixes.len()
        );
        let ops = plan_txn(&self.prefix, puts, deletes, delete_prefixes)
            .with_context(|| format!("etcd {}: {op}", self.label))?;
        let txn = Txn::new()
            .when(compares)
            .and_then(ops.into_iter().map(TxnOp::from).collect::<Vec<_>>());
        let resp = self
            .kv_call(&op, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(txn_hint)?;
        Ok(resp.succeeded().then(|| header_revision(resp.header())))
    }

    /// Writes one key, attached to `lease` when given (it vanishes with the lease). Returns the
    /// revision of the write.
    pub async fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64> {
        let full = self.checked_key(key)?;
        let op = format!("put {full}");
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let resp = self
            .kv_call(&op, |mut kv| {
                let (full, value, options) = (full.clone(), value.clone(), options.clone());
                async move { kv.put(full, value, options).await }
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    /// One key's value and the revision of its last modification.
    pub async fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let full = self.checked_key(key)?;
        let op = format!("get {full}");
        let mut resp = self
            .kv_call(&op, |mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let revision = kv.mod_revision();
            (kv.into_key_value().1, revision)
        }))
    }

    /// Discards the history before `revision` (what etcd's auto-compaction does); watches from
    /// older revisions then report [`WatchBatch::Compacted`].
    pub async fn compact(&mut self, revision: i64) -> Result<()> {
        let op = format!("compact at revision {revision}");
        self.kv_call(
            &op,
            |mut kv| async move { kv.compact(revision, None).await },
        )
        .await?;
        Ok(())
    }

    /// A lease of `ttl_secs` seconds, kept alive from a spawned task until the [`Lease`] is
    /// dropped (then revoked, best effort) or the keepalive fails ([`Lease::lost`]).
    pub async fn grant_lease(&mut self, ttl_secs: i64) -> Result<Lease> {
        let op = format!("grant a lease of {ttl_secs} s");
        if ttl_secs < 1 {
            bail!("etcd {}: {op}: the TTL must be at least 1 s", self.label);
        }
        let client = self.client.lease_client();
        let grant = || {
            let mut client = client.clone();
            async move { client.grant(ttl_secs, None).await }
        };
        let resp = bounded(&self.label, self.timeouts.request, &op, grant).await?;
        let (id, granted) = (resp.id(), resp.ttl());
        let (lost_tx, lost_rx) = signal::channel(false);
        let keeper = KeepAlive {
            client: client.clone(),
            id,
            ttl: Duration::from_secs(granted.max(1).unsigned_abs()),
            timeout: self.timeouts.request,
            label: self.label.clone(),
        };
        let task = tokio::spawn(keeper.run(lost_tx));
        Ok(Lease {
            id,
            ttl: granted,
            client,
            timeout: self.timeouts.request,
            lost: lost_rx,
            task,
            revoke_on_drop: true,
            label: self.label.clone(),
        })
    }

    /// One KV call as [`bounded`] runs it; `call` gets a handle of the client per attempt.
    async fn kv_call<T, Fut>(&self, op: &str, call: impl Fn(KvClient) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        bounded(&self.label, self.timeouts.request, op, || {
            call(self.kv.clone())
        })
        .await
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The full key of a single-key operation; the empty key would name the prefix itself.
    fn checked_key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            bail!(
                "etcd {}: empty key (keys are relative to {})",
                self.label,
                self.prefix
            );
        }
        Ok(self.full_key(key))
    }

    fn relative(&self, key: Vec<u8>) -> Result<String> {
        relative_key(&self.prefix, key)
    }
}

/// The client options: timeouts, keepalive, and TLS and user from the credentials.
fn connect_options(
    ep: &Endpoints,
    creds: Option<&Credentials>,
    timeouts: Timeouts,
) -> Result<ConnectOptions> {
    // No per-request gRPC timeout here: it would also cut long-lived watch and keepalive
    // streams. Each call is bounded by `bounded` instead.
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeouts.connect)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        // Without a leader etcd cannot commit; fail (and end watches) rather than wait.
        .with_require_leader(true);
    if let Some((user, password)) = creds.and_then(|c| c.user.as_ref()) {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    let ca = creds.and_then(|c| c.ca.as_ref());
    if !ep.tls {
        if ca.is_some() {
            bail!("the credentials name TLS files but the endpoints are plain: write etcds://");
        }
        return Ok(options);
    }
    let ca = ca.ok_or_else(|| {
        anyhow!("etcds:// needs credentials naming the CA of the etcd servers (`ca = PATH`)")
    })?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = creds.and_then(|c| c.cert_key.as_ref()) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options.with_tls(tls))
}

/// Runs one call under a time limit; its error names the endpoints and the operation. No
/// retry: for what cannot be repeated, like reading the next message of a stream.
async fn bounded_once<T>(
    label: &str,
    limit: Duration,
    op: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("etcd {label}: {op}"))),
        Err(_) => Err(anyhow!("etcd {label}: {op}: no answer within {limit:?}")),
    }
}

/// Runs a call under a time limit, and again while etcd cannot have received it, so repeating
/// it is safe even for a transaction:
/// - the endpoint the client picked refused the connection: the client spreads calls over the
///   endpoints at random, so with one member of three down a third of the calls would fail;
///   a few quick attempts per endpoint reach a live one (and with etcd down, fail fast);
/// - the member has no leader (an election is under way): retried until the time limit.
async fn bounded<T, Fut>(
    label: &str,
    limit: Duration,
    op: &str,
    mut call: impl FnMut() -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + limit;
    let endpoints = label.split(',').count();
    let mut refused = 0;
    loop {
        let e = match timeout_at(deadline, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => return Err(anyhow!("etcd {label}: {op}: no answer within {limit:?}")),
        };
        let pause = match not_received(&e) {
            Some(NotReceived::Refused) if refused < 3 * endpoints => {
                refused += 1;
                Duration::from_millis(20)
            }
            Some(NotReceived::NoLeader) => Duration::from_millis(200),
            _ => return Err(anyhow::Error::new(e).context(format!("etcd {label}: {op}"))),
        };
        if Instant::now() + pause >= deadline {
            return Err(anyhow::Error::new(e).context(format!("etcd {label}: {op}")));
        }
        log::debug!("etcd {label}: {op}: {e}; trying again");
        sleep(pause).await;
    }
}

/// Why etcd did not receive a call.
enum NotReceived {
    Refused,
    NoLeader,
}

fn not_received(e: &etcd_client::Error) -> Option<NotReceived> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let message = status.message();
    if message.contains("tcp connect error") {
        Some(NotReceived::Refused)
    } else if message.contains("no leader") {
        Some(NotReceived::NoLeader)
    } else {
        None
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

fn is_compacted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.to_string()
            .contains("required revision has been compacted")
    })
}

/// etcd bounds one transaction by its `--max-txn-ops`: say so where it bites.
fn txn_hint(e: anyhow::Error) -> anyhow::Error {
    if e.chain()
        .any(|c| c.to_string().contains("too many operations in txn request"))
    {
        e.context(
            "one transaction holds at most the etcd server's --max-txn-ops operations \
             (128 by default); raise it on every etcd member",
        )
    } else {
        e
    }
}

fn relative_key(prefix: &str, key: Vec<u8>) -> Result<String> {
    let key = String::from_utf8(key).map_err(|e| {
        anyhow!(
            "key {:?} is not UTF-8",
            String::from_utf8_lossy(e.as_bytes())
        )
    })?;
    match key.strip_prefix(prefix) {
        Some(rest) => Ok(rest.to_owned()),
        None => bail!("key {key:?} is outside the prefix {prefix:?}"),
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end of a prefix):
/// the prefix with its last byte below 0xff incremented and what follows dropped. A prefix of
/// only 0xff bytes has no end: `\0` means "to the last key" in etcd.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One operation of a transaction, full keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Keys in `[from, to)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl From<Op> for TxnOp {
    fn from(op: Op) -> TxnOp {
        match op {
            Op::Put(k, v) => TxnOp::put(k, v, None),
            Op::Delete(k) => TxnOp::delete(k, None),
            Op::DeleteRange(from, to) => {
                TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)))
            }
        }
    }
}

/// The operations of one commit. etcd refuses a transaction that puts a key inside a range it
/// also deletes ("duplicate key given in txn request"), so a delete prefix that covers put keys
/// becomes the ranges between them. A key both put and deleted, or put twice, is a caller bug.
fn plan_txn(
    prefix: &str,
    puts: Vec<(String, Vec<u8>)>,
    deletes: Vec<String>,
    delete_prefixes: Vec<String>,
) -> Result<Vec<Op>> {
    let full = |k: &str| format!("{prefix}{k}").into_bytes();
    let mut put_keys = std::collections::BTreeSet::new();
    for (key, _) in &puts {
        if key.is_empty() {
            bail!("empty key in puts (keys are relative to {prefix})");
        }
        if !put_keys.insert(full(key)) {
            bail!("key {key:?} is put twice");
        }
    }
    let mut ops: Vec<Op> = puts
        .into_iter()
        .map(|(k, v)| Op::Put(full(&k), v))
        .collect();
    for key in deletes {
        if key.is_empty() {
            bail!("empty key in deletes (an empty delete prefix removes everything)");
        }
        if put_keys.contains(&full(&key)) {
            bail!("key {key:?} is both put and deleted");
        }
        ops.push(Op::Delete(full(&key)));
    }
    for p in delete_prefixes {
        let start = full(&p);
        let end = prefix_end(&start);
        let mut from = start.clone();
        for key in put_keys.range(start..end.clone()) {
            if from < *key {
                ops.push(Op::DeleteRange(from, key.clone()));
            }
            from = key.clone();
            from.push(0);
        }
        if from < end {
            ops.push(Op::DeleteRange(from, end));
        }
    }
    Ok(ops)
}

/// A watch of the prefix; ends (None or an error) when etcd goes away or cancels it, or when
/// it goes silent ([`WatchBatch::Silent`]).
///
/// A watch is trusted only as far as it proves itself: every revision up to `delivered` was
/// delivered (events arrive in revision order and a batch never splits a revision). When it
/// has been quiet for [`Timeouts::watch_progress`] it is asked for its progress; the answer
/// claims a revision, and a claim beyond `delivered` is checked against the store with one
/// read of the watched range: the keys modified after `delivered` (keys only) and how many
/// keys there are (a delete shows only as one key fewer). Nothing changed: `delivered` moves
/// to the read's revision, and on a quiet store the next answers claim nothing new, so an idle
/// watch costs one small message each way every few seconds. Something changed: the watch owes
/// it, and a healthy one delivers it within milliseconds.
///
/// The claim itself is not trusted: older etcd releases (Debian's 3.4.23 among them) answer a
/// progress request with the store's revision even while the watch is behind
/// (etcd-io/etcd#15220; later ones answer only a synced watch), and a watch that
/// lost its compaction notice (etcd-io/etcd#17529) is synced again past the events it
/// skipped, so it answers every progress request and delivers nothing. Hence the read.
pub struct Watch {
    /// None once the watch has ended.
    stream: Option<WatchStream>,
    prefix: String,
    label: String,
    op: String,
    /// For the checks: the store's KV client, the watched range's full keys, the limits.
    kv: KvClient,
    range: (Vec<u8>, Vec<u8>),
    timeouts: Timeouts,
    /// Every revision up to this one was delivered (or is known to hold no watched change).
    delivered: i64,
    /// How many keys the watched range held at `delivered`; None when unknown (the start
    /// revision was compacted), then only modified keys are checked.
    keys: Option<i64>,
    /// The newest store revision seen (answers, reads), for [`WatchBatch::Silent`].
    store: i64,
    live: Liveness,
}

/// When a watch was last heard from and what it owes, for [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Liveness {
    /// The watch's last message: changes or a progress answer (or its start).
    heard: Instant,
    /// When the pending progress request was sent; None when none is pending.
    asked: Option<Instant>,
    /// Since when the store has held changes the watch has not delivered; None when it owes
    /// none. Reset by any delivery: a watch that delivers is alive, and a later check sees
    /// whether it still owes something.
    owed_since: Option<Instant>,
}

/// What a watch's checks decide, from its [`Liveness`] and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing to do until then (or until a message arrives).
    WaitUntil(Instant),
    /// Ask the watch for its progress.
    Ask,
    /// The watch owed something for [`Timeouts::watch_silence`]: give it up.
    Silent { owed: &'static str },
}

/// The staleness decision: a watch is given up when it has owed changes or a progress answer
/// for `watch_silence`, and asked for its progress when quiet for `watch_progress`. A healthy
/// watch on a quiet store answers every request at once and owes nothing, so it is never
/// given up; one on a busy store delivers, which resets both.
fn check(l: &Liveness, now: Instant, t: &Timeouts) -> Check {
    if let Some(since) = l.owed_since
        && now >= since + t.watch_silence
    {
        return Check::Silent { owed: "changes" };
    }
    let deadline = match l.asked {
        Some(asked) if now >= asked + t.watch_silence => {
            return Check::Silent {
                owed: "a progress answer",
            };
        }
        Some(asked) => asked + t.watch_silence,
        None if now >= l.heard + t.watch_progress => return Check::Ask,
        None => l.heard + t.watch_progress,
    };
    let owed = l.owed_since.map(|since| since + t.watch_silence);
    Check::WaitUntil(owed.map_or(deadline, |o| o.min(deadline)))
}

impl Watch {
    /// The next batch of changes. `Ok(None)` or `Err` when the stream has ended: the caller
    /// reconnects, relists and watches again. After [`WatchBatch::Compacted`] or
    /// [`WatchBatch::Silent`] it is `None`. Cancel-safe: a message is consumed only when it
    /// is handled, and a check cut short is made again later.
    pub async fn next(&mut self) -> Result<Option<WatchBatch>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            let now = Instant::now();
            let message = match check(&self.live, now, &self.timeouts) {
                // Biased: a message already here is read before a deadline is acted on.
                Check::WaitUntil(wake) => tokio::select! {
                    biased;
                    message = stream.message() => message,
                    () = tokio::time::sleep_until(wake) => continue,
                },
                Check::Ask => {
                    if let Err(e) = stream.request_progress().await {
                        self.stream = None;
                        let e = anyhow::Error::new(e);
                        return Err(e.context(format!("etcd {}: {}", self.label, self.op)));
                    }
                    self.live.asked = Some(now);
                    continue;
                }
                // The answer may be here, unread: this process may not have run for a while
                // (stopped, starved of CPU) or the caller did not poll. A last call first.
                Check::Silent { owed } => match timeout(WATCH_LAST_CALL, stream.message()).await {
                    Ok(message) => message,
                    Err(_) => {
                        self.stream = None;
                        return Ok(Some(WatchBatch::Silent {
                            delivered: self.delivered,
                            store: self.store.max(self.delivered),
                            owed,
                        }));
                    }
                },
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.stream = None;
                    return Ok(None);
                }
                Err(e) => {
                    self.stream = None;
                    let e = anyhow::Error::new(e);
                    return Err(e.context(format!("etcd {}: {}", self.label, self.op)));
                }
            };
            if resp.compact_revision() != 0 {
                self.stream = None;
                let compact_revision = resp.compact_revision();
                return Ok(Some(WatchBatch::Compacted { compact_revision }));
            }
            if resp.canceled() {
                self.stream = None;
                let reason = resp.cancel_reason();
                bail!(
                    "etcd {}: {}: cancelled by etcd: {reason}",
                    self.label,
                    self.op
                );
            }
            self.live.heard = Instant::now();
            self.live.asked = None;
            if let Some(batch) = self.batch(resp.events())? {
                self.live.owed_since = None;
                return Ok(Some(batch));
            }
            // No events: a progress answer, claiming the watch is at the header's revision.
            let claimed = header_revision(resp.header());
            self.store = self.store.max(claimed);
            if claimed > self.delivered
                && let Err(e) = self.verify().await
            {
                self.stream = None;
                return Err(e);
            }
        }
    }

    /// Reads the watched range (keys only) for what changed after `delivered`: nothing moves
    /// `delivered` to the read's revision; something means the watch owes it.
    async fn verify(&mut self) -> Result<()> {
        let op = format!("{}: check against the store", self.op);
        let options = GetOptions::new()
            .with_range(self.range.1.clone())
            .with_keys_only()
            .with_min_mod_revision(self.delivered + 1);
        let start = &self.range.0;
        let resp = bounded(&self.label, self.timeouts.request, &op, || {
            let (mut kv, start, options) = (self.kv.clone(), start.clone(), options.clone());
            async move { kv.get(start, Some(options)).await }
        })
        .await?;
        let revision = header_revision(resp.header());
        self.store = self.store.max(revision);
        // etcd counts the whole range; the revision filter applies to the keys it returns.
        let deleted = self.keys.is_some_and(|n| n != resp.count());
        if resp.kvs().is_empty() && !deleted {
            self.delivered = self.delivered.max(revision);
        } else if self.live.owed_since.is_none() {
            log::debug!(
                "etcd {}: {op}: the store at revision {revision} holds changes after {}",
                self.label,
                self.delivered
            );
            self.live.owed_since = Some(Instant::now());
        }
        Ok(())
    }

    fn batch(&mut self, events: &[etcd_client::Event]) -> Result<Option<WatchBatch>> {
        let mut revision = 0;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let key = relative_key(&self.prefix, kv.key().to_vec())
                .with_context(|| format!("etcd {}: {}", self.label, self.op))?;
            out.push(match event.event_type() {
                EventType::Put => {
                    // Version 1: the key was created.
                    if kv.version() == 1 {
                        self.keys = self.keys.map(|n| n + 1);
                    }
                    WatchEvent::Put {
                        key,
                        value: kv.value().to_vec(),
                    }
                }
                EventType::Delete => {
                    self.keys = self.keys.map(|n| n - 1);
                    WatchEvent::Delete { key }
                }
            });
        }
        if out.is_empty() {
            return Ok(None);
        }
        self.delivered = self.delivered.max(revision);
        self.store = self.store.max(revision);
        Ok(Some(WatchBatch::Changes {
            revision,
            events: out,
        }))
    }
}

/// A lease kept alive by a spawned task. Dropping it stops the keepalive and revokes the lease
/// (best effort, so the keys attached to it vanish at once rather than after the TTL).
pub struct Lease {
    id: i64,
    ttl: i64,
    client: LeaseClient,
    timeout: Duration,
    lost: signal::Receiver<bool>,
    task: JoinHandle<()>,
    revoke_on_drop: bool,
    label: String,
}

impl Lease {
    /// The lease id to attach keys to ([`Store::put`]).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted, in seconds (etcd may raise a short one to its minimum).
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Whether the keepalive has failed: the lease expired or could not be renewed within its TTL.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.task.is_finished()
    }

    /// Resolves when the keepalive has failed; the caller then grants a new lease and registers
    /// its keys again.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keepalive task is gone: lost as well.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Revokes the lease now: the keys attached to it vanish.
    pub async fn revoke(mut self) -> Result<()> {
        self.task.abort();
        self.revoke_on_drop = false;
        let op = format!("revoke lease {:x}", self.id);
        let (client, id) = (&self.client, self.id);
        let revoke = || {
            let mut client = client.clone();
            async move { client.revoke(id).await }
        };
        bounded(&self.label, self.timeout, &op, revoke).await?;
        Ok(())
    }

    /// Whether dropping the lease revokes it (the default) or only stops the keepalive, so
    /// that its keys outlive the holder by the TTL (a restart within it keeps them).
    pub fn set_revoke_on_drop(&mut self, revoke: bool) {
        self.revoke_on_drop = revoke;
    }

    /// Stops the keepalive without revoking: the keys stay until the TTL runs out, as when the
    /// host dies.
    pub fn abandon(mut self) {
        self.revoke_on_drop = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
        if !self.revoke_on_drop {
            return;
        }
        // Best effort: only when a runtime is still there to run it, bounded like every call.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut client, id, limit) = (self.client.clone(), self.id, self.timeout);
            runtime.spawn(async move {
                let _ = timeout(limit, client.revoke(id)).await;
            });
        }
    }
}

/// The keepalive task of one lease.
struct KeepAlive {
    client: LeaseClient,
    id: i64,
    ttl: Duration,
    timeout: Duration,
    label: String,
}

impl KeepAlive {
    /// Renews every TTL/3; on a failure, retries every second on a new stream until the lease
    /// would have expired, then reports it lost.
    async fn run(mut self, lost: signal::Sender<bool>) {
        let period = self.ttl / 3;
        let mut alive_until = Instant::now() + self.ttl;
        let mut stream = None;
        loop {
            let wait = match self.renew(&mut stream).await {
                Ok(Some(ttl)) => {
                    alive_until = Instant::now() + ttl;
                    period
                }
                Ok(None) => {
                    log::warn!("etcd {}: lease {:x} expired", self.label, self.id);
                    break;
                }
                Err(e) => {
                    log::warn!("etcd {}: lease {:x}: keepalive: {e:#}", self.label, self.id);
                    stream = None;
                    if Instant::now() >= alive_until {
                        break;
                    }
                    period.min(Duration::from_secs(1))
                }
            };
            sleep(wait).await;
        }
        let _ = lost.send(true);
    }

    /// One renewal: the remaining TTL, or None when etcd no longer knows the lease.
    async fn renew(
        &mut self,
        stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    ) -> Result<Option<Duration>> {
        let limit = self.timeout.min(self.ttl);
        let op = format!("keepalive of lease {:x}", self.id);
        let ttl = if let Some((keeper, responses)) = stream.as_mut() {
            bounded_once(&self.label, limit, &op, keeper.keep_alive()).await?;
            let resp = bounded_once(&self.label, limit, &op, responses.message()).await?;
            resp.ok_or_else(|| anyhow!("etcd {}: {op}: the stream ended", self.label))?
                .ttl()
        } else {
            // Opening the stream renews once and fails with "lease not found" when it expired.
            let (client, id) = (&self.client, self.id);
            let open = || {
                let mut client = client.clone();
                async move { client.keep_alive(id).await }
            };
            match bounded(&self.label, limit, &op, open).await {
                Ok(opened) => {
                    *stream = Some(opened);
                    self.ttl.as_secs().cast_signed()
                }
                Err(e) if format!("{e:#}").contains("lease not found") => 0,
                Err(e) => return Err(e),
            }
        };
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // ---- Endpoints ----

    #[test]
    fn endpoints_accept_names_ipv4_and_bracketed_ipv6() {
        let ep: Endpoints = "etcd://127.0.0.1:2379,etcd-1.example:2380,[2001:db8::1]:2379"
            .parse()
            .unwrap();
        assert!(!ep.tls());
        assert_eq!(
            ep.hosts(),
            [
                "127.0.0.1:2379",
                "etcd-1.example:2380",
                "[2001:db8::1]:2379"
            ]
        );
        assert_eq!(
            ep.urls(),
            [
                "http://127.0.0.1:2379",
                "http://etcd-1.example:2380",
                "http://[2001:db8::1]:2379"
            ]
        );
        assert_eq!(
            ep.to_string(),
            "etcd://127.0.0.1:2379,etcd-1.example:2380,[2001:db8::1]:2379"
        );

        let ep: Endpoints = "etcds://192.0.2.1:2379".parse().unwrap();
        assert!(ep.tls());
        assert_eq!(ep.urls(), ["https://192.0.2.1:2379"]);
        assert_eq!(ep.to_string().parse::<Endpoints>().unwrap(), ep);
    }

    #[test]
    fn endpoints_refuse_malformed_input_with_the_expected_syntax() {
        // (input, a phrase the error must contain)
        let cases = [
            ("", "expected etcd://HOST:PORT"),
            ("127.0.0.1:2379", "expected etcd://HOST:PORT"),
            ("http://127.0.0.1:2379", "write etcd:// for http"),
            ("etcd://", "empty endpoint"),
            ("etcd://127.0.0.1:2379,", "empty endpoint"),
            ("etcd://127.0.0.1", "missing :PORT"),
            ("etcd://127.0.0.1:0", "from 1 to 65535"),
            ("etcd://127.0.0.1:65536", "from 1 to 65535"),
            ("etcd://127.0.0.1:x", "from 1 to 65535"),
            ("etcd://:2379", "not a host name"),
            ("etcd://user@host:2379", "not a host name"),
            ("etcd://host:2379/path", "from 1 to 65535"),
            ("etcd://2001:db8::1:2379", "goes in brackets"),
            ("etcd://[2001:db8::1]", "expected [IPV6]:PORT"),
            ("etcd://[192.0.2.1]:2379", "not an IPv6 address"),
        ];
        for (input, phrase) in cases {
            let err = format!("{:#}", input.parse::<Endpoints>().unwrap_err());
            assert!(err.contains(phrase), "{input:?}: {err}");
            assert!(err.contains(ENDPOINTS_SYNTAX), "{input:?}: {err}");
        }
    }

    // ---- Credentials ----

    #[test]
    fn credentials_refuse_group_or_other_access_and_foreign_owners() {
        // (mode, owner, euid, allowed)
        let cases = [
            (0o100_600, 0, 0, true),
            (0o100_400, 1000, 1000, true),
            (0o100_600, 0, 1000, true),
            (0o100_640, 0, 0, false),
            (0o100_604, 0, 0, false),
            (0o100_620, 1000, 1000, false),
            (0o100_600, 1001, 1000, false),
            (0o100_600, 1000, 0, false),
        ];
        for (mode, owner, euid, allowed) in cases {
            let got = check_private(mode, owner, euid);
            assert_eq!(
                got.is_ok(),
                allowed,
                "mode {mode:o} owner {owner} euid {euid}: {got:?}"
            );
        }
        let err = check_private(0o100_644, 0, 0).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
    }

    fn write_private(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn credentials_file_names_paths_relative_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.conf");
        let text = "# sg-agent's etcd credentials\nca = ca.pem\ncert=/etc/sg/client.pem\n\
                    key = client.key\nuser = sg-agent\npassword = a=b c\n";
        write_private(&path, text, 0o600);
        let creds = Credentials::from_file(&path).unwrap();
        assert_eq!(creds.ca, Some(dir.path().join("ca.pem")));
        assert!(
            !format!("{creds:?}").contains("a=b c"),
            "Debug shows the password"
        );
        let cert_key = (
            PathBuf::from("/etc/sg/client.pem"),
            dir.path().join("client.key"),
        );
        assert_eq!(creds.cert_key, Some(cert_key));
        assert_eq!(
            creds.user,
            Some(("sg-agent".to_owned(), "a=b c".to_owned()))
        );

        write_private(&path, "ca = ca.pem\n", 0o644);
        let err = format!("{:#}", Credentials::from_file(&path).unwrap_err());
        assert!(
            err.contains("etcd.conf") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn credentials_file_errors_name_the_line() {
        let cases = [
            ("cert = c.pem\nkey = k.pem\n", "needs `ca = PATH`"),
            ("# empty\n", "nothing to authenticate with"),
            ("ca = a\ncert = c.pem\n", "`cert` and `key` go together"),
            (
                "ca = a\npassword = p\n",
                "`user` and `password` go together",
            ),
            ("ca = a\nca = b\n", "line 2: ca given twice"),
            ("ca = a\n\ncacert = b\n", "line 3: unknown name \"cacert\""),
            ("ca a\n", "line 1: expected NAME = VALUE"),
        ];
        for (text, phrase) in cases {
            let err = format!(
                "{:#}",
                parse_credentials(text, Path::new("/etc/sg")).unwrap_err()
            );
            assert!(err.contains(phrase), "{text:?}: {err}");
        }
    }

    // ---- Transactions, pure ----

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/sg/"), b"/sg0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn a_delete_prefix_skips_the_keys_put_in_the_same_commit() {
        let puts = vec![
            ("g/web/2".to_owned(), b"2".to_vec()),
            ("g/web/4".to_owned(), b"4".to_vec()),
        ];
        let ops = plan_txn(
            "/sg/",
            puts,
            vec!["h/1".to_owned()],
            vec!["g/web/".to_owned()],
        )
        .unwrap();
        let k = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            ops,
            [
                Op::Put(k("/sg/g/web/2"), k("2")),
                Op::Put(k("/sg/g/web/4"), k("4")),
                Op::Delete(k("/sg/h/1")),
                Op::DeleteRange(k("/sg/g/web/"), k("/sg/g/web/2")),
                Op::DeleteRange(k("/sg/g/web/2\0"), k("/sg/g/web/4")),
                Op::DeleteRange(k("/sg/g/web/4\0"), k("/sg/g/web0")),
            ]
        );
        let put = |k: &str| vec![(k.to_owned(), Vec::new())];
        let twice = [("a".to_owned(), Vec::new()), ("a".to_owned(), Vec::new())].to_vec();
        for (puts, deletes, phrase) in [
            (twice, vec![], "put twice"),
            (put("a"), vec!["a".to_owned()], "both put and deleted"),
            (put(""), vec![], "empty key"),
            (vec![], vec![String::new()], "empty key"),
        ] {
            let err = plan_txn("/sg/", puts, deletes, vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains(phrase), "{err}");
        }
    }

    // ---- A watch's checks (S2) ----

    /// A watch of `v1/` from just after what it holds now, and that listing.
    async fn watch_v1(store: &mut Store) -> (Listing, Watch) {
        let listing = store.list_under("v1/").await.unwrap();
        let watch = store
            .watch_under("v1/", listing.revision + 1)
            .await
            .unwrap();
        (listing, watch)
    }

    /// The check of a watch heard from at `t0`, at `t0 + ms`.
    fn check_at(l: Liveness, t0: Instant, ms: u64) -> Check {
        check(&l, t0 + Duration::from_millis(ms), &Timeouts::default())
    }

    /// Quiet for the progress interval: asked; an answer in time (heard again, nothing owed)
    /// starts the next interval. A healthy idle watch is asked forever and never given up.
    #[test]
    fn a_quiet_watch_is_asked_for_its_progress_and_kept_when_it_answers() {
        let t0 = Instant::now();
        let quiet = Liveness {
            heard: t0,
            asked: None,
            owed_since: None,
        };
        assert_eq!(
            check_at(quiet, t0, 0),
            Check::WaitUntil(t0 + WATCH_PROGRESS)
        );
        assert_eq!(
            check_at(quiet, t0, 2_999),
            Check::WaitUntil(t0 + WATCH_PROGRESS)
        );
        assert_eq!(check_at(quiet, t0, 3_000), Check::Ask);
        let asked = Liveness {
            asked: Some(t0 + WATCH_PROGRESS),
            ..quiet
        };
        let limit = t0 + WATCH_PROGRESS + WATCH_SILENCE;
        assert_eq!(check_at(asked, t0, 7_999), Check::WaitUntil(limit));
        let answered = Liveness {
            heard: t0 + Duration::from_millis(3_010),
            ..quiet
        };
        assert_eq!(
            check_at(answered, t0, 6_009),
            Check::WaitUntil(answered.heard + WATCH_PROGRESS)
        );
        assert_eq!(check_at(answered, t0, 6_010), Check::Ask);
    }

    /// Unanswered for the silence limit: given up, however long ago it last delivered.
    #[test]
    fn a_watch_that_leaves_a_progress_request_unanswered_is_given_up() {
        let t0 = Instant::now();
        let asked = Liveness {
            heard: t0,
            asked: Some(t0 + WATCH_PROGRESS),
            owed_since: None,
        };
        let silent = Check::Silent {
            owed: "a progress answer",
        };
        assert_eq!(check_at(asked, t0, 8_000), silent);
        assert_eq!(check_at(asked, t0, 60_000), silent);
    }

    /// Owing changes (the store has them, the watch has not delivered them) for the silence
    /// limit: given up, even though it answers its progress requests (as a watch that skipped
    /// events does); owing them is checked first and shortens the wait.
    #[test]
    fn a_watch_that_owes_changes_past_the_limit_is_given_up() {
        let t0 = Instant::now();
        let owing = Liveness {
            heard: t0 + Duration::from_millis(4_000),
            asked: None,
            owed_since: Some(t0 + Duration::from_millis(3_000)),
        };
        let ask = t0 + Duration::from_millis(7_000);
        assert_eq!(
            check_at(owing, t0, 4_000),
            Check::WaitUntil(ask),
            "the earlier"
        );
        assert_eq!(check_at(owing, t0, 7_000), Check::Ask, "asked meanwhile");
        let asked = Liveness {
            asked: Some(t0 + Duration::from_millis(7_000)),
            ..owing
        };
        let by = t0 + Duration::from_millis(8_000);
        assert_eq!(
            check_at(asked, t0, 7_500),
            Check::WaitUntil(by),
            "the earlier"
        );
        assert_eq!(
            check_at(asked, t0, 8_000),
            Check::Silent { owed: "changes" }
        );
    }

    // ---- A real etcd ----

    const PREFIX: &str = "/sg/";
    const SHORT: Timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(2),
        watch_progress: Duration::from_millis(500),
        watch_silence: Duration::from_secs(1),
    };

    fn random_port() -> u16 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        20000 + u16::try_from(random % 20000).unwrap()
    }

    /// The TLS files of a test etcd: its server certificate, and the CA that signed it and
    /// the client's certificate.
    struct TlsFiles {
        ca: PathBuf,
        server_cert: PathBuf,
        server_key: PathBuf,
    }

    /// One etcd server on loopback with its own data directory; killed when dropped (also when
    /// the test panics).
    struct Etcd {
        child: Option<Child>,
        dir: tempfile::TempDir,
        port: u16,
        tls: bool,
    }

    impl Etcd {
        async fn start() -> Etcd {
            Etcd::start_with(None, None).await
        }

        /// Ports are random in 20000-40000: a port someone else holds means another try.
        async fn start_with(tls: Option<&TlsFiles>, creds: Option<&Credentials>) -> Etcd {
            for _ in 0..10 {
                let (port, peer) = (random_port(), random_port());
                if port == peer {
                    continue;
                }
                let mut etcd = Etcd::spawn(port, peer, tls);
                match etcd.ready(creds).await {
                    Ok(()) => return etcd,
                    Err(log) if log.contains("address already in use") => {}
                    Err(log) => panic!("etcd on port {port} did not start:\n{log}"),
                }
            }
            panic!("no free port pair for etcd after 10 tries");
        }

        fn spawn(port: u16, peer: u16, tls: Option<&TlsFiles>) -> Etcd {
            let dir = tempfile::tempdir().unwrap();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = File::create(dir.path().join("etcd.log")).unwrap();
            let mut cmd = Command::new("/usr/bin/etcd");
            cmd.arg("--name=sg-test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=sg-test={peer_url}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if let Some(t) = tls {
                cmd.arg(format!("--cert-file={}", t.server_cert.display()))
                    .arg(format!("--key-file={}", t.server_key.display()))
                    .arg(format!("--trusted-ca-file={}", t.ca.display()))
                    .arg("--client-cert-auth");
            }
            let child = cmd.spawn().expect("start /usr/bin/etcd");
            Etcd {
                child: Some(child),
                dir,
                port,
                tls: tls.is_some(),
            }
        }

        /// Waits until etcd has a leader and answers; Err(its log) when it exited or took over
        /// 20 s.
        async fn ready(&mut self, creds: Option<&Credentials>) -> Result<(), String> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
                if exited {
                    return Err(self.log());
                }
                if Store::connect_with(&self.endpoints(), creds, PREFIX, SHORT)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                sleep(Duration::from_millis(100)).await;
            }
            Err(self.log())
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }

        fn endpoints(&self) -> Endpoints {
            let scheme = if self.tls { "etcds" } else { "etcd" };
            format!("{scheme}://127.0.0.1:{}", self.port)
                .parse()
                .unwrap()
        }

        async fn store(&self) -> Store {
            Store::connect_with(&self.endpoints(), None, PREFIX, SHORT)
                .await
                .unwrap()
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn puts(kvs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        kvs.iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn strings(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    /// The keys under the prefix, as a map of strings.
    async fn contents(store: &mut Store) -> BTreeMap<String, String> {
        let listing = store.list().await.unwrap();
        listing
            .kvs
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_reads_every_key_under_the_prefix_at_one_revision() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let mut raw = store.client.clone();
        raw.put("/sgx/not-mine", "x", None).await.unwrap();
        raw.put("/other", "x", None).await.unwrap();
        let keys: Vec<String> = (0..40).map(|i| format!("k/{i:02}")).collect();
        let values = keys.iter().map(|k| (k.clone(), b"0".to_vec())).collect();
        let revision = store.commit(values, vec![], vec![]).await.unwrap();
        let listing = store.list().await.unwrap();
        assert_eq!(listing.revision, revision);
        let listed: Vec<&String> = listing.kvs.iter().map(|(k, _)| k).collect();
        assert_eq!(
            listed,
            keys.iter().collect::<Vec<_>>(),
            "only the prefix, relative, sorted"
        );

        // Pages of 3 keys while a writer rewrites them: every page must read the first page's
        // revision, so the listing equals one unpaged read at that revision.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, mut writer) = (stop.clone(), etcd.store().await);
            tokio::spawn(async move {
                let mut n = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("k/{:02}", n % 40);
                    writer
                        .put(&key, n.to_string().into_bytes(), None)
                        .await
                        .unwrap();
                }
                n
            })
        };
        store.page = 3;
        sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let paged = store.list().await.unwrap();
            let options = GetOptions::new()
                .with_prefix()
                .with_revision(paged.revision);
            let mut whole = store.kv.get(PREFIX, Some(options)).await.unwrap();
            let whole: Vec<(String, Vec<u8>)> = whole
                .take_kvs()
                .into_iter()
                .map(|kv| {
                    let (k, v) = kv.into_key_value();
                    (relative_key(PREFIX, k).unwrap(), v)
                })
                .collect();
            assert_eq!(paged.kvs, whole, "listing at revision {}", paged.revision);
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.unwrap();
        assert!(
            writes > 10,
            "the writer ran alongside the listing ({writes} writes)"
        );
    }

    #[tokio::test]
    async fn commit_is_one_transaction_all_or_nothing() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let before = [
            ("rules/web/1", "a"),
            ("rules/web/2", "b"),
            ("hosts/h1", "up"),
        ];
        store.commit(puts(&before), vec![], vec![]).await.unwrap();

        // Replace a subtree and delete a key, at one revision.
        let revision = store
            .commit(
                puts(&[("rules/web/2", "B"), ("rules/web/3", "C")]),
                strings(&["hosts/h1"]),
                strings(&["rules/web/"]),
            )
            .await
            .unwrap();
        let want: BTreeMap<String, String> = [("rules/web/2", "B"), ("rules/web/3", "C")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        assert_eq!(contents(&mut store).await, want);
        assert_eq!(
            store.get("rules/web/2").await.unwrap(),
            Some((b"B".to_vec(), revision))
        );
        assert_eq!(store.get("rules/web/3").await.unwrap().unwrap().1, revision);

        // A failing compare writes nothing.
        let stale = Expect {
            key: "rules/web/2".into(),
            mod_revision: revision - 1,
        };
        let put = puts(&[("rules/web/9", "Z")]);
        let got = store
            .commit_if(&[stale], put, strings(&["rules/web/3"]), vec![])
            .await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(contents(&mut store).await, want);
        assert_eq!(store.list().await.unwrap().revision, revision);

        // Compare-and-swap: create only if absent.
        let absent = || {
            vec![Expect {
                key: "lock".into(),
                mod_revision: 0,
            }]
        };
        let first = store
            .commit_if(&absent(), puts(&[("lock", "1")]), vec![], vec![])
            .await;
        assert!(first.unwrap().is_some());
        let second = store
            .commit_if(&absent(), puts(&[("lock", "2")]), vec![], vec![])
            .await;
        assert_eq!(second.unwrap(), None);
        assert_eq!(store.get("lock").await.unwrap().unwrap().0, b"1");

        // Too big for one transaction (etcd's --max-txn-ops is 128): refused whole, with the
        // reason, and nothing of it written.
        let revision = store.list().await.unwrap().revision;
        let big = (0..200)
            .map(|i| (format!("big/{i}"), vec![b'x'; 10]))
            .collect();
        let err = format!("{:#}", store.commit(big, vec![], vec![]).await.unwrap_err());
        assert!(
            err.contains(&format!("etcd 127.0.0.1:{}: commit under /sg/", etcd.port)),
            "{err}"
        );
        assert!(err.contains("--max-txn-ops"), "{err}");
        let after = store.list().await.unwrap();
        assert_eq!(after.revision, revision);
        assert!(after.kvs.iter().all(|(k, _)| !k.starts_with("big/")));
    }

    /// Batches until one reaches `revision`, bounded.
    async fn collect_until(watch: &mut Watch, revision: i64) -> Vec<(i64, Vec<WatchEvent>)> {
        let mut batches = Vec::new();
        while batches.last().is_none_or(|(r, _)| *r < revision) {
            let next = timeout(Duration::from_secs(5), watch.next())
                .await
                .expect("a batch");
            match next.unwrap().expect("the watch goes on") {
                WatchBatch::Changes { revision, events } => batches.push((revision, events)),
                other => panic!("{other:?}"),
            }
        }
        batches
    }

    /// The watch's next batch, or None when it delivered nothing for `quiet`.
    async fn next_within(watch: &mut Watch, quiet: Duration) -> Option<WatchBatch> {
        timeout(quiet, watch.next())
            .await
            .ok()
            .map(|next| next.unwrap().expect("the watch goes on"))
    }

    /// S2: an idle watch on a store that moves outside it answers every progress request,
    /// proves it missed nothing (deletes included), and is never given up as silent; it
    /// still delivers.
    #[tokio::test]
    async fn s2_a_healthy_idle_watch_answers_progress_and_is_not_given_up() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        store.put("v1/a", b"1".to_vec(), None).await.unwrap();
        store.put("v1/b", b"1".to_vec(), None).await.unwrap();
        let (_, mut watch) = watch_v1(&mut store).await;
        assert_eq!(watch.keys, Some(2));

        // Several rounds of progress requests (SHORT: every 0.5 s, given up after 1 s), the
        // store's revision moving under other keys meanwhile (as the hosts' acks do).
        let mut outside = 0;
        for _ in 0..3 {
            outside = store
                .put("status/h1/ack", b"x".to_vec(), None)
                .await
                .unwrap();
            let quiet = SHORT.watch_progress * 2 + SHORT.watch_silence;
            assert_eq!(next_within(&mut watch, quiet).await, None);
        }
        assert_eq!(
            watch.delivered, outside,
            "the answers and checks moved it on"
        );
        assert_eq!(watch.live.owed_since, None);

        let deleted = store
            .commit(vec![], strings(&["v1/a"]), vec![])
            .await
            .unwrap();
        let batch = next_within(&mut watch, SHORT.watch_silence).await;
        assert_eq!(
            batch,
            Some(WatchBatch::Changes {
                revision: deleted,
                events: vec![WatchEvent::Delete { key: "v1/a".into() }]
            })
        );
        assert_eq!(watch.keys, Some(1), "the delete is counted");
        store.put("v1/c", b"1".to_vec(), None).await.unwrap();
        assert!(matches!(
            next_within(&mut watch, SHORT.watch_silence).await,
            Some(WatchBatch::Changes { .. })
        ));
        assert_eq!(watch.keys, Some(2), "the create is counted");
        let quiet = SHORT.watch_progress * 2 + SHORT.watch_silence * 2;
        assert_eq!(next_within(&mut watch, quiet).await, None);
    }

    /// S2: an agent that did not run for longer than the silence limit (SIGSTOP, a starved
    /// CPU), or did not read its watch, finds the answer waiting and keeps the watch.
    #[tokio::test]
    async fn s2_an_answer_left_unread_while_the_agent_was_paused_keeps_the_watch() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let (listing, mut watch) = watch_v1(&mut store).await;
        // As `next` asks, and then the process stops before it reads the answer.
        let stream = watch.stream.as_mut().unwrap();
        stream.request_progress().await.unwrap();
        watch.live.asked = Some(Instant::now());
        let outside = store
            .put("status/h1/ack", b"x".to_vec(), None)
            .await
            .unwrap();
        sleep(SHORT.watch_silence * 2).await;

        let quiet = SHORT.watch_progress + SHORT.watch_silence + WATCH_LAST_CALL;
        assert_eq!(next_within(&mut watch, quiet).await, None);
        assert!(watch.delivered >= listing.revision, "the answer was read");
        store.put("v1/a", b"1".to_vec(), None).await.unwrap();
        assert!(matches!(
            next_within(&mut watch, SHORT.watch_silence).await,
            Some(WatchBatch::Changes { .. })
        ));
        assert!(watch.delivered > outside);
    }

    /// S2: a watch whose server does not answer (etcd stopped with SIGSTOP: the connection
    /// stays up, nothing comes back) is given up as silent after the progress interval and the
    /// silence limit, long before the HTTP/2 keepalive would end it.
    #[tokio::test]
    async fn s2_a_watch_whose_server_does_not_answer_is_given_up_as_silent() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let (listing, mut watch) = watch_v1(&mut store).await;
        let pid = libc::pid_t::try_from(etcd.child.as_ref().unwrap().id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);

        let start = Instant::now();
        let limit = SHORT.watch_progress + SHORT.watch_silence + WATCH_LAST_CALL * 2;
        let next = timeout(limit, watch.next()).await;
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let next = next.expect("given up in time").unwrap();
        assert_eq!(
            next,
            Some(WatchBatch::Silent {
                delivered: listing.revision,
                store: listing.revision,
                owed: "a progress answer"
            })
        );
        let given_up = SHORT.watch_progress + SHORT.watch_silence + WATCH_LAST_CALL;
        assert!(start.elapsed() >= given_up, "{:?}", start.elapsed());
        assert_eq!(
            watch.next().await.unwrap(),
            None,
            "a silent watch has ended"
        );
    }

    /// S2: a watch that does not deliver a change the store holds (as when etcd skips a
    /// slow watcher's events, etcd-io/etcd#17529) is given up as silent, whether the change
    /// is a put (a key modified after what it delivered) or a delete (one key fewer). The
    /// watch that misses them is a real one with etcd's server-side event filters.
    #[tokio::test]
    async fn s2_a_watch_that_misses_a_change_is_given_up_as_silent() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        store.put("v1/a", b"1".to_vec(), None).await.unwrap();
        for (filter, change, kind) in [
            (WatchFilterType::NoPut, vec![("v1/b", Some("2"))], "put"),
            (WatchFilterType::NoDelete, vec![("v1/a", None)], "delete"),
        ] {
            let listing = store.list_under("v1/").await.unwrap();
            let from = listing.revision + 1;
            let mut watch = store.watch_filtered("v1/", from, &[filter]).await.unwrap();
            let mut changed = 0;
            for (key, value) in change {
                changed = match value {
                    Some(v) => store.put(key, v.as_bytes().to_vec(), None).await.unwrap(),
                    None => store.commit(vec![], strings(&[key]), vec![]).await.unwrap(),
                };
            }
            let start = Instant::now();
            let limit = SHORT.watch_progress + SHORT.watch_silence + WATCH_LAST_CALL * 3;
            let next = timeout(limit, watch.next()).await.expect(kind).unwrap();
            assert_eq!(
                next,
                Some(WatchBatch::Silent {
                    delivered: listing.revision,
                    store: changed,
                    owed: "changes"
                }),
                "{kind}"
            );
            let given_up = SHORT.watch_silence + WATCH_LAST_CALL;
            assert!(start.elapsed() >= given_up, "{kind}");
        }
    }

    #[tokio::test]
    async fn watch_sees_puts_and_deletes_in_order_with_revisions() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        store.put("g/a", b"1".to_vec(), None).await.unwrap();
        let listing = store.list().await.unwrap();
        let mut watch = store.watch(listing.revision + 1).await.unwrap();

        let r1 = store.put("g/b", b"2".to_vec(), None).await.unwrap();
        store.client.put("/sgx/outside", "x", None).await.unwrap();
        let r2 = store
            .commit(puts(&[("g/c", "3")]), strings(&["g/a"]), vec![])
            .await
            .unwrap();
        let r3 = store
            .commit(vec![], vec![], strings(&["g/"]))
            .await
            .unwrap();
        let batches = collect_until(&mut watch, r3).await;

        let revisions: Vec<i64> = batches.iter().map(|(r, _)| *r).collect();
        assert!(
            revisions.is_sorted() && revisions.last() == Some(&r3),
            "{revisions:?}"
        );
        let put = |k: &str, v: &str| WatchEvent::Put {
            key: k.into(),
            value: v.into(),
        };
        let delete = |k: &str| WatchEvent::Delete { key: k.into() };
        let events: Vec<WatchEvent> = batches.iter().flat_map(|(_, e)| e.clone()).collect();
        assert_eq!(
            events,
            [
                put("g/b", "2"),
                put("g/c", "3"),
                delete("g/a"),
                delete("g/b"),
                delete("g/c")
            ]
        );
        // Each transaction is delivered whole, in a batch at (or, merged, after) its revision.
        let batch_of = |event: &WatchEvent| batches.iter().find(|(_, e)| e.contains(event));
        assert!(batch_of(&put("g/b", "2")).unwrap().0 >= r1);
        let r2_batch = batch_of(&delete("g/a")).unwrap();
        assert!(r2_batch.0 >= r2 && r2_batch.1.contains(&put("g/c", "3")));
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_revision_reports_compacted() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let old = store.put("g/a", b"1".to_vec(), None).await.unwrap();
        store.put("g/a", b"2".to_vec(), None).await.unwrap();
        let now = store.put("g/a", b"3".to_vec(), None).await.unwrap();
        store.compact(now).await.unwrap();

        let mut watch = store.watch(old).await.unwrap();
        let next = timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            Some(WatchBatch::Compacted {
                compact_revision: now
            })
        );
        assert_eq!(
            watch.next().await.unwrap(),
            None,
            "a compacted watch has ended"
        );

        // From the compaction revision on, a watch works again (the caller relists, then
        // watches from the listing's revision + 1).
        let listing = store.list().await.unwrap();
        let mut watch = store.watch(listing.revision + 1).await.unwrap();
        let r = store.put("g/b", b"4".to_vec(), None).await.unwrap();
        let batches = collect_until(&mut watch, r).await;
        assert_eq!(
            batches,
            [(
                r,
                vec![WatchEvent::Put {
                    key: "g/b".into(),
                    value: b"4".into()
                }]
            )]
        );
    }

    /// Polls until `key` is gone; the time it took.
    async fn vanishes(store: &mut Store, key: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while store.get(key).await.unwrap().is_some() {
            assert!(
                start.elapsed() < within,
                "{key} still there after {within:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn a_lease_keeps_its_keys_until_the_keepalive_stops() {
        let etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let lease = store.grant_lease(2).await.unwrap();
        let ttl = Duration::from_secs(lease.ttl().unsigned_abs());
        store
            .put("hosts/h1", b"up".to_vec(), Some(lease.id()))
            .await
            .unwrap();
        // Renewed every TTL/3: still there after several TTLs.
        sleep(ttl * 3).await;
        assert!(store.get("hosts/h1").await.unwrap().is_some());
        assert!(!lease.is_lost());

        // A host that dies: no revoke, the key goes when the TTL runs out.
        lease.abandon();
        let took = vanishes(&mut store, "hosts/h1", ttl + Duration::from_secs(3)).await;
        assert!(
            took > Duration::from_millis(500),
            "went after {took:?}, before the TTL"
        );

        // Dropping a lease revokes it: the key goes at once.
        let lease = store.grant_lease(2).await.unwrap();
        store
            .put("hosts/h2", b"up".to_vec(), Some(lease.id()))
            .await
            .unwrap();
        drop(lease);
        vanishes(&mut store, "hosts/h2", Duration::from_secs(1)).await;

        // A lease revoked behind its back is reported lost within its TTL.
        let lease = store.grant_lease(2).await.unwrap();
        store.client.lease_revoke(lease.id()).await.unwrap();
        timeout(ttl + Duration::from_secs(1), lease.lost())
            .await
            .expect("lost in time");
        assert!(lease.is_lost());
    }

    #[tokio::test]
    async fn calls_fail_within_their_timeout_when_etcd_is_stopped() {
        let mut etcd = Etcd::start().await;
        let mut store = etcd.store().await;
        let lease = store.grant_lease(2).await.unwrap();
        let listing = store.list().await.unwrap();
        let mut watch = store.watch(listing.revision + 1).await.unwrap();
        etcd.stop();

        let bound = SHORT.request + Duration::from_secs(1);
        let ended = timeout(bound, watch.next()).await.expect("the watch ends");
        assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
        let start = Instant::now();
        let err = format!("{:#}", store.list().await.unwrap_err());
        assert!(start.elapsed() < bound, "list took {:?}", start.elapsed());
        assert!(
            err.starts_with(&format!("etcd 127.0.0.1:{}: list /sg/: ", etcd.port)),
            "{err}"
        );
        let start = Instant::now();
        assert!(store.put("k", b"v".to_vec(), None).await.is_err());
        assert!(
            store
                .commit(puts(&[("k", "v")]), vec![], vec![])
                .await
                .is_err()
        );
        assert!(store.watch(1).await.is_err());
        assert!(start.elapsed() < bound * 3, "took {:?}", start.elapsed());
        timeout(Duration::from_secs(4), lease.lost())
            .await
            .expect("the lease is lost");

        let start = Instant::now();
        let nobody = etcd.endpoints();
        assert!(
            Store::connect_with(&nobody, None, PREFIX, SHORT)
                .await
                .is_err()
        );
        assert!(
            start.elapsed() < SHORT.connect + bound,
            "connect took {:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_dead_endpoint_among_live_ones_fails_no_call() {
        let etcd = Etcd::start().await;
        // A port nobody listens on: the client picks endpoints at random, and each call that
        // lands on this one is refused before etcd sees it and goes to the live one.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let ep: Endpoints = format!("etcd://{dead},127.0.0.1:{}", etcd.port)
            .parse()
            .unwrap();
        let mut store = Store::connect_with(&ep, None, PREFIX, SHORT).await.unwrap();
        let first = store.list().await.unwrap().revision;
        let mut last = 0;
        for i in 0..30 {
            let revision = store
                .commit(puts(&[("k", &i.to_string())]), vec![], vec![])
                .await;
            last = revision.unwrap();
            assert_eq!(store.get("k").await.unwrap().unwrap().1, last);
        }
        assert_eq!(last, first + 30, "each commit applied once");
        let mut watch = store.watch(last).await.unwrap();
        let batches = collect_until(&mut watch, last).await;
        let put = WatchEvent::Put {
            key: "k".into(),
            value: b"29".to_vec(),
        };
        assert_eq!(batches, [(last, vec![put])]);
        drop(store.grant_lease(2).await.unwrap());
    }

    #[tokio::test]
    async fn a_user_and_password_authenticate_when_etcd_has_auth_enabled() {
        let etcd = Etcd::start().await;
        let mut admin = etcd.store().await;
        admin.client.user_add("root", "s3cret", None).await.unwrap();
        admin.client.user_grant_role("root", "root").await.unwrap();
        admin.client.auth_enable().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.conf");
        write_private(&file, "user = root\npassword = s3cret\n", 0o600);
        let creds = Credentials::from_file(&file).unwrap();
        let ep = etcd.endpoints();
        let mut store = Store::connect_with(&ep, Some(&creds), PREFIX, SHORT)
            .await
            .unwrap();
        let revision = store.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(store.list().await.unwrap().revision, revision);

        write_private(&file, "user = root\npassword = wrong\n", 0o600);
        let wrong = Credentials::from_file(&file).unwrap();
        let err = Store::connect_with(&ep, Some(&wrong), PREFIX, SHORT)
            .await
            .err();
        let err = format!("{:#}", err.expect("connected with a wrong password"));
        assert!(err.contains("authentication failed"), "{err}");
        assert!(Store::connect_with(&ep, None, PREFIX, SHORT).await.is_err());
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, by the openssl CLI.
    fn make_certs(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "openssl {args:?}: {stderr}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            "req", "-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        ];
        run(&[&ca[..], &ec, &["-subj", "/CN=sg test CA"]].concat());
        let server_ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        std::fs::write(dir.join("server.ext"), server_ext).unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "/CN=127.0.0.1"), ("client", "/CN=sg-agent")] {
            let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
            let (pem, ext) = (format!("{name}.pem"), format!("{name}.ext"));
            run(&[
                &["req", "-keyout", &key, "-out", &csr, "-subj", cn][..],
                &ec,
            ]
            .concat());
            let sign = [
                "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key",
            ];
            let out = [
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ];
            run(&[&sign[..], &out].concat());
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    #[tokio::test]
    async fn tls_with_client_certificates_connects_only_with_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let files = make_certs(dir.path());
        let with_cert = dir.path().join("with-cert.conf");
        write_private(
            &with_cert,
            "ca = ca.pem\ncert = client.pem\nkey = client.key\n",
            0o600,
        );
        let with_cert = Credentials::from_file(&with_cert).unwrap();
        let etcd = Etcd::start_with(Some(&files), Some(&with_cert)).await;

        let ep = etcd.endpoints();
        let mut store = Store::connect_with(&ep, Some(&with_cert), PREFIX, SHORT)
            .await
            .unwrap();
        let revision = store.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(
            store.get("k").await.unwrap(),
            Some((b"v".to_vec(), revision))
        );

        // The CA alone: the server demands a client certificate.
        let ca_only = dir.path().join("ca-only.conf");
        write_private(&ca_only, "ca = ca.pem\n", 0o600);
        let ca_only = Credentials::from_file(&ca_only).unwrap();
        let refused = Store::connect_with(&ep, Some(&ca_only), PREFIX, SHORT).await;
        let err = format!(
            "{:#}",
            refused
                .err()
                .expect("connected without a client certificate")
        );
        assert!(
            err.starts_with(&format!("etcd 127.0.0.1:{}: connect", etcd.port)),
            "{err}"
        );
        // Plain gRPC to a TLS port, and TLS files with plain endpoints.
        let plain: Endpoints = format!("etcd://127.0.0.1:{}", etcd.port).parse().unwrap();
        assert!(
            Store::connect_with(&plain, None, PREFIX, SHORT)
                .await
                .is_err()
        );
        let err = Store::connect_with(&plain, Some(&with_cert), PREFIX, SHORT)
            .await
            .err();
        assert!(format!("{err:#?}").contains("write etcds://"), "{err:?}");
    }
}
