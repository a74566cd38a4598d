//! Accuracy against coverage: answering only when the top class's confidence reaches a
//! threshold leaves some images "unknown" (coverage falls) and makes the answers given more
//! accurate. Used by `flora eval` and the HTML report, and to suggest a threshold.

use serde::Serialize;

/// The thresholds `flora eval` reports.
pub const THRESHOLDS: [f32; 11] = [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99];

/// One threshold's outcome.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// Answer when the top confidence is at least this.
    pub threshold: f32,
    /// Share of the images answered.
    pub coverage: f64,
    /// Accuracy on the answered images (1 when none is answered).
    pub accuracy: f64,
    /// Images answered.
    pub answered: usize,
}

/// Each image's top confidence and whether the top class was right.
pub type Outcome = (f32, bool);

/// The outcome of answering at `threshold`.
pub fn at(outcomes: &[Outcome], threshold: f32) -> Point {
    let answered: Vec<&Outcome> = outcomes.iter().filter(|o| o.0 >= threshold).collect();
    let right = answered.iter().filter(|o| o.1).count();
    Point {
        threshold,
        coverage: answered.len() as f64 / outcomes.len().max(1) as f64,
        accuracy: if answered.is_empty() {
            1.0
        } else {
            right as f64 / answered.len() as f64
        },
        answered: answered.len(),
    }
}

/// The curve at each of `thresholds`.
pub fn curve(outcomes: &[Outcome], thresholds: &[f32]) -> Vec<Point> {
    thresholds.iter().map(|&t| at(outcomes, t)).collect()
}

/// The lowest threshold (so the highest coverage) whose answered images reach `target`
/// accuracy, among the images' own confidences; `None` when no threshold reaches it.
pub fn suggest(outcomes: &[Outcome], target: f64) -> Option<Point> {
    let mut sorted: Vec<Outcome> = outcomes.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = None;
    let mut right = 0usize;
    for (i, o) in sorted.iter().enumerate() {
        right += usize::from(o.1);
        // Only cut between different confidences: a threshold answers all equal ones.
        if sorted.get(i + 1).is_some_and(|next| next.0 == o.0) {
            continue;
        }
        if right as f64 / (i + 1) as f64 >= target {
            best = Some(o.0);
        }
    }
    best.map(|t| at(outcomes, t))
}

/// The curve as an aligned table.
pub fn table(points: &[Point]) -> String {
    let mut s = format!(
        "{:>9} {:>9} {:>9} {:>9}\n",
        "threshold", "coverage", "accuracy", "answered"
    );
    for p in points {
        // With nothing answered there is no accuracy to show.
        let accuracy = match p.answered {
            0 => "-".to_string(),
            _ => format!("{:.1}%", 100.0 * p.accuracy),
        };
        s += &format!(
            "{:>9.2} {:>8.1}% {:>9} {:>9}\n",
            p.threshold,
            100.0 * p.coverage,
            accuracy,
            p.answered
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_falls_and_accuracy_rises_with_the_threshold() {
        let o = [
            (0.9, true),
            (0.8, true),
            (0.6, false),
            (0.55, true),
            (0.4, false),
        ];
        let c = curve(&o, &[0.0, 0.5, 0.7]);
        assert_eq!(c[0].answered, 5);
        assert!((c[0].accuracy - 0.6).abs() < 1e-12);
        assert_eq!(c[1].answered, 4);
        assert!((c[1].accuracy - 0.75).abs() < 1e-12);
        assert!((c[2].coverage - 0.4).abs() < 1e-12 && c[2].accuracy == 1.0);
    }

    #[test]
    fn suggestion_keeps_the_most_coverage_that_reaches_the_target() {
        let o = [
            (0.9, true),
            (0.8, true),
            (0.6, false),
            (0.55, true),
            (0.4, false),
        ];
        let p = suggest(&o, 0.75).unwrap();
        assert_eq!(p.threshold, 0.55);
        assert_eq!(p.answered, 4);
        assert_eq!(suggest(&o, 1.0).unwrap().threshold, 0.8);
        assert!(suggest(&[(0.9, false)], 0.5).is_none());
        // Ties are answered together: no cut between two equal confidences.
        let tied = [(0.9, true), (0.7, true), (0.7, false)];
        assert_eq!(suggest(&tied, 0.9).unwrap().threshold, 0.9);
    }
}
