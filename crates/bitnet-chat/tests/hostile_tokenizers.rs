//! A tokenizer.json from a stranger cannot panic through this crate: it loads with an error, or works.

use bitnet_chat::Tokenizer;
use bitnet_format::TokenizerInfo;
use serde_json::json;

fn word_level(post_processor: serde_json::Value) -> Vec<u8> {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post_processor,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"hello": 0, "[UNK]": 1, "[CLS]": 2}, "unk_token": "[UNK]"}
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_post_processor_naming_a_token_it_does_not_define_is_an_error() {
    // The template puts `[MISSING]` in front, and the special-token map does not define it.
    let bad = word_level(json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[MISSING]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {}
    }));
    let r = Tokenizer::from_bytes(Some(&bad), &TokenizerInfo::default());
    let e = r
        .expect_err("a broken post-processor must not load")
        .to_string();
    assert!(e.contains("tokenizer"), "{e}");
    // The same tokenizer without the broken step works.
    let good = word_level(serde_json::Value::Null);
    let t = Tokenizer::from_bytes(Some(&good), &TokenizerInfo::default()).unwrap();
    assert_eq!(t.encode_raw("hello").unwrap(), vec![0]);
}
