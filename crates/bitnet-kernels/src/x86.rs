//! x86-64 kernels: AVX-512 VNNI (`vpdpbusd` on zmm) and AVX2 (`vpmaddubsw`), reading the SPEC.md tile
//! layouts straight from the map. Each produces the same bits as [`crate::scalar`]: integer accumulation is
//! exact, and the float epilogues and dot products use the scalar oracle's order of operations.
//!
//! Every function here is `unsafe` because it requires CPU features; [`crate::dispatch`] calls them only
//! after detecting those features.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::quant::QuantizedBatch;
use crate::scalar::{BlockQuantized, HEAD_BLOCK, TILE};
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix, pad16};

/// How far ahead of the load the kernels prefetch each weight stream, in bytes. Measured with `bitnet bench
/// --synthetic 2b4t` (2 threads, int8 head): 1 KiB decoded 15.5-16.8 tok/s, 4 KiB 19.1-19.2, 8 KiB 16.8-18.5.
const PREFETCH: usize = 4096;

/// Tokens processed together per pass over a tile (each chunk's planes are decoded once for all of them).
const TOKEN_BLOCK: usize = 8;

/// Tiles processed together for a block of tokens (each broadcast activation feeds all of them).
const TILE_GROUP: usize = 2;

#[inline(always)]
unsafe fn load_i32(p: *const i8) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes at `p`; the read is unaligned-safe.
    unsafe { std::ptr::read_unaligned(p as *const i32) }
}

/// Writes one tile's 16 integer dot products (`acc - sum`) through the epilogue into `out` rows.
#[inline(always)]
fn store_tile(
    acc: &[i32; TILE],
    sum: i32,
    factor: f32,
    out: &mut [f32],
    base: usize,
    valid: usize,
) {
    for r in 0..valid {
        out[base + r] = crate::scalar::ternary_epilogue(acc[r], sum, factor);
    }
}

/// `TT` consecutive tiles from `base` (`stride` bytes apart) for `NT` (1 to 4) tokens from `t0` with the
/// mask-only plane trick: plane `q` is `chunk & (3 << 2q)`, a multiple `4^q` of the codes, so it needs no
/// shift; each (tile, token, plane) has its own accumulator (independent `vpdpbusd` chains), shifted back
/// once per tile, and each broadcast activation word feeds all `TT` tiles. Returns each tile's tokens' 16
/// integer dot products.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // acc[tt][j][q]: three indices over three arrays read plainest
unsafe fn tiles_masked<const TT: usize, const NT: usize>(
    base: *const u8,
    stride: usize,
    groups: usize,
    x: &QuantizedBatch,
    t0: usize,
) -> [[[i32; TILE]; NT]; TT] {
    let masks = [
        _mm512_set1_epi8(0x03),
        _mm512_set1_epi8(0x0C),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0xC0u8 as i8),
    ];
    let kp = x.kp;
    let mut acc = [[[_mm512_setzero_si512(); 4]; NT]; TT];
    // SAFETY: the caller guarantees `groups` chunks readable at `base + tt * stride` for tt < TT and
    // tokens t0..t0 + NT with kp activation bytes each.
    let xq = unsafe { x.q.as_ptr().add(t0 * kp) };
    for g in 0..groups {
        // SAFETY: as above.
        unsafe {
            let mut v = [_mm512_setzero_si512(); TT];
            for (tt, v) in v.iter_mut().enumerate() {
                let p = base.add(tt * stride + 64 * g);
                *v = _mm512_loadu_si512(p as *const _);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            }
            for (q, mask) in masks.iter().enumerate() {
                let p = v.map(|v| _mm512_and_si512(v, *mask));
                for j in 0..NT {
                    let b = _mm512_set1_epi32(load_i32(xq.add(j * kp + 16 * g + 4 * q)));
                    for tt in 0..TT {
                        acc[tt][j][q] = _mm512_dpbusd_epi32(acc[tt][j][q], p[tt], b);
                    }
                }
            }
        }
    }
    let mut out = [[[0i32; TILE]; NT]; TT];
    for (a, o) in acc.iter().zip(out.iter_mut()) {
        for (a, o) in a.iter().zip(o.iter_mut()) {
            let total = _mm512_add_epi32(
                _mm512_add_epi32(a[0], _mm512_srai_epi32::<2>(a[1])),
                _mm512_add_epi32(_mm512_srai_epi32::<4>(a[2]), _mm512_srai_epi32::<6>(a[3])),
            );
            // SAFETY: `o` holds 16 i32.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut _, total) };
        }
    }
    out
}

/// `TT` consecutive tiles from `base` for `NT` tokens from `t0`: each chunk's planes are decoded once
/// (shift and mask) for all `NT` tokens, and each broadcast activation word feeds all `TT` tiles (on this
/// class of CPU a broadcast costs about as much as a `vpdpbusd`, so sharing it between tiles is what lets
/// the two VNNI ports run). Returns each tile's `NT` tokens' 16 integer dot products.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tiles_shifted<const TT: usize, const NT: usize>(
    base: *const u8,
    stride: usize,
    groups: usize,
    x: &QuantizedBatch,
    t0: usize,
) -> [[[i32; TILE]; NT]; TT] {
    let mask = _mm512_set1_epi8(0x03);
    let kp = x.kp;
    let mut acc = [[_mm512_setzero_si512(); NT]; TT];
    // SAFETY: the caller guarantees `groups` chunks readable at `base + tt * stride` for tt < TT and
    // tokens t0..t0 + NT with kp activation bytes each.
    let xq = unsafe { x.q.as_ptr().add(t0 * kp) };
    for g in 0..groups {
        // SAFETY: as above.
        unsafe {
            let mut v = [_mm512_setzero_si512(); TT];
            for (tt, v) in v.iter_mut().enumerate() {
                let p = base.add(tt * stride + 64 * g);
                *v = _mm512_loadu_si512(p as *const _);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            }
            macro_rules! plane {
                ($q:literal, $shift:expr) => {{
                    let p = v.map(|v| _mm512_and_si512($shift(v), mask));
                    for j in 0..NT {
                        let b = _mm512_set1_epi32(load_i32(xq.add(j * kp + 16 * g + 4 * $q)));
                        for tt in 0..TT {
                            acc[tt][j] = _mm512_dpbusd_epi32(acc[tt][j], p[tt], b);
                        }
                    }
                }};
            }
            plane!(0, |v| v);
            plane!(1, _mm512_srli_epi16::<2>);
            plane!(2, _mm512_srli_epi16::<4>);
            plane!(3, _mm512_srli_epi16::<6>);
        }
    }
    let mut out = [[[0i32; TILE]; NT]; TT];
    for (a, o) in acc.iter().zip(out.iter_mut()) {
        for (a, o) in a.iter().zip(o.iter_mut()) {
            // SAFETY: `o` holds 16 i32.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut _, *a) };
        }
    }
    out
}

/// AVX-512 VNNI ternary matmul with the contract of [`crate::scalar::ternary_matmul`].
///
/// Tokens go through pairs of tiles in blocks of 8, each chunk's planes decoded once (shift and mask) for
/// the 8 tokens and each broadcast activation word feeding both tiles: 16 accumulators, 64 `vpdpbusd` per
/// 32 broadcasts. (Measured with `cargo bench -p bitnet-kernels -- ternary_prefill128`, one thread:
/// one tile at a time ran 150-180 G weight-token products/s, pairs 270-290; groups of 3 tiles or 12
/// tokens were no faster.) A lone last tile takes blocks of 8 by itself, and the last 1 to 4 tokens (a
/// decode step, or several sequences decoded together) use the mask-only plane trick, whose independent
/// accumulators keep `vpdpbusd` busy when few tokens share a chunk.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_matmul_avx512vnni(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = pad16(m.cols);
    assert_eq!(x.kp, kp, "activation width must match the matrix");
    assert!(
        m.data.len() >= tiles.end * 4 * kp,
        "tile range past the data"
    );
    assert!(x.q.len() >= x.n * kp, "activation rows");
    let groups = kp / 16;
    let row0 = tiles.start * TILE;
    let last_row = (tiles.end * TILE).min(m.rows).max(row0);
    assert!(
        x.n == 0 || out.len() >= (x.n - 1) * out_stride + last_row - row0,
        "output too short"
    );
    let stride = 4 * kp;
    let valid = |tile: usize| m.rows.saturating_sub(tile * TILE).min(TILE);
    let mut tile = tiles.start;
    while tile < tiles.end {
        let span = if tiles.end - tile >= TILE_GROUP {
            TILE_GROUP
        } else {
            1
        };
        let base = m.data[tile * stride..].as_ptr();
        let mut t0 = 0;
        while t0 < x.n {
            let left = x.n - t0;
            // SAFETY: the span's tiles are inside `m.data` and every token row of `x.q` has kp bytes
            // (both asserted above); the tokens each call is given are below x.n; each tile's rows of
            // every token's output are inside `out` (asserted above).
            let done = unsafe {
                macro_rules! run {
                    ($kernel:ident, $tt:literal, $nt:expr) => {{
                        let r = $kernel::<$tt, { $nt }>(base, stride, groups, x, t0);
                        for (i, r) in r.iter().enumerate() {
                            let t = tile + i;
                            store_tokens(
                                r,
                                m.scale,
                                x,
                                t0,
                                out,
                                out_stride,
                                t * TILE - row0,
                                valid(t),
                            );
                        }
                        $nt
                    }};
                }
                match (span, left) {
                    (TILE_GROUP, TOKEN_BLOCK..) => run!(tiles_shifted, 2, TOKEN_BLOCK),
                    (TILE_GROUP, 1) => run!(tiles_masked, 2, 1),
                    (TILE_GROUP, 2) => run!(tiles_masked, 2, 2),
                    (TILE_GROUP, 3) => run!(tiles_masked, 2, 3),
                    (TILE_GROUP, _) => run!(tiles_shifted, 2, 4),
                    (_, TOKEN_BLOCK..) => run!(tiles_shifted, 1, TOKEN_BLOCK),
                    (_, 1) => run!(tiles_masked, 1, 1),
                    (_, 2) => run!(tiles_masked, 1, 2),
                    (_, 3) => run!(tiles_masked, 1, 3),
                    (_, _) => run!(tiles_masked, 1, 4),
                }
            };
            t0 += done;
        }
        tile += span;
    }
}

/// The epilogue of one tile for the tokens `t0..t0 + NT` in 16 lanes: `(acc - sum) as f32 * factor`, as
/// [`crate::scalar::ternary_epilogue`] (`vcvtdq2ps` rounds to nearest even, as `as f32` does), stored to
/// rows `off..off + valid` of each token's output.
///
/// # Safety
/// AVX-512F; `(t0 + NT - 1) * out_stride + off + valid <= out.len()` and tokens below `x.n`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tokens<const NT: usize>(
    acc: &[[i32; TILE]; NT],
    scale: f32,
    x: &QuantizedBatch,
    t0: usize,
    out: &mut [f32],
    out_stride: usize,
    off: usize,
    valid: usize,
) {
    let mask: __mmask16 = ((1u32 << valid) - 1) as u16;
    for (j, lanes) in acc.iter().enumerate() {
        let t = t0 + j;
        let at = t * out_stride + off;
        debug_assert!(at + valid <= out.len());
        // SAFETY: `lanes` holds 16 i32; the caller guarantees `valid` floats writable at `at` (the mask
        // writes no others).
        unsafe {
            let d = _mm512_sub_epi32(
                _mm512_loadu_si512(lanes.as_ptr() as *const _),
                _mm512_set1_epi32(x.sum[t]),
            );
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(scale / x.scale[t]));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, f);
        }
    }
}

/// AVX2 ternary matmul with the contract of [`crate::scalar::ternary_matmul`]: each 64-byte chunk is two
/// ymm halves (rows 0-7, 8-15); planes are `(v >> 2q) & 3`, multiplied by `vpmaddubsw` (codes are
/// unsigned, activations signed), the four planes summed in i16 (at most 4 * 2 * 2 * 127) and widened once
/// per chunk with `vpmaddwd`.
#[target_feature(enable = "avx2")]
pub unsafe fn ternary_matmul_avx2(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = pad16(m.cols);
    assert_eq!(x.kp, kp, "activation width must match the matrix");
    assert!(
        m.data.len() >= tiles.end * 4 * kp,
        "tile range past the data"
    );
    let groups = kp / 16;
    let row0 = tiles.start * TILE;
    let mask = _mm256_set1_epi8(0x03);
    let ones = _mm256_set1_epi16(1);
    const AVX2_TOKENS: usize = 4;
    for tile in tiles {
        let base = m.data[tile * 4 * kp..].as_ptr();
        let valid = m.rows.saturating_sub(tile * TILE).min(TILE);
        for t0 in (0..x.n).step_by(AVX2_TOKENS) {
            let nt = (x.n - t0).min(AVX2_TOKENS);
            let mut acc = [[_mm256_setzero_si256(); 2]; AVX2_TOKENS];
            for g in 0..groups {
                // SAFETY: chunk g of this tile is inside `m.data`; every token row of `x.q` has kp bytes.
                unsafe {
                    let halves = [
                        _mm256_loadu_si256(base.add(64 * g) as *const __m256i),
                        _mm256_loadu_si256(base.add(64 * g + 32) as *const __m256i),
                    ];
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(64 * g + PREFETCH) as *const i8);
                    let planes = halves.map(|v| {
                        [
                            _mm256_and_si256(v, mask),
                            _mm256_and_si256(_mm256_srli_epi16::<2>(v), mask),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
                            _mm256_and_si256(_mm256_srli_epi16::<6>(v), mask),
                        ]
                    });
                    for (j, a) in acc.iter_mut().enumerate().take(nt) {
                        let xq = x.q.as_ptr().add((t0 + j) * kp + 16 * g);
                        let xb = [0, 1, 2, 3].map(|q| _mm256_set1_epi32(load_i32(xq.add(4 * q))));
                        for h in 0..2 {
                            let s = _mm256_add_epi16(
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(planes[h][0], xb[0]),
                                    _mm256_maddubs_epi16(planes[h][1], xb[1]),
                                ),
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(planes[h][2], xb[2]),
                                    _mm256_maddubs_epi16(planes[h][3], xb[3]),
                                ),
                            );
                            a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(s, ones));
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(nt) {
                let t = t0 + j;
                let mut lanes = [0i32; TILE];
                // SAFETY: `lanes` holds 16 i32: 8 from each half.
                unsafe {
                    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a[0]);
                    _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut __m256i, a[1]);
                }
                store_tile(
                    &lanes,
                    x.sum[t],
                    m.scale / x.scale[t],
                    out,
                    t * out_stride + tile * TILE - row0,
                    valid,
                );
            }
        }
    }
}

/// Stamps out the 256-bit VNNI ternary matmul for one encoding of `vpdpbusd ymm`: `$features` and the
/// intrinsic `$dpbusd` (VEX `{vex} vpdpbusd` for AVX-VNNI CPUs without AVX-512, or the EVEX form of
/// AVX512-VNNI + VL, the same operation, so the code can be tested bit for bit on an AVX-512 machine).
macro_rules! ternary_ymm_vnni {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dpbusd:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            m: &TernaryMatrix<'_>,
            x: &QuantizedBatch,
            tiles: Range<usize>,
            out: &mut [f32],
            out_stride: usize,
        ) {
            /// One 64-byte chunk as its two ymm halves (rows 0-7, 8-15), prefetching ahead.
            ///
            /// # Safety
            /// The CPU features above; 64 readable bytes at `p`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn chunk(p: *const u8) -> [__m256i; 2] {
                // SAFETY: the caller guarantees 64 readable bytes at `p`; the prefetch may point anywhere.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                    [
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    ]
                }
            }

            /// One tile (two ymm halves: rows 0-7, 8-15) for `NT` tokens from `t0`, planes decoded
            /// with shift and mask once per chunk for all of them; each broadcast feeds both halves.
            #[target_feature(enable = $features)]
            unsafe fn shifted<const NT: usize>(
                base: *const u8,
                groups: usize,
                x: &QuantizedBatch,
                t0: usize,
            ) -> [[i32; TILE]; NT] {
                let mask = _mm256_set1_epi8(0x03);
                let kp = x.kp;
                let mut acc = [[_mm256_setzero_si256(); 2]; NT];
                // SAFETY: the caller guarantees the tile's chunks and tokens t0..t0 + NT.
                let xq = unsafe { x.q.as_ptr().add(t0 * kp) };
                for g in 0..groups {
                    // SAFETY: as above.
                    unsafe {
                        let v = chunk(base.add(64 * g));
                        for q in 0..4 {
                            let pl = v.map(|v| {
                                let s = match q {
                                    0 => v,
                                    1 => _mm256_srli_epi16::<2>(v),
                                    2 => _mm256_srli_epi16::<4>(v),
                                    _ => _mm256_srli_epi16::<6>(v),
                                };
                                _mm256_and_si256(s, mask)
                            });
                            for (j, a) in acc.iter_mut().enumerate() {
                                let b = _mm256_set1_epi32(load_i32(xq.add(j * kp + 16 * g + 4 * q)));
                                a[0] = $dpbusd(a[0], pl[0], b);
                                a[1] = $dpbusd(a[1], pl[1], b);
                            }
                        }
                    }
                }
                let mut out = [[0i32; TILE]; NT];
                for (a, o) in acc.iter().zip(out.iter_mut()) {
                    // SAFETY: `o` holds 16 i32: 8 from each half.
                    unsafe {
                        _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, a[0]);
                        _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, a[1]);
                    }
                }
                out
            }

            /// One tile for one token with the mask-only plane trick: 8 independent accumulators
            /// (half, plane), shifted back once.
            #[target_feature(enable = $features)]
            unsafe fn masked1(base: *const u8, groups: usize, x: &QuantizedBatch, t: usize) -> [i32; TILE] {
                let masks = [0x03u8, 0x0C, 0x30, 0xC0].map(|b| _mm256_set1_epi8(b as i8));
                let mut acc = [[_mm256_setzero_si256(); 4]; 2];
                // SAFETY: the caller guarantees the tile's chunks and token t.
                let xq = unsafe { x.q.as_ptr().add(t * x.kp) };
                for g in 0..groups {
                    // SAFETY: as above.
                    unsafe {
                        let v = chunk(base.add(64 * g));
                        for (q, mask) in masks.iter().enumerate() {
                            let b = _mm256_set1_epi32(load_i32(xq.add(16 * g + 4 * q)));
                            for h in 0..2 {
                                acc[h][q] = $dpbusd(acc[h][q], _mm256_and_si256(v[h], *mask), b);
                            }
                        }
                    }
                }
                let mut out = [0i32; TILE];
                for (h, a) in acc.iter().enumerate() {
                    let total = _mm256_add_epi32(
                        _mm256_add_epi32(a[0], _mm256_srai_epi32::<2>(a[1])),
                        _mm256_add_epi32(_mm256_srai_epi32::<4>(a[2]), _mm256_srai_epi32::<6>(a[3])),
                    );
                    // SAFETY: `out` holds 16 i32; this half writes 8 of them.
                    unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * h) as *mut __m256i, total) };
                }
                out
            }

            let kp = pad16(m.cols);
            assert_eq!(x.kp, kp, "activation width must match the matrix");
            assert!(m.data.len() >= tiles.end * 4 * kp, "tile range past the data");
            assert!(x.q.len() >= x.n * kp, "activation rows");
            let groups = kp / 16;
            let row0 = tiles.start * TILE;
            for tile in tiles {
                let base = m.data[tile * 4 * kp..].as_ptr();
                let valid = m.rows.saturating_sub(tile * TILE).min(TILE);
                let at = |t: usize| t * out_stride + tile * TILE - row0;
                let mut t0 = 0;
                while t0 < x.n {
                    // SAFETY: (every call) the tile's chunks are inside `m.data` and every token row of
                    // `x.q` has kp bytes (asserted above); the tokens each call is given are below x.n.
                    let done = unsafe {
                        macro_rules! run {
                            ($nt:literal) => {{
                                let r = shifted::<$nt>(base, groups, x, t0);
                                for (j, r) in r.iter().enumerate() {
                                    let t = t0 + j;
                                    store_tile(r, x.sum[t], m.scale / x.scale[t], out, at(t), valid);
                                }
                                $nt
                            }};
                        }
                        match x.n - t0 {
                            1 => {
                                let r = masked1(base, groups, x, t0);
                                store_tile(&r, x.sum[t0], m.scale / x.scale[t0], out, at(t0), valid);
                                1
                            }
                            2 => run!(2),
                            3 => run!(3),
                            _ => run!(4),
                        }
                    };
                    t0 += done;
                }
            }
        }
    };
}

ternary_ymm_vnni!(
    /// AVX-VNNI ternary matmul (256-bit `{vex} vpdpbusd`, for CPUs with AVX-VNNI but no AVX-512, such as
    /// Alder Lake and later client cores) with the contract of [`crate::scalar::ternary_matmul`]: each
    /// 64-byte chunk is two ymm halves (rows 0-7, 8-15) sharing every broadcast activation word; up to 4
    /// tokens per pass with planes decoded once per chunk (shift and mask), a lone token with the
    /// mask-only plane trick.
    ternary_matmul_avxvnni,
    "avx2,avxvnni",
    _mm256_dpbusd_avx_epi32
);

ternary_ymm_vnni!(
    /// [`ternary_matmul_avxvnni`] compiled with the EVEX encoding of the same 256-bit `vpdpbusd`
    /// (AVX512-VNNI + VL): the identical code, runnable (so testable) on AVX-512 machines.
    ternary_matmul_avxvnni_evex,
    "avx2,avx512f,avx512vl,avx512vnni",
    _mm256_dpbusd_epi32
);

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

/// Sums `buf` with 256-bit loads into four independent accumulators: a streaming read for measuring
/// memory bandwidth (the baseline target would use 128-bit loads).
#[target_feature(enable = "avx2")]
pub unsafe fn stream_sum_avx2(buf: &[u64]) -> u64 {
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = buf.len() / 16;
    let p = buf.as_ptr() as *const __m256i;
    for i in 0..chunks {
        // SAFETY: 16 u64 (four 32-byte vectors) at 16 * i are inside `buf`.
        unsafe {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(4 * i + j)));
            }
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `lanes` holds 4 u64.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, total) };
    buf[chunks * 16..]
        .iter()
        .chain(&lanes)
        .fold(0u64, |s, v| s.wrapping_add(*v))
}
