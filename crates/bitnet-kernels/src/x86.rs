//! x86-64 kernels: AVX-512 VNNI (`vpdpbusd` on zmm) and AVX2 (`vpmaddubsw`), reading the SPEC.md tile
//! layouts straight from the map. Each produces the same bits as [`crate::scalar`]: integer accumulation is
//! exact, and the float epilogues and dot products use the scalar oracle's order of operations.
//!
//! Every function here is `unsafe` because it requires CPU features; [`crate::dispatch`] calls them only
//! after detecting those features.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

mod bf16;
mod int8;
mod ternary;

pub use bf16::{bf16_matvec_avx2, bf16_matvec_avx512};
pub use int8::{int8_matmul_avx512vnni, int8_matvec_avx2, int8_matvec_avx512vnni};
pub use ternary::{
    ternary_matmul_avx2, ternary_matmul_avx512vnni, ternary_matmul_avxvnni,
    ternary_matmul_avxvnni_evex,
};

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
