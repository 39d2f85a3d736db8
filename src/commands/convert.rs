//! `bitnet convert`: a Hugging Face checkpoint to one .bitnet file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_convert::{ConvertOptions, HubEnv, LmHead, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Outcome;
use crate::cli::{ConvertArgs, LmHeadArg};
use indicatif::{BinaryBytes, HumanCount};

/// The temporary output, removed by the Ctrl-C handler if the process is interrupted.
static TEMP_OUTPUT: Mutex<Option<PathBuf>> = Mutex::new(None);

pub fn run(args: ConvertArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let json = args.json;
    if args.output.exists() && !args.force {
        bail!(
            "{}: already exists (pass --force to replace it)",
            args.output.display()
        );
    }
    let env = HubEnv::from_process();
    // A repo id the cache lacks is downloaded first; the converter itself only reads the disk.
    if !std::path::Path::new(&args.input).exists() && bitnet_hub::looks_like_repo_id(&args.input) {
        crate::fetch::resolve_or_download(&args.input, &env)?;
    }
    ctrlc::set_handler(|| {
        if let Some(tmp) = TEMP_OUTPUT.lock().ok().and_then(|mut g| g.take()) {
            let _ = std::fs::remove_file(tmp);
        }
        eprintln!("\ninterrupted: no output written");
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    let opts = ConvertOptions {
        lm_head: match args.lm_head {
            LmHeadArg::Bf16 => LmHead::Exact,
            LmHeadArg::Int8 => LmHead::Int8,
        },
    };
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
            .expect("static template"),
    );
    let start = Instant::now();
    let progress = |p: Progress<'_>| match p {
        Progress::Begin { total } => bar.set_length(total),
        Progress::Advance { bytes, tensor } => {
            bar.set_message(tensor.to_string());
            bar.inc(bytes);
        }
    };
    let mut register = |tmp: &std::path::Path| {
        if let Ok(mut g) = TEMP_OUTPUT.lock() {
            *g = Some(tmp.to_path_buf());
        }
    };
    let result = bitnet_convert::convert(
        &args.input,
        &args.output,
        &opts,
        &env,
        &progress,
        &mut register,
    );
    if let Ok(mut g) = TEMP_OUTPUT.lock() {
        *g = None;
    }
    bar.finish_and_clear();
    let report = result.with_context(|| format!("converting {}", args.input))?;
    if !quiet {
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        for n in &report.notes {
            tracing::info!("note: {n}");
        }
    }
    let bpw = report.file_bytes as f64 * 8.0 / report.parameters as f64;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            schema_version: u32,
            input: &'a str,
            #[serde(flatten)]
            report: &'a bitnet_convert::ConvertReport,
            bits_per_parameter: f64,
            seconds: f64,
        }
        let v = Json {
            schema_version: 1,
            input: &args.input,
            report: &report,
            bits_per_parameter: bpw,
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !quiet {
        eprintln!(
            "wrote {} ({}, {} tensors, {} parameters of which {} ternary, {:.2} bits per parameter overall) in {:.1} s",
            report.output.display(),
            BinaryBytes(report.file_bytes),
            report.tensors,
            HumanCount(report.parameters),
            HumanCount(report.ternary_parameters),
            bpw,
            seconds
        );
    }
    Ok(Outcome::Success)
}
