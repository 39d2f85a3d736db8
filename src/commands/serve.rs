//! `bitnet serve`: the flags onto `bitnet_serve::ServeOptions`.

use bitnet_runtime::LoadOptions;
use bitnet_serve::ServeOptions;

use crate::Outcome;
use crate::cli::{HeadArg, ServeArgs};

pub fn run(args: ServeArgs) -> anyhow::Result<Outcome> {
    let opts = ServeOptions {
        model: args.model,
        load: LoadOptions {
            kernel: args.kernel,
            threads: args.threads,
            head: args.head.map(HeadArg::kind),
            ctx: args.ctx,
            no_verify: args.no_verify,
            draft: None,
        },
        host: args.host,
        port: args.port,
        parallel: args.parallel,
        max_queue: args.max_queue,
        max_body: args.max_body,
        reference: args.reference,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        allow_hosts: args.allow_hosts,
        max_connections: args.max_connections,
        header_timeout: std::time::Duration::from_secs(args.header_timeout),
        lenient: args.lenient,
        cors_origins: args.cors_origins,
    };
    bitnet_serve::run(opts, &crate::fetch::Cli)?;
    Ok(Outcome::Success)
}
