//! Label-error audit from out-of-fold probabilities (confident learning, as cleanlab): each
//! class `c` gets a threshold `t_c`, the mean probability of `c` over the images labelled `c`
//! (its self-confidence). An image labelled `g` is a suspect when `p_g < t_g` while another
//! class `j` reaches its threshold (`p_j >= t_j`) or beats the given label (`p_j > p_g`); the
//! suggestion is the most probable such `j`, and suspects are ranked by
//! `score = p_suggested - p_given`. Written as `label_issues.csv`
//! (`path,given,suggested,p_given,p_suggested,score`, path relative to the dataset folder),
//! the queue `flora label --queue` reads.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::fsutil;

/// The file name.
pub const FILE: &str = "label_issues.csv";

/// One suspected label error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Issue {
    /// Relative to the dataset folder, `/`-separated.
    pub path: String,
    pub given: String,
    pub suggested: String,
    pub p_given: f32,
    pub p_suggested: f32,
    pub score: f32,
}

/// Per-class self-confidence thresholds: the mean `p_c` over the images labelled `c` (1 for a
/// class with no image, so it never suggests itself by default).
pub fn thresholds(num_classes: usize, given: &[usize], probs: &[Vec<f32>]) -> Vec<f32> {
    let mut sum = vec![0f64; num_classes];
    let mut n = vec![0usize; num_classes];
    for (&g, p) in given.iter().zip(probs) {
        sum[g] += p[g] as f64;
        n[g] += 1;
    }
    sum.iter()
        .zip(&n)
        .map(|(&s, &n)| if n == 0 { 1.0 } else { (s / n as f64) as f32 })
        .collect()
}

/// The suspects, highest score first (ties by path). Returns each with its index into the
/// inputs.
pub fn find(
    classes: &[String],
    paths: &[String],
    given: &[usize],
    probs: &[Vec<f32>],
) -> Vec<(Issue, usize)> {
    let t = thresholds(classes.len(), given, probs);
    let mut out: Vec<(Issue, usize)> = Vec::new();
    for (i, (&g, p)) in given.iter().zip(probs).enumerate() {
        if p[g] >= t[g] {
            continue;
        }
        let suggested = (0..classes.len())
            .filter(|&j| j != g && (p[j] >= t[j] || p[j] > p[g]))
            .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
        if let Some(j) = suggested {
            out.push((
                Issue {
                    path: paths[i].clone(),
                    given: classes[g].clone(),
                    suggested: classes[j].clone(),
                    p_given: p[g],
                    p_suggested: p[j],
                    score: p[j] - p[g],
                },
                i,
            ));
        }
    }
    out.sort_by(|a, b| {
        b.0.score
            .total_cmp(&a.0.score)
            .then(a.0.path.cmp(&b.0.path))
    });
    out
}

/// Writes `label_issues.csv` atomically (a header even when there is no suspect).
pub fn write_csv(path: &Path, issues: &[Issue]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "path",
        "given",
        "suggested",
        "p_given",
        "p_suggested",
        "score",
    ])?;
    for i in issues {
        w.write_record([
            i.path.as_str(),
            &i.given,
            &i.suggested,
            &format!("{:.6}", i.p_given),
            &format!("{:.6}", i.p_suggested),
            &format!("{:.6}", i.score),
        ])?;
    }
    fsutil::write_atomic(path, &w.into_inner().context("writing label_issues.csv")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confidently_other_image_is_suspected_and_ranked_first() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let paths: Vec<String> = (0..6).map(|i| format!("x/{i}.png")).collect();
        let given = [0, 0, 0, 1, 1, 1];
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.8, 0.2],
            vec![0.05, 0.95], // labelled a, looks like b
            vec![0.1, 0.9],
            vec![0.3, 0.7],
            vec![0.6, 0.4], // labelled b, leans a
        ];
        let found = find(&classes, &paths, &given, &probs);
        assert_eq!(found[0].0.path, "x/2.png");
        assert_eq!(found[0].0.suggested, "b");
        assert!((found[0].0.score - 0.9).abs() < 1e-6);
        assert!(found.iter().all(|(i, _)| i.path != "x/0.png"));
        assert!(found.iter().any(|(i, _)| i.path == "x/5.png"));
    }
}
