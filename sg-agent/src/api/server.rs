//! The HTTP side: a tokio + hyper 1 HTTP/1.1 server. Every request is read whole (bounded:
//! [`MAX_BODY`]), checked against its Signature V4 (unless the operator turned that off),
//! decoded into a typed call and answered with XML; every failure is an EC2 error document.
//! The server stops when `shutdown` resolves; requests in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::actions::Api;
use super::fault::Fault;
use super::sigv4::{self, Keys, Signed};
use super::wire::{self, Form};
use super::{answer, xml};

/// The largest request body read (EC2's own limit for a Query request is far below).
pub const MAX_BODY: usize = 1 << 20;

pub struct Server {
    pub api: Api,
    /// None: every request is accepted unsigned (`--no-auth`, a lab).
    pub keys: Option<Keys>,
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let server = Arc::new(server);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted.context("accept")?,
        };
        let server = server.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(&server, req).await) }
            });
            // A client that hangs up mid-request is its own business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections as we go.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// A request id as EC2's look (a UUID's shape).
fn request_id() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .expect("a status and a header are a valid response")
}

async fn handle(server: &Server, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = request_id();
    match answer_for(server, req, &id).await {
        Ok(body) => reply(200, body),
        Err(f) => {
            if f.status >= 500 {
                log::warn!("api: {f}");
            }
            reply(f.status, xml::error(&f, &id))
        }
    }
}

async fn answer_for(server: &Server, req: Request<Incoming>, id: &str) -> Result<String, Fault> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Fault::invalid(format!("the request body cannot be read: {e}")))?
        .to_bytes();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), v)
        })
        .collect();
    let query = parts.uri.query().unwrap_or_default();
    if let Some(keys) = &server.keys {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signed = Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query,
            headers: &headers,
            body: &body,
        };
        sigv4::verify(keys, &signed, now)?;
    }
    // EC2 takes the parameters in the body of a POST or in the query of a GET.
    let form = if parts.method == Method::GET {
        Form::parse(query.as_bytes())?
    } else {
        Form::parse(&body)?
    };
    let call = wire::call(&form)?;
    let answer = server.api.execute(&call, id).await?;
    Ok(answer::xml(&call.action, &answer, &server.api.account, id))
}
