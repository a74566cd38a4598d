//! The HTTP side of `flora label`: the page (HTML, JS and CSS compiled in, nothing fetched
//! from elsewhere) and its small JSON API. Requests pass [`guard`] first: the admin token on a
//! non-loopback bind, the Host on a loopback one (no DNS rebinding), and serve's cross-origin
//! rule ([`crate::serving::serve::origin::OriginPolicy`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::session::{Decision, Session};
use crate::model::bundle::ModelBundle;
use crate::serving::serve::error::ApiError;
use crate::serving::serve::origin::OriginPolicy;
use crate::serving::serve::{bearer_token, token_matches};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");
/// The cookie that carries the admin token on a non-loopback bind.
const COOKIE: &str = "flora_label_token";

/// The state every handler shares.
pub struct LabelApp {
    pub session: Mutex<Session>,
    pub model: Option<Arc<ModelBundle>>,
    /// A short description of the model for the page.
    pub model_name: Option<String>,
    pub class_info: serde_json::Map<String, Value>,
    /// One explanation at a time.
    pub explain_permits: Semaphore,
    /// SHA-256 of the admin token when it is required (non-loopback bind).
    pub token_sha256: Option<[u8; 32]>,
    /// Bound to a loopback address: the Host header must name one.
    pub loopback: bool,
    pub origins: OriginPolicy,
    /// Limits of decoding the queued images (`data.max_image_megapixels`).
    pub limits: crate::data::imaging::DecodeLimits,
}

/// The router with the page, the API and the guard.
pub fn router(app: Arc<LabelApp>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/api/state", get(state))
        .route("/api/image", get(image))
        .route("/api/explain", get(explain))
        .route("/api/decide", post(decide))
        .route("/api/undo", post(undo))
        .layer(axum::middleware::map_response(
            crate::serving::serve::error::json_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn err(status: StatusCode, reason: &'static str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(status, reason, e.to_string())
}

/// Token (non-loopback), Host (loopback) and Origin checks. `GET /?token=T` with the right
/// token sets the token cookie and reloads the page without it.
async fn guard(State(app): State<Arc<LabelApp>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(expected) = &app.token_sha256 {
        let from_query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_string)
        });
        if let Some(t) = from_query.filter(|_| req.uri().path() == "/") {
            if !token_matches(&t, expected) {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "wrong admin token",
                )
                .into_response();
            }
            let mut resp = Redirect::to("/").into_response();
            let cookie = format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            return resp;
        }
        if !has_token(req.headers(), expected) {
            return err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this flora label listens beyond this machine: open /?token=<admin token> once \
                 (FLORA_ADMIN_TOKEN or serve.admin_token), or send `Authorization: Bearer <token>`",
            )
            .into_response();
        }
    } else if app.loopback && !loopback_host(req.headers()) {
        return err(
            StatusCode::FORBIDDEN,
            "bad_host",
            "the Host header does not name this machine: open the page at the address \
             `flora label` printed",
        )
        .into_response();
    }
    if let Err(e) = app.origins.check(req.method(), req.headers(), peer) {
        return e.into_response();
    }
    next.run(req).await
}

/// The admin token from `Authorization: Bearer` or the cookie matches.
fn has_token(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        });
    bearer.is_some_and(|t| token_matches(t, expected))
        || cookie.is_some_and(|t| token_matches(&t, expected))
}

/// The Host header names a loopback address (or localhost).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    super::is_loopback(name)
}

async fn index() -> Html<&'static str> {
    Html(PAGE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// `GET /api/state`: the queue, the classes, the progress, the batch.
async fn state(State(app): State<Arc<LabelApp>>) -> Json<Value> {
    let s = app.session.lock().expect("session lock");
    let items: Vec<Value> = s
        .items
        .iter()
        .zip(&s.states)
        .map(|(it, st)| {
            let mut v = serde_json::to_value(it).unwrap_or_default();
            if let (Some(o), Ok(Value::Object(st))) = (v.as_object_mut(), serde_json::to_value(st))
            {
                o.extend(st);
            }
            v
        })
        .collect();
    Json(json!({
        "batch": s.batch,
        "user": s.user,
        "model": app.model_name,
        "explain": app.model.is_some(),
        "mode": if s.items.iter().any(|i| i.given.is_some()) { "queue" } else { "inbox" },
        "classes": s.classes,
        "class_info": app.class_info,
        "items": items,
        "done": s.done(),
        "total": s.items.len(),
    }))
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

/// `GET /api/image?path=P`: the bytes of a queued image.
async fn image(
    State(app): State<Arc<LabelApp>>,
    Query(q): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let file = {
        let s = app.session.lock().expect("session lock");
        let i = s
            .find(&q.path)
            .map_err(|e| err(StatusCode::NOT_FOUND, "not_queued", format!("{e:#}")))?;
        match &s.states[i] {
            super::session::State::Done { destination, .. } => s.layout.dataset.join(destination),
            super::session::State::Pending => s.items[i].abs.clone(),
        }
    };
    let read = file.clone();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(&read))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
        .map_err(|e| {
            err(
                StatusCode::NOT_FOUND,
                "gone",
                format!("{}: {e}", file.display()),
            )
        })?;
    let ctype = crate::data::imaging::sniff_format(&bytes)
        .map_or("application/octet-stream", |f| f.to_mime_type());
    Ok((
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /api/explain?path=P`: the image with the model's occlusion heat map over it (PNG),
/// computed now, one at a time.
async fn explain(
    State(app): State<Arc<LabelApp>>,
    Query(q): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let Some(model) = app.model.clone() else {
        return Err(err(
            StatusCode::CONFLICT,
            "no_model",
            "no model: start flora label with --model/--run/--slot or make a slot live",
        ));
    };
    let file = {
        let s = app.session.lock().expect("session lock");
        let i = s
            .find(&q.path)
            .map_err(|e| err(StatusCode::NOT_FOUND, "not_queued", format!("{e:#}")))?;
        if s.states[i] != super::session::State::Pending {
            return Err(err(
                StatusCode::CONFLICT,
                "decided",
                "the image is already sorted",
            ));
        }
        s.items[i].abs.clone()
    };
    let _permit = app.explain_permits.try_acquire().map_err(|_| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "another explanation is being computed: retry in a moment",
        )
    })?;
    let limits = app.limits;
    let png = tokio::task::spawn_blocking(move || {
        crate::evaluate::explain::overlay_png(&model, &file, limits)
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
    .map_err(|e| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "explain",
            format!("{e:#}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// `POST /api/decide` body.
#[derive(Deserialize)]
struct DecideBody {
    paths: Vec<String>,
    /// `class`, `reject` or `keep`.
    action: String,
    #[serde(default)]
    class: Option<String>,
}

/// `POST /api/decide`: moves the images (journalled) and records them in the manifest.
async fn decide(
    State(app): State<Arc<LabelApp>>,
    body: Result<Json<DecideBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) =
        body.map_err(|e| err(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let decision = match (body.action.as_str(), body.class) {
        ("class", Some(c)) => Decision::Class(c),
        ("class", None) => return Err(err(StatusCode::BAD_REQUEST, "bad_request", "no class")),
        ("reject", _) => Decision::Reject,
        ("keep", _) => Decision::Keep,
        (other, _) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown action {other:?}: class, reject or keep"),
            ));
        }
    };
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = app2.session.lock().expect("session lock");
        let changed = s
            .decide(&body.paths, &decision)
            .map_err(|e| err(StatusCode::BAD_REQUEST, "refused", format!("{e:#}")))?;
        for n in &changed.notes {
            eprintln!("note: {n}");
        }
        Ok(Json(json!({
            "changed": changed.items,
            "notes": changed.notes,
            "done": s.done(),
            "classes": s.classes,
        })))
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
}

/// `POST /api/undo`: undoes this session's last decision.
async fn undo(State(app): State<Arc<LabelApp>>) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut s = app.session.lock().expect("session lock");
        let changed = s
            .undo()
            .map_err(|e| err(StatusCode::CONFLICT, "undo", format!("{e:#}")))?;
        Ok(Json(json!({
            "changed": changed.items,
            "notes": changed.notes,
            "done": s.done(),
        })))
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
}
