//! The per-sequence half of generation: sampling, end-of-turn ids, stop strings and streaming text.

use anyhow::bail;
use bitnet_chat::{
    Detokenizer, Sampler, SamplingParams, StopMatcher, TokenConstraint, TokenLogprobs, allows_only,
};
use bitnet_model::Session;
use serde::Serialize;

use crate::engine::Engine;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-text or end-of-turn token.
    Eos,
    /// A stop string appeared.
    StopString,
    /// The most tokens asked for were generated.
    Length,
    /// The context is full.
    Context,
    /// The caller cancelled (Ctrl-C, a client that left).
    Cancelled,
}

impl StopReason {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::Length => "length",
            StopReason::Context => "context",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Keeps the longest prefix `ids` shares with the session's cache (`cached`), but never all of `ids`:
/// the last prompt token must run to give logits. Returns how many positions were kept.
pub fn reuse_prefix(session: &mut Session, cached: &mut Vec<u32>, ids: &[u32]) -> usize {
    let common = cached
        .iter()
        .zip(ids)
        .take_while(|(a, b)| a == b)
        .count()
        .min(ids.len().saturating_sub(1));
    session.truncate(common);
    cached.truncate(common);
    common
}

/// What one [`SeqDecoder::next`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Text to show now (may be empty while a stop string or a UTF-8 sequence is pending).
    pub text: String,
    /// The sampled token to feed to the model next, if generation goes on.
    pub token: Option<u32>,
    /// Why generation ended, if it did (then `text` includes everything held back).
    pub stop: Option<StopReason>,
    /// With [`SeqDecoder::with_logprobs`]: the log-probabilities of the token sampled in this step (none
    /// for an end-of-turn id, which is not part of the output).
    pub logprobs: Option<TokenLogprobs>,
}

/// The per-sequence half of generation: sampling, end-of-turn ids, stop strings and detokenization, fed
/// one set of logits at a time. `run`, `chat` and `serve` share it, so a sequence gives the same text
/// whichever of them drives it. With a [`TokenConstraint`] ([`SeqDecoder::with_constraint`]), only the
/// ids it allows are sampled, and the sequence ends when the constraint allows nothing but end-of-text.
pub struct SeqDecoder<'e> {
    sampler: Sampler,
    constraint: Option<Box<dyn TokenConstraint + 'e>>,
    stops: StopMatcher,
    detok: Detokenizer<'e>,
    stop_ids: &'e [u32],
    max_tokens: usize,
    ids: Vec<u32>,
    text: String,
    done: bool,
    top_logprobs: Option<usize>,
}

impl<'e> SeqDecoder<'e> {
    /// A decoder for one sequence of `engine` sampling with `params`, stopping at `stops` too.
    pub fn new(
        engine: &'e Engine,
        params: &SamplingParams,
        stops: &[String],
    ) -> anyhow::Result<SeqDecoder<'e>> {
        Ok(SeqDecoder {
            sampler: Sampler::new(params.clone())?,
            constraint: None,
            stops: StopMatcher::new(stops)?,
            detok: Detokenizer::skipping_special(&engine.tokenizer),
            stop_ids: &engine.stop_ids,
            max_tokens: params.max_tokens,
            ids: Vec::new(),
            text: String::new(),
            done: false,
            top_logprobs: None,
        })
    }

    /// Samples only what `constraint` allows from now on.
    pub fn with_constraint(mut self, constraint: Box<dyn TokenConstraint + 'e>) -> SeqDecoder<'e> {
        self.constraint = Some(constraint);
        self
    }

    /// The next id: sampled from `logits`, or from the ids the constraint allows (`None`: the
    /// constraint is complete and allows only end-of-text, so the sequence ends).
    fn pick(
        &mut self,
        logits: &[f32],
        history: &[u32],
    ) -> anyhow::Result<Option<(u32, Option<TokenLogprobs>)>> {
        let top = self.top_logprobs;
        let Some(c) = self.constraint.as_mut() else {
            return Ok(Some(
                self.sampler.sample_with_logprobs(logits, history, top)?,
            ));
        };
        let allowed = c.allowed()?;
        if allows_only(allowed, self.stop_ids) {
            let accepting = c.is_accepting();
            if !accepting {
                bail!("constrained decoding: the grammar allows no token here and is not complete");
            }
            return Ok(None);
        }
        let (next, lp) = self
            .sampler
            .sample_masked_with_logprobs(logits, history, allowed, top)?;
        if !self.stop_ids.contains(&next) {
            c.commit(next)?;
        }
        Ok(Some((next, lp)))
    }

    /// Reports each sampled token's log-probability and the `top` most likely alternatives' in
    /// [`Step::logprobs`].
    pub fn with_logprobs(mut self, top: usize) -> SeqDecoder<'e> {
        self.top_logprobs = Some(top);
        self
    }

    /// Samples from `logits` (the model's output after `history`, the ids in context). `room` says whether
    /// the context has space for one more position.
    pub fn next(&mut self, logits: &[f32], history: &[u32], room: bool) -> anyhow::Result<Step> {
        if self.done {
            bail!("generation already ended");
        }
        if self.ids.len() >= self.max_tokens {
            return self.end(String::new(), StopReason::Length);
        }
        let Some((next, logprobs)) = self.pick(logits, history)? else {
            return self.end(String::new(), StopReason::Eos);
        };
        if self.stop_ids.contains(&next) {
            return self.end(String::new(), StopReason::Eos);
        }
        self.ids.push(next);
        let piece = self.stops.push(&self.detok.push(next)?);
        self.text.push_str(&piece.text);
        if piece.stop.is_some() {
            self.done = true;
            return Ok(Step {
                text: piece.text,
                token: None,
                stop: Some(StopReason::StopString),
                logprobs,
            });
        }
        if self.ids.len() == self.max_tokens {
            return Ok(Step {
                logprobs,
                ..self.end(piece.text, StopReason::Length)?
            });
        }
        if !room {
            return Ok(Step {
                logprobs,
                ..self.end(piece.text, StopReason::Context)?
            });
        }
        Ok(Step {
            text: piece.text,
            token: Some(next),
            stop: None,
            logprobs,
        })
    }

    /// Ends generation early (the client went away or pressed Ctrl-C): the text held back so far.
    pub fn cancel(&mut self) -> anyhow::Result<String> {
        if self.done {
            return Ok(String::new());
        }
        Ok(self.end(String::new(), StopReason::Cancelled)?.text)
    }

    /// Flushes what the detokenizer and the stop matcher hold back (a stop string may still appear in it).
    fn end(&mut self, mut text: String, reason: StopReason) -> anyhow::Result<Step> {
        self.done = true;
        let rest = self.stops.push(&self.detok.finish()?);
        let mut tail = rest.text;
        let reason = if rest.stop.is_some() {
            StopReason::StopString
        } else {
            tail.push_str(&self.stops.finish());
            reason
        };
        self.text.push_str(&tail);
        text.push_str(&tail);
        Ok(Step {
            text,
            token: None,
            stop: Some(reason),
            logprobs: None,
        })
    }

    /// How many more tokens may be sampled before the `max_tokens` limit.
    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.ids.len())
    }

    /// Tokens generated so far (end-of-turn ids excluded).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Text generated so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}
