//! `flora eval`: metrics of a model on its run's validation split or on `--data DIR`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::EvalArgs;
use flora::config::Settings;
use flora::evaluate::{coverage, eval, html_report};
use flora::track::select;
use flora::track::store::{self, Run};

/// Exit code when accuracy is below `--min-accuracy`.
pub const EXIT_BELOW_GATE: u8 = 3;

/// Prints the report (or JSON), saves the files, logs into the run; exits 3 below the gate.
pub fn run(settings: &Settings, args: &EvalArgs) -> Result<ExitCode> {
    super::select_inference_device(args.device)?;
    let chosen = select::choose(settings, &args.model.choice())?;
    eprintln!("model: {}", chosen.describe());
    let bundle = chosen.load()?;
    let samples = match (&args.data, chosen.run()) {
        (Some(dir), _) => eval::samples_from_dir(&std::path::absolute(dir)?, &bundle.meta.classes)?,
        (None, Some(run)) => {
            let (samples, what) = eval::default_samples(run, &bundle.meta.classes)?;
            eprintln!("data: {what} ({} images)", samples.len());
            samples
        }
        (None, None) => {
            bail!("this model has no run to take a validation split from: pass --data DIR")
        }
    };
    let store = super::cache::unless_off(settings, args.no_cache).pixel_store()?;
    let result = eval::evaluate(&bundle, &samples, settings.decode_limits(), store.as_ref())?;
    if !result.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} unreadable file(s), e.g. {}",
            result.skipped.len(),
            result.skipped[0].0.display()
        );
    }
    let outcomes = result.outcomes();
    let curve = coverage::curve(&outcomes, &coverage::THRESHOLDS);
    let suggested = args
        .target_accuracy
        .map(|t| coverage::suggest(&outcomes, t as f64));
    let thresholds = bundle.meta.thresholds_with(settings.thresholds());
    let under = (!thresholds.is_empty()).then(|| result.under(&thresholds));
    let out_dir = match (&args.out, chosen.run()) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(run)) => Some(run.artifacts().join("eval")),
        (None, None) => None,
    };
    if let Some(dir) = &out_dir {
        result.write_files(dir)?;
    }
    let html = match (&out_dir, args.html) {
        (Some(dir), true) => Some(write_html(&chosen, &bundle, &result, &curve, dir)?),
        (None, true) => bail!("--html needs a folder for the page: pass --out DIR"),
        _ => None,
    };
    if let Some(run) = chosen.run() {
        result.log_to(&Run::open(run.clone()))?;
    }
    if args.json {
        let mut v = serde_json::to_value(&result.report)?;
        v["coverage"] = serde_json::to_value(&curve)?;
        if let Some(s) = &suggested {
            v["suggested_threshold"] = serde_json::to_value(s)?;
        }
        if let Some((cov, acc)) = under {
            v["thresholds"] = serde_json::json!({
                "thresholds": thresholds, "coverage": cov, "accuracy": acc,
            });
        }
        if let Some(page) = &html {
            v["html"] = serde_json::json!(page);
        }
        println!("{v}");
    } else {
        println!("{}", result.report.table());
        println!(
            "confusion matrix (rows: true class, columns: predicted)\n{}",
            result.report.confusion_table()
        );
        println!(
            "accuracy against coverage (below the threshold the answer is unknown)\n{}",
            coverage::table(&curve)
        );
        if let Some((cov, acc)) = under {
            println!(
                "with the model's thresholds ({}): {:.1}% answered, {:.2}% accuracy on those",
                thresholds.describe(),
                100.0 * cov,
                100.0 * acc
            );
        }
        match (&suggested, args.target_accuracy) {
            (Some(Some(p)), Some(t)) => println!(
                "for {:.1}% accuracy: min_confidence = {:.4} ({:.1}% answered, {:.2}% accurate); \
                 set it under [thresholds] in flora.toml",
                100.0 * t,
                p.threshold,
                100.0 * p.coverage,
                100.0 * p.accuracy
            ),
            (Some(None), Some(t)) => println!(
                "no threshold reaches {:.1}% accuracy on this data",
                100.0 * t
            ),
            _ => {}
        }
        if let Some(page) = &html {
            println!("wrote {}", page.display());
        }
        if let Some(dir) = &out_dir {
            println!(
                "wrote confusion_matrix.csv, confusion_matrix.png, misclassified.csv to {}",
                dir.display()
            );
        } else {
            eprintln!("(pass --out DIR to save the confusion matrix and misclassified.csv)");
        }
    }
    if let Some(min) = args.min_accuracy
        && result.report.accuracy < min
    {
        eprintln!(
            "accuracy {:.4} is below --min-accuracy {min}",
            result.report.accuracy
        );
        return Ok(ExitCode::from(EXIT_BELOW_GATE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `report.html` (and its thumbnails) into `dir`.
fn write_html(
    chosen: &select::Chosen,
    bundle: &flora::model::bundle::ModelBundle,
    result: &eval::Evaluation,
    curve: &[coverage::Point],
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let mut facts = vec![
        ("model".to_string(), chosen.describe()),
        ("classes".into(), bundle.meta.classes.join(", ")),
        (
            "evaluated images fingerprint".into(),
            result.fingerprint.clone(),
        ),
        (
            "training data fingerprint".into(),
            bundle.meta.data_fingerprint.clone(),
        ),
    ];
    let mut params = std::collections::BTreeMap::new();
    if let Some(run) = chosen.run() {
        params = store::read_params(run)?;
    }
    if !bundle.meta.thresholds.is_empty() {
        facts.push(("thresholds".into(), bundle.meta.thresholds.describe()));
    }
    let page = html_report::Page {
        title: format!(
            "flora eval: {}",
            bundle.meta.run_name.as_deref().unwrap_or("model")
        ),
        report: &result.report,
        images: result.images(),
        coverage: curve.to_vec(),
        facts,
        params,
        tables: Vec::new(),
        issues: None,
    };
    html_report::write(dir, &page)
}
