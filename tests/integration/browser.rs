//! The web chat page of `bitnet serve` in a real headless Chromium: type, send, watch the reply and the
//! live metrics stream in, switch to the FP32 backend, screenshot at desktop and phone widths.
//!
//! The browser is driven by [`crate::chromium`]. The screenshot lands in
//! `target/tmp/browser-test/page.png`; with `BITNET_UPDATE_SCREENSHOT=1` it is also copied to
//! `docs/serve-page.png`, the image the README shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::chromium::*;
use crate::http::Server;
use crate::util::{convert, fixture, repo_root};

/// One look at the page while it works.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    state: String,
    reply_len: u64,
    tokens: String,
    rate: String,
}

const SAMPLE_JS: &str = r#"(() => {
  const replies = document.querySelectorAll('#messages .msg.assistant');
  const last = replies[replies.length - 1];
  return { state: document.body.dataset.state, reply_len: last ? last.textContent.length : 0,
           tokens: document.getElementById('m-tokens').textContent,
           rate: document.getElementById('m-tok-s').textContent };
})()"#;

/// Samples the page until the reply in progress has finished; returns what was seen meanwhile.
fn watch_generation(chrome: &mut Chromium, secs: u64) -> Vec<Sample> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let v = chrome.eval(SAMPLE_JS);
        let s = Sample {
            state: v["state"].as_str().unwrap_or_default().to_string(),
            reply_len: v["reply_len"].as_u64().unwrap_or(0),
            tokens: v["tokens"].as_str().unwrap_or_default().to_string(),
            rate: v["rate"].as_str().unwrap_or_default().to_string(),
        };
        if s.state != "generating" {
            assert!(
                !seen.is_empty(),
                "the page never entered the generating state: {s:?}"
            );
            return seen;
        }
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "still generating after {secs} s; seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The rate figure in `#m-tok-s`, like "123.4 tok/s".
fn rate_figure(text: &str) -> Option<f64> {
    text.strip_suffix(" tok/s")?.parse().ok()
}

/// Checks the stream was seen growing: the reply text and the token count, and a speed figure.
fn check_streamed(seen: &[Sample], what: &str) {
    // Until its first token arrives, a new reply's metrics may still show the previous reply's
    // figures (the page redraws them on the next animation frame): judge from the first token on.
    let live: Vec<&Sample> = seen.iter().filter(|s| s.reply_len > 0).collect();
    let mut lengths: Vec<u64> = live.iter().map(|s| s.reply_len).collect();
    lengths.dedup();
    assert!(
        lengths.len() >= 2 && lengths.is_sorted_by(|a, b| a < b),
        "{what}: the reply did not grow while generating: {seen:?}"
    );
    let mut tokens: Vec<u64> = live.iter().filter_map(|s| s.tokens.parse().ok()).collect();
    tokens.dedup();
    assert!(
        tokens.len() >= 2 && tokens.is_sorted_by(|a, b| a < b),
        "{what}: #m-tokens did not count up while generating: {seen:?}"
    );
    assert!(
        live.iter()
            .any(|s| rate_figure(&s.rate).is_some_and(|r| r > 0.0)),
        "{what}: #m-tok-s showed no speed while generating: {seen:?}"
    );
}

/// The `#compare` rows: [backend label, tok/s, TTFT, tokens, peak mem], and whether each is current.
fn compare_rows(chrome: &mut Chromium) -> Vec<(Vec<String>, bool)> {
    let v = chrome.eval(
        r#"[...document.querySelectorAll('#compare tbody tr')].map((tr) =>
             [[...tr.cells].map((c) => c.textContent), tr.classList.contains('current')])"#,
    );
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("#compare rows {v}: {e}"))
}

/// Sends `text` as the user (typed into #prompt; `by_enter` presses Enter, else clicks #send),
/// watches the reply stream in and checks it finished without an error. Returns the reply.
fn chat_turn(chrome: &mut Chromium, text: &str, by_enter: bool, what: &str) -> String {
    chat_turn_with(chrome, text, by_enter, true, what)
}

/// [`chat_turn`]; `check_stream` also requires the reply to be seen growing (a reply of a few tokens
/// may arrive between two looks).
fn chat_turn_with(
    chrome: &mut Chromium,
    text: &str,
    by_enter: bool,
    check_stream: bool,
    what: &str,
) -> String {
    let before = chrome.eval("document.querySelectorAll('#messages .msg.assistant').length");
    chrome.click("#prompt");
    chrome.type_text(text);
    assert_eq!(
        chrome.eval_str("document.getElementById('prompt').value"),
        text,
        "{what}: typed"
    );
    if by_enter {
        chrome.press_enter();
    } else {
        chrome.click("#send");
    }
    let seen = watch_generation(chrome, 20);
    if check_stream {
        check_streamed(&seen, what);
    }
    let after = chrome.eval("document.querySelectorAll('#messages .msg.assistant').length");
    assert_eq!(
        after.as_u64(),
        before.as_u64().map(|n| n + 1),
        "{what}: one more reply bubble"
    );
    let errors = chrome
        .eval("[...document.querySelectorAll('#messages .msg.error')].map((e) => e.textContent)");
    assert_eq!(errors, json!([]), "{what}: error bubbles");
    let user =
        chrome.eval_str("[...document.querySelectorAll('#messages .msg.user')].pop().textContent");
    assert_eq!(user, text, "{what}: the user's bubble");
    assert_eq!(
        chrome.eval_str("document.getElementById('prompt').value"),
        "",
        "{what}: prompt cleared"
    );
    let reply = chrome
        .eval_str("[...document.querySelectorAll('#messages .msg.assistant')].pop().textContent");
    assert!(!reply.trim().is_empty(), "{what}: empty reply");
    reply
}

/// The fixture `name` converted into `dir` and served with its checkpoint as the FP32 reference, on one
/// thread (slow enough to watch a reply stream).
fn serve_with_reference(name: &str, dir: &Path) -> Server {
    let model = convert(&fixture(name), dir, &[]);
    let reference = fixture(name);
    let reference = reference.to_str().expect("UTF-8 fixture path");
    Server::start(&model, &["--reference", reference, "--threads", "1"])
}

#[test]
fn chat_page_in_headless_chromium() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve_with_reference("bitnet-llama3-tiny", dir.path());
    let stats = server.get("/stats").json();
    let backend_ids: Vec<String> = stats["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("/stats has no backends: {stats}"))
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    let [packed_id, fp32_id] = &backend_ids[..] else {
        panic!("expected the packed and the FP32 backend in /stats: {stats}");
    };

    let mut chrome = Chromium::launch(&binary);
    chrome.open_page();
    chrome.set_viewport(DESKTOP, false);
    let url = format!("http://{}/", server.addr);
    let nav = chrome.call("Page.navigate", json!({"url": url}));
    assert!(nav.get("errorText").is_none(), "navigate to {url}: {nav}");
    chrome.wait_for(10, "document.readyState === 'complete'", "page load");
    assert_eq!(chrome.eval_str("document.title"), "bitnet · chat");
    assert_eq!(chrome.eval_str("document.body.dataset.state"), "idle");

    // The first /stats poll fills the header and shows the backend switch.
    chrome.wait_for(
        10,
        "document.getElementById('conn').textContent === 'connected' && \
         !document.getElementById('backend-field').hidden && \
         document.getElementById('backend').options.length === 2",
        "the backend switch",
    );
    let options =
        chrome.eval("[...document.getElementById('backend').options].map((o) => o.value)");
    assert_eq!(options, json!([packed_id, fp32_id]), "#backend options");
    assert_eq!(
        chrome.eval_str("document.getElementById('backend').value"),
        *packed_id
    );
    let info = chrome.eval_str("document.getElementById('model-info').textContent");
    assert!(info.contains("context 512"), "#model-info: {info}");
    let mem = chrome.eval_str("document.getElementById('m-mem').textContent");
    assert!(mem.ends_with(" MB"), "#m-mem: {mem}");

    // A fixed seed makes the run repeatable; enough tokens to watch them arrive.
    chrome.eval(
        "document.getElementById('max-tokens').value = '160'; \
         document.getElementById('seed').value = '7'; true",
    );
    let t0 = Instant::now();
    let first = chat_turn(
        &mut chrome,
        "Hello! What is a ternary weight?",
        false,
        "packed reply",
    );
    let first_secs = t0.elapsed().as_secs_f64();
    let tokens = chrome.eval_str("document.getElementById('m-tokens').textContent");
    let tokens: u64 = tokens
        .parse()
        .unwrap_or_else(|_| panic!("#m-tokens after the reply: {tokens:?}"));
    assert!((1..=160).contains(&tokens), "#m-tokens {tokens}");
    for id in ["m-ttft", "m-elapsed"] {
        let t = chrome.eval_str(&format!("document.getElementById('{id}').textContent"));
        assert!(t.ends_with(" ms") || t.ends_with(" s"), "#{id}: {t:?}");
    }
    let rows = compare_rows(&mut chrome);
    assert_eq!(rows.len(), 2, "#compare: {rows:?}");
    let (packed_row, current) = &rows[0];
    assert!(*current, "the packed row is current: {rows:?}");
    assert!(
        packed_row[1].parse::<f64>().is_ok_and(|r| r > 0.0),
        "packed tok/s: {rows:?}"
    );
    assert_eq!(packed_row[3], tokens.to_string(), "packed tokens: {rows:?}");
    assert_eq!(rows[1].0[1], "—", "no FP32 run yet: {rows:?}");

    let steps_before = server.metric("bitnet_decode_steps_total");
    let prompt_before = server.metric("bitnet_prompt_tokens_total");
    let completion_before = server.metric("bitnet_completion_tokens_total");

    // Switch to the FP32 reference and ask again, this time with the Enter key.
    chrome.eval(&format!(
        "const s = document.getElementById('backend'); s.value = {fp32_id:?}; \
         s.dispatchEvent(new Event('change', {{bubbles: true}})); true"
    ));
    assert_eq!(
        chrome.eval_str("document.getElementById('m-backend').textContent"),
        "FP32 reference"
    );
    chrome.eval("document.getElementById('max-tokens').value = '48'; true");
    let second = chat_turn(&mut chrome, "And in FP32?", true, "FP32 reply");
    let rows = compare_rows(&mut chrome);
    assert!(rows[1].1 && !rows[0].1, "the FP32 row is current: {rows:?}");
    for (cells, _) in &rows {
        assert!(
            cells[1].parse::<f64>().is_ok_and(|r| r > 0.0),
            "a tok/s per backend: {rows:?}"
        );
        assert!(
            cells[3].parse::<u64>().is_ok_and(|n| n > 0),
            "tokens per backend: {rows:?}"
        );
        assert!(
            cells[4].ends_with("MB"),
            "peak memory per backend: {rows:?}"
        );
    }
    assert_eq!(
        rows[0].0[3],
        tokens.to_string(),
        "the packed row kept its figures: {rows:?}"
    );
    // The reference answered (the packed worker took no decode step), and the request carried the
    // whole conversation: its prompt held the first reply.
    let fp32_tokens: f64 = rows[1].0[3].parse().expect("FP32 tokens");
    assert_eq!(
        server.metric("bitnet_decode_steps_total"),
        steps_before,
        "the packed worker decoded the FP32 request"
    );
    assert_eq!(
        server.metric("bitnet_completion_tokens_total") - completion_before,
        fp32_tokens,
        "completion tokens of the FP32 reply"
    );
    let prompt = server.metric("bitnet_prompt_tokens_total") - prompt_before;
    assert!(
        prompt > tokens as f64,
        "the FP32 request's prompt has {prompt} tokens: not the whole conversation"
    );

    // The desktop screenshot: a real rendering, with both replies on the page.
    let png = chrome.screenshot();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-test");
    let page_png = out_dir.join("page.png");
    save(&page_png, &png);
    check_not_blank(&decode_png(&png), DESKTOP, "desktop screenshot");
    let bubbles = chrome.eval(
        "[...document.querySelectorAll('#messages .msg')].map((m) => [m.className, m.textContent])",
    );
    let expected = json!([
        ["msg user", "Hello! What is a ternary weight?"],
        ["msg assistant", first],
        ["msg user", "And in FP32?"],
        ["msg assistant", second],
    ]);
    assert_eq!(bubbles, expected, "the conversation on the page");

    // At phone width the layout stacks: nothing sticks out sideways.
    chrome.set_viewport(PHONE, true);
    chrome.wait_for(
        5,
        &format!("window.innerWidth === {}", PHONE.0),
        "the phone viewport",
    );
    let width = chrome.eval("document.documentElement.scrollWidth");
    assert!(
        width.as_u64().is_some_and(|w| w <= u64::from(PHONE.0)),
        "horizontal overflow at {} px: scrollWidth {width}",
        PHONE.0
    );
    let phone = chrome.screenshot();
    save(&out_dir.join("phone.png"), &phone);
    check_not_blank(&decode_png(&phone), PHONE, "phone screenshot");

    let errors = chrome.page_errors();
    assert!(
        errors.is_empty(),
        "the page reported errors:\n{}",
        errors.join("\n")
    );
    eprintln!(
        "browser test: {tokens} tokens packed at {} tok/s, {} FP32 at {} tok/s (the page's figures); \
         first reply in {first_secs:.1} s; screenshots in {}",
        rows[0].0[1],
        rows[1].0[3],
        rows[1].0[1],
        out_dir.display()
    );
}

/// The README's screenshot: the demo model trained here (so the page shows English), one answer from the
/// packed model and one from the FP32 reference. `BITNET_UPDATE_SCREENSHOT=1` copies it to
/// docs/serve-page.png.
#[test]
fn demo_model_screenshot_in_headless_chromium() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve_with_reference("demo", dir.path());
    let mut chrome = Chromium::launch(&binary);
    chrome.open_page();
    chrome.set_viewport(DESKTOP, false);
    let url = format!("http://{}/", server.addr);
    let nav = chrome.call("Page.navigate", json!({"url": url}));
    assert!(nav.get("errorText").is_none(), "navigate to {url}: {nav}");
    chrome.wait_for(10, "document.readyState === 'complete'", "page load");
    chrome.wait_for(
        10,
        "document.getElementById('backend').options.length === 2",
        "the backend switch",
    );
    // The README's sampling settings for the demo model.
    chrome.eval(
        "document.getElementById('temperature').value = '0.7'; \
         document.getElementById('top-p').value = '0.9'; \
         document.getElementById('seed').value = '3'; \
         document.getElementById('max-tokens').value = '60'; true",
    );
    let first = chat_turn_with(
        &mut chrome,
        "What should the Congress do this year?",
        false,
        false,
        "demo packed reply",
    );
    chrome.eval(
        "const s = document.getElementById('backend'); s.value = s.options[1].value; \
         s.dispatchEvent(new Event('change', {bubbles: true})); true",
    );
    let second = chat_turn_with(
        &mut chrome,
        "And what about the economy?",
        true,
        false,
        "demo FP32 reply",
    );
    // Trained on English: the replies are words, not byte soup.
    for reply in [&first, &second] {
        let letters = reply
            .chars()
            .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
            .count();
        assert!(
            letters * 10 >= reply.chars().count() * 8,
            "not English-looking: {reply:?}"
        );
    }
    let png = chrome.screenshot();
    check_not_blank(&decode_png(&png), DESKTOP, "demo screenshot");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-test/demo.png");
    save(&out, &png);
    if env_is_1("BITNET_UPDATE_SCREENSHOT") {
        let docs = repo_root().join("docs/serve-page.png");
        save(&docs, &png);
        eprintln!("updated {}", docs.display());
    }
    let errors = chrome.page_errors();
    assert!(
        errors.is_empty(),
        "the page reported errors:\n{}",
        errors.join("\n")
    );
}

#[test]
#[should_panic(expected = "only 1 colours")]
fn a_blank_screenshot_is_rejected() {
    let (width, height) = DESKTOP;
    let blank = Image {
        width,
        height,
        rgb: vec![[255; 3]; (width * height) as usize],
    };
    check_not_blank(&blank, DESKTOP, "blank");
}
