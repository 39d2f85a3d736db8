//! Greedy output of fixture models under a grammar. The fixtures' weights are random (the demo model's
//! barely trained), so what they emit unconstrained is gibberish: whatever is valid here is the
//! grammar's doing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_chat::SamplingParams;
use bitnet_grammar::{ConstraintSpec, GrammarEngine, GrammarError};
use bitnet_model::Backend;
use bitnet_runtime::store::HeadVariant;
use bitnet_runtime::{Engine, Generation, LoadOptions, Provider, Quiet, SeqDecoder, StopReason};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The fixture converted into `dir` and opened, with its grammar engine.
fn open(name: &str, dir: &Path) -> (Engine, Arc<GrammarEngine>) {
    let file = dir.join(format!("{name}.bitnet"));
    Quiet
        .convert(fixture(name).to_str().unwrap(), &file, HeadVariant::Exact)
        .unwrap();
    let engine = Engine::open_file(&file, &LoadOptions::default()).unwrap();
    let n_logits = engine.model.config().vocab_size;
    let grammar = GrammarEngine::new(engine.tokenizer.hf(), &engine.stop_ids, n_logits).unwrap();
    (engine, grammar)
}

/// Greedy generation from `prompt` under `spec`, at most `max_tokens` tokens.
fn generate(
    engine: &Engine,
    grammar: &GrammarEngine,
    spec: &ConstraintSpec,
    prompt: &str,
    max_tokens: usize,
) -> Generation {
    let params = SamplingParams {
        max_tokens,
        ..SamplingParams::greedy()
    };
    let constraint = grammar.constraint(spec, "response_format").unwrap();
    let dec = SeqDecoder::new(engine, &params, &[])
        .unwrap()
        .with_constraint(Box::new(constraint));
    let ids = engine.tokenizer.encode_prompt(prompt).unwrap();
    let mut session = engine.model.session(engine.context());
    let mut streamed = String::new();
    let g = engine
        .generate_with(
            &engine.model,
            &mut session,
            &mut Vec::new(),
            &ids,
            dec,
            &|| false,
            &mut |t| {
                streamed.push_str(t);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(streamed, g.text);
    g
}

/// Schemas of each kind: required fields, enums, arrays, nesting, numbers. Free-running strings and
/// numbers carry bounds (`maxLength`, `maximum`): a random model repeats one token forever, and only a
/// bound ends a string it never closes.
fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "required fields",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                "required": ["name", "age"], "additionalProperties": false}),
        ),
        (
            "enum",
            json!({"type": "object", "properties": {
                "color": {"enum": ["red", "green", "blue"]},
                "size": {"type": "string", "enum": ["S", "M", "L", "XL"]}},
                "required": ["color", "size"], "additionalProperties": false}),
        ),
        (
            "array",
            json!({"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                "minItems": 2, "maxItems": 4}),
        ),
        (
            "nested",
            json!({"type": "object", "properties": {
                "user": {"type": "object", "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 999},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
                    "required": ["id", "tags"], "additionalProperties": false},
                "ok": {"type": "boolean"}},
                "required": ["user", "ok"], "additionalProperties": false}),
        ),
        (
            "numbers",
            json!({"type": "object", "properties": {
                "x": {"type": "number", "minimum": -10, "maximum": 10},
                "n": {"type": "integer", "minimum": 0, "maximum": 100},
                "p": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9}},
                "required": ["x", "n", "p"], "additionalProperties": false}),
        ),
    ]
}

/// Every schema's greedy output ends by the grammar (not by running out of tokens), parses, and
/// validates against the schema.
fn schemas_validate(name: &str, max_tokens: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, grammar) = open(name, dir.path());
    for (what, schema) in schemas() {
        let spec = ConstraintSpec::json_schema(schema.clone());
        let g = generate(&engine, &grammar, &spec, "Reply in JSON.", max_tokens);
        assert_eq!(
            g.stop,
            StopReason::Eos,
            "{name}, {what}: {:?} did not end",
            g.text
        );
        let value: Value = serde_json::from_str(&g.text)
            .unwrap_or_else(|e| panic!("{name}, {what}: {:?} is not JSON: {e}", g.text));
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{name}, {what}: {} violates the schema: {errors:?}",
            g.text
        );
        assert_eq!(engine.tokenizer.decode(&g.ids).unwrap(), g.text);
        eprintln!("{name}, {what}: {}", g.text);
    }
    // json_object: any object.
    let g = generate(
        &engine,
        &grammar,
        &ConstraintSpec::JsonObject,
        "JSON:",
        max_tokens,
    );
    let value: Result<Value, _> = serde_json::from_str(&g.text);
    assert!(
        matches!(value, Ok(Value::Object(_))) || g.stop == StopReason::Length,
        "{name}, json_object: {:?}",
        g.text
    );
    assert!(g.text.starts_with('{'), "{name}, json_object: {:?}", g.text);
}

#[test]
fn byte_level_llama3_vocabulary_model_follows_every_schema() {
    schemas_validate("bitnet-llama3-tiny", 160);
}

#[test]
fn sentencepiece_model_follows_every_schema() {
    schemas_validate("bitnet-1bitllm-tiny", 200);
}

#[test]
fn demo_model_follows_every_schema() {
    schemas_validate("demo", 160);
}

#[test]
fn lark_grammar_and_bad_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, grammar) = open("demo", dir.path());
    let spec = ConstraintSpec::Lark(r#"start: "yes" | "no" | "maybe""#.into());
    let g = generate(&engine, &grammar, &spec, "Answer:", 10);
    assert_eq!(g.stop, StopReason::Eos);
    assert!(
        ["yes", "no", "maybe"].contains(&g.text.as_str()),
        "{:?}",
        g.text
    );

    // Unconstrained, the same prompt does not give one of the three words: the grammar made it so.
    let free = engine
        .generate(
            &mut engine.model.session(engine.context()),
            &mut Vec::new(),
            &engine.tokenizer.encode_prompt("Answer:").unwrap(),
            &SamplingParams {
                max_tokens: 10,
                ..SamplingParams::greedy()
            },
            &[],
            &std::sync::atomic::AtomicBool::new(false),
            &mut |_| Ok(()),
        )
        .unwrap();
    assert!(!["yes", "no", "maybe"].contains(&free.text.as_str()));

    for (schema, says) in [
        (
            json!({"type": "object", "properties": {"a": {"type": "frobnicate"}}}),
            "frobnicate",
        ),
        (
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
            "nsatisfiable",
        ),
    ] {
        let err = grammar
            .constraint(
                &ConstraintSpec::json_schema(schema.clone()),
                "response_format",
            )
            .unwrap_err();
        assert!(
            matches!(err, GrammarError::Grammar { .. }),
            "{schema}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("response_format cannot be used"), "{msg}");
        assert!(msg.contains(says), "{schema}: {msg}");
    }
    let err = grammar
        .constraint(&ConstraintSpec::Lark("start: (".into()), "grammar")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("grammar cannot be used"), "{err}");
}
