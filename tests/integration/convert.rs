//! `bitnet convert` and `bitnet inspect` on every fixture, checked against the checkpoint itself.

use safetensors::tensor::Dtype;
use serde_json::Value;

use crate::util::*;

/// HF name of each canonical per-layer tensor (SPEC.md section 5), under 2B4T's names or (`onebit`)
/// 1bitLLM's, which name the sub-norms `inner_attn_ln` and `ffn_layernorm`.
fn hf_name(name: &str, onebit: bool) -> String {
    if let Some(rest) = name.strip_prefix("blk.") {
        let (i, t) = rest.split_once('.').unwrap();
        let hf = match t {
            "attn_norm" => "input_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_sub_norm" if onebit => "self_attn.inner_attn_ln",
            "attn_sub_norm" => "self_attn.attn_sub_norm",
            "attn_output" => "self_attn.o_proj",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_sub_norm" if onebit => "mlp.ffn_layernorm",
            "ffn_sub_norm" => "mlp.ffn_sub_norm",
            "ffn_down" => "mlp.down_proj",
            other => panic!("unknown tensor {other}"),
        };
        return format!("model.layers.{i}.{hf}.weight");
    }
    match name {
        "output_norm" => "model.norm.weight".into(),
        "token_embd" => "model.embed_tokens.weight".into(),
        "output" => "lm_head.weight".into(),
        other => panic!("unknown tensor {other}"),
    }
}

/// Checks every tensor of a converted file against the checkpoint it came from.
fn check_against_checkpoint(file: &[u8], info: &Value, ck: &Tensors) {
    let mut ternary = 0;
    for t in info["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if name == "tokenizer.json" {
            continue;
        }
        let (data, _) = tensor_bytes(file, info, name);
        let onebit = info["source"]["architecture"] == "BitnetForCausalLM";
        let (dtype, shape, src) = &ck[&hf_name(name, onebit)];
        let shape_u: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        assert_eq!(t["shape"], serde_json::json!(shape_u), "{name}");
        match t["kind"].as_str().unwrap() {
            "ternary_r16" => {
                ternary += 1;
                let (rows, cols) = (shape[0], shape[1]);
                let (want, scale) = quantize_ternary(&floats(*dtype, src));
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            ternary_at(data, cols, r, c),
                            want[r * cols + c],
                            "{name}[{r},{c}]"
                        );
                    }
                }
                // Padding rows and columns decode to 0.
                for r in rows..rows.div_ceil(16) * 16 {
                    assert_eq!(ternary_at(data, cols, r, 0), 0, "{name} padding row {r}");
                }
                for c in cols..cols.div_ceil(16) * 16 {
                    assert_eq!(ternary_at(data, cols, 0, c), 0, "{name} padding col {c}");
                }
                assert_eq!(t["scale"].as_f64().unwrap() as f32, scale, "{name} scale");
            }
            "f32" => {
                let got: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(got, floats(*dtype, src), "{name}");
            }
            "bf16" => {
                assert_eq!(*dtype, Dtype::BF16, "{name}");
                assert_eq!(data, &src[..], "{name}");
            }
            other => panic!("{name}: unexpected kind {other}"),
        }
    }
    assert!(ternary >= 7, "at least one layer of BitLinears");
}

#[test]
fn every_fixture_converts_and_matches_an_independent_quantization() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let dir = fixture(name);
        let out = convert(&dir, tmp.path(), &[]);
        let info = inspect_json(&out);
        let bytes = std::fs::read(&out).unwrap();
        let ck = read_checkpoint(&dir);
        check_against_checkpoint(&bytes, &info, &ck);

        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let c = &info["config"];
        assert_eq!(c["vocab_size"], cfg["vocab_size"], "{name}");
        assert_eq!(c["hidden_size"], cfg["hidden_size"]);
        assert_eq!(c["intermediate_size"], cfg["intermediate_size"]);
        assert_eq!(c["num_layers"], cfg["num_hidden_layers"]);
        assert_eq!(c["num_heads"], cfg["num_attention_heads"]);
        assert_eq!(c["num_kv_heads"], cfg["num_key_value_heads"]);
        assert_eq!(c["tie_word_embeddings"], cfg["tie_word_embeddings"]);
        assert_eq!(c["hidden_act"], cfg["hidden_act"], "{name}");
        let tied = cfg["tie_word_embeddings"].as_bool().unwrap();
        let has_output = info["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "output");
        assert_eq!(
            has_output, !tied,
            "{name}: an exact file has `output` only when untied"
        );

        let tok = &info["tokenizer"];
        assert_eq!(tok["embedded"], true);
        let (tok_bytes, t) = tensor_bytes(&bytes, &info, "tokenizer.json");
        if dir.join("tokenizer.json").exists() {
            assert_eq!(t["source"], "tokenizer.json");
            assert_eq!(
                tok_bytes,
                std::fs::read(dir.join("tokenizer.json")).unwrap(),
                "{name}: tokenizer.json byte for byte"
            );
        } else {
            // Made from tokenizer.model: the vocabulary and merges transformers builds from it.
            assert_eq!(t["source"], "tokenizer.model");
            let made: Value = serde_json::from_slice(tok_bytes).unwrap();
            let reference: Value = serde_json::from_slice(
                &std::fs::read(
                    repo_root().join(format!("fixtures/{name}.tokenizer.json-reference")),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(
                made["model"]["vocab"], reference["model"]["vocab"],
                "{name}"
            );
            assert_eq!(
                made["model"]["merges"], reference["model"]["merges"],
                "{name}"
            );
            assert_eq!(made["added_tokens"], reference["added_tokens"], "{name}");
        }
        assert_eq!(tok["bos_token_id"], cfg["bos_token_id"]);
        let tc: Value =
            serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap())
                .unwrap();
        assert_eq!(
            tok["chat_template"],
            tc.get("chat_template").is_some(),
            "{name}"
        );
        let totals = &info["totals"];
        assert!(totals["ternary_bits_per_weight"].as_f64().unwrap() >= 2.0);
        assert_eq!(info["file_bytes"].as_u64().unwrap(), bytes.len() as u64);
        ok(&["inspect", "--check", out.to_str().unwrap()]);
    }
}

#[test]
fn the_real_llama3_tokenizer_fixture_gets_llama3_stop_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(&fixture("bitnet-llama3-tiny"), tmp.path(), &[]);
    let info = inspect_json(&out);
    let eos: Vec<u64> = info["tokenizer"]["eos_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(eos.contains(&128001) && eos.contains(&128009), "{eos:?}");
    assert_eq!(info["tokenizer"]["bos_token_id"], 128000);
    assert_eq!(info["config"]["vocab_size"], 128256);
}

#[test]
fn a_sentencepiece_checkpoint_gets_a_tokenizer_json_and_config_json_special_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("bitnet-1bitllm-tiny");
    let out = tmp.path().join("x.bitnet");
    let o = run(&[
        "convert",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("note: ")
            && err.contains("tokenizer.model: no tokenizer.json beside it; made one"),
        "{err}"
    );
    assert!(!err.contains("can run token ids but not text"), "{err}");
    let tok = &inspect_json(&out)["tokenizer"];
    // generation_config.json says bos 0 and pad 1, copied from the published repository, where they
    // contradict config.json and the tokenizer (`<s>` = 1); config.json wins.
    assert_eq!(tok["bos_token_id"], 1);
    assert_eq!(tok["add_bos_token"], true);
    assert_eq!(tok["pad_token_id"], 498);
    assert_eq!(tok["eos_token_ids"], serde_json::json!([2]));
}

#[test]
fn int8_head_is_a_per_row_absmax_copy() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["bitnet-tiny-tied", "bitnet-tiny-untied-sharded"] {
        let dir = fixture(name);
        let out = convert(&dir, tmp.path(), &["--lm-head", "int8"]);
        let info = inspect_json(&out);
        let bytes = std::fs::read(&out).unwrap();
        let (data, t) = tensor_bytes(&bytes, &info, "output");
        assert_eq!(t["kind"], "int8_r16");
        let ck = read_checkpoint(&dir);
        let head = if info["config"]["tie_word_embeddings"] == true {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let (dtype, shape, src) = &ck[head];
        let w = floats(*dtype, src);
        let (rows, cols) = (shape[0], shape[1]);
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = amax / 127.0;
            for (c, &x) in row.iter().enumerate() {
                let (q, s) = int8_at(data, rows, cols, r, c);
                assert_eq!(s, d, "{name} row {r} scale");
                let want = if d == 0.0 {
                    0
                } else {
                    (x / d).round_ties_even().clamp(-127.0, 127.0) as i8
                };
                assert_eq!(q, want, "{name}[{r},{c}]");
            }
        }
        // The exact embedding stays for the lookup; parameters are not double-counted.
        assert!(
            info["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "token_embd" && t["kind"] == "bf16")
        );
        let exact = inspect_json(&convert(&dir, &mkdir(tmp.path().join("exact")), &[]));
        assert_eq!(
            info["totals"]["parameters"], exact["totals"]["parameters"],
            "{name}"
        );
    }
}

/// Re-encodes every float tensor of a fixture copy to `dtype`.
fn reencode(dir: &std::path::Path, dtype: Dtype) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let mut t = read_safetensors(&p);
        for (d, _, bytes) in t.values_mut() {
            let f = floats(*d, bytes);
            *bytes = match dtype {
                Dtype::F32 => f.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F16 => f
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => unreachable!(),
            };
            *d = dtype;
        }
        write_safetensors(&p, &t);
    }
}

#[test]
fn f32_and_f16_master_weights_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let bf16 = convert(
        &fixture("bitnet-tiny-untied-sharded"),
        &mkdir(tmp.path().join("bf16")),
        &[],
    );
    let bf16_info = inspect_json(&bf16);
    for dtype in [Dtype::F32, Dtype::F16] {
        let dir = copy_fixture(
            "bitnet-tiny-untied-sharded",
            &mkdir(tmp.path().join(format!("{dtype:?}"))),
        );
        reencode(&dir, dtype);
        let out = convert(&dir, &dir, &[]);
        let info = inspect_json(&out);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(info["source"]["dtype"], format!("{dtype:?}"));
        let emb = info["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "token_embd")
            .unwrap();
        assert_eq!(
            emb["kind"], "f32",
            "f16/f32 embeddings are stored exactly, as f32"
        );
        check_against_checkpoint(&bytes, &info, &read_checkpoint(&dir));
        if dtype == Dtype::F32 {
            // bf16 -> f32 is exact, so the ternary tensors and scales are those of the bf16 conversion.
            let bf16_bytes = std::fs::read(&bf16).unwrap();
            for t in bf16_info["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"] == "ternary_r16")
            {
                let n = t["name"].as_str().unwrap();
                assert_eq!(
                    tensor_bytes(&bytes, &info, n).0,
                    tensor_bytes(&bf16_bytes, &bf16_info, n).0,
                    "{n}"
                );
                assert_eq!(tensor_bytes(&bytes, &info, n).1["scale"], t["scale"], "{n}");
            }
        }
    }
}

#[test]
fn inspect_check_catches_a_flipped_weight_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let info = inspect_json(&out);
    let t = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.1.ffn_down")
        .unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[t["offset"].as_u64().unwrap() as usize + 100] ^= 0x01;
    std::fs::write(&out, &bytes).unwrap();
    let o = run(&["inspect", "--check", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("MISMATCH  blk.1.ffn_down"),
        "{}",
        stdout(&o)
    );
    let o = run(&["inspect", "--check", "--json", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"]["ok"], false);
    assert_eq!(v["check"]["mismatches"][0]["name"], "blk.1.ffn_down");
}

#[test]
fn convert_does_not_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.bitnet");
    std::fs::write(&out, b"keep me").unwrap();
    let o = run(&[
        "convert",
        fixture("bitnet-tiny-tied").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn inspect_text_shows_the_table_and_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(&fixture("bitnet-tiny-untied-sharded"), tmp.path(), &[]);
    let text = ok(&["inspect", out.to_str().unwrap()]);
    for needle in [
        "bitnet-b1.58 from BitNetForCausalLM",
        "untied LM head",
        "blk.2.ffn_down",
        "ternary_r16",
        "tokenizer.json embedded",
        "totals",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}
