//! Comparing two sets of logits: the figures `bitnet verify` prints and judges.
//!
//! Per position: max and mean |delta logit|, cosine similarity, KL(reference || candidate), whether the
//! argmax agrees. A comparison judges distributions (../shared/reference/parity.md): a correct
//! implementation agrees tightly at most positions, and an int8 rounding flip shifts the positions after it
//! a little, which cosine, KL and top-1 tolerate and a single max |delta| does not.

/// Positions whose max |delta| is below this count as agreeing tightly.
pub const TIGHT: f64 = 1e-3;

/// Figures of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Positions compared.
    pub positions: usize,
    /// Largest |delta logit| anywhere.
    pub max_abs: f64,
    /// Mean |delta logit| over every logit.
    pub mean_abs: f64,
    /// Smallest per-position cosine similarity.
    pub min_cosine: f64,
    /// Mean per-position cosine similarity.
    pub mean_cosine: f64,
    /// Positions whose argmax agrees.
    pub top1_agree: usize,
    /// Mean per-position KL(reference || candidate), in nats.
    pub mean_kl: f64,
    /// Largest per-position KL.
    pub max_kl: f64,
    /// Positions whose max |delta| is below [`TIGHT`].
    pub tight: usize,
    /// The first position whose max |delta| is at or above [`TIGHT`], if any.
    pub first_loose: Option<usize>,
}

/// Limits a comparison must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Every position's cosine similarity at least this.
    pub min_cosine: f64,
    /// Every position's KL at most this.
    pub max_kl: f64,
    /// Mean KL at most this.
    pub max_mean_kl: f64,
    /// Share of positions whose argmax agrees, at least this.
    pub min_top1: f64,
    /// Share of positions agreeing tightly, at least this.
    pub min_tight: f64,
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Compares `candidate` against `reference`, both `[positions, vocab]`.
pub fn compare(reference: &[f32], candidate: &[f32], vocab: usize) -> Comparison {
    assert_eq!(reference.len(), candidate.len(), "same shape");
    assert!(vocab > 0 && reference.len().is_multiple_of(vocab));
    let positions = reference.len() / vocab;
    let mut c = Comparison {
        positions,
        max_abs: 0.0,
        mean_abs: 0.0,
        min_cosine: f64::INFINITY,
        mean_cosine: 0.0,
        top1_agree: 0,
        mean_kl: 0.0,
        max_kl: 0.0,
        tight: 0,
        first_loose: None,
    };
    let mut sum_abs = 0f64;
    for (p, (r, k)) in reference
        .chunks_exact(vocab)
        .zip(candidate.chunks_exact(vocab))
        .enumerate()
    {
        let mut pos_max = 0f64;
        let (mut dot, mut nr, mut nk) = (0f64, 0f64, 0f64);
        for (&a, &b) in r.iter().zip(k) {
            let d = (a as f64 - b as f64).abs();
            pos_max = pos_max.max(if d.is_nan() { f64::INFINITY } else { d });
            sum_abs += d;
            dot += a as f64 * b as f64;
            nr += a as f64 * a as f64;
            nk += b as f64 * b as f64;
        }
        let cos = if nr == 0.0 || nk == 0.0 {
            if nr == nk { 1.0 } else { 0.0 }
        } else {
            dot / (nr.sqrt() * nk.sqrt())
        };
        let (lr, lk) = (log_softmax(r), log_softmax(k));
        let kl: f64 = lr
            .iter()
            .zip(&lk)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>()
            .max(0.0);
        let kl = if kl.is_nan() { f64::INFINITY } else { kl };
        c.max_abs = c.max_abs.max(pos_max);
        c.min_cosine = c.min_cosine.min(if cos.is_nan() { 0.0 } else { cos });
        c.mean_cosine += cos;
        c.mean_kl += kl;
        c.max_kl = c.max_kl.max(kl);
        if crate::argmax(r) == crate::argmax(k) {
            c.top1_agree += 1;
        }
        if pos_max < TIGHT {
            c.tight += 1;
        } else if c.first_loose.is_none() {
            c.first_loose = Some(p);
        }
    }
    let n = positions.max(1) as f64;
    c.mean_abs = sum_abs / reference.len().max(1) as f64;
    c.mean_cosine /= n;
    c.mean_kl /= n;
    c
}

impl Comparison {
    /// One comparison over all the positions of `parts` (per-prompt comparisons).
    pub fn merge(parts: &[Comparison]) -> Comparison {
        let positions: usize = parts.iter().map(|c| c.positions).sum();
        let n = positions.max(1) as f64;
        let weighted = |f: fn(&Comparison) -> f64| {
            parts.iter().map(|c| f(c) * c.positions as f64).sum::<f64>() / n
        };
        Comparison {
            positions,
            max_abs: parts.iter().map(|c| c.max_abs).fold(0.0, f64::max),
            mean_abs: weighted(|c| c.mean_abs),
            min_cosine: parts
                .iter()
                .map(|c| c.min_cosine)
                .fold(f64::INFINITY, f64::min),
            mean_cosine: weighted(|c| c.mean_cosine),
            top1_agree: parts.iter().map(|c| c.top1_agree).sum(),
            mean_kl: weighted(|c| c.mean_kl),
            max_kl: parts.iter().map(|c| c.max_kl).fold(0.0, f64::max),
            tight: parts.iter().map(|c| c.tight).sum(),
            first_loose: None,
        }
    }

    /// Share of positions whose argmax agrees.
    pub fn top1_share(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }

    /// Share of positions agreeing tightly.
    pub fn tight_share(&self) -> f64 {
        self.tight as f64 / self.positions.max(1) as f64
    }

    /// The tolerances this comparison breaks, each described.
    pub fn failures(&self, tol: &Tolerances) -> Vec<String> {
        let mut f = Vec::new();
        if self.min_cosine.is_nan() || self.min_cosine < tol.min_cosine {
            f.push(format!(
                "min cosine {:.6} < {}",
                self.min_cosine, tol.min_cosine
            ));
        }
        if self.max_kl.is_nan() || self.max_kl > tol.max_kl {
            f.push(format!("max KL {:.3e} > {:e}", self.max_kl, tol.max_kl));
        }
        if self.mean_kl.is_nan() || self.mean_kl > tol.max_mean_kl {
            f.push(format!(
                "mean KL {:.3e} > {:e}",
                self.mean_kl, tol.max_mean_kl
            ));
        }
        if self.top1_share() < tol.min_top1 {
            f.push(format!(
                "top-1 agreement {}/{} < {}",
                self.top1_agree, self.positions, tol.min_top1
            ));
        }
        if self.tight_share() < tol.min_tight {
            f.push(format!(
                "tight positions {}/{} < {}",
                self.tight, self.positions, tol.min_tight
            ));
        }
        f
    }
}

/// The figures as `verify --json` reports them (the shares included).
impl serde::Serialize for Comparison {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Figures {
            positions: usize,
            max_abs_delta: f64,
            mean_abs_delta: f64,
            min_cosine: f64,
            mean_cosine: f64,
            top1_agree: usize,
            top1_share: f64,
            mean_kl: f64,
            max_kl: f64,
            tight_positions: usize,
            tight_share: f64,
            first_loose_position: Option<usize>,
        }
        Figures {
            positions: self.positions,
            max_abs_delta: self.max_abs,
            mean_abs_delta: self.mean_abs,
            min_cosine: self.min_cosine,
            mean_cosine: self.mean_cosine,
            top1_agree: self.top1_agree,
            top1_share: self.top1_share(),
            mean_kl: self.mean_kl,
            max_kl: self.max_kl,
            tight_positions: self.tight,
            tight_share: self.tight_share(),
            first_loose_position: self.first_loose,
        }
        .serialize(s)
    }
}
