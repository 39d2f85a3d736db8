"use strict";

const $ = (id) => document.getElementById(id);
const STATS_INTERVAL_MS = 1000;
const API_KEY_STORAGE = "bitnet.apiKey";
const BACKEND_STORAGE = "bitnet.backend";
/** The conversation, the system prompt and the settings, kept across reloads. */
const CHAT_STORAGE = "bitnet.chat";
const SETTING_IDS = ["temperature", "top-p", "top-k", "min-p", "repetition-penalty", "max-tokens", "seed", "stop-strings"];

/** The conversation: [{role, content}]. Messages before `dropped` no longer fit the context and are not sent. */
const conversation = [];
let dropped = 0;
/** Prompt + completion tokens of the last reply (the context meter). */
let contextUsed = null;
/** Last finished run per backend id: {rate, ttft, tokens, peak}. */
const lastRuns = new Map();
/** Backends advertised by /stats: [{id, kind, label}]. */
let backends = [];
/** Last /stats response. */
let stats = null;
/** The generation in progress (its figures stay on screen after it ends). */
let run = null;
/** Aborts the request in progress; null when idle. */
let controller = null;

// ---- Formatting -----------------------------------------------------------

const fmtRate = (r) => (r == null ? "—" : `${r.toFixed(1)} tok/s`);
const fmtMs = (ms) => (ms == null ? "—" : `${Math.round(ms)} ms`);
const fmtSecs = (ms) => (ms == null ? "—" : `${(ms / 1000).toFixed(1)} s`);

function fmtBytes(bytes) {
  if (bytes == null) return "—";
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  return `${(bytes / 1e6).toFixed(bytes >= 1e8 ? 0 : 1)} MB`;
}

// ---- Server stats and backends ----------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function pollStats() {
  try {
    const res = await fetch("/stats", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    applyStats(await res.json());
    setConnection(null);
  } catch (err) {
    setConnection(err.message);
  }
}

async function statsLoop() {
  await pollStats();
  setTimeout(statsLoop, STATS_INTERVAL_MS);
}

function setConnection(problem) {
  const conn = $("conn");
  conn.textContent = problem ? "server unreachable" : "connected";
  conn.title = problem || "";
  conn.classList.toggle("down", Boolean(problem));
}

function applyStats(s) {
  stats = s;
  $("model-info").textContent = `${s.model} · context ${s.context} · ${s.parallel} parallel`;
  renderContext();
  $("m-mem").textContent = fmtBytes(s.rss_bytes);
  $("m-peak").textContent = fmtBytes(s.peak_rss_bytes);
  $("m-server").textContent =
    `${s.active ?? 0} active · ${s.queued ?? 0} queued` +
    (s.active ? ` · ${fmtRate(s.decode_tok_s ?? 0)}` : "");
  if (run?.sampling && s.rss_bytes != null) run.peak = Math.max(run.peak ?? 0, s.rss_bytes);
  if (s.auth) $("api-key-field").hidden = false;
  updateBackends(Array.isArray(s.backends) ? s.backends : []);
  showBackend();
}

function updateBackends(list) {
  const changed = list.map((b) => `${b.id}\n${b.label}`).join("\n") !==
    backends.map((b) => `${b.id}\n${b.label}`).join("\n");
  backends = list;
  if (!changed) return;
  const select = $("backend");
  const wanted = select.value || localStorage.getItem(BACKEND_STORAGE);
  select.replaceChildren(...list.map((b) => new Option(b.label || b.id, b.id)));
  if (list.some((b) => b.id === wanted)) select.value = wanted;
  $("backend-field").hidden = list.length < 2;
  renderCompare();
}

function selectedBackend() {
  return backends.find((b) => b.id === $("backend").value) || backends[0] || null;
}

function backendLabel(id) {
  const b = backends.find((x) => x.id === id);
  return b ? b.label || b.id : id;
}

function showBackend() {
  const b = selectedBackend();
  $("m-backend").textContent = b ? b.label || b.id : stats ? stats.model : "—";
}

function renderCompare() {
  const current = selectedBackend()?.id;
  const ids = [...new Set([...backends.map((b) => b.id), ...lastRuns.keys()])];
  $("compare").tBodies[0].replaceChildren(...ids.map((id) => {
    const r = lastRuns.get(id);
    const row = document.createElement("tr");
    row.classList.toggle("current", id === current);
    const cells = [backendLabel(id), r?.rate == null ? "—" : r.rate.toFixed(1), fmtMs(r?.ttft),
      r ? String(r.tokens) : "—", fmtBytes(r?.peak)];
    for (const text of cells) row.insertCell().textContent = text;
    return row;
  }));
}

// ---- Messages -------------------------------------------------------------

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

/** Appends a message bubble; text is always inserted as text, never as HTML (replies go through the
 * Markdown renderer, which builds nodes). */
function addMessage(kind, text) {
  const div = document.createElement("div");
  div.className = `msg ${kind}`;
  if (kind === "assistant") {
    renderReply(div, text);
  } else {
    div.textContent = text;
  }
  $("messages").append(div);
  if (kind === "assistant") div.after(replyActions(div));
  scrollToBottom();
  return div;
}

function renderReply(bubble, text) {
  bubble.dataset.raw = text;
  bubble.replaceChildren(Markdown.render(text, copyText));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // Clipboard access needs a secure context (localhost is one); elsewhere, select the text instead.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    button.textContent = ok ? "Copied" : "Copy failed";
  }
  setTimeout(() => { button.textContent = button.dataset.label || "Copy"; }, 1500);
}

/** Copy and Regenerate under a reply (Regenerate on the last one only). */
function replyActions(bubble) {
  const row = document.createElement("div");
  row.className = "actions";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-reply";
  copy.textContent = copy.dataset.label = "Copy";
  copy.addEventListener("click", () => copyText(bubble.dataset.raw || "", copy));
  const regen = document.createElement("button");
  regen.type = "button";
  regen.className = "regenerate";
  regen.textContent = "Regenerate";
  regen.addEventListener("click", regenerate);
  row.append(copy, regen);
  return row;
}

function refreshActions() {
  const regens = [...document.querySelectorAll("#messages .regenerate")];
  regens.forEach((b, i) => {
    b.hidden = i !== regens.length - 1;
    b.disabled = Boolean(controller);
  });
}

/** Marks the bubbles of messages no longer sent. */
function markDropped() {
  const bubbles = [...document.querySelectorAll("#messages .msg.user, #messages .msg.assistant")]
    .filter((b) => !b.classList.contains("unsent"));
  bubbles.forEach((b, i) => {
    b.classList.toggle("dropped", i < dropped);
    b.title = i < dropped ? "Left out: no longer fits the context" : "";
  });
}

function renderContext() {
  const ctx = stats?.context;
  const meter = $("m-context-bar");
  if (!ctx || contextUsed == null) {
    $("m-context").textContent = ctx ? `— / ${ctx}` : "—";
    meter.value = 0;
    return;
  }
  $("m-context").textContent = `${contextUsed} / ${ctx}`;
  meter.max = ctx;
  meter.value = Math.min(contextUsed, ctx);
}

// ---- Kept across reloads ---------------------------------------------------

function saveChat() {
  const settings = Object.fromEntries(SETTING_IDS.map((id) => [id, $(id).value]));
  const state = { conversation, dropped, contextUsed, system: $("system").value, settings };
  try {
    localStorage.setItem(CHAT_STORAGE, JSON.stringify(state));
  } catch {
    // Storage full or disabled: the page works without it.
  }
}

function restoreChat() {
  let state;
  try {
    state = JSON.parse(localStorage.getItem(CHAT_STORAGE) || "null");
  } catch {
    state = null;
  }
  if (!state || typeof state !== "object") return;
  for (const id of SETTING_IDS) {
    if (typeof state.settings?.[id] === "string") $(id).value = state.settings[id];
  }
  if (typeof state.system === "string") $("system").value = state.system;
  const valid = Array.isArray(state.conversation) ? state.conversation.filter((m) =>
    m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string") : [];
  conversation.push(...valid.map((m) => ({ role: m.role, content: m.content })));
  dropped = Number.isInteger(state.dropped) ? Math.min(Math.max(state.dropped, 0), conversation.length) : 0;
  contextUsed = Number.isInteger(state.contextUsed) ? state.contextUsed : null;
  for (const m of conversation) addMessage(m.role, m.content);
  markDropped();
  refreshActions();
}

// ---- Live metrics -----------------------------------------------------------

function tokenCount(r) {
  return r.usage?.completion_tokens ?? r.chunks;
}

/** Completion tokens so far / seconds since the first token. */
function tokenRate(r, now) {
  if (r.first == null) return null;
  const secs = (now - r.first) / 1000;
  return secs > 0.05 ? tokenCount(r) / secs : null;
}

function renderRun(r, now) {
  $("m-tok-s").textContent = fmtRate(tokenRate(r, now));
  $("m-tokens").textContent = String(tokenCount(r));
  $("m-ttft").textContent = fmtMs(r.first == null ? null : r.first - r.start);
  $("m-elapsed").textContent = fmtSecs(now - r.start);
}

function animate() {
  if (!run || !controller) return;
  renderRun(run, performance.now());
  requestAnimationFrame(animate);
}

function setGenerating(on) {
  document.body.dataset.state = on ? "generating" : "idle";
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("backend").disabled = on;
  refreshActions();
}

// ---- Chat request -------------------------------------------------------------

/** Reads an optional numeric setting; undefined when empty (server default). */
function numberSetting(id, name, integer) {
  const input = $(id);
  const raw = input.value.trim();
  const n = Number(raw);
  if (input.validity.badInput || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new Error(`${name} must be ${integer ? "a whole number" : "a number"}.`);
  }
  return raw === "" ? undefined : n;
}

function readSettings() {
  const stop = $("stop-strings").value.split("\n").filter((line) => line !== "");
  if (stop.length > 4) throw new Error("At most 4 stop strings (one per line).");
  const settings = {
    temperature: numberSetting("temperature", "Temperature", false),
    top_p: numberSetting("top-p", "Top-p", false),
    top_k: numberSetting("top-k", "Top-k", true),
    min_p: numberSetting("min-p", "Min-p", false),
    repetition_penalty: numberSetting("repetition-penalty", "Repetition penalty", false),
    max_tokens: numberSetting("max-tokens", "Max tokens", true),
    seed: numberSetting("seed", "Seed", true),
    stop: stop.length ? stop : undefined,
  };
  return Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
}

/** Turns a non-2xx response into an Error with a readable message and the API's error `code`. */
async function httpError(res) {
  const text = await res.text().catch(() => "");
  let detail = res.statusText || "request failed";
  let code = null;
  try {
    const e = JSON.parse(text).error;
    detail = e.message || detail;
    code = e.code ?? null;
  } catch {
    if (text.trim()) detail = text.trim().slice(0, 300);
  }
  let message = `Server error ${res.status}: ${detail}`;
  if (res.status === 401) {
    $("api-key-field").hidden = false;
    message = `Unauthorized (401): ${detail}. Enter a valid API key under Settings.`;
  }
  const err = new Error(message);
  err.code = code;
  return err;
}

/** Parses a text/event-stream body, calling onData for each JSON `data:` event. */
async function readEvents(res, onData) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const boundary = /\r?\n\r?\n/;
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value, { stream: !done });
    let match;
    while ((match = boundary.exec(buffer))) {
      const block = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      const data = block.split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data === "") continue;
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
    if (done) throw new Error("The reply stream ended unexpectedly.");
  }
}

function onChunk(chunk, reply, bubble) {
  if (chunk.error) throw new Error(chunk.error.message || "server error");
  if (chunk.usage) run.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (!choice) return;
  const delta = choice.delta || {};
  // The opening chunk only announces the role. Every other content chunk is one token (or a few, when a
  // character spans tokens), so the live count can run slightly low; the usage chunk at the end is exact.
  if (typeof delta.content !== "string" || (delta.role && delta.content === "")) return;
  const now = performance.now();
  if (run.first == null) run.first = now;
  run.chunks += 1;
  if (delta.content) {
    const follow = nearBottom();
    reply.content += delta.content;
    renderReply(bubble, reply.content);
    if (follow) scrollToBottom();
  }
  renderRun(run, now);
}

/** Sends the prompt box as a new user turn. */
async function send() {
  if (controller) return;
  const text = $("prompt").value;
  if (!text.trim()) return;
  const userMessage = { role: "user", content: text };
  conversation.push(userMessage);
  const userBubble = addMessage("user", text);
  $("prompt").value = "";
  await ask(userMessage, userBubble, text);
}

/** Asks for a new answer to the last user turn, replacing the last reply. */
async function regenerate() {
  if (controller || conversation.length < 2 || conversation.at(-1).role !== "assistant") return;
  conversation.pop();
  const replies = document.querySelectorAll("#messages .msg.assistant");
  const last = replies[replies.length - 1];
  last.nextElementSibling?.classList.contains("actions") && last.nextElementSibling.remove();
  last.remove();
  const userMessage = conversation.at(-1);
  const users = [...document.querySelectorAll("#messages .msg.user")].filter((b) => !b.classList.contains("unsent"));
  await ask(userMessage, users[users.length - 1], null);
}

/** Streams the model's answer to the conversation, whose last message is `userMessage`. When the
 * conversation no longer fits the context, its oldest turns are left out (with a note) and it is sent
 * again. */
async function ask(userMessage, userBubble, typed) {
  let settings;
  try {
    settings = readSettings();
  } catch (err) {
    addMessage("error", err.message);
    return;
  }
  const backend = selectedBackend();
  const reply = { role: "assistant", content: "" };
  const bubble = addMessage("assistant", "");
  run = { backendId: backend?.id ?? stats?.model ?? "default", start: performance.now(),
    first: null, chunks: 0, usage: null, peak: null, sampling: true };
  controller = new AbortController();
  setGenerating(true);
  requestAnimationFrame(animate);
  pollStats();

  let error = null;
  for (;;) {
    const messages = conversation.slice(dropped);
    const system = $("system").value;
    if (system.trim()) messages.unshift({ role: "system", content: system });
    const body = { ...settings, messages, stream: true, stream_options: { include_usage: true } };
    if (backend) body.model = backend.id;
    try {
      let res;
      try {
        res = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: { "Content-Type": "application/json", ...authHeaders() },
          body: JSON.stringify(body),
          signal: controller.signal,
        });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new Error(`Could not reach the server (${err.message}).`);
      }
      if (!res.ok) throw await httpError(res);
      await readEvents(res, (chunk) => onChunk(chunk, reply, bubble));
    } catch (err) {
      // Too long for the context: leave out the oldest exchange (never the question itself) and retry.
      const turns = conversation.length - 1 - dropped;
      if (err.code === "context_length_exceeded" && turns > 0 && !reply.content) {
        let n = 1;
        while (dropped + n < conversation.length - 1 && conversation[dropped + n].role !== "user") n += 1;
        dropped += n;
        markDropped();
        bubble.before(noteBubble(`The conversation is longer than the model's context of ${stats?.context ?? "?"} tokens: its oldest turn is left out of what the model sees.`));
        continue;
      }
      if (err.name !== "AbortError") error = err;
    }
    break;
  }
  const end = performance.now();
  controller = null;

  // Keep whatever came back (a stopped reply stays in the history). With no reply at all, the question
  // leaves the history so it can be edited and sent again.
  if (bubble.isConnected) {
    if (reply.content) {
      conversation.push(reply);
    } else {
      bubble.nextElementSibling?.classList.contains("actions") && bubble.nextElementSibling.remove();
      bubble.remove();
      conversation.splice(conversation.indexOf(userMessage), 1);
      userBubble.classList.add("unsent");
      userBubble.title = "No reply: not part of the conversation";
      if (!$("prompt").value) $("prompt").value = typed ?? userMessage.content;
    }
    if (error) addMessage("error", error.message);
  }
  if (run.usage) contextUsed = (run.usage.prompt_tokens ?? 0) + (run.usage.completion_tokens ?? 0);
  renderContext();
  saveChat();

  await pollStats();
  run.sampling = false;
  renderRun(run, end);
  if (run.first != null) {
    lastRuns.set(run.backendId, { rate: tokenRate(run, end), ttft: run.first - run.start,
      tokens: tokenCount(run), peak: run.peak });
    renderCompare();
  }
  setGenerating(false);
}

function noteBubble(text) {
  const div = document.createElement("div");
  div.className = "note-msg";
  div.textContent = text;
  return div;
}

function clearChat() {
  if (controller) controller.abort();
  conversation.length = 0;
  dropped = 0;
  contextUsed = null;
  $("messages").replaceChildren();
  renderContext();
  saveChat();
  $("prompt").focus();
}

// ---- Wiring ---------------------------------------------------------------

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
$("stop").addEventListener("click", () => controller?.abort());
$("clear").addEventListener("click", clearChat);
$("backend").addEventListener("change", () => {
  localStorage.setItem(BACKEND_STORAGE, $("backend").value);
  showBackend();
  renderCompare();
});
$("api-key").value = localStorage.getItem(API_KEY_STORAGE) || "";
$("api-key").addEventListener("input", () => {
  localStorage.setItem(API_KEY_STORAGE, $("api-key").value.trim());
});

for (const id of [...SETTING_IDS, "system"]) $(id).addEventListener("input", saveChat);
restoreChat();
setGenerating(false);
statsLoop();
$("prompt").focus();
