//! Causal attention over a KV cache: the portable definition here (scores, softmax, weighted sums), the
//! SIMD builds under `x86/` and `aarch64/`, each behind [`Kernels::attention`](crate::Kernels); every
//! build gives the portable bits.

#[cfg(test)]
mod tests;

use super::{dot, exp, sum};

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
/// head. Each head's arithmetic is fixed by this portable code (one position at a time, in order); the
/// SIMD builds run the same operations in the same order on wider vectors, without fused multiply-add:
/// the same bits.
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
pub(crate) fn scores_each(
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
pub(crate) fn mix_body(
    w: &[f32],
    nq: usize,
    values: &[f32],
    kv_dim: usize,
    voff: usize,
    out: &mut [f32],
) {
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
