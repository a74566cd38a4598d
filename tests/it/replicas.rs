//! Many replicas on shared slots: three `flora serve` processes on one project folder (as on a
//! ReadWriteMany volume) behind a real HAProxy, under a throttled load. `flora promote --live
//! green` from the CLI reaches every replica within 2 s with no failed request; the uploads of
//! the three never collide; a `flora merge` run meanwhile takes each exactly once; the request
//! id a proxy sends comes back and lands in the replica's JSON access log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::serve::*;

/// HAProxy in front of `backends` (ports), round robin with /health checks; killed on drop.
struct HaProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    fn start(binary: &Path, backends: &[u16]) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend web\n  bind 127.0.0.1:{port}\n  unique-id-format %{{+X}}o%ci%cp%Ts%rt\n  \
             http-request set-header X-Request-Id %[unique-id]\n  default_backend flora\n\
             backend flora\n  balance roundrobin\n  option httpchk GET /health\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server r{i} 127.0.0.1:{b} check inter 500ms\n"));
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let check = Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy");
        let h = HaProxy {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while agent()
            .get(&format!("http://127.0.0.1:{port}/health"))
            .call()
            .map_or(true, |r| r.status() != 200)
        {
            assert!(start.elapsed() < Duration::from_secs(20), "haproxy not up");
            std::thread::sleep(Duration::from_millis(100));
        }
        h
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A distinct real image for request `i`: the bag photo with one pixel changed.
fn distinct_png(base: &image::GrayImage, i: usize) -> Vec<u8> {
    let mut img = base.clone();
    let (w, h) = img.dimensions();
    let p = (i as u32) % (w * h);
    let px = img.get_pixel_mut(p % w, p / w);
    px.0[0] = px.0[0].wrapping_add(1 + (i / (w * h) as usize) as u8);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn sha256_hex(bytes: &[u8]) -> String {
    flora::util::fingerprint::hex(&flora::util::fingerprint::sha256(bytes))
}

#[test]
fn three_replicas_switch_together_and_share_collected_data() {
    let Some(haproxy) = outside_program(
        Path::new("/usr/sbin/haproxy"),
        "haproxy",
        "install it with: apt-get install haproxy",
    ) else {
        return;
    };
    let dir = slotted_project("");
    let p = dir.path().to_path_buf();
    let replicas: Vec<Server> = (0..3).map(|_| Server::start(&p, None, &[])).collect();
    let lb = HaProxy::start(
        &haproxy,
        &replicas.iter().map(Server::port).collect::<Vec<_>>(),
    );
    let lb_url = format!("http://127.0.0.1:{}/predict", lb.port);

    // The request id HAProxy sets comes back, and the replica that answered logs it.
    let mut r = agent()
        .post(&lb_url)
        .header("Content-Type", "image/png")
        .send(&bag_png())
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r
        .headers()
        .get("x-request-id")
        .expect("X-Request-Id in the response")
        .to_str()
        .unwrap()
        .to_string();
    let _ = r.body_mut().read_to_string();
    wait_for("the access log line", || {
        replicas.iter().any(|s| {
            s.access_log()
                .iter()
                .any(|l| l["request_id"] == rid.as_str())
        })
    });
    let line = replicas
        .iter()
        .flat_map(|s| s.access_log())
        .find(|l| l["request_id"] == rid.as_str())
        .unwrap();
    for key in ["time", "route", "status", "latency_ms", "slot", "class"] {
        assert!(!line[key].is_null(), "{key} missing in {line}");
    }
    assert_eq!(line["route"], "/predict");

    // Throttled load through HAProxy: one client thread, a short pause between requests, so
    // the machine keeps a core for the replicas and the CLI.
    let base = image::load_from_memory(&bag_png()).unwrap().to_luma8();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let load = {
        let (stop, sent, failed, answers, url) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            answers.clone(),
            lb_url.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let png = distinct_png(&base, i);
                i += 1;
                let (ct, body) = multipart("file", "photo.png", &png);
                match agent()
                    .post(&url)
                    .header("Content-Type", &ct)
                    .send(&body[..])
                {
                    Ok(mut r) if r.status() == 200 => {
                        let v: serde_json::Value =
                            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                        sent.lock().unwrap().insert(sha256_hex(&png));
                        answers.lock().unwrap().push((
                            Instant::now(),
                            v["model_used"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(8));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));

    // A merge while uploads keep coming, then the switch from the CLI.
    ok(&p, &["merge"]);
    let switched = Instant::now();
    ok(&p, &["promote", "--live", "green"]);
    for s in &replicas {
        let start = Instant::now();
        loop {
            let (status, v) = s.predict_multipart(&bag_png(), "bag.png", "");
            assert_eq!(status, 200, "{v}");
            if v["model_used"] == "green" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "replica {} still answers {} 2 s after the switch",
                s.base,
                v["model_used"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(switched.elapsed() < Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests under load"
    );
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() >= 50, "only {} requests sent", answers.len());
    let late_blue = answers
        .iter()
        .filter(|(t, slot)| *t > switched + Duration::from_secs(2) && slot == "blue")
        .count();
    assert_eq!(late_blue, 0, "blue answers more than 2 s after the switch");
    for s in replicas {
        s.stop();
    }

    // Every upload was saved once, whichever replica took it, and the two merges (one while
    // the replicas wrote) moved each exactly once.
    ok(&p, &["merge"]);
    let sent = sent.lock().unwrap().clone();
    let inbox = p.join("dataset/_UNLABELED_SORT_ME");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for f in walk(&inbox) {
        let name = name_of(&f);
        if name.ends_with(".png") {
            *seen
                .entry(sha256_hex(&std::fs::read(&f).unwrap()))
                .or_default() += 1;
        }
    }
    for h in &sent {
        assert_eq!(
            seen.get(h),
            Some(&1),
            "upload {h} merged {:?} times",
            seen.get(h)
        );
    }
    let leftover: Vec<_> = walk(&p.join("collected_data"))
        .into_iter()
        .filter(|f| {
            // Not the merged sidecars (`_merged/`) nor serve's dedup records (`.index/`).
            let rel = f.strip_prefix(p.join("collected_data")).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            !first.starts_with(['_', '.']) && !name_of(f).ends_with(".json")
        })
        .collect();
    assert!(leftover.is_empty(), "not merged: {leftover:?}");
}
