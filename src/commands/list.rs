//! `bitnet list`: the converted models in the cache, with where each came from.

use std::io::Write;
use std::path::PathBuf;

use bitnet_format::BitnetFile;
use serde::Serialize;

use crate::Outcome;
use crate::cli::ListArgs;
use bitnet_runtime::store::{Source, Store};
use indicatif::BinaryBytes;

/// One converted model.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// What `bitnet rm` takes.
    pub name: String,
    /// `repo`, `folder`, or `unknown` (a copy without a manifest, made by an older build).
    pub kind: &'static str,
    /// The repo id or the folder.
    pub source: String,
    /// The repo's commit.
    pub revision: Option<String>,
    /// `int8` or `exact`.
    pub lm_head: Option<String>,
    pub bytes: u64,
    pub path: PathBuf,
}

/// Every `.bitnet` file in the store, described by its manifest, else by its header's `source`.
pub fn entries(store: &Store) -> Vec<Entry> {
    let manifests = store.manifests();
    let mut out = Vec::new();
    let files = std::fs::read_dir(&store.dir)
        .into_iter()
        .flatten()
        .flatten();
    for e in files {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(".bitnet") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let bytes = e.metadata().map_or(0, |m| m.len());
        let entry = match manifests.iter().find(|m| m.name == name) {
            Some(m) => {
                let (kind, source, revision) = match &m.source {
                    Source::Repo { repo, revision } => {
                        ("repo", repo.clone(), Some(revision.clone()))
                    }
                    Source::Folder { path, .. } => ("folder", path.display().to_string(), None),
                };
                Entry {
                    name: name.to_string(),
                    kind,
                    source,
                    revision,
                    lm_head: Some(format!("{:?}", m.lm_head).to_lowercase()),
                    bytes,
                    path,
                }
            }
            None => {
                let header = BitnetFile::open(&path)
                    .ok()
                    .map(|f| f.header().source.clone());
                let (kind, source, revision) = match header {
                    Some(s) if s.repo.is_some() => ("repo", s.repo.unwrap_or_default(), s.revision),
                    _ => ("unknown", "(no manifest)".to_string(), None),
                };
                Entry {
                    name: name.to_string(),
                    kind,
                    source,
                    revision,
                    lm_head: None,
                    bytes,
                    path,
                }
            }
        };
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn run(args: ListArgs) -> anyhow::Result<Outcome> {
    let store = Store::from_env();
    let list = entries(&store);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        return Ok(Outcome::Success);
    }
    if list.is_empty() {
        eprintln!("no converted models in {}", store.dir.display());
        return Ok(Outcome::Success);
    }
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.source.clone(),
                e.revision
                    .as_deref()
                    .map_or("-".into(), |r| r[..r.len().min(12)].to_string()),
                e.lm_head.clone().unwrap_or_else(|| "-".into()),
                BinaryBytes(e.bytes).to_string(),
                e.path.display().to_string(),
            ]
        })
        .collect();
    let head = ["NAME", "SOURCE", "REVISION", "HEAD", "SIZE", "PATH"].map(String::from);
    let mut widths = [0usize; 6];
    for r in std::iter::once(&head).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 5 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        writeln!(out, "{}", line.join("  "))?;
    }
    Ok(Outcome::Success)
}
