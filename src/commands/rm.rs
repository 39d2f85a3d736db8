//! `bitnet rm`: remove converted models from the cache (the downloaded checkpoints stay in the Hugging
//! Face cache, which `huggingface-cli delete-cache` manages).

use std::path::Path;

use anyhow::bail;

use super::list::{Entry, entries};
use crate::Outcome;
use crate::cli::RmArgs;
use bitnet_runtime::store::Store;
use indicatif::BinaryBytes;

/// Whether `what` names `e`: its name, its repo id (with or without `@revision`), or its folder.
fn matches(e: &Entry, what: &str) -> bool {
    if e.name == what {
        return true;
    }
    match e.kind {
        "repo" => {
            let (repo, rev) = bitnet_hub::cache::split_repo_spec(what);
            e.source == repo
                && (!what.contains('@')
                    || e.revision.as_deref().is_some_and(|r| r.starts_with(rev)))
        }
        "folder" => Path::new(what)
            .canonicalize()
            .is_ok_and(|p| p == Path::new(&e.source)),
        _ => false,
    }
}

pub fn run(args: RmArgs) -> anyhow::Result<Outcome> {
    let store = Store::from_env();
    let all = entries(&store);
    let chosen: Vec<&Entry> = if args.all {
        all.iter().collect()
    } else {
        for what in &args.names {
            if !all.iter().any(|e| matches(e, what)) {
                let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
                bail!(
                    "{what}: no converted model by that name or source in {} (there {}: {})",
                    store.dir.display(),
                    if names.len() == 1 { "is" } else { "are" },
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
        all.iter()
            .filter(|e| args.names.iter().any(|w| matches(e, w)))
            .collect()
    };
    for e in chosen {
        for p in [store.model_path(&e.name), store.manifest_path(&e.name)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => bail!("removing {}: {err}", p.display()),
            }
        }
        eprintln!(
            "removed {} ({}, {})",
            e.name,
            BinaryBytes(e.bytes),
            e.path.display()
        );
    }
    Ok(Outcome::Success)
}
