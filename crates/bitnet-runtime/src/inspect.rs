//! What a `.bitnet` file holds, as `bitnet inspect --json` reports it: header, tokenizer, every tensor,
//! totals (parameters, bits per weight), and the checksum check when one was run.

use bitnet_format::{BitnetFile, ChecksumMismatch, TensorKind};
use serde::Serialize;

/// Parameter and byte counts of a file.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Model parameters (an int8 head copy of a tied embedding not counted twice).
    pub parameters: u64,
    /// Parameters stored as ternary.
    pub ternary_parameters: u64,
    /// Bytes of every tensor but the tokenizer.
    pub model_bytes: u64,
    /// Bytes of the ternary tensors.
    pub ternary_bytes: u64,
}

/// The totals of `file`.
pub fn totals(file: &BitnetFile) -> Totals {
    let h = file.header();
    let mut t = Totals {
        parameters: 0,
        ternary_parameters: 0,
        model_bytes: 0,
        ternary_bytes: 0,
    };
    for e in &h.tensors {
        if e.kind == TensorKind::Bytes {
            continue;
        }
        t.model_bytes += e.length;
        // An int8 head beside a tied embedding, or an untied head's exact rows beside its int8 copy,
        // is a copy, not more parameters.
        let copy = (e.name == "output" && h.config.tie_word_embeddings)
            || e.name == bitnet_format::OUTPUT_EXACT;
        if !copy {
            t.parameters += e.num_elements();
        }
        if e.kind == TensorKind::TernaryR16 {
            t.ternary_parameters += e.num_elements();
            t.ternary_bytes += e.length;
        }
    }
    t
}

/// Bits per weight of `bytes` holding `elems` values.
pub fn bits_per_weight(bytes: u64, elems: u64) -> f64 {
    if elems == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elems as f64
    }
}

/// One tensor in `inspect --json`.
#[derive(Serialize)]
#[allow(missing_docs)]
pub struct TensorJson<'a> {
    name: &'a str,
    kind: &'static str,
    shape: &'a [u64],
    offset: u64,
    bytes: u64,
    bits_per_weight: Option<f64>,
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct TokenizerJson<'a> {
    embedded: bool,
    tokenizer_json_bytes: Option<usize>,
    bos_token_id: Option<u32>,
    add_bos_token: bool,
    eos_token_ids: &'a [u32],
    pad_token_id: Option<u32>,
    chat_template: bool,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct TotalsJson {
    tensors: usize,
    parameters: u64,
    ternary_parameters: u64,
    model_bytes: u64,
    ternary_bytes: u64,
    bits_per_weight: f64,
    ternary_bits_per_weight: f64,
}

#[derive(Serialize)]
#[allow(missing_docs)]
pub struct CheckJson<'a> {
    ok: bool,
    mismatches: &'a [ChecksumMismatch],
}

/// `inspect --json`.
#[derive(Serialize)]
#[allow(missing_docs)]
pub struct Report<'a> {
    schema_version: u32,
    file: String,
    file_bytes: u64,
    format_version: String,
    header_bytes: u64,
    data_offset: u64,
    architecture: &'a str,
    config: &'a bitnet_format::ModelConfig,
    features: Vec<String>,
    tokenizer: TokenizerJson<'a>,
    generation: &'a bitnet_format::GenerationDefaults,
    source: &'a bitnet_format::SourceInfo,
    tensors: Vec<TensorJson<'a>>,
    totals: TotalsJson,
    check: Option<CheckJson<'a>>,
}

/// The report of `file` (named `name`), with the checksum check's `mismatches` when one was run.
pub fn report<'a>(
    file: &'a BitnetFile,
    name: &str,
    mismatches: Option<&'a [ChecksumMismatch]>,
) -> Report<'a> {
    let h = file.header();
    let p = file.preamble();
    let t = totals(file);
    Report {
        schema_version: 1,
        file: name.to_string(),
        file_bytes: file.len(),
        format_version: format!("{}.{}", p.major, p.minor),
        header_bytes: p.header_len,
        data_offset: p.data_offset,
        architecture: &h.architecture,
        config: &h.config,
        features: file.features().names(),
        tokenizer: TokenizerJson {
            embedded: h.tokenizer.tokenizer_json.is_some(),
            tokenizer_json_bytes: file.tokenizer_json().map(|b| b.len()),
            bos_token_id: h.tokenizer.bos_token_id,
            add_bos_token: h.tokenizer.add_bos_token,
            eos_token_ids: &h.tokenizer.eos_token_ids,
            pad_token_id: h.tokenizer.pad_token_id,
            chat_template: h.tokenizer.chat_template.is_some(),
        },
        generation: &h.generation,
        source: &h.source,
        tensors: h
            .tensors
            .iter()
            .map(|e| TensorJson {
                name: &e.name,
                kind: e.kind.as_str(),
                shape: &e.shape,
                offset: e.offset,
                bytes: e.length,
                bits_per_weight: (e.kind != TensorKind::Bytes)
                    .then(|| bits_per_weight(e.length, e.num_elements())),
                sha256: &e.sha256,
                scale: e.scale(),
                source: e.source.as_deref(),
            })
            .collect(),
        totals: TotalsJson {
            tensors: h.tensors.len(),
            parameters: t.parameters,
            ternary_parameters: t.ternary_parameters,
            model_bytes: t.model_bytes,
            ternary_bytes: t.ternary_bytes,
            bits_per_weight: bits_per_weight(t.model_bytes, t.parameters),
            ternary_bits_per_weight: bits_per_weight(t.ternary_bytes, t.ternary_parameters),
        },
        check: mismatches.map(|bad| CheckJson {
            ok: bad.is_empty(),
            mismatches: bad,
        }),
    }
}
