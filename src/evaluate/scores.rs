//! Classification metrics: accuracy, top-k accuracy, per-class precision/recall/F1/support,
//! macro and weighted averages, and the confusion matrix.

use std::collections::BTreeMap;

use serde::Serialize;

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// The full evaluation report (the `--json` output of `flora eval`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub accuracy: f64,
    pub top_k: usize,
    pub top_k_accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    pub per_class: BTreeMap<String, ClassMetrics>,
    /// Rows are true classes, columns predicted classes, both in `classes` order.
    pub confusion_matrix: Vec<Vec<usize>>,
    pub classes: Vec<String>,
    pub num_images: usize,
}

/// Computes the report from each image's true class and class probabilities.
pub fn report(classes: &[String], truth: &[usize], probs: &[Vec<f32>]) -> Report {
    let n = classes.len();
    let k = n.min(5);
    let mut cm = vec![vec![0usize; n]; n];
    let mut top_k_hits = 0;
    for (&t, p) in truth.iter().zip(probs) {
        let pred = argmax(p);
        cm[t][pred] += 1;
        let higher = p.iter().filter(|&&v| v > p[t]).count();
        if higher < k {
            top_k_hits += 1;
        }
    }
    let total = truth.len();
    let correct: usize = (0..n).map(|i| cm[i][i]).sum();
    let mut per_class = BTreeMap::new();
    let (mut mp, mut mr, mut mf, mut wp, mut wr, mut wf) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, name) in classes.iter().enumerate() {
        let tp = cm[i][i] as f64;
        let predicted: usize = (0..n).map(|r| cm[r][i]).sum();
        let support: usize = cm[i].iter().sum();
        let precision = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        mp += precision;
        mr += recall;
        mf += f1;
        let w = support as f64;
        wp += precision * w;
        wr += recall * w;
        wf += f1 * w;
        per_class.insert(
            name.clone(),
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    let (nf, tf) = (n as f64, (total as f64).max(1.0));
    Report {
        accuracy: correct as f64 / tf,
        top_k: k,
        top_k_accuracy: top_k_hits as f64 / tf,
        macro_precision: mp / nf,
        macro_recall: mr / nf,
        macro_f1: mf / nf,
        weighted_precision: wp / tf,
        weighted_recall: wr / tf,
        weighted_f1: wf / tf,
        per_class,
        confusion_matrix: cm,
        classes: classes.to_vec(),
        num_images: total,
    }
}

impl Report {
    /// The per-class table and averages, aligned for a terminal.
    pub fn table(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(12);
        let mut s = format!(
            "{:<w$} {:>9} {:>9} {:>9} {:>8}\n",
            "class", "precision", "recall", "f1", "support"
        );
        for c in &self.classes {
            let m = &self.per_class[c];
            s += &format!(
                "{c:<w$} {:>9.3} {:>9.3} {:>9.3} {:>8}\n",
                m.precision, m.recall, m.f1, m.support
            );
        }
        s += &format!(
            "{:<w$} {:>9.3} {:>9.3} {:>9.3} {:>8}\n",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.num_images
        );
        s += &format!(
            "{:<w$} {:>9.3} {:>9.3} {:>9.3} {:>8}\n",
            "weighted avg",
            self.weighted_precision,
            self.weighted_recall,
            self.weighted_f1,
            self.num_images
        );
        s += &format!(
            "\naccuracy {:.2}%   top-{} accuracy {:.2}%   ({} images)\n",
            100.0 * self.accuracy,
            self.top_k,
            100.0 * self.top_k_accuracy,
            self.num_images
        );
        s
    }

    /// The confusion matrix as an aligned table (rows: true class, columns: predicted).
    pub fn confusion_table(&self) -> String {
        let labels: Vec<String> = self
            .classes
            .iter()
            .map(|c| c.chars().take(10).collect())
            .collect();
        let w = labels.iter().map(String::len).max().unwrap_or(4).max(4);
        let cw = self
            .confusion_matrix
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(1)
            .max(labels.iter().map(String::len).max().unwrap_or(1));
        let mut s = format!("{:<w$} ", "true\\pred");
        for l in &labels {
            s += &format!(" {l:>cw$}");
        }
        s.push('\n');
        for (l, row) in labels.iter().zip(&self.confusion_matrix) {
            s += &format!("{l:<w$}  ");
            for v in row {
                s += &format!(" {v:>cw$}");
            }
            s.push('\n');
        }
        s
    }

    /// `confusion_matrix.csv`: a header of predicted classes, one row per true class.
    pub fn confusion_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["true\\predicted".to_string()];
        header.extend(self.classes.iter().cloned());
        w.write_record(&header).expect("in-memory csv");
        for (c, row) in self.classes.iter().zip(&self.confusion_matrix) {
            let mut rec = vec![c.clone()];
            rec.extend(row.iter().map(usize::to_string));
            w.write_record(&rec).expect("in-memory csv");
        }
        String::from_utf8(w.into_inner().expect("in-memory csv")).expect("utf-8")
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_confusion_gives_known_metrics() {
        let classes = vec!["a".to_string(), "b".to_string()];
        // truth a,a,b,b ; predicted a,b,b,b
        let truth = [0, 0, 1, 1];
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.4, 0.6],
            vec![0.2, 0.8],
            vec![0.3, 0.7],
        ];
        let r = report(&classes, &truth, &probs);
        assert_eq!(r.confusion_matrix, vec![vec![1, 1], vec![0, 2]]);
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        let a = &r.per_class["a"];
        assert!((a.precision - 1.0).abs() < 1e-12 && (a.recall - 0.5).abs() < 1e-12);
        let b = &r.per_class["b"];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        assert_eq!(r.top_k, 2);
        assert!((r.top_k_accuracy - 1.0).abs() < 1e-12);
    }
}
