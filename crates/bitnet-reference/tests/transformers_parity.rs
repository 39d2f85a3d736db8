//! The FP32 reference against the logits Hugging Face transformers computed on the fixtures.

use std::path::PathBuf;

use bitnet_model::parity::compare;
use bitnet_model::{Backend, LogitsMode};
use bitnet_reference::ReferenceModel;
use safetensors::SafeTensors;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn reference_logits_match_transformers() {
    for name in [
        "bitnet-tiny-tied",
        "bitnet-tiny-untied-sharded",
        "bitnet-llama3-tiny",
    ] {
        let model = ReferenceModel::load_dir(&root().join("fixtures").join(name)).unwrap();
        let bytes = std::fs::read(
            root()
                .join("fixtures")
                .join(format!("{name}.logits.safetensors")),
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let ids = st.tensor("input_ids").unwrap();
        let t = ids.shape()[1];
        let ids: Vec<u32> = ids
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        let logits: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let v = model.config().vocab_size;
        for (p, prompt) in ids.chunks(t).enumerate() {
            let mut s = model.session(t);
            let out = model
                .forward(&mut s, prompt, LogitsMode::All, None)
                .unwrap();
            let c = compare(&logits[p * t * v..(p + 1) * t * v], &out.logits, v);
            eprintln!(
                "{name} prompt {p}: max {:.2e} tight {}/{} top1 {} maxkl {:.2e}",
                c.max_abs, c.tight, c.positions, c.top1_agree, c.max_kl
            );
            assert_eq!(c.top1_agree, c.positions);
        }
    }
}
