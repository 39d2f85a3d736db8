//! Speculative decoding without a draft model (`--draft ngram`, prompt lookup): the tokens that followed
//! the latest earlier occurrence of the context's last n tokens are proposed as the continuation, and one
//! batched forward pass over the sampled token and the proposal verifies them all.
//!
//! Each verified position is sampled by the sequence's own [`SeqDecoder`] from the logits the pass gives
//! there, with the same generator stream as plain decoding; a proposed token is kept only when the sample
//! equals it, and the first sample that differs is kept instead and ends the pass. So the output is the
//! one plain decoding gives, greedy or sampled with a seed, whenever the batched pass computes the same
//! logits as one token at a time (the packed kernels do, bit for bit: tests/draft.rs checks the text). With
//! a proposal fixed in advance (a point mass), this accept rule is standard speculative sampling: the
//! proposal is accepted with probability p(token), and a rejection samples from p with it removed.

use anyhow::bail;
use bitnet_model::{Backend, LogitsMode, Session};
use serde::Serialize;

use crate::decoder::{SeqDecoder, StopReason};

/// Prompt-lookup drafting: propose up to `max_tokens` tokens that followed the latest earlier match of the
/// context's last `max_ngram` tokens, else of fewer, down to `min_ngram`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramDraft {
    /// The longest suffix looked up.
    pub max_ngram: usize,
    /// The shortest suffix looked up.
    pub min_ngram: usize,
    /// The most tokens proposed per pass.
    pub max_tokens: usize,
}

impl Default for NgramDraft {
    fn default() -> NgramDraft {
        NgramDraft {
            max_ngram: 3,
            min_ngram: 2,
            max_tokens: 10,
        }
    }
}

/// How drafting went for one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DraftStats {
    /// Forward passes after the prompt (each feeds one sampled token and its proposal).
    pub passes: usize,
    /// Tokens proposed.
    pub proposed: usize,
    /// Proposed tokens the model agreed with.
    pub accepted: usize,
}

impl NgramDraft {
    /// Refuses settings that cannot draft.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.min_ngram == 0 {
            bail!("--draft-min-ngram must be at least 1");
        }
        if self.max_ngram < self.min_ngram {
            bail!(
                "--draft-ngram {} is less than --draft-min-ngram {}",
                self.max_ngram,
                self.min_ngram
            );
        }
        if self.max_tokens == 0 {
            bail!("--draft-max must be at least 1");
        }
        Ok(())
    }

    /// Into `out`: up to `limit` (and `max_tokens`) tokens that followed the latest earlier occurrence of
    /// the longest suffix of `history` found, `max_ngram` tokens long down to `min_ngram`; empty if none.
    pub fn propose(&self, history: &[u32], limit: usize, out: &mut Vec<u32>) {
        out.clear();
        let limit = limit.min(self.max_tokens);
        let len = history.len();
        if limit == 0 {
            return;
        }
        for n in (self.min_ngram..=self.max_ngram).rev() {
            if len <= n {
                continue;
            }
            let suffix = &history[len - n..];
            // Latest start first; a match must end before the suffix does, so something follows it.
            if let Some(start) = (0..len - n).rev().find(|&i| &history[i..i + n] == suffix) {
                let from = start + n;
                out.extend_from_slice(&history[from..(from + limit).min(len)]);
                return;
            }
        }
    }
}

/// What [`decode`] returns: why generation ended and the drafting figures.
pub struct Drafted {
    /// Why it ended.
    pub stop: StopReason,
    /// Passes, proposed and accepted tokens.
    pub stats: DraftStats,
}

/// The decoding loop of [`crate::Engine::generate_on`] with drafting: `logits` are the prompt's last,
/// `cached` the ids in the session's cache.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    draft: &NgramDraft,
    backend: &dyn Backend,
    session: &mut Session,
    cached: &mut Vec<u32>,
    dec: &mut SeqDecoder<'_>,
    mut logits: Vec<f32>,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    on_first: &mut dyn FnMut(),
) -> anyhow::Result<Drafted> {
    let vocab = backend.config().vocab_size;
    let mut stats = DraftStats::default();
    let mut proposal = Vec::new();
    let mut feed = Vec::new();
    let mut first = true;
    'sample: loop {
        if cancelled() {
            emit(&dec.cancel()?)?;
            return Ok(Drafted {
                stop: StopReason::Cancelled,
                stats,
            });
        }
        let step = dec.next(&logits, cached, session.pos < session.max_ctx)?;
        if std::mem::take(&mut first) {
            on_first();
        }
        emit(&step.text)?;
        let mut next = match (step.stop, step.token) {
            (Some(stop), _) => return Ok(Drafted { stop, stats }),
            (None, Some(next)) => next,
            (None, None) => bail!("a step without a stop has a token to feed"),
        };
        'verify: loop {
            // Room for `next` and the proposal in the context, and no more than can still be sampled.
            let room = session.max_ctx.saturating_sub(session.pos + 1);
            let left = dec.remaining();
            feed.clear();
            feed.extend_from_slice(cached);
            feed.push(next);
            draft.propose(&feed, room.min(left), &mut proposal);
            feed.clear();
            feed.push(next);
            feed.extend_from_slice(&proposal);
            stats.passes += 1;
            stats.proposed += proposal.len();
            if proposal.is_empty() {
                backend.forward_logits(session, &feed, &mut logits)?;
                cached.push(next);
                continue 'sample;
            }
            let all = backend
                .forward(session, &feed, LogitsMode::All, None)?
                .logits;
            cached.push(next);
            for (j, &proposed) in proposal.iter().enumerate() {
                if cancelled() {
                    session.truncate(cached.len());
                    emit(&dec.cancel()?)?;
                    return Ok(Drafted {
                        stop: StopReason::Cancelled,
                        stats,
                    });
                }
                let row = &all[j * vocab..(j + 1) * vocab];
                let step = dec.next(row, cached, cached.len() < session.max_ctx)?;
                emit(&step.text)?;
                match (step.stop, step.token) {
                    (Some(stop), _) => {
                        session.truncate(cached.len());
                        return Ok(Drafted { stop, stats });
                    }
                    (None, Some(t)) if t == proposed => {
                        cached.push(t);
                        stats.accepted += 1;
                    }
                    (None, Some(t)) => {
                        // The sample differs: the positions past it in the cache are wrong.
                        session.truncate(cached.len());
                        next = t;
                        continue 'verify;
                    }
                    (None, None) => bail!("a step without a stop has a token to feed"),
                }
            }
            let k = proposal.len();
            logits.clear();
            logits.extend_from_slice(&all[k * vocab..(k + 1) * vocab]);
            continue 'sample;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(d: &NgramDraft, history: &[u32], limit: usize) -> Vec<u32> {
        let mut out = vec![99];
        d.propose(history, limit, &mut out);
        out
    }

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_suffix() {
        let d = NgramDraft::default();
        // Suffix [1, 2, 3] occurs at 0 and at 5: the latest (5) wins, its continuation is [9, 1, 2, 3].
        let h = [1, 2, 3, 4, 4, 1, 2, 3, 9, 1, 2, 3];
        assert_eq!(propose(&d, &h, 100), vec![9, 1, 2, 3]);
        assert_eq!(propose(&d, &h, 2), vec![9, 1]);
        // No 3-gram match, a 2-gram one: [7, 8] at 0.
        assert_eq!(propose(&d, &[7, 8, 5, 6, 7, 8], 100), vec![5, 6, 7, 8]);
        // Too short, no match, or no room: nothing.
        assert_eq!(propose(&d, &[7, 8], 100), Vec::<u32>::new());
        assert_eq!(propose(&d, &[1, 2, 3, 4, 5, 6], 100), Vec::<u32>::new());
        assert_eq!(propose(&d, &h, 0), Vec::<u32>::new());
        // max_tokens caps the proposal.
        let short = NgramDraft { max_tokens: 1, ..d };
        assert_eq!(propose(&short, &h, 100), vec![9]);
        // A suffix that overlaps its own match: [5, 5] in [5, 5, 5] is at 0, followed by 5.
        assert_eq!(propose(&d, &[5, 5, 5], 100), vec![5]);
    }

    #[test]
    fn refuses_settings_that_cannot_draft() {
        let d = NgramDraft::default();
        for (bad, flag) in [
            (NgramDraft { min_ngram: 0, ..d }, "--draft-min-ngram"),
            (
                NgramDraft {
                    max_ngram: 1,
                    min_ngram: 2,
                    ..d
                },
                "--draft-ngram 1",
            ),
            (NgramDraft { max_tokens: 0, ..d }, "--draft-max"),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        d.validate().unwrap();
    }
}
