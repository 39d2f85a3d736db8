//! `bitnet-format`: the `.bitnet` packed model file, version 2, as specified byte by byte in `SPEC.md`.
//!
//! A `.bitnet` file is one self-contained model: a 64-byte [preamble](reader::Preamble), a JSON
//! [`Header`] (model config, tokenizer, chat template, generation defaults, tensor directory), then the
//! tensor data, every tensor 64-byte aligned, in the layouts of [`layout`], which the kernels read straight
//! from the memory map.
//!
//! Where to start:
//! 1. [`BitnetFile::open`] maps and validates a file; [`BitnetFile::tensor`] hands out a tensor's bytes.
//! 2. [`FileWriter`] streams a new file tensor by tensor and renames it into place atomically.
//! 3. [`layout`] has the normative packers and unpackers of the tiled `ternary_r16` and `int8_r16` layouts.
//!
//! This crate knows nothing of models: what the tensors mean is the model crate's business.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod layout;
pub mod reader;
pub mod writer;

pub use error::{FormatError, Result};
pub use header::{
    Activation, Feature, Features, GenerationDefaults, Header, ModelConfig, RopeStyle, SourceInfo,
    TensorEntry, TensorKind, TokenizerInfo,
};
pub use reader::{BitnetFile, ChecksumMismatch, Preamble, hex};
pub use writer::{FileWriter, TensorSpec};

/// The first 8 bytes of every `.bitnet` file: `\x89BITNET\n`.
pub const MAGIC: [u8; 8] = *b"\x89BITNET\n";
/// The major version this build writes.
pub const VERSION_MAJOR: u16 = 2;
/// The oldest major version this build reads (version 1 files have an implied feature list).
pub const VERSION_MAJOR_MIN: u16 = 1;
/// The minor version this build writes (2.1 added the optional tensor [`OUTPUT_EXACT`]).
pub const VERSION_MINOR: u16 = 1;
/// The exact rows of an untied LM head stored beside its int8 copy `output` (SPEC.md 5), so the rescored
/// head (SPEC.md 6.2) works for untied models too.
pub const OUTPUT_EXACT: &str = "output_exact";
/// Length of the fixed preamble.
pub const PREAMBLE_LEN: usize = 64;
/// Every tensor offset (and the data section) is a multiple of this.
pub const DATA_ALIGN: u64 = 64;
/// The writer places the data section and tensors of 1 MiB or more on page boundaries.
pub const PAGE_ALIGN: u64 = 4096;
/// The `architecture` value (the only one).
pub const ARCHITECTURE: &str = "bitnet-b1.58";
