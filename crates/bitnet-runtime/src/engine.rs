//! A loaded model (the packed weights, its tokenizer and chat template) and the loop that samples tokens
//! and streams text: what `run`, `chat` and `perplexity` drive, and the serve scheduler builds on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_chat::{ChatTemplate, Message, SamplingParams, Tokenizer};
use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_model::{Backend, HeadKind, PackedModel, Session};

use crate::decoder::{SeqDecoder, StopReason, reuse_prefix};
use crate::draft::{DraftStats, NgramDraft};
use crate::models::{Provider, resolve_model};
use crate::sampling::SamplingOverrides;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A kernel set by name (`scalar`, `avx2`, ...); default: `BITNET_KERNEL`, else the best this CPU runs.
    pub kernel: Option<String>,
    /// Compute threads; default: one per core, or one if two measure slower at load.
    pub threads: Option<usize>,
    /// The LM head; default: rescored when the file has both heads, else int8 when it has one, else exact.
    pub head: Option<HeadKind>,
    /// Positions a sequence may use (the KV cache is sized by it); default: the model's context.
    pub ctx: Option<usize>,
    /// Skip checking the tensor checksums before the file's first use.
    pub no_verify: bool,
    /// Speculative decoding by prompt lookup (`--draft ngram`).
    pub draft: Option<NgramDraft>,
}

/// One generation's output and timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The sampled ids (end-of-turn ids excluded).
    pub ids: Vec<u32>,
    /// Their text, stop strings cut.
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
    /// The prompt's length in tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens already in the KV cache from an earlier turn (not computed again).
    pub reused_tokens: usize,
    /// Seconds spent on the prompt.
    pub prefill_s: f64,
    /// Seconds from the start to the first sampled token.
    pub first_token_s: f64,
    /// Seconds from the first sampled token to the end.
    pub decode_s: f64,
    /// Drafting figures, when speculative decoding ran.
    pub draft: Option<DraftStats>,
}

impl Generation {
    /// Prompt tokens computed per second (the reused ones are not counted).
    pub fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.reused_tokens) as f64 / self.prefill_s.max(1e-9)
    }

    /// Tokens sampled per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        self.ids.len().saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

/// A loaded model ready to generate.
pub struct Engine {
    /// The packed weights, read in place from the map.
    pub model: PackedModel,
    /// The file's tokenizer.
    pub tokenizer: Tokenizer,
    /// The file's chat template (or the 2B4T one).
    pub template: ChatTemplate,
    /// End-of-text and end-of-turn ids.
    pub stop_ids: Vec<u32>,
    /// The mapped file.
    pub file: Arc<BitnetFile>,
    /// Positions a sequence may use.
    ctx: usize,
    /// The longest token in bytes.
    longest_token: usize,
    /// Speculative decoding, if asked for.
    draft: Option<NgramDraft>,
}

/// The context a run uses: `asked` (capped by nothing: past the model's it is an error), else the model's;
/// refused when `sequences` KV caches of it do not fit the memory available.
pub fn context_for(
    config: &bitnet_format::ModelConfig,
    asked: Option<usize>,
    sequences: usize,
) -> anyhow::Result<usize> {
    let max = config.max_position_embeddings;
    let ctx = match asked {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(c) if c > max => {
            bail!("--ctx {c} is more than the model's context of {max} positions")
        }
        Some(c) => c,
        None => max,
    };
    let per = config.kv_bytes_per_position();
    let need = per
        .saturating_mul(ctx as u64)
        .saturating_mul(sequences as u64);
    if let Some(available) = crate::sys::mem_available()
        && need > available
    {
        let fits = available / per.max(1) / sequences.max(1) as u64;
        bail!(
            "{sequences} KV cache(s) of {ctx} positions need {need} bytes ({per} per position), more than the \
             {available} bytes of memory available: pass --ctx {fits} or less"
        );
    }
    Ok(ctx)
}

impl Engine {
    /// Opens `model`: a `.bitnet` file, or a Hugging Face folder or repo id, which `provider` downloads
    /// and converts once into the cache (see [`resolve_model`]).
    pub fn open(
        model: &str,
        opts: &LoadOptions,
        provider: &dyn Provider,
    ) -> anyhow::Result<Engine> {
        let path = resolve_model(model, opts.head, provider)?;
        Engine::open_file(&path, opts)
    }

    /// Opens the `.bitnet` file at `path`.
    pub fn open_file(path: &Path, opts: &LoadOptions) -> anyhow::Result<Engine> {
        if let Some(d) = &opts.draft {
            d.validate()?;
        }
        let file = Arc::new(BitnetFile::open(path)?);
        if !opts.no_verify {
            crate::integrity::ensure_verified(&file, path)?;
        }
        let kernels = match &opts.kernel {
            Some(k) => Kernels::by_name(k).map_err(|e| anyhow::anyhow!("--kernel: {e}"))?,
            None => Kernels::from_env().map_err(|e| anyhow::anyhow!(e))?,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match opts.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(t) => {
                if t > cores {
                    tracing::warn!("--threads {t} is more than this machine's {cores} cores");
                }
                t
            }
            None => PackedModel::calibrate_threads(file.clone(), kernels, cores)?,
        };
        let mut model = PackedModel::load_with(file.clone(), kernels, threads)
            .with_context(|| path.display().to_string())?;
        if let Some(head) = opts.head {
            model.set_head(head)?;
        }
        let ctx = context_for(model.config(), opts.ctx, 1)?;
        let tokenizer =
            Tokenizer::from_file(&file).with_context(|| format!("{}", path.display()))?;
        let info = file.header().tokenizer.clone();
        let tok_str = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
        if info.chat_template.is_none() {
            tracing::info!(
                "{} has no chat template; using the BitNet b1.58 2B4T one",
                path.display()
            );
        }
        let template = ChatTemplate::from_source(
            path.display().to_string(),
            info.chat_template.as_deref(),
            tok_str(info.bos_token_id),
            tok_str(info.eos_token_ids.first().copied()),
        )?;
        let longest_token = tokenizer.longest_token_bytes();
        Ok(Engine {
            model,
            tokenizer,
            template,
            stop_ids: info.eos_token_ids.clone(),
            file,
            ctx,
            longest_token,
            draft: opts.draft,
        })
    }

    /// Sampling parameters: the file's generation defaults, overridden by `o`.
    pub fn sampling(&self, o: &SamplingOverrides) -> anyhow::Result<SamplingParams> {
        o.apply(SamplingParams::from_generation_defaults(
            &self.file.header().generation,
        ))
    }

    /// Token ids of a chat: the template rendered with a generation prompt, one BOS in front. The
    /// messages' text never becomes control tokens (see [`bitnet_chat::Tokenizer::encode_templated`]):
    /// a prompt without special-token text in its messages gets transformers' ids exactly.
    pub fn encode_chat(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        let bytes: usize = contents.iter().map(|c| c.len()).sum();
        self.check_length_bytes(bytes)?;
        let ids = self.tokenizer.encode_templated(&contents, |texts| {
            let with: Vec<Message> = messages
                .iter()
                .zip(texts)
                .map(|(m, t)| Message::new(m.role.clone(), t.clone()))
                .collect();
            self.template.render(&with, true)
        })?;
        Ok(ids)
    }

    /// Whether the chat template writes tools itself ([`bitnet_chat::ChatTemplate::reads_tools`]); if so,
    /// a server passes the request's tools and tool turns to it with [`Engine::encode_chat_json`].
    pub fn template_reads_tools(&self) -> bool {
        self.template.reads_tools()
    }

    /// [`Engine::encode_chat`] for messages given as JSON objects (with `tool_calls`, `tool_call_id`, ...)
    /// and the tools transformers passes as `tools=`. Each message's string `content` is kept apart from
    /// control tokens as in [`Engine::encode_chat`]; every other string (a tool's definition, a call's
    /// arguments) must hold no special-token text, else the error names where it is.
    pub fn encode_chat_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> anyhow::Result<Vec<u32>> {
        let slots: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i].get("content").is_some_and(|c| c.is_string()))
            .collect();
        let contents: Vec<&str> = slots
            .iter()
            .filter_map(|&i| messages[i]["content"].as_str())
            .collect();
        let mut bytes: usize = contents.iter().map(|c| c.len()).sum();
        for (i, m) in messages.iter().enumerate() {
            // Every field but the content, which is kept apart from control tokens instead.
            for (k, v) in m.as_object().into_iter().flatten() {
                if k != "content" {
                    bytes += self.no_special_text(v, &format!("messages[{i}].{k}"))?;
                }
            }
        }
        for (i, t) in tools.unwrap_or_default().iter().enumerate() {
            bytes += self.no_special_text(t, &format!("tools[{i}]"))?;
        }
        self.check_length_bytes(bytes)?;
        let ids = self.tokenizer.encode_templated(&contents, |texts| {
            let mut with = messages.to_vec();
            for (&i, t) in slots.iter().zip(texts) {
                with[i]["content"] = serde_json::Value::String(t.clone());
            }
            self.template.render_json_with_tools(&with, tools, true)
        })?;
        Ok(ids)
    }

    /// The bytes of `v`'s strings (keys included), or an error naming the first one (by its path under
    /// `at`) that holds a special token's text.
    fn no_special_text(&self, v: &serde_json::Value, at: &str) -> anyhow::Result<usize> {
        use serde_json::Value;
        let check = |s: &str, at: &str| match self.tokenizer.special_text_in(s) {
            Some(special) => bail!(
                "`{at}` holds the text of the special token `{special}`, which only message content may \
                 hold (it is kept apart from the template's control tokens there)"
            ),
            None => Ok(s.len()),
        };
        Ok(match v {
            Value::String(s) => check(s, at)?,
            Value::Array(a) => {
                let mut n = 0;
                for (i, x) in a.iter().enumerate() {
                    n += self.no_special_text(x, &format!("{at}[{i}]"))?;
                }
                n
            }
            Value::Object(o) => {
                let mut n = 0;
                for (k, x) in o {
                    let here = format!("{at}.{k}");
                    n += check(k, &here)? + self.no_special_text(x, &here)?;
                }
                n
            }
            _ => 0,
        })
    }

    /// The embedding of `ids`: the mean of the final-norm hidden states of every token, scaled to unit
    /// length (an all-zero mean stays zero). Runs in a cache of its own, beside any generation.
    pub fn embed(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("nothing to embed: the input has no tokens");
        }
        if ids.len() > self.ctx {
            bail!(
                "the input is {} tokens, more than the context of {}",
                ids.len(),
                self.ctx
            );
        }
        let hidden = self.model.hidden_states(ids)?;
        let h = self.model.config().hidden_size;
        let mut mean = vec![0f64; h];
        for row in hidden.chunks_exact(h) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        Ok(mean.iter().map(|v| (v * scale) as f32).collect())
    }

    /// Refuses, without tokenizing it, a text too long to fit the context whatever its tokens: more bytes
    /// than the context times the longest token (a 4 MB body is refused in microseconds, not seconds).
    pub fn check_length(&self, text: &str) -> anyhow::Result<()> {
        self.check_length_bytes(text.len())
    }

    /// [`Engine::check_length`] for a text of `bytes` bytes.
    pub fn check_length_bytes(&self, bytes: usize) -> anyhow::Result<()> {
        let most = self.ctx.saturating_mul(self.longest_token);
        if bytes > most {
            bail!(
                "the text is {} bytes, more than the context of {} tokens can hold (at most {most} bytes at {} \
                 bytes per token): shorten it",
                bytes,
                self.ctx,
                self.longest_token
            );
        }
        Ok(())
    }

    /// Positions a sequence may use: `--ctx`, else the model's context length.
    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Checks that `sequences` KV caches of [`Engine::context`] positions fit the memory available.
    pub fn check_sequences(&self, sequences: usize) -> anyhow::Result<()> {
        context_for(self.model.config(), Some(self.ctx), sequences).map(|_| ())
    }

    /// Feeds `ids` past the session's cache (reusing the longest common prefix with `cached`), then samples
    /// until a stop, streaming text to `emit`. `cached` tracks the ids in the session's cache.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        session: &mut Session,
        cached: &mut Vec<u32>,
        ids: &[u32],
        params: &SamplingParams,
        stops: &[String],
        cancel: &AtomicBool,
        emit: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Generation> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        self.generate_on(
            &self.model,
            session,
            cached,
            ids,
            params,
            stops,
            &cancelled,
            emit,
        )
    }

    /// [`Engine::generate`] on any backend (the FP32 reference too), with this engine's tokenizer and stop
    /// ids; `cancelled` is asked before each token.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_on(
        &self,
        backend: &dyn Backend,
        session: &mut Session,
        cached: &mut Vec<u32>,
        ids: &[u32],
        params: &SamplingParams,
        stops: &[String],
        cancelled: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Generation> {
        let dec = SeqDecoder::new(self, params, stops)?;
        self.generate_with(backend, session, cached, ids, dec, cancelled, emit)
    }

    /// [`Engine::generate_on`] with a decoder the caller built (one with a constraint, say).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_with(
        &self,
        backend: &dyn Backend,
        session: &mut Session,
        cached: &mut Vec<u32>,
        ids: &[u32],
        mut dec: SeqDecoder<'_>,
        cancelled: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Generation> {
        let common = reuse_prefix(session, cached, ids);
        let new = &ids[common..];
        let t0 = Instant::now();
        let mut logits = Vec::new();
        backend.forward_logits(session, new, &mut logits)?;
        cached.extend_from_slice(new);
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut first_token_s = 0.0;
        let t1 = Instant::now();
        if let Some(draft) = &self.draft {
            let drafted = crate::draft::decode(
                draft,
                backend,
                session,
                cached,
                &mut dec,
                logits,
                cancelled,
                emit,
                &mut || first_token_s = t0.elapsed().as_secs_f64(),
            )?;
            return Ok(Generation {
                ids: dec.ids().to_vec(),
                text: dec.text().to_string(),
                stop: drafted.stop,
                prompt_tokens: ids.len(),
                reused_tokens: common,
                prefill_s,
                first_token_s,
                decode_s: t1.elapsed().as_secs_f64(),
                draft: Some(drafted.stats),
            });
        }
        let stop = loop {
            if cancelled() {
                emit(&dec.cancel()?)?;
                break StopReason::Cancelled;
            }
            let step = dec.next(&logits, cached, session.pos < session.max_ctx)?;
            if first_token_s == 0.0 {
                first_token_s = t0.elapsed().as_secs_f64();
            }
            emit(&step.text)?;
            match (step.stop, step.token) {
                (Some(stop), _) => break stop,
                (None, Some(next)) => {
                    backend.forward_logits(session, &[next], &mut logits)?;
                    cached.push(next);
                }
                (None, None) => unreachable!("a step without a stop has a token to feed"),
            }
        };
        Ok(Generation {
            ids: dec.ids().to_vec(),
            text: dec.text().to_string(),
            stop,
            prompt_tokens: ids.len(),
            reused_tokens: common,
            prefill_s,
            first_token_s,
            decode_s: t1.elapsed().as_secs_f64(),
            draft: None,
        })
    }

    /// The drafting this engine decodes with, if any.
    pub fn draft(&self) -> Option<&NgramDraft> {
        self.draft.as_ref()
    }
}
