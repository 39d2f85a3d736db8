//! The int8 LM head: AVX-512 VNNI (one vector or several at once) and AVX2.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{PREFETCH, load_i32};
use crate::scalar::{BlockQuantized, HEAD_BLOCK, TILE};
use crate::{Int8Matrix, pad16};

/// AVX-512 VNNI int8 head with the contract of [`crate::scalar::int8_matvec`]: one `vpdpbusd` per 64-byte
/// chunk (16 rows x 4 columns, bytes `w + 128`), corrected by `128 * sum(x)` per 256-column block, then the
/// scalar's float sequence on 16 row lanes at once.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn int8_matvec_avx512vnni(
    m: &Int8Matrix<'_>,
    x: &BlockQuantized,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let (rp, kp) = (pad16(m.rows), pad16(m.cols));
    assert!(
        m.data.len() >= rp * kp + 4 * rp && x.q.len() >= kp,
        "int8 head shapes"
    );
    let sums = &x.sum;
    assert_eq!(
        sums.len(),
        x.step.len(),
        "block sums of the quantized input"
    );
    let chunks = kp / 4;
    let tile_start = rows.start / TILE;
    let tile_end = rows.end.div_ceil(TILE);
    for tile in tile_start..tile_end {
        let base = m.data[tile * TILE * kp..].as_ptr();
        let mut total = _mm512_setzero_ps();
        for (b, &step) in x.step.iter().enumerate() {
            let c0 = b * HEAD_BLOCK / 4;
            let c1 = ((b + 1) * HEAD_BLOCK / 4).min(chunks);
            // Four independent accumulators (integer sums are exact in any order), so `vpdpbusd`'s
            // latency does not serialize the block when several tokens run over a cached tile.
            let mut acc = [_mm512_setzero_si512(); 4];
            let mut c = c0;
            while c + 4 <= c1 {
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: chunk c + j of this tile is inside the tiles; x.q has kp bytes.
                    unsafe {
                        let v = _mm512_loadu_si512(base.add(64 * (c + j)) as *const _);
                        _mm_prefetch::<_MM_HINT_T0>(
                            base.wrapping_add(64 * (c + j) + PREFETCH) as *const i8
                        );
                        *a = _mm512_dpbusd_epi32(
                            *a,
                            v,
                            _mm512_set1_epi32(load_i32(x.q.as_ptr().add(4 * (c + j)))),
                        );
                    }
                }
                c += 4;
            }
            while c < c1 {
                // SAFETY: as above.
                unsafe {
                    let v = _mm512_loadu_si512(base.add(64 * c) as *const _);
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(64 * c + PREFETCH) as *const i8);
                    acc[0] = _mm512_dpbusd_epi32(
                        acc[0],
                        v,
                        _mm512_set1_epi32(load_i32(x.q.as_ptr().add(4 * c))),
                    );
                }
                c += 1;
            }
            let acc = _mm512_add_epi32(
                _mm512_add_epi32(acc[0], acc[1]),
                _mm512_add_epi32(acc[2], acc[3]),
            );
            let exact = _mm512_sub_epi32(acc, _mm512_set1_epi32(128 * sums[b]));
            total = _mm512_add_ps(
                total,
                _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(step)),
            );
        }
        // SAFETY: the row scales of this tile are 16 f32 inside the data (checked above).
        let scales = unsafe {
            _mm512_loadu_ps(m.data.as_ptr().add(rp * kp + 4 * tile * TILE) as *const f32)
        };
        let mut lanes = [0f32; TILE];
        // SAFETY: `lanes` holds 16 f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(total, scales)) };
        for (r, v) in lanes.iter().enumerate() {
            let row = tile * TILE + r;
            if rows.contains(&row) {
                out[row - rows.start] = *v;
            }
        }
    }
}

/// One row tile of the int8 head for `NT` (2 to 4) vectors: each 64-byte chunk is loaded once and fed to
/// every vector's `vpdpbusd` (two accumulators per vector, even and odd chunks, so the chains overlap);
/// each vector's blocks are then summed in the scalar's float order. Returns the 16 rows' values per vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_tile_multi<const NT: usize>(
    base: *const u8,
    scales: *const f32,
    chunks: usize,
    xs: &[BlockQuantized],
) -> [[f32; TILE]; NT] {
    let mut total = [_mm512_setzero_ps(); NT];
    let blocks = xs[0].step.len();
    for b in 0..blocks {
        let c0 = b * HEAD_BLOCK / 4;
        let c1 = ((b + 1) * HEAD_BLOCK / 4).min(chunks);
        let mut acc = [[_mm512_setzero_si512(); 2]; NT];
        for c in c0..c1 {
            // SAFETY: the caller guarantees `chunks` chunks at `base` and kp bytes in every x.q.
            unsafe {
                let v = _mm512_loadu_si512(base.add(64 * c) as *const _);
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(64 * c + PREFETCH) as *const i8);
                for (a, x) in acc.iter_mut().zip(xs) {
                    let xb = _mm512_set1_epi32(load_i32(x.q.as_ptr().add(4 * c)));
                    a[c & 1] = _mm512_dpbusd_epi32(a[c & 1], v, xb);
                }
            }
        }
        for ((t, a), x) in total.iter_mut().zip(&acc).zip(xs) {
            let sum = _mm512_add_epi32(a[0], a[1]);
            let exact = _mm512_sub_epi32(sum, _mm512_set1_epi32(128 * x.sum[b]));
            *t = _mm512_add_ps(
                *t,
                _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(x.step[b])),
            );
        }
    }
    // SAFETY: the caller guarantees 16 row scales at `scales`.
    let s = unsafe { _mm512_loadu_ps(scales) };
    let mut out = [[0f32; TILE]; NT];
    for (o, t) in out.iter_mut().zip(&total) {
        // SAFETY: `o` holds 16 f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_mul_ps(*t, s)) };
    }
    out
}

/// AVX-512 VNNI int8 head for several vectors with the contract of [`crate::scalar::int8_matmul`]: one
/// vector runs [`int8_matvec_avx512vnni`]; several go through each row tile together, up to 4 per pass,
/// so the head is read from memory once for all of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn int8_matmul_avx512vnni(
    m: &Int8Matrix<'_>,
    xs: &[BlockQuantized],
    rows: Range<usize>,
    out: &mut [f32],
) {
    let w = rows.len();
    assert!(out.len() >= xs.len() * w, "output of the int8 head");
    if xs.len() == 1 {
        // SAFETY: the features this function enables are the ones the single-vector kernel needs.
        unsafe { int8_matvec_avx512vnni(m, &xs[0], rows, out) };
        return;
    }
    let (rp, kp) = (pad16(m.rows), pad16(m.cols));
    assert!(m.data.len() >= rp * kp + 4 * rp, "int8 head shapes");
    for x in xs {
        assert!(
            x.q.len() >= kp && x.sum.len() == x.step.len() && x.step.len() == xs[0].step.len(),
            "quantized inputs of the int8 head"
        );
    }
    let chunks = kp / 4;
    for tile in rows.start / TILE..rows.end.div_ceil(TILE) {
        let base = m.data[tile * TILE * kp..].as_ptr();
        let scales = m.data[rp * kp + 4 * tile * TILE..].as_ptr() as *const f32;
        let mut t0 = 0;
        while t0 < xs.len() {
            let nt = (xs.len() - t0).min(4);
            let group = &xs[t0..t0 + nt];
            let mut put = |j: usize, lanes: &[f32; TILE]| {
                for (r, v) in lanes.iter().enumerate() {
                    let row = tile * TILE + r;
                    if rows.contains(&row) {
                        out[(t0 + j) * w + row - rows.start] = *v;
                    }
                }
            };
            macro_rules! multi {
                ($nt:literal) => {{
                    // SAFETY: the tile's chunks and 16 row scales are inside `m.data` (asserted above);
                    // every x.q has kp bytes.
                    let r = unsafe { int8_tile_multi::<$nt>(base, scales, chunks, group) };
                    r.iter().enumerate().for_each(|(j, l)| put(j, l));
                }};
            }
            match nt {
                1 => multi!(1),
                2 => multi!(2),
                3 => multi!(3),
                _ => multi!(4),
            }
            t0 += nt;
        }
    }
}

/// AVX2 int8 head with the contract of [`crate::scalar::int8_matvec`]: bytes widened to i16 (`u - 128`),
/// multiplied with `vpmaddwd`, pairs of columns summed per row.
#[target_feature(enable = "avx2")]
pub unsafe fn int8_matvec_avx2(
    m: &Int8Matrix<'_>,
    x: &BlockQuantized,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let (rp, kp) = (pad16(m.rows), pad16(m.cols));
    assert!(
        m.data.len() >= rp * kp + 4 * rp && x.q.len() >= kp,
        "int8 head shapes"
    );
    let chunks = kp / 4;
    let bias = _mm256_set1_epi16(128);
    for row in rows.clone() {
        let (tile, r) = (row / TILE, row % TILE);
        let base = m.data[tile * TILE * kp + 4 * r..].as_ptr();
        let mut total = 0f32;
        for (b, &step) in x.step.iter().enumerate() {
            let c0 = b * HEAD_BLOCK / 4;
            let c1 = ((b + 1) * HEAD_BLOCK / 4).min(chunks);
            let mut acc = _mm256_setzero_si256();
            let mut c = c0;
            // Four chunks at a time: this row's 4 bytes of each, 16 columns.
            while c + 4 <= c1 {
                // SAFETY: the four chunks are inside the tile; x.q has kp bytes.
                unsafe {
                    let w = _mm_set_epi32(
                        load_i32(base.add(64 * (c + 3)) as *const i8),
                        load_i32(base.add(64 * (c + 2)) as *const i8),
                        load_i32(base.add(64 * (c + 1)) as *const i8),
                        load_i32(base.add(64 * c) as *const i8),
                    );
                    let w16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(w), bias);
                    let x16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                        x.q.as_ptr().add(4 * c) as *const __m128i
                    ));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(w16, x16));
                }
                c += 4;
            }
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` holds 8 i32.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
            let mut exact: i32 = lanes.iter().sum();
            while c < c1 {
                for t in 0..4 {
                    exact += (m.data[tile * TILE * kp + 64 * c + 4 * r + t] as i32 - 128)
                        * x.q[4 * c + t] as i32;
                }
                c += 1;
            }
            total += exact as f32 * step;
        }
        let s = f32::from_le_bytes(
            m.data[rp * kp + 4 * row..rp * kp + 4 * row + 4]
                .try_into()
                .expect("4 bytes"),
        );
        out[row - rows.start] = total * s;
    }
}
