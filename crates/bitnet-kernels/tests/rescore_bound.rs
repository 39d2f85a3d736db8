//! The rescored head's bound (SPEC.md 6.2) holds: `|int8 logit - exact logit| <= HeadBound::row(d)` for
//! random and adversarial rows and inputs, and the candidates always hold the exact head's argmax.

use bitnet_format::layout;
use bitnet_kernels::rescore::{HeadBound, candidates};
use bitnet_kernels::scalar::{self, BlockQuantized};
use bitnet_kernels::{Bf16Matrix, Int8Matrix, pad16, round_half_even};
use proptest::prelude::*;

/// Rounds to bf16 (nearest even), as a checkpoint's weights are.
fn bf16(v: f32) -> f32 {
    let b = v.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

/// SPEC.md 6 int8 head rule, written from the text: `d = max|w| / 127`,
/// `q = clamp(round_half_to_even(w / d), -127, 127)` (the converter clamps to ±128 first).
fn quantize_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut d = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        d[r] = amax / 127.0;
        if amax > 0.0 {
            for (o, &v) in q[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                *o = round_half_even((v / d[r]).clamp(-128.0, 128.0)).clamp(-127.0, 127.0) as i8;
            }
        }
    }
    (q, d)
}

/// A head of `rows` x `cols` bf16 weights: its bf16 bytes, its int8_r16 copy and the row scales.
struct Head {
    bf16: Vec<u8>,
    int8: Vec<u8>,
    scales: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Head {
    fn new(w: &[f32], rows: usize, cols: usize) -> Head {
        let w: Vec<f32> = w.iter().map(|&v| bf16(v)).collect();
        let (q, scales) = quantize_rows(&w, rows, cols);
        Head {
            bf16: w
                .iter()
                .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
            int8: layout::pack_int8(&q, &scales, rows, cols),
            scales,
            rows,
            cols,
        }
    }

    /// (int8 logits, exact logits, bound) for input `x`.
    fn logits(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>, HeadBound) {
        let mut bq = BlockQuantized::default();
        bq.quantize(x);
        let im = Int8Matrix {
            data: &self.int8,
            rows: self.rows,
            cols: self.cols,
        };
        let bm = Bf16Matrix {
            data: &self.bf16,
            rows: self.rows,
            cols: self.cols,
        };
        let mut approx = vec![0f32; self.rows];
        let mut exact = vec![0f32; self.rows];
        scalar::int8_matvec(&im, &bq, 0..self.rows, &mut approx);
        scalar::bf16_matvec(&bm, x, 0..self.rows, &mut exact);
        (approx, exact, HeadBound::new(x, &bq))
    }

    fn scale_bytes(&self) -> &[u8] {
        &self.int8[pad16(self.rows) * pad16(self.cols)..]
    }

    /// Checks the bound on every row and the candidates' guarantee; returns the largest error / bound.
    fn check(&self, x: &[f32]) -> f64 {
        let (approx, exact, bound) = self.logits(x);
        let mut worst = 0f64;
        for r in 0..self.rows {
            let err = (approx[r] as f64 - exact[r] as f64).abs();
            let b = bound.row(self.scales[r]);
            assert!(
                err <= b,
                "row {r}: |{} - {}| = {err} > bound {b}",
                approx[r],
                exact[r]
            );
            worst = worst.max(err / b);
        }
        let mut cand = Vec::new();
        candidates(&approx, self.scale_bytes(), &bound, &mut cand);
        let best = exact.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Every row holding the exact maximum is a candidate; rescoring the candidates gives the exact
        // head's argmax (first maximum) under the same rule.
        let mut mixed = approx.clone();
        for &r in &cand {
            mixed[r as usize] = exact[r as usize];
        }
        for (r, &e) in exact.iter().enumerate() {
            if e == best {
                assert!(cand.contains(&(r as u32)), "row {r} holds the maximum");
            }
        }
        assert_eq!(first_max(&mixed), first_max(&exact));
        worst
    }
}

fn first_max(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The worst case SPEC.md 6.2 allows for: every input half an int8 step off its grid (`x = (j - 0.4999)
/// step`), every weight a bf16 value exactly half-way between two int8 steps that rounds (half to even)
/// towards the side where its error `w - d q` has the sign of `x`, and `q` large with the sign of the input
/// error: every term of both errors adds up.
fn adversarial(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rnd = lcg(seed);
    let step = 1.0f32 / 64.0;
    let x: Vec<f32> = (0..cols)
        .map(|k| {
            let sign = if rnd() > 0.0 { 1.0 } else { -1.0 };
            // Each block's maximum sets the step: 127 steps.
            if k % 256 == 0 {
                sign * 127.0 * step
            } else {
                sign * ((rnd().abs() * 100.0).floor() + 1.0 - 0.4999) * step
            }
        })
        .collect();
    let mut w = vec![0f32; rows * cols];
    for r in 0..rows {
        // d = 2^-7 / 2^r exactly: the row's maximum is 127 d.
        let d = 2f32.powi(-7 - r as i32);
        for k in 0..cols {
            let sigma = -x[k].signum();
            // An odd m: m + 0.5 rounds to the even m + 1, so the weight error is -sigma d / 2.
            let v = if k == r % cols {
                127.0
            } else {
                101.0 + 2.0 * (rnd().abs() * 12.0).floor() + 0.5
            };
            w[r * cols + k] = sigma * v * d;
        }
    }
    (w, x)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_bound_holds_on_random_rows(
        rows in 1usize..40,
        cols in 1usize..700,
        seed in any::<u64>(),
        outliers in 0usize..4,
        wscale in -12i32..4,
    ) {
        let mut rnd = lcg(seed);
        let ws = 2f32.powi(wscale);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd() * ws).collect();
        let mut x: Vec<f32> = (0..cols).map(|_| rnd() * 3.0).collect();
        for i in 0..outliers {
            let k = (seed as usize).wrapping_add(i * 97) % cols;
            x[k] *= 40.0;
        }
        Head::new(&w, rows, cols).check(&x);
    }

    #[test]
    fn the_bound_holds_on_adversarial_rows(
        rows in 1usize..24,
        cols in 2usize..800,
        seed in any::<u64>(),
    ) {
        let (w, x) = adversarial(rows, cols, seed);
        Head::new(&w, rows, cols).check(&x);
    }

    #[test]
    fn the_bound_holds_with_ties_zero_rows_and_tiny_weights(
        rows in 2usize..20,
        cols in 1usize..300,
        seed in any::<u64>(),
    ) {
        let mut rnd = lcg(seed);
        let mut w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        // Row 1 copies row 0 (a tie of exact logits), row rows-1 is zero, a middle row subnormal.
        let (head, tail) = w.split_at_mut(cols);
        tail[..cols].copy_from_slice(head);
        w[(rows - 1) * cols..].fill(0.0);
        if rows > 3 {
            for v in &mut w[2 * cols..3 * cols] {
                *v *= 1e-39;
            }
        }
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        Head::new(&w, rows, cols).check(&x);
    }
}

/// The bound is not slack on adversarial input: the error reaches a sizeable share of it, so a bound half
/// as large would fail the tests above.
#[test]
fn adversarial_rows_come_close_to_the_bound() {
    let (rows, cols) = (8, 2560);
    let (w, x) = adversarial(rows, cols, 7);
    let worst = Head::new(&w, rows, cols).check(&x);
    assert!(worst > 0.5, "the worst row reached {worst} of its bound");
}

/// Infinite input gives no bound, so every row is a candidate.
#[test]
fn no_finite_bound_keeps_every_row() {
    let head = Head::new(&[0.5, -0.25, 1.0, 0.0, 0.125, 0.75], 3, 2);
    let x = [f32::INFINITY, 1.0];
    let mut bq = BlockQuantized::default();
    bq.quantize(&x);
    let bound = HeadBound::new(&x, &bq);
    let mut cand = Vec::new();
    candidates(&[1.0, 2.0, 3.0], head.scale_bytes(), &bound, &mut cand);
    assert_eq!(cand, [0, 1, 2]);
}
