//! `flora predict PATH...`: top-k classes per image, as a table or JSON lines.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::PredictArgs;
use flora::config::Settings;
use flora::data::imaging::{self, DecodeLimits};
use flora::evaluate::explain;
use flora::model::bundle::ModelBundle;
use flora::model::infer;
use flora::track::select;
use flora::util::fsutil;

/// Predicts every image named or found in the folders; exits 1 if any named file failed.
pub fn run(settings: &Settings, args: &PredictArgs) -> Result<ExitCode> {
    super::select_inference_device(args.device)?;
    let chosen = select::choose(settings, &args.model.choice())?;
    eprintln!("model: {}", chosen.describe());
    let bundle = chosen.load()?;
    let (files, mut failures) = collect(&args.paths);
    let results = infer::predict_files(&bundle, &files, settings.decode_limits(), "predicting");
    let k = args.top_k.max(1).min(bundle.meta.classes.len());
    let thresholds = bundle.meta.thresholds_with(settings.thresholds());
    let model_json = json!({
        "run_id": bundle.meta.run_id,
        "slot": chosen.slot().map(|s| s.as_str()),
    });
    if !args.json {
        println!("{:<40} {:<16} {:>7}  runner-ups", "file", "class", "conf");
    }
    let mut explained = HashSet::new();
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
        let is_unknown = thresholds.is_unknown(&top[0]);
        let answer = thresholds.answer(&top[0]);
        let info = match is_unknown {
            true => None,
            false => bundle.meta.class_info.get(&top[0].class),
        };
        let explanation = match args.explain {
            true => match explain_file(
                &bundle,
                path,
                &probs,
                (&args.explain_dir, settings.decode_limits()),
                &mut explained,
            ) {
                Ok(out) => Some(out),
                Err(e) => {
                    eprintln!("error: explaining {}: {e:#}", path.display());
                    failures += 1;
                    None
                }
            },
            false => None,
        };
        if args.json {
            let mut line = json!({
                "path": path.display().to_string(),
                "class": answer,
                "confidence": top[0].confidence,
                "unknown": is_unknown,
                "top_k": top,
                "model": model_json,
            });
            if let Some(info) = info {
                line["info"] = json!(info);
            }
            if let Some((overlay, heat)) = &explanation {
                line["explanation"] = json!({"overlay": overlay, "heat": heat});
            }
            println!("{line}");
        } else {
            // Below its threshold the answer is unknown and every top class is a runner-up.
            let runners: Vec<String> = top[usize::from(!is_unknown)..]
                .iter()
                .map(|s| format!("{} {:.1}%", s.class, 100.0 * s.confidence))
                .collect();
            println!(
                "{:<40} {:<16} {:>6.1}%  {}",
                path.display(),
                answer,
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
            if let Some((overlay, _)) = &explanation {
                println!("{:<40} why: {}", "", overlay.display());
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} file(s) could not be predicted");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `<stem>.explain.png` (the image with the occlusion map over it) and `<stem>.heat.png`
/// (the map alone, at the model's input size) into `dir` for the top class; returns both paths.
/// `used` keeps names unique when files of the same name come from several folders.
fn explain_file(
    bundle: &ModelBundle,
    path: &Path,
    probs: &[f32],
    (dir, limits): (&Path, DecodeLimits),
    used: &mut HashSet<String>,
) -> Result<(PathBuf, PathBuf)> {
    let side = bundle.meta.image_size;
    let rgb = imaging::load_rgb(path, explain::shown_side(side), limits)?;
    let class = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .context("no classes")?;
    let exp = explain::occlusion(bundle, imaging::square(&rgb, side).as_raw(), class);
    // Shown at 256 to 512 px (never below the model's input), whatever the source size.
    let shown = rgb.width().min(rgb.height()).clamp(256, 512).max(side);
    let overlay = exp.overlay(&imaging::square(&rgb, shown));
    let stem = path
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    let mut name = stem.clone();
    let mut n = 1;
    while !used.insert(name.clone()) {
        n += 1;
        name = format!("{stem}-{n}");
    }
    let out = (
        dir.join(format!("{name}.explain.png")),
        dir.join(format!("{name}.heat.png")),
    );
    fsutil::write_atomic(
        &out.0,
        &png_bytes(&image::DynamicImage::ImageRgb8(overlay))?,
    )?;
    fsutil::write_atomic(
        &out.1,
        &png_bytes(&image::DynamicImage::ImageLuma8(exp.heat_image()))?,
    )?;
    Ok(out)
}

fn png_bytes(img: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
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
