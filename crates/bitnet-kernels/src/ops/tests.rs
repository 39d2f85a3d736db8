use super::*;

#[test]
fn rope_rotates_pairs_half_apart() {
    let rope = Rope::new(4, 10000.0);
    let (mut c, mut s) = ([0f32; 2], [0f32; 2]);
    rope.tables(1, &mut c, &mut s);
    let mut x = [1.0f32, 0.0, 0.0, 0.0];
    apply_rope(&mut x, 4, &c, &s);
    assert!((x[0] - 1f32.cos()).abs() < 1e-7 && (x[2] - 1f32.sin()).abs() < 1e-7);
    assert_eq!(x[1], 0.0);
}

#[test]
fn every_kernel_set_of_rms_norm_gives_the_portable_bits() {
    let x: Vec<f32> = (0..300)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.37e-3 * (1 + i % 5) as f32)
        .collect();
    let w: Vec<f32> = (0..300).map(|i| 0.5 + (i % 13) as f32 * 0.11).collect();
    let same = |want: &[f32], got: &[f32], what: &str| {
        let equal = want
            .iter()
            .zip(got)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(equal, "{what}, length {}", want.len());
    };
    for n in [1, 2, 15, 16, 17, 31, 64, 100, 257, 300] {
        let mut want = vec![0f32; n];
        rms_norm(&x[..n], &w[..n], 1e-5, &mut want);
        for k in crate::Kernels::available() {
            let mut got = vec![f32::NAN; n];
            (k.rms_norm)(&x[..n], &w[..n], 1e-5, &mut got);
            same(&want, &got, k.name);
        }
        // The fixed lane order stays within an f32 rounding of the sequential f64 sum.
        let ss: f64 = x[..n].iter().map(|&v| (v as f64) * (v as f64)).sum();
        let r = 1.0f32 / ((ss as f32) / n as f32 + 1e-5).sqrt();
        for i in 0..n {
            let seq = w[i] * (x[i] * r);
            assert!(
                (seq - want[i]).abs() <= seq.abs() * 2e-7,
                "length {n}, element {i}"
            );
        }
    }
}

#[test]
fn exp_is_within_two_ulp_of_the_true_value() {
    // Error in units of the f32 spacing at the true value.
    let mut worst = 0f64;
    let mut x = -87.3f32;
    while x < 88.3 {
        let want = (x as f64).exp();
        let got = exp(x);
        let ulp = (got as f64 - want).abs() / (f32::EPSILON as f64 * want);
        worst = worst.max(ulp);
        assert!(ulp <= 2.0, "exp({x}) = {got}, true {want}: {ulp:.2} ulp");
        x += 0.0173;
    }
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-1000.0) < 1.2e-38 && exp(-1000.0) > 0.0);
    assert!(
        worst > 0.1,
        "the comparison saw no rounding at all ({worst})"
    );
    eprintln!("exp: worst error {worst:.3} of an f32 spacing");
}

#[test]
fn rms_norm_normalizes() {
    let mut out = [0f32; 4];
    rms_norm(&[2.0, 2.0, 2.0, 2.0], &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
    assert_eq!(out, [1.0, 2.0, 1.0, 1.0]);
}
