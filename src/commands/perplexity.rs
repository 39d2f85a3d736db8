//! `bitnet perplexity`: how well the model predicts a text, per LM head (the definition is in
//! `bitnet_runtime::perplexity`).

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_model::Backend;
use bitnet_runtime::perplexity::{chunks, score};
use bitnet_runtime::{Engine, LoadOptions};
use serde::Serialize;

use crate::Outcome;
use crate::cli::{HeadArg, PerplexityArgs};

/// One head's result.
#[derive(Debug, Serialize)]
struct HeadResult {
    head: &'static str,
    scored_tokens: usize,
    mean_nll: f64,
    perplexity: f64,
    seconds: f64,
    tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    model: String,
    text_file: String,
    ctx: usize,
    text_tokens: usize,
    chunks: usize,
    bos: Option<u32>,
    heads: Vec<HeadResult>,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let heads: Vec<HeadArg> = if args.head.is_empty() {
        vec![HeadArg::Exact]
    } else {
        args.head.clone()
    };
    let load = LoadOptions {
        kernel: args.kernel.clone(),
        threads: args.threads,
        head: Some(heads[0].kind()),
        // Each chunk has its own small session.
        ctx: None,
        no_verify: false,
        draft: None,
    };
    let mut engine = Engine::open(&args.model, &load, &crate::fetch::Cli)?;
    let max_ctx = engine.context();
    let ctx = args.ctx.min(max_ctx);
    if ctx < 2 {
        bail!("--ctx {}: a chunk needs at least 2 positions", args.ctx);
    }
    if args.ctx > max_ctx {
        tracing::info!(
            "note: --ctx {} is capped at the model's context, {max_ctx}",
            args.ctx
        );
    }
    let ids = engine.tokenizer.encode_raw(&text)?;
    let bos = engine.tokenizer.info().bos_token_id;
    if ids.len() < 2 {
        bail!(
            "{}: {} tokens; perplexity needs at least 2",
            args.text.display(),
            ids.len()
        );
    }
    let inputs = chunks(&ids, bos, ctx);
    let vocab = engine.model.config().vocab_size;
    let mut results = Vec::new();
    for &head in &heads {
        engine.model.set_head(head.kind())?;
        let bar = if std::io::stderr().is_terminal() && !args.json {
            indicatif::ProgressBar::new(ids.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} tokens ({per_sec}, {eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{} head", head.as_str()));
        let t0 = Instant::now();
        let text_per_chunk = |n: usize| (n - usize::from(bos.is_some())) as u64;
        let s = score(&engine.model, &inputs, vocab, &mut |n| {
            bar.inc(text_per_chunk(n))
        })?;
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let r = HeadResult {
            head: head.as_str(),
            scored_tokens: s.scored,
            mean_nll: s.mean_nll(),
            perplexity: s.perplexity(),
            seconds,
            tokens_per_s: ids.len() as f64 / seconds,
        };
        if !args.json {
            println!(
                "{} head: perplexity {:.4} (mean NLL {:.6}) over {} tokens in {} chunks of <= {ctx}; {:.1} tok/s",
                r.head,
                r.perplexity,
                r.mean_nll,
                r.scored_tokens,
                inputs.len(),
                r.tokens_per_s
            );
        }
        results.push(r);
    }
    if args.json {
        let report = Report {
            schema_version: 1,
            model: args.model.clone(),
            text_file: args.text.display().to_string(),
            ctx,
            text_tokens: ids.len(),
            chunks: inputs.len(),
            bos,
            heads: results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(Outcome::Success)
}
