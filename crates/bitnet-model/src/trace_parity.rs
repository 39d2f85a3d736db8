//! Naming where two backends part: both run one prompt with traces, and the first op whose activations
//! differ is found and judged, telling an int8 rounding flip (a correct implementation's unavoidable
//! difference) from a bug.

use std::collections::HashMap;

use bitnet_kernels::quant::quantize_row;
use serde::Serialize;

use crate::trace::QUANTIZED_INPUTS;
use crate::{Backend, LogitsMode, Result, Trace, TraceEntry};

/// Relative difference above which an op's activations count as parted.
pub const TRACE_REL: f64 = 1e-4;

/// How far apart the residual streams are after one layer.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// The layer.
    pub layer: Option<usize>,
    /// max |delta| / range.
    pub relative: f64,
}

/// Where the two paths first part, and why.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    /// The prompt traced.
    pub prompt: usize,
    /// The layer of the first parting op (none when nothing parts, or outside the layers).
    pub layer: Option<usize>,
    /// The first parting op.
    pub op: Option<&'static str>,
    /// Its max |delta|.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_delta: Option<f64>,
    /// Its max |delta| over the op's range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
    /// The token and feature of the largest delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<usize>,
    /// See `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<usize>,
    /// Whether an int8 rounding flip of the op's input explains the parting.
    pub rounding_flip: bool,
    /// The residual streams' distance after each layer.
    pub residual_growth: Vec<Growth>,
    /// One paragraph for people.
    pub summary: String,
}

/// max |a - b| / max |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0f64, f64::max)
        / scale
}

/// Runs both backends with traces on prompt number `prompt` (`ids`) and names the first layer and op
/// whose activations part.
pub fn trace_compare(
    model: &dyn Backend,
    reference: &dyn Backend,
    ids: &[u32],
    prompt: usize,
) -> Result<TraceReport> {
    let (mut rt, mut pt) = (Trace::default(), Trace::default());
    let mut rs = reference.session(ids.len());
    reference.forward(&mut rs, ids, LogitsMode::All, Some(&mut rt))?;
    let mut ps = model.session(ids.len());
    model.forward(&mut ps, ids, LogitsMode::All, Some(&mut pt))?;
    let mut prev_inputs: HashMap<&str, (&TraceEntry, &TraceEntry)> = HashMap::new();
    // How far apart the residual streams are after each layer: a flip in a chaotic (random-weight) model
    // grows layer by layer; in a trained model it stays small.
    let growth: Vec<Growth> = rt
        .entries
        .iter()
        .zip(&pt.entries)
        .filter(|(r, _)| r.op == "ffn_residual")
        .map(|(r, p)| Growth {
            layer: r.layer,
            relative: rel_diff(&r.values, &p.values),
        })
        .collect();
    let growth_text = growth
        .iter()
        .map(|g| format!("{:.1e}", g.relative))
        .collect::<Vec<_>>()
        .join(" ");
    for (r, p) in rt.entries.iter().zip(&pt.entries) {
        let scale = r
            .values
            .iter()
            .fold(0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-12);
        let (mut worst, mut at) = (0f64, 0usize);
        for (i, (a, b)) in r.values.iter().zip(&p.values).enumerate() {
            let d = (*a as f64 - *b as f64).abs();
            if d > worst || d.is_nan() {
                worst = if d.is_nan() { f64::INFINITY } else { d };
                at = i;
            }
        }
        if r.layer.is_some() && QUANTIZED_INPUTS.iter().any(|(op, _)| *op == r.op) {
            prev_inputs.insert(r.op, (r, p));
        }
        let rel = worst / scale;
        if rel <= TRACE_REL {
            continue;
        }
        let layer = r.layer.map_or("-".to_string(), |l| l.to_string());
        let (token, feature) = (at / r.width, at % r.width);
        // Without a sub-norm, attention's output (or the gated activation) is the BitLinear's input.
        let or_plain = |sub: &'static str, plain: &'static str| {
            if prev_inputs.contains_key(sub) {
                sub
            } else {
                plain
            }
        };
        let input_op = match r.op {
            "attn_q" | "attn_k" | "attn_v" => Some("attn_norm"),
            "attn_output" => Some(or_plain("attn_sub_norm", "attn")),
            "ffn_gate" | "ffn_up" => Some("ffn_norm"),
            "ffn_down" => Some(or_plain("ffn_sub_norm", "ffn_act")),
            _ => None,
        };
        let flip = input_op
            .and_then(|op| prev_inputs.get(op))
            .and_then(|(ri, pi)| find_flip(ri, pi));
        let verdict = match &flip {
            Some(f) => format!(
                "an int8 rounding flip, not a bug: the input of {} at token {}, feature {} sits on a rounding boundary (x*a = {:.6} in the reference, {:.6} packed)",
                r.op, f.0, f.1, f.2, f.3
            ),
            None => "not explained by an int8 rounding flip: look here for a bug".to_string(),
        };
        let summary = format!(
            "prompt {prompt}: first parting at layer {layer}, op {} (max |delta| {worst:.3e}, {rel:.2e} of the op's range, token {token}, feature {feature}): {verdict}\n       residual-stream difference after each layer (max |delta| / range): {growth_text}",
            r.op
        );
        return Ok(TraceReport {
            prompt,
            layer: r.layer,
            op: Some(r.op),
            max_abs_delta: Some(worst),
            relative: Some(rel),
            token: Some(token),
            feature: Some(feature),
            rounding_flip: flip.is_some(),
            residual_growth: growth,
            summary,
        });
    }
    Ok(TraceReport {
        prompt,
        layer: None,
        op: None,
        max_abs_delta: None,
        relative: None,
        token: None,
        feature: None,
        rounding_flip: false,
        residual_growth: growth,
        summary: format!(
            "prompt {prompt}: every named activation agrees within {TRACE_REL:e} of its range"
        ),
    })
}

/// Where two paths quantize a BitLinear input differently: `(token, feature, x*a reference, x*a packed)`
/// of a value within 1e-3 of a rounding boundary whose int8 values differ by one.
pub fn find_flip(r: &TraceEntry, p: &TraceEntry) -> Option<(usize, usize, f32, f32)> {
    let w = r.width;
    let (mut qr, mut qp) = (vec![0i8; w], vec![0i8; w]);
    for (t, (xr, xp)) in r
        .values
        .chunks_exact(w)
        .zip(p.values.chunks_exact(w))
        .enumerate()
    {
        let (ar, _) = quantize_row(xr, &mut qr);
        let (ap, _) = quantize_row(xp, &mut qp);
        for f in 0..w {
            if qr[f] != qp[f] {
                let (sr, sp) = (xr[f] * ar, xp[f] * ap);
                let near = |s: f32| (s.abs().fract() - 0.5).abs() < 1e-3;
                if (qr[f] as i32 - qp[f] as i32).abs() == 1 && (near(sr) || near(sp)) {
                    return Some((t, f, sr, sp));
                }
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(values: Vec<f32>) -> TraceEntry {
        TraceEntry {
            layer: Some(0),
            op: "ffn_norm",
            width: values.len(),
            values,
        }
    }

    #[test]
    fn a_value_on_a_rounding_boundary_is_a_flip() {
        // amax 1.27 gives a = 100: 0.0049999 * 100 = 0.49999 rounds to 0, 0.0050001 * 100 = 0.50001 to 1.
        let r = entry(vec![1.27, 0.004_999_9, -0.3]);
        let p = entry(vec![1.27, 0.005_000_1, -0.3]);
        let (t, f, sr, sp) = find_flip(&r, &p).expect("a flip");
        assert_eq!((t, f), (0, 1));
        assert!(sr < 0.5 && sp > 0.5);
    }

    #[test]
    fn a_large_difference_is_not_a_flip() {
        let r = entry(vec![1.27, 0.2, -0.3]);
        let p = entry(vec![1.27, 0.4, -0.3]);
        assert!(find_flip(&r, &p).is_none());
        assert!(find_flip(&r, &r).is_none());
    }
}
