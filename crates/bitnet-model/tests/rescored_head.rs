//! The rescored LM head on every fixture: greedy decoding equals the exact head's token for token, the
//! bound of SPEC.md 6.2 holds on the models' real hidden states, few rows are rescored, and sampling's
//! distribution (rescored rows exact, the rest int8) stays within the bound's total-variation limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_format::BitnetFile;
use bitnet_kernels::pad16;
use bitnet_kernels::rescore::HeadBound;
use bitnet_kernels::scalar::BlockQuantized;
use bitnet_model::{Backend, HeadKind, LogitsMode, PackedModel, argmax, greedy};

/// Every fixture layout, and the trained demo model (whose logits are peaked like a real model's).
const FIXTURES: [&str; 9] = [
    "bitnet-tiny-tied",
    "bitnet-tiny-untied-sharded",
    "bitnet-llama3-tiny",
    "bitnet-2b4t-packed",
    "falcon3-tiny",
    "falcon3-tq-tiny",
    "hf1bitllm-tiny",
    "bitnet-1bitllm-tiny",
    "demo",
];

/// Greedy steps per prompt.
const STEPS: usize = 64;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn convert_int8(name: &str, dir: &Path) -> Arc<BitnetFile> {
    let out = dir.join(format!("{name}.bitnet"));
    let input = root().join("fixtures").join(name);
    let opts = bitnet_convert::ConvertOptions {
        lm_head: bitnet_convert::LmHead::Int8,
    };
    bitnet_convert::convert(
        input.to_str().unwrap(),
        &out,
        &opts,
        &bitnet_convert::HubEnv::default(),
        &|_| {},
        &mut |_| {},
    )
    .unwrap();
    Arc::new(BitnetFile::open(out).unwrap())
}

/// The prompts of a fixture's greedy oracle.
fn prompts(name: &str) -> Vec<Vec<u32>> {
    let g: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root()
                .join("fixtures")
                .join(format!("{name}.generate.json")),
        )
        .unwrap(),
    )
    .unwrap();
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Every int8 file offers the rescored head: a tied model's exact rows are its embedding, an untied
/// model's are `output_exact` (SPEC.md 5), byte for byte the `output` of the same checkpoint converted with
/// the exact head.
fn assert_rescorable(name: &str, file: &Arc<BitnetFile>, m: &PackedModel, dir: &Path) {
    assert!(m.has_rescored_head(), "{name}");
    assert_eq!(m.default_head(), HeadKind::Rescored, "{name}");
    let exact_rows = file.entry(bitnet_format::OUTPUT_EXACT);
    if m.config().tie_word_embeddings {
        assert!(exact_rows.is_none(), "{name}");
        return;
    }
    let rows = exact_rows.unwrap_or_else(|| panic!("{name}: no output_exact"));
    let plain = dir.join(format!("{name}-exact.bitnet"));
    bitnet_convert::convert(
        root().join("fixtures").join(name).to_str().unwrap(),
        &plain,
        &bitnet_convert::ConvertOptions::default(),
        &bitnet_convert::HubEnv::default(),
        &|_| {},
        &mut |_| {},
    )
    .unwrap();
    let plain = BitnetFile::open(plain).unwrap();
    let head = plain.entry("output").unwrap();
    let bytes = |f: &BitnetFile, e: &bitnet_format::TensorEntry| {
        f.bytes()[e.offset as usize..(e.offset + e.length) as usize].to_vec()
    };
    assert_eq!(rows.kind, head.kind, "{name}");
    assert!(
        bytes(file, rows) == bytes(&plain, head),
        "{name}: output_exact differs"
    );
}

fn softmax(l: &[f32], t: f64) -> Vec<f64> {
    let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = l.iter().map(|&x| ((x as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

#[test]
fn rescored_greedy_equals_the_exact_head_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let file = convert_int8(name, tmp.path());
        let mut exact = PackedModel::load(file.clone()).unwrap();
        assert_rescorable(name, &file, &exact, tmp.path());
        exact.set_head(HeadKind::Exact).unwrap();
        let rescored = PackedModel::load(file.clone()).unwrap();
        let mut int8 = PackedModel::load(file.clone()).unwrap();
        int8.set_head(HeadKind::Int8).unwrap();
        let (mut int8_differs, mut tokens) = (0, 0);
        for ids in prompts(name) {
            let n = STEPS.min(rescored.config().max_position_embeddings - ids.len());
            let want = greedy(&exact, &ids, n).unwrap();
            assert_eq!(greedy(&rescored, &ids, n).unwrap(), want, "{name}: {ids:?}");
            int8_differs += usize::from(greedy(&int8, &ids, n).unwrap() != want);
            tokens += n;
        }
        let stats = rescored.rescore_stats();
        // One scored position per greedy step (the prompt's last included).
        assert_eq!(stats.tokens as usize, tokens, "{name}");
        let vocab = rescored.config().vocab_size;
        eprintln!(
            "{name}: vocab {vocab}, {:.2} rows rescored per token, int8 head's greedy differs on {int8_differs} prompt(s)",
            stats.rows_per_token()
        );
        assert!(
            stats.rows_per_token() >= 1.0 && stats.rows_per_token() * 8.0 < vocab as f64,
            "{name}: {stats:?}"
        );
    }
}

/// On the models' own final hidden states: every row's int8 logit is within its bound of the exact one,
/// the rescored logits equal the exact head's on the rescored rows, and sampling's distribution from them
/// is within `1 - exp(-2 B / T)` in total variation of the exact head's (`B` the largest bound of a row not
/// rescored), measured at temperatures 1 and 0.6.
#[test]
fn the_bound_holds_on_real_hidden_states_and_sampling_stays_close() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let file = convert_int8(name, tmp.path());
        let model = PackedModel::load(file.clone()).unwrap();
        assert!(model.has_rescored_head(), "{name}");
        let (v, h) = (model.config().vocab_size, model.config().hidden_size);
        let out = file.entry("output").unwrap();
        let scales: Vec<f32> = file.bytes()
            [out.offset as usize..(out.offset + out.length) as usize][pad16(v) * pad16(h)..]
            [..4 * v]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (mut tv_sum, mut tv_max, mut int8_tv_sum, mut positions) =
            ([0f64; 2], [0f64; 2], 0f64, 0);
        for ids in prompts(name) {
            let mut s = model.session(ids.len() + 8);
            let mut next = ids.clone();
            for _ in 0..8 {
                let f = model
                    .forward(&mut s, &next, LogitsMode::Last, None)
                    .unwrap();
                let exact = model.head_logits(&f.hidden, HeadKind::Exact).unwrap();
                let int8 = model.head_logits(&f.hidden, HeadKind::Int8).unwrap();
                assert_eq!(
                    f.logits,
                    model.head_logits(&f.hidden, HeadKind::Rescored).unwrap()
                );
                let mut bq = BlockQuantized::default();
                bq.quantize(&f.hidden);
                let bound = HeadBound::new(&f.hidden, &bq);
                let mut worst_tail = 0f64;
                for r in 0..v {
                    let b = bound.row(scales[r]);
                    assert!(
                        (int8[r] as f64 - exact[r] as f64).abs() <= b,
                        "{name} row {r}: int8 {} exact {} bound {b}",
                        int8[r],
                        exact[r]
                    );
                    if f.logits[r] == exact[r] && f.logits[r] != int8[r] {
                        continue; // rescored
                    }
                    if f.logits[r] != exact[r] {
                        worst_tail = worst_tail.max(b);
                    }
                }
                assert_eq!(argmax(&f.logits), argmax(&exact), "{name}");
                for (i, t) in [1.0, 0.6].into_iter().enumerate() {
                    let tv = total_variation(&softmax(&f.logits, t), &softmax(&exact, t));
                    let limit = 1.0 - (-2.0 * worst_tail / t).exp();
                    assert!(tv <= limit + 1e-12, "{name}: TV {tv} > {limit}");
                    tv_sum[i] += tv;
                    tv_max[i] = tv_max[i].max(tv);
                }
                int8_tv_sum += total_variation(&softmax(&int8, 1.0), &softmax(&exact, 1.0));
                positions += 1;
                next = vec![argmax(&f.logits)];
            }
        }
        let p = positions as f64;
        eprintln!(
            "{name}: total variation to the exact head's distribution, mean (max) over {positions} positions: \
             T=1 {:.2e} ({:.2e}), T=0.6 {:.2e} ({:.2e}); int8 head alone at T=1 {:.2e}",
            tv_sum[0] / p,
            tv_max[0],
            tv_sum[1] / p,
            tv_max[1],
            int8_tv_sum / p
        );
    }
}
