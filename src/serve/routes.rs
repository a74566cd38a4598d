//! The HTTP endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, Reason};
use super::models::Loaded;
use super::{App, access};
use crate::collect::{self, Outcome, Sidecar};
use crate::imaging;
use crate::registry::Slot;

/// The upload page.
const PAGE: &str = include_str!("page.html");

/// `GET /`
pub async fn index() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /health`: 200 while a model is loaded (always, once the server has started).
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snap = app.models.snapshot();
    match snap.serving() {
        Some((label, m)) => Json(json!({
            "status": "ok",
            "model_used": label,
            "run_id": m.bundle.meta.run_id,
        }))
        .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is loaded",
        )
        .into_response(),
    }
}

fn describe(m: &Loaded, live: bool) -> Value {
    let meta = &m.bundle.meta;
    json!({
        "live": live,
        "run_id": meta.run_id,
        "run_name": meta.run_name,
        "arch": meta.arch.as_str(),
        "image_size": meta.image_size,
        "classes": meta.classes,
        "metrics": meta.metrics,
        "promoted_at": m.info.as_ref().map(|i| &i.promoted_at),
        "promoted_by": m.info.as_ref().map(|i| &i.promoted_by),
        "gate_accuracy": m.info.as_ref().and_then(|i| i.accuracy),
        "data_fingerprint": meta.data_fingerprint,
    })
}

/// `GET /models`: both slots (run, metrics, which one is live), and the fallback run if any.
pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let snap = app.models.snapshot();
    let serving = snap.serving().map(|(l, _)| l);
    let mut slots = serde_json::Map::new();
    for slot in Slot::ALL {
        let v = snap
            .slot(slot)
            .map_or(Value::Null, |m| describe(m, serving == Some(slot.as_str())));
        slots.insert(slot.as_str().into(), v);
    }
    Json(json!({
        "live": snap.live.map(Slot::as_str),
        "model_used": serving,
        "slots": slots,
        "fallback_run": snap.fallback.as_ref().map(|m| describe(m, serving == Some("run"))),
    }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// `?top_k=N`
#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    top_k: Option<usize>,
}

/// `POST /predict`: a multipart field `file`, or a raw `image/*` body.
pub async fn predict(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let query = Query::<PredictQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let (bytes, filename) = read_upload(&app, req).await?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_file",
            "the uploaded file is empty",
        ));
    }
    let Some(format) = imaging::sniff_format(&bytes) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            "not a supported image: send JPEG, PNG, BMP, GIF, WebP or TIFF content",
        ));
    };

    // The model that answers is fixed here, for the whole request.
    let snap = app.models.snapshot();
    let (label, model) = snap.serving().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is loaded",
        )
    })?;
    let model = model.clone();

    let size = model.bundle.meta.image_size;
    let limits = app.limits;
    let permit = decode_permit(&app).await?;
    let decode_input = bytes.clone();
    let running = app.metrics.decodes_running().clone();
    // The permit lives in the blocking task: if the client goes away, the decode still
    // counts against the limit until it ends.
    let pixels = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        running.inc();
        let _running = DecGuard(running);
        imaging::prepare(&decode_input, size, limits).map(image::RgbImage::into_raw)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            "the image could not be decoded",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            format!("{e:#}"),
        )
    })?;

    let probs = app
        .worker
        .predict(model.clone(), pixels)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "inference",
                format!("{e:#}"),
            )
        })?;
    let classes = model.bundle.meta.classes.len();
    let k = query.top_k.unwrap_or(3).clamp(1, classes);
    let top = model.bundle.top_k(&probs, k);
    let best = top[0].clone();
    let thresholds = match app.thresholds.is_empty() {
        true => &model.bundle.meta.thresholds,
        false => &app.thresholds,
    };
    let is_unknown = thresholds.is_unknown(&best);
    let answer = thresholds.answer(&best).to_string();
    app.metrics
        .prediction(label, &answer, best.confidence, app.low_confidence);
    if is_unknown {
        app.metrics.unknown(label, &best.class);
    }
    let info = match is_unknown {
        true => None,
        false => model.bundle.meta.class_info.get(&best.class),
    };

    let (collected, collection) = if app.collect {
        let mut sidecar = Sidecar {
            id: collect::new_id(),
            time: jiff::Timestamp::now().to_string(),
            file: String::new(),
            slot: model.slot.map(|s| s.as_str().to_string()),
            run_id: model.bundle.meta.run_id.clone(),
            predicted_class: best.class.clone(),
            confidence: best.confidence,
            top_k: top.clone(),
            client_filename: filename,
            bytes: 0,
            sha256: String::new(),
        };
        let root = app.collected_dir.clone();
        let min_free = app.collect_min_free_bytes;
        let saved = tokio::task::spawn_blocking(move || {
            collect::collect(&root, &bytes, format, &mut sidecar, min_free)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r);
        match saved {
            Ok(Outcome::Saved(path)) => {
                app.metrics.collected(true);
                (Some(app.display_path(&path)), "saved")
            }
            Ok(Outcome::Duplicate) => {
                app.metrics.collection_skipped("duplicate");
                (None, "duplicate")
            }
            Ok(Outcome::LowDisk { free }) => {
                app.metrics.collection_skipped("low_disk");
                eprintln!(
                    "warning: not saving an upload: {} has {free} bytes free, below serve.collect_min_free_bytes = {}",
                    app.collected_dir.display(),
                    app.collect_min_free_bytes
                );
                (None, "low_disk")
            }
            Err(e) => {
                app.metrics.collected(false);
                eprintln!(
                    "error: saving an upload under {}: {e:#}",
                    app.collected_dir.display()
                );
                (None, "failed")
            }
        }
    } else {
        (None, "off")
    };

    let mut resp = Json(json!({
        "model_used": label,
        "run_id": model.bundle.meta.run_id,
        "prediction": {
            "class": answer,
            "confidence": best.confidence,
            "unknown": is_unknown,
            "info": info,
        },
        "top_k": top,
        "data_collected_at": collected,
        "collection": collection,
    }))
    .into_response();
    resp.extensions_mut().insert(access::Answered {
        slot: label,
        class: answer,
    });
    Ok(resp)
}

/// `POST /explain`: the uploaded image (as for `/predict`, never collected) with the serving
/// model's occlusion heat map for its top class over it, as PNG. Computed only when asked, one
/// at a time (503 `busy` while another runs), decoded under the upload limits.
pub async fn explain(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let (bytes, _) = read_upload(&app, req).await?;
    if imaging::sniff_format(&bytes).is_none() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            "not a supported image: send JPEG, PNG, BMP, GIF, WebP or TIFF content",
        ));
    }
    let model = app
        .models
        .snapshot()
        .serving()
        .map(|(_, m)| m.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "no model is loaded",
            )
        })?;
    let busy = app
        .explain_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "explain_busy",
                "another explanation is being computed: retry in a moment",
            )
        })?;
    let decode = decode_permit(&app).await?;
    let limits = app.limits;
    let running = app.metrics.decodes_running().clone();
    // The permits live in the blocking task: a client that leaves does not free them early.
    let png = tokio::task::spawn_blocking(move || {
        let _permits = (busy, decode);
        running.inc();
        let decoded = imaging::decode(&bytes, limits);
        drop(DecGuard(running));
        let rgb = imaging::to_rgb(&decoded?);
        crate::explain::top_class_overlay_png(&model.bundle, &rgb)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            "the image could not be explained",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            format!("{e:#}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// Decrements a gauge when dropped (also when the decode panics).
struct DecGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for DecGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The upload's bytes and the client's file name, from a multipart field `file` or a raw body.
async fn read_upload(app: &Arc<App>, req: Request) -> Result<(Bytes, Option<String>), ApiError> {
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

/// `?color=blue|green`
#[derive(Debug, Deserialize)]
pub struct SwitchQuery {
    color: Option<String>,
}

/// `POST /admin/switch-model?color=blue|green`: needs `Authorization: Bearer <token>`.
pub async fn switch_model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let query = Query::<SwitchQuery>::try_from_uri(&uri)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let color = query.color.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "missing ?color=blue|green",
        )
    })?;
    let slot: Slot = color
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", format!("{e:#}")))?;
    let previous = app.models.snapshot().serving().map(|(l, _)| l);
    if app.models.snapshot().slot(slot).is_none()
        && app.models.registry().resolve(slot).ok().flatten().is_none()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "empty_slot",
            format!(
                "slot {slot} is empty: promote a run into it first (`flora promote RUN --to {slot}`)"
            ),
        ));
    }
    let models = app.models.clone();
    tokio::task::spawn_blocking(move || models.switch(slot))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "switch_failed", format!("{e:#}")))?;
    let snap = app.models.snapshot();
    let run_id = snap.slot(slot).and_then(|m| m.bundle.meta.run_id.clone());
    eprintln!(
        "switched the live model to {slot} (run {})",
        run_id.as_deref().unwrap_or("-")
    );
    Ok(Json(json!({
        "live": slot.as_str(),
        "previous": previous,
        "run_id": run_id,
    })))
}

/// The route label for metrics: the known routes, else `other` (bounded cardinality).
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/models" => "/models",
        "/metrics" => "/metrics",
        "/predict" => "/predict",
        "/explain" => "/explain",
        "/admin/switch-model" => "/admin/switch-model",
        _ => "other",
    }
}

/// The method label for metrics: GET, POST, HEAD, else `other` (bounded cardinality: a
/// client can send any method name).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Middleware: counts every request by route and status, its latency, and failures by reason.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(req.uri().path());
    let method = method_label(req.method());
    let id = access::request_id(req.headers());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let took = start.elapsed();
    app.metrics.request(route, method, status.as_u16(), took);
    if status.is_client_error() || status.is_server_error() {
        let reason = resp.extensions().get::<Reason>().map_or("other", |r| r.0);
        app.metrics.failure(reason);
    }
    if app.access_log.enabled() {
        let answered = resp.extensions().get::<access::Answered>();
        app.access_log.write(&access::line(
            &id,
            method,
            route,
            status.as_u16(),
            took,
            answered,
        ));
    }
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(access::REQUEST_ID, v);
    }
    resp
}

/// One of the permits that bound concurrent decodes (503 once the server is stopping).
async fn decode_permit(app: &App) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
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
