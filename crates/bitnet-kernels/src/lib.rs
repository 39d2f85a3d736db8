//! `bitnet-kernels`: the compute of BitNet b1.58 inference, with no I/O.
//!
//! Everything here reads weights in the layouts of SPEC.md section 4 (borrowed byte slices, usually
//! straight from a memory-mapped `.bitnet` file) and activations in plain f32 slices.
//!
//! Where to start:
//! 1. [`quant::QuantizedBatch`]: per-token int8 activation quantization, the input of every BitLinear.
//! 2. [`scalar`]: the reference kernels (ternary matmul, int8 and bf16 LM heads); the oracle that every
//!    optimized kernel must match bit for bit.
//! 3. [`ops`]: RMSNorm, RoPE, attention over a KV cache, activations.
//! 4. [`Kernels`] ([`dispatch`]): the one table of every SIMD op, chosen once at load; the per-architecture
//!    builds live in `x86/` and `aarch64/`, one file per op, and match the portable code bit for bit.
//! 5. [`rescore`]: the int8 LM head's proven error bound, and the rows the rescored head recomputes exactly.
//!
//! Shapes: a weight matrix is `[rows, cols]` (rows = outputs); a batch of `n` token vectors is row-major
//! `[n, dim]`.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod dispatch;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod rescore;
pub mod scalar;
pub mod trit5;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use dispatch::Kernels;
pub use pool::Pool;

/// A `ternary_r16` matrix (SPEC.md 4.4) borrowed from a file.
#[derive(Debug, Clone, Copy)]
pub struct TernaryMatrix<'a> {
    /// The tiled 2-bit codes: `pad16(rows) * pad16(cols) / 4` bytes.
    pub data: &'a [u8],
    /// Logical rows (outputs).
    pub rows: usize,
    /// Logical columns (inputs).
    pub cols: usize,
    /// Value of a +1 weight.
    pub scale: f32,
}

/// An `int8_r16` matrix (SPEC.md 4.5) borrowed from a file.
#[derive(Debug, Clone, Copy)]
pub struct Int8Matrix<'a> {
    /// The tiles then the f32 row scales: `pad16(rows) * pad16(cols) + 4 * pad16(rows)` bytes.
    pub data: &'a [u8],
    /// Logical rows.
    pub rows: usize,
    /// Logical columns.
    pub cols: usize,
}

/// A row-major bf16 matrix borrowed from a file.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Matrix<'a> {
    /// `2 * rows * cols` little-endian bytes.
    pub data: &'a [u8],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// `n` rounded up to a multiple of 16.
pub const fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// Round half to even for `|x| <= 2^22`, without a libm call.
///
/// Adding and subtracting 1.5 * 2^23 leaves no fraction bits, so the FPU's default rounding (half to
/// even, the rounding of `torch.round`) does the work. `f32::round_ties_even` is a call to `rintf` on the
/// baseline x86-64 target.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}
