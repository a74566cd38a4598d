//! The Origin check: a browser page from another site must not be able to POST to a local
//! `flora serve` (uploads are collected, and may reach the training data). Requests without
//! an `Origin` header (curl, scripts) pass; a browser's request passes when its `Origin` is
//! the server's own host (`Host`, or `X-Forwarded-Host` from a trusted proxy) or listed in
//! `serve.allowed_origins`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use super::error::ApiError;

/// Which cross-origin requests are allowed.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Allowed origins, normalised (`scheme://host[:port]`, lower case, no default port).
    allowed: Vec<String>,
    /// Peers whose `X-Forwarded-Host` names the host.
    trusted_proxies: Vec<IpAddr>,
}

/// `scheme://authority` in lower case, without a default port or a trailing slash; None when
/// it is not an http(s) origin.
fn normalize(origin: &str) -> Option<(String, String)> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || authority.is_empty() || authority.contains('/') {
        return None;
    }
    Some((scheme.to_string(), strip_default_port(scheme, authority)))
}

fn strip_default_port(scheme: &str, authority: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_string()
}

impl OriginPolicy {
    /// A policy from `serve.allowed_origins` and `serve.trusted_proxies`.
    pub fn new(allowed: &[String], trusted_proxies: &[IpAddr]) -> Self {
        Self {
            allowed: allowed
                .iter()
                .filter_map(|o| normalize(o).map(|(s, a)| format!("{s}://{a}")))
                .collect(),
            trusted_proxies: trusted_proxies.iter().map(|ip| ip.to_canonical()).collect(),
        }
    }

    /// The host the client asked for: `X-Forwarded-Host` (its first value) when `peer` is a
    /// trusted proxy and sent one, else `Host`.
    fn request_host(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<String> {
        let forwarded = peer
            .is_some_and(|p| self.trusted_proxies.contains(&p.to_canonical()))
            .then(|| headers.get("x-forwarded-host"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        forwarded
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .map(|h| h.trim().to_ascii_lowercase())
    }

    /// Ok unless the request changes something (not GET/HEAD/OPTIONS), carries an `Origin`,
    /// and that origin is neither the request's own host nor allowed.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let host = self.request_host(headers, peer);
        if let Some((scheme, authority)) = normalize(&origin) {
            let own = host
                .as_deref()
                .is_some_and(|h| strip_default_port(&scheme, h) == authority);
            if own || self.allowed.contains(&format!("{scheme}://{authority}")) {
                return Ok(());
            }
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!(
                "refused a cross-origin {method}: Origin {origin:?} is not this server ({}). A web \
                 page from another site may not post here. If that origin is yours, add it to \
                 `allowed_origins` in the [serve] section of flora.toml; behind a reverse proxy \
                 that changes the Host header, list the proxy's address in `trusted_proxies` so \
                 its X-Forwarded-Host is used",
                host.as_deref().unwrap_or("no Host header")
            ),
        ))
    }
}

/// Middleware: refuses cross-origin requests as [`OriginPolicy::check`] says (403).
pub async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match app.origins.check(req.method(), req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn origins_are_checked_against_the_host_and_the_allow_list() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let p = OriginPolicy::new(&["https://App.example.org/".into()], &[proxy]);
        let post = Method::POST;
        let ok = |h: &[(&str, &str)], peer| p.check(&post, &headers(h), Some(peer)).is_ok();
        // No Origin: scripts and curl.
        assert!(ok(&[("host", "127.0.0.1:8000")], local));
        // Same origin, with and without a default port.
        assert!(ok(
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "http://127.0.0.1:8000")
            ],
            local
        ));
        assert!(ok(
            &[("host", "flora.lan:80"), ("origin", "http://FLORA.lan")],
            local
        ));
        // Another site, a different port, a scheme-only or opaque origin: refused.
        assert!(!ok(
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "https://evil.example")
            ],
            local
        ));
        assert!(!ok(
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "http://127.0.0.1:9999")
            ],
            local
        ));
        assert!(!ok(
            &[("host", "127.0.0.1:8000"), ("origin", "null")],
            local
        ));
        // The allow-list.
        assert!(ok(
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "https://app.example.org")
            ],
            local
        ));
        // X-Forwarded-Host counts only from a trusted proxy.
        let fwd = [
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-host", "flora.example.org"),
            ("origin", "https://flora.example.org"),
        ];
        assert!(ok(&fwd, proxy));
        assert!(!ok(&fwd, local));
        // Reads are never refused.
        assert!(
            p.check(
                &Method::GET,
                &headers(&[("origin", "https://evil.example")]),
                None
            )
            .is_ok()
        );
    }
}
