//! Speed and memory of one backend: prefill and decode tokens/s (medians of repeated runs), the share of
//! the memory roof (how fast these threads stream exactly the bytes a decoded token reads), peak memory.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_kernels::pool::{Pool, read_bandwidth, read_bandwidth_of};
use bitnet_model::{Backend, HeadKind, LogitsMode, PackedModel, argmax};
use bitnet_reference::ReferenceModel;
use serde::{Deserialize, Serialize};

use crate::sys::{cores, peak_rss, reset_peak_rss};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt length for prefill.
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    pub gen_tokens: usize,
    /// Timed repetitions (figures are medians).
    pub repeat: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Threads (default: calibrated at load for the packed path, rayon's pool for the reference).
    pub threads: Option<usize>,
    /// Also decode this many sequences together (packed path).
    pub parallel: Option<usize>,
    /// The LM head (packed path; default: the file's default, [`PackedModel::default_head`]).
    pub head: Option<HeadKind>,
}

/// The smallest and largest of repeated figures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// Sequences decoded together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parallel {
    /// How many.
    pub sequences: usize,
    /// Their aggregate decode tokens/s (median).
    pub decode_tok_s: f64,
    /// Over runs.
    pub decode_tok_s_spread: Spread,
    /// Against one sequence's decode tokens/s.
    pub speedup: f64,
}

/// One backend's figures; `bitnet bench --json` prints it (with the reference's beside it for
/// `--backend both`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    /// `packed` or `reference`.
    pub backend: String,
    /// The kernel set (`f32` for the reference).
    pub kernel: String,
    /// Compute threads.
    pub threads: usize,
    /// `exact`, `int8`, `rescored` or `f32`.
    pub lm_head: String,
    /// Rows the rescored head recomputed exactly per scored token, over the timed runs (rescored head only).
    #[serde(default)]
    pub rescored_rows_per_token: Option<f64>,
    /// The model measured.
    pub model: String,
    /// Seconds to open and load it.
    pub load_s: f64,
    /// Prompt tokens per second (median).
    pub prefill_tok_s: f64,
    /// Decoded tokens per second (median).
    pub decode_tok_s: f64,
    /// Over runs.
    pub prefill_tok_s_spread: Spread,
    /// Over runs.
    pub decode_tok_s_spread: Spread,
    /// Weight bytes a decoded token reads (with the rescored head, the exact rows it recomputed too, on
    /// average over the timed runs).
    pub bytes_per_token: u64,
    /// How fast these threads stream those bytes.
    pub bandwidth_gb_s: f64,
    /// The decode speed at that bandwidth.
    pub roof_tok_s: f64,
    /// Decode speed over the roof.
    pub roof_fraction: f64,
    /// KV-cache bytes a decoded token reads on average (packed path).
    pub kv_bytes_per_token: Option<f64>,
    /// The roof share counting those too.
    pub roof_fraction_with_kv: Option<f64>,
    /// Peak resident memory during the timed runs.
    pub peak_rss_bytes: Option<u64>,
    /// The file's size (packed path).
    pub file_bytes: Option<u64>,
    /// The KV cache's size at the end of a run (packed path).
    pub kv_cache_bytes: Option<usize>,
    /// Sequences decoded together, when asked.
    pub parallel: Option<Parallel>,
    /// The prompt's length.
    pub prompt_tokens: usize,
    /// Tokens decoded per run.
    pub gen_tokens: usize,
    /// Timed runs.
    pub repeat: usize,
    /// Untimed runs.
    pub warmup: usize,
}

/// The median of `v` (sorted in place); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The smallest and largest of `v`.
pub fn spread(v: &[f64]) -> Spread {
    Spread {
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(0.0, f64::max),
    }
}

/// Deterministic prompt ids (content does not change the cost of a forward pass).
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Prefill and decode tokens/s per timed run.
fn time_runs(backend: &dyn Backend, o: &BenchOptions) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let vocab = backend.config().vocab_size;
    let ctx = o.prompt_tokens + o.gen_tokens;
    let max = backend.config().max_position_embeddings;
    if ctx > max {
        bail!(
            "{} prompt + {} generated tokens exceed the model's context of {max}",
            o.prompt_tokens,
            o.gen_tokens
        );
    }
    let prompt = prompt_ids(o.prompt_tokens, vocab);
    // One run on a fresh session: prefill the prompt, then decode `tokens` tokens; (prefill s, decode s).
    let run = |tokens: usize| -> anyhow::Result<(f64, f64)> {
        let mut s = backend.session(ctx);
        let t0 = Instant::now();
        let mut logits = Vec::new();
        backend.forward_logits(&mut s, &prompt, &mut logits)?;
        let t_pre = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..tokens {
            let next = argmax(&logits);
            backend.forward_logits(&mut s, &[next], &mut logits)?;
        }
        Ok((t_pre, t1.elapsed().as_secs_f64()))
    };
    for w in 0..o.warmup {
        // A prefill and one decoded token (none when none fit the session).
        let (t_pre, _) = run(o.gen_tokens.min(1))?;
        tracing::info!(
            "warm-up {}/{} (not counted): prefill {:.1} tok/s",
            w + 1,
            o.warmup,
            o.prompt_tokens as f64 / t_pre
        );
    }
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for r in 0..o.repeat {
        let (t_pre, t_dec) = run(o.gen_tokens)?;
        pre.push(o.prompt_tokens as f64 / t_pre);
        dec.push(if o.gen_tokens == 0 {
            0.0
        } else {
            o.gen_tokens as f64 / t_dec
        });
        tracing::info!(
            "run {}/{}: prefill {:.1} tok/s, decode {:.2} tok/s",
            r + 1,
            o.repeat,
            pre[r],
            dec[r]
        );
    }
    Ok((pre, dec))
}

/// Aggregate decode tokens/s of `n` sequences decoded together (one batched forward per step), per run;
/// each sequence first prefills its own prompt.
fn time_parallel(model: &PackedModel, o: &BenchOptions, n: usize) -> anyhow::Result<Vec<f64>> {
    if n == 0 {
        bail!("--parallel must be at least 1");
    }
    let c = model.config();
    let ctx = o.prompt_tokens + o.gen_tokens;
    let mut out = Vec::new();
    for r in 0..o.repeat {
        let mut sessions: Vec<_> = (0..n).map(|_| model.session(ctx)).collect();
        let mut next = Vec::with_capacity(n);
        for (i, s) in sessions.iter_mut().enumerate() {
            let mut prompt = prompt_ids(o.prompt_tokens + i, c.vocab_size);
            prompt.drain(..i);
            let l = model.forward(s, &prompt, LogitsMode::Last, None)?.logits;
            next.push(argmax(&l));
        }
        let t0 = Instant::now();
        let mut logits = Vec::new();
        for _ in 0..o.gen_tokens {
            let mut refs: Vec<&mut bitnet_model::Session> = sessions.iter_mut().collect();
            let lists: Vec<&[u32]> = next.chunks(1).collect();
            model.forward_batch_into(&mut refs, &lists, &mut logits)?;
            next = (0..n)
                .map(|i| argmax(&logits[i * c.vocab_size..(i + 1) * c.vocab_size]))
                .collect();
        }
        let tok_s = (n * o.gen_tokens) as f64 / t0.elapsed().as_secs_f64();
        tracing::info!(
            "run {}/{}: {n} sequences together decode {tok_s:.2} tok/s in all",
            r + 1,
            o.repeat
        );
        out.push(tok_s);
    }
    Ok(out)
}

/// Measures the packed path of the file at `path` with `kernels`.
pub fn bench_packed(
    path: &Path,
    o: &BenchOptions,
    kernels: Kernels,
) -> anyhow::Result<BackendReport> {
    let t0 = Instant::now();
    let file = Arc::new(BitnetFile::open(path)?);
    let open_s = t0.elapsed().as_secs_f64();
    let threads = match o.threads {
        Some(t) => t,
        None => {
            let t = PackedModel::calibrate_threads(file.clone(), kernels, cores())
                .with_context(|| path.display().to_string())?;
            if t < cores() {
                tracing::info!(
                    "note: {} threads measured slower than 1 on this machine now; using 1 (set --threads to override)",
                    cores()
                );
            }
            t
        }
    };
    let t_load = Instant::now();
    let mut model = PackedModel::load_with(file.clone(), kernels, threads)?;
    if let Some(h) = o.head {
        model
            .set_head(h)
            .with_context(|| format!("--head {}", h.as_str()))?;
    }
    let load_s = open_s + t_load.elapsed().as_secs_f64();
    tracing::info!(
        "opened the file and chose {threads} thread(s) in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // The roof: how fast these threads stream exactly the weights a decoded token reads, from the map.
    let bandwidth = read_bandwidth_of(&Pool::new(threads), &kernels, &model.decode_bytes(), 12);
    reset_peak_rss();
    let before = model.rescore_stats();
    let (mut pre, mut dec) = time_runs(&model, o)?;
    let after = model.rescore_stats();
    let (pre_spread, dec_spread) = (spread(&pre), spread(&dec));
    let (prefill, decode) = (median(&mut pre), median(&mut dec));
    let rescored_rows_per_token = (model.default_head() == HeadKind::Rescored).then(|| {
        bitnet_model::RescoreStats {
            tokens: after.tokens - before.tokens,
            rows: after.rows - before.rows,
        }
        .rows_per_token()
    });
    let parallel = match o.parallel {
        None => None,
        Some(n) => {
            let mut agg = time_parallel(&model, o, n)?;
            let s = spread(&agg);
            let m = median(&mut agg);
            Some(Parallel {
                sequences: n,
                decode_tok_s: m,
                decode_tok_s_spread: s,
                speedup: m / decode,
            })
        }
    };
    // The rescored head also reads the exact rows it recomputes: on average over the timed runs.
    let rescored_bytes = rescored_rows_per_token
        .zip(model.exact_head_row_bytes())
        .map_or(0, |(rows, row)| (rows * row as f64).round() as u64);
    let bytes = model.weight_bytes_per_token() + rescored_bytes;
    let c = model.config();
    let per_position = c.num_layers * c.num_kv_heads * c.head_dim;
    let kv_bytes = 2 * 4 * per_position * (o.prompt_tokens + o.gen_tokens);
    // Each decode step also reads the keys and values of every cached position: on average over the
    // generated tokens, prompt + (gen + 1) / 2 positions.
    let kv_read = 2.0
        * 4.0
        * per_position as f64
        * (o.prompt_tokens as f64 + (o.gen_tokens as f64 + 1.0) / 2.0);
    Ok(BackendReport {
        backend: "packed".into(),
        kernel: model.kernels().name.to_string(),
        threads,
        lm_head: model.default_head().as_str().into(),
        rescored_rows_per_token,
        model: path.display().to_string(),
        load_s,
        prefill_tok_s: prefill,
        decode_tok_s: decode,
        prefill_tok_s_spread: pre_spread,
        decode_tok_s_spread: dec_spread,
        bytes_per_token: bytes,
        bandwidth_gb_s: bandwidth / 1e9,
        roof_tok_s: bandwidth / bytes as f64,
        roof_fraction: decode * bytes as f64 / bandwidth,
        kv_bytes_per_token: Some(kv_read),
        roof_fraction_with_kv: Some(decode * (bytes as f64 + kv_read) / bandwidth),
        peak_rss_bytes: peak_rss(),
        file_bytes: Some(file.len()),
        kv_cache_bytes: Some(kv_bytes),
        parallel,
        prompt_tokens: o.prompt_tokens,
        gen_tokens: o.gen_tokens,
        repeat: o.repeat,
        warmup: o.warmup,
    })
}

/// Measures the FP32 reference: of `checkpoint` (a Hugging Face folder or repo id) when given, else of
/// the file's own weights in f32.
pub fn bench_reference(
    path: &Path,
    checkpoint: Option<&str>,
    o: &BenchOptions,
) -> anyhow::Result<BackendReport> {
    let t0 = Instant::now();
    let model = match checkpoint {
        Some(r) => ReferenceModel::load(r, &bitnet_convert::HubEnv::from_process())?,
        None => {
            let file = BitnetFile::open(path)?;
            ReferenceModel::from_packed(&file)?
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let threads = rayon::current_num_threads();
    let bandwidth = read_bandwidth(&Pool::new(threads), &Kernels::detect(), 1 << 30, 5);
    reset_peak_rss();
    let (mut pre, mut dec) = time_runs(&model, o)?;
    let (pre_spread, dec_spread) = (spread(&pre), spread(&dec));
    let (prefill, decode) = (median(&mut pre), median(&mut dec));
    let c = model.config().clone();
    let ternary = c.num_layers
        * (2 * c.hidden_size * c.num_heads * c.head_dim
            + 2 * c.hidden_size * c.num_kv_heads * c.head_dim
            + 3 * c.hidden_size * c.intermediate_size);
    let bytes = 4 * (ternary + c.vocab_size * c.hidden_size) as u64;
    Ok(BackendReport {
        backend: "reference".into(),
        kernel: "f32".into(),
        threads,
        lm_head: "f32".into(),
        rescored_rows_per_token: None,
        model: checkpoint.map_or_else(|| path.display().to_string(), str::to_string),
        load_s,
        prefill_tok_s: prefill,
        decode_tok_s: decode,
        prefill_tok_s_spread: pre_spread,
        decode_tok_s_spread: dec_spread,
        bytes_per_token: bytes,
        bandwidth_gb_s: bandwidth / 1e9,
        roof_tok_s: bandwidth / bytes as f64,
        roof_fraction: decode * bytes as f64 / bandwidth,
        kv_bytes_per_token: None,
        roof_fraction_with_kv: None,
        peak_rss_bytes: peak_rss(),
        file_bytes: None,
        kv_cache_bytes: None,
        parallel: None,
        prompt_tokens: o.prompt_tokens,
        gen_tokens: o.gen_tokens,
        repeat: o.repeat,
        warmup: o.warmup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        let s = spread(&[2.0, 5.0, 3.0]);
        assert_eq!((s.min, s.max), (2.0, 5.0));
    }
}
