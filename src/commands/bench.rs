//! `bitnet bench`: prefill and decode tokens/s, memory, and decode speed as a share of the memory roof,
//! for the packed path, the FP32 reference, or both (each in its own process, so each has its own peak RSS).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_kernels::pool::{Pool, read_bandwidth, read_bandwidth_of};
use bitnet_model::{Backend, LogitsMode, PackedModel, argmax};
use bitnet_reference::ReferenceModel;
use serde_json::{Value, json};

use super::human_bytes;
use crate::Outcome;
use crate::cli::{BackendArg, BenchArgs, LmHeadArg};

/// Resets the peak-RSS mark (Linux: writing 5 to `/proc/self/clear_refs`), so the peak reported covers the
/// timed runs, not the benchmark's own scaffolding (the bandwidth probe's buffer, the thread calibration).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(v: &mut [f64]) -> f64 {
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

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if let Some(t) = args.threads
        && t > cores()
    {
        tracing::warn!(
            "--threads {t} is more than this machine's {} cores; threads will compete for them",
            cores()
        );
    }
    if args.repeat == 0 || args.prompt_tokens == 0 {
        bail!("--repeat and --prompt-tokens must be at least 1");
    }
    let kernels = match &args.kernel {
        Some(name) => Kernels::by_name(name).map_err(|e| anyhow::anyhow!("--kernel: {e}"))?,
        None => Kernels::from_env().map_err(|e| anyhow::anyhow!(e))?,
    };
    // A synthetic model lives in a temporary file, mapped like a real one and removed at the end.
    let _tmp;
    let path: PathBuf = match (&args.model, &args.synthetic) {
        (Some(m), _) => bitnet_runtime::resolve_model(m, None, &crate::fetch::Cli)?,
        (None, Some(name)) => {
            let family = bitnet_model::synthetic::family(name)
                .with_context(|| format!("--synthetic: no family `{name}`"))?;
            let dir = tempfile::Builder::new()
                .prefix("bitnet-bench-")
                .tempdir()
                .context("creating a temporary folder")?;
            let p = dir.path().join(format!("synthetic-{name}.bitnet"));
            let t0 = Instant::now();
            let len =
                bitnet_model::synthetic::write(&p, &family, 42, args.lm_head == LmHeadArg::Int8)
                    .context("writing the synthetic model")?;
            eprintln!(
                "wrote a {name}-shaped model ({}) with random weights ({}) to {} in {:.1} s",
                family.repo,
                human_bytes(len),
                p.display(),
                t0.elapsed().as_secs_f64()
            );
            _tmp = dir;
            p
        }
        (None, None) => bail!("give a .bitnet file or --synthetic 2b4t"),
    };
    let report = match args.backend {
        BackendArg::Packed => bench_packed(&path, &args, kernels)?,
        BackendArg::Reference => bench_reference(&path, &args)?,
        BackendArg::Both => {
            let packed = child(&path, &args, "packed")?;
            let reference = child(&path, &args, "reference")?;
            let ratio = |k: &str| {
                packed[k].as_f64().unwrap_or(0.0) / reference[k].as_f64().unwrap_or(f64::NAN)
            };
            json!({
                "packed": packed,
                "reference": reference,
                "decode_speedup": ratio("decode_tok_s"),
                "prefill_speedup": ratio("prefill_tok_s"),
                "peak_rss_ratio": ratio("peak_rss_bytes"),
            })
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else if args.backend == BackendArg::Both {
        print_row_header(&mut out)?;
        print_row(&mut out, &report["packed"])?;
        print_row(&mut out, &report["reference"])?;
        writeln!(
            out,
            "packed vs FP32: decode {:.1}x faster, prefill {:.1}x faster, peak RSS {:.1}% of FP32 ({:.0}% less memory)",
            report["decode_speedup"].as_f64().unwrap_or(0.0),
            report["prefill_speedup"].as_f64().unwrap_or(0.0),
            100.0 * report["peak_rss_ratio"].as_f64().unwrap_or(0.0),
            100.0 * (1.0 - report["peak_rss_ratio"].as_f64().unwrap_or(1.0)),
        )?;
    } else {
        print_row_header(&mut out)?;
        print_row(&mut out, &report)?;
    }
    let packed = if args.backend == BackendArg::Both {
        &report["packed"]
    } else {
        &report
    };
    if !args.json
        && let (Some(kv), Some(with_kv)) = (
            packed["kv_bytes_per_token"].as_f64(),
            packed["roof_fraction_with_kv"].as_f64(),
        )
    {
        writeln!(
            out,
            "the KV cache adds {:.1} MB per decoded token on average: {:.0}% of the roof with it",
            kv / 1e6,
            100.0 * with_kv
        )?;
    }
    if !args.json
        && let Some(n) = packed["parallel"].as_u64()
    {
        writeln!(
            out,
            "{n} sequences decoded together: {:.2} tok/s in all, {:.2}x one sequence's {:.2} tok/s",
            packed["parallel_decode_tok_s"].as_f64().unwrap_or(0.0),
            packed["parallel_speedup"].as_f64().unwrap_or(0.0),
            packed["decode_tok_s"].as_f64().unwrap_or(0.0),
        )?;
    }
    Ok(Outcome::Success)
}

/// Runs this benchmark for one backend in a child process and returns its JSON.
fn child(path: &Path, args: &BenchArgs, backend: &str) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the bitnet executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("bench")
        .arg(path)
        .args(["--backend", backend, "--json"]);
    cmd.args([
        "--prompt-tokens",
        &args.prompt_tokens.to_string(),
        "--gen-tokens",
        &args.gen_tokens.to_string(),
    ]);
    cmd.args(["--repeat", &args.repeat.to_string()]);
    cmd.args(["--warmup", &args.warmup.to_string()]);
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(k) = &args.kernel {
        cmd.args(["--kernel", k]);
    }
    if let Some(r) = &args.reference {
        cmd.args(["--reference", r]);
    }
    if let (Some(n), "packed") = (args.parallel, backend) {
        cmd.args(["--parallel", &n.to_string()]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the benchmark child")?;
    if !out.status.success() {
        bail!("the {backend} benchmark failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the child's JSON")
}

/// Prefill and decode timings over `repeat` runs: (prefill tok/s per run, decode tok/s per run).
fn time_runs(backend: &dyn Backend, args: &BenchArgs) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let vocab = backend.config().vocab_size;
    let ctx = args.prompt_tokens + args.gen_tokens;
    if ctx > backend.config().max_position_embeddings {
        bail!(
            "{} prompt + {} generated tokens exceed the model's context of {}",
            args.prompt_tokens,
            args.gen_tokens,
            backend.config().max_position_embeddings
        );
    }
    let prompt = prompt_ids(args.prompt_tokens, vocab);
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
    for w in 0..args.warmup {
        // A prefill and one decoded token (none when none fit the session).
        let (t_pre, _) = run(args.gen_tokens.min(1))?;
        eprintln!(
            "warm-up {}/{} (not counted): prefill {:.1} tok/s",
            w + 1,
            args.warmup,
            args.prompt_tokens as f64 / t_pre
        );
    }
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for r in 0..args.repeat {
        let (t_pre, t_dec) = run(args.gen_tokens)?;
        pre.push(args.prompt_tokens as f64 / t_pre);
        dec.push(if args.gen_tokens == 0 {
            0.0
        } else {
            args.gen_tokens as f64 / t_dec
        });
        eprintln!(
            "run {}/{}: prefill {:.1} tok/s, decode {:.2} tok/s",
            r + 1,
            args.repeat,
            pre[r],
            dec[r]
        );
    }
    Ok((pre, dec))
}

/// Aggregate decode tokens/s of `n` sequences decoded together (one [`PackedModel::forward_batch`] per
/// step), per run; each sequence first prefills its own prompt.
fn time_parallel(model: &PackedModel, args: &BenchArgs, n: usize) -> anyhow::Result<Vec<f64>> {
    if n == 0 {
        bail!("--parallel must be at least 1");
    }
    let c = model.config();
    let ctx = args.prompt_tokens + args.gen_tokens;
    let mut out = Vec::new();
    for r in 0..args.repeat {
        let mut sessions: Vec<_> = (0..n).map(|_| model.session(ctx)).collect();
        let mut next = Vec::with_capacity(n);
        for (i, s) in sessions.iter_mut().enumerate() {
            let mut prompt = prompt_ids(args.prompt_tokens + i, c.vocab_size);
            prompt.drain(..i);
            let l = model.forward(s, &prompt, LogitsMode::Last, None)?.logits;
            next.push(argmax(&l));
        }
        let t0 = Instant::now();
        let mut logits = Vec::new();
        for _ in 0..args.gen_tokens {
            let mut refs: Vec<&mut bitnet_model::Session> = sessions.iter_mut().collect();
            let lists: Vec<&[u32]> = next.chunks(1).collect();
            model.forward_batch_into(&mut refs, &lists, &mut logits)?;
            next = (0..n)
                .map(|i| argmax(&logits[i * c.vocab_size..(i + 1) * c.vocab_size]))
                .collect();
        }
        let tok_s = (n * args.gen_tokens) as f64 / t0.elapsed().as_secs_f64();
        eprintln!(
            "run {}/{}: {n} sequences together decode {tok_s:.2} tok/s in all",
            r + 1,
            args.repeat
        );
        out.push(tok_s);
    }
    Ok(out)
}

fn summarize(mut pre: Vec<f64>, mut dec: Vec<f64>) -> Value {
    let span = |v: &[f64]| json!({"min": v.iter().copied().fold(f64::INFINITY, f64::min), "max": v.iter().copied().fold(0.0, f64::max)});
    let (ps, ds) = (span(&pre), span(&dec));
    json!({
        "prefill_tok_s": median(&mut pre),
        "decode_tok_s": median(&mut dec),
        "prefill_tok_s_spread": ps,
        "decode_tok_s_spread": ds,
    })
}

fn bench_packed(path: &Path, args: &BenchArgs, kernels: Kernels) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let file =
        Arc::new(BitnetFile::open(path).with_context(|| format!("reading {}", path.display()))?);
    let open_s = t0.elapsed().as_secs_f64();
    let threads = match args.threads {
        Some(t) => t,
        None => {
            let t = PackedModel::calibrate_threads(file.clone(), kernels, cores())
                .with_context(|| format!("loading {}", path.display()))?;
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
    let model = PackedModel::load_with(file.clone(), kernels, threads)?;
    let load_s = open_s + t_load.elapsed().as_secs_f64();
    eprintln!(
        "opened the file and chose {threads} thread(s) in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // The roof: how fast these threads stream exactly the weights a decoded token reads, from the map.
    let bandwidth = read_bandwidth_of(&Pool::new(threads), &model.decode_bytes(), 12);
    reset_peak_rss();
    let (pre, dec) = time_runs(&model, args)?;
    let bytes = model.weight_bytes_per_token();
    let mut v = summarize(pre, dec);
    if let Some(n) = args.parallel {
        let mut agg = time_parallel(&model, args, n)?;
        let single = v["decode_tok_s"].as_f64().unwrap_or(0.0);
        let spread = json!({
            "min": agg.iter().copied().fold(f64::INFINITY, f64::min),
            "max": agg.iter().copied().fold(0.0, f64::max),
        });
        let m = median(&mut agg);
        merge(
            &mut v,
            json!({
                "parallel": n,
                "parallel_decode_tok_s": m,
                "parallel_decode_tok_s_spread": spread,
                "parallel_speedup": m / single,
            }),
        );
    }
    let decode = v["decode_tok_s"].as_f64().unwrap_or(0.0);
    let c = model.config();
    let kv_bytes =
        2 * 4 * c.num_layers * c.num_kv_heads * c.head_dim * (args.prompt_tokens + args.gen_tokens);
    // Each decode step also reads the keys and values of every cached position: on average over the
    // generated tokens, prompt + (gen + 1) / 2 positions.
    let kv_read = 2.0
        * 4.0
        * (c.num_layers * c.num_kv_heads * c.head_dim) as f64
        * (args.prompt_tokens as f64 + (args.gen_tokens as f64 + 1.0) / 2.0);
    let extra = json!({
        "backend": "packed",
        "kernel": model.kernels().name,
        "threads": threads,
        "lm_head": if model.has_int8_head() { "int8" } else { "exact" },
        "load_s": load_s,
        "bytes_per_token": bytes,
        "bandwidth_gb_s": bandwidth / 1e9,
        "roof_tok_s": bandwidth / bytes as f64,
        "roof_fraction": decode * bytes as f64 / bandwidth,
        "kv_bytes_per_token": kv_read,
        "roof_fraction_with_kv": decode * (bytes as f64 + kv_read) / bandwidth,
        "peak_rss_bytes": peak_rss(),
        "file_bytes": file.len(),
        "kv_cache_bytes": kv_bytes,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "model": path.display().to_string(),
    });
    merge(&mut v, extra);
    Ok(v)
}

fn bench_reference(path: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let model = match &args.reference {
        Some(r) => ReferenceModel::load(r, &bitnet_convert::HubEnv::from_process())?,
        None => {
            let file =
                BitnetFile::open(path).with_context(|| format!("reading {}", path.display()))?;
            ReferenceModel::from_packed(&file)?
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let threads = rayon::current_num_threads();
    let bandwidth = read_bandwidth(&Pool::new(threads), 1 << 30, 5);
    reset_peak_rss();
    let (pre, dec) = time_runs(&model, args)?;
    let c = model.config().clone();
    let ternary = c.num_layers
        * (2 * c.hidden_size * c.num_heads * c.head_dim
            + 2 * c.hidden_size * c.num_kv_heads * c.head_dim
            + 3 * c.hidden_size * c.intermediate_size);
    let bytes = 4 * (ternary + c.vocab_size * c.hidden_size) as u64;
    let mut v = summarize(pre, dec);
    let decode = v["decode_tok_s"].as_f64().unwrap_or(0.0);
    merge(
        &mut v,
        json!({
            "backend": "reference",
            "kernel": "f32",
            "threads": threads,
            "lm_head": "f32",
            "load_s": load_s,
            "bytes_per_token": bytes,
            "bandwidth_gb_s": bandwidth / 1e9,
            "roof_tok_s": bandwidth / bytes as f64,
            "roof_fraction": decode * bytes as f64 / bandwidth,
            "peak_rss_bytes": peak_rss(),
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "model": args.reference.clone().unwrap_or_else(|| path.display().to_string()),
        }),
    );
    Ok(v)
}

fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

fn print_row_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<11} {:>7} {:>13} {:>12} {:>15} {:>11} {:>9} {:>12} {:>8}",
        "backend",
        "kernel",
        "threads",
        "prefill tok/s",
        "decode tok/s",
        "MB/token",
        "roof tok/s",
        "of roof",
        "peak RSS",
        "load s"
    )
}

fn print_row(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    writeln!(
        out,
        "{:<10} {:<11} {:>7} {:>13.1} {:>12.2} {:>15.1} {:>11.1} {:>8.0}% {:>12} {:>8.2}",
        v["backend"].as_str().unwrap_or("?"),
        v["kernel"].as_str().unwrap_or("?"),
        v["threads"],
        f("prefill_tok_s"),
        f("decode_tok_s"),
        f("bytes_per_token") / 1e6,
        f("roof_tok_s"),
        100.0 * f("roof_fraction"),
        human_bytes(v["peak_rss_bytes"].as_u64().unwrap_or(0)),
        f("load_s"),
    )
}
