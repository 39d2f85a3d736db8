//! Per-token int8 activation quantization (transformers' `ActQuant`, SPEC.md section 7):
//! `a = 127 / max(max|x|, 1e-5)`, `q = clamp(round_half_even(x * a), -128, 127)`.

use crate::{pad16, round_half_even};

/// A batch of `n` quantized token vectors of width `k`, zero-padded to `kp = pad16(k)`.
#[derive(Debug, Clone, Default)]
pub struct QuantizedBatch {
    /// `[n, kp]` int8 values.
    pub q: Vec<i8>,
    /// Logical width.
    pub k: usize,
    /// Padded width.
    pub kp: usize,
    /// Number of tokens.
    pub n: usize,
    /// Per-token scale `a` (multiply a float by it to get the int8 value).
    pub scale: Vec<f32>,
    /// Per-token sum of the int8 values (the correction for codes `w + 1`).
    pub sum: Vec<i32>,
}

impl QuantizedBatch {
    /// Quantizes `x` (`[n, k]` row-major) into this batch, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        assert!(k > 0 && x.len().is_multiple_of(k), "x must be [n, k]");
        self.reset(x.len() / k, k);
        let kp = self.kp;
        for (t, row) in x.chunks_exact(k).enumerate() {
            let (a, s) = quantize_row(row, &mut self.q[t * kp..t * kp + k]);
            self.scale[t] = a;
            self.sum[t] = s;
        }
    }

    /// Sizes the batch for `n` tokens of width `k` (values zeroed), for filling token by token with
    /// [`quantize_row`] (as threads do, each on its own tokens).
    pub fn reset(&mut self, n: usize, k: usize) {
        assert!(k > 0, "width must be positive");
        self.k = k;
        self.kp = pad16(k);
        self.n = n;
        self.q.clear();
        self.q.resize(n * self.kp, 0);
        self.scale.clear();
        self.scale.resize(n, 0.0);
        self.sum.clear();
        self.sum.resize(n, 0);
    }

    /// The int8 values of token `t` (`kp` long, zero-padded).
    pub fn token(&self, t: usize) -> &[i8] {
        &self.q[t * self.kp..(t + 1) * self.kp]
    }
}

/// Lanes of [`quantize_row`]'s vector loops.
const QUANT_LANES: usize = 16;

/// Quantizes one token vector into `q` (same length); returns the scale `a` and the sum of the values.
/// The portable definition that every build of [`Kernels::quantize_row`](crate::Kernels) matches bit for
/// bit.
///
/// The maximum and the integer sum do not depend on the order of the elements, so the body runs in 16
/// lanes (it vectorizes), and the SIMD builds compute the same bits.
#[inline(always)]
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let q = &mut q[..x.len()];
    let (chunks, tail) = x.as_chunks::<QUANT_LANES>();
    let mut lanes = [0f32; QUANT_LANES];
    for c in chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = tail
        .iter()
        .fold(lanes.iter().fold(0f32, |m, &v| m.max(v)), |m, v| {
            m.max(v.abs())
        });
    let a = 127.0f32 / amax.max(1e-5);
    // Through i32: a saturating f32 -> i32 conversion vectorizes, one to i8 does not (the value is
    // already in i8 range, so both give the same result).
    let one =
        |v: f32| round_half_even((v * a).clamp(-128.0, 128.0)).clamp(-128.0, 127.0) as i32 as i8;
    let (qc, qt) = q.as_chunks_mut::<QUANT_LANES>();
    let mut sums = [0i32; QUANT_LANES];
    for (o, c) in qc.iter_mut().zip(chunks) {
        for ((o, &v), s) in o.iter_mut().zip(c).zip(sums.iter_mut()) {
            *o = one(v);
            *s += *o as i32;
        }
    }
    let mut sum: i32 = sums.iter().sum();
    for (o, &v) in qt.iter_mut().zip(tail) {
        *o = one(v);
        sum += *o as i32;
    }
    (a, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_like_actquant() {
        let x = [0.5f32, -1.0, 0.25, 0.0, 1.0 / 254.0];
        let mut q = [0i8; 5];
        let (a, s) = quantize_row(&x, &mut q);
        assert_eq!(a, 127.0);
        // 63.5 rounds to 64 (even), 0.5 rounds to 0 (even).
        assert_eq!(q, [64, -127, 32, 0, 0]);
        assert_eq!(s, 64 - 127 + 32);
    }

    /// The sequential definition [`quantize_row`] must equal bit for bit.
    fn sequential(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let a = 127.0f32 / amax.max(1e-5);
        let mut sum = 0i32;
        for (o, &v) in q.iter_mut().zip(x) {
            *o = round_half_even((v * a).clamp(-128.0, 128.0)).clamp(-128.0, 127.0) as i8;
            sum += *o as i32;
        }
        (a, sum)
    }

    #[test]
    fn every_kernel_set_equals_the_sequential_definition() {
        let mut x: Vec<f32> = (0..300)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0137 * (1 + i % 7) as f32)
            .collect();
        // Ties of the rounding, and garbage the sequential definition still maps somewhere.
        x[40] = 0.5 * x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        x[41] = -x[40] * 3.0;
        let mut garbage = x.clone();
        garbage[5] = f32::NAN;
        garbage[20] = f32::INFINITY;
        garbage[290] = f32::NAN;
        let sets = crate::Kernels::available();
        for (x, n) in [1, 2, 15, 16, 17, 33, 100, 255, 300]
            .into_iter()
            .map(|n| (&x, n))
            .chain([(&garbage, 19), (&garbage, 300), (&garbage, 10)])
        {
            let mut want = vec![0i8; n];
            let w = sequential(&x[..n], &mut want);
            for k in &sets {
                let mut got = vec![0i8; n];
                assert_eq!((k.quantize_row)(&x[..n], &mut got), w, "{k:?}, length {n}");
                assert_eq!(got, want, "{k:?}, length {n}");
            }
        }
    }

    #[test]
    fn tiny_vectors_use_the_floor_and_pad_with_zeros() {
        let mut b = QuantizedBatch::default();
        b.quantize(&[0.0; 20], 20);
        assert_eq!(b.kp, 32);
        assert_eq!(b.scale[0], 127.0 / 1e-5);
        assert!(b.q.iter().all(|&v| v == 0));
    }
}
