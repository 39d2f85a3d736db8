//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Convert, inspect and run BitNet b1.58 ternary language models on CPUs.
#[derive(Debug, Parser)]
#[command(name = "bitnet", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize a Hugging Face BitNet checkpoint and pack it into one .bitnet file.
    Convert(ConvertArgs),
    /// Show what a .bitnet file holds: config, tokenizer, tensors, sizes, checksums.
    Inspect(InspectArgs),
}

/// LM head storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LmHeadArg {
    /// Exactly as in the checkpoint (bf16); a tied head reuses the embedding.
    Bf16,
    /// An extra int8 copy with per-row scales: half the bytes per decoded token, not bit-exact.
    Int8,
}

/// `bitnet convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// A Hugging Face model folder, or a repo id (org/name[@revision]) in the local Hugging Face cache.
    pub input: String,
    /// The .bitnet file to write (written atomically: a temporary file beside it, then a rename).
    #[arg(short, long)]
    pub output: PathBuf,
    /// How to store the LM head.
    #[arg(long, value_enum, default_value_t = LmHeadArg::Bf16)]
    pub lm_head: LmHeadArg,
    /// Replace OUTPUT if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `bitnet inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .bitnet file.
    pub file: PathBuf,
    /// Print JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Recompute every tensor's SHA-256 and fail (exit 1) if one differs.
    #[arg(long)]
    pub check: bool,
}
