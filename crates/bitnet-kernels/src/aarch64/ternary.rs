//! Ternary x int8 matmul on aarch64: NEON (`smull`/`smlal`, `sadalp`), dotprod (`sdot` by element) and
//! i8mm (`smmla` on token pairs).
//!
//! A 64-byte chunk of a `ternary_r16` tile (SPEC.md 4.4) is four 16-byte vectors, vector `v` holding rows
//! `4v..4v + 4`, four bytes each; plane `q` of a byte (`(b >> 2q) & 3`, the code `w + 1`) is column
//! `4q + t` of the chunk's 16 for byte `t` of its row. So plane `q` of vector `v` against the four
//! activations `4q..4q + 4` of the chunk is exactly one `sdot` by element (lane `q` of the 16 loaded
//! activations), and the four planes make 16 `sdot`s per 256 weights. Codes are multiplied, and the
//! activation sum subtracted in the epilogue (`acc - sum`, as [`crate::scalar::ternary_epilogue`]).

use std::arch::aarch64::*;
use std::ops::Range;

use super::{sdot, smmla};
use crate::quant::QuantizedBatch;
use crate::scalar::{TILE, ternary_epilogue};
use crate::{TernaryMatrix, pad16};

/// The four planes (codes 0..=2 as signed bytes) of the 16 bytes at `p`.
///
/// # Safety
/// NEON; 16 readable bytes at `p`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn planes(p: *const u8) -> [int8x16_t; 4] {
    // SAFETY: the caller guarantees 16 readable bytes.
    let w = unsafe { vld1q_u8(p) };
    let mask = vdupq_n_u8(3);
    [
        vreinterpretq_s8_u8(vandq_u8(w, mask)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(w), mask)),
        vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(w), mask)),
        vreinterpretq_s8_u8(vshrq_n_u8::<6>(w)),
    ]
}

/// Checks the shapes every kernel here relies on.
fn check(m: &TernaryMatrix<'_>, x: &QuantizedBatch, tiles: &Range<usize>) -> usize {
    let kp = pad16(m.cols);
    assert_eq!(x.kp, kp, "activation width must match the matrix");
    assert!(x.q.len() >= x.n * kp, "activations shorter than n * kp");
    assert!(
        m.data.len() >= tiles.end * 4 * kp,
        "tile range past the data"
    );
    kp
}

/// Stores one tile's exact integer sums of codes times activations for token `t`: rows `tile * 16 ..`
/// that exist, through the scalar epilogue.
#[allow(clippy::too_many_arguments)]
fn store(
    acc: &[i32; TILE],
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    t: usize,
    tile: usize,
    row0: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let valid = m.rows.saturating_sub(tile * TILE).min(TILE);
    let factor = m.scale / x.scale[t];
    let at = t * out_stride + tile * TILE - row0;
    for (o, &a) in out[at..at + valid].iter_mut().zip(acc) {
        *o = ternary_epilogue(a, x.sum[t], factor);
    }
}

/// Runs `tile_fn` on the tokens of `x` in blocks of at most `NT` (smaller blocks at the end) for every
/// tile of `tiles` and stores the results: the common driver of the three kernels.
macro_rules! drive {
    ($m:ident, $x:ident, $tiles:ident, $out:ident, $stride:ident, $kp:ident, $tile_fn:ident, $($nt:literal)+) => {{
        let groups = $kp / 16;
        let row0 = $tiles.start * TILE;
        for tile in $tiles {
            let base = $m.data[tile * 4 * $kp..].as_ptr();
            let mut t0 = 0;
            while t0 < $x.n {
                let left = $x.n - t0;
                $(
                    if left >= $nt {
                        // SAFETY: the tile's `groups` chunks lie in `m.data` and tokens t0..t0 + $nt
                        // in `x.q` (checked by `check`); the caller's target features hold.
                        let acc = unsafe { $tile_fn::<$nt>(base, groups, $x, t0) };
                        for (j, a) in acc.iter().enumerate() {
                            store(a, $m, $x, t0 + j, tile, row0, $out, $stride);
                        }
                        t0 += $nt;
                        continue;
                    }
                )+
            }
        }
    }};
}

/// NEON ternary matmul with the contract of [`crate::scalar::ternary_matmul`]: per plane and token, codes
/// times the broadcast activations in i16 (`smull`, `smlal`; at most 4 * 2 * 128 per lane), folded into
/// i32 pairs once per chunk (`sadalp`).
#[target_feature(enable = "neon")]
pub unsafe fn ternary_matmul_neon(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = check(m, x, &tiles);
    drive!(m, x, tiles, out, out_stride, kp, tile_neon, 2 1);
}

/// One tile for tokens `t0..t0 + NT` with NEON.
///
/// # Safety
/// NEON; the tile's `groups` chunks at `base`; tokens `t0..t0 + NT` in `x.q`.
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const NT: usize>(
    base: *const u8,
    groups: usize,
    x: &QuantizedBatch,
    t0: usize,
) -> [[i32; TILE]; NT] {
    let kp = x.kp;
    // Per token and vector: i32 pairs of rows 4v, 4v + 1 (lo) and 4v + 2, 4v + 3 (hi).
    let mut lo = [[vdupq_n_s32(0); 4]; NT];
    let mut hi = [[vdupq_n_s32(0); 4]; NT];
    for g in 0..groups {
        // SAFETY: chunk g and the tokens' 16 activations of group g are in bounds (the caller's contract).
        unsafe {
            let xs: [int32x4_t; NT] = std::array::from_fn(|j| {
                vreinterpretq_s32_s8(vld1q_s8(x.q.as_ptr().add((t0 + j) * kp + 16 * g)))
            });
            for v in 0..4 {
                let p = planes(base.add(64 * g + 16 * v));
                for j in 0..NT {
                    let b = [
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(xs[j])),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(xs[j])),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(xs[j])),
                        vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(xs[j])),
                    ];
                    let mut l = vmull_s8(vget_low_s8(p[0]), vget_low_s8(b[0]));
                    let mut h = vmull_high_s8(p[0], b[0]);
                    for q in 1..4 {
                        l = vmlal_s8(l, vget_low_s8(p[q]), vget_low_s8(b[q]));
                        h = vmlal_high_s8(h, p[q], b[q]);
                    }
                    lo[j][v] = vpadalq_s16(lo[j][v], l);
                    hi[j][v] = vpadalq_s16(hi[j][v], h);
                }
            }
        }
    }
    std::array::from_fn(|j| {
        let mut rows = [0i32; TILE];
        for v in 0..4 {
            // SAFETY: `rows` holds 16 i32; 4 are written at 4v.
            unsafe { vst1q_s32(rows.as_mut_ptr().add(4 * v), vpaddq_s32(lo[j][v], hi[j][v])) };
        }
        rows
    })
}

/// dotprod ternary matmul with the contract of [`crate::scalar::ternary_matmul`]: one `sdot` by element
/// per plane, vector and token (16 per 256 weights and token), the planes decoded once for up to four
/// tokens.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn ternary_matmul_dotprod(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = check(m, x, &tiles);
    drive!(m, x, tiles, out, out_stride, kp, tile_dotprod, 4 2 1);
}

/// One tile for tokens `t0..t0 + NT` with `sdot`.
///
/// # Safety
/// NEON and dotprod; the tile's `groups` chunks at `base`; tokens `t0..t0 + NT` in `x.q`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dotprod<const NT: usize>(
    base: *const u8,
    groups: usize,
    x: &QuantizedBatch,
    t0: usize,
) -> [[i32; TILE]; NT] {
    let kp = x.kp;
    let mut acc = [[vdupq_n_s32(0); 4]; NT];
    for g in 0..groups {
        // SAFETY: chunk g and the tokens' 16 activations of group g are in bounds (the caller's contract).
        unsafe {
            let xs: [int8x16_t; NT] =
                std::array::from_fn(|j| vld1q_s8(x.q.as_ptr().add((t0 + j) * kp + 16 * g)));
            for v in 0..4 {
                let p = planes(base.add(64 * g + 16 * v));
                for j in 0..NT {
                    let mut a = acc[j][v];
                    a = sdot::<0>(a, p[0], xs[j]);
                    a = sdot::<1>(a, p[1], xs[j]);
                    a = sdot::<2>(a, p[2], xs[j]);
                    a = sdot::<3>(a, p[3], xs[j]);
                    acc[j][v] = a;
                }
            }
        }
    }
    std::array::from_fn(|j| {
        let mut rows = [0i32; TILE];
        for v in 0..4 {
            // SAFETY: `rows` holds 16 i32; 4 are written at 4v.
            unsafe { vst1q_s32(rows.as_mut_ptr().add(4 * v), acc[j][v]) };
        }
        rows
    })
}

/// i8mm ternary matmul with the contract of [`crate::scalar::ternary_matmul`]: tokens go in pairs through
/// `smmla` (a 2x8 block of two rows' codes times a 2x8 block of two tokens' activations: 32 multiply-adds
/// per instruction, twice `sdot`'s), the rows paired by zipping planes 0 and 1 (columns 0..8 of the chunk)
/// and 2 and 3 (8..16); a last odd token goes through `sdot`.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub unsafe fn ternary_matmul_i8mm(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = check(m, x, &tiles);
    drive!(m, x, tiles, out, out_stride, kp, tile_i8mm, 4 2 1);
}

/// One tile for tokens `t0..t0 + NT`: pairs with `smmla`, a single token with `sdot`.
///
/// # Safety
/// NEON, dotprod and i8mm; the tile's `groups` chunks at `base`; tokens `t0..t0 + NT` in `x.q`.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn tile_i8mm<const NT: usize>(
    base: *const u8,
    groups: usize,
    x: &QuantizedBatch,
    t0: usize,
) -> [[i32; TILE]; NT] {
    if NT == 1 {
        // SAFETY: the caller's contract, and dotprod is enabled here.
        let one = unsafe { tile_dotprod::<1>(base, groups, x, t0) };
        return std::array::from_fn(|_| one[0]);
    }
    let kp = x.kp;
    // Per token pair and vector v: rows 4v, 4v + 1 (lo) and 4v + 2, 4v + 3 (hi), each lane (row i, token
    // j) at 2i + j.
    let mut lo = [[vdupq_n_s32(0); 4]; 2];
    let mut hi = [[vdupq_n_s32(0); 4]; 2];
    let pairs = NT / 2;
    for g in 0..groups {
        // SAFETY: chunk g and the tokens' 16 activations of group g are in bounds (the caller's contract).
        unsafe {
            // Per pair: columns 0..8 of both tokens, then 8..16.
            let xs: [[int8x16_t; 2]; 2] = std::array::from_fn(|pr| {
                if pr >= pairs {
                    return [vdupq_n_s8(0); 2];
                }
                let at = |j: usize| {
                    vreinterpretq_s64_s8(vld1q_s8(
                        x.q.as_ptr().add((t0 + 2 * pr + j) * kp + 16 * g),
                    ))
                };
                let (a, b) = (at(0), at(1));
                [
                    vreinterpretq_s8_s64(vzip1q_s64(a, b)),
                    vreinterpretq_s8_s64(vzip2q_s64(a, b)),
                ]
            });
            for v in 0..4 {
                let p = planes(base.add(64 * g + 16 * v)).map(|p| vreinterpretq_s32_s8(p));
                let w01 = [vzip1q_s32(p[0], p[1]), vzip2q_s32(p[0], p[1])];
                let w23 = [vzip1q_s32(p[2], p[3]), vzip2q_s32(p[2], p[3])];
                let [w01l, w01h, w23l, w23h] =
                    [w01[0], w01[1], w23[0], w23[1]].map(|w| vreinterpretq_s8_s32(w));
                for pr in 0..pairs {
                    lo[pr][v] = smmla(smmla(lo[pr][v], w01l, xs[pr][0]), w23l, xs[pr][1]);
                    hi[pr][v] = smmla(smmla(hi[pr][v], w01h, xs[pr][0]), w23h, xs[pr][1]);
                }
            }
        }
    }
    let mut rows = [[0i32; TILE]; NT];
    for pr in 0..pairs {
        for v in 0..4 {
            let (mut l, mut h) = ([0i32; 4], [0i32; 4]);
            // SAFETY: `l` and `h` hold 4 i32 each.
            unsafe {
                vst1q_s32(l.as_mut_ptr(), lo[pr][v]);
                vst1q_s32(h.as_mut_ptr(), hi[pr][v]);
            }
            for j in 0..2 {
                let r = &mut rows[2 * pr + j][4 * v..4 * v + 4];
                r.copy_from_slice(&[l[j], l[2 + j], h[j], h[2 + j]]);
            }
        }
    }
    rows
}
