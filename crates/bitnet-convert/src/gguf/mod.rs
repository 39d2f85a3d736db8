//! GGUF files as a conversion source beside the Hugging Face folder, and `.bitnet` files exported as GGUF.
//!
//! Import ([`convert_gguf`]), in the order data flows:
//! 1. [`bitnet_gguf::GgufFile::open`] parses the container with every length checked.
//! 2. [`Family::of`] reads `general.architecture`: `llama` (Falcon3, Falcon-E, Llama3-8B-1.58: SiLU, no
//!    sub-norms, q/k rows permuted by llama.cpp's converter for its interleaved "NORM" RoPE), `bitnet`
//!    (1bitLLM: SiLU, sub-norms, NEOX RoPE, tied) and `bitnet-b1.58` / `bitnet-25` (bitnet.cpp's 2B4T files:
//!    relu², sub-norms, NEOX, tied). The config comes from the `<arch>.*` keys.
//! 3. Each projection is decoded to ternary values and one scale: TQ1_0 / TQ2_0 blocks (every block with a
//!    non-zero weight must share its f16 scale, [`bitnet_gguf::codec::tensor_scale`]), I2_S (one f32
//!    scale), or F32 / F16 / BF16 holding `{-s, 0, +s}` (llama.cpp's fallback for rows that are not a
//!    multiple of 256). `llama` q/k rows are put back in Hugging Face order, so RoPE is rotate-half (NEOX)
//!    as SPEC.md computes it. The values are packed into `ternary_r16` unchanged; the scale is stored
//!    exactly (an f16 scale is an f32 exactly).
//! 4. The tokenizer is rebuilt from `tokenizer.ggml.*` ([`vocab`]), the chat template taken from
//!    `tokenizer.chat_template`.
//!
//! Export ([`export`]) goes the other way, for llama.cpp.

pub mod export;
pub mod vocab;

pub use bitnet_gguf::is_gguf;

use std::path::Path;

use bitnet_format::{Activation, RopeStyle};
use bitnet_format::{
    Features, FileWriter, GenerationDefaults, Header, ModelConfig, SourceInfo, TensorKind,
    TensorSpec, layout,
};
use bitnet_gguf::{GgmlType, GgufFile, TensorInfo, Value, codec};
use rayon::prelude::*;

use crate::architecture::Role;
use crate::convert::{ConvertOptions, ConvertReport, LmHead, Progress};
use crate::error::{ConvertError, Result};
use crate::quantize;

/// The model families a GGUF file can hold, by `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`: SiLU, no sub-norms, q/k permuted for NORM RoPE, head tied only if `output` is absent.
    Llama,
    /// `bitnet` (1bitLLM, upstream llama.cpp): SiLU, sub-norms, NEOX RoPE, tied head.
    Bitnet,
    /// `bitnet-b1.58` and `bitnet-25` (bitnet.cpp's 2B4T files): relu², sub-norms, NEOX RoPE, tied head.
    BitnetB158,
}

/// The architecture names this build reads.
pub const SUPPORTED: &str = "llama, bitnet, bitnet-b1.58, bitnet-25";

impl Family {
    /// The family of an architecture name.
    pub fn of(name: &str) -> Option<Family> {
        match name {
            "llama" => Some(Family::Llama),
            "bitnet" => Some(Family::Bitnet),
            "bitnet-b1.58" | "bitnet-25" => Some(Family::BitnetB158),
            _ => None,
        }
    }
}

fn gguf_err(path: &Path) -> impl Fn(bitnet_gguf::GgufError) -> ConvertError + '_ {
    move |source| ConvertError::Gguf {
        path: path.to_path_buf(),
        source,
    }
}

/// A tensor of the plan: canonical name, GGUF tensor, role, logical `[rows, cols]` or `[n]`.
struct Planned {
    name: String,
    info: TensorInfo,
    role: Role,
    shape: Vec<usize>,
    /// Heads whose q/k rows llama.cpp's converter permuted (`llama` only).
    unpermute: Option<usize>,
}

/// An opened GGUF model: its config, tokenizer and conversion plan.
pub struct GgufModel {
    file: GgufFile,
    /// `general.architecture`.
    pub arch_name: String,
    /// The family.
    pub family: Family,
    /// Dimensions.
    pub config: ModelConfig,
    /// Sub-norms or none.
    pub features: Features,
    vocab: vocab::Vocab,
    plan: Vec<Planned>,
    /// Problems that do not stop the conversion.
    pub warnings: Vec<String>,
    /// What the conversion did beyond copying.
    pub notes: Vec<String>,
}

fn key_u64(file: &GgufFile, path: &Path, key: &str) -> Result<Option<u64>> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ConvertError::field(path, key, format!("{v:?}: expected a non-negative integer"))
        }),
    }
}

fn key_f64(file: &GgufFile, path: &Path, key: &str) -> Result<Option<f64>> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ConvertError::field(path, key, format!("{v:?}: expected a number"))),
    }
}

fn required<T>(v: Option<T>, path: &Path, key: &str) -> Result<T> {
    v.ok_or_else(|| ConvertError::field(path, key, "missing"))
}

impl GgufModel {
    /// Opens and checks the GGUF file at `path`: every key and tensor the conversion needs, nothing else.
    pub fn open(path: &Path) -> Result<GgufModel> {
        let file = GgufFile::open(path).map_err(gguf_err(path))?;
        let arch_name = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConvertError::field(path, "general.architecture", "missing or not a string")
            })?
            .to_string();
        let family = Family::of(&arch_name).ok_or_else(|| {
            ConvertError::field(
                path,
                "general.architecture",
                format!("`{arch_name}` is not supported; supported: {SUPPORTED}"),
            )
        })?;
        let a = |k: &str| format!("{arch_name}.{k}");
        let hidden = required(
            key_u64(&file, path, &a("embedding_length"))?,
            path,
            &a("embedding_length"),
        )?;
        let layers = required(
            key_u64(&file, path, &a("block_count"))?,
            path,
            &a("block_count"),
        )?;
        let ffn = required(
            key_u64(&file, path, &a("feed_forward_length"))?,
            path,
            &a("feed_forward_length"),
        )?;
        let heads = required(
            key_u64(&file, path, &a("attention.head_count"))?,
            path,
            &a("attention.head_count"),
        )?;
        let kv = key_u64(&file, path, &a("attention.head_count_kv"))?.unwrap_or(heads);
        let ctx = required(
            key_u64(&file, path, &a("context_length"))?,
            path,
            &a("context_length"),
        )?;
        let eps = required(
            key_f64(&file, path, &a("attention.layer_norm_rms_epsilon"))?,
            path,
            &a("attention.layer_norm_rms_epsilon"),
        )?;
        let theta = key_f64(&file, path, &a("rope.freq_base"))?.unwrap_or(10000.0);
        if heads == 0 || kv == 0 || heads % kv != 0 || hidden == 0 || layers == 0 || ffn == 0 {
            return Err(ConvertError::field(
                path,
                &a("attention.head_count"),
                format!(
                    "{heads} heads, {kv} kv heads, hidden {hidden}, {layers} layers, FFN {ffn}: not a decoder"
                ),
            ));
        }
        let head_dim = match key_u64(&file, path, &a("attention.key_length"))? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(ConvertError::field(
                    path,
                    &a("attention.key_length"),
                    format!("missing, and hidden {hidden} is not a multiple of {heads} heads"),
                ));
            }
        };
        if let Some(v) = key_u64(&file, path, &a("attention.value_length"))?
            && v != head_dim
        {
            return Err(ConvertError::field(
                path,
                &a("attention.value_length"),
                format!(
                    "{v} differs from the key length {head_dim}, which SPEC.md's attention does not do"
                ),
            ));
        }
        if let Some(r) = key_u64(&file, path, &a("rope.dimension_count"))?
            && r != head_dim
        {
            return Err(ConvertError::field(
                path,
                &a("rope.dimension_count"),
                format!("RoPE over {r} of {head_dim} dimensions (partial rotary) is not supported"),
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ConvertError::field(
                path,
                &a("attention.key_length"),
                format!("{head_dim}: not an even head width"),
            ));
        }
        match file.get(&a("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => {}
            Some("linear")
                if key_f64(&file, path, &a("rope.scaling.factor"))?.unwrap_or(1.0) == 1.0 => {}
            Some(other) => {
                return Err(ConvertError::field(
                    path,
                    &a("rope.scaling.type"),
                    format!("`{other}` RoPE scaling is not supported"),
                ));
            }
        }
        let hidden_act = match (
            family,
            file.get(&a("hidden_activation")).and_then(Value::as_str),
        ) {
            (Family::BitnetB158, _) => Activation::Relu2,
            (_, None | Some("silu" | "swiglu" | "swish")) => Activation::Silu,
            (_, Some(other)) => {
                return Err(ConvertError::field(
                    path,
                    &a("hidden_activation"),
                    format!("`{other}` is not supported for {arch_name} (SiLU-gated FFN only)"),
                ));
            }
        };
        let token_embd =
            file.tensor("token_embd.weight")
                .ok_or_else(|| ConvertError::MissingTensor {
                    checkpoint: path.to_path_buf(),
                    tensor: "token_embd.weight".into(),
                    needed_for: "the embedding".into(),
                })?;
        let vocab_size = token_embd.dims.get(1).copied().unwrap_or(0);
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        let has_output = file.tensor("output.weight").is_some();
        let tie = match family {
            Family::Llama => !has_output,
            Family::Bitnet | Family::BitnetB158 => {
                if has_output {
                    warnings.push(format!(
                        "output.weight is ignored: llama.cpp's and bitnet.cpp's {arch_name} graphs use the \
                         embedding as the LM head"
                    ));
                }
                true
            }
        };
        let config = ModelConfig {
            vocab_size: vocab_size as usize,
            hidden_size: hidden as usize,
            intermediate_size: ffn as usize,
            num_layers: layers as usize,
            num_heads: heads as usize,
            num_kv_heads: kv as usize,
            head_dim: head_dim as usize,
            max_position_embeddings: ctx as usize,
            rms_norm_eps: eps,
            rope_theta: theta,
            rope_style: RopeStyle::Neox,
            hidden_act,
            tie_word_embeddings: tie,
        };
        let features = if family == Family::Llama {
            Features::default()
        } else {
            Features::parse(&["attn_sub_norm".into(), "ffn_sub_norm".into()])
                .expect("known features")
        };
        let plan = plan(&file, path, &config, features, family)?;
        let vocab = vocab::from_gguf(&file, path, &mut warnings, &mut notes)?;
        if vocab.info.eos_token_ids.is_empty() {
            warnings.push("the tokenizer names no end-of-text token: generation stops only at --max-tokens or --stop".into());
        }
        Ok(GgufModel {
            file,
            arch_name,
            family,
            config,
            features,
            vocab,
            plan,
            warnings,
            notes,
        })
    }
}

fn plan(
    file: &GgufFile,
    path: &Path,
    c: &ModelConfig,
    features: Features,
    family: Family,
) -> Result<Vec<Planned>> {
    use bitnet_format::Feature;
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, k) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut want: Vec<(String, Role, Vec<usize>, Option<usize>)> = Vec::new();
    let permute = family == Family::Llama;
    for i in 0..c.num_layers {
        let b = |n: &str| format!("blk.{i}.{n}");
        want.push((b("attn_norm"), Role::Norm, vec![h], None));
        want.push((
            b("attn_q"),
            Role::Ternary,
            vec![q, h],
            permute.then_some(c.num_heads),
        ));
        want.push((
            b("attn_k"),
            Role::Ternary,
            vec![k, h],
            permute.then_some(c.num_kv_heads),
        ));
        want.push((b("attn_v"), Role::Ternary, vec![k, h], None));
        if features.has(Feature::AttnSubNorm) {
            want.push((b("attn_sub_norm"), Role::Norm, vec![q], None));
        }
        want.push((b("attn_output"), Role::Ternary, vec![h, q], None));
        want.push((b("ffn_norm"), Role::Norm, vec![h], None));
        want.push((b("ffn_gate"), Role::Ternary, vec![f, h], None));
        want.push((b("ffn_up"), Role::Ternary, vec![f, h], None));
        if features.has(Feature::FfnSubNorm) {
            want.push((b("ffn_sub_norm"), Role::Norm, vec![f], None));
        }
        want.push((b("ffn_down"), Role::Ternary, vec![h, f], None));
    }
    want.push(("output_norm".into(), Role::Norm, vec![h], None));
    want.push(("token_embd".into(), Role::Embedding, vec![v, h], None));
    if !c.tie_word_embeddings {
        want.push(("output".into(), Role::LmHead, vec![v, h], None));
    }
    let mut out = Vec::new();
    for (name, role, shape, unpermute) in want {
        let gguf_name = format!("{name}.weight");
        let info = file
            .tensor(&gguf_name)
            .ok_or_else(|| ConvertError::MissingTensor {
                checkpoint: path.to_path_buf(),
                tensor: gguf_name.clone(),
                needed_for: format!(
                    "{name} of the {} graph",
                    file.get("general.architecture")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
            })?;
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        if info.dims.iter().map(|&d| d as usize).collect::<Vec<_>>() != dims {
            return Err(ConvertError::BadTensor {
                path: path.to_path_buf(),
                tensor: gguf_name,
                reason: format!(
                    "ggml dimensions {:?}; the metadata implies {dims:?}",
                    info.dims
                ),
            });
        }
        let readable = match role {
            Role::Ternary => true,
            _ => matches!(
                info.ggml_type,
                GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16
            ),
        };
        if !readable {
            return Err(ConvertError::BadTensor {
                path: path.to_path_buf(),
                tensor: gguf_name,
                reason: format!(
                    "is {}; embeddings, heads and norms are read from F32, F16 or BF16",
                    info.ggml_type.name()
                ),
            });
        }
        if let Some(heads) = unpermute
            && shape[0] % (2 * heads) != 0
        {
            return Err(ConvertError::BadTensor {
                path: path.to_path_buf(),
                tensor: gguf_name,
                reason: format!("{} rows cannot be {heads} heads of pairs", shape[0]),
            });
        }
        out.push(Planned {
            name,
            info: info.clone(),
            role,
            shape,
            unpermute,
        });
    }
    let known: std::collections::HashSet<String> =
        out.iter().map(|p| p.info.name.clone()).collect();
    let ignored = |n: &str| n == "output.weight" && c.tie_word_embeddings;
    if let Some(extra) = file
        .tensors()
        .iter()
        .find(|t| !known.contains(&t.name) && !ignored(&t.name))
    {
        return Err(ConvertError::BadTensor {
            path: path.to_path_buf(),
            tensor: extra.name.clone(),
            reason: "is not part of the graph this build computes (per-tensor `.scale` tensors of TL1/TL2 files, \
                     `rope_freqs` of RoPE scaling and other extras are not read)"
                .into(),
        });
    }
    Ok(out)
}

/// Float tensor data (F32, F16, BF16) as f32 values.
pub fn floats(data: &[u8], ty: GgmlType) -> Vec<f32> {
    match ty {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Bf16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => unreachable!("checked by the plan: {ty:?} is not a float type"),
    }
}

/// A projection's ternary values (row-major, Hugging Face row order) and the value of a +1 weight.
fn ternary(t: &Planned, data: &[u8], path: &Path) -> Result<(Vec<i8>, f32)> {
    let n = t.shape.iter().product::<usize>();
    let bad = |reason: String| ConvertError::BadTensor {
        path: path.to_path_buf(),
        tensor: t.info.name.clone(),
        reason,
    };
    let (mut values, scale) = match t.info.ggml_type {
        GgmlType::Tq2_0 | GgmlType::Tq1_0 => {
            let (values, scales) = if t.info.ggml_type == GgmlType::Tq2_0 {
                codec::decode_tq2_0(data, n, &t.info.name)
            } else {
                codec::decode_tq1_0(data, n, &t.info.name)
            }
            .map_err(gguf_err(path))?;
            let s = codec::tensor_scale(&values, &scales, &t.info.name).map_err(gguf_err(path))?;
            (values, s)
        }
        GgmlType::I2S => {
            let (values, s) = codec::decode_i2s(data, n, &t.info.name).map_err(gguf_err(path))?;
            if !(s.is_finite() && s > 0.0) {
                return Err(bad(format!("I2_S scale {s}: a scale must be finite and positive")));
            }
            (values, s)
        }
        ty => codec::ternary_from_floats(&floats(data, ty)).ok_or_else(|| {
            bad(format!(
                "{} values are not ternary (every value -s, 0 or +s for one s): latent float weights, \
                 not a BitNet b1.58 model's",
                ty.name()
            ))
        })?,
    };
    if let Some(heads) = t.unpermute {
        values = unpermute_rows(&values, t.shape[0], t.shape[1], heads);
    }
    Ok((values, scale))
}

/// Undoes llama.cpp's `permute` of q/k rows: its row `h*hd + 2j + i` is Hugging Face row `h*hd + i*hd/2 + j`.
pub fn unpermute_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Vec<T> {
    let hd = rows / heads;
    let mut out = vec![T::default(); values.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let src = h * hd + 2 * j + i;
                let dst = h * hd + i * hd / 2 + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// llama.cpp's `permute` of q/k rows (the inverse of [`unpermute_rows`]).
pub fn permute_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Vec<T> {
    let hd = rows / heads;
    let mut out = vec![T::default(); values.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let dst = h * hd + 2 * j + i;
                let src = h * hd + i * hd / 2 + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Converts the GGUF file at `path` into the `.bitnet` file `output` (see the module overview).
pub fn convert_gguf(
    path: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    on_temp: &mut dyn FnMut(&Path),
) -> Result<ConvertReport> {
    let m = GgufModel::open(path)?;
    let exact_kind = |ty: GgmlType| {
        if ty == GgmlType::Bf16 {
            TensorKind::Bf16
        } else {
            TensorKind::F32
        }
    };
    let mut specs = Vec::new();
    let (mut parameters, mut ternary_parameters, mut total) = (0u64, 0u64, 0u64);
    let mut first_ternary_type = None;
    for t in &m.plan {
        let n = t.shape.iter().product::<usize>() as u64;
        parameters += n;
        total += t.info.len;
        let kind = match t.role {
            Role::Ternary => {
                ternary_parameters += n;
                first_ternary_type.get_or_insert(t.info.ggml_type);
                TensorKind::TernaryR16
            }
            Role::Norm => TensorKind::F32,
            Role::LmHead if opts.lm_head == LmHead::Int8 => TensorKind::Int8R16,
            Role::Embedding | Role::LmHead => exact_kind(t.info.ggml_type),
        };
        specs.push(TensorSpec {
            name: t.name.clone(),
            kind,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            source: Some(t.info.name.clone()),
        });
    }
    let int8_tied = m.config.tie_word_embeddings && opts.lm_head == LmHead::Int8;
    if int8_tied {
        specs.push(TensorSpec {
            name: "output".into(),
            kind: TensorKind::Int8R16,
            shape: vec![m.config.vocab_size as u64, m.config.hidden_size as u64],
            source: Some("token_embd.weight".into()),
        });
    }
    specs.push(TensorSpec {
        name: "tokenizer.json".into(),
        kind: TensorKind::Bytes,
        shape: vec![m.vocab.json.len() as u64],
        source: Some("tokenizer.ggml.*".into()),
    });
    let n_tensors = specs.len();
    let header = Header {
        architecture: bitnet_format::ARCHITECTURE.to_string(),
        config: m.config.clone(),
        features: m.features.names(),
        tokenizer: m.vocab.info.clone(),
        generation: GenerationDefaults::default(),
        source: SourceInfo {
            architecture: format!("GGUF {}", m.arch_name),
            model_type: m.arch_name.clone(),
            dtype: first_ternary_type.map_or("?", GgmlType::name).to_string(),
            repo: None,
            revision: None,
            converter: format!("bitnet {}", env!("CARGO_PKG_VERSION")),
        },
        tensors: Vec::new(),
    };
    on_temp(&FileWriter::temp_path_for(output)?);
    let mut writer = FileWriter::create(output, header, specs)?;
    progress(Progress::Begin { total });
    for t in &m.plan {
        let data = m.file.data(&t.info);
        match t.role {
            Role::Ternary => {
                let (values, scale) = ternary(t, data, path)?;
                let packed = layout::pack_ternary(&values, t.shape[0], t.shape[1]);
                writer.write_tensor(&t.name, &packed, Some(scale))?;
            }
            Role::Norm => {
                writer.write_tensor(&t.name, &f32_bytes(&floats(data, t.info.ggml_type)), None)?
            }
            Role::LmHead if opts.lm_head == LmHead::Int8 => write_int8(
                &mut writer,
                "output",
                &floats(data, t.info.ggml_type),
                &t.shape,
            )?,
            Role::Embedding | Role::LmHead => {
                if t.info.ggml_type == GgmlType::Bf16 {
                    writer.write_tensor(&t.name, data, None)?;
                } else {
                    writer.write_tensor(
                        &t.name,
                        &f32_bytes(&floats(data, t.info.ggml_type)),
                        None,
                    )?;
                }
            }
        }
        progress(Progress::Advance {
            bytes: t.info.len,
            tensor: &t.name,
        });
    }
    if int8_tied {
        let e = m
            .plan
            .iter()
            .find(|t| t.role == Role::Embedding)
            .expect("planned");
        write_int8(
            &mut writer,
            "output",
            &floats(m.file.data(&e.info), e.info.ggml_type),
            &e.shape,
        )?;
    }
    writer.write_tensor("tokenizer.json", &m.vocab.json, None)?;
    let file_bytes = writer.finish()?;
    Ok(ConvertReport {
        output: output.to_path_buf(),
        file_bytes,
        tensors: n_tensors,
        parameters,
        ternary_parameters,
        warnings: m.warnings.clone(),
        notes: m.notes.clone(),
    })
}

fn write_int8(writer: &mut FileWriter, name: &str, w: &[f32], shape: &[usize]) -> Result<()> {
    let (rows, cols) = (shape[0], shape[1]);
    let (q, d) = quantize::int8_rows(w, rows, cols);
    let tile_len = layout::int8_tile_len(cols);
    let mut packed = vec![0u8; layout::pad16(rows) / layout::TILE_ROWS * tile_len];
    packed
        .par_chunks_mut(tile_len)
        .enumerate()
        .for_each(|(tile, out)| {
            layout::pack_int8_tile(&q, rows, cols, tile, out);
        });
    let mut scales = d;
    scales.resize(layout::pad16(rows), 0.0);
    packed.extend_from_slice(&f32_bytes(&scales));
    writer.write_tensor(name, &packed, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_and_unpermute_are_inverses_and_match_llama_cpp() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2): for hd = 4, rows 0,2,1,3 per head.
        let rows: Vec<u32> = (0..8).collect();
        let p = permute_rows(&rows, 8, 1, 2);
        assert_eq!(p, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&p, 8, 1, 2), rows);
    }
}
