//! The quantizers of conversion, computed in f32 exactly as BitNet b1.58 was trained.
//!
//! * BitLinear weights, per tensor (transformers' `WeightQuant`, SPEC.md section 6):
//!   `s = 1 / max(mean|W|, 1e-5)`, `q = clamp(round_ties_even(W * s), -1, 1)`; a +1 weight is worth `1 / s`.
//! * Pre-packed ternary weights (transformers' `pack_weights` layout, 4 rows per byte): unpacked exactly,
//!   no re-quantization ([`repack_hf_packed`]).
//! * The optional int8 LM head, per row: `d = max|w| / 127`, `q = clamp(round_ties_even(w / d), -127, 127)`.

use bitnet_format::layout;
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

/// Round half to even, for `|x| <= 2^22`.
///
/// Equal to `f32::round_ties_even` there, but inlined: without SSE4.1 in the baseline target,
/// `round_ties_even` is a call to libm's `rintf`, which dominated conversion time. Adding and subtracting
/// 1.5 * 2^23 leaves no fraction bits, so the FPU's default rounding (half to even) does the work.
#[inline(always)]
fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `clamp(round_half_even(x), -1, 1)`, the ternary code of a scaled weight (NaN gives 0).
#[inline(always)]
fn ternary(x: f32) -> i8 {
    round_half_even_small(x.clamp(-2.0, 2.0)).clamp(-1.0, 1.0) as i8
}

/// Bytes per element of a float dtype.
fn width(dtype: Dtype) -> usize {
    match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        other => panic!("unsupported dtype {other:?}"),
    }
}

/// Decodes `bytes` (a whole number of elements) into `out`.
fn decode_into(bytes: &[u8], dtype: Dtype, out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        // bf16 is the upper half of an f32: a shift is the exact conversion.
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        _ => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
    }
}

/// `mean(|w|)` in f32 the way PyTorch's CPU `mean` gets it (a sum, then one division by the count).
///
/// The sum is accumulated in f64 over fixed chunks and added in order, so it is deterministic and
/// correctly rounded to f32 in all but pathological cases.
pub fn mean_abs(w: &[f32]) -> f32 {
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    mean_abs_encoded(&bytes, Dtype::F32)
}

/// [`mean_abs`] straight from encoded source bytes.
pub fn mean_abs_encoded(bytes: &[u8], dtype: Dtype) -> f32 {
    let w = width(dtype);
    let partial: Vec<f64> = bytes
        .par_chunks(PAR_CHUNK * w)
        .map_init(Vec::new, |buf, c| {
            decode_into(c, dtype, buf);
            // Eight independent lanes (a fixed order, so still deterministic) instead of one serial chain.
            let mut lanes = [0f64; 8];
            let mut it = buf.chunks_exact(8);
            for c in &mut it {
                for (l, x) in lanes.iter_mut().zip(c) {
                    *l += x.abs() as f64;
                }
            }
            let tail: f64 = it.remainder().iter().map(|x| x.abs() as f64).sum();
            lanes.iter().sum::<f64>() + tail
        })
        .collect();
    let sum = partial.iter().sum::<f64>() as f32;
    sum / (bytes.len() / w) as f32
}

/// Absmean ternary quantization of one BitLinear weight (per tensor).
pub fn absmean_ternary(w: &[f32]) -> Ternary {
    let s = 1.0f32 / mean_abs(w).max(1e-5);
    let values = w.iter().map(|&x| ternary(x * s)).collect();
    Ternary {
        values,
        weight_scale: 1.0f32 / s,
    }
}

/// Absmean ternary quantization straight from a `[rows, cols]` source tensor's encoded bytes into the
/// `ternary_r16` layout, tile by tile in parallel: returns the packed bytes and the weight scale.
///
/// Equal to [`absmean_ternary`] followed by `layout::pack_ternary`, without either intermediate.
pub fn absmean_ternary_packed(
    bytes: &[u8],
    dtype: Dtype,
    rows: usize,
    cols: usize,
) -> (Vec<u8>, f32) {
    let w = width(dtype);
    assert_eq!(
        bytes.len(),
        rows * cols * w,
        "source bytes must hold rows * cols elements"
    );
    let s = 1.0f32 / mean_abs_encoded(bytes, dtype).max(1e-5);
    let tile_len = layout::ternary_tile_len(cols);
    let mut packed = vec![0u8; layout::ternary_len(rows, cols)];
    packed.par_chunks_mut(tile_len).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(f, q), (tile, out)| {
            let r0 = tile * layout::TILE_ROWS;
            let r1 = (r0 + layout::TILE_ROWS).min(rows);
            decode_into(&bytes[r0 * cols * w..r1 * cols * w], dtype, f);
            q.clear();
            q.extend(f.iter().map(|&x| ternary(x * s)));
            layout::pack_ternary_tile(q, r1 - r0, cols, 0, out);
        },
    );
    (packed, 1.0f32 / s)
}

/// Where a packed byte holds code 3, which is no ternary value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCode {
    /// Row of the unpacked weight.
    pub row: usize,
    /// Column.
    pub col: usize,
    /// Row of the packed `[rows / 4, cols]` tensor holding it.
    pub packed_row: usize,
}

/// The ternary value of unpacked weight `(row, col)` in transformers' packed layout (`pack_weights`):
/// `[rows / 4, cols]` bytes, packed row `p` holding rows `p, p + R, p + 2R, p + 3R` (`R = rows / 4`) in its
/// bits 1:0, 3:2, 5:4, 7:6, each as the code `w + 1`. Code 3 (which `unpack_weights` would read as +2)
/// is an error naming its place.
#[inline]
fn hf_packed_value(
    packed: &[u8],
    rows: usize,
    cols: usize,
    row: usize,
    col: usize,
) -> Result<i8, BadCode> {
    let r4 = rows / 4;
    let code = (packed[(row % r4) * cols + col] >> (2 * (row / r4))) & 3;
    if code == 3 {
        return Err(BadCode {
            row,
            col,
            packed_row: row % r4,
        });
    }
    Ok(code as i8 - 1)
}

/// Unpacks a pre-packed `[rows / 4, cols]` uint8 BitLinear weight (transformers' layout, see
/// [`hf_packed_value`]) into row-major ternary values. `rows` must be a multiple of 4.
pub fn unpack_hf_packed(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, BadCode> {
    assert_eq!(
        packed.len() * 4,
        rows * cols,
        "packed bytes must hold rows * cols / 4"
    );
    let mut out = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for col in 0..cols {
            out.push(hf_packed_value(packed, rows, cols, row, col)?);
        }
    }
    Ok(out)
}

/// Repacks a pre-packed uint8 BitLinear weight straight into the `ternary_r16` layout, tile by tile in
/// parallel, value for value (equal to [`unpack_hf_packed`] followed by `layout::pack_ternary`).
pub fn repack_hf_packed(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>, BadCode> {
    assert_eq!(
        packed.len() * 4,
        rows * cols,
        "packed bytes must hold rows * cols / 4"
    );
    let tile_len = layout::ternary_tile_len(cols);
    let mut out = vec![0u8; layout::ternary_len(rows, cols)];
    out.par_chunks_mut(tile_len)
        .enumerate()
        .try_for_each_init(Vec::new, |q, (tile, dst)| {
            let r0 = tile * layout::TILE_ROWS;
            let r1 = (r0 + layout::TILE_ROWS).min(rows);
            q.clear();
            for row in r0..r1 {
                for col in 0..cols {
                    q.push(hf_packed_value(packed, rows, cols, row, col)?);
                }
            }
            layout::pack_ternary_tile(q, r1 - r0, cols, 0, dst);
            Ok(())
        })?;
    Ok(out)
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
                    *q = round_half_even_small((x / *d).clamp(-128.0, 128.0)).clamp(-127.0, 127.0)
                        as i8;
                }
            }
        });
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `pack_weights`, written from its definition: packed row p, bits 2i..2i+1 hold row
    /// p + i * rows/4 as `w + 1`.
    fn pack_like_transformers(w: &[i8], rows: usize, cols: usize) -> Vec<u8> {
        let r4 = rows / 4;
        let mut out = vec![0u8; r4 * cols];
        for i in 0..4 {
            for p in 0..r4 {
                for c in 0..cols {
                    out[p * cols + c] |= ((w[(p + i * r4) * cols + c] + 1) as u8) << (2 * i);
                }
            }
        }
        out
    }

    #[test]
    fn hf_packed_weights_unpack_and_repack_exactly() {
        for (rows, cols) in [(4, 1), (8, 3), (36, 20), (68, 33)] {
            let w: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
                .collect();
            let packed = pack_like_transformers(&w, rows, cols);
            assert_eq!(unpack_hf_packed(&packed, rows, cols).unwrap(), w);
            assert_eq!(
                repack_hf_packed(&packed, rows, cols).unwrap(),
                layout::pack_ternary(&w, rows, cols),
                "{rows}x{cols}"
            );
        }
    }

    #[test]
    fn code_three_is_refused_with_its_place() {
        let (rows, cols) = (8, 3);
        let mut packed = pack_like_transformers(&[0; 24], rows, cols);
        // Row 6 = packed row 0 + 3 * 2 (bits 7:6), column 2.
        packed[2] |= 0b1100_0000;
        let want = BadCode {
            row: 6,
            col: 2,
            packed_row: 0,
        };
        assert_eq!(unpack_hf_packed(&packed, rows, cols).unwrap_err(), want);
        assert_eq!(repack_hf_packed(&packed, rows, cols).unwrap_err(), want);
    }

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
    fn fast_rounding_equals_round_ties_even() {
        let mut x = -3.0f32;
        while x <= 3.0 {
            assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            x += 0.03125; // every quarter and half lands exactly, ties included
        }
        let mut s = 12345u32;
        for _ in 0..100_000 {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let x = (s as f32 / u32::MAX as f32 - 0.5) * 300.0;
            assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            assert_eq!(
                ternary(x),
                x.round_ties_even().clamp(-1.0, 1.0) as i8,
                "{x}"
            );
        }
        assert_eq!(ternary(f32::NAN), 0);
        assert_eq!(ternary(f32::INFINITY), 1);
        assert_eq!(ternary(f32::NEG_INFINITY), -1);
    }

    #[test]
    fn packed_path_equals_quantize_then_pack() {
        let (rows, cols) = (37, 45);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4)
            .collect();
        let bytes: Vec<u8> = w
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        let t = absmean_ternary(&to_f32(&bytes, Dtype::BF16));
        let (packed, scale) = absmean_ternary_packed(&bytes, Dtype::BF16, rows, cols);
        assert_eq!(packed, layout::pack_ternary(&t.values, rows, cols));
        assert_eq!(scale, t.weight_scale);
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
