//! The fused training op of the reference CNN's block against Burn's own ops: gradients of every
//! input and parameter on random inputs, then real training runs with both engines.

use crate::support::common::{self, ok, project};
use burn::tensor::{Device, Distribution, Tensor};
use flora::ops::{BlockOutput, BlockParams, TrainEngine, conv_block_reference, conv_block_train};

/// |got - want| ≤ 1e-5 + 1e-4 |want| for every element.
fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.into_data().try_to_vec::<f32>().unwrap();
    let want = want.into_data().try_to_vec::<f32>().unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() - (1e-5 + 1e-4 * w.abs()))
        .fold(f32::NEG_INFINITY, f32::max);
    assert!(
        worst <= 0.0,
        "{what}: off by {worst:e} beyond tolerance\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

/// One block call on fresh leaf tensors (so each engine gets its own gradients), with the loss
/// `sum(output * r)`. Returns the output, statistics and the gradients of x, weight, bias,
/// gamma and beta.
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
        epsilon: 1e-5,
    };
    let out = match engine {
        Some(e) => conv_block_train(x.clone(), p, e),
        None => conv_block_reference(x.clone(), p),
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
        let shape = format!("[{n}, {h}, {w}, {cin}] → {cout}");
        let (want, want4, want1) = run(None, &inputs, &vectors, &r);
        let (got, got4, got1) = run(Some(TrainEngine::Fused), &inputs, &vectors, &r);
        assert_close(&format!("{shape} output"), got.output, want.output);
        assert_close(&format!("{shape} mean"), got.mean, want.mean);
        assert_close(&format!("{shape} var"), got.var, want.var);
        for ((name, g), w) in ["x", "weight"].iter().zip(got4).zip(want4) {
            assert_close(&format!("{shape} d{name}"), g, w);
        }
        for ((name, g), w) in ["bias", "gamma", "beta"].iter().zip(got1).zip(want1) {
            assert_close(&format!("{shape} d{name}"), g, w);
        }
        // The Burn engine is the composition itself.
        let (burn, _, _) = run(Some(TrainEngine::Burn), &inputs, &vectors, &r);
        let (reference, _, _) = run(None, &inputs, &vectors, &r);
        assert_close("burn engine", burn.output, reference.output);
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
    let want = conv_block_reference(x, p);
    assert_close("output", got.output, want.output);
    assert_close("var", got.var, want.var);
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
    // Both engines learn the 4 classes, to within noise of each other (48 val images).
    assert!(acc("fused-a") >= 0.7, "fused: {runs:?}");
    assert!(acc("burn") >= 0.7, "burn: {runs:?}");
    assert!(
        (acc("fused-a") - acc("burn")).abs() <= 0.15,
        "fused vs burn accuracy: {runs:?}"
    );
}
