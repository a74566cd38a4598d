//! Helpers shared by the `flora serve` tests: trained bundles installed into the slots, the
//! real binary on a random free port, an HTTP client, and a /metrics scraper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::common::*;
use flora::track::slots::{Registry, Slot, SlotInfo};
use flora::track::store::RunStore;
use serde_json::Value;

pub const TOKEN: &str = "s3cret-token";

/// Two trained bundles (runs "a" and "b"), made once per test process (every module
/// shares them): (project, a, b, a's run id, b's run id).
pub fn bundles() -> &'static (tempfile::TempDir, PathBuf, PathBuf, String, String) {
    static B: OnceLock<(tempfile::TempDir, PathBuf, PathBuf, String, String)> = OnceLock::new();
    B.get_or_init(|| {
        let dir = project(30, 2);
        ok(dir.path(), &["train", "--name", "a"]);
        ok(dir.path(), &["train", "--name", "b", "--seed", "8"]);
        let store = RunStore::new(dir.path().join("runs"));
        let a = store.find("a").unwrap();
        let b = store.find("b").unwrap();
        let (pa, pb) = (a.artifacts().join("model"), b.artifacts().join("model"));
        (dir, pa, pb, a.run_id, b.run_id)
    })
}

pub fn info(run_id: &str) -> SlotInfo {
    SlotInfo {
        run_id: run_id.into(),
        run_name: "test".into(),
        promoted_at: "2026-11-23T00:00:00Z".into(),
        promoted_by: "test".into(),
        accuracy: Some(0.9),
        val_accuracy: Some(0.9),
        data_fingerprint: "sha256:test".into(),
    }
}

/// A project whose blue slot holds run a, green run b, blue live. `extra` is appended to flora.toml.
pub fn slotted_project(extra: &str) -> tempfile::TempDir {
    let (_, a, b, ra, rb) = bundles();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), 1, extra);
    let reg = Registry::new(dir.path().join("models"));
    let lock = reg.lock(Duration::from_secs(5)).unwrap();
    reg.install(&lock, Slot::Blue, a, &info(ra)).unwrap();
    reg.install(&lock, Slot::Green, b, &info(rb)).unwrap();
    drop(lock);
    reg.switch_live(Slot::Blue, "live").unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `flora serve`, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    /// What the server wrote to stdout: its JSON-lines access log.
    pub stdout: Arc<Mutex<String>>,
}

/// Appends every line `from` gives to `into`, on a thread of its own.
fn drain(from: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut l = into.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Server {
    pub fn start(dir: &Path, token: Option<&str>, extra_args: &[&str]) -> Server {
        let port = free_port();
        let mut cmd = flora(dir);
        cmd.args(["serve", "--port", &port.to_string()])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("FLORA_ADMIN_TOKEN", t);
        }
        Self::spawn(cmd, port)
    }

    /// Runs `cmd` (a `flora serve` listening on `port`, perhaps through a shell) and waits
    /// until it is healthy.
    pub fn spawn(mut cmd: std::process::Command, port: u16) -> Server {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting flora serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().unwrap(), log.clone());
        drain(child.stdout.take().unwrap(), stdout.clone());
        let mut s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            stdout,
        };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = s.try_get("/health") {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("flora serve exited ({status}):\n{}", s.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "flora serve did not become healthy:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The access log lines written so far, parsed (each must be one JSON object).
    pub fn access_log(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        let mut r = agent().get(&self.url(path)).call()?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string()?))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap()
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POSTs `body` with `content_type` and optional extra header; returns status and JSON.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        auth: Option<&str>,
    ) -> (u16, Value) {
        let mut req = agent()
            .post(&self.url(path))
            .header("Content-Type", content_type);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered non-JSON ({status}, {e}): {text}"));
        (status, json)
    }

    /// POSTs `body` with `content_type` and extra headers; returns status and JSON.
    pub fn post_with(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = agent()
            .post(&self.url(path))
            .header("Content-Type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered non-JSON ({status}, {e}): {text}"));
        (status, json)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn predict_multipart(&self, image: &[u8], filename: &str, query: &str) -> (u16, Value) {
        let (ct, body) = multipart("file", filename, image);
        self.post(&format!("/predict{query}"), &ct, &body, None)
    }

    pub fn switch(&self, color: &str, auth: Option<&str>) -> (u16, Value) {
        self.post(
            &format!("/admin/switch-model?color={color}"),
            "application/x-www-form-urlencoded",
            b"",
            auth,
        )
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

pub fn multipart(field: &str, filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----floratestboundary42";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A real test image (a bag) as PNG bytes.
pub fn bag_png() -> Vec<u8> {
    let (_, test) = fashion_mnist();
    let dir = test.join("bag");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::read(&files[0]).unwrap()
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    pub fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib stream of a few zero bytes.
    chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
        ],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Parses /metrics with prometheus-parse: (name, labels) -> value (histograms by their count).
pub fn scrape(server: &Server) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    // Every sample line is `name{labels} value` with a finite number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus exposition");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.last().map(|c| c.count).unwrap_or(0.0),
                prometheus_parse::Value::Summary(_) => 0.0,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (s.metric, labels, v)
        })
        .collect()
}

pub fn value(
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
