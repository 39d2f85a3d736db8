//! How the command line fetches and converts models for the runtime: downloads from the Hub with what a
//! person watching needs (on a terminal a progress bar per file, and everywhere one line per downloaded
//! file: size, whether it resumed, retries, time), and conversions by a child `bitnet convert`, so they
//! have that command's progress bar, its Ctrl-C cleanup and its atomic write (a terminal's Ctrl-C
//! reaches both processes; the child removes its temporary file).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use bitnet_runtime::Provider;
use bitnet_runtime::store::HeadVariant;

use bitnet_hub::{HubEnv, ResolvedModel};

#[cfg(feature = "download")]
use display::Display;

#[cfg(feature = "download")]
mod display;

/// `org/name[@revision]` from the cache when it is complete there, else downloaded into it.
#[cfg(feature = "download")]
pub fn resolve_or_download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    let mut display = Display::new(spec);
    Ok(bitnet_hub::download::resolve_or_download(
        spec,
        env,
        &mut |e| display.on_event(e),
    )?)
}

/// `org/name[@revision]` at the commit the Hub names now, downloading what the cache lacks.
#[cfg(feature = "download")]
pub fn download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    let mut display = Display::new(spec);
    Ok(bitnet_hub::download::download(spec, env, &mut |e| {
        display.on_event(e)
    })?)
}

/// Without the `download` feature: `org/name[@revision]` from the cache only.
#[cfg(not(feature = "download"))]
pub fn resolve_or_download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    bitnet_runtime::models::cache_only(spec, env)
}

/// Without the `download` feature: `org/name[@revision]` from the cache only.
#[cfg(not(feature = "download"))]
pub fn download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    bitnet_runtime::models::cache_only(spec, env)
}

/// The command line's [`Provider`].
pub struct Cli;

impl Provider for Cli {
    fn download(&self, spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
        resolve_or_download(spec, env)
    }

    fn convert(&self, input: &str, out: &Path, head: HeadVariant) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the bitnet executable")?;
        let status = Command::new(exe)
            .arg("convert")
            .arg(input)
            .arg("-o")
            .arg(out)
            .args(["--lm-head", head.flag(), "--force"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("starting `bitnet convert`")?;
        if !status.success() {
            bail!(
                "the conversion of {input} into {} failed (the error is above); nothing was kept",
                out.display()
            );
        }
        Ok(())
    }
}
