//! `bitnet verify`: the flags onto `bitnet_runtime::verify`, and its report as text or JSON.

use std::io::Write;

use bitnet_model::HeadKind;
use bitnet_model::parity::{Comparison, TIGHT, Tolerances};
use bitnet_runtime::verify::{VerifyOptions, VerifyReport, verify};

use crate::Outcome;
use crate::cli::VerifyArgs;

pub fn run(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let opts = VerifyOptions {
        model: args.model.clone(),
        reference: args.reference.clone(),
        expected_logits: args.expected_logits.clone(),
        prompts: args.prompts.clone(),
        trace: args.trace,
        tolerances: Tolerances {
            min_cosine: args.min_cosine,
            max_kl: args.max_kl,
            max_mean_kl: args.max_mean_kl,
            min_top1: args.min_top1,
            min_tight: args.min_tight,
        },
        max_layer_delta: args.max_layer_delta,
    };
    let report = verify(&opts, &mut |line| eprintln!("{line}"))?;
    for f in &report.failures {
        eprintln!("FAIL: {}: {f}", report.file);
    }
    if args.json {
        let mut o = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut o, &report)?;
        writeln!(o)?;
    } else if report.failures.is_empty() {
        print_text(&report)?;
    }
    Ok(if report.pass {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}

fn print_text(r: &VerifyReport) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    for ch in &r.comparisons {
        let head = ch.head.as_str();
        writeln!(o, "packed ({head} head) vs {}", ch.against)?;
        writeln!(
            o,
            "  {:<7} {:>6} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9}",
            "prompt",
            "tokens",
            "max|d|",
            "mean|d|",
            "min cos",
            "top-1",
            "mean KL",
            "max KL",
            "tight"
        )?;
        let row = |o: &mut std::io::StdoutLock<'_>, name: &str, tokens: String, c: &Comparison| {
            writeln!(
                o,
                "  {:<7} {:>6} {:>10.3e} {:>10.3e} {:>10.6} {:>9} {:>10.3e} {:>10.3e} {:>9}",
                name,
                tokens,
                c.max_abs,
                c.mean_abs,
                c.min_cosine,
                format!("{}/{}", c.top1_agree, c.positions),
                c.mean_kl,
                c.max_kl,
                format!("{}/{}", c.tight, c.positions)
            )
        };
        for (i, p) in ch.prompts.iter().enumerate() {
            row(&mut o, &i.to_string(), p.tokens.to_string(), &p.cmp)?;
        }
        row(
            &mut o,
            "all",
            ch.prompts
                .iter()
                .map(|p| p.tokens)
                .sum::<usize>()
                .to_string(),
            &ch.total,
        )?;
        if ch.head == HeadKind::Int8 {
            writeln!(
                o,
                "  (the int8 head approximates the exact head: its tight share is reported, not required)"
            )?;
        }
        match (ch.judged, ch.failures.is_empty()) {
            (false, true) => writeln!(
                o,
                "  within tolerance (reported: the exact head decides the verdict)"
            )?,
            (false, false) => writeln!(
                o,
                "  outside tolerance: {} (reported: the exact head decides the verdict)",
                ch.failures.join("; ")
            )?,
            (true, true) => writeln!(o, "  pass")?,
            (true, false) => match &ch.explained {
                Some(why) => writeln!(
                    o,
                    "  outside tolerance: {}\n  accepted: {why}",
                    ch.failures.join("; ")
                )?,
                None => writeln!(o, "  FAIL: {}", ch.failures.join("; "))?,
            },
        }
    }
    if let Some(layers) = &r.layers {
        writeln!(
            o,
            "layer by layer (each packed layer on the reference's input to it):"
        )?;
        writeln!(
            o,
            "  relative RMS error of each layer's update: {}",
            layers.relative_text
        )?;
        writeln!(o, "  {}", layers.summary)?;
    }
    let tol = &r.tolerances;
    writeln!(
        o,
        "tolerances: min cosine {}, max KL {}, mean KL {}, top-1 share {}, tight (<{TIGHT:e}) share {}",
        tol.min_cosine, tol.max_kl, tol.max_mean_kl, tol.min_top1, tol.min_tight
    )?;
    if let Some(trace) = &r.trace {
        writeln!(o, "trace: {}", trace.summary)?;
    }
    writeln!(o, "{}", if r.pass { "PASS" } else { "FAIL" })
}
