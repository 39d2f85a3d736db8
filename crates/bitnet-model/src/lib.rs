//! `bitnet-model`: BitNet b1.58 inference over a memory-mapped `.bitnet` file.
//!
//! The forward pass (SPEC.md section 7), in the order data flows:
//! 1. [`PackedModel::load`] checks that the file's tensors match its config and keeps views of them in
//!    the map: no repacking, no copies of the ternary weights.
//! 2. [`Backend::forward`] runs tokens through the layers: RMSNorm, int8 activation quantization, the
//!    ternary matmuls of `bitnet-kernels`, RoPE, attention over the [`Session`]'s KV cache, the FFN; then
//!    the final norm and the LM head.
//! 3. A [`Trace`] records every named intermediate activation, so two backends can be compared op by op.
//!
//! [`Backend`] is the interface the packed path shares with the FP32 reference of `bitnet-reference`.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod layer_parity;
pub mod packed;
pub mod parity;
pub mod session;
pub mod synthetic;
pub mod trace;
pub mod trace_parity;

pub use bitnet_format::ModelConfig;
pub use error::{ModelError, Result};
pub use packed::{HeadKind, PackedModel, RescoreStats};
pub use session::Session;
pub use trace::{Trace, TraceEntry};

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Logits of every token: `[n, vocab]`.
    All,
    /// Logits of the last token only: `[1, vocab]`.
    Last,
}

/// The output of a forward call.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Final-norm hidden states of the tokens whose logits were computed: `[m, hidden]`.
    pub hidden: Vec<f32>,
    /// Logits: `[m, vocab]`.
    pub logits: Vec<f32>,
}

/// A way to run the model: the packed path or the FP32 reference.
pub trait Backend {
    /// The model's dimensions.
    fn config(&self) -> &ModelConfig;

    /// A short name for reports (`packed`, `reference`).
    fn name(&self) -> &'static str;

    /// A new, empty session with room for `max_ctx` positions.
    fn session(&self, max_ctx: usize) -> Session {
        let c = self.config();
        Session::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            max_ctx.min(c.max_position_embeddings),
        )
    }

    /// Runs `tokens` at positions `session.pos ..`, appending them to the session's cache.
    fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        mode: LogitsMode,
        trace: Option<&mut Trace>,
    ) -> Result<Forward>;

    /// [`Backend::forward`] of `tokens` into `logits` (the last token's, `[vocab]`), reusing the caller's
    /// buffer: the packed backend allocates nothing per decoded token this way.
    fn forward_logits(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        *logits = self
            .forward(session, tokens, LogitsMode::Last, None)?
            .logits;
        Ok(())
    }

    /// Runs layer `layer` alone on `x` (`[n, hidden]`, the residual stream entering it) at positions
    /// `0..n` with a fresh cache; returns the residual stream leaving it. Comparing backends layer by layer
    /// on the same input keeps one layer's rounding differences from compounding through the next.
    fn forward_layer(&self, layer: usize, x: &[f32], trace: Option<&mut Trace>)
    -> Result<Vec<f32>>;

    /// The final norm and the exact LM head on the residual stream `x` (`[n, hidden]`): `[n, vocab]`.
    fn forward_head(&self, x: &[f32]) -> Result<Vec<f32>>;
}

/// Checks that `tokens` fit the vocabulary and the session's context.
pub fn check_tokens(config: &ModelConfig, session: &Session, tokens: &[u32]) -> Result<()> {
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
        return Err(ModelError::TokenOutOfRange {
            id,
            vocab: config.vocab_size,
        });
    }
    let needed = session.pos + tokens.len();
    if needed > session.max_ctx {
        return Err(ModelError::ContextOverflow {
            needed,
            limit: session.max_ctx,
        });
    }
    Ok(())
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding: runs `prompt`, then picks the argmax `n` times, feeding each pick back.
pub fn greedy(backend: &dyn Backend, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let mut session = backend.session(prompt.len() + n);
    let mut out = Vec::with_capacity(n);
    let mut logits = Vec::new();
    backend.forward_logits(&mut session, prompt, &mut logits)?;
    for i in 0..n {
        let next = argmax(&logits);
        out.push(next);
        if i + 1 < n {
            backend.forward_logits(&mut session, &[next], &mut logits)?;
        }
    }
    Ok(out)
}
