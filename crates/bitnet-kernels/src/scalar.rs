//! The reference kernels: plain loops over the SPEC.md layouts. Every optimized kernel must produce the
//! same bits; the order of float operations defined here is part of that contract.

use std::ops::Range;

use crate::quant::QuantizedBatch;
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix, pad16, round_half_even};

/// Rows per tile.
pub const TILE: usize = 16;

/// Decodes tile `tile` of `m` into `w` as `[16][pad16(cols)]` weights in -1..=1 (padding decodes to 0).
pub fn decode_tile(m: &TernaryMatrix<'_>, tile: usize, w: &mut Vec<i8>) {
    let kp = pad16(m.cols);
    w.clear();
    w.resize(TILE * kp, 0);
    let tile_bytes = &m.data[tile * 4 * kp..(tile + 1) * 4 * kp];
    for (g, chunk) in tile_bytes.chunks_exact(64).enumerate() {
        for (i, &byte) in chunk.iter().enumerate() {
            let (r, t) = (i / 4, i % 4);
            let row = &mut w[r * kp + 16 * g + t..];
            for q in 0..4 {
                row[4 * q] = ((byte >> (2 * q)) & 3) as i8 - 1;
            }
        }
    }
}

/// The exact integer dot product of ternary weights and int8 activations.
#[inline]
pub fn dot_i8(w: &[i8], x: &[i8]) -> i32 {
    // Sixteen independent lanes let the compiler vectorize this with the baseline instruction set.
    let mut lanes = [0i32; 16];
    for (wc, xc) in w.chunks_exact(16).zip(x.chunks_exact(16)) {
        for i in 0..16 {
            lanes[i] += wc[i] as i32 * xc[i] as i32;
        }
    }
    lanes.iter().sum()
}

/// The BitLinear epilogue: `y = (acc - sum) * (scale / a)`, in that order of f32 operations, where
/// `acc - sum` is the exact integer `sum_k w[r,k] * q[k]` (kernels that multiply codes `w + 1` subtract the
/// activation sum `sum`; kernels that multiply weights pass `sum = 0`).
#[inline(always)]
pub fn ternary_epilogue(acc: i32, sum: i32, factor: f32) -> f32 {
    (acc - sum) as f32 * factor
}

/// `out[t * out_stride + (r - 16 * tiles.start)] = BitLinear(m, x[t])[r]` for the rows `r` of `tiles`
/// (rows past `m.rows` skipped): `out` holds the tile range's rows for every token.
///
/// Each tile is decoded once and reused for every token of the batch.
pub fn ternary_matmul(
    m: &TernaryMatrix<'_>,
    x: &QuantizedBatch,
    tiles: Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    let kp = pad16(m.cols);
    debug_assert_eq!(x.kp, kp, "activation width must match the matrix");
    let row0 = tiles.start * TILE;
    let mut w = Vec::with_capacity(TILE * kp);
    for tile in tiles {
        decode_tile(m, tile, &mut w);
        for t in 0..x.n {
            let factor = m.scale / x.scale[t];
            let xt = x.token(t);
            for r in 0..TILE {
                let row = tile * TILE + r;
                if row < m.rows {
                    let dot = dot_i8(&w[r * kp..(r + 1) * kp], xt);
                    out[t * out_stride + row - row0] = ternary_epilogue(dot, 0, factor);
                }
            }
        }
    }
}

/// Columns per activation block of the int8 LM head.
pub const HEAD_BLOCK: usize = 256;

/// The input of the int8 LM head: one vector quantized with one scale per 256-column block.
#[derive(Debug, Clone, Default)]
pub struct BlockQuantized {
    /// `kp` int8 values.
    pub q: Vec<i8>,
    /// Per block: `amax / 127`, the value of one int8 step.
    pub step: Vec<f32>,
    /// Per block: the sum of its int8 values (SIMD kernels read stored bytes `w + 128` and subtract
    /// `128 * sum`).
    pub sum: Vec<i32>,
}

impl BlockQuantized {
    /// Quantizes `x` per 256-column block: `q = clamp(round_half_even(x * 127 / max(amax, 1e-5)), -127, 127)`.
    pub fn quantize(&mut self, x: &[f32]) {
        let kp = pad16(x.len());
        self.q.clear();
        self.q.resize(kp, 0);
        self.step.clear();
        for (b, block) in x.chunks(HEAD_BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
            let a = 127.0f32 / amax;
            for (i, &v) in block.iter().enumerate() {
                self.q[b * HEAD_BLOCK + i] = round_half_even((v * a).clamp(-127.0, 127.0)) as i8;
            }
            self.step.push(amax / 127.0);
        }
        self.sum.clear();
        self.sum.extend(
            self.q
                .chunks(HEAD_BLOCK)
                .map(|b| b.iter().map(|&v| v as i32).sum::<i32>()),
        );
    }
}

/// `out[r - rows.start] = row_scale[r] * sum_b (sum_{k in b} w[r,k] * q[k]) * step[b]` for `rows` of the int8 head,
/// summing the blocks in order in f32.
pub fn int8_matvec(m: &Int8Matrix<'_>, x: &BlockQuantized, rows: Range<usize>, out: &mut [f32]) {
    let (rp, kp) = (pad16(m.rows), pad16(m.cols));
    let scales = &m.data[rp * kp..];
    for row in rows.clone() {
        let (tile, r) = (row / TILE, row % TILE);
        let base = tile * TILE * kp;
        let mut total = 0f32;
        for (b, &step) in x.step.iter().enumerate() {
            let mut acc = 0i32;
            for col in b * HEAD_BLOCK..((b + 1) * HEAD_BLOCK).min(kp) {
                let u = m.data[base + 64 * (col / 4) + 4 * r + col % 4];
                acc += (u as i32 - 128) * x.q[col] as i32;
            }
            total += acc as f32 * step;
        }
        let s = f32::from_le_bytes(scales[4 * row..4 * row + 4].try_into().expect("4 bytes"));
        out[row - rows.start] = total * s;
    }
}

/// [`int8_matvec`] for several quantized vectors: `out` is `[xs.len(), rows.len()]`, token-major.
pub fn int8_matmul(m: &Int8Matrix<'_>, xs: &[BlockQuantized], rows: Range<usize>, out: &mut [f32]) {
    let w = rows.len();
    assert!(out.len() >= xs.len() * w, "output of the int8 head");
    for (x, o) in xs.iter().zip(out.chunks_mut(w.max(1))) {
        int8_matvec(m, x, rows.clone(), o);
    }
}

/// Lanes of the canonical float dot product.
pub const DOT_LANES: usize = 16;

/// Reduces 16 lane sums in the canonical order: halve the width (8, 4, 2, 1), adding lane `i + w` to lane `i`.
#[inline(always)]
pub fn reduce_lanes(mut l: [f32; DOT_LANES]) -> f32 {
    let mut w = DOT_LANES / 2;
    while w > 0 {
        for i in 0..w {
            l[i] += l[i + w];
        }
        w /= 2;
    }
    l[0]
}

/// `out[r - rows.start] = x . m[r]` for `rows` of a bf16 matrix: lane `j` sums columns `k = j (mod 16)` in order with a
/// separate multiply and add, then [`reduce_lanes`].
pub fn bf16_matvec(m: &Bf16Matrix<'_>, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    let cols = m.cols;
    for row in rows.clone() {
        let w = &m.data[2 * row * cols..2 * (row + 1) * cols];
        let mut lanes = [0f32; DOT_LANES];
        for (k, (b, &xv)) in w.chunks_exact(2).zip(x).enumerate() {
            let wv = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            let p = wv * xv;
            lanes[k % DOT_LANES] += p;
        }
        out[row - rows.start] = reduce_lanes(lanes);
    }
}

/// `out[r - rows.start] = x . m[r]` for `rows` of a row-major f32 matrix (`4 * rows * cols` bytes), in the canonical
/// order of [`bf16_matvec`].
pub fn f32_matvec(data: &[u8], cols: usize, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    for row in rows.clone() {
        let w = &data[4 * row * cols..4 * (row + 1) * cols];
        let mut lanes = [0f32; DOT_LANES];
        for (k, (b, &xv)) in w.chunks_exact(4).zip(x).enumerate() {
            let wv = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            lanes[k % DOT_LANES] += wv * xv;
        }
        out[row - rows.start] = reduce_lanes(lanes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs a row-major ternary matrix per SPEC.md 4.4 (the test's own packer).
    fn pack(w: &[i8], rows: usize, cols: usize) -> Vec<u8> {
        let kp = pad16(cols);
        let mut out = vec![0u8; pad16(rows) * kp / 4];
        for tile in 0..pad16(rows) / 16 {
            for g in 0..kp / 16 {
                for r in 0..16 {
                    for t in 0..4 {
                        let mut byte = 0u8;
                        for q in 0..4 {
                            let (row, col) = (tile * 16 + r, 16 * g + 4 * q + t);
                            let v = if row < rows && col < cols {
                                w[row * cols + col]
                            } else {
                                0
                            };
                            byte |= ((v + 1) as u8) << (2 * q);
                        }
                        out[tile * 4 * kp + 64 * g + 4 * r + t] = byte;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn ternary_matmul_is_the_exact_integer_product() {
        let (rows, cols) = (19, 37);
        let w: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
            .collect();
        let data = pack(&w, rows, cols);
        let m = TernaryMatrix {
            data: &data,
            rows,
            cols,
            scale: 0.5,
        };
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let mut b = QuantizedBatch::default();
        b.quantize(&x, cols);
        let mut out = vec![0f32; 2 * rows];
        ternary_matmul(&m, &b, 0..pad16(rows) / 16, &mut out, rows);
        for t in 0..2 {
            for r in 0..rows {
                let dot: i32 = (0..cols)
                    .map(|k| w[r * cols + k] as i32 * b.q[t * b.kp + k] as i32)
                    .sum();
                assert_eq!(
                    out[t * rows + r],
                    dot as f32 * (0.5 / b.scale[t]),
                    "t {t} r {r}"
                );
            }
        }
    }

    #[test]
    fn bf16_matvec_sums_in_the_canonical_order() {
        let (rows, cols) = (3, 40);
        let vals: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let data: Vec<u8> = vals
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let m = Bf16Matrix {
            data: &data,
            rows,
            cols,
        };
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; rows];
        bf16_matvec(&m, &x, 0..rows, &mut out);
        for (r, got) in out.iter().enumerate() {
            let exact: f64 = (0..cols)
                .map(|k| f32::from_bits(data_bits(&data, r * cols + k)) as f64 * x[k] as f64)
                .sum();
            assert!((*got as f64 - exact).abs() < 1e-5, "{got} vs {exact}");
        }
    }

    fn data_bits(d: &[u8], i: usize) -> u32 {
        (u16::from_le_bytes([d[2 * i], d[2 * i + 1]]) as u32) << 16
    }
}
