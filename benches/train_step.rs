//! Bare model-step throughput of the reference CNN on the Flex CPU backend: forward, loss,
//! backward and an Adam step on a fixed random batch, no data loading.
//!
//! `cargo bench --bench train_step -- [STEPS] [SIZE] [BATCH] [train-only] [fused-only]` (defaults
//! 30, 64, 32; `fused-only` skips Burn's engine and inference, for profiling).
//! Prints `BENCH train_step engine=fused ... img_per_s=...` (the fused training op) and
//! `BENCH train_step engine=burn ...` (Burn's generic ops) with their ratio, measured
//! interleaved so a load change on the machine hits both, then (unless `train-only`) inference of
//! the trained weights through Burn (`BENCH infer engine=burn`) and through the fused path
//! (`BENCH infer engine=fused`), in batches of 64 and one image at a time. With
//! `FLORA_PHASES=1` it also prints the time split of a fused step (forward, backward, Adam).

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use flora::model::{Arch, Classifier};
use flora::ops::TrainEngine;
use rand::{Rng, SeedableRng};

fn main() {
    // As `flora train` does.
    flora::ops::heap::keep_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(30);
    let size = args.get(1).copied().unwrap_or(64);
    let batch = args.get(2).copied().unwrap_or(32);
    let classes = 10;
    let device = flora::util::device::training();
    device.seed(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let input: Vec<f32> = (0..batch * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    // `fused-only` skips Burn's engine (for profiling the fused step alone).
    let fused_only = std::env::args().any(|a| a == "fused-only");
    let engines: &[TrainEngine] = if fused_only {
        &[TrainEngine::Fused]
    } else {
        &[TrainEngine::Fused, TrainEngine::Burn]
    };
    // Two copies of one model (parameters are initialised lazily: copy the record).
    let first = Classifier::new(Arch::Cnn, classes, 0.3, &device);
    let second =
        Classifier::new(Arch::Cnn, classes, 0.3, &device).load_record(first.clone().into_record());
    let mut models = vec![first, second];
    models.truncate(engines.len());
    let mut optims: Vec<_> = engines.iter().map(|_| AdamConfig::new().init()).collect();
    let phases = std::env::var("FLORA_PHASES").is_ok_and(|v| v == "1");
    let mut spent = vec![[0f64; 3]; engines.len()];
    let mut step = |e: usize, model: Classifier, times: &mut [f64; 3]| {
        let t = Instant::now();
        let x = Tensor::<4>::from_data(
            TensorData::new(input.clone(), [batch, 3, size, size]),
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), &device);
        let Classifier::Cnn(cnn) = &model else {
            unreachable!("the bench builds a cnn")
        };
        let loss = CrossEntropyLoss::new(None, &device).forward(cnn.forward_with(x, engines[e]), y);
        let _: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        let model = optims[e].step(1e-3, model, grads);
        let t3 = Instant::now();
        times[0] += (t1 - t).as_secs_f64();
        times[1] += (t2 - t1).as_secs_f64();
        times[2] += (t3 - t2).as_secs_f64();
        model
    };
    let mut warm = [0f64; 3];
    for e in 0..engines.len() {
        for _ in 0..3 {
            let m = models.remove(e);
            models.insert(e, step(e, m, &mut warm));
        }
    }
    // Interleaved rounds of a few steps per engine.
    let round = 5.min(steps.max(1));
    let mut done = 0;
    while done < steps {
        let k = round.min(steps - done);
        for (e, times) in spent.iter_mut().enumerate() {
            for _ in 0..k {
                let m = models.remove(e);
                models.insert(e, step(e, m, times));
            }
        }
        done += k;
    }
    let ips: Vec<f64> = spent
        .iter()
        .map(|t| (steps * batch) as f64 / t.iter().sum::<f64>())
        .collect();
    for (e, engine) in ["fused", "burn"].iter().take(engines.len()).enumerate() {
        let secs: f64 = spent[e].iter().sum();
        println!(
            "BENCH train_step engine={engine} arch=cnn size={size} batch={batch} steps={steps} seconds={secs:.2} img_per_s={:.1}",
            ips[e]
        );
        if phases {
            let [f, b, a] = spent[e].map(|t| 1e3 * t / steps as f64);
            println!(
                "PHASES engine={engine} size={size} forward_ms={f:.1} backward_ms={b:.1} adam_ms={a:.1}"
            );
            if e == 0 {
                // The fused op's phases over all steps (warm-up included), CPU ms per step.
                let per_step: Vec<String> = flora::ops::phases::report()
                    .split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| {
                        format!(
                            "{k}={:.1}",
                            v.parse::<f64>().unwrap_or(0.0) / (steps + 3) as f64
                        )
                    })
                    .collect();
                println!("PHASES fused_op_cpu_ms_per_step {}", per_step.join(" "));
            }
        }
    }
    if !fused_only {
        println!(
            "RATIO train_step fused_vs_burn size={size} batch={batch} ratio={:.2}",
            ips[0] / ips[1]
        );
    }
    if fused_only || std::env::args().any(|a| a == "train-only") {
        return;
    }
    let model = models.remove(0);

    let valid = model.valid();
    let infer_device = flora::util::device::inference();
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
    let norm = flora::data::imaging::Normalization::default();
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
