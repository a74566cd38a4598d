//! Class imbalance during training: per-class weights in the cross-entropy loss
//! (`train.class_weights`, `train.class_weight_power`) or a class-balanced sampler
//! (`train.sampler = "balanced"`). Both are resolved once against the training images' class
//! counts and recorded in the run's params.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::Device;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The weights `train.class_weights` accepts (as the loss uses them, in f32).
pub const WEIGHT_RANGE: std::ops::RangeInclusive<f32> = 1e-6..=1e6;

/// `train.class_weights`: how much each class's images count in the loss.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawWeights", into = "RawWeights")]
pub enum ClassWeights {
    /// Every image counts the same.
    #[default]
    None,
    /// Inverse frequency: `(n_max / n_class) ^ class_weight_power`.
    Balanced,
    /// Given weights per class name; classes not named weigh 1.
    Table(BTreeMap<String, f64>),
}

/// The TOML form: a word or a table.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawWeights {
    Word(String),
    Table(BTreeMap<String, f64>),
}

impl TryFrom<RawWeights> for ClassWeights {
    type Error = String;
    fn try_from(raw: RawWeights) -> Result<Self, String> {
        match raw {
            RawWeights::Word(w) => ClassWeights::parse(&w).map_err(|e| e.to_string()),
            RawWeights::Table(t) => Ok(ClassWeights::Table(t)),
        }
    }
}

impl From<ClassWeights> for RawWeights {
    fn from(w: ClassWeights) -> Self {
        match w {
            ClassWeights::None => RawWeights::Word("none".into()),
            ClassWeights::Balanced => RawWeights::Word("balanced".into()),
            ClassWeights::Table(t) => RawWeights::Table(t),
        }
    }
}

impl ClassWeights {
    /// `none`, `balanced`, or `class=weight,class=weight` (the `--class-weights` flag).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "none" => return Ok(ClassWeights::None),
            "balanced" => return Ok(ClassWeights::Balanced),
            _ => {}
        }
        let mut table = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let Some((class, w)) = part.split_once('=') else {
                bail!(
                    "class weights {s:?}: write \"none\", \"balanced\" or class=weight pairs \
                     separated by commas (e.g. \"rose=2,tulip=1\")"
                );
            };
            let w: f64 = w.trim().parse().map_err(|_| {
                anyhow::anyhow!("class weights {s:?}: {:?} is not a number", w.trim())
            })?;
            table.insert(class.trim().to_string(), w);
        }
        if table.is_empty() {
            bail!("class weights {s:?}: write \"none\", \"balanced\" or class=weight pairs");
        }
        Ok(ClassWeights::Table(table))
    }

    /// Checks the values that do not depend on the dataset.
    pub fn validate(&self) -> Result<()> {
        if let ClassWeights::Table(t) = self {
            for (class, w) in t {
                // The loss weighs in f32 (Σ w·nll / Σ w over a batch): the range keeps every
                // weight a normal f32 and those sums finite.
                if !(w.is_finite() && WEIGHT_RANGE.contains(&(*w as f32))) {
                    bail!(
                        "train.class_weights.{class} = {w} is out of range: use a number from \
                         {:e} to {:e} (only the ratios between weights matter)",
                        WEIGHT_RANGE.start(),
                        WEIGHT_RANGE.end()
                    );
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClassWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassWeights::None => f.write_str("none"),
            ClassWeights::Balanced => f.write_str("balanced"),
            ClassWeights::Table(t) => {
                let parts: Vec<String> = t.iter().map(|(c, w)| format!("{c}={w}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// `train.sampler`: the order of the training images in an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Every training image once per epoch, shuffled.
    #[default]
    Shuffle,
    /// As many draws as training images, each from a class picked uniformly (with
    /// replacement): small classes are seen as often as large ones.
    Balanced,
}

impl Sampler {
    /// The name used in the config and the run's params.
    pub fn as_str(self) -> &'static str {
        match self {
            Sampler::Shuffle => "shuffle",
            Sampler::Balanced => "balanced",
        }
    }
}

/// Checks `train.class_weights`, `class_weight_power` and `sampler` together.
pub fn validate(weights: &ClassWeights, power: f64, sampler: Sampler) -> Result<()> {
    weights.validate()?;
    if !(power.is_finite() && (0.0..=4.0).contains(&power)) {
        bail!("train.class_weight_power = {power} must be in [0, 4] (1 = inverse frequency)");
    }
    if sampler == Sampler::Balanced && *weights != ClassWeights::None {
        bail!(
            "train.sampler = \"balanced\" already evens out the classes: with it, set \
             train.class_weights = \"none\" (or keep the weights and sampler = \"shuffle\")"
        );
    }
    Ok(())
}

/// The weights and sampler of one run, resolved against its training images.
#[derive(Debug, Clone)]
pub struct Weighting {
    /// One weight per class (`None`: plain cross-entropy).
    pub weights: Option<Vec<f32>>,
    sampler: Sampler,
    /// Training-set positions of each class, for the balanced sampler.
    groups: Vec<Vec<usize>>,
    setting: String,
    power: f64,
}

impl Weighting {
    /// Resolves the setting for `classes`; `train_classes` is the class of each training image
    /// (in the order of the training set).
    pub fn new(
        weights: &ClassWeights,
        power: f64,
        sampler: Sampler,
        classes: &[String],
        train_classes: &[usize],
    ) -> Result<Self> {
        let mut counts = vec![0usize; classes.len()];
        let mut groups = vec![Vec::new(); classes.len()];
        for (pos, &c) in train_classes.iter().enumerate() {
            counts[c] += 1;
            groups[c].push(pos);
        }
        let resolved = match weights {
            ClassWeights::None => None,
            ClassWeights::Balanced => Some(balanced(&counts, power)),
            ClassWeights::Table(t) => {
                if let Some(unknown) = t.keys().find(|k| !classes.contains(k)) {
                    bail!(
                        "train.class_weights names class '{unknown}', which the dataset does not \
                         have (classes: {})",
                        classes.join(", ")
                    );
                }
                Some(
                    classes
                        .iter()
                        .map(|c| t.get(c).copied().unwrap_or(1.0) as f32)
                        .collect(),
                )
            }
        };
        Ok(Self {
            weights: resolved,
            sampler,
            groups,
            setting: weights.to_string(),
            power,
        })
    }

    /// The training loss: cross-entropy, weighted per class when weights are set (the mean is
    /// then `Σ w_y · nll / Σ w_y`, as PyTorch's).
    pub fn loss(&self, device: &Device) -> CrossEntropyLoss {
        CrossEntropyLossConfig::new()
            .with_weights(self.weights.clone())
            .init(device)
    }

    /// Next epoch's order of training images. `order` holds dataset indices; `train` is the
    /// training set those positions refer to.
    pub fn order(&self, order: &mut [usize], train: &[usize], rng: &mut impl Rng) {
        match self.sampler {
            Sampler::Shuffle => order.shuffle(rng),
            Sampler::Balanced => {
                let present: Vec<&Vec<usize>> =
                    self.groups.iter().filter(|g| !g.is_empty()).collect();
                for slot in order.iter_mut() {
                    let group = present[rng.random_range(0..present.len())];
                    *slot = train[group[rng.random_range(0..group.len())]];
                }
            }
        }
    }

    /// The run params that record this setting.
    pub fn params(&self, classes: &[String]) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("train.class_weights", self.setting.clone()),
            ("train.class_weight_power", self.power.to_string()),
            ("train.sampler", self.sampler.as_str().into()),
        ];
        if let Some(w) = &self.weights {
            let values: Vec<String> = classes
                .iter()
                .zip(w)
                .map(|(c, w)| format!("{c}={w:.4}"))
                .collect();
            out.push(("train.class_weight_values", values.join(",")));
        }
        out
    }
}

/// `(n_max / n_c) ^ power` per class; a class with no training image weighs 1.
pub fn balanced(counts: &[usize], power: f64) -> Vec<f32> {
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    counts
        .iter()
        .map(|&n| {
            if n == 0 {
                1.0
            } else {
                (max / n as f64).powf(power) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Int, Tensor, TensorData};
    use rand::SeedableRng;

    #[test]
    fn balanced_weights_follow_inverse_frequency() {
        assert_eq!(balanced(&[100, 10, 50], 1.0), vec![1.0, 10.0, 2.0]);
        let half = balanced(&[100, 25], 0.5);
        assert!((half[1] - 2.0).abs() < 1e-6);
        assert_eq!(balanced(&[100, 10], 0.0), vec![1.0, 1.0]);
        assert_eq!(balanced(&[4, 0], 1.0), vec![1.0, 1.0]);
    }

    #[test]
    fn parse_and_display_round_trip() {
        assert_eq!(ClassWeights::parse("none").unwrap(), ClassWeights::None);
        assert_eq!(
            ClassWeights::parse("balanced").unwrap(),
            ClassWeights::Balanced
        );
        let t = ClassWeights::parse("rose=2, tulip=0.5").unwrap();
        assert_eq!(t.to_string(), "rose=2,tulip=0.5");
        assert!(ClassWeights::parse("rose").is_err());
        assert!(ClassWeights::parse("rose=x").is_err());
        assert!(ClassWeights::parse("rose=-1").unwrap().validate().is_err());
        for bad in ["rose=1e-50", "rose=1e39", "rose=0", "rose=inf", "rose=NaN"] {
            assert!(
                ClassWeights::parse(bad).unwrap().validate().is_err(),
                "{bad}"
            );
        }
        for good in ["rose=1e-6", "rose=1e6", "rose=0.5,tulip=300"] {
            ClassWeights::parse(good).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn weighted_loss_is_the_weighted_mean_of_the_nll() {
        let device = crate::util::device::inference();
        let classes = vec!["a".to_string(), "b".to_string()];
        let w = Weighting::new(
            &ClassWeights::Balanced,
            1.0,
            Sampler::Shuffle,
            &classes,
            &[0, 0, 0, 1],
        )
        .unwrap();
        assert_eq!(w.weights, Some(vec![1.0, 3.0]));
        let logits = [[2.0f32, 0.0], [0.0, 1.0]];
        let flat: Vec<f32> = logits.iter().flatten().copied().collect();
        let x = Tensor::<2>::from_data(TensorData::new(flat, [2, 2]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
        let got: f32 = w.loss(&device).forward(x, y).into_scalar();
        let nll = |l: [f32; 2], t: usize| {
            let m = l[0].max(l[1]);
            m + ((l[0] - m).exp() + (l[1] - m).exp()).ln() - l[t]
        };
        let want = (nll(logits[0], 0) + 3.0 * nll(logits[1], 1)) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn balanced_sampler_draws_classes_evenly() {
        let classes = vec!["big".to_string(), "small".to_string()];
        let train_classes: Vec<usize> = (0..110).map(|i| usize::from(i >= 100)).collect();
        let train: Vec<usize> = (0..110).collect();
        let w = Weighting::new(
            &ClassWeights::None,
            1.0,
            Sampler::Balanced,
            &classes,
            &train_classes,
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut order = train.clone();
        let mut small = 0;
        for _ in 0..20 {
            w.order(&mut order, &train, &mut rng);
            small += order.iter().filter(|&&i| i >= 100).count();
        }
        let share = small as f64 / (20.0 * 110.0);
        assert!((0.45..0.55).contains(&share), "small class share {share}");
    }

    #[test]
    fn a_table_naming_an_unknown_class_is_refused() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let t = ClassWeights::parse("c=2").unwrap();
        let err = Weighting::new(&t, 1.0, Sampler::Shuffle, &classes, &[0, 1]).unwrap_err();
        assert!(err.to_string().contains("'c'"), "{err}");
    }
}
