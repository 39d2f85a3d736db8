//! The rescored LM head: the int8 head scores every row, then every row whose exact logit could still be
//! the largest (SPEC.md 6.2's bound, [`bitnet_kernels::rescore`]) is recomputed from the exact head's
//! rows. The greedy token is the exact head's; the rescored rows' logits are exact, the rest the int8
//! head's.

use std::sync::atomic::{AtomicU64, Ordering};

use bitnet_format::TensorKind;
use bitnet_kernels::pool::SharedMut;
use bitnet_kernels::rescore::{HeadBound, candidates};
use bitnet_kernels::{Bf16Matrix, Pool, pad16, scalar};

use super::PackedModel;
use crate::error::{ModelError, Result};
use crate::session::HeadScratch;

/// Below this many candidate rows a token's rescoring stays on the calling thread (a trained model has a
/// handful); above it the pool's threads share them (a model with flat logits can have thousands).
pub(super) const PARALLEL_ROWS: usize = 256;

/// How much exact work the rescored head has done since load.
#[derive(Debug, Default)]
pub(super) struct RescoreCounter {
    tokens: AtomicU64,
    rows: AtomicU64,
}

/// Tokens scored by the rescored head and rows it recomputed exactly, since the model was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescoreStats {
    /// Token positions whose logits went through the rescored head.
    pub tokens: u64,
    /// Vocabulary rows recomputed exactly, over all of them.
    pub rows: u64,
}

impl RescoreStats {
    /// Rows recomputed per token (0 before any).
    pub fn rows_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.rows as f64 / self.tokens as f64
        }
    }
}

impl PackedModel {
    /// Replaces the int8 logits of every candidate row of every token (`hidden` `[m, hidden]`, `logits`
    /// `[m, vocab]`, `head.quantized` the int8 head's inputs of the same tokens) by the exact head's.
    pub(super) fn rescore(
        &self,
        hidden: &[f32],
        head: &mut HeadScratch,
        logits: &mut [f32],
    ) -> Result<()> {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        let (int8, exact) = match (&self.int8_head, &self.exact_head) {
            (Some(i), Some(e)) => (i, e),
            _ => {
                return Err(ModelError::MissingTensor(
                    "the rescored head needs both an int8 and an exact LM head".into(),
                ));
            }
        };
        let bytes = self.file.bytes();
        let scales = &bytes[int8.clone()][pad16(v) * pad16(h)..];
        let data = &bytes[exact.range.clone()];
        let bm = Bf16Matrix {
            data,
            rows: exact.rows,
            cols: exact.cols,
        };
        let mut rows = 0u64;
        for ((x, bq), out) in hidden
            .chunks_exact(h)
            .zip(&head.quantized)
            .zip(logits.chunks_exact_mut(v))
        {
            let bound = HeadBound::new(x, bq);
            candidates(out, scales, &bound, &mut head.candidates);
            let cands = &head.candidates;
            head.exact.resize(cands.len(), 0.0);
            // Each candidate's exact logit, over runs of consecutive rows (one kernel call per run).
            let rows_of = |part: &[u32], o: &mut [f32]| {
                let mut i = 0;
                while i < part.len() {
                    let start = part[i] as usize;
                    let mut n = 1;
                    while i + n < part.len() && part[i + n] as usize == start + n {
                        n += 1;
                    }
                    let (rows, o) = (start..start + n, &mut o[i..i + n]);
                    match exact.kind {
                        TensorKind::Bf16 => (self.kernels.bf16)(&bm, x, rows, o),
                        _ => scalar::f32_matvec(data, exact.cols, x, rows, o),
                    }
                    i += n;
                }
            };
            let threads = self.pool.threads();
            if cands.len() < self.rescore_parallel_rows || threads == 1 {
                rows_of(cands, &mut head.exact);
            } else {
                let shared = SharedMut::new(&mut head.exact);
                self.pool.run(&|tid| {
                    let part = Pool::split(cands.len(), threads, tid, 1);
                    // SAFETY: `split` gives each thread its own disjoint part of the candidates.
                    let o = unsafe { shared.range(part.clone()) };
                    rows_of(&cands[part], o);
                });
            }
            for (&r, &e) in cands.iter().zip(&head.exact) {
                out[r as usize] = e;
            }
            rows += cands.len() as u64;
        }
        let c = &self.rescore_counter;
        c.tokens
            .fetch_add((hidden.len() / h) as u64, Ordering::Relaxed);
        c.rows.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Shares every token's rescoring between the pool's threads, however few its candidates (tests).
    #[cfg(test)]
    pub(crate) fn rescore_on_the_pool_always(&mut self) {
        self.rescore_parallel_rows = 1;
    }

    /// Tokens scored by the rescored head and rows it recomputed exactly, since load.
    pub fn rescore_stats(&self) -> RescoreStats {
        RescoreStats {
            tokens: self.rescore_counter.tokens.load(Ordering::Relaxed),
            rows: self.rescore_counter.rows.load(Ordering::Relaxed),
        }
    }
}
