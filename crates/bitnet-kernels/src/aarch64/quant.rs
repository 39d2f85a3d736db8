//! [`quantize_row`](crate::quant::quantize_row) with NEON: the same bits as the portable definition.

use std::arch::aarch64::*;

use crate::round_half_even;

/// [`quantize_row`](crate::quant::quantize_row) with NEON: the maximum with `fmaxnm` (a NaN is skipped,
/// as `f32::max` does), then `clamp(x * a, -128, 128)` with NaN-keeping `fmax`/`fmin`, rounding half to
/// even with `fcvtns` (NaN to 0, as `as i32` does) and the upper clamp to 127 in integers.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_row_neon(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let q = &mut q[..x.len()];
    let (chunks, tail) = x.as_chunks::<16>();
    let mut m = [vdupq_n_f32(0.0); 4];
    for c in chunks {
        for (i, mi) in m.iter_mut().enumerate() {
            // SAFETY: `c` holds 16 f32; 4 are read at 4i.
            let v = unsafe { vld1q_f32(c.as_ptr().add(4 * i)) };
            *mi = vmaxnmq_f32(*mi, vabsq_f32(v));
        }
    }
    let lanes = vmaxnmvq_f32(vmaxnmq_f32(
        vmaxnmq_f32(m[0], m[1]),
        vmaxnmq_f32(m[2], m[3]),
    ));
    let amax = tail.iter().fold(lanes, |m, v| m.max(v.abs()));
    let a = 127.0f32 / amax.max(1e-5);
    let (va, lo, hi, top) = (
        vdupq_n_f32(a),
        vdupq_n_f32(-128.0),
        vdupq_n_f32(128.0),
        vdupq_n_s32(127),
    );
    let mut sum = vdupq_n_s32(0);
    let (qc, qt) = q.as_chunks_mut::<16>();
    for (o, c) in qc.iter_mut().zip(chunks) {
        let mut r = [vdupq_n_s32(0); 4];
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: `c` holds 16 f32; 4 are read at 4i.
            let y = vmulq_f32(unsafe { vld1q_f32(c.as_ptr().add(4 * i)) }, va);
            let y = vminq_f32(vmaxq_f32(y, lo), hi);
            *ri = vminq_s32(vcvtnq_s32_f32(y), top);
            sum = vaddq_s32(sum, *ri);
        }
        let h = [
            vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1])),
            vcombine_s16(vmovn_s32(r[2]), vmovn_s32(r[3])),
        ];
        // SAFETY: `o` holds 16 bytes.
        unsafe {
            vst1q_s8(
                o.as_mut_ptr(),
                vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])),
            )
        };
    }
    let mut sum = vaddvq_s32(sum);
    let one = |v: f32| round_half_even((v * a).clamp(-128.0, 128.0)).clamp(-128.0, 127.0) as i32;
    for (o, &v) in qt.iter_mut().zip(tail) {
        let r = one(v);
        *o = r as i8;
        sum += r;
    }
    (a, sum)
}
