//! [`attention`](crate::ops::attention) for AVX-512 (scores and weighted sums over 512-bit registers) and
//! AVX2 (the portable code compiled for it, with a 256-bit [`dot`](crate::ops::dot)): the portable code's order (multiply
//! then add, no FMA), so its bits.

use std::arch::x86_64::*;

use crate::ops::{KvLayout, attention_body, mix_body, scores_each};

/// [`attention`](crate::ops::attention) compiled for AVX-512, with [`scores_avx512`] and [`mix_avx512`].
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_avx512(
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
    let score = |qs: &[f32], nq: usize, k: &[f32], kd: usize, ko: usize, sc: f32, s: &mut [f32]| {
        // SAFETY: this function runs only where AVX-512F was detected, so its callees may use it.
        unsafe { scores_avx512(qs, nq, k, kd, ko, sc, s) }
    };
    let mix = |w: &[f32], nq: usize, v: &[f32], kd: usize, vo: usize, o: &mut [f32]| {
        // SAFETY: as above.
        unsafe { mix_avx512(w, nq, v, kd, vo, o) }
    };
    attention_body(
        q, keys, values, n_ctx, n_heads, n_kv_heads, head_dim, kv, heads, scores, out, score, mix,
    )
}

/// [`scores_portable`](crate::ops::scores_portable) for AVX-512. Sixteen (head, position) pairs at a time, `NQ` heads by `16 / NQ`
/// positions, each pair's 16 dot-product lanes in one register (lane `i` sums dimensions `i (mod 16)` in
/// order, as [`dot`](crate::ops::dot)), so each key row is loaded once for the heads; the 16 registers are then reduced
/// together by shuffles that add exactly the pairs [`crate::scalar::reduce_lanes`] adds (lanes `i` and
/// `i + 8`, then `i + 4`, `i + 2`, `i + 1`): every score has [`dot`](crate::ops::dot)'s bits, at a fraction of the cost
/// of reducing each register on its own. Head sizes that are not a multiple of 16, and the positions
/// left over, go one at a time.
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512(
    qs: &[f32],
    nq: usize,
    keys: &[f32],
    kv_dim: usize,
    koff: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = qs.len() / nq;
    let n = scores.len() / nq;
    let d = |a: &[f32], b: &[f32]| {
        // SAFETY: this function runs only where AVX-512F was detected.
        unsafe { dot_avx512(a, b) }
    };
    if !hd.is_multiple_of(16) || hd == 0 {
        return scores_each(qs, nq, keys, kv_dim, koff, scale, scores, d);
    }
    assert!(
        n == 0 || keys.len() >= (n - 1) * kv_dim + koff + hd,
        "keys too short"
    );
    let mut j = 0;
    while j < nq {
        let take = match nq - j {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let (qj, sj) = (
            &qs[j * hd..(j + take) * hd],
            &mut scores[j * n..(j + take) * n],
        );
        // SAFETY: AVX-512F (this function's own requirement); `keys` covers every row (asserted).
        let done = unsafe {
            match take {
                4 => scores_block::<4, 4>(qj, keys, kv_dim, koff, scale, sj, n),
                2 => scores_block::<2, 8>(qj, keys, kv_dim, koff, scale, sj, n),
                _ => scores_block::<1, 16>(qj, keys, kv_dim, koff, scale, sj, n),
            }
        };
        for (qh, sh) in qj.chunks_exact(hd).zip(sj.chunks_exact_mut(n)) {
            scores_each(
                qh,
                1,
                &keys[done * kv_dim..],
                kv_dim,
                koff,
                scale,
                &mut sh[done..],
                d,
            );
        }
        j += take;
    }
}

/// Scores of `NQ` heads (`qs`, `[NQ, hd]`, `hd` a multiple of 16) for positions in blocks of `NP` (`NQ
/// * NP = 16`); returns how many positions it did (the rest are fewer than `NP`).
///
/// # Safety
/// AVX-512F; `keys` holds row `n - 1` up to `koff + hd`.
#[target_feature(enable = "avx512f")]
unsafe fn scores_block<const NQ: usize, const NP: usize>(
    qs: &[f32],
    keys: &[f32],
    kv_dim: usize,
    koff: usize,
    scale: f32,
    scores: &mut [f32],
    n: usize,
) -> usize {
    let hd = qs.len() / NQ;
    // The empty tail of `dot`, added as it does (an f32 sum of nothing).
    let tail: f32 = qs[hd..hd].iter().map(|x| x * x).sum();
    let (tail, vscale) = (_mm512_set1_ps(tail), _mm512_set1_ps(scale));
    // Register r = j * NP + i holds head j, position i; after the reduction lane 4k + m holds register
    // 4m + k, which this permutation puts back in lane r.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut p0 = 0;
    while p0 + NP <= n {
        let mut acc = [_mm512_setzero_ps(); 16];
        for c in (0..hd).step_by(16) {
            // SAFETY: c + 16 <= hd; positions p0..p0 + NP are below n, so every key row read is inside
            // `keys` (the caller's guarantee); every head's row of `qs` has hd values.
            unsafe {
                let k: [__m512; NP] = std::array::from_fn(|i| {
                    _mm512_loadu_ps(keys.as_ptr().add((p0 + i) * kv_dim + koff + c))
                });
                for j in 0..NQ {
                    let qv = _mm512_loadu_ps(qs.as_ptr().add(j * hd + c));
                    for (i, k) in k.iter().enumerate() {
                        let a = &mut acc[j * NP + i];
                        *a = _mm512_add_ps(*a, _mm512_mul_ps(qv, *k));
                    }
                }
            }
        }
        // Width 8: register j holds register 2j in lanes 0-7 and 2j + 1 in lanes 8-15.
        let b: [__m512; 8] = std::array::from_fn(|j| {
            let (x, y) = (acc[2 * j], acc[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(x, y),
                _mm512_shuffle_f32x4::<0xEE>(x, y),
            )
        });
        // Width 4: quarter k of register j holds register 4j + k.
        let c: [__m512; 4] = std::array::from_fn(|j| {
            let (x, y) = (b[2 * j], b[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            )
        });
        // Width 2: quarter k of register j holds registers 8j + k (elements 0, 1) and 8j + 4 + k.
        let d: [__m512; 2] = std::array::from_fn(|j| {
            let (x, y) = (c[2 * j], c[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(x, y),
                _mm512_shuffle_ps::<0xEE>(x, y),
            )
        });
        // Width 1: element m of quarter k holds register 4m + k.
        let e = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(d[0], d[1]),
            _mm512_shuffle_ps::<0xDD>(d[0], d[1]),
        );
        let e = _mm512_permutexvar_ps(order, e);
        let mut v = [0f32; 16];
        // SAFETY: `v` holds 16 f32.
        unsafe {
            _mm512_storeu_ps(
                v.as_mut_ptr(),
                _mm512_mul_ps(_mm512_add_ps(e, tail), vscale),
            )
        };
        for j in 0..NQ {
            scores[j * n + p0..j * n + p0 + NP].copy_from_slice(&v[j * NP..(j + 1) * NP]);
        }
        p0 += NP;
    }
    p0
}

/// [`mix_portable`](crate::ops::mix_portable) for AVX-512: up to 4 heads by 64 output dimensions (16 registers) at a time, each
/// value block loaded once for the heads; the same per-element order (positions in order from 0,
/// multiply then add), so the same bits. Head sizes that are not a multiple of 16 go the portable way.
#[target_feature(enable = "avx512f")]
unsafe fn mix_avx512(
    w: &[f32],
    nq: usize,
    values: &[f32],
    kv_dim: usize,
    voff: usize,
    out: &mut [f32],
) {
    let n = w.len() / nq;
    let hd = out.len() / nq;
    if !hd.is_multiple_of(16) || hd == 0 {
        return mix_body(w, nq, values, kv_dim, voff, out);
    }
    assert!(
        n == 0 || values.len() >= (n - 1) * kv_dim + voff + hd,
        "values too short"
    );
    let mut j = 0;
    while j < nq {
        let take = match nq - j {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let (wj, oj) = (&w[j * n..(j + take) * n], &mut out[j * hd..(j + take) * hd]);
        let mut d0 = 0;
        while d0 < hd {
            // SAFETY: AVX-512F; `values` covers every row read (asserted above); d0 + 16 * ZB <= hd.
            unsafe {
                match (take, (hd - d0) / 16) {
                    (4, 4..) => mix_block::<4, 4>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (4, 3) => mix_block::<4, 3>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (4, 2) => mix_block::<4, 2>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (4, _) => mix_block::<4, 1>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (2, 4..) => mix_block::<2, 4>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (2, 3) => mix_block::<2, 3>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (2, 2) => mix_block::<2, 2>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (2, _) => mix_block::<2, 1>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (_, 4..) => mix_block::<1, 4>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (_, 3) => mix_block::<1, 3>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (_, 2) => mix_block::<1, 2>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                    (_, _) => mix_block::<1, 1>(wj, n, values, kv_dim, voff + d0, oj, hd, d0),
                }
            }
            d0 += 16 * ((hd - d0) / 16).min(4);
        }
        j += take;
    }
}

/// `NQ` heads' weighted sums over `ZB` registers (16 dimensions each) of the value rows from `voff`,
/// into `out[j * hd + d0..][..16 * ZB]`.
///
/// # Safety
/// AVX-512F; `values` holds row `n - 1` up to `voff + 16 * ZB`; `d0 + 16 * ZB <= hd`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn mix_block<const NQ: usize, const ZB: usize>(
    w: &[f32],
    n: usize,
    values: &[f32],
    kv_dim: usize,
    voff: usize,
    out: &mut [f32],
    hd: usize,
    d0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); ZB]; NQ];
    for p in 0..n {
        // SAFETY: row p < n of `values` holds 16 * ZB floats from voff (the caller's guarantee).
        unsafe {
            let row = values.as_ptr().add(p * kv_dim + voff);
            let v: [__m512; ZB] = std::array::from_fn(|b| _mm512_loadu_ps(row.add(16 * b)));
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(w[j * n + p]);
                for (a, v) in a.iter_mut().zip(&v) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, *v));
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let o = &mut out[j * hd + d0..j * hd + d0 + 16 * ZB];
        for (b, a) in a.iter().enumerate() {
            // SAFETY: `o` holds 16 * ZB floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * b), *a) };
        }
    }
}

/// [`dot`](crate::ops::dot) with its 16 lanes in one 512-bit register: multiply then add (no FMA), the same canonical
/// reduction and tail: the same bits.
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= the length of both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(c), b.as_ptr().add(c));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(pa), _mm512_loadu_ps(pb)));
        }
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    crate::scalar::reduce_lanes(lanes) + tail
}

/// [`attention`](crate::ops::attention) compiled for AVX2.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_avx2(
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
        // SAFETY: this function runs only where AVX2 was detected, so its callees may use it.
        unsafe { dot_avx2(a, b) }
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

/// [`dot`](crate::ops::dot) with 256-bit vectors: lanes 0-7 and 8-15 in two registers, multiply then add (no FMA), the
/// same canonical reduction and tail: the same bits.
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16 * 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= the length of both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(c), b.as_ptr().add(c));
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb)));
            hi = _mm256_add_ps(
                hi,
                _mm256_mul_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8))),
            );
        }
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    crate::scalar::reduce_lanes(lanes) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dot;

    #[test]
    fn the_simd_dots_give_the_portable_bits_on_every_length() {
        let runs = |name: &str| crate::Kernels::available().iter().any(|k| k.name == name);
        if !runs("avx2") {
            return;
        }
        let a: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..70)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0)
            .collect();
        for n in 0..70 {
            // SAFETY: the avx2 kernels run here, so AVX2 was detected.
            let got = unsafe { dot_avx2(&a[..n], &b[..n]) };
            assert_eq!(got.to_bits(), dot(&a[..n], &b[..n]).to_bits(), "length {n}");
            if runs("avx512vnni") {
                // SAFETY: the avx512vnni kernels run here, so AVX-512F was detected.
                let got = unsafe { dot_avx512(&a[..n], &b[..n]) };
                assert_eq!(
                    got.to_bits(),
                    dot(&a[..n], &b[..n]).to_bits(),
                    "avx512, length {n}"
                );
            }
        }
    }
}
