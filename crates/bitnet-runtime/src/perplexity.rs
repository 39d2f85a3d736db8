//! Perplexity: how well the model predicts a text, the way llama.cpp's `llama-perplexity` compares
//! quantizations, so the quality cost of an LM head is one call.
//!
//! Definition (the one `fixtures/train_demo.py` computes with transformers for the oracle): the text's
//! tokens without BOS are cut into consecutive chunks of `ctx - 1` tokens; each chunk is run with BOS in
//! front; every position predicts the next token (BOS predicts the chunk's first token, the chunk's last
//! token predicts nothing); perplexity = exp(mean negative log-likelihood over every scored token), the
//! log-softmax and the sums in f64. A model without a BOS token runs chunks of `ctx` tokens whose first
//! token is context only.

use bitnet_model::{Backend, LogitsMode};

/// `-log softmax(logits)[target]` in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

/// The chunks to run: each is the model's input; every position after the first is scored.
pub fn chunks(ids: &[u32], bos: Option<u32>, ctx: usize) -> Vec<Vec<u32>> {
    match bos {
        Some(b) => ids
            .chunks(ctx - 1)
            .map(|c| std::iter::once(b).chain(c.iter().copied()).collect())
            .collect(),
        None => ids.chunks(ctx).map(<[u32]>::to_vec).collect(),
    }
}

/// Sums of one scoring pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// The sum of the scored tokens' negative log-likelihoods.
    pub total_nll: f64,
    /// How many tokens were scored.
    pub scored: usize,
}

impl Score {
    /// The mean negative log-likelihood.
    pub fn mean_nll(&self) -> f64 {
        self.total_nll / self.scored as f64
    }

    /// exp(mean NLL).
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// Scores `chunks` (from [`chunks`]) on `model`, calling `progress` with each chunk's length when done.
pub fn score(
    model: &dyn Backend,
    chunks: &[Vec<u32>],
    vocab: usize,
    progress: &mut dyn FnMut(usize),
) -> anyhow::Result<Score> {
    let mut s = Score::default();
    for chunk in chunks {
        let mut session = model.session(chunk.len());
        let out = model.forward(&mut session, chunk, LogitsMode::All, None)?;
        for (pos, target) in chunk.iter().enumerate().skip(1) {
            s.total_nll += nll(
                &out.logits[(pos - 1) * vocab..pos * vocab],
                *target as usize,
            );
            s.scored += 1;
        }
        progress(chunk.len());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((nll(&l, 0) - (z.ln() - 1.0)).abs() < 1e-12);
        assert!((nll(&l, 2) - (z.ln() - 3.0)).abs() < 1e-12);
    }

    #[test]
    fn chunks_put_bos_in_front_of_ctx_minus_one_tokens() {
        let ids: Vec<u32> = (10..17).collect();
        assert_eq!(
            chunks(&ids, Some(1), 4),
            vec![vec![1, 10, 11, 12], vec![1, 13, 14, 15], vec![1, 16]]
        );
        assert_eq!(
            chunks(&ids, None, 4),
            vec![vec![10, 11, 12, 13], vec![14, 15, 16]]
        );
    }
}
