//! One input of the `checkpoint_folder` fuzz target (fuzz/fuzz_targets), shared with the replay test CI
//! runs on stable: a checkpoint folder built from the input must convert or give a clean error, never a
//! panic, a hang or an allocation the input did not pay for.

use std::path::PathBuf;

use crate::{ConvertOptions, HubEnv, LmHead, convert};

/// A valid tokenizer.json (the tiny fixtures' cut to 8 pieces and their 5 special tokens, the regex
/// pre-tokenizer dropped), so conversion gets past the tokenizer to the tensors. It is the same for every
/// input (the tokenizer_json target fuzzes tokenizers); kept small because parsing the fixtures' 23 KB one
/// took a third of each execution.
const TOKENIZER: &[u8] = include_bytes!("fuzz_tokenizer.json");

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

/// The reader alone, on the same input as [`checkpoint_folder`] (what the `checkpoint_reader` target
/// feeds): `Checkpoint::open` (config, index and safetensors headers, every
/// check before allocation), then every planned tensor looked up, its bytes sliced and, for a ternary
/// weight, its scale.
pub fn checkpoint_reader(data: &[u8]) {
    let Some(dir) = write_folder(data) else {
        return;
    };
    if let Ok(ck) = crate::checkpoint::Checkpoint::open(&dir) {
        let _ = ck.weights_dtype();
        let mut sum = 0u64;
        for p in ck.planned() {
            if let Some(t) = ck.tensor(&p.hf) {
                // The slice is where a bad offset would bite; its ends are enough to touch.
                let d = ck.data(t);
                sum += u64::from(d.first().copied().unwrap_or(0))
                    + u64::from(d.last().copied().unwrap_or(0));
            }
            if p.role == crate::architecture::Role::Ternary {
                let _ = ck.packed_scale(&p.hf);
            }
        }
        std::hint::black_box(sum);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`checkpoint_folder`]'s conversion result (`None` when the folder could not be written).
pub fn convert_input(data: &[u8]) -> Option<crate::Result<crate::ConvertReport>> {
    let dir = write_folder(data)?;
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

/// The checkpoint folder of an input (see [`checkpoint_folder`]), in this process's scratch folder.
fn write_folder(data: &[u8]) -> Option<PathBuf> {
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
    Some(dir)
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
