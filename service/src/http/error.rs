//! Errors as the API answers them: a status and a JSON body
//! `{"error": {"kind", "message", "field"?}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::DoorError;

/// How long a client turned away for capacity should wait before it
/// tries again: about one run's time on a busy host.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Debug, Serialize)]
struct Detail<'a> {
    kind: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), field: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn status(error: &DoorError) -> StatusCode {
        match error {
            DoorError::BadRequest(_) | DoorError::Refused(_) => StatusCode::BAD_REQUEST,
            DoorError::File { .. } | DoorError::Packages(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DoorError::PackagesUnavailable(_) => StatusCode::BAD_GATEWAY,
            DoorError::NoSession(_) => StatusCode::NOT_FOUND,
            DoorError::SessionEnded(_) => StatusCode::GONE,
            DoorError::Busy(_) | DoorError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            DoorError::VmLost(_) => StatusCode::BAD_GATEWAY,
            // Nobody reads it: the client is gone.
            DoorError::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            DoorError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body of this error, as a streaming response's last line
    /// carries it too.
    pub fn json(&self) -> serde_json::Value {
        let body = Body {
            error: Detail { kind: self.kind, message: self.message.clone(), field: self.field.as_deref() },
        };
        serde_json::to_value(body).unwrap_or_default()
    }
}

impl From<DoorError> for ApiError {
    fn from(error: DoorError) -> ApiError {
        let field = match &error {
            DoorError::BadRequest(e) => Some(e.field.clone()),
            DoorError::File { path, .. } => Some(path.clone()),
            DoorError::Packages(_) | DoorError::PackagesUnavailable(_) => Some("packages".to_owned()),
            _ => None,
        };
        ApiError { status: ApiError::status(&error), kind: error.kind(), message: error.to_string(), field }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let busy = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.status, axum::Json(self.json())).into_response();
        if busy {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}
