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

/// Quantizes one token vector into `q` (same length); returns the scale `a` and the sum of the values.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let a = 127.0f32 / amax.max(1e-5);
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let r = round_half_even((v * a).clamp(-128.0, 128.0)).clamp(-128.0, 127.0) as i8;
        *o = r;
        sum += r as i32;
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

    #[test]
    fn tiny_vectors_use_the_floor_and_pad_with_zeros() {
        let mut b = QuantizedBatch::default();
        b.quantize(&[0.0; 20], 20);
        assert_eq!(b.kp, 32);
        assert_eq!(b.scale[0], 127.0 / 1e-5);
        assert!(b.q.iter().all(|&v| v == 0));
    }
}
