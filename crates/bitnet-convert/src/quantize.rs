//! The quantizers of conversion, computed in f32 exactly as BitNet b1.58 was trained.
//!
//! * BitLinear weights, per tensor (transformers' `WeightQuant`, SPEC.md section 6):
//!   `s = 1 / max(mean|W|, 1e-5)`, `q = clamp(round_ties_even(W * s), -1, 1)`; a +1 weight is worth `1 / s`.
//! * The optional int8 LM head, per row: `d = max|w| / 127`, `q = clamp(round_ties_even(w / d), -127, 127)`.

use rayon::prelude::*;
use safetensors::tensor::Dtype;

const PAR_CHUNK: usize = 1 << 16;

/// Decodes little-endian `BF16`, `F16` or `F32` bytes to f32 (exact for all three).
///
/// # Panics
/// On any other dtype; callers check dtypes when they open the checkpoint.
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    let width = match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        other => panic!("to_f32: unsupported dtype {other:?}"),
    };
    let mut out = vec![0f32; bytes.len() / width];
    out.par_chunks_mut(PAR_CHUNK)
        .zip(bytes.par_chunks(PAR_CHUNK * width))
        .for_each(|(o, b)| match dtype {
            Dtype::BF16 => o.iter_mut().zip(b.chunks_exact(2)).for_each(|(o, b)| {
                *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }),
            Dtype::F16 => o.iter_mut().zip(b.chunks_exact(2)).for_each(|(o, b)| {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }),
            _ => o.iter_mut().zip(b.chunks_exact(4)).for_each(|(o, b)| {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }),
        });
    out
}

/// A ternary tensor and its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    /// Row-major values in -1..=1.
    pub values: Vec<i8>,
    /// The value of a +1 weight, `1 / s` in f32: the scale SPEC.md stores.
    pub weight_scale: f32,
}

/// `mean(|w|)` in f32 the way PyTorch's CPU `mean` gets it (a sum, then one division by the count).
///
/// The sum is accumulated in f64 over fixed chunks and added in order, so it is deterministic and
/// correctly rounded to f32 in all but pathological cases.
pub fn mean_abs(w: &[f32]) -> f32 {
    let partial: Vec<f64> = w
        .par_chunks(PAR_CHUNK)
        .map(|c| c.iter().map(|x| x.abs() as f64).sum())
        .collect();
    let sum = partial.iter().sum::<f64>() as f32;
    sum / w.len() as f32
}

/// Absmean ternary quantization of one BitLinear weight (per tensor).
pub fn absmean_ternary(w: &[f32]) -> Ternary {
    let s = 1.0f32 / mean_abs(w).max(1e-5);
    let mut values = vec![0i8; w.len()];
    values
        .par_chunks_mut(PAR_CHUNK)
        .zip(w.par_chunks(PAR_CHUNK))
        .for_each(|(q, w)| {
            for (q, &x) in q.iter_mut().zip(w) {
                *q = (x * s).round_ties_even().clamp(-1.0, 1.0) as i8;
            }
        });
    Ternary {
        values,
        weight_scale: 1.0f32 / s,
    }
}

/// Per-row absmax int8 quantization of a row-major `[rows, cols]` matrix: values and one scale per row.
pub fn int8_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), rows * cols);
    let mut values = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows];
    values
        .par_chunks_mut(cols)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(cols))
        .for_each(|((q, d), row)| {
            let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            *d = amax / 127.0;
            if amax > 0.0 {
                for (q, &x) in q.iter_mut().zip(row) {
                    *q = (x / *d).round_ties_even().clamp(-127.0, 127.0) as i8;
                }
            }
        });
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmean_matches_the_training_formula_by_hand() {
        // mean|w| = 4.5 / 6 = 0.75, s = 4/3: 0.67 -> 1, -0.33 -> 0, 2 -> 1 (clamped from 2), 2.67 -> 1.
        let w = [0.5f32, -0.25, 1.5, -0.25, 0.0, 2.0];
        let t = absmean_ternary(&w);
        assert_eq!(t.values, vec![1, 0, 1, 0, 0, 1]);
        assert_eq!(t.weight_scale, 1.0 / (1.0f32 / 0.75));
    }

    #[test]
    fn ties_round_to_even() {
        // mean|w| = 1, so w * s is w: 0.5 rounds to 0 and 1.5 to 2 (then clamps to 1), -0.5 to -0.
        let w = [0.5f32, -0.5, 1.5, -1.5, 1.0, -0.5];
        assert_eq!(mean_abs(&w), 0.9166667);
        let w = [0.5f32, -0.5, 1.5, -1.5, 1.0, -1.0];
        let t = absmean_ternary(&w);
        assert_eq!(mean_abs(&w), 1.0);
        assert_eq!(t.values, vec![0, 0, 1, -1, 1, -1]);
    }

    #[test]
    fn tiny_weights_use_the_floor() {
        let t = absmean_ternary(&[1e-7, -1e-7, 0.0, 2e-5]);
        assert_eq!(t.values, vec![0, 0, 0, 1]);
        assert_eq!(t.weight_scale, 1.0 / (1.0f32 / 1e-5));
    }

    #[test]
    fn int8_rows_use_absmax_per_row() {
        let (q, d) = int8_rows(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0], 2, 3);
        assert_eq!(q, vec![127, -64, 32, 0, 0, 0]);
        assert_eq!(d, vec![1.0 / 127.0, 0.0]);
    }

    #[test]
    fn decodes_every_float_dtype() {
        let bf = half::bf16::from_f32(-1.5).to_bits().to_le_bytes();
        assert_eq!(to_f32(&bf, Dtype::BF16), vec![-1.5]);
        let f = half::f16::from_f32(0.25).to_bits().to_le_bytes();
        assert_eq!(to_f32(&f, Dtype::F16), vec![0.25]);
        assert_eq!(to_f32(&3.5f32.to_le_bytes(), Dtype::F32), vec![3.5]);
    }
}
