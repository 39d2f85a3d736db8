//! The forward pass of [`PackedModel`]: the [`Backend`] implementation, batched steps over several
//! sequences, and the layer loop they share.

use std::ops::Range;

use bitnet_format::{Activation, ModelConfig};
use bitnet_kernels::Pool;
use bitnet_kernels::ops;
use bitnet_kernels::pool::SharedMut;
use bitnet_kernels::quant::QuantizedBatch;

use super::{HeadKind, PackedModel};
use crate::error::{ModelError, Result};
use crate::session::{HeadScratch, Scratch};
use crate::trace::{Trace, rec};
use crate::{Backend, Forward, LogitsMode, Session, check_tokens};

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
            let (a, s) =
                (self.kernels.quantize_row)(&x[t * k..(t + 1) * k], &mut qb.q[t * kp..][..k]);
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
        let (norm, quantize) = (self.kernels.rms_norm, self.kernels.quantize_row);
        let one = |t: usize, o: &mut [f32], q: &mut [i8]| {
            norm(&x[t * k..(t + 1) * k], weight, self.eps, o);
            quantize(o, &mut q[..k])
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

    /// The final-norm hidden states of every token of `tokens` (`[n, hidden]`), run from position 0 in a
    /// cache of its own, without the LM head (what an embedding pools).
    pub fn hidden_states(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut session = self.session(tokens.len().max(1));
        check_tokens(&self.config, &session, tokens)?;
        let h = self.config.hidden_size;
        let n = tokens.len();
        let mut x = vec![0f32; n * h];
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed_row(tok, &mut x[t * h..(t + 1) * h]);
        }
        self.run_layers(
            0..self.layers.len(),
            &mut x,
            &mut [&mut session],
            &[n],
            None,
        );
        let mut hidden = vec![0f32; n * h];
        for t in 0..n {
            (self.kernels.rms_norm)(
                &x[t * h..(t + 1) * h],
                &self.output_norm,
                self.eps,
                &mut hidden[t * h..(t + 1) * h],
            );
        }
        Ok(hidden)
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
            &mut HeadScratch::default(),
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
        head_in: &mut HeadScratch,
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
            (self.kernels.rms_norm)(
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
