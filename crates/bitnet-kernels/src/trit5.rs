//! Experiment (issue 14, item 2): five ternary weights per byte (1.6 bits per weight, as llama.cpp's
//! TQ1_0 stores them) against the 2-bit `ternary_r16` layout (2 bits per weight). Not part of the file
//! format and not used by the model: `benches/trit5.rs` measures whether the 20% fewer bytes make decode
//! faster, and the README reports what it found.
//!
//! Layout: rows in tiles of 16, columns in chunks of 20, one 64-byte chunk per (tile, column chunk).
//! Byte `4 r + j` of chunk `g` of a tile holds the codes `c_q = w + 1` of row `r`'s columns `20 g + 4 q + j`
//! for `q = 0..5`, as TQ1_0 encodes five digits: `n = sum_q c_q 3^(4 - q)` (0..=242) stored as
//! `ceil(256 n / 243)`, from which digit `q` is the high byte of `3 ((b 3^q) mod 256)`. So each digit
//! `q` of a chunk is a 64-byte plane laid out as the 2-bit kernels' planes are (16 rows x 4 bytes, each
//! 4-byte word against one broadcast word of activations), decoded with multiplies instead of masks.

use std::ops::Range;

use crate::scalar::TILE;

/// Columns covered by one chunk.
pub const CHUNK_COLS: usize = 20;

/// `cols` rounded up to whole chunks.
pub fn pad20(cols: usize) -> usize {
    cols.div_ceil(CHUNK_COLS) * CHUNK_COLS
}

/// The byte holding codes `c` (each 0..=2, `c[0]` the first digit).
pub fn encode(c: [u8; 5]) -> u8 {
    let n = c.iter().fold(0u16, |n, &d| 3 * n + u16::from(d));
    (n << 8).div_ceil(243) as u8
}

/// Digit `q` (0..5) of byte `b`.
pub fn digit(b: u8, q: u32) -> u8 {
    let t = b.wrapping_mul(3u8.pow(q));
    ((u16::from(t) * 3) >> 8) as u8
}

/// A matrix in the five-per-byte layout.
#[derive(Debug, Clone)]
pub struct Trit5Matrix {
    /// `pad16(rows) * pad20(cols) / 5` bytes.
    pub data: Vec<u8>,
    /// Logical rows.
    pub rows: usize,
    /// Logical columns.
    pub cols: usize,
}

impl Trit5Matrix {
    /// Packs `w` (`rows x cols` row-major, values in -1..=1).
    pub fn pack(w: &[i8], rows: usize, cols: usize) -> Trit5Matrix {
        assert_eq!(w.len(), rows * cols, "w must be rows x cols");
        let chunks = pad20(cols) / CHUNK_COLS;
        let tiles = crate::pad16(rows) / TILE;
        let mut data = vec![0u8; tiles * chunks * 64];
        let code = |r: usize, c: usize| -> u8 {
            if r < rows && c < cols {
                (w[r * cols + c] + 1) as u8
            } else {
                1 // a zero weight
            }
        };
        for t in 0..tiles {
            for g in 0..chunks {
                let chunk = &mut data[(t * chunks + g) * 64..][..64];
                for r in 0..TILE {
                    for j in 0..4 {
                        let digits =
                            std::array::from_fn(|q| code(t * TILE + r, 20 * g + 4 * q + j));
                        chunk[4 * r + j] = encode(digits);
                    }
                }
            }
        }
        Trit5Matrix { data, rows, cols }
    }

    fn chunks(&self) -> usize {
        pad20(self.cols) / CHUNK_COLS
    }
}

/// The scalar oracle: `out[r - 16 tiles.start] = sum_k w[r][k] x[k]` for the rows of `tiles`, with `x`
/// `pad20(cols)` activations (zero past `cols`).
pub fn gemv_scalar(m: &Trit5Matrix, x: &[i8], tiles: Range<usize>, out: &mut [i32]) {
    let chunks = m.chunks();
    for (i, t) in tiles.enumerate() {
        for r in 0..TILE {
            let mut acc = 0i32;
            for g in 0..chunks {
                let chunk = &m.data[(t * chunks + g) * 64..][..64];
                for j in 0..4 {
                    let b = chunk[4 * r + j];
                    for q in 0..5 {
                        let w = i32::from(digit(b, q as u32)) - 1;
                        acc += w * i32::from(x[20 * g + 4 * q + j]);
                    }
                }
            }
            out[i * TILE + r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{gemv_avx512, gemv_avx512_vbmi};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Trit5Matrix, digit};
    use crate::scalar::TILE;

    /// The five digit planes of a chunk, by arithmetic: even bytes kept in the high byte of each 16-bit
    /// lane (digit = `mulhi(T, 3)`, next `T = mullo(T, 3)`), odd bytes in the low byte (`u = 3 t`: digit
    /// in the high byte, next `t` in the low byte); one `vpternlogd` merges the two halves.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn planes_arith(v: __m512i) -> [__m512i; 5] {
        let three = _mm512_set1_epi16(3);
        let lo = _mm512_set1_epi16(0x00ff);
        let mut e = _mm512_slli_epi16::<8>(v);
        let mut o = _mm512_srli_epi16::<8>(v);
        std::array::from_fn(|_| {
            let de = _mm512_mulhi_epu16(e, three);
            e = _mm512_mullo_epi16(e, three);
            let u = _mm512_mullo_epi16(o, three);
            o = _mm512_and_si512(u, lo);
            // de | (u & !lo): truth table A | (B & !C) over (A, B, C) = (de, u, lo) is 0xF4.
            _mm512_ternarylogic_epi32::<0xF4>(de, u, lo)
        })
    }

    /// `(sum_k w x + sum_k x)` per row for `TT` tiles: the codes are `w + 1`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_block<const TT: usize, const VBMI: bool>(
        m: &Trit5Matrix,
        x: &[i8],
        t0: usize,
        tables: &[[__m512i; 4]; 5],
    ) -> [__m512i; TT] {
        let chunks = m.chunks();
        let mut acc = [[_mm512_setzero_si512(); 5]; TT];
        for g in 0..chunks {
            let mut planes = [[_mm512_setzero_si512(); 5]; TT];
            for (tt, p) in planes.iter_mut().enumerate() {
                // SAFETY: chunk g of tile t0 + tt lies inside m.data (the caller checks the tile range).
                let v = unsafe {
                    _mm512_loadu_si512(
                        m.data.as_ptr().add(((t0 + tt) * chunks + g) * 64) as *const _
                    )
                };
                *p = if VBMI {
                    // SAFETY: the caller checked avx512vbmi.
                    unsafe { planes_vbmi(v, tables) }
                } else {
                    planes_arith(v)
                };
            }
            for q in 0..5 {
                // SAFETY: x holds pad20(cols) = 20 * chunks bytes.
                let w = unsafe { (x.as_ptr().add(20 * g + 4 * q) as *const i32).read_unaligned() };
                let b = _mm512_set1_epi32(w);
                for tt in 0..TT {
                    acc[tt][q] = _mm512_dpbusd_epi32(acc[tt][q], planes[tt][q], b);
                }
            }
        }
        acc.map(|a| {
            _mm512_add_epi32(
                _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3])),
                a[4],
            )
        })
    }

    /// The five digit planes of a chunk by table lookup: `vpermi2b` over the table's low and high
    /// 128 entries, chosen by each byte's top bit.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn planes_vbmi(v: __m512i, tables: &[[__m512i; 4]; 5]) -> [__m512i; 5] {
        let high = _mm512_movepi8_mask(v);
        std::array::from_fn(|q| {
            let t = &tables[q];
            let a = _mm512_permutex2var_epi8(t[0], v, t[1]);
            let b = _mm512_permutex2var_epi8(t[2], v, t[3]);
            _mm512_mask_blend_epi8(high, a, b)
        })
    }

    fn vbmi_tables() -> [[__m512i; 4]; 5] {
        std::array::from_fn(|q| {
            let bytes: [u8; 256] = std::array::from_fn(|b| digit(b as u8, q as u32));
            // SAFETY: 256 bytes read as four 64-byte vectors.
            std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(bytes.as_ptr().add(64 * i) as *const _)
            })
        })
    }

    fn run<const VBMI: bool>(m: &Trit5Matrix, x: &[i8], tiles: Range<usize>, out: &mut [i32]) {
        let features = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && (!VBMI || is_x86_feature_detected!("avx512vbmi"));
        assert!(features, "this CPU lacks the kernel's AVX-512 features");
        let chunks = m.chunks();
        assert!(tiles.end * chunks * 64 <= m.data.len() && x.len() >= 20 * chunks);
        assert!(out.len() >= tiles.len() * TILE);
        let xsum: i32 = x.iter().map(|&v| i32::from(v)).sum();
        let tables = if VBMI {
            vbmi_tables()
        } else {
            // SAFETY: unused by the arithmetic kernel.
            unsafe { std::mem::zeroed() }
        };
        let store = |a: __m512i, o: &mut [i32]| {
            // SAFETY: o holds 16 i32.
            unsafe {
                _mm512_storeu_si512(
                    o.as_mut_ptr() as *mut _,
                    _mm512_sub_epi32(a, _mm512_set1_epi32(xsum)),
                )
            }
        };
        let mut t = tiles.start;
        while t < tiles.end {
            let i = t - tiles.start;
            if t + 2 <= tiles.end {
                // SAFETY: features checked above; tiles t, t + 1 are in range.
                let [a, b] = unsafe { tile_block::<2, VBMI>(m, x, t, &tables) };
                store(a, &mut out[i * TILE..][..TILE]);
                store(b, &mut out[(i + 1) * TILE..][..TILE]);
                t += 2;
            } else {
                // SAFETY: as above, tile t.
                let [a] = unsafe { tile_block::<1, VBMI>(m, x, t, &tables) };
                store(a, &mut out[i * TILE..][..TILE]);
                t += 1;
            }
        }
    }

    /// [`super::gemv_scalar`] with AVX-512 VNNI, digits decoded by multiplies.
    pub fn gemv_avx512(m: &Trit5Matrix, x: &[i8], tiles: Range<usize>, out: &mut [i32]) {
        run::<false>(m, x, tiles, out)
    }

    /// [`super::gemv_scalar`] with AVX-512 VNNI, digits decoded by `vpermi2b` table lookups (VBMI).
    pub fn gemv_avx512_vbmi(m: &Trit5Matrix, x: &[i8], tiles: Range<usize>, out: &mut [i32]) {
        run::<true>(m, x, tiles, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_decodes_to_its_digits() {
        for n in 0..243u16 {
            let c: [u8; 5] = std::array::from_fn(|q| ((n / 3u16.pow(4 - q as u32)) % 3) as u8);
            let b = encode(c);
            for (q, &c) in c.iter().enumerate() {
                assert_eq!(digit(b, q as u32), c, "n {n} digit {q}");
            }
        }
    }

    fn weights(rows: usize, cols: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn kernels_equal_the_oracle_and_the_plain_product() {
        for (rows, cols) in [(1, 1), (17, 21), (33, 40), (48, 77), (5, 130)] {
            let w = weights(rows, cols, (rows * 1000 + cols) as u64);
            let m = Trit5Matrix::pack(&w, rows, cols);
            let mut x = vec![0i8; pad20(cols)];
            for (k, v) in x.iter_mut().take(cols).enumerate() {
                *v = ((k * 37 % 255) as i32 - 127) as i8;
            }
            let tiles = crate::pad16(rows) / TILE;
            let mut want = vec![0i32; tiles * TILE];
            gemv_scalar(&m, &x, 0..tiles, &mut want);
            for r in 0..rows {
                let plain: i32 = (0..cols)
                    .map(|k| i32::from(w[r * cols + k]) * i32::from(x[k]))
                    .sum();
                assert_eq!(want[r], plain, "{rows}x{cols} row {r}");
            }
            #[cfg(target_arch = "x86_64")]
            {
                type Gemv = fn(&Trit5Matrix, &[i8], Range<usize>, &mut [i32]);
                let mut kernels: Vec<(&str, Gemv)> = Vec::new();
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
                    kernels.push(("avx512", gemv_avx512));
                    if is_x86_feature_detected!("avx512vbmi") {
                        kernels.push(("avx512-vbmi", gemv_avx512_vbmi));
                    }
                }
                for (name, k) in kernels {
                    let mut got = vec![0i32; tiles * TILE];
                    k(&m, &x, 0..tiles, &mut got);
                    assert_eq!(got, want, "{name} {rows}x{cols}");
                    // A tile range that starts past 0 writes from out[0].
                    if tiles > 1 {
                        let mut part = vec![0i32; (tiles - 1) * TILE];
                        k(&m, &x, 1..tiles, &mut part);
                        assert_eq!(part, want[TILE..], "{name} {rows}x{cols} from tile 1");
                    }
                }
            }
        }
    }
}
