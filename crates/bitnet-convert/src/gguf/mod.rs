//! GGUF files as a conversion source beside the Hugging Face folder, and `.bitnet` files exported as GGUF.
//!
//! Import ([`convert_gguf`]), in the order data flows:
//! 1. [`bitnet_gguf::GgufFile::open`] parses the container with every length checked.
//! 2. [`Family::of`] reads `general.architecture`: `llama` (Falcon3, Falcon-E, Llama3-8B-1.58: SiLU, no
//!    sub-norms, q/k rows permuted by llama.cpp's converter for its interleaved "NORM" RoPE), `bitnet`
//!    (1bitLLM: SiLU, sub-norms, NEOX RoPE, tied) and `bitnet-b1.58` / `bitnet-25` (bitnet.cpp's 2B4T files:
//!    relu², sub-norms, NEOX, tied). The config comes from the `<arch>.*` keys.
//! 3. Each projection is decoded to ternary values and one scale: TQ1_0 / TQ2_0 blocks (every block with a
//!    non-zero weight must share its f16 scale, [`bitnet_gguf::codec::tensor_scale`]), I2_S (one f32
//!    scale), or F32 / F16 / BF16 holding `{-s, 0, +s}` (llama.cpp's fallback for rows that are not a
//!    multiple of 256). `llama` q/k rows are put back in Hugging Face order, so RoPE is rotate-half (NEOX)
//!    as SPEC.md computes it. The values are packed into `ternary_r16` unchanged; the scale is stored
//!    exactly (an f16 scale is an f32 exactly).
//! 4. The tokenizer is rebuilt from `tokenizer.ggml.*` ([`vocab`]), the chat template taken from
//!    `tokenizer.chat_template`.
//!
//! Export ([`export`]) goes the other way, for llama.cpp.

pub mod export;
mod model;
pub mod vocab;

pub use model::{Family, GgufModel, SUPPORTED};

/// Whether `path` is a GGUF file to convert: a file starting with the GGUF magic, or named `*.gguf` (so a
/// damaged one gets the GGUF reader's error, not a folder's).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && (bitnet_gguf::is_gguf(path)
            || path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
}

use std::path::Path;

use bitnet_format::{
    FileWriter, GenerationDefaults, Header, SourceInfo, TensorKind, TensorSpec, layout,
};
use bitnet_gguf::{GgmlType, codec};
use rayon::prelude::*;

use crate::architecture::Role;
use crate::convert::{ConvertOptions, ConvertReport, LmHead, Progress};
use crate::error::{ConvertError, Result};
use crate::quantize;
use model::{Planned, gguf_err};

/// Float tensor data (F32, F16, BF16) as f32 values.
pub fn floats(data: &[u8], ty: GgmlType) -> Vec<f32> {
    match ty {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Bf16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => unreachable!("checked by the plan: {ty:?} is not a float type"),
    }
}

/// A projection's ternary values (row-major, Hugging Face row order) and the value of a +1 weight.
fn ternary(t: &Planned, data: &[u8], path: &Path) -> Result<(Vec<i8>, f32)> {
    let n = t.shape.iter().product::<usize>();
    let bad = |reason: String| ConvertError::BadTensor {
        path: path.to_path_buf(),
        tensor: t.info.name.clone(),
        reason,
    };
    let (mut values, scale) = match t.info.ggml_type {
        GgmlType::Tq2_0 | GgmlType::Tq1_0 => {
            let (values, scales) = if t.info.ggml_type == GgmlType::Tq2_0 {
                codec::decode_tq2_0(data, n, &t.info.name)
            } else {
                codec::decode_tq1_0(data, n, &t.info.name)
            }
            .map_err(gguf_err(path))?;
            let s = codec::tensor_scale(&values, &scales, &t.info.name).map_err(gguf_err(path))?;
            (values, s)
        }
        GgmlType::I2S => {
            let (values, s) = codec::decode_i2s(data, n, &t.info.name).map_err(gguf_err(path))?;
            if !(s.is_finite() && s > 0.0) {
                return Err(bad(format!("I2_S scale {s}: a scale must be finite and positive")));
            }
            (values, s)
        }
        ty => codec::ternary_from_floats(&floats(data, ty)).ok_or_else(|| {
            bad(format!(
                "{} values are not ternary (every value -s, 0 or +s for one s): latent float weights, \
                 not a BitNet b1.58 model's",
                ty.name()
            ))
        })?,
    };
    if let Some(heads) = t.unpermute {
        values = unpermute_rows(&values, t.shape[0], t.shape[1], heads);
    }
    Ok((values, scale))
}

/// Undoes llama.cpp's `permute` of q/k rows: its row `h*hd + 2j + i` is Hugging Face row `h*hd + i*hd/2 + j`.
pub fn unpermute_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Vec<T> {
    move_rows(values, rows, cols, heads, |llama, hf| (llama, hf))
}

/// llama.cpp's `permute` of q/k rows (the inverse of [`unpermute_rows`]).
pub fn permute_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Vec<T> {
    move_rows(values, rows, cols, heads, |llama, hf| (hf, llama))
}

/// Copies each row between llama.cpp's order and Hugging Face's; `pick(llama_row, hf_row)` gives
/// `(source, destination)`.
fn move_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
    pick: impl Fn(usize, usize) -> (usize, usize),
) -> Vec<T> {
    let hd = rows / heads;
    let mut out = vec![T::default(); values.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let (src, dst) = pick(h * hd + 2 * j + i, h * hd + i * hd / 2 + j);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Converts the GGUF file at `path` into the `.bitnet` file `output` (see the module overview).
pub fn convert_gguf(
    path: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    on_temp: &mut dyn FnMut(&Path),
) -> Result<ConvertReport> {
    let m = GgufModel::open(path)?;
    let exact_kind = |ty: GgmlType| {
        if ty == GgmlType::Bf16 {
            TensorKind::Bf16
        } else {
            TensorKind::F32
        }
    };
    let mut specs = Vec::new();
    let (mut parameters, mut ternary_parameters, mut total) = (0u64, 0u64, 0u64);
    let mut first_ternary_type = None;
    for t in &m.plan {
        let n = t.shape.iter().product::<usize>() as u64;
        parameters += n;
        total += t.info.len;
        let kind = match t.role {
            Role::Ternary => {
                ternary_parameters += n;
                first_ternary_type.get_or_insert(t.info.ggml_type);
                TensorKind::TernaryR16
            }
            Role::Norm => TensorKind::F32,
            Role::LmHead if opts.lm_head == LmHead::Int8 => TensorKind::Int8R16,
            Role::Embedding | Role::LmHead => exact_kind(t.info.ggml_type),
        };
        specs.push(TensorSpec {
            name: t.name.clone(),
            kind,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            source: Some(t.info.name.clone()),
        });
        if t.role == Role::LmHead && opts.lm_head == LmHead::Int8 {
            // The untied head's exact rows beside its int8 copy, for the rescored head (SPEC.md 6.2),
            // written from the same source bytes (counted once in the progress total).
            specs.push(TensorSpec {
                name: bitnet_format::OUTPUT_EXACT.into(),
                kind: exact_kind(t.info.ggml_type),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                source: Some(t.info.name.clone()),
            });
        }
    }
    let int8_tied = m.config.tie_word_embeddings && opts.lm_head == LmHead::Int8;
    if int8_tied {
        specs.push(TensorSpec {
            name: "output".into(),
            kind: TensorKind::Int8R16,
            shape: vec![m.config.vocab_size as u64, m.config.hidden_size as u64],
            source: Some("token_embd.weight".into()),
        });
    }
    specs.push(TensorSpec {
        name: "tokenizer.json".into(),
        kind: TensorKind::Bytes,
        shape: vec![m.vocab.json.len() as u64],
        source: Some("tokenizer.ggml.*".into()),
    });
    let n_tensors = specs.len();
    let header = Header {
        architecture: bitnet_format::ARCHITECTURE.to_string(),
        config: m.config.clone(),
        features: m.features.names(),
        tokenizer: m.vocab.info.clone(),
        generation: GenerationDefaults::default(),
        source: SourceInfo {
            architecture: format!("GGUF {}", m.arch_name),
            model_type: m.arch_name.clone(),
            dtype: first_ternary_type.map_or("?", GgmlType::name).to_string(),
            repo: None,
            revision: None,
            converter: format!("bitnet {}", env!("CARGO_PKG_VERSION")),
        },
        tensors: Vec::new(),
    };
    on_temp(&FileWriter::temp_path_for(output)?);
    let mut writer = FileWriter::create(output, header, specs)?;
    progress(Progress::Begin { total });
    for t in &m.plan {
        let data = m.file.data(&t.info);
        match t.role {
            Role::Ternary => {
                let (values, scale) = ternary(t, data, path)?;
                let packed = layout::pack_ternary(&values, t.shape[0], t.shape[1]);
                writer.write_tensor(&t.name, &packed, Some(scale))?;
            }
            Role::Norm => {
                writer.write_tensor(&t.name, &f32_bytes(&floats(data, t.info.ggml_type)), None)?
            }
            Role::LmHead if opts.lm_head == LmHead::Int8 => {
                write_int8(
                    &mut writer,
                    "output",
                    &floats(data, t.info.ggml_type),
                    &t.shape,
                )?;
                write_exact(&mut writer, bitnet_format::OUTPUT_EXACT, t, data)?;
            }
            Role::Embedding | Role::LmHead => write_exact(&mut writer, &t.name, t, data)?,
        }
        progress(Progress::Advance {
            bytes: t.info.len,
            tensor: &t.name,
        });
    }
    if int8_tied {
        let e = m
            .plan
            .iter()
            .find(|t| t.role == Role::Embedding)
            .expect("planned");
        write_int8(
            &mut writer,
            "output",
            &floats(m.file.data(&e.info), e.info.ggml_type),
            &e.shape,
        )?;
    }
    writer.write_tensor("tokenizer.json", &m.vocab.json, None)?;
    let file_bytes = writer.finish()?;
    Ok(ConvertReport {
        output: output.to_path_buf(),
        file_bytes,
        tensors: n_tensors,
        parameters,
        ternary_parameters,
        warnings: m.warnings.clone(),
        notes: m.notes.clone(),
    })
}

fn write_int8(writer: &mut FileWriter, name: &str, w: &[f32], shape: &[usize]) -> Result<()> {
    let (rows, cols) = (shape[0], shape[1]);
    let (q, d) = quantize::int8_rows(w, rows, cols);
    let tile_len = layout::int8_tile_len(cols);
    let mut packed = vec![0u8; layout::pad16(rows) / layout::TILE_ROWS * tile_len];
    packed
        .par_chunks_mut(tile_len)
        .enumerate()
        .for_each(|(tile, out)| {
            layout::pack_int8_tile(&q, rows, cols, tile, out);
        });
    let mut scales = d;
    scales.resize(layout::pad16(rows), 0.0);
    packed.extend_from_slice(&f32_bytes(&scales));
    writer.write_tensor(name, &packed, None)?;
    Ok(())
}

/// A float tensor as the file stores it: bf16 as it is, every other type as f32.
fn write_exact(writer: &mut FileWriter, name: &str, t: &Planned, data: &[u8]) -> Result<()> {
    if t.info.ggml_type == GgmlType::Bf16 {
        writer.write_tensor(name, data, None)?;
    } else {
        writer.write_tensor(name, &f32_bytes(&floats(data, t.info.ggml_type)), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_and_unpermute_are_inverses_and_match_llama_cpp() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2): for hd = 4, rows 0,2,1,3 per head.
        let rows: Vec<u32> = (0..8).collect();
        let p = permute_rows(&rows, 8, 1, 2);
        assert_eq!(p, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&p, 8, 1, 2), rows);
    }
}
