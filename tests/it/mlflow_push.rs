//! `flora runs push` against a real MLflow tracking server (`mlflow server --serve-artifacts`
//! on 127.0.0.1, sqlite backend in a temp folder), read back with MLflow's own client.
//! Needs the full `mlflow` package (the server): FLORA_MLFLOW_SERVER_PYTHON, else
//! /tmp/flora-mlflow/bin/python (`.ci/run` installs it there). Without one the test notes a
//! visible skip, except under CI (`CI=1`, `CI=true`), where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::common::{self, *};

fn server_python() -> Option<PathBuf> {
    let python = std::env::var("FLORA_MLFLOW_SERVER_PYTHON")
        .unwrap_or_else(|_| "/tmp/flora-mlflow/bin/python".into());
    outside_program(
        Path::new(&python),
        "a Python with the full mlflow package (mlflow server)",
        "run .ci/run, or set FLORA_MLFLOW_SERVER_PYTHON to one",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `mlflow server`, stopped on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(python: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let db = format!("sqlite:///{}", dir.path().join("mlflow.db").display());
        let artifacts = dir.path().join("artifacts");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(python);
        cmd.args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--backend-store-uri", &db, "--serve-artifacts"])
            .arg("--artifacts-destination")
            .arg(&artifacts)
            .args(["--workers", "1"])
            .args(extra)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group, so that its workers stop with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(r) = agent.get(&format!("{url}/health")).call()
                && r.status() == 200
            {
                break;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
                panic!("mlflow server did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Server {
            child,
            url,
            _dir: dir,
        }
    }
}

/// What MLflow's client reads of the remote runs pushed from local run `source`.
const READ: &str = r#"
import json, sys
from mlflow.tracking import MlflowClient
uri, sources = sys.argv[1], sys.argv[2:]
c = MlflowClient(tracking_uri=uri)
exp = c.get_experiment_by_name("test")
out = {}
for source in sources:
  out[source] = []
  for r in c.search_runs([exp.experiment_id], filter_string=f"tags.`flora.source_run_id` = '{source}'"):
    rid = r.info.run_id
    def walk(path=None):
        found = []
        for a in c.list_artifacts(rid, path):
            found += walk(a.path) if a.is_dir else [a.path]
        return found
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{rid}'")
    out[source].append({
        "run_id": rid, "name": r.info.run_name, "status": r.info.status,
        "start_time": r.info.start_time, "end_time": r.info.end_time,
        "params": r.data.params, "tags": r.data.tags,
        "history": {k: [[m.step, m.value, m.timestamp] for m in c.get_metric_history(rid, k)]
                    for k in r.data.metrics},
        "artifacts": sorted(walk()),
        "children": sorted(x.info.run_id for x in children),
    })
print(json.dumps(out))
"#;

/// Leaves remote run argv[2] as a push cut off before its end leaves it: no completion tag.
const CUT_OFF: &str = r#"
import sys
from mlflow.tracking import MlflowClient
MlflowClient(tracking_uri=sys.argv[1]).delete_tag(sys.argv[2], "flora.push_complete")
"#;

/// Prints the lifecycle stage of remote run argv[2].
const STAGE: &str = r#"
import sys
from mlflow.tracking import MlflowClient
print(MlflowClient(tracking_uri=sys.argv[1]).get_run(sys.argv[2]).info.lifecycle_stage)
"#;

/// The remote runs pushed from each local run id in `sources` (MLflow's client started once:
/// importing mlflow is slow).
fn read_remote(
    python: &Path,
    url: &str,
    sources: &[&str],
    env: &[(&str, &str)],
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let out = Command::new(python)
        .args(["-c", READ, url])
        .args(sources)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn local_kv(run: &Path, sub: &str) -> BTreeMap<String, String> {
    std::fs::read_dir(run.join(sub))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

fn run_named(dir: &Path, name: &str) -> PathBuf {
    common::run_dir(dir, name).unwrap_or_else(|| panic!("no run {name}"))
}

#[test]
fn a_pushed_run_reads_back_in_mlflow_once_and_sweeps_keep_their_links() {
    let Some(python) = server_python() else {
        return;
    };
    let dir = project(10, 2);
    let p = dir.path();
    ok(p, &["train", "--name", "pushme", "--image-size", "16"]);
    let server = Server::start(&python, &[], &[]);
    let local = run_named(p, "pushme");
    let local_id = name_of(&local);

    let out = ok(p, &["runs", "push", "pushme", "--to", &server.url]);
    assert!(out.contains("pushed run pushme"), "{out}");
    assert!(out.contains("not sent: checkpoints/"), "{out}");
    let remote = read_remote(&python, &server.url, &[&local_id], &[]);
    let r = &remote[&local_id];
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(r["name"], "pushme");
    assert_eq!(r["status"], "FINISHED");
    let meta = yaml(&local.join("meta.yaml"));
    assert_eq!(r["start_time"].to_string(), meta["start_time"]);
    assert_eq!(r["end_time"].to_string(), meta["end_time"]);
    // Every param, every tag but the local-only ones.
    let params: BTreeMap<String, String> = serde_json::from_value(r["params"].clone()).unwrap();
    assert_eq!(params, local_kv(&local, "params"));
    let tags: BTreeMap<String, String> = serde_json::from_value(r["tags"].clone()).unwrap();
    for (k, v) in local_kv(&local, "tags") {
        if !k.starts_with("flora.owner.") && !k.starts_with("flora.pushed.") {
            assert_eq!(tags.get(&k), Some(&v), "tag {k}");
        }
    }
    assert_eq!(tags["flora.source_run_id"], local_id);
    // Metric histories with their steps, values and timestamps.
    for key in [
        "val_accuracy",
        "train_loss",
        "learning_rate",
        "best_val_accuracy",
    ] {
        let want: Vec<(u64, f64, u64)> = std::fs::read_to_string(local.join("metrics").join(key))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[2].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[0].parse().unwrap(),
                )
            })
            .collect();
        let got: Vec<(u64, f64, u64)> = serde_json::from_value(r["history"][key].clone()).unwrap();
        // Steps and timestamps exactly; values to a few ulps (MLflow's store may round the
        // last bit of a double: 1.7359790802001953 came back as 1.735979080200195).
        assert_eq!(got.len(), want.len(), "{key}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            let close = (g.1 - w.1).abs() <= 1e-12 * w.1.abs().max(1.0);
            assert!(
                g.0 == w.0 && g.2 == w.2 && close,
                "{key}: {got:?} vs {want:?}"
            );
        }
    }
    assert_eq!(r["history"]["val_accuracy"].as_array().unwrap().len(), 2);
    // Artifacts through the proxy, checkpoints left local.
    let arts: Vec<String> = serde_json::from_value(r["artifacts"].clone()).unwrap();
    for want in [
        "config.toml",
        "results.csv",
        "split.csv",
        "model/bundle.json",
    ] {
        assert!(arts.iter().any(|a| a == want), "{want} not in {arts:?}");
    }
    assert!(
        arts.iter()
            .any(|a| a.starts_with("model/") && a != "model/bundle.json")
    );
    assert!(
        !arts.iter().any(|a| a.starts_with("checkpoints")),
        "{arts:?}"
    );
    let pushed_tag = format!(
        "flora.pushed.127.0.0.1_{}",
        server.url.rsplit(':').next().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(local.join("tags").join(&pushed_tag)).unwrap(),
        r["run_id"].as_str().unwrap()
    );

    // Twice: nothing new on the server; also when the local record is gone (found remotely).
    let out = ok(p, &["runs", "push", "pushme", "--to", &server.url]);
    assert!(out.contains("already on"), "{out}");
    std::fs::remove_file(local.join("tags").join(&pushed_tag)).unwrap();
    let out = ok(
        p,
        &[
            "runs",
            "push",
            "pushme",
            "--to",
            &format!("{}/", server.url),
        ],
    );
    assert!(out.contains("already on"), "{out}");
    assert!(local.join("tags").join(&pushed_tag).exists());

    // A push cut off halfway (the remote run created, never marked complete) and no local
    // record: found by its source id and replaced by a whole one.
    let first = r["run_id"].as_str().unwrap().to_string();
    let cut = Command::new(&python)
        .args(["-c", CUT_OFF, &server.url, &first])
        .output()
        .unwrap();
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    std::fs::remove_file(local.join("tags").join(&pushed_tag)).unwrap();
    let out = ok(p, &["runs", "push", "pushme", "--to", &server.url]);
    assert!(out.contains("pushed run pushme"), "{out}");
    let remote = read_remote(&python, &server.url, &[&local_id], &[]);
    let now = &remote[&local_id];
    assert_eq!(now.len(), 1, "one live remote run: {now:?}");
    let replaced = now[0]["run_id"].as_str().unwrap();
    assert_ne!(replaced, first);
    assert_eq!(now[0]["tags"]["flora.push_complete"], "true");
    assert_eq!(
        now[0]["history"]["val_accuracy"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        std::fs::read_to_string(local.join("tags").join(&pushed_tag)).unwrap(),
        replaced
    );
    let stage = Command::new(&python)
        .args(["-c", STAGE, &server.url, &first])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stage.stdout).trim(), "deleted");

    // A sweep: the children point at the parent's remote id.
    ok(
        p,
        &[
            "train",
            "--name",
            "sw",
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--sweep",
            "batch_size=8,16",
        ],
    );
    let out = ok(
        p,
        &["runs", "push", "sw-2", "sw", "sw-1", "--to", &server.url],
    );
    assert_eq!(out.matches("pushed run").count(), 3, "{out}");
    let ids: Vec<String> = ["sw", "sw-1", "sw-2"]
        .iter()
        .map(|n| name_of(&run_named(p, n)))
        .collect();
    let mut sources: Vec<&str> = ids.iter().map(String::as_str).collect();
    sources.push(&local_id);
    let remote = read_remote(&python, &server.url, &sources, &[]);
    assert_eq!(remote[&local_id].len(), 1, "pushed once");
    let parent = &remote[&ids[0]][0];
    let mut children: Vec<String> = ids[1..]
        .iter()
        .map(|id| remote[id][0]["run_id"].as_str().unwrap().to_string())
        .collect();
    children.sort();
    let linked: Vec<String> = serde_json::from_value(parent["children"].clone()).unwrap();
    assert_eq!(linked, children);
    let arts: Vec<String> = serde_json::from_value(parent["artifacts"].clone()).unwrap();
    assert!(arts.contains(&"sweep.csv".to_string()), "{arts:?}");
}

#[test]
fn pushing_to_a_server_that_is_not_there_is_a_clear_error_and_changes_nothing() {
    let dir = project(8, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "lonely", "--image-size", "16"]);
    let run = run_named(p, "lonely");
    let before = local_kv(&run, "tags");
    let url = format!("http://127.0.0.1:{}", free_port());
    let err = fails(p, &["runs", "push", "lonely", "--to", &url]);
    assert!(
        err.contains("cannot reach the MLflow server") && err.contains(&url),
        "{err}"
    );
    let err = fails(p, &["runs", "push", "lonely", "--to", "ftp://example.org"]);
    assert!(err.contains("not an http(s) URL"), "{err}");
    let err = fails(p, &["runs", "push", "nosuch", "--to", &url]);
    assert!(err.contains("no run"), "{err}");

    // An HTTP server that is not MLflow: its 404 without MLflow's error body, a 200 that is
    // not JSON, an answer cut off in its body.
    let web = crate::support::http::Server::start();
    let err = fails(p, &["runs", "push", "lonely", "--to", &web.url("")]);
    assert!(
        err.contains("HTTP 404") && err.contains("is not an MLflow tracking server"),
        "{err}"
    );
    let endpoint = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=test";
    web.serve(endpoint, b"<html><body>It works!</body></html>".to_vec());
    let err = fails(p, &["runs", "push", "lonely", "--to", &web.url("")]);
    assert!(
        err.contains("not JSON") && err.contains("an MLflow tracking server?"),
        "{err}"
    );
    web.serve(
        endpoint,
        br#"{"experiment": {"experiment_id": "1", "name": "test"}}"#.to_vec(),
    );
    web.cut_next(1, 10);
    let err = fails(p, &["runs", "push", "lonely", "--to", &web.url("")]);
    assert!(err.contains("reading the answer of"), "{err}");

    // Credentials in the URL: never printed; over plain http to another machine, warned about
    // before anything is sent.
    let secret = "tok3n-that-must-not-leak";
    let err = fails(
        p,
        &[
            "runs",
            "push",
            "lonely",
            "--to",
            &format!("http://me:{secret}@192.0.2.1:9"),
        ],
    );
    assert!(
        err.contains("warning: sending credentials over plain http to http://192.0.2.1:9"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");
    let err = fails(
        p,
        &[
            "runs",
            "push",
            "lonely",
            "--to",
            &format!("ftp://me:{secret}@example.org"),
        ],
    );
    assert!(
        err.contains("not an http(s) URL") && !err.contains(secret),
        "{err}"
    );
    assert_eq!(local_kv(&run, "tags"), before);
}

#[test]
fn credentials_go_as_mlflow_clients_send_them_and_a_refusal_changes_nothing() {
    let Some(python) = server_python() else {
        return;
    };
    // MLflow's basic-auth app needs Flask-WTF (`pip install mlflow[auth]`).
    let has_auth = Command::new(&python)
        .args(["-c", "import flask_wtf"])
        .status()
        .unwrap()
        .success();
    if !has_auth {
        let msg = format!(
            "Flask-WTF (for `mlflow server --app-name basic-auth`) is not importable by {}; \
             install mlflow[auth] into it, or put flask-wtf on PYTHONPATH",
            python.display()
        );
        skip(&msg);
        return;
    }
    let dir = project(8, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "secret", "--image-size", "16"]);
    let run = run_named(p, "secret");
    let before = local_kv(&run, "tags");
    let server_dir = tempfile::tempdir().unwrap();
    let ini = server_dir.path().join("auth.ini");
    let db = server_dir.path().join("auth.db");
    std::fs::write(
        &ini,
        format!(
            "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\n\
             admin_username = admin\nadmin_password = s3cret-pw-123\n\
             authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n\
             auth_cache_ttl_seconds = 600\n",
            db.display()
        ),
    )
    .unwrap();
    let server = Server::start(
        &python,
        &["--app-name", "basic-auth"],
        &[
            ("MLFLOW_AUTH_CONFIG_PATH", ini.to_str().unwrap()),
            ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flora-test-secret"),
        ],
    );
    let push = |env: &[(&str, &str)]| {
        let mut c = flora(p);
        c.args(["runs", "push", "secret", "--to", &server.url]);
        for k in [
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN",
        ] {
            c.env_remove(k);
        }
        c.envs(env.iter().copied()).output().unwrap()
    };
    let out = push(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("HTTP 401") && err.contains("set MLFLOW_TRACKING_USERNAME"),
        "{err}"
    );
    let out = push(&[
        ("MLFLOW_TRACKING_USERNAME", "admin"),
        ("MLFLOW_TRACKING_PASSWORD", "wrong"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("HTTP 401") && err.contains("check MLFLOW_TRACKING_USERNAME"),
        "{err}"
    );
    assert_eq!(
        local_kv(&run, "tags"),
        before,
        "a refused push changes nothing locally"
    );

    // Credentials that were sent and refused are named as such; in the URL, never shown.
    let with_url = |password: &str| {
        let url = server
            .url
            .replacen("http://", &format!("http://admin:{password}@"), 1);
        let mut c = flora(p);
        c.args(["runs", "push", "secret", "--to", &url]);
        for k in [
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN",
        ] {
            c.env_remove(k);
        }
        c.output().unwrap()
    };
    let out = with_url("wr0ng-pw-456");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("HTTP 401") && err.contains("credentials were sent but refused"),
        "{err}"
    );
    assert!(!err.contains("wr0ng-pw-456"), "{err}");
    assert_eq!(local_kv(&run, "tags"), before);

    let out = with_url("s3cret-pw-123");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("pushed run secret"), "{stdout}");
    // Loopback: no warning about plain http.
    assert!(!stderr.contains("plain http"), "{stderr}");
    let port = server.url.rsplit(':').next().unwrap();
    let tags = local_kv(&run, "tags");
    let pushed: Vec<&String> = tags
        .keys()
        .filter(|k| k.starts_with("flora.pushed."))
        .collect();
    assert_eq!(
        pushed,
        [&format!("flora.pushed.127.0.0.1_{port}")],
        "{tags:?}"
    );
    let shown = ok(p, &["runs", "show", "secret"]);
    for text in [&*stdout, &*stderr, &shown] {
        assert!(
            !text.contains("s3cret-pw-123") && !text.contains("admin@"),
            "{text}"
        );
    }
    let id = name_of(&run);
    let creds = [
        ("MLFLOW_TRACKING_USERNAME", "admin"),
        ("MLFLOW_TRACKING_PASSWORD", "s3cret-pw-123"),
    ];
    let remote = read_remote(&python, &server.url, &[&id], &creds);
    assert_eq!(remote[&id].len(), 1);
    assert_eq!(remote[&id][0]["status"], "FINISHED");
    let arts: Vec<String> = serde_json::from_value(remote[&id][0]["artifacts"].clone()).unwrap();
    assert!(arts.contains(&"results.csv".to_string()), "{arts:?}");
    // The variables reach the same server (the same record): already there.
    let out = push(&creds);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
