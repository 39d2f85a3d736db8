//! `bitnet-runtime`: the BitNet runtime as a library.
//!
//! - [`Engine`] loads a `.bitnet` file (memory-mapped, read in place by the SIMD kernels) with its
//!   tokenizer and chat template, and [`Engine::generate`] streams text from a prompt.
//! - [`SeqDecoder`] is the per-sequence half of generation (sampling, end-of-turn ids, stop strings,
//!   UTF-8-safe streaming), shared by the one-sequence loop and the [`scheduler`] that decodes several
//!   sequences together for a server.
//! - [`models::resolve_model`] turns what a user names (a file, a Hugging Face folder, a repo id) into a
//!   `.bitnet` file, downloading and converting once into the [`store::Store`] through a
//!   [`models::Provider`].
//! - [`verify`] compares the packed path's logits with transformers' or an FP32 reference's;
//!   [`perplexity`] scores a text; [`sys`] reads the process's memory figures.
//!
//! Nothing here prints: notes and warnings go through `tracing`.

#![warn(missing_docs)]

pub mod bench;
pub mod decoder;
pub mod doctor;
pub mod draft;
pub mod engine;
pub mod inspect;
pub mod integrity;
pub mod isolate;
pub mod metrics;
pub mod models;
pub mod perplexity;
pub mod sampling;
pub mod scheduler;
pub mod store;
pub mod sys;
pub mod verify;

pub use decoder::{SeqDecoder, Step, StopReason, reuse_prefix};
pub use draft::{DraftStats, NgramDraft};
pub use engine::{Engine, Generation, LoadOptions};
pub use models::{Provider, Quiet, resolve_model};
pub use sampling::SamplingOverrides;
