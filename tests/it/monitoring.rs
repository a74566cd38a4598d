//! Monitoring checked for real: Debian's Prometheus scrapes a running `flora serve` on
//! 127.0.0.1 with the rules of `deploy/alerts.yml` (their `for:` shortened in a test copy), every
//! PromQL expression of the rules and of `deploy/grafana-dashboard.json` runs through
//! Prometheus's HTTP query API and returns data, and bad requests make the failed-predictions
//! alert fire.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::common::*;
use crate::support::serve::*;
use serde_json::Value;

/// A Prometheus server on a free loopback port, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second, with `rules` (YAML text)
    /// evaluated every second.
    fn start(binary: &Path, target: &str, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: flora\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        p.wait_for("ready", |p| {
            agent()
                .get(&format!("{}/-/ready", p.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        p
    }

    /// GET `path` of the HTTP API, with `query` parameters; the `data` field of the answer.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut req = agent().get(&format!("{}{path}", self.base));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let text = req.call().unwrap().body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {text}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", expr)]);
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `done` until it holds (60 s at most).
    fn wait_for(&self, what: &str, done: impl Fn(&Prometheus) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus: {what} did not happen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The alert rules of deploy/alerts.yml with every `for:` shortened to 2 s.
fn test_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `expr` without a trailing comparison with a number (`... > 0.05`, `up == 0`), so that it
/// returns the value the rule compares instead of nothing while all is well.
fn without_threshold(expr: &str) -> String {
    let e = expr.trim();
    let Some((rest, number)) = e.rsplit_once(char::is_whitespace) else {
        return e.to_string();
    };
    if number.parse::<f64>().is_ok() {
        let rest = rest.trim_end();
        for op in ["==", "!=", ">=", "<=", ">", "<"] {
            if let Some(head) = rest.strip_suffix(op) {
                return head.trim().to_string();
            }
        }
    }
    e.to_string()
}

#[test]
fn prometheus_scrapes_serve_runs_every_query_and_fires_the_failure_alert() {
    let Some(prometheus) = outside_program(
        Path::new("/usr/bin/prometheus"),
        "prometheus",
        "install it with: apt-get install prometheus",
    ) else {
        return;
    };
    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let target = server.base.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&prometheus, &target, &test_rules());

    // The first scrape before any traffic, so that every counter is seen rising.
    prom.wait_for("a first scrape of flora serve", |p| {
        !p.query(r#"up{job="flora"} == 1"#).is_empty()
    });
    // Traffic over a few seconds (several scrapes, so rates have two samples and the error
    // series grows after its first scrape): two good predictions and one bad upload per round.
    let png = bag_png();
    for _ in 0..10 {
        for _ in 0..2 {
            let (status, _) = server.predict_multipart(&png, "bag.png", "");
            assert_eq!(status, 200);
        }
        let (status, _) = server.post("/predict", "image/png", b"not an image", None);
        assert!((400..500).contains(&status), "{status}");
        std::thread::sleep(Duration::from_millis(400));
    }
    prom.wait_for("30 predict requests scraped", |p| {
        p.query(r#"sum(flora_http_requests_total{route="/predict"})"#)
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .is_some_and(|n| n >= 30.0)
    });
    std::thread::sleep(Duration::from_millis(2500));

    // Every expression of the rules (as Prometheus loaded them) and of the dashboard runs and
    // returns data.
    let groups = prom.api("/api/v1/rules", &[]);
    let mut exprs: Vec<(String, String)> = groups["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!("rule {}", r["name"]),
                r["query"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(exprs.len() >= 4, "{groups}");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push((
                format!("panel {}", panel["title"]),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for (what, expr) in &exprs {
        let result = prom.query(&without_threshold(expr));
        assert!(!result.is_empty(), "{what}: no data for {expr}");
    }

    // The failed-prediction ratio (10 of 30) is over 5%: the alert fires; the server is up.
    let start = Instant::now();
    loop {
        let alerts = prom.api("/api/v1/alerts", &[]);
        let firing = alerts["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == "FloraFailedPredictions" && a["state"] == "firing"
        });
        if firing {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "FloraFailedPredictions did not fire within 60 s\nalerts: {alerts}\nfailed: {:?}",
            prom.query(r#"flora_http_requests_total{route="/predict",status=~"[45].."}[1m]"#)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let alerts = prom.api("/api/v1/alerts", &[]);
    let names: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert!(!names.contains(&"FloraDown"), "{alerts}");
    assert!(!names.contains(&"FloraNoModelLoaded"), "{alerts}");
    drop(server);
}

#[test]
fn thresholds_are_stripped_only_at_the_end() {
    assert_eq!(
        without_threshold("up{job=\"flora\"} == 0"),
        "up{job=\"flora\"}"
    );
    assert_eq!(without_threshold("a / b\n  > 0.05\n"), "a / b");
    assert_eq!(without_threshold("rate(x[5m])"), "rate(x[5m])");
}
