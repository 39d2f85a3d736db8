//! The command line's error output on the common mistakes, as snapshots (`insta`): each cause said once,
//! naming the file, tensor, field or flag, and what to do. A duplicated cause (`x: x: No such file ...:
//! No such file ...`) cannot come back unnoticed. Update with `INSTA_UPDATE=always cargo test --test
//! integration errors` and review the diff.

use std::path::Path;

use crate::util::{bitnet, convert, fixture};

/// Runs `bitnet args` in `dir` (so paths in messages are relative and stable) with empty caches, and
/// returns the exit code and stderr as one text.
fn error_of(dir: &Path, args: &[&str]) -> String {
    let o = bitnet()
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("HF_HOME", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn bitnet");
    let text = format!(
        "$ bitnet {}\nexit {}\n{}",
        args.join(" "),
        o.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&o.stderr)
    );
    // Absolute paths under the temporary folder differ from run to run.
    text.replace(dir.to_str().expect("UTF-8 temp path"), "[TMP]")
}

#[test]
fn the_common_mistakes_say_each_cause_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = tmp.path();
    // A checkpoint folder, a plain folder, and files in formats people confuse with ours.
    std::fs::create_dir(d.join("checkpoint")).unwrap();
    std::fs::write(d.join("checkpoint/config.json"), "{}").unwrap();
    std::fs::create_dir(d.join("notes")).unwrap();
    let mut st = 2u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    std::fs::write(d.join("model.safetensors"), st).unwrap();
    std::fs::write(d.join("model.gguf"), b"GGUF\x03\0\0\0 and then some").unwrap();
    std::fs::write(
        d.join("random.bin"),
        b"\x01\x02\x03\x04\x05\x06\x07\x08 junk",
    )
    .unwrap();
    // A real model file with the exact head only.
    let model = convert(&fixture("demo"), d, &[]);
    std::fs::rename(&model, d.join("demo.bitnet")).unwrap();

    let cases: &[&[&str]] = &[
        &["inspect", "missing.bitnet"],
        &["inspect", "checkpoint"],
        &["inspect", "notes"],
        &["inspect", "model.safetensors"],
        &["inspect", "model.gguf"],
        &["inspect", "random.bin"],
        &["run", "demo.bitnet", "--head", "int8", "-p", "Hello"],
        &["run", "demo.bitnet", "--temperature", "-1", "-p", "Hello"],
        &["run", "nowhere/model", "-p", "Hello"],
        &["convert", "checkpoint", "-o", "demo.bitnet"],
        &["verify", "demo.bitnet"],
    ];
    let text: Vec<String> = cases.iter().map(|args| error_of(d, args)).collect();
    insta::assert_snapshot!("common_mistakes", text.join("\n"));
}
