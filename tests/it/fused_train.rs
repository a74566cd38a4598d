//! The reference CNN's block through both training engines (the fused op, and Burn's engine,
//! flora's own composition) against an independent composition of Burn's elementary ops
//! (`support::compose`): output, statistics and the gradients of every input and parameter on
//! random inputs; then real training runs with both engines.

use crate::support::common::{self, ok, project};
use crate::support::compose;
use burn::tensor::{Device, Distribution, Tensor};
use flora::ops::{BlockOutput, BlockParams, TrainEngine, conv_block_train};

/// Scale-relative tolerance of the block's outputs and gradients against the composition:
/// `max |got - want| <= TOL * max |want|` per tensor. Measured (both engines, every shape
/// below): see `measured` lines under `--nocapture`; a wrong term is off by far more.
const TOL: f32 = 1e-5;

/// One block call on fresh leaf tensors (so each engine gets its own gradients), with the loss
/// `sum(output * r)`: through `engine`, or through the independent composition of Burn's
/// elementary ops (`support::compose`) when `None`. Returns the output, statistics and the
/// gradients of x, weight, bias, gamma and beta.
fn run(
    engine: Option<TrainEngine>,
    inputs: &[Tensor<4>; 2],
    vectors: &[Tensor<1>; 3],
    r: &Tensor<4>,
) -> (BlockOutput, Vec<Tensor<4>>, Vec<Tensor<1>>) {
    let x = inputs[0].clone().detach().require_grad();
    let weight = inputs[1].clone().detach().require_grad();
    let [bias, gamma, beta] = vectors.clone().map(|v| v.detach().require_grad());
    let p = BlockParams {
        weight: weight.clone(),
        bias: bias.clone(),
        gamma: gamma.clone(),
        beta: beta.clone(),
        epsilon: compose::EPSILON,
    };
    let out = match engine {
        Some(e) => conv_block_train(x.clone(), p, e),
        None => {
            let (y, s) = compose::conv_block(
                x.clone().permute([0, 3, 1, 2]),
                weight.clone(),
                [bias.clone(), gamma.clone(), beta.clone()],
            );
            BlockOutput {
                output: y.permute([0, 2, 3, 1]),
                mean: s.mean,
                var: s.var,
            }
        }
    };
    let grads = (out.output.clone() * r.clone()).sum().backward();
    let g4 = vec![x.grad(&grads).unwrap(), weight.grad(&grads).unwrap()];
    let g1 = [bias, gamma, beta]
        .iter()
        .map(|t| t.grad(&grads).unwrap())
        .collect();
    (out, g4, g1)
}

#[test]
fn fused_block_gradients_match_burns_composition() {
    check_block_gradients();
}

#[test]
fn narrower_kernel_builds_match_burns_composition_too() {
    // The AVX2 build (what an AVX2-only CPU runs; skipped where the CPU lacks it), then the
    // portable one without gemm's SIMD kernels either, as on a CPU the dispatch does not know
    // (aarch64...), each in a child process (`FLORA_KERNELS`), so that the other tests of this
    // binary keep the CPU's widest build.
    crate::support::kernels::check_narrower_builds(
        "fused_train::narrower_kernel_builds_match_burns_composition_too",
        check_block_gradients,
    );
}

fn check_block_gradients() {
    let device = Device::flex().autodiff();
    assert!(flora::ops::fused_supported(&device));
    device.seed(3);
    // (batch, height, width, cin, cout): odd sizes (the pool drops a row and a column), batch 1,
    // the smallest image flora trains on (16 px) and the 2×2 input its last block then gets;
    // channel counts past a vector's width with a tail (37 = 2 × 16 + 5).
    for (n, h, w, cin, cout) in [
        (1, 16, 16, 3, 8),
        (2, 7, 9, 3, 5),
        (3, 5, 6, 4, 3),
        (2, 16, 16, 8, 6),
        (1, 2, 2, 6, 4),
        (4, 11, 11, 5, 7),
        (2, 6, 7, 19, 37),
    ] {
        let normal = Distribution::Normal(0.0, 1.0);
        let inputs = [
            Tensor::<4>::random([n, h, w, cin], normal, &device),
            Tensor::<4>::random([cout, cin, 3, 3], Distribution::Normal(0.0, 0.3), &device),
        ];
        let vectors = [
            Tensor::<1>::random([cout], normal, &device),
            Tensor::<1>::random([cout], Distribution::Uniform(0.5, 1.5), &device),
            Tensor::<1>::random([cout], normal, &device),
        ];
        let r = Tensor::<4>::random([n, h / 2, w / 2, cout], normal, &device);
        let (want, want4, want1) = run(None, &inputs, &vectors, &r);
        // Both engines against the composition: the fused kernels, and Burn's engine (flora's
        // own `conv_block_reference`).
        for engine in [TrainEngine::Fused, TrainEngine::Burn] {
            let shape = format!("{engine:?} [{n}, {h}, {w}, {cin}] → {cout}");
            let (got, got4, got1) = run(Some(engine), &inputs, &vectors, &r);
            let check = |what: &str, g: Tensor<1>, w: Tensor<1>| {
                compose::assert_rel_t(&format!("{shape} {what}"), g, w, TOL)
            };
            compose::assert_rel_t(
                &format!("{shape} output"),
                got.output,
                want.output.clone(),
                TOL,
            );
            check("mean", got.mean, want.mean.clone());
            check("var", got.var, want.var.clone());
            for ((name, g), w) in ["x", "weight"].iter().zip(got4).zip(&want4) {
                compose::assert_rel_t(&format!("{shape} d{name}"), g, w.clone(), TOL);
            }
            let [dbias, dgamma, dbeta] = <[_; 3]>::try_from(got1).ok().unwrap();
            check("dgamma", dgamma, want1[1].clone());
            check("dbeta", dbeta, want1[2].clone());
            // The conv bias's gradient is zero in exact arithmetic (BatchNorm removes any
            // per-channel shift): both sides are rounding noise, held to dbeta's scale.
            let noise = (dbias - want1[0].clone()).abs().max().into_scalar::<f32>();
            let scale = want1[2].clone().abs().max().into_scalar::<f32>();
            eprintln!("measured {shape} dbias: {:e} of dbeta", noise / scale);
            assert!(
                noise <= TOL * scale,
                "{shape} dbias: {noise:e}, dbeta {scale:e}"
            );
        }
    }
}

#[test]
fn fused_block_runs_without_autodiff() {
    // On a plain Flex device (no autodiff) the op runs forward only, with the same values.
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 9, 8, 3], Distribution::Normal(0.0, 1.0), &device);
    let p = BlockParams {
        weight: Tensor::random([4, 3, 3, 3], Distribution::Normal(0.0, 0.3), &device),
        bias: Tensor::random([4], Distribution::Normal(0.0, 1.0), &device),
        gamma: Tensor::ones([4], &device),
        beta: Tensor::zeros([4], &device),
        epsilon: 1e-5,
    };
    let got = conv_block_train(x.clone(), p.clone(), TrainEngine::Fused);
    let (want, stats) =
        compose::conv_block(x.permute([0, 3, 1, 2]), p.weight, [p.bias, p.gamma, p.beta]);
    compose::assert_rel_t("output", got.output, want.permute([0, 2, 3, 1]), TOL);
    compose::assert_rel_t("var", got.var, stats.var, TOL);
}

/// `flora runs --json` of the project in `dir`, parsed.
fn runs(dir: &std::path::Path) -> Vec<serde_json::Value> {
    ok(dir, &["runs", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn train(dir: &std::path::Path, name: &str, engine: &str) {
    let out = common::flora(dir)
        .env("FLORA_TRAIN_ENGINE", engine)
        .args(["train", "--name", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "train {engine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fused_and_burn_engines_train_to_the_same_accuracy_and_repeat_exactly() {
    let dir = project(60, 4);
    train(dir.path(), "fused-a", "fused");
    train(dir.path(), "fused-b", "fused");
    train(dir.path(), "burn", "burn");
    let runs = runs(dir.path());
    let by_name = |name: &str| {
        runs.iter()
            .find(|r| r["run_name"] == name)
            .unwrap_or_else(|| panic!("run {name} in {runs:?}"))
    };
    let acc = |name: &str| by_name(name)["val_accuracy"].as_f64().unwrap();
    // The whole val_loss history (one line per epoch) of a run.
    let loss = |name: &str| {
        let id = by_name(name)["run_id"].as_str().unwrap().to_string();
        let exp = by_name(name)["experiment_id"].as_str().unwrap().to_string();
        let file = dir
            .path()
            .join("runs")
            .join(exp)
            .join(id)
            .join("metrics/val_loss");
        std::fs::read_to_string(file).unwrap()
    };
    // Same seed, same data, same threads: identical metrics run to run.
    assert_eq!(acc("fused-a"), acc("fused-b"));
    let (a, b) = (loss("fused-a"), loss("fused-b"));
    assert_eq!(a.lines().count(), 4, "{a}");
    // Metric lines are "timestamp value step": compare the values.
    let values = |text: &str| {
        text.lines()
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&a), values(&b));
    eprintln!("measured fused {} burn {}", acc("fused-a"), acc("burn"));
    // Both engines learn the 4 classes, to within noise of each other (48 val images, 2 points
    // each; measured 0.958 for both).
    assert!(acc("fused-a") >= 0.875, "fused: {runs:?}");
    assert!(acc("burn") >= 0.875, "burn: {runs:?}");
    assert!(
        (acc("fused-a") - acc("burn")).abs() <= 0.15,
        "fused vs burn accuracy: {runs:?}"
    );
}
