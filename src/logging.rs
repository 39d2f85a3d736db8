//! Messages on stderr through `tracing`: notes as they are, `warning: ...`, `error: ...`, and with `-v`
//! debug lines that name where they come from. `RUST_LOG` (e.g. `RUST_LOG=bitnet_runtime=debug`)
//! overrides `-v`/`-q`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Our crates, whose notes a user sees by default.
const OURS: &[&str] = &[
    "bitnet",
    "bitnet_chat",
    "bitnet_convert",
    "bitnet_format",
    "bitnet_hub",
    "bitnet_kernels",
    "bitnet_model",
    "bitnet_reference",
    "bitnet_runtime",
    "bitnet_serve",
];

/// The filter for `-v` (count) and `-q`: notes and warnings by default, errors only with `-q`, our debug
/// lines with `-v`, everyone's trace lines with `-vv`.
fn directives(verbose: u8, quiet: bool) -> String {
    let ours = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let others = if verbose >= 2 { "trace" } else { "warn" };
    let mut d = vec![others.to_string()];
    d.extend(OURS.iter().map(|c| format!("{c}={ours}")));
    d.join(",")
}

/// Installs the subscriber; call once, first thing.
pub fn init(verbose: u8, quiet: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(directives(verbose, quiet)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Plain)
        .try_init();
}

/// `warning: message`, as the rest of the command line prints.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::INFO => {}
            Level::DEBUG => write!(w, "debug: {}: ", meta.target())?,
            Level::TRACE => write!(w, "trace: {}: ", meta.target())?,
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                    && !f.is_empty()
                {
                    write!(w, "{{{f}}}")?;
                }
                write!(w, ": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn verbosity_maps_to_levels() {
        assert!(directives(0, false).starts_with("warn,bitnet=info,"));
        assert!(directives(0, true).contains("bitnet_runtime=error"));
        assert!(directives(1, false).contains("bitnet_model=debug"));
        assert!(directives(2, false).starts_with("trace,"));
    }
}
