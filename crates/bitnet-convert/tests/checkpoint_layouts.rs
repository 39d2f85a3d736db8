//! The checkpoint layouts people download, converted: pre-packed weights carried over value for value
//! with the scale their class uses, and every way such a checkpoint can be wrong refused with a message
//! that names the file, tensor or field, leaving no output behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bitnet_convert::checkpoint::Checkpoint;
use bitnet_convert::{ConvertOptions, HubEnv, ScaleOp, TernaryStorage};
use bitnet_format::{BitnetFile, Features, layout};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// transformers' `unpack_weights`, from its definition: packed byte `(p, c)` holds rows `p + j * R/4` in
/// bits `2j..2j+1` as `w + 1`.
fn unpack_like_transformers(packed: &[u8], rows: usize, cols: usize) -> Vec<i8> {
    let mut w = vec![0i8; rows * cols];
    for p in 0..rows / 4 {
        for c in 0..cols {
            for j in 0..4 {
                w[(p + j * rows / 4) * cols + c] =
                    ((packed[p * cols + c] >> (2 * j)) & 3) as i8 - 1;
            }
        }
    }
    w
}

fn bf16_or_f32(bytes: &[u8], dtype: Dtype) -> f32 {
    match dtype {
        Dtype::BF16 => f32::from_bits((u16::from_le_bytes([bytes[0], bytes[1]]) as u32) << 16),
        Dtype::F32 => f32::from_le_bytes(bytes[..4].try_into().unwrap()),
        other => panic!("unexpected scale dtype {other:?}"),
    }
}

fn convert(input: &Path, out: &Path) -> bitnet_convert::Result<bitnet_convert::ConvertReport> {
    bitnet_convert::convert(
        input.to_str().unwrap(),
        out,
        &ConvertOptions::default(),
        &HubEnv::default(),
        &|_| {},
        &mut |_| {},
    )
}

#[test]
fn prepacked_weights_are_carried_over_exactly_with_the_scale_their_class_uses() {
    for (name, op, features) in [
        ("bitnet-2b4t-packed", ScaleOp::Multiply, Features::V1),
        ("falcon3-tiny", ScaleOp::Divide, Features::default()),
        ("hf1bitllm-tiny", ScaleOp::Divide, Features::default()),
    ] {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        assert_eq!(ck.ternary, TernaryStorage::Packed(op), "{name}");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.bitnet");
        convert(&fixture(name), &out).unwrap();
        let file = BitnetFile::open(&out).unwrap();
        assert_eq!(file.features(), features, "{name}");
        assert_eq!(file.header().source.dtype, "U8", "{name}");
        let src = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&src).unwrap();
        let mut checked = 0;
        for layer in 0..ck.config.num_layers {
            for (hf, canonical) in PROJECTIONS {
                let w = st
                    .tensor(&format!("model.layers.{layer}.{hf}.weight"))
                    .unwrap();
                let s = st
                    .tensor(&format!("model.layers.{layer}.{hf}.weight_scale"))
                    .unwrap();
                let (rows, cols) = (w.shape()[0] * 4, w.shape()[1]);
                let (entry, data) = file.tensor(&format!("blk.{layer}.{canonical}")).unwrap();
                assert_eq!(entry.dims2(), Some((rows, cols)));
                assert_eq!(
                    layout::unpack_ternary(data, rows, cols).unwrap(),
                    unpack_like_transformers(w.data(), rows, cols),
                    "{name} {hf}"
                );
                let ws = bf16_or_f32(s.data(), s.dtype());
                let want = match op {
                    ScaleOp::Multiply => ws,
                    ScaleOp::Divide => 1.0 / ws,
                };
                assert_eq!(
                    entry.scale().unwrap().to_bits(),
                    want.to_bits(),
                    "{name} {hf}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 7 * ck.config.num_layers);
    }
}

#[test]
fn the_last_of_a_duplicated_quantization_config_wins_as_in_python() {
    // hf1bitllm-tiny writes it twice, as the real config does: `{modules_to_not_convert: null, ...}`, then
    // `{quant_method: bitnet}`.
    let text = std::fs::read_to_string(fixture("hf1bitllm-tiny/config.json")).unwrap();
    assert_eq!(text.matches("\"quantization_config\"").count(), 2);
    let ck = Checkpoint::open(&fixture("hf1bitllm-tiny")).unwrap();
    assert_eq!(ck.ternary, TernaryStorage::Packed(ScaleOp::Divide));
    // The same file with a last entry that says AutoBitLinear offline multiplies.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_dir(&fixture("bitnet-2b4t-packed"), tmp.path());
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let patched = cfg.replacen(
        "{",
        "{\"quantization_config\": {\"quant_method\": \"bitnet\"},",
        1,
    );
    std::fs::write(dir.join("config.json"), patched).unwrap();
    assert_eq!(
        Checkpoint::open(&dir).unwrap().ternary,
        TernaryStorage::Packed(ScaleOp::Multiply)
    );
}

/// Copies a fixture folder (following the tokenizer symlinks) into `to`.
fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    let dst = to.join(from.file_name().unwrap());
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites `dir/model.safetensors` through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
    std::fs::write(&path, out).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A named way to break a checkpoint, and the words its error must contain.
type Breakage = (&'static str, Box<dyn Fn(&Path)>, &'static [&'static str]);

#[test]
fn broken_packed_checkpoints_are_refused_by_name_and_leave_nothing_behind() {
    const Q: &str = "model.layers.1.self_attn.q_proj.weight";
    let cases: Vec<Breakage> = vec![
        (
            "a missing weight_scale",
            Box::new(|d| edit_weights(d, |t| t.retain(|x| x.0 != format!("{Q}_scale")))),
            &["model.layers.1.self_attn.q_proj.weight_scale", "missing"],
        ),
        (
            "a weight_scale of the wrong shape",
            Box::new(|d| {
                edit_weights(d, |t| {
                    let s = t.iter_mut().find(|x| x.0 == format!("{Q}_scale")).unwrap();
                    s.2 = vec![2];
                    s.3 = [s.3.clone(), s.3.clone()].concat();
                })
            }),
            &["weight_scale", "expected one"],
        ),
        (
            "a zero weight_scale",
            Box::new(|d| {
                edit_weights(d, |t| {
                    let s = t.iter_mut().find(|x| x.0 == format!("{Q}_scale")).unwrap();
                    s.3.fill(0);
                })
            }),
            &["weight_scale", "finite positive"],
        ),
        (
            "code 3 in a packed byte",
            Box::new(|d| {
                edit_weights(d, |t| {
                    let w = t.iter_mut().find(|x| x.0 == Q).unwrap();
                    w.3[5] |= 0b0011_0000;
                })
            }),
            &[Q, "code 3", "+2"],
        ),
        (
            "output rows that packing cannot hold",
            Box::new(|d| edit_config(d, |c| c["intermediate_size"] = 202.into())),
            &["mlp.gate_proj.weight", "202", "multiple of 4"],
        ),
        (
            "a config whose dimensions contradict the tensors",
            Box::new(|d| edit_config(d, |c| c["hidden_size"] = 112.into())),
            &["model.layers.0", "config.json implies"],
        ),
        (
            "latent weights announced, packed ones found",
            Box::new(|d| {
                edit_config(d, |c| {
                    c["quantization_config"] = serde_json::json!({
                        "quant_method": "bitnet", "linear_class": "autobitlinear",
                        "quantization_mode": "online"})
                })
            }),
            &["uint8", "latent float weights"],
        ),
        (
            "a Llama without quantization_config",
            Box::new(|d| edit_config(d, |c| drop(c.remove("quantization_config")))),
            &["quantization_config", "ordinary float model"],
        ),
        (
            "another quantization method",
            Box::new(|d| {
                edit_config(d, |c| {
                    c["quantization_config"] = serde_json::json!({"quant_method": "gptq"})
                })
            }),
            &["quantization_config.quant_method", "gptq"],
        ),
        (
            "an RMSNorm inside every BitLinear",
            Box::new(|d| {
                edit_config(d, |c| {
                    c["quantization_config"]["use_rms_norm"] = true.into();
                })
            }),
            &["quantization_config.use_rms_norm"],
        ),
        (
            "a projection kept in float",
            Box::new(|d| {
                edit_config(d, |c| {
                    c["quantization_config"]["modules_to_not_convert"] =
                        serde_json::json!(["lm_head", "model.layers.0.mlp.down_proj"]);
                })
            }),
            &["modules_to_not_convert", "down_proj"],
        ),
        (
            "interleaved RoPE",
            Box::new(|d| {
                edit_config(d, |c| {
                    drop(c.insert("rope_interleaved".into(), true.into()))
                })
            }),
            &["rope_interleaved"],
        ),
    ];
    for (what, breakage, words) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_dir(&fixture("falcon3-tiny"), tmp.path());
        breakage(&dir);
        let out_dir = tmp.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let err = convert(&dir, &out_dir.join("m.bitnet"))
            .expect_err(what)
            .to_string();
        for w in words {
            assert!(err.contains(w), "{what}: `{w}` not in: {err}");
        }
        assert_eq!(
            std::fs::read_dir(&out_dir).unwrap().count(),
            0,
            "{what}: output left behind"
        );
    }
}
