//! Reading an upload (multipart field `file`, or a raw image body) and the permits that bound
//! how many are decoded at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};

use crate::serving::serve::App;
use crate::serving::serve::error::ApiError;

/// Decrements a gauge when dropped (also when the decode panics).
pub(super) struct DecGuard(pub(super) prometheus_client::metrics::gauge::Gauge);

impl Drop for DecGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The upload's bytes and the client's file name, from a multipart field `file` or a raw body.
pub(super) async fn read_upload(
    app: &Arc<App>,
    req: Request,
) -> Result<(Bytes, Option<String>), ApiError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, app)
            .await
            .map_err(|e| rejection(app, e.status(), e.body_text()))?;
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| rejection(app, e.status(), e.body_text()))?;
            let Some(field) = field else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing_field",
                    "the form has no field `file`: send the image as multipart/form-data field `file`",
                ));
            };
            if field.name() != Some("file") {
                continue;
            }
            let name = field.file_name().map(str::to_string);
            let bytes = field
                .bytes()
                .await
                .map_err(|e| rejection(app, e.status(), e.body_text()))?;
            return Ok((bytes, name));
        }
    }
    if ctype.starts_with("image/") || ctype.starts_with("application/octet-stream") {
        let bytes = Bytes::from_request(req, app)
            .await
            .map_err(|e| rejection(app, e.status(), e.body_text()))?;
        return Ok((bytes, None));
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_type",
        format!(
            "unsupported Content-Type {:?}: send multipart/form-data with a field `file`, or the raw image with Content-Type: image/*",
            ctype
        ),
    ))
}

/// An extractor rejection as an API error, with a clear message for a body over the limit.
fn rejection(app: &App, status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "body_too_large",
            format!(
                "the request body is larger than the limit of {} bytes (serve.max_body_bytes)",
                app.max_body_bytes
            ),
        )
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

/// One of the permits that bound concurrent decodes (503 once the server is stopping).
pub(super) async fn decode_permit(
    app: &App,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    app.decode_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping",
            )
        })
}
