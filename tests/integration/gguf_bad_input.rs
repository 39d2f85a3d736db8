//! Malformed GGUF files, crafted here: `bitnet convert` exits 2 with a message naming the field, and leaves
//! no output or temporary file.

use bitnet_gguf::{GgufFile, GgufWriter, TensorDesc, Value};
use half::f16;

use crate::gguf::gguf_fixture;
use crate::util::*;

fn string(s: &str) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()
}

/// A GGUF file from raw parts: `kv` is (key, value type tag, encoded value); `tensors` (name, dims, type,
/// offset); `data` the data section.
fn gguf_bytes(
    version: u32,
    kv: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, &[u64], u32, u64)],
    data: &[u8],
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, tag, v) in kv {
        b.extend(string(k));
        b.extend(tag.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        b.extend(string(name));
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend(data);
    b
}

fn arch(a: &str) -> (&'static str, u32, Vec<u8>) {
    ("general.architecture", 8, string(a))
}

#[test]
fn malformed_gguf_files_are_refused_naming_the_field() {
    let ok_kv = || vec![arch("llama")];
    let array_past_end = [&8u32.to_le_bytes()[..], &(1u64 << 40).to_le_bytes()].concat();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "unknown version",
            gguf_bytes(7, &ok_kv(), &[], &[]),
            vec!["`version`", "7", "versions 2 and 3"],
        ),
        (
            "a type not read",
            gguf_bytes(
                3,
                &ok_kv(),
                &[("token_embd.weight", &[256, 4], 12, 0)],
                &[0; 1024],
            ),
            vec![
                "token_embd.weight",
                "Q4_K",
                "F32, F16, BF16, TQ1_0, TQ2_0, I2_S",
            ],
        ),
        (
            "offset past the end",
            gguf_bytes(
                3,
                &ok_kv(),
                &[("output_norm.weight", &[8], 0, 64)],
                &[0; 32],
            ),
            vec!["tensor `output_norm.weight` offset", "past the end"],
        ),
        (
            "overlapping tensors",
            gguf_bytes(
                3,
                &ok_kv(),
                &[("a.weight", &[16], 0, 0), ("b.weight", &[8], 0, 32)],
                &[0; 96],
            ),
            vec!["tensor `b.weight` offset", "overlap"],
        ),
        (
            "string length past the file",
            gguf_bytes(
                3,
                &[(
                    "general.architecture",
                    8,
                    (1u64 << 50).to_le_bytes().to_vec(),
                )],
                &[],
                &[],
            ),
            vec!["general.architecture", "string length"],
        ),
        (
            "array length past the file",
            gguf_bytes(
                3,
                &[arch("llama"), ("tokenizer.ggml.tokens", 9, array_past_end)],
                &[],
                &[],
            ),
            vec!["tokenizer.ggml.tokens", "array length"],
        ),
        (
            "a damaged magic",
            b"GGUX\x03\0\0\0".to_vec(),
            vec!["not a GGUF file"],
        ),
        (
            "a file too short for a header",
            b"GG".to_vec(),
            vec!["field `magic`"],
        ),
        (
            "an architecture not supported",
            gguf_bytes(3, &[arch("gpt2")], &[], &[]),
            vec![
                "general.architecture",
                "`gpt2`",
                "llama, bitnet, bitnet-b1.58, bitnet-25",
            ],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, bytes, needles) in cases {
        let input = dir.path().join("bad.gguf");
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join("out.bitnet");
        let o = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        for n in needles {
            assert!(
                stderr(&o).contains(n),
                "{what}: {n:?} not in {}",
                stderr(&o)
            );
        }
        assert_only(dir.path(), &["bad.gguf"]);
    }
}

#[test]
fn tq_blocks_with_differing_scales_are_refused() {
    // A valid model file whose first q block is re-scaled: not one scale per tensor.
    let src = std::fs::read(gguf_fixture("falcon3-tq-tiny.tq2_0")).unwrap();
    let file = bitnet_gguf::GgufFile::from_bytes(src.clone()).unwrap();
    let t = file.tensor("blk.0.attn_q.weight").unwrap();
    let at = (file.data_offset() + t.offset) as usize + 64;
    let mut bytes = src;
    let d = f16::from_le_bytes([bytes[at], bytes[at + 1]]);
    bytes[at..at + 2].copy_from_slice(&f16::from_f32(d.to_f32() * 2.0).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("scaled.gguf");
    std::fs::write(&input, bytes).unwrap();
    let o = run(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        dir.path().join("o.bitnet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("blk.0.attn_q.weight") && stderr(&o).contains("block scales differ"),
        "{}",
        stderr(&o)
    );
    assert_only(dir.path(), &["scaled.gguf"]);
}

/// Copies a GGUF fixture with one metadata value replaced or added (or removed, for `None`).
fn with_metadata(name: &str, key: &str, value: Option<Value>, out: &std::path::Path) {
    let src = GgufFile::open(gguf_fixture(name)).unwrap();
    let mut meta: Vec<(String, Value)> = src
        .metadata()
        .iter()
        .filter_map(|(k, v)| match (k == key, &value) {
            (true, Some(new)) => Some((k.clone(), new.clone())),
            (true, None) => None,
            (false, _) => Some((k.clone(), v.clone())),
        })
        .collect();
    if let (None, Some(v)) = (src.get(key), value) {
        meta.push((key.to_string(), v));
    }
    let descs = src
        .tensors()
        .iter()
        .map(|t| TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    let mut w = GgufWriter::new(std::fs::File::create(out).unwrap(), &meta, descs).unwrap();
    for t in src.tensors() {
        w.write_tensor(&t.name, src.data(t)).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn pre_tokenizers_and_vocabularies_not_known_are_refused_and_falcon_e_warned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.gguf");
    let out = d.join("out.bitnet");
    let convert = || {
        run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };

    // The fixture with `key` set to `value`: refused (exit 2) naming every needle, no output.
    let refused = |key: &str, value: &str, needles: &[&str]| {
        with_metadata(
            "falcon3-tq-tiny.tq2_0",
            key,
            Some(Value::String(value.into())),
            &input,
        );
        let o = convert();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        for n in needles {
            assert!(stderr(&o).contains(n), "{n}: {}", stderr(&o));
        }
        assert_only(d, &["in.gguf"]);
    };
    refused(
        "tokenizer.ggml.pre",
        "mystery",
        &["tokenizer.ggml.pre", "`mystery`"],
    );
    refused("tokenizer.ggml.model", "rwkv", &["tokenizer.ggml.model"]);

    // Falcon-E's name: read as LLaMA 3's split (this vocabulary's own), with a warning that says so.
    with_metadata(
        "falcon3-tq-tiny.tq2_0",
        "tokenizer.ggml.pre",
        Some(Value::String("falcon_e".into())),
        &input,
    );
    let o = convert();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: tokenizer.ggml.pre `falcon_e`"),
        "{}",
        stderr(&o)
    );

    // A missing required key is named.
    with_metadata("falcon3-tq-tiny.tq2_0", "llama.block_count", None, &input);
    let o = run(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        d.join("o2.bitnet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("llama.block_count") && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rope_scaling_partial_rotary_and_huge_dimensions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    for (key, value, needle) in [
        (
            "llama.rope.dimension_count",
            Value::U32(32),
            "partial rotary",
        ),
        (
            "llama.rope.scaling.type",
            Value::String("yarn".into()),
            "`yarn` RoPE scaling",
        ),
        (
            "llama.embedding_length",
            Value::U64(1 << 40),
            "larger than any model",
        ),
        (
            "llama.attention.head_count",
            Value::U32(u32::MAX),
            "larger than any model",
        ),
    ] {
        with_metadata("falcon3-tq-tiny.tq2_0", key, Some(value), &input);
        let out = dir.path().join("out.bitnet");
        let o = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{key}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(key) && stderr(&o).contains(needle),
            "{}",
            stderr(&o)
        );
        assert_only(dir.path(), &["in.gguf"]);
    }
}

#[test]
fn tensors_the_graph_does_not_use_are_refused() {
    // A TL1/TL2-style per-tensor scale beside a projection: nothing here would multiply by it.
    let src = GgufFile::open(gguf_fixture("falcon3-tq-tiny.tq2_0")).unwrap();
    let mut descs: Vec<TensorDesc> = src
        .tensors()
        .iter()
        .map(|t| TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    descs.push(TensorDesc {
        name: "blk.0.attn_q.scale".into(),
        dims: vec![1],
        ggml_type: bitnet_gguf::GgmlType::F32,
    });
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("extra.gguf");
    let mut w = GgufWriter::new(
        std::fs::File::create(&input).unwrap(),
        src.metadata(),
        descs,
    )
    .unwrap();
    for t in src.tensors() {
        w.write_tensor(&t.name, src.data(t)).unwrap();
    }
    w.write_tensor("blk.0.attn_q.scale", &2f32.to_le_bytes())
        .unwrap();
    w.finish().unwrap();
    let o = run(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        dir.path().join("o.bitnet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("blk.0.attn_q.scale") && stderr(&o).contains("not part of the graph"),
        "{}",
        stderr(&o)
    );
    assert_only(dir.path(), &["extra.gguf"]);
}
