//! The settings of one generation, validated before sampling starts.

use bitnet_format::GenerationDefaults;

use crate::{ChatError, Result};

/// Sampling settings for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy. Must be `>= 0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// Nucleus mass in `(0, 1]`; `1` turns it off.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in `[0, 1]`; `0` turns it off.
    pub min_p: f32,
    /// Penalty for ids already in the context, `> 0`; `1` turns it off.
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
    /// Most tokens to generate (read by the generation loop, not by the sampler).
    pub max_tokens: usize,
    /// OpenAI's presence penalty, in `[-2, 2]`: subtracted once from the logit of every token already
    /// drawn by this sampler; `0` turns it off.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in `[-2, 2]`: subtracted from a token's logit once per time this
    /// sampler drew it; `0` turns it off.
    pub frequency_penalty: f32,
    /// `(token id, bias)` pairs, bias in `[-100, 100]`, added to those logits.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    /// Plain sampling from the softmax: temperature 1, no truncation, no penalty, seed 0, 512 tokens.
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 512,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// The checkpoint's `generation_config.json` defaults over [`SamplingParams::default`];
    /// `do_sample: false` means greedy.
    pub fn from_generation_defaults(defaults: &GenerationDefaults) -> SamplingParams {
        let mut p = SamplingParams::default();
        if let Some(t) = defaults.temperature {
            p.temperature = t as f32;
        }
        if let Some(k) = defaults.top_k {
            p.top_k = usize::try_from(k).unwrap_or(usize::MAX);
        }
        if let Some(top_p) = defaults.top_p {
            p.top_p = top_p as f32;
        }
        if let Some(r) = defaults.repetition_penalty {
            p.repetition_penalty = r as f32;
        }
        if let Some(n) = defaults.max_new_tokens {
            p.max_tokens = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if defaults.do_sample == Some(false) {
            p.temperature = 0.0;
        }
        p
    }

    /// Checks every range; the error names the parameter, its value and what it must be.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: f32, expected| {
            Err(ChatError::InvalidSampling {
                name,
                value: value.to_string(),
                expected,
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1] (1 = off)");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "in [0, 1] (0 = off)");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite number > 0 (1 = off)",
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad(
                "presence_penalty",
                self.presence_penalty,
                "in [-2, 2] (0 = off)",
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad(
                "frequency_penalty",
                self.frequency_penalty,
                "in [-2, 2] (0 = off)",
            );
        }
        if let Some(&(_, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad("logit_bias", b, "in [-100, 100]");
        }
        Ok(())
    }
}
