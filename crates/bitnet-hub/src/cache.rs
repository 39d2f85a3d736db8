//! The cache layout `huggingface_hub` reads and writes: finding a checkpoint in it, and (for the
//! downloader) writing a snapshot and a ref.
//!
//! A repo `org/name` lives in `<cache>/models--org--name/`:
//! - `blobs/<etag>`: each file's bytes, named by its ETag (the sha256 of an LFS file, the git blob id of
//!   any other); `blobs/<etag>.incomplete` while it downloads;
//! - `snapshots/<commit>/<file>`: a relative symlink `../../blobs/<etag>`, one folder per commit;
//! - `refs/<revision>`: the commit a branch or tag pointed to when it was fetched.
//!
//! Downloads take `<cache>/.locks/models--org--name/<etag>.lock` with `flock`, as the Python library
//! does through `filelock`, so the two never write the same blob at once.

use std::path::{Path, PathBuf};

use crate::HubEnv;
use crate::error::{HubError, Result};

/// `models--org--name` for `org/name`.
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// Whether `s` is a full 40-hex-digit commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One repo's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    /// The cache root (`HF_HUB_CACHE`).
    pub root: PathBuf,
    /// The repo id.
    pub repo: String,
    /// `<root>/models--org--name`.
    pub dir: PathBuf,
}

impl RepoCache {
    /// The folder of `repo` under `root`.
    pub fn new(root: &Path, repo: &str) -> RepoCache {
        RepoCache {
            root: root.to_path_buf(),
            repo: repo.to_string(),
            dir: root.join(repo_folder_name(repo)),
        }
    }

    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// `blobs/<etag>.incomplete`, where a download in progress (or interrupted) lives.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// `snapshots/<commit>`.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// `refs/<revision>` (a revision such as `refs/pr/1` nests, as in the Python library).
    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    /// `<root>/.locks/models--org--name/<etag>.lock`.
    pub fn lock_file(&self, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(repo_folder_name(&self.repo))
            .join(format!("{etag}.lock"))
    }

    /// The commit `revision` names: itself when it is a commit hash, else what `refs/<revision>` holds.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.ref_file(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }
}

/// Where a checkpoint was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The folder holding config.json and the weights.
    pub dir: PathBuf,
    /// The repo id, when it came from the cache.
    pub repo: Option<String>,
    /// The snapshot's commit hash, when it came from the cache.
    pub revision: Option<String>,
}

/// Whether `s` looks like a Hub repo id (`org/name`, optionally `@revision`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let id = s.split_once('@').map_or(s, |(id, _)| id);
    let mut parts = id.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(name) && s.split_once('@').is_none_or(|(_, rev)| !rev.is_empty())
}

/// `org/name[@revision]` split into the repo id and the revision (`main` when none is given).
pub fn split_repo_spec(spec: &str) -> (&str, &str) {
    match spec.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (spec, "main"),
    }
}

/// The files besides the weights that a conversion may read.
pub const SMALL_FILES: [&str; 9] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Whether a repo file is one a conversion reads (top-level files only).
pub fn wanted(name: &str) -> bool {
    SMALL_FILES.contains(&name) || (name.ends_with(".safetensors") && !name.contains('/'))
}

/// Resolves `input` from the local disk only: an existing folder is taken as is; otherwise
/// `org/name[@revision]` is looked up in the cache.
pub fn resolve(input: &str, env: &HubEnv) -> Result<ResolvedModel> {
    let path = Path::new(input);
    if path.exists() {
        if !path.is_dir() {
            return Err(HubError::NotFound(format!(
                "{input}: is a file; give the model folder that holds config.json and the *.safetensors weights"
            )));
        }
        return Ok(ResolvedModel {
            dir: path.to_path_buf(),
            repo: None,
            revision: None,
        });
    }
    if !looks_like_repo_id(input) {
        return Err(HubError::NotFound(format!(
            "{input}: no such folder (and not a Hugging Face repo id of the form org/name)"
        )));
    }
    let (repo, revision) = split_repo_spec(input);
    let fetch_hint = if cfg!(feature = "download") {
        format!(
            "fetch it first, e.g. `bitnet pull {repo}` or `huggingface-cli download {repo}`{}, or pass the model \
             folder",
            if env.offline {
                " (HF_HUB_OFFLINE is set, so nothing is downloaded)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "this build of bitnet has no downloader (built without the `download` feature): fetch it with \
             `huggingface-cli download {repo}`, or pass the model folder"
        )
    };
    let Some(cache) = env.cache_dir() else {
        return Err(HubError::NotFound(format!(
            "{repo}: no Hugging Face cache folder (set HF_HUB_CACHE or HF_HOME); {fetch_hint}"
        )));
    };
    let rc = RepoCache::new(&cache, repo);
    if !rc.dir.is_dir() {
        return Err(HubError::NotFound(format!(
            "{repo}: not in the local Hugging Face cache ({} does not exist); {fetch_hint}",
            rc.dir.display()
        )));
    }
    let Some(commit) = rc.commit_for(revision) else {
        return Err(HubError::NotFound(format!(
            "{repo}: revision `{revision}` is not in the cache ({} is missing or holds no commit hash); {fetch_hint}",
            rc.ref_file(revision).display()
        )));
    };
    let dir = rc.snapshot(&commit);
    if !dir.is_dir() {
        return Err(HubError::NotFound(format!(
            "{repo}: snapshot {commit} is missing from the cache ({} does not exist); {fetch_hint}",
            dir.display()
        )));
    }
    Ok(ResolvedModel {
        dir,
        repo: Some(repo.to_string()),
        revision: Some(commit),
    })
}

/// What a conversion needs that the snapshot folder `dir` lacks: `config.json`, the weights (every
/// shard the index names, else at least one `*.safetensors`). Empty when the folder is complete. A
/// symlink into a missing blob counts as missing.
pub fn missing_files(dir: &Path) -> Vec<String> {
    let present = |name: &str| dir.join(name).is_file();
    let mut missing = Vec::new();
    if !present("config.json") {
        missing.push("config.json".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        match shards_of_index(&index) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !present(s))),
            Err(e) => missing.push(format!("model.safetensors.index.json ({e})")),
        }
    } else {
        let any = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file()
            });
        if !any {
            missing.push("*.safetensors".to_string());
        }
    }
    missing
}

/// The shard files a `model.safetensors.index.json` names, sorted and deduplicated.
pub fn shards_of_index(index: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| e.to_string())?;
    shards_of_index_json(&text)
}

/// [`shards_of_index`] on the file's text.
pub fn shards_of_index_json(text: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no `weight_map` object")?;
    let mut shards = Vec::new();
    for (tensor, shard) in map {
        let s = shard
            .as_str()
            .ok_or_else(|| format!("`weight_map.{tensor}` is not a file name"))?;
        if s.contains('/') || s.starts_with('.') || !s.ends_with(".safetensors") {
            return Err(format!(
                "`weight_map.{tensor}` names `{s}`, not a .safetensors file beside the index"
            ));
        }
        shards.push(s.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(feature = "download")]
/// Links `snapshots/<commit>/<file>` to `../../blobs/<etag>` for every file. A new snapshot folder is
/// filled aside and renamed into place, so it appears whole.
pub(crate) fn write_snapshot(
    rc: &RepoCache,
    commit: &str,
    files: &[(String, String)],
) -> Result<PathBuf> {
    let snap = rc.snapshot(commit);
    let link = |dir: &Path, name: &str, etag: &str| -> Result<()> {
        let at = dir.join(name);
        let target = PathBuf::from("../../blobs").join(etag);
        if std::fs::read_link(&at).is_ok_and(|t| t == target) {
            return Ok(());
        }
        if at.symlink_metadata().is_ok() {
            std::fs::remove_file(&at).map_err(|e| HubError::io(&at, e))?;
        }
        std::os::unix::fs::symlink(&target, &at).map_err(|e| HubError::io(&at, e))
    };
    if !snap.exists() {
        let tmp = rc
            .dir
            .join("snapshots")
            .join(format!(".{commit}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| HubError::io(&tmp, e))?;
        for (name, etag) in files {
            if let Err(e) = link(&tmp, name, etag) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if std::fs::rename(&tmp, &snap).is_ok() {
            return Ok(snap);
        }
        // Someone else made the folder meanwhile: add the links to theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    for (name, etag) in files {
        link(&snap, name, etag)?;
    }
    Ok(snap)
}

#[cfg(feature = "download")]
/// Writes `refs/<revision>` (the commit, no newline, as the Python library writes it) atomically.
pub(crate) fn write_ref(rc: &RepoCache, revision: &str, commit: &str) -> Result<()> {
    let path = rc.ref_file(revision);
    let dir = path.parent().unwrap_or(&rc.dir).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
    let tmp = dir.join(format!(".ref.tmp-{}", std::process::id()));
    std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HubError::io(&path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("microsoft/bitnet-b1.58-2B-4T-bf16"));
        assert!(looks_like_repo_id("org/name@main"));
        assert!(!looks_like_repo_id("org/name@"));
        assert!(!looks_like_repo_id("name"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert_eq!(split_repo_spec("a/b"), ("a/b", "main"));
        assert_eq!(split_repo_spec("a/b@refs/pr/1"), ("a/b", "refs/pr/1"));
    }

    #[test]
    fn layout_paths_are_the_python_librarys() {
        let rc = RepoCache::new(Path::new("/c"), "org/m");
        assert_eq!(rc.dir, PathBuf::from("/c/models--org--m"));
        assert_eq!(rc.blob("ab"), PathBuf::from("/c/models--org--m/blobs/ab"));
        assert_eq!(
            rc.incomplete("ab"),
            PathBuf::from("/c/models--org--m/blobs/ab.incomplete")
        );
        assert_eq!(
            rc.lock_file("ab"),
            PathBuf::from("/c/.locks/models--org--m/ab.lock")
        );
        assert_eq!(
            rc.ref_file("refs/pr/1"),
            PathBuf::from("/c/models--org--m/refs/refs/pr/1")
        );
    }

    #[test]
    fn resolves_a_cached_snapshot_by_ref_and_by_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = tmp.path().join("models--org--model");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let env = HubEnv {
            hf_hub_cache: Some(tmp.path().into()),
            ..Default::default()
        };
        let r = resolve("org/model", &env).unwrap();
        assert_eq!(r.dir, repo.join("snapshots").join(commit));
        assert_eq!(r.revision.as_deref(), Some(commit));
        assert_eq!(
            resolve(&format!("org/model@{commit}"), &env).unwrap().dir,
            r.dir
        );
        let err = resolve("org/model@v2", &env).unwrap_err().to_string();
        assert!(err.contains("revision `v2`"), "{err}");
        let err = resolve("org/other", &env).unwrap_err().to_string();
        assert!(
            err.contains("not in the local Hugging Face cache")
                && err.contains("huggingface-cli download org/other"),
            "{err}"
        );
    }

    #[test]
    fn a_snapshot_is_complete_only_with_config_and_every_shard() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert_eq!(missing_files(d), ["config.json", "*.safetensors"]);
        std::fs::write(d.join("config.json"), "{}").unwrap();
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-1.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            missing_files(d),
            ["model-1.safetensors", "model-2.safetensors"]
        );
        std::fs::write(d.join("model-1.safetensors"), "x").unwrap();
        // A dangling symlink (its blob was deleted) is missing too.
        std::os::unix::fs::symlink("../nowhere", d.join("model-2.safetensors")).unwrap();
        assert_eq!(missing_files(d), ["model-2.safetensors"]);
        std::fs::remove_file(d.join("model-2.safetensors")).unwrap();
        std::fs::write(d.join("model-2.safetensors"), "y").unwrap();
        assert!(missing_files(d).is_empty());
        assert!(shards_of_index_json(r#"{"weight_map": {"a": "../x.safetensors"}}"#).is_err());
        assert!(shards_of_index_json(r#"{"metadata": {}}"#).is_err());
    }

    #[cfg(feature = "download")]
    #[test]
    fn snapshots_appear_whole_with_relative_links_and_refs_without_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let rc = RepoCache::new(tmp.path(), "o/n");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(rc.dir.join("blobs")).unwrap();
        std::fs::write(rc.blob("e1"), "{}").unwrap();
        let snap = write_snapshot(&rc, commit, &[("config.json".into(), "e1".into())]).unwrap();
        assert_eq!(
            std::fs::read_link(snap.join("config.json")).unwrap(),
            PathBuf::from("../../blobs/e1")
        );
        assert_eq!(
            std::fs::read_to_string(snap.join("config.json")).unwrap(),
            "{}"
        );
        let names: Vec<_> = std::fs::read_dir(rc.dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [commit], "no temporary folder left");
        // Adding to an existing snapshot.
        std::fs::write(rc.blob("e2"), "w").unwrap();
        write_snapshot(&rc, commit, &[("model.safetensors".into(), "e2".into())]).unwrap();
        assert!(snap.join("config.json").is_file() && snap.join("model.safetensors").is_file());
        write_ref(&rc, "main", commit).unwrap();
        assert_eq!(
            std::fs::read_to_string(rc.ref_file("main")).unwrap(),
            commit
        );
        assert_eq!(rc.commit_for("main").as_deref(), Some(commit));
    }
}
