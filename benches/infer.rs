//! flora's inference speed on one model, for `bench/onnx.sh` to set beside ONNX Runtime's on the
//! same model and threads: a randomly initialised model (speed does not depend on the weights)
//! is written as a bundle into OUT_DIR (which `flora export --model OUT_DIR` then exports), then
//! timed through `ModelBundle::predict_pixels` (the fused path `flora predict` and `flora serve`
//! run): img/s over batches of BATCH, and the median batch-1 latency.
//!
//! `cargo bench --bench infer -- ARCH WIDTH SIZE BATCH THREADS OUT_DIR`
//! (ARCH `cnn` or `mobilenet_v2`). Prints one `BENCH flora ...` line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flora::data::imaging::Normalization;
use flora::model::bundle::{BUNDLE_FORMAT, BundleMeta, ModelBundle};
use flora::model::{Arch, Classifier};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [arch, width, size, batch, threads, out] = &args[..] else {
        panic!("usage: infer ARCH WIDTH SIZE BATCH THREADS OUT_DIR");
    };
    let arch = match arch.as_str() {
        "cnn" => Arch::Cnn,
        "mobilenet_v2" => Arch::MobilenetV2,
        a => panic!("unknown arch {a}"),
    };
    let width: f64 = width.parse().unwrap();
    let size: usize = size.parse().unwrap();
    let batch: usize = batch.parse().unwrap();
    flora::util::device::set_threads(threads.parse().unwrap());
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let device = flora::util::device::inference();
    device.seed(1);
    let model = Classifier::with_width(arch, width, classes.len(), 0.0, &device);
    let meta = BundleMeta {
        format: BUNDLE_FORMAT,
        flora_version: env!("CARGO_PKG_VERSION").into(),
        arch,
        image_size: size as u32,
        classes,
        normalization: Normalization::default(),
        dropout: 0.0,
        width,
        pretrained: None,
        run_id: None,
        run_name: None,
        data_fingerprint: "bench".into(),
        metrics: BTreeMap::new(),
        class_info: BTreeMap::new(),
        thresholds: Default::default(),
        created_at_ms: 0,
    };
    let bundle = ModelBundle::new(meta, model);
    let out = PathBuf::from(out);
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    bundle.save(&out).unwrap();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let images: Vec<Vec<u8>> = (0..batch)
        .map(|_| (0..3 * size * size).map(|_| rng.random()).collect())
        .collect();
    let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    // Warm up, then batches for at least 3 s.
    bundle.predict_pixels(&refs);
    let (start, mut n) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs(3) {
        std::hint::black_box(bundle.predict_pixels(&refs));
        n += batch;
    }
    let img_s = n as f64 / start.elapsed().as_secs_f64();
    let mut times: Vec<f64> = (0..200)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(bundle.predict_pixels(&refs[i % batch..i % batch + 1]));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "BENCH flora arch={} width={width} size={size} batch={batch} img_s={img_s:.1} b1_ms={:.3}",
        arch.as_str(),
        times[times.len() / 2]
    );
}
