//! The int8 LM head on aarch64: NEON (`smull`, `sadalp`) and dotprod (`sdot` by element).
//!
//! A 64-byte chunk of an `int8_r16` tile (SPEC.md 4.5) holds 4 columns of the tile's 16 rows, vector `v`
//! rows `4v..4v + 4`; its bytes are `w + 128`, so flipping the top bit gives the signed weight. Per
//! 256-column block the exact i32 sum is converted and scaled as [`crate::scalar::int8_matvec`] does
//! (`total += acc as f32 * step`, multiply then add), then `total * row_scale`.

use std::arch::aarch64::*;
use std::ops::Range;

use super::sdot;
use crate::scalar::{BlockQuantized, HEAD_BLOCK, TILE};
use crate::{Int8Matrix, pad16};

/// Checks the shapes the kernels rely on; returns `(pad16(rows), pad16(cols))`.
fn check(
    m: &Int8Matrix<'_>,
    xs: &[BlockQuantized],
    rows: &Range<usize>,
    out: &[f32],
) -> (usize, usize) {
    let (rp, kp) = (pad16(m.rows), pad16(m.cols));
    assert!(rows.end <= m.rows, "rows past the matrix");
    assert!(m.data.len() >= rp * kp + 4 * rp, "int8 head data too short");
    assert!(
        out.len() >= xs.len() * rows.len(),
        "output of the int8 head"
    );
    for x in xs {
        assert!(
            x.q.len() >= kp && x.step.len() == kp.div_ceil(HEAD_BLOCK),
            "quantized input width"
        );
    }
    (rp, kp)
}

/// Stores rows `rows` of tile `tile` from its 16 block totals: `total * row_scale`.
fn store(
    m: &Int8Matrix<'_>,
    rp: usize,
    kp: usize,
    tile: usize,
    total: &[f32; TILE],
    rows: &Range<usize>,
    out: &mut [f32],
) {
    let scales = &m.data[rp * kp..];
    for (r, &t) in total.iter().enumerate() {
        let row = tile * TILE + r;
        if rows.contains(&row) {
            let s = f32::from_le_bytes(scales[4 * row..4 * row + 4].try_into().expect("4 bytes"));
            out[row - rows.start] = t * s;
        }
    }
}

/// Adds one block's exact sums (`acc`, rows `4v..4v + 4` in vector `v`) to the float totals: `total +=
/// acc as f32 * step`, the scalar's operations lane by lane.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn add_block(total: &mut [float32x4_t; 4], acc: &[int32x4_t; 4], step: f32) {
    for v in 0..4 {
        total[v] = vaddq_f32(
            total[v],
            vmulq_f32(vcvtq_f32_s32(acc[v]), vdupq_n_f32(step)),
        );
    }
}

/// The totals as 16 floats.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn lanes(total: &[float32x4_t; 4]) -> [f32; TILE] {
    let mut t = [0f32; TILE];
    for (v, x) in total.iter().enumerate() {
        // SAFETY: `t` holds 16 f32; 4 are written at 4v.
        unsafe { vst1q_f32(t.as_mut_ptr().add(4 * v), *x) };
    }
    t
}

/// Loops over the tiles covering `rows` and the vectors `xs` with the per-tile function `f`.
macro_rules! drive {
    ($m:ident, $xs:ident, $rows:ident, $out:ident, $f:ident) => {{
        let (rp, kp) = check($m, $xs, &$rows, $out);
        let w = $rows.len();
        if w == 0 {
            return;
        }
        for tile in $rows.start / TILE..($rows.end - 1) / TILE + 1 {
            let base = $m.data[tile * TILE * kp..].as_ptr();
            for (x, o) in $xs.iter().zip($out.chunks_mut(w)) {
                // SAFETY: the tile's kp / 4 chunks lie in `m.data` and `x.q` holds kp values (checked);
                // the caller's target features hold.
                let total = unsafe { $f(base, kp, x) };
                store($m, rp, kp, tile, &total, &$rows, o);
            }
        }
    }};
}

/// NEON int8 head with the contract of [`crate::scalar::int8_matmul`].
#[target_feature(enable = "neon")]
pub unsafe fn int8_matmul_neon(
    m: &Int8Matrix<'_>,
    xs: &[BlockQuantized],
    rows: Range<usize>,
    out: &mut [f32],
) {
    drive!(m, xs, rows, out, tile_neon);
}

/// One tile's 16 totals with NEON: weights times the broadcast activations in i16 (`smull`, at most
/// 128 * 127 each), each adjacent pair added into i32 at once (`sadalp`: two more would overflow i16).
///
/// # Safety
/// NEON; `kp / 4` chunks at `base`; `x.q` holds `kp` values.
#[target_feature(enable = "neon")]
unsafe fn tile_neon(base: *const u8, kp: usize, x: &BlockQuantized) -> [f32; TILE] {
    let flip = vdupq_n_u8(0x80);
    let mut total = [vdupq_n_f32(0.0); 4];
    for (b, &step) in x.step.iter().enumerate() {
        // i32 pairs per vector: rows 4v, 4v + 1 (lo) and 4v + 2, 4v + 3 (hi).
        let (mut lo, mut hi) = ([vdupq_n_s32(0); 4], [vdupq_n_s32(0); 4]);
        let end = ((b + 1) * HEAD_BLOCK).min(kp);
        for c16 in (b * HEAD_BLOCK..end).step_by(16) {
            // SAFETY: columns c16..c16 + 16 are below kp, so in `x.q` and in the tile (the caller's contract).
            unsafe {
                let xv = vreinterpretq_s32_s8(vld1q_s8(x.q.as_ptr().add(c16)));
                let xb = [
                    vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(xv)),
                    vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(xv)),
                    vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(xv)),
                    vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(xv)),
                ];
                for (c, xc) in xb.iter().enumerate() {
                    let chunk = base.add(64 * (c16 / 4 + c));
                    for v in 0..4 {
                        let w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(chunk.add(16 * v)), flip));
                        lo[v] = vpadalq_s16(lo[v], vmull_s8(vget_low_s8(w), vget_low_s8(*xc)));
                        hi[v] = vpadalq_s16(hi[v], vmull_high_s8(w, *xc));
                    }
                }
            }
        }
        let acc: [int32x4_t; 4] = std::array::from_fn(|v| vpaddq_s32(lo[v], hi[v]));
        // SAFETY: NEON, this function's requirement.
        unsafe { add_block(&mut total, &acc, step) };
    }
    // SAFETY: NEON, this function's requirement.
    unsafe { lanes(&total) }
}

/// dotprod int8 head with the contract of [`crate::scalar::int8_matmul`]: one `sdot` by element per
/// vector and 4 columns (16 per 256 weights).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn int8_matmul_dotprod(
    m: &Int8Matrix<'_>,
    xs: &[BlockQuantized],
    rows: Range<usize>,
    out: &mut [f32],
) {
    drive!(m, xs, rows, out, tile_dotprod);
}

/// One tile's 16 totals with `sdot`.
///
/// # Safety
/// NEON and dotprod; `kp / 4` chunks at `base`; `x.q` holds `kp` values.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dotprod(base: *const u8, kp: usize, x: &BlockQuantized) -> [f32; TILE] {
    let flip = vdupq_n_u8(0x80);
    let mut total = [vdupq_n_f32(0.0); 4];
    for (b, &step) in x.step.iter().enumerate() {
        let mut acc = [vdupq_n_s32(0); 4];
        let end = ((b + 1) * HEAD_BLOCK).min(kp);
        for c16 in (b * HEAD_BLOCK..end).step_by(16) {
            // SAFETY: columns c16..c16 + 16 are below kp, so in `x.q` and in the tile (the caller's contract).
            unsafe {
                let xv = vld1q_s8(x.q.as_ptr().add(c16));
                let chunk = base.add(16 * c16);
                let w = |c: usize, v: usize| {
                    vreinterpretq_s8_u8(veorq_u8(vld1q_u8(chunk.add(64 * c + 16 * v)), flip))
                };
                for v in 0..4 {
                    let mut a = acc[v];
                    a = sdot::<0>(a, w(0, v), xv);
                    a = sdot::<1>(a, w(1, v), xv);
                    a = sdot::<2>(a, w(2, v), xv);
                    a = sdot::<3>(a, w(3, v), xv);
                    acc[v] = a;
                }
            }
        }
        // SAFETY: NEON, this function's requirement.
        unsafe { add_block(&mut total, &acc, step) };
    }
    // SAFETY: NEON, this function's requirement.
    unsafe { lanes(&total) }
}
