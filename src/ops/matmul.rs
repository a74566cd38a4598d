//! A bounds-checked front to the `gemm` crate's f32 product (which picks its AVX2, AVX-512 or
//! portable kernel at run time), with the operands given as strided views so that transposes
//! cost nothing. When the portable path is forced ([`super::simd::portable`]) a plain loop
//! computes the product instead.

/// A read-only `rows`×`cols` matrix inside `data`: element `(i, j)` is at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: {rows}×{cols} view out of bounds"
            );
        }
    }
}

/// `dst` (`m`×`n`, row-major) = `lhs` (`m`×`k`) · `rhs` (`k`×`n`), added to what `dst` holds
/// when `accumulate`. Single-threaded: callers parallelise over images.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
) {
    assert!(dst.len() >= m * n, "matmul: destination too small");
    lhs.check(m, k, "matmul lhs");
    rhs.check(k, n, "matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    if super::simd::portable() {
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k)
                    .map(|t| lhs.data[i * lhs.rs + t * lhs.cs] * rhs.data[t * rhs.rs + j * rhs.cs])
                    .sum();
                let d = &mut dst[i * n + j];
                *d = if accumulate { *d + dot } else { dot };
            }
        }
        return;
    }
    // SAFETY: every index the product touches was bounds-checked above (the views' last
    // elements, `dst`'s m×n row-major extent); the three regions do not overlap since `dst` is
    // borrowed mutably while `lhs` and `rhs` are shared borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_match_a_naive_product() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive = |i: usize, j: usize| (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum::<f32>();
        let mut c = vec![1.0; m * n];
        matmul(m, n, k, &mut c, true, View::rows(&a, k), View::rows(&b, n));
        // The same product through transposed views: (bᵀ aᵀ)ᵀ, computed as cᵀ = bᵀ · aᵀ.
        let mut ct = vec![0.0; n * m];
        matmul(
            n,
            m,
            k,
            &mut ct,
            false,
            View::transposed(&b, n),
            View::transposed(&a, k),
        );
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * n + j] - 1.0 - naive(i, j)).abs() < 1e-4);
                assert!((ct[j * m + i] - naive(i, j)).abs() < 1e-4);
            }
        }
    }
}
