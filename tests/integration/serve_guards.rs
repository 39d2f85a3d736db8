//! `bitnet serve` against clients it must refuse or outlast: the API key, other sites (Host names, form
//! posts), slow and idle connections, and prompts too long to tokenize.

use serde_json::json;

use crate::http::{Server, request};
use crate::serve::{chat_body, error_of, model};

#[test]
fn the_api_key_guards_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &["--api-key", "sesame"]);
    let body = chat_body("Hi", 2).to_string();
    let json = ("Content-Type", "application/json");
    for (headers, status) in [
        (vec![json], 401),
        (vec![json, ("Authorization", "Bearer wrong")], 401),
        (vec![json, ("Authorization", "sesame")], 401),
        (vec![json, ("Authorization", "Bearer sesame")], 200),
    ] {
        let r = request(
            &s.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            body.as_bytes(),
        );
        assert_eq!(r.status, status, "{headers:?}: {}", r.text());
        if status == 401 {
            assert_eq!(error_of(&r.json()).2, Some("invalid_api_key"));
        }
    }
    assert_eq!(s.get("/v1/models").status, 401);
    assert_eq!(s.get("/metrics").status, 401);
    // The page and the health check stay open; the page asks for the key.
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/").status, 200);
    assert_eq!(s.get("/stats").json()["auth"], true);
}

#[test]
fn other_sites_cannot_reach_the_server_by_name_or_by_form() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let body = chat_body("Hi", 2).to_string();
    let json = ("Content-Type", "application/json");
    // A DNS-rebinding page sends its own name as Host.
    let r = request(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[json, ("Host", "evil.example")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_of(&r.json()).2, Some("host_not_allowed"));
    let r = request(
        &s.addr,
        "GET",
        "/v1/models",
        &[("Host", "evil.example:8080")],
        b"",
    );
    assert_eq!(r.status, 403);
    // A cross-site form or `text/plain` fetch needs no preflight: its body is refused unread.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = request(
            &s.addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", ct)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
        assert_eq!(error_of(&r.json()).2, Some("unsupported_media_type"));
    }
    let r = request(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 415);
    // The loopback names work, with a charset too.
    let port = s.addr.rsplit(':').next().unwrap();
    let host = format!("localhost:{port}");
    let r = request(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Host", &host),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn slow_and_idle_connections_are_closed_and_cannot_exhaust_the_server() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &model(&dir),
        &["--max-connections", "8", "--header-timeout", "1"],
    );
    // A client that sends half a request head and then nothing is closed after the header timeout.
    let mut slow = std::net::TcpStream::connect(&s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "closed after {waited:?} ({n} bytes: {:?})",
        String::from_utf8_lossy(&buf[..n])
    );
    // Many idle connections, more than the limit: the extra ones are closed at once, and once the
    // header timeout has passed an honest request is served.
    let idle: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(&s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(1600));
    let r = s.post("/v1/completions", &json!({"prompt": "a", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    drop(idle);
}

#[test]
fn a_huge_prompt_is_refused_before_it_is_tokenized() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let text = "word ".repeat(700_000);
    for (route, body) in [
        ("/v1/completions", json!({"prompt": text, "max_tokens": 2})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": text}], "max_tokens": 2}),
        ),
    ] {
        let t0 = std::time::Instant::now();
        let r = s.post(route, &body);
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert!(
            r.text().contains("more than the context"),
            "{route}: {}",
            r.text()
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(3),
            "{route}: {:?}",
            t0.elapsed()
        );
    }
}
