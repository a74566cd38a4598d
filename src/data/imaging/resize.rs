//! Resizing: the eval square (shorter side to `size`, centre crop) and the train augmentation's
//! random resized crop, through `fast_image_resize` (SIMD convolution; its portable code when
//! `FLORA_KERNELS=portable`, so both builds are tested on one machine).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{CpuExtensions, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// Resizes the `cw`×`ch` window at (`x`, `y`) of `img` to `w`×`h` with an antialiased
/// bilinear filter (its support widens with the reduction, so it averages like an area filter).
pub fn resize_window(
    img: &RgbImage,
    (x, y, cw, ch): (u32, u32, u32, u32),
    w: u32,
    h: u32,
) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if (x, y, cw, ch) == (0, 0, w, h) && (iw, ih) == (w, h) {
        return img.clone();
    }
    let src = ImageRef::new(iw, ih, img.as_raw(), PixelType::U8x3).expect("RgbImage buffer");
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(x as f64, y as f64, cw as f64, ch as f64);
    resizer()
        .resize(&src, &mut dst, &opts)
        .expect("resize of a window inside the image");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("resized buffer")
}

/// A resizer on the widest SIMD the environment allows.
fn resizer() -> Resizer {
    let mut r = Resizer::new();
    if crate::ops::simd::portable() {
        // SAFETY: no extension is always supported.
        unsafe { r.set_cpu_extensions(CpuExtensions::None) };
    }
    r
}

/// Eval preprocessing: resize the shorter side to `size` and centre-crop to `size`×`size`.
pub fn square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let (x, y) = ((w - side) / 2, (h - side) / 2);
    if side == size && w == h {
        return img.clone();
    }
    resize_window(img, (x, y, side, side), size, size)
}

/// Train augmentation: a random resized crop (area share in `[scale_min, 1]`, aspect ratio in
/// `[3/4, 4/3]`) of a square image, resized back to its side.
pub fn random_resized_crop(img: &RgbImage, scale_min: f64, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * rng.random_range(scale_min..=1.0);
        let log_ratio = rng.random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return resize_window(img, (x, y, cw, ch), w, h);
        }
    }
    img.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_crops_the_centre() {
        let mut img = RgbImage::new(6, 4);
        img.put_pixel(1, 0, image::Rgb([255, 0, 0]));
        let sq = square(&img, 4);
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0)[0], 255);
    }

    #[test]
    fn simd_and_portable_resizes_agree() {
        // A real photograph's texture: a Fashion-MNIST image would be too flat.
        let img = RgbImage::from_fn(301, 217, |x, y| {
            let v = (x * 7 + y * 13) ^ (x * y);
            image::Rgb([v as u8, (v >> 3) as u8, (x + y) as u8])
        });
        let src = ImageRef::new(301, 217, img.as_raw(), PixelType::U8x3).unwrap();
        let opts = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(42.0, 0.0, 217.0, 217.0);
        let mut a = Image::new(64, 64, PixelType::U8x3);
        Resizer::new().resize(&src, &mut a, &opts).unwrap();
        let mut plain = Resizer::new();
        unsafe { plain.set_cpu_extensions(CpuExtensions::None) };
        let mut b = Image::new(64, 64, PixelType::U8x3);
        plain.resize(&src, &mut b, &opts).unwrap();
        assert_eq!(a.buffer(), b.buffer());
    }
}
