//! The tokenizer of a GGUF file (`tokenizer.ggml.*`) as a Hugging Face `tokenizer.json`, and back.
//!
//! GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) as its token strings, token
//! types and merges, and names the pre-tokenizer (`tokenizer.ggml.pre`) instead of storing its regex.
//! Rebuilding `tokenizer.json` therefore maps each known name to the split regex llama.cpp uses for it:
//!
//! | `tokenizer.ggml.pre` | split regex | BPE `ignore_merges` |
//! |---|---|---|
//! | `llama-bpe`, `llama3`, `llama-v3`, `falcon3` | LLaMA 3's | true (as llama.cpp) |
//! | `falcon_e` | LLaMA 3's, with a warning: upstream llama.cpp does not know the name; ik_llama.cpp reads it as LLaMA 3's, bitnet.cpp's fork as Falcon's | true |
//! | `gpt2` | GPT-2's (`ByteLevel` with its own regex) | false |
//! | absent, with `<\|begin_of_text\|>` in the vocabulary (Microsoft's 2B4T file) | LLaMA 3's, with a note | true |
//!
//! Any other name is refused (naming the field and the known names): tokenizing with a guessed regex
//! would silently give other ids than the model was trained on. Token types 2 (unknown), 3 (control) and
//! 4 (user-defined) become added tokens, special for 2 and 3, so they are matched whole in text.
//!
//! LLaMA 2's SentencePiece BPE (`tokenizer.ggml.model = llama`, 1bitLLM) is rebuilt as transformers'
//! `LlamaTokenizer` builds it from a `tokenizer.model` ([`crate::sentencepiece`]).

use std::collections::HashMap;
use std::path::Path;

use bitnet_format::TokenizerInfo;
use bitnet_gguf::{GgufFile, Value, ValueType};
use serde_json::{Value as Json, json};

use crate::error::{ConvertError, Result};

/// LLaMA 3's pre-tokenizer split (as its `tokenizer.json` writes it).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the rebuilt tokenizer needs besides `tokenizer.json`.
pub struct Vocab {
    /// The `tokenizer.json` bytes.
    pub json: Vec<u8>,
    /// BOS, end ids, chat template.
    pub info: TokenizerInfo,
}

fn field(path: &Path, key: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError::field(path, key, reason)
}

fn strings(file: &GgufFile, path: &Path, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    match v {
        Value::Array(ValueType::String, items) => Ok(Some(
            items
                .iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect(),
        )),
        other => Err(field(
            path,
            key,
            format!(
                "expected an array of strings, found {:?}",
                other.value_type()
            ),
        )),
    }
}

fn token_id(file: &GgufFile, path: &Path, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
        _ => Err(field(
            path,
            key,
            format!("{v:?} is not a token id (the vocabulary has {n_tokens} tokens)"),
        )),
    }
}

/// Rebuilds `tokenizer.json` and the tokenizer metadata from a GGUF file's `tokenizer.ggml.*` keys.
pub fn from_gguf(
    file: &GgufFile,
    path: &Path,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vocab> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            field(
                path,
                "tokenizer.ggml.model",
                "missing: the file carries no tokenizer",
            )
        })?;
    if model != "gpt2" && model != "llama" {
        return Err(field(
            path,
            "tokenizer.ggml.model",
            format!(
                "`{model}` is not read; this build rebuilds byte-level BPE vocabularies (`gpt2`: LLaMA 3, \
                 Falcon3, 2B4T) and LLaMA 2's SentencePiece BPE (`llama`: 1bitLLM). Convert the Hugging Face \
                 folder instead, whose tokenizer files are used as they are"
            ),
        ));
    }
    let tokens = strings(file, path, "tokenizer.ggml.tokens")?
        .ok_or_else(|| field(path, "tokenizer.ggml.tokens", "missing"))?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .filter(|a| a.len() == tokens.len())
            .map(|a| a.iter().map(|t| t.as_i64().unwrap_or(1)).collect())
            .ok_or_else(|| {
                field(
                    path,
                    "tokenizer.ggml.token_type",
                    format!("expected {} integers", tokens.len()),
                )
            })?,
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        if let Some(prev) = seen.insert(t, id) {
            return Err(field(
                path,
                "tokenizer.ggml.tokens",
                format!("token {t:?} appears twice (ids {prev} and {id})"),
            ));
        }
    }
    let has = |t: &str| seen.get(t).map(|&i| i as u32);
    let json = if model == "llama" {
        sentencepiece_json(file, path, &tokens, &types)?
    } else {
        bpe_json(file, path, &tokens, &types, &has, warnings, notes)?
    };
    special_ids(file, path, json, tokens.len(), &has)
}

/// LLaMA 2's SentencePiece BPE (`tokenizer.ggml.model = llama`) as transformers' `LlamaTokenizer` builds its
/// `tokenizer.json` ([`crate::sentencepiece`]): the pieces are the tokens up to the last one that is not
/// user-defined; the user-defined tokens after them (`<pad>`, `</line>` of `added_tokens.json`, which
/// llama.cpp's converter appends) and the unknown and control pieces are added tokens; byte fallback when the vocabulary has byte tokens; the
/// prefix space from `tokenizer.ggml.add_space_prefix` (default true), put in front of the first segment only
/// (transformers' `legacy: false`; GGUF does not record the flag). Merges are derived from the vocabulary, as
/// transformers does for a BPE `tokenizer.model`.
fn sentencepiece_json(
    file: &GgufFile,
    path: &Path,
    tokens: &[String],
    types: &[i64],
) -> Result<Vec<u8>> {
    use crate::sentencepiece::{
        self as sp, AddedToken, ModelType, Piece, PieceType, SentencePieceModel, TokenizerSettings,
    };
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        None => vec![0.0; tokens.len()],
        Some(v) => v
            .as_array()
            .filter(|a| a.len() == tokens.len())
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
            .ok_or_else(|| {
                field(
                    path,
                    "tokenizer.ggml.scores",
                    format!("expected {} numbers", tokens.len()),
                )
            })?,
    };
    let n_pieces = types.iter().rposition(|&t| t != 4).map_or(0, |i| i + 1);
    let kind = |t: i64| match t {
        2 => PieceType::Unknown,
        3 => PieceType::Control,
        4 => PieceType::UserDefined,
        5 => PieceType::Unused,
        6 => PieceType::Byte,
        _ => PieceType::Normal,
    };
    let pieces: Vec<Piece> = (0..n_pieces)
        .map(|i| Piece {
            piece: tokens[i].clone(),
            score: scores[i],
            kind: kind(types[i]),
        })
        .collect();
    let id = |key: &str| {
        file.get(key)
            .and_then(Value::as_i64)
            .filter(|&i| (0..tokens.len() as i64).contains(&i))
    };
    let flag = |key: &str, default: bool| file.get(key).and_then(Value::as_bool).unwrap_or(default);
    let text = |i: Option<i64>| i.map(|i| tokens[i as usize].clone()).unwrap_or_default();
    let prefix = flag("tokenizer.ggml.add_space_prefix", true);
    let model = SentencePieceModel {
        pieces,
        model_type: ModelType::Bpe,
        byte_fallback: types.contains(&6),
        unk_id: id("tokenizer.ggml.unknown_token_id")
            .or_else(|| types.iter().position(|&t| t == 2).map(|i| i as i64))
            .map_or(-1, |i| i as i32),
        bos_id: id("tokenizer.ggml.bos_token_id").map_or(-1, |i| i as i32),
        eos_id: id("tokenizer.ggml.eos_token_id").map_or(-1, |i| i as i32),
        normalizer_name: "identity".into(),
        has_charsmap: false,
        add_dummy_prefix: prefix,
        remove_extra_whitespaces: false,
    };
    let settings = TokenizerSettings {
        add_bos_token: flag("tokenizer.ggml.add_bos_token", true),
        add_eos_token: flag("tokenizer.ggml.add_eos_token", false),
        add_prefix_space: prefix,
        legacy: false,
        bos_token: text(id("tokenizer.ggml.bos_token_id")),
        eos_token: text(id("tokenizer.ggml.eos_token_id")),
        // transformers' LlamaTokenizer registers `<unk>`, `<s>` and `</s>` as special added tokens, so they
        // are matched whole in text; so are the user-defined tokens appended after the pieces.
        added_tokens: (0..tokens.len())
            .filter(|&i| i >= n_pieces || matches!(types[i], 2 | 3))
            .map(|i| AddedToken {
                id: i as u32,
                content: tokens[i].clone(),
                special: true,
                lstrip: false,
                rstrip: false,
                single_word: false,
                normalized: false,
                declared_in: path.to_path_buf(),
            })
            .collect(),
    };
    let value = sp::tokenizer_json(&model, &settings)
        .map_err(|e| field(path, "tokenizer.ggml.tokens", e))?;
    Ok(serde_json::to_vec(&value).expect("JSON values serialize"))
}

/// A byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) as a `tokenizer.json` (module overview).
fn bpe_json(
    file: &GgufFile,
    path: &Path,
    tokens: &[String],
    types: &[i64],
    has: &dyn Fn(&str) -> Option<u32>,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let merges = strings(file, path, "tokenizer.ggml.merges")?.ok_or_else(|| {
        field(
            path,
            "tokenizer.ggml.merges",
            "missing (a BPE vocabulary needs its merges)",
        )
    })?;
    let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str);
    let (split, ignore_merges) = match pre {
        Some("llama-bpe" | "llama3" | "llama-v3" | "falcon3") => (Some(LLAMA3_REGEX), true),
        Some("falcon_e") => {
            warnings.push(
                "tokenizer.ggml.pre `falcon_e` names no regex upstream llama.cpp knows; it is read as LLaMA 3's \
                 split (as ik_llama.cpp does; bitnet.cpp's fork uses Falcon's). For tokenization exactly as \
                 trained, convert the Hugging Face folder, whose tokenizer.json is used as is"
                    .into(),
            );
            (Some(LLAMA3_REGEX), true)
        }
        Some("gpt2") => (None, false),
        None if has("<|begin_of_text|>").is_some() => {
            notes.push(
                "the file names no pre-tokenizer (tokenizer.ggml.pre); its vocabulary is LLaMA 3's, so LLaMA 3's \
                 split is used"
                    .into(),
            );
            (Some(LLAMA3_REGEX), true)
        }
        other => {
            return Err(field(
                path,
                "tokenizer.ggml.pre",
                format!(
                    "{} is not a pre-tokenizer this build knows (llama-bpe, llama3, falcon3, falcon_e, gpt2); \
                     tokenizing with a guessed split would give other ids than the model was trained on. \
                     Convert the Hugging Face folder instead",
                    other.map_or("absent".to_string(), |p| format!("`{p}`"))
                ),
            ));
        }
    };
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(ty, 2..=4))
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty != 4})
        })
        .collect();
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match split {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        None => byte_level(true),
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
    });
    Ok(serde_json::to_vec(&tokenizer).expect("JSON values serialize"))
}

/// BOS, end ids, BOS policy and chat template, with the `tokenizer.json` made from the vocabulary.
fn special_ids(
    file: &GgufFile,
    path: &Path,
    json: Vec<u8>,
    n: usize,
    has: &dyn Fn(&str) -> Option<u32>,
) -> Result<Vocab> {
    let bos = token_id(file, path, "tokenizer.ggml.bos_token_id", n)?;
    let mut eos_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = token_id(file, path, key, n)? {
            eos_ids.push(id);
        }
    }
    // As for a Hugging Face checkpoint (SPEC.md 6): LLaMA 3's end of turn and end of text always stop.
    // Microsoft's 2B4T file names neither as an end token.
    eos_ids.extend(
        ["<|eot_id|>", "<|end_of_text|>"]
            .iter()
            .filter_map(|t| has(t)),
    );
    let mut unique = Vec::new();
    for id in eos_ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| field(path, "tokenizer.ggml.add_bos_token", "expected a bool"))?,
        None => bos.is_some_and(|b| !unique.contains(&b)),
    };
    let chat_template = match file.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| field(path, "tokenizer.chat_template", "expected a string"))?
                .to_string(),
        ),
    };
    Ok(Vocab {
        json,
        info: TokenizerInfo {
            tokenizer_json: Some("tokenizer.json".into()),
            bos_token_id: bos,
            add_bos_token: add_bos,
            eos_token_ids: unique,
            pad_token_id: token_id(file, path, "tokenizer.ggml.padding_token_id", n)?,
            chat_template,
        },
    })
}
