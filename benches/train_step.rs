//! Bare model-step throughput of the reference CNN on the Flex CPU backend: forward, loss,
//! backward and an Adam step on a fixed random batch, no data loading.
//!
//! `cargo bench --bench train_step -- [STEPS] [SIZE] [BATCH]` (defaults 30, 64, 32).
//! Prints `BENCH train_step ... img_per_s=...`, then inference of the trained weights through
//! Burn (`BENCH infer engine=burn`) and through the fused path (`BENCH infer engine=fused`), in
//! batches of 64 and one image at a time, with the fused/burn ratio.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use flora::model::{Arch, Classifier};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(30);
    let size = args.get(1).copied().unwrap_or(64);
    let batch = args.get(2).copied().unwrap_or(32);
    let classes = 10;
    let device = flora::device::training();
    device.seed(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let input: Vec<f32> = (0..batch * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let mut model = Classifier::new(Arch::Cnn, classes, 0.3, &device);
    let mut optim = AdamConfig::new().init();
    let mut step = |model: Classifier| {
        let x = Tensor::<4>::from_data(
            TensorData::new(input.clone(), [batch, 3, size, size]),
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), &device);
        let loss = CrossEntropyLoss::new(None, &device).forward(model.forward(x), y);
        let _: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-3, model, grads)
    };
    for _ in 0..3 {
        model = step(model);
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        model = step(model);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "BENCH train_step arch=cnn size={size} batch={batch} steps={steps} seconds={secs:.2} img_per_s={:.1}",
        (steps * batch) as f64 / secs
    );

    let valid = model.valid();
    let infer_device = flora::device::inference();
    let n = 64;
    let data: Vec<f32> = (0..n * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let burn_batch = |imgs: usize| {
        let x = Tensor::<4>::from_data(
            TensorData::new(
                data[..imgs * 3 * size * size].to_vec(),
                [imgs, 3, size, size],
            ),
            &infer_device,
        );
        let _ = valid.forward(x).into_data();
    };
    let Classifier::Cnn(cnn) = &valid else {
        unreachable!("the bench builds a cnn")
    };
    let fused = cnn.fused();
    // The fused path takes RGB8 pixels (its figure includes normalising them; Burn's does not).
    let pixels: Vec<u8> = (0..n * 3 * size * size).map(|_| rng.random()).collect();
    let images: Vec<&[u8]> = pixels.chunks(3 * size * size).collect();
    let norm = flora::imaging::Normalization::default();
    let fused_batch = |imgs: usize| {
        let _ = fused.logits(&images[..imgs], &norm, size);
    };
    let reps = (steps / 3).max(3);
    for batch in [n, 1] {
        let burn = rate(&|| burn_batch(batch), batch, reps * n / batch);
        let fast = rate(&|| fused_batch(batch), batch, reps * n / batch);
        println!("BENCH infer engine=burn arch=cnn size={size} batch={batch} img_per_s={burn:.1}");
        println!(
            "BENCH infer engine=fused arch=cnn size={size} batch={batch} img_per_s={fast:.1} ratio_vs_burn={:.2}",
            fast / burn
        );
    }
}

/// Images per second of `f` (one call = `batch` images), after one warm-up call.
fn rate(f: &dyn Fn(), batch: usize, reps: usize) -> f64 {
    f();
    let t0 = Instant::now();
    for _ in 0..reps {
        f();
    }
    (reps * batch) as f64 / t0.elapsed().as_secs_f64()
}
