//! Model files from strangers: crafted headers (the header checksum recomputed, as anyone can) get a clear
//! error naming the field and its limit, quickly, before any large allocation; never an abort or a panic.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

use crate::util::{bitnet, convert, fixture, stderr};

/// Copies the `.bitnet` file `src` to `dst` with its header JSON edited by `edit`, the data section moved
/// so the new header fits, every tensor offset moved with it, and the header checksum recomputed.
pub fn craft(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(src).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (header_len, data_offset) = (u64_at(16), u64_at(24));
    let mut h: Value = serde_json::from_slice(&bytes[64..64 + header_len]).unwrap();
    edit(&mut h);
    let first = serde_json::to_vec(&h).unwrap().len();
    let new_offset = (64 + first + 256).div_ceil(64) * 64;
    for t in h["tensors"].as_array_mut().unwrap() {
        let o = t["offset"].as_u64().unwrap() as usize;
        t["offset"] = json!(o - data_offset + new_offset);
    }
    let hb = serde_json::to_vec(&h).unwrap();
    assert!(64 + hb.len() <= new_offset);
    let mut out = bytes[..16].to_vec();
    out.extend_from_slice(&(hb.len() as u64).to_le_bytes());
    out.extend_from_slice(&(new_offset as u64).to_le_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(&hb));
    out.extend_from_slice(&hb);
    out.resize(new_offset, 0);
    out.extend_from_slice(&bytes[data_offset..]);
    std::fs::write(dst, out).unwrap();
}

/// Runs `bitnet args` and requires exit 2 within a few seconds with every needle in stderr.
fn refused(args: &[&str], needles: &[&str]) {
    let t0 = Instant::now();
    let o = bitnet().args(args).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        t0.elapsed()
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: no {n:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// An edit of a header.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn crafted_dimensions_are_refused_before_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let good = convert(&fixture("demo"), tmp.path(), &[]);
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "context",
            Box::new(|h| h["config"]["max_position_embeddings"] = json!(2_000_000_000u64)),
            vec![
                "config.max_position_embeddings",
                "2000000000 is outside 1..=16777216",
            ],
        ),
        (
            "layers",
            Box::new(|h| h["config"]["num_layers"] = json!(1u64 << 44)),
            vec!["config.num_layers", "outside 1..=1024"],
        ),
        (
            "wrapping heads",
            Box::new(|h| {
                h["config"]["num_heads"] = json!(1u64 << 33);
                h["config"]["head_dim"] = json!(1u64 << 31);
            }),
            vec!["config.num_heads", "outside 1..=1024"],
        ),
        (
            "head_dim",
            Box::new(|h| h["config"]["head_dim"] = json!(1u64 << 32)),
            vec!["config.head_dim"],
        ),
        (
            "kv heads",
            Box::new(|h| h["config"]["num_kv_heads"] = json!(3)),
            vec!["config.num_kv_heads", "does not divide"],
        ),
        (
            "bos",
            Box::new(|h| h["tokenizer"]["bos_token_id"] = json!(1u64 << 31)),
            vec!["tokenizer.bos_token_id", "outside the vocabulary"],
        ),
    ];
    for (name, edit, needles) in cases {
        let bad = tmp
            .path()
            .join(format!("{}.bitnet", name.replace(' ', "-")));
        craft(&good, &bad, edit);
        let p = bad.to_str().unwrap();
        refused(&["inspect", p], &needles);
        refused(&["run", p, "-p", "Hello", "--max-tokens", "2"], &needles);
    }
}

#[test]
fn the_kv_cache_is_sized_by_the_context_used() {
    let tmp = tempfile::tempdir().unwrap();
    let good = convert(&fixture("demo"), tmp.path(), &[]);
    // A valid but very long context: its KV cache would not fit this machine's memory.
    let long = tmp.path().join("long.bitnet");
    craft(&good, &long, |h| {
        h["config"]["max_position_embeddings"] = json!(1u64 << 24)
    });
    let p = long.to_str().unwrap();
    refused(&["run", p, "-p", "Hello"], &["KV cache", "pass --ctx"]);
    // With --ctx it runs, and past the model's context --ctx is refused.
    let o = bitnet()
        .args([
            "run",
            p,
            "-p",
            "Hello",
            "--ctx",
            "64",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let g = good.to_str().unwrap();
    refused(
        &["run", g, "-p", "Hello", "--ctx", "100000"],
        &["--ctx 100000 is more than the model's context of 512"],
    );
    refused(
        &["run", g, "-p", "Hello", "--ctx", "0"],
        &["--ctx must be at least 1"],
    );
}

#[test]
fn escape_sequences_from_files_are_shown_not_obeyed() {
    let tmp = tempfile::tempdir().unwrap();
    let good = convert(&fixture("demo"), tmp.path(), &[]);
    let evil = tmp.path().join("evil.bitnet");
    // An OSC 52 clipboard write and a screen clear in strings the header carries.
    craft(&good, &evil, |h| {
        h["source"]["converter"] = json!("\u{1b}]52;c;aGk=\u{7}evil");
        h["architecture"] = json!("bitnet\u{1b}[2J");
    });
    let o = bitnet()
        .args(["inspect", evil.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out}");
    assert!(out.contains("\\u{1b}]52;c;aGk=\\u{7}evil"), "{out}");
    // An error naming a path with an escape in it.
    let o = bitnet()
        .args(["inspect", "\u{1b}[2Jmissing.bitnet"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        !err.contains('\u{1b}') && err.contains("\\u{1b}[2Jmissing.bitnet"),
        "{err}"
    );
}

/// Copies `src` to `dst` with its embedded tokenizer.json replaced by `edit`'s version: the new bytes
/// go at the end of the file, and the tokenizer's directory entry (offset, length, checksum) follows.
pub fn craft_tokenizer(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(src).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&bytes[64..64 + u64_at(16)]).unwrap();
    let name = h["tokenizer"]["tokenizer_json"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = h["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap();
    let (off, len) = (
        entry["offset"].as_u64().unwrap() as usize,
        entry["length"].as_u64().unwrap() as usize,
    );
    let mut tok: Value = serde_json::from_slice(&bytes[off..off + len]).unwrap();
    edit(&mut tok);
    let new_tok = serde_json::to_vec(&tok).unwrap();
    let mut body = bytes.clone();
    body.resize(body.len().div_ceil(64) * 64, 0);
    let tail_offset = body.len();
    body.extend_from_slice(&new_tok);
    std::fs::write(dst, &body).unwrap();
    // The header edit moves the data section; the tokenizer's new bytes move with it.
    craft(dst, dst, |h| {
        for t in h["tensors"].as_array_mut().unwrap() {
            if t["name"] == name.as_str() {
                t["offset"] = json!(tail_offset);
                t["length"] = json!(new_tok.len());
                t["shape"] = json!([new_tok.len()]);
                t["sha256"] = json!(bitnet_format::hex(&sha2::Sha256::digest(&new_tok)));
            }
        }
    });
}

#[test]
fn a_token_the_model_cannot_embed_fails_its_request_only() {
    use crate::http::{Server, Stream, streamed_text};
    let tmp = tempfile::tempdir().unwrap();
    let good = convert(&fixture("demo"), tmp.path(), &[]);
    let vocab = crate::util::inspect_json(&good)["config"]["vocab_size"]
        .as_u64()
        .unwrap();
    let evil = tmp.path().join("evil-tokenizer.bitnet");
    // An added token whose id is past the embedding.
    craft_tokenizer(&good, &evil, |t| {
        t["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": vocab + 5, "content": "<|evil|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    });
    let server = Server::start(&evil, &["--parallel", "4", "--threads", "1"]);
    let honest = |content: &str| {
        json!({"messages": [{"role": "user", "content": content}], "max_tokens": 24,
               "temperature": 0, "stream": true})
    };
    let run_honest = |hostile: bool| -> Vec<String> {
        let mut a = Stream::open(
            &server.addr,
            "/v1/chat/completions",
            &[],
            &honest("The economy"),
        );
        let mut b = Stream::open(
            &server.addr,
            "/v1/chat/completions",
            &[],
            &honest("Our nation"),
        );
        assert_eq!((a.status, b.status), (200, 200));
        let first = (a.next_event(), b.next_event());
        assert!(first.0.is_some() && first.1.is_some());
        if hostile {
            // In a chat message the token's text is plain text (the prompt-injection defence); a raw
            // completion prompt is the caller's own, and its special tokens are read as tokens.
            let r = server.post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "hi <|evil|> there"}], "max_tokens": 1}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let r = server.post(
                "/v1/completions",
                &json!({"prompt": "hi <|evil|> there", "max_tokens": 4}),
            );
            assert_eq!(r.status, 400, "{}", r.text());
            let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains("cannot embed"), "{msg}");
        }
        let mut ea = vec![first.0.unwrap()];
        ea.extend(a.rest());
        let mut eb = vec![first.1.unwrap()];
        eb.extend(b.rest());
        vec![streamed_text(&ea), streamed_text(&eb)]
    };
    let baseline = run_honest(false);
    let with_hostile = run_honest(true);
    assert_eq!(baseline, with_hostile, "the honest streams changed");
    assert!(baseline.iter().all(|t| !t.is_empty()));
}

#[test]
fn convert_reads_only_the_checkpoint_and_writes_only_a_regular_file() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let ck = crate::util::copy_fixture("demo", &tmp.path().join("ck"));
    // A chat template that is a link to a file outside the folder is refused, not embedded.
    std::fs::write(tmp.path().join("secret.txt"), "hf_secret").unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("secret.txt"),
        ck.join("chat_template.jinja"),
    )
    .unwrap();
    let out = tmp.path().join("out.bitnet");
    let o = bitnet()
        .args(["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the checkpoint folder"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    std::fs::remove_file(ck.join("chat_template.jinja")).unwrap();
    // The output is never a device: `-o /dev/null -f` is refused and /dev/null stays a device.
    let o = bitnet()
        .args(["convert", ck.to_str().unwrap(), "-o", "/dev/null", "-f"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A temporary file left by a killed conversion of the same output is removed by the next one.
    let stale = tmp.path().join(".out.bitnet.tmp-4000000");
    std::fs::write(&stale, "partial").unwrap();
    let o = bitnet()
        .args(["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "the stale temporary file is still there");
}

#[test]
fn flipped_tensor_bytes_are_caught_before_first_use_and_the_check_is_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(&fixture("demo"), tmp.path(), &[]);
    let state = tmp.path().join("state");
    let run_it = |extra: &[&str]| {
        bitnet()
            .args([
                "run",
                out.to_str().unwrap(),
                "-p",
                "The",
                "--max-tokens",
                "2",
            ])
            .args(extra)
            .env("XDG_STATE_HOME", &state)
            .output()
            .unwrap()
    };
    // A good file runs, and its check is remembered (path, size, time, inode, header).
    let o = run_it(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let remembered = std::fs::read_to_string(state.join("bitnet/verified.json")).unwrap();
    assert!(remembered.contains("demo.bitnet"), "{remembered}");
    // One flipped bit in a weight: refused with the tensor named (a rewrite changes the time, so the
    // remembered check no longer applies).
    let info = crate::util::inspect_json(&out);
    let t = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.2.ffn_down")
        .unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[t["offset"].as_u64().unwrap() as usize + 100] ^= 0x01;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&out, &bytes).unwrap();
    let o = run_it(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("tensor `blk.2.ffn_down` does not match its checksum"),
        "{err}"
    );
    assert!(err.contains("--no-verify"), "{err}");
    // Those who want it can run it anyway.
    let o = run_it(&["--no-verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
