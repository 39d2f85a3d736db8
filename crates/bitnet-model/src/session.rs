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
    pub(crate) head_in: HeadScratch,
}

/// The LM head's buffers: the int8 head's quantized inputs, and the rows the rescored head recomputes.
#[derive(Debug, Clone, Default)]
pub struct HeadScratch {
    pub(crate) quantized: Vec<bitnet_kernels::scalar::BlockQuantized>,
    pub(crate) candidates: Vec<u32>,
    /// The candidates' exact logits, filled by the pool's threads before they replace the int8 ones.
    pub(crate) exact: Vec<f32>,
}

/// The KV cache of one sequence: per layer, keys and values in f32, head-major (`[kv_heads, max_ctx,
/// head_dim]`), so that one kv head's cached rows are contiguous and attention streams them.
#[derive(Debug, Clone)]
pub struct Session {
    /// Positions processed so far (the next token's position).
    pub pos: usize,
    /// The context limit.
    pub max_ctx: usize,
    kv_heads: usize,
    head_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    pub(crate) scratch: Scratch,
}

impl Session {
    /// An empty session for a model of `layers` layers with `kv_heads` kv heads of `head_dim`, with room
    /// for `max_ctx` positions. The buffers are zeroed allocations: the system commits their pages only
    /// as positions are written.
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, max_ctx: usize) -> Session {
        let len = kv_heads * max_ctx * head_dim;
        Session {
            pos: 0,
            max_ctx,
            kv_heads,
            head_dim,
            keys: (0..layers).map(|_| vec![0f32; len]).collect(),
            values: (0..layers).map(|_| vec![0f32; len]).collect(),
            scratch: Scratch::default(),
        }
    }

    /// Forgets every position (the buffers are kept).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Drops positions from `pos` on (for reusing a shared prefix).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = pos.min(self.pos);
    }

    /// Stores position `pos`'s key and value (`[kv_heads * head_dim]` each, heads in order) in `layer`.
    ///
    /// # Panics
    /// If `pos` is past the context limit (callers check the room first).
    pub fn push(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(
            pos < self.max_ctx,
            "position {pos} past the context of {}",
            self.max_ctx
        );
        let hd = self.head_dim;
        for (buf, src) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            for (h, row) in src.chunks_exact(hd).take(self.kv_heads).enumerate() {
                let at = (h * self.max_ctx + pos) * hd;
                buf[at..at + hd].copy_from_slice(row);
            }
        }
    }

    /// The cached keys and values of `layer` (every slot, in the layout [`Session::kv_layout`] gives;
    /// positions from `pos` on hold stale or zero values).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Where the cache keeps element `d` of kv head `h` at position `p`: `p * pos_stride + h * head_stride
    /// + d`.
    pub fn kv_layout(&self) -> bitnet_kernels::ops::KvLayout {
        bitnet_kernels::ops::KvLayout::head_major(self.max_ctx, self.head_dim)
    }

    /// Bytes the cache has reserved (pages are committed only as positions are written).
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.len() * 4)
            .sum()
    }
}
