//! The HTML report of `flora eval --html` and `flora cv`, checked as a document: one page with
//! nothing fetched from elsewhere (no script or stylesheet files, no remote URL), every link
//! and image resolving (anchors to an element of the page, images to files that exist), the
//! confusion-matrix counts equal to eval's, and file and class names escaped.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::common::*;
use serde_json::Value;

/// The values of every `attr="..."` in `html`.
fn attrs(html: &str, attr: &str) -> Vec<String> {
    let key = format!(" {attr}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Checks that the page at `page` is self-contained and that every link resolves; returns its
/// text.
fn check_page(page: &Path) -> String {
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!html.contains("<script"), "no script at all");
    assert!(!html.contains("<link"), "no stylesheet file");
    assert!(!html.contains("@import") && !html.contains("url("));
    let ids: BTreeSet<String> = attrs(&html, "id").into_iter().collect();
    assert_eq!(ids.len(), attrs(&html, "id").len(), "ids are unique");
    let hrefs = attrs(&html, "href");
    assert!(!hrefs.is_empty());
    for href in &hrefs {
        let anchor = href
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("link {href} leaves the page"));
        assert!(ids.contains(anchor), "link {href} has no target");
    }
    let srcs = attrs(&html, "src");
    assert!(!srcs.is_empty());
    let dir = page.parent().unwrap();
    for src in &srcs {
        assert!(
            !src.contains(':') && !src.starts_with('/') && !src.contains(".."),
            "image {src} is not a file beside the page"
        );
        let file = dir.join(src);
        assert!(file.is_file(), "image {src} does not exist");
        image::open(&file).unwrap_or_else(|e| panic!("{src}: {e}"));
    }
    html
}

/// The number in the element `id="ID" ...>`: its `data-count`.
fn count_of(html: &str, id: &str) -> usize {
    let key = format!("id=\"{id}\" data-count=\"");
    let i = html.find(&key).unwrap_or_else(|| panic!("no cell {id}")) + key.len();
    html[i..i + html[i..].find('"').unwrap()].parse().unwrap()
}

#[test]
fn eval_html_matches_eval_and_every_link_resolves() {
    let (dir, data, out, j) = eval_html_report();
    let p = dir.path();
    let page = out.path().join("report.html");
    assert_eq!(j["html"], page.to_str().unwrap());
    let html = check_page(&page);

    // Counts: every cell of both matrices as eval says; each non-empty cell links to a
    // section holding one thumbnail per image.
    let cm = j["confusion_matrix"].as_array().unwrap();
    let classes: Vec<&str> = j["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut total = 0;
    for (t, row) in cm.iter().enumerate() {
        for (q, v) in row.as_array().unwrap().iter().enumerate() {
            let n = v.as_u64().unwrap() as usize;
            total += n;
            assert_eq!(count_of(&html, &format!("cm-{t}-{q}")), n);
            assert_eq!(count_of(&html, &format!("cmn-{t}-{q}")), n);
            let section = html.find(&format!("<section class=\"cell\" id=\"cell-{t}-{q}\">"));
            assert_eq!(section.is_some(), n > 0, "cell {t},{q}");
            if let Some(s) = section {
                let body = &html[s..s + html[s..].find("</section>").unwrap()];
                assert_eq!(body.matches("<figure>").count(), n.min(60));
                assert!(body.contains(&format!(
                    "true {} &rarr; predicted {}",
                    classes[t], classes[q]
                )));
            }
        }
    }
    assert_eq!(total, 12 * CLASSES.len());
    // Per-class figures, accuracy against coverage, params and the fingerprints.
    for c in &classes {
        let f1 = j["per_class"][c]["f1"].as_f64().unwrap();
        assert!(html.contains(&format!(
            "<td class=\"l\">{c}</td><td>{:.3}</td>",
            j["per_class"][c]["precision"].as_f64().unwrap()
        )));
        assert!(html.contains(&format!("{f1:.3}")));
    }
    assert!(html.contains(&format!(
        "{:.2}% of {} images",
        100.0 * j["accuracy"].as_f64().unwrap(),
        total
    )));
    assert!(html.contains("id=\"coverage-chart\""));
    assert!(html.contains("Accuracy against coverage"));
    assert!(html.contains("train.epochs"));
    let bundle = flora::track::store::RunStore::new(p.join("runs"))
        .find("r")
        .unwrap()
        .artifacts()
        .join("model");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("bundle.json")).unwrap())
            .unwrap();
    assert!(html.contains(meta["data_fingerprint"].as_str().unwrap()));

    // Without a folder to write into (no run, no --out) --html is a clear error.
    let err = fails(
        p,
        &[
            "eval",
            "--model",
            bundle.to_str().unwrap(),
            "--data",
            data.path().to_str().unwrap(),
            "--html",
        ],
    );
    assert!(err.contains("--out"), "{err}");
}

#[test]
fn names_from_files_and_folders_are_escaped() {
    let evil_class = "\"><img src=x onerror=alert(1)>";
    let evil_file = "a<b>&'\".png";
    let (train, _) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let data = p.join("dataset");
    copy_classes(&train, &data, &["trouser", "bag"], 12);
    std::fs::rename(data.join("bag"), data.join(evil_class)).unwrap();
    let first = std::fs::read_dir(data.join("trouser"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(&first, data.join("trouser").join(evil_file)).unwrap();
    write_config(p, 1, "");
    ok(p, &["cv", "--folds", "2", "--name", "x"]);
    let parent = flora::track::store::RunStore::new(p.join("runs"))
        .find("x")
        .unwrap();
    let html = check_page(&parent.artifacts().join("report.html"));
    assert!(!html.contains("<img src=x"), "class name not escaped");
    assert!(!html.contains("a<b>"), "file name not escaped");
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("a&lt;b&gt;&amp;&#39;&quot;.png"));
    // The cv page: folds table, per-class F1 and the audit section.
    assert!(html.contains("<h2>Folds</h2>") && html.contains("mean ± std"));
    assert!(html.contains("Per-class F1 across folds"));
    assert!(html.contains("id=\"issue-table\""));
}
