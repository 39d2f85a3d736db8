//! Kernel micro-benchmarks on the 2B4T shapes, one per kernel set this CPU runs, reporting weights per
//! second. Run with `cargo bench -p bitnet-kernels`; nothing here asserts a time.

use bitnet_format::layout;
use bitnet_kernels::dispatch::Kernels;
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::BlockQuantized;
use bitnet_kernels::{Bf16Matrix, Int8Matrix, TernaryMatrix, pad16};
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

/// The ternary shapes of one 2B4T layer: q/o, k/v, gate/up, down.
const SHAPES: &[(usize, usize)] = &[(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];
const VOCAB: usize = 128_256;

fn kernel_names() -> Vec<&'static str> {
    Kernels::available().iter().map(|k| k.name).collect()
}

fn ternary(rows: usize, cols: usize) -> Vec<u8> {
    let valid: Vec<u8> = (0..=255u8)
        .filter(|b| (0..4).all(|q| (b >> (2 * q)) & 3 != 3))
        .collect();
    (0..layout::ternary_len(rows, cols))
        .map(|i| valid[(i * 7919 + i / 13) % valid.len()])
        .collect()
}

fn acts(n: usize, cols: usize) -> QuantizedBatch {
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 37) % 200) as f32 / 10.0 - 10.0)
        .collect();
    let mut b = QuantizedBatch::default();
    b.quantize(&x, cols);
    b
}

fn ternary_bench(bencher: Bencher, kernel: &str, shape: (usize, usize), n: usize) {
    let (rows, cols) = shape;
    let data = ternary(rows, cols);
    let m = TernaryMatrix {
        data: &data,
        rows,
        cols,
        scale: 0.01,
    };
    let x = acts(n, cols);
    let k = Kernels::by_name(kernel).expect("listed kernels run here");
    let mut out = vec![0f32; n * rows];
    bencher
        .counter(ItemsCount::new(rows * cols * n))
        .bench_local(|| {
            (k.ternary)(
                black_box(&m),
                black_box(&x),
                0..pad16(rows) / 16,
                &mut out,
                rows,
            )
        });
}

/// Decode: one token against each 2B4T matrix (items = weights).
#[divan::bench(args = kernel_names(), consts = [0, 1, 2, 3])]
fn ternary_gemv<const S: usize>(bencher: Bencher, kernel: &str) {
    ternary_bench(bencher, kernel, SHAPES[S], 1);
}

/// Four sequences decoded together (`serve --parallel 4`): 4 tokens against each 2B4T matrix (items =
/// weight-token products).
#[divan::bench(args = kernel_names(), consts = [0, 2, 3])]
fn ternary_batch4<const S: usize>(bencher: Bencher, kernel: &str) {
    ternary_bench(bencher, kernel, SHAPES[S], 4);
}

/// Prefill: 8 tokens against each 2B4T matrix (items = weight-token products).
#[divan::bench(args = kernel_names(), consts = [0, 2, 3])]
fn ternary_gemm8<const S: usize>(bencher: Bencher, kernel: &str) {
    ternary_bench(bencher, kernel, SHAPES[S], 8);
}

/// The SIMD kernel sets this CPU runs (the scalar oracle takes seconds per prefill sample; the 8-token
/// bench covers it).
fn simd_kernel_names() -> Vec<&'static str> {
    kernel_names()
        .into_iter()
        .filter(|&n| n != "scalar")
        .collect()
}

/// Prefill of a 128-token prompt against each 2B4T matrix (items = weight-token products).
#[divan::bench(args = simd_kernel_names(), consts = [0, 2, 3], sample_count = 20)]
fn ternary_prefill128<const S: usize>(bencher: Bencher, kernel: &str) {
    ternary_bench(bencher, kernel, SHAPES[S], 128);
}

/// The int8 LM head, 128256 x 2560 (items = weights).
#[divan::bench(args = kernel_names(), sample_count = 10)]
fn head_int8(bencher: Bencher, kernel: &str) {
    let (rows, cols) = (VOCAB, 2560);
    let data: Vec<u8> = (0..layout::int8_len(rows, cols))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let m = Int8Matrix {
        data: &data,
        rows,
        cols,
    };
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37) % 200) as f32 / 10.0 - 10.0)
        .collect();
    let mut q = BlockQuantized::default();
    q.quantize(&x);
    let k = Kernels::by_name(kernel).expect("listed kernels run here");
    let mut out = vec![0f32; rows];
    bencher
        .counter(ItemsCount::new(rows * cols))
        .bench_local(|| {
            (k.int8)(
                black_box(&m),
                black_box(std::slice::from_ref(&q)),
                0..rows,
                &mut out,
            )
        });
}

/// The bf16 LM head, 128256 x 2560 (items = weights).
#[divan::bench(args = kernel_names(), sample_count = 10)]
fn head_bf16(bencher: Bencher, kernel: &str) {
    let (rows, cols) = (VOCAB, 2560);
    let data: Vec<u8> = (0..2 * rows * cols)
        .map(|i| if i % 2 == 1 { 0x3c } else { (i % 255) as u8 })
        .collect();
    let m = Bf16Matrix {
        data: &data,
        rows,
        cols,
    };
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let k = Kernels::by_name(kernel).expect("listed kernels run here");
    let mut out = vec![0f32; rows];
    bencher
        .counter(ItemsCount::new(rows * cols))
        .bench_local(|| (k.bf16)(black_box(&m), black_box(&x), 0..rows, &mut out));
}
