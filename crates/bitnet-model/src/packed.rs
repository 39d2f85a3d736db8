//! The packed backend: the forward pass over a `.bitnet` file's tensors, read in place from the map.

use std::ops::Range;
use std::sync::Arc;

use bitnet_format::{BitnetFile, ModelConfig, TensorKind};
use bitnet_kernels::ops::Rope;
use bitnet_kernels::{Kernels, Pool, TernaryMatrix};

use crate::error::{ModelError, Result};
use crate::{Backend, LogitsMode};

mod forward;
mod parallel;
mod rescore;

pub use rescore::RescoreStats;

/// A ternary tensor located in the file.
#[derive(Debug, Clone)]
struct Ternary {
    range: Range<usize>,
    rows: usize,
    cols: usize,
    scale: f32,
}

/// A float matrix (embedding or exact head) located in the file.
#[derive(Debug, Clone)]
struct FloatMatrix {
    range: Range<usize>,
    kind: TensorKind,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Vec<f32>,
    q: Ternary,
    k: Ternary,
    v: Ternary,
    /// Present with the `attn_sub_norm` feature.
    attn_sub_norm: Option<Vec<f32>>,
    o: Ternary,
    ffn_norm: Vec<f32>,
    gate: Ternary,
    up: Ternary,
    /// Present with the `ffn_sub_norm` feature.
    ffn_sub_norm: Option<Vec<f32>>,
    down: Ternary,
}

/// Which LM head computes the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// The exact head: `output` in bf16/f32, or the tied embedding.
    Exact,
    /// The int8 copy (`output` of kind `int8_r16`).
    Int8,
    /// The int8 copy, then the exact head on every row whose logit could be the largest (SPEC.md 6.2):
    /// the exact head's greedy token at nearly the int8 head's bytes. Needs both heads.
    Rescored,
}

impl HeadKind {
    /// Its name on the command line and in reports: `exact`, `int8` or `rescored`.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadKind::Exact => "exact",
            HeadKind::Int8 => "int8",
            HeadKind::Rescored => "rescored",
        }
    }

    /// Whether its greedy token is always the exact head's.
    pub fn exact_greedy(self) -> bool {
        self != HeadKind::Int8
    }
}

/// A model whose weights are views into a mapped `.bitnet` file.
pub struct PackedModel {
    file: Arc<BitnetFile>,
    config: ModelConfig,
    layers: Vec<Layer>,
    embed: FloatMatrix,
    exact_head: Option<FloatMatrix>,
    int8_head: Option<Range<usize>>,
    output_norm: Vec<f32>,
    rope: Rope,
    eps: f32,
    default_head: HeadKind,
    kernels: Kernels,
    pool: Pool,
    rescore_counter: rescore::RescoreCounter,
    /// Candidate rows per token from which the pool's threads share the rescoring.
    rescore_parallel_rows: usize,
}

impl std::fmt::Debug for PackedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn shape_str(kind: TensorKind, shape: &[u64]) -> String {
    format!("{} {:?}", kind.as_str(), shape)
}

impl PackedModel {
    /// [`PackedModel::load_with`] the best kernels of this CPU (or `BITNET_KERNEL`) and one thread per core.
    pub fn load(file: Arc<BitnetFile>) -> Result<PackedModel> {
        let kernels = Kernels::from_env().map_err(|e| ModelError::Config {
            field: "kernel".into(),
            reason: e,
        })?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::load_with(file, kernels, threads)
    }

    /// Checks every tensor the config implies (kind and shape) and builds the model on `kernels` with a
    /// pool of `threads` threads.
    pub fn load_with(
        file: Arc<BitnetFile>,
        kernels: Kernels,
        threads: usize,
    ) -> Result<PackedModel> {
        let config = file.header().config.clone();
        let c = &config;
        let cfg_err = |field: &str, reason: String| ModelError::Config {
            field: field.into(),
            reason,
        };
        if file.header().architecture != bitnet_format::ARCHITECTURE {
            return Err(cfg_err(
                "architecture",
                format!(
                    "`{}` is not {}",
                    file.header().architecture,
                    bitnet_format::ARCHITECTURE
                ),
            ));
        }
        for (field, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_layers", c.num_layers),
            ("num_heads", c.num_heads),
            ("num_kv_heads", c.num_kv_heads),
            ("head_dim", c.head_dim),
            ("max_position_embeddings", c.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(cfg_err(field, "must be positive".into()));
            }
        }
        if !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(cfg_err(
                "num_kv_heads",
                format!(
                    "{} does not divide num_heads {}",
                    c.num_kv_heads, c.num_heads
                ),
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(cfg_err("head_dim", format!("{} must be even", c.head_dim)));
        }
        let (h, f, q, kv, v) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.vocab_size,
        );
        let entry = |name: &str, kind: TensorKind, shape: &[usize]| -> Result<Range<usize>> {
            let e = file
                .entry(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
            let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            if e.kind != kind || e.shape != want {
                return Err(ModelError::BadTensor {
                    name: name.into(),
                    expected: shape_str(kind, &want),
                    found: shape_str(e.kind, &e.shape),
                });
            }
            Ok(e.offset as usize..(e.offset + e.length) as usize)
        };
        let norm = |name: &str, n: usize| -> Result<Vec<f32>> {
            let r = entry(name, TensorKind::F32, &[n])?;
            Ok(file.bytes()[r]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let ternary = |name: &str, rows: usize, cols: usize| -> Result<Ternary> {
            let range = entry(name, TensorKind::TernaryR16, &[rows, cols])?;
            let scale = file.entry(name).and_then(|e| e.scale()).unwrap_or(0.0);
            Ok(Ternary {
                range,
                rows,
                cols,
                scale,
            })
        };
        let features = file.features();
        // A sub-norm is read exactly when the header lists its feature; a stray one is an error, not
        // silently skipped.
        let sub_norm = |name: &str, n: usize, listed: bool| -> Result<Option<Vec<f32>>> {
            match (listed, file.entry(name).is_some()) {
                (true, _) => norm(name, n).map(Some),
                (false, false) => Ok(None),
                (false, true) => Err(cfg_err(
                    "features",
                    format!(
                        "the file holds `{name}` but its header does not list the feature that uses it"
                    ),
                )),
            }
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm"), h)?,
                q: ternary(&n("attn_q"), q, h)?,
                k: ternary(&n("attn_k"), kv, h)?,
                v: ternary(&n("attn_v"), kv, h)?,
                attn_sub_norm: sub_norm(&n("attn_sub_norm"), q, features.attn_sub_norm)?,
                o: ternary(&n("attn_output"), h, q)?,
                ffn_norm: norm(&n("ffn_norm"), h)?,
                gate: ternary(&n("ffn_gate"), f, h)?,
                up: ternary(&n("ffn_up"), f, h)?,
                ffn_sub_norm: sub_norm(&n("ffn_sub_norm"), f, features.ffn_sub_norm)?,
                down: ternary(&n("ffn_down"), h, f)?,
            });
        }
        if let Some(extra) = file.entry(&format!("blk.{}.attn_q", c.num_layers)) {
            return Err(cfg_err(
                "num_layers",
                format!(
                    "is {}, but the file also has `{}`",
                    c.num_layers, extra.name
                ),
            ));
        }
        let float = |name: &str| -> Result<FloatMatrix> {
            let e = file
                .entry(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
            let kind = e.kind;
            if !matches!(kind, TensorKind::Bf16 | TensorKind::F32) {
                return Err(ModelError::BadTensor {
                    name: name.into(),
                    expected: format!("bf16 or f32 [{v}, {h}]"),
                    found: shape_str(kind, &e.shape),
                });
            }
            Ok(FloatMatrix {
                range: entry(name, kind, &[v, h])?,
                kind,
                rows: v,
                cols: h,
            })
        };
        let embed = float("token_embd")?;
        let output = file.entry("output").map(|e| e.kind);
        let untied_int8 = output == Some(TensorKind::Int8R16) && !c.tie_word_embeddings;
        if let Some(e) = file.entry(bitnet_format::OUTPUT_EXACT)
            && !untied_int8
        {
            return Err(ModelError::BadTensor {
                name: e.name.clone(),
                expected: "only beside an untied int8 `output` (the exact rows of that head)"
                    .into(),
                found: format!(
                    "{} next to {}",
                    shape_str(e.kind, &e.shape),
                    match output {
                        None => "no `output` (the head is the tied embedding)".to_string(),
                        Some(TensorKind::Int8R16) =>
                            "the int8 copy of the tied embedding".to_string(),
                        Some(k) => format!("an exact `output` ({})", k.as_str()),
                    }
                ),
            });
        }
        let (exact_head, int8_head) = match output {
            None => (Some(embed.clone()), None),
            Some(TensorKind::Int8R16) => {
                let r = entry("output", TensorKind::Int8R16, &[v, h])?;
                let exact = if c.tie_word_embeddings {
                    Some(embed.clone())
                } else if file.entry(bitnet_format::OUTPUT_EXACT).is_some() {
                    Some(float(bitnet_format::OUTPUT_EXACT)?)
                } else {
                    None
                };
                (exact, Some(r))
            }
            Some(_) => (Some(float("output")?), None),
        };
        let default_head = match (&int8_head, &exact_head) {
            (Some(_), Some(_)) => HeadKind::Rescored,
            (Some(_), None) => HeadKind::Int8,
            (None, _) => HeadKind::Exact,
        };
        Ok(PackedModel {
            output_norm: norm("output_norm", h)?,
            rope: Rope::new(c.head_dim, c.rope_theta),
            eps: c.rms_norm_eps as f32,
            config: config.clone(),
            layers,
            embed,
            exact_head,
            int8_head,
            file,
            default_head,
            kernels,
            pool: Pool::new(threads),
            rescore_counter: Default::default(),
            rescore_parallel_rows: rescore::PARALLEL_ROWS,
        })
    }

    /// The file the model reads.
    pub fn file(&self) -> &BitnetFile {
        &self.file
    }

    /// The head used by [`Backend::forward`]: rescored when the file has both an int8 and an exact head,
    /// else int8 when it has one, else exact.
    pub fn default_head(&self) -> HeadKind {
        self.default_head
    }

    /// Chooses the head [`Backend::forward`] uses; fails if the file lacks it.
    pub fn set_head(&mut self, head: HeadKind) -> Result<()> {
        let present = match head {
            HeadKind::Exact => self.exact_head.is_some(),
            HeadKind::Int8 => self.int8_head.is_some(),
            HeadKind::Rescored => self.exact_head.is_some() && self.int8_head.is_some(),
        };
        if !present {
            return Err(ModelError::NoHead(match head {
                HeadKind::Int8 => {
                    "the file has no int8 LM head: convert with `--lm-head int8` to add one, or use the exact head"
                }
                HeadKind::Exact => {
                    "the file has no exact LM head (its untied head is stored as int8 only, as files made \
                     before format 2.1 store it): convert again for one, or use the int8 head"
                }
                HeadKind::Rescored if self.int8_head.is_none() => {
                    "the rescored head needs an int8 LM head beside the exact one: convert with \
                     `--lm-head int8` to add one, or use the exact head"
                }
                HeadKind::Rescored => {
                    "the rescored head needs the exact LM head's rows, and this file's untied head is stored \
                     as int8 only (files made before format 2.1 have no `output_exact`): use the int8 head, \
                     or convert again"
                }
            }));
        }
        self.default_head = head;
        Ok(())
    }

    /// Whether the file holds an int8 LM head.
    pub fn has_int8_head(&self) -> bool {
        self.int8_head.is_some()
    }

    /// Whether the file holds both heads the rescored head needs.
    pub fn has_rescored_head(&self) -> bool {
        self.int8_head.is_some() && self.exact_head.is_some()
    }

    /// Whether the file holds an exact LM head.
    pub fn has_exact_head(&self) -> bool {
        self.exact_head.is_some()
    }

    fn ternary<'a>(&'a self, t: &Ternary) -> TernaryMatrix<'a> {
        TernaryMatrix {
            data: &self.file.bytes()[t.range.clone()],
            rows: t.rows,
            cols: t.cols,
            scale: t.scale,
        }
    }

    fn embed_row(&self, token: u32, out: &mut [f32]) {
        let e = &self.embed;
        let bytes = &self.file.bytes()[e.range.clone()];
        let t = token as usize;
        match e.kind {
            TensorKind::Bf16 => {
                for (o, b) in out
                    .iter_mut()
                    .zip(bytes[2 * t * e.cols..2 * (t + 1) * e.cols].chunks_exact(2))
                {
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
            _ => {
                for (o, b) in out
                    .iter_mut()
                    .zip(bytes[4 * t * e.cols..4 * (t + 1) * e.cols].chunks_exact(4))
                {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// The byte ranges of the file one decoded token reads: every ternary matrix and the head in use.
    pub fn decode_bytes(&self) -> Vec<&[u8]> {
        let bytes = self.file.bytes();
        let mut parts: Vec<&[u8]> = self
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .map(|t| &bytes[t.range.clone()])
            .collect();
        match self.default_head {
            HeadKind::Int8 | HeadKind::Rescored => {
                parts.extend(self.int8_head.as_ref().map(|r| &bytes[r.clone()]))
            }
            HeadKind::Exact => {
                parts.extend(self.exact_head.as_ref().map(|m| &bytes[m.range.clone()]))
            }
        }
        parts
    }

    /// Bytes of one row of the exact LM head (what the rescored head reads per recomputed row).
    pub fn exact_head_row_bytes(&self) -> Option<u64> {
        self.exact_head
            .as_ref()
            .map(|m| (m.range.len() / m.rows.max(1)) as u64)
    }

    /// Bytes of weights one decoded token reads: every ternary matrix, the norms, and the head in use (for
    /// the rescored head the int8 copy; the exact rows it recomputes are counted by
    /// [`PackedModel::rescore_stats`], and `bitnet bench` adds them with [`PackedModel::exact_head_row_bytes`]).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let ternary: usize = self
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .map(|t| t.range.len())
            .sum();
        let norms: usize = self
            .layers
            .iter()
            .map(|l| {
                4 * (l.attn_norm.len()
                    + l.attn_sub_norm.as_ref().map_or(0, Vec::len)
                    + l.ffn_norm.len()
                    + l.ffn_sub_norm.as_ref().map_or(0, Vec::len))
            })
            .sum::<usize>()
            + 4 * self.output_norm.len();
        let head = match self.default_head {
            HeadKind::Int8 | HeadKind::Rescored => self.int8_head.as_ref().map_or(0, |r| r.len()),
            HeadKind::Exact => self.exact_head.as_ref().map_or(0, |m| m.range.len()),
        };
        (ternary + norms + head) as u64
    }

    /// Decodes a few tokens with 1 and with `max` threads and returns the faster count: on an
    /// oversubscribed machine two threads can be slower than one.
    pub fn calibrate_threads(file: Arc<BitnetFile>, kernels: Kernels, max: usize) -> Result<usize> {
        if max <= 1 {
            return Ok(1);
        }
        let mut best = (f64::INFINITY, 1);
        for threads in [1, max] {
            let m = PackedModel::load_with(file.clone(), kernels, threads)?;
            let mut s = m.session(8);
            m.forward(&mut s, &[0], LogitsMode::Last, None)?;
            let t0 = std::time::Instant::now();
            for i in 1..4 {
                m.forward(&mut s, &[i], LogitsMode::Last, None)?;
            }
            let t = t0.elapsed().as_secs_f64();
            if t < best.0 {
                best = (t, threads);
            }
        }
        Ok(best.1)
    }

    /// The kernel set in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Threads of the decode pool.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}
