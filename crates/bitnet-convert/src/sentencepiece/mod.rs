//! A SentencePiece `tokenizer.model` turned into the Hugging Face `tokenizer.json` that transformers'
//! `LlamaTokenizer` builds from it, for checkpoints that ship only the SentencePiece model (LLaMA 2 and
//! the models that reuse its tokenizer, such as 1bitLLM's BitNet b1.58).
//!
//! 1. [`proto::SentencePieceModel::parse`] reads the few fields of the protobuf that matter (pieces,
//!    model type, byte fallback, the special ids, the normalizer's settings) with a small bounds-checked
//!    reader. Only BPE models, the LLaMA 2 family's, are converted; a Unigram, word or char model is
//!    refused, since its `tokenizer.json` is a different model.
//! 2. [`TokenizerSettings::read`] reads the checkpoint's `tokenizer_config.json`,
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::checkpoint::read_json_opt;
use crate::error::{ConvertError, Result};
pub use proto::{ModelType, Piece, PieceType, SentencePieceModel};

/// The SentencePiece space marker.
const SPACE: &str = "\u{2581}";

/// A token the tokenizer matches in text before the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub content: String,
    /// Whether it is a special token (skipped by `decode(skip_special_tokens)`).
    pub special: bool,
    /// Whether it swallows the spaces on its left.
    pub lstrip: bool,
    /// Whether it swallows the spaces on its right.
    pub rstrip: bool,
    /// Whether it only matches a whole word.
    pub single_word: bool,
    /// Whether it is matched in normalized text.
    pub normalized: bool,
    /// The file that declared it (for error messages).
    pub declared_in: PathBuf,
}

/// What the checkpoint's tokenizer files say beyond `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerSettings {
    /// Whether `<s>` starts an encoding (`add_bos_token`, default true).
    pub add_bos_token: bool,
    /// Whether `</s>` ends one (`add_eos_token`, default false).
    pub add_eos_token: bool,
    /// Whether a `▁` is put in front of the text (`add_prefix_space`; default: the model's
    /// `add_dummy_prefix`).
    pub add_prefix_space: bool,
    /// transformers' `legacy` flag (default false): true puts the `▁` in front of every text segment
    /// between added tokens, false only in front of the first.
    pub legacy: bool,
    /// The BOS token's text.
    pub bos_token: String,
    /// The EOS token's text.
    pub eos_token: String,
    /// Added tokens by id, checked against the pieces.
    pub added_tokens: Vec<AddedToken>,
}

/// The text of a special token in tokenizer_config.json / special_tokens_map.json: a string or
/// `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

impl TokenizerSettings {
    /// Reads `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json` in `dir` (each
    /// optional) for `model`.
    pub fn read(dir: &Path, model: &SentencePieceModel) -> Result<TokenizerSettings> {
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json_opt(&tc_path)?.unwrap_or(Value::Null);
        let map_path = dir.join("special_tokens_map.json");
        let map = read_json_opt(&map_path)?.unwrap_or(Value::Null);
        let added_path = dir.join("added_tokens.json");
        let added_json = read_json_opt(&added_path)?;

        let piece_text = |id: i32| {
            usize::try_from(id)
                .ok()
                .and_then(|i| model.pieces.get(i))
                .map(|p| p.piece.clone())
        };
        let named = |key: &str| token_text(tc.get(key)).or_else(|| token_text(map.get(key)));
        let bos_token = named("bos_token")
            .or_else(|| piece_text(model.bos_id))
            .unwrap_or_else(|| "<s>".into());
        let eos_token = named("eos_token")
            .or_else(|| piece_text(model.eos_id))
            .unwrap_or_else(|| "</s>".into());
        let mut special_names: HashSet<String> =
            ["bos_token", "eos_token", "unk_token", "pad_token"]
                .iter()
                .filter_map(|k| named(k))
                .collect();
        for v in [&tc, &map] {
            if let Some(list) = v.get("additional_special_tokens").and_then(Value::as_array) {
                special_names.extend(list.iter().filter_map(|t| token_text(Some(t))));
            }
        }

        let mut tokens = AddedTokens::new(model);
        if let Some(decoder) = tc.get("added_tokens_decoder") {
            let obj = decoder.as_object().ok_or_else(|| {
                ConvertError::field(
                    &tc_path,
                    "added_tokens_decoder",
                    "expected an object id -> token",
                )
            })?;
            for (key, t) in obj {
                let field = format!("added_tokens_decoder.{key}");
                let id = key.parse::<u32>().map_err(|_| {
                    ConvertError::field(&tc_path, &field, "the key is not a token id")
                })?;
                let content = t.get("content").and_then(Value::as_str).ok_or_else(|| {
                    ConvertError::field(
                        &tc_path,
                        &field,
                        "expected an object with a `content` string",
                    )
                })?;
                let token = AddedToken {
                    id,
                    content: content.to_string(),
                    special: flag(t, "special", false),
                    lstrip: flag(t, "lstrip", false),
                    rstrip: flag(t, "rstrip", false),
                    single_word: flag(t, "single_word", false),
                    normalized: flag(t, "normalized", false),
                    declared_in: tc_path.clone(),
                };
                tokens
                    .insert(token, true)
                    .map_err(|r| ConvertError::field(&tc_path, &field, r))?;
            }
        }
        if let Some(added) = added_json {
            let obj = added.as_object().ok_or_else(|| {
                ConvertError::field(&added_path, "(top level)", "expected an object token -> id")
            })?;
            for (content, id) in obj {
                let id = id
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        ConvertError::field(&added_path, content, "expected a token id")
                    })?;
                let token = AddedToken {
                    id,
                    content: content.clone(),
                    special: special_names.contains(content),
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                    normalized: false,
                    declared_in: added_path.clone(),
                };
                tokens
                    .insert(token, false)
                    .map_err(|r| ConvertError::field(&added_path, content, r))?;
            }
        }
        let added_tokens = tokens.finish()?;
        Ok(TokenizerSettings {
            add_bos_token: flag(&tc, "add_bos_token", true),
            add_eos_token: flag(&tc, "add_eos_token", false),
            add_prefix_space: flag(&tc, "add_prefix_space", model.add_dummy_prefix),
            legacy: flag(&tc, "legacy", false),
            bos_token,
            eos_token,
            added_tokens,
        })
    }
}

/// The added tokens being collected, by id.
struct AddedTokens<'m> {
    model: &'m SentencePieceModel,
    piece_ids: HashMap<&'m str, u32>,
    by_id: BTreeMap<u32, AddedToken>,
}

impl<'m> AddedTokens<'m> {
    /// Starts with the model's own special pieces: `<unk>` and the control symbols are special added
    /// tokens, user-defined symbols ordinary ones (as transformers' extractor makes them).
    fn new(model: &'m SentencePieceModel) -> AddedTokens<'m> {
        let mut by_id = BTreeMap::new();
        for (id, p) in model.pieces.iter().enumerate() {
            let special = match p.kind {
                PieceType::Unknown | PieceType::Control => true,
                PieceType::UserDefined => false,
                _ => continue,
            };
            by_id.insert(
                id as u32,
                AddedToken {
                    id: id as u32,
                    content: p.piece.clone(),
                    special,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                    normalized: false,
                    declared_in: PathBuf::from("tokenizer.model"),
                },
            );
        }
        let piece_ids = model
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.as_str(), i as u32))
            .collect();
        AddedTokens {
            model,
            piece_ids,
            by_id,
        }
    }

    /// Adds `t`; `overrides` lets its flags replace those of an entry with the same id and text.
    fn insert(&mut self, t: AddedToken, overrides: bool) -> std::result::Result<(), String> {
        let n = self.model.pieces.len() as u32;
        if let Some(&pid) = self.piece_ids.get(t.content.as_str())
            && pid != t.id
        {
            return Err(format!(
                "token `{}` has id {}, but it is piece {pid} of tokenizer.model",
                t.content, t.id
            ));
        }
        if t.id < n && self.model.pieces[t.id as usize].piece != t.content {
            return Err(format!(
                "id {} is `{}`, but piece {} of tokenizer.model is `{}`",
                t.id, t.content, t.id, self.model.pieces[t.id as usize].piece
            ));
        }
        if let Some(other) = self
            .by_id
            .values()
            .find(|o| o.content == t.content && o.id != t.id)
        {
            return Err(format!(
                "token `{}` has id {}, but {} gives it id {}",
                t.content,
                t.id,
                other.declared_in.display(),
                other.id
            ));
        }
        match self.by_id.get(&t.id) {
            Some(old) if old.content != t.content => Err(format!(
                "id {} is `{}`, but {} gives that id to `{}`",
                t.id,
                t.content,
                old.declared_in.display(),
                old.content
            )),
            Some(_) if !overrides => Ok(()),
            _ => {
                self.by_id.insert(t.id, t);
                Ok(())
            }
        }
    }

    /// The tokens in id order. Those past the pieces must follow them without a gap: the `tokenizers`
    /// library gives an added token that is not a piece the next free id, whatever the file says.
    fn finish(self) -> Result<Vec<AddedToken>> {
        let n = self.model.pieces.len() as u32;
        for (next, t) in (n..).zip(self.by_id.values().filter(|t| t.id >= n)) {
            if t.id != next {
                return Err(ConvertError::field(
                    &t.declared_in,
                    &t.content,
                    format!(
                        "added token id {} leaves a gap: the ids after the {} pieces of tokenizer.model must \
                         run on without one, so the next id is {next}",
                        t.id,
                        self.model.pieces.len()
                    ),
                ));
            }
        }
        Ok(self.by_id.into_values().collect())
    }
}

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
    let bytes = std::fs::read(&path).map_err(|e| ConvertError::io(&path, e))?;
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
