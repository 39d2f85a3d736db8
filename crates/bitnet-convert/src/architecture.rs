//! Source architectures: how a Hugging Face checkpoint's tensor names map to the canonical names of
//! SPEC.md, and what each tensor is. The maps are the data files in `formats/architectures/`, compiled in.

use serde::Deserialize;

/// What a tensor is, which decides how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A BitLinear weight: absmean-quantized to ternary.
    Ternary,
    /// An RMSNorm weight: stored as f32.
    Norm,
    /// The token embedding: stored exactly.
    Embedding,
    /// An untied LM head: stored exactly (or as int8 on request).
    LmHead,
}

/// One symbolic dimension of a tensor shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// `hidden_size`.
    Hidden,
    /// `intermediate_size`.
    Ffn,
    /// `num_heads * head_dim`.
    QDim,
    /// `num_kv_heads * head_dim`.
    KvDim,
    /// `vocab_size`.
    Vocab,
}

/// When a tensor is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Always.
    #[default]
    Always,
    /// Only when `tie_word_embeddings` is false.
    Untied,
}

/// One tensor of the map; `{i}` in names stands for the layer index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorMap {
    /// Hugging Face name.
    pub hf: String,
    /// Canonical name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Symbolic shape.
    pub shape: Vec<Dim>,
    /// When it is present.
    #[serde(default)]
    pub when: When,
}

/// Defaults for config fields a checkpoint may omit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// FFN activation.
    pub hidden_act: String,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Whether the head is tied.
    pub tie_word_embeddings: bool,
}

/// What a checkpoint without `quantization_config` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unquantized {
    /// Latent float BitLinear weights, quantized at conversion (the architecture always quantizes).
    Latent,
    /// An ordinary float model, not a ternary one: refused.
    Refuse,
}

/// A source architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Short name.
    pub name: String,
    /// What it covers.
    pub description: String,
    /// `architectures` values in config.json that select it.
    pub hf_architectures: Vec<String>,
    /// `model_type` values it accepts.
    pub hf_model_types: Vec<String>,
    /// The optional parts of the computation (SPEC.md section 3.2.1) the architecture has.
    pub features: Vec<String>,
    /// RoPE pairing.
    pub rope_style: bitnet_format::RopeStyle,
    /// What a config.json without `quantization_config` means.
    pub without_quantization_config: Unquantized,
    /// Config defaults.
    pub defaults: Defaults,
    /// Tensor map, in file order (per-layer entries repeat for every layer first).
    pub tensors: Vec<TensorMap>,
}

const SOURCES: &[(&str, &str)] = &[
    (
        "bitnet.json",
        include_str!("../../../formats/architectures/bitnet.json"),
    ),
    (
        "bitnet-1bitllm.json",
        include_str!("../../../formats/architectures/bitnet-1bitllm.json"),
    ),
    (
        "llama-bitnet.json",
        include_str!("../../../formats/architectures/llama-bitnet.json"),
    ),
];

/// Every supported architecture.
pub fn all() -> Vec<Architecture> {
    SOURCES
        .iter()
        .map(|(file, text)| {
            serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("formats/architectures/{file} is invalid: {e}"))
        })
        .collect()
}

/// The architecture that an HF `architectures[0]` value selects.
pub fn find(hf_architecture: &str) -> Option<Architecture> {
    all()
        .into_iter()
        .find(|a| a.hf_architectures.iter().any(|x| x == hf_architecture))
}

/// "A (model_type b), C (model_type d)" for error messages.
pub fn supported_list() -> String {
    all()
        .iter()
        .map(|a| {
            format!(
                "{} (model_type {})",
                a.hf_architectures.join(", "),
                a.hf_model_types.join("/")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_name_every_bitlinear() {
        for arch in all() {
            let features = bitnet_format::Features::parse(&arch.features)
                .unwrap_or_else(|e| panic!("{}: {e}", arch.name));
            // A sub-norm tensor is in the map exactly when the architecture lists its feature.
            for (feature, name) in [
                (bitnet_format::Feature::AttnSubNorm, "blk.{i}.attn_sub_norm"),
                (bitnet_format::Feature::FfnSubNorm, "blk.{i}.ffn_sub_norm"),
            ] {
                assert_eq!(
                    features.has(feature),
                    arch.tensors.iter().any(|t| t.name == name),
                    "{}: {name}",
                    arch.name
                );
            }
            let ternary: Vec<_> = arch
                .tensors
                .iter()
                .filter(|t| t.role == Role::Ternary)
                .map(|t| t.name.as_str())
                .collect();
            assert_eq!(
                ternary.len(),
                7,
                "{}: q, k, v, o, gate, up, down",
                arch.name
            );
            assert!(arch.tensors.iter().any(|t| t.role == Role::Embedding));
        }
        assert_eq!(find("BitNetForCausalLM").unwrap().name, "bitnet");
        assert_eq!(find("BitnetForCausalLM").unwrap().name, "bitnet-1bitllm");
        assert_eq!(find("LlamaForCausalLM").unwrap().name, "llama-bitnet");
        assert!(find("MistralForCausalLM").is_none());
    }
}
