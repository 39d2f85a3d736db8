//! The converted copies in `~/.cache/bitnet`: one per source commit or folder content, `pull`, `list`
//! and `rm`, the heads of the implicit copy, and an interrupted implicit conversion.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safetensors::tensor::Dtype;
use serde_json::Value;

use crate::hub_download::{COMMIT, Sandbox};
use crate::hub_standin::{HubRepo, StandIn};
use crate::util::*;

fn list_json(sb: &Sandbox) -> Vec<Value> {
    let o = sb.run("http://127.0.0.1:9", &["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str::<Value>(&stdout(&o))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The `.bitnet` files in the store.
fn copies(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sb.store())
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".bitnet"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_ok(sb: &Sandbox, model: &Path, extra: &[&str]) -> String {
    let o = sb
        .cmd("http://127.0.0.1:9")
        .arg("run")
        .arg(model)
        .args(["-p", "Hi", "--max-tokens", "2", "--threads=1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

#[test]
fn pull_list_and_rm() {
    let sb = Sandbox::new();
    let dir = fixture("bitnet-tiny-untied-sharded");
    // A weights file the index does not name is never fetched.
    let extra: &[(&str, &[u8])] = &[("consolidated.safetensors", b"unused")];
    let repo = HubRepo::from_folder("org/sharded", COMMIT, &dir, extra);
    let hub = StandIn::start(vec![HubRepo::from_folder(
        "org/sharded",
        COMMIT,
        &dir,
        extra,
    )]);

    // `convert` downloads too, and records where the weights came from.
    let out = sb.tmp.path().join("out.bitnet");
    let o = sb.run(
        &hub.url,
        &["convert", "org/sharded", "-o", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let info = inspect_json(&out);
    assert_eq!(info["source"]["repo"], "org/sharded");
    assert_eq!(info["source"]["revision"], COMMIT);

    // `pull` asks the Hub again but finds every file in the cache.
    let o = sb.run(&hub.url, &["pull", "org/sharded"]);
    let e = stderr(&o);
    assert!(o.status.success() && e.contains("ready: "), "{e}");
    let shards: Vec<&str> = repo
        .files
        .iter()
        .filter(|f| f.name.starts_with("model-"))
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(shards.len(), 3);
    for s in &shards {
        assert_eq!(hub.gets_of(&repo, s).len(), 1, "{s} was downloaded once");
    }
    assert!(hub.gets_of(&repo, "consolidated.safetensors").is_empty());
    assert!(
        hub.log()
            .iter()
            .filter(|l| l.path.starts_with("/api/"))
            .count()
            >= 2
    );
    run_ok(&sb, &fixture("bitnet-tiny-tied"), &[]);

    let list = list_json(&sb);
    assert_eq!(list.len(), 2, "{list:#?}");
    let by_kind = |k: &str| list.iter().find(|e| e["kind"] == k).unwrap().clone();
    let r = by_kind("repo");
    assert_eq!(r["source"], "org/sharded");
    assert_eq!(r["revision"], COMMIT);
    assert_eq!(r["lm_head"], "int8");
    let path = PathBuf::from(r["path"].as_str().unwrap());
    assert_eq!(
        r["bytes"].as_u64(),
        Some(std::fs::metadata(&path).unwrap().len())
    );
    assert!(r["name"].as_str().unwrap().starts_with("org--sharded-"));
    let f = by_kind("folder");
    let canonical = fixture("bitnet-tiny-tied").canonicalize().unwrap();
    assert_eq!(f["source"], canonical.to_str().unwrap());
    let table = stdout(&sb.run("", &["list"]));
    for needle in [
        "NAME",
        "SOURCE",
        "org/sharded",
        r["name"].as_str().unwrap(),
        &COMMIT[..12],
    ] {
        assert!(table.contains(needle), "`{needle}` in:\n{table}");
    }

    // By source, then by name; the Hugging Face cache is left alone.
    let o = sb.run("", &["rm", "org/sharded"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!path.exists());
    assert!(
        sb.hub()
            .join("models--org--sharded/snapshots")
            .join(COMMIT)
            .is_dir()
    );
    assert_eq!(list_json(&sb).len(), 1);
    let o = sb.run("", &["rm", f["name"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_only(&sb.store(), &[]);
    let o = sb.run("", &["rm", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("nope: no converted model"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn one_copy_per_folder_content_whatever_its_path_or_times() {
    let sb = Sandbox::new();
    let a = copy_fixture("bitnet-tiny-tied", &mkdir(sb.tmp.path().join("a")));
    assert!(run_ok(&sb, &a, &[]).contains("converting "));
    assert!(run_ok(&sb, &a, &[]).contains("using the converted copy"));
    // New modification times, same bytes: the hash says it is the same model.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    for e in std::fs::read_dir(&a).unwrap() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(later).unwrap();
    }
    assert!(run_ok(&sb, &a, &[]).contains("using the converted copy"));
    // A copy elsewhere, too.
    let b = copy_fixture("bitnet-tiny-tied", &mkdir(sb.tmp.path().join("b")));
    assert!(run_ok(&sb, &b, &[]).contains("using the converted copy"));
    assert_eq!(copies(&sb).len(), 1, "{:?}", copies(&sb));
    // Different bytes are a different model.
    let cfg = b.join("config.json");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push('\n');
    std::fs::write(&cfg, text).unwrap();
    assert!(run_ok(&sb, &b, &[]).contains("converting "));
    assert_eq!(copies(&sb).len(), 2, "{:?}", copies(&sb));
    let o = sb.run("", &["rm", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_only(&sb.store(), &[]);
}

#[test]
fn an_unreadable_copy_is_converted_again() {
    let sb = Sandbox::new();
    let a = copy_fixture("bitnet-tiny-tied", sb.tmp.path());
    run_ok(&sb, &a, &[]);
    let name = copies(&sb).pop().unwrap();
    std::fs::write(
        sb.store().join(&name),
        b"\x89BITNET\n not a file of this build",
    )
    .unwrap();
    let e = run_ok(&sb, &a, &[]);
    assert!(
        e.contains("cannot be read by this build") && e.contains("converting "),
        "{e}"
    );
    assert_eq!(copies(&sb), [name]);
}

#[test]
fn a_copy_without_a_manifest_is_listed_and_removable() {
    let sb = Sandbox::new();
    // As an older build left its copies: a .bitnet file and nothing beside it.
    mkdir(sb.store());
    let o = sb.run(
        "",
        &[
            "convert",
            fixture("bitnet-tiny-tied").to_str().unwrap(),
            "-o",
            sb.store().join("old-copy.bitnet").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let list = list_json(&sb);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["name"], "old-copy");
    assert_eq!(list[0]["kind"], "unknown");
    let o = sb.run("", &["rm", "old-copy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_only(&sb.store(), &[]);
}

#[test]
fn the_implicit_copy_holds_the_int8_head_and_the_exact_rows() {
    let sb = Sandbox::new();
    let kinds = |name: &str| -> Vec<String> {
        let info = inspect_json(&sb.store().join(name));
        let mut k: Vec<String> = info["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["name"] != "tokenizer.json" && !t["name"].as_str().unwrap().starts_with("blk.")
            })
            .filter(|t| t["name"] != "output_norm")
            .map(|t| {
                format!(
                    "{}:{}",
                    t["name"].as_str().unwrap(),
                    t["kind"].as_str().unwrap()
                )
            })
            .collect();
        k.sort();
        k
    };
    // Tied: one copy serves both heads (the embedding is the exact head).
    run_ok(&sb, &fixture("bitnet-tiny-tied"), &[]);
    run_ok(&sb, &fixture("bitnet-tiny-tied"), &["--head", "exact"]);
    let tied = copies(&sb);
    assert_eq!(tied.len(), 1);
    assert_eq!(kinds(&tied[0]), ["output:int8_r16", "token_embd:bf16"]);
    // Untied: the int8 copy holds the exact rows too (`output_exact`), so it serves `--head exact` and
    // the rescored head as well.
    run_ok(&sb, &fixture("bitnet-tiny-untied-sharded"), &[]);
    let e = run_ok(
        &sb,
        &fixture("bitnet-tiny-untied-sharded"),
        &["--head", "exact"],
    );
    assert!(!e.contains("making one with the exact head"), "{e}");
    let all = copies(&sb);
    assert_eq!(all.len(), 2, "{all:?}");
    let untied = all.iter().find(|c| !tied.contains(c)).unwrap();
    assert_eq!(
        kinds(untied),
        ["output:int8_r16", "output_exact:bf16", "token_embd:bf16"]
    );
}

#[test]
fn serve_chat_and_bench_take_a_repo_id() {
    let sb = Sandbox::new();
    let hub = StandIn::start(vec![crate::hub_download::tiny_repo("org/tiny")]);
    let mut serve = sb
        .cmd(&hub.url)
        .args(["serve", "org/tiny", "--port", "0", "--threads", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(serve.stderr.take().unwrap())) {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("on http://") {
            break;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        log.contains("downloaded org/tiny: model.safetensors") && log.contains("on http://"),
        "{log}"
    );
    let mut child = sb
        .cmd(&hub.url)
        .args(["chat", "org/tiny", "--max-tokens", "2", "--threads=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    drop(hub);
    let o = sb
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "bench",
            "org/tiny",
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "2",
        ])
        .args(["--repeat", "1", "--threads", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.is_object(), "{v}");
}

#[test]
fn interrupting_an_implicit_conversion_leaves_nothing() {
    let sb = Sandbox::new();
    // A tied model with an embedding large enough that converting it takes a while.
    let dir = copy_fixture("bitnet-tiny-tied", sb.tmp.path());
    let (vocab, hidden) = (800_000usize, 128usize);
    let mut t = read_safetensors(&dir.join("model.safetensors"));
    let mut seed = 7u32;
    let emb: Vec<u8> = (0..vocab * hidden)
        .flat_map(|_| {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            half::bf16::from_f32(((seed >> 9) as f32 / 8388608.0 - 1.0) * 0.05).to_le_bytes()
        })
        .collect();
    t.insert(
        "model.embed_tokens.weight".into(),
        (Dtype::BF16, vec![vocab, hidden], emb),
    );
    write_safetensors(&dir.join("model.safetensors"), &t);
    let cfg = dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["vocab_size"] = vocab.into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();

    use std::os::unix::process::CommandExt;
    let mut child = sb
        .cmd("http://127.0.0.1:9")
        .arg("run")
        .arg(&dir)
        .args(["-p", "x"])
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let temp_exists = || {
        std::fs::read_dir(sb.store())
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !temp_exists() && start.elapsed() < Duration::from_secs(60) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the interrupt"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(temp_exists(), "no temporary file appeared");
    // Ctrl-C on a terminal signals the whole process group.
    let pgid = format!("-{}", child.id());
    let sent = std::process::Command::new("kill")
        .args(["-INT", "--", &pgid])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    // The child `bitnet convert` removes its temporary file as it exits.
    let start = Instant::now();
    while temp_exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = std::fs::read_dir(sb.store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}\n{}", stderr(&o));
}
