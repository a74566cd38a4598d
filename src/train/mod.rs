//! `flora train`: dataset → decode-once cache → split → training loop → model bundle, all
//! logged to the run store.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Settings, TrainConfig};
use crate::data::imaging::Normalization;
use crate::model::Classifier;
use crate::model::bundle::{BUNDLE_FORMAT, BundleMeta, ModelBundle, run_bundle_dir};
use crate::model::pretrained::catalog::Resolved;
use crate::track::epochs::EpochStats;
use crate::track::store::{Run, RunStatus, RunStore};
use crate::util::progress;
use crate::util::{device, fsutil};
use checkpoint::{Checkpoint, LoopState, Resume};
use finetune::Schedule;

pub mod checkpoint;
pub mod cv;
mod data;
pub mod finetune;
mod logging;
pub mod sweep;

use data::{Prepared, batch_input, count_correct, evaluate, prepare, to_tensors};
pub use logging::summary;
use logging::{log_epoch, log_inputs, report_epoch, write_results};

/// What a finished (or stopped) training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_id: String,
    pub run_name: String,
    pub status: RunStatus,
    pub best_epoch: Option<usize>,
    pub val_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub epochs_run: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub bundle_dir: Option<std::path::PathBuf>,
    /// The epochs of each training phase (`head 1-3, finetune 4-10`).
    pub phases: String,
}

/// What a caller such as cross-validation ([`crate::train::cv`]) changes in a run; the default
/// changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Images (by content hash) that neither train nor validate: a held-out fold. When set,
    /// the rest is split by content (a dataset's own `train/`+`val/` folders are pooled).
    pub held_out: HashSet<[u8; 32]>,
    /// Images held out by path under the data folder too: a resumed fold's, from its
    /// `split.csv` ([`Resume::held_out`]).
    pub held_out_paths: HashSet<String>,
    /// Tags set on the run right after it is created (such as `mlflow.parentRunId`).
    pub tags: Vec<(String, String)>,
}

/// Which run [`train`] logs to.
pub enum Start<'a> {
    /// A new run: its name (default `<arch>-<date>-<time>`) and tags to set when it starts
    /// (a sweep's trial gets `mlflow.parentRunId`).
    New {
        name: Option<&'a str>,
        tags: Vec<(String, String)>,
    },
    /// An existing run continued from its last checkpoint; `settings` must be its own
    /// ([`Resume::settings`]).
    Resume(&'a Resume),
}

/// Trains a model as `settings` says, logging a run under the run store. `stop` is polled after
/// every batch (Ctrl-C): the run then ends KILLED with what exists saved.
pub fn train(settings: &Settings, start: Start, stop: &AtomicBool) -> Result<TrainOutcome> {
    train_planned(settings, start, stop, &Plan::default())
}

/// [`train`] with a [`Plan`] (a held-out fold, extra tags).
pub fn train_planned(
    settings: &Settings,
    start: Start,
    stop: &AtomicBool,
    plan: &Plan,
) -> Result<TrainOutcome> {
    let resumed;
    let plan = match &start {
        Start::Resume(Resume {
            held_out: Some(paths),
            ..
        }) => {
            resumed = Plan {
                held_out_paths: paths.clone(),
                ..plan.clone()
            };
            &resumed
        }
        _ => plan,
    };
    let cfg = &settings.config;
    crate::ops::heap::keep_freed_memory();
    device::set_threads(cfg.train.threads);
    // Fetched (a name, once into the user cache) and checked before a run exists: missing or
    // wrong weights are a set-up error, not a failed run.
    let pretrained = match settings.pretrained()? {
        Some(source) => {
            let mirror = settings.weights_mirror();
            let r = crate::model::pretrained::catalog::resolve(&source, mirror.as_deref())?;
            crate::model::pretrained::check(cfg.train.arch, cfg.train.width, &r.file)?;
            Some(r)
        }
        None => None,
    };
    let data = prepare(settings, plan)?;
    let (mut run, checkpoint, tags) = match start {
        Start::New { name, mut tags } => {
            let store = RunStore::new(settings.runs_dir());
            let exp = store.experiment(&cfg.project.name)?;
            let name = name
                .map(str::to_string)
                .unwrap_or_else(|| default_run_name(cfg.train.arch.as_str()));
            tags.extend(plan.tags.iter().cloned());
            (store.create_run(&exp, &name)?, None, tags)
        }
        Start::Resume(resume) => {
            resume.check_data(&data.cache.fingerprint)?;
            let run = resume.reopen(&data.cache.fingerprint)?;
            (run, Some(&resume.checkpoint), Vec::new())
        }
    };
    set_active(Some(&run));
    eprintln!(
        "run {} ({}) in {}",
        run.info.run_name,
        run.info.run_id,
        settings.runs_dir().display()
    );
    let inputs = match checkpoint {
        Some(_) => Ok(()), // logged when the run started
        None => tags
            .iter()
            .try_for_each(|(k, v)| run.set_tag(k, v))
            .and_then(|()| log_inputs(settings, &run, &data, pretrained.as_ref())),
    };
    let result =
        inputs.and_then(|()| fit(settings, &run, &data, stop, checkpoint, pretrained.as_ref()));
    // Under the lock of the active run, so that a second signal cannot end it a second time.
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    *active = None;
    match result {
        Ok(outcome) => {
            run.end(outcome.status)?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = run.end(RunStatus::Failed);
            // A write that failed because the run folder was removed says so.
            let e = match run.check_present() {
                Err(gone) => e.context(gone.to_string()),
                Ok(()) => e,
            };
            Err(e.context(format!("run {} failed", run.info.run_id)))
        }
    }
}

/// The run being trained, for [`abandon_active_run`].
static ACTIVE: std::sync::Mutex<Option<Run>> = std::sync::Mutex::new(None);

fn set_active(run: Option<&Run>) {
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = run.cloned();
}

/// Marks the run being trained (if any) KILLED: for a second Ctrl-C or SIGTERM, which ends the
/// process at once instead of after the batch. Returns the run id.
pub fn abandon_active_run() -> Option<String> {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = active.take()?;
    let _ = run.end(RunStatus::Killed);
    Some(run.info.run_id)
}

/// The training loop: Adam, cross-entropy, LR schedule, early stopping, best-epoch weights, a
/// checkpoint after every epoch; from `checkpoint`'s epoch on when one is given, from
/// `pretrained_weights` when given.
fn fit(
    settings: &Settings,
    run: &Run,
    data: &Prepared,
    stop: &AtomicBool,
    checkpoint: Option<&Checkpoint>,
    pretrained_weights: Option<&Resolved>,
) -> Result<TrainOutcome> {
    let cfg = &settings.config;
    let t = &cfg.train;
    let started = Instant::now();
    let device = device::training();
    // On a GPU the model is built and initialised on the CPU, then moved (at the start of the
    // first epoch, where the CPU initialises it): a GPU run starts from a CPU run's weights.
    let build = match device::on_cpu(&device) {
        true => device.clone(),
        false => device::cpu_training(),
    };
    let mut on_device = device::on_cpu(&device);
    build.seed(cfg.data.seed);
    let mut model =
        Classifier::with_width(t.arch, t.width, data.classes.len(), t.dropout(), &build);
    let mut pretrained = None;
    if let Some(p) = pretrained_weights {
        let (loaded, source) =
            crate::model::pretrained::load_classifier(model, t.width, &p.file, p.name())?;
        eprintln!(
            "starting from pretrained weights {source}; new {}-class head",
            data.classes.len()
        );
        (model, pretrained) = (loaded, Some(source));
    }
    let mut adam = AdamConfig::new();
    if t.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(t.weight_decay as f32)));
    }
    let mut optim = adam.init();
    let norm = Normalization::default();
    let batches_per_epoch = data.train.len().div_ceil(t.batch_size);
    let mut schedule = Schedule::new(t, batches_per_epoch);
    let mut history: Vec<EpochStats> = Vec::new();
    let mut best: Option<(EpochStats, Classifier)> = None;
    let mut since_best = 0usize;
    let mut train_images = 0usize;
    let mut train_seconds = 0f64;
    let mut stopped = false;
    let loss_fn = data.weighting.loss(&device);
    let mut first_epoch = 1;
    if let Some(ck) = checkpoint {
        (model, optim) = ck.restore(model, optim)?;
        schedule.restore(ck.state.schedule.clone());
        history = ck.history.clone();
        let fresh =
            Classifier::with_width(t.arch, t.width, data.classes.len(), t.dropout(), &device);
        best = ck.best(fresh)?.map(|(s, m)| (s, m.valid()));
        since_best = ck.state.since_best;
        (train_images, train_seconds) = (ck.state.train_images, ck.state.train_seconds);
        first_epoch = ck.state.epoch + 1;
        // Stopped right at the epoch where early stopping ended the run: it stays ended.
        if stops_early(t, &schedule, ck.state.epoch, since_best) {
            first_epoch = t.epochs + 1;
        }
    }

    for epoch in first_epoch..=t.epochs {
        // Every random draw of the epoch (shuffle or balanced sampling, augmentation, dropout)
        // comes from (seed, epoch): a run resumed at this epoch draws exactly what an
        // uninterrupted one does.
        let epoch_seed = cfg.data.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        device.seed(epoch_seed ^ 0xD1B5_4A32_D192_ED03);
        if !on_device {
            build.seed(epoch_seed ^ 0xD1B5_4A32_D192_ED03);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
        let mut order = data.train.clone();
        data.weighting.order(&mut order, &data.train, &mut rng);
        model = schedule.begin_epoch(epoch, model);
        if !on_device {
            model = model.initialized().fork(&device);
            on_device = true;
        }
        let bar = progress::epoch_bar(batches_per_epoch as u64, epoch, t.epochs);
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = schedule.lr(epoch, 0);
        for (k, batch) in order.chunks(t.batch_size).enumerate() {
            lr = schedule.lr(epoch, k);
            let aug_seed = rng.random::<u64>();
            let input = batch_input(
                data,
                batch,
                &norm,
                cfg.data.augment,
                cfg.data.crop_scale_min,
                aug_seed,
            );
            let (images, targets) = to_tensors(input, data, batch, &device);
            let logits = model.forward(images);
            let loss = loss_fn.forward(logits.clone(), targets);
            let loss_value: f32 = loss.clone().into_scalar();
            if !loss_value.is_finite() {
                bail!(
                    "training diverged at epoch {epoch} (loss is {loss_value}): lower the learning rate"
                );
            }
            correct += count_correct(logits, data, batch);
            loss_sum += loss_value as f64 * batch.len() as f64;
            seen += batch.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            let secs = t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / secs.max(1e-9)
            ));
            bar.inc(1);
            if stop.load(Ordering::SeqCst) {
                stopped = true;
                break;
            }
        }
        let train_secs = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        if stopped && seen < order.len() {
            eprintln!("interrupted during epoch {epoch}: saving what exists");
            break;
        }
        train_images += seen;
        train_seconds += train_secs;
        let valid = model.valid();
        let (val_loss, val_accuracy) = evaluate(&valid, data, &norm);
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss,
            val_accuracy,
            learning_rate: lr,
            epoch_seconds: t0.elapsed().as_secs_f64(),
            images_per_second: seen as f64 / train_secs.max(1e-9),
            phase: schedule.phase(epoch).as_str().to_string(),
        };
        schedule.end_epoch(val_loss);
        history.push(stats.clone());
        let is_best = best
            .as_ref()
            .is_none_or(|(b, _)| stats.val_accuracy > b.val_accuracy);
        since_best = if is_best { 0 } else { since_best + 1 };
        let state = LoopState {
            format: checkpoint::STATE_FORMAT,
            epoch,
            best_epoch: if is_best {
                Some(epoch)
            } else {
                best.as_ref().map(|(b, _)| b.epoch)
            },
            since_best,
            schedule: schedule.state(),
            train_images,
            train_seconds,
            data_fingerprint: data.cache.fingerprint.clone(),
        };
        checkpoint::save(run, &model, &optim, &state, &history, is_best)?;
        log_epoch(run, &stats)?;
        report_epoch(&stats, t.epochs);
        write_results(run, &history)?;
        crate::evaluate::plot::curves::save_for_run(run, &history);
        if is_best {
            best = Some((stats, valid));
        }
        if stopped || stop.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        if stops_early(t, &schedule, epoch, since_best) {
            eprintln!(
                "early stopping: no better val accuracy for {} epochs",
                t.patience
            );
            break;
        }
    }

    let (best_stats, best_model) = match best {
        Some((s, m)) => (Some(s), m),
        None => (None, model.valid()),
    };
    let mut metrics = BTreeMap::new();
    if let Some(s) = &best_stats {
        metrics.insert("val_accuracy".into(), s.val_accuracy);
        metrics.insert("val_loss".into(), s.val_loss);
        metrics.insert("best_epoch".into(), s.epoch as f64);
        run.log_metric("best_val_accuracy", s.val_accuracy, s.epoch as u64)?;
    }
    let bundle = ModelBundle::new(
        BundleMeta {
            format: BUNDLE_FORMAT,
            flora_version: env!("CARGO_PKG_VERSION").into(),
            arch: t.arch,
            image_size: cfg.data.image_size,
            classes: data.classes.clone(),
            normalization: norm,
            dropout: t.dropout(),
            width: t.width,
            pretrained,
            run_id: Some(run.info.run_id.clone()),
            run_name: Some(run.info.run_name.clone()),
            data_fingerprint: data.cache.fingerprint.clone(),
            metrics,
            class_info: class_info_json(settings)?,
            thresholds: settings.thresholds(),
            created_at_ms: fsutil::now_ms(),
        },
        best_model,
    );
    let bundle_dir = run_bundle_dir(&run.artifacts());
    run.check_present()?;
    bundle.replace(&bundle_dir)?;
    Ok(TrainOutcome {
        run_id: run.info.run_id.clone(),
        run_name: run.info.run_name.clone(),
        status: if stopped {
            RunStatus::Killed
        } else {
            RunStatus::Finished
        },
        best_epoch: best_stats.as_ref().map(|s| s.epoch),
        val_accuracy: best_stats.as_ref().map(|s| s.val_accuracy),
        val_loss: best_stats.as_ref().map(|s| s.val_loss),
        epochs_run: history.len(),
        seconds: started.elapsed().as_secs_f64(),
        images_per_second: train_images as f64 / train_seconds.max(1e-9),
        bundle_dir: Some(bundle_dir),
        phases: finetune::describe(&history.iter().map(|s| s.phase.as_str()).collect::<Vec<_>>()),
    })
}

/// Whether early stopping ends the run after `epoch`, `since_best` epochs after the best.
fn stops_early(t: &TrainConfig, schedule: &Schedule, epoch: usize, since_best: usize) -> bool {
    t.patience > 0 && since_best >= t.patience && epoch < t.epochs && schedule.may_stop_early(epoch)
}

/// `[class_info]` from the config, as JSON values for the bundle.
fn class_info_json(
    settings: &Settings,
) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>> {
    settings
        .config
        .class_info
        .iter()
        .map(|(class, kv)| {
            let inner = kv
                .iter()
                .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            Ok((class.clone(), inner))
        })
        .collect()
}

/// `<arch>-<yyyymmdd>-<hhmmss>` in local time.
fn default_run_name(arch: &str) -> String {
    let now = jiff::Zoned::now();
    format!("{arch}-{}", now.strftime("%Y%m%d-%H%M%S"))
}
