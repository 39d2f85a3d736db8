//! config.json: the model's dimensions, what its BitLinear weights hold (`quantization_config`), and the
//! keys that change the computation, each honoured or refused.

use std::path::Path;

use bitnet_format::{Activation, ModelConfig};
use serde_json::Value;

use crate::architecture::{Architecture, Unquantized};
use crate::error::{ConvertError, Result};

struct ConfigReader<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl ConfigReader<'_> {
    fn usize_req(&self, field: &str) -> Result<usize> {
        match self.v.get(field) {
            None | Some(Value::Null) => Err(ConvertError::field(
                self.path,
                field,
                "is missing (expected a positive integer)",
            )),
            Some(x) => x
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ConvertError::field(
                        self.path,
                        field,
                        format!("expected a positive integer, got {x}"),
                    )
                }),
        }
    }
    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize_req(field).map(Some),
        }
    }
    fn f64_opt(&self, field: &str) -> Result<Option<f64>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Some)
                .ok_or_else(|| {
                    ConvertError::field(
                        self.path,
                        field,
                        format!("expected a positive number, got {x}"),
                    )
                }),
        }
    }
    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(x) => Err(ConvertError::field(
                self.path,
                field,
                format!("expected true or false, got {x}"),
            )),
        }
    }
}

pub(crate) fn parse_config(path: &Path, cfg: &Value, arch: &Architecture) -> Result<ModelConfig> {
    let r = ConfigReader { path, v: cfg };
    let hidden_size = r.usize_req("hidden_size")?;
    let num_heads = r.usize_req("num_attention_heads")?;
    let num_kv_heads = r.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
    for (field, v) in [
        ("num_attention_heads", num_heads),
        ("num_key_value_heads", num_kv_heads),
    ] {
        if v == 0 {
            return Err(ConvertError::field(path, field, "must be at least 1"));
        }
    }
    if num_heads % num_kv_heads != 0 {
        return Err(ConvertError::field(
            path,
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = match r.usize_opt("head_dim")? {
        Some(h) => h,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(ConvertError::field(
                path,
                "num_attention_heads",
                format!(
                    "{num_heads} does not divide hidden_size {hidden_size} and there is no head_dim"
                ),
            ));
        }
    };
    if head_dim % 2 != 0 {
        return Err(ConvertError::field(
            path,
            "head_dim",
            format!("{head_dim} must be even for rotary embeddings"),
        ));
    }
    let act = cfg
        .get("hidden_act")
        .and_then(|v| v.as_str())
        .unwrap_or(&arch.defaults.hidden_act);
    let hidden_act = match act {
        "relu2" => Activation::Relu2,
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(ConvertError::field(
                path,
                "hidden_act",
                format!("`{other}` is not supported; expected relu2 or silu"),
            ));
        }
    };
    if r.bool_opt("attention_bias")?.unwrap_or(false) || r.bool_opt("mlp_bias")?.unwrap_or(false) {
        return Err(ConvertError::field(
            path,
            "attention_bias",
            "biases are not supported (BitNet b1.58 has none)",
        ));
    }
    // transformers 5 moved rope_theta into rope_parameters; older configs keep it at the top level.
    let rope_params = cfg.get("rope_parameters").filter(|v| v.is_object());
    let rope_theta = match rope_params {
        Some(p) => ConfigReader { path, v: p }.f64_opt("rope_theta")?,
        None => None,
    };
    let rope_theta = match rope_theta {
        Some(t) => t,
        None => r.f64_opt("rope_theta")?.unwrap_or(arch.defaults.rope_theta),
    };
    for scaling in [cfg.get("rope_scaling"), rope_params] {
        if let Some(s) = scaling.filter(|v| !v.is_null()) {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(ConvertError::field(
                    path,
                    "rope_scaling",
                    format!("rope type `{kind}` is not supported; only the default RoPE"),
                ));
            }
        }
    }
    let config = ModelConfig {
        vocab_size: r.usize_req("vocab_size")?,
        hidden_size,
        intermediate_size: r.usize_req("intermediate_size")?,
        num_layers: r.usize_req("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: r
            .usize_opt("max_position_embeddings")?
            .unwrap_or(arch.defaults.max_position_embeddings),
        rms_norm_eps: r
            .f64_opt("rms_norm_eps")?
            .unwrap_or(arch.defaults.rms_norm_eps),
        rope_theta,
        rope_style: arch.rope_style,
        hidden_act,
        tie_word_embeddings: r
            .bool_opt("tie_word_embeddings")?
            .unwrap_or(arch.defaults.tie_word_embeddings),
    };
    // The limits every reader enforces (SPEC.md 3.2), checked before any tensor is read.
    config.validate().map_err(|(field, reason)| {
        let hf = match field {
            "num_layers" => "num_hidden_layers",
            "num_heads" => "num_attention_heads",
            "num_kv_heads" => "num_key_value_heads",
            other => other,
        };
        ConvertError::field(path, hf, reason)
    })?;
    Ok(config)
}

/// How a BitLinear's `weight_scale` relates to the real weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleOp {
    /// `W = ternary * weight_scale` (transformers' `AutoBitLinear`, offline: microsoft/bitnet-b1.58-2B-4T).
    Multiply,
    /// `W = ternary / weight_scale` (transformers' `BitLinear`: Falcon3, Falcon-E, HF1BitLLM).
    Divide,
}

/// What a checkpoint's BitLinear weight tensors hold, read from `quantization_config` (never from the
/// architecture's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryStorage {
    /// Latent float weights `[out, in]`, quantized at conversion with the absmean rule they were trained
    /// with (online quantization-aware checkpoints: 2B4T-bf16, 1bitLLM).
    Latent,
    /// Ternary values packed 4 rows per byte (`[out / 4, in]` uint8, code `w + 1`) beside a one-element
    /// `weight_scale`.
    Packed(ScaleOp),
}

impl TernaryStorage {
    /// How config.json says it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            TernaryStorage::Latent => "latent float weights, quantized at conversion",
            TernaryStorage::Packed(ScaleOp::Multiply) => {
                "pre-packed uint8 ternary weights whose weight_scale multiplies (AutoBitLinear, offline)"
            }
            TernaryStorage::Packed(ScaleOp::Divide) => {
                "pre-packed uint8 ternary weights whose weight_scale divides (BitLinear)"
            }
        }
    }
}

/// Reads `quantization_config` as transformers' `BitNetQuantConfig` does: `linear_class` `bitlinear` (the
/// default) packs and divides; `autobitlinear` packs and multiplies in `offline` mode (the default) and
/// holds latent weights in `online` mode. Keys that would change the computation in a way this converter
/// does not reproduce are refused; keys it does not know are reported in `warnings`.
pub(crate) fn parse_quantization(
    path: &Path,
    cfg: &Value,
    arch: &Architecture,
    warnings: &mut Vec<String>,
) -> Result<TernaryStorage> {
    let qc = match cfg.get("quantization_config") {
        None | Some(Value::Null) => {
            return match arch.without_quantization_config {
                Unquantized::Latent => Ok(TernaryStorage::Latent),
                Unquantized::Refuse => Err(ConvertError::field(
                    path,
                    "quantization_config",
                    format!(
                        "is missing: a {} without `quantization_config {{\"quant_method\": \"bitnet\"}}` is an \
                         ordinary float model, not a ternary BitNet one",
                        arch.hf_architectures.join("/")
                    ),
                )),
            };
        }
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ConvertError::field(
                path,
                "quantization_config",
                format!("expected an object, got {other}"),
            ));
        }
    };
    let field = |k: &str| format!("quantization_config.{k}");
    let str_of = |k: &str| -> Result<Option<&str>> {
        match qc.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(ConvertError::field(
                path,
                &field(k),
                format!("expected a string, got {other}"),
            )),
        }
    };
    match str_of("quant_method")? {
        Some("bitnet") => {}
        Some(other) => {
            return Err(ConvertError::field(
                path,
                &field("quant_method"),
                format!("`{other}` is not a ternary BitNet quantization; expected \"bitnet\""),
            ));
        }
        None => {
            return Err(ConvertError::field(
                path,
                &field("quant_method"),
                "is missing; expected \"bitnet\"",
            ));
        }
    }
    if qc.get("use_rms_norm").and_then(Value::as_bool) == Some(true) {
        return Err(ConvertError::field(
            path,
            &field("use_rms_norm"),
            "is true: an RMSNorm inside every BitLinear is not supported (no released BitNet checkpoint uses it)",
        ));
    }
    if let Some(list) = qc.get("modules_to_not_convert").and_then(Value::as_array) {
        let others: Vec<&str> = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|m| !m.ends_with("lm_head"))
            .collect();
        if !others.is_empty() {
            return Err(ConvertError::field(
                path,
                &field("modules_to_not_convert"),
                format!(
                    "keeps {} in float; only the LM head may stay float (every projection is ternary here)",
                    others.join(", ")
                ),
            ));
        }
    }
    const KNOWN: [&str; 7] = [
        "quant_method",
        "linear_class",
        "quantization_mode",
        "use_rms_norm",
        "rms_norm_eps",
        "modules_to_not_convert",
        "is_bitnet_config",
    ];
    for k in qc.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        warnings.push(format!(
            "{}: ignoring {} (transformers' BitNet quantizer does not read it either)",
            path.display(),
            field(k)
        ));
    }
    let mode = str_of("quantization_mode")?;
    match (str_of("linear_class")?, mode) {
        (None | Some("bitlinear"), _) => Ok(TernaryStorage::Packed(ScaleOp::Divide)),
        (Some("autobitlinear"), None | Some("offline")) => {
            Ok(TernaryStorage::Packed(ScaleOp::Multiply))
        }
        (Some("autobitlinear"), Some("online")) => Ok(TernaryStorage::Latent),
        (Some("autobitlinear"), Some(other)) => Err(ConvertError::field(
            path,
            &field("quantization_mode"),
            format!("`{other}` is not a mode; expected \"online\" or \"offline\""),
        )),
        (Some(other), _) => Err(ConvertError::field(
            path,
            &field("linear_class"),
            format!(
                "`{other}` is not a BitNet linear class; expected \"bitlinear\" or \"autobitlinear\""
            ),
        )),
    }
}

/// Config keys of other LLaMA-like models that change the computation; a checkpoint that sets one to
/// anything but its neutral value is refused rather than run wrong.
pub(crate) fn refuse_unhonoured(path: &Path, cfg: &Value) -> Result<()> {
    let refuse = |k: &str, why: &str| Err(ConvertError::field(path, k, why.to_string()));
    let truthy = |k: &str| cfg.get(k).and_then(Value::as_bool) == Some(true);
    let set = |k: &str| cfg.get(k).is_some_and(|v| !v.is_null());
    if truthy("rope_interleaved") {
        return refuse(
            "rope_interleaved",
            "is true: interleaved RoPE pairs are not supported (only rotate-half, which transformers' Llama uses)",
        );
    }
    if truthy("parallel_attn") || truthy("parallel_attention") {
        return refuse(
            "parallel_attn",
            "is true: parallel attention and FFN blocks are not supported",
        );
    }
    if let Some(f) = cfg.get("partial_rotary_factor").and_then(Value::as_f64)
        && f != 1.0
    {
        return refuse(
            "partial_rotary_factor",
            "is not 1: RoPE over part of a head is not supported",
        );
    }
    if set("sliding_window")
        && cfg.get("use_sliding_window").and_then(Value::as_bool) != Some(false)
    {
        return refuse(
            "sliding_window",
            "is set: sliding-window attention is not supported",
        );
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if set(k) {
            return refuse(k, "is set: logit soft-capping is not supported");
        }
    }
    for (k, want) in [("input_bits", 8), ("weight_bits", 1)] {
        if let Some(v) = cfg.get(k).filter(|v| !v.is_null())
            && v.as_u64() != Some(want)
        {
            return Err(ConvertError::field(
                path,
                k,
                format!("is {v}; BitNet b1.58 has {want} (int8 activations, ternary weights)"),
            ));
        }
    }
    Ok(())
}
