//! Training phases and the learning rate of each step.
//!
//! With `train.freeze_epochs = 0` a run is one `full` phase: every weight trains at
//! `learning_rate`. Otherwise epochs `1..=freeze_epochs` are phase 1, `head`: only the
//! classifier trains, over a backbone that is frozen with its BatchNorm statistics (Burn's
//! `Module::freeze`); the remaining epochs are phase 2, `finetune`: the top `unfreeze_fraction`
//! of the backbone (counted in its 17 inverted residual blocks plus the final 1×1 conv) trains
//! too, at `finetune_learning_rate`. Each phase runs `lr_schedule` from its own start rate over
//! its own steps. Early stopping (`patience`) counts across both phases, but only ends the run
//! outside phase 1 (phase 1 is short and bounded by `freeze_epochs`).

use crate::config::{LrSchedule, PLATEAU_PATIENCE, TrainConfig};
use crate::model::{Classifier, MobileNetV2};

/// One training phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every weight trains (no `freeze_epochs`).
    Full,
    /// Phase 1: the head over a frozen backbone.
    Head,
    /// Phase 2: the head and the top of the backbone, at the fine-tuning rate.
    Finetune,
}

impl Phase {
    /// The name logged per epoch.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Full => "full",
            Phase::Head => "head",
            Phase::Finetune => "finetune",
        }
    }
}

/// The phase, freezing and learning rate of every epoch and step of a run.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: LrSchedule,
    epochs: usize,
    freeze_epochs: usize,
    learning_rate: f64,
    finetune_learning_rate: f64,
    /// Backbone units phase 2 trains.
    trainable_units: usize,
    batches_per_epoch: usize,
    /// The phase the model is set up for, once [`Self::begin_epoch`] has run.
    current: Option<Phase>,
    /// `plateau`: the current rate, the best validation loss of the phase, epochs since.
    plateau_lr: f64,
    best_loss: f64,
    stalled: usize,
    /// The state a resumed run continues from, applied when its phase is set up again.
    pending: Option<ScheduleState>,
}

/// What a [`Schedule`] carries from one epoch to the next (the phase the model is set up for
/// and the `plateau` state), saved in checkpoints so that a resumed run continues exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleState {
    /// The phase of the last epoch begun (`full`, `head`, `finetune`).
    pub phase: Option<String>,
    #[serde(with = "crate::util::exact_f64")]
    pub plateau_lr: f64,
    #[serde(with = "crate::util::exact_f64")]
    pub best_loss: f64,
    pub stalled: usize,
}

impl Schedule {
    /// The schedule of a run configured by `t`, with `batches_per_epoch` steps per epoch.
    pub fn new(t: &TrainConfig, batches_per_epoch: usize) -> Self {
        let units = MobileNetV2::BACKBONE_UNITS;
        Self {
            kind: t.lr_schedule,
            epochs: t.epochs,
            freeze_epochs: t.freeze_epochs,
            learning_rate: t.learning_rate,
            finetune_learning_rate: t.finetune_learning_rate,
            trainable_units: ((t.unfreeze_fraction * units as f64).round() as usize)
                .clamp(1, units),
            batches_per_epoch: batches_per_epoch.max(1),
            current: None,
            plateau_lr: t.learning_rate,
            best_loss: f64::INFINITY,
            stalled: 0,
            pending: None,
        }
    }

    /// The state to save after an epoch.
    pub fn state(&self) -> ScheduleState {
        ScheduleState {
            phase: self.current.map(|p| p.as_str().to_string()),
            plateau_lr: self.plateau_lr,
            best_loss: self.best_loss,
            stalled: self.stalled,
        }
    }

    /// Continues from a saved state: the next [`Self::begin_epoch`] sets the model up for its
    /// phase (freezing as that phase does) and, when the phase is the saved one, keeps the
    /// saved `plateau` state instead of starting the phase afresh.
    pub fn restore(&mut self, state: ScheduleState) {
        self.current = None;
        self.pending = Some(state);
    }

    /// The phase of `epoch` (1-based).
    pub fn phase(&self, epoch: usize) -> Phase {
        match self.freeze_epochs {
            0 => Phase::Full,
            f if epoch <= f => Phase::Head,
            _ => Phase::Finetune,
        }
    }

    /// First epoch and number of epochs of `phase`.
    fn span(&self, phase: Phase) -> (usize, usize) {
        let head = self.freeze_epochs.min(self.epochs);
        match phase {
            Phase::Full => (1, self.epochs),
            Phase::Head => (1, head),
            Phase::Finetune => (head + 1, self.epochs - head),
        }
    }

    fn base_rate(&self, phase: Phase) -> f64 {
        match phase {
            Phase::Full | Phase::Head => self.learning_rate,
            Phase::Finetune => self.finetune_learning_rate,
        }
    }

    /// Sets `model` up for `epoch`'s phase when it differs from the last epoch's: freezes the
    /// backbone for phase 1, unfreezes its top for phase 2.
    pub fn begin_epoch(&mut self, epoch: usize, model: Classifier) -> Classifier {
        let phase = self.phase(epoch);
        if self.current == Some(phase) {
            return model;
        }
        self.current = Some(phase);
        self.plateau_lr = self.base_rate(phase);
        self.best_loss = f64::INFINITY;
        self.stalled = 0;
        if let Some(saved) = self.pending.take()
            && saved.phase.as_deref() == Some(phase.as_str())
        {
            self.plateau_lr = saved.plateau_lr;
            self.best_loss = saved.best_loss;
            self.stalled = saved.stalled;
        }
        let trainable = match phase {
            Phase::Full => return model,
            Phase::Head => 0,
            Phase::Finetune => self.trainable_units,
        };
        if phase == Phase::Finetune {
            eprintln!(
                "phase 2 (finetune) from epoch {epoch}: training the top {trainable} of {} \
                 backbone units at learning rate {:e}",
                MobileNetV2::BACKBONE_UNITS,
                self.finetune_learning_rate
            );
        } else {
            eprintln!(
                "phase 1 (head) for {} epochs: training the classifier over a frozen backbone",
                self.span(Phase::Head).1
            );
        }
        with_trainable_tail(model, trainable)
    }

    /// The learning rate of batch `batch` (0-based) of `epoch`.
    pub fn lr(&self, epoch: usize, batch: usize) -> f64 {
        let phase = self.phase(epoch);
        let (start, len) = self.span(phase);
        match self.kind {
            LrSchedule::Plateau => self.plateau_lr,
            kind => kind.at(
                self.base_rate(phase),
                (epoch - start) * self.batches_per_epoch + batch,
                len * self.batches_per_epoch,
            ),
        }
    }

    /// Records an epoch's validation loss (`plateau` halves the rate, down to 1% of the
    /// phase's start, after [`PLATEAU_PATIENCE`] epochs without a lower one).
    pub fn end_epoch(&mut self, val_loss: f64) {
        if val_loss < self.best_loss {
            self.best_loss = val_loss;
            self.stalled = 0;
            return;
        }
        self.stalled += 1;
        if self.kind == LrSchedule::Plateau && self.stalled >= PLATEAU_PATIENCE {
            let floor = 0.01
                * self
                    .current
                    .map_or(self.learning_rate, |p| self.base_rate(p));
            self.plateau_lr = (self.plateau_lr * 0.5).max(floor);
            self.stalled = 0;
        }
    }

    /// Whether early stopping may end the run after `epoch` (not during phase 1).
    pub fn may_stop_early(&self, epoch: usize) -> bool {
        self.phase(epoch) != Phase::Head
    }
}

/// `model` with only the top `trainable` backbone units (and the head) training; the `cnn`
/// has no phases and is returned unchanged.
pub fn with_trainable_tail(model: Classifier, trainable: usize) -> Classifier {
    match model {
        Classifier::MobileNetV2(m) => Classifier::MobileNetV2(m.with_trainable_tail(trainable)),
        other => other,
    }
}

/// `head 1-3, finetune 4-10`: the epochs of each phase, from the phase of each epoch in order.
pub fn describe(phases: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < phases.len() {
        let j = (i..phases.len())
            .find(|&j| phases[j] != phases[i])
            .unwrap_or(phases.len());
        parts.push(if j - i == 1 {
            format!("{} {}", phases[i], i + 1)
        } else {
            format!("{} {}-{}", phases[i], i + 1, j)
        });
        i = j;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: LrSchedule, freeze: usize) -> TrainConfig {
        TrainConfig {
            epochs: 6,
            lr_schedule: schedule,
            freeze_epochs: freeze,
            learning_rate: 1e-3,
            finetune_learning_rate: 1e-4,
            unfreeze_fraction: 0.3,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn phases_and_rates() {
        let s = Schedule::new(&config(LrSchedule::Constant, 2), 10);
        assert_eq!(s.trainable_units, 5);
        let phases: Vec<&str> = (1..=6).map(|e| s.phase(e).as_str()).collect();
        assert_eq!(describe(&phases), "head 1-2, finetune 3-6");
        assert_eq!(s.lr(2, 9), 1e-3);
        assert_eq!(s.lr(3, 0), 1e-4);
        assert!(!s.may_stop_early(2) && s.may_stop_early(3));
        // Cosine restarts from each phase's own rate.
        let s = Schedule::new(&config(LrSchedule::Cosine, 2), 10);
        assert!((s.lr(1, 0) - 1e-3).abs() < 1e-12);
        assert!(s.lr(2, 9) < 2e-4);
        assert!((s.lr(3, 0) - 1e-4).abs() < 1e-12);
        assert_eq!(describe(&["full"; 3]), "full 1-3");
    }

    #[test]
    fn plateau_halves_after_stalled_epochs() {
        let mut s = Schedule::new(&config(LrSchedule::Plateau, 0), 10);
        let model = Classifier::new(
            crate::model::Arch::Cnn,
            2,
            0.0,
            &crate::util::device::inference(),
        );
        let _ = s.begin_epoch(1, model);
        s.end_epoch(1.0);
        s.end_epoch(1.0);
        assert_eq!(s.lr(3, 0), 1e-3);
        s.end_epoch(1.1);
        assert_eq!(s.lr(4, 0), 5e-4);
        s.end_epoch(0.5);
        assert_eq!(s.lr(5, 0), 5e-4);
    }

    #[test]
    fn a_restored_schedule_continues_its_plateau_state() {
        let mut s = Schedule::new(&config(LrSchedule::Plateau, 0), 10);
        let device = crate::util::device::inference();
        let model = Classifier::new(crate::model::Arch::Cnn, 2, 0.0, &device);
        let _ = s.begin_epoch(1, model.clone());
        for loss in [1.0, 1.1, 1.2, 0.9, 0.95] {
            s.end_epoch(loss);
        }
        let saved = s.state();
        let json = serde_json::to_string(&saved).unwrap();
        let mut r = Schedule::new(&config(LrSchedule::Plateau, 0), 10);
        r.restore(serde_json::from_str(&json).unwrap());
        let _ = r.begin_epoch(6, model);
        assert_eq!(r.state(), saved);
        assert_eq!(r.lr(6, 0), s.lr(6, 0));
        assert_eq!(r.lr(6, 0), 5e-4);
    }
}
