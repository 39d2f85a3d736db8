//! Chat templates of popular model families against Python Jinja2 set up as transformers sets it up
//! (tests/data/jinja2-cases.json, written by tests/data/make_jinja2_cases.py): every render
//! byte-identical, every `raise_exception` raised with the same message.

use bitnet_chat::{ChatError, ChatTemplate};
use serde_json::Value;

#[test]
fn popular_templates_render_like_jinja2() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jinja2-cases.json");
    let oracle: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let (bos, eos) = (
        oracle["bos_token"].as_str().unwrap(),
        oracle["eos_token"].as_str().unwrap(),
    );
    let cases = oracle["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 70);
    let (mut rendered, mut raised) = (0, 0);
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let conversation = case["conversation"].as_str().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{name} / {conversation} / add_generation_prompt={agp}");
        let source = oracle["templates"][name].as_str().unwrap();
        let messages = oracle["conversations"][conversation].as_array().unwrap();
        let template = ChatTemplate::new(name, source, bos, eos).unwrap();
        let got = template.render_json(messages, agp);
        match (case.get("rendered"), case.get("raised")) {
            (Some(want), None) => {
                assert_eq!(got.unwrap(), want.as_str().unwrap(), "{label}");
                rendered += 1;
            }
            (None, Some(want)) => match got {
                Err(ChatError::TemplateException { template, message }) => {
                    assert_eq!(template, name, "{label}");
                    assert_eq!(message, want.as_str().unwrap(), "{label}");
                    raised += 1;
                }
                other => panic!("{label}: want raise_exception({want}), got {other:?}"),
            },
            _ => panic!("{label}: a case has either `rendered` or `raised`"),
        }
    }
    assert_eq!((rendered, raised), (60, 10));
}
