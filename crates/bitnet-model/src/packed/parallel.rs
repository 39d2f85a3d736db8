//! The steps of the forward pass that fan out over the decode pool: the LM head, BitLinears and
//! attention, each in one pool dispatch with every thread writing rows of its own.

use std::ops::Range;

use bitnet_format::TensorKind;
use bitnet_kernels::ops;
use bitnet_kernels::pool::SharedMut;
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::{self, BlockQuantized};
use bitnet_kernels::{Bf16Matrix, Int8Matrix, Pool, pad16};

use super::{HeadKind, PackedModel, Ternary};
use crate::Session;
use crate::error::{ModelError, Result};
use crate::session::HeadScratch;

/// Rows of the exact LM head a thread runs every token of a batch over before moving on: 64 rows of
/// 2B4T's head are 320 KiB of bf16, which stay in L2 while the tokens pass over them. (The int8 kernels
/// take all tokens at once.)
const HEAD_BLOCK: usize = 64;

/// Row tiles (16 rows each) per unit of work the pool's threads claim in [`PackedModel::bitlinears`].
const UNIT_TILES: usize = 8;

/// Runs `fill` on this thread's buffer of `[n, rows.len()]` (token-major), then copies each token's rows
/// into `out` (`[n, stride]`): for kernels that write several tokens' rows contiguously.
///
/// # Safety
/// Rows `rows` of every token of `out` must be written by this thread alone while it runs.
unsafe fn scatter_rows(
    out: &SharedMut<'_, f32>,
    n: usize,
    stride: usize,
    rows: Range<usize>,
    fill: impl FnOnce(&mut [f32]),
) {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let w = rows.len();
        buf.resize(n * w, 0.0);
        fill(&mut buf);
        for t in 0..n {
            // SAFETY: the caller owns rows `rows` of token t.
            let o = unsafe { out.range(t * stride + rows.start..t * stride + rows.end) };
            o.copy_from_slice(&buf[t * w..(t + 1) * w]);
        }
    });
}

/// A head kernel for one token over a block of rows: `(token, rows, out)`.
type RowKernel<'a> = dyn Fn(usize, Range<usize>, &mut [f32]) + 'a;

impl PackedModel {
    /// Logits of final-norm hidden states `[m, hidden]` through the chosen head: `[m, vocab]`.
    ///
    /// One pool dispatch for all `m` rows, and the head read from memory once per call, not once per
    /// token: the int8 kernels take every token at once; for the exact head each thread walks its share
    /// in blocks of [`HEAD_BLOCK`] rows and runs every token over a block while it is in cache.
    pub fn head_logits(&self, hidden: &[f32], head: HeadKind) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.head_logits_into(hidden, head, &mut HeadScratch::default(), &mut logits)?;
        Ok(logits)
    }

    /// [`PackedModel::head_logits`] into `logits`, with `head_in` as the buffers of the int8 head's
    /// quantized inputs and the rescored rows: all reused, nothing allocated once they have grown.
    pub(super) fn head_logits_into(
        &self,
        hidden: &[f32],
        head: HeadKind,
        head_in: &mut HeadScratch,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        let m = hidden.len() / h;
        logits.clear();
        logits.resize(m * v, 0.0);
        let threads = self.pool.threads();
        let out = SharedMut::new(logits);
        // Runs `row_kernel(token, rows, out)` over this thread's rows, block by block.
        let blocked = |tid: usize, row_kernel: &RowKernel<'_>| {
            let rows = Pool::split(v, threads, tid, 16);
            let block = if m == 1 {
                rows.len().max(1)
            } else {
                HEAD_BLOCK
            };
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r1 = (r0 + block).min(rows.end);
                for t in 0..m {
                    // SAFETY: `Pool::split` gives each thread a disjoint row range of every token.
                    let o = unsafe { out.range(t * v + r0..t * v + r1) };
                    row_kernel(t, r0..r1, o);
                }
                r0 = r1;
            }
        };
        match head {
            HeadKind::Exact => {
                let mat = self
                    .exact_head
                    .as_ref()
                    .ok_or_else(|| ModelError::MissingTensor("exact LM head".into()))?;
                let data = &self.file.bytes()[mat.range.clone()];
                let bf16 = self.kernels.bf16;
                let bm = Bf16Matrix {
                    data,
                    rows: mat.rows,
                    cols: mat.cols,
                };
                self.pool.run(&|tid| {
                    blocked(tid, &|t, rows, o| {
                        let x = &hidden[t * h..(t + 1) * h];
                        match mat.kind {
                            TensorKind::Bf16 => bf16(&bm, x, rows, o),
                            _ => scalar::f32_matvec(data, mat.cols, x, rows, o),
                        }
                    })
                });
            }
            HeadKind::Int8 | HeadKind::Rescored => {
                let r = self
                    .int8_head
                    .clone()
                    .ok_or_else(|| ModelError::MissingTensor("int8 LM head".into()))?;
                let im = Int8Matrix {
                    data: &self.file.bytes()[r],
                    rows: v,
                    cols: h,
                };
                let quantized = &mut head_in.quantized;
                quantized.resize_with(m, BlockQuantized::default);
                for (bq, x) in quantized.iter_mut().zip(hidden.chunks_exact(h)) {
                    bq.quantize(x);
                }
                let bqs = &quantized[..m];
                let int8 = self.kernels.int8;
                // The int8 kernels take every token at once (each chunk of the head loaded once for all).
                self.pool.run(&|tid| {
                    let rows = Pool::split(v, threads, tid, 16);
                    if rows.is_empty() {
                        return;
                    }
                    if m == 1 {
                        // SAFETY: `Pool::split` gives each thread a disjoint row range.
                        int8(&im, bqs, rows.clone(), unsafe { out.range(rows) });
                        return;
                    }
                    // SAFETY: `Pool::split` gives each thread a disjoint row range of every token.
                    unsafe {
                        scatter_rows(&out, m, v, rows.clone(), |buf| {
                            int8(&im, bqs, rows.clone(), buf)
                        })
                    };
                });
                if head == HeadKind::Rescored {
                    self.rescore(hidden, head_in, logits)?;
                }
            }
        }
        Ok(())
    }

    /// Runs `N` BitLinears on the same quantized input in one pool dispatch (QKV, gate+up fused). The
    /// matrices' row tiles are cut into units of [`UNIT_TILES`] tiles that the threads claim one by one
    /// from a shared counter, so a thread slowed by the other's memory traffic or by the OS takes fewer
    /// units instead of keeping the other waiting at the end. `outs[i]` is `[n, mats[i].rows]`.
    pub(super) fn bitlinears<const N: usize>(
        &self,
        x: &QuantizedBatch,
        mats: [&Ternary; N],
        outs: [&mut [f32]; N],
    ) {
        let ms = mats.map(|t| self.ternary(t));
        let outs = outs.map(SharedMut::new);
        let kern = self.kernels.ternary;
        let n = x.n;
        let units: [usize; N] = ms.map(|m| (pad16(m.rows) / 16).div_ceil(UNIT_TILES));
        let total: usize = units.iter().sum();
        let next = std::sync::atomic::AtomicUsize::new(0);
        self.pool.run(&|_tid| {
            loop {
                let mut u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= total {
                    break;
                }
                let mut i = 0;
                while u >= units[i] {
                    u -= units[i];
                    i += 1;
                }
                let (m, out) = (&ms[i], &outs[i]);
                let tiles = u * UNIT_TILES..((u + 1) * UNIT_TILES).min(pad16(m.rows) / 16);
                let (r0, r1) = (tiles.start * 16, (tiles.end * 16).min(m.rows));
                if n == 1 {
                    // SAFETY: each unit, so its row range, is claimed by one thread only.
                    kern(m, x, tiles, unsafe { out.range(r0..r1) }, r1 - r0);
                } else {
                    // SAFETY: rows r0..r1 of every token belong to this unit alone.
                    unsafe {
                        scatter_rows(out, n, m.rows, r0..r1, |buf| {
                            kern(m, x, tiles, buf, r1 - r0)
                        })
                    };
                }
            }
        });
    }

    /// Causal attention of every sequence's new tokens over its own cache, in one pool dispatch: `q` and
    /// `out` are `[n, num_heads * head_dim]`, `counts[i]` consecutive tokens belonging to `seqs[i]` (whose
    /// cache already holds them, at positions `pos ..`). The (sequence, head) pairs are split across
    /// the threads in contiguous ranges.
    pub(super) fn attention(
        &self,
        q: &[f32],
        seqs: &[&mut Session],
        counts: &[usize],
        li: usize,
        out: &mut [f32],
    ) {
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let c = &self.config;
        let (hd, nh) = (c.head_dim, c.num_heads);
        let qd = nh * hd;
        let out = SharedMut::new(out);
        let threads = self.pool.threads();
        let attention = self.kernels.attention;
        self.pool.run(&|tid| {
            let items = Pool::split(nh * seqs.len(), threads, tid, 1);
            if items.is_empty() {
                return;
            }
            SCORES.with(|sc| {
                let mut sc = sc.borrow_mut();
                let mut t0 = 0;
                for (i, (session, &n)) in seqs.iter().zip(counts).enumerate() {
                    let mine = items.start.max(i * nh)..items.end.min((i + 1) * nh);
                    if mine.is_empty() {
                        t0 += n;
                        continue;
                    }
                    let heads = mine.start - i * nh..mine.end - i * nh;
                    let (keys, values) = session.layer(li);
                    let pos = session.pos;
                    let need = ops::ATTN_GROUP * (pos + n);
                    if sc.len() < need {
                        // Room for the whole context at once, so later positions allocate nothing.
                        let want = (ops::ATTN_GROUP * session.max_ctx).max(need) - sc.len();
                        sc.reserve_exact(want);
                        sc.resize(need, 0.0);
                    }
                    // The heads of one kv head go through every token before the next kv head's:
                    // that kv head's cached rows (1 MiB for 2B4T at 1024 positions) stay in cache
                    // across a prompt's tokens instead of all heads' rows streaming per token.
                    let group = nh / c.num_kv_heads;
                    let mut h = heads.start;
                    while h < heads.end {
                        let end = heads.end.min((h / group + 1) * group);
                        for t in t0..t0 + n {
                            // SAFETY: threads own disjoint (sequence, head) ranges, so disjoint slices
                            // of each token's output.
                            let o = unsafe { out.range(t * qd + h * hd..t * qd + end * hd) };
                            attention(
                                &q[t * qd..(t + 1) * qd],
                                keys,
                                values,
                                pos + t - t0 + 1,
                                nh,
                                c.num_kv_heads,
                                hd,
                                session.kv_layout(),
                                h..end,
                                &mut sc,
                                o,
                            );
                        }
                        h = end;
                    }
                    t0 += n;
                }
            });
        });
    }
}
