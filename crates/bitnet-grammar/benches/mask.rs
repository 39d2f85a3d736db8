//! The per-token cost of constrained decoding on the LLaMA 3 vocabulary (128,256 tokens, the 2B4T
//! model's): for a JSON document valid under a schema, every token's mask (`allowed`) and `commit`, as
//! a server pays it per generated token; then applying the mask to 128,256 logits and sampling.
//! Building the engine (the token trie, once per model) and compiling a schema (once per request) are
//! measured too. Run with `cargo bench -p bitnet-grammar --bench mask`; the figures are per token
//! (divan's `items`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bitnet_chat::{Sampler, SamplingParams};
use bitnet_grammar::{ConstraintSpec, GrammarEngine};
use divan::Bencher;
use divan::counter::ItemsCount;
use serde_json::{Value, json};

fn main() {
    divan::main();
}

const N_LOGITS: usize = 128_256;

fn hf() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tokenizers/llama3/tokenizer.json");
        tokenizers::Tokenizer::from_file(p).expect("the LLaMA 3 tokenizer fixture")
    })
}

fn engine() -> &'static Arc<GrammarEngine> {
    static E: OnceLock<Arc<GrammarEngine>> = OnceLock::new();
    E.get_or_init(|| GrammarEngine::new(hf(), &[128_001, 128_009], N_LOGITS).expect("engine"))
}

fn schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["street", "city", "zip"]},
        "active": {"type": "boolean"}},
        "required": ["name", "age", "email", "tags", "address", "active"]})
}

/// A document valid under [`schema`], laid out as the engine's JSON grammar wants (`", "`, `": "`),
/// tokenized by the model's tokenizer.
fn document_tokens() -> Vec<u32> {
    let doc = r#"{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "engines", "poetry"], "address": {"street": "12 St James's Square", "city": "London", "zip": "01234"}, "active": true}"#;
    hf().encode(doc, false).expect("encode").get_ids().to_vec()
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn build_engine_llama3_vocab() -> Arc<GrammarEngine> {
    GrammarEngine::new(hf(), &[128_001, 128_009], N_LOGITS).expect("engine")
}

#[divan::bench(sample_count = 20, sample_size = 1)]
fn compile_schema(bencher: Bencher) {
    let engine = engine();
    let spec = ConstraintSpec::json_schema(schema());
    bencher.bench(|| {
        engine
            .constraint(&spec, "response_format")
            .expect("compiles")
    });
}

/// Mask and commit for every token of the document: the grammar's per-token cost.
#[divan::bench]
fn mask_and_commit_per_token(bencher: Bencher) {
    let engine = engine();
    let spec = ConstraintSpec::json_schema(schema());
    let tokens = document_tokens();
    bencher
        .counter(ItemsCount::new(tokens.len()))
        .with_inputs(|| {
            engine
                .constraint(&spec, "response_format")
                .expect("compiles")
        })
        .bench_local_values(|mut c| {
            for &t in &tokens {
                let allowed = c.allowed().expect("mask");
                assert!(bitnet_chat::is_allowed(allowed, t), "token {t} refused");
                c.commit(t).expect("commit");
            }
            assert!(c.is_accepting());
        });
}

/// Applying a mask to the 128,256 logits and sampling greedily among the allowed: the decoder's part.
#[divan::bench]
fn mask_logits_and_sample(bencher: Bencher) {
    let engine = engine();
    let spec = ConstraintSpec::json_schema(schema());
    let mut c = engine
        .constraint(&spec, "response_format")
        .expect("compiles");
    // Inside a string: most of the vocabulary is allowed, the worst case for masking.
    for &t in &hf()
        .encode(r#"{"name": "Ad"#, false)
        .expect("encode")
        .get_ids()
        .to_vec()
    {
        c.commit(t).expect("commit");
    }
    let allowed = c.allowed().expect("mask").to_vec();
    let logits: Vec<f32> = (0..N_LOGITS)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let mut sampler = Sampler::new(SamplingParams::greedy()).expect("sampler");
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        sampler
            .sample_masked(&logits, &[], &allowed)
            .expect("sample")
    });
}
