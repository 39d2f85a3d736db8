use bitnet_format::GenerationDefaults;

use super::*;

fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
    let mut p = SamplingParams::default();
    f(&mut p);
    Sampler::new(p).unwrap()
}

/// Pseudo-random logits of `n` tokens, reproducible.
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = splitmix64(seed);
    (0..n)
        .map(|_| (next_f64(&mut rng) * 8.0 - 4.0) as f32)
        .collect()
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - f64::from(max)) / t).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

/// The support of the sampler's distribution, by drawing many times.
fn support(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<u32> {
    let mut seen: Vec<u32> = (0..draws).map(|_| s.sample(logits, &[]).unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    for seed in 0..50 {
        let l = logits(1000, seed);
        let want = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
        assert_eq!(s.sample(&l, &[]).unwrap() as usize, want);
    }
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]).unwrap(), 1);
    assert_eq!(
        s.sample(&[f32::NEG_INFINITY, -5.0, f32::NEG_INFINITY], &[])
            .unwrap(),
        1
    );
}

const PINNED: [u32; 16] = [
    28, 24, 11, 20, 28, 28, 24, 15, 24, 28, 6, 20, 28, 24, 30, 29,
];

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let run = |seed: u64| {
        let mut s = sampler(|p| {
            p.seed = seed;
            p.top_k = 40;
            p.top_p = 0.95;
            p.temperature = 0.9;
        });
        (0..200)
            .map(|i| s.sample(&logits(5000, i), &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Pinned draws: the generator and the hand-written exp give these on every machine.
    let mut s = sampler(|p| p.seed = 1234);
    let l = logits(32, 99);
    let drawn: Vec<u32> = (0..16).map(|_| s.sample(&l, &[]).unwrap()).collect();
    assert_eq!(drawn, PINNED, "{drawn:?}");
}

#[test]
fn splitmix64_reference_values() {
    // Reference outputs of SplitMix64 seeded with 1234567 (from the algorithm's published C code).
    let mut r = splitmix64(1_234_567);
    let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
    assert_eq!(
        got,
        [
            6_457_827_717_110_365_317,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ]
    );
    let mut r = splitmix64(0);
    for _ in 0..10_000 {
        let u = next_f64(&mut r);
        assert!((0.0..1.0).contains(&u));
    }
}

#[test]
fn handwritten_exp_is_accurate() {
    let mut x = 0.0f64;
    while x > -104.0 {
        let (got, want) = (exp_nonpositive(x), x.exp());
        assert!(
            ((got - want) / want).abs() < 1e-12,
            "exp({x}) = {got}, want {want}"
        );
        x -= 0.0137;
    }
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert!(exp_nonpositive(-200.0) < 1e-45);
    assert!(exp_nonpositive(f64::NEG_INFINITY) < 1e-45);
    assert_eq!(weight(0.0), WEIGHT_ONE);
    assert_eq!(weight(-0.0), WEIGHT_ONE);
    assert_eq!(weight(-37.0), 0, "below 2^-53 of the top");
    assert!(weight(-36.0) > 0);
    assert_eq!(weight(f64::NEG_INFINITY), 0);
    assert_eq!(weight(f64::NAN), 0);
    assert_eq!(weight(-std::f64::consts::LN_2), WEIGHT_ONE / 2);
}

#[test]
fn tiny_temperature_is_greedy() {
    let mut s = sampler(|p| p.temperature = f32::from_bits(1));
    let l = logits(1000, 3);
    let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&l, &[]).unwrap(), g.sample(&l, &[]).unwrap());
}

#[test]
fn top_k_1_and_tiny_top_p_are_greedy() {
    let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut k1 = sampler(|p| p.top_k = 1);
    let mut p_tiny = sampler(|p| p.top_p = 1e-6);
    let mut min_p1 = sampler(|p| p.min_p = 1.0);
    for seed in 0..200 {
        let l = logits(2000, seed);
        let want = greedy.sample(&l, &[]).unwrap();
        assert_eq!(k1.sample(&l, &[]).unwrap(), want);
        assert_eq!(p_tiny.sample(&l, &[]).unwrap(), want);
        assert_eq!(min_p1.sample(&l, &[]).unwrap(), want);
    }
}

#[test]
fn ties_are_broken_by_lowest_id() {
    let l = [0.0, 5.0, 5.0, 5.0, 1.0];
    let mut k1 = sampler(|p| p.top_k = 1);
    let mut k2 = sampler(|p| p.top_k = 2);
    assert_eq!(support(&mut k1, &l, 200), [1]);
    assert_eq!(support(&mut k2, &l, 500), [1, 2]);
}

#[test]
fn top_k_top_p_min_p_keep_the_right_sets() {
    // Probabilities 0.5, 0.25, 0.125, 0.0625, ... (logits ln 2 apart), shuffled over ids.
    let ln2 = std::f32::consts::LN_2;
    let order = [3usize, 0, 5, 1, 4, 2];
    let mut l = [0f32; 6];
    for (rank, &id) in order.iter().enumerate() {
        l[id] = -(rank as f32) * ln2;
    }
    let sorted_ids = |n: usize| {
        let mut v: Vec<u32> = order[..n].iter().map(|&i| i as u32).collect();
        v.sort_unstable();
        v
    };
    let mut k3 = sampler(|p| p.top_k = 3);
    assert_eq!(support(&mut k3, &l, 2000), sorted_ids(3));
    // Masses before each rank: 0, .508, .762, .889, .952, .984 (of 63/32).
    let mut p = sampler(|p| p.top_p = 0.7);
    assert_eq!(support(&mut p, &l, 2000), sorted_ids(2));
    let mut p = sampler(|p| p.top_p = 0.8);
    assert_eq!(support(&mut p, &l, 2000), sorted_ids(3));
    let mut p = sampler(|p| p.top_p = 0.5);
    assert_eq!(support(&mut p, &l, 2000), sorted_ids(1));
    let mut p = sampler(|p| p.top_p = 0.51);
    assert_eq!(support(&mut p, &l, 2000), sorted_ids(2));
    // min_p 0.2: keep p >= 0.2 * p_max, i.e. ranks 0..=2 (1, 1/2, 1/4 of the top).
    let mut m = sampler(|p| p.min_p = 0.2);
    assert_eq!(support(&mut m, &l, 2000), sorted_ids(3));
    // All three: top_k 5, then top_p 0.9 keeps 3 (masses before: 0, .516, .774, .903), then
    // min_p 0.3 keeps 2.
    let mut all = sampler(|p| {
        p.top_k = 5;
        p.top_p = 0.9;
        p.min_p = 0.3;
    });
    assert_eq!(support(&mut all, &l, 2000), sorted_ids(2));
}

#[test]
fn repetition_penalty_follows_transformers() {
    let mut s = sampler(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 2.0;
    });
    // Positive logit divided: 2.0 -> 1.0 < 1.9.
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[0]).unwrap(), 1);
    // Negative logit multiplied: -1.0 -> -2.0 < -1.5; a repeated id is penalized once.
    assert_eq!(s.sample(&[-1.0, -1.5, -3.0], &[0, 0, 0]).unwrap(), 1);
    assert_eq!(s.sample(&[-1.0, -1.9, -3.0], &[0, 0, 0]).unwrap(), 1);
    assert_eq!(s.sample(&[-1.0, -2.1, -3.0], &[0, 0]).unwrap(), 0);
    // Without context nothing changes.
    assert_eq!(s.sample(&[2.0, 1.9, -1.0], &[]).unwrap(), 0);
    let err = s.sample(&[1.0, 2.0], &[5]).unwrap_err();
    assert!(
        matches!(err, ChatError::TokenOutOfRange { id: 5, len: 2 }),
        "{err}"
    );
    // Penalty below 1 favors repeats.
    let mut s = sampler(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 0.5;
    });
    assert_eq!(s.sample(&[1.9, 1.0], &[1]).unwrap(), 1);
}

#[test]
fn frequencies_follow_softmax() {
    let l = [1.0f32, 0.5, -0.5, 2.0, 0.0, -3.0, 1.5, f32::NEG_INFINITY];
    for t in [1.0f32, 0.7, 1.8] {
        let want = softmax(&l, f64::from(t));
        let mut s = sampler(|p| {
            p.temperature = t;
            p.seed = 2024;
        });
        let draws = 200_000;
        let mut counts = [0usize; 8];
        for _ in 0..draws {
            counts[s.sample(&l, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(counts[7], 0, "a -inf logit is never drawn");
        for (i, (&c, &p)) in counts.iter().zip(&want).enumerate() {
            let freq = c as f64 / draws as f64;
            // 5 standard deviations of a binomial frequency.
            let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9;
            assert!(
                (freq - p).abs() <= tol,
                "T={t} token {i}: frequency {freq}, softmax {p}"
            );
        }
    }
}

#[test]
fn top_p_renormalizes_over_the_nucleus() {
    let l = [2.0f32, 1.0, 0.0, -1.0];
    let full = softmax(&l, 1.0);
    // Nucleus of 0.8: tokens 0 and 1 (masses before: 0, .64, .88).
    let mut s = sampler(|p| {
        p.top_p = 0.8;
        p.seed = 9;
    });
    let draws = 100_000;
    let mut c0 = 0;
    for _ in 0..draws {
        match s.sample(&l, &[]).unwrap() {
            0 => c0 += 1,
            1 => {}
            other => panic!("token {other} is outside the nucleus"),
        }
    }
    let want = full[0] / (full[0] + full[1]);
    let freq = f64::from(c0) / f64::from(draws);
    assert!((freq - want).abs() < 0.01, "{freq} vs {want}");
}

#[test]
fn large_flat_vocabulary() {
    // A flat distribution over 128k tokens exercises the ordering deep into the list.
    let mut s = sampler(|p| {
        p.temperature = 50.0;
        p.top_p = 0.99;
    });
    let l = logits(128_256, 5);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let id = s.sample(&l, &[]).unwrap();
        assert!((id as usize) < l.len());
        seen.insert(id);
    }
    assert!(seen.len() > 40, "{}", seen.len());
}

/// The sampler's pipeline done the obvious way: a full sort, then top-k, top-p and min-p on the
/// sorted list, then the draw in id order.
fn reference_pick(logits: &[f32], p: &SamplingParams, r: u64) -> u32 {
    let (mut weights, mut sorted) = (Vec::new(), Vec::new());
    assert!(fill_weights(
        &mut weights,
        &mut sorted,
        logits,
        p.temperature
    ));
    sorted.sort_by(order);
    if p.top_k > 0 {
        sorted.truncate(p.top_k);
    }
    let total = mass(&sorted);
    let target = (total as f64 * f64::from(p.top_p)) as u128;
    if p.top_p < 1.0 {
        let mut before = 0u128;
        let mut keep = 0;
        for (i, c) in sorted.iter().enumerate() {
            if i > 0 && before >= target {
                break;
            }
            before += u128::from(c.w);
            keep = i + 1;
        }
        sorted.truncate(keep);
    }
    let threshold = f64::from(p.min_p) * WEIGHT_ONE as f64;
    sorted.retain(|c| c.w as f64 >= threshold);
    let mut kept: Vec<Candidate> = sorted;
    kept.sort_by_key(|c| c.id);
    let u = scale_to(r, mass(&kept));
    let mut cum = 0u128;
    for c in &kept {
        cum += u128::from(c.w);
        if cum > u {
            return c.id;
        }
    }
    unreachable!("u is below the kept mass")
}

#[test]
fn selection_pipeline_equals_the_full_sort_reference() {
    let mut rng = splitmix64(77);
    for case in 0..300u64 {
        let n = [3, 50, 1000, 20_000][case as usize % 4];
        // Coarse logits make many exact ties; some are masked.
        let l: Vec<f32> = (0..n)
            .map(|_| match rng.next_u64() % 10 {
                0 => f32::NEG_INFINITY,
                x if x < 4 => (rng.next_u64() % 8) as f32 * 0.5,
                _ => (next_f64(&mut rng) * 12.0 - 6.0) as f32,
            })
            .collect();
        if l.iter().all(|&x| x == f32::NEG_INFINITY) {
            continue;
        }
        let p = SamplingParams {
            temperature: [0.3, 1.0, 2.5][case as usize % 3],
            top_k: [0, 1, 5, 40, 2000, 100_000][(case / 3) as usize % 6],
            top_p: [1.0, 0.9, 0.5, 0.05, 0.999][(case / 5) as usize % 5],
            min_p: [0.0, 0.05, 0.5][(case / 7) as usize % 3],
            seed: case,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p.clone()).unwrap();
        let mut r = splitmix64(case);
        for _ in 0..5 {
            assert_eq!(
                s.sample(&l, &[]).unwrap(),
                reference_pick(&l, &p, r.next_u64()),
                "case {case}: {p:?}"
            );
        }
    }
}

#[test]
fn scale_to_is_exact() {
    assert_eq!(scale_to(0, 1000), 0);
    assert_eq!(scale_to(u64::MAX, 1000), 999);
    assert_eq!(scale_to(1 << 63, 1000), 500);
    let n = (3u128 << 80) + 12345;
    assert_eq!(scale_to(1 << 63, n), n / 2);
    assert_eq!(scale_to(u64::MAX, n), n - (n >> 64) - 1);
}

#[test]
fn bad_logits_are_errors() {
    let mut s = sampler(|_| {});
    assert!(matches!(s.sample(&[], &[]), Err(ChatError::EmptyLogits)));
    let err = s.sample(&[0.0, f32::NAN], &[]).unwrap_err();
    assert!(
        matches!(
            err,
            ChatError::BadLogit {
                index: 1,
                len: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        s.sample(&[f32::INFINITY], &[]),
        Err(ChatError::BadLogit { index: 0, .. })
    ));
    let all_masked = [f32::NEG_INFINITY; 3];
    assert!(matches!(
        s.sample(&all_masked, &[]),
        Err(ChatError::NoCandidates { len: 3 })
    ));
    let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
    assert!(matches!(
        g.sample(&all_masked, &[]),
        Err(ChatError::NoCandidates { len: 3 })
    ));
}

#[test]
fn validation_errors_name_the_parameter() {
    let check = |f: fn(&mut SamplingParams), name: &str| {
        let mut p = SamplingParams::default();
        f(&mut p);
        let err = Sampler::new(p).unwrap_err();
        assert!(
            matches!(err, ChatError::InvalidSampling { name: n, .. } if n == name),
            "{err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    };
    check(|p| p.temperature = -0.1, "temperature");
    check(|p| p.temperature = f32::NAN, "temperature");
    check(|p| p.temperature = f32::INFINITY, "temperature");
    check(|p| p.top_p = 0.0, "top_p");
    check(|p| p.top_p = 1.01, "top_p");
    check(|p| p.top_p = f32::NAN, "top_p");
    check(|p| p.min_p = -0.01, "min_p");
    check(|p| p.min_p = 1.5, "min_p");
    check(|p| p.min_p = f32::NAN, "min_p");
    check(|p| p.repetition_penalty = 0.0, "repetition_penalty");
    check(|p| p.repetition_penalty = -1.0, "repetition_penalty");
    check(|p| p.repetition_penalty = f32::NAN, "repetition_penalty");
    // Edges that are allowed.
    for f in [
        |p: &mut SamplingParams| p.temperature = 0.0,
        |p: &mut SamplingParams| p.top_p = 1.0,
        |p: &mut SamplingParams| p.min_p = 0.0,
        |p: &mut SamplingParams| p.min_p = 1.0,
        |p: &mut SamplingParams| p.top_k = 0,
    ] {
        let mut p = SamplingParams::default();
        f(&mut p);
        p.validate().unwrap();
    }
    let e = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sampling parameter temperature = -1 is invalid: it must be a finite number >= 0 (0 = greedy)"
    );
}

#[test]
fn generation_defaults_map_onto_params() {
    let d = GenerationDefaults {
        do_sample: Some(true),
        temperature: Some(0.6),
        top_p: Some(0.9),
        top_k: Some(50),
        repetition_penalty: Some(1.1),
        max_new_tokens: Some(64),
    };
    let p = SamplingParams::from_generation_defaults(&d);
    assert_eq!(
        (p.temperature, p.top_p, p.top_k, p.max_tokens),
        (0.6, 0.9, 50, 64)
    );
    assert!((p.repetition_penalty - 1.1).abs() < 1e-6);
    let greedy = SamplingParams::from_generation_defaults(&GenerationDefaults {
        do_sample: Some(false),
        ..d
    });
    assert_eq!(greedy.temperature, 0.0);
    assert_eq!(
        SamplingParams::from_generation_defaults(&GenerationDefaults::default()),
        SamplingParams::default()
    );
}

#[test]
fn sample_masked_draws_only_allowed_ids() {
    let l = logits(100, 7);
    // Allowed: every id whose bit is set in a sparse bitset that leaves out the argmax.
    let best = argmax(&l).unwrap();
    let allowed_ids: Vec<u32> = (0..100).filter(|&i| i % 7 == 3 && i != best).collect();
    let mut bits = vec![0u32; 4];
    for &i in &allowed_ids {
        bits[i as usize / 32] |= 1 << (i % 32);
    }
    let mut greedy = sampler(|p| p.temperature = 0.0);
    let g = greedy.sample_masked(&l, &[], &bits).unwrap();
    let expected = *allowed_ids
        .iter()
        .max_by(|&&a, &&b| l[a as usize].total_cmp(&l[b as usize]).then(b.cmp(&a)))
        .unwrap();
    assert_eq!(g, expected);
    let mut s = sampler(|p| p.seed = 3);
    for _ in 0..200 {
        let id = s.sample_masked(&l, &[], &bits).unwrap();
        assert!(allowed_ids.contains(&id), "{id} is not allowed");
    }
    let err = s.sample_masked(&l, &[], &[0; 4]).unwrap_err().to_string();
    assert!(err.contains("allows none of the 100 tokens"), "{err}");
}

#[test]
fn presence_and_frequency_penalties_follow_openai_over_drawn_tokens() {
    let logits = [1.0f32, 0.9, 0.0];
    let run = |presence: f32, frequency: f32| {
        let mut s = sampler(|p| {
            p.temperature = 0.0;
            p.presence_penalty = presence;
            p.frequency_penalty = frequency;
        });
        // The context (the prompt) does not count: only what this sampler drew.
        (0..5)
            .map(|_| s.sample(&logits, &[0, 0, 0]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(0.0, 0.0), [0, 0, 0, 0, 0]);
    // Frequency: each draw lowers the token by 2 again.
    assert_eq!(run(0.0, 2.0), [0, 1, 2, 0, 1]);
    // Presence: once drawn, lowered by 2 once, however often.
    assert_eq!(run(2.0, 0.0), [0, 1, 2, 0, 0]);
}

#[test]
fn logit_bias_moves_the_draw_and_logprobs_see_it() {
    let logits = [1.0f32, 0.9, 0.0, -1.0];
    let mut s = sampler(|p| {
        p.temperature = 0.0;
        p.logit_bias = vec![(3, 100.0), (0, -100.0)];
    });
    let (id, lp) = s.sample_with_logprobs(&logits, &[], Some(2)).unwrap();
    assert_eq!(id, 3);
    let lp = lp.unwrap();
    assert_eq!(lp.id, 3);
    assert_eq!(lp.top[0].0, 3);
    assert_eq!(lp.top[1].0, 1);
    assert!(lp.logprob <= 0.0 && lp.logprob > -1e-3, "{lp:?}");
    // Without a request, no log-probabilities.
    assert!(
        s.sample_with_logprobs(&logits, &[], None)
            .unwrap()
            .1
            .is_none()
    );
    // A bias past the vocabulary is an error, not a panic.
    let mut s = sampler(|p| p.logit_bias = vec![(4, 1.0)]);
    assert!(matches!(
        s.sample(&logits, &[]),
        Err(ChatError::TokenOutOfRange { id: 4, len: 4 })
    ));
    for f in [
        (|p: &mut SamplingParams| p.presence_penalty = 2.5) as fn(&mut SamplingParams),
        |p| p.frequency_penalty = -3.0,
        |p| p.logit_bias = vec![(0, 101.0)],
    ] {
        let mut p = SamplingParams::default();
        f(&mut p);
        assert!(Sampler::new(p).is_err());
    }
}
