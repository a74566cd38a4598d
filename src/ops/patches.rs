//! The 3×3 (padding 1, stride 1) patch layout shared by the cnn's fused inference path and its
//! fused training op: [`im2col3x3_into`] writes one row of `9 * cin` values
//! (`(ky * 3 + kx) * cin + c`) per conv output position of a channels-last image, and
//! [`col2im3x3`] adds such rows back onto the image they came from.
//!
//! The three taps of one kernel row are adjacent both in a patch row and in the image, so away
//! from the left and right edges each kernel row is one copy (or add) of `3 * cin` values.

use super::simd::dispatch;

/// Writes the patches of conv output rows `y0..y0 + rows`, columns `0..cols`, of an
/// `h`×`w`×`cin` channels-last `input` into `patches` (exactly `rows * cols * 9 * cin` values,
/// all overwritten), zeros where the window leaves the image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col3x3_into(
    input: &[f32],
    h: usize,
    w: usize,
    cin: usize,
    y0: usize,
    rows: usize,
    cols: usize,
    patches: &mut [f32],
) {
    let k = 9 * cin;
    assert_eq!(patches.len(), rows * cols * k, "im2col buffer size");
    assert!(input.len() >= h * w * cin, "im2col input size");
    dispatch(
        #[inline(always)]
        || {
            for r in 0..rows {
                let y = y0 + r;
                for x in 0..cols {
                    let row = &mut patches[(r * cols + x) * k..][..k];
                    for ky in 0..3 {
                        let dst = &mut row[ky * 3 * cin..][..3 * cin];
                        // Padded coordinates: image row iy - 1, columns x + kx - 1.
                        let iy = y + ky;
                        if iy < 1 || iy > h {
                            dst.fill(0.0);
                            continue;
                        }
                        let line = (iy - 1) * w;
                        if x >= 1 && x + 2 <= w {
                            copy(dst, &input[(line + x - 1) * cin..][..3 * cin]);
                            continue;
                        }
                        for kx in 0..3 {
                            let ix = x + kx;
                            let d = &mut dst[kx * cin..][..cin];
                            if ix < 1 || ix > w {
                                d.fill(0.0);
                            } else {
                                d.copy_from_slice(&input[(line + ix - 1) * cin..][..cin]);
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `dst.copy_from_slice(src)`, with the 9 values of an RGB kernel row (the first layer, where
/// this copy runs most often) copied inline rather than through `memcpy`.
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    if let (Ok(d), Ok(s)) = (
        <&mut [f32; 9]>::try_from(&mut *dst),
        <&[f32; 9]>::try_from(src),
    ) {
        *d = *s;
    } else {
        dst.copy_from_slice(src);
    }
}

/// Adds the patch gradients `dp` (`[h * w][9 * cin]`, the [`im2col3x3_into`] layout of a whole
/// image) back onto the `h`×`w`×`cin` image gradient `dx` they came from.
pub(crate) fn col2im3x3(dp: &[f32], h: usize, w: usize, cin: usize, dx: &mut [f32]) {
    let k = 9 * cin;
    assert_eq!(dp.len(), h * w * k, "col2im patch size");
    assert_eq!(dx.len(), h * w * cin, "col2im image size");
    let add = |d: &mut [f32], s: &[f32]| {
        for (d, s) in d.iter_mut().zip(s) {
            *d += s;
        }
    };
    dispatch(
        #[inline(always)]
        || {
            for y in 0..h {
                for x in 0..w {
                    let row = &dp[(y * w + x) * k..][..k];
                    for ky in 0..3 {
                        let iy = y + ky;
                        if iy < 1 || iy > h {
                            continue;
                        }
                        let line = (iy - 1) * w;
                        let src = &row[ky * 3 * cin..][..3 * cin];
                        if x >= 1 && x + 2 <= w {
                            add(&mut dx[(line + x - 1) * cin..][..3 * cin], src);
                            continue;
                        }
                        for kx in 0..3 {
                            let ix = x + kx;
                            if (1..=w).contains(&ix) {
                                add(
                                    &mut dx[(line + ix - 1) * cin..][..cin],
                                    &src[kx * cin..][..cin],
                                );
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch value at output (y, x), tap (ky, kx), channel c, straight from the definition.
    fn tap(input: &[f32], h: usize, w: usize, cin: usize, at: [usize; 5]) -> f32 {
        let [y, x, ky, kx, c] = at;
        let (iy, ix) = (y as isize + ky as isize - 1, x as isize + kx as isize - 1);
        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
            0.0
        } else {
            input[((iy as usize) * w + ix as usize) * cin + c]
        }
    }

    #[test]
    fn patches_and_their_adjoint_match_the_definition() {
        for (h, w, cin) in [(1, 1, 3), (2, 3, 1), (5, 4, 3), (7, 9, 2), (3, 1, 5)] {
            let input: Vec<f32> = (0..h * w * cin).map(|i| i as f32 * 0.5 - 7.0).collect();
            let k = 9 * cin;
            // Garbage first: every value must be overwritten.
            let mut patches = vec![f32::NAN; h * w * k];
            im2col3x3_into(&input, h, w, cin, 0, h, w, &mut patches);
            for y in 0..h {
                for x in 0..w {
                    for t in 0..9 {
                        for c in 0..cin {
                            let want = tap(&input, h, w, cin, [y, x, t / 3, t % 3, c]);
                            assert_eq!(patches[(y * w + x) * k + t * cin + c], want);
                        }
                    }
                }
            }
            // col2im is im2col's adjoint: <im2col(a), p> == <a, col2im(p)>.
            let p: Vec<f32> = (0..h * w * k)
                .map(|i| ((i * 7) % 11) as f32 - 5.0)
                .collect();
            let mut back = vec![0f32; h * w * cin];
            col2im3x3(&p, h, w, cin, &mut back);
            let lhs: f64 = patches.iter().zip(&p).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = input.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0),
                "{h}x{w}x{cin}"
            );
        }
    }

    #[test]
    fn a_band_of_rows_starts_where_asked() {
        let (h, w, cin) = (6, 5, 2);
        let input: Vec<f32> = (0..h * w * cin).map(|i| i as f32).collect();
        let mut all = vec![0f32; h * w * 9 * cin];
        im2col3x3_into(&input, h, w, cin, 0, h, w, &mut all);
        let mut band = vec![0f32; 2 * w * 9 * cin];
        im2col3x3_into(&input, h, w, cin, 3, 2, w, &mut band);
        assert_eq!(band[..], all[3 * w * 9 * cin..5 * w * 9 * cin]);
    }
}
