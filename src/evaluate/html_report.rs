//! The HTML report of `flora eval --html` and `flora cv`: one self-contained page (inline CSS,
//! no script, nothing fetched from elsewhere) with the confusion matrix as counts and
//! row-normalised, each cell linking to thumbnails of its images, per-class precision/recall/
//! F1, accuracy against coverage, label-error suspects, the run's params and the data
//! fingerprint. Thumbnails are PNG files in `report_thumbs/` beside the page. Every string
//! that comes from a file, class or param name is escaped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::evaluate::coverage::Point;
use crate::evaluate::label_audit::Issue;
use crate::evaluate::scores::Report;
use crate::util::fsutil;

/// The page's file name.
pub const PAGE: &str = "report.html";
/// The thumbnails' folder, beside the page.
pub const THUMBS: &str = "report_thumbs";
/// Most thumbnails shown per confusion-matrix cell.
pub const PER_CELL: usize = 60;
/// Most label-error suspects listed.
pub const MAX_ISSUES: usize = 100;
/// Longest side of a thumbnail, in pixels.
const THUMB_SIDE: u32 = 96;

/// One evaluated image.
pub struct Image<'a> {
    /// Path shown (relative to the data folder).
    pub rel: String,
    pub truth: usize,
    pub predicted: usize,
    pub confidence: f32,
    /// The model-input RGB8 pixels, `side`×`side`.
    pub pixels: &'a [u8],
    pub side: u32,
}

/// Everything the page shows.
pub struct Page<'a> {
    pub title: String,
    pub report: &'a Report,
    pub images: Vec<Image<'a>>,
    pub coverage: Vec<Point>,
    /// Facts shown at the top: model, data folder, fingerprints.
    pub facts: Vec<(String, String)>,
    /// The run's params.
    pub params: BTreeMap<String, String>,
    /// Extra tables (title, header, rows), such as the folds of a cross-validation.
    pub tables: Vec<(String, Vec<String>, Vec<Vec<String>>)>,
    /// Label-error suspects (cross-validation only), with the index into `images` of each.
    pub issues: Option<Vec<(Issue, usize)>>,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
table.cm td{min-width:44px;text-align:center}table.cm a{color:inherit;display:block}
td.diag{font-weight:bold}.cell{display:none;border:1px solid #999;padding:8px;margin:8px 0}
.cell:target{display:block}.thumbs{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:110px;font-size:11px;word-break:break-all}figure img{width:96px;height:96px;image-rendering:pixelated}
.facts td{text-align:left}svg{background:#fafafa;border:1px solid #ccc}";

/// Writes `report.html` and its thumbnails into `dir`; returns the page's path.
pub fn write(dir: &Path, page: &Page) -> Result<PathBuf> {
    let thumbs = dir.join(THUMBS);
    std::fs::create_dir_all(&thumbs).with_context(|| format!("creating {}", thumbs.display()))?;
    let mut written: HashMap<usize, String> = HashMap::new();
    let mut thumb = |i: usize| -> Result<String> {
        if let Some(src) = written.get(&i) {
            return Ok(src.clone());
        }
        let name = format!("{i}.png");
        write_thumb(&thumbs.join(&name), &page.images[i])?;
        let src = format!("{THUMBS}/{name}");
        written.insert(i, src.clone());
        Ok(src)
    };
    let r = page.report;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&page.title),
        esc(&page.title)
    );
    h += "<table class=\"facts\">";
    for (k, v) in &page.facts {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{}</th><td>{}</td></tr>",
            esc(k),
            esc(v)
        );
    }
    let _ = writeln!(
        h,
        "<tr><th class=\"l\">accuracy</th><td id=\"accuracy\">{:.2}% of {} images</td></tr>\
         <tr><th class=\"l\">macro F1</th><td>{:.3}</td></tr></table>",
        100.0 * r.accuracy,
        r.num_images,
        r.macro_f1
    );
    for (title, header, rows) in &page.tables {
        let _ = write!(h, "<h2>{}</h2>", esc(title));
        h += &table(header, rows);
    }

    // Images of each cell, most confident first.
    let mut cells: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, img) in page.images.iter().enumerate() {
        cells.entry((img.truth, img.predicted)).or_default().push(i);
    }
    for members in cells.values_mut() {
        members.sort_by(|&a, &b| {
            page.images[b]
                .confidence
                .total_cmp(&page.images[a].confidence)
        });
    }
    h += "<h2 id=\"matrix\">Confusion matrix</h2><p>Rows: true class; columns: predicted. \
          Click a cell for its images.</p>";
    for normalised in [false, true] {
        let _ = write!(
            h,
            "<h3>{}</h3><table class=\"cm\" id=\"{}\"><tr><th>true \\ predicted</th>",
            if normalised {
                "Row-normalised"
            } else {
                "Counts"
            },
            if normalised { "cm-norm" } else { "cm-counts" }
        );
        for c in &r.classes {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h += "</tr>";
        for (t, row) in r.confusion_matrix.iter().enumerate() {
            let total: usize = row.iter().sum();
            let _ = write!(h, "<tr><th class=\"l\">{}</th>", esc(&r.classes[t]));
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / total.max(1) as f64;
                let shade = format!(
                    "background:rgba({},{:.2})",
                    if t == p { "40,140,60" } else { "200,50,40" },
                    0.08 + 0.6 * share
                );
                let text = if normalised {
                    format!("{:.0}%", 100.0 * share)
                } else {
                    count.to_string()
                };
                let id = if normalised { "cmn" } else { "cm" };
                let class = if t == p { " class=\"diag\"" } else { "" };
                if count > 0 {
                    let _ = write!(
                        h,
                        "<td id=\"{id}-{t}-{p}\" data-count=\"{count}\"{class} style=\"{shade}\">\
                         <a href=\"#cell-{t}-{p}\">{text}</a></td>"
                    );
                } else {
                    let _ = write!(
                        h,
                        "<td id=\"{id}-{t}-{p}\" data-count=\"0\"{class}>{text}</td>"
                    );
                }
            }
            h += "</tr>";
        }
        h += "</table>\n";
    }
    for ((t, p), members) in &cells {
        let _ = write!(
            h,
            "<section class=\"cell\" id=\"cell-{t}-{p}\"><h3>true {} &rarr; predicted {} \
             ({} images{})</h3><div class=\"thumbs\">",
            esc(&r.classes[*t]),
            esc(&r.classes[*p]),
            members.len(),
            if members.len() > PER_CELL {
                format!(", the {PER_CELL} most confident shown")
            } else {
                String::new()
            }
        );
        for &i in members.iter().take(PER_CELL) {
            let img = &page.images[i];
            let _ = write!(
                h,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{} ({:.0}%)</figcaption></figure>",
                thumb(i)?,
                esc(&img.rel),
                esc(&img.rel),
                100.0 * img.confidence
            );
        }
        h += "</div><p><a href=\"#matrix\">back to the matrix</a></p></section>\n";
    }

    h += "<h2>Per class</h2>";
    let rows: Vec<Vec<String>> = r
        .classes
        .iter()
        .map(|c| {
            let m = &r.per_class[c];
            vec![
                c.clone(),
                format!("{:.3}", m.precision),
                format!("{:.3}", m.recall),
                format!("{:.3}", m.f1),
                m.support.to_string(),
            ]
        })
        .collect();
    h += &table(
        &["class", "precision", "recall", "F1", "support"].map(String::from),
        &rows,
    );

    h += "<h2>Accuracy against coverage</h2><p>Answering only when the top confidence reaches \
          the threshold (below it: unknown).</p>";
    h += &coverage_svg(&page.coverage);
    let rows: Vec<Vec<String>> = page
        .coverage
        .iter()
        .map(|p| {
            vec![
                format!("{:.2}", p.threshold),
                format!("{:.1}%", 100.0 * p.coverage),
                format!("{:.1}%", 100.0 * p.accuracy),
                p.answered.to_string(),
            ]
        })
        .collect();
    h += &table(
        &["threshold", "coverage", "accuracy", "answered"].map(String::from),
        &rows,
    );

    if let Some(issues) = &page.issues {
        let _ = write!(
            h,
            "<h2 id=\"issues\">Suspected label errors</h2><p>{} image(s) whose given label gets a \
             low out-of-fold probability while another class gets a high one (label_issues.csv){}.</p>",
            issues.len(),
            if issues.len() > MAX_ISSUES {
                format!("; the first {MAX_ISSUES} shown")
            } else {
                String::new()
            }
        );
        h += "<table id=\"issue-table\"><tr><th>#</th><th></th><th class=\"l\">path</th>\
              <th>given</th><th>suggested</th><th>p(given)</th><th>p(suggested)</th><th>score</th></tr>";
        for (rank, (issue, i)) in issues.iter().take(MAX_ISSUES).enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><img src=\"{}\" alt=\"{}\" width=\"48\" height=\"48\"></td>\
                 <td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                rank + 1,
                thumb(*i)?,
                esc(&issue.path),
                esc(&issue.path),
                esc(&issue.given),
                esc(&issue.suggested),
                issue.p_given,
                issue.p_suggested,
                issue.score
            );
        }
        h += "</table>\n";
    }

    h += "<h2>Run parameters</h2>";
    let rows: Vec<Vec<String>> = page
        .params
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    h += &table(&["param", "value"].map(String::from), &rows);
    h += "</body></html>\n";
    let path = dir.join(PAGE);
    fsutil::write_atomic(&path, h.as_bytes())?;
    Ok(path)
}

/// A table with a header; the first column left-aligned. Every cell is escaped.
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut h = String::from("<table><tr>");
    for (i, c) in header.iter().enumerate() {
        let _ = write!(
            h,
            "<th{}>{}</th>",
            if i == 0 { " class=\"l\"" } else { "" },
            esc(c)
        );
    }
    h += "</tr>";
    for row in rows {
        h += "<tr>";
        for (i, c) in row.iter().enumerate() {
            let _ = write!(
                h,
                "<td{}>{}</td>",
                if i == 0 { " class=\"l\"" } else { "" },
                esc(c)
            );
        }
        h += "</tr>";
    }
    h + "</table>\n"
}

/// Accuracy (y) against coverage (x) as an inline SVG line.
fn coverage_svg(points: &[Point]) -> String {
    let (w, ht, pad) = (420.0, 260.0, 36.0);
    // The accuracy axis runs from a round tenth below the lowest point to 100%.
    let lowest = points
        .iter()
        .filter(|p| p.answered > 0)
        .map(|p| p.accuracy)
        .fold(1.0, f64::min);
    let lo = ((lowest - 0.05) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
    let x = |c: f64| pad + c * (w - 2.0 * pad);
    let y = |a: f64| ht - pad - (a - lo) / (1.0 - lo) * (ht - 2.0 * pad);
    let line: Vec<String> = points
        .iter()
        .filter(|p| p.answered > 0)
        .map(|p| format!("{:.1},{:.1}", x(p.coverage), y(p.accuracy)))
        .collect();
    let mut s = format!(
        "<svg id=\"coverage-chart\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" \
         stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"{cx}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"middle\">coverage</text>\
         <text x=\"4\" y=\"20\" font-size=\"12\">accuracy</text>\
         <text x=\"4\" y=\"{top}\" font-size=\"10\">100%</text>\
         <text x=\"4\" y=\"{b}\" font-size=\"10\">{low}%</text>\
         <text x=\"{pad}\" y=\"{ty}\" font-size=\"10\">0%</text>\
         <text x=\"{r}\" y=\"{ty}\" font-size=\"10\" text-anchor=\"end\">100%</text>",
        b = ht - pad,
        r = w - pad,
        cx = w / 2.0,
        ty = ht - 10.0,
        top = pad + 4.0,
        low = (lo * 100.0).round()
    );
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    for p in points.iter().filter(|p| p.answered > 0) {
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2a7\"><title>threshold {:.2}: \
             coverage {:.1}%, accuracy {:.1}%</title></circle>",
            x(p.coverage),
            y(p.accuracy),
            p.threshold,
            100.0 * p.coverage,
            100.0 * p.accuracy
        );
    }
    s + "</svg>\n"
}

fn write_thumb(path: &Path, img: &Image) -> Result<()> {
    let rgb = image::RgbImage::from_raw(img.side, img.side, img.pixels.to_vec())
        .context("thumbnail pixels do not match the image size")?;
    let rgb = if img.side > THUMB_SIDE {
        image::imageops::thumbnail(&rgb, THUMB_SIDE, THUMB_SIDE)
    } else {
        rgb
    };
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(rgb).write_to(&mut out, image::ImageFormat::Png)?;
    fsutil::write_atomic(path, &out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<img src=x onerror='a&b'>\""),
            "&lt;img src=x onerror=&#39;a&amp;b&#39;&gt;&quot;"
        );
    }
}
