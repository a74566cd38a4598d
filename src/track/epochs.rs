//! The per-epoch record of a training run: what the trainer logs to the run store and
//! `results.csv`, the checkpoint keeps as its history, and the plots draw.

use serde::{Deserialize, Serialize};

/// One epoch's figures, as logged to the run store and `results.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
    pub epoch_seconds: f64,
    pub images_per_second: f64,
    /// `full`, or `head` / `finetune` (the training phase).
    pub phase: String,
}

/// The metrics logged per epoch (at step `epoch`), by name.
pub fn epoch_metrics(s: &EpochStats) -> [(&'static str, f64); 7] {
    [
        ("train_loss", s.train_loss),
        ("train_accuracy", s.train_accuracy),
        ("val_loss", s.val_loss),
        ("val_accuracy", s.val_accuracy),
        ("learning_rate", s.learning_rate),
        ("epoch_seconds", s.epoch_seconds),
        ("images_per_second", s.images_per_second),
    ]
}
