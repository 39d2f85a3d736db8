//! Synthetic `.bitnet` files with the exact shapes of a real model and seeded random weights, written
//! straight in the packed layout (no checkpoint, no conversion), so benchmarks run on a fresh machine.

use std::path::Path;

use bitnet_format::{
    Activation, Features, FileWriter, GenerationDefaults, Header, ModelConfig, RopeStyle,
    SourceInfo, TensorKind, TensorSpec, TokenizerInfo, layout,
};
use rayon::prelude::*;

use crate::error::Result;

/// A model family whose real dimensions `bitnet bench --synthetic NAME` reproduces.
#[derive(Debug, Clone)]
pub struct Family {
    /// The name `--synthetic` takes.
    pub name: &'static str,
    /// The Hugging Face repo whose config.json the dimensions come from.
    pub repo: &'static str,
    /// Dimensions.
    pub config: ModelConfig,
    /// Optional parts of the computation.
    pub features: Features,
}

#[allow(clippy::too_many_arguments)]
fn dims(
    (vocab_size, hidden_size, intermediate_size): (usize, usize, usize),
    (num_layers, num_heads, num_kv_heads, head_dim): (usize, usize, usize, usize),
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    hidden_act: Activation,
    tie_word_embeddings: bool,
) -> ModelConfig {
    ModelConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        rope_style: RopeStyle::Neox,
        hidden_act,
        tie_word_embeddings,
    }
}

/// Every family with its real dimensions (from each repo's config.json; sources in
/// shared/reference/checkpoints.md).
pub fn families() -> Vec<Family> {
    use Activation::Silu;
    let falcon3 = |name, repo, ffn, layers| Family {
        name,
        repo,
        config: dims(
            (131_072, 3072, ffn),
            (layers, 12, 4, 256),
            32_768,
            1e-6,
            1_000_042.0,
            Silu,
            false,
        ),
        features: Features::default(),
    };
    vec![
        Family {
            name: "2b4t",
            repo: "microsoft/bitnet-b1.58-2B-4T",
            config: config_2b4t(),
            features: Features::V1,
        },
        Family {
            name: "falcon3-1b",
            repo: "tiiuae/Falcon3-1B-Instruct-1.58bit",
            config: dims(
                (131_072, 2048, 8192),
                (18, 8, 4, 256),
                8192,
                1e-6,
                1_000_042.0,
                Silu,
                false,
            ),
            features: Features::default(),
        },
        falcon3("falcon3-3b", "tiiuae/Falcon3-3B-Instruct-1.58bit", 9216, 22),
        falcon3(
            "falcon3-7b",
            "tiiuae/Falcon3-7B-Instruct-1.58bit",
            23_040,
            28,
        ),
        falcon3(
            "falcon3-10b",
            "tiiuae/Falcon3-10B-Instruct-1.58bit",
            23_040,
            40,
        ),
        Family {
            name: "llama3-8b-1.58",
            repo: "HF1BitLLM/Llama3-8B-1.58-100B-tokens",
            config: dims(
                (128_256, 4096, 14_336),
                (32, 32, 8, 128),
                8192,
                1e-5,
                500_000.0,
                Silu,
                false,
            ),
            features: Features::default(),
        },
        Family {
            name: "1bitllm-3b",
            repo: "1bitLLM/bitnet_b1_58-3B",
            config: dims(
                (32_002, 3200, 8640),
                (26, 32, 32, 100),
                2048,
                1e-5,
                10_000.0,
                Silu,
                true,
            ),
            features: Features::V1,
        },
    ]
}

/// The names of [`families`], in order (for command-line parsers).
pub const NAMES: [&str; 7] = [
    "2b4t",
    "falcon3-1b",
    "falcon3-3b",
    "falcon3-7b",
    "falcon3-10b",
    "llama3-8b-1.58",
    "1bitllm-3b",
];

/// The family named `name`.
pub fn family(name: &str) -> Option<Family> {
    families().into_iter().find(|f| f.name == name)
}

/// The dimensions of BitNet b1.58 2B4T (`microsoft/bitnet-b1.58-2B-4T`).
pub fn config_2b4t() -> ModelConfig {
    dims(
        (128_256, 2560, 6912),
        (30, 20, 5, 128),
        4096,
        1e-5,
        500_000.0,
        Activation::Relu2,
        true,
    )
}

/// A small, fast generator (SplitMix64, rand_xoshiro's): the same seed gives the same file everywhere.
fn splitmix(x: u64) -> impl FnMut() -> u64 {
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(x);
    move || rng.next_u64()
}

const BLOCK: usize = 1 << 16;

/// `len` bytes of random valid `ternary_r16` codes (each 2-bit field 0, 1 or 2).
fn ternary_bytes(len: usize, seed: u64) -> Vec<u8> {
    let valid: Vec<u8> = (0..=255u8)
        .filter(|b| (0..4).all(|q| (b >> (2 * q)) & 3 != 3))
        .collect();
    let mut out = vec![0u8; len];
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(i, c)| {
        let mut r = splitmix(seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        for b in c.iter_mut() {
            *b = valid[(r() % valid.len() as u64) as usize];
        }
    });
    out
}

/// `n` bf16 values, roughly normal with standard deviation `std` (the sum of four uniforms).
fn bf16_bytes(n: usize, std: f32, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; 2 * n];
    out.par_chunks_mut(2 * BLOCK)
        .enumerate()
        .for_each(|(i, c)| {
            let mut r = splitmix(seed ^ (i as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25));
            for b in c.chunks_exact_mut(2) {
                let v = r();
                let u: f32 = (0..4)
                    .map(|k| ((v >> (16 * k)) & 0xFFFF) as f32 / 65535.0 - 0.5)
                    .sum();
                let x = u * std * 1.732;
                b.copy_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
            }
        });
    out
}

/// Writes a model of `family`'s shape with seeded random weights to `path`; with `int8_head`, the head is
/// an int8 copy (beside the tied embedding, or of an untied head whose exact rows follow as `output_exact`,
/// as `bitnet convert --lm-head int8` writes them). Returns the file length.
pub fn write(path: &Path, family: &Family, seed: u64, int8_head: bool) -> Result<u64> {
    let exact_rows = int8_head && !family.config.tie_word_embeddings;
    write_with(path, family, seed, int8_head, exact_rows)
}

/// [`write`], with `output_exact` present or absent at will (tests of the reader's checks use this).
pub fn write_with(
    path: &Path,
    family: &Family,
    seed: u64,
    int8_head: bool,
    exact_rows: bool,
) -> Result<u64> {
    let c = &family.config;
    let features = family.features;
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut specs = Vec::new();
    let mut spec = |name: String, kind: TensorKind, shape: Vec<usize>| {
        specs.push(TensorSpec {
            name,
            kind,
            shape: shape.into_iter().map(|d| d as u64).collect(),
            source: None,
        });
    };
    for i in 0..c.num_layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        spec(n("attn_norm"), TensorKind::F32, vec![h]);
        spec(n("attn_q"), TensorKind::TernaryR16, vec![q, h]);
        spec(n("attn_k"), TensorKind::TernaryR16, vec![kv, h]);
        spec(n("attn_v"), TensorKind::TernaryR16, vec![kv, h]);
        if features.attn_sub_norm {
            spec(n("attn_sub_norm"), TensorKind::F32, vec![q]);
        }
        spec(n("attn_output"), TensorKind::TernaryR16, vec![h, q]);
        spec(n("ffn_norm"), TensorKind::F32, vec![h]);
        spec(n("ffn_gate"), TensorKind::TernaryR16, vec![f, h]);
        spec(n("ffn_up"), TensorKind::TernaryR16, vec![f, h]);
        if features.ffn_sub_norm {
            spec(n("ffn_sub_norm"), TensorKind::F32, vec![f]);
        }
        spec(n("ffn_down"), TensorKind::TernaryR16, vec![h, f]);
    }
    spec("output_norm".into(), TensorKind::F32, vec![h]);
    spec("token_embd".into(), TensorKind::Bf16, vec![v, h]);
    if int8_head {
        spec("output".into(), TensorKind::Int8R16, vec![v, h]);
    } else if !c.tie_word_embeddings {
        spec("output".into(), TensorKind::Bf16, vec![v, h]);
    }
    if exact_rows {
        spec(
            bitnet_format::OUTPUT_EXACT.into(),
            TensorKind::Bf16,
            vec![v, h],
        );
    }
    let header = Header {
        architecture: bitnet_format::ARCHITECTURE.into(),
        config: c.clone(),
        features: features.names(),
        tokenizer: TokenizerInfo {
            bos_token_id: Some(0),
            add_bos_token: true,
            ..Default::default()
        },
        generation: GenerationDefaults::default(),
        source: SourceInfo {
            architecture: format!("synthetic {} ({})", family.name, family.repo),
            model_type: "bitnet".into(),
            dtype: "random".into(),
            converter: format!(
                "bitnet {} synthetic (seed {seed})",
                env!("CARGO_PKG_VERSION")
            ),
            ..Default::default()
        },
        tensors: Vec::new(),
    };
    let mut w = FileWriter::create(path, header, specs.clone())?;
    for (i, s) in specs.iter().enumerate() {
        let seed = seed.wrapping_add(i as u64 * 7919);
        let (r, k) = (
            s.shape[0] as usize,
            s.shape.get(1).copied().unwrap_or(1) as usize,
        );
        match s.kind {
            TensorKind::F32 => {
                let norm: Vec<u8> = (0..r)
                    .flat_map(|j| (1.0f32 + 0.01 * ((j * 37 % 11) as f32 - 5.0)).to_le_bytes())
                    .collect();
                w.write_tensor(&s.name, &norm, None)?;
            }
            TensorKind::TernaryR16 => {
                // A scale near the absmean of weights drawn with std 2/sqrt(fan_in).
                let scale = 1.6 / (k as f32).sqrt();
                w.write_tensor(
                    &s.name,
                    &ternary_bytes(layout::ternary_len(r, k), seed),
                    Some(scale),
                )?;
            }
            TensorKind::Bf16 if s.name == bitnet_format::OUTPUT_EXACT => {
                // The rows the int8 head (written just before) copies: `token_embd`'s, two specs back.
                let emb_seed = seed.wrapping_sub(2 * 7919);
                w.write_tensor(&s.name, &bf16_bytes(r * k, 1.0, emb_seed), None)?
            }
            TensorKind::Bf16 => w.write_tensor(&s.name, &bf16_bytes(r * k, 1.0, seed), None)?,
            TensorKind::Int8R16 => {
                // The same values as `token_embd`, written just before with the previous seed.
                let emb = bf16_bytes(r * k, 1.0, seed.wrapping_sub(7919));
                w.begin_tensor(&s.name)?;
                let mut scales = Vec::with_capacity(layout::pad16(r));
                let rows_per = 4096;
                for r0 in (0..r).step_by(rows_per) {
                    let r1 = (r0 + rows_per).min(r);
                    let vals: Vec<f32> = emb[2 * r0 * k..2 * r1 * k]
                        .chunks_exact(2)
                        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                        .collect();
                    let mut qv = vec![0i8; vals.len()];
                    let mut block_scales = vec![0f32; r1 - r0];
                    qv.par_chunks_mut(k)
                        .zip(vals.par_chunks(k))
                        .zip(block_scales.par_iter_mut())
                        .for_each(|((qr, vr), d)| {
                            let amax = vr.iter().fold(0f32, |m, x| m.max(x.abs()));
                            *d = amax / 127.0;
                            for (o, x) in qr.iter_mut().zip(vr) {
                                *o = if *d > 0.0 {
                                    (x / *d).round_ties_even().clamp(-127.0, 127.0) as i8
                                } else {
                                    0
                                };
                            }
                        });
                    scales.extend_from_slice(&block_scales);
                    let rows = r1 - r0;
                    let mut tiles = vec![0u8; layout::pad16(rows) * layout::pad16(k)];
                    tiles
                        .par_chunks_mut(layout::int8_tile_len(k))
                        .enumerate()
                        .for_each(|(t, o)| {
                            layout::pack_int8_tile(&qv, rows, k, t, o);
                        });
                    w.write(&tiles)?;
                }
                scales.resize(layout::pad16(r), 0.0);
                w.write(
                    &scales
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect::<Vec<u8>>(),
                )?;
                w.end_tensor(None)?;
            }
            TensorKind::Bytes => unreachable!("no bytes tensors"),
        }
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_every_family_and_shapes_are_consistent() {
        let names: Vec<_> = families().iter().map(|f| f.name).collect();
        assert_eq!(names, NAMES);
        for f in families() {
            let c = &f.config;
            assert!(c.num_heads.is_multiple_of(c.num_kv_heads), "{}", f.name);
            assert!(c.head_dim.is_multiple_of(2), "{}", f.name);
        }
    }

    /// Falcon3-1B's family (untied, no sub-norms) at toy dimensions.
    fn tiny_falcon3() -> Family {
        let mut fam = family("falcon3-1b").unwrap();
        let c = &mut fam.config;
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers,
        ) = (64, 48, 72, 2);
        (c.num_heads, c.num_kv_heads, c.head_dim) = (4, 2, 16);
        fam
    }

    #[test]
    fn a_family_without_sub_norms_writes_a_file_the_model_loads() {
        let fam = tiny_falcon3();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bitnet");
        write(&path, &fam, 1, false).unwrap();
        let file = std::sync::Arc::new(bitnet_format::BitnetFile::open(&path).unwrap());
        assert_eq!(file.features(), Features::default());
        assert!(file.entry("blk.0.attn_sub_norm").is_none());
        assert!(file.entry("output").is_some());
        let model = crate::PackedModel::load(file).unwrap();
        use crate::Backend;
        let mut session = model.session(8);
        let out = model
            .forward(&mut session, &[1, 2, 3], crate::LogitsMode::Last, None)
            .unwrap();
        assert!(out.logits.iter().all(|x| x.is_finite()));
        // The hidden states an embedding pools are the forward pass's, bit for bit.
        let mut s = model.session(8);
        let all = model
            .forward(&mut s, &[1, 2, 3, 4, 5], crate::LogitsMode::All, None)
            .unwrap();
        assert_eq!(model.hidden_states(&[1, 2, 3, 4, 5]).unwrap(), all.hidden);
        assert!(
            model.hidden_states(&[1, 64]).is_err(),
            "an id past the vocabulary"
        );
    }

    #[test]
    fn output_exact_gives_untied_int8_files_the_rescored_head_and_is_refused_elsewhere() {
        let fam = tiny_falcon3();
        assert!(!fam.config.tie_word_embeddings);
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, fam: &Family, int8: bool, exact: bool| {
            let path = dir.path().join(name);
            write_with(&path, fam, 1, int8, exact).unwrap();
            let file = std::sync::Arc::new(bitnet_format::BitnetFile::open(&path).unwrap());
            crate::PackedModel::load(file)
        };
        let m = load("untied-int8.bitnet", &fam, true, true).unwrap();
        assert_eq!(m.default_head(), crate::HeadKind::Rescored);
        let old = load("untied-int8-only.bitnet", &fam, true, false).unwrap();
        assert_eq!(old.default_head(), crate::HeadKind::Int8);
        let err = load("untied-exact.bitnet", &fam, false, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("output_exact") && err.contains("an exact `output`"),
            "{err}"
        );
        let mut tied = fam.clone();
        tied.config.tie_word_embeddings = true;
        for (int8, what) in [
            (true, "int8 copy of the tied embedding"),
            (false, "no `output`"),
        ] {
            let err = load("tied.bitnet", &tied, int8, true)
                .unwrap_err()
                .to_string();
            assert!(err.contains("output_exact") && err.contains(what), "{err}");
        }
    }

    #[test]
    fn rescoring_on_the_pool_gives_the_exact_heads_values() {
        // Every token's candidates shared by two threads, in runs of consecutive rows; a vocabulary of
        // 4096 random rows.
        let mut fam = tiny_falcon3();
        fam.config.vocab_size = 4096;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flat.bitnet");
        write(&path, &fam, 3, true).unwrap();
        let file = std::sync::Arc::new(bitnet_format::BitnetFile::open(&path).unwrap());
        let kernels = bitnet_kernels::dispatch::Kernels::detect();
        let mut model = crate::PackedModel::load_with(file, kernels, 2).unwrap();
        model.rescore_on_the_pool_always();
        let hidden = model.hidden_states(&[1, 2, 3, 4]).unwrap();
        let (exact, int8, rescored) = (
            model.head_logits(&hidden, crate::HeadKind::Exact).unwrap(),
            model.head_logits(&hidden, crate::HeadKind::Int8).unwrap(),
            model
                .head_logits(&hidden, crate::HeadKind::Rescored)
                .unwrap(),
        );
        let rows = model.rescore_stats().rows as usize;
        assert!(rows >= 8, "only {rows} rows rescored over 4 tokens");
        let mut equal_exact = 0;
        for (r, ((&x, &e), &i)) in rescored.iter().zip(&exact).zip(&int8).enumerate() {
            assert!(
                x == e || x == i,
                "row {r}: rescored {x}, exact {e}, int8 {i}"
            );
            equal_exact += usize::from(x.to_bits() == e.to_bits());
        }
        assert!(
            equal_exact >= rows,
            "{equal_exact} rows equal the exact head's, {rows} rescored"
        );
        for (t, (l, e)) in rescored.chunks(4096).zip(exact.chunks(4096)).enumerate() {
            assert_eq!(crate::argmax(l), crate::argmax(e), "token {t}");
        }
    }
}
