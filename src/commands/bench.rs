//! `bitnet bench`: prefill and decode tokens/s, memory, and decode speed as a share of the memory roof,
//! for the packed path, the FP32 reference, or both (each in its own process, so each has its own peak
//! RSS). The measuring is `bitnet_runtime::bench`; this maps flags and prints.
//!
//! `--json` prints one shape whatever the flags: the figures of the backend measured first (the packed
//! path, or the reference with `--backend reference`) at the top level, and with `--backend both` the
//! reference's beside them (`reference`) and the ratios (`packed_vs_reference`), else those are null.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_kernels::Kernels;
use bitnet_runtime::bench::{BackendReport, BenchOptions, bench_packed, bench_reference};
use bitnet_runtime::sys::cores;
use serde::Serialize;

use crate::Outcome;
use crate::cli::{BackendArg, BenchArgs, HeadArg, LmHeadArg};
use indicatif::BinaryBytes;

/// The packed path against the FP32 reference.
#[derive(Debug, Serialize)]
struct Ratios {
    decode_speedup: f64,
    prefill_speedup: f64,
    peak_rss_ratio: f64,
}

/// `bench --json`.
#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    #[serde(flatten)]
    first: BackendReport,
    reference: Option<BackendReport>,
    packed_vs_reference: Option<Ratios>,
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
            tracing::info!(
                "wrote a {name}-shaped model ({}) with random weights ({}) to {} in {:.1} s",
                family.repo,
                BinaryBytes(len).to_string(),
                p.display(),
                t0.elapsed().as_secs_f64()
            );
            _tmp = dir;
            p
        }
        (None, None) => bail!("give a .bitnet file or --synthetic 2b4t"),
    };
    if args.against.is_some() || args.against_head.is_some() || args.against_binary.is_some() {
        return crate::commands::bench_ab::run(&path, &args);
    }
    let opts = BenchOptions {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        repeat: args.repeat,
        warmup: args.warmup,
        threads: args.threads,
        parallel: args.parallel,
        head: args.head.map(HeadArg::kind),
    };
    let report = match args.backend {
        BackendArg::Packed => Report {
            schema_version: 1,
            first: bench_packed(&path, &opts, kernels)?,
            reference: None,
            packed_vs_reference: None,
        },
        BackendArg::Reference => Report {
            schema_version: 1,
            first: bench_reference(&path, args.reference.as_deref(), &opts)?,
            reference: None,
            packed_vs_reference: None,
        },
        BackendArg::Both => {
            let packed = child(&path, &args, "packed")?;
            let reference = child(&path, &args, "reference")?;
            let rss = |r: &BackendReport| r.peak_rss_bytes.map_or(f64::NAN, |b| b as f64);
            let ratios = Ratios {
                decode_speedup: packed.decode_tok_s / reference.decode_tok_s,
                prefill_speedup: packed.prefill_tok_s / reference.prefill_tok_s,
                peak_rss_ratio: rss(&packed) / rss(&reference),
            };
            Report {
                schema_version: 1,
                first: packed,
                reference: Some(reference),
                packed_vs_reference: Some(ratios),
            }
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(Outcome::Success);
    }
    print_row_header(&mut out)?;
    print_row(&mut out, &report.first)?;
    if let (Some(reference), Some(r)) = (&report.reference, &report.packed_vs_reference) {
        print_row(&mut out, reference)?;
        writeln!(
            out,
            "packed vs FP32: decode {:.1}x faster, prefill {:.1}x faster, peak RSS {:.1}% of FP32 ({:.0}% less memory)",
            r.decode_speedup,
            r.prefill_speedup,
            100.0 * r.peak_rss_ratio,
            100.0 * (1.0 - r.peak_rss_ratio),
        )?;
    }
    let packed = &report.first;
    match packed.rescored_rows_per_token {
        Some(rows) => writeln!(
            out,
            "LM head: rescored (int8, then {rows:.1} rows per token recomputed exactly: the exact head's greedy token)"
        )?,
        None => writeln!(out, "LM head: {}", packed.lm_head)?,
    }
    if let (Some(kv), Some(with_kv)) = (packed.kv_bytes_per_token, packed.roof_fraction_with_kv) {
        writeln!(
            out,
            "the KV cache adds {:.1} MB per decoded token on average: {:.0}% of the roof with it",
            kv / 1e6,
            100.0 * with_kv
        )?;
    }
    if let Some(p) = &packed.parallel {
        writeln!(
            out,
            "{} sequences decoded together: {:.2} tok/s in all, {:.2}x one sequence's {:.2} tok/s",
            p.sequences, p.decode_tok_s, p.speedup, packed.decode_tok_s,
        )?;
    }
    Ok(Outcome::Success)
}

/// Runs this benchmark for one backend in a child process and returns its JSON.
fn child(path: &Path, args: &BenchArgs, backend: &str) -> anyhow::Result<BackendReport> {
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
    if let (Some(h), "packed") = (args.head, backend) {
        cmd.args(["--head", h.as_str()]);
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
    // The top level of the child's report is its backend's figures.
    serde_json::from_slice(&out.stdout).context("reading the child's JSON")
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

fn print_row(out: &mut impl Write, r: &BackendReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<11} {:>7} {:>13.1} {:>12.2} {:>15.1} {:>11.1} {:>8.0}% {:>12} {:>8.2}",
        r.backend,
        r.kernel,
        r.threads,
        r.prefill_tok_s,
        r.decode_tok_s,
        r.bytes_per_token as f64 / 1e6,
        r.roof_tok_s,
        100.0 * r.roof_fraction,
        r.peak_rss_bytes
            .map_or("?".to_string(), |b| BinaryBytes(b).to_string()),
        r.load_s,
    )
}
