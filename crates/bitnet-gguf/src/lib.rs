//! `bitnet-gguf`: the GGUF container (version 3, as llama.cpp and bitnet.cpp write it) and ggml's ternary
//! block codecs. It knows nothing of models: what the keys and tensors mean is `bitnet-convert`'s business.
//!
//! Where to start:
//! 1. [`GgufFile::open`] maps a file and parses it with every length, count and offset checked (with checked
//!    arithmetic, against the bytes that remain) before anything is allocated, so a hostile file gives an
//!    error naming the field, never a panic or a huge allocation. Tensors are checked to lie inside the data
//!    section, aligned, without overlapping.
//! 2. [`GgufWriter`] writes a file: the metadata and tensor directory first, then the tensor data streamed in
//!    order, each aligned to `general.alignment` (32).
//! 3. [`codec`] holds the block formats: llama.cpp's TQ2_0 and TQ1_0 (256 weights and one f16 scale per
//!    block) and bitnet.cpp's I2_S (2-bit codes in 128-weight blocks, one f32 scale per tensor), decoded to
//!    ternary values plus scales and encoded back, byte for byte as the C code and `gguf-py` do.
//!
//! The types this crate reads are listed by [`GgmlType`]: F32, F16, BF16, TQ1_0, TQ2_0 and I2_S (type id 36,
//! which bitnet.cpp gives I2_S and upstream ggml retired).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod reader;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorDesc};

/// The four bytes a GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent, and the one the writer uses.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Whether the file at `path` starts with the GGUF magic (false if it cannot be read).
pub fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == MAGIC
}
