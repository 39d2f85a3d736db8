//! `bitnet`: convert, inspect and run BitNet b1.58 ternary language models on CPUs.
//!
//! The binary is thin: argument parsing lives in [`cli`], one file per subcommand in [`commands`], and
//! the work in the `bitnet-*` crates. Exit codes: 0 success, 1 a check failed (a checksum, a parity
//! tolerance), 2 an error (bad input, I/O, usage). A closed stdout (`bitnet inspect | head`) is success.

mod cli;
mod commands;
mod escape;
mod fetch;
mod logging;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// What a command reports when it ran to the end.
pub enum Outcome {
    /// Everything passed.
    Success,
    /// The command ran, and what it checked failed.
    CheckFailed,
}

/// `0.1.0 (commit 1a2b3c4d5e6f, 2026-12-02, release; kernels avx512vnni avxvnni ...; this CPU: avx512vnni)`.
pub fn version() -> String {
    let here = bitnet_kernels::Kernels::detect().name;
    format!(
        "{} (commit {}, {}, {} build; kernel sets {}; this CPU runs {here})",
        env!("CARGO_PKG_VERSION"),
        env!("BITNET_COMMIT"),
        env!("BITNET_COMMIT_DATE"),
        env!("BITNET_PROFILE"),
        bitnet_kernels::dispatch::NAMES.join(" "),
    )
}

fn main() -> ExitCode {
    let matches = cli::Cli::command().long_version(version()).get_matches();
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    logging::init(args.verbose, args.quiet);
    match commands::run(args) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", escape::controls(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
