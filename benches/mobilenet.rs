//! MobileNetV2 throughput on the Flex CPU backend, the figures: training img/s (forward,
//! loss, backward, Adam on a fixed random batch) through the fused training ops and through
//! Burn's generic ops, inference img/s in batches and batch-1 latency, through the fused path
//! and through Burn's forward pass.
//!
//! `cargo test --release --bench mobilenet -- [STEPS] [SIZE] [BATCH] [WIDTH×100]` (defaults 10, 96, 32,
//! 35). Prints `BENCH mobilenet ...` lines; `bench/mobilenet.sh` sets them beside PyTorch's.
//! With `FLORA_PHASES=1` it also prints where a fused training step's time goes (`PHASES`);
//! `FLORA_TRAIN_ENGINE=fused` or `burn` trains with that engine only and skips inference (to
//! profile one).

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
    let steps = args.first().copied().unwrap_or(10);
    let size = args.get(1).copied().unwrap_or(96);
    let batch = args.get(2).copied().unwrap_or(32);
    let width = args.get(3).copied().unwrap_or(35) as f64 / 100.0;
    let classes = 10;
    let tag = format!("width={width} size={size}");
    let device = flora::util::device::training();
    device.seed(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let input: Vec<f32> = (0..batch * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let phases = std::env::var("FLORA_PHASES").is_ok_and(|v| v == "1");
    let mut rates = Vec::new();
    let mut trained = None;
    let engines = match std::env::var("FLORA_TRAIN_ENGINE").as_deref() {
        Ok("fused") => vec![TrainEngine::Fused],
        Ok("burn") => vec![TrainEngine::Burn],
        _ => vec![TrainEngine::Fused, TrainEngine::Burn],
    };
    for &engine in &engines {
        device.seed(1);
        let mut model = Classifier::with_width(Arch::MobilenetV2, width, classes, 0.2, &device);
        let mut optim = AdamConfig::new().init();
        // Seconds in forward (with the loss), backward, and the optimizer step.
        let mut spent = [0f64; 3];
        let mut step = |model: Classifier, spent: &mut [f64; 3]| {
            let t = Instant::now();
            let x = Tensor::<4>::from_data(
                TensorData::new(input.clone(), [batch, 3, size, size]),
                &device,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), &device);
            let loss =
                CrossEntropyLoss::new(None, &device).forward(model.forward_with(x, engine), y);
            let _: f32 = loss.clone().into_scalar();
            let t1 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t2 = Instant::now();
            let model = optim.step(1e-3, model, grads);
            spent[0] += (t1 - t).as_secs_f64();
            spent[1] += (t2 - t1).as_secs_f64();
            spent[2] += t2.elapsed().as_secs_f64();
            model
        };
        model = step(model, &mut [0.0; 3]);
        let _ = flora::ops::phases::report();
        let t0 = Instant::now();
        for _ in 0..steps {
            model = step(model, &mut spent);
        }
        let secs = t0.elapsed().as_secs_f64();
        let name = if engine == TrainEngine::Fused {
            "fused"
        } else {
            "burn"
        };
        let rate = (steps * batch) as f64 / secs;
        println!(
            "BENCH mobilenet train engine={name} {tag} batch={batch} steps={steps} img_per_s={rate:.1}"
        );
        if phases {
            let [f, b, a] = spent.map(|t| 1e3 * t / steps as f64);
            println!(
                "PHASES mobilenet engine={name} forward_ms={f:.1} backward_ms={b:.1} adam_ms={a:.1}"
            );
            let ops: Vec<String> = flora::ops::phases::report()
                .split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| format!("{k}={:.1}", v.parse::<f64>().unwrap_or(0.0) / steps as f64))
                .collect();
            if engine == TrainEngine::Fused {
                println!(
                    "PHASES mobilenet fused_ops_wall_ms_per_step {}",
                    ops.join(" ")
                );
            }
        }
        rates.push(rate);
        trained.get_or_insert(model);
    }
    if let [fused, burn] = rates[..] {
        println!("BENCH mobilenet train fused_vs_burn={:.2}", fused / burn);
    }
    let model = trained.expect("trained");
    if engines.len() == 1 {
        return;
    }

    let valid = model.valid();
    let infer_device = flora::util::device::inference();
    let fused = valid.fused().expect("mobilenet has a fused form");
    let pixels: Vec<u8> = (0..batch * 3 * size * size).map(|_| rng.random()).collect();
    let images: Vec<&[u8]> = pixels.chunks(3 * size * size).collect();
    let norm = flora::data::imaging::Normalization::default();
    let burn = |imgs: usize| {
        let x = Tensor::<4>::from_data(
            TensorData::new(
                input[..imgs * 3 * size * size].to_vec(),
                [imgs, 3, size, size],
            ),
            &infer_device,
        );
        let _ = valid.forward(x).into_data();
    };
    let fast = |imgs: usize| {
        let _ = fused.logits(&images[..imgs], &norm, size);
    };
    let reps = (steps * 2).max(5);
    let (fb, bb) = (
        rate(&|| fast(batch), batch, reps),
        rate(&|| burn(batch), batch, reps),
    );
    println!(
        "BENCH mobilenet infer engine=fused {tag} batch={batch} img_per_s={fb:.1} ratio_vs_burn={:.2}",
        fb / bb
    );
    println!("BENCH mobilenet infer engine=burn {tag} batch={batch} img_per_s={bb:.1}");
    let (f1, b1) = (
        rate(&|| fast(1), 1, reps * 10),
        rate(&|| burn(1), 1, reps * 10),
    );
    println!(
        "BENCH mobilenet latency engine=fused {tag} batch=1 ms={:.2}",
        1e3 / f1
    );
    println!(
        "BENCH mobilenet latency engine=burn {tag} batch=1 ms={:.2}",
        1e3 / b1
    );
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
