//! The ternary matmuls: AVX-512 VNNI on zmm, AVX2 (`vpmaddubsw`), and the 256-bit VNNI builds
//! (AVX-VNNI, and its EVEX twin for testing on AVX-512 machines).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{PREFETCH, load_i32};
use crate::quant::QuantizedBatch;
use crate::scalar::TILE;
use crate::{TernaryMatrix, pad16};

/// Tokens processed together per pass over a tile (each chunk's planes are decoded once for all of them).
const TOKEN_BLOCK: usize = 8;

/// Tiles processed together for a block of tokens (each broadcast activation feeds all of them).
const TILE_GROUP: usize = 2;

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
