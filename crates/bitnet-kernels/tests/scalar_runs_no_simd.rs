//! The `scalar` set enters no SIMD build, and every other set enters one for each of its ops. A test
//! binary of its own: the count is process-wide, so no other test may run beside this one.

use bitnet_format::layout;
use bitnet_kernels::dispatch::{Kernels, simd_calls};
use bitnet_kernels::ops::{ATTN_GROUP, KvLayout};
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::BlockQuantized;
use bitnet_kernels::{Bf16Matrix, Int8Matrix, TernaryMatrix};

/// Calls every op of `k` once on small inputs; returns how many.
fn run_every_op(k: &Kernels) -> u64 {
    let (rows, cols) = (20, 40);
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 - 17.0) / 9.0).collect();
    let mut out = vec![0f32; rows];
    let w: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
    let data = layout::pack_ternary(&w, rows, cols);
    let m = TernaryMatrix {
        data: &data,
        rows,
        cols,
        scale: 0.5,
    };
    let mut b = QuantizedBatch::default();
    b.quantize(&x, cols);
    (k.ternary)(&m, &b, 0..2, &mut out, rows);
    let data = layout::pack_int8(&w, &vec![0.1; rows], rows, cols);
    let m = Int8Matrix {
        data: &data,
        rows,
        cols,
    };
    let mut bq = BlockQuantized::default();
    bq.quantize(&x);
    (k.int8)(&m, &[bq], 0..rows, &mut out);
    let data = vec![0x3fu8; 2 * rows * cols];
    let m = Bf16Matrix {
        data: &data,
        rows,
        cols,
    };
    (k.bf16)(&m, &x, 0..rows, &mut out);
    let mut normed = vec![0f32; cols];
    (k.rms_norm)(&x, &x, 1e-5, &mut normed);
    let mut q = vec![0i8; cols];
    (k.quantize_row)(&x, &mut q);
    let (heads, hd, n_ctx) = (2, 16, 3);
    let cache = vec![0.25f32; n_ctx * heads * hd];
    let mut scores = vec![0f32; ATTN_GROUP * n_ctx];
    let mut o = vec![0f32; heads * hd];
    let kv = KvLayout::interleaved(heads, hd);
    (k.attention)(
        &x[..heads * hd],
        &cache,
        &cache,
        n_ctx,
        heads,
        heads,
        hd,
        kv,
        0..heads,
        &mut scores,
        &mut o,
    );
    (k.stream_sum)(&[1, 2, 3]);
    7
}

#[test]
fn the_scalar_set_runs_no_simd_code_and_the_others_only_simd_code() {
    let Some(start) = simd_calls() else {
        eprintln!("SIMD calls are counted only with debug assertions (the test profile has them)");
        return;
    };
    let scalar = Kernels::by_name("scalar").unwrap();
    run_every_op(&scalar);
    assert_eq!(
        simd_calls(),
        Some(start),
        "the scalar set entered SIMD code"
    );
    for k in Kernels::available().iter().filter(|k| k.name != "scalar") {
        let before = simd_calls().unwrap();
        let ops = run_every_op(k);
        assert_eq!(
            simd_calls().unwrap() - before,
            ops,
            "{k:?}: every op a SIMD build"
        );
    }
}
