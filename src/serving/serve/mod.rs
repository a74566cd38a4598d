//! `flora serve`: an HTTP API (axum + tokio) over the blue/green slots.
//!
//! - [`models`]: the loaded slots and the live one, kept in step with `models/` (polled).
//! - [`worker`]: the inference thread, which batches requests that queue up.
//! - [`routes`]: the endpoints; [`api`]: their JSON bodies; [`error`]: JSON errors;
//!   [`prometheus`]: Prometheus metrics.
//! - [`openapi`]: the OpenAPI document (`/openapi.json`); [`docs`]: Swagger UI on it (`/docs`).
//! - [`listen`]: the accept loop (timeouts, connection cap, shutdown deadline);
//!   [`limits`]: the per-request deadline; [`origin`]: the cross-origin check.

pub mod access;
pub mod api;
pub mod docs;
pub mod error;
pub mod limits;
mod linger;
pub mod listen;
pub mod models;
pub mod openapi;
pub mod origin;
pub mod prometheus;
pub mod routes;
pub mod snapshot;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Router};
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::data::imaging::DecodeLimits;
use crate::track::slots::Registry;
use crate::track::store::RunStore;

use error::ApiError;
use models::Models;
use prometheus::Metrics;
use worker::Worker;

/// The environment variable holding the admin token (it wins over `serve.admin_token`).
pub const TOKEN_ENV: &str = "FLORA_ADMIN_TOKEN";

/// What `flora serve` was asked for, on top of the `[serve]` config.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub collect: bool,
}

/// The state every handler shares.
pub struct App {
    pub models: Arc<Models>,
    pub metrics: Arc<Metrics>,
    pub worker: Worker,
    pub limits: DecodeLimits,
    /// Bounds how many uploads are decoded at once (and so the decoders' memory).
    pub decode_permits: Arc<Semaphore>,
    /// Bounds explanations (`POST /explain`, dozens of forward passes each) to one at a time.
    pub explain_permits: Arc<Semaphore>,
    pub collect: bool,
    pub collected_dir: PathBuf,
    /// Collection is skipped below this much free disk space.
    pub collect_min_free_bytes: u64,
    /// The project folder: collected paths are shown relative to it.
    pub base: PathBuf,
    /// SHA-256 of the admin token, if one is configured.
    pub admin_token_sha256: Option<[u8; 32]>,
    pub low_confidence: f32,
    /// `[thresholds]` of the config: when set, it replaces each model's own thresholds.
    pub thresholds: crate::model::unknown::Thresholds,
    pub max_body_bytes: usize,
    pub stall_timeout: Duration,
    pub request_timeout: Duration,
    pub origins: origin::OriginPolicy,
    /// One JSON line per request (`serve.access_log`).
    pub access_log: access::AccessLog,
}

impl App {
    /// Checks the bearer token of an admin request: 403 when no token is configured, 401 when
    /// it is missing or wrong. The scheme is matched in any case; the token is compared by
    /// SHA-256 digest in constant time, so neither its content nor its length leaks.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token_sha256 else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                format!(
                    "admin endpoints are disabled: set {TOKEN_ENV} or `admin_token` in the [serve] section of flora.toml, restart, and send `Authorization: Bearer <token>`"
                ),
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            Some(t) if token_matches(t, expected) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong admin token",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer <token>` header",
            )),
        }
    }

    /// A path under the project folder shown relative to it (as `collected_data/...`).
    pub fn display_path(&self, path: &Path) -> String {
        path.strip_prefix(&self.base)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The admin token: `FLORA_ADMIN_TOKEN`, else `serve.admin_token`; None when neither is set.
pub fn admin_token(cfg: &crate::config::ServeConfig) -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| cfg.admin_token.clone().filter(|t| !t.trim().is_empty()))
        .map(|t| t.trim().to_string())
}

/// The token of an `Authorization: Bearer <token>` header value (scheme in any case).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `given` is the token whose SHA-256 is `expected`: digests compared in constant time.
pub fn token_matches(given: &str, expected: &[u8; 32]) -> bool {
    let digest = crate::util::fingerprint::sha256(given.as_bytes());
    digest
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The router with every endpoint and its OpenAPI document, the body limit, JSON errors, the
/// request deadline, the cross-origin check and request metrics.
pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    use axum::middleware::from_fn_with_state;
    let (router, doc) = routes::api().split_for_parts();
    router
        .layer(Extension(openapi::Json::new(&doc)))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(from_fn_with_state(app.clone(), limits::deadline))
        .layer(from_fn_with_state(app.clone(), origin::guard))
        .layer(from_fn_with_state(app.clone(), routes::track))
        .with_state(app)
}

/// Loads the models and serves until SIGINT or SIGTERM; in-flight requests finish first.
pub fn run(settings: &Settings, opts: Options) -> Result<()> {
    let cfg = &settings.config.serve;
    let metrics = Arc::new(Metrics::new(cfg.low_confidence));
    let models = Arc::new(Models::open(
        Registry::new(settings.models_dir()),
        &RunStore::new(settings.runs_dir()),
        metrics.clone(),
    )?);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let admin_token = admin_token(cfg);
    let decodes = if cfg.max_decodes == 0 {
        cores * 2
    } else {
        cfg.max_decodes
    };
    let app = Arc::new(App {
        models: models.clone(),
        metrics: metrics.clone(),
        worker: Worker::start(cfg.max_batch, cfg.max_queue_bytes, metrics.clone()),
        limits: settings.serve_decode_limits(),
        decode_permits: Arc::new(Semaphore::new(decodes)),
        explain_permits: Arc::new(Semaphore::new(1)),
        collect: opts.collect,
        collected_dir: settings.collected_dir(),
        collect_min_free_bytes: cfg.collect_min_free_bytes,
        base: settings.base.clone(),
        admin_token_sha256: admin_token.map(|t| crate::util::fingerprint::sha256(t.as_bytes())),
        low_confidence: cfg.low_confidence,
        thresholds: settings.thresholds(),
        max_body_bytes: cfg.max_body_bytes,
        stall_timeout: Duration::from_secs(cfg.stall_timeout_secs),
        request_timeout: Duration::from_secs(cfg.request_timeout_secs),
        origins: origin::OriginPolicy::new(&cfg.allowed_origins, &cfg.trusted_proxies),
        access_log: access::AccessLog::open(&cfg.access_log, &settings.base)?,
    });
    let conn_limits = listen::ConnLimits {
        stall: Duration::from_secs(cfg.stall_timeout_secs),
        max_connections: cfg.max_connections,
        shutdown: Duration::from_secs(cfg.shutdown_timeout_secs),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = models.clone().watch(stop.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr} (is another server using the port?)"))?;
        let local = listener.local_addr()?;
        let snap = models.snapshot();
        if let Some((label, m)) = snap.serving() {
            eprintln!("serving {label}: {}", m.describe());
        }
        eprintln!(
            "admin endpoints: {}",
            if app.admin_token_sha256.is_some() {
                "enabled (bearer token)"
            } else {
                "disabled (set FLORA_ADMIN_TOKEN to enable)"
            }
        );
        eprintln!(
            "collecting uploads: {}",
            if app.collect {
                app.collected_dir.display().to_string()
            } else {
                "off".into()
            }
        );
        if !local.ip().is_loopback() {
            eprintln!(
                "note: listening beyond this machine over plain HTTP: put a TLS proxy in front, \
                 or the admin token and uploads travel in clear text"
            );
        }
        eprintln!("flora serve listening on http://{local}");
        listen::serve(
            listener,
            router(app.clone(), cfg.max_body_bytes),
            conn_limits,
            metrics.clone(),
            shutdown_signal(),
        )
        .await
        .context("serving")
    });
    // Decodes still running after the shutdown deadline are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    eprintln!("flora serve stopped");
    result
}

/// Resolves on SIGINT or SIGTERM (also what `flora label` stops on).
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let expected = crate::util::fingerprint::sha256(b"abc");
        assert!(token_matches("abc", &expected));
        assert!(!token_matches("abd", &expected));
        assert!(!token_matches("abcd", &expected));
        assert!(!token_matches("ab", &expected));
        assert!(!token_matches("", &expected));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
