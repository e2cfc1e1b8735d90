//! The HTTP API, versioned under `/v1`: thin handlers that parse a request,
//! call the [`Door`] and map its answer to a status. The document of it is
//! `service/openapi.json`, served at `/v1/openapi.json`.

mod error;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use vmhost::api::RunRequest;

pub use self::error::ApiError;
use crate::door::Door;
use crate::sessions::{ExecRequest, OpenRequest};

/// The OpenAPI document, checked into the repository beside this crate.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Largest request body: a run's code is at most 1 MiB, its files travel
/// base64 in the same body; 64 MiB bounds what one request can make the
/// service hold.
pub const MAX_BODY: usize = 64 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub door: Arc<Door>,
    pub token: Option<Arc<str>>,
    pub health: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

pub fn router(app: App) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/runs", post(run))
        .route("/sessions", post(open_session))
        .route("/sessions/{id}", get(session_info).delete(close_session))
        .route("/sessions/{id}/exec", post(exec))
        .route("/sessions/{id}/files", get(list_files))
        .route("/sessions/{id}/files/{*path}", get(read_file).put(write_file).delete(delete_file));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

/// With a token configured, every request must carry it; without one
/// (a Unix socket, mode 0600), the socket's permissions are the wall.
async fn authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required")
                    .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Compares in time that does not depend on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body, refused with the parser's words (which name the field).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(stream::NDJSON))
}

async fn health(State(app): State<App>) -> Response {
    axum::Json((app.health)()).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.door.metrics.render()).into_response()
}

async fn run(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let request: RunRequest = parse(&body)?;
    if wants_stream(&headers) {
        // Bad input is a 400 whether or not the answer would stream.
        request.check().map_err(crate::error::DoorError::from).map_err(ApiError::from)?;
        let layer = app.door.layer(&request.packages).await?;
        return Ok(stream::run(app.door, request, layer));
    }
    let result = app.door.run(request, None).await?;
    Ok(axum::Json(result).into_response())
}

async fn open_session(State(app): State<App>, body: Bytes) -> Result<Response, ApiError> {
    let request: OpenRequest = if body.is_empty() { OpenRequest::default() } else { parse(&body)? };
    let info = app.door.open_session(request).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn session_info(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(app.door.sessions.info(&id).await?).into_response())
}

async fn close_session(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    app.door.sessions.close(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn exec(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ExecRequest = parse(&body)?;
    let result = app.door.sessions.exec(&id, request).await?;
    if wants_stream(&headers) {
        return Ok(stream::finished(&result));
    }
    Ok(axum::Json(result).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    path: String,
}

async fn list_files(
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let entries = app.door.sessions.list_files(&id, query.path).await?;
    Ok(axum::Json(serde_json::json!({ "entries": entries })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    /// Octal permission bits, as `chmod` takes them.
    #[serde(default)]
    mode: Option<String>,
}

async fn write_file(
    State(app): State<App>,
    Path((id, path)): Path<(String, String)>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mode = match query.mode.as_deref() {
        None => 0o644,
        Some(text) => u32::from_str_radix(text, 8).map_err(|_| ApiError {
            field: Some("mode".into()),
            ..ApiError::bad_request(format!("mode: `{text}` is not an octal permission mode"))
        })?,
    };
    app.door.sessions.write_file(&id, path, body.to_vec(), mode).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn read_file(
    State(app): State<App>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let data = app.door.sessions.read_file(&id, path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn delete_file(
    State(app): State<App>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.door.sessions.delete_file(&id, path).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint (see /v1/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/v1/health",
            "/v1/openapi.json",
            "/v1/runs",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/exec",
            "/v1/sessions/{id}/files",
            "/v1/sessions/{id}/files/{path}",
            "/metrics",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
    }
}
