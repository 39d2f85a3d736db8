//! `bitnet`: convert, inspect and run BitNet b1.58 ternary language models on CPUs.
//!
//! The binary is thin: argument parsing lives in [`cli`], one file per subcommand in [`commands`], and
//! the work in the `bitnet-*` crates. Exit codes: 0 success, 1 a check failed (a checksum, a parity
//! tolerance), 2 an error (bad input, I/O, usage). A closed stdout (`bitnet inspect | head`) is success.

mod cli;
mod commands;
mod fetch;
mod logging;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// What a command reports when it ran to the end.
pub enum Outcome {
    /// Everything passed.
    Success,
    /// The command ran, and what it checked failed.
    CheckFailed,
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.verbose, args.quiet);
    match commands::run(args) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {err:#}");
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
