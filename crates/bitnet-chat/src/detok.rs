//! Streaming detokenization: token ids in, one at a time; text out as soon as it is complete.
//!
//! Byte-level BPE (LLaMA 3's tokenizer) spreads a multi-byte UTF-8 character over several tokens: `你`
//! may arrive as one token with two of its bytes and a second with the third, and an emoji with a ZWJ
//! sequence as many more. Decoding each token alone would print replacement characters. [`Detokenizer`]
//! decodes a small window of recent ids with the tokenizer's own decoder (as Hugging Face's
//! `DecodeStream` and vLLM do) and emits the window's text up to its last complete character:
//!
//! - [`Detokenizer::push`] appends an id and returns the newly complete text (often empty while a
//!   character is incomplete);
//! - [`Detokenizer::finish`] returns what remains at the end of the stream, bytes that never formed a
//!   character decoded as U+FFFD, exactly as a one-shot decode prints them.
//!
//! The texts concatenated equal [`Tokenizer::decode`] of all the ids. The window holds the tokens since
//! the last complete character plus one token of context: decoders that treat the first token
//! specially (a leading-space strip) see the same first token in both decodes they compare, so the
//! difference is exactly the new text. A trailing run of U+FFFD is held back because it may still become
//! a character; the text before it cannot change when bytes are appended. The window is a couple of ids
//! on real text; on 20,000 random byte tokens it never exceeded 15.
//!
//! SentencePiece tokenizers with byte fallback (LLaMA 2's) spell a character that is not a piece as
//! `<0xNN>` tokens, and their `ByteFallback` decoder turns a whole run of such tokens into text at once:
//! the run's UTF-8, or one U+FFFD per byte if any byte of the run is invalid, so a later stray byte
//! turns characters already complete into U+FFFD. A run of byte tokens is therefore held back until the
//! next token that is not a byte (or [`Detokenizer::finish`]), and the context token is never a byte
//! token, which would join the next run. Such a run is a character or a few on real text.

use crate::{ChatError, Result, Tokenizer};

const REPLACEMENT: char = '\u{FFFD}';

/// Turns a stream of token ids into text, one piece per id.
#[derive(Debug)]
pub struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    /// The ids being decoded together: context first, then the ids not yet fully emitted.
    window: Vec<u32>,
    /// The prefix of the window's text already accounted for (the context's text plus what was
    /// emitted since).
    emitted: String,
    /// Leave special tokens (`<|eot_id|>`, reserved tokens) out of the text.
    skip_special: bool,
}

impl<'t> Detokenizer<'t> {
    /// A detokenizer for a stream of ids from `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &'t Tokenizer) -> Detokenizer<'t> {
        Detokenizer {
            tokenizer,
            window: Vec::new(),
            emitted: String::new(),
            skip_special: false,
        }
    }

    /// A detokenizer whose text leaves special tokens out, as generated text is shown to people (vLLM's
    /// `skip_special_tokens`): the texts concatenated equal [`Tokenizer::decode_text`] of all the ids.
    pub fn skipping_special(tokenizer: &'t Tokenizer) -> Detokenizer<'t> {
        Detokenizer {
            skip_special: true,
            ..Detokenizer::new(tokenizer)
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        if self.skip_special {
            self.tokenizer.decode_text(ids)
        } else {
            self.tokenizer.decode(ids)
        }
    }

    /// Appends `id` and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.window.push(id);
        if self.tokenizer.is_byte_token(id) {
            // The run of byte tokens this one extends decodes as one group: its text is known when
            // the run ends.
            return Ok(String::new());
        }
        let text = self.decode(&self.window)?;
        if !text.starts_with(self.emitted.as_str()) {
            return Err(ChatError::Detokenize {
                window: self.window.len(),
                emitted: self.emitted.clone(),
                text,
            });
        }
        let stable = text.trim_end_matches(REPLACEMENT).len();
        let out = if stable > self.emitted.len() {
            text[self.emitted.len()..stable].to_string()
        } else {
            String::new()
        };
        if stable == text.len() {
            // Every character is complete: keep the last id as context for the next decode.
            if self.window.len() > 1 {
                self.window.drain(..self.window.len() - 1);
                self.emitted = self.decode(&self.window)?;
            } else {
                self.emitted = text;
            }
        } else if stable > self.emitted.len() {
            self.emitted.push_str(&out);
        }
        Ok(out)
    }

    /// Ends the stream: returns the text still held back (incomplete bytes as U+FFFD) and resets the
    /// detokenizer for a new stream.
    pub fn finish(&mut self) -> Result<String> {
        let out = if self.window.is_empty() {
            String::new()
        } else {
            let text = self.decode(&self.window)?;
            match text.strip_prefix(self.emitted.as_str()) {
                Some(rest) => rest.to_string(),
                None => {
                    return Err(ChatError::Detokenize {
                        window: self.window.len(),
                        emitted: std::mem::take(&mut self.emitted),
                        text,
                    });
                }
            }
        };
        self.window.clear();
        self.emitted.clear();
        Ok(out)
    }

    /// Number of ids currently held in the decoding window (context included); small in steady state.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_format::TokenizerInfo;

    fn llama3() -> Tokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tokenizers/llama3/tokenizer.json");
        let json = std::fs::read(path).unwrap();
        Tokenizer::from_bytes(Some(&json), &TokenizerInfo::default()).unwrap()
    }

    #[test]
    fn split_character_waits_for_its_last_byte() {
        let tok = llama3();
        let ids = tok.encode_raw("你好").unwrap();
        let mut d = Detokenizer::new(&tok);
        let pieces: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
        assert_eq!(pieces.concat() + &d.finish().unwrap(), "你好");
        assert!(
            pieces.iter().all(|p| !p.contains(REPLACEMENT)),
            "{pieces:?}"
        );
    }

    #[test]
    fn finish_flushes_incomplete_bytes_as_replacement() {
        let tok = llama3();
        // The first token of a 4-byte emoji alone: incomplete bytes.
        let ids = tok.encode_raw("a😀").unwrap();
        let mut d = Detokenizer::new(&tok);
        let mut out = String::new();
        for &id in &ids[..ids.len() - 1] {
            out += &d.push(id).unwrap();
        }
        let rest = d.finish().unwrap();
        assert_eq!(out + &rest, tok.decode(&ids[..ids.len() - 1]).unwrap());
        assert!(rest.ends_with(REPLACEMENT), "{rest:?}");
        // Reset: a new stream starts clean.
        assert_eq!(d.window_len(), 0);
        assert_eq!(d.push(ids[0]).unwrap(), "a");
    }

    /// The 1bitLLM fixture's LLaMA-2-style SentencePiece tokenizer (the file transformers writes for it):
    /// `▁` for spaces, a leading space stripped, `<0xNN>` byte-fallback tokens.
    fn sentencepiece() -> Tokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/bitnet-1bitllm-tiny.tokenizer.json-reference");
        let json = std::fs::read(path).unwrap();
        Tokenizer::from_bytes(Some(&json), &TokenizerInfo::default()).unwrap()
    }

    /// Streams `ids` one by one; returns the pieces, the last one being what `finish` flushed.
    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut d = Detokenizer::new(tok);
        let mut pieces: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
        pieces.push(d.finish().unwrap());
        pieces
    }

    #[test]
    fn sentencepiece_stream_equals_decode_on_every_case() {
        let tok = sentencepiece();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tokenizer-cases-sentencepiece.json");
        let cases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            for key in ["ids", "ids_add_special_tokens"] {
                let ids: Vec<u32> = case[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                let text = tok.decode(&ids).unwrap();
                assert_eq!(
                    stream(&tok, &ids).concat(),
                    text,
                    "{key} of {:?}",
                    case["text"]
                );
            }
        }
    }

    #[test]
    fn byte_fallback_characters_wait_for_their_last_byte() {
        let tok = sentencepiece();
        // `▁` (the dummy prefix), six `<0xNN>` tokens (neither character is a piece of the tiny
        // vocabulary), then `▁a`.
        let ids = tok.encode_raw("你好 a").unwrap();
        assert_eq!(ids.len(), 8);
        assert!(ids[1..7].iter().all(|&id| tok.is_byte_token(id)));
        assert!(!tok.is_byte_token(ids[0]) && !tok.is_byte_token(ids[7]));
        let pieces = stream(&tok, &ids);
        assert!(
            pieces.iter().all(|p| !p.contains(REPLACEMENT)),
            "{pieces:?}"
        );
        assert_eq!(pieces.concat(), "你好 a");
        // The held bytes come out with the next token that is not a byte.
        assert_eq!(pieces[7], "你好 a");
    }

    #[test]
    fn an_invalid_byte_spoils_its_whole_run_as_in_a_one_shot_decode() {
        let tok = sentencepiece();
        // `ByteFallback` decodes a run of byte tokens as one group, all U+FFFD if any byte is invalid:
        // "你" followed by a lone 0xFD byte is four U+FFFD, so "你" must not have been printed before.
        let mut ids = tok.encode_raw("你").unwrap();
        ids.push(tok.token_id("<0xFD>").unwrap());
        ids.extend(tok.encode_raw("a").unwrap());
        let text = tok.decode(&ids).unwrap();
        assert_eq!(text, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD} a");
        assert_eq!(stream(&tok, &ids).concat(), text);
    }

    #[test]
    fn random_sentencepiece_streams_equal_decode() {
        let tok = sentencepiece();
        // Ids drawn from the whole vocabulary, bytes (3..=258) half the time: runs of bytes that are
        // valid, invalid and cut short, next to spaces, pieces and special tokens.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..500 {
            let ids: Vec<u32> = (0..1 + next(24))
                .map(|_| if next(2) == 0 { 3 + next(256) } else { next(500) } as u32)
                .collect();
            assert_eq!(
                stream(&tok, &ids).concat(),
                tok.decode(&ids).unwrap(),
                "{ids:?}"
            );
        }
    }

    #[test]
    fn window_stays_small() {
        let tok = llama3();
        let ids = tok.encode_raw(&"The quick brown fox. ".repeat(50)).unwrap();
        let mut d = Detokenizer::new(&tok);
        for &id in &ids {
            d.push(id).unwrap();
            assert!(d.window_len() <= 2);
        }
    }

    #[test]
    fn skipping_special_leaves_special_tokens_out_and_keeps_the_rest() {
        let tok = llama3();
        let ids = tok
            .encode_raw("Hi<|eot_id|> there<|reserved_special_token_5|>, 你好")
            .unwrap();
        assert!(ids.contains(&128009));
        let mut d = Detokenizer::skipping_special(&tok);
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&d.push(id).unwrap());
        }
        text.push_str(&d.finish().unwrap());
        assert_eq!(text, tok.decode_text(&ids).unwrap());
        assert_eq!(text, "Hi there, 你好");
    }
}
