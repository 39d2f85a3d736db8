//! Tensor checksums checked before a file's first use, at memory speed (tensors hashed in parallel), and
//! remembered per file (path, size, modification time, inode, header checksum) in
//! `$XDG_STATE_HOME/bitnet/verified.json` (else `~/.local/state/bitnet`), so later loads skip the work. A file whose bytes were flipped after conversion is refused with the
//! tensor named, instead of running and printing different text.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use bitnet_format::{BitnetFile, hex};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files remembered; the oldest are forgotten first.
const REMEMBERED: usize = 256;

/// What identifies a file's bytes cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    bytes: u64,
    mtime_ns: u64,
    inode: u64,
    header_sha256: String,
}

fn stamp(file: &BitnetFile, path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        path: path.canonicalize().ok()?,
        bytes: meta.len(),
        mtime_ns: meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as u64,
        inode,
        header_sha256: hex(&file.preamble().header_sha256),
    })
}

fn cache_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("bitnet").join("verified.json")
}

fn remembered() -> Vec<Stamp> {
    std::fs::read(cache_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn remember(s: Stamp) {
    let mut all = remembered();
    all.retain(|x| x.path != s.path);
    all.push(s);
    if all.len() > REMEMBERED {
        all.drain(..all.len() - REMEMBERED);
    }
    let path = cache_path();
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".verified.json.tmp-{}", std::process::id()));
    let written = serde_json::to_vec(&all)
        .ok()
        .is_some_and(|b| std::fs::write(&tmp, b).is_ok() && std::fs::rename(&tmp, &path).is_ok());
    if !written {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Tensors whose bytes do not hash to their directory checksum, hashed in parallel: largest first, one
/// tensor per task, so the cores stay busy until the end (a tensor's SHA-256 is sequential: the
/// embedding alone, ~44% of a 2B4T file, bounds the time on many cores).
pub fn mismatched(file: &BitnetFile) -> Vec<String> {
    let mut order: Vec<_> = file.header().tensors.iter().collect();
    order.sort_by_key(|e| std::cmp::Reverse(file.data(e).len()));
    let mut bad: Vec<String> = order
        .par_iter()
        .with_max_len(1)
        .filter(|e| hex(&Sha256::digest(file.data(e))) != e.sha256)
        .map(|e| e.name.clone())
        .collect();
    bad.sort();
    bad
}

/// Checks `file`'s tensor checksums unless this exact file was checked before.
pub fn ensure_verified(file: &BitnetFile, path: &Path) -> anyhow::Result<()> {
    let s = stamp(file, path);
    if let Some(s) = &s
        && remembered().contains(s)
    {
        return Ok(());
    }
    let t0 = Instant::now();
    let bad = mismatched(file);
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(5).map(|n| format!("`{n}`")).collect();
        bail!(
            "{}: tensor{} {}{} do{} not match {} checksum (the file is corrupt or was altered after \
             conversion): convert it again, or pass --no-verify to run it as it is",
            path.display(),
            if bad.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if bad.len() > 5 {
                format!(" and {} more", bad.len() - 5)
            } else {
                String::new()
            },
            if bad.len() == 1 { "es" } else { "" },
            if bad.len() == 1 { "its" } else { "their" },
        );
    }
    tracing::debug!(
        "checked the {} tensor checksums of {} ({} bytes) in {:.3} s",
        file.header().tensors.len(),
        path.display(),
        file.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(s) = s {
        remember(s);
    }
    Ok(())
}
