//! `bitnet export`: a .bitnet file as GGUF for llama.cpp.

use anyhow::{Context, bail};
use bitnet_convert::gguf::export::{ExportType, export};

use crate::Outcome;
use crate::cli::{ExportArgs, GgufTypeArg};
use indicatif::BinaryBytes;

pub fn run(args: ExportArgs, quiet: bool) -> anyhow::Result<Outcome> {
    if args.output.exists() && !args.force {
        bail!(
            "{}: already exists (pass --force to replace it)",
            args.output.display()
        );
    }
    let ty = match args.ggml_type {
        GgufTypeArg::Tq2_0 => ExportType::Tq2_0,
        GgufTypeArg::Tq1_0 => ExportType::Tq1_0,
    };
    let report = export(&args.input, &args.output, ty)
        .with_context(|| format!("exporting {}", args.input.display()))?;
    if !quiet {
        for n in &report.notes {
            eprintln!("note: {n}");
        }
        eprintln!(
            "wrote {} ({}, architecture {}, {} projections as {:?}, {} as F32)",
            report.output.display(),
            BinaryBytes(report.file_bytes),
            report.architecture,
            report.ternary_tensors,
            ty,
            report.f32_fallback.len()
        );
    }
    Ok(Outcome::Success)
}
