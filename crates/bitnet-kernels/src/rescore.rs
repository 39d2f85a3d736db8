//! The rescored LM head's arithmetic: a rigorous bound on how far the int8 head's logit of a row can be
//! from the exact head's, and the rows whose exact logit could still be the largest.
//!
//! The int8 head (SPEC.md 4.5) is a per-row absmax copy of the exact head (SPEC.md 6), read with the
//! input quantized per 256-column block ([`BlockQuantized`]). For a row with weights `W` (the exact head's
//! bf16 or f32 values), int8 values `wq` and scale `d`, and the final-normed hidden state `x`:
//!
//! * `approx` is the float the int8 kernel returns (the scalar oracle's order of operations);
//! * `exact` is the float the exact head's kernel returns ([`crate::scalar::bf16_matvec`]'s order);
//! * [`HeadBound::row`] is `d * C + ...` with `C` computed once per token from `x` and its quantization,
//!   and `|approx - exact| <= HeadBound::row(d)` holds for every row (SPEC.md 6.2 derives it).
//!
//! [`candidates`] then keeps every row whose interval `approx ± bound` reaches the largest lower end:
//! the exact head's largest logit is among them, and every other row's exact logit is strictly below it,
//! so rescoring them exactly gives the exact head's argmax. [`HeadBound`] starts there.

use crate::scalar::{BlockQuantized, DOT_LANES, HEAD_BLOCK};

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// `gamma(m) = m u / (1 - m u)`: the relative error bound of `m` chained f32 roundings.
fn gamma(m: usize) -> f64 {
    let mu = m as f64 * U;
    mu / (1.0 - mu)
}

/// Below this, a row scale is treated as this (subnormal and zero scales lose their relative precision;
/// SPEC.md 6.2 bounds such rows absolutely).
const TINY_SCALE: f64 = 1.0 / (1u128 << 116) as f64;

/// The error bound of the int8 head for one input vector: `|approx_r - exact_r| <= row(d_r)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadBound {
    /// `C`: the bound of a row is `max(|d|, 2^-116) * C + abs`.
    per_scale: f64,
    /// Products that underflow to subnormals round absolutely, by at most 2^-150 each.
    abs: f64,
}

impl HeadBound {
    /// The bound for final-normed hidden state `x` (the exact head's input) and `bq`, its quantization
    /// (the int8 head's input, from [`BlockQuantized::quantize`] of the same `x`).
    ///
    /// `C = (1/2 + 2^-17) ||x||_1` (weight rounding) `+ 127 ||x - step q||_1` (input rounding)
    /// `+ gamma(blocks + 2) 127 sum_b step_b sum_{k in b} |q_k|` (the int8 head's f32 sums)
    /// `+ gamma(ceil(cols / 16) + 5) 128 ||x||_1` (the exact head's f32 sums), widened by `2^-30` for
    /// the f64 arithmetic that computes it; plus `(cols + blocks + 1) 2^-149` for products that underflow.
    /// Not finite (an infinite or NaN input) means no bound: every
    /// row is a candidate.
    pub fn new(x: &[f32], bq: &BlockQuantized) -> HeadBound {
        let cols = x.len();
        let blocks = cols.div_ceil(HEAD_BLOCK);
        if bq.q.len() < cols || bq.step.len() != blocks {
            // Not this vector's quantization: no bound can be given.
            return HeadBound {
                per_scale: f64::INFINITY,
                abs: 0.0,
            };
        }
        let (mut x1, mut ex1, mut sq) = (0f64, 0f64, 0f64);
        for ((&step, xb), qb) in bq
            .step
            .iter()
            .zip(x.chunks(HEAD_BLOCK))
            .zip(bq.q.chunks(HEAD_BLOCK))
        {
            let step = step as f64;
            let mut q1 = 0f64;
            for (&xk, &qk) in xb.iter().zip(qb) {
                let (xk, qk) = (xk as f64, qk as f64);
                x1 += xk.abs();
                ex1 += (xk - step * qk).abs();
                q1 += qk.abs();
            }
            sq += step * q1;
        }
        let c = (0.5 + 2f64.powi(-17)) * x1
            + 127.0 * ex1
            + gamma(blocks + 2) * 127.0 * sq
            + gamma(cols.div_ceil(DOT_LANES) + 5) * 128.0 * x1;
        let per_scale = c * (1.0 + 2f64.powi(-30));
        HeadBound {
            per_scale: if per_scale.is_finite() {
                per_scale
            } else {
                f64::INFINITY
            },
            abs: (cols + blocks + 1) as f64 * 2f64.powi(-149),
        }
    }

    /// The bound of a row whose int8 scale is `d`.
    #[inline]
    pub fn row(&self, d: f32) -> f64 {
        (d.abs() as f64).max(TINY_SCALE) * self.per_scale + self.abs
    }

    /// `C`, the bound per unit of row scale.
    pub fn per_scale(&self) -> f64 {
        self.per_scale
    }
}

/// The row scale `r` of an `int8_r16` matrix's scale block (SPEC.md 4.5: `Rp` little-endian f32).
#[inline]
fn scale_at(scales: &[u8], r: usize) -> f32 {
    f32::from_le_bytes([
        scales[4 * r],
        scales[4 * r + 1],
        scales[4 * r + 2],
        scales[4 * r + 3],
    ])
}

/// The rows of `approx` (one token's int8-head logits) whose exact logit could be the largest: every row
/// `r` unless `approx_r + bound_r` is provably below `max_r' (approx_r' - bound_r')`. `scales` is the
/// matrix's scale block (at least `4 * approx.len()` bytes). Fills `out` in row order.
///
/// Rows whose bound or logit is not finite are always kept, and so is every row when no row has a
/// finite lower end: the rule never drops a row it cannot prove is below another's exact logit.
pub fn candidates(approx: &[f32], scales: &[u8], bound: &HeadBound, out: &mut Vec<u32>) {
    out.clear();
    assert!(
        scales.len() >= 4 * approx.len(),
        "the int8 head's row scales"
    );
    let mut best = f64::NEG_INFINITY;
    for (r, &a) in approx.iter().enumerate() {
        let lo = a as f64 - bound.row(scale_at(scales, r));
        // NaN compares false: such a row never sets the threshold.
        if lo > best {
            best = lo;
        }
    }
    for (r, &a) in approx.iter().enumerate() {
        let a = a as f64;
        let hi = a + bound.row(scale_at(scales, r));
        // The f64 sums above round; this slack covers them (a few units in the last place of each).
        let slack = 4.0 * f64::EPSILON * (a.abs() + (hi - a).abs() + best.abs());
        let below = hi + slack < best;
        if !below {
            out.push(r as u32);
        }
    }
}
