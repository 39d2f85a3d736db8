//! One module per subcommand.

mod bench;
mod bench_ab;
mod chat;
mod convert;
mod doctor;
mod export;
mod inspect;
mod list;
mod perplexity;
mod pull;
mod rm;
mod run;
#[cfg(feature = "serve")]
mod serve;
mod verify;

use crate::Outcome;
use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Convert(args) => convert::run(args, cli.quiet),
        Command::Export(args) => export::run(args, cli.quiet),
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => pull::run(args),
        Command::List(args) => list::run(args),
        Command::Rm(args) => rm::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "bitnet", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
    }
}
