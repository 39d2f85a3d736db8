//! `.bitnet` files as GGUF for llama.cpp: every projection in TQ2_0 or TQ1_0, the rest as stored.
//!
//! The architecture follows the computation the file records (SPEC.md 3.2, 7):
//!
//! | `.bitnet` | GGUF `general.architecture` | who runs it |
//! |---|---|---|
//! | SiLU, no sub-norms (Falcon3, Falcon-E, Llama3-8B-1.58) | `llama`, q/k rows permuted for NORM RoPE as llama.cpp's converter does | upstream llama.cpp |
//! | SiLU, both sub-norms, tied (1bitLLM) | `bitnet` | upstream llama.cpp |
//! | relu², both sub-norms, tied (2B4T) | `bitnet-b1.58` | bitnet.cpp's fork; upstream llama.cpp's `bitnet` graph hard-codes SiLU, so it is not offered a file it would run wrongly |
//!
//! Anything else (an untied head with sub-norms, relu² without them, query width != hidden with sub-norms)
//! has no llama.cpp graph and is refused. TQ blocks hold 256 weights of one row, so a projection whose
//! rows are not a multiple of 256 long is written as F32 `{-s, 0, +s}` (exact), as llama.cpp's converter
//! falls back to a float type. Each TQ block's scale is `f16(s)`: the ternary values are carried exactly,
//! the scale rounded to f16 (relative error at most 2^-11).

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bitnet_format::{Activation, BitnetFile, Feature, TensorKind, layout};
use bitnet_gguf::{GgmlType, GgufWriter, TensorDesc, Value, ValueType, codec};
use half::f16;
use serde_json::Value as Json;

use super::vocab::LLAMA3_REGEX;
use crate::error::{ConvertError, Result};

/// The ternary type of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// 2.0625 bits per weight.
    Tq2_0,
    /// 1.6875 bits per weight.
    Tq1_0,
}

impl ExportType {
    fn ggml(self) -> GgmlType {
        match self {
            ExportType::Tq2_0 => GgmlType::Tq2_0,
            ExportType::Tq1_0 => GgmlType::Tq1_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_TQ1_0` = 36, `_TQ2_0` = 37).
    fn file_type(self) -> u32 {
        match self {
            ExportType::Tq2_0 => 37,
            ExportType::Tq1_0 => 36,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The GGUF file.
    pub output: PathBuf,
    /// Its length.
    pub file_bytes: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// Projections written as TQ blocks.
    pub ternary_tensors: usize,
    /// Projections written as F32 because their rows are not a multiple of 256 long.
    pub f32_fallback: Vec<String>,
    /// Things a user should know.
    pub notes: Vec<String>,
}

fn refuse(path: &Path, what: &str, reason: String) -> ConvertError {
    ConvertError::field(path, what, reason)
}

/// Writes the `.bitnet` file `input` as the GGUF file `output` (atomically: a temporary file beside it,
/// renamed at the end, removed on error).
pub fn export(input: &Path, output: &Path, ty: ExportType) -> Result<ExportReport> {
    let file = BitnetFile::open(input)?;
    let h = file.header();
    let c = &h.config;
    let feats = file.features();
    let subnorms = (
        feats.has(Feature::AttnSubNorm),
        feats.has(Feature::FfnSubNorm),
    );
    let arch = match (subnorms, c.hidden_act) {
        ((false, false), Activation::Silu) => "llama",
        ((true, true), act) => {
            if !c.tie_word_embeddings {
                return Err(refuse(input, "config.tie_word_embeddings", "false: llama.cpp's bitnet graphs use the embedding as the LM head, and this model has its own".into()));
            }
            if c.num_heads * c.head_dim != c.hidden_size {
                return Err(refuse(
                    input,
                    "config.head_dim",
                    format!(
                        "{} heads of {} != hidden {}: llama.cpp's bitnet graphs take square q and output projections",
                        c.num_heads, c.head_dim, c.hidden_size
                    ),
                ));
            }
            if act == Activation::Relu2 {
                "bitnet-b1.58"
            } else {
                "bitnet"
            }
        }
        _ => {
            return Err(refuse(
                input,
                "features",
                format!(
                    "{:?} with {}: no llama.cpp architecture computes this model",
                    feats.names(),
                    c.hidden_act.as_str()
                ),
            ));
        }
    };
    let mut notes = Vec::new();
    if arch == "bitnet-b1.58" {
        notes.push("relu² with sub-norms is bitnet.cpp's `bitnet-b1.58` architecture; upstream llama.cpp has no graph for it (its `bitnet` graph computes SiLU) and refuses the file".into());
    }
    let tok = file.tokenizer_json().ok_or_else(|| {
        refuse(
            input,
            "tokenizer.tokenizer_json",
            "the file carries no tokenizer.json".into(),
        )
    })?;
    let mut kv = vocab_metadata(input, tok, c.vocab_size)?;
    let a = |k: &str| format!("{arch}.{k}");
    let name = input
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (a("vocab_size"), Value::U32(c.vocab_size as u32)),
        (
            a("context_length"),
            Value::U32(c.max_position_embeddings as u32),
        ),
        (a("embedding_length"), Value::U32(c.hidden_size as u32)),
        (a("block_count"), Value::U32(c.num_layers as u32)),
        (
            a("feed_forward_length"),
            Value::U32(c.intermediate_size as u32),
        ),
        (a("attention.head_count"), Value::U32(c.num_heads as u32)),
        (
            a("attention.head_count_kv"),
            Value::U32(c.num_kv_heads as u32),
        ),
        (
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (a("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (a("rope.dimension_count"), Value::U32(c.head_dim as u32)),
    ];
    if c.num_heads * c.head_dim != c.hidden_size {
        meta.push((a("attention.key_length"), Value::U32(c.head_dim as u32)));
        meta.push((a("attention.value_length"), Value::U32(c.head_dim as u32)));
    }
    let t = &h.tokenizer;
    if let Some(b) = t.bos_token_id {
        kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = t.eos_token_ids.first() {
        kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(&e) = t.eos_token_ids.get(1) {
        kv.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(e)));
    }
    if let Some(p) = t.pad_token_id {
        kv.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(t.add_bos_token),
    ));
    if let Some(tpl) = &t.chat_template {
        kv.push(("tokenizer.chat_template".into(), Value::String(tpl.clone())));
    }
    meta.extend(kv);

    // The tensors: every one but the tokenizer blob and an int8 head copy of a tied model.
    let mut descs = Vec::new();
    let mut f32_fallback = Vec::new();
    let mut ternary_tensors = 0;
    let mut entries = Vec::new();
    for e in &h.tensors {
        let gtype = match e.kind {
            TensorKind::Bytes => continue,
            TensorKind::Int8R16 if c.tie_word_embeddings => continue,
            TensorKind::Int8R16 => {
                return Err(refuse(input, "tensors.output", "the LM head is only stored as the int8 copy; export a file converted with the exact head (--lm-head bf16)".into()));
            }
            TensorKind::TernaryR16 => {
                let cols = e.shape[1];
                if cols % codec::QK_K as u64 == 0 {
                    ternary_tensors += 1;
                    ty.ggml()
                } else {
                    f32_fallback.push(e.name.clone());
                    GgmlType::F32
                }
            }
            TensorKind::Bf16 => GgmlType::Bf16,
            TensorKind::F32 => GgmlType::F32,
        };
        descs.push(TensorDesc {
            name: format!("{}.weight", e.name),
            dims: e.shape.iter().rev().copied().collect(),
            ggml_type: gtype,
        });
        entries.push((e.clone(), gtype));
    }
    if !f32_fallback.is_empty() {
        notes.push(format!(
            "{} projection(s) have rows that are not a multiple of 256 long, which TQ blocks need; written as F32 (exact): {}",
            f32_fallback.len(),
            f32_fallback.join(", ")
        ));
    }
    let tmp = temp_path(output);
    let result = (|| -> Result<u64> {
        let out = std::fs::File::create(&tmp).map_err(|e| ConvertError::io(&tmp, e))?;
        let io = |e| ConvertError::io(&tmp, e);
        let mut w = GgufWriter::new(BufWriter::new(out), &meta, descs).map_err(io)?;
        for (e, gtype) in &entries {
            let data = file.data(e);
            let bytes = match e.kind {
                TensorKind::TernaryR16 => {
                    let (rows, cols) = (e.shape[0] as usize, e.shape[1] as usize);
                    let mut values = layout::unpack_ternary(data, rows, cols)
                        .ok_or_else(|| refuse(input, &e.name, "holds code 3".into()))?;
                    let heads = match (arch, e.name.rsplit('.').next()) {
                        ("llama", Some("attn_q")) => Some(c.num_heads),
                        ("llama", Some("attn_k")) => Some(c.num_kv_heads),
                        _ => None,
                    };
                    if let Some(heads) = heads {
                        values = super::permute_rows(&values, rows, cols, heads);
                    }
                    let s = e.scale().unwrap_or(1.0);
                    match gtype {
                        GgmlType::F32 => values
                            .iter()
                            .flat_map(|&w| (f32::from(w) * s).to_le_bytes())
                            .collect(),
                        _ => {
                            let d = f16::from_f32(s);
                            if !(d.to_f32().is_finite() && d.to_f32() > 0.0) {
                                return Err(refuse(
                                    input,
                                    &e.name,
                                    format!(
                                        "scale {s} has no positive finite f16 value, which TQ blocks need"
                                    ),
                                ));
                            }
                            if *gtype == GgmlType::Tq2_0 {
                                codec::encode_tq2_0(&values, d)
                            } else {
                                codec::encode_tq1_0(&values, d)
                            }
                        }
                    }
                }
                _ => data.to_vec(),
            };
            w.write_tensor(&format!("{}.weight", e.name), &bytes)
                .map_err(io)?;
        }
        w.finish().map_err(io)?;
        std::fs::rename(&tmp, output).map_err(|e| ConvertError::io(output, e))?;
        Ok(std::fs::metadata(output)
            .map_err(|e| ConvertError::io(output, e))?
            .len())
    })();
    let file_bytes = result.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(ExportReport {
        output: output.to_path_buf(),
        file_bytes,
        architecture: arch.into(),
        ternary_tensors,
        f32_fallback,
        notes,
    })
}

/// The temporary file an export writes before renaming it to `output`.
pub fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or("out.gguf".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// `tokenizer.ggml.*` for a byte-level BPE `tokenizer.json` (LLaMA 3's split, or GPT-2's byte-level regex).
fn vocab_metadata(path: &Path, json: &[u8], vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let bad = |reason: String| refuse(path, "tokenizer.json", reason);
    let t: Json = serde_json::from_slice(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "model type {}: export writes byte-level BPE vocabularies only",
            model["type"]
        )));
    }
    let pre = &t["pre_tokenizer"];
    let is_byte_level = |p: &Json| p["type"] == "ByteLevel";
    let pre_name = if pre["type"] == "Sequence"
        && pre["pretokenizers"].as_array().is_some_and(|s| {
            s.len() == 2
                && s[0]["type"] == "Split"
                && s[0]["pattern"]["Regex"] == LLAMA3_REGEX
                && is_byte_level(&s[1])
        }) {
        "llama-bpe"
    } else if is_byte_level(pre) && pre["use_regex"] == true {
        "gpt2"
    } else {
        return Err(bad("its pre-tokenizer is neither LLaMA 3's split nor GPT-2's byte-level one, the two llama.cpp names this export writes".into()));
    };
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, s: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(format!(
                "token id {id} is past the vocabulary size {vocab_size}"
            ))
        })?;
        *slot = Some((s.to_string(), ty));
        Ok(())
    };
    for (s, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?
    {
        put(
            id.as_u64()
                .ok_or_else(|| bad(format!("token {s:?} has no integer id")))?,
            s,
            1,
        )?;
    }
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(s)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad("an added token lacks an id or content".into()));
        };
        put(id, s, if a["special"] == true { 3 } else { 4 })?;
    }
    let (strings, types): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| match t {
            Some((s, ty)) => (Value::String(s), Value::I32(ty)),
            // As llama.cpp's converter pads a vocabulary shorter than the embedding.
            None => (Value::String(format!("[PAD{id}]")), Value::I32(5)),
        })
        .unzip();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not an array".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            _ => Err(bad(format!(
                "merge {m} is neither \"a b\" nor [\"a\", \"b\"]"
            ))),
        })
        .map(|r| r.map(Value::String))
        .collect::<Result<_>>()?;
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre_name.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(ValueType::String, strings),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(ValueType::String, merges),
        ),
    ])
}
