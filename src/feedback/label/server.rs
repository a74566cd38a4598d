//! The HTTP side of `flora label`: the page (HTML, JS and CSS compiled in, nothing fetched
//! from elsewhere) and its small JSON API. Requests pass [`guard`] first: the label token on a
//! non-loopback bind, the Host on a loopback one (no DNS rebinding), and serve's cross-origin
//! rule ([`crate::serving::serve::origin::OriginPolicy`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use super::files::{ReadError, Roots, Thumbnails};
use super::session::{Decision, Session};
use crate::model::bundle::ModelBundle;
use crate::serving::serve::error::ApiError;
use crate::serving::serve::origin::OriginPolicy;
use crate::serving::serve::{bearer_token, token_matches};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");
/// The cookie that carries the label token on a non-loopback bind.
const COOKIE: &str = "flora_label_token";

/// The state every handler shares.
pub struct LabelApp {
    pub session: Mutex<Session>,
    pub model: Option<Arc<ModelBundle>>,
    /// A short description of the model for the page.
    pub model_name: Option<String>,
    pub class_info: serde_json::Map<String, Value>,
    /// One explanation at a time: the permit moves into the computation, so a client that
    /// leaves does not free it while its occlusion map still runs.
    pub explain_permits: Arc<Semaphore>,
    /// Occlusion maps computing now, and the most ever at once (`/api/state` reports both).
    pub explaining: Running,
    /// The grid's downscaled images.
    pub thumbnails: Thumbnails,
    /// Where the queued files may really be (see [`super::files`]).
    pub roots: Roots,
    /// SHA-256 of the label token when it is required (non-loopback bind).
    pub token_sha256: Option<[u8; 32]>,
    /// Bound to a loopback address: the Host header must name one.
    pub loopback: bool,
    pub origins: OriginPolicy,
    /// Limits of decoding the queued images (`data.max_image_megapixels`).
    pub limits: crate::data::imaging::DecodeLimits,
}

/// A count of computations running now, with its high-water mark and how many started.
#[derive(Default)]
pub struct Running {
    now: AtomicUsize,
    most: AtomicUsize,
    started: AtomicUsize,
}

impl Running {
    /// Counts one computation until the returned guard drops.
    fn start(&self) -> RunningGuard<'_> {
        self.started.fetch_add(1, Ordering::AcqRel);
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(now, Ordering::AcqRel);
        RunningGuard(self)
    }

    fn json(&self) -> Value {
        json!({
            "running": self.now.load(Ordering::Acquire),
            "most_at_once": self.most.load(Ordering::Acquire),
            "started": self.started.load(Ordering::Acquire),
        })
    }
}

struct RunningGuard<'a>(&'a Running);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
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
                    "wrong label token",
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
                "this flora label listens beyond this machine: open /?token=<label token> once \
                 (FLORA_LABEL_TOKEN or label.token), or send `Authorization: Bearer <token>`",
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

/// The label token from `Authorization: Bearer` or the cookie matches.
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
        "explanations": app.explaining.json(),
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

#[derive(Deserialize)]
struct ImageQuery {
    path: String,
    /// A thumbnail whose longer side is at most this many pixels, instead of the file.
    #[serde(default)]
    side: Option<u32>,
}

/// The largest thumbnail side `/api/image` makes.
const MAX_THUMBNAIL_SIDE: u32 = 1024;

/// `GET /api/image?path=P[&side=N]`: the bytes of a queued image, or a JPEG thumbnail of it
/// (upright, longer side at most N pixels). Only a regular file inside the dataset is read
/// (see [`super::files`]).
async fn image(
    State(app): State<Arc<LabelApp>>,
    Query(q): Query<ImageQuery>,
) -> Result<Response, ApiError> {
    if let Some(side) = q.side
        && !(16..=MAX_THUMBNAIL_SIDE).contains(&side)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("side={side}: a thumbnail side is 16 to {MAX_THUMBNAIL_SIDE} pixels"),
        ));
    }
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
    let app2 = app.clone();
    let read = tokio::task::spawn_blocking(move || match q.side {
        Some(side) => app2
            .thumbnails
            .get(&app2.roots, &file, side, app2.limits)
            .map(|jpeg| (jpeg, "image/jpeg")),
        None => super::files::read_queued(&app2.roots, &file).map(|(bytes, _)| {
            let ctype = crate::data::imaging::sniff_format(&bytes)
                .map_or("application/octet-stream", |f| f.to_mime_type());
            (bytes, ctype)
        }),
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let (bytes, ctype) = read.map_err(|e| match e {
        ReadError::TooLarge(_) => err(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e),
        ReadError::Refused(_) => err(StatusCode::NOT_FOUND, "gone", e),
    })?;
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
    let permit = app
        .explain_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "another explanation is being computed: retry in a moment",
            )
        })?;
    let app2 = app.clone();
    let png = tokio::task::spawn_blocking(move || {
        // Held here, not in the handler: a client that leaves drops the handler, while
        // this computation runs on.
        let _permit = permit;
        let _running = app2.explaining.start();
        use crate::evaluate::explain;
        let (bytes, _) =
            super::files::read_queued(&app2.roots, &file).map_err(anyhow::Error::msg)?;
        let shown = explain::shown_side(model.meta.image_size);
        let rgb = crate::data::imaging::decode_rgb(&bytes, shown, app2.limits)?;
        explain::top_class_overlay_png(&model, &rgb)
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

/// 409 `merge_running` (with Retry-After) when `flora merge` holds the inbox's lock, else
/// `status` with `reason`.
fn busy_or(e: anyhow::Error, status: StatusCode, reason: &'static str) -> ApiError {
    match e.downcast_ref::<crate::util::fsutil::Busy>() {
        Some(busy) => ApiError::new(
            StatusCode::CONFLICT,
            "merge_running",
            format!(
                "merge running, try again in a moment ({} holds {})",
                busy.what,
                busy.path.display()
            ),
        )
        .retry_after(2),
        None => err(status, reason, format!("{e:#}")),
    }
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
            .map_err(|e| busy_or(e, StatusCode::BAD_REQUEST, "refused"))?;
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
            .map_err(|e| busy_or(e, StatusCode::CONFLICT, "undo"))?;
        Ok(Json(json!({
            "changed": changed.items,
            "notes": changed.notes,
            "done": s.done(),
        })))
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?
}
