//! Layer-by-layer parity: each packed layer run on the reference's input to that layer, and the packed
//! head on the reference's final residual stream, so differences cannot compound from layer to layer.

use serde::Serialize;

use crate::parity::{Comparison, Tolerances, compare};
use crate::{Backend, Result, Trace};

/// Figures gathered over prompts.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// Per layer: the largest relative RMS error of its update over prompts, and the smallest cosine.
    layers: Vec<(f64, f64)>,
    head: Vec<Comparison>,
}

/// One layer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LayerFigures {
    /// The layer.
    pub layer: usize,
    /// The relative RMS error of what it adds to the residual stream (worst prompt).
    pub relative: f64,
    /// The smallest cosine between the two updates.
    pub min_cosine: f64,
}

/// The report's JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    /// Every layer's figures.
    pub layers: Vec<LayerFigures>,
    /// The packed head on the reference's final residual stream.
    pub head: Comparison,
    /// Whether every layer and the head are within tolerance.
    pub pass: bool,
    /// What is out of tolerance.
    pub failures: Vec<String>,
    /// The layers' relative errors, for a line of text.
    pub relative_text: String,
    /// One line for people.
    pub summary: String,
}

/// sqrt(sum (a - b)^2 / sum a^2): the relative RMS error of `b` against `a`.
pub fn rms_rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*x as f64).powi(2);
    }
    if n == 0.0 {
        if d == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (d / n).sqrt()
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += *x as f64 * *y as f64;
        na += (*x as f64).powi(2);
        nb += (*y as f64).powi(2);
    }
    if na == 0.0 || nb == 0.0 {
        if na == nb { 1.0 } else { 0.0 }
    } else {
        d / (na.sqrt() * nb.sqrt())
    }
}

impl LayerReport {
    /// An empty report for `n` layers.
    pub fn new(n: usize) -> LayerReport {
        LayerReport {
            layers: vec![(0.0, 1.0); n],
            head: Vec::new(),
        }
    }

    /// Adds one prompt, from the reference's trace `rt` and its logits.
    pub fn add(
        &mut self,
        model: &dyn Backend,
        rt: &Trace,
        ref_logits: &[f32],
        vocab: usize,
    ) -> Result<()> {
        let missing = |what: &str| crate::ModelError::MissingTrace(what.to_string());
        let mut input = rt
            .get(None, "embed")
            .ok_or_else(|| missing("embedding"))?
            .values
            .clone();
        for (li, worst) in self.layers.iter_mut().enumerate() {
            let want = &rt
                .get(Some(li), "ffn_residual")
                .ok_or_else(|| missing(&format!("layer {li}")))?
                .values;
            let got = model.forward_layer(li, &input, None)?;
            // Compare what the layer adds to the residual stream, not the stream itself, so a late layer's
            // error is not hidden by a large residual.
            let upd_ref: Vec<f32> = want.iter().zip(&input).map(|(o, i)| o - i).collect();
            let upd_got: Vec<f32> = got.iter().zip(&input).map(|(o, i)| o - i).collect();
            worst.0 = worst.0.max(rms_rel(&upd_ref, &upd_got));
            worst.1 = worst.1.min(cosine(&upd_ref, &upd_got));
            input = want.clone();
        }
        let logits = model.forward_head(&input)?;
        self.head.push(compare(ref_logits, &logits, vocab));
        Ok(())
    }

    /// The head's figures over every prompt.
    pub fn head_total(&self) -> Comparison {
        Comparison::merge(&self.head)
    }

    /// What is out of tolerance: a layer past `max_delta`, the head past `tol`.
    pub fn failures(&self, max_delta: f64, tol: &Tolerances) -> Vec<String> {
        let mut f: Vec<String> = self
            .layers
            .iter()
            .enumerate()
            .filter(|(_, (rel, _))| rel.is_nan() || *rel > max_delta)
            .map(|(i, (rel, _))| {
                format!(
                    "layer {i} output differs by {rel:.2e} (relative RMS of its update, > {max_delta})"
                )
            })
            .collect();
        if !self.head.is_empty() {
            f.extend(
                self.head_total()
                    .failures(tol)
                    .into_iter()
                    .map(|e| format!("head on the same input: {e}")),
            );
        }
        f
    }

    /// The figures with `failures` (from [`LayerReport::failures`]).
    pub fn summary(&self, failures: &[String]) -> LayerSummary {
        let worst =
            self.layers.iter().enumerate().fold(
                (0, 0.0f64),
                |w, (i, (r, _))| if *r > w.1 { (i, *r) } else { w },
            );
        let head = self.head_total();
        let summary = format!(
            "worst layer {} ({:.2e}); head on the same input: max |delta| {:.2e}, top-1 {}/{}; {}",
            worst.0,
            worst.1,
            head.max_abs,
            head.top1_agree,
            head.positions,
            if failures.is_empty() {
                "every layer in parity".to_string()
            } else {
                failures.join("; ")
            }
        );
        LayerSummary {
            layers: self
                .layers
                .iter()
                .enumerate()
                .map(|(layer, &(relative, min_cosine))| LayerFigures {
                    layer,
                    relative,
                    min_cosine,
                })
                .collect(),
            head,
            pass: failures.is_empty(),
            failures: failures.to_vec(),
            relative_text: self
                .layers
                .iter()
                .map(|(r, _)| format!("{r:.1e}"))
                .collect::<Vec<_>>()
                .join(" "),
            summary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_rms_and_cosine() {
        assert_eq!(rms_rel(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rms_rel(&[3.0, 4.0], &[3.0, 3.0]) - 0.2).abs() < 1e-12);
        assert_eq!(rms_rel(&[0.0], &[1.0]), f64::INFINITY);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
    }
}
