//! `bitnet chat`: a conversation that keeps its KV cache between turns. On a terminal, lines are edited
//! with rustyline (arrow keys, history kept in the user's data folder, `"""` for several lines, Ctrl-C
//! clears the line, Ctrl-D leaves); piped stdin is read line by line.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bitnet_chat::Message;
use bitnet_model::Backend;
use bitnet_runtime::Engine;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::Outcome;
use crate::cli::ChatArgs;

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message and reset), \
/stats (figures of the last answer), /help, /exit (or Ctrl-D); \"\"\" starts and ends a message of several \
lines; Ctrl-C clears the line, or stops an answer";

/// Where the chat history lives: `$XDG_DATA_HOME/bitnet`, else `~/.local/share/bitnet`.
fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("bitnet").join("chat_history"))
}

/// Where messages come from.
enum Input {
    Editor(Box<DefaultEditor>, Option<PathBuf>),
    Piped(std::io::StdinLock<'static>),
}

impl Input {
    /// The next message (several lines between `"""` marks), or `None` at the end.
    fn next(&mut self) -> anyhow::Result<Option<String>> {
        let first = match self.line("> ")? {
            Some(l) => l,
            None => return Ok(None),
        };
        if first.trim_start().starts_with("\"\"\"") {
            let mut text = first.trim_start()[3..].to_string();
            loop {
                if let Some(done) = text.strip_suffix("\"\"\"") {
                    text = done.to_string();
                    break;
                }
                match self.line("... ")? {
                    Some(l) => {
                        text.push('\n');
                        text.push_str(&l);
                    }
                    None => break,
                }
            }
            self.remember(&format!("\"\"\"{text}\"\"\""));
            return Ok(Some(text));
        }
        self.remember(&first);
        Ok(Some(first))
    }

    /// One line; Ctrl-C at the prompt clears it and asks again.
    fn line(&mut self, prompt: &str) -> anyhow::Result<Option<String>> {
        match self {
            Input::Editor(ed, _) => loop {
                match ed.readline(prompt) {
                    Ok(l) => return Ok(Some(l)),
                    Err(ReadlineError::Interrupted) => {
                        eprintln!("(Ctrl-D or /exit leaves)");
                        continue;
                    }
                    Err(ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e).context("reading the terminal"),
                }
            },
            Input::Piped(lines) => loop {
                let mut buf = Vec::new();
                if lines.read_until(b'\n', &mut buf).context("reading stdin")? == 0 {
                    return Ok(None);
                }
                match String::from_utf8(buf) {
                    Ok(l) => return Ok(Some(l.trim_end_matches(['\n', '\r']).to_string())),
                    Err(_) => eprintln!("error: that line is not valid UTF-8; it was skipped"),
                }
            },
        }
    }

    fn remember(&mut self, entry: &str) {
        if let Input::Editor(ed, path) = self
            && !entry.trim().is_empty()
        {
            let _ = ed.add_history_entry(entry);
            if let Some(p) = path {
                let _ = ed.append_history(p);
            }
        }
    }
}

fn open_input() -> anyhow::Result<Input> {
    if !std::io::stdin().is_terminal() {
        return Ok(Input::Piped(std::io::stdin().lock()));
    }
    let mut ed = DefaultEditor::new().context("starting the line editor")?;
    // Keys typed while an answer streams reach the editor as the terminal's normal mode turned them: Enter
    // as a newline (Ctrl-J). It sends the line, as Enter does, so typed-ahead messages are not held.
    ed.bind_sequence(
        rustyline::KeyEvent::ctrl('J'),
        rustyline::EventHandler::Simple(rustyline::Cmd::AcceptLine),
    );
    let path = history_path();
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if p.is_file() {
            let _ = ed.load_history(p);
        }
    }
    Ok(Input::Editor(Box::new(ed), path))
}

pub fn run(args: ChatArgs) -> anyhow::Result<Outcome> {
    let engine = Engine::open(&args.model, &args.gen_args.load(), &crate::fetch::Cli)?;
    let mut params = engine.sampling(&args.gen_args.overrides())?;
    // The line editor first: it installs a SIGINT handler of its own when created, which ours then
    // replaces. While an answer streams, the terminal is in its normal mode and Ctrl-C is a signal (ours
    // stops the answer); at the prompt the editor's raw mode reads it as a key (it clears the line).
    let mut input = open_input()?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let ctx = engine.context();
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let mut session = engine.model.session(ctx);
    let mut cached: Vec<u32> = Vec::new();
    let mut last_stats = String::from("no answer yet");
    if matches!(input, Input::Editor(..)) {
        eprintln!("chatting with {} ({HELP})", args.model);
    }
    while let Some(line) = input.next()? {
        cancel.store(false, Ordering::Relaxed);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            "/reset" => {
                history.clear();
                eprintln!("conversation reset");
                continue;
            }
            "/stats" => {
                eprintln!("{last_stats}");
                continue;
            }
            cmd if cmd.starts_with("/system") => {
                let text = cmd.trim_start_matches("/system").trim();
                system = (!text.is_empty()).then(|| text.to_string());
                history.clear();
                eprintln!(
                    "system message {}; conversation reset",
                    if system.is_some() { "set" } else { "cleared" }
                );
                continue;
            }
            cmd if cmd.starts_with('/') => {
                eprintln!("unknown command {cmd}; {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        // Drop the oldest turns until the conversation and a reply fit the context.
        let reserve = params.max_tokens.min(ctx / 4).max(1);
        let ids = loop {
            let mut messages: Vec<Message> =
                system.iter().map(|s| Message::system(s.clone())).collect();
            messages.extend(history.iter().cloned());
            let ids = match engine.encode_chat(&messages) {
                Ok(ids) => ids,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    history.pop();
                    break None;
                }
            };
            if ids.len() + reserve <= ctx {
                break Some(ids);
            }
            if history.len() <= 1 {
                eprintln!(
                    "error: that message is {} tokens, too long for the context of {ctx}; it was dropped",
                    ids.len()
                );
                history.pop();
                break None;
            }
            let dropped = if history.len() >= 2 { 2 } else { 1 };
            history.drain(..dropped);
            tracing::info!(
                "note: the conversation no longer fits the context of {ctx} tokens; dropped the oldest turn"
            );
        };
        let Some(ids) = ids else { continue };
        params.max_tokens = params.max_tokens.min(ctx - ids.len());
        let mut stdout = std::io::stdout().lock();
        // On a terminal, control characters in the answer are shown, not obeyed.
        let tty = stdout.is_terminal();

        let mut emit = |s: &str| -> anyhow::Result<()> {
            if tty {
                stdout.write_all(crate::escape::controls(s).as_bytes())?;
            } else {
                stdout.write_all(s.as_bytes())?;
            }
            stdout.flush()?;
            Ok(())
        };
        let g = match engine.generate(
            &mut session,
            &mut cached,
            &ids,
            &params,
            &args.gen_args.stop,
            &cancel,
            &mut emit,
        ) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
                continue;
            }
        };
        writeln!(stdout)?;
        drop(stdout);
        history.push(Message::assistant(g.text.clone()));
        last_stats = format!(
            "[{} tokens, {:.2} tok/s, {:.2} s; prompt {} tokens, {} reused from the cache, {} computed at {:.1} tok/s; stop: {}]",
            g.ids.len(),
            g.decode_tok_s(),
            g.prefill_s + g.decode_s,
            g.prompt_tokens,
            g.reused_tokens,
            g.prompt_tokens - g.reused_tokens,
            g.prefill_tok_s(),
            g.stop.as_str()
        );
        eprintln!("{last_stats}");
        if g.stop == bitnet_runtime::StopReason::Cancelled {
            eprintln!("(stopped)");
        }
    }
    Ok(Outcome::Success)
}
