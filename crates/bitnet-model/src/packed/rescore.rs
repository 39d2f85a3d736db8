//! The rescored LM head: the int8 head scores every row, then every row whose exact logit could still be
//! the largest (SPEC.md 6.2's bound, [`bitnet_kernels::rescore`]) is recomputed from the exact head's
//! rows. The greedy token is the exact head's; the rescored rows' logits are exact, the rest the int8
//! head's.

use std::sync::atomic::{AtomicU64, Ordering};

use bitnet_format::TensorKind;
use bitnet_kernels::rescore::{HeadBound, candidates};
use bitnet_kernels::{Bf16Matrix, pad16, scalar};

use super::PackedModel;
use crate::error::{ModelError, Result};
use crate::session::HeadScratch;

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
            for &r in &head.candidates {
                let r = r as usize;
                let o = &mut out[r..r + 1];
                match exact.kind {
                    TensorKind::Bf16 => (self.kernels.bf16)(&bm, x, r..r + 1, o),
                    _ => scalar::f32_matvec(data, exact.cols, x, r..r + 1, o),
                }
            }
            rows += head.candidates.len() as u64;
        }
        let c = &self.rescore_counter;
        c.tokens
            .fetch_add((hidden.len() / h) as u64, Ordering::Relaxed);
        c.rows.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Tokens scored by the rescored head and rows it recomputed exactly, since load.
    pub fn rescore_stats(&self) -> RescoreStats {
        RescoreStats {
            tokens: self.rescore_counter.tokens.load(Ordering::Relaxed),
            rows: self.rescore_counter.rows.load(Ordering::Relaxed),
        }
    }
}
