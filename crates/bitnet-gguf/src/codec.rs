//! ggml's ternary block formats, decoded to ternary values `{-1, 0, +1}` and scales, and encoded back.
//!
//! * **TQ2_0** (llama.cpp, type 35): blocks of 256 weights, 66 bytes: 64 bytes of 2-bit codes `w + 1`, then
//!   the scale `d` as f16. Within each 128-weight half, byte `m` holds weights `m + 32l` in bits `2l..2l+1`
//!   (`l = 0..3`, least significant first). A weight is `(code - 1) * d`.
//! * **TQ1_0** (llama.cpp, type 34): blocks of 256 weights, 54 bytes: 48 bytes of five base-3 digits each,
//!   4 bytes of four digits each, then `d` as f16. Byte `m` of the first 32 holds weights `m + 32n`
//!   (`n = 0..4`), the next 16 bytes weights `160 + m + 16n`, the last 4 weights `240 + j + 4n`; the first
//!   weight is the most significant digit, and each byte stores `ceil(q * 256 / 243)` so that digit `n` is
//!   `((byte * 3^n mod 256) * 3) >> 8`.
//! * **I2_S** (bitnet.cpp, type 36): the whole tensor, row-major, in blocks of 128 weights and 32 bytes:
//!   byte `j` of a block holds weights `j`, `j + 32`, `j + 64`, `j + 96` in bits 7:6, 5:4, 3:2, 1:0 (most
//!   significant first, the opposite of TQ2_0), codes `w + 1`; then one f32 scale that multiplies every
//!   weight, at byte `n / 4`, then zeros up to `n / 4 + 32` bytes.
//!
//! Both TQ formats carry one scale per 256-weight block, where a `.bitnet` file has one per tensor.
//! llama.cpp's and gguf-py's quantizers set `d` to the block's largest magnitude, so a BitNet weight (every
//! value `±s` or 0) gets `d = f16(s)` in every block that has a non-zero weight: [`tensor_scale`] reads that
//! one value and refuses a tensor whose blocks disagree.

use half::f16;

use crate::error::{GgufError, Result};

/// Weights per TQ1_0 / TQ2_0 block.
pub const QK_K: usize = 256;
/// Weights per I2_S block.
pub const QK_I2_S: usize = 128;

/// Decodes TQ2_0 blocks holding `n` weights: the ternary values and each block's scale.
pub fn decode_tq2_0(data: &[u8], n: usize, tensor: &str) -> Result<(Vec<i8>, Vec<f16>)> {
    check_blocks(data, n, 66, tensor)?;
    let mut values = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / QK_K);
    for (b, block) in data.chunks_exact(66).enumerate() {
        let out = &mut values[b * QK_K..(b + 1) * QK_K];
        for half in 0..2 {
            for l in 0..4 {
                for m in 0..32 {
                    let code = (block[32 * half + m] >> (2 * l)) & 3;
                    if code == 3 {
                        return Err(GgufError::tensor(
                            tensor,
                            format!(
                                "block {b}, byte {} holds code 3, which is no ternary value",
                                32 * half + m
                            ),
                        ));
                    }
                    out[128 * half + 32 * l + m] = code as i8 - 1;
                }
            }
        }
        scales.push(f16::from_le_bytes([block[64], block[65]]));
    }
    Ok((values, scales))
}

/// Encodes ternary values (`values.len()` a multiple of 256) as TQ2_0 blocks, every block with scale `d`.
pub fn encode_tq2_0(values: &[i8], d: f16) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(QK_K),
        "TQ2_0 takes whole 256-weight blocks"
    );
    let mut out = Vec::with_capacity(values.len() / QK_K * 66);
    for block in values.chunks_exact(QK_K) {
        for half in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for l in 0..4 {
                    q |= code(block[128 * half + 32 * l + m]) << (2 * l);
                }
                out.push(q);
            }
        }
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

fn trit(byte: u8, n: usize) -> i8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((u16::from(q) * 3) >> 8) as i8 - 1
}

/// Decodes TQ1_0 blocks holding `n` weights: the ternary values and each block's scale.
pub fn decode_tq1_0(data: &[u8], n: usize, tensor: &str) -> Result<(Vec<i8>, Vec<f16>)> {
    check_blocks(data, n, 54, tensor)?;
    let mut values = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / QK_K);
    for (b, block) in data.chunks_exact(54).enumerate() {
        let out = &mut values[b * QK_K..(b + 1) * QK_K];
        for k in 0..5 {
            for m in 0..32 {
                out[32 * k + m] = trit(block[m], k);
            }
            for m in 0..16 {
                out[160 + 16 * k + m] = trit(block[32 + m], k);
            }
        }
        for k in 0..4 {
            for j in 0..4 {
                out[240 + 4 * k + j] = trit(block[48 + j], k);
            }
        }
        scales.push(f16::from_le_bytes([block[52], block[53]]));
    }
    Ok((values, scales))
}

fn pack_trits(digits: impl Iterator<Item = i8>) -> u8 {
    let q = digits.fold(0u16, |q, w| q * 3 + u16::from(code(w)));
    // Stored so that a multiply by 3^n and a shift read digit n back: ceil(q * 256 / 243).
    ((q * 256).div_ceil(243)) as u8
}

/// Encodes ternary values (`values.len()` a multiple of 256) as TQ1_0 blocks, every block with scale `d`.
pub fn encode_tq1_0(values: &[i8], d: f16) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(QK_K),
        "TQ1_0 takes whole 256-weight blocks"
    );
    let mut out = Vec::with_capacity(values.len() / QK_K * 54);
    for x in values.chunks_exact(QK_K) {
        for m in 0..32 {
            out.push(pack_trits((0..5).map(|k| x[m + 32 * k])));
        }
        for m in 0..16 {
            out.push(pack_trits((0..5).map(|k| x[160 + m + 16 * k])));
        }
        for j in 0..4 {
            // Four digits, then a zero digit, so the first weight is again the most significant.
            out.push(pack_trits((0..4).map(|k| x[240 + j + 4 * k]).chain([0])));
        }
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// Decodes an I2_S tensor of `n` weights: the ternary values and the tensor's f32 scale.
pub fn decode_i2s(data: &[u8], n: usize, tensor: &str) -> Result<(Vec<i8>, f32)> {
    if !n.is_multiple_of(QK_I2_S) {
        return Err(GgufError::tensor(
            tensor,
            format!("I2_S with {n} weights: not a whole number of {QK_I2_S}-weight blocks"),
        ));
    }
    if data.len() != n / 4 + 32 {
        return Err(GgufError::tensor(
            tensor,
            format!(
                "I2_S data is {} bytes; {n} weights take {}",
                data.len(),
                n / 4 + 32
            ),
        ));
    }
    let mut values = vec![0i8; n];
    for (b, block) in data[..n / 4].chunks_exact(32).enumerate() {
        for (j, &byte) in block.iter().enumerate() {
            for g in 0..4 {
                let code = (byte >> (6 - 2 * g)) & 3;
                if code == 3 {
                    return Err(GgufError::tensor(
                        tensor,
                        format!(
                            "I2_S byte {} holds code 3, which is no ternary value",
                            32 * b + j
                        ),
                    ));
                }
                values[QK_I2_S * b + 32 * g + j] = code as i8 - 1;
            }
        }
    }
    let at = n / 4;
    let scale = f32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    Ok((values, scale))
}

/// Encodes ternary values (`values.len()` a multiple of 128) as I2_S with the scale `scale`.
pub fn encode_i2s(values: &[i8], scale: f32) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(QK_I2_S),
        "I2_S takes whole 128-weight blocks"
    );
    let n = values.len();
    let mut out = vec![0u8; n / 4 + 32];
    for (b, block) in values.chunks_exact(QK_I2_S).enumerate() {
        for j in 0..32 {
            out[32 * b + j] = (0..4).fold(0u8, |q, g| q | code(block[32 * g + j]) << (6 - 2 * g));
        }
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    out
}

/// The one scale of a TQ tensor: the `d` shared by every block that holds a non-zero weight.
///
/// Refuses a non-finite or non-positive `d` and blocks that disagree (naming the first two that do):
/// ternary-trained weights have one scale per tensor, so differing block scales mean the values were not
/// BitNet's. An all-zero tensor has scale 1.
pub fn tensor_scale(values: &[i8], scales: &[f16], tensor: &str) -> Result<f32> {
    let mut first: Option<(usize, f16)> = None;
    for (b, (&d, block)) in scales.iter().zip(values.chunks(QK_K)).enumerate() {
        if block.iter().all(|&w| w == 0) {
            continue;
        }
        let v = d.to_f32();
        if !(v.is_finite() && v > 0.0) {
            return Err(GgufError::tensor(
                tensor,
                format!("block {b} has scale {v}; a scale must be finite and positive"),
            ));
        }
        match first {
            None => first = Some((b, d)),
            Some((b0, d0)) if d0.to_bits() != d.to_bits() => {
                return Err(GgufError::tensor(
                    tensor,
                    format!(
                        "block scales differ (block {b0}: {}, block {b}: {}): a BitNet b1.58 weight has one \
                         scale per tensor, and a .bitnet file stores one (SPEC.md 4.4), so this tensor's values \
                         are not ternary-trained weights",
                        d0.to_f32(),
                        v
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(1.0, |(_, d)| d.to_f32()))
}

/// Float weights that hold one ternary scale: every value `-s`, `0` or `+s` for one `s > 0`. Returns the
/// ternary values and `s`, or `None` if the values are not of that form (latent float weights).
pub fn ternary_from_floats(values: &[f32]) -> Option<(Vec<i8>, f32)> {
    let s = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !s.is_finite() {
        return None;
    }
    let mut out = Vec::with_capacity(values.len());
    for &v in values {
        out.push(if v == 0.0 {
            0
        } else if v == s {
            1
        } else if v == -s {
            -1
        } else {
            return None;
        });
    }
    Some((out, if s > 0.0 { s } else { 1.0 }))
}

#[inline]
fn code(w: i8) -> u8 {
    debug_assert!((-1..=1).contains(&w), "not a ternary value: {w}");
    (w + 1) as u8 & 3
}

fn check_blocks(data: &[u8], n: usize, block_bytes: usize, tensor: &str) -> Result<()> {
    if !n.is_multiple_of(QK_K) || data.len() != n / QK_K * block_bytes {
        return Err(GgufError::tensor(
            tensor,
            format!(
                "{} bytes for {n} weights; blocks of {QK_K} weights take {block_bytes} bytes each",
                data.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ternary(seed: u64, n: usize) -> Vec<i8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn tq2_0_and_tq1_0_round_trip() {
        let v = ternary(1, 3 * 256);
        let d = f16::from_f32(0.0123);
        let (back, scales) = decode_tq2_0(&encode_tq2_0(&v, d), v.len(), "t").unwrap();
        assert_eq!((back.clone(), scales.len()), (v.clone(), 3));
        assert_eq!(tensor_scale(&back, &scales, "t").unwrap(), d.to_f32());
        let (back, scales) = decode_tq1_0(&encode_tq1_0(&v, d), v.len(), "t").unwrap();
        assert_eq!(back, v);
        assert!(scales.iter().all(|&s| s == d));
    }

    #[test]
    fn tq1_0_decodes_every_byte_to_a_ternary_value() {
        for byte in 0..=255u8 {
            for n in 0..5 {
                assert!((-1..=1).contains(&trit(byte, n)));
            }
        }
    }

    #[test]
    fn i2s_round_trip_and_bit_order() {
        let v = ternary(7, 4 * 128);
        let bytes = encode_i2s(&v, 0.5);
        assert_eq!(bytes.len(), 4 * 32 + 32);
        let (back, s) = decode_i2s(&bytes, v.len(), "t").unwrap();
        assert_eq!((back, s), (v, 0.5));
        // Weight 0 of a block is the top two bits of byte 0; weight 32 the next two.
        let mut one = vec![0i8; 128];
        one[0] = 1;
        one[32] = -1;
        let b = encode_i2s(&one, 1.0);
        assert_eq!(b[0], 0b10_00_01_01);
    }

    #[test]
    fn code_3_is_refused() {
        let mut bytes = encode_tq2_0(&[0; 256], f16::ONE);
        bytes[5] = 0xFF;
        assert!(decode_tq2_0(&bytes, 256, "t").is_err());
        let mut bytes = encode_i2s(&[0; 128], 1.0);
        bytes[3] = 0xC0;
        assert!(decode_i2s(&bytes, 128, "t").is_err());
    }

    #[test]
    fn differing_block_scales_are_refused_and_zero_blocks_ignored() {
        let mut v = ternary(3, 512);
        let s = [f16::from_f32(0.5), f16::from_f32(0.25)];
        assert!(
            tensor_scale(&v, &s, "t")
                .unwrap_err()
                .to_string()
                .contains("differ")
        );
        v[256..].fill(0);
        assert_eq!(tensor_scale(&v, &s, "t").unwrap(), 0.5);
        assert!(tensor_scale(&v, &[f16::NAN, f16::ONE], "t").is_err());
    }

    #[test]
    fn floats_with_one_scale_are_ternary() {
        assert_eq!(
            ternary_from_floats(&[0.25, -0.25, 0.0]),
            Some((vec![1, -1, 0], 0.25))
        );
        assert_eq!(ternary_from_floats(&[0.25, -0.125]), None);
    }
}
