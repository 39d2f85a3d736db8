//! [`quantize_row`](crate::quant::quantize_row) for AVX-512 and AVX2: the same bits as the portable
//! definition.

use std::arch::x86_64::*;

use crate::quant::quantize_row;
use crate::round_half_even;

/// [`quantize_row`] in AVX-512 intrinsics (the compiler scalarizes the saturating conversions of the
/// portable body): the same operations on 16 lanes, NaN mapped to 0 as `as i32` does.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_row_avx512(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let q = &mut q[..x.len()];
    let (chunks, tail) = x.as_chunks::<16>();
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let mut m = _mm512_setzero_ps();
    for c in chunks {
        // SAFETY: `c` holds 16 f32.
        let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        let v = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs));
        // maxps returns its second operand when either is NaN: NaN is skipped, as f32::max does.
        m = _mm512_max_ps(v, m);
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), m) };
    let amax = tail
        .iter()
        .fold(lanes.iter().fold(0f32, |m, &v| m.max(v)), |m, v| {
            m.max(v.abs())
        });
    let a = 127.0f32 / amax.max(1e-5);
    let (va, lo, hi, top) = (
        _mm512_set1_ps(a),
        _mm512_set1_ps(-128.0),
        _mm512_set1_ps(128.0),
        _mm512_set1_ps(127.0),
    );
    let magic = _mm512_set1_ps(12_582_912.0);
    let mut sum = _mm512_setzero_si512();
    let (qc, qt) = q.as_chunks_mut::<16>();
    for (o, c) in qc.iter_mut().zip(chunks) {
        // SAFETY: `c` holds 16 f32 and `o` 16 bytes.
        unsafe {
            let y = _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), va);
            let ok = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            let r = _mm512_sub_ps(_mm512_add_ps(y, magic), magic);
            let i = _mm512_maskz_mov_epi32(ok, _mm512_cvttps_epi32(_mm512_min_ps(r, top)));
            sum = _mm512_add_epi32(sum, i);
            _mm_storeu_si128(o.as_mut_ptr() as *mut _, _mm512_cvtepi32_epi8(i));
        }
    }
    let mut sum = _mm512_reduce_add_epi32(sum);
    let one = |v: f32| round_half_even((v * a).clamp(-128.0, 128.0)).clamp(-128.0, 127.0) as i32;
    for (o, &v) in qt.iter_mut().zip(tail) {
        let r = one(v);
        *o = r as i8;
        sum += r;
    }
    (a, sum)
}

/// [`quantize_row`] compiled for AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    quantize_row(x, q)
}
