//! The bf16 LM head (row dot products) with NEON: 16 f32 lanes in four registers, multiply then add, the
//! canonical reduction of [`crate::scalar::reduce_lanes`].

use std::arch::aarch64::*;
use std::ops::Range;

use crate::Bf16Matrix;
use crate::scalar::reduce_lanes;

/// bf16 row dot products with the contract of [`crate::scalar::bf16_matvec`].
#[target_feature(enable = "neon")]
pub unsafe fn bf16_matvec_neon(m: &Bf16Matrix<'_>, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    let cols = m.cols;
    assert!(
        m.data.len() >= 2 * rows.end * cols && x.len() >= cols && out.len() >= rows.len(),
        "bf16 head shapes"
    );
    let full = cols / 16 * 16;
    for row in rows.clone() {
        let w = m.data[2 * row * cols..].as_ptr();
        let mut acc = [vdupq_n_f32(0.0); 4];
        for k in (0..full).step_by(16) {
            // SAFETY: 16 bf16 at column k of this row and 16 f32 of x are in bounds (k + 16 <= cols).
            unsafe {
                let h = [
                    vld1q_u16(w.add(2 * k) as *const u16),
                    vld1q_u16(w.add(2 * k + 16) as *const u16),
                ];
                // bf16 to f32: the 16 bits become the high half of the word (little-endian loads).
                let wf = [
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h[0]))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h[0])),
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h[1]))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h[1])),
                ];
                for (i, (a, wv)) in acc.iter_mut().zip(wf).enumerate() {
                    *a = vaddq_f32(*a, vmulq_f32(wv, vld1q_f32(x.as_ptr().add(k + 4 * i))));
                }
            }
        }
        let mut lanes = [0f32; 16];
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: `lanes` holds 16 f32; 4 are written at 4i.
            unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * i), *a) };
        }
        for kk in full..cols {
            let b = &m.data[2 * (row * cols + kk)..2 * (row * cols + kk) + 2];
            lanes[kk % 16] +=
                f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * x[kk];
        }
        out[row - rows.start] = reduce_lanes(lanes);
    }
}
