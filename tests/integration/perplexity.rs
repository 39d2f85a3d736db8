//! `bitnet perplexity` against the perplexity transformers computes with the same definition
//! (`fixtures/perplexity_oracle.py`, `fixtures/train_demo.py oracle`).

use serde_json::Value;

use crate::util::*;

fn oracle(name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(repo_root().join(format!("fixtures/{name}.perplexity.json"))).unwrap(),
    )
    .unwrap()
}

/// Runs `bitnet perplexity` on the converted fixture with the oracle's text and context.
fn measure(name: &str, heads: &str) -> (Value, Value) {
    let want = oracle(name);
    let tmp = tempfile::tempdir().unwrap();
    // A tied model's int8 head is a copy beside the exact one; an untied model's replaces it.
    let flags: &[&str] = if heads.contains("int8") {
        &["--lm-head", "int8"]
    } else {
        &[]
    };
    let file = convert(&fixture(name), tmp.path(), flags);
    let text = repo_root().join(want["text_file"].as_str().unwrap());
    let ctx = want["ctx"].as_u64().unwrap().to_string();
    let got: Value = serde_json::from_str(&ok(&[
        "perplexity",
        file.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        &ctx,
        "--head",
        heads,
        "--json",
    ]))
    .unwrap();
    (want, got)
}

fn check(name: &str, want: &Value, got: &Value) {
    assert_eq!(got["text_tokens"], want["text_tokens"], "{name}");
    assert_eq!(got["chunks"], want["chunks"], "{name}");
    let exact = &got["heads"][0];
    assert_eq!(exact["head"], "exact");
    assert_eq!(exact["scored_tokens"], want["scored_tokens"], "{name}");
    let (p, q) = (
        exact["perplexity"].as_f64().unwrap(),
        want["perplexity"].as_f64().unwrap(),
    );
    assert!(
        (p / q - 1.0).abs() < 1e-3,
        "{name}: perplexity {p} against transformers' {q}"
    );
}

#[test]
fn perplexity_agrees_with_transformers_on_a_fixture_and_prices_the_int8_head() {
    let (want, got) = measure("bitnet-tiny-tied", "exact,int8");
    check("bitnet-tiny-tied", &want, &got);
    let int8 = &got["heads"][1];
    assert_eq!(int8["head"], "int8");
    assert_eq!(int8["scored_tokens"], want["scored_tokens"]);
    // The int8 head scores the same tokens a little differently.
    let (e, i) = (
        got["heads"][0]["mean_nll"].as_f64().unwrap(),
        int8["mean_nll"].as_f64().unwrap(),
    );
    assert!(e != i && (e - i).abs() / e < 0.05, "exact {e}, int8 {i}");
}

#[test]
fn perplexity_agrees_with_transformers_on_the_demo_model() {
    let (want, got) = measure("demo", "exact");
    check("demo", &want, &got);
}

#[test]
fn perplexity_refuses_what_it_cannot_score() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = run(&["perplexity", f, "--text", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 2"));
    let missing = tmp.path().join("nope.txt");
    let out = run(&["perplexity", f, "--text", missing.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.txt"));
    let text = repo_root().join("fixtures/perplexity-sample.txt");
    let out = run(&[
        "perplexity",
        f,
        "--text",
        text.to_str().unwrap(),
        "--head",
        "int8",
    ]);
    assert_eq!(out.status.code(), Some(2), "no int8 head in this file");
}
