//! The bytes the grammar engine gives each token agree with the tokenizer's own decoding, over whole
//! vocabularies: the real LLaMA 3 one (byte-level BPE) and the SentencePiece one transformers builds
//! for the 1bitLLM fixture (byte fallback, `▁` for spaces, a decoder that strips the first space).

use std::path::PathBuf;

use bitnet_grammar::GrammarEngine;

fn tokenizer(path: &str) -> tokenizers::Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path);
    tokenizers::Tokenizer::from_file(&p).unwrap()
}

const SPECIAL_MARKER: u8 = 0xFF;

/// Whether the engine marks `bytes` as a special token: the marker and a name after it. The byte token
/// 0xFF alone (`<0xFF>`, `ÿ`) is one byte 0xFF too; no UTF-8 text contains that byte, so no grammar over
/// text allows it either way.
fn is_special(bytes: &[u8]) -> bool {
    bytes.len() > 1 && bytes[0] == SPECIAL_MARKER
}

#[test]
fn llama3_token_bytes_are_what_the_tokenizer_decodes() {
    let hf = tokenizer("tokenizers/llama3/tokenizer.json");
    let n = hf.get_vocab_size(true);
    assert_eq!(n, 128_256);
    let eot = hf.token_to_id("<|eot_id|>").unwrap();
    let engine = GrammarEngine::new(&hf, &[128_001, eot], n).unwrap();
    let (mut text_checked, mut partial_utf8, mut special) = (0, 0, 0);
    for id in 0..n as u32 {
        let bytes = engine.token_bytes(id);
        assert!(!bytes.is_empty(), "token {id} has no bytes");
        if is_special(bytes) {
            special += 1;
            assert_eq!(&bytes[1..], hf.id_to_token(id).unwrap().as_bytes());
            continue;
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                assert_eq!(hf.decode(&[id], false).unwrap(), s, "token {id}");
                text_checked += 1;
            }
            // Part of a multi-byte character: decoding it alone gives U+FFFD, so check it after
            // its own complement instead where one exists (here: only that it is not empty).
            Err(_) => partial_utf8 += 1,
        }
    }
    eprintln!(
        "{text_checked} tokens checked as text, {partial_utf8} partial UTF-8, {special} special"
    );
    assert_eq!(special, 256);
    assert!(text_checked > 120_000, "{text_checked}");
    // A space, a newline and a word with its leading space.
    let id = |t: &str| hf.token_to_id(t).unwrap();
    assert_eq!(engine.token_bytes(id("Ġ")), b" ");
    assert_eq!(engine.token_bytes(id("Ċ")), b"\n");
    assert_eq!(engine.token_bytes(id("Ġthe")), b" the");
}

#[test]
fn sentencepiece_token_bytes_are_what_the_tokenizer_decodes_after_an_anchor() {
    let hf = tokenizer("bitnet-1bitllm-tiny.tokenizer.json-reference");
    let n = hf.get_vocab_size(true);
    let engine = GrammarEngine::new(&hf, &[2], n).unwrap();
    // Decoding a token alone strips its leading space (the decoder's `Strip`), so each token is
    // decoded after an anchor token and the anchor's text cut off.
    let anchor = hf.token_to_id("a").unwrap();
    let (mut checked, mut bytes_tokens) = (0, 0);
    for id in 0..n as u32 {
        let bytes = engine.token_bytes(id);
        let name = hf.id_to_token(id).unwrap();
        if is_special(bytes) {
            assert!(
                ["<unk>", "<s>", "</s>", "<pad>", "</line>"].contains(&name.as_str()),
                "{name}"
            );
            continue;
        }
        if name.starts_with("<0x") {
            bytes_tokens += 1;
            assert_eq!(bytes.len(), 1, "{name}");
            if bytes[0] >= 0x80 {
                continue; // one byte of a multi-byte character: no text of its own
            }
        }
        let text = hf.decode(&[anchor, id], false).unwrap();
        assert_eq!(
            text.strip_prefix('a').unwrap().as_bytes(),
            bytes,
            "token {id} {name:?}"
        );
        checked += 1;
    }
    assert_eq!(bytes_tokens, 256);
    assert!(checked > 200, "{checked}");
    // The lone space piece: decoding it alone gives "", which is why it must not be read that way.
    let space = hf.token_to_id("\u{2581}").unwrap();
    assert_eq!(hf.decode(&[space], false).unwrap(), "");
    assert_eq!(engine.token_bytes(space), b" ");
}
