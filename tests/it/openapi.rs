//! `flora serve`'s OpenAPI document and its Swagger UI: the document passes
//! openapi-spec-validator, a real answer of every route (errors included) matches what the
//! document says of it (JSON bodies checked with jsonschema), and `/docs` runs a prediction in
//! headless Chromium, offline. The Python side needs a venv with openapi-spec-validator and
//! jsonschema: `FLORA_OPENAPI_PYTHON`, else `/tmp/flora-openapi/bin/python` (`.ci/run` makes it).

use std::path::PathBuf;

use crate::support::browser::{browser, shot_path};
use crate::support::common::*;
use crate::support::serve::{self, Server, TOKEN, bag_png, multipart, png_header};
use serde_json::{Value, json};

/// Validates the document (argv[1]), then each answer of the samples (argv[2]) against the
/// response its operation documents: the status must be listed, its content type too, and a
/// JSON body must match the schema. Prints `OPENAPI_OK <n>`.
const CHECK: &str = r##"
import json, sys
from openapi_spec_validator import validate
from jsonschema import Draft202012Validator

doc = json.load(open(sys.argv[1]))
validate(doc)
assert doc["openapi"].startswith("3.1"), doc["openapi"]
samples = json.load(open(sys.argv[2]))

def esc(s):
    return s.replace("~", "~0").replace("/", "~1")

def essence(ct):
    return ct.split(";")[0].strip().lower()

seen = set()
for s in samples:
    where = f'{s["method"].upper()} {s["url"]} -> {s["status"]}'
    if s["path"] is None:
        pointer = "#/components/schemas/ErrorBody"
    else:
        op = doc["paths"][s["path"]][s["method"]]
        seen.add((s["path"], s["method"]))
        responses = op["responses"]
        status = str(s["status"])
        assert status in responses, f"{where}: status not documented ({sorted(responses)})"
        content = responses[status].get("content", {})
        types = {essence(k): k for k in content}
        got = essence(s["content_type"])
        assert got in types, f"{where}: content type {got} not documented ({sorted(types)})"
        if "schema" not in content[types[got]]:
            assert s["body"] is None, f"{where}: a JSON body where none is documented"
            continue
        pointer = "#/paths/%s/%s/responses/%s/content/%s/schema" % (
            esc(s["path"]), s["method"], status, esc(types[got]))
    if s["body"] is None:
        assert not s["content_type"].startswith("application/json"), where
        continue
    root = dict(doc)
    root["$ref"] = pointer
    errors = list(Draft202012Validator(root).iter_errors(s["body"]))
    assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}: {s['body']}"

documented = {(p, m) for p, item in doc["paths"].items() for m in item}
missing = documented - seen
assert not missing, f"no sample for {sorted(missing)}"
print("OPENAPI_OK", len(samples))
"##;

/// The Python with openapi-spec-validator and jsonschema, or None (the test is skipped).
fn python() -> Option<PathBuf> {
    let python = std::env::var("FLORA_OPENAPI_PYTHON")
        .unwrap_or_else(|_| "/tmp/flora-openapi/bin/python".into());
    outside_program(
        std::path::Path::new(&python),
        "a Python with openapi-spec-validator and jsonschema",
        "run .ci/run, or: python3 -m venv /tmp/flora-openapi && /tmp/flora-openapi/bin/pip install openapi-spec-validator jsonschema",
    )
}

/// One real answer: what was asked and what came back.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

fn call(
    server: &Server,
    method: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Answer {
    let agent = serve::agent();
    let url = server.url(url);
    let mut r = if method == "get" {
        let mut req = agent.get(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call().unwrap()
    } else {
        let mut req = agent.post(&url).header("Content-Type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send(body).unwrap()
    };
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r
        .body_mut()
        .with_config()
        .limit(10_000_000)
        .read_to_vec()
        .unwrap();
    Answer {
        status: r.status().as_u16(),
        content_type,
        body,
    }
}

/// Collects real answers as samples for [`CHECK`]: `path` is the documented path (None: an
/// unknown route, checked against the shared error schema).
struct Samples {
    list: Vec<Value>,
}

impl Samples {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        server: &Server,
        path: Option<&str>,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        want: u16,
    ) -> Answer {
        let a = call(server, method, url, content_type, body, headers);
        let text = String::from_utf8_lossy(&a.body[..a.body.len().min(300)]).into_owned();
        assert_eq!(a.status, want, "{method} {url}: {text}");
        let json = a
            .content_type
            .starts_with("application/json")
            .then(|| serde_json::from_slice::<Value>(&a.body).expect("a JSON body"));
        self.list.push(json!({
            "path": path, "method": method, "url": url, "status": a.status,
            "content_type": a.content_type, "body": json,
        }));
        a
    }
}

#[test]
fn every_routes_answers_match_the_validated_openapi_document() {
    let Some(python) = python() else { return };
    let dir = serve::slotted_project("[serve]\nmax_body_bytes = 200000\n");
    let server = Server::start(dir.path(), Some(TOKEN), &[]);
    let mut s = Samples { list: Vec::new() };
    let png = bag_png();
    let (form, upload) = multipart("file", "bag.png", &png);
    let (_, empty) = multipart("file", "empty.png", b"");
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // The pages and the status routes.
    s.add(&server, Some("/"), "get", "/", "", b"", &[], 200);
    s.add(
        &server,
        Some("/health"),
        "get",
        "/health",
        "",
        b"",
        &[],
        200,
    );
    s.add(
        &server,
        Some("/models"),
        "get",
        "/models",
        "",
        b"",
        &[],
        200,
    );
    s.add(
        &server,
        Some("/metrics"),
        "get",
        "/metrics",
        "",
        b"",
        &[],
        200,
    );
    let doc = s.add(
        &server,
        Some("/openapi.json"),
        "get",
        "/openapi.json",
        "",
        b"",
        &[],
        200,
    );
    let page = s.add(&server, Some("/docs"), "get", "/docs", "", b"", &[], 200);
    // Every file the docs page loads is served, with its type; nothing comes from elsewhere.
    let page = String::from_utf8(page.body).unwrap();
    let files: Vec<&str> = page
        .split(['"', '\''])
        .filter(|p| p.starts_with("docs/"))
        .collect();
    assert_eq!(files.len(), 3, "{page}");
    assert!(
        !page.contains("http"),
        "the page names no other site: {page}"
    );
    for f in files {
        let a = s.add(
            &server,
            Some("/docs/{file}"),
            "get",
            &format!("/{f}"),
            "",
            b"",
            &[],
            200,
        );
        assert!(a.body.len() > 100, "{f}");
    }
    s.add(
        &server,
        Some("/docs/{file}"),
        "get",
        "/docs/nope.js",
        "",
        b"",
        &[],
        404,
    );

    // Predictions: multipart and a raw body, and each refusal.
    let p = Some("/predict");
    let a = s.add(&server, p, "post", "/predict", &form, &upload, &[], 200);
    let answer: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(answer["top_k"].as_array().unwrap().len(), 3);
    s.add(
        &server,
        p,
        "post",
        "/predict?top_k=2",
        "image/png",
        &png,
        &[],
        200,
    );
    s.add(
        &server,
        p,
        "post",
        "/predict?top_k=x",
        "image/png",
        &png,
        &[],
        400,
    );
    s.add(&server, p, "post", "/predict", &form, &empty, &[], 400);
    let evil = [("Origin", "https://evil.example")];
    s.add(
        &server,
        p,
        "post",
        "/predict",
        "image/png",
        &png,
        &evil,
        403,
    );
    let mut big = png.clone();
    big.resize(1_000_000, 0);
    s.add(&server, p, "post", "/predict", "image/png", &big, &[], 413);
    s.add(
        &server,
        p,
        "post",
        "/predict",
        "image/png",
        b"not an image",
        &[],
        415,
    );
    s.add(&server, p, "post", "/predict", "text/plain", &png, &[], 415);
    let bad = png_header(64, 64);
    s.add(&server, p, "post", "/predict", "image/png", &bad, &[], 422);

    // Explanations.
    let e = Some("/explain");
    let a = s.add(&server, e, "post", "/explain", &form, &upload, &[], 200);
    assert!(a.body.starts_with(b"\x89PNG"));
    s.add(
        &server,
        e,
        "post",
        "/explain",
        "image/png",
        b"not an image",
        &[],
        415,
    );

    // The admin switch: without and with the token.
    let w = Some("/admin/switch-model");
    let ct = "application/x-www-form-urlencoded";
    s.add(
        &server,
        w,
        "post",
        "/admin/switch-model?color=green",
        ct,
        b"",
        &[],
        401,
    );
    s.add(
        &server,
        w,
        "post",
        "/admin/switch-model?color=red",
        ct,
        b"",
        &auth,
        400,
    );
    s.add(
        &server,
        w,
        "post",
        "/admin/switch-model",
        ct,
        b"",
        &auth,
        400,
    );
    let a = s.add(
        &server,
        w,
        "post",
        "/admin/switch-model?color=green",
        ct,
        b"",
        &auth,
        200,
    );
    let switched: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(switched["live"], "green");

    // An unknown route and a wrong method answer the shared error shape.
    s.add(&server, None, "get", "/nope", "", b"", &[], 404);
    s.add(&server, None, "post", "/health", ct, b"", &[], 405);

    let tmp = tempfile::tempdir().unwrap();
    let (doc_path, samples_path) = (tmp.path().join("doc.json"), tmp.path().join("samples.json"));
    std::fs::write(&doc_path, &doc.body).unwrap();
    std::fs::write(&samples_path, serde_json::to_vec(&s.list).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(CHECK)
        .arg(&doc_path)
        .arg(&samples_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OPENAPI_OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The document's frame.
    let doc: Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(doc["info"]["title"], "flora");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/admin/switch-model"]["post"]["security"],
        json!([{"admin_token": []}])
    );
}

#[test]
fn swagger_ui_runs_a_prediction_offline() {
    let Some(b) = browser() else { return };
    let dir = serve::slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let (_, test) = fashion_mnist();
    let mut images: Vec<PathBuf> = std::fs::read_dir(test.join("sneaker"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let image = &images[0];
    // What the API answers for the same image, straight.
    let (_, direct) = server.predict_multipart(&std::fs::read(image).unwrap(), "sneaker.png", "");

    b.open(&server.url("/docs"));
    let op = "#operations-predict-predict";
    b.wait_js(
        "Swagger UI's operations",
        &format!("return document.querySelector('{op}')"),
    );
    b.click(&format!("{op} .opblock-summary-control"));
    b.wait_js(
        "the expanded operation",
        &format!("return document.querySelector('{op} .try-out__btn')"),
    );
    b.click(&format!("{op} .try-out__btn"));
    b.wait_js(
        "the request body's content types",
        &format!("return document.querySelector('{op} .body-param-content-type select')"),
    );
    b.click(&format!(
        "{op} .body-param-content-type select option[value='multipart/form-data']"
    ));
    b.wait_js(
        "the form's file input",
        &format!("return document.querySelector('{op} input[type=file]')"),
    );
    b.type_into(&format!("{op} input[type=file]"), &image.to_string_lossy());
    b.click(&format!("{op} .btn.execute"));
    let text = b.wait_js(
        "the response body",
        &format!(
            "const c = document.querySelector('{op} .live-responses-table .response-col_description pre');
             return c && c.innerText.includes('model_used') && c.innerText"
        ),
    );
    let shown: Value =
        serde_json::from_str(text.as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(shown["prediction"]["class"], direct["prediction"]["class"]);
    assert_eq!(shown["model_used"], "blue");
    let status = b.text(&format!(
        "{op} .live-responses-table tbody .response-col_status"
    ));
    assert!(status.starts_with("200"), "{status}");
    b.eval_js(
        "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})",
        json!([format!("{op} .live-responses-table")]),
    );
    b.shot("openapi-docs");
    assert!(shot_path("openapi-docs").is_file());
}
