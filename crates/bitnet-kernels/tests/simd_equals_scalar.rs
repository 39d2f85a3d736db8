//! Every kernel set this CPU runs produces the scalar oracle's bits, over random shapes with ragged tails.

use bitnet_format::layout;
use bitnet_kernels::dispatch::{Kernels, NAMES};
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::BlockQuantized;
use bitnet_kernels::{Bf16Matrix, Int8Matrix, TernaryMatrix, pad16};
use proptest::prelude::*;

fn kernel_sets() -> Vec<Kernels> {
    let sets: Vec<Kernels> = NAMES
        .iter()
        .filter(|n| Kernels::supported(n))
        .map(|n| Kernels::by_name(n).unwrap())
        .collect();
    if std::env::var("CI").is_ok() || cfg!(target_arch = "x86_64") {
        // On the project's x86-64 machines every path must be exercised, not skipped.
        if std::is_x86_feature_detected!("avx512vnni") {
            // Every set but the VEX build of the AVX-VNNI kernels (AVX-512 CPUs lack that encoding;
            // their code is the same as `avxvnni-evex`, which runs here).
            let expected = NAMES.len() - usize::from(!std::is_x86_feature_detected!("avxvnni"));
            assert_eq!(sets.len(), expected, "every kernel set should run here");
            assert!(sets.iter().any(|k| k.name == "avxvnni-evex"));
        }
    }
    sets
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

#[test]
fn forcing_a_missing_kernel_is_an_error_not_a_crash() {
    let err = Kernels::by_name("neon").unwrap_err();
    assert!(err.contains("unknown kernel"), "{err}");
    for name in NAMES {
        if !Kernels::supported(name) {
            assert!(Kernels::by_name(name).unwrap_err().contains("cannot run"));
        }
    }
}
