//! Per-request limits: a deadline for the whole request and a clear answer for a body that
//! stalled (the stall itself is detected by [`super::listen::StallBody`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use super::error::ApiError;
use super::listen::BodyWatch;

/// Middleware: answers 408 (body not received in time) or 503 (received, but not answered
/// in time) past `serve.request_timeout_secs`, and 408 for a body that stalled for
/// `serve.stall_timeout_secs`. Both close the connection.
pub async fn deadline(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let body = req.extensions().get::<BodyWatch>().cloned();
    let stalled = || body.as_ref().is_some_and(|b| b.0.stalled());
    let limit = app.request_timeout;
    let err = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) if !stalled() => return resp,
        Ok(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_stalled",
            format!(
                "the request body sent nothing for {} s (serve.stall_timeout_secs): the upload was dropped",
                app.stall_timeout.as_secs()
            ),
        ),
        Err(_) if stalled() || body.as_ref().is_some_and(|b| !b.0.done()) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body was not received within {} s (serve.request_timeout_secs)",
                limit.as_secs()
            ),
        ),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request was not answered within {} s (serve.request_timeout_secs): the server is overloaded, retry later",
                limit.as_secs()
            ),
        ),
    };
    let mut resp = err.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
