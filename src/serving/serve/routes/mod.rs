//! The HTTP endpoints: the page, health, models, metrics, the live switch and the middleware
//! that counts and logs every request; [`predict`] has the upload routes.

mod predict;
mod upload;

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

pub use predict::{PredictQuery, explain, predict};

use super::error::{ApiError, Reason};
use super::snapshot::Loaded;
use super::{App, access};
use crate::track::slots::Slot;

/// The upload page.
const PAGE: &str = include_str!("../page.html");

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
