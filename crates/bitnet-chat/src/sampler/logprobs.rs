//! Log-probabilities of a sampled token and of the most likely ones: the log-softmax of the logits the
//! sampler drew from (after penalties and biases, before temperature and truncation), as OpenAI's
//! `logprobs` and vLLM report them.

use std::collections::BinaryHeap;

/// The log-probability of a drawn token and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The drawn token.
    pub id: u32,
    /// Its natural log-probability.
    pub logprob: f32,
    /// The most likely tokens with theirs, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// An entry of the top-k heap: ordered so the heap's top is the least likely kept.
#[derive(PartialEq)]
struct Entry(f32, u32);

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> std::cmp::Ordering {
        // "Greater" is less likely: lower logit, then higher id.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Log-softmax of `logits` at `id` and at the `k` most likely ids. `-inf` logits have a log-probability
/// of `-inf`. `logits` holds finite values or `-inf`, at least one finite.
pub fn of(logits: &[f32], id: u32, k: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max64 = f64::from(max);
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max64).exp()).sum();
    let log_z = max64 + sum.ln();
    let lp = |l: f32| (f64::from(l) - log_z) as f32;
    let mut heap = BinaryHeap::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            let e = Entry(l, i as u32);
            if heap.len() < k {
                heap.push(e);
            } else if let Some(mut worst) = heap.peek_mut()
                && e < *worst
            {
                *worst = e;
            }
        }
    }
    let top = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Entry(l, i)| (i, lp(l)))
        .collect();
    TokenLogprobs {
        id,
        logprob: lp(logits[id as usize]),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn log_softmax_and_the_most_likely_tokens() {
        let logits = [1.0f32, 3.0, f32::NEG_INFINITY, 3.0, 0.0];
        let r = of(&logits, 4, 3);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let want = |l: f32| (f64::from(l) - z.ln()) as f32;
        assert!((r.logprob - want(0.0)).abs() < 1e-6);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 0]);
        assert!((r.top[0].1 - want(3.0)).abs() < 1e-6);
        let total: f64 = logits.iter().map(|&l| f64::from(want(l)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(of(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(of(&logits, 2, 0).top.is_empty());
        assert_eq!(of(&logits, 0, 9).top.len(), 5, "k past the vocabulary");
    }
}
