//! A GGUF model's architecture, config and tensor plan, read and checked before anything is converted.

use std::path::Path;

use bitnet_format::{Activation, Features, ModelConfig, RopeStyle};
use bitnet_gguf::{GgmlType, GgufFile, TensorInfo, Value};

use super::vocab;
use crate::architecture::Role;
use crate::error::{ConvertError, Result};

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

/// The largest dimension, head count or context length accepted from a file's metadata.
const MAX_DIM: u64 = 1 << 24;

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

pub(super) fn gguf_err(path: &Path) -> impl Fn(bitnet_gguf::GgufError) -> ConvertError + '_ {
    move |error| ConvertError::Gguf {
        path: path.to_path_buf(),
        error,
    }
}

/// A tensor of the plan: canonical name, GGUF tensor, role, logical `[rows, cols]` or `[n]`.
pub(super) struct Planned {
    pub(super) name: String,
    pub(super) info: TensorInfo,
    pub(super) role: Role,
    pub(super) shape: Vec<usize>,
    /// Heads whose q/k rows llama.cpp's converter permuted (`llama` only).
    pub(super) unpermute: Option<usize>,
}

/// An opened GGUF model: its config, tokenizer and conversion plan.
pub struct GgufModel {
    pub(super) file: GgufFile,
    /// `general.architecture`.
    pub arch_name: String,
    /// The family.
    pub family: Family,
    /// Dimensions.
    pub config: ModelConfig,
    /// Sub-norms or none.
    pub features: Features,
    pub(super) vocab: vocab::Vocab,
    pub(super) plan: Vec<Planned>,
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
        // Bounded so that every product of two dimensions below fits: a hostile file cannot overflow them.
        for (key, v) in [
            ("embedding_length", hidden),
            ("block_count", layers),
            ("feed_forward_length", ffn),
            ("attention.head_count", heads),
            ("attention.head_count_kv", kv),
            ("context_length", ctx),
        ] {
            if v > MAX_DIM {
                return Err(ConvertError::field(
                    path,
                    &a(key),
                    format!("{v} is larger than any model (limit {MAX_DIM})"),
                ));
            }
        }
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
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_DIM {
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
