"use strict";

/**
 * A small Markdown renderer for replies, safe by construction: it builds DOM nodes and puts every piece of
 * the text in with textContent, so no text is ever parsed as HTML. Links are made only for http:, https:
 * and mailto: URLs (others stay text). Handles fenced code blocks (an unclosed fence, as while a reply
 * streams, runs to the end), headings, lists, block quotes, rules, paragraphs, and inline code, bold,
 * italics, links and bare URLs.
 */
const Markdown = (() => {
  const el = (tag, cls) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  };

  function safeHref(href) {
    try {
      const u = new URL(href);
      return ["http:", "https:", "mailto:"].includes(u.protocol) ? u.href : null;
    } catch {
      return null;
    }
  }

  /** A link to `href` labelled `label`, or the `source` text when the URL is not http, https or mailto. */
  function link(href, label, source) {
    const safe = safeHref(href);
    if (!safe) return source;
    const a = el("a");
    a.href = safe;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    a.textContent = label;
    return a;
  }

  const INLINE = new RegExp(
    [
      "(`+)([\\s\\S]*?[^`])\\1(?!`)", // 1, 2: code
      "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 3: bold
      "__(?=\\S)([\\s\\S]*?\\S)__", // 4: bold
      "\\*(?=[^\\s*])([^*]*?[^\\s*])\\*", // 5: italic
      "(?<![\\w])_(?=[^\\s_])([^_]*?[^\\s_])_(?![\\w])", // 6: italic
      "\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)", // 7, 8: link
      "(https?:\\/\\/[^\\s<>()]*[^\\s<>().,;:!?'\"])", // 9: bare URL
    ].join("|"),
    "g",
  );

  /** Appends `text` with its inline formatting to `parent`. */
  function inline(text, parent) {
    let last = 0;
    const re = new RegExp(INLINE.source, "g");
    for (let m; (m = re.exec(text)); ) {
      if (m.index > last) parent.append(text.slice(last, m.index));
      if (m[1]) {
        const c = el("code");
        c.textContent = m[2];
        parent.append(c);
      } else if (m[3] !== undefined || m[4] !== undefined) {
        const b = el("strong");
        inline(m[3] ?? m[4], b);
        parent.append(b);
      } else if (m[5] !== undefined || m[6] !== undefined) {
        const i = el("em");
        inline(m[5] ?? m[6], i);
        parent.append(i);
      } else if (m[7] !== undefined) {
        parent.append(link(m[8], m[7], m[0]));
      } else if (m[9] !== undefined) {
        parent.append(link(m[9], m[9], m[0]));
      }
      last = re.lastIndex;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w#+.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}>\s?(.*)$/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

  /** A code block with its language and a copy button. */
  function codeBlock(lang, code, onCopy) {
    const box = el("div", "code");
    const head = el("div", "code-head");
    const name = el("span");
    name.textContent = lang || "code";
    const copy = el("button", "copy-code");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => onCopy(code, copy));
    head.append(name, copy);
    const pre = el("pre");
    const c = el("code");
    c.textContent = code;
    pre.append(c);
    box.append(head, pre);
    return box;
  }

  /** Renders `text` into a new DocumentFragment. `onCopy(text, button)` copies a code block. */
  function render(text, onCopy) {
    const out = document.createDocumentFragment();
    const lines = text.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    let para = [];
    const flush = () => {
      if (para.length) {
        const p = el("p");
        inline(para.join("\n"), p);
        out.append(p);
        para = [];
      }
    };
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        flush();
        const fence = m[1];
        const body = [];
        i += 1;
        while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
        i += 1; // the closing fence, if any
        out.append(codeBlock(m[2], body.join("\n"), onCopy));
      } else if ((m = HEADING.exec(line))) {
        flush();
        const h = el(`h${Math.min(m[1].length + 2, 6)}`);
        inline(m[2], h);
        out.append(h);
        i += 1;
      } else if (RULE.test(line)) {
        flush();
        out.append(el("hr"));
        i += 1;
      } else if (QUOTE.test(line)) {
        flush();
        const body = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
          body.push(m[1]);
          i += 1;
        }
        const q = el("blockquote");
        q.append(render(body.join("\n"), onCopy));
        out.append(q);
      } else if ((m = ITEM.exec(line))) {
        flush();
        const ordered = /\d/.test(m[2]);
        const list = el(ordered ? "ol" : "ul");
        if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
        let item = null;
        while (i < lines.length) {
          const im = ITEM.exec(lines[i]);
          if (im && /\d/.test(im[2]) === ordered) {
            item = el("li");
            inline(im[3], item);
            list.append(item);
          } else if (item && lines[i].trim() !== "" && /^\s+\S/.test(lines[i])) {
            item.append("\n");
            inline(lines[i].trim(), item);
          } else {
            break;
          }
          i += 1;
        }
        out.append(list);
      } else if (line.trim() === "") {
        flush();
        i += 1;
      } else {
        para.push(line);
        i += 1;
      }
    }
    flush();
    return out;
  }

  return { render };
})();
