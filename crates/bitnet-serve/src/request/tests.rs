use serde_json::{Value, json};

use super::*;

fn chat(v: Value) -> Result<ChatRequest, ApiError> {
    let Value::Object(m) = v else {
        panic!("an object")
    };
    parse_chat(m)
}

fn completion(v: Value) -> Result<CompletionRequest, ApiError> {
    let Value::Object(m) = v else {
        panic!("an object")
    };
    parse_completion(m)
}

fn user(content: Value) -> Value {
    json!({"messages": [{"role": "user", "content": content}]})
}

#[test]
fn every_openai_field_is_typed() {
    let r = chat(json!({
        "model": "m", "messages": [
            {"role": "developer", "content": "Be brief.", "name": "ops"},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null, "refusal": null},
        ],
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
        "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "seed": -1, "stop": "x",
        "n": 1, "max_tokens": 5.0, "max_completion_tokens": 7, "user": "u", "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": false, "top_logprobs": 0,
        "response_format": {"type": "text"}, "metadata": {"a": "b"}, "store": false,
        "service_tier": "auto", "modalities": ["text"], "prediction": null, "reasoning_effort": "low",
        "verbosity": "low", "prompt_cache_key": "k", "safety_identifier": "s",
    }))
    .unwrap();
    assert!(r.unknown().0.is_empty(), "{:?}", r.unknown());
    r.refusals().unwrap();
    assert_eq!(r.common.seed, Some(Seed(u64::MAX)));
    assert_eq!(r.common.max_tokens, Some(Count(5)));
    assert_eq!(r.common.stop, Some(Stop(vec!["x".into()])));
    let m = r.messages(None, false).unwrap().plain();
    assert_eq!(
        (
            m[0].role.as_str(),
            m[1].content.as_str(),
            m[2].content.as_str()
        ),
        ("system", "Hi there", "")
    );
    assert!(r.unused().contains(&"messages[].name") && r.unused().contains(&"user"));
    let c = completion(
        json!({"prompt": [[1, 2]], "suffix": "", "best_of": 1, "echo": false,
        "logprobs": 2, "user": "u"}),
    )
    .unwrap();
    assert!(c.unknown().0.is_empty());
    c.refusals().unwrap();
    assert!(matches!(c.prompt().unwrap(), Prompt::Ids(ids) if ids == [1, 2]));
}

#[test]
fn a_bad_field_is_named_by_its_path() {
    let cases = [
        (
            json!({"messages": [], "temperature": "hot"}),
            "temperature",
            "a number",
        ),
        (
            json!({"messages": [], "temperature": 1e39}),
            "temperature",
            "32-bit float",
        ),
        (
            json!({"messages": [], "max_tokens": -5}),
            "max_tokens",
            "whole number",
        ),
        (
            json!({"messages": [], "max_tokens": 1.5}),
            "max_tokens",
            "whole number",
        ),
        (json!({"messages": [], "stop": 5}), "stop", "string"),
        (
            json!({"messages": [], "stop": ["a", 5]}),
            "stop[1]",
            "string",
        ),
        (
            json!({"messages": [], "stream": "yes"}),
            "stream",
            "boolean",
        ),
        (
            json!({"messages": [], "stream_options": {"include_usage": 1}}),
            "stream_options.include_usage",
            "boolean",
        ),
        (
            json!({"messages": [], "logit_bias": {"5": "x"}}),
            "logit_bias.5",
            "a number",
        ),
        (json!({"messages": "hi"}), "messages", "sequence"),
        (
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            "messages[0].role",
            "wizard",
        ),
        (
            json!({"messages": [{"content": "hi"}]}),
            "messages[0]",
            "role",
        ),
        (user(json!(5)), "messages[0].content", "content parts"),
        (
            user(json!([{"type": "text", "text": 5}])),
            "messages[0].content[0].text",
            "string",
        ),
    ];
    for (body, path, words) in cases {
        let e = chat(body.clone()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(path), "{body}: {}", e.message);
        assert!(e.message.contains(words), "{body}: {}", e.message);
    }
    let e = completion(json!({"prompt": "a", "logprobs": true})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logprobs"), "{}", e.message);
}

#[test]
fn unknown_fields_are_refused_by_path_unless_lenient() {
    let r = chat(
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}],
        "audio": {}}], "some_future_field": 1, "stream_options": {"other": true}}),
    )
    .unwrap();
    let u = r.unknown();
    assert_eq!(
        u.0,
        [
            "stream_options.other",
            "some_future_field",
            "messages[0].audio",
            "messages[0].content[0].x"
        ]
    );
    let e = u.check(false, "/v1/chat/completions").unwrap_err();
    assert_eq!(e.param.as_deref(), Some("stream_options.other"));
    assert!(e.message.contains("--lenient"), "{}", e.message);
    u.check(true, "/v1/chat/completions").unwrap();
    let c = completion(json!({"prompt": "a", "messages": []})).unwrap();
    assert_eq!(c.unknown().0, ["messages"]);
    Unknown::default().check(false, "/").unwrap();
}

#[test]
fn response_format_is_read_and_a_bad_one_names_its_field() {
    let spec = |rf: Value| {
        let mut b = user(json!("hi"));
        b["response_format"] = rf;
        let req = chat(b).unwrap();
        req.refusals().unwrap();
        req.constraint_spec()
    };
    assert_eq!(spec(json!({"type": "text"})).unwrap(), None);
    assert_eq!(
        spec(json!({"type": "json_object"})).unwrap(),
        Some(bitnet_grammar::ConstraintSpec::JsonObject)
    );
    assert!(matches!(
        spec(
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}})
        ),
        Ok(Some(bitnet_grammar::ConstraintSpec::JsonSchema { .. }))
    ));
    for (rf, param) in [
        (json!({"type": "bogus"}), "response_format.type"),
        (
            json!({"type": "json_schema"}),
            "response_format.json_schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"schema": []}}),
            "response_format.json_schema.schema",
        ),
    ] {
        let e = spec(rf.clone()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{rf}: {}", e.message);
    }
}

#[test]
fn fields_not_supported_are_refused_by_name() {
    let with = |extra: Value| {
        let mut b = user(json!("hi"));
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        chat(b).unwrap().refusals().unwrap_err()
    };
    for (extra, param) in [
        (json!({"functions": []}), "functions"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"audio": {"voice": "x"}}), "audio"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"web_search_options": {}}), "web_search_options"),
    ] {
        let e = with(extra.clone());
        assert_eq!(e.param.as_deref(), Some(param), "{extra}: {}", e.message);
    }
    for (msgs, param) in [
        (
            json!([{"role": "function", "content": "3", "name": "a"}]),
            "messages[0].role",
        ),
        (
            json!([{"role": "user", "content": "x", "tool_calls": []}]),
            "messages[0].tool_calls",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            "messages[0].content[0]",
        ),
        (
            json!([{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
        ),
    ] {
        let e = chat(json!({"messages": msgs}))
            .unwrap()
            .refusals()
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{msgs}: {}", e.message);
    }
    for (body, param) in [
        (json!({"prompt": "a", "suffix": "b"}), "suffix"),
        (json!({"prompt": "a", "best_of": 2}), "best_of"),
        (json!({"prompt": "a", "echo": true}), "echo"),
    ] {
        let e = completion(body.clone()).unwrap().refusals().unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
    }
}

#[test]
fn prompts_and_messages_that_are_missing_or_empty_are_named() {
    for body in [
        json!({}),
        json!({"messages": []}),
        json!({"messages": null}),
    ] {
        let e = chat(body).unwrap().messages(None, false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }
    for body in [
        json!({}),
        json!({"prompt": []}),
        json!({"prompt": [1, -2]}),
        json!({"prompt": ["a", "b"]}),
        json!({"prompt": 5}),
    ] {
        let e = completion(body.clone()).unwrap().prompt().err().unwrap();
        assert_eq!(e.param.as_deref(), Some("prompt"), "{body}");
    }
}
