use serde_json::{Value, json};

use super::*;
use crate::request::parse_chat;

fn weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn request(extra: Value) -> Result<crate::request::ChatRequest, ApiError> {
    let mut body = json!({"messages": [{"role": "user", "content": "Weather in Paris?"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let Value::Object(m) = body else {
        unreachable!()
    };
    parse_chat(m)
}

fn setup(extra: Value) -> Result<Option<ToolSetup>, ApiError> {
    let r = request(extra)?;
    r.refusals()?;
    r.tool_setup()
}

#[test]
fn tool_fields_are_typed_and_bad_ones_name_the_field() {
    let s = setup(
        json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": false}),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.choice, ToolChoice::Required);
    assert!(!s.parallel);
    assert_eq!(s.tools[0].name, "get_weather");
    let s = setup(json!({"tools": [weather()],
                         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
    .unwrap()
    .unwrap();
    assert_eq!(s.choice, ToolChoice::Named("get_weather".into()));
    // `none` shows no tools; no tools, no setup.
    assert!(
        setup(json!({"tools": [weather()], "tool_choice": "none"}))
            .unwrap()
            .is_none()
    );
    assert!(setup(json!({})).unwrap().is_none());
    // No parameters: an empty object schema.
    let s = setup(json!({"tools": [{"type": "function", "function": {"name": "now"}}]}))
        .unwrap()
        .unwrap();
    assert_eq!(s.choice, ToolChoice::Auto);
    assert_eq!(s.tools[0].parameters["type"], "object");

    for (extra, param) in [
        (
            json!({"tool_choice": "sometimes", "tools": [weather()]}),
            "tool_choice",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {}}, "tools": [weather()]}),
            "tool_choice.function",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "rm"}}, "tools": [weather()]}),
            "tool_choice.function.name",
        ),
        (
            json!({"tool_choice": {"type": "custom", "function": {"name": "x"}}, "tools": [weather()]}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tools": []}), "tools"),
        (json!({"tools": {}}), "tools"),
        (
            json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [weather(), weather()]}),
            "tools[1].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": 5}}]}),
            "tools[0].function.name",
        ),
        (json!({"parallel_tool_calls": "yes"}), "parallel_tool_calls"),
        (json!({"functions": []}), "functions"),
        (
            json!({"messages": [{"role": "tool", "content": "3"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": "3", "tool_call_id": "a"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}),
            "messages[0].tool_calls",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "x", "function": {"name": "f", "arguments": "{}"}}]}]}),
            "messages[0].tool_calls[0].type",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "function", "content": "3", "name": "f"}]}),
            "messages[0].role",
        ),
    ] {
        let e = setup(extra.clone()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{extra}: {}", e.message);
    }
    // Unknown fields inside tools and calls are named.
    let r = request(
        json!({"tools": [{"type": "function", "x": 1, "function": {"name": "f", "y": 2}}],
        "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "z": 3,
            "function": {"name": "f", "arguments": "{}", "w": 4}}]}]}),
    )
    .unwrap();
    assert_eq!(
        r.unknown().0,
        [
            "tools[0].x",
            "tools[0].function.y",
            "messages[0].tool_calls[0].z",
            "messages[0].tool_calls[0].function.w"
        ]
    );
}

#[test]
fn the_calls_schema_follows_the_choice() {
    let add =
        json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}});
    let s = setup(json!({"tools": [weather(), add], "parallel_tool_calls": false}))
        .unwrap()
        .unwrap();
    let schema = s.calls_schema();
    let list = &schema["properties"]["tool_calls"];
    assert_eq!(list["maxItems"], 1);
    assert_eq!(list["minItems"], 1);
    assert_eq!(list["items"]["anyOf"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["items"]["anyOf"][0]["properties"]["arguments"],
        weather()["function"]["parameters"]
    );
    // `auto` is a Lark alternative of calls and text; `required` the calls object alone.
    assert!(
        matches!(s.constraint_spec(None), bitnet_grammar::ConstraintSpec::Lark(g) if g.contains("calls | TEXT"))
    );
    let named = setup(
        json!({"tools": [weather(), {"type": "function", "function": {"name": "add"}}],
                             "tool_choice": {"type": "function", "function": {"name": "add"}}}),
    )
    .unwrap()
    .unwrap();
    let schema = named.calls_schema();
    assert_eq!(
        schema["properties"]["tool_calls"]["items"]["properties"]["name"]["const"],
        "add"
    );
    assert!(schema["properties"]["tool_calls"].get("maxItems").is_none());
    assert!(matches!(
        named.constraint_spec(None),
        bitnet_grammar::ConstraintSpec::JsonSchema { .. }
    ));
    assert_eq!(named.call_format().names, ["add"]);
}

#[test]
fn the_polyfill_writes_tools_calls_and_results_as_plain_messages() {
    let r = request(json!({
        "tools": [weather()],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9 C"}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "?"},
        ]}))
    .unwrap();
    r.refusals().unwrap();
    let s = r.tool_setup().unwrap();
    let m = r.messages(s.as_ref(), false).unwrap().plain();
    let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    // The tools go after the system prompt, each with its schema; the answer format is stated.
    assert!(
        m[0].content.starts_with("Be brief.\n\n# Tools\n"),
        "{}",
        m[0].content
    );
    assert!(m[0].content.contains(
        "{\"name\": \"get_weather\", \"description\": \"The weather in a city.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}\n"
    ), "{}", m[0].content);
    assert!(
        m[0].content
            .contains("{\"tool_calls\": [{\"name\": \"TOOL_NAME\", \"arguments\": {ARGUMENTS}}]}")
    );
    assert!(m[0].content.contains("plain text"));
    // Earlier calls as the JSON the model writes (arguments that are not JSON as a string).
    assert_eq!(
        m[2].content,
        "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_weather\", \"arguments\": \"not json\"}]}"
    );
    // A run of results is one user turn naming the tool and the call.
    assert_eq!(
        m[3].content,
        "Result of get_weather (call call_1):\n18 C\n\nResult of get_weather (call call_2):\n9 C\n\nResult of call call_9:\n?"
    );
    // Without a system message one is added; `required` and named choices say so.
    let r = request(json!({"tools": [weather()], "tool_choice": "required"})).unwrap();
    let m = r
        .messages(r.tool_setup().unwrap().as_ref(), false)
        .unwrap()
        .plain();
    assert_eq!(m[0].role, "system");
    assert!(m[0].content.contains("You must call at least one tool"));
    assert_eq!(m[1].content, "Weather in Paris?");
    // `none`: no tools in the prompt, the conversation as it was.
    let r = request(json!({"tools": [weather()], "tool_choice": "none"})).unwrap();
    let m = r
        .messages(r.tool_setup().unwrap().as_ref(), false)
        .unwrap()
        .plain();
    assert_eq!(m, [bitnet_chat::Message::user("Weather in Paris?")]);
}

/// fixtures/tool-template-cases.json: what transformers was given for each case.
fn tool_cases() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tool-template-cases.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_template_that_reads_tools_gets_them_as_transformers_did() {
    for case in tool_cases()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        // The case's messages as an OpenAI client sends them: arguments as JSON strings.
        let mut sent = case["messages"].clone();
        for m in sent.as_array_mut().unwrap() {
            for c in m
                .get_mut("tool_calls")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let args = c["function"]["arguments"].to_string();
                c["function"]["arguments"] = json!(args);
            }
        }
        let mut body = json!({ "messages": sent });
        if !case["tools"].is_null() {
            body["tools"] = case["tools"].clone();
        }
        let Value::Object(body) = body else {
            unreachable!()
        };
        let r = parse_chat(body).unwrap();
        r.refusals().unwrap();
        let s = r.tool_setup().unwrap();
        let crate::request::ChatPrompt::Native(n) = r.messages(s.as_ref(), true).unwrap() else {
            panic!("{name}: not native")
        };
        assert_eq!(Value::Array(n.messages), case["messages"], "{name}");
        assert_eq!(
            n.tools.map(Value::Array).unwrap_or(Value::Null),
            case["tools"],
            "{name}"
        );
    }
    // `tool_choice: "none"` leaves the tools out; a tool message needs its call's id.
    let r = request(json!({"tools": [weather()], "tool_choice": "none"})).unwrap();
    let crate::request::ChatPrompt::Native(n) =
        r.messages(r.tool_setup().unwrap().as_ref(), true).unwrap()
    else {
        panic!()
    };
    assert_eq!(n.tools, None);
    let r = parse_chat(
        json!({"messages": [{"role": "tool", "content": "1"}]})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let e = r.messages(None, true).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
    // A message's `name` is accepted with a warning and not rendered, here as with the polyfill.
    let r = parse_chat(
        json!({"messages": [{"role": "developer", "content": "Be brief.", "name": "ops"}]})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let crate::request::ChatPrompt::Native(n) = r.messages(None, true).unwrap() else {
        panic!()
    };
    assert_eq!(
        n.messages,
        [json!({"role": "system", "content": "Be brief."})]
    );
}
