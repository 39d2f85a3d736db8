//! `bitnet chat`: a conversation on stdin/stdout that keeps its KV cache between turns.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bitnet_chat::Message;
use bitnet_model::Backend;

use crate::Outcome;
use crate::cli::ChatArgs;
use bitnet_runtime::Engine;

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message and reset), \
/stats (figures of the last answer), /help, /exit (or Ctrl-D); Ctrl-C stops an answer";

pub fn run(args: ChatArgs) -> anyhow::Result<Outcome> {
    let engine = Engine::open(&args.model, &args.gen_args.load(), &crate::fetch::Cli)?;
    let mut params = engine.sampling(&args.gen_args.overrides())?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let interactive = std::io::stdin().is_terminal();
    let ctx = engine.context();
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let mut session = engine.model.session(ctx);
    let mut cached: Vec<u32> = Vec::new();
    let mut last_stats = String::from("no answer yet");
    if interactive {
        eprintln!("chatting with {} ({HELP})", args.model);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut buf = Vec::new();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush().ok();
        }
        buf.clear();
        let n = lines.read_until(b'\n', &mut buf).context("reading stdin")?;
        if n == 0 {
            break;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            eprintln!("error: that line is not valid UTF-8; it was skipped");
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
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
        history.push(Message::user(line.to_string()));
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
        let mut emit = |s: &str| -> anyhow::Result<()> {
            stdout.write_all(s.as_bytes())?;
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
        if g.stop.as_str() == "cancelled" {
            eprintln!("(stopped)");
        }
    }
    Ok(Outcome::Success)
}
