//! `bitnet inspect`: what a .bitnet file holds.

use std::io::{IsTerminal, Write};

use bitnet_format::{BitnetFile, TensorKind};
use bitnet_runtime::inspect::{bits_per_weight, report, totals};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Outcome;
use crate::cli::InspectArgs;
use crate::escape::controls;

pub fn run(args: InspectArgs) -> anyhow::Result<Outcome> {
    let file = BitnetFile::open(&args.file)?;
    let mismatches = if args.check {
        let total: u64 = file.header().tensors.iter().map(|e| e.length).sum();
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("checking {wide_bar} {bytes}/{total_bytes}")
                .expect("static template"),
        );
        let bad = file.verify_checksums(|done| bar.set_position(done));
        bar.finish_and_clear();
        Some(bad)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &report(
                &file,
                &args.file.display().to_string(),
                mismatches.as_deref(),
            ),
        )?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &file, &args, mismatches.as_deref())?;
    }
    out.flush()?;
    match mismatches {
        Some(bad) if !bad.is_empty() => Ok(Outcome::CheckFailed),
        _ => Ok(Outcome::Success),
    }
}

fn print_text(
    out: &mut impl Write,
    file: &BitnetFile,
    args: &InspectArgs,
    mismatches: Option<&[bitnet_format::ChecksumMismatch]>,
) -> std::io::Result<()> {
    let h = file.header();
    let p = file.preamble();
    let c = &h.config;
    let t = totals(file);
    writeln!(
        out,
        "file          {} ({}, format v{}.{})",
        controls(&args.file.display().to_string()),
        BinaryBytes(file.len()),
        p.major,
        p.minor
    )?;
    let mut src = format!("{} from {}", h.architecture, h.source.architecture);
    if !h.source.model_type.is_empty() {
        src += &format!(" (model_type {})", h.source.model_type);
    }
    src += &format!(", {} weights", h.source.dtype);
    if let Some(r) = &h.source.repo {
        src += &format!(", repo {r}");
    }
    if let Some(r) = &h.source.revision {
        src += &format!("@{r}");
    }
    writeln!(
        out,
        "architecture  {}; written by {}",
        controls(&src),
        controls(&h.source.converter)
    )?;
    writeln!(
        out,
        "config        vocab {}, hidden {}, ffn {}, layers {}, heads {} (kv {}, head_dim {}), context {}",
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.max_position_embeddings
    )?;
    writeln!(
        out,
        "              rope {} theta {}, rms_norm_eps {:e}, FFN {}-gated, {} LM head",
        c.rope_style.as_str(),
        c.rope_theta,
        c.rms_norm_eps,
        c.hidden_act.as_str(),
        match (c.tie_word_embeddings, file.entry("output").map(|e| e.kind)) {
            (false, Some(TensorKind::Int8R16))
                if file.entry(bitnet_format::OUTPUT_EXACT).is_some() =>
            {
                "untied, int8 (per-row scales) with its exact rows (`output_exact`)"
            }
            (_, Some(TensorKind::Int8R16)) => "int8 (per-row scales)",
            (true, _) => "tied",
            (false, _) => "untied",
        }
    )?;
    let features = file.features().names();
    writeln!(
        out,
        "features      {}",
        if features.is_empty() {
            "none (no sub-norms)".to_string()
        } else {
            features.join(", ")
        }
    )?;
    let tk = &h.tokenizer;
    let tok = match file.tokenizer_json() {
        Some(b) => format!("tokenizer.json embedded ({})", BinaryBytes(b.len() as u64)),
        None => "no tokenizer".to_string(),
    };
    let bos = match tk.bos_token_id {
        Some(b) => format!(
            "bos {b}{}",
            if tk.add_bos_token { " (prepended)" } else { "" }
        ),
        None => "no bos".into(),
    };
    writeln!(
        out,
        "tokenizer     {tok}, {bos}, stop ids {:?}, chat template {}",
        tk.eos_token_ids,
        match &tk.chat_template {
            Some(t) => format!("yes ({} chars)", t.len()),
            None => "none".into(),
        }
    )?;
    let g = serde_json::to_string(&h.generation).unwrap_or_default();
    writeln!(out, "generation    {g}")?;
    writeln!(out)?;
    let wname = h
        .tensors
        .iter()
        .map(|e| controls(&e.name).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<wname$}  {:<11}  {:>14}  {:>12}  {:>6}  {:>12}  scale",
        "name", "kind", "shape", "bytes", "bits/w", "offset"
    )?;
    for e in &h.tensors {
        let shape = e
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let bpw = if e.kind == TensorKind::Bytes {
            "-".to_string()
        } else {
            format!("{:.3}", bits_per_weight(e.length, e.num_elements()))
        };
        let scale = e.scale().map(|s| format!("{s:.6e}")).unwrap_or_default();
        writeln!(
            out,
            "{:<wname$}  {:<11}  {:>14}  {:>12}  {:>6}  {:>12}  {scale}",
            controls(&e.name),
            e.kind.as_str(),
            shape,
            e.length,
            bpw,
            e.offset
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "totals        {} tensors, {} parameters ({} ternary), {} of weights, {:.3} bits per parameter ({:.3} for the ternary ones)",
        h.tensors.len(),
        t.parameters,
        t.ternary_parameters,
        BinaryBytes(t.model_bytes),
        bits_per_weight(t.model_bytes, t.parameters),
        bits_per_weight(t.ternary_bytes, t.ternary_parameters)
    )?;
    if let Some(bad) = mismatches {
        if bad.is_empty() {
            writeln!(out, "checksums     all {} tensors match", h.tensors.len())?;
        } else {
            for m in bad {
                writeln!(
                    out,
                    "checksum MISMATCH  {}: expected {}, got {}",
                    controls(&m.name),
                    m.expected,
                    m.actual
                )?;
            }
        }
    }
    Ok(())
}
