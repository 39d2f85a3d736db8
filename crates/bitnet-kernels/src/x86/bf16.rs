//! The bf16 LM head (row dot products): AVX2 and AVX-512.

use std::arch::x86_64::*;
use std::ops::Range;

use super::PREFETCH;
use crate::Bf16Matrix;

/// Reduces 16 f32 lanes held as two 8-lane halves in the canonical order of
/// [`crate::scalar::reduce_lanes`].
#[target_feature(enable = "avx2")]
unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
    let v8 = _mm256_add_ps(lo, hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    let v1 = _mm_add_ss(v2, _mm_shuffle_ps::<1>(v2, v2));
    _mm_cvtss_f32(v1)
}

/// Adds the columns `k..cols` of `row` that the vector loop left to their lanes (in column order, as the
/// scalar oracle does), then reduces the 16 lanes in the canonical order.
#[target_feature(enable = "avx2")]
unsafe fn finish_bf16_row(
    m: &Bf16Matrix<'_>,
    x: &[f32],
    row: usize,
    k: usize,
    mut lanes: [f32; 16],
) -> f32 {
    let cols = m.cols;
    for kk in k..cols {
        let b = &m.data[2 * (row * cols + kk)..2 * (row * cols + kk) + 2];
        lanes[kk % 16] += f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * x[kk];
    }
    // SAFETY: `lanes` holds 16 f32; AVX2 is enabled here.
    unsafe {
        reduce16(
            _mm256_loadu_ps(lanes.as_ptr()),
            _mm256_loadu_ps(lanes.as_ptr().add(8)),
        )
    }
}

/// bf16 row dot products with the contract of [`crate::scalar::bf16_matvec`] (16 lanes, multiply then add,
/// canonical reduction).
#[target_feature(enable = "avx2")]
pub unsafe fn bf16_matvec_avx2(m: &Bf16Matrix<'_>, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    let cols = m.cols;
    assert!(
        m.data.len() >= 2 * rows.end * cols && x.len() >= cols,
        "bf16 head shapes"
    );
    let full = cols / 16 * 16;
    for row in rows.clone() {
        let w = m.data[2 * row * cols..].as_ptr();
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut k = 0;
        while k < full {
            // SAFETY: 16 bf16 at column k of this row and 16 f32 of x are in bounds (k + 16 <= cols).
            unsafe {
                let wb = _mm256_loadu_si256(w.add(2 * k) as *const __m256i);
                let wlo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm256_castsi256_si128(wb),
                )));
                let whi = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm256_extracti128_si256::<1>(wb),
                )));
                lo = _mm256_add_ps(lo, _mm256_mul_ps(wlo, _mm256_loadu_ps(x.as_ptr().add(k))));
                hi = _mm256_add_ps(
                    hi,
                    _mm256_mul_ps(whi, _mm256_loadu_ps(x.as_ptr().add(k + 8))),
                );
            }
            k += 16;
        }
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 f32.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        }
        // SAFETY: AVX2 is enabled in this function.
        out[row - rows.start] = unsafe { finish_bf16_row(m, x, row, k, lanes) };
    }
}

/// bf16 row dot products on zmm, with the contract of [`crate::scalar::bf16_matvec`].
#[target_feature(enable = "avx512f,avx512bw,avx2")]
pub unsafe fn bf16_matvec_avx512(
    m: &Bf16Matrix<'_>,
    x: &[f32],
    rows: Range<usize>,
    out: &mut [f32],
) {
    let cols = m.cols;
    assert!(
        m.data.len() >= 2 * rows.end * cols && x.len() >= cols,
        "bf16 head shapes"
    );
    let full = cols / 16 * 16;
    for row in rows.clone() {
        let w = m.data[2 * row * cols..].as_ptr();
        let mut acc = _mm512_setzero_ps();
        let mut k = 0;
        while k < full {
            // SAFETY: 16 bf16 of this row and 16 f32 of x at column k are in bounds.
            unsafe {
                let wb = _mm256_loadu_si256(w.add(2 * k) as *const __m256i);
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(2 * k + PREFETCH) as *const i8);
                let wf = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(wb)));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(wf, _mm512_loadu_ps(x.as_ptr().add(k))));
            }
            k += 16;
        }
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        // SAFETY: AVX2 is enabled in this function.
        out[row - rows.start] = unsafe { finish_bf16_row(m, x, row, k, lanes) };
    }
}
