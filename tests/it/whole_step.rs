//! One whole training step of the reference CNN and of a small MobileNetV2, through each
//! training engine, against the independent composition of Burn's elementary ops
//! (`support::compose`): the loss, the logits, every parameter's gradient, the weights after
//! one optimizer step and the updated BatchNorm running statistics.
//!
//! The optimizer is plain SGD (`w - lr g`), so the updated weights carry the gradients' own
//! error; Adam's first step (`lr g / (|g| + eps)`) would blow the rounding noise of near-zero
//! gradients up to a full `lr`.

use crate::support::compose::{self, Composed, Entry};
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use flora::model::{Arch, Classifier};
use flora::ops::TrainEngine;

const LR: f64 = 0.1;

/// Scale-relative tolerance (`max |got - want| <= TOL * scale` per tensor) of the logits, the
/// loss, the gradients, the updated weights and the running statistics. Measured (largest over
/// both engines and both models): see `measured ...` lines under `--nocapture`; the worst was
/// a few 1e-5 on deep MobileNetV2 gradients.
const TOL: f32 = 1e-3;

/// Gradients that are zero in exact arithmetic (the CNN's conv biases, whose per-channel shift
/// BatchNorm removes; a MobileNetV2 BatchNorm's beta whose output reaches the next BatchNorm
/// only through a conv) are rounding noise on both sides: each gradient's scale is at least
/// this fraction of the largest gradient of the network.
const FLOOR: f32 = 1e-3;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn check(what: &str, got: &[f32], want: &[f32], scale: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!("measured {what}: {:e}", d / scale);
    assert!(
        d <= TOL * scale,
        "{what}: off by {d:e}, scale {scale:e} (tolerance {TOL:e} of the scale)\n got {:?}\nwant {:?}",
        &got[..got.len().min(6)],
        &want[..want.len().min(6)]
    );
}

/// One step of a model made by `fresh` (a copy of one set of weights per engine, loaded from its
/// record so that no running statistic is shared) on `x`, `labels` against `composed`, the
/// composition's forward pass of the same architecture.
fn check_step(
    what: &str,
    fresh: impl Fn() -> Classifier,
    x: Tensor<4>,
    labels: &[i64],
    composed: impl Fn(&mut Composed, Tensor<4>) -> Tensor<2>,
) {
    let device = x.device();
    let model = fresh();
    let before = compose::snapshot(&model, None);
    // The composition's step.
    let mut c = Composed::new(&before, &device);
    let logits_c = composed(&mut c, x.clone());
    let loss_c = compose::cross_entropy(logits_c.clone(), labels);
    let grads_c = loss_c.clone().backward();
    let want_logits = logits_c.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let want_loss = loss_c.into_scalar::<f32>();
    let want_grads: Vec<Vec<f32>> = c.leaves.iter().map(|l| l.grad(&grads_c)).collect();
    let global = want_grads
        .iter()
        .zip(&c.updated)
        .filter(|(_, u)| u.is_none())
        .map(|(g, _)| max_abs(g))
        .fold(0f32, f32::max);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), &device);
    for engine in [TrainEngine::Fused, TrainEngine::Burn] {
        let what = format!("{what} {engine:?}");
        let m = fresh().load_record(model.clone().into_record());
        let logits = m.forward_with(x.clone(), engine);
        let got_logits = logits.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap();
        check(&format!("{what} logits"), &got_logits, &want_logits, max_abs(&want_logits));
        let loss = CrossEntropyLoss::new(None, &device).forward(logits, y.clone());
        let got_loss = loss.clone().into_scalar::<f32>();
        check(&format!("{what} loss"), &[got_loss], &[want_loss], want_loss.abs());
        let grads = loss.backward();
        let got: Vec<Entry> = compose::snapshot(&m, Some(&grads));
        let params = GradientsParams::from_grads(grads, &m);
        let stepped = SgdConfig::new().init().step(LR, m, params);
        let after = compose::snapshot(&stepped.valid(), None);
        assert_eq!(got.len(), before.len(), "{what}: tensors");
        assert_eq!(after.len(), before.len(), "{what}: tensors after the step");
        for (i, ((b, g), a)) in before.iter().zip(&got).zip(&after).enumerate() {
            let name = format!("{what} {}", b.name);
            match &c.updated[i] {
                // A running statistic: no gradient, updated by the pass.
                Some(want) => {
                    assert!(g.grad.is_none(), "{name}: a running statistic has a gradient");
                    let want = want.clone().into_data().to_vec::<f32>().unwrap();
                    check(&format!("{name} running"), &a.values, &want, max_abs(&want));
                }
                // A parameter: its gradient, and `w - lr g` after the step.
                None => {
                    let gg = g
                        .grad
                        .as_ref()
                        .unwrap_or_else(|| panic!("{name}: no gradient"));
                    let wg = &want_grads[i];
                    let scale = max_abs(wg).max(FLOOR * global);
                    check(&format!("{name} grad"), gg, wg, scale);
                    let stepped: Vec<f32> = b
                        .values
                        .iter()
                        .zip(wg)
                        .map(|(w, g)| w - LR as f32 * g)
                        .collect();
                    check(&format!("{name} stepped"), &a.values, &stepped, max_abs(&stepped));
                }
            }
        }
    }
}

fn labels(n: usize, classes: usize) -> Vec<i64> {
    (0..n).map(|i| (i % classes) as i64).collect()
}

#[test]
fn one_cnn_step_matches_the_composition_through_both_engines() {
    let device = Device::flex().autodiff();
    device.seed(21);
    // 8 images of 32 px: the last block sees 4×4 maps, 32 values per channel.
    let x = Tensor::<4>::random([8, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let model = || Classifier::with_width(Arch::Cnn, 1.0, 4, 0.0, &device);
    check_step("cnn", model, x, &labels(8, 4), |c, x| c.cnn(x));
}

#[test]
fn one_mobilenet_step_matches_the_composition_through_both_engines() {
    let device = Device::flex().autodiff();
    device.seed(22);
    // Width 0.35 (hidden sizes up to 336), 8 images of 64 px: the deepest maps are 2×2, so
    // every BatchNorm sees at least 32 values per channel.
    let x = Tensor::<4>::random([8, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let model = || Classifier::with_width(Arch::MobilenetV2, 0.35, 4, 0.0, &device);
    check_step("mobilenet 0.35", model, x, &labels(8, 4), |c, x| {
        c.mobilenet(x, 0.35)
    });
}
