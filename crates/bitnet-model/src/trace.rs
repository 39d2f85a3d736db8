//! Named intermediate activations, as llama.cpp's `cb(cur, "attn_sub_norm", il)`: both backends record the
//! same names so `verify --trace` can find the first layer and op where two paths part.

/// One recorded activation: `[n_tokens, width]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    /// Layer index, or `None` for the embedding and the final norm.
    pub layer: Option<usize>,
    /// Op name.
    pub op: &'static str,
    /// Width of one token's vector.
    pub width: usize,
    /// The values.
    pub values: Vec<f32>,
}

/// A recording of one forward call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Entries in the order the ops ran.
    pub entries: Vec<TraceEntry>,
}

/// The ops of one layer in the order they run (the names both backends use).
pub const LAYER_OPS: &[&str] = &[
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn",
    "attn_sub_norm",
    "attn_output",
    "attn_residual",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_act",
    "ffn_sub_norm",
    "ffn_down",
    "ffn_residual",
];

/// The ops whose output is the input of a BitLinear, so where an int8 rounding flip can start.
/// Without the sub-norm features, `attn` and `ffn_act` feed `attn_output` and `ffn_down` directly.
pub const QUANTIZED_INPUTS: &[(&str, &str)] = &[
    ("attn_norm", "attn_q/attn_k/attn_v"),
    ("attn", "attn_output (no attn_sub_norm)"),
    ("attn_sub_norm", "attn_output"),
    ("ffn_norm", "ffn_gate/ffn_up"),
    ("ffn_act", "ffn_down (no ffn_sub_norm)"),
    ("ffn_sub_norm", "ffn_down"),
];

impl Trace {
    /// Records `values` under `(layer, op)`.
    pub fn record(&mut self, layer: Option<usize>, op: &'static str, width: usize, values: &[f32]) {
        self.entries.push(TraceEntry {
            layer,
            op,
            width,
            values: values.to_vec(),
        });
    }

    /// The entry for `(layer, op)`.
    pub fn get(&self, layer: Option<usize>, op: &str) -> Option<&TraceEntry> {
        self.entries.iter().find(|e| e.layer == layer && e.op == op)
    }
}

/// Records into an optional trace (a no-op without one).
pub fn rec(
    trace: &mut Option<&mut Trace>,
    layer: Option<usize>,
    op: &'static str,
    width: usize,
    v: &[f32],
) {
    if let Some(t) = trace.as_deref_mut() {
        t.record(layer, op, width, v);
    }
}
