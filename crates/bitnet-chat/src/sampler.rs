//! Choosing the next token from the model's logits.
//!
//! [`SamplingParams`] holds the knobs (checked by [`SamplingParams::validate`]); [`Sampler`] applies them
//! to one vector of logits at a time, in the order Hugging Face's `generate` does:
//!
//! 1. repetition penalty (for every id already in the context, once per id: `logit / penalty` if the
//!    logit is positive, `logit * penalty` otherwise);
//! 2. temperature 0: greedy, the argmax (the lowest id on ties). Otherwise:
//! 3. temperature (`logit / T`), softmax;
//! 4. top-k (`0` = off), top-p (the smallest set of most likely tokens whose mass reaches `top_p`, at
//!    least one), min-p (drop tokens less likely than `min_p` times the most likely one);
//! 5. a draw from what is left, renormalized, with a hand-written SplitMix64 generator seeded by
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

use std::collections::BinaryHeap;

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
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[cfg(test)]
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
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
    /// Logits after the repetition penalty (reused).
    penalized: Vec<f32>,
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
            rng: SplitMix64(params.seed),
            params,
            penalized: Vec::new(),
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
        let penalty = self.params.repetition_penalty;
        let logits = if penalty != 1.0 && !context.is_empty() {
            self.penalized.clear();
            self.penalized.extend_from_slice(logits);
            for &id in context {
                // From the original logit, so an id seen twice is penalized once.
                let l = *logits
                    .get(id as usize)
                    .ok_or(ChatError::TokenOutOfRange { id, len })?;
                self.penalized[id as usize] = if l > 0.0 { l / penalty } else { l * penalty };
            }
            &self.penalized[..]
        } else {
            logits
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams::default();
        f(&mut p);
        Sampler::new(p).unwrap()
    }

    /// Pseudo-random logits of `n` tokens, reproducible.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 8.0 - 4.0) as f32)
            .collect()
    }

    fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = logits
            .iter()
            .map(|&l| ((f64::from(l) - f64::from(max)) / t).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|x| x / sum).collect()
    }

    /// The support of the sampler's distribution, by drawing many times.
    fn support(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<u32> {
        let mut seen: Vec<u32> = (0..draws).map(|_| s.sample(logits, &[]).unwrap()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    #[test]
    fn greedy_is_argmax_with_first_index_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        for seed in 0..50 {
            let l = logits(1000, seed);
            let want = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
            assert_eq!(s.sample(&l, &[]).unwrap() as usize, want);
        }
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]).unwrap(), 1);
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, -5.0, f32::NEG_INFINITY], &[])
                .unwrap(),
            1
        );
    }

    const PINNED: [u32; 16] = [
        28, 24, 11, 20, 28, 28, 24, 15, 24, 28, 6, 20, 28, 24, 30, 29,
    ];

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let run = |seed: u64| {
            let mut s = sampler(|p| {
                p.seed = seed;
                p.top_k = 40;
                p.top_p = 0.95;
                p.temperature = 0.9;
            });
            (0..200)
                .map(|i| s.sample(&logits(5000, i), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Pinned draws: the generator and the hand-written exp give these on every machine.
        let mut s = sampler(|p| p.seed = 1234);
        let l = logits(32, 99);
        let drawn: Vec<u32> = (0..16).map(|_| s.sample(&l, &[]).unwrap()).collect();
        assert_eq!(drawn, PINNED, "{drawn:?}");
    }

    #[test]
    fn splitmix64_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the algorithm's published C code).
        let mut r = SplitMix64(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
        let mut r = SplitMix64(0);
        for _ in 0..10_000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn handwritten_exp_is_accurate() {
        let mut x = 0.0f64;
        while x > -104.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 1e-12,
                "exp({x}) = {got}, want {want}"
            );
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-200.0) < 1e-45);
        assert!(exp_nonpositive(f64::NEG_INFINITY) < 1e-45);
        assert_eq!(weight(0.0), WEIGHT_ONE);
        assert_eq!(weight(-0.0), WEIGHT_ONE);
        assert_eq!(weight(-37.0), 0, "below 2^-53 of the top");
        assert!(weight(-36.0) > 0);
        assert_eq!(weight(f64::NEG_INFINITY), 0);
        assert_eq!(weight(f64::NAN), 0);
        assert_eq!(weight(-std::f64::consts::LN_2), WEIGHT_ONE / 2);
    }

    #[test]
    fn tiny_temperature_is_greedy() {
        let mut s = sampler(|p| p.temperature = f32::from_bits(1));
        let l = logits(1000, 3);
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&l, &[]).unwrap(), g.sample(&l, &[]).unwrap());
    }

    #[test]
    fn top_k_1_and_tiny_top_p_are_greedy() {
        let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut k1 = sampler(|p| p.top_k = 1);
        let mut p_tiny = sampler(|p| p.top_p = 1e-6);
        let mut min_p1 = sampler(|p| p.min_p = 1.0);
        for seed in 0..200 {
            let l = logits(2000, seed);
            let want = greedy.sample(&l, &[]).unwrap();
            assert_eq!(k1.sample(&l, &[]).unwrap(), want);
            assert_eq!(p_tiny.sample(&l, &[]).unwrap(), want);
            assert_eq!(min_p1.sample(&l, &[]).unwrap(), want);
        }
    }

    #[test]
    fn ties_are_broken_by_lowest_id() {
        let l = [0.0, 5.0, 5.0, 5.0, 1.0];
        let mut k1 = sampler(|p| p.top_k = 1);
        let mut k2 = sampler(|p| p.top_k = 2);
        assert_eq!(support(&mut k1, &l, 200), [1]);
        assert_eq!(support(&mut k2, &l, 500), [1, 2]);
    }

    #[test]
    fn top_k_top_p_min_p_keep_the_right_sets() {
        // Probabilities 0.5, 0.25, 0.125, 0.0625, ... (logits ln 2 apart), shuffled over ids.
        let ln2 = std::f32::consts::LN_2;
        let order = [3usize, 0, 5, 1, 4, 2];
        let mut l = [0f32; 6];
        for (rank, &id) in order.iter().enumerate() {
            l[id] = -(rank as f32) * ln2;
        }
        let sorted_ids = |n: usize| {
            let mut v: Vec<u32> = order[..n].iter().map(|&i| i as u32).collect();
            v.sort_unstable();
            v
        };
        let mut k3 = sampler(|p| p.top_k = 3);
        assert_eq!(support(&mut k3, &l, 2000), sorted_ids(3));
        // Masses before each rank: 0, .508, .762, .889, .952, .984 (of 63/32).
        let mut p = sampler(|p| p.top_p = 0.7);
        assert_eq!(support(&mut p, &l, 2000), sorted_ids(2));
        let mut p = sampler(|p| p.top_p = 0.8);
        assert_eq!(support(&mut p, &l, 2000), sorted_ids(3));
        let mut p = sampler(|p| p.top_p = 0.5);
        assert_eq!(support(&mut p, &l, 2000), sorted_ids(1));
        let mut p = sampler(|p| p.top_p = 0.51);
        assert_eq!(support(&mut p, &l, 2000), sorted_ids(2));
        // min_p 0.2: keep p >= 0.2 * p_max, i.e. ranks 0..=2 (1, 1/2, 1/4 of the top).
        let mut m = sampler(|p| p.min_p = 0.2);
        assert_eq!(support(&mut m, &l, 2000), sorted_ids(3));
        // All three: top_k 5, then top_p 0.9 keeps 3 (masses before: 0, .516, .774, .903), then
        // min_p 0.3 keeps 2.
        let mut all = sampler(|p| {
            p.top_k = 5;
            p.top_p = 0.9;
            p.min_p = 0.3;
        });
        assert_eq!(support(&mut all, &l, 2000), sorted_ids(2));
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut s = sampler(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        });
        // Positive logit divided: 2.0 -> 1.0 < 1.9.
        assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[0]).unwrap(), 1);
        // Negative logit multiplied: -1.0 -> -2.0 < -1.5; a repeated id is penalized once.
        assert_eq!(s.sample(&[-1.0, -1.5, -3.0], &[0, 0, 0]).unwrap(), 1);
        assert_eq!(s.sample(&[-1.0, -1.9, -3.0], &[0, 0, 0]).unwrap(), 1);
        assert_eq!(s.sample(&[-1.0, -2.1, -3.0], &[0, 0]).unwrap(), 0);
        // Without context nothing changes.
        assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[]).unwrap(), 0);
        let err = s.sample(&[1.0, 2.0], &[5]).unwrap_err();
        assert!(
            matches!(err, ChatError::TokenOutOfRange { id: 5, len: 2 }),
            "{err}"
        );
        // Penalty below 1 favors repeats.
        let mut s = sampler(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 0.5;
        });
        assert_eq!(s.sample(&[1.9, 1.0], &[1]).unwrap(), 1);
    }

    #[test]
    fn frequencies_follow_softmax() {
        let l = [1.0f32, 0.5, -0.5, 2.0, 0.0, -3.0, 1.5, f32::NEG_INFINITY];
        for t in [1.0f32, 0.7, 1.8] {
            let want = softmax(&l, f64::from(t));
            let mut s = sampler(|p| {
                p.temperature = t;
                p.seed = 2024;
            });
            let draws = 200_000;
            let mut counts = [0usize; 8];
            for _ in 0..draws {
                counts[s.sample(&l, &[]).unwrap() as usize] += 1;
            }
            assert_eq!(counts[7], 0, "a -inf logit is never drawn");
            for (i, (&c, &p)) in counts.iter().zip(&want).enumerate() {
                let freq = c as f64 / draws as f64;
                // 5 standard deviations of a binomial frequency.
                let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9;
                assert!(
                    (freq - p).abs() <= tol,
                    "T={t} token {i}: frequency {freq}, softmax {p}"
                );
            }
        }
    }

    #[test]
    fn top_p_renormalizes_over_the_nucleus() {
        let l = [2.0f32, 1.0, 0.0, -1.0];
        let full = softmax(&l, 1.0);
        // Nucleus of 0.8: tokens 0 and 1 (masses before: 0, .64, .88).
        let mut s = sampler(|p| {
            p.top_p = 0.8;
            p.seed = 9;
        });
        let draws = 100_000;
        let mut c0 = 0;
        for _ in 0..draws {
            match s.sample(&l, &[]).unwrap() {
                0 => c0 += 1,
                1 => {}
                other => panic!("token {other} is outside the nucleus"),
            }
        }
        let want = full[0] / (full[0] + full[1]);
        let freq = f64::from(c0) / f64::from(draws);
        assert!((freq - want).abs() < 0.01, "{freq} vs {want}");
    }

    #[test]
    fn large_flat_vocabulary() {
        // A flat distribution over 128k tokens exercises the ordering deep into the list.
        let mut s = sampler(|p| {
            p.temperature = 50.0;
            p.top_p = 0.99;
        });
        let l = logits(128_256, 5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let id = s.sample(&l, &[]).unwrap();
            assert!((id as usize) < l.len());
            seen.insert(id);
        }
        assert!(seen.len() > 40, "{}", seen.len());
    }

    /// The sampler's pipeline done the obvious way: a full sort, then top-k, top-p and min-p on the
    /// sorted list, then the draw in id order.
    fn reference_pick(logits: &[f32], p: &SamplingParams, r: u64) -> u32 {
        let (mut weights, mut sorted) = (Vec::new(), Vec::new());
        assert!(fill_weights(
            &mut weights,
            &mut sorted,
            logits,
            p.temperature
        ));
        sorted.sort_by(order);
        if p.top_k > 0 {
            sorted.truncate(p.top_k);
        }
        let total = mass(&sorted);
        let target = (total as f64 * f64::from(p.top_p)) as u128;
        if p.top_p < 1.0 {
            let mut before = 0u128;
            let mut keep = 0;
            for (i, c) in sorted.iter().enumerate() {
                if i > 0 && before >= target {
                    break;
                }
                before += u128::from(c.w);
                keep = i + 1;
            }
            sorted.truncate(keep);
        }
        let threshold = f64::from(p.min_p) * WEIGHT_ONE as f64;
        sorted.retain(|c| c.w as f64 >= threshold);
        let mut kept: Vec<Candidate> = sorted;
        kept.sort_by_key(|c| c.id);
        let u = scale_to(r, mass(&kept));
        let mut cum = 0u128;
        for c in &kept {
            cum += u128::from(c.w);
            if cum > u {
                return c.id;
            }
        }
        unreachable!("u is below the kept mass")
    }

    #[test]
    fn selection_pipeline_equals_the_full_sort_reference() {
        let mut rng = SplitMix64(77);
        for case in 0..300u64 {
            let n = [3, 50, 1000, 20_000][case as usize % 4];
            // Coarse logits make many exact ties; some are masked.
            let l: Vec<f32> = (0..n)
                .map(|_| match rng.next_u64() % 10 {
                    0 => f32::NEG_INFINITY,
                    x if x < 4 => (rng.next_u64() % 8) as f32 * 0.5,
                    _ => (rng.next_f64() * 12.0 - 6.0) as f32,
                })
                .collect();
            if l.iter().all(|&x| x == f32::NEG_INFINITY) {
                continue;
            }
            let p = SamplingParams {
                temperature: [0.3, 1.0, 2.5][case as usize % 3],
                top_k: [0, 1, 5, 40, 2000, 100_000][(case / 3) as usize % 6],
                top_p: [1.0, 0.9, 0.5, 0.05, 0.999][(case / 5) as usize % 5],
                min_p: [0.0, 0.05, 0.5][(case / 7) as usize % 3],
                seed: case,
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(p.clone()).unwrap();
            let mut r = SplitMix64(case);
            for _ in 0..5 {
                assert_eq!(
                    s.sample(&l, &[]).unwrap(),
                    reference_pick(&l, &p, r.next_u64()),
                    "case {case}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn scale_to_is_exact() {
        assert_eq!(scale_to(0, 1000), 0);
        assert_eq!(scale_to(u64::MAX, 1000), 999);
        assert_eq!(scale_to(1 << 63, 1000), 500);
        let n = (3u128 << 80) + 12345;
        assert_eq!(scale_to(1 << 63, n), n / 2);
        assert_eq!(scale_to(u64::MAX, n), n - (n >> 64) - 1);
    }

    #[test]
    fn bad_logits_are_errors() {
        let mut s = sampler(|_| {});
        assert!(matches!(s.sample(&[], &[]), Err(ChatError::EmptyLogits)));
        let err = s.sample(&[0.0, f32::NAN], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                ChatError::BadLogit {
                    index: 1,
                    len: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            s.sample(&[f32::INFINITY], &[]),
            Err(ChatError::BadLogit { index: 0, .. })
        ));
        let all_masked = [f32::NEG_INFINITY; 3];
        assert!(matches!(
            s.sample(&all_masked, &[]),
            Err(ChatError::NoCandidates { len: 3 })
        ));
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        assert!(matches!(
            g.sample(&all_masked, &[]),
            Err(ChatError::NoCandidates { len: 3 })
        ));
    }

    #[test]
    fn validation_errors_name_the_parameter() {
        let check = |f: fn(&mut SamplingParams), name: &str| {
            let mut p = SamplingParams::default();
            f(&mut p);
            let err = Sampler::new(p).unwrap_err();
            assert!(
                matches!(err, ChatError::InvalidSampling { name: n, .. } if n == name),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        };
        check(|p| p.temperature = -0.1, "temperature");
        check(|p| p.temperature = f32::NAN, "temperature");
        check(|p| p.temperature = f32::INFINITY, "temperature");
        check(|p| p.top_p = 0.0, "top_p");
        check(|p| p.top_p = 1.01, "top_p");
        check(|p| p.top_p = f32::NAN, "top_p");
        check(|p| p.min_p = -0.01, "min_p");
        check(|p| p.min_p = 1.5, "min_p");
        check(|p| p.min_p = f32::NAN, "min_p");
        check(|p| p.repetition_penalty = 0.0, "repetition_penalty");
        check(|p| p.repetition_penalty = -1.0, "repetition_penalty");
        check(|p| p.repetition_penalty = f32::NAN, "repetition_penalty");
        // Edges that are allowed.
        for f in [
            |p: &mut SamplingParams| p.temperature = 0.0,
            |p: &mut SamplingParams| p.top_p = 1.0,
            |p: &mut SamplingParams| p.min_p = 0.0,
            |p: &mut SamplingParams| p.min_p = 1.0,
            |p: &mut SamplingParams| p.top_k = 0,
        ] {
            let mut p = SamplingParams::default();
            f(&mut p);
            p.validate().unwrap();
        }
        let e = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sampling parameter temperature = -1 is invalid: it must be a finite number >= 0 (0 = greedy)"
        );
    }

    #[test]
    fn generation_defaults_map_onto_params() {
        let d = GenerationDefaults {
            do_sample: Some(true),
            temperature: Some(0.6),
            top_p: Some(0.9),
            top_k: Some(50),
            repetition_penalty: Some(1.1),
            max_new_tokens: Some(64),
        };
        let p = SamplingParams::from_generation_defaults(&d);
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.max_tokens),
            (0.6, 0.9, 50, 64)
        );
        assert!((p.repetition_penalty - 1.1).abs() < 1e-6);
        let greedy = SamplingParams::from_generation_defaults(&GenerationDefaults {
            do_sample: Some(false),
            ..d
        });
        assert_eq!(greedy.temperature, 0.0);
        assert_eq!(
            SamplingParams::from_generation_defaults(&GenerationDefaults::default()),
            SamplingParams::default()
        );
    }
}
