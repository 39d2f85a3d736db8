//! How the command line fetches and converts models for the runtime: downloads from the Hub with what a
//! person watching needs (on a terminal a progress bar per file, and everywhere one line per downloaded
//! file: size, whether it resumed, retries, time), and conversions by a child `bitnet convert`, so they
//! have that command's progress bar, its Ctrl-C cleanup and its atomic write (a terminal's Ctrl-C
//! reaches both processes; the child removes its temporary file).

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_runtime::Provider;
use bitnet_runtime::store::HeadVariant;

use bitnet_hub::download::{self, Event};
use bitnet_hub::{HubEnv, ResolvedModel};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use indicatif::BinaryBytes;

/// What the display knows of the file in flight.
struct InFlight {
    file: String,
    resumed_from: u64,
    retries: u32,
    started: Instant,
}

/// Renders [`Event`]s on stderr.
struct Display<'a> {
    repo: &'a str,
    terminal: bool,
    bar: ProgressBar,
    current: Option<InFlight>,
}

impl Display<'_> {
    fn new(repo: &str) -> Display<'_> {
        let terminal = std::io::stderr().is_terminal();
        Display {
            repo,
            terminal,
            bar: ProgressBar::hidden(),
            current: None,
        }
    }

    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Listed { commit, files } if self.terminal => {
                let total: u64 = files.iter().map(|(_, n)| n).sum();
                eprintln!(
                    "{} at {}: {} files, {}",
                    self.repo,
                    &commit[..commit.len().min(12)],
                    files.len(),
                    BinaryBytes(total)
                );
            }
            Event::Listed { .. } | Event::Cached { .. } => {}
            Event::Waiting { file } => eprintln!(
                "{}: {file}: another process is downloading it; waiting for it",
                self.repo
            ),
            Event::Start {
                file,
                size,
                resumed_from,
            } => {
                if self.terminal {
                    self.bar =
                        ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
                    self.bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                        )
                        .expect("static template"),
                    );
                    self.bar.set_position(resumed_from);
                    self.bar.reset_eta();
                    self.bar.set_message(file.to_string());
                }
                self.current = Some(InFlight {
                    file: file.to_string(),
                    resumed_from,
                    retries: 0,
                    started: Instant::now(),
                });
            }
            Event::Progress { bytes, .. } => self.bar.inc(bytes),
            Event::Retry {
                file,
                failures,
                limit,
                delay,
                reason,
            } => match &mut self.current {
                Some(c) if c.file == file => {
                    c.retries += 1;
                    self.bar.set_message(format!(
                        "{file} (retry {failures}/{} in {} s: {reason})",
                        limit - 1,
                        delay.as_secs()
                    ));
                }
                // A request before any transfer (the listing, a file's metadata).
                _ => eprintln!(
                    "{}: {file}: {reason}; retrying in {} s ({failures}/{})",
                    self.repo,
                    delay.as_secs(),
                    limit - 1
                ),
            },
            Event::Done { file, size } => {
                self.bar.finish_and_clear();
                let mut notes = String::new();
                if let Some(c) = self.current.take().filter(|c| c.file == file) {
                    if c.resumed_from > 0 {
                        notes.push_str(&format!(", resumed at {}", BinaryBytes(c.resumed_from)));
                    }
                    if c.retries > 0 {
                        notes.push_str(&format!(
                            ", {} retr{}",
                            c.retries,
                            if c.retries == 1 { "y" } else { "ies" }
                        ));
                    }
                    notes.push_str(&format!(", {:.1} s", c.started.elapsed().as_secs_f64()));
                }
                eprintln!(
                    "downloaded {}: {file} ({}{notes})",
                    self.repo,
                    BinaryBytes(size)
                );
            }
        }
    }
}

impl Drop for Display<'_> {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// `org/name[@revision]` from the cache when it is complete there, else downloaded into it.
pub fn resolve_or_download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    let mut display = Display::new(spec);
    Ok(download::resolve_or_download(spec, env, &mut |e| {
        display.on_event(e)
    })?)
}

/// `org/name[@revision]` at the commit the Hub names now, downloading what the cache lacks.
pub fn download(spec: &str, env: &HubEnv) -> anyhow::Result<ResolvedModel> {
    let mut display = Display::new(spec);
    Ok(download::download(spec, env, &mut |e| display.on_event(e))?)
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
