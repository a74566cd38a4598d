//! The HTTP endpoints: the page, health, models, metrics, the live switch and the middleware
//! that counts and logs every request; [`predict`] has the upload routes. [`api`] registers
//! them all with their OpenAPI documentation.

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
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use predict::{PredictQuery, explain, predict};

use super::api::{ErrorBody, Health, ModelInfo, ModelsAnswer, Slots, Switched};
use super::error::{ApiError, Reason};
use super::snapshot::Loaded;
use super::{App, access, docs, openapi};
use crate::track::slots::Slot;

/// The upload page.
const PAGE: &str = include_str!("../page.html");

/// Every endpoint with its documentation: the router and the OpenAPI document come from this
/// one list.
pub fn api() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(<openapi::Frame as utoipa::OpenApi>::openapi())
        .routes(routes!(index))
        .routes(routes!(health))
        .routes(routes!(models))
        .routes(routes!(metrics))
        .routes(routes!(predict::predict))
        .routes(routes!(predict::explain))
        .routes(routes!(switch_model))
        .routes(routes!(openapi::document))
        .routes(routes!(docs::page))
        .routes(routes!(docs::asset))
}

/// The upload page (`GET /`): a form over `POST /predict`.
#[utoipa::path(
    get,
    path = "/",
    tag = "pages",
    responses((status = 200, description = "The upload page", content_type = "text/html", body = String))
)]
pub async fn index() -> Html<&'static str> {
    Html(PAGE)
}

/// Whether a model answers (`GET /health`): 200 while one is loaded (always, once started).
#[utoipa::path(
    get,
    path = "/health",
    tag = "status",
    responses(
        (status = 200, description = "A model is loaded and answers", body = Health),
        (status = 503, description = "No model is loaded", body = ErrorBody),
    )
)]
pub async fn health(State(app): State<Arc<App>>) -> Result<Json<Health>, ApiError> {
    let snap = app.models.snapshot();
    let (label, m) = snap.serving().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is loaded",
        )
    })?;
    Ok(Json(Health {
        status: "ok",
        model_used: label,
        run_id: m.bundle.meta.run_id.clone(),
    }))
}

fn describe(m: &Loaded, live: bool) -> ModelInfo {
    let meta = &m.bundle.meta;
    ModelInfo {
        live,
        run_id: meta.run_id.clone(),
        run_name: meta.run_name.clone(),
        arch: meta.arch.as_str(),
        image_size: meta.image_size,
        classes: meta.classes.clone(),
        metrics: meta.metrics.clone(),
        promoted_at: m.info.as_ref().map(|i| i.promoted_at.clone()),
        promoted_by: m.info.as_ref().map(|i| i.promoted_by.clone()),
        gate_accuracy: m.info.as_ref().and_then(|i| i.accuracy),
        data_fingerprint: meta.data_fingerprint.clone(),
    }
}

/// The loaded models (`GET /models`): both slots, the live one, and the fallback run.
#[utoipa::path(
    get,
    path = "/models",
    tag = "status",
    responses((status = 200, description = "The slots, the live one and the fallback run", body = ModelsAnswer))
)]
pub async fn models(State(app): State<Arc<App>>) -> Json<ModelsAnswer> {
    let snap = app.models.snapshot();
    let serving = snap.serving().map(|(l, _)| l);
    let slot = |slot: Slot| {
        snap.slot(slot)
            .map(|m| describe(m, serving == Some(slot.as_str())))
    };
    Json(ModelsAnswer {
        live: snap.live.map(Slot::as_str),
        model_used: serving,
        slots: Slots {
            blue: slot(Slot::Blue),
            green: slot(Slot::Green),
        },
        fallback_run: snap
            .fallback
            .as_ref()
            .map(|m| describe(m, serving == Some("run"))),
    })
}

/// Prometheus metrics (`GET /metrics`), in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    responses((
        status = 200,
        description = "Prometheus metrics in the OpenMetrics text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SwitchQuery {
    /// The slot to make live.
    #[param(required = true, inline, value_type = Slot)]
    color: Option<String>,
}

/// Makes a slot live (`POST /admin/switch-model?color=blue|green`).
///
/// Needs `Authorization: Bearer <token>`.
#[utoipa::path(
    post,
    path = "/admin/switch-model",
    tag = "admin",
    params(SwitchQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The slot is live", body = Switched),
        (status = 400, description = "`?color` is missing or not a slot", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "No admin token is configured, or a cross-origin request", body = ErrorBody),
        (status = 409, description = "The slot is empty, or its model does not load", body = ErrorBody),
        (status = 500, description = "The switch failed unexpectedly", body = ErrorBody),
    )
)]
pub async fn switch_model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Switched>, ApiError> {
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
    Ok(Json(Switched {
        live: slot.as_str(),
        previous,
        run_id,
    }))
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
        "/openapi.json" => "/openapi.json",
        "/docs" => "/docs",
        p if p.starts_with("/docs/") => "/docs/{file}",
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
