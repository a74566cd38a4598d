//! `flora serve`'s limits as the README states them, on the real binary: lingering sockets
//! stay within their cap under a low file-descriptor limit, a full inference queue answers
//! 503, concurrent requests share forward passes (`max_batch`), and `flora health` probes a
//! server on this machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::serve::*;

/// `sum` and `count` of the histogram `name` in the server's /metrics.
fn histogram(server: &Server, name: &str) -> (f64, f64) {
    let (_, text) = server.get("/metrics");
    let field = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .unwrap_or_else(|| panic!("no {name}_{suffix} in /metrics:\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    (field("sum"), field("count"))
}

/// How long `GET /health` takes, on a fresh connection.
fn health_time(server: &Server) -> Duration {
    let start = Instant::now();
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
    start.elapsed()
}

/// 100 clients send more than `max_body_bytes` of a longer body, read their 413, then keep
/// trickling a byte every 200 ms: under `ulimit -n 64` with `max_connections = 16`, the lingering sockets stay
/// within their own cap (16), the process never runs out of file descriptors, and /health
/// stays fast throughout.
#[test]
fn clients_trickling_after_their_413_cannot_exhaust_file_descriptors() {
    let dir = slotted_project("[serve]\nmax_connections = 16\nmax_body_bytes = 1024\n");
    let port = free_port();
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir.path())
        .env_remove("FLORA_ADMIN_TOKEN")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec '{}' serve --port {port} --no-collect",
            flora_bin().display()
        ));
    let server = Server::spawn(cmd, port);
    let refused = Arc::new(AtomicUsize::new(0));
    let trickle_until = Instant::now() + Duration::from_secs(7);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let refused = refused.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let _ = write!(
                    s,
                    "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                );
                let _ = s.write_all(&[0u8; 4096]);
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let (mut got, mut counted) = (Vec::new(), false);
                while Instant::now() < trickle_until {
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = s.read(&mut buf)
                        && n > 0
                    {
                        got.extend_from_slice(&buf[..n]);
                        if !counted && got.starts_with(b"HTTP/1.1 413") {
                            counted = true;
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // One byte more, as a slow client still sending its body would.
                    if s.write_all(b"x").is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // While they trickle: /health answers fast, and the lingering sockets stay capped.
    let start = Instant::now();
    let (mut slowest, mut most_lingering) = (Duration::ZERO, 0.0f64);
    while start.elapsed() < Duration::from_secs(5) {
        slowest = slowest.max(health_time(&server));
        let samples = scrape(&server);
        most_lingering = most_lingering.max(value(&samples, "flora_connections_lingering", &[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in clients {
        c.join().unwrap();
    }
    let log = server.log();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of file descriptors:\n{log}"
    );
    assert!(
        slowest < Duration::from_millis(1500),
        "/health took {slowest:?} while clients trickled"
    );
    assert!(
        most_lingering >= 1.0,
        "no socket was seen lingering (the test did not exercise the lingering close)"
    );
    assert!(
        most_lingering <= 16.0,
        "{most_lingering} sockets lingered at once, over max_connections = 16"
    );
    assert!(
        refused.load(Ordering::Relaxed) >= 16,
        "only {} clients read their 413",
        refused.load(Ordering::Relaxed)
    );
    assert!(health_time(&server) < Duration::from_millis(1500));
}

/// Fires `clients` × `each` predictions at once; returns the statuses and bodies.
fn burst(server: &Server, clients: usize, each: usize) -> Vec<(u16, String)> {
    let png = Arc::new(bag_png());
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let url = server.url("/predict");
            let png = png.clone();
            std::thread::spawn(move || {
                (0..each)
                    .map(|_| {
                        let mut r = agent()
                            .post(&url)
                            .header("Content-Type", "image/png")
                            .send(&png[..])
                            .unwrap();
                        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// With `max_queue_bytes` smaller than two images, requests that find another waiting for
/// the model get 503 (the queue is full), the others are answered, and the server stays up.
#[test]
fn a_full_inference_queue_answers_503() {
    let dir = slotted_project("[serve]\nmax_queue_bytes = 1\n");
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.extend(burst(&server, 16, 4));
        if answers.iter().any(|(s, _)| *s == 503) {
            break;
        }
    }
    let full: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!full.is_empty(), "no request found the queue full");
    for (_, body) in &full {
        assert!(body.contains("inference queue is full"), "{body}");
        assert!(body.contains("serve.max_queue_bytes = 1"), "{body}");
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(s, _)| *s == 200));
    assert_eq!(server.get("/health").0, 200);
}

/// Concurrent requests are run through the model together: with `max_batch = 16` some
/// forward pass takes more than one image (fewer passes than images); with `max_batch = 1`
/// every pass takes exactly one.
#[test]
fn concurrent_predictions_share_forward_passes_up_to_max_batch() {
    let dir = slotted_project("[serve]\nmax_batch = 16\nmax_decodes = 8\n");
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let mut sent = 0.0;
    for _ in 0..20 {
        let answers = burst(&server, 24, 4);
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
        sent += answers.len() as f64;
        let (images, passes) = histogram(&server, "flora_inference_batch_size");
        assert_eq!(images, sent, "every image went through one pass");
        if passes < images {
            break;
        }
    }
    let (images, passes) = histogram(&server, "flora_inference_batch_size");
    assert!(
        passes < images,
        "no forward pass took more than one image: {passes} passes for {images} images"
    );
    drop(server);

    let dir = slotted_project("[serve]\nmax_batch = 1\nmax_decodes = 8\n");
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let answers = burst(&server, 24, 4);
    assert!(answers.iter().all(|(s, _)| *s == 200));
    let (images, passes) = histogram(&server, "flora_inference_batch_size");
    assert_eq!(
        (images, passes),
        (96.0, 96.0),
        "max_batch = 1: one image a pass"
    );
}

/// `flora health` on this machine: healthy (exit 0) against a running server found through
/// `[serve]` in flora.toml; unhealthy (exit 1, with the reason) on a 404, a server that never
/// answers (within `--timeout`), and a stopped server.
#[test]
fn flora_health_probes_a_server_on_this_machine() {
    let port = free_port();
    let dir = slotted_project(&format!("[serve]\nport = {port}\n"));
    let p = dir.path();
    let mut cmd = flora(p);
    cmd.args(["serve", "--no-collect"]);
    let server = Server::spawn(cmd, port);
    let out = ok(p, &["health"]);
    assert_eq!(
        out.trim(),
        format!("healthy: http://127.0.0.1:{port}/health")
    );
    assert!(ok(p, &["health", "--quiet"]).is_empty());
    let missing = server.url("/nope");
    let out = run(p, &["health", "--url", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("answered 404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A server that accepts but never answers: unhealthy once the timeout passes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    let start = Instant::now();
    let out = run(p, &["health", "--url", &url, "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unhealthy: cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(silent);
    assert!(server.stop().success());
    let out = run(p, &["health", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
