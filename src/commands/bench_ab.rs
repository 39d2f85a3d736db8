//! `bitnet bench A --against B` / `--against-head H` / `--against-binary EXE`: two setups measured in one
//! sitting, alternating (A B, then B A, ...), one timed run each per round, each run in its own process
//! with its own roof probe. On a noisy machine the speeds drift between minutes; the ratio of two runs
//! seconds apart drifts far less, so the result is the per-round ratio B/A: its median and spread.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bitnet_runtime::bench::{BackendReport, Spread, spread};
use serde::Serialize;

use crate::Outcome;
use crate::cli::{BenchArgs, HeadArg};

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
struct Side {
    /// What it is, for people.
    label: String,
    #[serde(skip)]
    exe: PathBuf,
    #[serde(skip)]
    model: PathBuf,
    #[serde(skip)]
    head: Option<HeadArg>,
}

#[derive(Debug, Serialize)]
struct Round {
    /// `ab` or `ba`: which side ran first.
    order: &'static str,
    a: BackendReport,
    b: BackendReport,
    decode_ratio: f64,
    prefill_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    label: String,
    decode_tok_s: f64,
    decode_tok_s_spread: Spread,
    prefill_tok_s: f64,
    prefill_tok_s_spread: Spread,
    roof_fraction: f64,
    bytes_per_token: u64,
    lm_head: String,
}

#[derive(Debug, Serialize)]
struct Ratio {
    median: f64,
    min: f64,
    max: f64,
    /// Rounds in which B was faster.
    b_faster_rounds: usize,
}

/// `bench --json` in A/B mode.
#[derive(Debug, Serialize)]
struct AbReport {
    schema_version: u32,
    a: Summary,
    b: Summary,
    /// B's speed over A's, per round.
    decode_ratio: Ratio,
    prefill_ratio: Ratio,
    rounds: Vec<Round>,
}

fn median(mut v: Vec<f64>) -> f64 {
    bitnet_runtime::bench::median(&mut v)
}

fn ratio(v: Vec<f64>) -> Ratio {
    let s = spread(&v);
    Ratio {
        b_faster_rounds: v.iter().filter(|&&r| r > 1.0).count(),
        median: median(v),
        min: s.min,
        max: s.max,
    }
}

fn summary(side: &Side, runs: &[&BackendReport]) -> Summary {
    let decode: Vec<f64> = runs.iter().map(|r| r.decode_tok_s).collect();
    let prefill: Vec<f64> = runs.iter().map(|r| r.prefill_tok_s).collect();
    Summary {
        label: side.label.clone(),
        decode_tok_s_spread: spread(&decode),
        decode_tok_s: median(decode),
        prefill_tok_s_spread: spread(&prefill),
        prefill_tok_s: median(prefill),
        roof_fraction: median(runs.iter().map(|r| r.roof_fraction).collect()),
        bytes_per_token: runs[0].bytes_per_token,
        lm_head: runs[0].lm_head.clone(),
    }
}

/// One timed run of `side` in a child process.
fn run_side(side: &Side, args: &BenchArgs) -> anyhow::Result<BackendReport> {
    let mut cmd = std::process::Command::new(&side.exe);
    cmd.arg("bench").arg(&side.model).arg("--json");
    cmd.args(["--prompt-tokens", &args.prompt_tokens.to_string()]);
    cmd.args(["--gen-tokens", &args.gen_tokens.to_string()]);
    cmd.args(["--repeat", "1", "--warmup", &args.warmup.to_string()]);
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(k) = &args.kernel {
        cmd.args(["--kernel", k]);
    }
    if let Some(h) = side.head {
        cmd.args(["--head", h.as_str()]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", side.exe.display()))?;
    if !out.status.success() {
        bail!("{}: the benchmark failed ({})", side.label, out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: reading the benchmark's JSON", side.label))
}

/// Runs the comparison of `path` (A) against what the flags name (B).
pub fn run(path: &Path, args: &BenchArgs) -> anyhow::Result<Outcome> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.parallel.is_some() || args.backend != crate::cli::BackendArg::Packed {
        bail!(
            "--against, --against-head and --against-binary compare packed runs: drop --parallel and --backend"
        );
    }
    let exe = std::env::current_exe().context("locating the bitnet executable")?;
    let name = |p: &Path| p.display().to_string();
    let a = Side {
        label: format!(
            "{}{}",
            name(path),
            args.head
                .map_or(String::new(), |h| format!(" · {}", h.as_str()))
        ),
        exe: exe.clone(),
        model: path.to_path_buf(),
        head: args.head,
    };
    let mut b = a.clone();
    if let Some(m) = &args.against {
        b.model = bitnet_runtime::resolve_model(m, None, &crate::fetch::Cli)?;
    }
    if let Some(h) = args.against_head {
        b.head = Some(h);
    }
    if let Some(e) = &args.against_binary {
        if !e.is_file() {
            bail!("--against-binary {}: not a file", e.display());
        }
        b.exe = e.clone();
    }
    b.label = format!(
        "{}{}{}",
        name(&b.model),
        b.head
            .map_or(String::new(), |h| format!(" · {}", h.as_str())),
        args.against_binary
            .as_ref()
            .map_or(String::new(), |e| format!(" · built {}", e.display()))
    );
    let mut rounds = Vec::with_capacity(args.rounds);
    for i in 0..args.rounds {
        let (ra, rb, order) = if i % 2 == 0 {
            let ra = run_side(&a, args)?;
            (ra, run_side(&b, args)?, "ab")
        } else {
            let rb = run_side(&b, args)?;
            (run_side(&a, args)?, rb, "ba")
        };
        tracing::info!(
            "round {}/{} ({order}): decode A {:.2} B {:.2} tok/s",
            i + 1,
            args.rounds,
            ra.decode_tok_s,
            rb.decode_tok_s
        );
        rounds.push(Round {
            order,
            decode_ratio: rb.decode_tok_s / ra.decode_tok_s,
            prefill_ratio: rb.prefill_tok_s / ra.prefill_tok_s,
            a: ra,
            b: rb,
        });
    }
    let report = AbReport {
        schema_version: 1,
        a: summary(&a, &rounds.iter().map(|r| &r.a).collect::<Vec<_>>()),
        b: summary(&b, &rounds.iter().map(|r| &r.b).collect::<Vec<_>>()),
        decode_ratio: ratio(rounds.iter().map(|r| r.decode_ratio).collect()),
        prefill_ratio: ratio(rounds.iter().map(|r| r.prefill_ratio).collect()),
        rounds,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(Outcome::Success);
    }
    writeln!(
        out,
        "A/B in one sitting: {} rounds, A and B once each per round, order alternating",
        report.rounds.len()
    )?;
    for (tag, s) in [("A", &report.a), ("B", &report.b)] {
        writeln!(
            out,
            "{tag}: {} (head {}): decode {:.2} tok/s median ({:.2}-{:.2}), prefill {:.1} tok/s ({:.1}-{:.1}), \
             {:.0}% of the roof, {:.1} MB per token",
            s.label,
            s.lm_head,
            s.decode_tok_s,
            s.decode_tok_s_spread.min,
            s.decode_tok_s_spread.max,
            s.prefill_tok_s,
            s.prefill_tok_s_spread.min,
            s.prefill_tok_s_spread.max,
            100.0 * s.roof_fraction,
            s.bytes_per_token as f64 / 1e6
        )?;
    }
    let (d, p) = (&report.decode_ratio, &report.prefill_ratio);
    writeln!(
        out,
        "B/A per round: decode {:.3}x median ({:.3}-{:.3}, B faster in {} of {}), prefill {:.3}x ({:.3}-{:.3})",
        d.median,
        d.min,
        d.max,
        d.b_faster_rounds,
        report.rounds.len(),
        p.median,
        p.min,
        p.max
    )?;
    Ok(Outcome::Success)
}
