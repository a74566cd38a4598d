//! A small client for MLflow's tracking REST API (`/api/2.0/mlflow/...`) and its artifact
//! proxy (`/api/2.0/mlflow-artifacts/...`), authenticating as MLflow's own clients do.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

/// An MLflow tracking server.
pub struct Client {
    /// The URL as given, without a trailing `/`.
    pub base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

/// An answer other than 2xx from the server: its HTTP status and MLflow's `error_code`.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub error_code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error_code {
            Some(code) => write!(f, "HTTP {} {code}: {}", self.status, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ApiError {}

impl Client {
    /// A client for `url` (`http://` or `https://`), with credentials from
    /// `MLFLOW_TRACKING_TOKEN` (bearer) or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`
    /// (basic), as MLflow's clients read them, or from the URL's `user:password@` (basic). The
    /// URL's credentials never go further than the `Authorization` header: [`Client::base`] is
    /// the URL without them, and that is what is printed and recorded. Credentials bound for a
    /// plain `http://` server other than this machine are warned about.
    pub fn new(url: &str) -> Result<Self> {
        let parsed = split_userinfo(url.trim().trim_end_matches('/'));
        let base = parsed.base;
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty()) {
            bail!(
                "--to {base:?} is not an http(s) URL of an MLflow tracking server \
                 (e.g. http://127.0.0.1:5000 or https://dagshub.com/USER/REPO.mlflow)"
            );
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let from_env = auth_header(
            env("MLFLOW_TRACKING_TOKEN"),
            env("MLFLOW_TRACKING_USERNAME"),
            env("MLFLOW_TRACKING_PASSWORD"),
        )?;
        let auth = match (from_env, parsed.userinfo) {
            (Some(_), Some(_)) => bail!(
                "the tracking URL holds credentials and MLFLOW_TRACKING_TOKEN or \
                 MLFLOW_TRACKING_USERNAME is set too: give them one way only (the variables \
                 keep them out of shell history and process listings)"
            ),
            (Some(a), None) => Some(a),
            (None, Some((user, password))) => auth_header(None, Some(user), Some(password))?,
            (None, None) => None,
        };
        if auth.is_some() && base.starts_with("http://") && !is_loopback(&base) {
            eprintln!(
                "warning: sending credentials over plain http to {base}: anyone on the way can \
                 read them; use https:// for a server on another machine"
            );
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .user_agent(concat!("flora/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self { base, agent, auth })
    }

    /// `GET /api/2.0/mlflow/<endpoint>?query`.
    pub fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        self.answer(&url, req.call())
    }

    /// `POST /api/2.0/mlflow/<endpoint>` with a JSON body.
    pub fn post(&self, endpoint: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        self.answer(&url, req.send(serde_json::to_vec(body)?))
    }

    /// Uploads `bytes` through the artifact proxy to `path` (already percent-encoded).
    pub fn put_artifact(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}", self.base);
        let mut req = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        self.answer(&url, req.send(bytes)).map(|_| ())
    }

    /// The JSON body of a 2xx answer; an [`ApiError`] or a clear message otherwise.
    fn answer(
        &self,
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = response.map_err(|e| {
            anyhow!(
                "cannot reach the MLflow server at {} ({e}): is it running, and is --to right?",
                self.base
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| {
                anyhow!(
                    "reading the answer of {url} (HTTP {status}) failed ({e}): the MLflow server \
                     at {} stopped answering or sent too much; try again",
                    self.base
                )
            })?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Object(Default::default()));
            }
            return serde_json::from_str(&text).map_err(|_| {
                anyhow!(
                    "{url} answered {status} with something that is not JSON: is {} an MLflow \
                     tracking server?",
                    self.base
                )
            });
        }
        if status == 401 || status == 403 {
            let how = match (&self.auth, status) {
                (Some(_), 401) => {
                    "credentials were sent but refused: check MLFLOW_TRACKING_USERNAME / \
                     MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN (or the URL's user:password)"
                }
                (Some(_), _) => {
                    "the credentials sent were accepted but may not do this: ask the server's \
                     admin for the permission, or check MLFLOW_TRACKING_USERNAME"
                }
                (None, _) => {
                    "no credentials were sent: set MLFLOW_TRACKING_USERNAME and \
                     MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
                }
            };
            bail!(
                "the MLflow server at {} refused the request (HTTP {status}, {}): {how}",
                self.base,
                if status == 401 {
                    "not authenticated"
                } else {
                    "permission denied"
                }
            );
        }
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let error_code = json
            .as_ref()
            .and_then(|j| j.get("error_code"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if error_code.is_none() && status == 404 {
            bail!(
                "{url} does not exist (HTTP 404): {} is not an MLflow tracking server, or an \
                 older one without this API (check --to)",
                self.base
            );
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(ApiError {
            status,
            error_code,
            message,
        }
        .into())
    }
}

/// The `Authorization` header MLflow's clients send: `Bearer <token>` when a token is set,
/// else HTTP basic with the user name and password.
fn auth_header(
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Result<Option<String>> {
    use base64::Engine;
    Ok(match (token, user, password) {
        (Some(token), _, _) => Some(format!("Bearer {token}")),
        (None, Some(user), password) => {
            let pair = format!("{user}:{}", password.unwrap_or_default());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        }
        (None, None, Some(_)) => {
            bail!("MLFLOW_TRACKING_PASSWORD is set without MLFLOW_TRACKING_USERNAME")
        }
        (None, None, None) => None,
    })
}

/// A URL split into its credentials (`user:password@`, percent-decoded) and the URL without
/// them.
pub struct Userinfo {
    pub base: String,
    pub userinfo: Option<(String, String)>,
}

/// Takes the `user:password@` part out of `url`'s authority (the part before the first `/`
/// after `scheme://`).
pub fn split_userinfo(url: &str) -> Userinfo {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Userinfo {
            base: url.to_string(),
            userinfo: None,
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let Some((info, host)) = authority.rsplit_once('@') else {
        return Userinfo {
            base: url.to_string(),
            userinfo: None,
        };
    };
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    Userinfo {
        base: format!("{scheme}://{host}{path}"),
        userinfo: Some((percent_decode(user), percent_decode(password))),
    }
}

/// `url` with any `user:password@` removed, for messages and records.
pub fn without_userinfo(url: &str) -> String {
    split_userinfo(url).base
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the host of `url` (`scheme://host[:port]/...`) is this machine.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `err` is the server's "no such resource" answer.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiError>().is_some_and(|e| {
        e.status == 404 || e.error_code.as_deref() == Some("RESOURCE_DOES_NOT_EXIST")
    })
}

/// Percent-encodes each segment of a `/`-separated path (RFC 3986 unreserved kept).
pub fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_headers_as_mlflow_sends_them() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            auth_header(None, s("Aladdin"), s("open sesame")).unwrap(),
            s("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        assert_eq!(
            auth_header(s("tok"), s("u"), s("p")).unwrap(),
            s("Bearer tok")
        );
        assert_eq!(auth_header(None, None, None).unwrap(), None);
        assert!(auth_header(None, None, s("p")).is_err());
        assert_eq!(encode_path("model/a b#.bpk"), "model/a%20b%23.bpk");
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        let u = split_userinfo("https://me:t%40k%3Aen@dagshub.com/me/x.mlflow");
        assert_eq!(u.base, "https://dagshub.com/me/x.mlflow");
        assert_eq!(u.userinfo, Some(("me".into(), "t@k:en".into())));
        let u = split_userinfo("http://tok@127.0.0.1:5000");
        assert_eq!(u.base, "http://127.0.0.1:5000");
        assert_eq!(u.userinfo, Some(("tok".into(), "".into())));
        // An @ in the path is not userinfo.
        let u = split_userinfo("http://host:5000/a@b");
        assert_eq!(
            (u.base.as_str(), u.userinfo),
            ("http://host:5000/a@b", None)
        );
        assert_eq!(without_userinfo("ftp://u:p@x"), "ftp://x");
        assert_eq!(without_userinfo("nonsense"), "nonsense");
        for (url, local) in [
            ("http://127.0.0.1:5000", true),
            ("http://localhost", true),
            ("http://[::1]:80/x", true),
            ("http://127.0.0.2", true),
            ("http://10.0.0.1:5000", false),
            ("http://mlflow.example.org", false),
            ("http://[2001:db8::1]:5000", false),
        ] {
            assert_eq!(is_loopback(url), local, "{url}");
        }
    }
}
