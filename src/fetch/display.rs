//! The download display: on a terminal a progress bar per file, and everywhere one line per downloaded
//! file (size, whether it resumed, retries, time).

use std::io::IsTerminal;
use std::time::Instant;

use bitnet_hub::download::Event;
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the display knows of the file in flight.
struct InFlight {
    file: String,
    resumed_from: u64,
    retries: u32,
    started: Instant,
}

/// Renders [`Event`]s on stderr.
pub(super) struct Display<'a> {
    repo: &'a str,
    terminal: bool,
    bar: ProgressBar,
    current: Option<InFlight>,
}

impl Display<'_> {
    pub(super) fn new(repo: &str) -> Display<'_> {
        let terminal = std::io::stderr().is_terminal();
        Display {
            repo,
            terminal,
            bar: ProgressBar::hidden(),
            current: None,
        }
    }

    pub(super) fn on_event(&mut self, ev: Event<'_>) {
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
