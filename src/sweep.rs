//! Hyperparameter sweeps: `flora train --sweep "learning_rate=1e-3,3e-4 batch_size=32,64"`.
//!
//! A sweep varies `[data]` and `[train]` keys of `flora.toml`, named as in the file
//! (`train.learning_rate`, or `learning_rate` where only one section has it). Each key takes a
//! list of values (`a,b,c`) or, with `--trials N`, a range to sample from (`lo..hi`, uniform;
//! `lo..hi:log`, log-uniform; integers for integer keys). Without `--trials` the sweep is the
//! grid of every combination of the lists. Every trial's config is built and validated (as
//! `flora.toml` is) before anything trains. The trials run one after another as child runs of
//! a parent run (MLflow's `mlflow.parentRunId` tag), which gets the ranked results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, Settings};
use crate::fsutil;
use crate::store::{self, Run, RunInfo, RunStatus, RunStore};
use crate::train::{self, Start};

/// The config sections a sweep may vary.
const SECTIONS: [&str; 2] = ["data", "train"];

/// The values one key takes.
#[derive(Debug, Clone, PartialEq)]
enum Domain {
    List(Vec<toml::Value>),
    Range {
        lo: f64,
        hi: f64,
        log: bool,
        int: bool,
    },
}

/// One swept key.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    /// `section.key`.
    key: String,
    domain: Domain,
}

/// A checked sweep: every trial's overrides and its validated config.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `--sweep` text.
    pub spec: String,
    /// `grid` or `random`.
    pub mode: &'static str,
    /// The swept keys, `section.key`.
    pub keys: Vec<String>,
    /// Per trial: (key, value text) overrides and the resulting config.
    pub trials: Vec<(Vec<(String, String)>, Config)>,
}

impl Plan {
    /// Parses `spec` against `base` (grid, or `trials` random draws seeded by `data.seed`) and
    /// builds and validates every trial's config.
    pub fn new(base: &Config, spec: &str, trials: Option<usize>) -> Result<Self> {
        let table = toml::Value::try_from(base).context("serialising the config")?;
        let axes = parse_spec(&table, spec)?;
        let draws: Vec<Vec<(String, toml::Value)>> = match trials {
            None => grid(&axes)?,
            Some(0) => bail!("--trials must be at least 1"),
            Some(n) => {
                let mut rng = ChaCha8Rng::seed_from_u64(base.data.seed ^ 0x5EED_5EED);
                (0..n).map(|_| sample(&axes, &mut rng)).collect()
            }
        };
        let mut out = Vec::with_capacity(draws.len());
        for (i, draw) in draws.into_iter().enumerate() {
            let shown: Vec<(String, String)> =
                draw.iter().map(|(k, v)| (k.clone(), show(v))).collect();
            let config = apply(&table, &draw).with_context(|| {
                format!(
                    "sweep trial {} ({}) is not a valid config; nothing was trained",
                    i + 1,
                    overrides_text(&shown)
                )
            })?;
            out.push((shown, config));
        }
        Ok(Self {
            spec: spec.to_string(),
            mode: if trials.is_some() { "random" } else { "grid" },
            keys: axes.into_iter().map(|a| a.key).collect(),
            trials: out,
        })
    }
}

/// `k=v k2=v2`.
fn overrides_text(overrides: &[(String, String)]) -> String {
    overrides
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every `[data]`/`[train]` key a config may have, with its current value (None for an
/// optional key that is unset).
fn known_keys(table: &toml::Value) -> BTreeMap<String, Option<toml::Value>> {
    let mut out = BTreeMap::new();
    // The optional keys appear in the serialised form only when set.
    let mut full = Config::default();
    full.train.dropout = Some(0.0);
    full.train.pretrained = Some("x".into());
    let full = toml::Value::try_from(&full).expect("a config serialises");
    for section in SECTIONS {
        for t in [&full, table] {
            if let Some(keys) = t.get(section).and_then(|s| s.as_table()) {
                for k in keys.keys() {
                    out.insert(format!("{section}.{k}"), None);
                }
            }
        }
        if let Some(keys) = table.get(section).and_then(|s| s.as_table()) {
            for (k, v) in keys {
                out.insert(format!("{section}.{k}"), Some(v.clone()));
            }
        }
    }
    out
}

/// The full `section.key` for a key as written in the spec.
fn resolve_key(known: &BTreeMap<String, Option<toml::Value>>, key: &str) -> Result<String> {
    if known.contains_key(key) {
        return Ok(key.to_string());
    }
    if !key.contains('.') {
        let matches: Vec<&String> = known
            .keys()
            .filter(|k| k.split_once('.').is_some_and(|(_, k)| k == key))
            .collect();
        match matches.len() {
            1 => return Ok(matches[0].clone()),
            0 => {}
            _ => bail!(
                "sweep key '{key}' is in several sections ({}): write the section too",
                matches
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let hint = known
        .keys()
        .map(|k| {
            (
                edit_distance(k.split_once('.').map_or(k, |(_, k)| k), key),
                k,
            )
        })
        .chain(known.keys().map(|k| (edit_distance(k, key), k)))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    bail!(
        "sweep key '{key}' is not a [data] or [train] key of flora.toml{hint}; the keys are: {}",
        known
            .keys()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses `key=values key=values ...`.
fn parse_spec(table: &toml::Value, spec: &str) -> Result<Vec<Axis>> {
    let known = known_keys(table);
    let mut axes: Vec<Axis> = Vec::new();
    for part in spec.split_whitespace() {
        let Some((key, values)) = part.split_once('=') else {
            bail!(
                "sweep item '{part}' is not key=values (for example learning_rate=1e-3,3e-4 or \
                 learning_rate=1e-4..1e-2:log)"
            );
        };
        let key = resolve_key(&known, key.trim())?;
        if axes.iter().any(|a| a.key == key) {
            bail!("sweep key {key} is given twice");
        }
        let current = known[&key].as_ref();
        let domain = parse_values(&key, current, values)?;
        axes.push(Axis { key, domain });
    }
    if axes.is_empty() {
        bail!(
            "--sweep is empty: give key=values, e.g. \"learning_rate=1e-3,3e-4 batch_size=32,64\""
        );
    }
    Ok(axes)
}

/// One key's values, typed like the key's current value.
fn parse_values(key: &str, current: Option<&toml::Value>, text: &str) -> Result<Domain> {
    let numeric = |v: Option<&toml::Value>| {
        matches!(
            v,
            None | Some(toml::Value::Integer(_) | toml::Value::Float(_))
        )
    };
    if let Some((lo, hi)) = text.split_once("..") {
        let (hi, log) = match hi.strip_suffix(":log") {
            Some(h) => (h, true),
            None => (hi, false),
        };
        if !numeric(current) {
            bail!("{key}={text}: a range needs a numeric key; list the values (a,b,c) instead");
        }
        let int = matches!(current, Some(toml::Value::Integer(_)));
        let num = |s: &str| -> Result<f64> {
            let v: f64 = s
                .trim()
                .parse()
                .with_context(|| format!("{key}={text}: '{s}' is not a number"))?;
            if int && v.fract() != 0.0 {
                bail!("{key}={text}: '{s}' is not an integer ({key} is one)");
            }
            Ok(v)
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            bail!("{key}={text}: a range needs finite bounds, the low one first");
        }
        if log && lo <= 0.0 {
            bail!("{key}={text}: a :log range needs positive bounds");
        }
        return Ok(Domain::Range { lo, hi, log, int });
    }
    let values = text
        .split(',')
        .map(|v| parse_value(key, current, v.trim()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Domain::List(values))
}

fn parse_value(key: &str, current: Option<&toml::Value>, v: &str) -> Result<toml::Value> {
    if v.is_empty() {
        bail!("{key}: an empty value in the list");
    }
    Ok(match current {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            v.parse()
                .with_context(|| format!("{key}={v}: {key} takes an integer"))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            v.parse()
                .with_context(|| format!("{key}={v}: {key} takes a number"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            v.parse()
                .with_context(|| format!("{key}={v}: {key} takes true or false"))?,
        ),
        // An unset optional key: the most specific form the text has.
        None => {
            if let Ok(f) = v.parse::<f64>() {
                toml::Value::Float(f)
            } else if let Ok(b) = v.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(v.into())
            }
        }
        Some(_) => toml::Value::String(v.into()),
    })
}

/// Every combination of the listed values (the first key varies slowest).
fn grid(axes: &[Axis]) -> Result<Vec<Vec<(String, toml::Value)>>> {
    let mut out: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for a in axes {
        let Domain::List(values) = &a.domain else {
            bail!(
                "{} is a range: give --trials N to sample from it, or list the values (a,b,c)",
                a.key
            );
        };
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((a.key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    Ok(out)
}

/// One random draw: a list's values equally likely; a range uniform (or log-uniform).
fn sample(axes: &[Axis], rng: &mut ChaCha8Rng) -> Vec<(String, toml::Value)> {
    axes.iter()
        .map(|a| {
            let v = match &a.domain {
                Domain::List(values) => values[rng.random_range(0..values.len())].clone(),
                Domain::Range { lo, hi, log, int } => {
                    let x = if *log {
                        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
                    } else {
                        lo + rng.random::<f64>() * (hi - lo)
                    };
                    if *int {
                        toml::Value::Integer(x.round().clamp(*lo, *hi) as i64)
                    } else {
                        // Three significant digits: readable run params.
                        toml::Value::Float(format!("{x:.3e}").parse().expect("a float"))
                    }
                }
            };
            (a.key.clone(), v)
        })
        .collect()
}

/// `base` with the overrides, read and validated as `flora.toml` is.
fn apply(base: &toml::Value, draw: &[(String, toml::Value)]) -> Result<Config> {
    let build = |ints_as_floats: bool| -> Result<Config> {
        let mut table = base.clone();
        for (key, value) in draw {
            let (section, name) = key.split_once('.').expect("section.key");
            let value = match value {
                toml::Value::Integer(i) if ints_as_floats => toml::Value::Float(*i as f64),
                v => v.clone(),
            };
            table
                .get_mut(section)
                .and_then(|s| s.as_table_mut())
                .expect("a config section")
                .insert(name.to_string(), value);
        }
        let text = toml::to_string(&table).context("serialising a trial's config")?;
        Config::parse(&text)
    };
    build(false).or_else(|e| build(true).map_err(|_| e))
}

/// What a sweep did.
pub struct SweepOutcome {
    pub parent: RunInfo,
    pub status: RunStatus,
    /// The ranked table.
    pub table: String,
    /// The best child: (name, id, val accuracy).
    pub best: Option<(String, String, f64)>,
}

/// The sweep's parent run, for [`abandon_parent`].
static PARENT: std::sync::Mutex<Option<Run>> = std::sync::Mutex::new(None);

/// Marks the running sweep's parent run (if any) KILLED: for a second Ctrl-C, which ends the
/// process at once.
pub fn abandon_parent() -> Option<String> {
    let mut parent = PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = parent.take()?;
    let _ = run.end(RunStatus::Killed);
    Some(run.info.run_id)
}

/// Runs every trial of `plan` as a child of a new parent run called `name`; `stop` (Ctrl-C)
/// ends the current trial KILLED and starts no other.
pub fn run(
    settings: &Settings,
    plan: &Plan,
    name: Option<&str>,
    stop: &AtomicBool,
) -> Result<SweepOutcome> {
    let store = RunStore::new(settings.runs_dir());
    let exp = store.experiment(&settings.config.project.name)?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| format!("sweep-{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S")));
    let parent = store.create_run(&exp, &name)?;
    *PARENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(parent.clone());
    let result = run_trials(settings, plan, &parent, stop);
    let mut slot = PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut parent) = slot.take() else {
        bail!("the sweep was abandoned");
    };
    match result.and_then(|children| finish(&store, plan, &parent, &children)) {
        Ok((table, best, finished)) => {
            let status = if stop.load(Ordering::SeqCst) {
                RunStatus::Killed
            } else if finished > 0 {
                RunStatus::Finished
            } else {
                RunStatus::Failed
            };
            parent.end(status)?;
            Ok(SweepOutcome {
                parent: parent.info.clone(),
                status,
                table,
                best,
            })
        }
        Err(e) => {
            let _ = parent.end(RunStatus::Failed);
            Err(e.context(format!("sweep {} failed", parent.info.run_id)))
        }
    }
}

/// Logs the sweep's params on the parent and trains each trial; returns the trials started.
fn run_trials(
    settings: &Settings,
    plan: &Plan,
    parent: &Run,
    stop: &AtomicBool,
) -> Result<Vec<usize>> {
    parent.log_param("sweep.spec", &plan.spec)?;
    parent.log_param("sweep.mode", plan.mode)?;
    parent.log_param("sweep.keys", &plan.keys.join(","))?;
    parent.log_param("sweep.trials", &plan.trials.len().to_string())?;
    parent.set_tag("flora.sweep", "parent")?;
    eprintln!(
        "sweep {} ({}): {} trials ({}) of {}",
        parent.info.run_name,
        parent.info.run_id,
        plan.trials.len(),
        plan.mode,
        plan.keys.join(", ")
    );
    let mut children = Vec::new();
    let n = plan.trials.len();
    for (i, (overrides, config)) in plan.trials.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        eprintln!("\ntrial {}/{n}: {}", i + 1, overrides_text(overrides));
        let trial = Settings {
            config: config.clone(),
            ..settings.clone()
        };
        let child_name = format!("{}-{}", parent.info.run_name, i + 1);
        let start = Start::New {
            name: Some(&child_name),
            tags: vec![
                ("mlflow.parentRunId".into(), parent.info.run_id.clone()),
                ("flora.sweep.trial".into(), (i + 1).to_string()),
                ("flora.sweep.overrides".into(), overrides_text(overrides)),
            ],
        };
        if let Err(e) = train::train(&trial, start, stop) {
            eprintln!("trial {} failed: {e:#}", i + 1);
        }
        children.push(i);
    }
    Ok(children)
}

/// The ranked table (best val accuracy first), written to the parent's artifacts.
fn finish(
    store: &RunStore,
    plan: &Plan,
    parent: &Run,
    children: &[usize],
) -> Result<(String, Option<(String, String, f64)>, usize)> {
    // trial number → its run, from the children's tags.
    let mut by_trial: BTreeMap<usize, RunInfo> = BTreeMap::new();
    for r in store.runs()? {
        let tags = store::read_tags(&r)?;
        if tags.get("mlflow.parentRunId") != Some(&parent.info.run_id) {
            continue;
        }
        if let Some(t) = tags.get("flora.sweep.trial").and_then(|t| t.parse().ok()) {
            by_trial.insert(t, r);
        }
    }
    struct Row {
        trial: usize,
        name: String,
        id: String,
        status: String,
        acc: Option<f64>,
        loss: Option<f64>,
        epoch: Option<f64>,
    }
    let mut rows = Vec::new();
    let mut finished = 0;
    for trial in children {
        let info = by_trial.get(&(trial + 1));
        let best = match info {
            Some(r) => store::read_metric(r, "best_val_accuracy")?.last().copied(),
            None => None,
        };
        let loss = match (info, best) {
            (Some(r), Some((_, _, step))) => store::read_metric(r, "val_loss")?
                .iter()
                .rfind(|m| m.2 == step)
                .map(|m| m.1),
            _ => None,
        };
        if info.is_some_and(|r| r.status == RunStatus::Finished) {
            finished += 1;
        }
        rows.push(Row {
            trial: trial + 1,
            name: info.map_or("-".into(), |r| r.run_name.clone()),
            id: info.map_or("-".into(), |r| r.run_id.clone()),
            status: info.map_or("FAILED".into(), |r| r.status.as_str().to_string()),
            acc: best.map(|b| b.1),
            loss,
            epoch: best.map(|b| b.2 as f64),
        });
    }
    rows.sort_by(|a, b| {
        b.acc
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.acc.unwrap_or(f64::NEG_INFINITY))
            .then(a.trial.cmp(&b.trial))
    });
    let mut table = String::new();
    let _ = write!(
        table,
        "{:<4} {:<5} {:<28} {:<10} {:<9} {:>8} {:>8} {:>5}",
        "rank", "trial", "run", "id", "status", "val_acc", "val_loss", "epoch"
    );
    for k in &plan.keys {
        let _ = write!(table, "  {k}");
    }
    table.push('\n');
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "rank",
        "trial",
        "run_name",
        "run_id",
        "status",
        "val_accuracy",
        "val_loss",
        "best_epoch",
    ];
    header.extend(plan.keys.iter().map(String::as_str));
    csv.write_record(&header)?;
    for (rank, r) in rows.iter().enumerate() {
        let values: Vec<String> = plan.trials[r.trial - 1]
            .0
            .iter()
            .map(|(_, v)| v.clone())
            .collect();
        let _ = write!(
            table,
            "{:<4} {:<5} {:<28} {:<10} {:<9} {:>8} {:>8} {:>5}",
            rank + 1,
            r.trial,
            r.name,
            store::short_id(&r.id),
            r.status,
            r.acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
            r.loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.epoch.map_or("-".into(), |e| e.to_string()),
        );
        for (k, v) in plan.keys.iter().zip(&values) {
            let _ = write!(table, "  {v:<width$}", width = k.len());
        }
        table.push('\n');
        let mut record = vec![
            (rank + 1).to_string(),
            r.trial.to_string(),
            r.name.clone(),
            r.id.clone(),
            r.status.clone(),
            r.acc.map_or(String::new(), |a| a.to_string()),
            r.loss.map_or(String::new(), |l| l.to_string()),
            r.epoch.map_or(String::new(), |e| e.to_string()),
        ];
        record.extend(values);
        csv.write_record(&record)?;
    }
    let best = rows
        .first()
        .and_then(|r| r.acc.map(|a| (r.name.clone(), r.id.clone(), a)));
    if let Some((name, id, acc)) = &best {
        let _ = writeln!(
            table,
            "\nbest run: {name} ({id}), val accuracy {:.2}%",
            100.0 * acc
        );
        parent.set_tag("flora.sweep.best_run_id", id)?;
        parent.set_tag("flora.sweep.best_run_name", name)?;
        parent.log_metric("best_val_accuracy", *acc, 0)?;
    }
    let ran = children.len();
    if ran < plan.trials.len() {
        let _ = writeln!(
            table,
            "stopped: {ran} of {} trials ran, {} not started",
            plan.trials.len(),
            plan.trials.len() - ran
        );
    }
    fsutil::write_atomic(&parent.artifacts().join("sweep.txt"), table.as_bytes())?;
    fsutil::write_atomic(
        &parent.artifacts().join("sweep.csv"),
        &csv.into_inner().context("writing sweep.csv")?,
    )?;
    Ok((table, best, finished))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_the_product_and_keys_resolve() {
        let base = Config::default();
        let plan = Plan::new(
            &base,
            "learning_rate=1e-3,3e-4 train.batch_size=32,64",
            None,
        )
        .unwrap();
        assert_eq!(plan.keys, ["train.learning_rate", "train.batch_size"]);
        assert_eq!(plan.trials.len(), 4);
        assert_eq!(plan.trials[1].1.train.batch_size, 64);
        assert_eq!(plan.trials[2].1.train.learning_rate, 3e-4);
        let plan = Plan::new(&base, "dropout=0,0.5 augment=false", None).unwrap();
        assert_eq!(plan.trials[0].1.train.dropout, Some(0.0));
        assert!(!plan.trials[1].1.data.augment);
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_the_reason() {
        let base = Config::default();
        let err = |spec: &str, trials| format!("{:#}", Plan::new(&base, spec, trials).unwrap_err());
        let e = err("learnin_rate=1", None);
        assert!(e.contains("did you mean train.learning_rate"), "{e}");
        assert!(err("serve.port=1,2", None).contains("not a [data] or [train] key"));
        assert!(err("batch_size=0,32", None).contains("train.batch_size must be at least 1"));
        assert!(err("batch_size=3.5", None).contains("takes an integer"));
        assert!(err("learning_rate=1e-4..1e-2:log", None).contains("--trials"));
        assert!(err("arch=cnn,resnet", None).contains("resnet"));
        assert!(err("learning_rate=-1..1:log", Some(3)).contains("positive bounds"));
    }

    #[test]
    fn random_trials_stay_in_their_ranges_and_repeat_with_the_seed() {
        let base = Config::default();
        let spec = "learning_rate=1e-4..1e-2:log batch_size=8..64 arch=cnn,mobilenet_v2";
        let a = Plan::new(&base, spec, Some(20)).unwrap();
        let b = Plan::new(&base, spec, Some(20)).unwrap();
        assert_eq!(a.trials.len(), 20);
        for ((oa, ca), (ob, _)) in a.trials.iter().zip(&b.trials) {
            assert_eq!(oa, ob);
            assert!((1e-4..=1e-2).contains(&ca.train.learning_rate));
            assert!((8..=64).contains(&ca.train.batch_size));
        }
        let archs: std::collections::BTreeSet<_> =
            a.trials.iter().map(|t| t.1.train.arch.as_str()).collect();
        assert_eq!(archs.len(), 2);
    }
}
