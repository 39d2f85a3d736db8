//! One batched step of several sequences that cannot fail the honest ones: when the batch fails, every
//! session goes back to where the step began and each sequence runs alone, so only a sequence that fails
//! on its own fails (the server then ends that request only).

use bitnet_model::Session;

/// A batched forward step: `logits` gets one `[vocab]` row per sequence.
pub type StepFn<'a> =
    dyn FnMut(&mut [&mut Session], &[&[u32]], &mut Vec<f32>) -> Result<(), String> + 'a;

/// Runs `forward` on the batch; if it fails, retries each sequence alone. Returns, per sequence, the
/// error that sequence fails with alone (`None`: its row of `logits` is valid and its session advanced).
/// A failed sequence's session is left where the step began.
pub fn isolated_step(
    sessions: &mut [&mut Session],
    lists: &[&[u32]],
    logits: &mut Vec<f32>,
    vocab: usize,
    forward: &mut StepFn<'_>,
) -> Vec<Option<String>> {
    let n = sessions.len();
    let starts: Vec<usize> = sessions.iter().map(|s| s.pos).collect();
    let batch_error = match forward(sessions, lists, logits) {
        Ok(()) => return vec![None; n],
        Err(e) => e,
    };
    for (s, &p) in sessions.iter_mut().zip(&starts) {
        s.truncate(p);
    }
    logits.clear();
    logits.resize(n * vocab, 0.0);
    let mut row = Vec::new();
    let mut errors = vec![None; n];
    for i in 0..n {
        match forward(
            std::slice::from_mut(&mut sessions[i]),
            &lists[i..=i],
            &mut row,
        ) {
            Ok(()) if row.len() >= vocab => {
                logits[i * vocab..(i + 1) * vocab].copy_from_slice(&row[..vocab]);
            }
            Ok(()) => {
                sessions[i].truncate(starts[i]);
                errors[i] = Some(format!("{} logits for a vocabulary of {vocab}", row.len()));
            }
            Err(e) => {
                sessions[i].truncate(starts[i]);
                errors[i] = Some(e);
            }
        }
    }
    let failed = errors.iter().filter(|e| e.is_some()).count();
    tracing::warn!(
        "a batched step of {n} sequences failed ({batch_error}); each ran alone: {failed} failed, {} went on",
        n - failed
    );
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 4;
    const POISON: u32 = 666;

    /// A stand-in forward step: appends the tokens to each session and writes `[last token; VOCAB]`, but
    /// fails the whole batch when any list holds `POISON`, after advancing the sessions before it.
    fn step(s: &mut [&mut Session], lists: &[&[u32]], out: &mut Vec<f32>) -> Result<(), String> {
        out.clear();
        for (sess, list) in s.iter_mut().zip(lists) {
            if list.contains(&POISON) {
                return Err("poisoned token".into());
            }
            sess.pos += list.len();
            out.extend(std::iter::repeat_n(*list.last().unwrap() as f32, VOCAB));
        }
        Ok(())
    }

    #[test]
    fn a_failing_sequence_fails_alone_and_the_others_get_their_rows() {
        let mut a = Session::new(1, 1, 2, 16);
        let mut b = Session::new(1, 1, 2, 16);
        let mut c = Session::new(1, 1, 2, 16);
        b.pos = 3;
        let lists: [&[u32]; 3] = [&[1, 2], &[5, POISON], &[7]];
        let mut logits = Vec::new();
        let errors = isolated_step(
            &mut [&mut a, &mut b, &mut c],
            &lists,
            &mut logits,
            VOCAB,
            &mut step,
        );
        assert_eq!(errors, [None, Some("poisoned token".to_string()), None]);
        assert_eq!(&logits[..VOCAB], &[2.0; VOCAB]);
        assert_eq!(&logits[2 * VOCAB..], &[7.0; VOCAB]);
        // The honest sessions advanced once (not twice: the failed batch was rolled back), the other not.
        assert_eq!((a.pos, b.pos, c.pos), (2, 3, 1));
    }

    #[test]
    fn a_batch_that_succeeds_runs_once() {
        let mut a = Session::new(1, 1, 2, 16);
        let mut calls = 0;
        let mut logits = Vec::new();
        let errors = isolated_step(
            &mut [&mut a],
            &[&[9]],
            &mut logits,
            VOCAB,
            &mut |s, l, o| {
                calls += 1;
                step(s, l, o)
            },
        );
        assert_eq!((errors, calls, a.pos), (vec![None], 1, 1));
        assert_eq!(logits, [9.0; VOCAB]);
    }
}
