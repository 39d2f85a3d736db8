//! Sampling settings a caller sets over the model's own defaults (its generation_config).

use bitnet_chat::SamplingParams;

/// What a caller overrides; `None` keeps the model's default.
#[derive(Debug, Clone, Default)]
pub struct SamplingOverrides {
    /// Temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: Option<usize>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this share of the most likely one.
    pub min_p: Option<f32>,
    /// Penalty for tokens already in the context (1: off).
    pub repetition_penalty: Option<f32>,
    /// The sampler's seed; default: a random one (reported in the output, so a run can be repeated).
    pub seed: Option<u64>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
}

impl SamplingOverrides {
    /// `defaults` with these overrides applied, validated.
    pub fn apply(&self, mut p: SamplingParams) -> anyhow::Result<SamplingParams> {
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(n) = self.max_tokens {
            p.max_tokens = n;
        }
        p.seed = match self.seed {
            Some(s) => s,
            None => random_seed()?,
        };
        p.validate()?;
        Ok(p)
    }
}

/// A seed from the operating system's random source.
pub fn random_seed() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("reading a random seed: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_and_none_keeps_them() {
        let defaults = SamplingParams {
            temperature: 0.6,
            top_p: 0.9,
            ..SamplingParams::default()
        };
        let p = SamplingOverrides {
            temperature: Some(0.0),
            seed: Some(7),
            ..Default::default()
        }
        .apply(defaults.clone())
        .unwrap();
        assert_eq!((p.temperature, p.top_p, p.seed), (0.0, 0.9, 7));
        let bad = SamplingOverrides {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(bad.apply(defaults).is_err());
    }
}
