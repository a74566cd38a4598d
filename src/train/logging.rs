//! What a training run logs and prints: its inputs, per-epoch metrics, `results.csv`, the summary.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::TrainOutcome;
use super::data::Prepared;
use crate::config::Settings;
use crate::data::split;
use crate::model::pretrained::catalog::Resolved;
use crate::track::epochs::{EpochStats, epoch_metrics};
use crate::track::store::Run;
use crate::util::{fsutil, progress};

/// Logs every resolved setting, the data fingerprint, the split and the config; for
/// pretrained weights, the file used and its SHA-256 (and the name and URL of named ones).
pub(super) fn log_inputs(
    settings: &Settings,
    run: &Run,
    data: &Prepared,
    pretrained: Option<&Resolved>,
) -> Result<()> {
    let cfg = &settings.config;
    let (d, t) = (&cfg.data, &cfg.train);
    let params: Vec<(&str, String)> = vec![
        ("project.name", cfg.project.name.clone()),
        ("data.dir", settings.data_dir().display().to_string()),
        ("data.image_size", d.image_size.to_string()),
        ("data.val_fraction", d.val_fraction.to_string()),
        ("data.seed", d.seed.to_string()),
        ("data.augment", d.augment.to_string()),
        ("data.crop_scale_min", d.crop_scale_min.to_string()),
        ("train.arch", t.arch.as_str().into()),
        ("train.epochs", t.epochs.to_string()),
        ("train.batch_size", t.batch_size.to_string()),
        ("train.learning_rate", t.learning_rate.to_string()),
        (
            "train.lr_schedule",
            format!("{:?}", t.lr_schedule).to_lowercase(),
        ),
        ("train.weight_decay", t.weight_decay.to_string()),
        ("train.dropout", t.dropout().to_string()),
        ("train.width", t.width.to_string()),
        (
            "train.pretrained",
            pretrained.map_or("none".into(), |p| match &p.weights {
                Some(w) => w.name.clone(),
                None => p.file.display().to_string(),
            }),
        ),
        ("train.freeze_epochs", t.freeze_epochs.to_string()),
        ("train.unfreeze_fraction", t.unfreeze_fraction.to_string()),
        (
            "train.finetune_learning_rate",
            t.finetune_learning_rate.to_string(),
        ),
        ("train.patience", t.patience.to_string()),
        ("train.threads", t.threads.to_string()),
        // The SIMD kernels' build the run used (`FLORA_KERNELS` caps it), as `--version` says.
        ("kernels", crate::ops::simd::kernels().name().into()),
        ("train.device", t.device.to_string()),
        ("device", crate::util::device::selected().name),
        ("num_classes", data.classes.len().to_string()),
        ("classes", data.classes.join(",")),
        ("num_train", data.train.len().to_string()),
        ("num_val", data.val.len().to_string()),
        ("num_skipped", data.cache.skipped.len().to_string()),
        ("thresholds", settings.thresholds().describe()),
    ];
    let mut weights: Vec<(&str, String)> = Vec::new();
    if let Some(p) = pretrained {
        weights.push(("pretrained.file", p.file.display().to_string()));
        weights.push(("pretrained.sha256", p.sha256.clone()));
        if let Some(w) = &p.weights {
            weights.push(("pretrained.name", w.name.clone()));
            weights.push(("pretrained.url", w.url.clone()));
            if let Some(m) = settings.weights_mirror() {
                weights.push(("pretrained.mirror", m));
            }
        }
    }
    let params = params
        .into_iter()
        .chain(weights)
        .chain(data.weighting.params(&data.classes));
    for (k, v) in params {
        run.log_param(k, &v)?;
    }
    run.set_tag("flora.data_fingerprint", &data.cache.fingerprint)?;
    split::write_csv(&run.artifacts().join("split.csv"), &data.split_rows)?;
    // Never a secret in the run store (which `mlflow ui` shows): the admin token is left out.
    let mut public = cfg.clone();
    let mut text = String::new();
    if public.serve.admin_token.take().is_some() {
        text.push_str("# serve.admin_token is set but left out of the run store (a secret)\n");
    }
    text.push_str(&toml::to_string_pretty(&public).context("serialising the resolved config")?);
    fsutil::write_atomic(&run.artifacts().join("config.toml"), text.as_bytes())
}

pub(super) fn log_epoch(run: &Run, s: &EpochStats) -> Result<()> {
    for (k, v) in epoch_metrics(s) {
        run.log_metric(k, v, s.epoch as u64)?;
    }
    Ok(())
}

pub(super) fn report_epoch(s: &EpochStats, epochs: usize) {
    let line = format!(
        "epoch {}/{} {:<8} train_loss {:.4}  train_acc {:.2}%  val_loss {:.4}  val_acc {:.2}%  lr {:.2e}  {:.1}s  {:.0} img/s",
        s.epoch,
        epochs,
        s.phase,
        s.train_loss,
        100.0 * s.train_accuracy,
        s.val_loss,
        100.0 * s.val_accuracy,
        s.learning_rate,
        s.epoch_seconds,
        s.images_per_second
    );
    if progress::interactive() {
        eprintln!("{line}")
    } else {
        println!("{line}")
    }
}

/// `results.csv`: one human-readable row per epoch, rewritten atomically after each epoch.
pub(super) fn write_results(run: &Run, history: &[EpochStats]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in history {
        w.serialize(s)?;
    }
    fsutil::write_atomic(
        &run.artifacts().join("results.csv"),
        &w.into_inner().context("writing results.csv")?,
    )
}

/// The end-of-run summary table.
pub fn summary(o: &TrainOutcome) -> String {
    let mut s = String::new();
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<16} {v}");
    };
    let _ = writeln!(s, "\nrun {} {}", o.run_name, o.status.as_str());
    row(&mut s, "run id", o.run_id.clone());
    row(
        &mut s,
        "best epoch",
        o.best_epoch
            .map_or("-".into(), |e| format!("{e} of {}", o.epochs_run)),
    );
    row(
        &mut s,
        "val accuracy",
        o.val_accuracy
            .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
    );
    row(
        &mut s,
        "val loss",
        o.val_loss.map_or("-".into(), |l| format!("{l:.4}")),
    );
    row(&mut s, "phases", o.phases.clone());
    row(&mut s, "time", format!("{:.1}s", o.seconds));
    row(
        &mut s,
        "train speed",
        format!("{:.0} img/s", o.images_per_second),
    );
    row(
        &mut s,
        "model",
        o.bundle_dir
            .as_ref()
            .map_or("-".into(), |p| p.display().to_string()),
    );
    s
}
