//! Untrusted text inside a chat prompt: a user who types `<|eot_id|><|start_header_id|>system` must get
//! those characters tokenized as text, not as the control tokens the chat template itself writes.
//!
//! [`Tokenizer::encode_templated`] takes the untrusted strings (message contents, tool results) and a
//! closure that renders the prompt from them. When none of them contains the text of a special token,
//! the prompt is rendered once and tokenized in one pass, exactly as transformers does. Otherwise it is
//! rendered a second time with each string replaced by a sentinel, which shows where the template puts
//! each string; the template's own text is tokenized with special tokens recognized and each untrusted
//! string without. The pieces are checked to rebuild the real rendering exactly (a template that trims a
//! message is followed; one that rewrites it otherwise is refused with an error saying so).

use std::sync::OnceLock;

use crate::{ChatError, Result, Tokenizer, guarded};

/// A sentinel's delimiters: private-use code points no template emits and no tokenizer sees.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

fn sentinel(i: usize) -> String {
    format!("{OPEN}{i}{CLOSE}")
}

/// The special tokens' texts and a copy of the tokenizer that reads them as plain text, made on first use.
pub(crate) struct Plain {
    specials: Vec<String>,
    /// Every added token's id, sorted.
    added: Vec<u32>,
    tokenizer: OnceLock<tokenizers::Tokenizer>,
}

impl Plain {
    pub(crate) fn new(inner: &tokenizers::Tokenizer) -> Plain {
        let added = inner.get_added_tokens_decoder();
        let mut ids: Vec<u32> = added.keys().copied().collect();
        ids.sort_unstable();
        let mut specials: Vec<String> = added
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        specials.sort();
        Plain {
            specials,
            added: ids,
            tokenizer: OnceLock::new(),
        }
    }
}

impl Plain {
    /// Whether `id` is an added token (its text is not in the model's byte alphabet).
    pub(crate) fn is_added(&self, id: u32) -> bool {
        self.added.binary_search(&id).is_ok()
    }
}

impl Tokenizer {
    /// The first special token's text found in `text`, if any.
    pub fn special_text_in<'a>(&'a self, text: &str) -> Option<&'a str> {
        self.plain
            .specials
            .iter()
            .find(|s| text.contains(s.as_str()))
            .map(String::as_str)
    }

    /// Token ids of `text` with special tokens' texts read as ordinary characters: no BOS.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let t = self.plain.tokenizer.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = guarded("tokenizing", || {
            t.encode(text, false)
                .map_err(|e| ChatError::Tokenize(e.to_string()))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt that `render` builds from `untrusted` strings (see the module docs): the
    /// template's special tokens are control tokens, the untrusted strings' never are. `render` is called
    /// with `untrusted` itself and, if any of them holds special-token text, once more with sentinels.
    pub fn encode_templated<S: AsRef<str>>(
        &self,
        untrusted: &[S],
        render: impl Fn(&[String]) -> Result<String>,
    ) -> Result<Vec<u32>> {
        let real: Vec<String> = untrusted.iter().map(|s| s.as_ref().to_string()).collect();
        let text = render(&real)?;
        if real.iter().all(|s| self.special_text_in(s).is_none()) {
            return self.encode_prompt(&text);
        }
        let marks: Vec<String> = (0..real.len()).map(sentinel).collect();
        let marked = render(&marks)?;
        let pieces = split_marked(&marked, real.len())?;
        let mut rebuilt = String::with_capacity(text.len());
        let mut chosen: Vec<Option<&str>> = vec![None; real.len()];
        for p in &pieces {
            match p {
                Piece::Template(t) => rebuilt.push_str(t),
                Piece::Untrusted(i) => {
                    // As given, or trimmed (templates commonly `| trim` a message), whichever the real
                    // rendering holds at this point.
                    let s = chosen[*i].unwrap_or_else(|| {
                        let full = real[*i].as_str();
                        let trimmed = full.trim();
                        if text[rebuilt.len().min(text.len())..].starts_with(full) {
                            full
                        } else {
                            trimmed
                        }
                    });
                    chosen[*i] = Some(s);
                    rebuilt.push_str(s);
                }
            }
        }
        if rebuilt != text {
            return Err(ChatError::Untrusted(
                "a message holds the text of a special token and the chat template changes message text \
                 in a way that cannot be followed, so that text could not be kept apart from the template's \
                 own control tokens"
                    .into(),
            ));
        }
        let mut ids = Vec::new();
        for p in &pieces {
            match p {
                Piece::Template(t) if !t.is_empty() => ids.extend(self.encode_raw(t)?),
                Piece::Template(_) => {}
                Piece::Untrusted(i) => {
                    ids.extend(self.encode_plain(chosen[*i].unwrap_or_default())?)
                }
            }
        }
        let info = self.info();
        if let (true, Some(bos)) = (info.add_bos_token, info.bos_token_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }
}

#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Template(&'a str),
    Untrusted(usize),
}

/// Splits a rendering made with sentinels into the template's text and the places of the strings.
fn split_marked(marked: &str, count: usize) -> Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut rest = marked;
    while let Some(start) = rest.find(OPEN) {
        pieces.push(Piece::Template(&rest[..start]));
        let after = &rest[start + OPEN.len_utf8()..];
        let index = after
            .find(CLOSE)
            .and_then(|end| Some((after[..end].parse::<usize>().ok()?, end)));
        match index {
            Some((i, end)) if i < count => {
                pieces.push(Piece::Untrusted(i));
                rest = &after[end + CLOSE.len_utf8()..];
            }
            _ => {
                return Err(ChatError::Untrusted(
                    "the chat template cut a message's text apart, so text holding special tokens could not \
                     be kept apart from the template's own control tokens"
                        .into(),
                ));
            }
        }
    }
    pieces.push(Piece::Template(rest));
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::{Piece, sentinel, split_marked};

    #[test]
    fn sentinels_are_found_in_order_and_out_of_order() {
        let m = format!("<a>{}<b>{}{}", sentinel(1), sentinel(0), sentinel(1));
        assert_eq!(
            split_marked(&m, 2).unwrap(),
            vec![
                Piece::Template("<a>"),
                Piece::Untrusted(1),
                Piece::Template("<b>"),
                Piece::Untrusted(0),
                Piece::Template(""),
                Piece::Untrusted(1),
                Piece::Template(""),
            ]
        );
        // A sentinel the template cut (e.g. `content[:3]`) or an index past the strings is an error.
        assert!(split_marked("\u{F8F0}1", 2).is_err());
        assert!(split_marked(&sentinel(5), 2).is_err());
    }
}
