//! `bitnet serve`'s routes beside generation: /tokenize and /detokenize against transformers' ids
//! (fixtures/tokenizer-cases.json, the fixture's own tokenizer), /v1/embeddings, the context in /v1/models,
//! the Responses API's 404, CORS, `X-Request-Id`, and the request log.

use serde_json::{Value, json};

use crate::http::{Server, request};
use crate::serve::{chat_body, error_of, model};

fn post_with(s: &Server, path: &str, headers: &[(&str, &str)], body: &Value) -> crate::http::Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(&s.addr, "POST", path, &h, body.to_string().as_bytes())
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn tokenize_and_detokenize_give_transformers_ids_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--ctx", "512"]);
    let oracle: Value = serde_json::from_slice(
        &std::fs::read(crate::util::repo_root().join("fixtures/tokenizer-cases.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(
            crate::util::repo_root().join(oracle["llama3"]["tokenizer"].as_str().unwrap())
        )
        .unwrap(),
        std::fs::read(crate::util::repo_root().join("fixtures/bitnet-llama3-tiny/tokenizer.json"))
            .unwrap(),
        "the oracle's tokenizer is the served model's"
    );
    let cases = oracle["llama3"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let r = s.post("/tokenize", &json!({"content": text}));
        assert_eq!(r.status, 200, "{text:?}: {}", r.text());
        let got = ids(&r.json()["tokens"]);
        assert_eq!(got, ids(&c["ids"]), "{text:?}");
        let r = s.post("/detokenize", &json!({"tokens": got}));
        assert_eq!(r.json()["content"], c["decoded"], "{text:?}");
        // The pieces, as text or as bytes where a piece is not UTF-8 alone, spell the text.
        let r = s.post("/tokenize", &json!({"content": text, "with_pieces": true}));
        let mut bytes = Vec::new();
        for p in r.json()["tokens"].as_array().unwrap() {
            assert!(p["id"].is_u64(), "{p}");
            match &p["piece"] {
                Value::String(t) => bytes.extend_from_slice(t.as_bytes()),
                Value::Array(b) => bytes.extend(b.iter().map(|x| x.as_u64().unwrap() as u8)),
                other => panic!("{text:?}: piece {other}"),
            }
        }
        assert_eq!(String::from_utf8(bytes).unwrap(), text, "{text:?}");
    }
    // Special tokens: read as tokens by default, as text with parse_special false; BOS on request.
    let r = s.post("/tokenize", &json!({"content": "<|eot_id|>"}));
    assert_eq!(ids(&r.json()["tokens"]), vec![128009]);
    let r = s.post(
        "/tokenize",
        &json!({"content": "<|eot_id|>", "parse_special": false}),
    );
    let plain = ids(&r.json()["tokens"]);
    assert!(plain.len() > 1 && !plain.contains(&128009), "{plain:?}");
    let r = s.post("/tokenize", &json!({"content": "Hi", "add_special": true}));
    assert_eq!(ids(&r.json()["tokens"])[0], 128000);
    // Bad input names its field.
    let r = s.post("/detokenize", &json!({"tokens": [1, 999999]}));
    assert_eq!((r.status, error_of(&r.json()).1), (400, Some("tokens")));
    let r = s.post("/tokenize", &json!({"content": "x", "bogus": 1}));
    assert_eq!((r.status, error_of(&r.json()).1), (400, Some("bogus")));
    let r = s.post("/tokenize", &json!({"text": "x"}));
    assert_eq!(r.status, 400, "{}", r.text());
    // The context a client must fit, and the Responses API's clear 404.
    let m = s.get("/v1/models").json();
    assert_eq!(m["data"][0]["context_length"], 512, "{m}");
    assert_eq!(m["data"][0]["max_model_len"], 512, "{m}");
    let r = s.post("/v1/responses", &json!({"model": "x", "input": "hi"}));
    assert_eq!(r.status, 404);
    assert!(error_of(&r.json()).0.contains("/v1/chat/completions"));
}

#[test]
fn embeddings_are_unit_mean_pooled_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let dims = crate::util::inspect_json(&model(&dir))["config"]["hidden_size"]
        .as_u64()
        .unwrap() as usize;
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "m", "input": ["The economy", "Our nation", "The economy"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    let vecs: Vec<Vec<f64>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(
                (d["object"].as_str(), d["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    for e in &vecs {
        assert_eq!(e.len(), dims);
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_eq!(vecs[0], vecs[2], "the same text, the same vector");
    assert_ne!(vecs[0], vecs[1]);
    // Token ids (the prompt's, BOS included) give the text's vector; base64 holds the same floats.
    let toks = ids(&s
        .post(
            "/tokenize",
            &json!({"content": "The economy", "add_special": true}),
        )
        .json()["tokens"]);
    let r = s.post(
        "/v1/embeddings",
        &json!({"input": toks, "encoding_format": "base64"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], toks.len());
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r.json()["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let json_floats: Vec<f32> = vecs[0].iter().map(|&x| x as f32).collect();
    assert_eq!(floats, json_floats);
    for (body, param) in [
        (json!({"input": "x", "dimensions": 8}), "dimensions"),
        (
            json!({"input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"input": [[1, 99999999]]}), "input[0]"),
        (json!({"input": []}), "input"),
    ] {
        let r = s.post("/v1/embeddings", &body);
        assert_eq!(
            (r.status, error_of(&r.json()).1),
            (400, Some(param)),
            "{body}"
        );
    }
}

#[test]
fn cors_request_ids_and_the_request_log() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(&dir);
    let s = Server::start(&m, &["--cors-origin", "http://app.example", "-v"]);
    let preflight = |s: &Server, origin: &str| {
        request(
            &s.addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            b"",
        )
    };
    let r = preflight(&s, "http://app.example");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let allowed = r.header("access-control-allow-headers").unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let r = preflight(&s, "http://evil.example");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The answer carries the origin and the request id, the client's when it sends one.
    let r = post_with(
        &s,
        "/v1/chat/completions",
        &[
            ("Origin", "http://app.example"),
            ("X-Request-Id", "abc-123"),
        ],
        &chat_body("Hi", 3),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = post_with(
        &s,
        "/v1/chat/completions",
        &[("Origin", "http://evil.example")],
        &chat_body("Hi", 3),
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(
        r.header("x-request-id")
            .is_some_and(|v| v.starts_with("req-"))
    );
    // One log line per request, with its status, tokens and id (a stream's when it ends).
    let mut body = chat_body("Hi", 3);
    body["stream"] = json!(true);
    let r = post_with(
        &s,
        "/v1/chat/completions",
        &[("X-Request-Id", "stream-9")],
        &body,
    );
    assert_eq!(r.status, 200);
    assert!(
        crate::http::wait_until(10, || s.log().contains("id=stream-9")),
        "{}",
        s.log()
    );
    let log = s.log();
    let line = |id: &str| {
        log.lines()
            .find(|l| l.contains(&format!("id={id}")))
            .unwrap_or_else(|| panic!("{log}"))
            .to_string()
    };
    let l = line("abc-123");
    assert!(
        l.contains("POST /v1/chat/completions 200 tokens=") && l.contains(" ms "),
        "{l}"
    );
    assert!(line("stream-9").contains("200 tokens="), "{log}");
    // `*` with a key: a preflight needs no key, an answer without one is a 401 the page can read.
    let k = Server::start(&m, &["--cors-origin", "*", "--api-key", "sekret"]);
    let r = preflight(&k, "https://anywhere.example");
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (204, Some("*"))
    );
    let r = post_with(
        &k,
        "/v1/chat/completions",
        &[("Origin", "https://anywhere.example")],
        &chat_body("Hi", 3),
    );
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (401, Some("*"))
    );
    let r = post_with(
        &k,
        "/tokenize",
        &[("Authorization", "Bearer sekret")],
        &json!({"content": "x"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(k.post("/tokenize", &json!({"content": "x"})).status, 401);
}
