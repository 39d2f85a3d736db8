//! A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! ended by NUL on file descriptors 3 and 4), so no port, websocket or extra crate is needed, and the checks
//! of its screenshots. The browser is `$BITNET_CHROMIUM`, else `/usr/bin/chromium`; when it is missing a
//! test is skipped with a note, unless `BITNET_CI=1`, where it fails.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one DevTools command may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DESKTOP: (u32, u32) = (1280, 800);
pub(crate) const PHONE: (u32, u32) = (390, 844);
/// The page's accent colour (`--user-bg`, `#send`): the user's bubble and the Send button.
pub(crate) const ACCENT: [u8; 3] = [0x25, 0x63, 0xeb];

pub(crate) fn chromium_path() -> PathBuf {
    std::env::var_os("BITNET_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

pub(crate) fn env_is_1(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// A headless Chromium with one page, driven over `--remote-debugging-pipe`; closed on drop.
pub(crate) struct Chromium {
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
    pub(crate) fn launch(binary: &Path) -> Chromium {
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

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> u64 {
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
    pub(crate) fn call_in(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
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

    pub(crate) fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.call_in(method, params, None)
    }

    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone().expect("attached to a page");
        self.call_in(method, params, Some(&session))
    }

    /// Opens a page, attaches to it and enables the events the test watches.
    pub(crate) fn open_page(&mut self) {
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
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    pub(crate) fn eval_str(&mut self, expr: &str) -> String {
        let v = self.eval(expr);
        v.as_str()
            .unwrap_or_else(|| panic!("{expr} is {v}, not a string"))
            .to_string()
    }

    /// Polls `expr` until it is truthy; panics with `what` after `secs`.
    pub(crate) fn wait_for(&mut self, secs: u64, expr: &str, what: &str) {
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

    pub(crate) fn set_viewport(&mut self, (width, height): (u32, u32), mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// A left click in the middle of the element `selector`, as real mouse events.
    pub(crate) fn click(&mut self, selector: &str) {
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
    pub(crate) fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    pub(crate) fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "text": "\r"}),
            );
        }
    }

    pub(crate) fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = r["data"].as_str().expect("screenshot data");
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
            .expect("the screenshot is base64 (DevTools sends binary data so)")
    }

    /// JavaScript exceptions, console errors and error log entries (failed loads) seen so far.
    pub(crate) fn page_errors(&mut self) -> Vec<String> {
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
pub(crate) struct Image {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) rgb: Vec<[u8; 3]>,
}

pub(crate) fn decode_png(bytes: &[u8]) -> Image {
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
pub(crate) fn check_not_blank(img: &Image, size: (u32, u32), name: &str) {
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

pub(crate) fn save(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Chromium's path, or `None` (with a note) when it is missing outside CI; under `BITNET_CI=1` a missing
/// Chromium fails.
pub(crate) fn chromium_or_skip() -> Option<PathBuf> {
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
