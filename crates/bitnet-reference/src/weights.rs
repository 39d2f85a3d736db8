//! The reference's own reading of weights, written from transformers' definitions rather than shared with
//! the converter: float decoding, `WeightQuant` and `ActQuant` in f32, and transformers' `unpack_weights`
//! with the scale applied the way each BitLinear class applies it.

use bitnet_convert::ScaleOp;
use rayon::prelude::*;
use safetensors::tensor::Dtype;

/// Decodes bf16/f16/f32 little-endian bytes to f32.
pub(crate) fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let width = if dtype == Dtype::F32 { 4 } else { 2 };
    let mut out = vec![0f32; bytes.len() / width];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * width))
        .for_each(|(o, b)| {
            for (o, b) in o.iter_mut().zip(b.chunks_exact(width)) {
                *o = match dtype {
                    Dtype::BF16 => f32::from_bits(((b[1] as u32) << 24) | ((b[0] as u32) << 16)),
                    Dtype::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
                    _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                };
            }
        });
    out
}

/// IEEE half to single, by hand (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f32;
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 => {
            if man == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}

/// transformers' `WeightQuant.forward` in f32: `s = 1 / mean(|W|).clamp(min=1e-5)`,
/// `clamp(round(W * s), -1, 1) / s`.
pub(crate) fn weight_quant(w: &mut [f32]) {
    let sum: f64 = w
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|v| v.abs() as f64).sum::<f64>())
        .collect::<Vec<_>>()
        .iter()
        .sum();
    let mean = (sum as f32) / w.len() as f32;
    let s = 1.0f32 / mean.max(1e-5);
    w.par_iter_mut()
        .for_each(|v| *v = (*v * s).round_ties_even().clamp(-1.0, 1.0) / s);
}

/// transformers' `ActQuant.forward` in f32, per token: `a = 127 / max|x|.clamp(min=1e-5)`,
/// `clamp(round(x * a), -128, 127) / a`.
pub(crate) fn act_quant(x: &[f32]) -> Vec<f32> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let a = 127.0f32 / amax.max(1e-5);
    x.iter()
        .map(|v| (v * a).round_ties_even().clamp(-128.0, 127.0) / a)
        .collect()
}

/// A pre-packed BitLinear weight as transformers' `unpack_weights` reads it (`[rows / 4, cols]` bytes;
/// byte `(p, c)` holds rows `p + i * rows / 4` in bits `2i..2i+1` as `w + 1`), dequantized the way its
/// class does: `AutoBitLinear` multiplies by `weight_scale`, `BitLinear` divides by it (in f32).
pub(crate) fn unpack_weight(
    packed: &[u8],
    rows: usize,
    cols: usize,
    ws: f32,
    op: ScaleOp,
) -> Vec<f32> {
    let quarter = rows / 4;
    let mut w = vec![0f32; rows * cols];
    for (p, bytes) in packed.chunks_exact(cols).enumerate() {
        for i in 0..4 {
            let out = &mut w[(p + i * quarter) * cols..(p + i * quarter + 1) * cols];
            for (o, &b) in out.iter_mut().zip(bytes) {
                let t = ((b >> (2 * i)) & 3) as f32 - 1.0;
                *o = match op {
                    ScaleOp::Multiply => t * ws,
                    ScaleOp::Divide => t / ws,
                };
            }
        }
    }
    w
}
