//! `formats/golden/quantize.json`: ternary values and scales that PyTorch computes with transformers'
//! own `WeightQuant` formula, against this crate's quantizer.

use bitnet_convert::quantize::{absmean_ternary, to_f32};
use safetensors::tensor::Dtype;

#[test]
fn absmean_quantization_matches_pytorch() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../formats/golden/quantize.json");
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let bytes: Vec<u8> = c["bf16_bits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| (v.as_u64().unwrap() as u16).to_le_bytes())
            .collect();
        let t = absmean_ternary(&to_f32(&bytes, Dtype::BF16));
        let want: Vec<i8> = c["ternary"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8)
            .collect();
        assert_eq!(t.values, want, "case {}", c["name"]);
        assert_eq!(
            t.weight_scale.to_bits() as u64,
            c["weight_scale_bits"].as_u64().unwrap(),
            "case {}",
            c["name"]
        );
    }
}
