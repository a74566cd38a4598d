//! `flora predict --explain`: occlusion heat maps that point at the object. A model is trained
//! on real Fashion-MNIST items pasted onto a plain grey background at random places; on new
//! images with the item at a known place, most of the heat must fall on the item.

use std::path::Path;

use crate::support::common::*;
use image::{GrayImage, Luma};
use rand::{Rng, SeedableRng};

/// Canvas side; the item is 28×28.
const SIDE: u32 = 48;
const BACKGROUND: u8 = 90;

/// The item's visible pixels (its black background dropped) pasted at (x, y) on a grey canvas.
fn composite(item: &Path, x: u32, y: u32) -> GrayImage {
    let item = image::open(item).unwrap().to_luma8();
    let mut canvas = GrayImage::from_pixel(SIDE, SIDE, Luma([BACKGROUND]));
    for (ix, iy, p) in item.enumerate_pixels() {
        if p[0] > 25 {
            canvas.put_pixel(x + ix, y + iy, *p);
        }
    }
    canvas
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut f: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    f.sort();
    f
}

#[test]
fn occlusion_heat_falls_on_the_object() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), 6, "");
    let toml = std::fs::read_to_string(dir.path().join("flora.toml"))
        .unwrap()
        .replace("image_size = 28", &format!("image_size = {SIDE}"));
    std::fs::write(dir.path().join("flora.toml"), toml).unwrap();
    let (train, test) = fashion_mnist();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let classes = ["trouser", "bag", "sneaker"];
    for class in classes {
        let out = dir.path().join("dataset").join(class);
        std::fs::create_dir_all(&out).unwrap();
        for (i, f) in files(&train.join(class)).iter().take(60).enumerate() {
            let (x, y) = (
                rng.random_range(0..=SIDE - 28),
                rng.random_range(0..=SIDE - 28),
            );
            composite(f, x, y)
                .save(out.join(format!("{i}.png")))
                .unwrap();
        }
    }
    ok(dir.path(), &["train", "--name", "where"]);

    // New images, the item in one of the four corners.
    let probe = dir.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let corners = [
        (0, 0),
        (SIDE - 28, 0),
        (0, SIDE - 28),
        (SIDE - 28, SIDE - 28),
    ];
    let mut boxes = std::collections::BTreeMap::new();
    for (i, class) in classes.iter().cycle().take(12).enumerate() {
        let item = &files(&test.join(class))[i];
        let (x, y) = corners[i % 4];
        let name = format!("{class}-{i}");
        composite(item, x, y)
            .save(probe.join(format!("{name}.png")))
            .unwrap();
        boxes.insert(name, (x, y));
    }
    let out = ok(
        dir.path(),
        &[
            "predict",
            "--json",
            "--explain",
            "--explain-dir",
            "why",
            "probe",
        ],
    );
    let mut on_object = 0;
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let stem = name_of(Path::new(v["path"].as_str().unwrap())).replace(".png", "");
        let heat_path = dir.path().join(v["explanation"]["heat"].as_str().unwrap());
        let overlay = dir
            .path()
            .join(v["explanation"]["overlay"].as_str().unwrap());
        assert!(overlay.starts_with(dir.path().join("why")), "{overlay:?}");
        assert_eq!(image::open(&overlay).unwrap().width(), 256);
        let heat = image::open(&heat_path).unwrap().to_luma8();
        assert_eq!(heat.dimensions(), (SIDE, SIDE));
        let (bx, by) = boxes[&stem];
        let (mut inside, mut total) = (0f64, 0f64);
        for (x, y, p) in heat.enumerate_pixels() {
            let h = f64::from(p[0]);
            total += h;
            if (bx..bx + 28).contains(&x) && (by..by + 28).contains(&y) {
                inside += h;
            }
        }
        let share = inside / total.max(1.0);
        eprintln!(
            "{stem}: {:.0}% of the heat on the item (the item's box is 34% of the image)",
            100.0 * share
        );
        if share > 0.5 {
            on_object += 1;
        }
    }
    assert_eq!(out.lines().count(), 12);
    assert!(on_object >= 10, "{on_object} of 12 maps mostly on the item");
}
