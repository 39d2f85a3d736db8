//! Tensor data layouts of SPEC.md section 4: the byte order the kernels read straight from the map.
//!
//! Two tiled layouts share one idea: rows are grouped in tiles of [`TILE_ROWS`] = 16, and each tile is a
//! run of 64-byte chunks, one cache line and one 512-bit register each, that cover 16 rows of a few
//! columns. Every dimension is padded up to a multiple of 16; padded weights are zero.
//!
//! * `ternary_r16`: 2-bit codes `c = w + 1`. Chunk `g` of tile `T` covers columns `16g..16g+16`; its byte
//!   `4r + t` holds, in bits `2q..2q+1`, the code of weight (row `16T + r`, column `16g + 4q + t`).
//! * `int8_r16`: bytes `u = w + 128`. Chunk `g` of tile `T` covers columns `4g..4g+4`; its byte `4r + t`
//!   holds weight (row `16T + r`, column `4g + t`). The tiles are followed by one f32 scale per padded row.
//!
//! The functions here are the normative encoders and decoders; the converter and the tests use them, the
//! kernels read the same bytes.

/// Rows per tile in both tiled layouts.
pub const TILE_ROWS: usize = 16;
/// Bytes per chunk (one cache line).
pub const CHUNK_BYTES: usize = 64;
/// Columns covered by one `ternary_r16` chunk.
pub const TERNARY_CHUNK_COLS: usize = 16;
/// Columns covered by one `int8_r16` chunk.
pub const INT8_CHUNK_COLS: usize = 4;

/// `n` rounded up to a multiple of 16 (the padding rule for rows and columns of tiled tensors).
pub const fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// Bytes of a `ternary_r16` tensor of logical shape `[rows, cols]`.
pub const fn ternary_len(rows: usize, cols: usize) -> usize {
    pad16(rows) * pad16(cols) / 4
}

/// Bytes of one `ternary_r16` tile (16 rows of `cols` padded columns).
pub const fn ternary_tile_len(cols: usize) -> usize {
    TILE_ROWS * pad16(cols) / 4
}

/// Bytes of an `int8_r16` tensor of logical shape `[rows, cols]`: the tiles, then the f32 row scales.
pub const fn int8_len(rows: usize, cols: usize) -> usize {
    pad16(rows) * pad16(cols) + 4 * pad16(rows)
}

/// Bytes of one `int8_r16` tile.
pub const fn int8_tile_len(cols: usize) -> usize {
    TILE_ROWS * pad16(cols)
}

/// The 2-bit code of a ternary weight: `w + 1`.
#[inline]
fn code(w: i8) -> u8 {
    debug_assert!((-1..=1).contains(&w), "ternary weight out of range: {w}");
    (w + 1) as u8 & 3
}

/// Packs tile `tile` of a row-major ternary matrix `[rows, cols]` (values in -1..=1) into `out`.
///
/// `out` must be exactly [`ternary_tile_len`]`(cols)` bytes. Rows and columns past the matrix are padded
/// with code 1 (weight 0).
pub fn pack_ternary_tile(values: &[i8], rows: usize, cols: usize, tile: usize, out: &mut [u8]) {
    assert_eq!(values.len(), rows * cols, "values must be rows * cols");
    assert_eq!(out.len(), ternary_tile_len(cols), "out must be one tile");
    let groups = pad16(cols) / TERNARY_CHUNK_COLS;
    for r in 0..TILE_ROWS {
        let row = tile * TILE_ROWS + r;
        // A padded copy of the row, so every chunk reads 16 in-range values.
        let mut padded;
        for g in 0..groups {
            let c0 = g * TERNARY_CHUNK_COLS;
            let src: &[i8] = if row < rows && c0 + 16 <= cols {
                &values[row * cols + c0..row * cols + c0 + 16]
            } else {
                padded = [0; 16];
                if row < rows && c0 < cols {
                    padded[..cols - c0]
                        .copy_from_slice(&values[row * cols + c0..row * cols + cols]);
                }
                &padded
            };
            let chunk = &mut out[g * CHUNK_BYTES + 4 * r..g * CHUNK_BYTES + 4 * r + 4];
            for (t, byte) in chunk.iter_mut().enumerate() {
                *byte = code(src[t])
                    | code(src[4 + t]) << 2
                    | code(src[8 + t]) << 4
                    | code(src[12 + t]) << 6;
            }
        }
    }
}

/// Packs a whole row-major ternary matrix into a new `ternary_r16` buffer.
pub fn pack_ternary(values: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let tile_len = ternary_tile_len(cols);
    let mut out = vec![0u8; ternary_len(rows, cols)];
    for (tile, chunk) in out.chunks_exact_mut(tile_len).enumerate() {
        pack_ternary_tile(values, rows, cols, tile, chunk);
    }
    out
}

/// Decodes a `ternary_r16` buffer back to row-major ternary values `[rows, cols]`.
///
/// Returns `None` if the buffer has the wrong length or holds code 3, which no valid file contains.
pub fn unpack_ternary(data: &[u8], rows: usize, cols: usize) -> Option<Vec<i8>> {
    if data.len() != ternary_len(rows, cols) {
        return None;
    }
    let kp = pad16(cols);
    let tile_len = ternary_tile_len(cols);
    let mut out = vec![0i8; rows * cols];
    for (tile, tile_bytes) in data.chunks_exact(tile_len).enumerate() {
        for (g, chunk) in tile_bytes.chunks_exact(CHUNK_BYTES).enumerate() {
            for (i, &byte) in chunk.iter().enumerate() {
                let (r, t) = (i / 4, i % 4);
                let row = tile * TILE_ROWS + r;
                for q in 0..4 {
                    let c = (byte >> (2 * q)) & 3;
                    if c == 3 {
                        return None;
                    }
                    let col = g * TERNARY_CHUNK_COLS + 4 * q + t;
                    debug_assert!(col < kp);
                    if row < rows && col < cols {
                        out[row * cols + col] = c as i8 - 1;
                    }
                }
            }
        }
    }
    Some(out)
}

/// Packs tile `tile` of a row-major int8 matrix `[rows, cols]` into `out` (`int8_tile_len(cols)` bytes),
/// storing `w + 128`; padding is weight 0 (byte 128).
pub fn pack_int8_tile(values: &[i8], rows: usize, cols: usize, tile: usize, out: &mut [u8]) {
    assert_eq!(values.len(), rows * cols, "values must be rows * cols");
    assert_eq!(out.len(), int8_tile_len(cols), "out must be one tile");
    let groups = pad16(cols) / INT8_CHUNK_COLS;
    for g in 0..groups {
        let chunk = &mut out[g * CHUNK_BYTES..(g + 1) * CHUNK_BYTES];
        for r in 0..TILE_ROWS {
            let row = tile * TILE_ROWS + r;
            for t in 0..INT8_CHUNK_COLS {
                let col = g * INT8_CHUNK_COLS + t;
                let w = if row < rows && col < cols {
                    values[row * cols + col]
                } else {
                    0
                };
                chunk[4 * r + t] = (w as i16 + 128) as u8;
            }
        }
    }
}

/// Packs a whole int8 matrix with its row scales into a new `int8_r16` buffer.
///
/// `scales` has one entry per logical row; padded rows get scale 0.
pub fn pack_int8(values: &[i8], scales: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(scales.len(), rows, "one scale per row");
    let tile_len = int8_tile_len(cols);
    let tiles_len = pad16(rows) * pad16(cols);
    let mut out = vec![0u8; int8_len(rows, cols)];
    let (tiles, scale_bytes) = out.split_at_mut(tiles_len);
    for (tile, chunk) in tiles.chunks_exact_mut(tile_len).enumerate() {
        pack_int8_tile(values, rows, cols, tile, chunk);
    }
    for (i, s) in scales.iter().enumerate() {
        scale_bytes[4 * i..4 * i + 4].copy_from_slice(&s.to_le_bytes());
    }
    out
}

/// Decodes an `int8_r16` buffer into row-major int8 values and the per-row scales (logical rows only).
pub fn unpack_int8(data: &[u8], rows: usize, cols: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    if data.len() != int8_len(rows, cols) {
        return None;
    }
    let tile_len = int8_tile_len(cols);
    let tiles_len = pad16(rows) * pad16(cols);
    let mut values = vec![0i8; rows * cols];
    for (tile, tile_bytes) in data[..tiles_len].chunks_exact(tile_len).enumerate() {
        for (g, chunk) in tile_bytes.chunks_exact(CHUNK_BYTES).enumerate() {
            for (i, &byte) in chunk.iter().enumerate() {
                let (r, t) = (i / 4, i % 4);
                let (row, col) = (tile * TILE_ROWS + r, g * INT8_CHUNK_COLS + t);
                if row < rows && col < cols {
                    values[row * cols + col] = (byte as i16 - 128) as i8;
                }
            }
        }
    }
    let scales = data[tiles_len..tiles_len + 4 * rows]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some((values, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg_ternary(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn ternary_round_trips_on_ragged_shapes() {
        for (rows, cols) in [(1, 1), (16, 16), (17, 33), (3, 5), (40, 72), (32, 200)] {
            let v = lcg_ternary(rows * cols, (rows * 1000 + cols) as u64);
            let packed = pack_ternary(&v, rows, cols);
            assert_eq!(packed.len(), ternary_len(rows, cols));
            assert_eq!(unpack_ternary(&packed, rows, cols).unwrap(), v);
        }
    }

    #[test]
    fn ternary_padding_is_code_one() {
        let packed = pack_ternary(&[1], 1, 1);
        // Row 0, column 0 is +1 (code 2) in byte 0 bits 0..2; every other weight is padding, code 1.
        assert_eq!(packed[0], 0b01_01_01_10);
        assert!(packed[1..].iter().all(|&b| b == 0b01_01_01_01));
    }

    #[test]
    fn ternary_rejects_code_three() {
        let mut packed = pack_ternary(&[0; 256], 16, 16);
        packed[7] |= 0b11 << 4;
        assert!(unpack_ternary(&packed, 16, 16).is_none());
    }

    #[test]
    fn int8_round_trips_on_ragged_shapes() {
        for (rows, cols) in [(1, 1), (17, 5), (33, 48)] {
            let v: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 37) % 255) as i16 as i8)
                .collect();
            let s: Vec<f32> = (0..rows).map(|i| i as f32 * 0.5 + 0.25).collect();
            let packed = pack_int8(&v, &s, rows, cols);
            let (v2, s2) = unpack_int8(&packed, rows, cols).unwrap();
            assert_eq!(v2, v);
            assert_eq!(s2, s);
        }
    }
}
