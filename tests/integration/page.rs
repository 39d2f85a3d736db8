//! The chat page's own features in headless Chromium: Markdown rendered without HTML injection, the
//! conversation and settings kept across a reload, Regenerate, the oldest turns left out (with a note)
//! when the conversation outgrows the context, and a page on another origin calling the API (CORS).

use serde_json::json;

use crate::chromium::*;
use crate::http::Server;
use crate::serve::model;

const REPLY: &str = "# Title\n\nSome **bold**, *italic* and `inline code`; a [link](https://example.com/) \
and a [bad one](javascript:alert(1)).\n\n- one\n- two\n\n1. first\n2. second\n\n> quoted\n\n\
```rust\nfn main() {}\n```\n\n<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";

#[test]
fn page_renders_markdown_safely_and_keeps_the_chat() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = model(&dir);
    let other = Server::start(&m, &[]);
    let origin = format!("http://{}", other.addr);
    let s = Server::start(&m, &["--ctx", "96", "--cors-origin", &origin]);
    let mut chrome = Chromium::launch(&binary);
    chrome.open_page();
    chrome.set_viewport(DESKTOP, false);
    let url = format!("http://{}/", s.addr);
    chrome.call("Page.navigate", json!({"url": url}));
    chrome.wait_for(10, "document.readyState === 'complete'", "page load");

    // A kept conversation, with a reply full of Markdown and HTML, comes back on reload.
    let state = json!({
        "conversation": [{"role": "user", "content": "<b>hi</b> **not bold**"},
                         {"role": "assistant", "content": REPLY}],
        "dropped": 0, "system": "Be brief.",
        "settings": {"temperature": "0", "top-k": "7", "min-p": "0.05", "stop-strings": "END", "max-tokens": "4"}
    });
    chrome.eval(&format!(
        "localStorage.setItem('bitnet.chat', JSON.stringify({state})); window.old = true; true"
    ));
    chrome.call("Page.reload", json!({}));
    chrome.wait_for(
        10,
        "!window.old && document.readyState === 'complete' && \
         document.querySelectorAll('#messages .msg').length === 2",
        "the kept conversation",
    );
    let md = chrome.eval(
        "(() => { const r = document.querySelector('#messages .msg.assistant');
           return { h: r.querySelector('h3')?.textContent, strong: r.querySelector('strong')?.textContent,
             em: r.querySelector('em')?.textContent, code: r.querySelector('p code')?.textContent,
             block: r.querySelector('.code pre code')?.textContent, lang: r.querySelector('.code-head span')?.textContent,
             links: [...r.querySelectorAll('a')].map((a) => a.href), ul: r.querySelectorAll('ul li').length,
             ol: r.querySelectorAll('ol li').length, quote: r.querySelector('blockquote')?.textContent,
             html: document.querySelectorAll('#messages img, #messages script, #messages b').length,
             pwned: window.pwned ?? null, raw: r.textContent,
             user: document.querySelector('#messages .msg.user').textContent }; })()",
    );
    assert_eq!(md["h"], "Title", "{md}");
    assert_eq!(md["strong"], "bold", "{md}");
    assert_eq!(md["em"], "italic", "{md}");
    assert_eq!(md["code"], "inline code", "{md}");
    assert_eq!(md["block"], "fn main() {}", "{md}");
    assert_eq!(md["lang"], "rust", "{md}");
    assert_eq!(md["links"], json!(["https://example.com/"]), "{md}");
    assert_eq!(
        (md["ul"].as_u64(), md["ol"].as_u64()),
        (Some(2), Some(2)),
        "{md}"
    );
    assert_eq!(md["quote"], "quoted", "{md}");
    assert_eq!(md["html"], 0, "no element came from the text: {md}");
    assert_eq!(md["pwned"], json!(null), "{md}");
    let raw = md["raw"].as_str().unwrap();
    assert!(
        raw.contains("<img src=x onerror=") && raw.contains("javascript:alert(1)"),
        "{md}"
    );
    assert_eq!(
        md["user"], "<b>hi</b> **not bold**",
        "a user's text is shown as typed"
    );
    let settings = chrome.eval(
        "['top-k', 'min-p', 'stop-strings', 'system', 'temperature'].map((id) => document.getElementById(id).value)",
    );
    assert_eq!(settings, json!(["7", "0.05", "END", "Be brief.", "0"]));

    // The kept conversation is longer than the context of 96 tokens: the oldest exchange is left out
    // with a note, and the question is answered.
    chrome.click("#prompt");
    chrome.type_text("Hello there");
    chrome.press_enter();
    chrome.wait_for(30, "document.body.dataset.state === 'idle' && document.querySelectorAll('#messages .msg.assistant').length === 2", "the reply");
    let after = chrome.eval(
        "({ note: document.querySelector('.note-msg')?.textContent ?? '',
            dropped: [...document.querySelectorAll('#messages .msg.dropped')].length,
            errors: [...document.querySelectorAll('#messages .msg.error')].map((e) => e.textContent),
            context: document.getElementById('m-context').textContent,
            regen: [...document.querySelectorAll('.regenerate')].map((b) => b.hidden) })",
    );
    assert!(
        after["note"]
            .as_str()
            .unwrap()
            .contains("context of 96 tokens"),
        "{after}"
    );
    assert_eq!(after["dropped"], 2, "{after}");
    assert_eq!(after["errors"], json!([]), "{after}");
    assert!(
        after["context"].as_str().unwrap().ends_with(" / 96"),
        "{after}"
    );
    assert_eq!(
        after["regen"],
        json!([true, false]),
        "Regenerate on the last reply only: {after}"
    );

    // Regenerate replaces the last reply; what is kept survives a reload.
    let prompts_before = s.metric("bitnet_prompt_tokens_total");
    chrome.click("#messages > .actions:last-child .regenerate");
    chrome.wait_for(
        30,
        "document.body.dataset.state === 'idle'",
        "the regenerated reply",
    );
    assert!(
        s.metric("bitnet_prompt_tokens_total") > prompts_before,
        "a new request"
    );
    assert_eq!(
        chrome.eval("document.querySelectorAll('#messages .msg.assistant').length"),
        2
    );
    let kept = chrome.eval("JSON.parse(localStorage.getItem('bitnet.chat'))");
    assert_eq!(kept["conversation"].as_array().unwrap().len(), 4, "{kept}");
    assert_eq!(kept["dropped"], 2, "{kept}");
    chrome.eval("window.old = true");
    chrome.call("Page.reload", json!({}));
    chrome.wait_for(
        10,
        "!window.old && document.readyState === 'complete' && \
         document.querySelectorAll('#messages .msg').length === 4 && \
         document.querySelectorAll('#messages .msg.dropped').length === 2",
        "the conversation after a reload",
    );
    // The 400 that made the page leave the oldest turn out is the only error the browser saw.
    let errors: Vec<String> = chrome
        .page_errors()
        .into_iter()
        .filter(|e| !e.contains("responded with a status of 400"))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // A page on another origin: allowed by --cors-origin, refused by a server without it.
    chrome.call("Page.navigate", json!({"url": format!("{origin}/")}));
    chrome.wait_for(
        10,
        "document.readyState === 'complete'",
        "the other origin's page",
    );
    let call = |chrome: &mut Chromium, addr: &str| {
        chrome.eval(&format!(
            "fetch('http://{addr}/v1/chat/completions', {{method: 'POST',
               headers: {{'Content-Type': 'application/json', 'X-Request-Id': 'cross-1'}},
               body: JSON.stringify({{messages: [{{role: 'user', content: 'Hi'}}], max_tokens: 2}})}})
             .then(async (r) => ({{status: r.status, id: r.headers.get('x-request-id'),
                                   object: (await r.json()).object}}))
             .catch((e) => ({{failed: String(e)}}))"
        ))
    };
    let ok = call(&mut chrome, &s.addr);
    assert_eq!(
        ok,
        json!({"status": 200, "id": "cross-1", "object": "chat.completion"})
    );
    let third = Server::start(&m, &[]);
    let refused = call(&mut chrome, &third.addr);
    assert!(
        refused["failed"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{refused}"
    );
}
