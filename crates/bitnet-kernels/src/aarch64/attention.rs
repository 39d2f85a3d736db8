//! [`attention`](crate::ops::attention) with NEON: the portable code with a NEON
//! [`dot`](crate::ops::dot) for the scores (16 lanes in four registers, multiply then add, never fused),
//! the weighted sums as the portable code compiles for NEON: the portable bits.

use std::arch::aarch64::*;

use crate::ops::{KvLayout, attention_body, mix_body, scores_each};
use crate::scalar::reduce_lanes;

/// [`attention`](crate::ops::attention) with NEON.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_neon(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_ctx: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv: KvLayout,
    heads: std::ops::Range<usize>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = |a: &[f32], b: &[f32]| {
        // SAFETY: this function runs only where NEON was detected, so its callees may use it.
        unsafe { dot_neon(a, b) }
    };
    let score = |qs: &[f32], nq: usize, k: &[f32], kd: usize, ko: usize, sc: f32, s: &mut [f32]| {
        scores_each(qs, nq, k, kd, ko, sc, s, d)
    };
    attention_body(
        q,
        keys,
        values,
        n_ctx,
        n_heads,
        n_kv_heads,
        head_dim,
        kv,
        heads,
        scores,
        out,
        score,
        |w: &[f32], nq: usize, v: &[f32], kd: usize, vo: usize, o: &mut [f32]| {
            mix_body(w, nq, v, kd, vo, o)
        },
    )
}

/// [`dot`](crate::ops::dot) with NEON: lanes 0-15 in four registers, multiply then add, the same
/// canonical reduction and tail.
#[target_feature(enable = "neon")]
unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16 * 16;
    let mut acc = [vdupq_n_f32(0.0); 4];
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= the length of both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(c), b.as_ptr().add(c));
            for (i, l) in acc.iter_mut().enumerate() {
                let p = vmulq_f32(vld1q_f32(pa.add(4 * i)), vld1q_f32(pb.add(4 * i)));
                *l = vaddq_f32(*l, p);
            }
        }
    }
    let mut lanes = [0f32; 16];
    for (i, l) in acc.iter().enumerate() {
        // SAFETY: `lanes` holds 16 f32; 4 are written at 4i.
        unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * i), *l) };
    }
    let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    reduce_lanes(lanes) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dot;

    #[test]
    fn the_neon_dot_gives_the_portable_bits_on_every_length() {
        if !crate::Kernels::available().iter().any(|k| k.name == "neon") {
            return;
        }
        let a: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..70)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0)
            .collect();
        for n in 0..70 {
            // SAFETY: the neon kernels run here, so NEON was detected.
            let got = unsafe { dot_neon(&a[..n], &b[..n]) };
            assert_eq!(got.to_bits(), dot(&a[..n], &b[..n]).to_bits(), "length {n}");
        }
    }
}
