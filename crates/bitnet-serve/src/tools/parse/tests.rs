use super::*;

fn format(parallel: bool) -> CallFormat {
    CallFormat {
        names: vec!["get_weather".into(), "add".into()],
        parallel,
    }
}

/// The answer read whole, and read in pieces of every length from 1 to 7 bytes (on char boundaries):
/// the calls' names and arguments and the content must agree.
fn read_both(text: &str, parallel: bool) -> (Option<String>, Vec<(String, String)>) {
    let strip = |(content, calls): Answer| {
        (
            content,
            calls
                .into_iter()
                .map(|(id, n, a)| {
                    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                    (n, a)
                })
                .collect::<Vec<_>>(),
        )
    };
    let whole = strip(read_answer(text, &format(parallel)));
    for step in 1..=7 {
        let mut s = CallScanner::new(&format(parallel));
        let mut pieces = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(step) {
            pieces.extend(s.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(s.finish());
        assert_eq!(
            strip(collect(pieces)),
            whole,
            "{text:?} in pieces of {step}"
        );
    }
    whole
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_string(), args.to_string())
}

#[test]
fn the_polyfill_format_is_read_with_arguments_as_written() {
    let t = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": "}"}]}}]}"#;
    assert_eq!(
        read_both(t, true),
        (
            None,
            vec![call(
                "get_weather",
                r#"{"city": "Paris", "days": [1, {"x": "}"}]}"#
            )]
        )
    );
    // Several calls, whitespace anywhere JSON allows it, escapes in strings.
    let t = "\n {\"tool_calls\":[ {\"name\":\"add\",\"arguments\":{\"a\":1,\"s\":\"q\\\"}\"}} ,\n{\"name\": \"get_weather\", \"arguments\": {}} ] }";
    assert_eq!(
        read_both(t, true),
        (
            None,
            vec![
                call("add", r#"{"a":1,"s":"q\"}"}"#),
                call("get_weather", "{}")
            ]
        )
    );
    // Without parallel calls the first call ends the answer.
    assert_eq!(
        read_both(t, false).1,
        vec![call("add", r#"{"a":1,"s":"q\"}"}"#)]
    );
}

#[test]
fn tagged_calls_and_other_shapes_are_read() {
    let t = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>";
    assert_eq!(
        read_both(t, true),
        (
            None,
            vec![
                call("add", r#"{"a": 2}"#),
                call("get_weather", r#"{"city": "Oslo"}"#)
            ]
        )
    );
    // Another key order, `parameters`, a bare call, a list, arguments as a string: read whole at the end.
    for (t, want) in [
        (
            r#"{"tool_calls": [{"arguments": {"a": 1}, "name": "add"}]}"#,
            vec![call("add", r#"{"a": 1}"#)],
        ),
        (
            r#"{"name": "add", "parameters": {"a": 1}}"#,
            vec![call("add", r#"{"a": 1}"#)],
        ),
        (
            r#"[{"name": "add", "arguments": "{\"a\": 1}"}, {"function": {"name": "get_weather"}}]"#,
            vec![call("add", r#"{"a": 1}"#), call("get_weather", "{}")],
        ),
    ] {
        assert_eq!(read_both(t, true), (None, want), "{t}");
    }
}

#[test]
fn text_and_malformed_calls_are_content() {
    for t in [
        "Hello there.",
        "  It is {\"tool_calls\": []} inside text",
        "",
        "   ",
        "<b>bold</b>",
        "<tool_",
        // Malformed JSON, an unknown tool, no calls, a list of numbers.
        "{\"tool_calls\": [{\"name\": \"add\", \"arg",
        "{\"tool_calls\": [{\"name\": \"rm_rf\", \"arguments\": {}}]}",
        "{\"tool_calls\": []}",
        "{\"answer\": 42}",
        "[1, 2]",
    ] {
        let (content, calls) = read_both(t, true);
        assert!(calls.is_empty(), "{t:?}: {calls:?}");
        let want = if t.is_empty() {
            None
        } else {
            Some(t.to_string())
        };
        assert_eq!(content, want, "{t:?}");
    }
}

#[test]
fn streamed_pieces_start_each_call_then_carry_its_arguments() {
    let mut s = CallScanner::new(&format(true));
    let mut got = Vec::new();
    for part in [
        "{\"tool_",
        "calls\": [{\"name\": \"ad",
        "d\", \"arguments\": {\"a\"",
        ": 1}}, {\"name\": \"add\", \"arguments\": {}}]}",
    ] {
        got.push(s.push(part));
    }
    assert!(got[0].is_empty() && got[1].is_empty(), "{got:?}");
    let Piece::Call { index: 0, id, name } = &got[2][0] else {
        panic!("{got:?}")
    };
    assert_eq!(name, "add");
    assert_eq!(
        got[2][1],
        Piece::Args {
            index: 0,
            text: "{\"a\"".into()
        }
    );
    let Piece::Call {
        index: 1, id: id2, ..
    } = &got[3][1]
    else {
        panic!("{got:?}")
    };
    assert_ne!(id, id2);
    assert_eq!(s.calls(), 2);
    assert!(s.finish().is_empty());
    // A call cut off (max_tokens) stays as far as it got.
    let (content, calls) = read_answer(
        "{\"tool_calls\": [{\"name\": \"add\", \"arguments\": {\"a\": 1",
        &format(true),
    );
    assert_eq!(content, None);
    assert_eq!(calls[0].2, "{\"a\": 1");
}
