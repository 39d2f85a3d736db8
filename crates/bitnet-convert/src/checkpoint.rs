//! A Hugging Face checkpoint on disk: config.json, the tokenizer files, and the safetensors weights
//! (one file, or shards listed by `model.safetensors.index.json`), mapped read-only.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use bitnet_format::{Features, GenerationDefaults, ModelConfig, TokenizerInfo};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde_json::Value;

use crate::architecture::{self, Architecture, Dim, Role, When};
use crate::config::{self, TernaryStorage};
use crate::error::{ConvertError, Result};
use crate::tokenizer_meta::read_tokenizer;

/// One mapped weight file.
pub struct Shard {
    /// Its path.
    pub path: PathBuf,
    map: memmap2::Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Shard> {
        let real = crate::source_file::checked(&path)?;
        let file = File::open(&real).map_err(|e| ConvertError::io(&path, e))?;
        // SAFETY: a read-only private map of a checkpoint file; checkpoints are not modified while a
        // conversion reads them (a concurrent truncation would raise SIGBUS, as with any mmap reader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ConvertError::io(&path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| ConvertError::Safetensors {
                path: path.clone(),
                reason: describe_safetensors_error(&e, map.len()),
            })?;
        Ok(Shard {
            path,
            map,
            header_len,
            metadata,
        })
    }

    /// Releases the resident pages of a byte range of the map (they stay in the page cache).
    ///
    /// Keeps the converter's resident memory near one tensor instead of the whole checkpoint.
    pub fn release(&self, data: &[u8]) {
        let base = self.map.as_ptr() as usize;
        let start = data.as_ptr() as usize - base;
        let page = 4096;
        let lo = start.div_ceil(page) * page;
        let hi = (start + data.len()) / page * page;
        if hi > lo {
            // SAFETY: DONTNEED on a read-only, file-backed private map only drops resident pages; later
            // reads fault them back in from the file, so no data the program can observe changes.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
        }
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            format!("its header describes more data than the file's {len} bytes (truncated?)")
        }
        E::HeaderTooSmall => format!("only {len} bytes, too short for a header"),
        E::InvalidHeaderLength => {
            "the header length runs past the end of the file (truncated or not safetensors)".into()
        }
        other => other.to_string(),
    }
}

/// A tensor located in a shard.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// Hugging Face name.
    pub name: String,
    /// Index of the shard holding it.
    pub shard: usize,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// An opened checkpoint.
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Its architecture map.
    pub arch: Architecture,
    /// `architectures[0]`.
    pub hf_architecture: String,
    /// `model_type`.
    pub model_type: String,
    /// Dimensions.
    pub config: ModelConfig,
    /// The optional parts of the computation (from the architecture map).
    pub features: Features,
    /// What the BitLinear weight tensors hold (from `quantization_config`).
    pub ternary: TernaryStorage,
    /// Tokenizer metadata.
    pub tokenizer: TokenizerInfo,
    /// `tokenizer.json` bytes, if present or made from `tokenizer.model`.
    pub tokenizer_json: Option<Vec<u8>>,
    /// The file `tokenizer_json` comes from: `tokenizer.json`, or `tokenizer.model` when converted.
    pub tokenizer_source: Option<String>,
    /// Sampling defaults.
    pub generation: GenerationDefaults,
    /// Things a user should know that do not stop the conversion.
    pub warnings: Vec<String>,
    /// What the conversion did beyond copying (a tokenizer.json made from tokenizer.model).
    pub notes: Vec<String>,
    shards: Vec<Shard>,
    tensors: HashMap<String, SourceTensor>,
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let real = crate::source_file::checked(path)?;
    let text = std::fs::read(real).map_err(|e| ConvertError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|error| ConvertError::Json {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: parses every JSON file and the safetensors headers, maps the weights.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(ConvertError::NotFound(format!(
                "{}: no such model folder",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ConvertError::NotFound(format!(
                "{}: no config.json; a Hugging Face model folder holds config.json and *.safetensors weights",
                dir.display()
            )));
        }
        let cfg = read_json(&config_path)?;
        let hf_architecture = match cfg.get("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => a[0].as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        };
        let model_type = cfg
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = architecture::find(&hf_architecture)
            .or_else(|| {
                // A config without `architectures` is still recognisable by a model_type unique to one map.
                (hf_architecture.is_empty())
                    .then(|| {
                        architecture::all()
                            .into_iter()
                            .find(|a| a.hf_model_types.first() == Some(&model_type))
                    })
                    .flatten()
            })
            .ok_or_else(|| ConvertError::UnsupportedArchitecture {
                path: config_path.clone(),
                found: format!("`{hf_architecture}` (model_type `{model_type}`)"),
                supported: architecture::supported_list(),
            })?;
        if !model_type.is_empty() && !arch.hf_model_types.contains(&model_type) {
            return Err(ConvertError::field(
                &config_path,
                "model_type",
                format!(
                    "`{model_type}` does not go with {hf_architecture}; expected {}",
                    arch.hf_model_types.join(" or ")
                ),
            ));
        }
        let mut warnings = Vec::new();
        let config = config::parse_config(&config_path, &cfg, &arch)?;
        config::refuse_unhonoured(&config_path, &cfg)?;
        let ternary = config::parse_quantization(&config_path, &cfg, &arch, &mut warnings)?;
        let features = Features::parse(&arch.features).map_err(|reason| {
            ConvertError::NotFound(format!("formats/architectures/{}: {reason}", arch.name))
        })?;

        let mut notes = Vec::new();
        let tok = read_tokenizer(dir, &cfg, &mut warnings, &mut notes)?;

        let (shards, tensors) = open_weights(dir)?;
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            arch,
            hf_architecture,
            model_type,
            config,
            features,
            ternary,
            tokenizer: tok.info,
            tokenizer_json: tok.json,
            tokenizer_source: tok.json_source,
            generation: tok.generation,
            warnings,
            notes,
            shards,
            tensors,
        };
        ck.check_tensors()?;
        Ok(ck)
    }

    /// The storage dtype of the BitLinear weights (of the first one): `U8` when pre-packed.
    pub fn weights_dtype(&self) -> Dtype {
        self.planned()
            .iter()
            .find(|p| p.role == Role::Ternary)
            .map(|p| self.tensors[&p.hf].dtype)
            .unwrap_or(Dtype::BF16)
    }

    /// The tensors to convert, in file order, with their roles and expected shapes.
    pub fn planned(&self) -> Vec<PlannedTensor> {
        let c = &self.config;
        let dim = |d: Dim| match d {
            Dim::Hidden => c.hidden_size,
            Dim::Ffn => c.intermediate_size,
            Dim::QDim => c.num_heads * c.head_dim,
            Dim::KvDim => c.num_kv_heads * c.head_dim,
            Dim::Vocab => c.vocab_size,
        };
        let mut out = Vec::new();
        let (per_layer, global): (Vec<_>, Vec<_>) =
            self.arch.tensors.iter().partition(|t| t.hf.contains("{i}"));
        for i in 0..c.num_layers {
            for t in &per_layer {
                out.push(PlannedTensor {
                    hf: t.hf.replace("{i}", &i.to_string()),
                    name: t.name.replace("{i}", &i.to_string()),
                    role: t.role,
                    shape: t.shape.iter().map(|&d| dim(d)).collect(),
                });
            }
        }
        for t in global {
            if t.when == When::Untied && c.tie_word_embeddings {
                continue;
            }
            out.push(PlannedTensor {
                hf: t.hf.clone(),
                name: t.name.clone(),
                role: t.role,
                shape: t.shape.iter().map(|&d| dim(d)).collect(),
            });
        }
        out
    }

    fn check_tensors(&mut self) -> Result<()> {
        let planned = self.planned();
        for p in &planned {
            let Some(t) = self.tensors.get(&p.hf) else {
                let needed_for = match p.role {
                    Role::LmHead => "config.json says tie_word_embeddings is false, so the LM head must be stored".to_string(),
                    _ => format!("{} of {}", p.name, self.arch.name),
                };
                return Err(ConvertError::MissingTensor {
                    checkpoint: self.dir.clone(),
                    tensor: p.hf.clone(),
                    needed_for,
                });
            };
            let path = &self.shards[t.shard].path;
            let bad = |reason: String| ConvertError::BadTensor {
                path: path.clone(),
                tensor: p.hf.clone(),
                reason,
            };
            if p.role == Role::Ternary
                && let TernaryStorage::Packed(_) = self.ternary
            {
                self.check_packed(p, t, &bad)?;
                continue;
            }
            if t.dtype == Dtype::U8 && p.role == Role::Ternary {
                return Err(bad(format!(
                    "is uint8 {:?} (pre-packed ternary weights), but config.json's quantization_config says the \
                     checkpoint holds {}",
                    t.shape,
                    self.ternary.describe()
                )));
            }
            if t.shape != p.shape {
                return Err(bad(format!(
                    "shape is {:?}, config.json implies {:?}",
                    t.shape, p.shape
                )));
            }
            if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                return Err(bad(format!(
                    "dtype {:?} is not supported; expected BF16, F16 or F32",
                    t.dtype
                )));
            }
        }
        let scales: Vec<String> = match self.ternary {
            TernaryStorage::Packed(_) => planned
                .iter()
                .filter(|p| p.role == Role::Ternary)
                .map(|p| scale_name(&p.hf))
                .collect(),
            TernaryStorage::Latent => Vec::new(),
        };
        let known: std::collections::HashSet<&str> = planned
            .iter()
            .map(|p| p.hf.as_str())
            .chain(scales.iter().map(String::as_str))
            .collect();
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| {
                !(known.contains(k.as_str())
                    || (self.config.tie_word_embeddings && k.as_str() == "lm_head.weight"))
            })
            .collect();
        extra.sort();
        // RoPE's inverse frequencies are recomputed from the config; older checkpoints store them.
        let (harmless, weights): (Vec<&String>, Vec<&String>) = extra
            .into_iter()
            .partition(|k| k.ends_with("rotary_emb.inv_freq"));
        let list = |v: &[&String]| {
            let shown: Vec<_> = v.iter().take(5).map(|s| s.as_str()).collect();
            format!(
                "{}{}",
                shown.join(", "),
                if v.len() > 5 { ", ..." } else { "" }
            )
        };
        if !weights.is_empty() {
            // Running without weights the checkpoint was trained with would be silent garbage.
            return Err(ConvertError::BadTensor {
                path: self.shards[self.tensors[weights[0]].shard].path.clone(),
                tensor: weights[0].clone(),
                reason: format!(
                    "the {} architecture ({}) does not use {} tensor(s) of this checkpoint: {}; it is \
                     probably another architecture than config.json says",
                    self.arch.name,
                    self.hf_architecture,
                    weights.len(),
                    list(&weights)
                ),
            });
        }
        if !harmless.is_empty() {
            self.warnings.push(format!(
                "ignoring {} stored RoPE table(s), recomputed from config.json: {}",
                harmless.len(),
                list(&harmless)
            ));
        }
        Ok(())
    }

    /// Checks a pre-packed BitLinear weight: uint8 `[out / 4, in]` and a one-element float `weight_scale`.
    fn check_packed(
        &self,
        p: &PlannedTensor,
        t: &SourceTensor,
        bad: &dyn Fn(String) -> ConvertError,
    ) -> Result<()> {
        let (rows, cols) = (p.shape[0], p.shape[1]);
        if t.dtype != Dtype::U8 {
            return Err(bad(format!(
                "is {:?} {:?}, but config.json's quantization_config says the checkpoint holds {}; \
                 expected uint8 [{}, {cols}]",
                t.dtype,
                t.shape,
                self.ternary.describe(),
                rows / 4
            )));
        }
        if !rows.is_multiple_of(4) {
            return Err(bad(format!(
                "config.json implies {rows} output rows, which 4-rows-per-byte packing cannot hold (not a multiple of 4)"
            )));
        }
        if t.shape != [rows / 4, cols] {
            return Err(bad(format!(
                "packed shape is {:?}; config.json implies [{rows}, {cols}] weights, packed 4 rows per byte as [{}, {cols}]",
                t.shape,
                rows / 4
            )));
        }
        let name = scale_name(&p.hf);
        let Some(s) = self.tensors.get(&name) else {
            return Err(ConvertError::MissingTensor {
                checkpoint: self.dir.clone(),
                tensor: name,
                needed_for: format!("the scale of the packed weight {}", p.hf),
            });
        };
        let n: usize = s.shape.iter().product();
        if n != 1 || !matches!(s.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            return Err(ConvertError::BadTensor {
                path: self.shards[s.shard].path.clone(),
                tensor: name,
                reason: format!(
                    "is {:?} {:?}; expected one BF16, F16 or F32 value",
                    s.dtype, s.shape
                ),
            });
        }
        Ok(())
    }

    /// The `weight_scale` of a pre-packed BitLinear weight as f32, checked finite and positive.
    pub fn packed_scale(&self, hf: &str) -> Result<f32> {
        let name = scale_name(hf);
        let t = self
            .tensors
            .get(&name)
            .ok_or_else(|| ConvertError::MissingTensor {
                checkpoint: self.dir.clone(),
                tensor: name.clone(),
                needed_for: format!("the scale of the packed weight {hf}"),
            })?;
        let v = crate::quantize::to_f32(self.data(t), t.dtype)[0];
        if !(v.is_finite() && v > 0.0) {
            return Err(ConvertError::BadTensor {
                path: self.shards[t.shard].path.clone(),
                tensor: name,
                reason: format!("is {v}; a weight scale must be a finite positive number"),
            });
        }
        Ok(v)
    }

    /// A source tensor by Hugging Face name.
    pub fn tensor(&self, hf: &str) -> Option<&SourceTensor> {
        self.tensors.get(hf)
    }

    /// The raw little-endian bytes of a source tensor, straight from the map.
    pub fn data(&self, t: &SourceTensor) -> &[u8] {
        let s = &self.shards[t.shard];
        let base = 8 + s.header_len;
        &s.map[base + t.start..base + t.end]
    }

    /// The shard holding a tensor.
    pub fn shard(&self, t: &SourceTensor) -> &Shard {
        &self.shards[t.shard]
    }

    /// Total bytes of weight files.
    pub fn weight_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.map.len() as u64).sum()
    }
}

/// The name of a packed weight's scale: `...q_proj.weight` -> `...q_proj.weight_scale`.
pub fn scale_name(hf: &str) -> String {
    format!("{hf}_scale")
}

/// A tensor of the conversion plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Hugging Face name.
    pub hf: String,
    /// Canonical name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Expected shape.
    pub shape: Vec<usize>,
}

fn open_weights(dir: &Path) -> Result<(Vec<Shard>, HashMap<String, SourceTensor>)> {
    let index_path = dir.join("model.safetensors.index.json");
    let files: Vec<String> = if index_path.is_file() {
        let index = read_json(&index_path)?;
        let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(ConvertError::field(
                &index_path,
                "weight_map",
                "is missing (expected an object of tensor -> shard file)",
            ));
        };
        let mut by_file: BTreeMap<String, String> = BTreeMap::new();
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(ConvertError::field(
                    &index_path,
                    &format!("weight_map.{tensor}"),
                    "expected a file name",
                ));
            };
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(ConvertError::field(
                    &index_path,
                    &format!("weight_map.{tensor}"),
                    format!("`{file}` is not a plain file name"),
                ));
            }
            if !dir.join(file).is_file() {
                return Err(ConvertError::MissingShard {
                    index: index_path.clone(),
                    tensor: tensor.clone(),
                    shard: file.to_string(),
                });
            }
            by_file
                .entry(file.to_string())
                .or_insert_with(|| tensor.clone());
        }
        by_file.into_keys().collect()
    } else if dir.join("model.safetensors").is_file() {
        vec!["model.safetensors".to_string()]
    } else {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ConvertError::io(dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(ConvertError::NotFound(format!(
                "{}: no weights: expected model.safetensors, or model.safetensors.index.json and its shards",
                dir.display()
            )));
        }
        found
    };
    let mut shards = Vec::new();
    let mut tensors = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        let shard = Shard::open(dir.join(file))?;
        for (name, info) in shard.metadata.tensors() {
            let t = SourceTensor {
                name: name.clone(),
                shard: i,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: info.data_offsets.0,
                end: info.data_offsets.1,
            };
            if let Some(prev) = tensors.insert(name.clone(), t) {
                return Err(ConvertError::BadTensor {
                    path: shard.path.clone(),
                    tensor: name,
                    reason: format!("also present in {}", files[prev.shard]),
                });
            }
        }
        shards.push(shard);
    }
    Ok((shards, tensors))
}
