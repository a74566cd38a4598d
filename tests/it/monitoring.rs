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
        Self::start_with(binary, target, rules, None)
    }

    /// [`Prometheus::start`], sending alerts to the Alertmanager on `alertmanager` (a port).
    fn start_with(
        binary: &Path,
        target: &str,
        rules: &str,
        alertmanager: Option<u16>,
    ) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: flora\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        if let Some(port) = alertmanager {
            config += &format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{port}\"]\n"
            );
        }
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
    assert_eq!(exprs.len(), 7, "{groups}");
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

/// A webhook receiver on a free loopback port: every JSON body POSTed to it, in order.
struct Webhook {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice::<Value>(&body)
                {
                    seen.lock().unwrap().push(v);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { port, bodies }
    }

    /// The first notification for `alert` with `status` (firing or resolved), if any.
    fn find(&self, alert: &str, status: &str) -> Option<Value> {
        self.bodies.lock().unwrap().iter().find_map(|n| {
            n["alerts"].as_array()?.iter().find_map(|a| {
                (a["labels"]["alertname"] == alert && a["status"] == status).then(|| a.clone())
            })
        })
    }
}

/// Debian's Alertmanager on a free loopback port, with `config` (YAML text), killed when dropped.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(binary: &Path, config: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=") // no gossip port
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting alertmanager");
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while !agent()
            .get(&format!("http://127.0.0.1:{port}/-/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "alertmanager not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `amtool check-config` on `file`: (passed, output).
fn amtool_check(amtool: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(amtool)
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alertmanager_delivers_the_failure_alert_and_its_resolution_to_a_webhook() {
    let (Some(am_bin), Some(amtool), Some(prometheus)) = (
        outside_program(
            Path::new("/usr/bin/prometheus-alertmanager"),
            "prometheus-alertmanager",
            "install it with: apt-get install prometheus-alertmanager",
        ),
        outside_program(
            Path::new("/usr/bin/amtool"),
            "amtool",
            "install it with: apt-get install prometheus-alertmanager",
        ),
        outside_program(
            Path::new("/usr/bin/prometheus"),
            "prometheus",
            "install it with: apt-get install prometheus",
        ),
    ) else {
        return;
    };
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alertmanager.yml");
    let (passed, out) = amtool_check(&amtool, &shipped);
    assert!(passed && out.contains("1 receivers"), "{out}");
    // The commented Telegram receiver is valid too once uncommented (with `bot_token` where
    // this Alertmanager predates `bot_token_file`).
    let text = std::fs::read_to_string(&shipped).unwrap();
    let mut in_block = false;
    let telegram: String = text
        .lines()
        .map(|l| {
            in_block |= l.contains("# telegram_configs:");
            let l = if in_block {
                l.replacen("    # ", "    ", 1)
            } else {
                l.to_string()
            };
            l + "\n"
        })
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let token = scratch.path().join("token");
    std::fs::write(&token, "123:abc").unwrap();
    let tg = scratch.path().join("telegram.yml");
    let with_file = telegram.replace(
        "/etc/alertmanager/telegram-bot-token",
        token.to_str().unwrap(),
    );
    std::fs::write(&tg, &with_file).unwrap();
    let (passed, out) = amtool_check(&amtool, &tg);
    if !passed {
        assert!(out.contains("bot_token_file"), "{out}");
        let inline = with_file.replace(
            &format!("bot_token_file: {}", token.display()),
            "bot_token: \"123:abc\"",
        );
        std::fs::write(&tg, inline).unwrap();
        let (passed, out) = amtool_check(&amtool, &tg);
        assert!(passed, "{out}");
    }

    // The shipped config, with the webhook pointed at this test and its waits shortened.
    let hook = Webhook::start();
    let config = text
        .replace(
            "http://127.0.0.1:5001/flora-alerts",
            &format!("http://127.0.0.1:{}/flora-alerts", hook.port),
        )
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s")
        .replace("resolve_timeout: 5m", "resolve_timeout: 10s");
    let am = Alertmanager::start(&am_bin, &config);

    let dir = slotted_project("");
    let server = Server::start(dir.path(), None, &[]);
    let target = server.base.trim_start_matches("http://").to_string();
    // The rules with `for:` at 2 s and rates over 10 s, so that the alert fires and resolves
    // within the test.
    let rules = test_rules().replace("[5m]", "[10s]");
    let prom = Prometheus::start_with(&prometheus, &target, &rules, Some(am.port));
    prom.wait_for("a first scrape of flora serve", |p| {
        !p.query(r#"up{job="flora"} == 1"#).is_empty()
    });
    let png = bag_png();
    let start = Instant::now();
    let firing = loop {
        let (status, _) = server.predict_multipart(&png, "bag.png", "");
        assert_eq!(status, 200);
        let (status, _) = server.post("/predict", "image/png", b"not an image", None);
        assert!((400..500).contains(&status), "{status}");
        if let Some(a) = hook.find("FloraFailedPredictions", "firing") {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no firing notification within 90 s; received: {:?}",
            hook.bodies.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(firing["labels"]["severity"], "warning", "{firing}");
    assert_eq!(firing["labels"]["instance"], target.as_str(), "{firing}");
    let summary = firing["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("% of predictions fail on"), "{summary}");
    assert!(
        firing["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("flora_failures_total"),
        "{firing}"
    );

    // Failures stop, good predictions go on: a resolved notification follows.
    let start = Instant::now();
    let resolved = loop {
        let (status, _) = server.predict_multipart(&png, "bag.png", "");
        assert_eq!(status, 200);
        if let Some(a) = hook.find("FloraFailedPredictions", "resolved") {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no resolved notification within 90 s; received: {:?}",
            hook.bodies.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(resolved["labels"]["instance"], target.as_str());
    assert!(
        resolved["endsAt"]
            .as_str()
            .is_some_and(|t| !t.starts_with("0001"))
    );
    drop(server);
}
