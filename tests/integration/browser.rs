//! The web chat page of `bitnet serve` in a real headless Chromium: type, send, watch the reply and the
//! live metrics stream in, switch to the FP32 backend, screenshot at desktop and phone widths.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! ended by NUL on file descriptors 3 and 4), so no port, websocket or extra crate is needed. The
//! browser is `$BITNET_CHROMIUM`, else `/usr/bin/chromium`; when it is missing the test is skipped
//! with a note, unless `BITNET_CI=1`, where it fails. The screenshot lands in
//! `target/tmp/browser-test/page.png`; with `BITNET_UPDATE_SCREENSHOT=1` it is also copied to
//! `docs/serve-page.png`, the image the README shows.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::Server;
use crate::util::{convert, fixture, repo_root};

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);
/// The page's accent colour (`--user-bg`, `#send`): the user's bubble and the Send button.
const ACCENT: [u8; 3] = [0x25, 0x63, 0xeb];

fn chromium_path() -> PathBuf {
    std::env::var_os("BITNET_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn env_is_1(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// A headless Chromium with one page, driven over `--remote-debugging-pipe`; closed on drop.
struct Chromium {
    child: Child,
    /// Commands to the browser (its descriptor 3).
    commands: ChildStdin,
    /// Messages from the browser (its descriptor 4), one JSON value each, read by a thread.
    messages: Receiver<Result<Value, String>>,
    next_id: u64,
    /// The page's session, once attached.
    session: Option<String>,
    /// Events received so far (messages without an id).
    events: Vec<Value>,
    log_path: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn launch(binary: &Path) -> Chromium {
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let log_path = profile.path().join("chromium.log");
        let log = File::create(&log_path).expect("create the Chromium log");
        // The shell hands our stdin and stdout pipes to Chromium as its descriptors 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--remote-debugging-pipe",
                "--hide-scrollbars",
                &format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                &format!(
                    "--user-data-dir={}",
                    profile.path().join("profile").display()
                ),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let commands = child.stdin.take().expect("Chromium's command pipe");
        let output = child.stdout.take().expect("Chromium's message pipe");
        let (tx, messages) = channel::<Result<Value, String>>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let msg = serde_json::from_slice::<Value>(&buf).map_err(|e| {
                    format!(
                        "Chromium sent a message that is not JSON ({e}): {}",
                        String::from_utf8_lossy(&buf)
                    )
                });
                if tx.send(msg).is_err() {
                    return; // The test is over.
                }
                buf.clear();
            }
        });
        Chromium {
            child,
            commands,
            messages,
            next_id: 1,
            session: None,
            events: Vec::new(),
            log_path,
            _profile: profile,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!("{method}: Chromium's pipe is closed ({e}):\n{}", self.log());
        }
        id
    }

    /// Sends a command (to the page once attached) and returns its result; panics on an error.
    fn call_in(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.send(method, params.clone(), session);
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match self.messages.recv_timeout(left) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => panic!("{method} {params}: {e}"),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{method} {params}: no answer in {CALL_TIMEOUT:?}:\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method} {params}: Chromium exited:\n{}", self.log())
                }
            };
            if msg["id"].as_u64() != Some(id) {
                if msg.get("id").is_none() {
                    self.events.push(msg);
                }
                continue;
            }
            if let Some(err) = msg.get("error") {
                panic!("{method} {params}: {err}");
            }
            return msg["result"].clone();
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.call_in(method, params, None)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone().expect("attached to a page");
        self.call_in(method, params, Some(&session))
    }

    /// Opens a page, attaches to it and enables the events the test watches.
    fn open_page(&mut self) {
        let target = self.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].clone();
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no sessionId in {attached}"))
                .to_string(),
        );
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(domain, json!({}));
        }
    }

    /// Evaluates a JavaScript expression (awaiting a promise) and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    fn eval_str(&mut self, expr: &str) -> String {
        let v = self.eval(expr);
        v.as_str()
            .unwrap_or_else(|| panic!("{expr} is {v}, not a string"))
            .to_string()
    }

    /// Polls `expr` until it is truthy; panics with `what` after `secs`.
    fn wait_for(&mut self, secs: u64, expr: &str, what: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            let v = self.eval(expr);
            if v.as_bool() == Some(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what}: `{expr}` still false after {secs} s");
    }

    fn set_viewport(&mut self, (width, height): (u32, u32), mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// A left click in the middle of the element `selector`, as real mouse events.
    fn click(&mut self, selector: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); e.scrollIntoView({{block: 'nearest'}});
               const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (rect[0].as_f64(), rect[1].as_f64());
        let (Some(x), Some(y)) = (x, y) else {
            panic!("no position for {selector}: {rect}");
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Types `text` into the focused element (as an input method commits it).
    fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "text": "\r"}),
            );
        }
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = r["data"].as_str().expect("screenshot data");
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
            .expect("the screenshot is base64 (DevTools sends binary data so)")
    }

    /// JavaScript exceptions, console errors and error log entries (failed loads) seen so far.
    fn page_errors(&mut self) -> Vec<String> {
        // Collect what arrived since the last command.
        while let Ok(m) = self.messages.try_recv() {
            self.events.push(m.unwrap_or_else(|e| panic!("{e}")));
        }
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        let d = &p["exceptionDetails"];
                        let what = d["exception"]["description"]
                            .as_str()
                            .map_or_else(|| d.to_string(), str::to_string);
                        Some(format!("exception: {what}"))
                    }
                    "Runtime.consoleAPICalled" if p["type"] == "error" => {
                        Some(format!("console.error: {}", p["args"]))
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        Some(format!("log: {}", p["entry"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ask politely (the browser then ends its helper processes), then make sure.
        let mut msg = json!({"id": 0, "method": "Browser.close"})
            .to_string()
            .into_bytes();
        msg.push(0);
        let _ = self.commands.write_all(&msg);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A decoded screenshot: its size and RGB pixels.
struct Image {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

fn decode_png(bytes: &[u8]) -> Image {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a PNG of a sane size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "the screenshot is not in colour: {:?}",
        info.color_type
    );
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image {
        width: info.width,
        height: info.height,
        rgb,
    }
}

/// Checks a screenshot is a rendered page: its size, many colours, not one flat background.
fn check_not_blank(img: &Image, size: (u32, u32), name: &str) {
    assert_eq!((img.width, img.height), size, "{name}: screenshot size");
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    for p in &img.rgb {
        *counts.entry(*p).or_default() += 1;
    }
    let mut by_count: Vec<usize> = counts.values().copied().collect();
    by_count.sort_unstable_by(|a, b| b.cmp(a));
    let total = img.rgb.len();
    // Text is anti-aliased: a rendered page of text has hundreds of shades.
    assert!(counts.len() >= 100, "{name}: only {} colours", counts.len());
    // The two largest flat areas (page and panel backgrounds) leave room for text, bubbles, borders.
    let rest = total - by_count.iter().take(2).sum::<usize>();
    assert!(
        rest * 100 >= total * 3,
        "{name}: {rest} of {total} pixels outside the two main background colours"
    );
    let accent = counts.get(&ACCENT).copied().unwrap_or(0);
    assert!(
        accent >= 1000,
        "{name}: {accent} pixels of the accent colour (user bubble, Send button)"
    );
}

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

fn save(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Chromium's path, or `None` (with a note) when it is missing outside CI; under `BITNET_CI=1` a missing
/// Chromium fails.
fn chromium_or_skip() -> Option<PathBuf> {
    let binary = chromium_path();
    if !binary.exists() {
        assert!(
            !env_is_1("BITNET_CI"),
            "BITNET_CI=1 but there is no Chromium at {} (apt-get install chromium, or set BITNET_CHROMIUM)",
            binary.display()
        );
        eprintln!(
            "skipped: no Chromium at {} (apt-get install chromium, or set BITNET_CHROMIUM, to run the browser test)",
            binary.display()
        );
        return None;
    }
    Some(binary)
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
