//! `flora export`: a model (run, slot or bundle) as an ONNX file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::{ExportArgs, ExportFormatArg};
use flora::config::Settings;
use flora::evaluate::eval;
use flora::model::onnx::{self, ExportOptions, quantize};
use flora::track::select::{self, Source};

/// Writes the chosen model as ONNX and says what the file takes and gives.
pub fn run(settings: &Settings, args: &ExportArgs) -> Result<ExitCode> {
    let chosen = select::choose(settings, &args.model.choice())?;
    eprintln!("model: {}", chosen.describe());
    let bundle = chosen.load()?;
    let ExportFormatArg::Onnx = args.format;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => {
            let stem = match &chosen.source {
                Source::Run(r) | Source::Slot(_, Some(r)) => r.run_name.clone(),
                Source::Slot(s, None) => s.as_str().to_string(),
                Source::Dir => chosen
                    .dir
                    .file_name()
                    .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
            };
            PathBuf::from(format!("{stem}.onnx"))
        }
    };
    if out.is_dir() {
        bail!(
            "{} is a folder: give --out a file name such as model.onnx",
            out.display()
        );
    }
    if out.exists() && !args.force {
        bail!(
            "{} already exists: pass --force to replace it, or --out another file",
            out.display()
        );
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let int8 = match args.int8 {
        false => None,
        true => {
            let classes = &bundle.meta.classes;
            let (samples, from) = match (&args.calibration, chosen.run()) {
                (Some(dir), _) => (
                    eval::samples_from_dir(dir, classes)?,
                    dir.display().to_string(),
                ),
                (None, Some(run)) => (
                    eval::train_split_samples(run, classes)?,
                    format!("the training split of run {}", run.run_name),
                ),
                (None, None) => bail!(
                    "--int8 calibrates on the run's training split, and this model has no run in \
                     the store: give --calibration DIR (a folder-per-class set)"
                ),
            };
            let files: Vec<PathBuf> = samples.into_iter().map(|s| s.path).collect();
            let used = quantize::calibration_subset(&files).len();
            eprintln!("calibrating INT8 on {used} images of {from}");
            Some(
                quantize::calibrate_files(&bundle, &files, settings.decode_limits())
                    .context("calibrating the INT8 model")?,
            )
        }
    };
    let quantized = int8.is_some();
    let opts = ExportOptions {
        with_preprocess: args.with_preprocess,
        int8,
    };
    let bytes = onnx::write(&bundle, &opts, &out)
        .with_context(|| format!("exporting to {}", out.display()))?;
    let m = &bundle.meta;
    let s = m.image_size;
    let input = if opts.with_preprocess {
        format!("uint8 [batch, {s}, {s}, 3] RGB pixels")
    } else {
        format!("float32 [batch, 3, {s}, {s}] normalised")
    };
    println!(
        "wrote {} ({:.1} MB, ONNX opset {}{})",
        out.display(),
        bytes as f64 / 1e6,
        onnx::OPSET,
        if quantized { ", INT8 QDQ" } else { "" }
    );
    println!(
        "  model   {} (width {}), {} classes",
        m.arch.as_str(),
        m.width,
        m.classes.len()
    );
    println!("  input   {}: {input}", onnx::INPUT);
    println!(
        "  output  {}: float32 [batch, {}] probabilities",
        onnx::OUTPUT,
        m.classes.len()
    );
    println!("  resize  {}", onnx::metadata::resize_rule(s));
    if !opts.with_preprocess {
        println!(
            "  then    (pixel / 255 - mean) / std, mean {:?}, std {:?} (or export --with-preprocess)",
            m.normalization.mean, m.normalization.std
        );
    }
    Ok(ExitCode::SUCCESS)
}
