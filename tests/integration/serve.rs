//! `bitnet serve`: every route, streaming and not, each error status, cancellation, concurrency.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::http::{Server, Stream, request, streamed_text, wait_until};
use crate::util::{convert, fixture, ok};

/// The LLaMA-3-tokenizer fixture, converted into `dir`.
pub(crate) fn model(dir: &tempfile::TempDir) -> PathBuf {
    convert(&fixture("bitnet-llama3-tiny"), dir.path(), &[])
}

pub(crate) fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({
        "model": "anything",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

pub(crate) fn error_of(v: &Value) -> (&str, Option<&str>, Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    (
        e["message"].as_str().unwrap(),
        e["param"].as_str(),
        e["code"].as_str(),
    )
}

#[test]
fn plain_routes_answer_in_their_formats() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    assert!(
        s.log().contains("127.0.0.1:"),
        "binds loopback: {}",
        s.log()
    );

    let h = s.get("/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");

    let m = s.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    let id = m["data"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bitnet-llama3-tiny"), "{m}");
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(
        m["data"].as_array().unwrap().len(),
        1,
        "no reference loaded"
    );
    assert_eq!(s.get(&format!("/v1/models/{id}")).json()["id"], id.as_str());
    let missing = s.get("/v1/models/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(error_of(&missing.json()).2, Some("model_not_found"));

    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text();
    for id in [
        "id=\"prompt\"",
        "id=\"send\"",
        "id=\"stop\"",
        "id=\"m-tok-s\"",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
    assert!(!html.contains("://cdn"), "the page works offline");

    let nf = s.get("/v2/nothing");
    assert_eq!(nf.status, 404);
    error_of(&nf.json());
    let wrong = s.get("/v1/chat/completions");
    assert_eq!(wrong.status, 405);
    error_of(&wrong.json());

    // One generation, then the counters show it.
    let r = s.post("/v1/chat/completions", &chat_body("Hi", 5));
    assert_eq!(r.status, 200, "{}", r.text());
    let stats = s.get("/stats").json();
    assert_eq!(stats["backends"].as_array().unwrap().len(), 1);
    assert!(stats["rss_bytes"].as_u64().unwrap() > 1 << 20, "{stats}");
    assert_eq!(stats["completion_tokens_total"], 5);
    let metrics = s.get("/metrics");
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    assert!(
        text.contains("bitnet_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("bitnet_requests_total{route=\"/v1/chat/completions\",status=\"405\"} 1")
    );
    assert_eq!(s.metric("bitnet_completion_tokens_total"), 5.0);
    assert_eq!(s.metric("bitnet_generations_total"), 1.0);
    assert_eq!(s.metric("bitnet_queue_length{backend=\"packed\"}"), 0.0);
    assert!(text.contains("# TYPE bitnet_decode_tokens_per_second gauge"));
    assert!(text.contains("bitnet_resident_memory_bytes "));
}

#[test]
fn chat_and_text_completions_equal_bitnet_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = model(&dir);
    let f = file.to_str().unwrap();
    let s = Server::start(&file, &[]);
    for prompt in ["The capital of France is", "Hello, my name is"] {
        // `bitnet run` is checked against transformers' generate; the server must say the same.
        let run = |chat: bool| -> Value {
            let mut args = vec!["run", f, "-p", prompt, "--temperature", "0"];
            args.extend(["--max-tokens", "12", "--json"]);
            if chat {
                args.push("--chat");
            }
            serde_json::from_str(&ok(&args)).unwrap()
        };
        let want_text = run(false);
        let r = s.post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["choices"][0]["text"], want_text["text"], "{prompt}");
        let n = want_text["ids"].as_array().unwrap().len();
        assert_eq!(v["usage"]["completion_tokens"], n);
        assert_eq!(
            v["usage"]["total_tokens"].as_u64().unwrap(),
            v["usage"]["prompt_tokens"].as_u64().unwrap() + n as u64
        );
        let reason = if n == 12 { "length" } else { "stop" };
        assert_eq!(v["choices"][0]["finish_reason"], reason);

        let want_chat = run(true);
        let r = s.post("/v1/chat/completions", &chat_body(prompt, 12));
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"], want_chat["text"],
            "{prompt}"
        );
        assert_eq!(
            v["usage"]["prompt_tokens"].as_u64().unwrap(),
            want_chat["prompt_tokens"].as_u64().unwrap()
        );
    }
}

#[test]
fn streaming_sends_openai_chunks_and_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let whole = s
        .post("/v1/chat/completions", &chat_body("Tell me a story", 16))
        .json();
    let mut body = chat_body("Tell me a story", 16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut st = Stream::open(&s.addr, "/v1/chat/completions", &[], &body);
    assert_eq!(st.status, 200);
    assert!(
        st.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "text/event-stream")
    );
    let events = st.rest();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert!(
            c.get("usage").is_some(),
            "include_usage puts usage on every chunk: {c}"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert_eq!(
        usage["usage"]["prompt_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    let fin = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(fin["finish_reason"], whole["choices"][0]["finish_reason"]);
    assert_eq!(fin["delta"], json!({}));
    for c in &chunks[..chunks.len() - 2] {
        assert!(c["choices"][0]["finish_reason"].is_null());
        assert!(c["usage"].is_null());
    }
    assert_eq!(
        streamed_text(&events),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // More than the role chunk and the end: the text came in pieces.
    assert!(chunks.len() > 4, "{}", chunks.len());

    // Text completions stream too; without include_usage there is no usage chunk.
    let mut st = Stream::open(
        &s.addr,
        "/v1/completions",
        &[],
        &json!({"prompt": "Once upon", "max_tokens": 6, "temperature": 0, "stream": true}),
    );
    let events = st.rest();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let whole = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon", "max_tokens": 6, "temperature": 0}),
        )
        .json();
    assert_eq!(
        streamed_text(&events),
        whole["choices"][0]["text"].as_str().unwrap()
    );
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert!(v.get("usage").is_none());
    }
}

#[test]
fn stop_strings_seed_and_lenient_fields() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--lenient"]);
    let full = s
        .post(
            "/v1/completions",
            &json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}),
        )
        .json();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the greedy text cuts it there, as a string or in a list.
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    let stop = words[words.len() / 2];
    let cut = &text[..text.find(stop).unwrap()];
    for stop_field in [json!(stop), json!(["zzzz-not-there", stop])] {
        let v = s
            .post(
                "/v1/completions",
                &json!({"prompt": "The capital of France is", "max_tokens": 12,
                        "temperature": 0, "stop": stop_field, "some_future_field": {"x": 1}}),
            )
            .json();
        assert_eq!(v["choices"][0]["text"], cut, "stop {stop_field}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    // --lenient ignored the unknown field with one warning line per request.
    assert!(
        wait_until(5, || s
            .log()
            .matches("/v1/completions: ignoring unknown field some_future_field (--lenient)")
            .count()
            == 2),
        "{}",
        s.log()
    );
    // Sampling with a seed repeats; content given as text parts works; `developer` is a system role.
    let body = json!({
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
        ],
        "temperature": 0.9, "top_p": 0.95, "seed": 7, "max_tokens": 10, "frequency_penalty": 0
    });
    let a = s.post("/v1/chat/completions", &body).json();
    let b = s.post("/v1/chat/completions", &body).json();
    assert!(a["choices"][0]["message"]["content"].is_string(), "{a}");
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    // The second identical request reused the cached prompt.
    assert!(
        b["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{b}"
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--max-body", "65536"]);
    let post_raw = |body: &[u8]| {
        request(
            &s.addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    let cases: Vec<(&[u8], Option<&str>, &str)> = vec![
        (b"{\"messages\": [", None, "not valid JSON"),
        (b"", None, "empty"),
        (b"[1, 2]", None, "JSON object"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}", None, "JSON"),
        (b"{\"messages\": []}", Some("messages"), "empty"),
        (b"{}", Some("messages"), "required"),
        (b"{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", Some("messages[0].role"), "wizard"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": -1}", Some("temperature"), ">= 0"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}", Some("temperature"), "number"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_p\": 1.5}", Some("top_p"), "[0, 1]"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"bogus_field\": 1}", Some("bogus_field"), "unknown field `bogus_field`"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": []}", Some("tools"), "empty"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 1e39}", Some("temperature"), "32-bit float"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": -5}", Some("max_tokens"), "whole number"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 0}", Some("max_tokens"), "at least 1"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stop\": 5}", Some("stop"), "string"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 17}", Some("n"), "1..=16"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": \"yes\"}", Some("stream"), "boolean"),
    ];
    for (body, param, words) in cases {
        let r = post_raw(body);
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        let v = r.json();
        let (msg, p, _) = error_of(&v);
        assert_eq!(p, param, "{v}");
        assert!(
            msg.contains(words),
            "{:?}: {msg}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // A prompt longer than the context (512 tokens here).
    let long = "word ".repeat(2000);
    let r = s.post("/v1/chat/completions", &chat_body(&long, 4));
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(error_of(&v).2, Some("context_length_exceeded"));
    assert!(error_of(&v).0.contains("512"), "{v}");
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": [1, 2, 99999999], "max_tokens": 2}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r.json()).1, Some("prompt"));
    // A body past --max-body.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let r = s.post("/v1/chat/completions", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(error_of(&r.json()).2, Some("request_too_large"));
    // A huge max_tokens is bounded by the context: it ends with `length` when the context is full.
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": "a", "max_tokens": 1_000_000_000u64,
        "temperature": 0.8, "seed": 1, "stop": []}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let used = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used <= 512, "{v}");
    if v["choices"][0]["finish_reason"] == "length" {
        assert_eq!(used, 512, "{v}");
    }
    // Still serving.
    assert_eq!(
        s.post("/v1/chat/completions", &chat_body("Hi", 3)).status,
        200
    );
    assert_eq!(
        s.metric("bitnet_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"),
        19.0
    );
}

#[test]
fn a_full_queue_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--parallel", "1", "--max-queue", "1"]);
    let long = |seed: u64| {
        json!({"prompt": "a", "max_tokens": 500, "temperature": 1.0, "seed": seed,
               "stream": true, "stop": []})
    };
    // One runs (its first chunk arrived, so it holds the only slot), one waits, the third is refused.
    let mut running = Stream::open(&s.addr, "/v1/completions", &[], &long(1));
    assert_eq!(running.status, 200);
    assert!(running.next_event().is_some());
    let mut waiting = Stream::open(&s.addr, "/v1/completions", &[], &long(2));
    assert_eq!(waiting.status, 200);
    assert!(wait_until(10, || s.get("/stats").json()["queued"] == 1));
    let r = s.post("/v1/completions", &json!({"prompt": "b", "max_tokens": 2}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(error_of(&r.json()).2, Some("queue_full"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Both accepted requests finish.
    assert_eq!(running.rest().last().unwrap(), "[DONE]");
    assert_eq!(waiting.rest().last().unwrap(), "[DONE]");
    assert_eq!(
        s.post("/v1/completions", &json!({"prompt": "b", "max_tokens": 2}))
            .status,
        200
    );
}

#[test]
fn a_client_that_hangs_up_is_cancelled_and_a_slow_one_stalls_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--parallel", "2"]);
    let endless = json!({"prompt": "a", "max_tokens": 100000, "temperature": 1.0, "seed": 3,
                         "stream": true});
    let mut st = Stream::open(&s.addr, "/v1/completions", &[], &endless);
    assert!(st.next_event().is_some());
    assert!(st.next_event().is_some());
    drop(st);
    assert!(
        wait_until(20, || s.metric("bitnet_cancelled_total") == 1.0),
        "the sequence was not cancelled:\n{}",
        s.get("/metrics").text()
    );
    assert!(wait_until(10, || s.get("/stats").json()["active"] == 0));
    // Nothing was counted as a finished generation.
    assert_eq!(s.metric("bitnet_generations_total"), 0.0);

    // A client that never reads its stream: the others are served meanwhile.
    let slow = Stream::open(&s.addr, "/v1/completions", &[], &endless);
    assert_eq!(slow.status, 200);
    for i in 0..3 {
        let r = s.post("/v1/chat/completions", &chat_body(&format!("Hello {i}"), 8));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["usage"]["completion_tokens"], 8);
    }
    drop(slow);
    assert!(wait_until(20, || s.metric("bitnet_cancelled_total") == 2.0));

    // A non-streaming client that hangs up before the answer is cancelled too.
    {
        use std::io::Write;
        let body = json!({"prompt": "a", "max_tokens": 100000, "temperature": 1.0}).to_string();
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        assert!(wait_until(10, || s.get("/stats").json()["active"] == 1));
    }
    assert!(
        wait_until(20, || s.metric("bitnet_cancelled_total") == 3.0),
        "{}",
        s.get("/metrics").text()
    );
    assert_eq!(
        s.post("/v1/completions", &json!({"prompt": "b", "max_tokens": 2}))
            .status,
        200
    );
}

#[test]
fn eight_concurrent_streams_each_get_the_text_they_get_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--parallel", "4"]);
    // Half the prompts are longer than a prefill chunk (64 tokens), so they are fed over several steps
    // while other sequences decode.
    let prompts: Vec<String> = (0..8)
        .map(|i| {
            let long = if i % 2 == 0 {
                "and the sea was calm, ".repeat(10 + 3 * i)
            } else {
                String::new()
            };
            format!("Story number {i}: once upon a time {long}")
        })
        .collect();
    let body = |p: &str| {
        let mut b = chat_body(p, 24);
        b["stream"] = json!(true);
        b
    };
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut st = Stream::open(&s.addr, "/v1/chat/completions", &[], &body(p));
            streamed_text(&st.rest())
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let b = body(p);
                let addr = s.addr.clone();
                sc.spawn(move || {
                    let mut st = Stream::open(&addr, "/v1/chat/completions", &[], &b);
                    let events = st.rest();
                    assert_eq!(events.last().unwrap(), "[DONE]");
                    streamed_text(&events)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    assert!(alone.iter().any(|t| !t.is_empty()));
    // The sequences were decoded together (more sequences than steps), not one after another.
    let steps = s.metric("bitnet_decode_steps_total");
    let seqs = s.metric("bitnet_decode_step_sequences_total");
    assert!(seqs > 1.3 * steps, "{seqs} sequences in {steps} steps");
    assert_eq!(s.metric("bitnet_generations_total"), 16.0);
}

#[test]
fn bad_serve_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = model(&dir);
    let f = file.to_str().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let missing = dir.path().join("missing.bitnet");
    let other = fixture("bitnet-tiny-tied");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["serve", f, "--reference", other.to_str().unwrap()],
            "--reference",
        ),
        (vec!["serve", missing.to_str().unwrap()], "missing.bitnet"),
        (vec!["serve", f, "--parallel", "0"], "--parallel"),
        (vec!["serve", f, "--threads", "0"], "--threads"),
        (vec!["serve", f, "--port", &port], &port),
        (vec!["serve", f, "--kernel", "quantum"], "quantum"),
    ];
    for (args, needle) in cases {
        let o = crate::util::run(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            crate::util::stderr(&o)
        );
        let err = crate::util::stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn sigterm_stops_the_server_even_with_a_stream_open() {
    let dir = tempfile::tempdir().unwrap();
    // One scalar thread: the endless stream outlives the shutdown grace period.
    let mut s = Server::start(&model(&dir), &["--threads", "1", "--kernel", "scalar"]);
    let endless = json!({"prompt": "a", "max_tokens": 100000, "temperature": 1.0, "stream": true});
    let mut st = Stream::open(&s.addr, "/v1/completions", &[], &endless);
    assert!(st.next_event().is_some());
    let status = s.terminate(20).expect("the server ended within 20 s");
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.log().contains("shutting down"), "{}", s.log());
    // The stream ends (closed by the server), never hangs.
    let _ = st.rest();
}
