//! A SentencePiece `tokenizer.model` turned into the Hugging Face `tokenizer.json` that transformers'
//! `LlamaTokenizer` builds from it, for checkpoints that ship only the SentencePiece model (LLaMA 2 and
//! the models that reuse its tokenizer, such as 1bitLLM's BitNet b1.58).
//!
//! 1. [`proto::SentencePieceModel::parse`] reads the few fields of the protobuf that matter (pieces,
//!    model type, byte fallback, the special ids, the normalizer's settings) with a small bounds-checked
//!    reader. Only BPE models, the LLaMA 2 family's, are converted; a Unigram, word or char model is
//!    refused, since its `tokenizer.json` is a different model.
//! 2. [`TokenizerSettings::read`] ([`settings`]) reads the checkpoint's `tokenizer_config.json`,
//!    `special_tokens_map.json` and `added_tokens.json`: BOS/EOS policy, the prefix space, and the added
//!    tokens (`<pad>`, `</line>`, ...), each checked against the pieces.
//! 3. [`tokenizer_json`] builds the JSON, as transformers 5.23's `LlamaTokenizer` does (the fixture
//!    `bitnet-1bitllm-tiny.tokenizer.json-reference` is its output):
//!    - no normalizer; a `Metaspace` pre-tokenizer (`▁`, prepend scheme `first`, or `always` when
//!      `legacy` is set, `never` without a prefix space; no split);
//!    - a BPE model over the pieces (id = index) with `byte_fallback` and `fuse_unk`, `<unk>` as the
//!      unknown token, and merges derived from the vocabulary: for each piece in id order, every split
//!      into two pieces, ordered by the ids of the halves, then by the halves' lengths in characters
//!      (transformers' `generate_merges(vocab)`);
//!    - the added tokens; a `TemplateProcessing` post-processor that adds `<s>` (and `</s>` if
//!      `add_eos_token`); a `Replace("▁", " ")`, `ByteFallback`, `Fuse`, `Strip(1 leading space)`
//!      decoder.
//!
//! Why a hand-written reader rather than a crate: the one maintained parser of this format,
//! `sentencepiece-model`, is `prost` code generated at build time by `prost-build` and `protox` (some
//! fifty crates compiled for three fields); the `sentencepiece` crate binds the C++ library. Reading a
//! dozen scalar fields of a protobuf is small and easily checked code.

pub mod proto;
pub mod settings;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{ConvertError, Result};
pub use proto::{ModelType, Piece, PieceType, SentencePieceModel};
pub use settings::{AddedToken, TokenizerSettings};

/// The SentencePiece space marker.
const SPACE: &str = "\u{2581}";

/// Merges for the BPE vocabulary, as transformers' `generate_merges(vocab)` derives them: for each
/// piece in id order, each split into two pieces, sorted by the halves' ids, then (stably) by the
/// halves' lengths in characters.
pub fn merges(pieces: &[Piece]) -> Vec<(&str, &str)> {
    let ids: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for p in pieces {
        let s = p.piece.as_str();
        let mut local: Vec<(usize, usize, &str, &str)> = s
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = s.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        local.sort_by_key(|&(_, _, l, r)| (l.chars().count(), r.chars().count()));
        out.extend(local.into_iter().map(|(_, _, l, r)| (l, r)));
    }
    out
}

/// The `tokenizer.json` of `model` with `settings`. Errors name what is missing; the caller adds the file.
pub fn tokenizer_json(
    model: &SentencePieceModel,
    settings: &TokenizerSettings,
) -> std::result::Result<Value, String> {
    if model.model_type != ModelType::Bpe {
        return Err(format!(
            "a SentencePiece {} model; only BPE models (the LLaMA 2 family's) convert to tokenizer.json, \
             so this checkpoint needs its own tokenizer.json",
            model.model_type.name()
        ));
    }
    if model.pieces.is_empty() {
        return Err("the model has no pieces".into());
    }
    let mut vocab = Map::new();
    for (id, p) in model.pieces.iter().enumerate() {
        if vocab.insert(p.piece.clone(), json!(id)).is_some() {
            return Err(format!("piece {id} `{}` occurs twice", p.piece));
        }
    }
    let id_of = |text: &str| {
        vocab.get(text).and_then(Value::as_u64).or_else(|| {
            settings
                .added_tokens
                .iter()
                .find(|t| t.content == text)
                .map(|t| u64::from(t.id))
        })
    };
    let mut special_tokens = Map::new();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut ends = |text: &str,
                    on: bool,
                    type_id: u32,
                    list: &mut Vec<Value>|
     -> std::result::Result<(), String> {
        if on {
            let id = id_of(text).ok_or_else(|| {
                format!("the special token `{text}` is neither a piece nor an added token")
            })?;
            special_tokens.insert(
                text.into(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            );
            list.push(json!({"SpecialToken": {"id": text, "type_id": type_id}}));
        }
        Ok(())
    };
    let (bos, eos) = (settings.bos_token.as_str(), settings.eos_token.as_str());
    for (type_id, seq) in [(0u32, "A"), (1, "B")] {
        ends(bos, settings.add_bos_token, type_id, &mut pair)?;
        pair.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        ends(eos, settings.add_eos_token, type_id, &mut pair)?;
        if type_id == 0 {
            single = pair.clone();
        }
    }

    let unk = usize::try_from(model.unk_id)
        .ok()
        .and_then(|i| model.pieces.get(i))
        .filter(|p| p.kind == PieceType::Unknown)
        .map(|p| p.piece.clone());
    let prepend_scheme = match (settings.add_prefix_space, settings.legacy) {
        (false, _) => "never",
        (true, true) => "always",
        (true, false) => "first",
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if settings.add_prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let added: Vec<Value> = settings
        .added_tokens
        .iter()
        .map(|t| {
            json!({
                "id": t.id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special,
            })
        })
        .collect();
    let merges: Vec<Value> = merges(&model.pieces)
        .into_iter()
        .map(|(l, r)| json!([l, r]))
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Metaspace", "replacement": SPACE, "prepend_scheme": prepend_scheme, "split": false,
        },
        "post_processor": {
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens,
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// A `tokenizer.json` made from a checkpoint's `tokenizer.model`.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The JSON, pretty-printed.
    pub json: Vec<u8>,
    /// The model read.
    pub model: SentencePieceModel,
    /// Ways in which the result will tokenize differently from the SentencePiece library.
    pub warnings: Vec<String>,
}

/// Converts `dir/tokenizer.model` (with the folder's tokenizer_config.json, special_tokens_map.json and
/// added_tokens.json) into a `tokenizer.json`.
pub fn convert_folder(dir: &Path) -> Result<Converted> {
    let path = dir.join("tokenizer.model");
    let real = crate::source_file::checked(&path)?;
    let bytes = std::fs::read(real).map_err(|e| ConvertError::io(&path, e))?;
    let bad = |reason: String| ConvertError::Tokenizer {
        path: path.clone(),
        reason,
    };
    let model = SentencePieceModel::parse(&bytes)
        .map_err(|e| bad(format!("not a valid SentencePiece model: {e}")))?;
    if model.model_type != ModelType::Bpe {
        // Refused before the other files are read, whose checks would only obscure this.
        return Err(bad(tokenizer_json(&model, &dummy_settings()).unwrap_err()));
    }
    let settings = TokenizerSettings::read(dir, &model)?;
    let value = tokenizer_json(&model, &settings).map_err(bad)?;
    let mut warnings = Vec::new();
    if model.has_charsmap || model.remove_extra_whitespaces {
        warnings.push(format!(
            "{}: the model normalizes text (rule `{}`{}) before tokenizing; the tokenizer.json made from it \
             does not, as transformers' LlamaTokenizer does not, so ids differ from the sentencepiece \
             library's on text the normalization changes",
            path.display(),
            model.normalizer_name,
            if model.remove_extra_whitespaces {
                ", extra whitespace removed"
            } else {
                ""
            }
        ));
    }
    let json = serde_json::to_vec_pretty(&value).map_err(|e| bad(e.to_string()))?;
    Ok(Converted {
        json,
        model,
        warnings,
    })
}

fn dummy_settings() -> TokenizerSettings {
    TokenizerSettings {
        add_bos_token: false,
        add_eos_token: false,
        add_prefix_space: true,
        legacy: false,
        bos_token: String::new(),
        eos_token: String::new(),
        added_tokens: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str) -> Piece {
        Piece {
            piece: text.into(),
            score: 0.0,
            kind: PieceType::Normal,
        }
    }

    #[test]
    fn merges_follow_transformers_order() {
        let pieces: Vec<Piece> = ["▁", "t", "h", "e", "▁t", "he", "▁th", "▁the", "th"]
            .iter()
            .map(|t| piece(t))
            .collect();
        let got = merges(&pieces);
        // What transformers 5.23's generate_merges gives for this vocabulary. `▁th`: (▁, th) before
        // (▁t, h) by length although `▁t` has the lower id; `▁the`: (▁t, he) before (▁th, e).
        assert_eq!(
            got,
            vec![
                ("▁", "t"),
                ("h", "e"),
                ("▁", "th"),
                ("▁t", "h"),
                ("▁t", "he"),
                ("▁th", "e"),
                ("t", "h"),
            ]
        );
    }
}
