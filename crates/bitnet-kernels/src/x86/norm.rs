//! [`rms_norm`](crate::ops::rms_norm) for AVX-512 and AVX2: the portable definition's lanes and order,
//! so its bits.

use std::arch::x86_64::*;

use crate::ops::{NORM_LANES, rms_norm, rms_norm_finish};

/// [`rms_norm`] in AVX-512 intrinsics: lanes 0-7 and 8-15 of the f64 sum in two registers (the compiler
/// kept the portable body's lanes in 128-bit pieces), the same halving reduction, then the portable scale.
#[target_feature(enable = "avx512f")]
pub unsafe fn rms_norm_avx512(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let (chunks, tail) = x.as_chunks::<NORM_LANES>();
    let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for c in chunks {
        // SAFETY: `c` holds 16 f32 (two halves of 8).
        let (a, b) = unsafe {
            (
                _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr())),
                _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr().add(8))),
            )
        };
        lo = _mm512_add_pd(lo, _mm512_mul_pd(a, a));
        hi = _mm512_add_pd(hi, _mm512_mul_pd(b, b));
    }
    // Width 8 done in registers: lane i + 8 into lane i.
    let mut lanes = [0f64; 8];
    // SAFETY: `lanes` holds 8 f64.
    unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), _mm512_add_pd(lo, hi)) };
    rms_norm_finish(&mut lanes, tail, x, weight, eps, out)
}

/// [`rms_norm`] compiled for AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn rms_norm_avx2(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm(x, weight, eps, out)
}
