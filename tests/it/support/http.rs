//! A local HTTP/1.1 file server for the download tests, in a thread of the test process: it
//! serves bytes by path, answers `Range: bytes=N-` with 206 (or ignores it and answers 200),
//! can cut the next responses short, stall, or send slowly, and records every request.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: Mutex<HashMap<String, Vec<u8>>>,
    log: Mutex<Vec<Request>>,
    /// Responses still to cut short, and after how many body bytes.
    cut_left: AtomicUsize,
    cut_after: AtomicUsize,
    ignore_range: AtomicBool,
    stall: AtomicBool,
    /// Milliseconds to wait after each 64 KiB of body.
    throttle_ms: AtomicU64,
}

/// The server; it runs until the test process ends.
pub struct Server {
    pub port: u16,
    state: Arc<State>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || answer(conn, &s));
            }
        });
        Server { port, state }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn serve(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), bytes);
    }

    /// The next `n` responses send `after` bytes of their body, then close the connection.
    pub fn cut_next(&self, n: usize, after: usize) {
        self.state.cut_after.store(after, Ordering::SeqCst);
        self.state.cut_left.store(n, Ordering::SeqCst);
    }

    /// Answer 200 with the whole file even to a `Range` request.
    pub fn ignore_range(&self, on: bool) {
        self.state.ignore_range.store(on, Ordering::SeqCst);
    }

    /// Send the headers and 1000 bytes, then nothing for a minute.
    pub fn stall(&self, on: bool) {
        self.state.stall.store(on, Ordering::SeqCst);
    }

    /// Wait `ms` after each 64 KiB of body.
    pub fn throttle(&self, ms: u64) {
        self.state.throttle_ms.store(ms, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }
}

/// A port on 127.0.0.1 that nothing listens on (a server that is down).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn answer(mut conn: TcpStream, s: &State) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
    let range = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("range")
            .then(|| v.trim().to_string())
    });
    s.log.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
    });
    let Some(file) = s.files.lock().unwrap().get(&path).cloned() else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !s.ignore_range.load(Ordering::SeqCst));
    let total = file.len();
    let (status, body, extra) = match from {
        Some(n) if n >= total => {
            let h = format!("Content-Range: bytes */{total}\r\n");
            ("416 Range Not Satisfiable", &file[..0], h)
        }
        Some(n) => {
            let h = format!("Content-Range: bytes {n}-{}/{total}\r\n", total - 1);
            ("206 Partial Content", &file[n..], h)
        }
        None => ("200 OK", &file[..], String::new()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}\
         Connection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(header.as_bytes()).is_err() {
        return;
    }
    let cut = s
        .cut_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let mut send = body;
    if cut {
        send = &body[..s.cut_after.load(Ordering::SeqCst).min(body.len())];
    }
    if s.stall.load(Ordering::SeqCst) {
        let _ = conn.write_all(&send[..1000.min(send.len())]);
        let _ = conn.flush();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let throttle = s.throttle_ms.load(Ordering::SeqCst);
    for chunk in send.chunks(64 * 1024) {
        if conn.write_all(chunk).is_err() {
            return;
        }
        if throttle > 0 {
            std::thread::sleep(Duration::from_millis(throttle));
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}
