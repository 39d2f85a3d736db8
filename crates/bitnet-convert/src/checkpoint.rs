//! A Hugging Face checkpoint on disk: config.json, the tokenizer files, and the safetensors weights
//! (one file, or shards listed by `model.safetensors.index.json`), mapped read-only.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use bitnet_format::{Activation, GenerationDefaults, ModelConfig, TokenizerInfo};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde_json::Value;

use crate::architecture::{self, Architecture, Dim, Role, When};
use crate::error::{ConvertError, Result};

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
        let file = File::open(&path).map_err(|e| ConvertError::io(&path, e))?;
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
    /// Tokenizer metadata.
    pub tokenizer: TokenizerInfo,
    /// `tokenizer.json` bytes, if present.
    pub tokenizer_json: Option<Vec<u8>>,
    /// Sampling defaults.
    pub generation: GenerationDefaults,
    /// Things a user should know that do not stop the conversion.
    pub warnings: Vec<String>,
    shards: Vec<Shard>,
    tensors: HashMap<String, SourceTensor>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|source| ConvertError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

struct ConfigReader<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl ConfigReader<'_> {
    fn usize_req(&self, field: &str) -> Result<usize> {
        match self.v.get(field) {
            None | Some(Value::Null) => Err(ConvertError::field(
                self.path,
                field,
                "is missing (expected a positive integer)",
            )),
            Some(x) => x
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ConvertError::field(
                        self.path,
                        field,
                        format!("expected a positive integer, got {x}"),
                    )
                }),
        }
    }
    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize_req(field).map(Some),
        }
    }
    fn f64_opt(&self, field: &str) -> Result<Option<f64>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Some)
                .ok_or_else(|| {
                    ConvertError::field(
                        self.path,
                        field,
                        format!("expected a positive number, got {x}"),
                    )
                }),
        }
    }
    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(x) => Err(ConvertError::field(
                self.path,
                field,
                format!("expected true or false, got {x}"),
            )),
        }
    }
}

/// Reads an id or list of ids (`eos_token_id` may be either).
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
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
        let config = parse_config(&config_path, &cfg, &arch)?;

        let (tokenizer, tokenizer_json, generation) = read_tokenizer(dir, &cfg, &mut warnings)?;

        let (shards, tensors) = open_weights(dir)?;
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            arch,
            hf_architecture,
            model_type,
            config,
            tokenizer,
            tokenizer_json,
            generation,
            warnings,
            shards,
            tensors,
        };
        ck.check_tensors()?;
        Ok(ck)
    }

    /// The storage dtype of the weights (of the first BitLinear).
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
            if t.shape != p.shape {
                return Err(ConvertError::BadTensor {
                    path: path.clone(),
                    tensor: p.hf.clone(),
                    reason: format!("shape is {:?}, config.json implies {:?}", t.shape, p.shape),
                });
            }
            if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                let hint = if t.dtype == Dtype::U8 && p.role == Role::Ternary {
                    " (this looks like a pre-packed checkpoint such as microsoft/bitnet-b1.58-2B-4T; convert the -bf16 master weights instead)"
                } else {
                    ""
                };
                return Err(ConvertError::BadTensor {
                    path: path.clone(),
                    tensor: p.hf.clone(),
                    reason: format!(
                        "dtype {:?} is not supported; expected BF16, F16 or F32{hint}",
                        t.dtype
                    ),
                });
            }
        }
        let known: std::collections::HashSet<&str> =
            planned.iter().map(|p| p.hf.as_str()).collect();
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| {
                !(known.contains(k.as_str())
                    || (self.config.tie_word_embeddings && k.as_str() == "lm_head.weight"))
            })
            .collect();
        extra.sort();
        if !extra.is_empty() {
            let shown: Vec<_> = extra.iter().take(5).map(|s| s.as_str()).collect();
            self.warnings.push(format!(
                "ignoring {} tensor(s) the {} architecture does not use: {}{}",
                extra.len(),
                self.arch.name,
                shown.join(", "),
                if extra.len() > 5 { ", ..." } else { "" }
            ));
        }
        Ok(())
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

fn parse_config(path: &Path, cfg: &Value, arch: &Architecture) -> Result<ModelConfig> {
    let r = ConfigReader { path, v: cfg };
    let hidden_size = r.usize_req("hidden_size")?;
    let num_heads = r.usize_req("num_attention_heads")?;
    let num_kv_heads = r.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(ConvertError::field(
            path,
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = match r.usize_opt("head_dim")? {
        Some(h) => h,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(ConvertError::field(
                path,
                "num_attention_heads",
                format!(
                    "{num_heads} does not divide hidden_size {hidden_size} and there is no head_dim"
                ),
            ));
        }
    };
    if head_dim % 2 != 0 {
        return Err(ConvertError::field(
            path,
            "head_dim",
            format!("{head_dim} must be even for rotary embeddings"),
        ));
    }
    let act = cfg
        .get("hidden_act")
        .and_then(|v| v.as_str())
        .unwrap_or(&arch.defaults.hidden_act);
    let hidden_act = match act {
        "relu2" => Activation::Relu2,
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(ConvertError::field(
                path,
                "hidden_act",
                format!("`{other}` is not supported; expected relu2 or silu"),
            ));
        }
    };
    if r.bool_opt("attention_bias")?.unwrap_or(false) || r.bool_opt("mlp_bias")?.unwrap_or(false) {
        return Err(ConvertError::field(
            path,
            "attention_bias",
            "biases are not supported (BitNet b1.58 has none)",
        ));
    }
    // transformers 5 moved rope_theta into rope_parameters; older configs keep it at the top level.
    let rope_params = cfg.get("rope_parameters").filter(|v| v.is_object());
    let rope_theta = match rope_params {
        Some(p) => ConfigReader { path, v: p }.f64_opt("rope_theta")?,
        None => None,
    };
    let rope_theta = match rope_theta {
        Some(t) => t,
        None => r.f64_opt("rope_theta")?.unwrap_or(arch.defaults.rope_theta),
    };
    for scaling in [cfg.get("rope_scaling"), rope_params] {
        if let Some(s) = scaling.filter(|v| !v.is_null()) {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(ConvertError::field(
                    path,
                    "rope_scaling",
                    format!("rope type `{kind}` is not supported; only the default RoPE"),
                ));
            }
        }
    }
    Ok(ModelConfig {
        vocab_size: r.usize_req("vocab_size")?,
        hidden_size,
        intermediate_size: r.usize_req("intermediate_size")?,
        num_layers: r.usize_req("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: r
            .usize_opt("max_position_embeddings")?
            .unwrap_or(arch.defaults.max_position_embeddings),
        rms_norm_eps: r
            .f64_opt("rms_norm_eps")?
            .unwrap_or(arch.defaults.rms_norm_eps),
        rope_theta,
        hidden_act,
        tie_word_embeddings: r
            .bool_opt("tie_word_embeddings")?
            .unwrap_or(arch.defaults.tie_word_embeddings),
    })
}

/// Finds the id of an added token in tokenizer.json.
fn added_token_id(tokenizer: &Value, content: &str) -> Option<u32> {
    tokenizer
        .get("added_tokens")?
        .as_array()?
        .iter()
        .find_map(|t| {
            (t.get("content")?.as_str()? == content)
                .then(|| t.get("id")?.as_u64().map(|n| n as u32))
                .flatten()
        })
}

type TokenizerParts = (TokenizerInfo, Option<Vec<u8>>, GenerationDefaults);

fn read_tokenizer(dir: &Path, cfg: &Value, warnings: &mut Vec<String>) -> Result<TokenizerParts> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer_json = if tok_path.is_file() {
        Some(std::fs::read(&tok_path).map_err(|e| ConvertError::io(&tok_path, e))?)
    } else {
        warnings.push(format!(
            "{}: missing; the file will carry no tokenizer, so it can run token ids but not text",
            tok_path.display()
        ));
        None
    };
    let tok_value: Option<Value> = match &tokenizer_json {
        Some(bytes) => {
            Some(
                serde_json::from_slice(bytes).map_err(|source| ConvertError::Json {
                    path: tok_path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json_opt(&tc_path)?.unwrap_or(Value::Null);
    let gen_path = dir.join("generation_config.json");
    let gen_cfg = read_json_opt(&gen_path)?.unwrap_or(Value::Null);

    let jinja_path = dir.join("chat_template.jinja");
    let chat_template = if jinja_path.is_file() {
        Some(std::fs::read_to_string(&jinja_path).map_err(|e| ConvertError::io(&jinja_path, e))?)
    } else {
        match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // The list form: [{"name": "default", "template": ...}, ...].
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    };
    if chat_template.is_none() {
        warnings.push(format!(
            "{}: no chat template (nor chat_template.jinja); chat will fall back to the BitNet 2B4T template",
            tc_path.display()
        ));
    }
    let lookup = |text: Option<String>| -> Option<u32> {
        text.and_then(|t| tok_value.as_ref().and_then(|v| added_token_id(v, &t)))
    };
    let bos_token_id = ids(cfg.get("bos_token_id"))
        .first()
        .copied()
        .or_else(|| ids(gen_cfg.get("bos_token_id")).first().copied())
        .or_else(|| lookup(token_text(tc.get("bos_token"))));
    let mut eos: Vec<u32> = Vec::new();
    let mut push = |id: u32| {
        if !eos.contains(&id) {
            eos.push(id);
        }
    };
    ids(gen_cfg.get("eos_token_id"))
        .into_iter()
        .for_each(&mut push);
    ids(cfg.get("eos_token_id")).into_iter().for_each(&mut push);
    if let Some(id) = lookup(token_text(tc.get("eos_token"))) {
        push(id);
    }
    // End-of-turn and end-of-text markers of the LLaMA 3 vocabulary that 2B4T uses.
    for marker in ["<|eot_id|>", "<|end_of_text|>"] {
        if let Some(id) = lookup(Some(marker.to_string())) {
            push(id);
        }
    }
    let pad_token_id = ids(cfg.get("pad_token_id"))
        .first()
        .copied()
        .or_else(|| ids(gen_cfg.get("pad_token_id")).first().copied());
    let add_bos_token = tc
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(bos_token_id.is_some());
    let tokenizer = TokenizerInfo {
        tokenizer_json: tokenizer_json
            .as_ref()
            .map(|_| "tokenizer.json".to_string()),
        bos_token_id,
        add_bos_token,
        eos_token_ids: eos,
        pad_token_id,
        chat_template,
    };
    let g = |k: &str| gen_cfg.get(k);
    let generation = GenerationDefaults {
        do_sample: g("do_sample").and_then(|v| v.as_bool()),
        temperature: g("temperature").and_then(|v| v.as_f64()),
        top_p: g("top_p").and_then(|v| v.as_f64()),
        top_k: g("top_k").and_then(|v| v.as_u64()),
        repetition_penalty: g("repetition_penalty").and_then(|v| v.as_f64()),
        max_new_tokens: g("max_new_tokens").and_then(|v| v.as_u64()),
    };
    Ok((tokenizer, tokenizer_json, generation))
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
