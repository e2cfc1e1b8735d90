//! HTTP/1 over the service's Unix socket: a connection kept alive or one
//! per request, each exchange under a deadline, and a run's answer read
//! as its result.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use vmhost::api::RunResult;

use super::error::{Result, ServiceError, io};

/// How long one run may take, client side: the job's default timeout (30 s)
/// and the service's margin past it (30 s), after at most the queue's
/// deadline (30 s).
pub const RUN_WAIT: Duration = Duration::from_secs(120);

/// Health, metrics, a connection: answered at once by a live service.
pub const QUICK_WAIT: Duration = Duration::from_secs(10);

/// A connection's sending half; its other half is a task that ends when
/// this is dropped or the service closes the connection.
pub type Sender = SendRequest<Full<Bytes>>;

pub async fn connect(socket: &Path) -> Result<Sender> {
    let connecting = tokio::net::UnixStream::connect(socket);
    let stream = tokio::time::timeout(QUICK_WAIT, connecting)
        .await
        .map_err(|_| ServiceError::Timeout { what: "connecting", after: QUICK_WAIT })?
        .map_err(io(format!("connecting to {}", socket.display())))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ServiceError::Http { what: "the HTTP handshake", source })?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request and its whole answer: the status and the body.
pub async fn exchange(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<(u16, Bytes)> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a request from constant parts");
    let answered = async {
        let http = |what| move |source| ServiceError::Http { what, source };
        sender.ready().await.map_err(http("the connection"))?;
        let response = sender.send_request(request).await.map_err(http("the request"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(http("the response body"))?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(wait, answered)
        .await
        .map_err(|_| ServiceError::Timeout { what: path_name(path), after: wait })?
}

fn path_name(path: &str) -> &'static str {
    match path {
        "/v1/runs" => "a run",
        "/v1/health" => "health",
        _ => "the service",
    }
}

/// A request on a connection of its own, as a simple client makes it. The
/// connection's task ends with the exchange.
pub async fn exchange_fresh(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<(u16, Bytes)> {
    let mut sender = connect(socket).await?;
    exchange(&mut sender, method, path, body, wait).await
}

/// A run's result, or what the service said instead.
pub fn run_result(answer: (u16, Bytes)) -> Result<RunResult> {
    let (status, body) = answer;
    let text = || String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(ServiceError::Output { what: format!("POST /v1/runs ({status})"), got: text() });
    }
    serde_json::from_slice(&body)
        .map_err(|e| ServiceError::Output { what: format!("POST /v1/runs ({e})"), got: text() })
}
