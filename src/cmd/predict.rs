//! `flora predict PATH...`: top-k classes per image, as a table or JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::cli::PredictArgs;
use crate::config::Settings;
use crate::{imaging, infer, select};

/// Predicts every image named or found in the folders; exits 1 if any named file failed.
pub fn run(settings: &Settings, args: &PredictArgs) -> Result<ExitCode> {
    let chosen = select::choose(settings, &args.model)?;
    eprintln!("model: {}", chosen.describe());
    let bundle = chosen.load()?;
    let (files, mut failures) = collect(&args.paths);
    let results = infer::predict_files(&bundle, &files, "predicting");
    let k = args.top_k.max(1).min(bundle.meta.classes.len());
    let model_json = json!({
        "run_id": bundle.meta.run_id,
        "slot": chosen.slot().map(|s| s.as_str()),
    });
    if !args.json {
        println!("{:<40} {:<16} {:>7}  runner-ups", "file", "class", "conf");
    }
    for (path, r) in files.iter().zip(results) {
        let probs = match r {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
                continue;
            }
        };
        let top = bundle.top_k(&probs, k);
        let info = bundle.meta.class_info.get(&top[0].class);
        if args.json {
            let mut line = json!({
                "path": path.display().to_string(),
                "class": top[0].class,
                "confidence": top[0].confidence,
                "top_k": top,
                "model": model_json,
            });
            if let Some(info) = info {
                line["info"] = json!(info);
            }
            println!("{line}");
        } else {
            let runners: Vec<String> = top[1..]
                .iter()
                .map(|s| format!("{} {:.1}%", s.class, 100.0 * s.confidence))
                .collect();
            println!(
                "{:<40} {:<16} {:>6.1}%  {}",
                path.display(),
                top[0].class,
                100.0 * top[0].confidence,
                runners.join(", ")
            );
            if let Some(info) = info {
                let facts: Vec<String> = info
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}: {}", v.as_str().map_or(v.to_string(), str::to_string))
                    })
                    .collect();
                println!("{:<40} {}", "", facts.join("; "));
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} file(s) could not be predicted");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Files named directly are always tried (and reported when unreadable); folders are walked
/// recursively and their non-image files (by extension and content) skipped quietly. Returns (files, count of missing paths).
fn collect(paths: &[PathBuf]) -> (Vec<PathBuf>, usize) {
    let mut files = Vec::new();
    let mut missing = 0;
    for p in paths {
        if p.is_dir() {
            let walker = walkdir::WalkDir::new(p)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| {
                    e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.')
                });
            for e in walker.flatten() {
                if e.file_type().is_file() && looks_like_image(e.path()) {
                    files.push(e.into_path());
                }
            }
        } else if p.exists() {
            files.push(p.clone());
        } else {
            eprintln!("error: {} does not exist", p.display());
            missing += 1;
        }
    }
    (files, missing)
}

/// True when the file has an image extension or its first bytes are those of a supported
/// image format.
fn looks_like_image(path: &std::path::Path) -> bool {
    use std::io::Read;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"].contains(&ext.as_str()) {
        return true;
    }
    let mut head = [0u8; 32];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    imaging::sniff_format(&head[..n]).is_some()
}
