//! The client of a running service (`--server`): where it is, one HTTP/1
//! request a connection with a deadline on every wait, and the service's
//! answers turned into the exit codes and `--json` kinds of a local run.
//! The wire of a streamed run is in [`ndjson`]; when a repl line ends a
//! statement, in [`statement`].

pub mod ndjson;
pub mod statement;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use vmhost::Stream;
use vmhost::api::{Download, RunRequest, RunResult};

use self::ndjson::{ErrorBody, Event, Lines};
use crate::failure::{EXIT_FAILURE, EXIT_NO_INPUT, EXIT_REFUSED, InputError};

/// How long connecting (and the HTTP handshake) may take: a service on
/// this host answers at once; ten seconds is generous for one across a
/// network, and short enough that a wrong address fails while one waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run's answer may take past the job's own timeout: the service
/// may queue it for a VM (30 s by default), lets the guest report a
/// timeout for 30 s more, and moves uploads and downloads besides.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(90);

/// What a run or session naming packages may take on top: the first use
/// of a set resolves, installs and makes its layer and template (tens of
/// seconds; minutes for big wheels on a slow index).
pub const PACKAGES_MARGIN: Duration = Duration::from_secs(600);

/// How long a run's answer may take: its timeout and the margins, or no
/// bound for a job without one.
pub fn answer_wait(timeout: f64, packages: &[String]) -> Option<Duration> {
    (timeout > 0.0).then(|| Duration::from_secs_f64(timeout) + ANSWER_MARGIN + packages_margin(packages))
}

/// [`PACKAGES_MARGIN`] when a call names packages.
pub fn packages_margin(packages: &[String]) -> Duration {
    if packages.is_empty() { Duration::ZERO } else { PACKAGES_MARGIN }
}

/// The environment variable that names the service when `--server` does not.
pub const SERVER_ENV: &str = "PID1_SERVER";

/// The environment variable that holds the bearer token itself when
/// `--token-file` is not given.
pub const TOKEN_ENV: &str = "PID1_TOKEN";

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// A Unix socket, as `vmexec serve --listen unix:PATH` makes it.
    Unix(PathBuf),
    /// Plain HTTP on TCP; `host` without the brackets of an IPv6 address.
    Http { host: String, port: u16 },
}

impl std::str::FromStr for Server {
    type Err = String;

    fn from_str(text: &str) -> Result<Server, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/pid1.sock".into());
            }
            return Ok(Server::Unix(PathBuf::from(path)));
        }
        if text.starts_with("https://") {
            return Err(format!(
                "`{text}`: the service speaks plain HTTP; put TLS in front of it and give http://HOST:PORT of the proxy's inside, or use unix:PATH"
            ));
        }
        // `tcp:HOST:PORT` as `vmexec serve --listen` takes it.
        let (authority, default_port) = match (text.strip_prefix("http://"), text.strip_prefix("tcp:")) {
            (Some(rest), _) => (rest.strip_suffix('/').unwrap_or(rest), Some(80)),
            (_, Some(rest)) => (rest, None),
            _ => return Err(format!("`{text}`: give unix:PATH or http://HOST:PORT")),
        };
        let bad = |why: &str| format!("`{text}`: {why} (give http://HOST:PORT, e.g. http://127.0.0.1:8470)");
        if authority.contains(['/', '?', '#']) {
            return Err(bad("the service's API is at the root, so no path"));
        }
        if authority.contains('@') {
            return Err(bad("no user in the address: the token goes in --token-file"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6.split_once(']').ok_or_else(|| bad("an unclosed `[`"))?;
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => return Err(bad("junk after the `]`")),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(bad("an IPv6 address goes in brackets, [::1]:PORT"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("no host"));
        }
        let port = match (port, default_port) {
            (Some(port), _) => {
                port.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("a bad port"))?
            }
            (None, Some(port)) => port,
            (None, None) => return Err(bad("no port")),
        };
        Ok(Server::Http { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Unix(path) => write!(f, "unix:{}", path.display()),
            Server::Http { .. } => write!(f, "http://{}", self.authority()),
        }
    }
}

impl Server {
    /// The `Host` header: a Unix socket has no name to give.
    fn authority(&self) -> String {
        match self {
            Server::Unix(_) => "localhost".to_owned(),
            Server::Http { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Server::Http { host, port } => format!("{host}:{port}"),
        }
    }
}

/// The bearer token: from `--token-file` (trimmed, as `vmexec serve` reads
/// its own), else the value of [`TOKEN_ENV`]; none when neither is given.
pub fn token(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, RemoteError> {
    let Some(path) = file else {
        return Ok(env.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|source| RemoteError::TokenFile { path: path.to_owned(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(RemoteError::EmptyToken(path.to_owned()));
    }
    Ok(Some(token.to_owned()))
}

/// What the service said when it refused or failed a request: its status
/// (none inside a stream, whose status was sent before the outcome was
/// known) and its error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Option<u16>,
    pub kind: String,
    pub message: String,
    /// Seconds, from `Retry-After`.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind.as_str(), self.retry_after) {
            ("unauthorized", _) => {
                write!(f, "unauthorized: give --token-file FILE (or {TOKEN_ENV}) with the service's token")
            }
            ("busy", Some(secs)) => write!(f, "the service is busy (retry after {secs} s): {}", self.message),
            ("busy", None) => write!(f, "the service is busy (retry later): {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl Refusal {
    fn new(status: Option<StatusCode>, error: ErrorBody, retry_after: Option<u64>) -> Refusal {
        Refusal { status: status.map(|s| s.as_u16()), kind: error.kind, message: error.message, retry_after }
    }

    /// The exit code a local run gives for the same failure.
    pub fn exit_code(&self) -> u8 {
        exit_code(&self.kind, self.status)
    }
}

/// The exit code for a service's error `kind`, or for its HTTP status
/// when the kind is not one the service names: the job refused (bad
/// input, or the guest refused it) is 2, as locally; everything else is
/// the service's or the VM's failure, 1.
pub fn exit_code(kind: &str, status: Option<u16>) -> u8 {
    match kind {
        // Packages the index cannot give are the request's fault, as a
        // local run's `-p` is.
        "bad_request" | "refused" | "packages" => EXIT_REFUSED,
        "packages_unavailable" => EXIT_FAILURE,
        "unauthorized" | "busy" | "shutting_down" | "vm_lost" | "failed" | "file" | "cancelled"
        | "no_session" | "session_ended" | "not_found" | "method_not_allowed" => EXIT_FAILURE,
        // A body that is too big is refused by the HTTP layer before the
        // service names a kind; a local run refuses such code too.
        _ if matches!(status, Some(400 | 413)) => EXIT_REFUSED,
        _ => EXIT_FAILURE,
    }
}

/// Why a command that used a service ended without the job's own status.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{what} is not UTF-8: the service takes it as text")]
    NotText { what: String },
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {} is empty", .0.display())]
    EmptyToken(PathBuf),
    #[error("cannot start the client")]
    Runtime(#[source] std::io::Error),
    #[error("no service at {server}: start one with `vmexec serve`")]
    NoService {
        server: Server,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {server}")]
    Connect {
        server: Server,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} did not answer within {} s", wait.as_secs())]
    NoAnswer { server: Server, wait: Duration },
    #[error("the exchange with {server} failed")]
    Http {
        server: Server,
        #[source]
        source: hyper::Error,
    },
    #[error("the answer of {server} is not understood: {why}")]
    Protocol { server: Server, why: String },
    #[error("{0}")]
    Refused(Refusal),
    #[error("cannot write the download {}", path.display())]
    Download {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RemoteError {
    /// The exit code, and the `kind` `--json` reports: the service's own
    /// kind when it answered, else one for the step that failed here.
    pub fn classify(&self) -> (u8, String) {
        let (code, kind) = match self {
            RemoteError::Input(_) | RemoteError::NotText { .. } => (EXIT_NO_INPUT, "Input"),
            RemoteError::TokenFile { .. } | RemoteError::EmptyToken(_) => (EXIT_NO_INPUT, "Input"),
            RemoteError::Runtime(_) => (EXIT_FAILURE, "Runtime"),
            RemoteError::NoService { .. } | RemoteError::Connect { .. } => (EXIT_FAILURE, "Connect"),
            RemoteError::NoAnswer { .. } => (EXIT_FAILURE, "NoAnswer"),
            RemoteError::Http { .. } | RemoteError::Protocol { .. } => (EXIT_FAILURE, "Protocol"),
            RemoteError::Refused(refusal) => return (refusal.exit_code(), refusal.kind.clone()),
            RemoteError::Download { .. } => (EXIT_FAILURE, "File"),
        };
        (code, kind.to_owned())
    }

    /// The error and its causes, `what failed: why: ...`.
    pub fn message(&self) -> String {
        vmhost::error::chain(self)
    }
}

/// Output as the API gives it: its text, or the exact bytes when the
/// text would lose them.
pub fn output_bytes(text: &str, exact: Option<&str>) -> Vec<u8> {
    match exact.map(|b64| BASE64.decode(b64)) {
        Some(Ok(bytes)) => bytes,
        _ => text.as_bytes().to_vec(),
    }
}

/// The bytes of a downloaded file.
pub fn file_bytes(file: &Download) -> Result<Vec<u8>, String> {
    BASE64.decode(&file.content).map_err(|e| format!("the download {} is not base64: {e}", file.path))
}

/// When a wait ends, and how long it was, to say so.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    wait: Duration,
}

impl Deadline {
    fn after(wait: Option<Duration>) -> Option<Deadline> {
        wait.map(|wait| Deadline { at: Instant::now() + wait, wait })
    }
}

/// The connection's task, ended with its owner: the answer it carries.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response, and the connection that still brings its body.
struct Answer {
    response: Response<Incoming>,
    _driver: Driver,
}

/// A service's client: each call is one connection and one request, each
/// wait bounded. Calls block; a single-threaded runtime drives them.
pub struct Client {
    server: Server,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(server: Server, token: Option<String>) -> Result<Client, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        Ok(Client { server, token, runtime })
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `POST` JSON, and its answer as `T`; a non-2xx answer is the
    /// service's refusal. `wait` bounds the exchange after connecting
    /// (`None`: as long as the job it runs, which has no limit).
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        wait: Option<Duration>,
    ) -> Result<T, RemoteError> {
        self.call(Method::POST, path, Some(body), wait)
    }

    /// `DELETE`, whose answer has no body.
    pub fn delete(&self, path: &str, wait: Option<Duration>) -> Result<(), RemoteError> {
        self.call_empty(Method::DELETE, path, wait)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        wait: Option<Duration>,
    ) -> Result<T, RemoteError> {
        let body = self.body(body)?;
        let bytes = self.runtime.block_on(async {
            let deadline = Deadline::after(wait);
            let answer = self.send(method, path, body, "application/json", deadline).await?;
            self.whole(answer, deadline).await
        })?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("{e}")))
    }

    fn call_empty(&self, method: Method, path: &str, wait: Option<Duration>) -> Result<(), RemoteError> {
        self.runtime.block_on(async {
            let deadline = Deadline::after(wait);
            let answer = self.send(method, path, None, "application/json", deadline).await?;
            self.whole(answer, deadline).await.map(drop)
        })
    }

    /// `POST /v1/runs` streamed: each chunk of output to `output` as it
    /// arrives, then the result.
    pub fn run_streamed(
        &self,
        request: &RunRequest,
        wait: Option<Duration>,
        mut output: impl FnMut(Stream, &[u8]),
    ) -> Result<RunResult, RemoteError> {
        let body = self.body(Some(request))?;
        self.runtime.block_on(async {
            let deadline = Deadline::after(wait);
            let answer = self.send(Method::POST, "/v1/runs", body, ndjson::CONTENT_TYPE, deadline).await?;
            let streamed = answer
                .response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with(ndjson::CONTENT_TYPE));
            if !answer.response.status().is_success() || !streamed {
                // Refused before it began (a body that does not parse):
                // an ordinary error answer.
                let bytes = self.whole(answer, deadline).await?;
                let text = String::from_utf8_lossy(&bytes);
                return Err(
                    self.protocol(format!("not a stream: {}", text.chars().take(200).collect::<String>()))
                );
            }
            let mut body = answer.response.into_body();
            let mut lines = Lines::default();
            loop {
                let frame = match self.within(deadline, body.frame()).await? {
                    Some(frame) => frame.map_err(|source| self.http(source))?,
                    None => {
                        return Err(self.protocol("the stream ended before the run's result".into()));
                    }
                };
                let Ok(data) = frame.into_data() else { continue };
                lines.feed(&data);
                while let Some(line) = lines.next_line() {
                    match Event::decode(&line).map_err(|why| self.protocol(why))? {
                        Some(Event::Output(stream, bytes)) => output(stream, &bytes),
                        Some(Event::Result(result)) => return Ok(*result),
                        Some(Event::Error(error)) => {
                            return Err(RemoteError::Refused(Refusal::new(None, error, None)));
                        }
                        None => {}
                    }
                }
            }
        })
    }

    fn body(&self, body: Option<&impl Serialize>) -> Result<Option<Bytes>, RemoteError> {
        body.map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| self.protocol(format!("cannot encode the request: {e}")))
    }

    fn protocol(&self, why: String) -> RemoteError {
        RemoteError::Protocol { server: self.server.clone(), why }
    }

    fn http(&self, source: hyper::Error) -> RemoteError {
        RemoteError::Http { server: self.server.clone(), source }
    }

    /// `future`, unless `deadline` passes first.
    async fn within<F: Future>(
        &self,
        deadline: Option<Deadline>,
        future: F,
    ) -> Result<F::Output, RemoteError> {
        let Some(deadline) = deadline else { return Ok(future.await) };
        tokio::time::timeout_at(deadline.at, future)
            .await
            .map_err(|_| RemoteError::NoAnswer { server: self.server.clone(), wait: deadline.wait })
    }

    /// Connects, sends one request and waits for its head.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        accept: &'static str,
        deadline: Option<Deadline>,
    ) -> Result<Answer, RemoteError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.server.authority())
            .header(header::ACCEPT, accept);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| self.protocol("the token is not a valid header value".into()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| self.protocol(format!("cannot make the request: {e}")))?;
        let (mut sender, driver) = self.connect().await?;
        let response =
            self.within(deadline, sender.send_request(request)).await?.map_err(|source| self.http(source))?;
        Ok(Answer { response, _driver: driver })
    }

    async fn connect(&self) -> Result<(SendRequest<Full<Bytes>>, Driver), RemoteError> {
        let connecting = async {
            match &self.server {
                Server::Unix(path) => handshake(tokio::net::UnixStream::connect(path).await?).await,
                Server::Http { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    // Requests are small and answered at once: no Nagle delay.
                    stream.set_nodelay(true)?;
                    handshake(stream).await
                }
            }
        };
        let server = self.server.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(RemoteError::NoAnswer { server, wait: CONNECT_TIMEOUT }),
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(source)) => Err(match source.kind() {
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                    RemoteError::NoService { server, source }
                }
                _ => RemoteError::Connect { server, source },
            }),
        }
    }

    /// The whole body of a 2xx answer, or the refusal a non-2xx one says.
    async fn whole(&self, answer: Answer, deadline: Option<Deadline>) -> Result<Bytes, RemoteError> {
        let status = answer.response.status();
        let retry_after = answer
            .response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = self
            .within(deadline, answer.response.into_body().collect())
            .await?
            .map_err(|source| self.http(source))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let error = ErrorBody::from_answer(status.as_u16(), &bytes);
        Err(RemoteError::Refused(Refusal::new(Some(status), error, retry_after)))
    }
}

/// HTTP/1 over `stream`; the connection runs in its own task until the
/// answer is read (or its [`Driver`] is dropped).
async fn handshake<S>(stream: S) -> std::io::Result<(SendRequest<Full<Bytes>>, Driver)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    // Its errors reach the request or the body that was using it.
    let driver = Driver(tokio::spawn(async move {
        let _ = connection.await;
    }));
    Ok((sender, driver))
}

#[cfg(test)]
mod tests;
