//! `bitnet-convert`: Hugging Face BitNet checkpoints to `.bitnet` files.
//!
//! The pipeline, in the order data flows:
//! 1. [`hub::resolve`] finds the checkpoint: a folder, or a repo id in the local Hugging Face cache.
//! 2. [`checkpoint::Checkpoint::open`] reads config.json, the tokenizer files and the safetensors headers
//!    (single file or sharded), maps the weights, and checks every tensor the [`architecture`] map needs.
//!    A checkpoint with a SentencePiece `tokenizer.model` and no `tokenizer.json` gets one made by
//!    [`sentencepiece`].
//! 3. [`quantize`] turns each BitLinear weight into ternary values: latent float weights with the absmean
//!    rule the model was trained with, in f32; pre-packed uint8 weights by unpacking them exactly, their
//!    `weight_scale` multiplying or dividing as [`config::TernaryStorage`] read from config.json says.
//! 4. [`convert::convert`] streams tensor by tensor into a `bitnet_format::FileWriter`, which writes the
//!    file atomically. Memory stays near one tensor: source pages are released as soon as they are used.
//!
//! A GGUF file (llama.cpp's TQ1_0 / TQ2_0, bitnet.cpp's I2_S) is a source too: [`convert::convert`] hands
//! it to [`gguf::convert_gguf`], and [`gguf::export::export`] writes a `.bitnet` file back as GGUF.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod architecture;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod fuzzing;
pub mod gguf;
pub mod hub;
pub mod quantize;
pub mod sentencepiece;
pub mod source_file;
mod tokenizer_meta;

pub use config::{ScaleOp, TernaryStorage};
pub use convert::{ConvertOptions, ConvertReport, LmHead, Progress, convert};
pub use error::{ConvertError, Result};
pub use hub::HubEnv;
