//! Parsing a `--sweep` spec into trials, each a config built and validated before anything
//! trains.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;

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

/// The most trials one sweep runs (`--trials`, or a grid's combinations).
pub const MAX_TRIALS: usize = 1000;

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
            Some(n) if !(1..=MAX_TRIALS).contains(&n) => {
                bail!("--trials {n} is out of range: use 1 to {MAX_TRIALS}")
            }
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
pub(super) fn overrides_text(overrides: &[(String, String)]) -> String {
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
    full.train.pretrained_mirror = Some("x".into());
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
    let mut size = 1usize;
    for a in axes {
        let Domain::List(values) = &a.domain else {
            bail!(
                "{} is a range: give --trials N to sample from it, or list the values (a,b,c)",
                a.key
            );
        };
        size = size.saturating_mul(values.len());
        if size > MAX_TRIALS {
            bail!(
                "the sweep's grid has more than {MAX_TRIALS} combinations: list fewer values, \
                 or sample some with --trials N"
            );
        }
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
        assert!(err("learning_rate=1e-4..1e-2", Some(0)).contains("1 to 1000"));
        let huge = err("learning_rate=1e-4..1e-2", Some(usize::MAX));
        assert!(
            huge.contains("out of range") && huge.contains("1 to 1000"),
            "{huge}"
        );
        let values = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let spec = format!("epochs={} batch_size={}", values(40), values(30));
        assert!(err(&spec, None).contains("more than 1000 combinations"));
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
