//! `flora label` under pressure, over plain HTTP on the real binary: clients that leave while
//! an explanation runs, split folder names offered as classes, files swapped for symlinks
//! after the start, a merge holding the inbox, and the grid's thumbnails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::label::{INBOX, Label, inbox_project};
use crate::support::serve::bundles;
use serde_json::{Value, json};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn get(base: &str, path: &str) -> (u16, Vec<u8>, Option<String>) {
    let mut r = agent().get(&format!("{base}{path}")).call().unwrap();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap(),
        ctype,
    )
}

fn state(base: &str) -> Value {
    let (status, body, _) = get(base, "/api/state");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// POSTs a decision: (status, Retry-After, body).
fn decide(base: &str, body: Value) -> (u16, Option<String>, String) {
    let mut r = agent()
        .post(&format!("{base}/api/decide"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        retry,
        r.body_mut().read_to_string().unwrap(),
    )
}

/// The queued items' paths.
fn paths(s: &Value) -> Vec<String> {
    s["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect()
}

/// Six clients ask for the explanation of a large photo and leave before it comes: the
/// permit stays with the computation, so at most one occlusion map ever runs (the page's own
/// count says so), the others are answered 503, and once it ends the next one runs.
#[test]
fn clients_that_leave_never_get_two_explanations_running() {
    let (_, model, _, _, _) = bundles();
    let dir = inbox_project(1, None);
    let p = dir.path();
    std::fs::write(p.join(INBOX).join("big.png"), big_png(6000)).unwrap();
    let model_arg = model.to_string_lossy().into_owned();
    let label = Label::start(p, &["--model", &model_arg], None);
    let base = label.base();
    let addr = base.trim_start_matches("http://").to_string();
    let big = format!("{}/big.png", INBOX.trim_start_matches("dataset/"));
    assert!(paths(&state(&base)).contains(&big));
    let started = |s: &Value| s["explanations"]["started"].as_u64().unwrap();
    let mut answered_busy = 0;
    for _ in 0..6 {
        let before = started(&state(&base));
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /api/explain?path={} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            big.replace('/', "%2F")
        )
        .unwrap();
        // Leave once this request's map has started, or once it was answered (busy).
        s.set_nonblocking(true).unwrap();
        let start = Instant::now();
        loop {
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf)
                && n > 0
            {
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(head.starts_with("HTTP/1.1 503"), "{head}");
                answered_busy += 1;
                break;
            }
            if started(&state(&base)) > before {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the explanation neither started nor was refused"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(s);
    }
    // Every map that started runs to its end.
    let start = Instant::now();
    while state(&base)["explanations"]["running"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "maps never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = state(&base);
    assert_eq!(
        s["explanations"]["most_at_once"], 1,
        "more than one occlusion map ran at once: {}",
        s["explanations"]
    );
    assert!(answered_busy >= 1, "no request found the map running");
    assert_eq!(started(&s) + answered_busy, 6, "{}", s["explanations"]);
    // Once it has ended, the next explanation runs.
    let (status, png, ctype) = get(&base, &format!("/api/explain?path={big}"));
    assert_eq!((status, ctype.as_deref()), (200, Some("image/png")));
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 512);
}

/// `train`, `val` and `test` are split folders, never classes: the page does not offer them
/// (even where the dataset has a `test/` folder), a decision into one is refused with the
/// reason, and with `train/` + `test/` the class folders are under `train/`.
#[test]
fn split_folder_names_are_not_classes() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let ds = p.join("dataset");
    // The held-out set beside the class folders.
    std::fs::create_dir_all(ds.join("test/bag")).unwrap();
    let any_bag = std::fs::read_dir(ds.join("bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&any_bag, ds.join("test/bag/held.png")).unwrap();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let s = state(&base);
    let classes: Vec<&str> = s["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(classes.contains(&"bag"), "{classes:?}");
    assert!(
        !classes
            .iter()
            .any(|c| ["train", "val", "test"].contains(&c.to_ascii_lowercase().as_str())),
        "split folders offered as classes: {classes:?}"
    );
    let item = paths(&s)[0].clone();
    for class in ["train", "val", "test", "Test"] {
        let (status, _, body) = decide(
            &base,
            json!({"paths": [item], "action": "class", "class": class}),
        );
        assert_eq!(status, 400, "{class}: {body}");
        assert!(body.contains("cannot be a class"), "{body}");
    }
    assert!(ds.join(&item).is_file(), "nothing moved");
    assert!(!ds.join("train").exists() && !ds.join("val").exists());
    drop(label);

    // train/ + test/: the classes live under train/, and a decision lands there.
    std::fs::create_dir(ds.join("train")).unwrap();
    for class in CLASSES {
        std::fs::rename(ds.join(class), ds.join("train").join(class)).unwrap();
    }
    let label = Label::start(p, &[], None);
    let base = label.base();
    let s = state(&base);
    assert!(
        !s["classes"].as_array().unwrap().contains(&json!("train")),
        "{}",
        s["classes"]
    );
    let item = paths(&s)[0].clone();
    let (status, _, body) = decide(
        &base,
        json!({"paths": [item], "action": "class", "class": "bag"}),
    );
    assert_eq!(status, 200, "{body}");
    let name = item.rsplit('/').next().unwrap();
    assert!(ds.join("train/bag").join(name).is_file(), "{body}");
    drop(label);

    // A `val/` folder among class folders is a clear error, not a class.
    let other = project(3, 1);
    let op = other.path();
    std::fs::create_dir_all(op.join("dataset/val")).unwrap();
    std::fs::copy(ds.join("test/bag/held.png"), op.join("dataset/val/x.png")).unwrap();
    let err = fails(op, &["train"]);
    assert!(err.contains("val/") && err.contains("not classes"), "{err}");
}

/// A queued image swapped after the start for a symlink (to a private file, to `/dev/zero`),
/// a FIFO or a folder whose parent became a symlink is refused quickly, never followed; an
/// inbox that was a symlink before the start is served.
#[test]
fn a_queued_image_swapped_for_a_symlink_is_refused() {
    let dir = inbox_project(2, None);
    let p = dir.path();
    let secret = p.join("secret.txt");
    std::fs::write(&secret, "PRIVATE KEY MATERIAL").unwrap();
    // One image in a subfolder of the inbox (as merge sorts them with a model).
    let loose = std::fs::read_dir(p.join(INBOX))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.extension().is_some_and(|x| x == "png"))
        .unwrap();
    std::fs::create_dir(p.join(INBOX).join("sub")).unwrap();
    std::fs::rename(&loose, p.join(INBOX).join("sub/in-sub.png")).unwrap();
    // The inbox lives on another disk behind a symlink made before the start: that is fine.
    std::fs::rename(p.join(INBOX), p.join("inbox-disk")).unwrap();
    std::os::unix::fs::symlink(p.join("inbox-disk"), p.join(INBOX)).unwrap();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let items = paths(&state(&base));
    let q = |path: &str| format!("/api/image?path={}", path.replace('/', "%2F"));
    let top: Vec<&String> = items.iter().filter(|i| !i.contains("/sub/")).collect();
    let (first, second, third) = (top[0], top[1], top[2]);
    for it in [first, second, third] {
        let (status, bytes, ctype) = get(&base, &q(it));
        assert_eq!((status, ctype.as_deref()), (200, Some("image/png")), "{it}");
        assert!(image::load_from_memory(&bytes).is_ok());
    }
    let file = |it: &str| p.join("dataset").join(it);
    std::fs::remove_file(file(first)).unwrap();
    std::os::unix::fs::symlink(&secret, file(first)).unwrap();
    std::fs::remove_file(file(second)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", file(second)).unwrap();
    std::fs::remove_file(file(third)).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(file(third))
            .status()
            .unwrap()
            .success()
    );
    for (it, what) in [
        (first, "symbolic link"),
        (second, "symbolic link"),
        (third, "regular file"),
    ] {
        let start = Instant::now();
        let (status, bytes, _) = get(&base, &q(it));
        let body = String::from_utf8_lossy(&bytes);
        assert_eq!(status, 404, "{it}: {body}");
        assert!(body.contains(what), "{it}: {body}");
        assert!(!body.contains("PRIVATE"), "{body}");
        assert!(start.elapsed() < Duration::from_secs(5), "{it} took long");
    }
    // A folder above a queued image swapped for a symlink to a folder outside the dataset.
    let item = "_UNLABELED_SORT_ME/sub/in-sub.png";
    assert!(items.iter().any(|i| i == item), "{items:?}");
    assert_eq!(get(&base, &q(item)).0, 200);
    let sub = file(item).parent().unwrap().to_path_buf();
    let outside = p.join("outside");
    std::fs::rename(&sub, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &sub).unwrap();
    let (status, bytes, _) = get(&base, &q(item));
    let body = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 404, "{item}: {body}");
    assert!(body.contains("outside the dataset"), "{body}");
    assert!(label_alive(&base));
}

fn label_alive(base: &str) -> bool {
    get(base, "/api/state").0 == 200
}

/// While `flora merge` holds the inbox's lock, a decision or an undo is answered 409 with
/// Retry-After and "merge running, try again"; once the lock is free the same one succeeds.
#[test]
fn a_decision_during_a_merge_is_told_to_retry() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let item = paths(&state(&base))[0].clone();
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p.join(INBOX).join(".merge/lock"))
        .unwrap();
    lock.lock().unwrap();
    let body = json!({"paths": [item], "action": "class", "class": "bag"});
    let (status, retry, text) = decide(&base, body.clone());
    assert_eq!(status, 409, "{text}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert!(text.contains("merge running, try again"), "{text}");
    assert!(p.join("dataset").join(&item).is_file(), "nothing moved");
    lock.unlock().unwrap();
    let (status, _, text) = decide(&base, body);
    assert_eq!(status, 200, "{text}");
    lock.lock().unwrap();
    let mut r = agent()
        .post(&format!("{base}/api/undo"))
        .send(&b""[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("merge running")
    );
    lock.unlock().unwrap();
}

/// The grid's images are JPEG thumbnails no longer than asked, upright, made from the file.
#[test]
fn the_grid_gets_downscaled_thumbnails() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let wide = image::RgbImage::from_fn(1200, 600, |x, _| image::Rgb([(x % 256) as u8, 90, 40]));
    wide.save(p.join(INBOX).join("wide.png")).unwrap();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let wide = format!("{}/wide.png", INBOX.trim_start_matches("dataset/"));
    let (status, bytes, ctype) = get(&base, &format!("/api/image?side=256&path={wide}"));
    assert_eq!((status, ctype.as_deref()), (200, Some("image/jpeg")));
    let thumb = image::load_from_memory(&bytes).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 128));
    // Small images are never enlarged; a side out of range is refused.
    let small = paths(&state(&base))
        .into_iter()
        .find(|i| i != &wide)
        .unwrap();
    let (status, bytes, _) = get(&base, &format!("/api/image?side=256&path={small}"));
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 28);
    let (status, _, _) = get(&base, &format!("/api/image?side=99999&path={small}"));
    assert_eq!(status, 400);
    // A phone photo stored turned (EXIF orientation 6) comes back upright, as the original.
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photos");
    drop(label);
    std::fs::copy(
        photos.join("oriented/flower-6.jpg"),
        p.join(INBOX).join("turned.jpg"),
    )
    .unwrap();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let turned = format!("{}/turned.jpg", INBOX.trim_start_matches("dataset/"));
    let (status, bytes, _) = get(&base, &format!("/api/image?side=160&path={turned}"));
    assert_eq!(status, 200);
    let thumb = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let upright = image::open(photos.join("upright/flower.jpg"))
        .unwrap()
        .to_rgb8();
    let expect = image::imageops::thumbnail(&upright, thumb.width(), thumb.height());
    assert_eq!(thumb.width().max(thumb.height()), 160);
    assert_eq!(
        upright.width() > upright.height(),
        thumb.width() > thumb.height(),
        "the thumbnail is not upright"
    );
    let diff: f64 = thumb
        .as_raw()
        .iter()
        .zip(expect.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / thumb.as_raw().len() as f64;
    assert!(
        diff < 12.0,
        "mean pixel difference {diff} from the upright photo"
    );
}

/// Beyond loopback the page has its own token (`label.token` or `FLORA_LABEL_TOKEN`): the
/// admin token alone does not start it nor open it, and the two may not be the same.
#[test]
fn the_page_has_its_own_token_not_the_admin_one() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let config = p.join("flora.toml");
    let base_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{base_config}\n[serve]\nadmin_token = \"admin-secret\"\n"),
    )
    .unwrap();
    let err = fails(p, &["label", "--host", "0.0.0.0", "--port", "0"]);
    assert!(
        err.contains("FLORA_LABEL_TOKEN") && err.contains("[label]"),
        "{err}"
    );
    std::fs::write(
        &config,
        format!(
            "{base_config}\n[serve]\nadmin_token = \"admin-secret\"\n[label]\ntoken = \"admin-secret\"\n"
        ),
    )
    .unwrap();
    let err = fails(p, &["label", "--host", "0.0.0.0", "--port", "0"]);
    assert!(err.contains("pick another one"), "{err}");
    std::fs::write(
        &config,
        format!(
            "{base_config}\n[serve]\nadmin_token = \"admin-secret\"\n[label]\ntoken = \"page-secret\"\n"
        ),
    )
    .unwrap();
    let label = Label::start(p, &["--host", "0.0.0.0"], None);
    assert!(label.url.ends_with("?token=LABEL_TOKEN"), "{}", label.url);
    let port = label.base().rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/api/state");
    let status = |auth: &str| {
        agent()
            .get(&url)
            .header("Authorization", auth)
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        status("Bearer admin-secret"),
        401,
        "the admin token opens the page"
    );
    assert_eq!(status("Bearer page-secret"), 200);
    let (code, _, _) = get(&format!("http://127.0.0.1:{port}"), "/?token=admin-secret");
    assert_eq!(code, 401, "no cookie for the admin token");
}

/// A second `flora label` on the same dataset is refused while the first runs, naming it;
/// once the first has ended, a new session starts.
#[test]
fn a_second_session_on_the_same_dataset_is_refused() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let first = Label::start(p, &["--user", "ana"], None);
    let err = fails(p, &["label", "--port", "0", "--user", "ben"]);
    assert!(
        err.contains("another flora label is sorting this dataset") && err.contains("user ana"),
        "{err}"
    );
    first.stop();
    let second = Label::start(p, &["--user", "ben"], None);
    assert_eq!(state(&second.base())["user"], "ben");
}

/// A grid accept of 20,000 images is one request that stays linear: it and its undo finish in
/// seconds (a quadratic look-up took 10 s for the accept alone on a 2-core machine).
#[test]
fn a_grid_accept_of_20000_images_stays_fast() {
    let dir = project(2, 1);
    let p = dir.path();
    let inbox = p.join(INBOX);
    std::fs::create_dir_all(&inbox).unwrap();
    let png = crate::support::serve::bag_png();
    let paths: Vec<String> = (0..20_000)
        .map(|i| {
            std::fs::write(inbox.join(format!("g{i:05}.png")), &png).unwrap();
            format!("_UNLABELED_SORT_ME/g{i:05}.png")
        })
        .collect();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let start = Instant::now();
    let (status, _, body) = decide(
        &base,
        json!({"paths": paths, "action": "class", "class": "bag"}),
    );
    let accept = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&base)["done"], 20_000);
    let start = Instant::now();
    let mut r = agent()
        .post(&format!("{base}/api/undo"))
        .send(&b""[..])
        .unwrap();
    let undo = start.elapsed();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(state(&base)["done"], 0);
    assert!(inbox.join("g19999.png").is_file());
    assert!(
        accept < Duration::from_secs(6) && undo < Duration::from_secs(8),
        "accept {accept:?}, undo {undo:?}"
    );
}
