//! Text generation: a model file, its tokenizer and chat template, and the loop that samples tokens and
//! streams text (used by `run` and `chat`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_chat::{
    ChatTemplate, Detokenizer, Message, Sampler, SamplingParams, StopMatcher, Tokenizer,
};
use bitnet_convert::HubEnv;
use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_model::{Backend, HeadKind, PackedModel, Session};

use crate::cli::{GenArgs, HeadArg};
use crate::store::Store;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-text or end-of-turn token.
    Eos,
    /// A `--stop` string appeared.
    StopString,
    /// `--max-tokens` were generated.
    Length,
    /// The context is full.
    Context,
    /// The user interrupted (Ctrl-C).
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::Length => "length",
            StopReason::Context => "context",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One generation's output and timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens already in the KV cache from an earlier turn (not computed again).
    pub reused_tokens: usize,
    pub prefill_s: f64,
    pub first_token_s: f64,
    pub decode_s: f64,
}

impl Generation {
    /// Prompt tokens computed per second (the reused ones are not counted).
    pub fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.reused_tokens) as f64 / self.prefill_s.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        self.ids.len().saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

/// A loaded model ready to generate.
pub struct Engine {
    pub model: PackedModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub stop_ids: Vec<u32>,
    pub file: Arc<BitnetFile>,
}

/// The `.bitnet` file for `model`: the file itself, or the converted copy of a Hugging Face folder or
/// repo id (downloaded first when the cache lacks it), made once into the cache and reused. `head` is
/// the head the caller will use: an untied model's exact head needs a copy of its own.
pub fn resolve_model(model: &str, head: Option<HeadArg>) -> anyhow::Result<PathBuf> {
    let p = Path::new(model);
    if bitnet_convert::gguf::is_gguf(p) {
        let resolved = bitnet_convert::hub::ResolvedModel {
            dir: p.to_path_buf(),
            repo: None,
            revision: None,
        };
        return Store::from_env().converted(&resolved, head == Some(HeadArg::Exact));
    }
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let env = HubEnv::from_process();
    let resolved = if !p.exists() && bitnet_hub::looks_like_repo_id(model) {
        crate::fetch::resolve_or_download(model, &env)?
    } else {
        bitnet_convert::hub::resolve(model, &env)
            .with_context(|| format!("{model}: not a .bitnet file"))?
    };
    Store::from_env().converted(&resolved, head == Some(HeadArg::Exact))
}

impl Engine {
    /// Opens `model` (a `.bitnet` file, or a Hugging Face folder or repo id) with the options of `args`.
    pub fn open(model: &str, args: &GenArgs) -> anyhow::Result<Engine> {
        let path = resolve_model(model, args.head)?;
        let file = Arc::new(
            BitnetFile::open(&path).with_context(|| format!("reading {}", path.display()))?,
        );
        let kernels = match &args.kernel {
            Some(k) => Kernels::by_name(k).map_err(|e| anyhow::anyhow!("--kernel: {e}"))?,
            None => Kernels::from_env().map_err(|e| anyhow::anyhow!(e))?,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match args.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(t) => {
                if t > cores {
                    eprintln!("warning: --threads {t} is more than this machine's {cores} cores");
                }
                t
            }
            None => PackedModel::calibrate_threads(file.clone(), kernels, cores)?,
        };
        let mut model = PackedModel::load_with(file.clone(), kernels, threads)
            .with_context(|| format!("loading {}", path.display()))?;
        match args.head {
            Some(HeadArg::Exact) => model.set_head(HeadKind::Exact)?,
            Some(HeadArg::Int8) => model.set_head(HeadKind::Int8)?,
            None => {}
        }
        let tokenizer =
            Tokenizer::from_file(&file).with_context(|| format!("{}", path.display()))?;
        let info = file.header().tokenizer.clone();
        let tok_str = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
        if info.chat_template.is_none() {
            eprintln!(
                "note: {} has no chat template; using the BitNet b1.58 2B4T one",
                path.display()
            );
        }
        let template = ChatTemplate::from_source(
            path.display().to_string(),
            info.chat_template.as_deref(),
            tok_str(info.bos_token_id),
            tok_str(info.eos_token_ids.first().copied()),
        )?;
        Ok(Engine {
            model,
            tokenizer,
            template,
            stop_ids: info.eos_token_ids.clone(),
            file,
        })
    }

    /// Sampling parameters: the file's generation defaults, overridden by the flags.
    pub fn sampling(&self, args: &GenArgs) -> anyhow::Result<SamplingParams> {
        let mut p = SamplingParams::from_generation_defaults(&self.file.header().generation);
        if let Some(t) = args.temperature {
            p.temperature = t;
        }
        if let Some(k) = args.top_k {
            p.top_k = k;
        }
        if let Some(v) = args.top_p {
            p.top_p = v;
        }
        if let Some(v) = args.min_p {
            p.min_p = v;
        }
        if let Some(v) = args.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(n) = args.max_tokens {
            p.max_tokens = n;
        }
        p.seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        p.validate()?;
        Ok(p)
    }

    /// Token ids of a chat: the template rendered with a generation prompt, one BOS in front.
    pub fn encode_chat(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        Ok(self.tokenizer.encode_prompt(&text)?)
    }

    pub fn context(&self) -> usize {
        self.model.config().max_position_embeddings
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
        let common = reuse_prefix(session, cached, ids);
        let new = &ids[common..];
        let mut dec = SeqDecoder::new(self, params, stops)?;
        let t0 = Instant::now();
        let mut logits = Vec::new();
        backend.forward_logits(session, new, &mut logits)?;
        cached.extend_from_slice(new);
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut first_token_s = 0.0;
        let t1 = Instant::now();
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
        })
    }
}

/// Keeps the longest prefix `ids` shares with the session's cache (`cached`), but never all of `ids`:
/// the last prompt token must run to give logits. Returns how many positions were kept.
pub fn reuse_prefix(session: &mut Session, cached: &mut Vec<u32>, ids: &[u32]) -> usize {
    let common = cached
        .iter()
        .zip(ids)
        .take_while(|(a, b)| a == b)
        .count()
        .min(ids.len().saturating_sub(1));
    session.truncate(common);
    cached.truncate(common);
    common
}

/// What one [`SeqDecoder::next`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Text to show now (may be empty while a stop string or a UTF-8 sequence is pending).
    pub text: String,
    /// The sampled token to feed to the model next, if generation goes on.
    pub token: Option<u32>,
    /// Why generation ended, if it did (then `text` includes everything held back).
    pub stop: Option<StopReason>,
}

/// The per-sequence half of generation: sampling, end-of-turn ids, stop strings and detokenization, fed
/// one set of logits at a time. `run`, `chat` and `serve` share it, so a sequence gives the same text
/// whichever of them drives it.
pub struct SeqDecoder<'e> {
    sampler: Sampler,
    stops: StopMatcher,
    detok: Detokenizer<'e>,
    stop_ids: &'e [u32],
    max_tokens: usize,
    ids: Vec<u32>,
    text: String,
    done: bool,
}

impl<'e> SeqDecoder<'e> {
    pub fn new(
        engine: &'e Engine,
        params: &SamplingParams,
        stops: &[String],
    ) -> anyhow::Result<SeqDecoder<'e>> {
        Ok(SeqDecoder {
            sampler: Sampler::new(params.clone())?,
            stops: StopMatcher::new(stops)?,
            detok: Detokenizer::new(&engine.tokenizer),
            stop_ids: &engine.stop_ids,
            max_tokens: params.max_tokens,
            ids: Vec::new(),
            text: String::new(),
            done: false,
        })
    }

    /// Samples from `logits` (the model's output after `history`, the ids in context). `room` says whether
    /// the context has space for one more position.
    pub fn next(&mut self, logits: &[f32], history: &[u32], room: bool) -> anyhow::Result<Step> {
        if self.done {
            bail!("generation already ended");
        }
        if self.ids.len() >= self.max_tokens {
            return self.end(String::new(), StopReason::Length);
        }
        let next = self.sampler.sample(logits, history)?;
        if self.stop_ids.contains(&next) {
            return self.end(String::new(), StopReason::Eos);
        }
        self.ids.push(next);
        let piece = self.stops.push(&self.detok.push(next)?);
        self.text.push_str(&piece.text);
        if piece.stop.is_some() {
            self.done = true;
            return Ok(Step {
                text: piece.text,
                token: None,
                stop: Some(StopReason::StopString),
            });
        }
        if self.ids.len() == self.max_tokens {
            return self.end(piece.text, StopReason::Length);
        }
        if !room {
            return self.end(piece.text, StopReason::Context);
        }
        Ok(Step {
            text: piece.text,
            token: Some(next),
            stop: None,
        })
    }

    /// Ends generation early (the client went away or pressed Ctrl-C): the text held back so far.
    pub fn cancel(&mut self) -> anyhow::Result<String> {
        if self.done {
            return Ok(String::new());
        }
        Ok(self.end(String::new(), StopReason::Cancelled)?.text)
    }

    /// Flushes what the detokenizer and the stop matcher hold back (a stop string may still appear in it).
    fn end(&mut self, mut text: String, reason: StopReason) -> anyhow::Result<Step> {
        self.done = true;
        let rest = self.stops.push(&self.detok.finish()?);
        let mut tail = rest.text;
        let reason = if rest.stop.is_some() {
            StopReason::StopString
        } else {
            tail.push_str(&self.stops.finish());
            reason
        };
        self.text.push_str(&tail);
        text.push_str(&tail);
        Ok(Step {
            text,
            token: None,
            stop: Some(reason),
        })
    }

    /// Tokens generated so far (end-of-turn ids excluded).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Text generated so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}
