//! `bitnet pull`: download a repo (asking the Hub for the revision's newest commit) and convert it
//! into the cache, without running it.

use std::path::Path;

use anyhow::Context;
use bitnet_hub::HubEnv;

use crate::Outcome;
use crate::cli::{HeadArg, PullArgs};
use bitnet_runtime::store::Store;
use indicatif::BinaryBytes;

pub fn run(args: PullArgs) -> anyhow::Result<Outcome> {
    let env = HubEnv::from_process();
    let p = Path::new(&args.model);
    let resolved = if !p.exists() && bitnet_hub::looks_like_repo_id(&args.model) {
        crate::fetch::download(&args.model, &env)?
    } else {
        bitnet_hub::resolve(&args.model, &env)?
    };
    let path = Store::from_env().converted(
        &resolved,
        args.head == Some(HeadArg::Exact),
        &crate::fetch::Cli,
    )?;
    let bytes = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let from = match (&resolved.repo, &resolved.revision) {
        (Some(repo), Some(rev)) => format!("{repo} at {rev}"),
        _ => resolved.dir.display().to_string(),
    };
    eprintln!(
        "ready: {} ({}, from {from}); `bitnet run {}` uses it",
        path.display(),
        BinaryBytes(bytes),
        args.model
    );
    Ok(Outcome::Success)
}
