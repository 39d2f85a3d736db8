//! [`rms_norm`](crate::ops::rms_norm) with NEON: the portable definition's 16 f64 lanes in eight
//! registers, the same order, so its bits.

use std::arch::aarch64::*;

use crate::ops::{NORM_LANES, rms_norm_finish};

/// [`rms_norm`](crate::ops::rms_norm) with NEON: lane `j` of 16 sums the squares (in f64) of the elements
/// `j (mod 16)` in order, then the portable halving reduction, tail and scale.
#[target_feature(enable = "neon")]
pub unsafe fn rms_norm_neon(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let (chunks, tail) = x.as_chunks::<NORM_LANES>();
    let mut acc = [vdupq_n_f64(0.0); 8];
    for c in chunks {
        for i in 0..4 {
            // SAFETY: `c` holds 16 f32; 4 are read at 4i.
            let v = unsafe { vld1q_f32(c.as_ptr().add(4 * i)) };
            let (a, b) = (vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v));
            acc[2 * i] = vaddq_f64(acc[2 * i], vmulq_f64(a, a));
            acc[2 * i + 1] = vaddq_f64(acc[2 * i + 1], vmulq_f64(b, b));
        }
    }
    let mut lanes = [0f64; NORM_LANES];
    for (i, a) in acc.iter().enumerate() {
        // SAFETY: `lanes` holds 16 f64; 2 are written at 2i.
        unsafe { vst1q_f64(lanes.as_mut_ptr().add(2 * i), *a) };
    }
    rms_norm_finish(&mut lanes, tail, x, weight, eps, out)
}
