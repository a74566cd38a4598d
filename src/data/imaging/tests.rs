use std::path::{Path, PathBuf};

use super::*;

fn photo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/photos")
        .join(rel)
}

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(photo(rel)).unwrap()
}

/// Mean and largest absolute difference of two same-sized RGB8 images, in levels of 255.
fn diff(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut sum, mut max) = (0u64, 0u8);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}

/// A real test image (a Fashion-MNIST bag), scaled up so that every format spreads its
/// pixel data over many rows and blocks.
fn sample() -> DynamicImage {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fashion-mnist/train/bag"
    );
    let first = std::fs::read_dir(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img = load(&first, DecodeLimits::default()).unwrap().to_rgb8();
    DynamicImage::ImageRgb8(image::imageops::resize(
        &img,
        96,
        80,
        image::imageops::FilterType::Triangle,
    ))
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn every_exif_orientation_comes_out_upright() {
    let upright = decode_rgb(
        &bytes("upright/flower.jpg"),
        u32::MAX,
        DecodeLimits::default(),
    )
    .unwrap();
    for o in 1..=8 {
        let stored = bytes(&format!("oriented/flower-{o}.jpg"));
        let img = decode_rgb(&stored, u32::MAX, DecodeLimits::default()).unwrap();
        let (mean, _) = diff(&img, &upright);
        // Only JPEG's re-encoding of turned blocks differs.
        assert!(mean < 1.5, "orientation {o}: mean difference {mean}");
        // The whole-image path (`decode`) and the reduced one agree on the turn.
        assert_eq!(
            decode(&stored, DecodeLimits::default()).unwrap().to_rgb8(),
            img
        );
        // The model input, at a reduced DCT scale, too.
        let small = prepare(&stored, 64, DecodeLimits::default()).unwrap();
        let up_small = prepare(&bytes("upright/flower.jpg"), 64, DecodeLimits::default()).unwrap();
        let (mean, _) = diff(&small, &up_small);
        assert!(
            mean < 1.5,
            "orientation {o} at 64 px: mean difference {mean}"
        );
        if o > 1 {
            // Without the tag applied, the same pixels are far off (the test can fail).
            let raw = image::load_from_memory(&stored).unwrap().to_rgb8();
            let raw_sq = square(&raw, 64);
            assert!(
                diff(&raw_sq, &up_small).0 > 10.0,
                "orientation {o} is not a turn"
            );
        }
    }
}

#[test]
fn the_general_decoder_turns_images_upright_too() {
    // A JPEG without its end marker takes the `image` crate's decoder (after the truncation
    // check); its EXIF orientation must be applied the same way.
    let upright = decode_rgb(
        &bytes("upright/flower.jpg"),
        u32::MAX,
        DecodeLimits::default(),
    )
    .unwrap();
    for o in [3, 6, 8] {
        let stored = bytes(&format!("oriented/flower-{o}.jpg"));
        let unterminated = &stored[..stored.len() - 2];
        let img = decode_rgb(unterminated, 64, DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), upright.dimensions(), "orientation {o}");
        assert!(diff(&img, &upright).0 < 2.5, "orientation {o}");
    }
}

/// Reduced-scale decoding + the antialiased resize, against a full decode resized the same
/// way and against a full decode + area (box) resize, on six real photographs at several
/// input sizes. The bounds are the ones docs/guide/01-train.md states.
#[test]
fn reduced_scale_decoding_stays_close_to_a_full_decode() {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let centre = |img: &RgbImage, size: u32, f: FilterType| {
        let (w, h) = img.dimensions();
        let side = w.min(h);
        let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).unwrap();
        let mut dst = Image::new(size, size, PixelType::U8x3);
        let opts = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(f))
            .crop(
                ((w - side) / 2) as f64,
                ((h - side) / 2) as f64,
                side as f64,
                side as f64,
            );
        Resizer::new().resize(&src, &mut dst, &opts).unwrap();
        RgbImage::from_raw(size, size, dst.into_vec()).unwrap()
    };
    let mut scaled_some = false;
    for name in [
        "flower",
        "china",
        "chelsea",
        "coffee",
        "rocket",
        "astronaut",
    ] {
        let b = bytes(&format!("upright/{name}.jpg"));
        let full = decode_rgb(&b, u32::MAX, DecodeLimits::default()).unwrap();
        for size in [28, 40, 64, 96] {
            scaled_some |= decode_rgb(&b, size, DecodeLimits::default())
                .unwrap()
                .width()
                < full.width();
            let fast = prepare(&b, size, DecodeLimits::default()).unwrap();
            let same_filter = centre(&full, size, FilterType::Bilinear);
            let area = centre(&full, size, FilterType::Box);
            let (mean, max) = diff(&fast, &same_filter);
            assert!(
                mean <= 1.6 && max <= 16,
                "{name} at {size}: mean {mean:.2}, max {max}"
            );
            let (to_area, _) = diff(&fast, &area);
            let (filter_alone, _) = diff(&same_filter, &area);
            assert!(
                to_area <= filter_alone + 1.3,
                "{name} at {size}: {to_area:.2} vs {filter_alone:.2}"
            );
        }
    }
    assert!(scaled_some, "no photo took the reduced-scale path");
}

#[test]
fn limits_are_named_in_refusals() {
    let b = bytes("upright/china.jpg");
    let tiny = DecodeLimits::for_data(0.1);
    let err = decode_rgb(&b, 64, tiny).unwrap_err().to_string();
    assert!(err.contains("data.max_image_megapixels"), "{err}");
    let png = encode(
        &DynamicImage::ImageRgb8(decode_rgb(&b, u32::MAX, DecodeLimits::default()).unwrap()),
        ImageFormat::Png,
    );
    let serve = DecodeLimits::for_serve(200.0, 100_000);
    let err = decode_rgb(&png, 64, serve).unwrap_err().to_string();
    assert!(err.contains("serve.max_decode_bytes"), "{err}");
    // A JPEG decoded at a reduced scale fits where its whole decode would not.
    let serve = DecodeLimits::for_serve(200.0, 40_000);
    assert!(decode_rgb(&b, 40, serve).is_ok());
    assert!(decode_rgb(&b, u32::MAX, serve).is_err());
}

#[test]
fn alpha_is_composited_on_white() {
    let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        1,
        1,
        image::Rgba([0, 0, 0, 0]),
    ));
    assert_eq!(to_rgb(&img).get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn truncated_images_are_refused_in_every_format() {
    let img = sample();
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Bmp,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Tiff,
    ] {
        let bytes = encode(&img, format);
        assert!(
            decode(&bytes, DecodeLimits::default()).is_ok(),
            "{format:?}"
        );
        for share in [0.6, 0.9] {
            let cut = &bytes[..(bytes.len() as f64 * share) as usize];
            assert!(
                decode(cut, DecodeLimits::default()).is_err(),
                "{format:?} cut at {share} decoded"
            );
            assert!(decode_rgb(cut, 16, DecodeLimits::default()).is_err());
        }
    }
    // A real photo cut short, on the reduced-scale path too.
    let b = bytes("upright/coffee.jpg");
    assert!(decode_rgb(&b[..b.len() * 3 / 4], 64, DecodeLimits::default()).is_err());
}

#[test]
fn a_jpeg_missing_only_its_end_marker_is_accepted() {
    let bytes = encode(&sample(), ImageFormat::Jpeg);
    assert!(bytes.ends_with(&[0xFF, 0xD9]));
    let unterminated = decode(&bytes[..bytes.len() - 2], DecodeLimits::default()).unwrap();
    let whole = decode_as(&bytes, ImageFormat::Jpeg, &DecodeLimits::default()).unwrap();
    assert_eq!(whole.as_bytes(), unterminated.as_bytes());
    // Cut a few bytes into the last blocks: refused, though the decoder alone takes it.
    let cut = &bytes[..bytes.len() - 40];
    assert!(decode_as(cut, ImageFormat::Jpeg, &DecodeLimits::default()).is_ok());
    assert!(decode(cut, DecodeLimits::default()).is_err());
}

#[test]
fn garbage_is_not_an_image() {
    assert!(decode(b"hello world", DecodeLimits::default()).is_err());
    let corrupt = [
        &bytes("upright/rocket.jpg")[..600],
        &[0u8; 64][..],
        &[0xFF, 0xD9],
    ]
    .concat();
    assert!(decode_rgb(&corrupt, 64, DecodeLimits::default()).is_err());
}
