//! `bitnet perplexity`: how well the model predicts a text, the way llama.cpp's `llama-perplexity`
//! compares quantizations, so the quality cost of an LM head is one command.
//!
//! Definition (the one `fixtures/train_demo.py` computes with transformers for the oracle): the text's
//! tokens without BOS are cut into consecutive chunks of `ctx - 1` tokens; each chunk is run with BOS in
//! front; every position predicts the next token (BOS predicts the chunk's first token, the chunk's last
//! token predicts nothing); perplexity = exp(mean negative log-likelihood over every scored token), the
//! log-softmax and the sums in f64. A model without a BOS token runs chunks of `ctx` tokens whose first
//! token is context only.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_model::{Backend, HeadKind, LogitsMode};
use serde::Serialize;

use crate::Outcome;
use crate::cli::{GenArgs, HeadArg, PerplexityArgs};
use crate::engine::Engine;

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

/// `-log softmax(logits)[target]` in f64.
fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

/// The chunks to run: each is the model's input; `scored` of its positions predict the next token.
fn chunks(ids: &[u32], bos: Option<u32>, ctx: usize) -> Vec<Vec<u32>> {
    match bos {
        Some(b) => ids
            .chunks(ctx - 1)
            .map(|c| std::iter::once(b).chain(c.iter().copied()).collect())
            .collect(),
        None => ids.chunks(ctx).map(<[u32]>::to_vec).collect(),
    }
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let heads: Vec<HeadArg> = if args.head.is_empty() {
        vec![HeadArg::Exact]
    } else {
        args.head.clone()
    };
    let gen_args = GenArgs {
        threads: args.threads,
        kernel: args.kernel.clone(),
        head: Some(heads[0]),
        ..GenArgs::default()
    };
    let mut engine = Engine::open(&args.model, &gen_args)?;
    let max_ctx = engine.context();
    let ctx = args.ctx.min(max_ctx);
    if ctx < 2 {
        bail!("--ctx {}: a chunk needs at least 2 positions", args.ctx);
    }
    if args.ctx > max_ctx {
        eprintln!(
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
        engine.model.set_head(match head {
            HeadArg::Exact => HeadKind::Exact,
            HeadArg::Int8 => HeadKind::Int8,
        })?;
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
        let (mut total, mut scored) = (0f64, 0usize);
        for chunk in &inputs {
            let mut session = engine.model.session(chunk.len());
            let out = engine
                .model
                .forward(&mut session, chunk, LogitsMode::All, None)?;
            for (pos, target) in chunk.iter().enumerate().skip(1) {
                total += nll(
                    &out.logits[(pos - 1) * vocab..pos * vocab],
                    *target as usize,
                );
                scored += 1;
            }
            bar.inc((chunk.len() - usize::from(bos.is_some())) as u64);
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let mean_nll = total / scored as f64;
        let r = HeadResult {
            head: head.as_str(),
            scored_tokens: scored,
            mean_nll,
            perplexity: mean_nll.exp(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((nll(&l, 0) - (z.ln() - 1.0)).abs() < 1e-12);
        assert!((nll(&l, 2) - (z.ln() - 3.0)).abs() < 1e-12);
    }

    #[test]
    fn chunks_put_bos_in_front_of_ctx_minus_one_tokens() {
        let ids: Vec<u32> = (10..17).collect();
        assert_eq!(
            chunks(&ids, Some(1), 4),
            vec![vec![1, 10, 11, 12], vec![1, 13, 14, 15], vec![1, 16]]
        );
        assert_eq!(
            chunks(&ids, None, 4),
            vec![vec![10, 11, 12, 13], vec![14, 15, 16]]
        );
    }
}
