//! Every op of every kernel set this CPU runs produces the portable oracle's bits, over random shapes with
//! ragged tails.

use bitnet_format::layout;
use bitnet_kernels::dispatch::{Kernels, NAMES};
use bitnet_kernels::ops::{self, ATTN_GROUP, KvLayout};
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::BlockQuantized;
use bitnet_kernels::{Bf16Matrix, Int8Matrix, TernaryMatrix, pad16};
use bitnet_kernels::{pool, quant};
use proptest::prelude::*;

/// Every set this CPU runs (`BITNET_EXPECT_KERNELS` makes a missing expected set fail, see
/// [`Kernels::available`]), the scalar oracle included.
fn kernel_sets() -> Vec<Kernels> {
    Kernels::available()
}

/// Bit-for-bit equality of two f32 slices (NaN where neither wrote).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ternary_kernels_equal_scalar(rows in 1usize..70, cols in 1usize..300, n in 1usize..13, seed in any::<u64>(), scale in 0.001f32..0.1) {
        let mut r = lcg(seed);
        let w: Vec<i8> = (0..rows * cols).map(|_| (r() % 3) as i8 - 1).collect();
        let data = layout::pack_ternary(&w, rows, cols);
        let m = TernaryMatrix { data: &data, rows, cols, scale };
        let x: Vec<f32> = (0..n * cols).map(|_| (r() % 20001) as f32 / 1000.0 - 10.0).collect();
        let mut b = QuantizedBatch::default();
        b.quantize(&x, cols);
        let tiles = pad16(rows) / 16;
        let t0 = (r() as usize) % tiles;
        let t1 = t0 + 1 + (r() as usize) % (tiles - t0);
        let width = (t1 * 16).min(rows) - t0 * 16;
        // Token rows of the output may be wider than the tile range (one thread's rows of a wider
        // matrix); what lies between them must stay untouched (NaN in both).
        let stride = width + (r() as usize % 3) * 7;
        let len = (n - 1) * stride + width;
        let mut want = vec![f32::NAN; len];
        (Kernels::scalar().ternary)(&m, &b, t0..t1, &mut want, stride);
        for k in kernel_sets() {
            let mut got = vec![f32::NAN; len];
            (k.ternary)(&m, &b, t0..t1, &mut got, stride);
            let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "{} differs at rows {}x{} n {} tiles {}..{}", k.name, rows, cols, n, t0, t1);
        }
    }

    #[test]
    fn int8_head_kernels_equal_scalar(rows in 1usize..70, cols in 1usize..700, n in 1usize..7, seed in any::<u64>()) {
        let mut r = lcg(seed);
        let w: Vec<i8> = (0..rows * cols).map(|_| ((r() % 255) as i16 - 127) as i8).collect();
        let s: Vec<f32> = (0..rows).map(|_| (r() % 1000 + 1) as f32 * 1e-4).collect();
        let data = layout::pack_int8(&w, &s, rows, cols);
        let m = Int8Matrix { data: &data, rows, cols };
        let qs: Vec<BlockQuantized> = (0..n)
            .map(|_| {
                let x: Vec<f32> = (0..cols).map(|_| (r() % 20001) as f32 / 1000.0 - 10.0).collect();
                let mut q = BlockQuantized::default();
                q.quantize(&x);
                q
            })
            .collect();
        let r0 = (r() as usize) % rows;
        let r1 = r0 + 1 + (r() as usize) % (rows - r0);
        let mut want = vec![f32::NAN; n * (r1 - r0)];
        (Kernels::scalar().int8)(&m, &qs, r0..r1, &mut want);
        for k in kernel_sets() {
            let mut got = vec![f32::NAN; n * (r1 - r0)];
            (k.int8)(&m, &qs, r0..r1, &mut got);
            prop_assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}x{} n {} rows {}..{}: {:?} vs {:?}", k.name, rows, cols, n, r0, r1, want, got);
        }
    }

    #[test]
    fn bf16_head_kernels_equal_scalar(rows in 1usize..40, cols in 1usize..300, seed in any::<u64>()) {
        let mut r = lcg(seed);
        let data: Vec<u8> = (0..rows * cols).flat_map(|_| {
            let v = (r() % 20001) as f32 / 10000.0 - 1.0;
            ((v.to_bits() >> 16) as u16).to_le_bytes()
        }).collect();
        let m = Bf16Matrix { data: &data, rows, cols };
        let x: Vec<f32> = (0..cols).map(|_| (r() % 20001) as f32 / 1000.0 - 10.0).collect();
        let mut want = vec![f32::NAN; rows];
        (Kernels::scalar().bf16)(&m, &x, 0..rows, &mut want);
        for k in kernel_sets() {
            let mut got = vec![f32::NAN; rows];
            (k.bf16)(&m, &x, 0..rows, &mut got);
            prop_assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}x{}", k.name, rows, cols);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rms_norm_kernels_equal_the_portable_code(n in 1usize..700, seed in any::<u64>(), big in any::<bool>()) {
        let mut r = lcg(seed);
        let mag = if big { 1e3 } else { 1e-2 };
        let x: Vec<f32> = (0..n).map(|_| ((r() % 20001) as f32 / 10000.0 - 1.0) * mag).collect();
        let w: Vec<f32> = (0..n).map(|_| (r() % 2001) as f32 / 1000.0).collect();
        let mut want = vec![f32::NAN; n];
        ops::rms_norm(&x, &w, 1e-5, &mut want);
        for k in kernel_sets() {
            let mut got = vec![f32::NAN; n];
            (k.rms_norm)(&x, &w, 1e-5, &mut got);
            prop_assert!(same_bits(&want, &got), "{} length {}", k.name, n);
        }
    }

    #[test]
    fn quantize_row_kernels_equal_the_portable_code(n in 1usize..700, seed in any::<u64>(), ties in any::<bool>()) {
        let mut r = lcg(seed);
        let mut x: Vec<f32> = (0..n).map(|_| (r() % 20001) as f32 / 1000.0 - 10.0).collect();
        if ties {
            // Values on a rounding boundary of x * a: a half step of the largest.
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for i in (0..n).step_by(3) {
                x[i] = (((r() % 255) as f32 - 127.0) + 0.5) * amax.max(1e-5) / 127.0;
            }
        }
        let mut want = vec![0i8; n];
        let w = quant::quantize_row(&x, &mut want);
        for k in kernel_sets() {
            let mut got = vec![0i8; n];
            prop_assert_eq!((k.quantize_row)(&x, &mut got), w, "{} length {}", k.name, n);
            prop_assert_eq!(&got, &want, "{} length {}", k.name, n);
        }
    }

    #[test]
    fn attention_kernels_equal_the_portable_code(
        kv_heads in 1usize..4,
        group in 1usize..6,
        hd in 1usize..80,
        sixteens in any::<bool>(),
        n_ctx in 1usize..60,
        seed in any::<u64>(),
    ) {
        let mut r = lcg(seed);
        let hd = if sixteens { hd.div_ceil(16) * 16 } else { hd };
        let heads = kv_heads * group;
        let mut v = |len: usize| -> Vec<f32> {
            (0..len).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect()
        };
        let (q, keys, values) = (v(heads * hd), v(n_ctx * kv_heads * hd), v(n_ctx * kv_heads * hd));
        let kv = KvLayout::interleaved(kv_heads, hd);
        let h0 = (r() as usize) % heads;
        let h1 = h0 + 1 + (r() as usize) % (heads - h0);
        let run = |f: bitnet_kernels::dispatch::AttentionFn| {
            let mut s = vec![0f32; ATTN_GROUP * n_ctx];
            let mut o = vec![f32::NAN; (h1 - h0) * hd];
            f(&q, &keys, &values, n_ctx, heads, kv_heads, hd, kv, h0..h1, &mut s, &mut o);
            o
        };
        let want = run(ops::attention);
        prop_assert!(want.iter().all(|v| v.is_finite()));
        for k in kernel_sets() {
            let got = run(k.attention);
            prop_assert!(same_bits(&want, &got), "{} heads {}/{} hd {} n_ctx {} heads {}..{}", k.name, heads, kv_heads, hd, n_ctx, h0, h1);
        }
    }

    #[test]
    fn stream_sum_kernels_equal_the_portable_code(n in 0usize..300, seed in any::<u64>()) {
        let mut r = lcg(seed);
        let buf: Vec<u64> = (0..n).map(|_| r() << 31 ^ r()).collect();
        let want = pool::stream_sum(&buf);
        prop_assert_eq!(want, buf.iter().fold(0u64, |s, v| s.wrapping_add(*v)));
        for k in kernel_sets() {
            prop_assert_eq!((k.stream_sum)(&buf), want, "{} length {}", k.name, n);
        }
    }
}

#[test]
fn forcing_a_missing_kernel_is_an_error_not_a_crash() {
    let err = Kernels::by_name("no-such-kernel").unwrap_err();
    assert!(err.contains("unknown kernel"), "{err}");
    let mut missing = 0;
    for name in NAMES {
        if !Kernels::supported(name) {
            assert!(Kernels::by_name(name).unwrap_err().contains("cannot run"));
            missing += 1;
        }
    }
    // No CPU runs both the x86 and the aarch64 sets.
    assert!(missing > 0);
}
