//! Streaming detokenization against one-shot `Tokenizer::decode`, on the tokenizer oracle's strings
//! (fixtures/tokenizer-cases.json), split at every token boundary, and on generated streams.

use std::path::PathBuf;

use bitnet_chat::{Detokenizer, Tokenizer};
use bitnet_format::TokenizerInfo;
use serde_json::Value;

const REPLACEMENT: char = '\u{FFFD}';

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(rel: &str) -> Tokenizer {
    let json = std::fs::read(root().join(rel)).unwrap();
    Tokenizer::from_bytes(Some(&json), &TokenizerInfo::default()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// Streams `ids`, checking after every id that exactly the complete part of the text so far has been
/// emitted (the one-shot decode of the prefix without its trailing U+FFFD run), and at the end that
/// everything equals the one-shot decode.
fn check_stream(tok: &Tokenizer, ids: &[u32], label: &str) {
    let mut d = Detokenizer::new(tok);
    let mut out = String::new();
    for (k, &id) in ids.iter().enumerate() {
        out += &d.push(id).unwrap();
        let prefix = tok.decode(&ids[..=k]).unwrap();
        assert_eq!(
            out,
            prefix.trim_end_matches(REPLACEMENT),
            "{label}: after {} of {} ids",
            k + 1,
            ids.len()
        );
    }
    out += &d.finish().unwrap();
    assert_eq!(out, tok.decode(ids).unwrap(), "{label}: whole stream");
}

/// Splits `ids` at `cut`: the first part streamed and finished must give the first part's one-shot
/// decode, and a stream that goes on past the cut must give the whole decode.
fn check_cut(tok: &Tokenizer, ids: &[u32], cut: usize, label: &str) {
    let mut d = Detokenizer::new(tok);
    let mut first = String::new();
    for &id in &ids[..cut] {
        first += &d.push(id).unwrap();
    }
    let mut rest = String::new();
    for &id in &ids[cut..] {
        rest += &d.push(id).unwrap();
    }
    rest += &d.finish().unwrap();
    assert_eq!(
        first.clone() + &rest,
        tok.decode(ids).unwrap(),
        "{label}: cut at {cut}"
    );

    let mut d = Detokenizer::new(tok);
    let mut alone = String::new();
    for &id in &ids[..cut] {
        alone += &d.push(id).unwrap();
    }
    alone += &d.finish().unwrap();
    assert_eq!(
        alone,
        tok.decode(&ids[..cut]).unwrap(),
        "{label}: first {cut} ids alone"
    );
}

#[test]
fn every_oracle_string_streams_to_its_decode_at_every_cut() {
    let cases: Value = serde_json::from_slice(
        &std::fs::read(root().join("fixtures/tokenizer-cases.json")).unwrap(),
    )
    .unwrap();
    let mut split_chars = 0;
    for key in ["llama3", "small"] {
        let set = &cases[key];
        let tok = load(set["tokenizer"].as_str().unwrap());
        for case in set["cases"].as_array().unwrap() {
            let label = format!("{key}: {:?}", case["text"].as_str().unwrap());
            for field in ["ids", "ids_add_special_tokens"] {
                let ids = ids(&case[field]);
                assert_eq!(
                    tok.decode(&ids).unwrap(),
                    case[field.replace("ids", "decoded")].as_str().unwrap(),
                    "{label}"
                );
                check_stream(&tok, &ids, &label);
                for cut in 0..=ids.len() {
                    check_cut(&tok, &ids, cut, &label);
                }
                // Count tokens that end inside a character: the cases must exercise that.
                for k in 1..ids.len() {
                    if tok.decode(&ids[..k]).unwrap().ends_with(REPLACEMENT) {
                        split_chars += 1;
                    }
                }
            }
        }
    }
    assert!(
        split_chars >= 10,
        "only {split_chars} token boundaries split a character"
    );
}

/// SplitMix64 (rand_xoshiro's), for reproducible streams.
struct Rng(rand_xoshiro::SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        use rand_xoshiro::rand_core::SeedableRng;
        Rng(rand_xoshiro::SplitMix64::seed_from_u64(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        use rand_xoshiro::rand_core::RngCore;
        (self.0.next_u64() % n as u64) as usize
    }
}

#[test]
fn model_generations_stream_to_their_decode() {
    let tok = load("fixtures/tokenizers/llama3/tokenizer.json");
    let oracle: Value = serde_json::from_slice(
        &std::fs::read(root().join("fixtures/bitnet-llama3-tiny.generate.json")).unwrap(),
    )
    .unwrap();
    for p in oracle["prompts"].as_array().unwrap() {
        let generated = ids(&p["generated_ids"]);
        check_stream(&tok, &generated, "generation");
        let mut d = Detokenizer::new(&tok);
        let mut text = String::new();
        for &id in &generated {
            text += &d.push(id).unwrap();
        }
        text += &d.finish().unwrap();
        assert_eq!(text, p["generated_text"].as_str().unwrap());
    }
}

#[test]
fn random_streams_match_one_shot_decode() {
    let tok = load("fixtures/tokenizers/llama3/tokenizer.json");
    let mut rng = Rng::new(0x5EED);
    // Any id of the vocabulary, special tokens included: many byte tokens that never form characters.
    let any: Vec<u32> = (0..1500).map(|_| rng.below(128_256) as u32).collect();
    check_stream(&tok, &any, "random ids");

    // Tokens of multi-byte text shuffled: partial characters completed by the wrong bytes, or later.
    let text = "你好，世界 こんにちは 👩‍👩‍👧 👍🏽 🇩🇪 été Привет ﷺ 𝄞 ✓ ";
    let pool = tok.encode_raw(text).unwrap();
    let shuffled: Vec<u32> = (0..1500).map(|_| pool[rng.below(pool.len())]).collect();
    check_stream(&tok, &shuffled, "shuffled multi-byte tokens");

    // Single-byte tokens (ids 0..256 are the byte alphabet): characters built byte by byte.
    let bytes: Vec<u32> = (0..1500).map(|_| rng.below(256) as u32).collect();
    check_stream(&tok, &bytes, "byte tokens");

    // A long stream of real text repeated: streaming stays exact far from the start.
    let long = tok.encode_raw(&text.repeat(40)).unwrap();
    check_stream(&tok, &long, "long text");
}

#[test]
fn small_tokenizer_random_stream() {
    let tok = load("fixtures/bitnet-tiny-tied/tokenizer.json");
    let mut rng = Rng::new(7);
    let any: Vec<u32> = (0..1000).map(|_| rng.below(512) as u32).collect();
    check_stream(&tok, &any, "small random ids");
}
