//! The access log: one JSON line per request (time, request id, method, route, status, latency,
//! and for predictions the slot and class), for log shippers. The request id is the one a proxy
//! sent in `X-Request-Id` when it is a plain token, else a new one; it is returned in the
//! response's `X-Request-Id` either way.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use serde_json::{Value, json};

/// The request id header, read from proxies and sent back.
pub const REQUEST_ID: &str = "x-request-id";

/// What answered a prediction, put into the response's extensions for the log.
#[derive(Debug, Clone)]
pub struct Answered {
    pub slot: &'static str,
    pub class: String,
}

/// Where the lines go: nowhere, stdout, or a file opened for appending.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// `""` turns the log off, `"-"` writes to stdout, anything else is a file (appended to,
    /// created if missing) under the project folder `base` when relative.
    pub fn open(spec: &str, base: &Path) -> Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match spec {
            "" => None,
            "-" => Some(Box::new(std::io::stdout())),
            path => {
                let path = base.join(path);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| {
                        format!(
                            "opening the access log {} (serve.access_log)",
                            path.display()
                        )
                    })?;
                Some(Box::new(file))
            }
        };
        Ok(Self {
            out: out.map(Mutex::new),
        })
    }

    /// Writes one line; a failed write is reported on stderr and never fails the request.
    pub fn write(&self, line: &Value) {
        let Some(out) = &self.out else { return };
        let mut text = line.to_string();
        text.push('\n');
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            eprintln!("error: writing the access log: {e}");
        }
    }

    /// True when lines are written somewhere.
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }
}

/// The request's id: the proxy's `X-Request-Id` when it is 1 to 128 characters of letters,
/// digits and `-_.:`, else a new one (process id, time and a counter, in hex).
pub fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            (1..=128).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        });
    if let Some(id) = given {
        return id.to_string();
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        crate::util::fsutil::now_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The log line of one request.
pub fn line(
    id: &str,
    method: &str,
    route: &str,
    status: u16,
    latency: std::time::Duration,
    answered: Option<&Answered>,
) -> Value {
    json!({
        "time": jiff::Timestamp::now().to_string(),
        "request_id": id,
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": (latency.as_secs_f64() * 1e3 * 1e3).round() / 1e3,
        "slot": answered.map(|a| a.slot),
        "class": answered.map(|a| a.class.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxys_id_is_kept_only_when_it_is_a_plain_token() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123.x:y_z".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123.x:y_z");
        h.insert(REQUEST_ID, "evil\"},{\"status\":200".parse().unwrap());
        let new = request_id(&h);
        assert!(!new.contains('"') && !new.is_empty(), "{new}");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
