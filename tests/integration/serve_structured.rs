//! `bitnet serve` with `response_format`: the fixture's weights are random, so JSON that parses and
//! fits the schema comes from the grammar alone.

use serde_json::{Value, json};

use crate::http::{Server, Stream, streamed_text};
use crate::serve::{chat_body, error_of, model};

#[test]
fn response_format_json_schema_and_json_object_constrain_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 10},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000},
        "coastal": {"type": "boolean"},
        "kind": {"enum": ["town", "city"]}},
        "required": ["city", "population", "coastal", "kind"], "additionalProperties": false});
    let mut body = chat_body("Describe a city in JSON.", 120);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": true}});
    let v = s.post("/v1/chat/completions", &body).json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let out: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let obj = out.as_object().unwrap();
    assert_eq!(obj.len(), 4, "{out}");
    assert!(
        obj["city"]
            .as_str()
            .is_some_and(|c| c.chars().count() <= 10),
        "{out}"
    );
    assert!(
        obj["population"].as_u64().is_some_and(|p| p <= 100_000),
        "{out}"
    );
    assert!(obj["coastal"].is_boolean(), "{out}");
    assert!(
        ["town", "city"].contains(&obj["kind"].as_str().unwrap()),
        "{out}"
    );

    // `n: 2` sampled sequences each get their own constraint: both fit.
    let mut two = body.clone();
    two["n"] = json!(2);
    two["temperature"] = json!(1.0);
    two["seed"] = json!(5);
    let v = s.post("/v1/chat/completions", &two).json();
    for c in v["choices"].as_array().unwrap() {
        let text = c["message"]["content"].as_str().unwrap();
        if c["finish_reason"] == "stop" {
            let o: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(o.as_object().unwrap().len(), 4, "{o}");
        } else {
            assert!(text.starts_with("{\"city\": \""), "{text:?}");
        }
    }
    assert_eq!(v["choices"].as_array().unwrap().len(), 2, "{v}");

    // Without the constraint the same request is not JSON: the grammar made it so.
    let free = s
        .post(
            "/v1/chat/completions",
            &chat_body("Describe a city in JSON.", 120),
        )
        .json();
    let text = free["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");

    // Streaming gives the same text.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut st = Stream::open(&s.addr, "/v1/chat/completions", &[], &streamed);
    assert_eq!(st.status, 200);
    let text = streamed_text(&st.rest());
    assert_eq!(text, content);

    let mut obj_body = chat_body("JSON please.", 80);
    obj_body["response_format"] = json!({"type": "json_object"});
    let v = s.post("/v1/chat/completions", &obj_body).json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{content:?}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).unwrap().is_object(),
            "{content:?}"
        );
    }

    // Bad formats and schemas are 400s naming the field.
    for (rf, param, says) in [
        (json!({"type": "yaml"}), "response_format.type", "\"yaml\""),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3, "maximum": 1}}}),
            "response_format",
            "nsatisfiable",
        ),
    ] {
        let mut b = chat_body("hi", 5);
        b["response_format"] = rf.clone();
        let r = s.post("/v1/chat/completions", &b);
        assert_eq!(r.status, 400, "{rf}");
        let v = r.json();
        let (message, p, _) = error_of(&v);
        assert_eq!(p, Some(param), "{rf}: {message}");
        assert!(message.contains(says), "{rf}: {message}");
    }
}
