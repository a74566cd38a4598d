//! The deployment files under `deploy/` are checked by the tools that consume them: promtool
//! for the Prometheus config and alert rules, Kubernetes' own schemas (kubernetes-validate) for
//! the manifests, and the Grafana dashboard's shape.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::common::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Runs `program args...`, asserting success; returns stdout and stderr together.
fn check(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?}:\n{text}",
        program.display()
    );
    text
}

#[test]
fn promtool_accepts_the_config_and_the_rules() {
    let Some(promtool) = outside_program(
        Path::new("/usr/bin/promtool"),
        "promtool",
        "install it with: apt-get install prometheus",
    ) else {
        return;
    };
    let d = deploy();
    let out = check(
        &promtool,
        &[
            "check",
            "config",
            d.join("prometheus.yml").to_str().unwrap(),
        ],
    );
    assert!(out.contains("1 rule files found"), "{out}");
    let out = check(
        &promtool,
        &["check", "rules", d.join("alerts.yml").to_str().unwrap()],
    );
    let rules = std::fs::read_to_string(d.join("alerts.yml")).unwrap();
    let alerts = rules.matches("- alert:").count();
    // As many as docs/operations.md lists.
    assert_eq!(alerts, 7, "{alerts} alert rules");
    assert!(out.contains(&format!("{alerts} rules found")), "{out}");
    // Every rule tells the person paged what happened and what to do.
    assert_eq!(rules.matches("summary:").count(), alerts);
    assert_eq!(rules.matches("description:").count(), alerts);
}

#[test]
fn kubernetes_schemas_accept_the_manifests() {
    let tool = std::env::var_os("FLORA_K8S_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/flora-k8s/bin/kubernetes-validate".into());
    let Some(tool) = outside_program(
        &tool,
        "kubernetes-validate",
        "install it with: python3 -m venv /tmp/flora-k8s && /tmp/flora-k8s/bin/pip install kubernetes-validate",
    ) else {
        return;
    };
    let mut files: Vec<String> = std::fs::read_dir(deploy().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let out = check(&tool, &args);
    for kind in [
        "deployment/flora",
        "service/flora",
        "persistentvolumeclaim/",
        "job/flora-sweep",
        "job/flora-cv",
    ] {
        assert!(out.contains(kind), "{kind} not validated:\n{out}");
    }
    // And the tool does refuse a broken manifest.
    let bad = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy().join("k8s/deployment.yaml"))
        .unwrap()
        .replace("replicas: 3", "replicas: three");
    let file = bad.path().join("deployment.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(&tool)
        .args(["--strict", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_dashboard_has_seventeen_panels_each_with_a_query() {
    let text = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    // As many as docs/operations.md says.
    assert_eq!(panels.len(), 17, "{} panels", panels.len());
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("flora_")
                || e.contains("up{")
                || e.contains("process_")));
        }
    }
}
