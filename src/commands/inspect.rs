//! `bitnet inspect`: what a .bitnet file holds.

use std::io::{IsTerminal, Write};

use bitnet_format::{BitnetFile, ChecksumMismatch, TensorKind};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::Outcome;
use crate::cli::InspectArgs;
use crate::escape::controls;

struct Totals {
    parameters: u64,
    ternary_parameters: u64,
    model_bytes: u64,
    ternary_bytes: u64,
}

fn totals(file: &BitnetFile) -> Totals {
    let h = file.header();
    let mut t = Totals {
        parameters: 0,
        ternary_parameters: 0,
        model_bytes: 0,
        ternary_bytes: 0,
    };
    for e in &h.tensors {
        if e.kind == TensorKind::Bytes {
            continue;
        }
        t.model_bytes += e.length;
        // An int8 head beside a tied embedding is a copy, not more parameters.
        let copy = e.name == "output" && h.config.tie_word_embeddings;
        if !copy {
            t.parameters += e.num_elements();
        }
        if e.kind == TensorKind::TernaryR16 {
            t.ternary_parameters += e.num_elements();
            t.ternary_bytes += e.length;
        }
    }
    t
}

fn bits_per_weight(bytes: u64, elems: u64) -> f64 {
    if elems == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elems as f64
    }
}

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
        serde_json::to_writer_pretty(&mut out, &to_json(&file, &args, mismatches.as_deref()))?;
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

/// One tensor in `inspect --json`.
#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    kind: &'static str,
    shape: &'a [u64],
    offset: u64,
    bytes: u64,
    bits_per_weight: Option<f64>,
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    embedded: bool,
    tokenizer_json_bytes: Option<usize>,
    bos_token_id: Option<u32>,
    add_bos_token: bool,
    eos_token_ids: &'a [u32],
    pad_token_id: Option<u32>,
    chat_template: bool,
}

#[derive(Serialize)]
struct TotalsJson {
    tensors: usize,
    parameters: u64,
    ternary_parameters: u64,
    model_bytes: u64,
    ternary_bytes: u64,
    bits_per_weight: f64,
    ternary_bits_per_weight: f64,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    ok: bool,
    mismatches: &'a [ChecksumMismatch],
}

/// `inspect --json`.
#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    file: String,
    file_bytes: u64,
    format_version: String,
    header_bytes: u64,
    data_offset: u64,
    architecture: &'a str,
    config: &'a bitnet_format::ModelConfig,
    features: Vec<String>,
    tokenizer: TokenizerJson<'a>,
    generation: &'a bitnet_format::GenerationDefaults,
    source: &'a bitnet_format::SourceInfo,
    tensors: Vec<TensorJson<'a>>,
    totals: TotalsJson,
    check: Option<CheckJson<'a>>,
}

fn to_json<'a>(
    file: &'a BitnetFile,
    args: &InspectArgs,
    mismatches: Option<&'a [ChecksumMismatch]>,
) -> Report<'a> {
    let h = file.header();
    let p = file.preamble();
    let t = totals(file);
    Report {
        schema_version: 1,
        file: args.file.display().to_string(),
        file_bytes: file.len(),
        format_version: format!("{}.{}", p.major, p.minor),
        header_bytes: p.header_len,
        data_offset: p.data_offset,
        architecture: &h.architecture,
        config: &h.config,
        features: file.features().names(),
        tokenizer: TokenizerJson {
            embedded: h.tokenizer.tokenizer_json.is_some(),
            tokenizer_json_bytes: file.tokenizer_json().map(|b| b.len()),
            bos_token_id: h.tokenizer.bos_token_id,
            add_bos_token: h.tokenizer.add_bos_token,
            eos_token_ids: &h.tokenizer.eos_token_ids,
            pad_token_id: h.tokenizer.pad_token_id,
            chat_template: h.tokenizer.chat_template.is_some(),
        },
        generation: &h.generation,
        source: &h.source,
        tensors: h
            .tensors
            .iter()
            .map(|e| TensorJson {
                name: &e.name,
                kind: e.kind.as_str(),
                shape: &e.shape,
                offset: e.offset,
                bytes: e.length,
                bits_per_weight: (e.kind != TensorKind::Bytes)
                    .then(|| bits_per_weight(e.length, e.num_elements())),
                sha256: &e.sha256,
                scale: e.scale(),
                source: e.source.as_deref(),
            })
            .collect(),
        totals: TotalsJson {
            tensors: h.tensors.len(),
            parameters: t.parameters,
            ternary_parameters: t.ternary_parameters,
            model_bytes: t.model_bytes,
            ternary_bytes: t.ternary_bytes,
            bits_per_weight: bits_per_weight(t.model_bytes, t.parameters),
            ternary_bits_per_weight: bits_per_weight(t.ternary_bytes, t.ternary_parameters),
        },
        check: mismatches.map(|bad| CheckJson {
            ok: bad.is_empty(),
            mismatches: bad,
        }),
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
