use super::*;

fn tpl(source: &str) -> ChatTemplate {
    ChatTemplate::new("test", source, "<s>", "</s>").unwrap()
}

fn render_str(source: &str) -> String {
    tpl(source).render(&[Message::user("hi")], false).unwrap()
}

#[test]
fn builtin_template_renders_a_conversation() {
    let t = ChatTemplate::from_source("m.bitnet", None, "<|begin_of_text|>", "<|end_of_text|>")
        .unwrap();
    assert_eq!(t.source(), BITNET_2B4T_CHAT_TEMPLATE);
    assert_eq!(t.name(), "m.bitnet (built-in BitNet b1.58 2B4T template)");
    let msgs = [
        Message::system("Be brief. "),
        Message::user("\n Hi!\n"),
        Message::assistant("Hello."),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "System: Be brief.<|eot_id|>User: Hi!<|eot_id|>Assistant: Hello.<|eot_id|>Assistant: "
    );
    assert_eq!(
        t.render(&msgs[..1], false).unwrap(),
        "System: Be brief.<|eot_id|>"
    );
}

#[test]
fn empty_conversation_is_an_error() {
    let t = tpl(BITNET_2B4T_CHAT_TEMPLATE);
    let err = t.render(&[], true).unwrap_err();
    assert!(matches!(err, ChatError::NoMessages), "{err}");
    assert!(matches!(
        t.render_json(&[], true),
        Err(ChatError::NoMessages)
    ));
}

#[test]
fn roles_are_checked_by_the_helper() {
    let msgs = [Message::user("a"), Message::new("tool", "b")];
    let err = validate_roles(&msgs, &KNOWN_ROLES).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ChatError::UnknownRole { index: 1, ref role, .. } if role == "tool"),
        "{text}"
    );
    assert!(
        text.contains("'tool'") && text.contains("system, user, assistant"),
        "{text}"
    );
    validate_roles(&msgs, &["user", "tool"]).unwrap();
    validate_roles(&msgs[..1], &KNOWN_ROLES).unwrap();
}

#[test]
fn syntax_errors_name_the_template_and_line() {
    let err =
        ChatTemplate::new("model.bitnet", "ok\n{% for m in messages %}{{ m }", "", "").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{text}");
    assert!(
        text.contains("model.bitnet") && text.contains("syntax error"),
        "{text}"
    );
    assert!(text.contains("line 2"), "{text}");
    let err = ChatTemplate::new("x", "{% if %}", "", "").unwrap_err();
    assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{err}");
}

#[test]
fn raise_exception_names_template_and_message() {
    let t = ChatTemplate::new(
        "strict",
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first, please') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    let err = t.render(&[Message::user("x")], false).unwrap_err();
    let text = err.to_string();
    match &err {
        ChatError::TemplateException { template, message } => {
            assert_eq!(template, "strict");
            assert_eq!(message, "System first, please");
        }
        other => panic!("{other}"),
    }
    assert!(
        text.contains("strict") && text.contains("System first, please"),
        "{text}"
    );
    assert_eq!(t.render(&[Message::system("x")], false).unwrap(), "ok");
}

#[test]
fn render_errors_are_reported_with_the_template_name() {
    let t = tpl("{{ messages[0].content.nope() }}");
    let err = t.render(&[Message::user("x")], false).unwrap_err();
    assert!(matches!(err, ChatError::TemplateRender { .. }), "{err}");
    assert!(err.to_string().contains("'test'"), "{err}");
}

#[test]
fn context_has_special_tokens_and_none_tools() {
    assert_eq!(
        render_str(
            "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}"
        ),
        "<s>|</s>|True|True|False"
    );
    assert_eq!(
        render_str("{% if tools is not none %}tools{% endif %}{{ messages|length }}"),
        "1"
    );
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let src = "{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}\nend\n";
    assert_eq!(render_str(src), "[user]\nend");
}

#[test]
fn message_key_order_is_kept() {
    assert_eq!(
        render_str("{{ messages[0]|tojson }}"),
        r#"{"role": "user", "content": "hi"}"#
    );
    let t = tpl("{{ messages[0]|tojson }}");
    let m = serde_json::json!({"content": "c", "role": "user", "tool_calls": [{"name": "f"}]});
    assert_eq!(
        t.render_json(&[m], false).unwrap(),
        r#"{"content": "c", "role": "user", "tool_calls": [{"name": "f"}]}"#
    );
}

#[test]
fn tojson_is_python_json_dumps() {
    let t = tpl("{{ x|tojson }}");
    let cases = [
        (
            serde_json::json!("<a href='x'>&</a>"),
            r#""<a href='x'>&</a>""#,
        ),
        (
            serde_json::json!("é\u{1F600}\n\t\"\\\u{1}\u{7f}"),
            "\"é\u{1F600}\\n\\t\\\"\\\\\\u0001\u{7f}\"",
        ),
        (
            serde_json::json!([1, 2.5, 1e16, 1e-5, 0.0001, true, null, [], {}]),
            "[1, 2.5, 1e+16, 1e-05, 0.0001, true, null, [], {}]",
        ),
        (
            serde_json::json!({"b": 1, "a": [1.0, -0.5]}),
            r#"{"b": 1, "a": [1.0, -0.5]}"#,
        ),
    ];
    for (x, want) in cases {
        let got = t
            .env
            .render_str(
                "{{ x|tojson }}",
                minijinja::context! { x => Value::from(Serde(&x)) },
            )
            .unwrap();
        assert_eq!(got, want, "{x}");
    }
    let x = Value::from(Serde(serde_json::json!({"b": [1, {"c": "é"}], "a": {}})));
    let r = |src: &str| {
        t.env
            .render_str(src, minijinja::context! { x => x.clone() })
            .unwrap()
    };
    assert_eq!(
        r("{{ x|tojson(indent=2) }}"),
        "{\n  \"b\": [\n    1,\n    {\n      \"c\": \"é\"\n    }\n  ],\n  \"a\": {}\n}"
    );
    assert_eq!(
        r("{{ x|tojson(indent='\t', sort_keys=true) }}")
            .lines()
            .nth(1),
        Some("\t\"a\": {},")
    );
    assert_eq!(
        r("{{ x|tojson(ensure_ascii=true) }}"),
        r#"{"b": [1, {"c": "\u00e9"}], "a": {}}"#
    );
    assert_eq!(
        r("{{ x|tojson(separators=[',', ':']) }}"),
        r#"{"b":[1,{"c":"é"}],"a":{}}"#
    );
    assert_eq!(
        r("{{ x|tojson(sort_keys=true) }}"),
        r#"{"a": {}, "b": [1, {"c": "é"}]}"#
    );
    assert_eq!(r("{{ x|tojson(indent=0) }}").lines().count(), 9);
    assert_eq!(r("{{ '😀'|tojson(true) }}"), r#""\ud83d\ude00""#);
    assert!(
        t.env
            .render_str("{{ x|tojson(nope=1) }}", minijinja::context! { x => 1 })
            .is_err()
    );
    assert!(
        t.env
            .render_str("{{ undefined_thing|tojson }}", ())
            .is_err()
    );
}

#[test]
fn printed_values_look_like_python() {
    let t = tpl("");
    let r = |src: &str| t.env.render_str(src, ()).unwrap();
    assert_eq!(
        r("{{ true }} {{ none }} {{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 3 }}"),
        "True None 1.0 1e+20 0.30000000000000004 3"
    );
    assert_eq!(
        r("{{ ['a', \"it's\", 1, none, {'k': false}] }}"),
        r#"['a', "it's", 1, None, {'k': False}]"#
    );
    assert_eq!(r("{{ 'x\\ny'|string }}|{{ [1.5]|string }}"), "x\ny|[1.5]");
    assert_eq!(r("{{ ['\\n\\u00a0é'] }}"), "['\\n\\xa0é']");
}

#[test]
fn trim_and_strip_use_python_whitespace() {
    assert_eq!(
        render_str("[{{ '\u{1c}\u{a0} x \u{3000}\n'|trim }}]"),
        "[x]"
    );
    assert_eq!(render_str("[{{ 'xxhixx'|trim('x') }}]"), "[hi]");
    assert_eq!(
        render_str(
            "[{{ '\u{1f} a '.strip() }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}|{{ 'abca'.strip('a') }}]"
        ),
        "[a|a | a|bc]"
    );
    assert_eq!(
        render_str("{{ 'Hello World'.lower().split(' ')|join('-') }}"),
        "hello-world"
    );
    // str.title() is Python's (words start after any uncased character); the filter is Jinja's.
    assert_eq!(
        render_str(r#"{{ '«ok» {"temp": 1} they\'re ǆ ΣΑΣ x'.title() }}|{{ 'o-k «ok»'|title }}"#),
        "«Ok» {\"Temp\": 1} They'Re ǅ Σας X|O-K «ok»"
    );
    assert_eq!(
        render_str("{{ {'a': 1}.items()|list|length }}{{ 'abc'.startswith('ab') }}"),
        "1True"
    );
}

#[test]
fn capitalize_is_python_capitalize() {
    assert_eq!(
        render_str("{{ 'uSER'|capitalize }} {{ 'ßa'|capitalize }} {{ 'ǆemal'|capitalize }}"),
        "User Ssa ǅemal"
    );
}

#[test]
fn loop_controls_and_namespace_work() {
    assert_eq!(
        render_str(
            "{% set ns = namespace(n=0) %}{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
        ),
        "2"
    );
}

#[test]
fn generation_blocks_render_their_body() {
    let src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}\n{%- generation -%}  !  {%- endgeneration %}{% endfor %}";
    assert_eq!(render_str(src), "[hi]!");
    assert_eq!(
        rewrite_generation_tags("{%- generation +%}"),
        "{%- if true +%}"
    );
    assert_eq!(
        rewrite_generation_tags("{% generations %}"),
        "{% generations %}"
    );
    assert_eq!(rewrite_generation_tags("a {% if x %}b"), "a {% if x %}b");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let year = render_str("{{ strftime_now('%Y') }}");
    assert!(year.len() == 4 && year.as_str() >= "2024", "{year}");
    let date = render_str("{{ strftime_now('%d %b %Y') }}");
    assert_eq!(date.len(), 11, "{date}");
}

#[test]
fn hostile_templates_stop_with_an_error() {
    let msgs = [Message::user("hi")];
    for (name, src) in [
        (
            "nested loops",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        (
            "doubling",
            "{% set s = namespace(v='ab') %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
        ),
        (
            "huge output",
            "{% for i in range(100000000) %}0123456789{% endfor %}",
        ),
    ] {
        let t = ChatTemplate::new(name, src, "<s>", "</s>").unwrap();
        let t0 = std::time::Instant::now();
        let e = t.render(&msgs, true).unwrap_err().to_string();
        // Out of fuel, or minijinja's own refusal of a range it cannot pay for.
        assert!(
            e.contains("ran out of its budget") || e.contains("too many elements"),
            "{name}: {e}"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{name}: {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn a_stray_percent_brace_near_generation_is_a_syntax_error_not_a_panic() {
    let e = ChatTemplate::new("t", "{%} generation", "<s>", "</s>");
    assert!(e.is_err());
    let ok = ChatTemplate::new("t", "{% generation %}x{% endgeneration %}", "<s>", "</s>").unwrap();
    assert_eq!(ok.render(&[Message::user("hi")], false).unwrap(), "x");
}
