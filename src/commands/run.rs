//! `bitnet run`: one prompt in, the completion streamed out.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use bitnet_chat::Message;
use bitnet_model::Backend;
use bitnet_runtime::{DraftStats, StopReason};
use serde::Serialize;

use crate::Outcome;
use crate::cli::RunArgs;
use bitnet_runtime::Engine;

/// `run --json`: the names serve's usage uses (`prompt_tokens`, `completion_tokens`).
#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    text: &'a str,
    ids: &'a [u32],
    prompt_tokens: usize,
    completion_tokens: usize,
    stop_reason: StopReason,
    seed: u64,
    timings: Timings,
    /// Speculative decoding's figures (`--draft`), else null.
    draft: Option<DraftStats>,
}

#[derive(Serialize)]
struct Timings {
    prefill_s: f64,
    time_to_first_token_s: f64,
    decode_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the prompt from stdin (end with Ctrl-D)");
            }
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the prompt from stdin")?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the prompt on stdin is not valid UTF-8 (byte {})",
                    e.utf8_error().valid_up_to()
                )
            })?
        }
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: pass -p TEXT or text on stdin");
    }
    let engine = Engine::open(&args.model, &args.gen_args.load(), &crate::fetch::Cli)?;
    let params = engine.sampling(&args.gen_args.overrides())?;
    let ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::system(s.clone()));
        }
        messages.push(Message::user(prompt));
        engine.encode_chat(&messages)?
    } else {
        engine.check_length(&prompt)?;
        engine.tokenizer.encode_prompt(&prompt)?
    };
    let ctx = engine.context();
    if ids.len() >= ctx {
        bail!(
            "the prompt is {} tokens, and the model's context holds {ctx}: shorten it",
            ids.len()
        );
    }
    let mut params = params;
    params.max_tokens = params.max_tokens.min(ctx - ids.len());
    let mut session = engine.model.session(ctx);
    let cancel = AtomicBool::new(false);
    let mut stdout = std::io::stdout().lock();
    let json_mode = args.json;
    // On a terminal, control characters in the text are shown, not obeyed.
    let tty = stdout.is_terminal();

    let mut emit = |s: &str| -> anyhow::Result<()> {
        if !json_mode && !s.is_empty() {
            if tty {
                stdout.write_all(crate::escape::controls(s).as_bytes())?;
            } else {
                stdout.write_all(s.as_bytes())?;
            }
            stdout.flush()?;
        }
        Ok(())
    };
    let g = engine.generate(
        &mut session,
        &mut Vec::new(),
        &ids,
        &params,
        &args.gen_args.stop,
        &cancel,
        &mut emit,
    )?;
    if json_mode {
        let v = Report {
            schema_version: 1,
            text: &g.text,
            ids: &g.ids,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.ids.len(),
            stop_reason: g.stop,
            seed: params.seed,
            timings: Timings {
                prefill_s: g.prefill_s,
                time_to_first_token_s: g.first_token_s,
                decode_s: g.decode_s,
                prefill_tok_s: g.prefill_tok_s(),
                decode_tok_s: g.decode_tok_s(),
            },
            draft: g.draft,
        };
        serde_json::to_writer(&mut stdout, &v)?;
        writeln!(stdout)?;
    } else if !g.text.ends_with('\n') {
        writeln!(stdout)?;
    }
    if args.stats {
        eprintln!(
            "prompt {} tokens: prefill {:.1} tok/s; first token after {:.3} s; {} tokens at {:.2} tok/s; stop: {}; seed {}",
            g.prompt_tokens,
            g.prefill_tok_s(),
            g.first_token_s,
            g.ids.len(),
            g.decode_tok_s(),
            g.stop.as_str(),
            params.seed
        );
        if let Some(d) = g.draft {
            eprintln!(
                "draft: {} passes for {} tokens; {} of {} proposed tokens accepted",
                d.passes,
                g.ids.len(),
                d.accepted,
                d.proposed
            );
        }
    }
    Ok(Outcome::Success)
}
