//! The conversion pipeline: plan the file from the checkpoint, then stream tensor by tensor through the
//! quantizers into a [`FileWriter`].

use std::path::{Path, PathBuf};

use bitnet_format::{FileWriter, Header, SourceInfo, TensorKind, TensorSpec, layout};
use rayon::prelude::*;
use safetensors::tensor::Dtype;

use crate::architecture::Role;
use crate::checkpoint::{Checkpoint, PlannedTensor};
use crate::config::{ScaleOp, TernaryStorage};
use crate::error::{ConvertError, Result};
use crate::hub::{self, HubEnv};
use crate::quantize;

/// How the LM head is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LmHead {
    /// Exactly as in the checkpoint (bf16, or f32 for f16/f32 sources); a tied head reuses the embedding.
    #[default]
    Exact,
    /// An `int8_r16` copy with one f32 scale per row (half the bytes per decoded token).
    Int8,
}

/// Conversion options.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// LM head storage.
    pub lm_head: LmHead,
}

/// Progress events, in bytes of source data consumed.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Conversion starts; `total` source bytes will be consumed.
    Begin {
        /// Total bytes.
        total: u64,
    },
    /// `bytes` more source bytes were consumed for `tensor`.
    Advance {
        /// Bytes consumed since the last event.
        bytes: u64,
        /// Canonical name of the tensor being written.
        tensor: &'a str,
    },
}

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// The output file.
    pub output: PathBuf,
    /// Its length in bytes.
    pub file_bytes: u64,
    /// Number of tensors written (including the tokenizer blob).
    pub tensors: usize,
    /// Model parameters stored (the int8 head copy of a tied model not counted twice).
    pub parameters: u64,
    /// Parameters stored as ternary.
    pub ternary_parameters: u64,
    /// Non-fatal problems with the input.
    pub warnings: Vec<String>,
    /// What the conversion did beyond copying and quantizing (a tokenizer.json made from tokenizer.model).
    pub notes: Vec<String>,
}

enum Job {
    Plain(PlannedTensor),
    /// An int8 copy of the LM head made from `source` (the embedding when tied).
    Int8Head {
        source: String,
        shape: Vec<usize>,
    },
    Tokenizer,
}

/// Converts the checkpoint `input` (a folder, or a repo id in the Hugging Face cache) into `output`.
///
/// `on_temp` is called with the temporary file's path just before it is created, so a caller can remove
/// it if the process is interrupted; any error removes it too.
pub fn convert(
    input: &str,
    output: &Path,
    opts: &ConvertOptions,
    env: &HubEnv,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    on_temp: &mut dyn FnMut(&Path),
) -> Result<ConvertReport> {
    let as_path = Path::new(input);
    if crate::gguf::is_gguf(as_path) {
        return crate::gguf::convert_gguf(as_path, output, opts, progress, on_temp);
    }
    let resolved = hub::resolve(input, env)?;
    let ck = Checkpoint::open(&resolved.dir)?;
    let exact_float = |dtype: Dtype| {
        if dtype == Dtype::BF16 {
            TensorKind::Bf16
        } else {
            TensorKind::F32
        }
    };

    let mut jobs = Vec::new();
    let mut specs = Vec::new();
    let mut total = 0u64;
    let mut parameters = 0u64;
    let mut ternary_parameters = 0u64;
    for p in ck.planned() {
        let src = ck.tensor(&p.hf).expect("checked at open");
        total += ck.data(src).len() as u64;
        let n: u64 = p.shape.iter().map(|&d| d as u64).product();
        parameters += n;
        let kind = match p.role {
            Role::Ternary => {
                ternary_parameters += n;
                TensorKind::TernaryR16
            }
            Role::Norm => TensorKind::F32,
            Role::Embedding => exact_float(src.dtype),
            Role::LmHead if opts.lm_head == LmHead::Int8 => {
                specs.push(spec(&p.name, TensorKind::Int8R16, &p.shape, &p.hf));
                jobs.push(Job::Int8Head {
                    source: p.hf.clone(),
                    shape: p.shape.clone(),
                });
                // The untied head's exact rows too (the tied head has them in token_embd): the rescored
                // head recomputes its candidates from them (SPEC.md 6.2).
                total += ck.data(src).len() as u64;
                let exact = PlannedTensor {
                    name: bitnet_format::OUTPUT_EXACT.to_string(),
                    ..p
                };
                specs.push(spec(
                    &exact.name,
                    exact_float(src.dtype),
                    &exact.shape,
                    &exact.hf,
                ));
                jobs.push(Job::Plain(exact));
                continue;
            }
            Role::LmHead => exact_float(src.dtype),
        };
        specs.push(spec(&p.name, kind, &p.shape, &p.hf));
        jobs.push(Job::Plain(p));
    }
    if ck.config.tie_word_embeddings && opts.lm_head == LmHead::Int8 {
        let p = ck
            .planned()
            .into_iter()
            .find(|p| p.role == Role::Embedding)
            .expect("every map has an embedding");
        total += ck.data(ck.tensor(&p.hf).expect("checked at open")).len() as u64;
        specs.push(spec("output", TensorKind::Int8R16, &p.shape, &p.hf));
        jobs.push(Job::Int8Head {
            source: p.hf,
            shape: p.shape,
        });
    }
    if let Some(tok) = &ck.tokenizer_json {
        specs.push(TensorSpec {
            name: "tokenizer.json".into(),
            kind: TensorKind::Bytes,
            shape: vec![tok.len() as u64],
            source: ck.tokenizer_source.clone(),
        });
        jobs.push(Job::Tokenizer);
    }

    let header = Header {
        architecture: bitnet_format::ARCHITECTURE.to_string(),
        config: ck.config.clone(),
        features: ck.features.names(),
        tokenizer: ck.tokenizer.clone(),
        generation: ck.generation.clone(),
        source: SourceInfo {
            architecture: ck.hf_architecture.clone(),
            model_type: ck.model_type.clone(),
            dtype: format!("{:?}", ck.weights_dtype()),
            repo: resolved.repo.clone(),
            revision: resolved.revision.clone(),
            converter: format!("bitnet {}", env!("CARGO_PKG_VERSION")),
        },
        tensors: Vec::new(),
    };
    let n_tensors = specs.len();
    // The caller learns the temporary path before the file exists: an interrupt between its creation
    // and this call would otherwise leave it behind.
    on_temp(&FileWriter::temp_path_for(output)?);
    let mut writer = FileWriter::create(output, header, specs)?;
    progress(Progress::Begin { total });
    for job in jobs {
        match job {
            Job::Plain(p) => write_plain(&ck, &mut writer, &p, progress)?,
            Job::Int8Head { source, shape } => {
                write_int8_head(&ck, &mut writer, &source, &shape, progress)?
            }
            Job::Tokenizer => {
                let tok = ck.tokenizer_json.as_deref().unwrap_or_default();
                writer.write_tensor("tokenizer.json", tok, None)?;
            }
        }
    }
    let file_bytes = writer.finish()?;
    Ok(ConvertReport {
        output: output.to_path_buf(),
        file_bytes,
        tensors: n_tensors,
        parameters,
        ternary_parameters,
        warnings: ck.warnings.clone(),
        notes: ck.notes.clone(),
    })
}

fn spec(name: &str, kind: TensorKind, shape: &[usize], source: &str) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        kind,
        shape: shape.iter().map(|&d| d as u64).collect(),
        source: Some(source.to_string()),
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Rows per streamed block of an embedding-sized tensor (a multiple of the 16-row tile).
const ROW_BLOCK: usize = 1024;

fn write_plain(
    ck: &Checkpoint,
    writer: &mut FileWriter,
    p: &PlannedTensor,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<()> {
    let src = ck.tensor(&p.hf).expect("checked at open");
    let data = ck.data(src);
    let shard = ck.shard(src);
    match p.role {
        Role::Ternary => {
            let (rows, cols) = (p.shape[0], p.shape[1]);
            let (packed, scale) = match ck.ternary {
                TernaryStorage::Latent => {
                    quantize::absmean_ternary_packed(data, src.dtype, rows, cols)
                }
                TernaryStorage::Packed(op) => {
                    let packed = quantize::repack_hf_packed(data, rows, cols).map_err(|b| {
                        ConvertError::BadTensor {
                            path: shard.path.clone(),
                            tensor: p.hf.clone(),
                            reason: format!(
                                "packed row {}, column {} holds code 3 for weight row {}, which is no ternary \
                                 value (transformers' unpack_weights would read it as +2): the checkpoint is \
                                 corrupt or not BitNet's 2-bit packing",
                                b.packed_row, b.col, b.row
                            ),
                        }
                    })?;
                    let ws = ck.packed_scale(&p.hf)?;
                    // SPEC.md stores the value of a +1 weight; a dividing scale becomes its reciprocal.
                    let scale = match op {
                        ScaleOp::Multiply => ws,
                        ScaleOp::Divide => 1.0 / ws,
                    };
                    (packed, scale)
                }
            };
            shard.release(data);
            writer.write_tensor(&p.name, &packed, Some(scale))?;
            progress(Progress::Advance {
                bytes: data.len() as u64,
                tensor: &p.name,
            });
        }
        Role::Norm => {
            writer.write_tensor(
                &p.name,
                &f32_bytes(&quantize::to_f32(data, src.dtype)),
                None,
            )?;
            progress(Progress::Advance {
                bytes: data.len() as u64,
                tensor: &p.name,
            });
        }
        Role::Embedding | Role::LmHead => {
            // Stream in row blocks so an embedding-sized tensor never sits in memory whole.
            let row_bytes = data.len() / p.shape[0].max(1);
            writer.begin_tensor(&p.name)?;
            for block in data.chunks(ROW_BLOCK * row_bytes) {
                if src.dtype == Dtype::BF16 {
                    writer.write(block)?;
                } else {
                    writer.write(&f32_bytes(&quantize::to_f32(block, src.dtype)))?;
                }
                shard.release(block);
                progress(Progress::Advance {
                    bytes: block.len() as u64,
                    tensor: &p.name,
                });
            }
            writer.end_tensor(None)?;
        }
    }
    Ok(())
}

fn write_int8_head(
    ck: &Checkpoint,
    writer: &mut FileWriter,
    source: &str,
    shape: &[usize],
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<()> {
    let src = ck.tensor(source).expect("checked at open");
    let data = ck.data(src);
    let shard = ck.shard(src);
    let (rows, cols) = (shape[0], shape[1]);
    let row_bytes = data.len() / rows.max(1);
    let tile_len = layout::int8_tile_len(cols);
    let mut scales = Vec::with_capacity(layout::pad16(rows));
    writer.begin_tensor("output")?;
    for block in data.chunks(ROW_BLOCK * row_bytes) {
        let w = quantize::to_f32(block, src.dtype);
        let block_rows = w.len() / cols;
        let (q, d) = quantize::int8_rows(&w, block_rows, cols);
        let mut packed = vec![0u8; layout::pad16(block_rows) / layout::TILE_ROWS * tile_len];
        packed
            .par_chunks_mut(tile_len)
            .enumerate()
            .for_each(|(tile, out)| {
                layout::pack_int8_tile(&q, block_rows, cols, tile, out);
            });
        writer.write(&packed)?;
        scales.extend_from_slice(&d);
        shard.release(block);
        progress(Progress::Advance {
            bytes: block.len() as u64,
            tensor: "output",
        });
    }
    scales.resize(layout::pad16(rows), 0.0);
    writer.write(&f32_bytes(&scales))?;
    Ok(writer.end_tensor(None)?)
}
