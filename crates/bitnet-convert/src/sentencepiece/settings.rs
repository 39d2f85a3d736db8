//! What a checkpoint's `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json` add to
//! its `tokenizer.model`: the BOS/EOS policy, the prefix space, and the added tokens, each checked
//! against the pieces (an added token's id must be its piece's, and the ids past the pieces must run on
//! without a gap, as the `tokenizers` library numbers them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::proto::{PieceType, SentencePieceModel};
use crate::checkpoint::read_json_opt;
use crate::error::{ConvertError, Result};

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
