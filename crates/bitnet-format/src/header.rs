//! The JSON header of a `.bitnet` file (SPEC.md section 3): model config, tokenizer, generation defaults,
//! provenance and the tensor directory.
//!
//! Readers ignore fields they do not know, so minor versions can add fields.

use serde::{Deserialize, Serialize};

use crate::layout;

/// The whole JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The model family; `"bitnet-b1.58"` is the only one (SPEC.md section 3.1).
    pub architecture: String,
    /// Model dimensions and hyper-parameters.
    pub config: ModelConfig,
    /// The optional parts of the computation this model uses (SPEC.md section 3.2.1), by name. A reader
    /// refuses a file that names one it does not implement: [`Features::parse`].
    #[serde(default)]
    pub features: Vec<String>,
    /// Tokenizer and chat metadata.
    pub tokenizer: TokenizerInfo,
    /// Sampling defaults from the checkpoint's `generation_config.json`.
    #[serde(default)]
    pub generation: GenerationDefaults,
    /// Where the weights came from.
    pub source: SourceInfo,
    /// The tensor directory, in file order.
    pub tensors: Vec<TensorEntry>,
}

/// The FFN activation of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `relu(gate)^2 * up` (BitNet b1.58 2B4T).
    Relu2,
    /// `silu(gate) * up` (1bitLLM, Falcon3 1.58-bit, Falcon-E, Llama3-8B-1.58).
    Silu,
}

impl Activation {
    /// The name used in SPEC.md and in HF configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }
}

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Dimension `i` rotates with `i + head_dim / 2` (transformers' `rotate_half`, llama.cpp's NEOX).
    #[default]
    Neox,
}

impl RopeStyle {
    /// The name used in SPEC.md.
    pub fn as_str(self) -> &'static str {
        match self {
            RopeStyle::Neox => "neox",
        }
    }
}

/// An optional part of the computation (SPEC.md section 3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `blk.{i}.attn_sub_norm`: an RMSNorm of the attention output before `attn_output`.
    AttnSubNorm,
    /// `blk.{i}.ffn_sub_norm`: an RMSNorm of `act(gate) * up` before `ffn_down`.
    FfnSubNorm,
}

impl Feature {
    /// Every feature this build implements.
    pub const ALL: [Feature; 2] = [Feature::AttnSubNorm, Feature::FfnSubNorm];

    /// The name used in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::AttnSubNorm => "attn_sub_norm",
            Feature::FfnSubNorm => "ffn_sub_norm",
        }
    }
}

/// The set of features a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// `attn_sub_norm`.
    pub attn_sub_norm: bool,
    /// `ffn_sub_norm`.
    pub ffn_sub_norm: bool,
}

impl Features {
    /// The features of every version-1 file (2B4T's computation).
    pub const V1: Features = Features {
        attn_sub_norm: true,
        ffn_sub_norm: true,
    };

    /// Reads the header's list; a name this build does not implement, or one given twice, is an error
    /// that names it.
    pub fn parse(names: &[String]) -> Result<Features, String> {
        let mut f = Features::default();
        for name in names {
            let Some(feature) = Feature::ALL.into_iter().find(|x| x.as_str() == name) else {
                let known: Vec<_> = Feature::ALL.iter().map(|x| x.as_str()).collect();
                return Err(format!(
                    "the model needs feature `{name}`, which this build of bitnet does not implement \
                     (it knows {}); a newer bitnet may run it",
                    known.join(", ")
                ));
            };
            let slot = match feature {
                Feature::AttnSubNorm => &mut f.attn_sub_norm,
                Feature::FfnSubNorm => &mut f.ffn_sub_norm,
            };
            if std::mem::replace(slot, true) {
                return Err(format!("feature `{name}` is listed twice"));
            }
        }
        Ok(f)
    }

    /// Whether `feature` is in the set.
    pub fn has(self, feature: Feature) -> bool {
        match feature {
            Feature::AttnSubNorm => self.attn_sub_norm,
            Feature::FfnSubNorm => self.ffn_sub_norm,
        }
    }

    /// The names, in SPEC.md's order.
    pub fn names(self) -> Vec<String> {
        Feature::ALL
            .into_iter()
            .filter(|&x| self.has(x))
            .map(|x| x.as_str().to_string())
            .collect()
    }
}

/// Model dimensions. Field names follow Hugging Face's where one exists.
///
/// Every field changes the computation, so a field this build does not know is refused rather than
/// ignored (SPEC.md section 3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Rows of the embedding and of the LM head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the FFN.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// How RoPE pairs a head's dimensions (absent in version 1 files: NEOX).
    #[serde(default)]
    pub rope_style: RopeStyle,
    /// FFN activation.
    pub hidden_act: Activation,
    /// Whether the LM head is the embedding (no `output` tensor in an exact file).
    pub tie_word_embeddings: bool,
}

/// The largest dimensions a reader accepts (SPEC.md section 3.2): above any released model by a wide margin,
/// and small enough that sizes computed from them cannot overflow and a file cannot ask for absurd memory
/// before its tensors are checked.
pub mod limits {
    /// Vocabulary entries.
    pub const VOCAB: usize = 1 << 20;
    /// Residual-stream width.
    pub const HIDDEN: usize = 1 << 16;
    /// FFN width.
    pub const INTERMEDIATE: usize = 1 << 18;
    /// Decoder layers.
    pub const LAYERS: usize = 1024;
    /// Query heads.
    pub const HEADS: usize = 1024;
    /// Width of one head.
    pub const HEAD_DIM: usize = 1024;
    /// Query heads x head width.
    pub const ATTENTION: usize = 1 << 16;
    /// Context length (the KV cache is sized by the context a run uses, not by this).
    pub const CONTEXT: usize = 1 << 24;
}

impl ModelConfig {
    /// Checks every dimension against [`limits`] and against each other; names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let range = |field: &'static str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err((field, format!("{v} is outside 1..={max}")))
            } else {
                Ok(())
            }
        };
        range("vocab_size", self.vocab_size, limits::VOCAB)?;
        range("hidden_size", self.hidden_size, limits::HIDDEN)?;
        range(
            "intermediate_size",
            self.intermediate_size,
            limits::INTERMEDIATE,
        )?;
        range("num_layers", self.num_layers, limits::LAYERS)?;
        range("num_heads", self.num_heads, limits::HEADS)?;
        range("num_kv_heads", self.num_kv_heads, self.num_heads)?;
        range("head_dim", self.head_dim, limits::HEAD_DIM)?;
        range(
            "max_position_embeddings",
            self.max_position_embeddings,
            limits::CONTEXT,
        )?;
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err((
                "num_kv_heads",
                format!(
                    "{} does not divide num_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err((
                "head_dim",
                format!("{} is odd; RoPE pairs dimensions", self.head_dim),
            ));
        }
        let attention = self.num_heads * self.head_dim;
        if attention > limits::ATTENTION {
            return Err((
                "num_heads",
                format!(
                    "num_heads x head_dim = {attention} is more than {}",
                    limits::ATTENTION
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err((
                "rms_norm_eps",
                format!("{} is not in (0, 1)", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err((
                "rope_theta",
                format!("{} is not a finite base above 1", self.rope_theta),
            ));
        }
        Ok(())
    }

    /// Bytes of KV cache (f32 keys and values of every layer) per position.
    pub fn kv_bytes_per_position(&self) -> u64 {
        2 * 4 * (self.num_layers * self.num_kv_heads * self.head_dim) as u64
    }
}

/// Tokenizer, BOS policy, stop tokens and chat template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// Name of the `bytes` tensor holding `tokenizer.json`, if the file carries one.
    #[serde(default)]
    pub tokenizer_json: Option<String>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Whether a prompt starts with BOS (added once, by the runner, if the tokenizer does not).
    #[serde(default)]
    pub add_bos_token: bool,
    /// Every id that ends generation (end of text, end of turn).
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// Padding id, if the checkpoint names one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// The Jinja chat template, verbatim from the checkpoint.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// Sampling defaults, as the checkpoint's `generation_config.json` gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// Whether the model's authors sample by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    /// Default temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Default nucleus mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Default top-k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Default repetition penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Default number of new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u64>,
}

/// Provenance of the weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `architectures[0]` of the source config, e.g. `BitNetForCausalLM`.
    pub architecture: String,
    /// `model_type` of the source config.
    pub model_type: String,
    /// Storage dtype of the source weights, e.g. `BF16`.
    pub dtype: String,
    /// Hub repo id, when converted from the Hugging Face cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Hub commit, when converted from the Hugging Face cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The program that wrote the file.
    pub converter: String,
}

/// The kinds of tensor data SPEC.md defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// Little-endian IEEE binary32, row-major.
    F32,
    /// Little-endian bfloat16, row-major.
    Bf16,
    /// Ternary weights, 2-bit codes in 16-row tiles; one f32 scale in the directory.
    TernaryR16,
    /// int8 weights (`u8 = w + 128`) in 16-row tiles, then one f32 scale per padded row.
    Int8R16,
    /// Opaque bytes (the embedded `tokenizer.json`); shape `[len]`.
    Bytes,
}

impl TensorKind {
    /// The name in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            TensorKind::F32 => "f32",
            TensorKind::Bf16 => "bf16",
            TensorKind::TernaryR16 => "ternary_r16",
            TensorKind::Int8R16 => "int8_r16",
            TensorKind::Bytes => "bytes",
        }
    }

    /// Byte length of a tensor of this kind and shape, or a reason the shape is not allowed.
    pub fn byte_len(self, shape: &[u64]) -> Result<u64, String> {
        let elems = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let elems = elems.ok_or_else(|| "shape overflows u64".to_string())?;
        let two_d = || -> Result<(usize, usize), String> {
            match shape {
                [r, c] => Ok((
                    usize::try_from(*r).map_err(|e| e.to_string())?,
                    usize::try_from(*c).map_err(|e| e.to_string())?,
                )),
                _ => Err(format!(
                    "a {} tensor must be 2-D, got shape {shape:?}",
                    self.as_str()
                )),
            }
        };
        Ok(match self {
            TensorKind::F32 => elems.checked_mul(4).ok_or("size overflows u64")?,
            TensorKind::Bf16 => elems.checked_mul(2).ok_or("size overflows u64")?,
            TensorKind::Bytes => {
                if shape.len() != 1 {
                    return Err(format!("a bytes tensor must be 1-D, got shape {shape:?}"));
                }
                elems
            }
            TensorKind::TernaryR16 => {
                let (r, c) = two_d()?;
                checked_tiled(r, c, 4)?
            }
            TensorKind::Int8R16 => {
                let (r, c) = two_d()?;
                let tiles = checked_tiled(r, c, 1)?;
                let scales = (layout::pad16(r) as u64)
                    .checked_mul(4)
                    .ok_or("size overflows u64")?;
                tiles.checked_add(scales).ok_or("size overflows u64")?
            }
        })
    }
}

fn checked_tiled(rows: usize, cols: usize, div: u64) -> Result<u64, String> {
    let r = (rows as u64).checked_add(15).ok_or("rows overflow")? / 16 * 16;
    let c = (cols as u64).checked_add(15).ok_or("cols overflow")? / 16 * 16;
    Ok(r.checked_mul(c).ok_or("size overflows u64")? / div)
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Canonical name (SPEC.md section 5), e.g. `blk.0.attn_q`.
    pub name: String,
    /// Data layout.
    pub kind: TensorKind,
    /// Logical shape: `[rows, cols]` for matrices (rows = outputs), `[n]` for vectors.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the data in the file, a multiple of 64.
    pub offset: u64,
    /// Byte length of the data.
    pub length: u64,
    /// `ternary_r16` only: the IEEE binary32 bit pattern of the weight scale (the value of one +1 weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_bits: Option<u32>,
    /// Lower-case hex SHA-256 of the `length` data bytes.
    pub sha256: String,
    /// The source tensor it was made from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl TensorEntry {
    /// The weight scale of a `ternary_r16` tensor.
    pub fn scale(&self) -> Option<f32> {
        self.scale_bits.map(f32::from_bits)
    }

    /// Number of logical elements.
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// `[rows, cols]` of a 2-D tensor.
    pub fn dims2(&self) -> Option<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Some((*r as usize, *c as usize)),
            _ => None,
        }
    }
}
