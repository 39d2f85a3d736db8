//! Converting a repo id from a Hugging Face cache laid out as `huggingface_hub` lays it out.

use std::path::Path;

use crate::util::*;

/// Lays out `org/name` in a hub cache at `cache`: blobs named by content, a snapshot of symlinks, refs/main.
fn lay_out_cache(cache: &Path, repo: &str, fixture_name: &str, commit: &str) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for e in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        use sha2::Digest;
        let blob: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(repo_dir.join("blobs").join(&blob), &bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(e.file_name()))
            .unwrap();
    }
}

const COMMIT: &str = "5f1c0ffee0ddba11deadbeef0123456789abcdef";

#[test]
fn converts_a_repo_id_from_hf_hub_cache_and_hf_home() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    lay_out_cache(
        &cache,
        "microsoft/bitnet-test-sharded",
        "bitnet-tiny-untied-sharded",
        COMMIT,
    );
    let out = tmp.path().join("a.bitnet");

    let o = bitnet()
        .args([
            "convert",
            "microsoft/bitnet-test-sharded",
            "-o",
            out.to_str().unwrap(),
        ])
        .env("HF_HUB_CACHE", &cache)
        .env_remove("HF_HOME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let info = inspect_json(&out);
    assert_eq!(info["source"]["repo"], "microsoft/bitnet-test-sharded");
    assert_eq!(info["source"]["revision"], COMMIT);

    // The same cache found through HF_HOME/hub, and a revision given explicitly.
    let out2 = tmp.path().join("b.bitnet");
    let o = bitnet()
        .args([
            "convert",
            &format!("microsoft/bitnet-test-sharded@{COMMIT}"),
            "-o",
            out2.to_str().unwrap(),
        ])
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(&out).unwrap();
    let b = std::fs::read(&out2).unwrap();
    assert_eq!(a, b, "same snapshot, same bytes");
}

#[test]
fn a_repo_missing_from_the_cache_says_how_to_fetch_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.bitnet");
    let o = bitnet()
        .args([
            "convert",
            "microsoft/bitnet-b1.58-2B-4T-bf16",
            "-o",
            out.to_str().unwrap(),
        ])
        .env("HF_HUB_CACHE", tmp.path().join("empty-cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("not in the local Hugging Face cache"), "{e}");
    assert!(
        e.contains("huggingface-cli download microsoft/bitnet-b1.58-2B-4T-bf16"),
        "{e}"
    );
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(!out.exists());
}
