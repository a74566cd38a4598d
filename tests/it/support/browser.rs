//! The one browser harness for every page test: Debian's headless `chromium` driven through
//! `chromedriver` with a small W3C WebDriver client (ureq + serde_json). One chromedriver and
//! one browser session for the whole test process, started on first use; tests take turns
//! through [`browser`] (a Mutex), and the browser is quit when the process exits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{self, outside_program};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver key codes for [`Browser::key`].
pub const ENTER: &str = "\u{E007}";
pub const ESCAPE: &str = "\u{E00C}";

/// The shared browser session.
pub struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
    _driver: Child,
    _profile: tempfile::TempDir,
}

static DRIVER_PID: AtomicI32 = AtomicI32::new(0);
/// Whether a test has already noted that the browser is missing (the one that looked).
static NOTED: AtomicBool = AtomicBool::new(false);
static SESSION_URL: OnceLock<String> = OnceLock::new();

/// The shared browser, for one test at a time; None (the test is skipped, each test noting it)
/// when chromium or chromedriver is missing, except under CI, where that fails the test.
pub fn browser() -> Option<MutexGuard<'static, Browser>> {
    static B: OnceLock<Option<Mutex<Browser>>> = OnceLock::new();
    let how = "install Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver)";
    let b = B.get_or_init(|| {
        let chromium = outside_program(Path::new(CHROMIUM), "chromium", how)?;
        let driver = outside_program(Path::new(CHROMEDRIVER), "chromedriver", how)?;
        Some(Mutex::new(Browser::start(&chromium, &driver)))
    });
    let Some(b) = b.as_ref() else {
        // The first test noted it while finding out; every later one notes its own skip.
        if !NOTED.swap(true, Ordering::SeqCst) {
            return None;
        }
        common::skip(&format!("chromium or chromedriver missing; {how}"));
        return None;
    };
    Some(b.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Quits the browser and stops chromedriver when the test process exits.
extern "C" fn quit_at_exit() {
    if let Some(url) = SESSION_URL.get() {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let _ = agent.delete(url).call();
    }
    let pid = DRIVER_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the chromedriver child this process started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

impl Browser {
    fn start(chromium: &Path, driver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        DRIVER_PID.store(child.id() as i32, Ordering::SeqCst);
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(quit_at_exit);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = agent
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = post(&agent, &format!("{base}/session"), &caps);
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        let _ = SESSION_URL.set(format!("{base}/session/{session}"));
        Browser {
            base,
            session,
            agent,
            _driver: child,
            _profile: profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    /// A WebDriver command; panics with the driver's message on an error.
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = self.url(path);
        let v = if method == "GET" {
            get(&self.agent, &url)
        } else {
            post(&self.agent, &url, &body)
        };
        if let Some(e) = v["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {e}: {}",
                v["value"]["message"].as_str().unwrap_or("")
            );
        }
        v["value"].clone()
    }

    /// Loads `url` (and waits for it, as WebDriver does).
    pub fn open(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// The element `css` selects, or None.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = post(
            &self.agent,
            &self.url("/element"),
            &json!({"using": "css selector", "value": css}),
        );
        v["value"][ELEMENT].as_str().map(str::to_string)
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("no element {css:?} on the page"))
    }

    /// Clicks the element `css` selects.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// The visible text of the element `css` selects.
    pub fn text(&self, css: &str) -> String {
        let id = self.element(css);
        self.cmd("GET", &format!("/element/{id}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Types `text` into the element `css` selects (for a file input: a file's path).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Presses and releases each key of `keys` in turn, into the focused element (the page
    /// itself when none): characters, or [`ENTER`], [`ESCAPE`].
    pub fn key(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                let k = c.to_string();
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.cmd(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page, returns its value.
    pub fn eval_js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    /// Waits up to 15 s until `script` returns a truthy value; panics with `what` otherwise.
    pub fn wait_js(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval_js(script, json!([]));
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what} ({script})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the window to `path` and returns its bytes.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", Value::Null);
        let png = base64_decode(v.as_str().expect("a base64 screenshot"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, &png).unwrap();
        png
    }
}

impl Browser {
    /// Saves a screenshot as `target/tmp/browser/NAME.png` (kept, to look at) and checks that
    /// it is not blank.
    #[track_caller]
    pub fn shot(&self, name: &str) {
        let png = self.screenshot(&shot_path(name));
        let n = colours(&png);
        assert!(n > 50, "screenshot {name} looks blank ({n} colours)");
    }
}

fn get(agent: &ureq::Agent, url: &str) -> Value {
    let mut r = agent.get(url).call().expect("talking to chromedriver");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Value {
    let mut r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("talking to chromedriver");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Standard base64 (WebDriver's screenshots).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| acc << 6 | x) << (6 * (4 - v.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..v.len() - 1]);
    }
    out
}

/// How many distinct colours a PNG screenshot has (a blank page has one or two).
pub fn colours(png: &[u8]) -> usize {
    let img = image::load_from_memory(png).unwrap().to_rgb8();
    let mut seen = std::collections::HashSet::new();
    for p in img.pixels() {
        seen.insert(p.0);
    }
    seen.len()
}

/// Where screenshots go: `target/tmp/browser/NAME.png` (kept, to look at).
pub fn shot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("browser")
        .join(format!("{name}.png"))
}
