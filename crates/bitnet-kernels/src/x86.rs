//! x86-64 kernels: AVX-512 VNNI (`vpdpbusd` on zmm) and AVX2 (`vpmaddubsw`), reading the SPEC.md tile
//! layouts straight from the map, and the AVX-512 / AVX2 builds of RMSNorm, activation quantization,
//! attention and the streaming read. Each produces the same bits as the portable oracle: integer
//! accumulation is exact, and the float epilogues and dot products use the oracle's order of operations.
//!
//! One file per op (`ternary`, `int8`, `bf16`, `norm`, `quant`, `attention`), as ggml lays out its
//! per-architecture code; [`kernels`] assembles the sets. Every function here is `unsafe` because it
//! requires CPU features; the safe wrappers of [`kernels`] call them only from a table built after
//! detecting those features.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;
use std::ops::Range;

mod attention;
mod bf16;
mod int8;
mod norm;
mod quant;
mod ternary;

pub use attention::{attention_avx2, attention_avx512};
pub use bf16::{bf16_matvec_avx2, bf16_matvec_avx512};
pub use int8::{int8_matmul_avx512vnni, int8_matvec_avx2, int8_matvec_avx512vnni};
pub use norm::{rms_norm_avx2, rms_norm_avx512};
pub use quant::{quantize_row_avx2, quantize_row_avx512};
pub use ternary::{
    ternary_matmul_avx2, ternary_matmul_avx512vnni, ternary_matmul_avxvnni,
    ternary_matmul_avxvnni_evex,
};

use crate::Kernels;
use crate::dispatch::count_simd_call;
use crate::ops::KvLayout;
use crate::quant::QuantizedBatch;
use crate::scalar::BlockQuantized;
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix};

/// The x86 kernel set `name` if this CPU has its features, else `None`.
pub(crate) fn kernels(name: &str) -> Option<Kernels> {
    let has = |features: &[&str]| features.iter().all(|f| detected(f));
    // Each set's entries use only the features its line checks.
    let k = match name {
        "avx512vnni" if has(&["avx512f", "avx512bw", "avx512vnni", "avx2"]) => Kernels {
            name: "avx512vnni",
            ternary: safe::ternary_avx512vnni,
            int8: safe::int8_avx512vnni,
            bf16: safe::bf16_avx512,
            rms_norm: safe::rms_norm_avx512,
            quantize_row: safe::quantize_row_avx512,
            attention: safe::attention_avx512,
            stream_sum: safe::stream_sum_avx2,
        },
        "avxvnni" if has(&["avxvnni", "avx2"]) => Kernels {
            name: "avxvnni",
            ternary: safe::ternary_avxvnni,
            ..avx2_set("avxvnni")
        },
        "avxvnni-evex" if has(&["avx512f", "avx512vl", "avx512vnni", "avx2"]) => Kernels {
            name: "avxvnni-evex",
            ternary: safe::ternary_avxvnni_evex,
            ..avx2_set("avxvnni-evex")
        },
        "avx2" if has(&["avx2"]) => avx2_set("avx2"),
        _ => return None,
    };
    Some(k)
}

/// Whether this CPU has the x86 feature `f` (the names of `is_x86_feature_detected!`).
fn detected(f: &str) -> bool {
    match f {
        "avx2" => is_x86_feature_detected!("avx2"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vl" => is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "avxvnni" => is_x86_feature_detected!("avxvnni"),
        _ => false,
    }
}

/// The AVX2 entries. Callers must have detected AVX2.
fn avx2_set(name: &'static str) -> Kernels {
    Kernels {
        name,
        ternary: safe::ternary_avx2,
        int8: safe::int8_avx2,
        bf16: safe::bf16_avx2,
        rms_norm: safe::rms_norm_avx2,
        quantize_row: safe::quantize_row_avx2,
        attention: safe::attention_avx2,
        stream_sum: safe::stream_sum_avx2,
    }
}

/// Safe wrappers: each counts the call (test builds) and runs its `unsafe` kernel. They are private to
/// this module and only put into a table by [`kernels`], after the features were detected.
mod safe {
    use super::*;

    /// `$name(args) -> ret` calling the unsafe `$kernel` with the same arguments.
    macro_rules! wrap {
        ($($name:ident => $kernel:path, ($($a:ident: $t:ty),*) $(-> $r:ty)?;)*) => {$(
            pub(super) fn $name($($a: $t),*) $(-> $r)? {
                count_simd_call();
                // SAFETY: a table holding this wrapper is only built by `kernels` after detecting the
                // features the kernel enables.
                unsafe { $kernel($($a),*) }
            }
        )*};
    }

    wrap! {
        ternary_avx512vnni => ternary_matmul_avx512vnni,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        ternary_avxvnni => ternary_matmul_avxvnni,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        ternary_avxvnni_evex => ternary_matmul_avxvnni_evex,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        ternary_avx2 => ternary_matmul_avx2,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        int8_avx512vnni => int8_matmul_avx512vnni,
            (m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]);
        int8_avx2 => int8_matmul_avx2,
            (m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]);
        bf16_avx512 => bf16_matvec_avx512,
            (m: &Bf16Matrix<'_>, x: &[f32], r: Range<usize>, o: &mut [f32]);
        bf16_avx2 => bf16_matvec_avx2,
            (m: &Bf16Matrix<'_>, x: &[f32], r: Range<usize>, o: &mut [f32]);
        rms_norm_avx512 => super::rms_norm_avx512,
            (x: &[f32], w: &[f32], eps: f32, o: &mut [f32]);
        rms_norm_avx2 => super::rms_norm_avx2,
            (x: &[f32], w: &[f32], eps: f32, o: &mut [f32]);
        quantize_row_avx512 => super::quantize_row_avx512, (x: &[f32], q: &mut [i8]) -> (f32, i32);
        quantize_row_avx2 => super::quantize_row_avx2, (x: &[f32], q: &mut [i8]) -> (f32, i32);
        stream_sum_avx2 => super::stream_sum_avx2, (buf: &[u64]) -> u64;
    }

    macro_rules! wrap_attention {
        ($($name:ident => $kernel:path;)*) => {$(
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name(
                q: &[f32],
                k: &[f32],
                v: &[f32],
                n_ctx: usize,
                n_heads: usize,
                n_kv_heads: usize,
                head_dim: usize,
                kv: KvLayout,
                heads: Range<usize>,
                scores: &mut [f32],
                out: &mut [f32],
            ) {
                count_simd_call();
                // SAFETY: as for `wrap!`: only in a table built after detecting the features.
                unsafe {
                    $kernel(q, k, v, n_ctx, n_heads, n_kv_heads, head_dim, kv, heads, scores, out)
                }
            }
        )*};
    }

    wrap_attention! {
        attention_avx512 => super::attention_avx512;
        attention_avx2 => super::attention_avx2;
    }
}

/// The AVX2 int8 head over several vectors: [`int8_matvec_avx2`] on each.
#[target_feature(enable = "avx2")]
unsafe fn int8_matmul_avx2(
    m: &Int8Matrix<'_>,
    x: &[BlockQuantized],
    r: Range<usize>,
    o: &mut [f32],
) {
    let w = r.len().max(1);
    for (x, o) in x.iter().zip(o.chunks_mut(w)) {
        // SAFETY: AVX2, this function's own requirement.
        unsafe { int8_matvec_avx2(m, x, r.clone(), o) }
    }
}

/// How far ahead of the load the kernels prefetch each weight stream, in bytes. Measured with `bitnet bench
/// --synthetic 2b4t` (2 threads, int8 head): 1 KiB decoded 15.5-16.8 tok/s, 4 KiB 19.1-19.2, 8 KiB 16.8-18.5.
const PREFETCH: usize = 4096;

#[inline(always)]
unsafe fn load_i32(p: *const i8) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes at `p`; the read is unaligned-safe.
    unsafe { std::ptr::read_unaligned(p as *const i32) }
}

/// Sums `buf` with 256-bit loads into four independent accumulators: a streaming read for measuring
/// memory bandwidth (the baseline target would use 128-bit loads).
#[target_feature(enable = "avx2")]
pub unsafe fn stream_sum_avx2(buf: &[u64]) -> u64 {
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = buf.len() / 16;
    let p = buf.as_ptr() as *const __m256i;
    for i in 0..chunks {
        // SAFETY: 16 u64 (four 32-byte vectors) at 16 * i are inside `buf`.
        unsafe {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(4 * i + j)));
            }
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `lanes` holds 4 u64.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, total) };
    buf[chunks * 16..]
        .iter()
        .chain(&lanes)
        .fold(0u64, |s, v| s.wrapping_add(*v))
}
