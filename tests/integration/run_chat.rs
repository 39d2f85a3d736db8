//! `bitnet run` and `bitnet chat` against transformers' greedy generations, with sampling, stops, piped
//! conversations and bad input.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use bitnet_chat::Tokenizer;
use bitnet_format::BitnetFile;
use serde_json::Value;

use crate::util::*;

fn run_json(args: &[&str]) -> Value {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The tokenizer embedded in a converted file, as the runner loads it.
fn tokenizer_of(file: &Path) -> Tokenizer {
    Tokenizer::from_file(&BitnetFile::open(file).unwrap()).unwrap()
}

/// Greedy `run` of every prompt of `fixtures/{name}.generate.json` on `file`: the prompt's ids, the
/// generated ids (up to the first stop id, where the runner stops), and the streamed text, which must
/// be the tokenizer's decode of those ids, as JSON and on stdout.
fn check_greedy_run(name: &str, file: &Path) {
    let info = inspect_json(file);
    let stops = ids(&info["tokenizer"]["eos_token_ids"]);
    let tokenizer = tokenizer_of(file);
    let oracle: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join(format!("fixtures/{name}.generate.json"))).unwrap(),
    )
    .unwrap();
    for case in oracle["prompts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["generated_ids"]);
        let prompt: Vec<u32> = tokenizer.encode_prompt(text).unwrap();
        let prompt: Vec<u64> = prompt.into_iter().map(u64::from).collect();
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{name}: {text}");
        let args = [
            file.to_str().unwrap(),
            "-p",
            text,
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--head",
            "exact",
        ];
        let v = run_json(&args);
        assert_eq!(
            v["prompt_tokens"].as_u64().unwrap() as usize,
            prompt.len(),
            "{name}: {text}"
        );
        // transformers generated without stopping; the runner stops at the first end-of-text/turn token.
        let end = want
            .iter()
            .position(|t| stops.contains(t))
            .unwrap_or(want.len());
        assert_eq!(ids(&v["ids"]), want[..end].to_vec(), "{name}: {text}");
        let reason = if end < want.len() { "eos" } else { "length" };
        assert_eq!(v["stop_reason"], reason, "{name}: {text}");

        let got: Vec<u32> = want[..end].iter().map(|&id| id as u32).collect();
        let decoded = tokenizer.decode(&got).unwrap();
        assert_eq!(v["text"], decoded.as_str(), "{name}: {text}");
        if end == want.len() {
            // transformers' own decode of the same ids.
            assert_eq!(v["text"], case["generated_text"], "{name}: {text}");
        }
        let mut streamed = vec!["run"];
        streamed.extend_from_slice(&args);
        let out = ok(&streamed);
        let out = if decoded.ends_with('\n') {
            &out[..]
        } else {
            out.strip_suffix('\n').unwrap()
        };
        assert_eq!(out, decoded, "{name}: {text}: stdout");
    }
}

#[test]
fn greedy_run_equals_transformers_generate() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES.into_iter().chain(LAYOUT_FIXTURES) {
        let file = convert(&fixture(name), tmp.path(), &[]);
        check_greedy_run(name, &file);
    }
}

#[test]
fn sentencepiece_checkpoint_with_its_own_tokenizer_json_runs_the_same() {
    // 1bitLLM's Hub repositories ship transformers' tokenizer.json beside tokenizer.model; the fixture
    // does not. With the reference file added, it is embedded as it is, and the ids stay the same.
    let tmp = tempfile::tempdir().unwrap();
    let name = "bitnet-1bitllm-tiny";
    let dir = copy_fixture(name, tmp.path());
    std::fs::copy(
        repo_root().join(format!("fixtures/{name}.tokenizer.json-reference")),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let out = mkdir(tmp.path().join("out"));
    let file = convert(&dir, &out, &[]);
    let info = inspect_json(&file);
    let t = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tokenizer.json")
        .unwrap();
    assert_eq!(t["source"], "tokenizer.json");
    assert_eq!(info["tokenizer"]["bos_token_id"], 1);
    assert_eq!(info["tokenizer"]["add_bos_token"], true);
    check_greedy_run(name, &file);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-untied-sharded"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    let args = |seed: &str| {
        run_json(&[
            f,
            "-p",
            "Once upon a time",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-tokens",
            "24",
        ])
    };
    let (a, b, c) = (args("42"), args("42"), args("43"));
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(a["text"], b["text"]);
    assert_ne!(
        a["ids"], c["ids"],
        "another seed should sample another continuation"
    );
}

#[test]
fn draft_ngram_gives_the_plain_text_and_reports_its_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&repo_root().join("fixtures/demo"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    let prompt =
        "The economy is strong. The economy is strong because the people are strong. The economy";
    let base = [f, "-p", prompt, "--temperature", "0", "--max-tokens", "40"];
    let plain = run_json(&base);
    assert!(plain["draft"].is_null());
    let mut args = base.to_vec();
    args.extend(["--draft", "ngram", "--draft-max", "6"]);
    let drafted = run_json(&args);
    assert_eq!(drafted["ids"], plain["ids"]);
    assert_eq!(drafted["text"], plain["text"]);
    let d = &drafted["draft"];
    assert!(d["accepted"].as_u64().unwrap() > 0, "{d}");
    assert!(d["passes"].as_u64().unwrap() < 40, "{d}");
    // --stats names the figures; a draft setting without --draft is refused by the flag parser.
    args.insert(0, "run");
    args.push("--stats");
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("proposed tokens accepted"),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", f, "-p", "x", "--draft-max", "4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--draft"), "{}", stderr(&o));
    let o = run(&[
        "run",
        f,
        "-p",
        "x",
        "--draft",
        "ngram",
        "--draft-ngram",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--draft-ngram 1"), "{}", stderr(&o));
}

#[test]
fn stop_strings_end_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    let full = run_json(&[
        f,
        "-p",
        "The answer to question 42 is",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
    ]);
    let text = full["text"].as_str().unwrap();
    let stop: String = text.chars().skip(3).take(2).collect();
    let cut = run_json(&[
        f,
        "-p",
        "The answer to question 42 is",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--stop",
        &stop,
    ]);
    assert_eq!(cut["stop_reason"], "stop_string");
    assert_eq!(
        cut["text"].as_str().unwrap(),
        &text[..text.find(&stop).unwrap()]
    );
}

#[test]
fn run_reads_stdin_and_streams_text() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-llama3-tiny"), tmp.path(), &[]);
    let mut child = bitnet()
        .args([
            "run",
            file.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "5",
            "--stats",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("The capital of France is".as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    let e = stderr(&o);
    assert!(
        e.contains("prefill") && e.contains("tok/s") && e.contains("first token after"),
        "{e}"
    );
}

fn chat(file: &str, input: &[u8], extra: &[&str]) -> std::process::Output {
    let mut child = bitnet()
        .args(["chat", file, "--temperature", "0", "--max-tokens", "6"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn piped_chat_keeps_history_reuses_the_cache_and_resets() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let o = chat(
        file.to_str().unwrap(),
        b"Hello there\nWhat is two and two?\n/stats\n/reset\nHello there\n/exit\nnever read\n",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let statuses: Vec<&str> = e.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(statuses.len(), 4, "three answers and /stats: {e}");
    assert!(statuses[0].contains("0 reused"), "{e}");
    assert!(
        !statuses[1].contains(" 0 reused"),
        "the second turn reuses the first from the cache: {e}"
    );
    assert!(e.contains("conversation reset"));
    // The first answer is what `run --chat` gives for the same message, and after /reset the same first
    // message gives it again.
    let first = run_json(&[
        file.to_str().unwrap(),
        "-p",
        "Hello there",
        "--chat",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
    ]);
    let first = format!("{}\n", first["text"].as_str().unwrap());
    let out = stdout(&o);
    assert!(
        out.starts_with(&first)
            && out.ends_with(&format!("\n{first}"))
            && out.len() > 2 * first.len(),
        "{out:?} vs {first:?}"
    );
}

#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    // The fixture's context is 256 tokens: a few long messages overflow it.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(6);
    let input = format!("{long}\n{long}\n{long}\n{long}\n");
    let o = chat(file.to_str().unwrap(), input.as_bytes(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dropped the oldest turn"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stderr(&o).lines().filter(|l| l.starts_with('[')).count(),
        4,
        "every message still got an answer"
    );
}

#[test]
fn chat_survives_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let huge = "word ".repeat(400);
    let input = [
        b"\xff\xfe not utf-8\n".as_slice(),
        huge.as_bytes(),
        b"\n/nonsense\nHello\n",
    ]
    .concat();
    let o = chat(file.to_str().unwrap(), &input, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("not valid UTF-8")
            && e.contains("too long for the context")
            && e.contains("unknown command"),
        "{e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.starts_with('[')).count(),
        1,
        "the good line was answered"
    );
}

#[test]
fn bad_run_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = convert(&fixture("bitnet-tiny-tied"), tmp.path(), &[]);
    let f = file.to_str().unwrap();
    let long = "word ".repeat(400);
    for (args, needle) in [
        (vec!["run", f, "-p", "  "], "the prompt is empty"),
        (
            vec!["run", f, "-p", "hi", "--temperature", "-1"],
            "temperature",
        ),
        (vec!["run", f, "-p", "hi", "--top-p", "1.5"], "top_p"),
        (vec!["run", f, "-p", "hi", "--top-p", "0"], "top_p"),
        (vec!["run", f, "-p", &long], "context holds 256"),
        (
            vec!["run", f, "-p", "hi", "--threads", "0"],
            "--threads must be at least 1",
        ),
        (
            vec!["run", "/no/such.bitnet", "-p", "hi"],
            "/no/such.bitnet",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let mut child = bitnet()
        .args(["run", f])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"caf\xe9 au lait")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));
}

#[test]
fn files_without_tokenizer_or_template() {
    let tmp = tempfile::tempdir().unwrap();
    let no_tok = copy_fixture("bitnet-tiny-tied", &mkdir(tmp.path().join("a")));
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    let f = convert(&no_tok, &no_tok, &[]);
    let o = run(&["run", f.to_str().unwrap(), "-p", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no tokenizer.json"), "{}", stderr(&o));

    let no_tpl = copy_fixture("bitnet-tiny-tied", &mkdir(tmp.path().join("b")));
    let tc = no_tpl.join("tokenizer_config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&tc).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&tc, serde_json::to_vec(&v).unwrap()).unwrap();
    let f = convert(&no_tpl, &no_tpl, &[]);
    let o = run(&[
        "run",
        f.to_str().unwrap(),
        "-p",
        "hi",
        "--chat",
        "--max-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no chat template; using the BitNet b1.58 2B4T one"),
        "{}",
        stderr(&o)
    );
}
