//! `bitnet bench` on a fixture: the JSON keys, both backends, every kernel set, and bad flags.

use serde_json::Value;

use crate::util::*;

const KEYS: &[&str] = &[
    "prefill_tok_s",
    "decode_tok_s",
    "bytes_per_token",
    "bandwidth_gb_s",
    "roof_fraction",
    "peak_rss_bytes",
    "load_s",
    "threads",
    "kernel",
];

/// config.json of the tied fixture the bench tests measure.
fn tiny_tied_config() -> Value {
    let text = std::fs::read_to_string(fixture("bitnet-tiny-tied").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bench_json(file: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        file.to_str().unwrap(),
        "--json",
        "--repeat",
        "1",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

#[test]
fn bench_reports_every_figure_for_every_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(
        &fixture("bitnet-tiny-tied"),
        tmp.path(),
        &["--lm-head", "int8"],
    );
    for kernel in ["scalar", "avx2", "avxvnni", "avxvnni-evex", "avx512vnni"] {
        let o = run(&[
            "bench",
            file.to_str().unwrap(),
            "--json",
            "--repeat",
            "1",
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--kernel",
            kernel,
        ]);
        if !o.status.success() {
            // A CPU without this kernel set must say so, not crash.
            assert_eq!(o.status.code(), Some(2));
            assert!(stderr(&o).contains("cannot run"), "{}", stderr(&o));
            continue;
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        for k in KEYS {
            assert!(!v[k].is_null(), "{kernel}: missing {k} in {v}");
        }
        assert_eq!(v["kernel"], kernel);
        assert!(
            v["decode_tok_s"].as_f64().unwrap() > 0.0 && v["prefill_tok_s"].as_f64().unwrap() > 0.0
        );
        // Positive and finite; its size says nothing on a loaded machine, where the probe of a tiny model's
        // few kilobytes can be preempted (it once measured under 0.1 GB/s with builds running).
        let bw = v["bandwidth_gb_s"].as_f64().unwrap();
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
        // A tied model's int8 copy sits beside the exact head: rescored by default, a few rows per token.
        assert_eq!(v["lm_head"], "rescored");
        let rows = v["rescored_rows_per_token"].as_f64().unwrap();
        assert!((1.0..512.0).contains(&rows), "{rows}");
        // Keys and values read per decoded token: f32, both, every layer and kv head, over the average
        // context of the 4 generated tokens after the 8-token prompt (8 + 5 / 2 positions).
        let c = tiny_tied_config();
        let n = |k: &str| c[k].as_f64().unwrap();
        let hd = n("hidden_size") / n("num_attention_heads");
        let want = 2.0 * 4.0 * n("num_hidden_layers") * n("num_key_value_heads") * hd * 10.5;
        assert_eq!(v["kv_bytes_per_token"].as_f64().unwrap(), want);
        assert!(
            v["roof_fraction_with_kv"].as_f64().unwrap() > v["roof_fraction"].as_f64().unwrap()
        );
    }
}

#[test]
fn bench_measures_the_head_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(
        &fixture("bitnet-tiny-tied"),
        tmp.path(),
        &["--lm-head", "int8"],
    );
    for head in ["exact", "int8", "rescored"] {
        let v = bench_json(&file, &["--head", head]);
        assert_eq!(v["lm_head"], head);
        assert_eq!(v["rescored_rows_per_token"].is_null(), head != "rescored");
    }
    // The exact file has no int8 head to rescore: a clear error naming the flag.
    let dir = tmp.path().join("exact");
    std::fs::create_dir(&dir).unwrap();
    let exact = convert(&fixture("bitnet-tiny-tied"), &dir, &[]);
    let o = run(&["bench", exact.to_str().unwrap(), "--head", "rescored"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--head rescored"), "{}", stderr(&o));
}

#[test]
fn prefill_only_runs_with_the_warm_up() {
    // The warm-up decodes a token only when the session has room for one.
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let o = run(&[
        "bench",
        file.to_str().unwrap(),
        "--json",
        "--repeat",
        "1",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["warmup"], 1);
}

#[test]
fn both_backends_give_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-untied-sharded"), tmp.path(), &[]);
    let v = bench_json(
        &file,
        &["--backend", "both", "--threads", "1", "--warmup", "2"],
    );
    // One shape whatever the flags: the packed figures at the top, the reference's beside them.
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["backend"], "packed");
    assert_eq!(v["reference"]["backend"], "reference");
    // The warm-up count reaches both children (and is reported, as it shapes the figures).
    assert_eq!(v["warmup"], 2);
    assert_eq!(v["reference"]["warmup"], 2);
    assert!(v["packed_vs_reference"]["decode_speedup"].as_f64().unwrap() > 0.0);
    assert!(v["packed_vs_reference"]["peak_rss_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_bench_flags_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["bench", f, "--threads", "0"],
            "--threads must be at least 1",
        ),
        (
            vec!["bench", f, "--kernel", "sparc"],
            "unknown kernel `sparc`",
        ),
        (
            vec!["bench", f, "--prompt-tokens", "100000"],
            "exceed the model's context",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    if cfg!(target_arch = "x86_64") {
        let o = run(&["bench", f, "--kernel", "neon"]);
        assert_eq!(o.status.code(), Some(2));
        let e = stderr(&o);
        assert!(
            e.contains("cannot run the `neon` kernels") && e.contains("it can run: "),
            "{e}"
        );
    }
    let o = bitnet()
        .args([
            "bench",
            f,
            "--repeat",
            "1",
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "2",
        ])
        .env("BITNET_KERNEL", "sparc")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("BITNET_KERNEL"), "{}", stderr(&o));
    let o = run(&[
        "bench",
        f,
        "--repeat",
        "1",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--threads",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("more than this machine's"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ab_mode_alternates_two_setups_and_reports_per_round_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(
        &fixture("bitnet-tiny-tied"),
        tmp.path(),
        &["--lm-head", "int8"],
    );
    let v = bench_json(
        &file,
        &[
            "--head",
            "rescored",
            "--against-head",
            "exact",
            "--rounds",
            "3",
        ],
    );
    let rounds = v["rounds"].as_array().unwrap();
    let orders: Vec<&str> = rounds
        .iter()
        .map(|r| r["order"].as_str().unwrap())
        .collect();
    assert_eq!(orders, ["ab", "ba", "ab"]);
    for r in rounds {
        assert_eq!(
            (r["a"]["lm_head"].as_str(), r["b"]["lm_head"].as_str()),
            (Some("rescored"), Some("exact"))
        );
        let want =
            r["b"]["decode_tok_s"].as_f64().unwrap() / r["a"]["decode_tok_s"].as_f64().unwrap();
        assert!(
            (r["decode_ratio"].as_f64().unwrap() - want).abs() < 1e-9,
            "{r}"
        );
    }
    // The summary is the median of the rounds.
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|r| r["decode_ratio"].as_f64().unwrap())
        .collect();
    ratios.sort_by(f64::total_cmp);
    assert_eq!(v["decode_ratio"]["median"].as_f64(), Some(ratios[1]));
    assert_eq!(v["decode_ratio"]["min"].as_f64(), Some(ratios[0]));
    assert_eq!(
        (v["a"]["lm_head"].as_str(), v["b"]["lm_head"].as_str()),
        (Some("rescored"), Some("exact"))
    );
    // Another build as B: this binary by another path works; a missing one is a clear error.
    let copy = tmp.path().join("bitnet-b");
    std::fs::copy(env!("CARGO_BIN_EXE_bitnet"), &copy).unwrap();
    let v = bench_json(
        &file,
        &["--against-binary", copy.to_str().unwrap(), "--rounds", "1"],
    );
    assert!(v["b"]["label"].as_str().unwrap().contains("built"), "{v}");
    let o = run(&[
        "bench",
        file.to_str().unwrap(),
        "--against-binary",
        "/nonexistent/bitnet",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--against-binary /nonexistent/bitnet"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_rescored_heads_bytes_include_the_rows_it_recomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(
        &fixture("bitnet-tiny-tied"),
        tmp.path(),
        &["--lm-head", "int8"],
    );
    let i = bench_json(&file, &["--head", "int8"]);
    let r = bench_json(&file, &["--head", "rescored"]);
    let rows = r["rescored_rows_per_token"].as_f64().unwrap();
    assert!(rows >= 1.0, "{r}");
    // The tied head's exact rows are the bf16 embedding's: hidden_size x 2 bytes each.
    let row_bytes = 2.0 * tiny_tied_config()["hidden_size"].as_f64().unwrap();
    let want = i["bytes_per_token"].as_u64().unwrap() as f64 + (rows * row_bytes).round();
    assert_eq!(
        r["bytes_per_token"].as_u64().unwrap() as f64,
        want,
        "{i}\n{r}"
    );
}
