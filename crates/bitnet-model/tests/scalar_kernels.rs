//! `--kernel scalar` runs no SIMD code: a whole model (prefill and decode, both LM heads) on the scalar
//! set enters no SIMD build, counted by the kernels crate in builds with debug assertions. A test binary of
//! its own, since the count is process-wide.

use std::path::PathBuf;
use std::sync::Arc;

use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_kernels::dispatch::simd_calls;
use bitnet_model::{Backend, PackedModel, argmax};

/// Greedy prefill of 5 tokens then 4 decode steps on `kernels`; the last logits.
fn run(file: &Arc<BitnetFile>, kernels: Kernels) -> Vec<f32> {
    let m = PackedModel::load_with(file.clone(), kernels, 2).unwrap();
    let mut s = m.session(32);
    let mut logits = Vec::new();
    m.forward_logits(&mut s, &[1, 2, 3, 4, 5], &mut logits)
        .unwrap();
    for _ in 0..4 {
        let next = argmax(&logits);
        m.forward_logits(&mut s, &[next], &mut logits).unwrap();
    }
    logits
}

#[test]
fn the_scalar_kernels_run_no_simd_code() {
    if simd_calls().is_none() {
        eprintln!("SIMD calls are counted only with debug assertions (the test profile has them)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for head in [bitnet_convert::LmHead::Exact, bitnet_convert::LmHead::Int8] {
        let out = tmp.path().join(format!("m-{head:?}.bitnet"));
        bitnet_convert::convert(
            root.join("fixtures/bitnet-llama3-tiny").to_str().unwrap(),
            &out,
            &bitnet_convert::ConvertOptions { lm_head: head },
            &bitnet_convert::HubEnv::default(),
            &|_| {},
            &mut |_| {},
        )
        .unwrap();
        let file = Arc::new(BitnetFile::open(&out).unwrap());
        let before = simd_calls().unwrap();
        let want = run(&file, Kernels::by_name("scalar").unwrap());
        assert_eq!(
            simd_calls().unwrap(),
            before,
            "{head:?}: scalar entered SIMD code"
        );
        let best = Kernels::detect();
        if best.name != "scalar" {
            let got = run(&file, best);
            assert!(
                simd_calls().unwrap() > before,
                "{head:?}: {best:?} ran no SIMD code"
            );
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{head:?}: {best:?} logits differ from scalar's");
        }
    }
}
