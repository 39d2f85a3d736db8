//! The float operations between BitLinears: RMSNorm, rotary embeddings, attention, FFN activations.

mod attention;

pub use attention::{
    ATTN_GROUP, KvLayout, attention, attention_body, mix_portable, scores_portable,
};
pub(crate) use attention::{mix_body, scores_each};

/// Lanes of the f64 sum of squares in [`rms_norm`].
pub(crate) const NORM_LANES: usize = 16;

/// RMSNorm as transformers computes it in f32: `x / sqrt(mean(x^2) + eps) * weight`; the portable
/// definition that every build of [`Kernels::rms_norm`](crate::Kernels) matches bit for bit.
///
/// The sum of squares is accumulated in f64 (every square of an f32 is exact there) and rounded once
/// (close to PyTorch's pairwise f32 sum), in a fixed order so that it vectorizes: lane `j` of 16 sums the
/// elements `i = j (mod 16)` in order, the lanes are added in the canonical halving order (8, 4, 2, 1),
/// then the tail in order. The SIMD builds run the same operations in the same order on wider vectors.
#[inline(always)]
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mut lanes = [0f64; NORM_LANES];
    let (chunks, tail) = x.as_chunks::<NORM_LANES>();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += (v as f64) * (v as f64);
        }
    }
    rms_norm_finish(&mut lanes, tail, x, weight, eps, out)
}

/// The rest of [`rms_norm`] from lane sums: halve the lanes down to one (adding lane `i + w` to lane
/// `i`), add the tail's squares in order, and scale.
#[inline(always)]
pub(crate) fn rms_norm_finish(
    lanes: &mut [f64],
    tail: &[f32],
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let mut w = lanes.len() / 2;
    while w > 0 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    let ss = tail
        .iter()
        .fold(lanes[0], |s, &v| s + (v as f64) * (v as f64));
    let var = (ss as f32) / x.len() as f32;
    let r = 1.0f32 / (var + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * r);
    }
}

/// Rotary embedding tables for one position: `cos` and `sin` of `pos * inv_freq[i]`, for `i < head_dim / 2`.
#[derive(Debug, Clone, Default)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / theta^(2i / head_dim)` in f32, as transformers' default rope init.
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { inv_freq }
    }

    /// Fills `cos` and `sin` (each `head_dim / 2`) for `pos`.
    pub fn tables(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let angle = pos as f32 * f;
            *c = angle.cos();
            *s = angle.sin();
        }
    }
}

/// Applies rotate-half RoPE in place to every head of `x` (`[heads, head_dim]`): dimension `i` pairs with
/// `i + head_dim / 2`.
pub fn apply_rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// `e^x` in f32 from plain arithmetic (Cephes' `expf`: `x = n ln 2 + r` with `n` rounded to nearest, a
/// degree-6 polynomial for `e^r`, scaled by `2^n` through the exponent bits), within 2 ulp of the true
/// value for `x` in [-87.3, 88.3] (tested); below that it returns about 1.2e-38 (the smallest normal),
/// above it about 3.4e38. It is the same code in every build, and the compiler vectorizes it (which it
/// cannot do for a call into the C library), so attention's softmax has the same bits everywhere.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.336_54, 88.376_26);
    let y = x * std::f32::consts::LOG2_E + MAGIC;
    let n = y - MAGIC;
    // The integer n sits in the low mantissa bits of y (exactly: |n| < 2^22), so the scale 2^n is built
    // from bits alone (a float-to-int conversion would saturate, and the compiler does not vectorize that).
    let ni = y.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    p * f32::from_bits(ni.wrapping_add(127) << 23)
}

/// An f32 sum in 16 independent lanes (so it vectorizes), reduced in [`dot`]'s fixed order.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let tail: f32 = tail.iter().sum();
    crate::scalar::reduce_lanes(lanes) + tail
}

/// An f32 dot product in 16 independent lanes (so it vectorizes), reduced in a fixed order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        // Fixed-size views: no bounds checks, so the 16 lanes compile to whole vectors.
        let (x, y): (&[f32; 16], &[f32; 16]) = match (x.try_into(), y.try_into()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => unreachable!("chunks_exact(16) yields 16 elements"),
        };
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    crate::scalar::reduce_lanes(lanes) + tail
}

/// `relu(g)^2 * u`, in place into `g`.
pub fn relu2_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

/// `silu(g) * u`, in place into `g`.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests;
