//! The packed backend: the forward pass over a `.bitnet` file's tensors, read in place from the map.

use std::ops::Range;
use std::sync::Arc;

use bitnet_format::{Activation, BitnetFile, ModelConfig, TensorKind};
use bitnet_kernels::ops::{self, Rope};
use bitnet_kernels::pool::SharedMut;
use bitnet_kernels::quant::QuantizedBatch;
use bitnet_kernels::scalar::{self, BlockQuantized};
use bitnet_kernels::{Bf16Matrix, Int8Matrix, Kernels, Pool, TernaryMatrix, pad16};

use crate::error::{ModelError, Result};
use crate::session::Scratch;
use crate::trace::{Trace, rec};
use crate::{Backend, Forward, LogitsMode, Session, check_tokens};

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

/// Rows of the exact LM head a thread runs every token of a batch over before moving on: 64 rows of
/// 2B4T's head are 320 KiB of bf16, which stay in L2 while the tokens pass over them. (The int8 kernels
/// take all tokens at once.)
const HEAD_BLOCK: usize = 64;

/// Row tiles (16 rows each) per unit of work the pool's threads claim in [`PackedModel::bitlinears`].
const UNIT_TILES: usize = 8;

/// Runs `fill` on this thread's buffer of `[n, rows.len()]` (token-major), then copies each token's rows
/// into `out` (`[n, stride]`): for kernels that write several tokens' rows contiguously.
///
/// # Safety
/// Rows `rows` of every token of `out` must be written by this thread alone while it runs.
unsafe fn scatter_rows(
    out: &SharedMut<'_, f32>,
    n: usize,
    stride: usize,
    rows: Range<usize>,
    fill: impl FnOnce(&mut [f32]),
) {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let w = rows.len();
        buf.resize(n * w, 0.0);
        fill(&mut buf);
        for t in 0..n {
            // SAFETY: the caller owns rows `rows` of token t.
            let o = unsafe { out.range(t * stride + rows.start..t * stride + rows.end) };
            o.copy_from_slice(&buf[t * w..(t + 1) * w]);
        }
    });
}

/// A head kernel for one token over a block of rows: `(token, rows, out)`.
type RowKernel<'a> = dyn Fn(usize, Range<usize>, &mut [f32]) + 'a;

/// Which LM head computes the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// The exact head: `output` in bf16/f32, or the tied embedding.
    Exact,
    /// The int8 copy (`output` of kind `int8_r16`).
    Int8,
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
        let (exact_head, int8_head) = match file.entry("output").map(|e| e.kind) {
            None => (Some(embed.clone()), None),
            Some(TensorKind::Int8R16) => {
                let r = entry("output", TensorKind::Int8R16, &[v, h])?;
                (c.tie_word_embeddings.then(|| embed.clone()), Some(r))
            }
            Some(_) => (Some(float("output")?), None),
        };
        let default_head = if int8_head.is_some() {
            HeadKind::Int8
        } else {
            HeadKind::Exact
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
        })
    }

    /// The file the model reads.
    pub fn file(&self) -> &BitnetFile {
        &self.file
    }

    /// The head used by [`Backend::forward`]: int8 when the file has one, else exact.
    pub fn default_head(&self) -> HeadKind {
        self.default_head
    }

    /// Chooses the head [`Backend::forward`] uses; fails if the file lacks it.
    pub fn set_head(&mut self, head: HeadKind) -> Result<()> {
        let present = match head {
            HeadKind::Exact => self.exact_head.is_some(),
            HeadKind::Int8 => self.int8_head.is_some(),
        };
        if !present {
            return Err(ModelError::NoHead(match head {
                HeadKind::Int8 => {
                    "the file has no int8 LM head: convert with `--lm-head int8` to add one, or use the exact head"
                }
                HeadKind::Exact => {
                    "the file has no exact LM head (its untied head is stored as int8 only): convert with \
                     `--lm-head bf16` for one, or use the int8 head"
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

    /// Logits of final-norm hidden states `[m, hidden]` through the chosen head: `[m, vocab]`.
    ///
    /// One pool dispatch for all `m` rows, and the head read from memory once per call, not once per
    /// token: the int8 kernels take every token at once; for the exact head each thread walks its share
    /// in blocks of [`HEAD_BLOCK`] rows and runs every token over a block while it is in cache.
    pub fn head_logits(&self, hidden: &[f32], head: HeadKind) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.head_logits_into(hidden, head, &mut Vec::new(), &mut logits)?;
        Ok(logits)
    }

    /// [`PackedModel::head_logits`] into `logits`, with `head_in` as the buffer of the int8 head's
    /// quantized inputs: both reused, nothing allocated once they have grown.
    fn head_logits_into(
        &self,
        hidden: &[f32],
        head: HeadKind,
        head_in: &mut Vec<BlockQuantized>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        let m = hidden.len() / h;
        logits.clear();
        logits.resize(m * v, 0.0);
        let threads = self.pool.threads();
        let out = SharedMut::new(logits);
        // Runs `row_kernel(token, rows, out)` over this thread's rows, block by block.
        let blocked = |tid: usize, row_kernel: &RowKernel<'_>| {
            let rows = Pool::split(v, threads, tid, 16);
            let block = if m == 1 {
                rows.len().max(1)
            } else {
                HEAD_BLOCK
            };
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r1 = (r0 + block).min(rows.end);
                for t in 0..m {
                    // SAFETY: `Pool::split` gives each thread a disjoint row range of every token.
                    let o = unsafe { out.range(t * v + r0..t * v + r1) };
                    row_kernel(t, r0..r1, o);
                }
                r0 = r1;
            }
        };
        match head {
            HeadKind::Exact => {
                let mat = self
                    .exact_head
                    .as_ref()
                    .ok_or_else(|| ModelError::MissingTensor("exact LM head".into()))?;
                let data = &self.file.bytes()[mat.range.clone()];
                let bf16 = self.kernels.bf16;
                let bm = Bf16Matrix {
                    data,
                    rows: mat.rows,
                    cols: mat.cols,
                };
                self.pool.run(&|tid| {
                    blocked(tid, &|t, rows, o| {
                        let x = &hidden[t * h..(t + 1) * h];
                        match mat.kind {
                            TensorKind::Bf16 => bf16(&bm, x, rows, o),
                            _ => scalar::f32_matvec(data, mat.cols, x, rows, o),
                        }
                    })
                });
            }
            HeadKind::Int8 => {
                let r = self
                    .int8_head
                    .clone()
                    .ok_or_else(|| ModelError::MissingTensor("int8 LM head".into()))?;
                let im = Int8Matrix {
                    data: &self.file.bytes()[r],
                    rows: v,
                    cols: h,
                };
                head_in.resize_with(m, BlockQuantized::default);
                for (bq, x) in head_in.iter_mut().zip(hidden.chunks_exact(h)) {
                    bq.quantize(x);
                }
                let bqs = &head_in[..m];
                let int8 = self.kernels.int8;
                // The int8 kernels take every token at once (each chunk of the head loaded once for all).
                self.pool.run(&|tid| {
                    let rows = Pool::split(v, threads, tid, 16);
                    if rows.is_empty() {
                        return;
                    }
                    if m == 1 {
                        // SAFETY: `Pool::split` gives each thread a disjoint row range.
                        int8(&im, bqs, rows.clone(), unsafe { out.range(rows) });
                        return;
                    }
                    // SAFETY: `Pool::split` gives each thread a disjoint row range of every token.
                    unsafe {
                        scatter_rows(&out, m, v, rows.clone(), |buf| {
                            int8(&im, bqs, rows.clone(), buf)
                        })
                    };
                });
            }
        }
        Ok(())
    }

    /// Runs `N` BitLinears on the same quantized input in one pool dispatch (QKV, gate+up fused). The
    /// matrices' row tiles are cut into units of [`UNIT_TILES`] tiles that the threads claim one by one
    /// from a shared counter, so a thread slowed by the other's memory traffic or by the OS takes fewer
    /// units instead of keeping the other waiting at the end. `outs[i]` is `[n, mats[i].rows]`.
    fn bitlinears<const N: usize>(
        &self,
        x: &QuantizedBatch,
        mats: [&Ternary; N],
        outs: [&mut [f32]; N],
    ) {
        let ms = mats.map(|t| self.ternary(t));
        let outs = outs.map(SharedMut::new);
        let kern = self.kernels.ternary;
        let n = x.n;
        let units: [usize; N] = ms.map(|m| (pad16(m.rows) / 16).div_ceil(UNIT_TILES));
        let total: usize = units.iter().sum();
        let next = std::sync::atomic::AtomicUsize::new(0);
        self.pool.run(&|_tid| {
            loop {
                let mut u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= total {
                    break;
                }
                let mut i = 0;
                while u >= units[i] {
                    u -= units[i];
                    i += 1;
                }
                let (m, out) = (&ms[i], &outs[i]);
                let tiles = u * UNIT_TILES..((u + 1) * UNIT_TILES).min(pad16(m.rows) / 16);
                let (r0, r1) = (tiles.start * 16, (tiles.end * 16).min(m.rows));
                if n == 1 {
                    // SAFETY: each unit, so its row range, is claimed by one thread only.
                    kern(m, x, tiles, unsafe { out.range(r0..r1) }, r1 - r0);
                } else {
                    // SAFETY: rows r0..r1 of every token belong to this unit alone.
                    unsafe {
                        scatter_rows(out, n, m.rows, r0..r1, |buf| {
                            kern(m, x, tiles, buf, r1 - r0)
                        })
                    };
                }
            }
        });
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
            HeadKind::Int8 => parts.extend(self.int8_head.as_ref().map(|r| &bytes[r.clone()])),
            HeadKind::Exact => {
                parts.extend(self.exact_head.as_ref().map(|m| &bytes[m.range.clone()]))
            }
        }
        parts
    }

    /// Bytes of weights one decoded token reads: every ternary matrix, the norms, and the head in use.
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
            HeadKind::Int8 => self.int8_head.as_ref().map_or(0, |r| r.len()),
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

    /// Causal attention of every sequence's new tokens over its own cache, in one pool dispatch: `q` and
    /// `out` are `[n, num_heads * head_dim]`, `counts[i]` consecutive tokens belonging to `seqs[i]` (whose
    /// cache already holds them, at positions `pos ..`). The (sequence, head) pairs are split across
    /// the threads in contiguous ranges.
    fn attention(
        &self,
        q: &[f32],
        seqs: &[&mut Session],
        counts: &[usize],
        li: usize,
        out: &mut [f32],
    ) {
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let c = &self.config;
        let (hd, nh) = (c.head_dim, c.num_heads);
        let qd = nh * hd;
        let out = SharedMut::new(out);
        let threads = self.pool.threads();
        self.pool.run(&|tid| {
            let items = Pool::split(nh * seqs.len(), threads, tid, 1);
            if items.is_empty() {
                return;
            }
            SCORES.with(|sc| {
                let mut sc = sc.borrow_mut();
                let mut t0 = 0;
                for (i, (session, &n)) in seqs.iter().zip(counts).enumerate() {
                    let mine = items.start.max(i * nh)..items.end.min((i + 1) * nh);
                    if mine.is_empty() {
                        t0 += n;
                        continue;
                    }
                    let heads = mine.start - i * nh..mine.end - i * nh;
                    let (keys, values) = session.layer(li);
                    let pos = session.pos;
                    let need = ops::ATTN_GROUP * (pos + n);
                    if sc.len() < need {
                        // Room for the whole context at once, so later positions allocate nothing.
                        let want = (ops::ATTN_GROUP * session.max_ctx).max(need) - sc.len();
                        sc.reserve_exact(want);
                        sc.resize(need, 0.0);
                    }
                    // The heads of one kv head go through every token before the next kv head's:
                    // that kv head's cached rows (1 MiB for 2B4T at 1024 positions) stay in cache
                    // across a prompt's tokens instead of all heads' rows streaming per token.
                    let group = nh / c.num_kv_heads;
                    let mut h = heads.start;
                    while h < heads.end {
                        let end = heads.end.min((h / group + 1) * group);
                        for t in t0..t0 + n {
                            // SAFETY: threads own disjoint (sequence, head) ranges, so disjoint slices
                            // of each token's output.
                            let o = unsafe { out.range(t * qd + h * hd..t * qd + end * hd) };
                            ops::attention(
                                &q[t * qd..(t + 1) * qd],
                                keys,
                                values,
                                pos + t - t0 + 1,
                                nh,
                                c.num_kv_heads,
                                hd,
                                session.kv_layout(),
                                h..end,
                                &mut sc,
                                o,
                            );
                        }
                        h = end;
                    }
                    t0 += n;
                }
            });
        });
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

impl Backend for PackedModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn name(&self) -> &'static str {
        "packed"
    }

    fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        mode: LogitsMode,
        mut trace: Option<&mut Trace>,
    ) -> Result<Forward> {
        check_tokens(&self.config, session, tokens)?;
        if tokens.is_empty() {
            return Ok(Forward {
                hidden: Vec::new(),
                logits: Vec::new(),
            });
        }
        let c = &self.config;
        let n = tokens.len();
        let h = c.hidden_size;
        let mut x = vec![0f32; n * h];
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed_row(tok, &mut x[t * h..(t + 1) * h]);
        }
        rec(&mut trace, None, "embed", h, &x);
        self.run_layers(
            0..self.layers.len(),
            &mut x,
            &mut [&mut *session],
            &[n],
            trace.as_deref_mut(),
        );
        session.pos += n;
        self.finish(&x, mode, self.default_head, trace)
    }

    fn forward_logits(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if tokens.is_empty() {
            check_tokens(&self.config, session, tokens)?;
            logits.clear();
            return Ok(());
        }
        self.forward_batch_into(&mut [session], &[tokens], logits)
    }

    fn forward_layer(
        &self,
        layer: usize,
        x: &[f32],
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        let n = x.len() / self.config.hidden_size;
        let mut s = self.session(n);
        let mut x = x.to_vec();
        self.run_layers(layer..layer + 1, &mut x, &mut [&mut s], &[n], trace);
        Ok(x)
    }

    fn forward_head(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self
            .finish(x, LogitsMode::All, HeadKind::Exact, None)?
            .logits)
    }
}

impl PackedModel {
    /// One step for several sequences at once: `tokens[i]` are the next tokens of `seqs[i]` (one for a
    /// decode step, a chunk of its prompt while it prefills). Every token of every sequence goes through
    /// the weights together (one weight read for all of them, the prefill kernels' shape); each sequence
    /// attends over its own cache. Returns the logits of each sequence's last token, `[seqs.len(), vocab]`,
    /// through the default head; each row is bit-for-bit what [`Backend::forward`] gives that sequence
    /// alone.
    pub fn forward_batch(&self, seqs: &mut [&mut Session], tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_batch_into(seqs, tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`PackedModel::forward_batch`] into `logits`, reusing it and the first session's buffers: a
    /// steady decode step allocates nothing.
    pub fn forward_batch_into(
        &self,
        seqs: &mut [&mut Session],
        tokens: &[&[u32]],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if seqs.len() != tokens.len() {
            return Err(ModelError::Config {
                field: "batch".into(),
                reason: format!("{} sequences but {} token lists", seqs.len(), tokens.len()),
            });
        }
        if let Some(i) = tokens.iter().position(|t| t.is_empty()) {
            return Err(ModelError::Config {
                field: "batch".into(),
                reason: format!("sequence {i} has no tokens"),
            });
        }
        logits.clear();
        if tokens.is_empty() {
            return Ok(());
        }
        for (s, t) in seqs.iter().zip(tokens) {
            check_tokens(&self.config, s, t)?;
        }
        let h = self.config.hidden_size;
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        let (mut x, mut hidden, mut head_in) = {
            let sc = &mut seqs[0].scratch;
            (
                std::mem::take(&mut sc.x),
                std::mem::take(&mut sc.hidden),
                std::mem::take(&mut sc.head_in),
            )
        };
        x.clear();
        x.resize(n * h, 0.0);
        for (t, &tok) in tokens.iter().flat_map(|t| t.iter()).enumerate() {
            self.embed_row(tok, &mut x[t * h..(t + 1) * h]);
        }
        let one = [n];
        // Counts per sequence without allocating for the common single-sequence case.
        let many: Vec<usize>;
        let counts: &[usize] = if tokens.len() == 1 {
            &one
        } else {
            many = tokens.iter().map(|t| t.len()).collect();
            &many
        };
        self.run_layers(0..self.layers.len(), &mut x, seqs, counts, None);
        // Keep each sequence's last token's row, in place at the front of `x`.
        let mut end = 0;
        for (i, (s, &c)) in seqs.iter_mut().zip(counts).enumerate() {
            s.pos += c;
            end += c;
            x.copy_within((end - 1) * h..end * h, i * h);
        }
        x.truncate(tokens.len() * h);
        let r = self.finish_into(
            &x,
            LogitsMode::All,
            self.default_head,
            None,
            &mut hidden,
            &mut head_in,
            logits,
        );
        let sc = &mut seqs[0].scratch;
        (sc.x, sc.hidden, sc.head_in) = (x, hidden, head_in);
        r
    }

    /// RMSNorm of every token of `x` (`[n, k]`, `k = weight.len()`) into `normed`, then its int8
    /// quantization into `qb`: on one thread for a single token, split by tokens across the pool for more.
    /// Quantizes `x` (`[n, k]`) per token into `qb`, with no norm first (models without sub-norms).
    fn quantize(&self, x: &[f32], k: usize, qb: &mut QuantizedBatch) {
        let n = x.len() / k;
        qb.reset(n, k);
        let kp = qb.kp;
        for t in 0..n {
            let (a, s) = bitnet_kernels::quant::quantize_row(
                &x[t * k..(t + 1) * k],
                &mut qb.q[t * kp..][..k],
            );
            qb.scale[t] = a;
            qb.sum[t] = s;
        }
    }

    fn norm_quantize(
        &self,
        x: &[f32],
        weight: &[f32],
        normed: &mut [f32],
        qb: &mut QuantizedBatch,
    ) {
        let k = weight.len();
        let n = x.len() / k;
        qb.reset(n, k);
        let kp = qb.kp;
        let one = |t: usize, o: &mut [f32], q: &mut [i8]| {
            ops::rms_norm(&x[t * k..(t + 1) * k], weight, self.eps, o);
            bitnet_kernels::quant::quantize_row(o, &mut q[..k])
        };
        if n == 1 {
            let (a, s) = one(0, normed, &mut qb.q);
            qb.scale[0] = a;
            qb.sum[0] = s;
            return;
        }
        let normed = SharedMut::new(normed);
        let q = SharedMut::new(&mut qb.q);
        let scale = SharedMut::new(&mut qb.scale);
        let sum = SharedMut::new(&mut qb.sum);
        let threads = self.pool.threads();
        self.pool.run(&|tid| {
            for t in Pool::split(n, threads, tid, 1) {
                // SAFETY: `Pool::split` gives each thread its own tokens, so disjoint rows of every output.
                let (o, qt, a, s) = unsafe {
                    (
                        normed.range(t * k..(t + 1) * k),
                        q.range(t * kp..(t + 1) * kp),
                        scale.range(t..t + 1),
                        sum.range(t..t + 1),
                    )
                };
                (a[0], s[0]) = one(t, o, qt);
            }
        });
    }

    /// Runs `layers` on the residual stream `x` (`[n, hidden]`): `counts[i]` consecutive tokens of `x`
    /// belong to `seqs[i]`, at its positions `pos ..`. Every matmul runs all `n` tokens at once; attention
    /// runs per sequence over its own cache. Positions are not advanced.
    fn run_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [&mut Session],
        counts: &[usize],
        mut trace: Option<&mut Trace>,
    ) {
        let c = &self.config;
        let n = x.len() / c.hidden_size;
        debug_assert_eq!(counts.iter().sum::<usize>(), n);
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (qd, kvd) = (c.num_heads * hd, c.num_kv_heads * hd);
        // Buffers live in the session and are only resized: no allocation per decoded token.
        let mut sc = std::mem::take(&mut seqs[0].scratch);
        let Scratch {
            a,
            qb,
            q,
            k,
            v,
            attn,
            proj,
            g,
            u,
            s,
            cos,
            sin,
            ..
        } = &mut sc;
        for (buf, len) in [
            (&mut *a, n * h.max(qd)),
            (&mut *q, n * qd),
            (&mut *k, n * kvd),
            (&mut *v, n * kvd),
            (&mut *attn, n * qd),
            (&mut *proj, n * h),
            (&mut *g, n * f),
            (&mut *u, n * f),
            (&mut *s, n * f.max(qd)),
            (&mut *cos, hd / 2),
            (&mut *sin, hd / 2),
        ] {
            buf.clear();
            buf.resize(len, 0.0);
        }
        for li in layers {
            let l = &self.layers[li];
            let li_ = Some(li);
            self.norm_quantize(x, &l.attn_norm, &mut a[..n * h], qb);
            rec(&mut trace, li_, "attn_norm", h, &a[..n * h]);
            self.bitlinears(qb, [&l.q, &l.k, &l.v], [&mut q[..], &mut k[..], &mut v[..]]);
            rec(&mut trace, li_, "attn_q", qd, q);
            rec(&mut trace, li_, "attn_k", kvd, k);
            rec(&mut trace, li_, "attn_v", kvd, v);
            let mut t0 = 0;
            for (session, &cnt) in seqs.iter_mut().zip(counts) {
                for t in t0..t0 + cnt {
                    self.rope.tables(session.pos + t - t0, cos, sin);
                    ops::apply_rope(&mut q[t * qd..(t + 1) * qd], hd, cos, sin);
                    ops::apply_rope(&mut k[t * kvd..(t + 1) * kvd], hd, cos, sin);
                    let pos = session.pos + t - t0;
                    session.push(
                        li,
                        pos,
                        &k[t * kvd..(t + 1) * kvd],
                        &v[t * kvd..(t + 1) * kvd],
                    );
                }
                t0 += cnt;
            }
            self.attention(&q[..n * qd], seqs, counts, li, &mut attn[..n * qd]);
            rec(&mut trace, li_, "attn", qd, attn);
            match &l.attn_sub_norm {
                Some(w) => {
                    self.norm_quantize(&attn[..n * qd], w, &mut s[..n * qd], qb);
                    rec(&mut trace, li_, "attn_sub_norm", qd, &s[..n * qd]);
                }
                None => self.quantize(&attn[..n * qd], qd, qb),
            }
            self.bitlinears(qb, [&l.o], [&mut proj[..]]);
            rec(&mut trace, li_, "attn_output", h, proj);
            x.iter_mut().zip(proj.iter()).for_each(|(x, p)| *x += p);
            rec(&mut trace, li_, "attn_residual", h, x);
            self.norm_quantize(x, &l.ffn_norm, &mut a[..n * h], qb);
            rec(&mut trace, li_, "ffn_norm", h, &a[..n * h]);
            self.bitlinears(qb, [&l.gate, &l.up], [&mut g[..], &mut u[..]]);
            rec(&mut trace, li_, "ffn_gate", f, g);
            rec(&mut trace, li_, "ffn_up", f, u);
            match c.hidden_act {
                Activation::Relu2 => ops::relu2_mul(g, u),
                Activation::Silu => ops::silu_mul(g, u),
            }
            rec(&mut trace, li_, "ffn_act", f, g);
            match &l.ffn_sub_norm {
                Some(w) => {
                    self.norm_quantize(&g[..n * f], w, &mut s[..n * f], qb);
                    rec(&mut trace, li_, "ffn_sub_norm", f, &s[..n * f]);
                }
                None => self.quantize(&g[..n * f], f, qb),
            }
            self.bitlinears(qb, [&l.down], [&mut proj[..]]);
            rec(&mut trace, li_, "ffn_down", h, proj);
            x.iter_mut().zip(proj.iter()).for_each(|(x, p)| *x += p);
            rec(&mut trace, li_, "ffn_residual", h, x);
        }
        seqs[0].scratch = sc;
    }

    /// The final norm and the head on the residual stream `x` (`[n, hidden]`).
    fn finish(
        &self,
        x: &[f32],
        mode: LogitsMode,
        head: HeadKind,
        trace: Option<&mut Trace>,
    ) -> Result<Forward> {
        let (mut hidden, mut logits) = (Vec::new(), Vec::new());
        self.finish_into(
            x,
            mode,
            head,
            trace,
            &mut hidden,
            &mut Vec::new(),
            &mut logits,
        )?;
        Ok(Forward { hidden, logits })
    }

    /// [`PackedModel::finish`] into reused buffers.
    #[allow(clippy::too_many_arguments)]
    fn finish_into(
        &self,
        x: &[f32],
        mode: LogitsMode,
        head: HeadKind,
        mut trace: Option<&mut Trace>,
        hidden: &mut Vec<f32>,
        head_in: &mut Vec<BlockQuantized>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let h = self.config.hidden_size;
        let n = x.len() / h;
        let first = match mode {
            LogitsMode::All => 0,
            LogitsMode::Last => n - 1,
        };
        hidden.clear();
        hidden.resize((n - first) * h, 0.0);
        for (i, t) in (first..n).enumerate() {
            ops::rms_norm(
                &x[t * h..(t + 1) * h],
                &self.output_norm,
                self.eps,
                &mut hidden[i * h..(i + 1) * h],
            );
        }
        rec(&mut trace, None, "output_norm", h, hidden);
        self.head_logits_into(hidden, head, head_in, logits)
    }
}
