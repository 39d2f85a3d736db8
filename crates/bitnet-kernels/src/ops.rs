//! The float operations between BitLinears: RMSNorm, rotary embeddings, attention, FFN activations.

/// Lanes of the f64 sum of squares in [`rms_norm`].
const NORM_LANES: usize = 16;

/// RMSNorm as transformers computes it in f32: `x / sqrt(mean(x^2) + eps) * weight`.
///
/// The sum of squares is accumulated in f64 (every square of an f32 is exact there) and rounded once
/// (close to PyTorch's pairwise f32 sum), in a fixed order so that it vectorizes: lane `j` of 16 sums the
/// elements `i = j (mod 16)` in order, the lanes are added in the canonical halving order (8, 4, 2, 1),
/// then the tail in order. On a CPU with AVX-512 or AVX2 the same code runs compiled for it: the same
/// operations in the same order, the same bits.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected.
            return unsafe { rms_norm_avx512(x, weight, eps, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected.
            return unsafe { rms_norm_avx2(x, weight, eps, out) };
        }
    }
    rms_norm_body(x, weight, eps, out)
}

/// [`rms_norm`] in AVX-512 intrinsics: lanes 0-7 and 8-15 of the f64 sum in two registers (the compiler
/// kept the portable body's lanes in 128-bit pieces), the same halving reduction, then the portable scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_avx512(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
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

/// The rest of [`rms_norm`] from lane sums: halve the lanes down to one (adding lane `i + w` to lane
/// `i`), add the tail's squares in order, and scale.
#[inline(always)]
fn rms_norm_finish(
    lanes: &mut [f64],
    tail: &[f32],
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let mut w = lanes.len() / 2;
    while w > 0 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    let ss = tail
        .iter()
        .fold(lanes[0], |s, &v| s + (v as f64) * (v as f64));
    let var = (ss as f32) / x.len() as f32;
    let r = 1.0f32 / (var + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * r);
    }
}

/// [`rms_norm`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rms_norm_avx2(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_body(x, weight, eps, out)
}

/// The portable body of [`rms_norm`].
#[inline(always)]
pub fn rms_norm_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mut lanes = [0f64; NORM_LANES];
    let (chunks, tail) = x.as_chunks::<NORM_LANES>();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += (v as f64) * (v as f64);
        }
    }
    rms_norm_finish(&mut lanes, tail, x, weight, eps, out)
}

/// Rotary embedding tables for one position: `cos` and `sin` of `pos * inv_freq[i]`, for `i < head_dim / 2`.
#[derive(Debug, Clone, Default)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / theta^(2i / head_dim)` in f32, as transformers' default rope init.
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { inv_freq }
    }

    /// Fills `cos` and `sin` (each `head_dim / 2`) for `pos`.
    pub fn tables(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let angle = pos as f32 * f;
            *c = angle.cos();
            *s = angle.sin();
        }
    }
}

/// Applies rotate-half RoPE in place to every head of `x` (`[heads, head_dim]`): dimension `i` pairs with
/// `i + head_dim / 2`.
pub fn apply_rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// Where a KV cache keeps element `d` of kv head `h` at position `p`: at `p * pos_stride + h * head_stride
/// + d` of its key (and value) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Elements between consecutive positions of one head.
    pub pos_stride: usize,
    /// Elements between consecutive kv heads.
    pub head_stride: usize,
}

impl KvLayout {
    /// Rows of `[n_kv_heads * head_dim]`, one per position.
    pub fn interleaved(n_kv_heads: usize, head_dim: usize) -> KvLayout {
        KvLayout {
            pos_stride: n_kv_heads * head_dim,
            head_stride: head_dim,
        }
    }

    /// Each kv head's positions contiguous, `capacity` positions per head.
    pub fn head_major(capacity: usize, head_dim: usize) -> KvLayout {
        KvLayout {
            pos_stride: head_dim,
            head_stride: capacity * head_dim,
        }
    }
}

/// Query heads of one kv head handled together by [`attention`] (each key and value row is read once
/// for all of them): the scratch `scores` holds this many rows of `n_ctx`.
pub const ATTN_GROUP: usize = 4;

/// Causal attention of one query token over `n_ctx` cached positions, for the query heads `heads`.
///
/// `q` is `[n_heads, head_dim]`; `keys` and `values` hold `n_ctx` positions of `n_kv_heads` heads in the
/// layout `kv`; query head `h` reads kv head `h / (n_heads / n_kv_heads)`. `scores` is scratch of at least `ATTN_GROUP * n_ctx`;
/// `out` is `[heads.len(), head_dim]`.
///
/// The query heads that share a kv head go through its cached rows together (up to [`ATTN_GROUP`] at a
/// time), so a long context's keys and values are read from memory once per kv head, not once per query
/// head. Each head's arithmetic is fixed by the portable code (one position at a time, in order), and on
/// a CPU with AVX-512 or AVX2 the same operations run in the same order on wider vectors, without fused
/// multiply-add: the same bits.
#[allow(clippy::too_many_arguments)]
pub fn attention(
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected.
        return unsafe {
            attention_avx512(
                q, keys, values, n_ctx, n_heads, n_kv_heads, head_dim, kv, heads, scores, out,
            )
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe {
            attention_avx2(
                q, keys, values, n_ctx, n_heads, n_kv_heads, head_dim, kv, heads, scores, out,
            )
        };
    }
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
        scores_portable,
        mix_portable,
    )
}

/// The attention scores of `nq` query heads `qs` (`[nq, hd]`) against every cached key (the `score`
/// argument of [`attention_body`]): `scores[j * n + p] = dot(q_j, k_p) * scale` for `p < n =
/// scores.len() / nq`, with `k_p = keys[p * kv_dim + koff..][..hd]`; one head and position at a time with
/// [`dot`].
pub fn scores_portable(
    qs: &[f32],
    nq: usize,
    keys: &[f32],
    kv_dim: usize,
    koff: usize,
    scale: f32,
    scores: &mut [f32],
) {
    scores_each(qs, nq, keys, kv_dim, koff, scale, scores, dot)
}

/// [`scores_portable`] with the given dot product.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_each(
    qs: &[f32],
    nq: usize,
    keys: &[f32],
    kv_dim: usize,
    koff: usize,
    scale: f32,
    scores: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let hd = qs.len() / nq;
    let n = scores.len() / nq;
    if n == 0 || hd == 0 {
        return;
    }
    for (qh, sc) in qs.chunks_exact(hd).zip(scores.chunks_exact_mut(n)) {
        for (p, s) in sc.iter_mut().enumerate() {
            let at = p * kv_dim + koff;
            *s = dot(qh, &keys[at..at + hd]) * scale;
        }
    }
}

/// The weighted sums of the cached values for `nq` query heads (the `mix` argument of
/// [`attention_body`]): `out[j * hd + d] = sum over p in order of w[j * n + p] * v_p[d]`, from 0, with
/// `v_p = values[p * kv_dim + voff..][..hd]`, `n = w.len() / nq`, `hd = out.len() / nq`.
pub fn mix_portable(
    w: &[f32],
    nq: usize,
    values: &[f32],
    kv_dim: usize,
    voff: usize,
    out: &mut [f32],
) {
    mix_body(w, nq, values, kv_dim, voff, out)
}

/// The body of [`mix_portable`], inlined into each build.
#[inline(always)]
fn mix_body(w: &[f32], nq: usize, values: &[f32], kv_dim: usize, voff: usize, out: &mut [f32]) {
    let n = w.len() / nq;
    let hd = out.len() / nq;
    if hd == 0 {
        return;
    }
    if n == 0 {
        return out.fill(0.0);
    }
    for (wh, oh) in w.chunks_exact(n).zip(out.chunks_exact_mut(hd)) {
        // Output dimensions go in blocks of 64 held in registers over all positions (the same
        // per-element order as one position at a time, so the same bits).
        let (blocks, rest) = oh.as_chunks_mut::<ATTN_BLOCK>();
        for (b, ob) in blocks.iter_mut().enumerate() {
            let mut acc = [0f32; ATTN_BLOCK];
            for (p, &w) in wh.iter().enumerate() {
                let at = p * kv_dim + voff + b * ATTN_BLOCK;
                let v: &[f32; ATTN_BLOCK] = values[at..at + ATTN_BLOCK]
                    .try_into()
                    .expect("a block of ATTN_BLOCK values");
                for (a, &vv) in acc.iter_mut().zip(v) {
                    *a += w * vv;
                }
            }
            *ob = acc;
        }
        let d0 = blocks.len() * ATTN_BLOCK;
        rest.fill(0.0);
        for (p, &w) in wh.iter().enumerate() {
            let v = &values[p * kv_dim + voff + d0..p * kv_dim + voff + hd];
            for (o, &vv) in rest.iter_mut().zip(v) {
                *o += w * vv;
            }
        }
    }
}

/// Output dimensions of one attention head accumulated together in registers.
const ATTN_BLOCK: usize = 64;

/// The portable body of [`attention`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attention_body(
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
    score: impl Fn(&[f32], usize, &[f32], usize, usize, f32, &mut [f32]),
    mix: impl Fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
) {
    let group = n_heads / n_kv_heads;
    let scale = 1.0f32 / (head_dim as f32).sqrt();
    let h0 = heads.start;
    let mut h = heads.start;
    while h < heads.end {
        // The next run of query heads sharing one kv head, at most ATTN_GROUP long.
        let kvh = h / group;
        let end = heads.end.min((kvh + 1) * group).min(h + ATTN_GROUP);
        let nq = end - h;
        let sc = &mut scores[..nq * n_ctx];
        score(
            &q[h * head_dim..end * head_dim],
            nq,
            keys,
            kv.pos_stride,
            kvh * kv.head_stride,
            scale,
            sc,
        );
        for sh in sc.chunks_exact_mut(n_ctx) {
            let max = sh.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for s in sh.iter_mut() {
                *s = exp(*s - max);
            }
            let total = sum(sh);
            for s in sh.iter_mut() {
                *s /= total;
            }
        }
        let o = &mut out[(h - h0) * head_dim..(end - h0) * head_dim];
        mix(sc, nq, values, kv.pos_stride, kvh * kv.head_stride, o);
        h = end;
    }
}

/// [`attention`] compiled for AVX-512, with [`scores_avx512`] and [`mix_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_avx512(
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

/// [`scores_portable`] for AVX-512. Sixteen (head, position) pairs at a time, `NQ` heads by `16 / NQ`
/// positions, each pair's 16 dot-product lanes in one register (lane `i` sums dimensions `i (mod 16)` in
/// order, as [`dot`]), so each key row is loaded once for the heads; the 16 registers are then reduced
/// together by shuffles that add exactly the pairs [`crate::scalar::reduce_lanes`] adds (lanes `i` and
/// `i + 8`, then `i + 4`, `i + 2`, `i + 1`): every score has [`dot`]'s bits, at a fraction of the cost
/// of reducing each register on its own. Head sizes that are not a multiple of 16, and the positions
/// left over, go one at a time.
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
    use std::arch::x86_64::*;
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

/// [`mix_portable`] for AVX-512: up to 4 heads by 64 output dimensions (16 registers) at a time, each
/// value block loaded once for the heads; the same per-element order (positions in order from 0,
/// multiply then add), so the same bits. Head sizes that are not a multiple of 16 go the portable way.
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
    use std::arch::x86_64::*;
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

/// [`dot`] with its 16 lanes in one 512-bit register: multiply then add (no FMA), the same canonical
/// reduction and tail: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
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

/// [`attention`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_avx2(
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

/// [`dot`] with 256-bit vectors: lanes 0-7 and 8-15 in two registers, multiply then add (no FMA), the
/// same canonical reduction and tail: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
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

/// `e^x` in f32 from plain arithmetic (Cephes' `expf`: `x = n ln 2 + r` with `n` rounded to nearest, a
/// degree-6 polynomial for `e^r`, scaled by `2^n` through the exponent bits), within 2 ulp of the true
/// value for `x` in [-87.3, 88.3] (tested); below that it returns about 1.2e-38 (the smallest normal),
/// above it about 3.4e38. It is the same code in every build, and the compiler vectorizes it (which it
/// cannot do for a call into the C library), so attention's softmax has the same bits everywhere.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.336_54, 88.376_26);
    let y = x * std::f32::consts::LOG2_E + MAGIC;
    let n = y - MAGIC;
    // The integer n sits in the low mantissa bits of y (exactly: |n| < 2^22), so the scale 2^n is built
    // from bits alone (a float-to-int conversion would saturate, and the compiler does not vectorize that).
    let ni = y.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    p * f32::from_bits(ni.wrapping_add(127) << 23)
}

/// An f32 sum in 16 independent lanes (so it vectorizes), reduced in [`dot`]'s fixed order.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let tail: f32 = tail.iter().sum();
    crate::scalar::reduce_lanes(lanes) + tail
}

/// An f32 dot product in 16 independent lanes (so it vectorizes), reduced in a fixed order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        // Fixed-size views: no bounds checks, so the 16 lanes compile to whole vectors.
        let (x, y): (&[f32; 16], &[f32; 16]) = match (x.try_into(), y.try_into()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => unreachable!("chunks_exact(16) yields 16 elements"),
        };
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    crate::scalar::reduce_lanes(lanes) + tail
}

/// `relu(g)^2 * u`, in place into `g`.
pub fn relu2_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

/// `silu(g) * u`, in place into `g`.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let rope = Rope::new(4, 10000.0);
        let (mut c, mut s) = ([0f32; 2], [0f32; 2]);
        rope.tables(1, &mut c, &mut s);
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        apply_rope(&mut x, 4, &c, &s);
        assert!((x[0] - 1f32.cos()).abs() < 1e-7 && (x[2] - 1f32.sin()).abs() < 1e-7);
        assert_eq!(x[1], 0.0);
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let (q, k, v) = ([1.0f32, 2.0], [0.5f32, 0.5], [3.0f32, -1.0]);
        let mut scores = [0f32; 1];
        let mut out = [0f32; 2];
        let kv = KvLayout::interleaved(1, 2);
        attention(&q, &k, &v, 1, 1, 1, 2, kv, 0..1, &mut scores, &mut out);
        assert_eq!(out, [3.0, -1.0]);
    }

    #[test]
    fn every_build_of_attention_gives_the_portable_bits() {
        let mut r = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r % 2001) as f32 / 1000.0 - 1.0
        };
        // Head sizes below one register block, ragged ones, and multiples of 16 (2B4T's 128) with
        // contexts of several 16-position blocks plus a tail.
        let shapes = [
            (6, 2, 40, 37),
            (4, 1, 136, 21),
            (2, 2, 128, 40),
            (3, 1, 32, 50),
            (8, 2, 16, 32),
        ];
        for (heads, kv_heads, hd, ctx) in shapes {
            let q: Vec<f32> = (0..heads * hd).map(|_| next()).collect();
            let k: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| next()).collect();
            // The same cache head-major, with room for more positions than it holds.
            let cap = ctx + 3;
            let head_major = |x: &[f32]| {
                let mut out = vec![f32::NAN; kv_heads * cap * hd];
                for p in 0..ctx {
                    for h in 0..kv_heads {
                        let src = &x[p * kv_heads * hd + h * hd..][..hd];
                        out[(h * cap + p) * hd..][..hd].copy_from_slice(src);
                    }
                }
                out
            };
            let (kh, vh) = (head_major(&k), head_major(&v));
            // Contexts that fill whole blocks of positions (16, 32) and ones that leave a remainder.
            for n_ctx in [1, 2, 7, 16, 32, ctx].into_iter().filter(|&n| n <= ctx) {
                let run = |build: &str, major: bool| {
                    let mut s = vec![0f32; ATTN_GROUP * ctx];
                    let mut o = vec![f32::NAN; (heads - 1) * hd];
                    let (k, v, kv) = if major {
                        (&kh[..], &vh[..], KvLayout::head_major(cap, hd))
                    } else {
                        (&k[..], &v[..], KvLayout::interleaved(kv_heads, hd))
                    };
                    let args = (&q[..], k, v, n_ctx, heads, kv_heads, hd, kv, 1..heads);
                    let (q, k, v, n, nh, nkv, hd, kv, hs) = args;
                    match build {
                        "portable" => attention_body(
                            q,
                            k,
                            v,
                            n,
                            nh,
                            nkv,
                            hd,
                            kv,
                            hs,
                            &mut s,
                            &mut o,
                            scores_portable,
                            mix_portable,
                        ),
                        "dispatch" => attention(q, k, v, n, nh, nkv, hd, kv, hs, &mut s, &mut o),
                        #[cfg(target_arch = "x86_64")]
                        "avx512" if std::arch::is_x86_feature_detected!("avx512f") => {
                            // SAFETY: AVX-512F was just detected.
                            unsafe {
                                attention_avx512(q, k, v, n, nh, nkv, hd, kv, hs, &mut s, &mut o)
                            }
                        }
                        #[cfg(target_arch = "x86_64")]
                        "avx2" if std::arch::is_x86_feature_detected!("avx2") => {
                            // SAFETY: AVX2 was just detected.
                            unsafe {
                                attention_avx2(q, k, v, n, nh, nkv, hd, kv, hs, &mut s, &mut o)
                            }
                        }
                        _ => return None,
                    }
                    Some(o)
                };
                let want = run("portable", false).unwrap();
                assert!(want.iter().all(|v| v.is_finite()), "every output written");
                for build in ["portable", "dispatch", "avx512", "avx2"] {
                    for major in [false, true] {
                        if let Some(got) = run(build, major) {
                            assert!(
                                want.iter()
                                    .zip(&got)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{build} (head-major {major}): head_dim {hd}, n_ctx {n_ctx}"
                            );
                        }
                    }
                }
                // Against the plain definition: a softmax-weighted sum of the values.
                for h in 1..heads {
                    let kvh = h / (heads / kv_heads);
                    let qh = &q[h * hd..(h + 1) * hd];
                    let sc: Vec<f64> = (0..n_ctx)
                        .map(|p| {
                            let kp = &k[p * kv_heads * hd + kvh * hd..][..hd];
                            let d: f64 = qh.iter().zip(kp).map(|(a, b)| (a * b) as f64).sum();
                            d / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                    let t: f64 = e.iter().sum();
                    for d in 0..hd {
                        let o: f64 = (0..n_ctx)
                            .map(|p| e[p] / t * v[p * kv_heads * hd + kvh * hd + d] as f64)
                            .sum();
                        let got = want[(h - 1) * hd + d] as f64;
                        assert!((o - got).abs() < 1e-5, "head {h} dim {d}: {got} vs {o}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_dots_give_the_portable_bits_on_every_length() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let a: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..70)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0)
            .collect();
        for n in 0..70 {
            // SAFETY: AVX2 was detected above.
            let got = unsafe { dot_avx2(&a[..n], &b[..n]) };
            assert_eq!(got.to_bits(), dot(&a[..n], &b[..n]).to_bits(), "length {n}");
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F was just detected.
                let got = unsafe { dot_avx512(&a[..n], &b[..n]) };
                assert_eq!(
                    got.to_bits(),
                    dot(&a[..n], &b[..n]).to_bits(),
                    "avx512, length {n}"
                );
            }
        }
    }

    #[test]
    fn every_build_of_rms_norm_gives_the_portable_bits() {
        let x: Vec<f32> = (0..300)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.37e-3 * (1 + i % 5) as f32)
            .collect();
        let w: Vec<f32> = (0..300).map(|i| 0.5 + (i % 13) as f32 * 0.11).collect();
        let same = |want: &[f32], got: &[f32], what: &str| {
            let equal = want
                .iter()
                .zip(got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(equal, "{what}, length {}", want.len());
        };
        for n in [1, 2, 15, 16, 17, 31, 64, 100, 257, 300] {
            let mut want = vec![0f32; n];
            rms_norm_body(&x[..n], &w[..n], 1e-5, &mut want);
            let mut got = vec![0f32; n];
            rms_norm(&x[..n], &w[..n], 1e-5, &mut got);
            same(&want, &got, "dispatch");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                got.fill(0.0);
                // SAFETY: AVX-512F was just detected.
                unsafe { rms_norm_avx512(&x[..n], &w[..n], 1e-5, &mut got) };
                same(&want, &got, "avx512");
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                got.fill(0.0);
                // SAFETY: AVX2 was just detected.
                unsafe { rms_norm_avx2(&x[..n], &w[..n], 1e-5, &mut got) };
                same(&want, &got, "avx2");
            }
            // The fixed lane order stays within an f32 rounding of the sequential f64 sum.
            let ss: f64 = x[..n].iter().map(|&v| (v as f64) * (v as f64)).sum();
            let r = 1.0f32 / ((ss as f32) / n as f32 + 1e-5).sqrt();
            for i in 0..n {
                let seq = w[i] * (x[i] * r);
                assert!(
                    (seq - want[i]).abs() <= seq.abs() * 2e-7,
                    "length {n}, element {i}"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        // Error in units of the f32 spacing at the true value.
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let want = (x as f64).exp();
            let got = exp(x);
            let ulp = (got as f64 - want).abs() / (f32::EPSILON as f64 * want);
            worst = worst.max(ulp);
            assert!(ulp <= 2.0, "exp({x}) = {got}, true {want}: {ulp:.2} ulp");
            x += 0.0173;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.2e-38 && exp(-1000.0) > 0.0);
        assert!(
            worst > 0.1,
            "the comparison saw no rounding at all ({worst})"
        );
        eprintln!("exp: worst error {worst:.3} of an f32 spacing");
    }

    #[test]
    fn rms_norm_normalizes() {
        let mut out = [0f32; 4];
        rms_norm(&[2.0, 2.0, 2.0, 2.0], &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        assert_eq!(out, [1.0, 2.0, 1.0, 1.0]);
    }
}
