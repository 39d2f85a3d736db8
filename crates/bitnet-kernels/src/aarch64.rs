//! aarch64 kernels: NEON (stable intrinsics), dotprod (`sdot`, FEAT_DotProd) and i8mm (`smmla`,
//! FEAT_I8MM), reading the SPEC.md tile layouts straight from the map. Each produces the same bits as the
//! portable oracle: integer accumulation is exact, and the float epilogues and sums use the oracle's order
//! of operations (multiply then add, never fused).
//!
//! The dotprod and i8mm intrinsics (`vdotq_s32`, `vmmlaq_s32`) are not stable Rust, so their two
//! instructions are written with `asm!` ([`sdot`], [`smmla`]) inside functions compiled with those target
//! features. One file per op, as under `x86/`; [`kernels`] assembles the sets and is the only place that
//! detects CPU features.

// Lanes index several arrays (accumulators, addresses) at once: index loops read best.
#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::ops::Range;

mod attention;
mod bf16;
mod int8;
mod norm;
mod quant;
mod ternary;

pub use attention::attention_neon;
pub use bf16::bf16_matvec_neon;
pub use int8::{int8_matmul_dotprod, int8_matmul_neon};
pub use norm::rms_norm_neon;
pub use quant::quantize_row_neon;
pub use ternary::{ternary_matmul_dotprod, ternary_matmul_i8mm, ternary_matmul_neon};

use crate::Kernels;
use crate::dispatch::count_simd_call;
use crate::ops::KvLayout;
use crate::quant::QuantizedBatch;
use crate::scalar::BlockQuantized;
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix};

/// The aarch64 kernel set `name` if this CPU has its features, else `None`.
pub(crate) fn kernels(name: &str) -> Option<Kernels> {
    let neon = std::arch::is_aarch64_feature_detected!("neon");
    let dotprod = neon && std::arch::is_aarch64_feature_detected!("dotprod");
    let i8mm = dotprod && std::arch::is_aarch64_feature_detected!("i8mm");
    // Each set's entries use only the features its line checks.
    let k = match name {
        "i8mm" if i8mm => Kernels {
            name: "i8mm",
            ternary: safe::ternary_i8mm,
            ..dotprod_set("i8mm")
        },
        "dotprod" if dotprod => dotprod_set("dotprod"),
        "neon" if neon => neon_set("neon"),
        _ => return None,
    };
    Some(k)
}

/// The NEON entries. Callers must have detected NEON.
fn neon_set(name: &'static str) -> Kernels {
    Kernels {
        name,
        ternary: safe::ternary_neon,
        int8: safe::int8_neon,
        bf16: safe::bf16_neon,
        rms_norm: safe::rms_norm_neon,
        quantize_row: safe::quantize_row_neon,
        attention: safe::attention_neon,
        stream_sum: safe::stream_sum_neon,
    }
}

/// The dotprod entries (NEON where `sdot` does not apply). Callers must have detected NEON and dotprod.
fn dotprod_set(name: &'static str) -> Kernels {
    Kernels {
        ternary: safe::ternary_dotprod,
        int8: safe::int8_dotprod,
        ..neon_set(name)
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
        ternary_i8mm => ternary_matmul_i8mm,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        ternary_dotprod => ternary_matmul_dotprod,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        ternary_neon => ternary_matmul_neon,
            (m: &TernaryMatrix<'_>, x: &QuantizedBatch, t: Range<usize>, o: &mut [f32], s: usize);
        int8_dotprod => int8_matmul_dotprod,
            (m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]);
        int8_neon => int8_matmul_neon,
            (m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]);
        bf16_neon => bf16_matvec_neon,
            (m: &Bf16Matrix<'_>, x: &[f32], r: Range<usize>, o: &mut [f32]);
        rms_norm_neon => super::rms_norm_neon,
            (x: &[f32], w: &[f32], eps: f32, o: &mut [f32]);
        quantize_row_neon => super::quantize_row_neon, (x: &[f32], q: &mut [i8]) -> (f32, i32);
        stream_sum_neon => super::stream_sum_neon, (buf: &[u64]) -> u64;
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_neon(
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
        // SAFETY: as for `wrap!`: only in a table built after detecting NEON.
        unsafe {
            super::attention_neon(
                q, k, v, n_ctx, n_heads, n_kv_heads, head_dim, kv, heads, scores, out,
            )
        }
    }
}

/// `acc.s[i] += sum_{j<4} a.b[4i + j] * b.b[4L + j]` (signed bytes): `sdot` by element.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot<const L: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only arithmetic; FEAT_DotProd is this function's requirement.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{l}]",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            l = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `acc += A * B^T` for the 2x8 signed-byte matrices `A = a` and `B = b` (rows of 8 bytes): `acc.s[2i + j]
/// += sum_k a.b[8i + k] * b.b[8j + k]`, `smmla`.
#[target_feature(enable = "neon,i8mm")]
#[inline]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only arithmetic; FEAT_I8MM is this function's requirement.
    unsafe {
        std::arch::asm!(
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// The wrapping sum of a buffer with 128-bit loads into four independent accumulators: the bandwidth
/// probe's streaming read ([`crate::pool::stream_sum`]'s result).
#[target_feature(enable = "neon")]
pub unsafe fn stream_sum_neon(buf: &[u64]) -> u64 {
    let mut acc = [vdupq_n_u64(0); 4];
    let (chunks, tail) = buf.as_chunks::<8>();
    for c in chunks {
        // SAFETY: `c` holds 8 u64 (four 16-byte vectors).
        unsafe {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vaddq_u64(*a, vld1q_u64(c.as_ptr().add(2 * j)));
            }
        }
    }
    let total = vaddq_u64(vaddq_u64(acc[0], acc[1]), vaddq_u64(acc[2], acc[3]));
    tail.iter()
        .fold(vaddvq_u64(total), |s, v| s.wrapping_add(*v))
}
