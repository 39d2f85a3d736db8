//! The golden vectors of `formats/golden/`, made by an independent implementation of SPEC.md
//! (`formats/golden/make_golden.py`), against this crate's packers and reader.

use std::path::PathBuf;

use bitnet_format::{BitnetFile, Features, FormatError, RopeStyle, TensorKind, layout};
use serde_json::Value;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../formats/golden")
        .join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(golden(name)).unwrap()).unwrap()
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn shape(c: &Value) -> (usize, usize) {
    (
        c["shape"][0].as_u64().unwrap() as usize,
        c["shape"][1].as_u64().unwrap() as usize,
    )
}

#[test]
fn ternary_r16_matches_the_golden_bytes() {
    let cases = load("ternary_r16.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let (r, k) = shape(c);
        let values: Vec<i8> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8)
            .collect();
        let expected = from_hex(c["packed_hex"].as_str().unwrap());
        assert_eq!(
            layout::pack_ternary(&values, r, k),
            expected,
            "case {}",
            c["name"]
        );
        assert_eq!(
            layout::unpack_ternary(&expected, r, k).unwrap(),
            values,
            "case {}",
            c["name"]
        );
    }
}

#[test]
fn int8_r16_matches_the_golden_bytes() {
    let cases = load("int8_r16.json");
    for c in cases["cases"].as_array().unwrap() {
        let (r, k) = shape(c);
        let values: Vec<i8> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8)
            .collect();
        let scales: Vec<f32> = c["scale_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
            .collect();
        let expected = from_hex(c["packed_hex"].as_str().unwrap());
        assert_eq!(
            layout::pack_int8(&values, &scales, r, k),
            expected,
            "case {}",
            c["name"]
        );
        assert_eq!(
            layout::unpack_int8(&expected, r, k).unwrap(),
            (values, scales),
            "case {}",
            c["name"]
        );
    }
}

#[test]
fn reads_files_written_from_the_spec_alone() {
    // Version 2 (the LLaMA-BitLinear computation: no sub-norms) and version 1 (2B4T's, features implied).
    for (stem, features) in [
        ("minimal", Features::default()),
        ("minimal-v1", Features::V1),
    ] {
        let bytes = std::fs::read(golden(&format!("{stem}.bitnet"))).unwrap();
        let expected = load(&format!("{stem}.expected.json"));
        let file = BitnetFile::from_bytes(bytes).unwrap();
        assert_eq!(file.features(), features, "{stem}");
        assert_eq!(file.header().config.rope_style, RopeStyle::Neox);
        check_contents(&file, &expected);
    }
}

fn check_contents(file: &BitnetFile, expected: &Value) {
    assert_eq!(file.len(), expected["file_len"].as_u64().unwrap());
    assert_eq!(
        file.preamble().data_offset,
        expected["data_offset"].as_u64().unwrap()
    );
    assert!(file.verify_checksums(|_| {}).is_empty());
    let tensors = expected["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), file.header().tensors.len());
    for (name, want) in tensors {
        let (entry, data) = file.tensor(name).unwrap();
        match entry.kind {
            TensorKind::TernaryR16 => {
                let (r, k) = entry.dims2().unwrap();
                let got = layout::unpack_ternary(data, r, k).unwrap();
                let want_v: Vec<i8> = want["ternary"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as i8)
                    .collect();
                assert_eq!(got, want_v, "{name}");
                assert_eq!(
                    entry.scale_bits.unwrap() as u64,
                    want["scale_bits"].as_u64().unwrap(),
                    "{name}"
                );
            }
            TensorKind::F32 => {
                let got: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let want_v: Vec<f32> = want["f32"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got, want_v, "{name}");
            }
            TensorKind::Bf16 => {
                let got: Vec<u64> = data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
                    .collect();
                let want_v: Vec<u64> = want["bf16_bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(got, want_v, "{name}");
            }
            TensorKind::Bytes => assert_eq!(data, want["utf8"].as_str().unwrap().as_bytes()),
            TensorKind::Int8R16 => unreachable!("the minimal files have no int8 tensor"),
        }
    }
    assert_eq!(
        file.tokenizer_json().unwrap(),
        tensors["tokenizer.json"]["utf8"]
            .as_str()
            .unwrap()
            .as_bytes()
    );
}

fn minimal() -> Vec<u8> {
    std::fs::read(golden("minimal.bitnet")).unwrap()
}

#[test]
fn rejects_an_unknown_major_version() {
    let mut b = minimal();
    b[8] = 3;
    let err = BitnetFile::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::UnsupportedVersion {
                major: 3,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 3.0"), "{err}");
}

#[test]
fn refuses_what_changes_the_computation_but_is_unknown() {
    // A feature this build does not implement: named, not ignored.
    let err = BitnetFile::from_bytes(with_header(|h| {
        h["features"] = serde_json::json!(["attn_sub_norm", "rope_scaling_llama3"])
    }))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`rope_scaling_llama3`") && err.contains("does not implement"),
        "{err}"
    );
    // A config field this build does not know.
    let err = BitnetFile::from_bytes(with_header(|h| {
        h["config"]["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `rope_scaling`"), "{err}");
    // A RoPE style this build does not know.
    let err = BitnetFile::from_bytes(with_header(|h| h["config"]["rope_style"] = "gptj".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gptj"), "{err}");
    // A feature listed twice.
    let err = BitnetFile::from_bytes(with_header(|h| {
        h["features"] = serde_json::json!(["ffn_sub_norm", "ffn_sub_norm"])
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("twice"), "{err}");
    // A version 1 file has no feature list.
    let mut v1 = std::fs::read(golden("minimal-v1.bitnet")).unwrap();
    let len = u64::from_le_bytes(v1[16..24].try_into().unwrap()) as usize;
    let mut h: Value = serde_json::from_slice(&v1[64..64 + len]).unwrap();
    h["features"] = serde_json::json!(["ffn_sub_norm"]);
    let nh = serde_json::to_vec(&h).unwrap();
    v1[64..64 + len].fill(b' ');
    v1[64..64 + nh.len()].copy_from_slice(&nh);
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&v1[64..64 + len]);
    v1[32..64].copy_from_slice(&digest);
    let err = BitnetFile::from_bytes(v1).unwrap_err().to_string();
    assert!(err.contains("version 1 file has no feature list"), "{err}");
}

#[test]
fn accepts_a_newer_minor_version() {
    let mut b = minimal();
    b[10] = 7;
    assert_eq!(BitnetFile::from_bytes(b).unwrap().preamble().minor, 7);
}

#[test]
fn rejects_foreign_truncated_and_corrupt_files() {
    let err = BitnetFile::from_bytes(b"GGUF\x03\x00\x00\x00 and more bytes".to_vec()).unwrap_err();
    assert!(matches!(err, FormatError::BadMagic { .. }), "{err}");
    assert!(matches!(
        BitnetFile::from_bytes(Vec::new()).unwrap_err(),
        FormatError::BadMagic { .. }
    ));

    let b = minimal();
    for cut in [10, 63, 64, 200, 8192, b.len() - 1] {
        let err = BitnetFile::from_bytes(b[..cut].to_vec()).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut c = b.clone();
    c[100] ^= 0x20; // a header byte
    assert!(matches!(
        BitnetFile::from_bytes(c).unwrap_err(),
        FormatError::HeaderChecksum { .. }
    ));

    let mut d = b.clone();
    d[24] = 3; // data_offset no longer a multiple of 64
    assert!(matches!(
        BitnetFile::from_bytes(d).unwrap_err(),
        FormatError::InvalidField { .. }
    ));

    // A corrupt tensor byte passes structural validation and is caught by the checksum.
    let mut e = b;
    let off = BitnetFile::from_bytes(e.clone())
        .unwrap()
        .entry("blk.0.attn_q")
        .unwrap()
        .offset as usize;
    e[off] ^= 1;
    let bad = BitnetFile::from_bytes(e).unwrap().verify_checksums(|_| {});
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].name, "blk.0.attn_q");
}

/// Rewrites the header of the minimal file with `edit` applied, fixing up the checksum.
fn with_header(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut b = minimal();
    let len = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    let mut h: Value = serde_json::from_slice(&b[64..64 + len]).unwrap();
    edit(&mut h);
    let nh = serde_json::to_vec(&h).unwrap();
    let data_offset = u64::from_le_bytes(b[24..32].try_into().unwrap()) as usize;
    assert!(64 + nh.len() <= data_offset);
    b[64..data_offset].fill(0);
    b[64..64 + nh.len()].copy_from_slice(&nh);
    b[16..24].copy_from_slice(&(nh.len() as u64).to_le_bytes());
    use sha2::Digest;
    b[32..64].copy_from_slice(&sha2::Sha256::digest(&nh));
    b
}

/// A named edit of a header.
type HeaderEdit = (&'static str, Box<dyn FnOnce(&mut Value)>);

#[test]
fn rejects_directory_entries_that_break_the_rules() {
    let cases: Vec<HeaderEdit> = vec![
        ("length", Box::new(|h| h["tensors"][1]["length"] = 5.into())),
        (
            "multiple of 64",
            Box::new(|h| {
                h["tensors"][1]["offset"] = (h["tensors"][1]["offset"].as_u64().unwrap() + 4).into()
            }),
        ),
        (
            "scale_bits",
            Box::new(|h| {
                h["tensors"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("scale_bits")
                    .map(|_| ())
                    .unwrap()
            }),
        ),
        (
            "overlaps",
            Box::new(|h| h["tensors"][2]["offset"] = h["tensors"][1]["offset"].clone()),
        ),
        (
            "truncated",
            Box::new(|h| h["tensors"][1]["offset"] = 1_000_000.into()),
        ),
        (
            "twice",
            Box::new(|h| h["tensors"][2]["name"] = h["tensors"][1]["name"].clone()),
        ),
        (
            "sha256",
            Box::new(|h| h["tensors"][0]["sha256"] = "xyz".into()),
        ),
        (
            "unknown variant",
            Box::new(|h| h["tensors"][0]["kind"] = "q4_k".into()),
        ),
        (
            "tokenizer_json",
            Box::new(|h| h["tokenizer"]["tokenizer_json"] = "nope".into()),
        ),
    ];
    for (needle, edit) in cases {
        let err = BitnetFile::from_bytes(with_header(edit))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}
