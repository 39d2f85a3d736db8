//! `bitnet verify` on every fixture, on altered and corrupted files, and on mismatched inputs.

use std::path::{Path, PathBuf};

use bitnet_format::{BitnetFile, FileWriter, Header, TensorSpec};
use serde_json::Value;

use crate::util::*;

fn logits_of(name: &str) -> PathBuf {
    repo_root()
        .join("fixtures")
        .join(format!("{name}.logits.safetensors"))
}

fn verify_json(args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, stderr(&o))
}

/// The prompt of the FP32-reference comparison (`verify`'s built-in prompts) on which a fixture has a
/// known int8 rounding flip: an activation within 1e-4 of a rounding boundary, which the packed path and
/// the reference, summing in different orders, round apart (fixtures/README.md, parity.md).
fn known_flip(name: &str) -> Option<u64> {
    // x*a = 91.499962 in the reference, 91.500008 packed, at layer 0's attn_output input.
    (name == "bitnet-1bitllm-tiny").then_some(2)
}

#[test]
fn every_fixture_passes_against_transformers_and_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let file = convert(&fixture(name), tmp.path(), &[]);
        let (code, v, err) = verify_json(&[
            file.to_str().unwrap(),
            "--expected-logits",
            logits_of(name).to_str().unwrap(),
            "--reference",
            fixture(name).to_str().unwrap(),
            "--trace",
        ]);
        assert_eq!(code, Some(0), "{name}: {err}\n{v:#}");
        assert_eq!(v["pass"], true);
        let comps = v["comparisons"].as_array().unwrap();
        assert_eq!(comps.len(), 2, "expected logits and reference, exact head");
        assert_eq!(v["layers"]["pass"], true, "{name}: {}", v["layers"]);
        assert!(v["layers"]["head"]["max_abs_delta"].as_f64().unwrap() < 1e-4);
        for (i, c) in comps.iter().enumerate() {
            let t = &c["total"];
            assert_eq!(c["head"], "exact");
            assert_eq!(t["top1_agree"], t["positions"], "{name}");
            let flip = if i == 1 { known_flip(name) } else { None };
            for (p, pr) in c["prompts"].as_array().unwrap().iter().enumerate() {
                if Some(p as u64) == flip {
                    continue;
                }
                assert_eq!(pr["tight_positions"], pr["positions"], "{name} prompt {p}");
                assert!(pr["max_abs_delta"].as_f64().unwrap() < 1e-4, "{name}: {pr}");
            }
            match flip {
                None => assert_eq!(t["tight_positions"], t["positions"], "{name}"),
                Some(p) => {
                    // The trace finds the parting on that prompt and explains it as a flip.
                    assert_eq!(v["trace"]["prompt"], p, "{name}: {}", v["trace"]);
                    assert_eq!(v["trace"]["rounding_flip"], true, "{name}: {}", v["trace"]);
                }
            }
        }
        if known_flip(name).is_none() {
            // No op parts anywhere.
            assert_eq!(v["trace"]["op"], Value::Null, "{name}: {}", v["trace"]);
        }
    }
}

#[test]
fn an_int8_head_is_named_and_reported_separately() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(
        &fixture("bitnet-tiny-tied"),
        tmp.path(),
        &["--lm-head", "int8"],
    );
    let (code, v, err) = verify_json(&[
        file.to_str().unwrap(),
        "--expected-logits",
        logits_of("bitnet-tiny-tied").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("holds an int8 LM head"), "{err}");
    let comps = v["comparisons"].as_array().unwrap();
    let heads: Vec<&str> = comps.iter().map(|c| c["head"].as_str().unwrap()).collect();
    assert_eq!(heads, ["exact", "int8"]);
    assert_eq!(comps[1]["judged"], false);
    assert!(
        comps[1]["total"]["max_abs_delta"].as_f64().unwrap()
            > comps[0]["total"]["max_abs_delta"].as_f64().unwrap()
    );
}

/// Copies a .bitnet file through the writer, with `edit` applied to the header and `alter` to each tensor.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Header),
    mut alter: impl FnMut(&str, &mut Vec<u8>),
) {
    let file = BitnetFile::open(src).unwrap();
    let mut header = file.header().clone();
    let specs: Vec<TensorSpec> = header
        .tensors
        .iter()
        .map(|e| TensorSpec {
            name: e.name.clone(),
            kind: e.kind,
            shape: e.shape.clone(),
            source: e.source.clone(),
        })
        .collect();
    let entries = header.tensors.clone();
    edit(&mut header);
    let mut w = FileWriter::create(dst, header, specs).unwrap();
    for e in &entries {
        let mut data = file.data(e).to_vec();
        alter(&e.name, &mut data);
        w.write_tensor(&e.name, &data, e.scale()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn altered_weights_fail_and_trace_names_the_op() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "bitnet-tiny-untied-sharded";
    let good = convert(&fixture(name), tmp.path(), &[]);
    let bad = tmp.path().join("altered.bitnet");
    // Negate every weight of one projection (code c -> 2 - c), with consistent checksums: a converter bug.
    rewrite(
        &good,
        &bad,
        |_| {},
        |n, data| {
            if n == "blk.1.ffn_down" {
                for b in data.iter_mut() {
                    let mut out = 0u8;
                    for q in 0..4 {
                        out |= (2 - ((*b >> (2 * q)) & 3)) << (2 * q);
                    }
                    *b = out;
                }
            }
        },
    );
    let o = run(&[
        "verify",
        bad.to_str().unwrap(),
        "--expected-logits",
        logits_of(name).to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("FAIL: min cosine"), "{out}");
    let o = run(&[
        "verify",
        bad.to_str().unwrap(),
        "--reference",
        fixture(name).to_str().unwrap(),
        "--trace",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("first parting at layer 1, op ffn_down")
            && out.contains("look here for a bug"),
        "{out}"
    );
    let (code, v, _) = verify_json(&[
        bad.to_str().unwrap(),
        "--reference",
        fixture(name).to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(v["layers"]["pass"], false);
    let failures = v["layers"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("layer 1 output")),
        "{failures:?}"
    );
    assert!(
        !failures
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("layer 0 output")),
        "{failures:?}"
    );
}

#[test]
fn a_corrupted_byte_fails_on_its_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let info = inspect_json(&file);
    let q = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q")
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[q["offset"].as_u64().unwrap() as usize] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    let o = run(&[
        "verify",
        file.to_str().unwrap(),
        "--expected-logits",
        logits_of("bitnet-tiny-tied").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("checksum mismatch in blk.0.attn_q"),
        "{}",
        stderr(&o)
    );
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

#[test]
fn mismatched_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let tied = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let t = tied.to_str().unwrap();
    // Another model's reference: same shapes of vocabulary, other weights.
    fails_with(
        &[
            "verify",
            t,
            "--reference",
            fixture("bitnet-tiny-untied-sharded").to_str().unwrap(),
        ],
        &["different model"],
    );
    // Logits of a model with another vocabulary.
    fails_with(
        &[
            "verify",
            t,
            "--expected-logits",
            logits_of("bitnet-llama3-tiny").to_str().unwrap(),
        ],
        &["vocabulary of 128256", "512"],
    );
    fails_with(
        &[
            "verify",
            t,
            "--expected-logits",
            fixture("bitnet-tiny-tied")
                .join("config.json")
                .to_str()
                .unwrap(),
        ],
        &["not a valid safetensors file"],
    );
    fails_with(&["verify", t], &["nothing to compare against"]);
    fails_with(
        &[
            "verify",
            t,
            "--expected-logits",
            logits_of("bitnet-tiny-tied").to_str().unwrap(),
            "--trace",
        ],
        &["--trace", "--reference"],
    );

    // A config that does not match the tensors.
    let bad = tmp.path().join("bad-config.bitnet");
    rewrite(&tied, &bad, |h| h.config.num_layers = 3, |_, _| {});
    fails_with(
        &[
            "verify",
            bad.to_str().unwrap(),
            "--expected-logits",
            logits_of("bitnet-tiny-tied").to_str().unwrap(),
        ],
        &["blk.2.attn_norm", "missing"],
    );
    let bad = tmp.path().join("bad-shape.bitnet");
    rewrite(&tied, &bad, |h| h.config.intermediate_size = 336, |_, _| {});
    fails_with(
        &[
            "verify",
            bad.to_str().unwrap(),
            "--expected-logits",
            logits_of("bitnet-tiny-tied").to_str().unwrap(),
        ],
        &[
            "blk.0.ffn_gate",
            "expected ternary_r16 [336, 128]",
            "[344, 128]",
        ],
    );
}
