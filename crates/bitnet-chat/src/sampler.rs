//! Choosing the next token from the model's logits.
//!
//! [`SamplingParams`] holds the knobs (checked by [`SamplingParams::validate`]); [`Sampler`] applies them
//! to one vector of logits at a time, in the order Hugging Face's `generate` does:
//!
//! 1. repetition penalty (for every id already in the context, once per id: `logit / penalty` if the
//!    logit is positive, `logit * penalty` otherwise); then OpenAI's presence and frequency penalties
//!    over the tokens this sampler drew (`logit - count * frequency - (count > 0) * presence`), then
//!    `logit_bias` added; [`Sampler::sample_with_logprobs`] reports log-probabilities here, the
//!    log-softmax of these logits (before temperature and truncation, as OpenAI and vLLM do);
//! 2. temperature 0: greedy, the argmax (the lowest id on ties). Otherwise:
//! 3. temperature (`logit / T`), softmax;
//! 4. top-k (`0` = off), top-p (the smallest set of most likely tokens whose mass reaches `top_p`, at
//!    least one), min-p (drop tokens less likely than `min_p` times the most likely one);
//! 5. a draw from what is left, renormalized, with a SplitMix64 generator (rand_xoshiro) seeded by
//!    [`SamplingParams::seed`].
//!
//! Everything is defined exactly, so the same seed draws the same tokens on every machine, whatever
//! order a selection algorithm leaves things in:
//!
//! - candidates are ordered by (probability descending, id ascending), a total order, so ties go to
//!   the lower id;
//! - probabilities are fixed-point integers (`e^((l - max) / T)` times 2^52, from an `exp` written with
//!   IEEE-754 additions and multiplications only, not the platform's libm), whose sums are exact in any
//!   order;
//! - the draw is an integer in `[0, kept mass)` and walks the kept tokens in id order.
//!
//! Nothing sorts the 128k vocabulary: top-k is a bounded heap (or a selection for large k), top-p a
//! pass over power-of-two buckets of mass and a selection inside one bucket, and the draw a linear
//! scan. The sampler reuses its buffers, so after the first call it does not allocate.

use rand_xoshiro::SplitMix64;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use std::collections::BinaryHeap;

use crate::{ChatError, Result};

/// SplitMix64 (Steele, Lea, Flood 2014; rand_xoshiro's): tiny, fast, and the same sequence everywhere,
/// seeded with the seed itself as its state.
fn splitmix64(seed: u64) -> SplitMix64 {
    SplitMix64::seed_from_u64(seed)
}

/// Uniform in `[0, 1)` with 53 random bits.
#[cfg(test)]
fn next_f64(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `1/k!` for `k = 0..=10`, computed at compile time with IEEE-754 division.
const INV_FACTORIAL: [f64; 11] = {
    let mut c = [1.0; 11];
    let mut k = 1;
    while k < 11 {
        c[k] = c[k - 1] / k as f64;
        k += 1;
    }
    c
};

/// 2^52: adding it to a number in `[0, 2^52)` leaves the number, rounded to an integer, in the low
/// mantissa bits.
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `e^x` for `x <= 0` (clamped at -104, where it is below 2^-150) from IEEE-754 binary64 additions and
/// multiplications only: no libm, whose last bit varies between platforms, and no conversion
/// instruction, so the compiler can vectorize it and every machine computes the same bits.
/// `x = k ln 2 + r` with `|r| <= ln 2 / 2` (k rounded with the 1.5 * 2^52 trick), Estrin's scheme for
/// the degree-10 Taylor polynomial of `e^r` (relative error below 1e-12), then the exponent bits of
/// `2^-k`.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    // ln 2 split as in fdlibm: the high part has trailing zero bits, so k * LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    const ROUND: f64 = 1.5 * TWO_52;
    // Written so that NaN (which cannot reach here: logits and temperature are checked) clamps too.
    let x = if x >= -104.0 { x } else { -104.0 };
    let t = -x * std::f64::consts::LOG2_E + ROUND;
    let kf = t - ROUND; // -x / ln 2 rounded to the nearest integer, in [0, 151]
    let k = t.to_bits() & 0xFF;
    let r = (x + kf * LN2_HI) + kf * LN2_LO;
    let c = &INV_FACTORIAL;
    let (r2, r4) = (r * r, r * r * (r * r));
    let r8 = r4 * r4;
    let q0 = (c[0] + c[1] * r) + (c[2] + c[3] * r) * r2;
    let q1 = (c[4] + c[5] * r) + (c[6] + c[7] * r) * r2;
    let q2 = (c[8] + c[9] * r) + c[10] * r2;
    let poly = (q0 + q1 * r4) + q2 * r8;
    // k <= 151: no wrap; wrapping ops keep overflow checks (debug builds) out of the vectorized loop.
    poly * f64::from_bits(1023u64.wrapping_sub(k) << 52)
}

/// Fixed-point weight of a token: `e^x * 2^52` rounded to an integer (x = (l - max) / T <= 0), so the
/// most likely token weighs exactly 2^52 and tokens below 2^-53 of it weigh 0. Integer sums are exact
/// and do not depend on the order of the terms, so which tokens top-p keeps and which token a draw
/// picks are defined exactly, whatever order selection leaves the candidates in.
#[inline(always)]
fn weight(x: f64) -> u64 {
    (exp_nonpositive(x) * TWO_52 + TWO_52)
        .to_bits()
        .wrapping_sub(TWO_52.to_bits())
}

/// The weight of the most likely token.
const WEIGHT_ONE: u64 = 1 << 52;

/// A candidate token: its weight and its id. Ordered by [`order`]: "less" is "more likely".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    w: u64,
    id: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Candidate) -> std::cmp::Ordering {
        order(self, other)
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Candidate) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The candidate order: weight descending, then id ascending. A total order, so the set of the `n`
/// first candidates is unique, whatever algorithm finds it.
fn order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.w.cmp(&a.w).then(a.id.cmp(&b.id))
}

/// The weight of every token into `weights` (vectorizable), the tokens with a non-zero weight into
/// `cands`. False if every logit is `-inf`.
fn fill_weights(
    weights: &mut Vec<u64>,
    cands: &mut Vec<Candidate>,
    logits: &[f32],
    temperature: f32,
) -> bool {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return false;
    }
    let (max, inv_t) = (f64::from(max), 1.0 / f64::from(temperature));
    weights.clear();
    weights.extend(logits.iter().map(|&l| weight((f64::from(l) - max) * inv_t)));
    cands.clear();
    cands.extend(
        weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(id, &w)| Candidate { w, id: id as u32 }),
    );
    true
}

/// Keeps the `k` first candidates (a set, in no particular order). Small `k` (the usual 20 to 100)
/// goes through a bounded heap in one pass, which rejects almost every token with one comparison;
/// large `k` through selection.
fn keep_top_k(work: &mut Vec<Candidate>, heap: &mut BinaryHeap<Candidate>, k: usize) {
    if k == 0 || k >= work.len() {
        return;
    }
    if k > 1024 {
        work.select_nth_unstable_by(k - 1, order);
        work.truncate(k);
        return;
    }
    // A max-heap under `order`: its top is the least likely of the k best so far.
    heap.clear();
    for &c in work.iter() {
        if heap.len() < k {
            heap.push(c);
        } else if let Some(mut worst) = heap.peek_mut()
            && c < *worst
        {
            *worst = c;
        }
    }
    work.clear();
    work.extend(heap.drain());
}

fn mass(cands: &[Candidate]) -> u128 {
    cands.iter().map(|c| u128::from(c.w)).sum()
}

/// The power-of-two bucket of a non-zero weight: `floor(log2 w)`.
fn bucket(w: u64) -> usize {
    63 - w.leading_zeros() as usize
}

/// Keeps the candidates, in candidate order, while the mass before them is below `target`; always the
/// first. This is transformers' `TopPLogitsWarper` (it drops a token when the mass from the least likely
/// up to it is at most `1 - top_p`). No full sort: one pass sums the mass per power-of-two bucket of
/// weight, which settles every bucket but the one where the mass crosses `target`; quickselect on
/// exact integer masses settles that one.
fn keep_nucleus(work: &mut Vec<Candidate>, target: u128) {
    let mut buckets = [0u128; 64];
    for c in work.iter() {
        buckets[bucket(c.w)] += u128::from(c.w);
    }
    let mut above = 0u128;
    let Some(cross) = (0..64).rev().find(|&b| {
        let reached = buckets[b] > 0 && above + buckets[b] >= target;
        if !reached {
            above += buckets[b];
        }
        reached
    }) else {
        return; // rounding put the target above the total: everything is kept
    };
    // Buckets above `cross` are kept, those below dropped; `cross` itself goes last.
    work.retain(|c| bucket(c.w) >= cross);
    let mut lo = 0;
    for j in 0..work.len() {
        if bucket(work[j].w) > cross {
            work.swap(lo, j);
            lo += 1;
        }
    }
    // work[..lo] is kept and precedes work[lo..hi]; work[hi..] is dropped; `before` = mass(work[..lo]).
    let (mut hi, mut before) = (work.len(), above);
    while hi - lo > 32 {
        let region = &mut work[lo..hi];
        let m = region.len() / 2;
        region.select_nth_unstable_by(m, order);
        let upper = before + mass(&region[..m]);
        if upper < target {
            // The pivot (and everything before it) has less than `target` before it: kept.
            before = upper + u128::from(region[m].w);
            lo += m + 1;
        } else {
            hi = lo + m;
        }
    }
    work[lo..hi].sort_unstable_by(order);
    let mut end = hi;
    for (i, c) in work[lo..hi].iter().enumerate() {
        if lo + i > 0 && before >= target {
            end = lo + i;
            break;
        }
        before += u128::from(c.w);
    }
    work.truncate(end);
}

/// Picks next-token ids from logits. Holds the random generator's state, so one sampler serves one
/// generation from start to end.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Logits after the penalties and biases (reused).
    penalized: Vec<f32>,
    /// Logits after a constraint's mask (reused).
    masked: Vec<f32>,
    /// How many times this sampler drew each token (for the presence and frequency penalties).
    drawn: std::collections::HashMap<u32, u32>,
    /// The weight of every token, by id (reused).
    weights: Vec<u64>,
    /// The candidates that survive truncation, in whatever order selection leaves them (reused).
    work: Vec<Candidate>,
    /// Top-k's heap (reused).
    heap: BinaryHeap<Candidate>,
}

impl Sampler {
    /// A sampler with validated `params`, its generator seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            rng: splitmix64(params.seed),
            params,
            penalized: Vec::new(),
            masked: Vec::new(),
            drawn: std::collections::HashMap::new(),
            weights: Vec::new(),
            work: Vec::new(),
            heap: BinaryHeap::new(),
        })
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token id for `logits` (one per vocabulary entry), given the `context` ids so far (the
    /// prompt and what was generated; the repetition penalty reads them). `-inf` logits are never
    /// picked; NaN or `+inf` logits, or a context id outside the logits, are errors.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Result<u32> {
        Ok(self.sample_with_logprobs(logits, context, None)?.0)
    }

    /// [`Sampler::sample`], and with `top = Some(k)` the drawn token's log-probability and the `k` most
    /// likely tokens' (the log-softmax of the logits after penalties and biases, before temperature).
    pub fn sample_with_logprobs(
        &mut self,
        logits: &[f32],
        context: &[u32],
        top: Option<usize>,
    ) -> Result<(u32, Option<TokenLogprobs>)> {
        let len = logits.len();
        if len == 0 {
            return Err(ChatError::EmptyLogits);
        }
        if let Some((index, &value)) = logits
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
        {
            return Err(ChatError::BadLogit { index, len, value });
        }
        if let Some(&(id, _)) = self
            .params
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= len)
        {
            return Err(ChatError::TokenOutOfRange { id, len });
        }
        let penalty = self.params.repetition_penalty;
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        let adjusts = (presence != 0.0 || frequency != 0.0) && !self.drawn.is_empty();
        let adjusted = (penalty != 1.0 && !context.is_empty())
            || adjusts
            || !self.params.logit_bias.is_empty();
        // The buffer is taken out of `self` while `draw` borrows it mutably.
        let mut buf = std::mem::take(&mut self.penalized);
        if adjusted {
            buf.clear();
            buf.extend_from_slice(logits);
            if penalty != 1.0 {
                for &id in context {
                    // From the original logit, so an id seen twice is penalized once.
                    let l = *logits
                        .get(id as usize)
                        .ok_or(ChatError::TokenOutOfRange { id, len })?;
                    buf[id as usize] = if l > 0.0 { l / penalty } else { l * penalty };
                }
            }
            if adjusts {
                for (&id, &count) in &self.drawn {
                    if let Some(l) = buf.get_mut(id as usize) {
                        *l -= count as f32 * frequency + presence;
                    }
                }
            }
            for &(id, bias) in &self.params.logit_bias {
                buf[id as usize] += bias;
            }
        }
        let logits = if adjusted { &buf[..] } else { logits };
        let drawn = self.draw(logits);
        let lp = match (&drawn, top) {
            (Ok(id), Some(k)) => Some(logprobs::of(logits, *id, k)),
            _ => None,
        };
        self.penalized = buf;
        let id = drawn?;
        *self.drawn.entry(id).or_insert(0) += 1;
        Ok((id, lp))
    }

    /// A draw from adjusted `logits`: greedy, or temperature, truncation and the seeded generator.
    fn draw(&mut self, logits: &[f32]) -> Result<u32> {
        let len = logits.len();
        // A temperature so small that 1/T overflows is greedy too.
        if self.params.temperature == 0.0 || !(1.0 / f64::from(self.params.temperature)).is_finite()
        {
            return argmax(logits).ok_or(ChatError::NoCandidates { len });
        }

        let work = &mut self.work;
        if !fill_weights(&mut self.weights, work, logits, self.params.temperature) {
            return Err(ChatError::NoCandidates { len });
        }

        // Truncation: each step keeps a prefix of the candidate order, so `work` always holds one.
        let mut truncated = false;
        let k = self.params.top_k;
        if k > 0 && k < work.len() {
            keep_top_k(work, &mut self.heap, k);
            truncated = true;
        }
        if self.params.top_p < 1.0 {
            let total = mass(work);
            let target = (total as f64 * f64::from(self.params.top_p)) as u128;
            let before = work.len();
            keep_nucleus(work, target);
            truncated |= work.len() < before;
        }
        if self.params.min_p > 0.0 {
            // Relative to the most likely token, whose weight is exactly WEIGHT_ONE.
            let threshold = f64::from(self.params.min_p) * WEIGHT_ONE as f64;
            let before = work.len();
            work.retain(|c| c.w as f64 >= threshold);
            truncated |= work.len() < before;
        }

        // The draw: an exact integer in [0, kept mass), then the kept tokens in id order.
        let kept = mass(work);
        let u = scale_to(self.rng.next_u64(), kept);
        let last = work.iter().copied().max_by(order);
        let is_kept = |c: &Candidate| !truncated || last.is_none_or(|b| order(c, &b).is_le());
        let mut cum = 0u128;
        for (id, &w) in self.weights.iter().enumerate() {
            let c = Candidate { w, id: id as u32 };
            if w > 0 && is_kept(&c) {
                cum += u128::from(w);
                if cum > u {
                    return Ok(c.id);
                }
            }
        }
        Err(ChatError::NoCandidates { len })
    }
}

impl Sampler {
    /// [`Sampler::sample`] among the ids set in `allowed` only (a bitset, see [`crate::constraint`]):
    /// the others' logits become `-inf` first. An empty set is an error naming the constraint.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        context: &[u32],
        allowed: &[u32],
    ) -> Result<u32> {
        Ok(self
            .sample_masked_with_logprobs(logits, context, allowed, None)?
            .0)
    }

    /// [`Sampler::sample_masked`] with [`Sampler::sample_with_logprobs`]' log-probabilities (of the
    /// masked logits).
    pub fn sample_masked_with_logprobs(
        &mut self,
        logits: &[f32],
        context: &[u32],
        allowed: &[u32],
        top: Option<usize>,
    ) -> Result<(u32, Option<TokenLogprobs>)> {
        let mut masked = std::mem::take(&mut self.masked);
        masked.clear();
        masked.extend_from_slice(logits);
        crate::constraint::mask_logits(&mut masked, allowed);
        let id = if masked.iter().all(|&l| l == f32::NEG_INFINITY) {
            Err(ChatError::Constraint(format!(
                "the constraint allows none of the {} tokens",
                logits.len()
            )))
        } else {
            self.sample_with_logprobs(&masked, context, top)
        };
        self.masked = masked;
        id
    }
}

/// `floor(r * n / 2^64)`: a uniform 64-bit `r` mapped onto `[0, n)`, exactly, for any `n < 2^128`.
fn scale_to(r: u64, n: u128) -> u128 {
    let (hi, lo) = (n >> 64, n & u128::from(u64::MAX));
    u128::from(r) * hi + ((u128::from(r) * lo) >> 64)
}

/// The first index of the largest value; `None` if every value is `-inf`.
fn argmax(values: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v > f32::NEG_INFINITY && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

mod logprobs;
mod params;
#[cfg(test)]
mod tests;

pub use logprobs::TokenLogprobs;
pub use params::SamplingParams;
