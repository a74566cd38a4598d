//! The "unknown" answer: below a minimum confidence (global, or per predicted class) predict,
//! serve and merge do not name a class. The thresholds come from `[thresholds]` in flora.toml
//! and are carried in the model bundle; a `[thresholds]` table in the config in use replaces
//! the bundle's as a whole.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::model::Scored;

/// What predict and serve answer instead of a class name.
pub const UNKNOWN: &str = "unknown";

/// The key of `[thresholds]` that sets the global minimum.
pub const GLOBAL_KEY: &str = "min_confidence";

/// Minimum confidences: a prediction whose top class is below its class's threshold (or the
/// global one when the class has none) is answered as unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// For every class without its own threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
    /// Per predicted class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_class: BTreeMap<String, f32>,
}

impl Thresholds {
    /// From the `[thresholds]` table: `min_confidence = X` and `<class> = Y` entries, each in
    /// [0, 1].
    pub fn from_table(table: &BTreeMap<String, f64>) -> Result<Self> {
        let mut out = Thresholds::default();
        for (key, &v) in table {
            if !(0.0..=1.0).contains(&v) {
                bail!("thresholds.{key} = {v} must be a confidence between 0 and 1");
            }
            if key == GLOBAL_KEY {
                out.min_confidence = Some(v as f32);
            } else {
                out.per_class.insert(key.clone(), v as f32);
            }
        }
        Ok(out)
    }

    /// True when no threshold is set.
    pub fn is_empty(&self) -> bool {
        self.min_confidence.is_none() && self.per_class.is_empty()
    }

    /// Checks the values and that every per-class entry names one of `classes`.
    pub fn validate(&self, classes: &[String]) -> Result<()> {
        let all = self.min_confidence.iter().chain(self.per_class.values());
        if let Some(v) = all.into_iter().find(|v| !(0.0..=1.0).contains(*v)) {
            bail!("threshold {v} is not a confidence between 0 and 1");
        }
        if let Some(c) = self.per_class.keys().find(|c| !classes.contains(c)) {
            bail!(
                "a threshold is set for class '{c}', which the model does not have (classes: {})",
                classes.join(", ")
            );
        }
        Ok(())
    }

    /// The minimum confidence for answers of `class`, if any.
    pub fn for_class(&self, class: &str) -> Option<f32> {
        self.per_class.get(class).copied().or(self.min_confidence)
    }

    /// True when `top` (the most likely class) is below its threshold.
    pub fn is_unknown(&self, top: &Scored) -> bool {
        self.for_class(&top.class)
            .is_some_and(|t| top.confidence < t)
    }

    /// The answer for a top class: its name, or [`UNKNOWN`].
    pub fn answer<'a>(&self, top: &'a Scored) -> &'a str {
        if self.is_unknown(top) {
            UNKNOWN
        } else {
            &top.class
        }
    }

    /// A one-line description (`min_confidence 0.6, bag 0.8`), or `none`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .min_confidence
            .map(|v| format!("{GLOBAL_KEY} {v}"))
            .into_iter()
            .collect();
        parts.extend(self.per_class.iter().map(|(c, v)| format!("{c} {v}")));
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(class: &str, confidence: f32) -> Scored {
        Scored {
            class: class.into(),
            confidence,
        }
    }

    #[test]
    fn per_class_thresholds_win_over_the_global_one() {
        let table = BTreeMap::from([
            ("min_confidence".to_string(), 0.5),
            ("bag".to_string(), 0.9),
        ]);
        let t = Thresholds::from_table(&table).unwrap();
        assert_eq!(t.answer(&scored("bag", 0.8)), UNKNOWN);
        assert_eq!(t.answer(&scored("bag", 0.95)), "bag");
        assert_eq!(t.answer(&scored("coat", 0.6)), "coat");
        assert_eq!(t.answer(&scored("coat", 0.4)), UNKNOWN);
        assert_eq!(Thresholds::default().answer(&scored("coat", 0.01)), "coat");
        assert_eq!(t.describe(), "min_confidence 0.5, bag 0.9");
    }

    #[test]
    fn bad_values_and_classes_are_refused() {
        let table = BTreeMap::from([("bag".to_string(), 1.5)]);
        let err = Thresholds::from_table(&table).unwrap_err();
        assert!(err.to_string().contains("thresholds.bag = 1.5"), "{err}");
        let t = Thresholds::from_table(&BTreeMap::from([("hat".to_string(), 0.5)])).unwrap();
        let err = t.validate(&["bag".into(), "coat".into()]).unwrap_err();
        assert!(err.to_string().contains("'hat'"), "{err}");
    }
}
