//! One input of the `checkpoint_folder` fuzz target (fuzz/fuzz_targets), shared with the replay test CI
//! runs on stable: a checkpoint folder built from the input must convert or give a clean error, never a
//! panic, a hang or an allocation the input did not pay for.

use std::path::PathBuf;

use crate::{ConvertOptions, HubEnv, LmHead, convert};

/// A real tokenizer.json (the tiny fixtures'), so conversion gets past the tokenizer to the tensors.
const TOKENIZER: &[u8] = include_bytes!("../../../fixtures/bitnet-tiny-tied/tokenizer.json");

/// The most data bytes written after a safetensors header: a header that claims more gets a short file,
/// which the reader must refuse rather than read past.
const MAX_DATA: usize = 1 << 20;

/// The input, split at `0xFF` bytes (never part of UTF-8 JSON): config.json, a safetensors header (JSON),
/// then optionally a model.safetensors.index.json and a second header. A header becomes a safetensors
/// file (8-byte length, the header, zeros up to the largest data offset it names): `model.safetensors`,
/// or, with an index, the shards `model-00001-of-00002.safetensors` and `model-00002-of-00002.safetensors`
/// (the second header, `{}` when absent). Then a conversion with an int8 head (the most work) into the
/// same folder.
pub fn checkpoint_folder(data: &[u8]) {
    let _ = convert_input(data);
}

/// [`checkpoint_folder`]'s conversion result (`None` when the folder could not be written).
pub fn convert_input(data: &[u8]) -> Option<crate::Result<crate::ConvertReport>> {
    let mut parts = data.split(|&b| b == 0xff);
    let config = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let index = parts.next();
    let second = parts.next().unwrap_or(b"{}");
    let dir = scratch();
    std::fs::create_dir_all(&dir).ok()?;
    let safetensors = safetensors_file(header);
    let shard2 = safetensors_file(second);
    let mut files: Vec<(&str, &[u8])> =
        vec![("config.json", config), ("tokenizer.json", TOKENIZER)];
    match index {
        None => files.push(("model.safetensors", &safetensors)),
        Some(ix) => {
            files.push(("model.safetensors.index.json", ix));
            files.push(("model-00001-of-00002.safetensors", &safetensors));
            files.push(("model-00002-of-00002.safetensors", &shard2));
        }
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).ok()?;
    }
    let out = dir.join("out.bitnet");
    let opts = ConvertOptions {
        lm_head: LmHead::Int8,
    };
    let result = convert(
        dir.to_str()?,
        &out,
        &opts,
        &HubEnv::default(),
        &|_| {},
        &mut |_| {},
    );
    let _ = std::fs::remove_dir_all(&dir);
    Some(result)
}

/// A folder of this process's own (the fuzzer and the replay test run one input at a time per process).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A safetensors file around `header`: its length, the header, and zeros up to the largest `data_offsets`
/// end the header names (at most [`MAX_DATA`]).
fn safetensors_file(header: &[u8]) -> Vec<u8> {
    let end = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|v| {
            v.as_object().map(|o| {
                o.values()
                    .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                    .max()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let data = usize::try_from(end).unwrap_or(MAX_DATA).min(MAX_DATA);
    let mut bytes = Vec::with_capacity(8 + header.len() + data);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header);
    bytes.resize(8 + header.len() + data, 0);
    bytes
}
