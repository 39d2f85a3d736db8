//! From what a user names (a `.bitnet` file, a Hugging Face folder, a repo id) to a `.bitnet` file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bitnet_convert::{ConvertOptions, LmHead};
use bitnet_hub::{HubEnv, ResolvedModel};
use bitnet_model::HeadKind;

use crate::store::{HeadVariant, Store};

/// How models are fetched and converted: a command-line tool shows progress bars and converts in a child
/// process; [`Quiet`] does both in this process, silently.
pub trait Provider {
    /// `org/name[@revision]` from the Hugging Face cache when it is complete there, else downloaded.
    fn download(&self, spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel>;
    /// Converts the checkpoint `input` (a folder, or `org/name@commit` in the cache) into `out`,
    /// atomically: on failure nothing is left at `out`.
    fn convert(&self, input: &str, out: &Path, head: HeadVariant) -> anyhow::Result<()>;
}

/// Downloads and converts in this process, without output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Provider for Quiet {
    fn download(&self, spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
        #[cfg(feature = "download")]
        return Ok(bitnet_hub::download::resolve_or_download(
            spec,
            env,
            &mut |_| {},
        )?);
        #[cfg(not(feature = "download"))]
        cache_only(spec, env)
    }

    fn convert(&self, input: &str, out: &Path, head: HeadVariant) -> anyhow::Result<()> {
        let opts = ConvertOptions {
            lm_head: match head {
                HeadVariant::Int8 => LmHead::Int8,
                HeadVariant::Exact => LmHead::Exact,
            },
        };
        bitnet_convert::convert(
            input,
            out,
            &opts,
            &HubEnv::from_process(),
            &|_| {},
            &mut |_| {},
        )
        .with_context(|| format!("converting {input}"))?;
        Ok(())
    }
}

/// `org/name[@revision]` from the cache only, for a build without the `download` feature (bitnet-hub's
/// error then says that this build has no downloader and how to fetch the repo).
pub fn cache_only(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    Ok(bitnet_hub::resolve(spec, env)?)
}

/// The `.bitnet` file for `model`: the file itself, or the converted copy of a GGUF file, a Hugging Face
/// folder or a repo id (downloaded first when the cache lacks it), made once into the [`Store`] and reused. `head` is
/// the head the caller will use: an untied model's exact head needs a copy of its own.
pub fn resolve_model(
    model: &str,
    head: Option<HeadKind>,
    provider: &dyn Provider,
) -> anyhow::Result<PathBuf> {
    let p = Path::new(model);
    if bitnet_convert::gguf::is_gguf(p) {
        // A GGUF file is a source, converted once into the store like a folder.
        let resolved = bitnet_convert::hub::ResolvedModel {
            dir: p.to_path_buf(),
            repo: None,
            revision: None,
        };
        return Store::from_env().converted(&resolved, want_exact(head), provider);
    }
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let env = HubEnv::from_process();
    let resolved = if !p.exists() && bitnet_hub::looks_like_repo_id(model) {
        provider.download(model, &env)?
    } else {
        bitnet_convert::hub::resolve(model, &env)
            .with_context(|| format!("{model}: not a .bitnet file"))?
    };
    Store::from_env().converted(&resolved, want_exact(head), provider)
}

/// Whether `head` needs the exact head's rows (the rescored head rescores from them).
fn want_exact(head: Option<HeadKind>) -> bool {
    matches!(head, Some(HeadKind::Exact | HeadKind::Rescored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_only_reads_a_complete_snapshot_and_names_a_missing_repo() {
        let tmp = tempfile::tempdir().unwrap();
        let env = HubEnv {
            hf_hub_cache: Some(tmp.path().to_path_buf()),
            ..HubEnv::default()
        };
        let e = format!("{:#}", cache_only("org/missing", &env).unwrap_err());
        assert!(
            e.contains("org/missing: not in the local Hugging Face cache"),
            "{e}"
        );
        let commit = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
        let repo = tmp.path().join("models--org--cached");
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(
            repo.join("snapshots").join(commit).join("config.json"),
            "{}",
        )
        .unwrap();
        let r = cache_only("org/cached", &env).unwrap();
        assert_eq!(r.dir, repo.join("snapshots").join(commit));
    }
}
