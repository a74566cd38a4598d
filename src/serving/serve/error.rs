//! API errors: a status, a reason (the `flora_failures_total` label) and a message, answered as
//! JSON `{"error": "..."}`. Any other error response (axum's own rejections, 404, 405) is turned
//! into the same shape by [`json_errors`].

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::ErrorBody;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A short machine-readable reason, used as a metric label.
    pub reason: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (a busy answer the client should retry).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with its status, reason and message.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, answered with `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// The reason of an error response, kept in its extensions for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Reason(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(Reason(self.reason));
        resp
    }
}

/// Rewrites any error response that is not JSON into `{"error": "<its text>"}`.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => {
                "no such endpoint: see GET /docs (the API, with GET /openapi.json) or GET / (the upload page)".into()
            }
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".into(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if parts.extensions.get::<Reason>().is_none() {
        let reason = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        parts.extensions.insert(Reason(reason));
    }
    Response::from_parts(parts, Body::from(body))
}
