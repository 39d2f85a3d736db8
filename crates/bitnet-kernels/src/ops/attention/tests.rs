use super::*;
use crate::Kernels;

#[test]
fn attention_over_one_position_returns_its_value() {
    let (q, k, v) = ([1.0f32, 2.0], [0.5f32, 0.5], [3.0f32, -1.0]);
    let mut scores = [0f32; 1];
    let mut out = [0f32; 2];
    let kv = KvLayout::interleaved(1, 2);
    attention(&q, &k, &v, 1, 1, 1, 2, kv, 0..1, &mut scores, &mut out);
    assert_eq!(out, [3.0, -1.0]);
}

#[test]
fn every_kernel_set_of_attention_gives_the_portable_bits() {
    let mut r = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        (r % 2001) as f32 / 1000.0 - 1.0
    };
    // Head sizes below one register block, ragged ones, and multiples of 16 (2B4T's 128) with
    // contexts of several 16-position blocks plus a tail.
    let shapes = [
        (6, 2, 40, 37),
        (4, 1, 136, 21),
        (2, 2, 128, 40),
        (3, 1, 32, 50),
        (8, 2, 16, 32),
    ];
    let sets = Kernels::available();
    for (heads, kv_heads, hd, ctx) in shapes {
        let q: Vec<f32> = (0..heads * hd).map(|_| next()).collect();
        let k: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| next()).collect();
        let v: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| next()).collect();
        // The same cache head-major, with room for more positions than it holds.
        let cap = ctx + 3;
        let head_major = |x: &[f32]| {
            let mut out = vec![f32::NAN; kv_heads * cap * hd];
            for p in 0..ctx {
                for h in 0..kv_heads {
                    let src = &x[p * kv_heads * hd + h * hd..][..hd];
                    out[(h * cap + p) * hd..][..hd].copy_from_slice(src);
                }
            }
            out
        };
        let (kh, vh) = (head_major(&k), head_major(&v));
        // Contexts that fill whole blocks of positions (16, 32) and ones that leave a remainder.
        for n_ctx in [1, 2, 7, 16, 32, ctx].into_iter().filter(|&n| n <= ctx) {
            let run = |build: Option<&Kernels>, major: bool| {
                let mut s = vec![0f32; ATTN_GROUP * ctx];
                let mut o = vec![f32::NAN; (heads - 1) * hd];
                let (k, v, kv) = if major {
                    (&kh[..], &vh[..], KvLayout::head_major(cap, hd))
                } else {
                    (&k[..], &v[..], KvLayout::interleaved(kv_heads, hd))
                };
                let args = (&q[..], k, v, n_ctx, heads, kv_heads, hd, kv, 1..heads);
                let (q, k, v, n, nh, nkv, hd, kv, hs) = args;
                match build {
                    None => attention_body(
                        q,
                        k,
                        v,
                        n,
                        nh,
                        nkv,
                        hd,
                        kv,
                        hs,
                        &mut s,
                        &mut o,
                        scores_portable,
                        mix_portable,
                    ),
                    Some(set) => (set.attention)(q, k, v, n, nh, nkv, hd, kv, hs, &mut s, &mut o),
                }
                o
            };
            let want = run(None, false);
            assert!(want.iter().all(|v| v.is_finite()), "every output written");
            for set in &sets {
                for major in [false, true] {
                    let got = run(Some(set), major);
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{set:?} (head-major {major}): head_dim {hd}, n_ctx {n_ctx}"
                    );
                }
            }
            // Against the plain definition: a softmax-weighted sum of the values.
            for h in 1..heads {
                let kvh = h / (heads / kv_heads);
                let qh = &q[h * hd..(h + 1) * hd];
                let sc: Vec<f64> = (0..n_ctx)
                    .map(|p| {
                        let kp = &k[p * kv_heads * hd + kvh * hd..][..hd];
                        let d: f64 = qh.iter().zip(kp).map(|(a, b)| (a * b) as f64).sum();
                        d / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let t: f64 = e.iter().sum();
                for d in 0..hd {
                    let o: f64 = (0..n_ctx)
                        .map(|p| e[p] / t * v[p * kv_heads * hd + kvh * hd + d] as f64)
                        .sum();
                    let got = want[(h - 1) * hd + d] as f64;
                    assert!((o - got).abs() < 1e-5, "head {h} dim {d}: {got} vs {o}");
                }
            }
        }
    }
}
