//! Issue 14's layout experiment: decode (one token) through every ternary matrix of a 2B4T-shaped model
//! (30 layers of q, k, v, o, gate, up, down: 2.08 billion weights, larger than any cache) in the 2-bit
//! `ternary_r16` layout (the AVX-512 VNNI kernel the model runs) and in the five-per-byte layout of
//! `bitnet_kernels::trit5` (20% fewer bytes; digits decoded by multiplies, or by VBMI table lookups).
//! Two threads, each taking half of every matrix's tiles, as the model's pool does. Then the same kernels
//! on one small matrix that stays in L2 (what the arithmetic alone costs).
//!
//! Run with `cargo bench -p bitnet-kernels --bench trit5` (x86-64 with AVX-512 VNNI; VBMI for the table
//! variant). Nothing here asserts a time.

fn main() {
    divan::main();
}

/// The kernels compared exist on x86-64 only.
#[cfg(target_arch = "x86_64")]
mod experiment {
    use std::sync::LazyLock;

    use bitnet_kernels::dispatch::Kernels;
    use bitnet_kernels::quant::QuantizedBatch;
    use bitnet_kernels::trit5::{self, Trit5Matrix, pad20};
    use bitnet_kernels::{TernaryMatrix, pad16};
    use divan::counter::ItemsCount;
    use divan::{Bencher, black_box};

    /// One 2B4T layer's ternary matrices (rows, cols): q, k, v, o, gate, up, down.
    const LAYER: &[(usize, usize)] = &[
        (2560, 2560),
        (640, 2560),
        (640, 2560),
        (2560, 2560),
        (6912, 2560),
        (6912, 2560),
        (2560, 6912),
    ];
    const LAYERS: usize = 30;
    const THREADS: usize = 2;

    fn noise(len: usize, seed: u64, f: impl Fn(u64) -> u8) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                f(s >> 33)
            })
            .collect()
    }

    /// The 2-bit bytes of a `rows x cols` matrix: four codes 0..=2 per byte.
    fn two_bit(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let valid: Vec<u8> = (0..=255u8)
            .filter(|b| (0..4).all(|q| (b >> (2 * q)) & 3 != 3))
            .collect();
        noise(pad16(rows) * pad16(cols) / 4, seed, |r| {
            valid[r as usize % valid.len()]
        })
    }

    /// The five-per-byte bytes of a `rows x cols` matrix (every byte value decodes to five digits).
    fn five_per_byte(rows: usize, cols: usize, seed: u64) -> Trit5Matrix {
        Trit5Matrix {
            data: noise(pad16(rows) * pad20(cols) / 5, seed, |r| r as u8),
            rows,
            cols,
        }
    }

    struct Model {
        two_bit: Vec<(Vec<u8>, usize, usize)>,
        five: Vec<Trit5Matrix>,
    }

    static MODEL: LazyLock<Model> = LazyLock::new(|| {
        let shapes = || (0..LAYERS).flat_map(|_| LAYER.iter().copied()).enumerate();
        Model {
            two_bit: shapes()
                .map(|(i, (r, c))| (two_bit(r, c, i as u64), r, c))
                .collect(),
            five: shapes()
                .map(|(i, (r, c))| five_per_byte(r, c, i as u64 + 1000))
                .collect(),
        }
    });

    fn weights() -> usize {
        LAYERS * LAYER.iter().map(|(r, c)| r * c).sum::<usize>()
    }

    fn activations(cols: usize) -> Vec<f32> {
        (0..cols)
            .map(|i| ((i * 37) % 200) as f32 / 10.0 - 10.0)
            .collect()
    }

    /// The half of `tiles` tiles thread `t` of [`THREADS`] takes.
    fn share(tiles: usize, t: usize) -> std::ops::Range<usize> {
        tiles * t / THREADS..tiles * (t + 1) / THREADS
    }

    /// One decoded token through the whole model in the 2-bit layout.
    #[divan::bench(sample_count = 40)]
    fn model_2bit(bencher: Bencher) {
        let m = &*MODEL;
        let k = Kernels::by_name("avx512vnni").expect("an AVX-512 VNNI CPU");
        let mut xs = std::collections::HashMap::new();
        for &(_, c) in LAYER {
            let mut q = QuantizedBatch::default();
            q.quantize(&activations(c), c);
            xs.insert(c, q);
        }
        bencher.counter(ItemsCount::new(weights())).bench_local(|| {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let xs = &xs;
                    s.spawn(move || {
                        let mut out = vec![0f32; 6912];
                        for (data, rows, cols) in &m.two_bit {
                            let mat = TernaryMatrix {
                                data,
                                rows: *rows,
                                cols: *cols,
                                scale: 0.01,
                            };
                            let tiles = share(pad16(*rows) / 16, t);
                            let n = tiles.len() * 16;
                            (k.ternary)(&mat, &xs[cols], tiles, &mut out[..n], n);
                        }
                        black_box(&out);
                    });
                }
            })
        });
    }

    type Gemv = fn(&Trit5Matrix, &[i8], std::ops::Range<usize>, &mut [i32]);

    fn model_five(bencher: Bencher, gemv: Gemv) {
        let m = &*MODEL;
        let xs: std::collections::HashMap<usize, Vec<i8>> = LAYER
            .iter()
            .map(|&(_, c)| {
                let x = (0..pad20(c))
                    .map(|i| if i < c { (i * 37 % 255) as i8 } else { 0 })
                    .collect();
                (c, x)
            })
            .collect();
        bencher.counter(ItemsCount::new(weights())).bench_local(|| {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let xs = &xs;
                    s.spawn(move || {
                        let mut out = vec![0i32; 6912];
                        for mat in &m.five {
                            let tiles = share(pad16(mat.rows) / 16, t);
                            let n = tiles.len() * 16;
                            gemv(mat, &xs[&mat.cols], tiles, &mut out[..n]);
                        }
                        black_box(&out);
                    });
                }
            })
        });
    }

    /// One decoded token through the whole model in the five-per-byte layout, digits by multiplies.
    #[divan::bench(sample_count = 40)]
    fn model_five_mul(bencher: Bencher) {
        model_five(bencher, trit5::gemv_avx512);
    }

    /// The same, digits by VBMI table lookups.
    #[divan::bench(sample_count = 40)]
    fn model_five_vbmi(bencher: Bencher) {
        model_five(bencher, trit5::gemv_avx512_vbmi);
    }

    /// The k projection's shape (640 x 2560), one thread, in L2: the arithmetic's own rate.
    const SMALL: (usize, usize) = (640, 2560);

    #[divan::bench]
    fn cached_2bit(bencher: Bencher) {
        let (rows, cols) = SMALL;
        let data = two_bit(rows, cols, 7);
        let mat = TernaryMatrix {
            data: &data,
            rows,
            cols,
            scale: 0.01,
        };
        let mut q = QuantizedBatch::default();
        q.quantize(&activations(cols), cols);
        let k = Kernels::by_name("avx512vnni").expect("an AVX-512 VNNI CPU");
        let mut out = vec![0f32; rows];
        bencher
            .counter(ItemsCount::new(rows * cols))
            .bench_local(|| (k.ternary)(black_box(&mat), &q, 0..rows / 16, &mut out, rows));
    }

    fn cached_five(bencher: Bencher, gemv: Gemv) {
        let (rows, cols) = SMALL;
        let mat = five_per_byte(rows, cols, 7);
        let x: Vec<i8> = (0..pad20(cols)).map(|i| (i * 37 % 255) as i8).collect();
        let mut out = vec![0i32; rows];
        bencher
            .counter(ItemsCount::new(rows * cols))
            .bench_local(|| gemv(black_box(&mat), &x, 0..rows / 16, &mut out));
    }

    #[divan::bench]
    fn cached_five_mul(bencher: Bencher) {
        cached_five(bencher, trit5::gemv_avx512);
    }

    #[divan::bench]
    fn cached_five_vbmi(bencher: Bencher) {
        cached_five(bencher, trit5::gemv_avx512_vbmi);
    }
}
