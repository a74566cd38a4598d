//! The pages in a real browser (headless Debian chromium through chromedriver, one session
//! for the whole test process: `tests/it/support/browser.rs`), on real images: `flora label`
//! over an inbox made by `flora merge`, a queue file, and serve's upload page. Plus the label
//! API's refusals of hostile requests, over plain HTTP.

use std::time::Duration;

use crate::support::browser::{Browser, ENTER, browser};
use crate::support::common::*;
use crate::support::label::{INBOX, Label, inbox_project, manifest, tree};
use crate::support::serve::{self, Server, bundles};
use flora::feedback::merge::{Action, Row};
use serde_json::{Value, json};

/// The page's current item.
fn current(b: &Browser) -> Value {
    b.wait_js(
        "a current image",
        "return S.cur && !S.busy && byPath(S.cur)",
    )
}

/// Waits until the page shows `path` as decided; returns its destination (dataset-relative).
fn decided(b: &Browser, path: &str) -> String {
    b.wait_js(
        &format!("{path} decided"),
        &format!(
            "const it = byPath({}); return !S.busy && it.state === 'done' && it.destination",
            json!(path)
        ),
    )
    .as_str()
    .unwrap()
    .to_string()
}

fn pending(b: &Browser, path: &str) {
    b.wait_js(
        &format!("{path} back in the queue"),
        &format!(
            "return !S.busy && byPath({}).state === 'pending'",
            json!(path)
        ),
    );
}

fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

#[test]
fn label_sorts_the_inbox_with_the_keyboard_and_merge_undo_puts_the_batch_back() {
    let Some(b) = browser() else { return };
    let (_, model, _, run_a, _) = bundles();
    let dir = inbox_project(3, Some(model));
    let p = dir.path();
    let before = tree(&p.join("dataset"));
    let waiting = tree(&p.join(INBOX)).len();
    assert_eq!(waiting, 15);
    let model_arg = model.to_string_lossy().into_owned();
    let label = Label::start(p, &["--user", "tester", "--model", &model_arg], None);
    b.open(&label.url);
    b.wait_js("the page", "return document.body.dataset.ready === '1'");
    assert_eq!(b.text("#progress"), format!("0 / {waiting} sorted"));
    // The first image is the one the model is least sure of.
    let margins = b.eval_js("return queue().map(it => it.margin)", json!([]));
    let m: Vec<f64> = margins
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        m.windows(2).all(|w| w[0] <= w[1]),
        "not by uncertainty: {m:?}"
    );
    let first = current(&b);
    assert!(
        b.text("#facts").contains("serve said"),
        "{}",
        b.text("#facts")
    );
    assert_eq!(
        b.eval_js(
            "return document.querySelectorAll('#topk .bar').length",
            json!([])
        ),
        4
    );
    b.shot("label-single");
    // o cycles the order: by date, by suggested class, back to most uncertain first.
    b.key("o");
    assert_eq!(b.eval_js("return S.order", json!([])), "date");
    let dates: Vec<String> =
        serde_json::from_value(b.eval_js("return queue().map(it => it.date)", json!([]))).unwrap();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "{dates:?}");
    b.key("o");
    let sugg: Vec<String> =
        serde_json::from_value(b.eval_js("return queue().map(it => it.suggested)", json!([])))
            .unwrap();
    assert!(sugg.windows(2).all(|w| w[0] <= w[1]), "{sugg:?}");
    // The class info from flora.toml, for a bag.
    assert!(
        b.text("#info").contains("care: wipe clean"),
        "{}",
        b.text("#info")
    );
    b.key("o");
    assert_eq!(b.eval_js("return S.order", json!([])), "uncertainty");
    assert_eq!(current(&b)["path"], first["path"]);

    // Enter accepts the suggestion.
    let path = first["path"].as_str().unwrap().to_string();
    let suggested = first["suggested"].as_str().unwrap().to_string();
    b.key(ENTER);
    let dest = decided(&b, &path);
    assert_eq!(dest, format!("{suggested}/{}", name(&path)));
    assert!(p.join("dataset").join(&dest).is_file() && !p.join("dataset").join(&path).exists());

    // A number key picks another class.
    let it = current(&b);
    let classes: Vec<String> =
        serde_json::from_value(b.eval_js("return shownClasses()", json!([]))).unwrap();
    let i = classes.iter().position(|c| *c != it["suggested"]).unwrap();
    b.key(&(i + 1).to_string());
    let path2 = it["path"].as_str().unwrap().to_string();
    assert_eq!(
        decided(&b, &path2),
        format!("{}/{}", classes[i], name(&path2))
    );

    // n adds a class.
    let path3 = current(&b)["path"].as_str().unwrap().to_string();
    b.key("n");
    b.key("coat");
    b.key(ENTER);
    assert_eq!(decided(&b, &path3), format!("coat/{}", name(&path3)));
    assert!(p.join("dataset/coat").join(name(&path3)).is_file());

    // x rejects (into dataset/_rejected/, nothing deleted), u undoes it.
    let path4 = current(&b)["path"].as_str().unwrap().to_string();
    b.key("x");
    assert_eq!(decided(&b, &path4), format!("_rejected/{}", name(&path4)));
    let rejected = p.join("dataset/_rejected").join(name(&path4));
    assert!(rejected.is_file());
    b.key("u");
    pending(&b, &path4);
    assert!(!rejected.exists() && p.join("dataset").join(&path4).is_file());
    assert_eq!(
        current(&b)["path"],
        path4.as_str(),
        "undo shows the image again"
    );

    // s skips: nothing moves, the next image comes.
    b.key("s");
    b.wait_js(
        "the next image",
        &format!("return S.cur !== {}", json!(path4)),
    );
    assert!(p.join("dataset").join(&path4).is_file());

    // Type-ahead: / then the start of a name, Enter.
    let path5 = current(&b)["path"].as_str().unwrap().to_string();
    b.key("/");
    b.key("snea");
    b.key(ENTER);
    assert_eq!(decided(&b, &path5), format!("sneaker/{}", name(&path5)));

    // e shows why: the heat map, computed on request.
    b.key("e");
    b.wait_js(
        "the heat map",
        "const h = document.getElementById('heat'); return !h.hidden && h.complete && h.naturalWidth > 0",
    );
    b.shot("label-explain");
    b.key("e");

    // The grid of one suggested class: deselect one, accept the rest.
    b.eval_js(
        "const n = {}; queue().forEach(it => n[it.suggested] = (n[it.suggested] || 0) + 1);
         const best = Object.keys(n).sort((a, b) => n[b] - n[a])[0];
         S.cur = queue().find(it => it.suggested === best).path; render();",
        json!([]),
    );
    b.key("g");
    let cells: Vec<String> = serde_json::from_value(b.wait_js(
        "the grid",
        "return !document.getElementById('grid').hidden && gridItems().map(it => it.path)",
    ))
    .unwrap();
    assert!(cells.len() >= 2, "{cells:?}");
    let shown = |id: &str| {
        b.eval_js(
            "return getComputedStyle(document.getElementById(arguments[0])).display",
            json!([id]),
        ) != "none"
    };
    assert!(
        shown("grid") && !shown("single"),
        "the grid replaces the single view"
    );
    b.click("#grid-cells .cell");
    b.shot("label-grid");
    b.key(ENTER);
    let grid_class = b.eval_js("return byPath(arguments[0]).suggested", json!([cells[1]]));
    for c in &cells[1..] {
        assert_eq!(
            decided(&b, c),
            format!("{}/{}", grid_class.as_str().unwrap(), name(c))
        );
    }
    assert_eq!(
        b.eval_js("return byPath(arguments[0]).state", json!([cells[0]])),
        "pending"
    );
    assert!(p.join("dataset").join(&cells[0]).is_file());

    // The mouse: the reject button.
    let path6 = current(&b)["path"].as_str().unwrap().to_string();
    b.click("#reject-btn");
    decided(&b, &path6);

    let done = 3 + 1 + (cells.len() - 1) + 1;
    assert_eq!(b.text("#progress"), format!("{done} / {waiting} sorted"));
    let out = label.stop();
    let batch = out
        .lines()
        .find_map(|l| l.strip_prefix("sorted "))
        .and_then(|l| l.split("in batch ").nth(1))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(
        out.contains(&format!("sorted {done} of {waiting}")),
        "{out}"
    );

    // The manifest: one row per image moved, who and what.
    let rows: Vec<Row> = manifest(p)
        .into_iter()
        .filter(|r| r.batch == batch)
        .collect();
    assert_eq!(rows.len(), done);
    for r in &rows {
        assert_eq!(r.labelled_by, "tester");
        assert!(r.source.starts_with(INBOX), "{r:?}");
        assert!(!r.predicted_class.is_empty() && r.confidence.is_some());
        assert_eq!(r.run_id, *run_a);
        assert!(!r.serve_class.is_empty() && !r.merged_at.is_empty());
        let folder = r.destination.split('/').nth(1).unwrap();
        match r.action {
            Action::Labelled => assert_eq!(folder, r.labelled_class),
            Action::Rejected => assert_eq!(folder, "_rejected"),
            a => panic!("unexpected action {a:?}"),
        }
        assert!(p.join(&r.destination).is_file());
    }
    assert!(
        rows.iter()
            .any(|r| r.labelled_class == "coat" && r.predicted_class != "coat")
    );
    let undone =
        std::fs::read_to_string(p.join(INBOX).join(format!(".merge/{batch}.undone.csv"))).unwrap();
    assert!(undone.contains(name(&path4)), "{undone}");

    // merge --status counts what still waits; merge --undo puts the whole session back.
    let status = ok(p, &["merge", "--status"]);
    assert!(
        status.contains(&format!("{} image(s) waiting", waiting - done)),
        "{status}"
    );
    ok(p, &["merge", "--undo", &batch]);
    assert_eq!(tree(&p.join("dataset")), before);
}

#[test]
fn label_with_a_queue_file_relabels_or_keeps_and_works_without_a_model() {
    let Some(b) = browser() else { return };
    let dir = project(5, 1);
    let p = dir.path();
    let ds = p.join("dataset");
    let file_of = |class: &str| {
        let mut f: Vec<String> = std::fs::read_dir(ds.join(class))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        format!("{class}/{}", f[0])
    };
    let (bag, sneaker) = (file_of("bag"), file_of("sneaker"));
    std::fs::write(
        p.join("audit.csv"),
        format!(
            "path,given,suggested,p_given,p_suggested,score\n{sneaker},sneaker,bag,0.3,0.6,0.5\n{bag},bag,sneaker,0.1,0.8,0.9\n"
        ),
    )
    .unwrap();
    let label = Label::start(p, &["--queue", "audit.csv", "--user", "auditor"], None);
    assert!(label.err.lock().unwrap().contains("no model"));
    b.open(&label.url);
    b.wait_js("the page", "return document.body.dataset.ready === '1'");
    // Highest audit score first; Enter moves it to the suggested class.
    assert_eq!(current(&b)["path"], bag.as_str());
    assert!(
        b.text("#suggestion").contains("labelled bag"),
        "{}",
        b.text("#suggestion")
    );
    b.key(ENTER);
    assert_eq!(decided(&b, &bag), format!("sneaker/{}", name(&bag)));
    assert!(ds.join("sneaker").join(name(&bag)).is_file() && !ds.join(&bag).exists());
    // k keeps the given class: nothing moves.
    assert_eq!(current(&b)["path"], sneaker.as_str());
    b.key("k");
    assert_eq!(decided(&b, &sneaker), sneaker);
    assert!(ds.join(&sneaker).is_file());
    b.shot("label-queue-done");
    let display = b.eval_js(
        "return [getComputedStyle(document.getElementById('done')).display, getComputedStyle(document.getElementById('single')).display]",
        json!([]),
    );
    assert_eq!(
        display,
        json!(["block", "none"]),
        "all sorted: only the note shows"
    );
    let out = label.stop();
    assert!(out.contains("sorted 2 of 2"), "{out}");
    let rows = manifest(p);
    assert_eq!(rows.len(), 1, "a kept image is not moved nor recorded");
    assert_eq!(rows[0].action, Action::Labelled);
    assert_eq!(rows[0].labelled_class, "sneaker");
    assert_eq!(rows[0].predicted_class, "sneaker");
    assert_eq!(rows[0].reason, "relabelled from bag");
    assert_eq!(rows[0].labelled_by, "auditor");
    ok(p, &["merge", "--undo", &rows[0].batch]);
    assert!(ds.join(&bag).is_file());

    // A queue file that names a path outside its class folder, or leaves the dataset.
    for bad in [
        "../flora.toml,bag,sneaker,,,",
        "bag/../../flora.toml,bag,sneaker,,,",
    ] {
        std::fs::write(
            p.join("bad.csv"),
            format!("path,given,suggested,p_given,p_suggested,score\n{bad}\n"),
        )
        .unwrap();
        let err = fails(p, &["label", "--port", "0", "--queue", "bad.csv"]);
        assert!(
            err.contains("bad.csv line 2") && err.contains("not a plain relative path"),
            "{err}"
        );
    }
}

#[test]
fn serve_upload_page_shows_the_top_k_the_slot_and_why() {
    let Some(b) = browser() else { return };
    let dir = serve::slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let (_, test) = fashion_mnist();
    let image = std::fs::read_dir(test.join("bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    b.open(&server.url("/"));
    b.type_into("#file", &image.to_string_lossy());
    b.wait_js(
        "the top-k bars",
        "return document.querySelectorAll('#out .bar').length >= 4",
    );
    let out = b.text("#out");
    assert!(out.contains("answered by blue"), "{out}");
    b.click("#why-btn");
    b.wait_js(
        "the heat map",
        "const h = document.getElementById('why'); return h && h.complete && h.naturalWidth >= 256",
    );
    b.shot("serve-page-why");
    // Only /predict collected the upload; /explain never does, and wants an image.
    let collected = walkdir::WalkDir::new(dir.path().join("collected_data"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    assert_eq!(collected, 1);
    let (status, body) = server.post("/explain", "image/png", b"not an image", None);
    assert_eq!(status, 415, "{body}");
    drop(server);
}

/// Hostile requests to the label API, over plain HTTP: paths outside the inbox, bad class
/// names, a foreign Origin or Host, and a bind beyond loopback without the token.
#[test]
fn label_refuses_hostile_requests() {
    let dir = inbox_project(1, None);
    let p = dir.path();
    let label = Label::start(p, &[], None);
    let base = label.base();
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let get = |path: &str| {
        let mut r = a.get(&format!("{base}{path}")).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let post = |path: &str, body: Value, headers: &[(&str, &str)]| {
        let mut req = a
            .post(&format!("{base}{path}"))
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body.to_string().as_bytes()).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let state: Value = serde_json::from_str(&get("/api/state").1).unwrap();
    assert_eq!(state["explain"], false, "no model");
    let inbox_file = state["items"][0]["path"].as_str().unwrap().to_string();
    assert!(
        inbox_file.starts_with("_UNLABELED_SORT_ME/"),
        "{inbox_file}"
    );
    let in_class = format!(
        "bag/{}",
        std::fs::read_dir(p.join("dataset/bag"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .to_string_lossy()
    );
    for path in [
        "../flora.toml",
        "_UNLABELED_SORT_ME/../../flora.toml",
        "/etc/passwd",
        &in_class,
        "_UNLABELED_SORT_ME/merge.csv",
    ] {
        let q = format!("/api/image?path={}", path.replace('/', "%2F"));
        let (status, body) = get(&q);
        assert_eq!(status, 404, "{path}: {body}");
        let (status, body) = post(
            "/api/decide",
            json!({"paths": [path], "action": "class", "class": "bag"}),
            &[],
        );
        assert_eq!(status, 400, "{path}: {body}");
    }
    for class in ["../evil", "_hidden", "a/b", ".", "", "x\\y"] {
        let (status, body) = post(
            "/api/decide",
            json!({"paths": [inbox_file], "action": "class", "class": class}),
            &[],
        );
        assert_eq!(status, 400, "{class:?}: {body}");
        assert!(body.contains("not a plain folder name"), "{body}");
    }
    let (status, body) = post(
        "/api/decide",
        json!({"paths": [inbox_file], "action": "keep"}),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        "/api/decide",
        json!({"paths": [inbox_file], "action": "class", "class": "bag"}),
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    assert!(
        p.join("dataset").join(&inbox_file).is_file(),
        "nothing moved"
    );
    let (status, body) = get(&format!("/api/explain?path={inbox_file}"));
    assert_eq!(status, 409, "no model: {body}");
    // A name that resolves here but is not this machine's (DNS rebinding) is refused.
    let raw = |host: &str| {
        use std::io::{Read, Write};
        let addr = base.trim_start_matches("http://").to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /api/state HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.lines().next().unwrap_or_default().to_string()
    };
    assert!(
        raw("evil.example:80").contains(" 403 "),
        "{}",
        raw("evil.example:80")
    );
    assert!(raw("localhost").contains(" 200 "), "{}", raw("localhost"));
    // The same origin passes (what the page sends).
    let own = base.clone();
    let (status, body) = post(
        "/api/decide",
        json!({"paths": [inbox_file], "action": "class", "class": "bag"}),
        &[("Origin", &own)],
    );
    assert_eq!(status, 200, "{body}");
    assert!(p.join("dataset/bag").join(name(&inbox_file)).is_file());
    drop(label);

    // Beyond loopback: refused without a token; with one, every request needs it.
    let err = fails(p, &["label", "--host", "0.0.0.0", "--port", "0"]);
    assert!(err.contains("FLORA_LABEL_TOKEN"), "{err}");
    let label = Label::start(p, &["--host", "0.0.0.0"], Some("s3cret"));
    assert!(label.url.ends_with("?token=LABEL_TOKEN"), "{}", label.url);
    let port = label.base().rsplit(':').next().unwrap().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let call = |path: &str, headers: &[(&str, &str)]| {
        let mut req = a.get(&format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.call().unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            cookie,
            r.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(call("/api/state", &[]).0, 401);
    assert_eq!(
        call("/api/state", &[("Authorization", "Bearer nope")]).0,
        401
    );
    assert_eq!(
        call("/api/state", &[("Authorization", "Bearer s3cret")]).0,
        200
    );
    assert_eq!(call("/?token=nope", &[]).0, 401);
    let (status, cookie, _) = call("/?token=s3cret", &[]);
    assert_eq!(status, 303);
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(call("/api/state", &[("Cookie", pair)]).0, 200);
}

/// `flora eval --html` in the browser: the page renders, every thumbnail loads, the matrix
/// shows eval's counts, and clicking a cell opens that cell's images (and only those).
#[test]
fn eval_report_renders_and_its_cells_open_their_images() {
    let Some(b) = browser() else { return };
    let (_dir, _data, out, j) = eval_html_report();
    let page = out.path().join("report.html");
    b.open(&format!("file://{}", page.display()));
    b.wait_js(
        "every image loaded",
        "const im = [...document.images]; \
         return im.length > 0 && im.every(i => i.complete) && im.length",
    );
    let broken = b.eval_js(
        "return [...document.images].filter(i => i.naturalWidth === 0).map(i => i.src)",
        json!([]),
    );
    assert_eq!(broken, json!([]), "images that did not load");

    // The count matrix shows what eval computed.
    let shown = b.eval_js(
        "const n = arguments[0]; const m = [];
         for (let t = 0; t < n; t++) { const row = [];
           for (let q = 0; q < n; q++)
             row.push(Number(document.getElementById(`cm-${t}-${q}`).textContent.trim() || 0));
           m.push(row); }
         return m",
        json!([CLASSES.len()]),
    );
    assert_eq!(shown, j["confusion_matrix"], "the matrix on the page");

    // A mistake cell (else the first diagonal one) opens its own thumbnails only.
    let cm: Vec<Vec<u64>> = serde_json::from_value(j["confusion_matrix"].clone()).unwrap();
    let (t, q) = (0..CLASSES.len())
        .flat_map(|t| (0..CLASSES.len()).map(move |q| (t, q)))
        .find(|&(t, q)| t != q && cm[t][q] > 0)
        .unwrap_or((0, 0));
    let visible = "return [...document.querySelectorAll('section.cell')]
         .filter(s => getComputedStyle(s).display !== 'none').map(s => s.id)";
    assert_eq!(
        b.eval_js(visible, json!([])),
        json!([]),
        "no cell open at first"
    );
    b.click(&format!("#cm-{t}-{q} a"));
    let open = b.wait_js(
        "the cell's thumbnails",
        "const v = [...document.querySelectorAll('section.cell')]
           .filter(s => getComputedStyle(s).display !== 'none').map(s => s.id);
         return v.length > 0 && v",
    );
    assert_eq!(open, json!([format!("cell-{t}-{q}")]));
    let shown = b.eval_js(
        "return document.querySelectorAll(`#${arguments[0]} img`).length",
        json!([format!("cell-{t}-{q}")]),
    );
    assert_eq!(shown, json!(cm[t][q].min(60)));
    b.shot("eval-report-cell");
}
