//! Every bad input of the foundation issue: a non-zero exit, a message naming the file, tensor or field,
//! and no output file (nor a stray temporary) left behind.

use std::path::Path;

use safetensors::tensor::Dtype;
use serde_json::Value;

use crate::util::*;

/// Runs convert on `input` into an empty folder; asserts failure, the needles in stderr, and no output.
fn convert_fails(input: &Path, needles: &[&str]) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.bitnet");
    let o = run(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit 2 for {}:\n{e}",
        input.display()
    );
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in:\n{e}");
    }
    assert_only(out_dir.path(), &[]);
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn edit_tensors(file: &Path, edit: impl FnOnce(&mut Tensors)) {
    let mut t = read_safetensors(file);
    edit(&mut t);
    write_safetensors(file, &t);
}

#[test]
fn missing_folder() {
    convert_fails(
        Path::new("/no/such/model-folder"),
        &["/no/such/model-folder", "no such folder"],
    );
}

#[test]
fn folder_without_config() {
    let tmp = tempfile::tempdir().unwrap();
    convert_fails(tmp.path(), &["no config.json"]);
}

#[test]
fn config_missing_a_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    convert_fails(&dir, &["config.json", "`hidden_size`", "missing"]);
}

#[test]
fn config_with_a_bad_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_config(&dir, |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    convert_fails(
        &dir,
        &["config.json", "`num_key_value_heads`", "does not divide"],
    );
}

#[test]
fn weights_of_another_architecture_are_refused_not_dropped() {
    // A BitNet checkpoint (with sub-norms) labelled as a Llama: running it without its sub-norms would be
    // silent garbage, so the unused weights stop the conversion.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_config(&dir, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
        c.insert("model_type".into(), "llama".into());
    });
    convert_fails(
        &dir,
        &[
            "model.layers.0.mlp.ffn_sub_norm.weight",
            "llama-bitnet",
            "does not use",
        ],
    );
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_config(&dir, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["MistralForCausalLM"]),
        );
        c.insert("model_type".into(), "mistral".into());
    });
    convert_fails(
        &dir,
        &[
            "config.json",
            "MistralForCausalLM",
            "not supported",
            "supported: BitNetForCausalLM",
        ],
    );
}

#[test]
fn missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_tensors(&dir.join("model.safetensors"), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    convert_fails(&dir, &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn untied_config_without_lm_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    convert_fails(&dir, &["lm_head.weight", "tie_word_embeddings is false"]);
}

#[test]
fn tensor_with_the_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_tensors(&dir.join("model.safetensors"), |t| {
        let e = t.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        e.1 = vec![e.1[1], e.1[0]];
    });
    convert_fails(
        &dir,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "shape is [128, 64]",
            "[64, 128]",
        ],
    );
}

#[test]
fn tensor_with_an_unsupported_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    edit_tensors(&dir.join("model.safetensors"), |t| {
        let e = t.get_mut("model.layers.0.mlp.gate_proj.weight").unwrap();
        e.0 = Dtype::I16;
    });
    convert_fails(
        &dir,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "dtype I16 is not supported",
            "BF16, F16 or F32",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    convert_fails(
        &dir,
        &[
            "model.safetensors",
            "not a valid safetensors file",
            "truncated",
        ],
    );
    std::fs::write(&p, &bytes[..5]).unwrap();
    convert_fails(&dir, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn corrupt_safetensors_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[9..20].copy_from_slice(b"garbage!!!!");
    std::fs::write(&p, &bytes).unwrap();
    convert_fails(&dir, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn index_pointing_to_a_missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-untied-sharded", tmp.path());
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    convert_fails(
        &dir,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00003.safetensors",
            "does not exist",
        ],
    );
}

#[test]
fn invalid_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-untied-sharded", tmp.path());
    std::fs::write(dir.join("model.safetensors.index.json"), b"{ not json").unwrap();
    convert_fails(&dir, &["model.safetensors.index.json", "not valid JSON"]);
}

#[test]
fn output_that_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("bitnet-tiny-tied");
    for out in [
        tmp.path().join("no/such/dir/out.bitnet"),
        tmp.path().to_path_buf(),
    ] {
        let o = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--force",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(tmp.path().to_str().unwrap()),
            "{}",
            stderr(&o)
        );
    }
    assert_only(tmp.path(), &[]);
}

#[test]
fn a_write_that_fails_midway_leaves_nothing() {
    // The file-size limit makes a write fail after 64 KiB with EFBIG (SIGXFSZ is ignored, so the process
    // sees the error instead of dying), the way a full disk would.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.bitnet");
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec '{}' convert '{}' -o '{}'",
        env!("CARGO_BIN_EXE_bitnet"),
        fixture("bitnet-tiny-tied").display(),
        out.display()
    );
    let o = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert_only(tmp.path(), &[]);
}

#[test]
fn interrupted_convert_leaves_nothing() {
    // A checkpoint big enough that the conversion is still running when SIGINT arrives.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-tiny-tied", tmp.path());
    let (vocab, hidden) = (200_000usize, 512usize);
    edit_config(&dir, |c| {
        c.insert("vocab_size".into(), vocab.into());
        c.insert("hidden_size".into(), hidden.into());
        c.insert("num_attention_heads".into(), 8.into());
        c.insert("num_key_value_heads".into(), 4.into());
    });
    let mut t = Tensors::new();
    let mut seed = 1u32;
    let mut add = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                half::bf16::from_f32(((seed >> 9) as f32 / 8388608.0 - 1.0) * 0.05).to_le_bytes()
            })
            .collect();
        t.insert(name, (Dtype::BF16, shape, bytes));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, hidden]);
    add("model.norm.weight".into(), vec![hidden]);
    for i in 0..2 {
        let p = format!("model.layers.{i}.");
        add(format!("{p}input_layernorm.weight"), vec![hidden]);
        add(format!("{p}post_attention_layernorm.weight"), vec![hidden]);
        add(format!("{p}self_attn.attn_sub_norm.weight"), vec![hidden]);
        add(format!("{p}mlp.ffn_sub_norm.weight"), vec![344]);
        for n in ["q_proj", "o_proj"] {
            add(format!("{p}self_attn.{n}.weight"), vec![hidden, hidden]);
        }
        for n in ["k_proj", "v_proj"] {
            add(format!("{p}self_attn.{n}.weight"), vec![hidden / 2, hidden]);
        }
        add(format!("{p}mlp.gate_proj.weight"), vec![344, hidden]);
        add(format!("{p}mlp.up_proj.weight"), vec![344, hidden]);
        add(format!("{p}mlp.down_proj.weight"), vec![hidden, 344]);
    }
    write_safetensors(&dir.join("model.safetensors"), &t);

    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("big.bitnet");
    let mut child = bitnet()
        .args([
            "convert",
            dir.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the temporary file to appear, then interrupt.
    let start = std::time::Instant::now();
    let mut saw_temp = false;
    while start.elapsed() < std::time::Duration::from_secs(20) {
        if std::fs::read_dir(&out_dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp-"))
        {
            saw_temp = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert!(
        saw_temp,
        "the conversion finished before it could be interrupted"
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    assert_only(&out_dir, &[]);
}

fn inspect_fails(bytes: &[u8], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.bitnet");
    std::fs::write(&p, bytes).unwrap();
    let o = run(&["inspect", p.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains("bad.bitnet"), "{e}");
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in:\n{e}");
    }
}

#[test]
fn inspect_rejects_truncated_corrupt_and_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[])).unwrap();
    inspect_fails(&good[..good.len() / 2], &["truncated"]);
    inspect_fails(&good[..40], &["truncated", "preamble"]);
    let mut c = good.clone();
    c[70] ^= 0xff;
    inspect_fails(&c, &["header checksum mismatch"]);
    inspect_fails(
        b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00",
        &["not a .bitnet file"],
    );
    inspect_fails(
        &std::fs::read(fixture("bitnet-tiny-tied").join("model.safetensors")).unwrap(),
        &["not a .bitnet file"],
    );
    inspect_fails(b"", &["not a .bitnet file"]);
    let mut v = good;
    v[8] = 9;
    inspect_fails(
        &v,
        &[
            &format!(
                "unsupported .bitnet version 9.{}",
                bitnet_format::VERSION_MINOR
            ),
            "reads major versions 1 to 2",
        ],
    );
    let o = run(&["inspect", "/no/such/file.bitnet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such/file.bitnet"));
}

#[test]
fn a_tokenizer_model_that_cannot_be_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("bitnet-1bitllm-tiny", tmp.path());
    let model = std::fs::read(dir.join("tokenizer.model")).unwrap();
    std::fs::write(dir.join("tokenizer.model"), &model[..1000]).unwrap();
    convert_fails(
        &dir,
        &["tokenizer.model: not a valid SentencePiece model", "remain"],
    );
    // The same model declared Unigram (trainer_spec.model_type = 1 appended; protobuf keeps the last).
    let mut unigram = model.clone();
    unigram.extend_from_slice(&[0x12, 0x02, 0x18, 0x01]);
    std::fs::write(dir.join("tokenizer.model"), &unigram).unwrap();
    convert_fails(
        &dir,
        &[
            "tokenizer.model: a SentencePiece unigram model",
            "needs its own tokenizer.json",
        ],
    );
}
