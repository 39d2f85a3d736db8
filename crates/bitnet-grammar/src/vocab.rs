//! The bytes each token stands for: what llguidance matches grammars against.
//!
//! A Hugging Face vocabulary stores token *names*, not bytes, and how a name maps to bytes depends on
//! the decoder:
//!
//! - **byte-level BPE** (GPT-2, LLaMA 3: a `ByteLevel` decoder): every byte is written as one printable
//!   character (`Ġ` is a space, `Ċ` a newline); the name maps back character by character;
//! - **SentencePiece** (LLaMA 2, the 1bitLLM models: `Replace("▁", " ")` or `Metaspace` decoders, usually
//!   with `ByteFallback`): `▁` stands for a space, and `<0x0A>`-style tokens are single raw bytes.
//!
//! Decoding each token alone (`tokenizer.decode([id])`) is *not* the same: a SentencePiece decoder ends
//! with `Strip(1 leading space)`, so the lone token `▁` (a space) decodes to nothing, and a lone
//! `<0xE2>` is an incomplete UTF-8 sequence that decodes to U+FFFD. A grammar fed those bytes would
//! refuse `▁` where a space belongs, or accept `<0xE2>` as `�`. So the mapping here reads the decoder's
//! kind and inverts the name encoding itself; a test checks it against the tokenizer's own decoding of
//! each token after an anchor token, over whole vocabularies.
//!
//! Special tokens (`<|eot_id|>`, `</s>`) get llguidance's marker byte 0xFF in front: no text matches
//! them, only a grammar that names them.

use std::collections::HashMap;

use serde_json::Value;

use crate::GrammarError;

/// GPT-2's byte-to-character table, inverted: the byte each printable character of a byte-level
/// token name stands for.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// How a vocabulary's token names encode bytes, read from the decoder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NameEncoding {
    /// GPT-2 byte-level characters.
    ByteLevel,
    /// SentencePiece: `space` stands for ' ', and `<0xNN>` names are raw bytes when `byte_fallback`.
    SentencePiece { space: String, byte_fallback: bool },
}

/// Reads the decoder (as serialized JSON: some of the `tokenizers` types keep their fields private).
pub(crate) fn name_encoding(decoder: &Value) -> Result<NameEncoding, GrammarError> {
    let parts: Vec<&Value> = match decoder["type"].as_str() {
        Some("Sequence") => decoder["decoders"]
            .as_array()
            .map(|d| d.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![decoder],
        None => vec![],
    };
    let mut space = None;
    let mut byte_fallback = false;
    for d in &parts {
        match d["type"].as_str() {
            Some("ByteLevel") => return Ok(NameEncoding::ByteLevel),
            Some("ByteFallback") => byte_fallback = true,
            Some("Replace") if d["content"].as_str() == Some(" ") => {
                space = d["pattern"]["String"].as_str().map(str::to_string);
            }
            Some("Metaspace") => {
                space = d["replacement"].as_str().map(str::to_string);
            }
            _ => {}
        }
    }
    match space {
        Some(space) if !space.is_empty() => Ok(NameEncoding::SentencePiece {
            space,
            byte_fallback,
        }),
        _ if byte_fallback => Ok(NameEncoding::SentencePiece {
            space: "\u{2581}".into(),
            byte_fallback,
        }),
        _ => Err(GrammarError::Tokenizer(format!(
            "its decoder ({}) is neither byte-level (ByteLevel) nor SentencePiece (Replace '▁' or Metaspace, \
             ByteFallback), so the bytes of its tokens are unknown",
            serde_json::to_string(decoder).unwrap_or_default()
        ))),
    }
}

/// The raw byte of a `<0xNN>` byte-fallback token name.
fn fallback_byte(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// The bytes of every id below `n_logits` (the model's logits, which may outnumber the vocabulary):
/// ids without a token get an empty entry (never allowed), special tokens the 0xFF marker.
pub(crate) fn token_bytes(
    hf: &tokenizers::Tokenizer,
    n_logits: usize,
) -> Result<Vec<Vec<u8>>, GrammarError> {
    let decoder = serde_json::to_value(hf.get_decoder())
        .map_err(|e| GrammarError::Tokenizer(format!("its decoder does not serialize: {e}")))?;
    let encoding = name_encoding(&decoder)?;
    let chars = byte_level_chars();
    let mut bytes = vec![Vec::new(); n_logits];
    let added = hf.get_added_tokens_decoder();
    for (name, id) in hf.get_vocab(false) {
        let Some(slot) = bytes.get_mut(id as usize) else {
            continue;
        };
        if added.contains_key(&id) {
            continue;
        }
        *slot = match &encoding {
            NameEncoding::ByteLevel => name
                .chars()
                .map(|c| chars.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    GrammarError::Tokenizer(format!(
                        "token {id} ({name:?}) has a character outside the byte-level alphabet"
                    ))
                })?,
            NameEncoding::SentencePiece {
                space,
                byte_fallback,
            } => match fallback_byte(&name) {
                Some(b) if *byte_fallback => vec![b],
                _ => name.replace(space.as_str(), " ").into_bytes(),
            },
        };
    }
    for (id, token) in added {
        let Some(slot) = bytes.get_mut(id as usize) else {
            continue;
        };
        *slot = if token.special {
            let mut b = vec![llguidance::toktrie::TokTrie::SPECIAL_TOKEN_MARKER];
            b.extend_from_slice(token.content.as_bytes());
            b
        } else {
            token.content.into_bytes()
        };
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_byte_level_table_is_a_bijection_with_gpt2s_known_points() {
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        let mut seen: Vec<u8> = m.values().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'A'], b'A');
    }

    #[test]
    fn decoders_are_read_for_their_space_and_byte_tokens() {
        let sp = json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
        assert_eq!(
            name_encoding(&sp).unwrap(),
            NameEncoding::SentencePiece {
                space: "▁".into(),
                byte_fallback: true
            }
        );
        let meta = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
        assert_eq!(
            name_encoding(&meta).unwrap(),
            NameEncoding::SentencePiece {
                space: "▁".into(),
                byte_fallback: false
            }
        );
        assert_eq!(
            name_encoding(&json!({"type": "ByteLevel"})).unwrap(),
            NameEncoding::ByteLevel
        );
        let err = name_encoding(&json!({"type": "WordPiece", "prefix": "##"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WordPiece"), "{err}");
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xZZ>"), None);
        assert_eq!(fallback_byte("<0x0A0>"), None);
    }
}
