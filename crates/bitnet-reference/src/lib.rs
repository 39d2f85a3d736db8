//! `bitnet-reference`: an FP32 forward pass of BitNet b1.58 straight from the Hugging Face checkpoint,
//! written to be the check on the packed path, not a copy of it.
//!
//! It computes what transformers' `BitNetForCausalLM` with `AutoBitLinear` (online quantization) computes:
//! every BitLinear fake-quantizes its weight per tensor (`WeightQuant`) and its input per token
//! (`ActQuant`) and then multiplies in f32, dense. It shares no quantization, packing or matmul code
//! with `bitnet-convert`'s quantizer or `bitnet-kernels`; it shares only the checkpoint reader (safetensors
//! and config parsing) and the [`bitnet_model::Backend`] interface, so both paths record the same named
//! activations.
//!
//! Memory: the weights are held in f32, four bytes per parameter (about 9.7 GB for 2B4T), as an FP32
//! PyTorch model does.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::path::Path;

use bitnet_convert::TernaryStorage;
use bitnet_convert::architecture::Role;
use bitnet_convert::checkpoint::Checkpoint;
use bitnet_convert::hub::{self, HubEnv};
use bitnet_format::{Activation, BitnetFile, ModelConfig, TensorKind};
use bitnet_model::trace::rec;
use bitnet_model::{
    Backend, Forward, LogitsMode, Result as ModelResult, Session, Trace, check_tokens,
};
use rayon::prelude::*;
use safetensors::tensor::Dtype;

mod weights;
use weights::{act_quant, decode, unpack_weight, weight_quant};

/// Errors loading a reference checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The checkpoint could not be found or read.
    #[error(transparent)]
    Checkpoint(#[from] bitnet_convert::ConvertError),
    /// The checkpoint is not the model in the `.bitnet` file.
    #[error("the reference is a different model than the file: {0}")]
    DifferentModel(String),
}

/// A BitLinear with its weight already fake-quantized: `w = clamp(round(W * s), -1, 1) / s` in f32.
struct Linear {
    w: Vec<f32>,
    rows: usize,
    cols: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    attn_sub_norm: Option<Vec<f32>>,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    ffn_sub_norm: Option<Vec<f32>>,
    down: Linear,
}

/// The FP32 reference model.
pub struct ReferenceModel {
    config: ModelConfig,
    layers: Vec<Layer>,
    embed: Vec<f32>,
    head: Option<Vec<f32>>,
    output_norm: Vec<f32>,
    inv_freq: Vec<f32>,
}

impl std::fmt::Debug for ReferenceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Linear {
    /// `F.linear(ActQuant(x), w)` for every token of `x` (`[n, cols]`): `[n, rows]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let xs: Vec<Vec<f32>> = x.chunks_exact(self.cols).map(act_quant).collect();
        let n = xs.len();
        // [rows, n] in parallel over rows, then transposed to [n, rows].
        let mut by_row = vec![0f32; self.rows * n];
        by_row
            .par_chunks_mut(n)
            .zip(self.w.par_chunks(self.cols))
            .for_each(|(o, wr)| {
                for (o, xq) in o.iter_mut().zip(&xs) {
                    *o = dot(wr, xq);
                }
            });
        let mut out = vec![0f32; n * self.rows];
        for r in 0..self.rows {
            for t in 0..n {
                out[t * self.rows + r] = by_row[r * n + t];
            }
        }
        out
    }
}

/// An f32 dot product in eight partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let var = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64) as f32;
    let r = 1.0 / (var + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| w * (v * r)).collect()
}

impl ReferenceModel {
    /// Loads the checkpoint `input` (a folder, or a repo id in the local Hugging Face cache).
    pub fn load(input: &str, env: &HubEnv) -> Result<ReferenceModel, ReferenceError> {
        let resolved = hub::resolve(input, env)?;
        Self::load_dir(&resolved.dir)
    }

    /// Loads the checkpoint in `dir`.
    pub fn load_dir(dir: &Path) -> Result<ReferenceModel, ReferenceError> {
        let ck = Checkpoint::open(dir)?;
        let mut tensors = std::collections::HashMap::new();
        for p in ck.planned() {
            let t = ck.tensor(&p.hf).expect("checked by Checkpoint::open");
            let v = match (p.role, ck.ternary) {
                (Role::Ternary, TernaryStorage::Latent) => {
                    let mut v = decode(ck.data(t), t.dtype);
                    weight_quant(&mut v);
                    v
                }
                (Role::Ternary, TernaryStorage::Packed(op)) => {
                    let st = ck
                        .tensor(&bitnet_convert::checkpoint::scale_name(&p.hf))
                        .expect("checked by Checkpoint::open");
                    let ws = decode(ck.data(st), st.dtype)[0];
                    unpack_weight(ck.data(t), p.shape[0], p.shape[1], ws, op)
                }
                _ => decode(ck.data(t), t.dtype),
            };
            tensors.insert(p.name.clone(), (v, p.shape.clone()));
        }
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .expect("planned by the architecture map")
        };
        let mut lin = |name: String| {
            let (w, shape) = take(&name);
            Linear {
                w,
                rows: shape[0],
                cols: shape[1],
            }
        };
        let c = ck.config.clone();
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                q: lin(n("attn_q")),
                k: lin(n("attn_k")),
                v: lin(n("attn_v")),
                o: lin(n("attn_output")),
                gate: lin(n("ffn_gate")),
                up: lin(n("ffn_up")),
                down: lin(n("ffn_down")),
                attn_norm: Vec::new(),
                attn_sub_norm: None,
                ffn_norm: Vec::new(),
                ffn_sub_norm: None,
            });
        }
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .map(|(v, _)| v)
                .expect("planned by the architecture map")
        };
        for (i, l) in layers.iter_mut().enumerate() {
            l.attn_norm = take(&format!("blk.{i}.attn_norm"));
            l.attn_sub_norm = ck
                .features
                .attn_sub_norm
                .then(|| take(&format!("blk.{i}.attn_sub_norm")));
            l.ffn_norm = take(&format!("blk.{i}.ffn_norm"));
            l.ffn_sub_norm = ck
                .features
                .ffn_sub_norm
                .then(|| take(&format!("blk.{i}.ffn_sub_norm")));
        }
        let embed = take("token_embd");
        let output_norm = take("output_norm");
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(take("output"))
        };
        let base = c.rope_theta as f32;
        let inv_freq = (0..c.head_dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        Ok(ReferenceModel {
            config: c,
            layers,
            embed,
            head,
            output_norm,
            inv_freq,
        })
    }

    /// The FP32 model of a `.bitnet` file: every ternary weight dequantized to `w * scale` in f32 (exactly
    /// the values transformers' fake-quantized weights take), norms and the exact head as stored.
    ///
    /// Used as the FP32 baseline of `bitnet bench` when no checkpoint is at hand (synthetic models).
    pub fn from_packed(file: &BitnetFile) -> Result<ReferenceModel, ReferenceError> {
        let c = file.header().config.clone();
        let bad = |name: &str, why: &str| {
            ReferenceError::DifferentModel(format!("tensor `{name}`: {why}"))
        };
        let floats = |name: &str| -> Result<Vec<f32>, ReferenceError> {
            let (e, data) = file.tensor(name).map_err(|_| bad(name, "missing"))?;
            Ok(match e.kind {
                TensorKind::F32 => decode(data, Dtype::F32),
                TensorKind::Bf16 => decode(data, Dtype::BF16),
                _ => return Err(bad(name, "is not a float tensor")),
            })
        };
        let lin = |name: String| -> Result<Linear, ReferenceError> {
            let (e, data) = file.tensor(&name).map_err(|_| bad(&name, "missing"))?;
            let (rows, cols) = e.dims2().ok_or_else(|| bad(&name, "is not 2-D"))?;
            let scale = e.scale().ok_or_else(|| bad(&name, "has no scale"))?;
            let q = bitnet_format::layout::unpack_ternary(data, rows, cols)
                .ok_or_else(|| bad(&name, "holds invalid codes"))?;
            Ok(Linear {
                w: q.par_iter().map(|&v| v as f32 * scale).collect(),
                rows,
                cols,
            })
        };
        let features = file.features();
        let sub_norm = |name: &str, listed: bool| listed.then(|| floats(name)).transpose();
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: floats(&n("attn_norm"))?,
                q: lin(n("attn_q"))?,
                k: lin(n("attn_k"))?,
                v: lin(n("attn_v"))?,
                attn_sub_norm: sub_norm(&n("attn_sub_norm"), features.attn_sub_norm)?,
                o: lin(n("attn_output"))?,
                ffn_norm: floats(&n("ffn_norm"))?,
                gate: lin(n("ffn_gate"))?,
                up: lin(n("ffn_up"))?,
                ffn_sub_norm: sub_norm(&n("ffn_sub_norm"), features.ffn_sub_norm)?,
                down: lin(n("ffn_down"))?,
            });
        }
        let head = match file.entry("output").map(|e| e.kind) {
            Some(TensorKind::Bf16 | TensorKind::F32) => Some(floats("output")?),
            Some(_) if !c.tie_word_embeddings => {
                if file.entry(bitnet_format::OUTPUT_EXACT).is_none() {
                    return Err(bad(
                        "output",
                        "the untied head is only stored as int8 (no `output_exact`)",
                    ));
                }
                Some(floats(bitnet_format::OUTPUT_EXACT)?)
            }
            _ => None,
        };
        let base = c.rope_theta as f32;
        let inv_freq = (0..c.head_dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        Ok(ReferenceModel {
            embed: floats("token_embd")?,
            output_norm: floats("output_norm")?,
            head,
            layers,
            inv_freq,
            config: c,
        })
    }

    /// Checks that `file` was converted from this checkpoint: the same dimensions, and norm weights equal bit
    /// for bit (they are stored exactly).
    pub fn check_same_model(&self, file: &BitnetFile) -> Result<(), ReferenceError> {
        let fc = &file.header().config;
        let c = &self.config;
        let dims = |c: &ModelConfig| {
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
            )
        };
        if dims(fc) != dims(c) {
            return Err(ReferenceError::DifferentModel(format!(
                "the file has (vocab, hidden, ffn, layers, heads, kv heads, head_dim) = {:?}, the reference {:?}",
                dims(fc),
                dims(c)
            )));
        }
        let mut norms = vec![("output_norm".to_string(), &self.output_norm)];
        for (i, l) in self.layers.iter().enumerate() {
            norms.push((format!("blk.{i}.attn_norm"), &l.attn_norm));
            if let Some(w) = &l.attn_sub_norm {
                norms.push((format!("blk.{i}.attn_sub_norm"), w));
            }
            norms.push((format!("blk.{i}.ffn_norm"), &l.ffn_norm));
            if let Some(w) = &l.ffn_sub_norm {
                norms.push((format!("blk.{i}.ffn_sub_norm"), w));
            }
        }
        for (name, want) in norms {
            let same = match file.tensor(&name) {
                Ok((e, data)) if e.kind == TensorKind::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .zip(want.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                _ => false,
            };
            if !same {
                return Err(ReferenceError::DifferentModel(format!(
                    "norm weight `{name}` differs (another checkpoint, or another revision of it)"
                )));
            }
        }
        Ok(())
    }

    /// The logits of final-norm hidden states through the exact head, `[m, vocab]`.
    fn head(&self, hidden: &[f32]) -> Vec<f32> {
        let (h, v) = (self.config.hidden_size, self.config.vocab_size);
        let w = self.head.as_ref().unwrap_or(&self.embed);
        let m = hidden.len() / h;
        let mut out = vec![0f32; m * v];
        for (t, x) in hidden.chunks_exact(h).enumerate() {
            out[t * v..(t + 1) * v]
                .par_iter_mut()
                .zip(w.par_chunks(h))
                .for_each(|(o, row)| *o = dot(row, x));
        }
        out
    }
}

impl Backend for ReferenceModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn name(&self) -> &'static str {
        "reference"
    }

    fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        mode: LogitsMode,
        mut trace: Option<&mut Trace>,
    ) -> ModelResult<Forward> {
        check_tokens(&self.config, session, tokens)?;
        if tokens.is_empty() {
            return Ok(Forward {
                hidden: Vec::new(),
                logits: Vec::new(),
            });
        }
        let c = &self.config;
        let (h, n) = (c.hidden_size, tokens.len());
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.embed[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        rec(&mut trace, None, "embed", h, &x);
        self.run_layers(0..self.layers.len(), &mut x, session, trace.as_deref_mut());
        session.pos += n;
        let first = if mode == LogitsMode::All { 0 } else { n - 1 };
        let hidden = self.final_norm(&x[first * h..]);
        rec(&mut trace, None, "output_norm", h, &hidden);
        let logits = self.head(&hidden);
        Ok(Forward { hidden, logits })
    }

    fn forward_layer(
        &self,
        layer: usize,
        x: &[f32],
        trace: Option<&mut Trace>,
    ) -> ModelResult<Vec<f32>> {
        let n = x.len() / self.config.hidden_size;
        let mut s = self.session(n);
        let mut x = x.to_vec();
        self.run_layers(layer..layer + 1, &mut x, &mut s, trace);
        Ok(x)
    }

    fn forward_head(&self, x: &[f32]) -> ModelResult<Vec<f32>> {
        Ok(self.head(&self.final_norm(x)))
    }
}

impl ReferenceModel {
    fn final_norm(&self, x: &[f32]) -> Vec<f32> {
        let (h, eps) = (self.config.hidden_size, self.config.rms_norm_eps as f32);
        x.chunks_exact(h)
            .flat_map(|r| rms_norm(r, &self.output_norm, eps))
            .collect()
    }

    /// Runs `layers` on the residual stream `x` (`[n, hidden]`) at positions `session.pos ..`.
    fn run_layers(
        &self,
        layers: std::ops::Range<usize>,
        x: &mut [f32],
        session: &mut Session,
        mut trace: Option<&mut Trace>,
    ) {
        let c = &self.config;
        let (h, hd, n) = (c.hidden_size, c.head_dim, x.len() / c.hidden_size);
        let eps = c.rms_norm_eps as f32;
        let (nh, nkv) = (c.num_heads, c.num_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let norm_all = |x: &[f32], w: &[f32], width: usize| -> Vec<f32> {
            x.chunks_exact(width)
                .flat_map(|r| rms_norm(r, w, eps))
                .collect()
        };
        for li in layers {
            let l = &self.layers[li];
            let il = Some(li);
            let a = norm_all(x, &l.attn_norm, h);
            rec(&mut trace, il, "attn_norm", h, &a);
            let (mut q, mut k, v) = (l.q.forward(&a), l.k.forward(&a), l.v.forward(&a));
            rec(&mut trace, il, "attn_q", qd, &q);
            rec(&mut trace, il, "attn_k", kvd, &k);
            rec(&mut trace, il, "attn_v", kvd, &v);
            // Rotate-half RoPE: dimension i pairs with i + head_dim / 2.
            for t in 0..n {
                let pos = (session.pos + t) as f32;
                for vec in [&mut q[t * qd..(t + 1) * qd], &mut k[t * kvd..(t + 1) * kvd]] {
                    for head in vec.chunks_exact_mut(hd) {
                        for i in 0..hd / 2 {
                            let ang = pos * self.inv_freq[i];
                            let (cs, sn) = (ang.cos(), ang.sin());
                            let (a1, a2) = (head[i], head[i + hd / 2]);
                            head[i] = a1 * cs - a2 * sn;
                            head[i + hd / 2] = a2 * cs + a1 * sn;
                        }
                    }
                }
                let pos = session.pos + t;
                session.push(
                    li,
                    pos,
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                );
            }
            let (keys, values) = session.layer(li);
            let kv = session.kv_layout();
            let row = |p: usize, kvh: usize| p * kv.pos_stride + kvh * kv.head_stride;
            let mut attn = vec![0f32; n * qd];
            let scale = 1.0 / (hd as f32).sqrt();
            for t in 0..n {
                let ctx = session.pos + t + 1;
                for head in 0..nh {
                    let kvh = head / (nh / nkv);
                    let qh = &q[t * qd + head * hd..t * qd + (head + 1) * hd];
                    let scores: Vec<f32> = (0..ctx)
                        .map(|p| dot(qh, &keys[row(p, kvh)..row(p, kvh) + hd]) * scale)
                        .collect();
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    let out = &mut attn[t * qd + head * hd..t * qd + (head + 1) * hd];
                    for (p, e) in exps.iter().enumerate() {
                        let w = e / total;
                        for (o, vv) in out.iter_mut().zip(&values[row(p, kvh)..row(p, kvh) + hd]) {
                            *o += w * vv;
                        }
                    }
                }
            }
            rec(&mut trace, il, "attn", qd, &attn);
            let o = match &l.attn_sub_norm {
                Some(w) => {
                    let s = norm_all(&attn, w, qd);
                    rec(&mut trace, il, "attn_sub_norm", qd, &s);
                    l.o.forward(&s)
                }
                None => l.o.forward(&attn),
            };
            rec(&mut trace, il, "attn_output", h, &o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rec(&mut trace, il, "attn_residual", h, x);
            let m = norm_all(x, &l.ffn_norm, h);
            rec(&mut trace, il, "ffn_norm", h, &m);
            let (mut g, u) = (l.gate.forward(&m), l.up.forward(&m));
            rec(&mut trace, il, "ffn_gate", l.gate.rows, &g);
            rec(&mut trace, il, "ffn_up", l.up.rows, &u);
            for (g, u) in g.iter_mut().zip(&u) {
                *g = match c.hidden_act {
                    Activation::Relu2 => g.max(0.0).powi(2) * u,
                    Activation::Silu => *g * (1.0 / (1.0 + (-*g).exp())) * u,
                };
            }
            rec(&mut trace, il, "ffn_act", l.gate.rows, &g);
            let d = match &l.ffn_sub_norm {
                Some(w) => {
                    let s = norm_all(&g, w, l.gate.rows);
                    rec(&mut trace, il, "ffn_sub_norm", l.gate.rows, &s);
                    l.down.forward(&s)
                }
                None => l.down.forward(&g),
            };
            rec(&mut trace, il, "ffn_down", h, &d);
            x.iter_mut().zip(&d).for_each(|(x, d)| *x += d);
            rec(&mut trace, il, "ffn_residual", h, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::f16_to_f32;

    #[test]
    fn f16_decoding_is_exact() {
        for (bits, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(bits), want, "{bits:#x}");
        }
    }

    #[test]
    fn weight_quant_matches_the_formula() {
        let mut w = vec![0.5f32, -0.25, 1.5, -0.25, 0.0, 2.0];
        weight_quant(&mut w);
        let s = 1.0f32 / 0.75;
        assert_eq!(w, vec![1.0 / s, 0.0, 1.0 / s, 0.0, 0.0, 1.0 / s]);
    }
}
