//! Token ids of tricky strings against Python `tokenizers` (fixtures/tokenizer-cases.json).

use std::path::PathBuf;

use bitnet_chat::Tokenizer;
use bitnet_format::TokenizerInfo;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn ids_and_round_trips_match_python_tokenizers() {
    let cases: Value = serde_json::from_slice(
        &std::fs::read(root().join("fixtures/tokenizer-cases.json")).unwrap(),
    )
    .unwrap();
    for key in ["llama3", "small"] {
        let set = &cases[key];
        let json = std::fs::read(root().join(set["tokenizer"].as_str().unwrap())).unwrap();
        let tok = Tokenizer::from_bytes(Some(&json), &TokenizerInfo::default()).unwrap();
        let list = set["cases"].as_array().unwrap();
        assert!(list.len() >= 20, "{key}");
        for c in list {
            let text = c["text"].as_str().unwrap();
            assert_eq!(
                tok.encode_raw(text).unwrap(),
                ids(&c["ids"]),
                "{key}: {text:?}"
            );
            assert_eq!(
                tok.decode(&ids(&c["ids"])).unwrap(),
                c["decoded"].as_str().unwrap(),
                "{key}: {text:?}"
            );
        }
    }
}

#[test]
fn prompts_start_with_exactly_one_bos() {
    let json = std::fs::read(root().join("fixtures/tokenizers/llama3/tokenizer.json")).unwrap();
    let info = TokenizerInfo {
        bos_token_id: Some(128000),
        add_bos_token: true,
        ..Default::default()
    };
    let tok = Tokenizer::from_bytes(Some(&json), &info).unwrap();
    let ids = tok.encode_prompt("Hello world").unwrap();
    assert_eq!(ids[0], 128000);
    assert_eq!(&ids[1..], tok.encode_raw("Hello world").unwrap().as_slice());
    let ids = tok.encode_prompt("<|begin_of_text|>Hello world").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 128000).count(), 1, "{ids:?}");
}
