//! One dispatch point: the kernel set is chosen once, at model load, from the CPU's features, or forced by
//! name (`--kernel` / `BITNET_KERNEL`) so every path can be tested on a machine that has them all.

use std::ops::Range;

use crate::quant::QuantizedBatch;
use crate::scalar::{self, BlockQuantized};
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix};

/// Ternary matmul over a tile range: see [`scalar::ternary_matmul`].
pub type TernaryFn = fn(&TernaryMatrix<'_>, &QuantizedBatch, Range<usize>, &mut [f32], usize);
/// int8 LM head over a row range for several vectors: see [`scalar::int8_matmul`].
pub type Int8Fn = fn(&Int8Matrix<'_>, &[BlockQuantized], Range<usize>, &mut [f32]);
/// bf16 LM head over a row range: see [`scalar::bf16_matvec`].
pub type Bf16Fn = fn(&Bf16Matrix<'_>, &[f32], Range<usize>, &mut [f32]);

/// A kernel set: every entry computes the same bits as the scalar oracle.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Its name: `scalar`, `avx2` or `avx512vnni`.
    pub name: &'static str,
    /// Ternary x int8 matmul.
    pub ternary: TernaryFn,
    /// int8 LM head.
    pub int8: Int8Fn,
    /// bf16 LM head.
    pub bf16: Bf16Fn,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every kernel set this build knows, best first. `avxvnni-evex` is `avxvnni` built with the EVEX
/// encoding of the same instructions: never better than `avx512vnni` where it runs, it is there so that
/// the AVX-VNNI code is tested on AVX-512 machines.
pub const NAMES: &[&str] = &["avx512vnni", "avxvnni", "avxvnni-evex", "avx2", "scalar"];

#[cfg(target_arch = "x86_64")]
mod wrap {
    use super::*;
    use crate::x86;

    // SAFETY (all wrappers): a `Kernels` holding these is only built by `Kernels::by_name` after
    // `is_x86_feature_detected!` confirmed the features the wrapped function enables.
    pub fn ternary_avx512(
        m: &TernaryMatrix<'_>,
        x: &QuantizedBatch,
        t: Range<usize>,
        o: &mut [f32],
        s: usize,
    ) {
        // SAFETY: see the module note: avx512f, avx512bw and avx512vnni were detected.
        unsafe { x86::ternary_matmul_avx512vnni(m, x, t, o, s) }
    }
    pub fn ternary_avx2(
        m: &TernaryMatrix<'_>,
        x: &QuantizedBatch,
        t: Range<usize>,
        o: &mut [f32],
        s: usize,
    ) {
        // SAFETY: see the module note: avx2 was detected.
        unsafe { x86::ternary_matmul_avx2(m, x, t, o, s) }
    }
    pub fn ternary_avxvnni(
        m: &TernaryMatrix<'_>,
        x: &QuantizedBatch,
        t: Range<usize>,
        o: &mut [f32],
        s: usize,
    ) {
        // SAFETY: see the module note: avx2 and avxvnni were detected.
        unsafe { x86::ternary_matmul_avxvnni(m, x, t, o, s) }
    }
    pub fn ternary_avxvnni_evex(
        m: &TernaryMatrix<'_>,
        x: &QuantizedBatch,
        t: Range<usize>,
        o: &mut [f32],
        s: usize,
    ) {
        // SAFETY: see the module note: avx2, avx512f, avx512vl and avx512vnni were detected.
        unsafe { x86::ternary_matmul_avxvnni_evex(m, x, t, o, s) }
    }
    pub fn int8_avx512(m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]) {
        // SAFETY: see the module note: avx512f, avx512bw and avx512vnni were detected.
        unsafe { x86::int8_matmul_avx512vnni(m, x, r, o) }
    }
    pub fn int8_avx2(m: &Int8Matrix<'_>, x: &[BlockQuantized], r: Range<usize>, o: &mut [f32]) {
        let w = r.len().max(1);
        for (x, o) in x.iter().zip(o.chunks_mut(w)) {
            // SAFETY: see the module note: avx2 was detected.
            unsafe { x86::int8_matvec_avx2(m, x, r.clone(), o) }
        }
    }
    pub fn bf16_avx512(m: &Bf16Matrix<'_>, x: &[f32], r: Range<usize>, o: &mut [f32]) {
        // SAFETY: see the module note: avx512f, avx512bw and avx2 were detected.
        unsafe { x86::bf16_matvec_avx512(m, x, r, o) }
    }
    pub fn bf16_avx2(m: &Bf16Matrix<'_>, x: &[f32], r: Range<usize>, o: &mut [f32]) {
        // SAFETY: see the module note: avx2 was detected.
        unsafe { x86::bf16_matvec_avx2(m, x, r, o) }
    }
}

impl Kernels {
    /// The portable reference kernels.
    pub fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            ternary: scalar::ternary_matmul,
            int8: scalar::int8_matmul,
            bf16: scalar::bf16_matvec,
        }
    }

    /// Whether this CPU can run the kernel set `name`.
    pub fn supported(name: &str) -> bool {
        match name {
            "scalar" => true,
            #[cfg(target_arch = "x86_64")]
            "avx2" => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            "avx512vnni" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            "avxvnni" => is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            "avxvnni-evex" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx2")
            }
            _ => false,
        }
    }

    /// The kernel set `name`, or why it cannot run here.
    pub fn by_name(name: &str) -> Result<Kernels, String> {
        if !NAMES.contains(&name) {
            return Err(format!(
                "unknown kernel `{name}`; known: {}",
                NAMES.join(", ")
            ));
        }
        if !Self::supported(name) {
            let have: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|n| Self::supported(n))
                .collect();
            return Err(format!(
                "this CPU cannot run the `{name}` kernels; it can run: {}",
                have.join(", ")
            ));
        }
        Ok(match name {
            #[cfg(target_arch = "x86_64")]
            "avx512vnni" => Kernels {
                name: "avx512vnni",
                ternary: wrap::ternary_avx512,
                int8: wrap::int8_avx512,
                bf16: wrap::bf16_avx512,
            },
            #[cfg(target_arch = "x86_64")]
            "avxvnni" => Kernels {
                name: "avxvnni",
                ternary: wrap::ternary_avxvnni,
                int8: wrap::int8_avx2,
                bf16: wrap::bf16_avx2,
            },
            #[cfg(target_arch = "x86_64")]
            "avxvnni-evex" => Kernels {
                name: "avxvnni-evex",
                ternary: wrap::ternary_avxvnni_evex,
                int8: wrap::int8_avx2,
                bf16: wrap::bf16_avx2,
            },
            #[cfg(target_arch = "x86_64")]
            "avx2" => Kernels {
                name: "avx2",
                ternary: wrap::ternary_avx2,
                int8: wrap::int8_avx2,
                bf16: wrap::bf16_avx2,
            },
            _ => Self::scalar(),
        })
    }

    /// The best kernel set this CPU runs.
    pub fn detect() -> Kernels {
        NAMES
            .iter()
            .find_map(|n| Self::by_name(n).ok())
            .unwrap_or_else(Self::scalar)
    }

    /// `BITNET_KERNEL` if set (an error if this CPU cannot run it), else [`Kernels::detect`].
    pub fn from_env() -> Result<Kernels, String> {
        match std::env::var("BITNET_KERNEL") {
            Ok(name) if !name.is_empty() => {
                Self::by_name(&name).map_err(|e| format!("BITNET_KERNEL: {e}"))
            }
            _ => Ok(Self::detect()),
        }
    }
}
