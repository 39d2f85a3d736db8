//! Per-sequence state: the KV cache and the position. Backend-agnostic, so one model can serve several
//! sequences.

use bitnet_kernels::quant::QuantizedBatch;

/// Working buffers of a forward pass, kept between calls so decoding allocates nothing per token.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    pub(crate) a: Vec<f32>,
    pub(crate) qb: QuantizedBatch,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) attn: Vec<f32>,
    pub(crate) proj: Vec<f32>,
    pub(crate) g: Vec<f32>,
    pub(crate) u: Vec<f32>,
    pub(crate) s: Vec<f32>,
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// The residual stream of the tokens in flight, the final-norm hidden states, the LM head's quantized
    /// inputs: kept here so a decode step allocates nothing.
    pub(crate) x: Vec<f32>,
    pub(crate) hidden: Vec<f32>,
    pub(crate) head_in: Vec<bitnet_kernels::scalar::BlockQuantized>,
}

/// The KV cache of one sequence: per layer, `[positions, kv_dim]` keys and values in f32.
#[derive(Debug, Clone)]
pub struct Session {
    /// Positions processed so far (the next token's position).
    pub pos: usize,
    /// The context limit.
    pub max_ctx: usize,
    kv_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    pub(crate) scratch: Scratch,
}

impl Session {
    /// An empty session for a model of `layers` layers and `kv_dim` key width.
    pub fn new(layers: usize, kv_dim: usize, max_ctx: usize) -> Session {
        Session {
            pos: 0,
            max_ctx,
            kv_dim,
            // One `with_capacity` per layer: `vec![v; n]` would clone `v`, and a clone of an empty Vec
            // has no capacity.
            keys: (0..layers)
                .map(|_| Vec::with_capacity(max_ctx.min(4096) * kv_dim))
                .collect(),
            values: (0..layers)
                .map(|_| Vec::with_capacity(max_ctx.min(4096) * kv_dim))
                .collect(),
            scratch: Scratch::default(),
        }
    }

    /// Forgets every position (the buffers are kept).
    pub fn reset(&mut self) {
        self.pos = 0;
        for v in self.keys.iter_mut().chain(self.values.iter_mut()) {
            v.clear();
        }
    }

    /// Drops positions from `pos` on (for reusing a shared prefix).
    pub fn truncate(&mut self, pos: usize) {
        let pos = pos.min(self.pos);
        self.pos = pos;
        for v in self.keys.iter_mut().chain(self.values.iter_mut()) {
            v.truncate(pos * self.kv_dim);
        }
    }

    /// Appends one position's key and value to `layer`.
    pub fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.keys[layer].extend_from_slice(k);
        self.values[layer].extend_from_slice(v);
    }

    /// The cached keys and values of `layer`: `[positions, kv_dim]` each.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * 4)
            .sum()
    }
}
