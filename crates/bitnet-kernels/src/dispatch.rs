//! One dispatch point: every SIMD op of the crate is an entry of [`Kernels`], a table chosen once, at model
//! load, from the CPU's features, or forced by name (`--kernel` / `BITNET_KERNEL`) so every path can be
//! tested on a machine that has them all. Nothing else in the crate detects CPU features: the portable
//! functions ([`scalar`], [`ops::rms_norm`], [`quant::quantize_row`], [`ops::attention`],
//! [`pool::stream_sum`]) are the oracles, and the per-architecture builds live in `x86/` and `aarch64/`,
//! reachable only through a table built after their features were detected.
//!
//! [`ops::rms_norm`]: crate::ops::rms_norm
//! [`quant::quantize_row`]: crate::quant::quantize_row
//! [`ops::attention`]: crate::ops::attention
//! [`pool::stream_sum`]: crate::pool::stream_sum

use std::ops::Range;

use crate::ops::KvLayout;
use crate::quant::QuantizedBatch;
use crate::scalar::{self, BlockQuantized};
use crate::{Bf16Matrix, Int8Matrix, TernaryMatrix};

/// Ternary matmul over a tile range: see [`scalar::ternary_matmul`].
pub type TernaryFn = fn(&TernaryMatrix<'_>, &QuantizedBatch, Range<usize>, &mut [f32], usize);
/// int8 LM head over a row range for several vectors: see [`scalar::int8_matmul`].
pub type Int8Fn = fn(&Int8Matrix<'_>, &[BlockQuantized], Range<usize>, &mut [f32]);
/// bf16 LM head over a row range: see [`scalar::bf16_matvec`].
pub type Bf16Fn = fn(&Bf16Matrix<'_>, &[f32], Range<usize>, &mut [f32]);
/// RMSNorm of one vector: see [`crate::ops::rms_norm`].
pub type RmsNormFn = fn(&[f32], &[f32], f32, &mut [f32]);
/// Per-token int8 quantization of one vector: see [`crate::quant::quantize_row`].
pub type QuantizeRowFn = fn(&[f32], &mut [i8]) -> (f32, i32);
/// Causal attention (scores, softmax, weighted sums) of one token: see [`crate::ops::attention`].
pub type AttentionFn = fn(
    &[f32],
    &[f32],
    &[f32],
    usize,
    usize,
    usize,
    usize,
    KvLayout,
    Range<usize>,
    &mut [f32],
    &mut [f32],
) -> ();
/// The bandwidth probe's streaming read: see [`crate::pool::stream_sum`].
pub type StreamSumFn = fn(&[u64]) -> u64;

/// A kernel set: every entry computes the same bits as the portable oracle.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Its name, one of [`NAMES`].
    pub name: &'static str,
    /// Ternary x int8 matmul.
    pub ternary: TernaryFn,
    /// int8 LM head.
    pub int8: Int8Fn,
    /// bf16 LM head.
    pub bf16: Bf16Fn,
    /// RMSNorm.
    pub rms_norm: RmsNormFn,
    /// Activation quantization of one token.
    pub quantize_row: QuantizeRowFn,
    /// Attention of one token over a KV cache.
    pub attention: AttentionFn,
    /// Streaming read of the bandwidth probe.
    pub stream_sum: StreamSumFn,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every kernel set this crate knows, on any architecture, best first. `avxvnni-evex` is `avxvnni` built
/// with the EVEX encoding of the same instructions: never better than `avx512vnni` where it runs, it is
/// there so that the AVX-VNNI code is tested on AVX-512 machines.
pub const NAMES: &[&str] = &[
    "avx512vnni",
    "avxvnni",
    "avxvnni-evex",
    "avx2",
    "i8mm",
    "dotprod",
    "neon",
    "scalar",
];

/// Calls into SIMD code through a [`Kernels`] table, counted in builds with debug assertions (tests).
#[cfg(debug_assertions)]
static SIMD_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one call into a SIMD build (nothing in release builds).
#[inline(always)]
pub(crate) fn count_simd_call() {
    #[cfg(debug_assertions)]
    SIMD_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many times any thread entered a SIMD build through a [`Kernels`] table since the process
/// started; `None` in builds without debug assertions, which do not count. Tests use it to check that
/// the `scalar` set runs no SIMD code.
pub fn simd_calls() -> Option<u64> {
    #[cfg(debug_assertions)]
    return Some(SIMD_CALLS.load(std::sync::atomic::Ordering::Relaxed));
    #[cfg(not(debug_assertions))]
    None
}

impl Kernels {
    /// The portable reference kernels.
    pub fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            ternary: scalar::ternary_matmul,
            int8: scalar::int8_matmul,
            bf16: scalar::bf16_matvec,
            rms_norm: crate::ops::rms_norm,
            quantize_row: crate::quant::quantize_row,
            attention: crate::ops::attention,
            stream_sum: crate::pool::stream_sum,
        }
    }

    /// Whether this CPU can run the kernel set `name`.
    pub fn supported(name: &str) -> bool {
        Self::build(name).is_some()
    }

    /// The set `name` if this CPU runs it: the only place the SIMD tables are made.
    fn build(name: &str) -> Option<Kernels> {
        if name == "scalar" {
            return Some(Self::scalar());
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = crate::x86::kernels(name) {
            return Some(k);
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(k) = crate::aarch64::kernels(name) {
            return Some(k);
        }
        None
    }

    /// The kernel set `name`, or why it cannot run here.
    pub fn by_name(name: &str) -> Result<Kernels, String> {
        if !NAMES.contains(&name) {
            return Err(format!(
                "unknown kernel `{name}`; known: {}",
                NAMES.join(", ")
            ));
        }
        Self::build(name).ok_or_else(|| {
            let have: Vec<&str> = Self::available().iter().map(|k| k.name).collect();
            format!(
                "this CPU cannot run the `{name}` kernels; it can run: {}",
                have.join(", ")
            )
        })
    }

    /// Every kernel set this CPU runs, best first (`scalar` last, always there).
    ///
    /// With `BITNET_EXPECT_KERNELS` set (a comma list of names, as CI sets it for its machines), any
    /// difference from that list panics: a test looping over the available sets then cannot pass by
    /// skipping a set the machine was meant to exercise, nor an emulated CPU claim more than it should.
    /// A last entry `+` allows sets beyond the list (a CI machine whose CPU offers more).
    pub fn available() -> Vec<Kernels> {
        let sets: Vec<Kernels> = NAMES.iter().filter_map(|n| Self::build(n)).collect();
        if let Ok(expect) = std::env::var("BITNET_EXPECT_KERNELS") {
            let mut want: Vec<&str> = expect
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .collect();
            let more_allowed = want.last() == Some(&"+");
            want.retain(|w| *w != "+");
            let mut have: Vec<&str> = sets.iter().map(|k| k.name).collect();
            if more_allowed {
                have.retain(|h| want.contains(h));
            }
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(
                have, want,
                "this CPU's kernel sets differ from BITNET_EXPECT_KERNELS"
            );
        }
        sets
    }

    /// The best kernel set this CPU runs.
    pub fn detect() -> Kernels {
        NAMES
            .iter()
            .find_map(|n| Self::build(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_sets_are_the_supported_names_best_first() {
        let sets = Kernels::available();
        let names: Vec<&str> = sets.iter().map(|k| k.name).collect();
        let want: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|n| Kernels::supported(n))
            .collect();
        assert_eq!(names, want);
        assert_eq!(names.last(), Some(&"scalar"));
        assert_eq!(Kernels::detect().name, names[0]);
    }
}
