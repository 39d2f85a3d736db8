//! The converted copies that `run`, `chat`, `serve`, `bench` and `pull` make of a folder or repo, in
//! `$XDG_CACHE_HOME/bitnet` (else `~/.cache/bitnet`).
//!
//! One copy per source, `.bitnet` format version, converter version and LM head: the key of a repo is
//! its id and commit; the key of a plain folder is the content of the files a conversion reads
//! (sha256 of each, weights included), so copying or touching a folder reuses its copy and editing a
//! file makes a new one. Hashing a large folder takes seconds, so each copy's manifest (`NAME.json`
//! beside `NAME.bitnet`) also records the folder's path and its files' sizes and modification times:
//! when those still match, the hash is skipped.
//!
//! The copy is made by the caller's [`Provider`] (the `bitnet` binary runs `bitnet convert` as a child
//! process, so it has that command's progress bar, its Ctrl-C cleanup and its atomic write).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bitnet_format::{BitnetFile, TensorKind, hex};
use bitnet_hub::ResolvedModel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::Provider;

/// Which LM heads a copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadVariant {
    /// The int8 copy of the head, and the exact head too when the model ties it to the embedding.
    Int8,
    /// The exact head only.
    Exact,
}

impl HeadVariant {
    /// The value of `bitnet convert --lm-head` that makes this copy.
    pub fn flag(self) -> &'static str {
        match self {
            HeadVariant::Int8 => "int8",
            HeadVariant::Exact => "bf16",
        }
    }
}

/// A file's size and modification time, the fast check that a folder is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The file's name in the folder.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Its modification time, in nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
}

/// What a copy was converted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A Hub repo at a commit.
    Repo {
        /// `org/name`.
        repo: String,
        /// The commit.
        revision: String,
    },
    /// A folder: where it was last seen, its content hash and its files' stamps then.
    Folder {
        /// The folder, canonical.
        path: PathBuf,
        /// The sha256 over each read file's name, size and sha256.
        content_sha256: String,
        /// Its files' stamps when it was converted.
        files: Vec<Stamp>,
    },
}

/// The JSON beside each converted copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The copy's name (`NAME.bitnet`, `NAME.json`).
    pub name: String,
    /// What it was converted from.
    pub source: Source,
    /// Which heads it holds.
    pub lm_head: HeadVariant,
    /// The `.bitnet` format version written.
    pub format_version: String,
    /// The converter that wrote it (`bitnet-convert` version).
    pub converter: String,
    /// When, in seconds since the Unix epoch.
    pub created_unix: u64,
}

fn format_version() -> String {
    format!(
        "{}.{}",
        bitnet_format::VERSION_MAJOR,
        bitnet_format::VERSION_MINOR
    )
}

fn converter() -> String {
    format!("bitnet {}", env!("CARGO_PKG_VERSION"))
}

/// Letters, digits, `-`, `_` and `.` of `s`, the rest as `_`.
fn sanitize(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let t = t.trim_matches(['_', '.']).to_string();
    if t.is_empty() { "model".into() } else { t }
}

/// The folder of converted copies.
pub struct Store {
    /// Where the copies and their manifests are.
    pub dir: PathBuf,
}

impl Store {
    /// `$XDG_CACHE_HOME/bitnet`, else `$HOME/.cache/bitnet`, else one under the temporary folder.
    pub fn from_env() -> Store {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        Store {
            dir: base.join("bitnet"),
        }
    }

    /// The model file of the copy `name`.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.bitnet"))
    }

    /// The manifest of the copy `name`.
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every readable manifest whose model file exists.
    pub fn manifests(&self) -> Vec<Manifest> {
        let mut out: Vec<Manifest> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .filter(|m: &Manifest| self.model_path(&m.name).is_file())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The converted copy of `resolved` (made now if there is none). `want_exact`: the caller will
    /// ask for the exact head, which an int8 copy of an untied model lacks.
    pub fn converted(
        &self,
        resolved: &ResolvedModel,
        want_exact: bool,
        provider: &dyn Provider,
    ) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the cache folder {}", self.dir.display()))?;
        let path = self.copy(resolved, HeadVariant::Int8, provider)?;
        if want_exact && !has_exact_head(&path) {
            tracing::info!(
                "the copy with the int8 head has no exact head (the model's head is untied); making one with the exact head"
            );
            return self.copy(resolved, HeadVariant::Exact, provider);
        }
        Ok(path)
    }

    fn copy(
        &self,
        resolved: &ResolvedModel,
        head: HeadVariant,
        provider: &dyn Provider,
    ) -> anyhow::Result<PathBuf> {
        let (source, label, input) = match (&resolved.repo, &resolved.revision) {
            (Some(repo), Some(rev)) => (
                Source::Repo {
                    repo: repo.clone(),
                    revision: rev.clone(),
                },
                repo.replace('/', "--"),
                format!("{repo}@{rev}"),
            ),
            _ => {
                let dir = resolved.dir.canonicalize().with_context(|| {
                    format!("{}: cannot resolve the folder", resolved.dir.display())
                })?;
                let stamps = stamps(&dir)?;
                let label = dir
                    .file_name()
                    .map_or("model".into(), |n| n.to_string_lossy().into_owned());
                if let Some(m) = self.manifests().into_iter().find(|m| {
                    m.lm_head == head
                        && m.format_version == format_version()
                        && m.converter == converter()
                        && matches!(&m.source, Source::Folder { path, files, .. }
                            if *path == dir && *files == stamps)
                }) && self.usable(&m.name)
                {
                    let p = self.model_path(&m.name);
                    tracing::info!("using the converted copy {}", p.display());
                    return Ok(p);
                }
                let content = content_sha256(&dir, &stamps)?;
                let input = dir.to_string_lossy().into_owned();
                (
                    Source::Folder {
                        path: dir,
                        content_sha256: content,
                        files: stamps,
                    },
                    label,
                    input,
                )
            }
        };
        let identity = match &source {
            Source::Repo { repo, revision } => format!("repo {repo}@{revision}"),
            Source::Folder { content_sha256, .. } => format!("folder {content_sha256}"),
        };
        let key = hex(&Sha256::digest(format!(
            "{identity}\nformat {}\nconverter {}\nhead {:?}",
            format_version(),
            converter(),
            head
        ))[..6]);
        let name = format!("{}-{key}", sanitize(&label));
        let path = self.model_path(&name);
        let manifest = Manifest {
            name: name.clone(),
            source,
            lm_head: head,
            format_version: format_version(),
            converter: converter(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        if self.usable(&name) {
            tracing::info!("using the converted copy {}", path.display());
        } else {
            tracing::info!("converting {input} once into {}", path.display());
            provider.convert(&input, &path, head)?;
        }
        // Also refreshes a folder's path and stamps, so the next run skips the hash.
        self.write_manifest(&manifest)?;
        Ok(path)
    }

    /// Whether `name`'s file exists and this build can read it (else it is converted again).
    fn usable(&self, name: &str) -> bool {
        let path = self.model_path(name);
        if !path.is_file() {
            return false;
        }
        match BitnetFile::open(&path) {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(
                    "note: {} cannot be read by this build ({e}); converting again",
                    path.display()
                );
                false
            }
        }
    }

    fn write_manifest(&self, m: &Manifest) -> anyhow::Result<()> {
        let path = self.manifest_path(&m.name);
        let tmp = self
            .dir
            .join(format!(".{}.json.tmp-{}", m.name, std::process::id()));
        let text = serde_json::to_string_pretty(m)?;
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::anyhow!("writing {}: {e}", path.display())
            })
    }
}

/// Whether the file at `path` holds the exact head (a tied embedding, or a float `output`).
fn has_exact_head(path: &Path) -> bool {
    let Ok(file) = BitnetFile::open(path) else {
        return false;
    };
    let int8_only = file.entry("output").map(|e| e.kind) == Some(TensorKind::Int8R16)
        && !file.header().config.tie_word_embeddings
        && file.entry(bitnet_format::OUTPUT_EXACT).is_none();
    !int8_only
}

/// The files of `dir` a conversion reads, with their sizes and modification times, sorted.
fn stamps(dir: &Path) -> anyhow::Result<Vec<Stamp>> {
    let mut out = Vec::new();
    if dir.is_file() {
        // A GGUF file is its own source.
        let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        out.push(Stamp {
            name: dir
                .file_name()
                .map_or("model.gguf".into(), |n| n.to_string_lossy().into_owned()),
            bytes: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
        return Ok(out);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !bitnet_hub::cache::wanted(&name) {
            continue;
        }
        let meta = std::fs::metadata(e.path())
            .with_context(|| format!("reading {}", e.path().display()))?;
        if !meta.is_file() {
            continue;
        }
        out.push(Stamp {
            name,
            bytes: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The sha256 over each read file's name, size and sha256: the folder's content identity.
fn content_sha256(dir: &Path, stamps: &[Stamp]) -> anyhow::Result<String> {
    let mut all = Sha256::new();
    for s in stamps {
        let path = if dir.is_file() {
            dir.to_path_buf()
        } else {
            dir.join(&s.name)
        };
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
        all.update(format!("{} {} {}\n", s.name, s.bytes, hex(&h.finalize())));
    }
    Ok(hex(&all.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe() {
        assert_eq!(
            sanitize("microsoft--bitnet-b1.58"),
            "microsoft--bitnet-b1.58"
        );
        assert_eq!(sanitize("my model (v2)"), "my_model__v2");
        assert_eq!(sanitize("..."), "model");
    }

    #[test]
    fn the_content_key_ignores_times_and_paths_but_not_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
            std::fs::write(d.join("model.safetensors"), "weights").unwrap();
            std::fs::write(d.join("README.md"), "not read").unwrap();
        }
        std::fs::write(b.join("README.md"), "different, and not read").unwrap();
        let sa = stamps(&a).unwrap();
        assert_eq!(
            sa.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["config.json", "model.safetensors"]
        );
        let ka = content_sha256(&a, &sa).unwrap();
        assert_eq!(ka, content_sha256(&b, &stamps(&b).unwrap()).unwrap());
        std::fs::write(b.join("model.safetensors"), "weightz").unwrap();
        assert_ne!(ka, content_sha256(&b, &stamps(&b).unwrap()).unwrap());
    }
}
