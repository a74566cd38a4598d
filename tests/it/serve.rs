//! `flora serve` end to end: the real binary on a random free port, a real HTTP client, real
//! models trained on Fashion-MNIST and installed into the blue/green slots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::serve::*;
use flora::track::slots::{Registry, Slot};
use serde_json::Value;

#[test]
fn predict_via_multipart_and_raw_body_collects_the_upload() {
    let (_, _, _, run_a, _) = bundles();
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let png = bag_png();

    let (status, j) = server.predict_multipart(&png, "../../etc/evil name.png", "?top_k=2");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["model_used"], "blue");
    assert_eq!(j["run_id"], run_a.as_str());
    assert_eq!(j["top_k"].as_array().unwrap().len(), 2);
    let class = j["prediction"]["class"].as_str().unwrap().to_string();
    assert!(CLASSES.contains(&class.as_str()), "{j}");
    let conf = j["prediction"]["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&conf));
    assert_eq!(j["top_k"][0]["class"], class.as_str());

    // The upload and its sidecar are saved under collected_data/YYYY-MM-DD/, named by the
    // server, never by the client.
    let rel = j["data_collected_at"].as_str().unwrap();
    assert!(rel.starts_with("collected_data/"), "{rel}");
    assert!(rel.ends_with(".png"), "{rel}");
    assert!(!rel.contains("evil"), "{rel}");
    let saved = dir.path().join(rel);
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        png,
        "saved bytes match the upload"
    );
    assert_eq!(name_of(saved.parent().unwrap()).len(), 10, "dated folder");
    image::load_from_memory(&std::fs::read(&saved).unwrap()).expect("the saved image decodes");
    let side: Value =
        serde_json::from_str(&std::fs::read_to_string(saved.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(side["client_filename"], "../../etc/evil name.png");
    assert_eq!(side["slot"], "blue");
    assert_eq!(side["run_id"], run_a.as_str());
    assert_eq!(side["predicted_class"], class.as_str());
    assert_eq!(side["bytes"], png.len() as u64);
    assert_eq!(side["top_k"].as_array().unwrap().len(), 2);
    assert!(side["time"].as_str().unwrap().contains('T'));
    let sc = flora::serving::collect::read_sidecar(&saved).expect("the sidecar parses");
    assert_eq!(sc.file, saved.file_name().unwrap().to_str().unwrap());

    // A raw body with Content-Type image/png gives the same answer.
    let (status, r) = server.post("/predict", "image/png", &png, None);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["prediction"]["class"], class.as_str());
    assert_eq!(r["top_k"].as_array().unwrap().len(), 3, "default top_k");
    // The same bytes again are not stored twice; the first upload's sidecar stays.
    assert_eq!(j["collection"], "saved", "{j}");
    assert_eq!(r["collection"], "duplicate", "{r}");
    assert!(r["data_collected_at"].is_null(), "{r}");
    let stored: Vec<_> = walk(&dir.path().join("collected_data"))
        .into_iter()
        .filter(|p| !p.starts_with(dir.path().join("collected_data/.index")))
        .collect();
    assert_eq!(stored.len(), 2, "one image and its sidecar: {stored:?}");

    // The page, the model list and health.
    let (status, page) = server.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("type=\"file\""));
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "no CDN"
    );
    let models = server.get_json("/models");
    assert_eq!(models["live"], "blue");
    assert_eq!(models["slots"]["blue"]["live"], true);
    assert_eq!(models["slots"]["green"]["live"], false);
    assert_eq!(models["slots"]["blue"]["run_id"], run_a.as_str());
    assert!(models["slots"]["green"]["metrics"]["val_accuracy"].is_number());

    // SIGTERM stops it cleanly.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn no_collect_saves_nothing() {
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    let (status, j) = server.predict_multipart(&bag_png(), "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert!(j["data_collected_at"].is_null());
    assert!(!dir.path().join("collected_data").exists());
}

#[test]
fn without_slots_it_serves_the_newest_finished_run() {
    let (_, a, _, run_a, _) = bundles();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), 1, "");
    // A run store with one finished run: copy run a's whole store.
    let src_runs = a.ancestors().nth(4).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(src_runs)
        .arg(dir.path().join("runs"))
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(dir.path(), None, &[]);
    assert!(
        server.log().contains("newest finished run"),
        "{}",
        server.log()
    );
    let (status, j) = server.predict_multipart(&bag_png(), "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["model_used"], "run");
    // The newest of the two runs in that store is b.
    assert_eq!(j["run_id"], bundles().4.as_str());
    server.stop();
    // A deleted run is not served: the newest remaining finished run is.
    ok(dir.path(), &["runs", "delete", bundles().4.as_str()]);
    let server = Server::start(dir.path(), None, &[]);
    let (status, j) = server.predict_multipart(&bag_png(), "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["run_id"], run_a.as_str());
    server.stop();

    // Nothing at all to serve: a clear error.
    let empty = tempfile::tempdir().unwrap();
    write_config(empty.path(), 1, "");
    let err = fails(empty.path(), &["serve", "--port", &free_port().to_string()]);
    assert!(err.contains("nothing to serve"), "{err}");
}

#[test]
fn admin_needs_a_token_and_cli_switches_are_picked_up() {
    let (_, _, b, run_a, run_b) = bundles();
    // No token configured: 403 saying how to enable it.
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let (status, j) = server.switch("green", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 403, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("FLORA_ADMIN_TOKEN"),
        "{j}"
    );
    drop(server);

    // With a token: missing or wrong gets 401, the right one switches.
    let server = Server::start(dir.path(), Some(TOKEN), &[]);
    let (status, j) = server.switch("green", None);
    assert_eq!(status, 401, "{j}");
    let (status, j) = server.switch("green", Some("Bearer wrong"));
    assert_eq!(status, 401, "{j}");
    let (status, j) = server.switch("purple", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 400, "{j}");
    let png = bag_png();
    assert_eq!(
        server.predict_multipart(&png, "x.png", "").1["model_used"],
        "blue"
    );
    let (status, j) = server.switch("green", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["live"], "green");
    assert_eq!(j["previous"], "blue");
    let (_, j) = server.predict_multipart(&png, "x.png", "");
    assert_eq!(j["model_used"], "green");
    assert_eq!(j["run_id"], run_b.as_str());
    // Persisted like `flora promote --live`: LIVE and the history.
    let reg = Registry::new(dir.path().join("models"));
    assert_eq!(reg.live().unwrap(), Some(Slot::Green));
    let last = reg.history().unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.slot.as_str(), last.live.as_str()),
        ("live", "green", "green")
    );
    assert_eq!(last.run_id, run_b.as_str());

    // A switch made with the CLI is picked up.
    ok(dir.path(), &["promote", "--live", "blue"]);
    wait_for("the CLI switch to blue", || {
        server.predict_multipart(&png, "x.png", "").1["model_used"] == "blue"
    });
    // A re-promote into the live slot (run b into blue) too.
    let lock = reg.lock(Duration::from_secs(5)).unwrap();
    reg.install(&lock, Slot::Blue, b, &info(run_b)).unwrap();
    drop(lock);
    wait_for("the re-promoted blue slot", || {
        let j = server.predict_multipart(&png, "x.png", "").1;
        j["model_used"] == "blue" && j["run_id"] == run_b.as_str()
    });
    assert_ne!(run_a, run_b);
    let models = server.get_json("/models");
    assert_eq!(models["slots"]["blue"]["run_id"], run_b.as_str());
}

#[test]
fn zero_downtime_while_switching() {
    let dir = slotted_project("");
    let server = Arc::new(Server::start(dir.path(), Some(TOKEN), &[]));
    let png = Arc::new(bag_png());
    let t0 = Instant::now();
    let run_for = Duration::from_secs(6);
    // Each client records (start, end, status, model_used).
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            let png = png.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while t0.elapsed() < run_for {
                    let start = t0.elapsed();
                    let (status, j) = server.predict_multipart(&png, "x.png", "");
                    let end = t0.elapsed();
                    seen.push((
                        start,
                        end,
                        status,
                        j["model_used"].as_str().unwrap_or("").to_string(),
                        j,
                    ));
                }
                seen
            })
        })
        .collect();
    // Switches: (requested, answered, slot).
    let mut switches = Vec::new();
    let mut slot = "blue";
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..8 {
        slot = if slot == "blue" { "green" } else { "blue" };
        let a = t0.elapsed();
        let (status, j) = server.switch(slot, Some(&format!("Bearer {TOKEN}")));
        let b = t0.elapsed();
        assert_eq!(status, 200, "{j}");
        switches.push((a, b, slot));
        std::thread::sleep(Duration::from_millis(600));
    }
    let mut total = 0;
    let mut by_slot = std::collections::BTreeMap::<String, usize>::new();
    for c in clients {
        for (start, end, status, used, j) in c.join().unwrap() {
            total += 1;
            assert_eq!(status, 200, "a request failed during the switches: {j}");
            *by_slot.entry(used.clone()).or_default() += 1;
            // `used` must have been live at some moment of [start, end]: blue until the first
            // switch answered; each switch's slot from its request to the next one's answer.
            let mut ok = used == "blue" && start <= switches[0].1;
            for (i, (req, _, s)) in switches.iter().enumerate() {
                let until = switches.get(i + 1).map_or(Duration::MAX, |n| n.1);
                if *s == used && *req <= end && start <= until {
                    ok = true;
                }
            }
            assert!(
                ok,
                "{used} answered at {start:?}..{end:?} but was not live then; switches {switches:?}"
            );
        }
    }
    eprintln!(
        "zero downtime: {total} requests, by slot {by_slot:?}, {} switches",
        switches.len()
    );
    assert!(total >= 100, "only {total} requests in {run_for:?}");
    assert!(by_slot.len() == 2, "both slots answered: {by_slot:?}");
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
}

#[test]
fn bad_inputs_get_4xx_and_the_server_stays_healthy() {
    let dir = slotted_project("[serve]\nmax_body_bytes = 200000\n");
    let server = Server::start(dir.path(), None, &[]);
    let png = bag_png();
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(40) {
        *b = 0x5a;
    }
    let truncated = png[..png.len() / 2].to_vec();
    let text = b"hello, this is not an image".to_vec();
    // Fifteen times the limit: the server refuses the body after 200 kB while the client is
    // still writing; its lingering close lets the client finish and read the 413 (a plain
    // close made the kernel reset the connection under the client's writes).
    let oversized = {
        let mut v = png.clone();
        v.resize(3_000_000, 0);
        v
    };
    // A PNG header claiming 100000 x 100000 pixels: refused by the decoder limits.
    let bomb = png_header(100_000, 100_000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("corrupt", corrupt),
        ("empty", Vec::new()),
        ("text", text.clone()),
        ("truncated", truncated),
        ("oversized", oversized),
        ("bomb", bomb),
    ];
    for (name, bytes) in &cases {
        for how in ["multipart", "raw"] {
            let (status, j) = if how == "multipart" {
                server.predict_multipart(bytes, "x.png", "")
            } else {
                server.post("/predict", "image/png", bytes, None)
            };
            assert!(
                (400..500).contains(&status),
                "{name} ({how}) got {status}: {j}"
            );
            assert!(j["error"].is_string(), "{name} ({how}): {j}");
            match *name {
                "oversized" => assert_eq!(status, 413, "{name} ({how}): {j}"),
                "text" => assert_eq!(status, 415, "{name} ({how}): {j}"),
                "bomb" | "truncated" | "corrupt" => assert_eq!(status, 422, "{name} ({how}): {j}"),
                _ => {}
            }
        }
    }
    // A missing field, a text body, a bad query.
    let (ct, body) = multipart("picture", "x.png", &png);
    let (status, j) = server.post("/predict", &ct, &body, None);
    assert_eq!(status, 400, "{j}");
    assert!(j["error"].as_str().unwrap().contains("file"), "{j}");
    let (status, _) = server.post("/predict", "text/plain", &text, None);
    assert_eq!(status, 415);
    // An iPhone's HEIC photo: refused by name, with how to convert it.
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic\0\0\0\0".to_vec();
    let (ct, body) = multipart("file", "IMG_0001.HEIC", &heic);
    let (status, j) = server.post("/predict", &ct, &body, None);
    assert_eq!(status, 415, "{j}");
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains("HEIC") && msg.contains("convert it to JPEG"),
        "{j}"
    );
    let (status, _) = server.predict_multipart(&png, "x.png", "?top_k=lots");
    assert_eq!(status, 400);
    let (status, body) = server.get("/no/such/thing");
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    // Still healthy and still answering; nothing bad was collected.
    assert_eq!(server.get("/health").0, 200);
    let (status, _) = server.predict_multipart(&png, "x.png", "");
    assert_eq!(status, 200);
    let collected: Vec<_> = walk(&dir.path().join("collected_data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e != "json"))
        .collect();
    assert_eq!(collected.len(), 1, "{collected:?}");
}

#[test]
fn metrics_parse_and_move_with_requests() {
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let before = scrape(&server);
    for name in [
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "flora_live_slot",
        "flora_model_info",
        "flora_collected_images_total",
        "flora_collection_failures_total",
        "flora_low_confidence_total",
    ] {
        assert!(before.iter().any(|(n, _, _)| n == name), "{name} missing");
    }
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(value(&before, "flora_live_slot", &[("slot", "blue")]), 1.0);
    assert_eq!(value(&before, "flora_live_slot", &[("slot", "green")]), 0.0);
    assert_eq!(
        value(&before, "flora_model_info", &[("slot", "green")]),
        1.0
    );
    // The accuracy each slot's model scored at promotion, marked live or not.
    assert_eq!(
        value(
            &before,
            "flora_model_accuracy",
            &[("slot", "blue"), ("live", "true")]
        ),
        0.9
    );

    let png = bag_png();
    let mut classes = Vec::new();
    for _ in 0..3 {
        let (status, j) = server.predict_multipart(&png, "x.png", "");
        assert_eq!(status, 200);
        classes.push(j["prediction"]["class"].as_str().unwrap().to_string());
    }
    let _ = server.post("/predict", "text/plain", b"nope", None);
    let after = scrape(&server);
    let d = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        d(
            "flora_http_requests_total",
            &[("route", "/predict"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        d(
            "flora_http_requests_total",
            &[("route", "/predict"), ("status", "415")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "flora_predictions_total",
            &[("slot", "blue"), ("class", &classes[0])]
        ),
        3.0
    );
    // The same bytes three times: saved once, then skipped as duplicates.
    assert_eq!(d("flora_collected_images_total", &[]), 1.0);
    assert_eq!(
        d("flora_collection_skipped_total", &[("reason", "duplicate")]),
        2.0
    );
    assert!(d("flora_failures_total", &[]) >= 1.0);
    assert_eq!(
        d("flora_prediction_confidence", &[]),
        3.0,
        "histogram count"
    );
    assert!(d("flora_inference_duration_seconds", &[]) >= 1.0);
    assert_eq!(
        d(
            "flora_http_request_duration_seconds",
            &[("route", "/predict")]
        ),
        4.0
    );
}

#[test]
fn every_request_gets_an_id_and_an_access_log_line() {
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    // A proxy's id is kept and returned; without one the server makes one.
    let mut r = agent()
        .post(&server.url("/predict"))
        .header("Content-Type", "image/png")
        .header("X-Request-Id", "proxy-42")
        .send(&bag_png())
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "proxy-42");
    let _ = r.body_mut().read_to_string();
    let r = agent().get(&server.url("/health")).call().unwrap();
    let own = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!own.is_empty() && own != "proxy-42");
    wait_for("two access log lines", || server.access_log().len() >= 2);
    let lines = server.access_log();
    let predict = lines
        .iter()
        .find(|l| l["request_id"] == "proxy-42")
        .unwrap();
    assert_eq!(predict["route"], "/predict");
    assert_eq!(predict["method"], "POST");
    assert_eq!(predict["status"], 200);
    assert_eq!(predict["slot"], "blue");
    assert!(predict["class"].is_string() && predict["latency_ms"].is_number());
    assert!(predict["time"].as_str().unwrap().ends_with('Z'));
    let health = lines
        .iter()
        .find(|l| l["request_id"] == own.as_str())
        .unwrap();
    assert_eq!(health["route"], "/health");
    assert!(health["class"].is_null());
}

#[test]
fn a_truncated_jpeg_is_refused_with_422() {
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let jpeg = jpeg_of(&bag_png());
    let (status, body) = server.post("/predict", "image/jpeg", &jpeg[..jpeg.len() * 6 / 10], None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("truncated"),
        "{body}"
    );
    // Nothing was collected from it; the whole JPEG still predicts.
    assert!(walk(&dir.path().join("collected_data")).is_empty());
    let (status, _) = server.post("/predict", "image/jpeg", &jpeg, None);
    assert_eq!(status, 200);
}
