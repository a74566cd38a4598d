//! `flora serve` hardening, end to end on the real binary: bounded metric labels, stall
//! timeouts, the connection cap, the shutdown deadline, the decode limit, collection dedup
//! and free-space limit, broken slots, the bearer scheme and the cross-origin check.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::serve::*;
use flora::track::slots::{Registry, Slot};

const INDEX: &str = flora::serving::collect::INDEX_DIR;

/// Connects to the server without sending anything.
fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the peer closes (or `limit` passes): (bytes read, closed by the peer, time).
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (out, false, start.elapsed());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true, start.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false, start.elapsed());
            }
            // A reset is a close too.
            Err(_) => return (out, true, start.elapsed()),
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length from a kept-alive connection: (status,
/// body), or None when nothing came within `limit`.
fn read_response(s: &mut TcpStream, limit: Duration) -> Option<(u16, String)> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[test]
fn explanations_run_one_at_a_time() {
    let dir = slotted_project(
        "[serve]\nmax_body_bytes = 67108864\nmax_image_megapixels = 400\nmax_decode_bytes = 2000000000\n",
    );
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let explain = |url: String, png: Vec<u8>| {
        let mut r = agent()
            .post(&url)
            .header("Content-Type", "image/png")
            .send(&png[..])
            .unwrap();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            ctype,
            r.body_mut().read_to_vec().unwrap(),
        )
    };
    let (url, big) = (server.url("/explain"), big_png(6000));
    let first = std::thread::spawn(move || explain(url, big));
    // While its decode runs, it holds the one explanation slot.
    let start = Instant::now();
    while samples_with(&server, "flora_decodes_running", &[]) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the first explanation never decoded"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, body) = server.post("/explain", "image/png", &bag_png(), None);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("another explanation"),
        "{body}"
    );
    let (status, ctype, png) = first.join().unwrap();
    assert_eq!((status, ctype.as_deref()), (200, Some("image/png")));
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 512);
    // Once it is done, the next one runs.
    let (status, _, png) = explain(server.url("/explain"), bag_png());
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 256);
}

fn samples_with(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(server), name, labels)
}

#[test]
fn client_methods_and_paths_do_not_make_new_metric_series() {
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    for (method, path) in [
        ("FOOBAR1", "/health"),
        ("FOOBAR2", "/no/such/path/12345"),
        ("BREW", "/predict"),
    ] {
        let mut s = connect(&server);
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (resp, closed, _) = read_to_close(&mut s, Duration::from_secs(10));
        assert!(closed, "{method} {path} got no complete answer");
        assert!(resp.starts_with(b"HTTP/1.1 4"), "{method} {path}");
    }
    let samples = scrape(&server);
    let methods: std::collections::BTreeSet<_> = samples
        .iter()
        .filter_map(|(_, l, _)| l.get("method").cloned())
        .collect();
    let routes: std::collections::BTreeSet<_> = samples
        .iter()
        .filter_map(|(_, l, _)| l.get("route").cloned())
        .collect();
    for m in &methods {
        assert!(
            ["GET", "POST", "HEAD", "other"].contains(&m.as_str()),
            "method label {m:?} is not from the fixed set: {methods:?}"
        );
    }
    for r in &routes {
        assert!(
            [
                "/",
                "/health",
                "/models",
                "/metrics",
                "/predict",
                "/admin/switch-model",
                "other"
            ]
            .contains(&r.as_str()),
            "route label {r:?} is not from the fixed set: {routes:?}"
        );
    }
    assert_eq!(
        value(
            &samples,
            "flora_http_requests_total",
            &[("method", "other")]
        ),
        3.0
    );
}

#[test]
fn stalled_headers_bodies_and_idle_connections_are_closed() {
    let dir = slotted_project("[serve]\nstall_timeout_secs = 1\nrequest_timeout_secs = 60\n");
    let server = Server::start(dir.path(), None, &[]);
    let limit = Duration::from_secs(10);

    // Half the headers, then nothing.
    let mut s = connect(&server);
    s.write_all(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .unwrap();
    let (_, closed, took) = read_to_close(&mut s, limit);
    assert!(closed, "a connection stalled in its headers stayed open");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "closed late: {took:?}");

    // Nothing at all (an idle connection).
    let mut s = connect(&server);
    let (_, closed, took) = read_to_close(&mut s, limit);
    assert!(closed, "an idle connection stayed open");
    assert!(took < Duration::from_secs(4), "closed late: {took:?}");

    // Whole headers, part of the body, then nothing: 408, then closed.
    let png = bag_png();
    let mut s = connect(&server);
    write!(
        s,
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .unwrap();
    s.write_all(&png[..png.len() / 2]).unwrap();
    let (resp, closed, took) = read_to_close(&mut s, limit);
    let resp = String::from_utf8_lossy(&resp);
    assert!(closed, "a stalled upload stayed open: {resp}");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "closed late: {took:?}");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("stall_timeout_secs"), "{resp}");

    // The server is fine and counted them.
    let samples = scrape(&server);
    assert!(
        value(
            &samples,
            "flora_failures_total",
            &[("reason", "header_timeout")]
        ) >= 2.0
    );
    assert_eq!(
        value(
            &samples,
            "flora_failures_total",
            &[("reason", "body_stalled")]
        ),
        1.0
    );
    let (status, _) = server.predict_multipart(&png, "x.png", "");
    assert_eq!(status, 200);
}

#[test]
fn a_trickling_upload_is_cut_at_the_request_deadline() {
    let dir = slotted_project("[serve]\nstall_timeout_secs = 30\nrequest_timeout_secs = 2\n");
    let server = Server::start(dir.path(), None, &[]);
    let png = bag_png();
    let mut s = connect(&server);
    write!(
        s,
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .unwrap();
    // One byte every 200 ms: never stalled, never done.
    let start = Instant::now();
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for b in &png[..png.len() / 2] {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let (rest, _, _) = read_to_close(&mut s, Duration::from_secs(5));
    answer.extend_from_slice(&rest);
    let took = start.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{took:?}: {answer}");
    assert!(answer.contains("request_timeout_secs"), "{answer}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let dir = slotted_project("[serve]\nmax_connections = 2\nstall_timeout_secs = 30\n");
    let server = Server::start(dir.path(), None, &[]);
    let get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // Two kept-alive connections, each served once: they hold the two places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&server);
        s.write_all(get).unwrap();
        let (status, _) = read_response(&mut s, Duration::from_secs(10)).expect("served");
        assert_eq!(status, 200);
        held.push(s);
    }
    // A third one is not served while they are open...
    let mut third = connect(&server);
    third.write_all(get).unwrap();
    assert!(
        read_response(&mut third, Duration::from_millis(1500)).is_none(),
        "a connection beyond serve.max_connections was served"
    );
    // ...and is served as soon as one closes.
    drop(held.remove(0));
    let start = Instant::now();
    let (status, _) =
        read_response(&mut third, Duration::from_secs(5)).expect("served once a connection closed");
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn sigterm_with_a_stalled_upload_exits_within_the_deadline() {
    let dir = slotted_project(
        "[serve]\nstall_timeout_secs = 60\nrequest_timeout_secs = 120\nshutdown_timeout_secs = 1\n",
    );
    let mut server = Server::start(dir.path(), None, &[]);
    let mut s = connect(&server);
    s.write_all(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "no exit 8 s after SIGTERM with a stalled upload:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.log().contains("still busy"), "{}", server.log());
}

#[test]
fn a_client_that_leaves_does_not_free_its_decode_slot() {
    let dir = slotted_project(
        "[serve]\nmax_decodes = 1\nmax_body_bytes = 67108864\nmax_image_megapixels = 400\nmax_decode_bytes = 2000000000\n",
    );
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let png = big_png(6000);
    // Four uploads; client i leaves (i + 1) * 100 ms after sending, while decodes run.
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            let port = server.port();
            let png = png.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(
                    s,
                    "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                    png.len()
                )
                .unwrap();
                s.write_all(&png).unwrap();
                std::thread::sleep(Duration::from_millis(100 * (i + 1)));
                drop(s);
            })
        })
        .collect();
    let start = Instant::now();
    let mut peak = 0.0f64;
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(4) {
        let running = samples_with(&server, "flora_decodes_running", &[]);
        peak = peak.max(running);
        seen.push(running);
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in clients {
        c.join().unwrap();
    }
    assert!(peak >= 1.0, "no decode was seen running: {seen:?}");
    assert_eq!(
        peak, 1.0,
        "more decodes ran at once than serve.max_decodes = 1: {seen:?}"
    );
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn repeats_are_collected_once_even_across_servers() {
    let dir = slotted_project("");
    let one = Server::start(dir.path(), None, &[]);
    let two = Server::start(dir.path(), None, &[]);
    let png = bag_png();
    let (status, a) = one.predict_multipart(&png, "first.png", "");
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["collection"], "saved", "{a}");
    let saved = dir.path().join(a["data_collected_at"].as_str().unwrap());
    // Named by content: <first 32 hex of sha256>.png in a dated folder, with its sidecar.
    let sha = flora::util::fingerprint::hex(&flora::util::fingerprint::sha256(&png));
    assert_eq!(name_of(&saved), format!("{}.png", &sha[..32]));
    let side = flora::serving::collect::read_sidecar(&saved).expect("sidecar");
    assert_eq!(side.sha256, sha);
    assert_eq!(side.client_filename.as_deref(), Some("first.png"));

    // The same bytes through the other server: answered, not stored; the sidecar unchanged.
    let (status, b) = two.predict_multipart(&png, "second.png", "");
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["collection"], "duplicate", "{b}");
    assert!(b["data_collected_at"].is_null(), "{b}");
    assert_eq!(b["prediction"], a["prediction"]);
    let side = flora::serving::collect::read_sidecar(&saved).expect("sidecar");
    assert_eq!(side.client_filename.as_deref(), Some("first.png"));
    // Other bytes are stored.
    let (_, test) = fashion_mnist();
    let other = std::fs::read(
        std::fs::read_dir(test.join("trouser"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let (_, c) = two.predict_multipart(&other, "other.png", "");
    assert_eq!(c["collection"], "saved", "{c}");
    let images: Vec<_> = walk(&dir.path().join("collected_data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert_eq!(
        samples_with(
            &two,
            "flora_collection_skipped_total",
            &[("reason", "duplicate")]
        ),
        1.0
    );
    assert_eq!(samples_with(&two, "flora_collected_images_total", &[]), 1.0);
    // merge still takes both (the index folder is hidden from it).
    std::fs::create_dir_all(dir.path().join("dataset")).unwrap();
    let out = ok(dir.path(), &["merge", "--dry-run"]);
    let rows: Vec<_> = out.lines().filter(|l| l.contains("  ->  ")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(!out.contains(INDEX), "{out}");
}

#[test]
fn collection_stops_below_the_free_space_minimum() {
    let dir = slotted_project("[serve]\ncollect_min_free_bytes = 1000000000000000000\n");
    let server = Server::start(dir.path(), None, &[]);
    let (status, j) = server.predict_multipart(&bag_png(), "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["collection"], "low_disk", "{j}");
    assert!(j["data_collected_at"].is_null(), "{j}");
    assert!(walk(&dir.path().join("collected_data")).is_empty());
    assert_eq!(
        samples_with(
            &server,
            "flora_collection_skipped_total",
            &[("reason", "low_disk")]
        ),
        1.0
    );
    wait_for("the low-disk warning", || {
        server.log().contains("collect_min_free_bytes")
    });
}

/// Breaks the bundle in `slot` (its bundle.json no longer parses).
fn break_slot(dir: &std::path::Path, slot: Slot) {
    let reg = Registry::new(dir.join("models"));
    let version = reg.resolve(slot).unwrap().expect("slot filled");
    std::fs::write(version.join("bundle.json"), b"{ not json").unwrap();
}

#[test]
fn a_broken_standby_slot_is_skipped_retried_slowly_and_never_made_live() {
    let dir = slotted_project("");
    break_slot(dir.path(), Slot::Green);
    let server = Server::start(dir.path(), Some(TOKEN), &[]);
    let png = bag_png();
    let (status, j) = server.predict_multipart(&png, "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["model_used"], "blue");

    // A switch to the broken slot fails and leaves LIVE and the history alone.
    let reg = Registry::new(dir.path().join("models"));
    let history = reg.history().unwrap().len();
    let (status, j) = server.switch("green", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 409, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("cannot be loaded"),
        "{j}"
    );
    assert_eq!(reg.live().unwrap(), Some(Slot::Blue));
    assert_eq!(reg.history().unwrap().len(), history);
    assert_eq!(
        server.predict_multipart(&png, "x.png", "").1["model_used"],
        "blue"
    );

    // Retries back off: at 250 ms polls, 3.5 s would log ~14 failures.
    std::thread::sleep(Duration::from_millis(3500));
    let tries = server.log().matches("slot green cannot be loaded").count();
    assert!((1..=4).contains(&tries), "{tries} tries:\n{}", server.log());

    // The bearer scheme is matched in any case.
    let (status, j) = server.switch("blue", Some(&format!("bearer {TOKEN}")));
    assert_eq!(status, 200, "{j}");
}

#[test]
fn a_broken_live_slot_is_a_clear_start_error() {
    let dir = slotted_project("");
    break_slot(dir.path(), Slot::Blue);
    let err = fails(dir.path(), &["serve", "--port", &free_port().to_string()]);
    assert!(err.contains("live slot blue cannot be loaded"), "{err}");
    assert!(err.contains("flora promote --live green"), "{err}");
}

#[test]
fn cross_origin_posts_are_refused() {
    let dir = slotted_project(
        "[serve]\nallowed_origins = [\"https://app.example.org\"]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let server = Server::start(dir.path(), Some(TOKEN), &[]);
    let png = bag_png();
    let (ct, body) = multipart("file", "x.png", &png);
    let post = |headers: &[(&str, &str)]| server.post_with("/predict", &ct, &body, headers);

    let (status, j) = post(&[("Origin", "https://evil.example")]);
    assert_eq!(status, 403, "{j}");
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains("allowed_origins") && msg.contains("evil.example"),
        "{j}"
    );
    assert!(
        !dir.path().join("collected_data").exists(),
        "nothing collected"
    );
    let own = format!("http://127.0.0.1:{}", server.port());
    for headers in [
        vec![],
        vec![("Origin", own.as_str())],
        vec![("Origin", "https://app.example.org")],
        vec![
            ("Origin", "https://flora.example.org"),
            ("X-Forwarded-Host", "flora.example.org"),
        ],
    ] {
        let (status, j) = post(&headers);
        assert_eq!(status, 200, "{headers:?}: {j}");
    }
    // The admin endpoint too, even with the right token.
    let (status, j) = server.post_with(
        "/admin/switch-model?color=green",
        "application/x-www-form-urlencoded",
        b"",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &format!("Bearer {TOKEN}")),
        ],
    );
    assert_eq!(status, 403, "{j}");
    assert_eq!(
        Registry::new(dir.path().join("models")).live().unwrap(),
        Some(Slot::Blue)
    );
}
