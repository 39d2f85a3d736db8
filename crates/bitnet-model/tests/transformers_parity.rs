//! The packed path against what Hugging Face transformers computed on the fixtures: logits on every
//! position, and greedy continuations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_format::BitnetFile;
use bitnet_model::parity::compare;
use bitnet_model::{Backend, HeadKind, LogitsMode, PackedModel, greedy};
use safetensors::SafeTensors;

/// Every checkpoint layout: 2B4T bf16 master weights (three fixtures), 2B4T pre-packed (weight_scale
/// multiplies), Falcon3 and HF1BitLLM (LlamaForCausalLM + BitLinear: packed, weight_scale divides, no
/// sub-norms, untied), 1bitLLM (latent F32, its own sub-norm names).
const FIXTURES: [&str; 7] = [
    "bitnet-tiny-tied",
    "bitnet-tiny-untied-sharded",
    "bitnet-llama3-tiny",
    "bitnet-2b4t-packed",
    "falcon3-tiny",
    "hf1bitllm-tiny",
    "bitnet-1bitllm-tiny",
];

/// Positions where an int8 activation of transformers' run sits within float rounding of a .5 boundary
/// (fixtures/README.md, parity.md), so the two correct paths round it apart: falcon3-tiny's position 0
/// of prompt 0, 2.6e-7 from a tie.
fn rounding_flips(name: &str) -> usize {
    usize::from(name == "falcon3-tiny")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(name: &str, dir: &Path, lm_head: bitnet_convert::LmHead) -> PackedModel {
    let out = dir.join(format!("{name}-{lm_head:?}.bitnet"));
    let input = root().join("fixtures").join(name);
    let opts = bitnet_convert::ConvertOptions { lm_head };
    bitnet_convert::convert(
        input.to_str().unwrap(),
        &out,
        &opts,
        &bitnet_convert::HubEnv::default(),
        &|_| {},
        &mut |_| {},
    )
    .unwrap();
    PackedModel::load(Arc::new(BitnetFile::open(out).unwrap())).unwrap()
}

/// `input_ids` [P][T] and `logits` [P * T * V] of a fixture.
fn expected(name: &str) -> (Vec<Vec<u32>>, Vec<f32>) {
    let bytes = std::fs::read(
        root()
            .join("fixtures")
            .join(format!("{name}.logits.safetensors")),
    )
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let t = ids.shape()[1];
    let ids: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids.chunks(t).map(|c| c.to_vec()).collect(), logits)
}

#[test]
fn packed_logits_match_transformers_on_every_position() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let model = load(name, tmp.path(), bitnet_convert::LmHead::Exact);
        let v = model.config().vocab_size;
        let (prompts, logits) = expected(name);
        for (p, ids) in prompts.iter().enumerate() {
            let t = ids.len();
            let out = model
                .forward(&mut model.session(t), ids, LogitsMode::All, None)
                .unwrap();
            let c = compare(&logits[p * t * v..(p + 1) * t * v], &out.logits, v);
            // The integer path is exact; what is left is float summation order, far below 1e-3, but
            // for a known rounding flip.
            let flips = if p == 0 { rounding_flips(name) } else { 0 };
            assert_eq!(c.tight + flips, c.positions, "{name} prompt {p}: {c:?}");
            assert_eq!(c.top1_agree, c.positions, "{name} prompt {p}");
            assert!(
                (flips > 0 || c.max_abs < 1e-4) && c.min_cosine > 0.999_99,
                "{name} prompt {p}: {c:?}"
            );
        }
    }
}

#[test]
fn decoding_token_by_token_equals_the_full_prefill() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(
        "bitnet-tiny-untied-sharded",
        tmp.path(),
        bitnet_convert::LmHead::Exact,
    );
    let (prompts, _) = expected("bitnet-tiny-untied-sharded");
    let ids = &prompts[0];
    let full = model
        .forward(&mut model.session(ids.len()), ids, LogitsMode::All, None)
        .unwrap()
        .logits;
    let v = model.config().vocab_size;
    let mut s = model.session(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let step = model
            .forward(&mut s, &[id], LogitsMode::Last, None)
            .unwrap()
            .logits;
        let c = compare(&full[i * v..(i + 1) * v], &step, v);
        assert!(c.max_abs < 1e-4, "position {i}: {c:?}");
    }
}

#[test]
fn greedy_continuations_equal_transformers_generate() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let model = load(name, tmp.path(), bitnet_convert::LmHead::Exact);
        let generated: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                root()
                    .join("fixtures")
                    .join(format!("{name}.generate.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let n = generated["max_new_tokens"].as_u64().unwrap() as usize;
        for case in generated["prompts"].as_array().unwrap() {
            let ids: Vec<u32> = case["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let want: Vec<u32> = case["generated_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                greedy(&model, &ids, n).unwrap(),
                want,
                "{name}: {}",
                case["text"]
            );
        }
    }
}

#[test]
fn int8_head_stays_close_to_the_exact_head() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let mut model = load(name, tmp.path(), bitnet_convert::LmHead::Int8);
        // With the exact head's rows beside it, the int8 head is rescored by default.
        let default = if model.has_exact_head() {
            HeadKind::Rescored
        } else {
            HeadKind::Int8
        };
        assert_eq!(model.default_head(), default, "{name}");
        model.set_head(HeadKind::Int8).unwrap();
        let v = model.config().vocab_size;
        let (prompts, logits) = expected(name);
        let ids = &prompts[0];
        let t = ids.len();
        let out = model
            .forward(&mut model.session(t), ids, LogitsMode::All, None)
            .unwrap();
        let c = compare(&logits[..t * v], &out.logits, v);
        assert!(
            c.min_cosine > 0.9995 && c.max_kl < 0.01 && c.top1_share() >= 0.85,
            "{name}: {c:?}"
        );
    }
}

#[test]
fn every_kernel_set_and_thread_count_gives_the_same_bits() {
    use bitnet_kernels::Kernels;
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        for head in [bitnet_convert::LmHead::Exact, bitnet_convert::LmHead::Int8] {
            let path = tmp.path().join(format!("{name}-{head:?}.bitnet"));
            let input = root().join("fixtures").join(name);
            let opts = bitnet_convert::ConvertOptions { lm_head: head };
            bitnet_convert::convert(
                input.to_str().unwrap(),
                &path,
                &opts,
                &bitnet_convert::HubEnv::default(),
                &|_| {},
                &mut |_| {},
            )
            .unwrap();
            let file = Arc::new(BitnetFile::open(&path).unwrap());
            let (prompts, _) = expected(name);
            let run = |k: Kernels, threads: usize| {
                let m = PackedModel::load_with(file.clone(), k, threads).unwrap();
                let ids = &prompts[0];
                let all = m
                    .forward(&mut m.session(ids.len()), ids, LogitsMode::All, None)
                    .unwrap()
                    .logits;
                (all, greedy(&m, ids, 8).unwrap())
            };
            let (want, want_greedy) = run(Kernels::scalar(), 1);
            for k in Kernels::available() {
                for threads in [1, 2, 3] {
                    let (got, got_greedy) = run(k, threads);
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name} {head:?} {k:?} x{threads}"
                    );
                    assert_eq!(want_greedy, got_greedy, "{name} {head:?} {k:?} x{threads}");
                }
            }
        }
    }
}

#[test]
fn a_batched_decode_step_gives_each_sequence_its_solo_bits() {
    use bitnet_kernels::Kernels;
    let tmp = tempfile::tempdir().unwrap();
    let name = "bitnet-tiny-untied-sharded";
    let (prompts, _) = expected(name);
    for head in [bitnet_convert::LmHead::Exact, bitnet_convert::LmHead::Int8] {
        let base = load(name, tmp.path(), head);
        let file = Arc::new(BitnetFile::open(base.file().path().unwrap()).unwrap());
        for k in Kernels::available() {
            let m = PackedModel::load_with(file.clone(), k, 2).unwrap();
            // Sequences of different lengths (so different positions), some sharing a prefix.
            let prompts: Vec<Vec<u32>> = (0..5)
                .map(|i| prompts[i % prompts.len()][..3 + 2 * i].to_vec())
                .collect();
            let mut solo = Vec::new();
            let mut sessions = Vec::new();
            let mut next = Vec::new();
            for p in &prompts {
                let mut s = m.session(64);
                let l = m.forward(&mut s, p, LogitsMode::Last, None).unwrap().logits;
                next.push(bitnet_model::argmax(&l));
                let mut alone = s.clone();
                solo.push(
                    m.forward(&mut alone, &next[next.len() - 1..], LogitsMode::Last, None)
                        .unwrap()
                        .logits,
                );
                sessions.push(s);
            }
            let mut refs: Vec<&mut bitnet_model::Session> = sessions.iter_mut().collect();
            let lists: Vec<&[u32]> = next.chunks(1).collect();
            let batched = m.forward_batch(&mut refs, &lists).unwrap();
            let v = m.config().vocab_size;
            for (i, want) in solo.iter().enumerate() {
                let got = &batched[i * v..(i + 1) * v];
                assert!(
                    want.iter()
                        .zip(got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{head:?} {k:?}: sequence {i} differs batched"
                );
                assert_eq!(sessions[i].pos, prompts[i].len() + 1);
            }
        }
    }
}

#[test]
fn prompts_prefilled_together_with_decoding_sequences_give_their_solo_bits() {
    use bitnet_kernels::Kernels;
    let tmp = tempfile::tempdir().unwrap();
    let name = "bitnet-llama3-tiny";
    let (prompts, _) = expected(name);
    let base = load(name, tmp.path(), bitnet_convert::LmHead::Int8);
    let file = Arc::new(BitnetFile::open(base.file().path().unwrap()).unwrap());
    for k in Kernels::available() {
        let m = PackedModel::load_with(file.clone(), k, 2).unwrap();
        let p: Vec<u32> = prompts.concat();
        // Two sequences already holding a prefix (they decode one token), two starting their prompts
        // (chunks of 5 and 11 tokens: both kernel paths, ragged token blocks).
        let cut = [3, 6, 0, 0];
        let take = [1, 1, 5, 11];
        let mut sessions: Vec<_> = (0..4).map(|_| m.session(64)).collect();
        for (s, &c) in sessions.iter_mut().zip(&cut) {
            if c > 0 {
                m.forward(s, &p[..c], LogitsMode::Last, None).unwrap();
            }
        }
        let lists: Vec<&[u32]> = (0..4).map(|i| &p[cut[i]..cut[i] + take[i]]).collect();
        let solo: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                let mut s = sessions[i].clone();
                m.forward(&mut s, lists[i], LogitsMode::Last, None)
                    .unwrap()
                    .logits
            })
            .collect();
        let mut refs: Vec<&mut bitnet_model::Session> = sessions.iter_mut().collect();
        let batched = m.forward_batch(&mut refs, &lists).unwrap();
        let v = m.config().vocab_size;
        for (i, want) in solo.iter().enumerate() {
            assert!(
                want.iter()
                    .zip(&batched[i * v..(i + 1) * v])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{k:?}: sequence {i} differs in the mixed batch"
            );
            assert_eq!(sessions[i].pos, cut[i] + take[i]);
        }
        let mut none: Vec<&mut bitnet_model::Session> = sessions.iter_mut().take(1).collect();
        assert!(m.forward_batch(&mut none, &[&[]]).is_err());
    }
}
