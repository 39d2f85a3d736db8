//! Constrained decoding, the model-facing half: a [`TokenConstraint`] says which token ids may come next
//! (a grammar engine such as `bitnet-grammar` implements it), [`mask_logits`] turns every other logit
//! into `-inf`, and [`Sampler::sample_masked`](crate::Sampler::sample_masked) samples from what is left.
//!
//! A set of allowed ids is a bitset of `u32` words: token `i` is allowed when bit `i % 32` of word
//! `i / 32` is set. Ids past the last word are not allowed.

use crate::Result;

/// A per-sequence rule over the next token: which ids may follow what was generated so far.
pub trait TokenConstraint: Send {
    /// The ids allowed next, as a bitset (see the [module docs](self)). End-of-text ids are in it only
    /// when the output so far is complete.
    fn allowed(&mut self) -> Result<&[u32]>;
    /// Records `token` (one of [`TokenConstraint::allowed`]'s, not an end-of-text id) as generated.
    fn commit(&mut self, token: u32) -> Result<()>;
    /// Whether the output so far is complete (it may still go on).
    fn is_accepting(&mut self) -> bool;
}

/// Whether bit `id` of `allowed` is set.
pub fn is_allowed(allowed: &[u32], id: u32) -> bool {
    allowed
        .get(id as usize / 32)
        .is_some_and(|w| w >> (id % 32) & 1 == 1)
}

/// Sets every logit whose id is not in `allowed` to `-inf`.
pub fn mask_logits(logits: &mut [f32], allowed: &[u32]) {
    for (i, chunk) in logits.chunks_mut(32).enumerate() {
        let word = allowed.get(i).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if word >> bit & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Whether every id set in `allowed` is one of `ids` (true for an empty set): the constraint then only
/// lets the sequence end. Stops at the first other id, so a large set costs one word.
pub fn allows_only(allowed: &[u32], ids: &[u32]) -> bool {
    allowed.iter().enumerate().all(|(w, &word)| {
        let mut rest = word;
        while rest != 0 {
            let id = (w * 32) as u32 + rest.trailing_zeros();
            if !ids.contains(&id) {
                return false;
            }
            rest &= rest - 1;
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32], words: usize) -> Vec<u32> {
        let mut v = vec![0u32; words];
        for &i in ids {
            v[i as usize / 32] |= 1 << (i % 32);
        }
        v
    }

    #[test]
    fn mask_keeps_exactly_the_allowed_ids_on_a_ragged_vocabulary() {
        // 70 logits: two full words and a 6-id tail; the bitset is one word short of covering id 64+.
        let allowed = set(&[0, 31, 32, 63], 2);
        let mut logits: Vec<f32> = (0..70).map(|i| i as f32).collect();
        mask_logits(&mut logits, &allowed);
        for (i, l) in logits.iter().enumerate() {
            let kept = [0, 31, 32, 63].contains(&i);
            assert_eq!(*l == i as f32, kept, "logit {i}");
            assert_eq!(is_allowed(&allowed, i as u32), kept, "bit {i}");
        }
    }

    #[test]
    fn allows_only_reads_every_set_bit() {
        let stops = [2, 40];
        assert!(allows_only(&set(&[], 2), &stops));
        assert!(allows_only(&set(&[2, 40], 2), &stops));
        assert!(!allows_only(&set(&[2, 41], 2), &stops));
        assert!(!allows_only(&set(&[0], 2), &stops));
    }
}
