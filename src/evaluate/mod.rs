//! Judging a model: classification scores, accuracy against coverage, the label-error audit,
//! the HTML report, PNG plots, `flora eval` itself and occlusion explanations.

pub mod coverage;
pub mod eval;
pub mod explain;
pub mod html_report;
pub mod label_audit;
pub mod plot;
pub mod scores;
