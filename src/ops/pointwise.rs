//! Pointwise (1×1, no bias) convolution on NCHW f32 slices as matrix products: per image, the
//! output `[cout][hw]` is `W · x` with `W` `[cout][cin]`, the input gradient `Wᵀ · dy`, and the
//! weight gradient `Σ dy · xᵀ` over the batch. Images run in parallel; the weight gradient is
//! summed over fixed groups of images and then over the groups in order, so results do not
//! depend on scheduling or the thread count.

use rayon::prelude::*;

use super::matmul::{View, matmul};

/// Shape of one pointwise call: `n` images of `cin` planes of `hw` pixels, `cout` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PwShape {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub hw: usize,
}

/// Images whose weight-gradient products are summed into one partial.
const IMAGES_PER_PARTIAL: usize = 4;

/// The forward pass: `x` `[n][cin][hw]`, `weight` `[cout][cin]`; returns `[n][cout][hw]`.
pub fn forward(s: PwShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), s.n * s.cin * s.hw, "pointwise input size");
    assert_eq!(weight.len(), s.cout * s.cin, "pointwise weight size");
    let mut y = vec![0f32; s.n * s.cout * s.hw];
    if s.hw == 0 || s.cout == 0 {
        return y;
    }
    y.par_chunks_mut(s.cout * s.hw)
        .zip(x.par_chunks(s.cin * s.hw))
        .for_each(|(yi, xi)| {
            matmul(
                s.cout,
                s.hw,
                s.cin,
                yi,
                false,
                View::rows(weight, s.cin),
                View::rows(xi, s.hw),
            )
        });
    y
}

/// The input gradient: `dy` `[n][cout][hw]`; returns `[n][cin][hw]`.
pub fn backward_input(s: PwShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    assert_eq!(
        dy.len(),
        s.n * s.cout * s.hw,
        "pointwise output gradient size"
    );
    assert_eq!(weight.len(), s.cout * s.cin, "pointwise weight size");
    let mut dx = vec![0f32; s.n * s.cin * s.hw];
    if s.hw == 0 || s.cin == 0 {
        return dx;
    }
    dx.par_chunks_mut(s.cin * s.hw)
        .zip(dy.par_chunks(s.cout * s.hw))
        .for_each(|(dxi, dyi)| {
            matmul(
                s.cin,
                s.hw,
                s.cout,
                dxi,
                false,
                View::transposed(weight, s.cin),
                View::rows(dyi, s.hw),
            )
        });
    dx
}

/// The weight gradient: `x` `[n][cin][hw]`, `dy` `[n][cout][hw]`; returns `[cout][cin]`.
pub fn backward_weight(s: PwShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), s.n * s.cin * s.hw, "pointwise input size");
    assert_eq!(
        dy.len(),
        s.n * s.cout * s.hw,
        "pointwise output gradient size"
    );
    let len = s.cout * s.cin;
    if s.hw == 0 || len == 0 {
        return vec![0.0; len];
    }
    let partials: Vec<Vec<f32>> = x
        .par_chunks(IMAGES_PER_PARTIAL * s.cin * s.hw)
        .zip(dy.par_chunks(IMAGES_PER_PARTIAL * s.cout * s.hw))
        .map(|(xc, dyc)| {
            let mut part = vec![0f32; len];
            for (i, (xi, dyi)) in xc
                .chunks_exact(s.cin * s.hw)
                .zip(dyc.chunks_exact(s.cout * s.hw))
                .enumerate()
            {
                matmul(
                    s.cout,
                    s.cin,
                    s.hw,
                    &mut part,
                    i > 0,
                    View::rows(dyi, s.hw),
                    View::transposed(xi, s.hw),
                );
            }
            part
        })
        .collect();
    let mut dw = vec![0f32; len];
    for p in &partials {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_the_definition() {
        let s = PwShape {
            n: 6,
            cin: 3,
            cout: 4,
            hw: 5,
        };
        let x: Vec<f32> = (0..s.n * s.cin * s.hw)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let w: Vec<f32> = (0..s.cout * s.cin)
            .map(|i| (i % 5) as f32 * 0.5 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..s.n * s.cout * s.hw)
            .map(|i| (i % 3) as f32 - 1.0)
            .collect();
        let y = forward(s, &x, &w);
        let dx = backward_input(s, &dy, &w);
        let dw = backward_weight(s, &x, &dy);
        let xi = |n: usize, c: usize, p: usize| x[(n * s.cin + c) * s.hw + p];
        let gi = |n: usize, o: usize, p: usize| dy[(n * s.cout + o) * s.hw + p];
        for n in 0..s.n {
            for p in 0..s.hw {
                for o in 0..s.cout {
                    let want: f32 = (0..s.cin).map(|c| w[o * s.cin + c] * xi(n, c, p)).sum();
                    assert!((y[(n * s.cout + o) * s.hw + p] - want).abs() < 1e-4);
                }
                for c in 0..s.cin {
                    let want: f32 = (0..s.cout).map(|o| w[o * s.cin + c] * gi(n, o, p)).sum();
                    assert!((dx[(n * s.cin + c) * s.hw + p] - want).abs() < 1e-4);
                }
            }
        }
        for o in 0..s.cout {
            for c in 0..s.cin {
                let want: f32 = (0..s.n)
                    .flat_map(|n| (0..s.hw).map(move |p| (n, p)))
                    .map(|(n, p)| gi(n, o, p) * xi(n, c, p))
                    .sum();
                assert!((dw[o * s.cin + c] - want).abs() < 1e-3);
            }
        }
    }
}
