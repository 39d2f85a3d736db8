//! The per-token cost of `tool_choice: "auto"` on the LLaMA 3 vocabulary (128,256 tokens, the 2B4T
//! model's): serve constrains such an answer to a tool-call object or to text that does not start with
//! `{` (a Lark alternative, `bitnet_serve::auto_tool_constraint`). Mask and commit for every token of a
//! call and of a plain-text answer, as a server pays them per generated token. Run with
//! `cargo bench -p bitnet-serve --bench tool_grammar`; figures are per token (divan's `items`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bitnet_grammar::{ConstraintSpec, GrammarEngine};
use divan::Bencher;
use divan::counter::ItemsCount;
use serde_json::json;

fn main() {
    divan::main();
}

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
    E.get_or_init(|| GrammarEngine::new(hf(), &[128_001, 128_009], 128_256).expect("engine"))
}

/// Two tools, as an agent framework sends them.
fn spec() -> ConstraintSpec {
    bitnet_serve::auto_tool_constraint(json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "search",
            "parameters": {"type": "object", "properties": {
                "query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"]}}}
    ]))
    .expect("the tools compile")
}

fn per_token(bencher: Bencher, text: &str) {
    let tokens = hf().encode(text, false).expect("encode").get_ids().to_vec();
    let spec = spec();
    bencher
        .counter(ItemsCount::new(tokens.len()))
        .with_inputs(|| engine().constraint(&spec, "tools").expect("compiles"))
        .bench_local_values(|mut c| {
            for &t in &tokens {
                let allowed = c.allowed().expect("mask");
                assert!(bitnet_chat::is_allowed(allowed, t), "token {t} refused");
                c.commit(t).expect("commit");
            }
        });
}

/// A call, in the polyfill's answer format.
#[divan::bench]
fn auto_call_per_token(bencher: Bencher) {
    per_token(
        bencher,
        r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]}"#,
    );
}

/// A plain answer: after its first token the grammar allows everything.
#[divan::bench]
fn auto_text_per_token(bencher: Bencher) {
    per_token(
        bencher,
        "The weather in Paris is mild today, around fifteen degrees with a light wind from the west.",
    );
}
