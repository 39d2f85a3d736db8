//! Command-line arguments.

use std::path::PathBuf;

use bitnet_model::HeadKind;
use bitnet_runtime::{LoadOptions, NgramDraft, SamplingOverrides};
use clap::{Parser, Subcommand, ValueEnum};

/// Convert, inspect and run BitNet b1.58 ternary language models on CPUs.
#[derive(Debug, Parser)]
#[command(name = "bitnet", version, about, propagate_version = true)]
pub struct Cli {
    /// More detail on stderr (-v: debug lines; -vv: everyone's trace lines). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print nothing on stderr but errors (no notes, warnings or progress bars).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize a Hugging Face BitNet checkpoint (or read a GGUF file) and pack it into one .bitnet file.
    Convert(ConvertArgs),
    /// Write a .bitnet file as GGUF (TQ2_0 or TQ1_0 projections) for llama.cpp.
    Export(ExportArgs),
    /// Show what a .bitnet file holds: config, tokenizer, tensors, sizes, checksums.
    Inspect(InspectArgs),
    /// Check the packed model's logits against transformers' logits or an FP32 reference; exit 1 past tolerance.
    Verify(VerifyArgs),
    /// Measure prefill and decode speed, memory, and decode speed against the memory-bandwidth roof.
    Bench(BenchArgs),
    /// Generate text from a prompt (-p or stdin), streamed to stdout.
    Run(RunArgs),
    /// Talk with the model: one message per line; /help for commands.
    Chat(ChatArgs),
    /// Serve an OpenAI-compatible HTTP API and a web chat page.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Download a Hub repo (or take a folder) and convert it into the cache, without running it.
    Pull(PullArgs),
    /// List the converted models in the cache (~/.cache/bitnet).
    List(ListArgs),
    /// Remove converted models from the cache.
    Rm(RmArgs),
    /// How well the model predicts a text (perplexity), per LM head.
    Perplexity(PerplexityArgs),
    /// What this machine offers a model: CPU features and kernel set, threads, memory and bandwidth, caches.
    Doctor(DoctorArgs),
    /// Print a shell completion script (e.g. `bitnet completions bash > ~/.local/share/bash-completion/completions/bitnet`).
    Completions(CompletionsArgs),
}

/// `bitnet doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `bitnet completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// LM head storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LmHeadArg {
    /// Exactly as in the checkpoint (bf16); a tied head reuses the embedding.
    Bf16,
    /// An extra int8 copy with per-row scales: half the bytes per decoded token, not bit-exact.
    Int8,
}

/// `bitnet convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// A Hugging Face model folder, a repo id (org/name[@revision], downloaded into the Hugging Face
    /// cache when it is not there), or a GGUF file (TQ1_0, TQ2_0, I2_S).
    pub input: String,
    /// The .bitnet file to write (written atomically: a temporary file beside it, then a rename).
    #[arg(short, long)]
    pub output: PathBuf,
    /// How to store the LM head.
    #[arg(long, value_enum, default_value_t = LmHeadArg::Bf16)]
    pub lm_head: LmHeadArg,
    /// Replace OUTPUT if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Print what was written as JSON on stdout (sizes, counts, warnings, notes, time).
    #[arg(long)]
    pub json: bool,
}

/// The ternary type of `bitnet export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GgufTypeArg {
    /// llama.cpp's 2-bit blocks (2.0625 bits per weight).
    #[value(name = "tq2_0")]
    Tq2_0,
    /// llama.cpp's base-3 blocks (1.6875 bits per weight).
    #[value(name = "tq1_0")]
    Tq1_0,
}

/// `bitnet export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The .bitnet file.
    pub input: PathBuf,
    /// The GGUF file to write (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The type of the ternary projections.
    #[arg(long = "type", value_enum, default_value_t = GgufTypeArg::Tq2_0)]
    pub ggml_type: GgufTypeArg,
    /// Replace OUTPUT if it exists.
    #[arg(short, long)]
    pub force: bool,
}

/// `bitnet inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .bitnet file.
    pub file: PathBuf,
    /// Print JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Recompute every tensor's SHA-256 and fail (exit 1) if one differs.
    #[arg(long)]
    pub check: bool,
}

/// `bitnet verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The .bitnet file.
    pub model: PathBuf,
    /// Compare against the FP32 reference computed from this Hugging Face checkpoint (folder or org/name).
    #[arg(long)]
    pub reference: Option<String>,
    /// Compare against these logits (safetensors: `input_ids` i64 [P, T], `logits` f32 [P, T, V]).
    #[arg(long)]
    pub expected_logits: Option<PathBuf>,
    /// Prompts for --reference, one per line (default: a built-in set).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Compare named activations op by op (needs --reference) and name the first layer and op that part.
    #[arg(long)]
    pub trace: bool,
    /// Every position's cosine similarity must be at least this.
    #[arg(long, default_value_t = 0.999)]
    pub min_cosine: f64,
    /// Every position's KL(reference || packed) must be at most this (nats).
    #[arg(long, default_value_t = 0.1)]
    pub max_kl: f64,
    /// The mean KL over positions must be at most this (nats).
    #[arg(long, default_value_t = 0.02)]
    pub max_mean_kl: f64,
    /// The share of positions whose argmax agrees must be at least this.
    #[arg(long, default_value_t = 0.9)]
    pub min_top1: f64,
    /// The share of positions agreeing within 1e-3 must be at least this.
    #[arg(long, default_value_t = 0.5)]
    pub min_tight: f64,
    /// With --reference: each packed layer, run on the reference's input to it, must add to the residual
    /// stream what the reference's layer adds, within this relative RMS error.
    #[arg(long, default_value_t = 0.05)]
    pub max_layer_delta: f64,
}

/// Which path `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The packed file through the SIMD kernels.
    Packed,
    /// The FP32 reference (dense f32 weights).
    Reference,
    /// Both, each in its own process, with the ratios.
    Both,
}

/// `bitnet bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A .bitnet file, or a Hugging Face folder or repo id (converted once into ~/.cache/bitnet); or
    /// use --synthetic.
    #[arg(required_unless_present = "synthetic")]
    pub model: Option<String>,
    /// Benchmark a model with the real shapes of a family (2b4t, falcon3-1b/3b/7b/10b, llama3-8b-1.58,
    /// 1bitllm-3b) and seeded random weights, written to a temporary file first.
    #[arg(long, conflicts_with = "model",
          value_parser = clap::builder::PossibleValuesParser::new(bitnet_model::synthetic::NAMES))]
    pub synthetic: Option<String>,
    /// LM head of the synthetic model.
    #[arg(long, value_enum, default_value_t = LmHeadArg::Int8)]
    pub lm_head: LmHeadArg,
    /// LM head to decode with (default: rescored when the file has both heads, else int8 when it has
    /// one, else exact).
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// Prompt length for prefill.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Threads (default: one per core, or one if two measure slower at load).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which path to measure.
    #[arg(long, value_enum, default_value_t = BackendArg::Packed)]
    pub backend: BackendArg,
    /// Repetitions of prefill + decode (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Untimed runs (a prefill of the prompt and one decoded token) before the timed ones, so these
    /// measure the steady state rather than first touches of the map and buffers.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Force a kernel set (scalar, avx2, avxvnni, avxvnni-evex, avx512vnni; on aarch64 neon, dotprod, i8mm); default: the best this CPU runs (or BITNET_KERNEL).
    #[arg(long)]
    pub kernel: Option<String>,
    /// For the reference backend: the Hugging Face checkpoint (default: the packed file's weights in f32).
    #[arg(long)]
    pub reference: Option<String>,
    /// Also decode N sequences together, as `serve --parallel N` does (one weight read per step for all
    /// of them), and report their aggregate tokens/s against one sequence's (packed backend).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A/B in one sitting: measure this second model against the first, alternating (A B, B A, ...) for
    /// --rounds rounds, each run in its own process; reports the per-round ratio B/A.
    #[arg(long, value_name = "MODEL")]
    pub against: Option<String>,
    /// A/B: the same model with this LM head as B.
    #[arg(long, value_enum, value_name = "HEAD")]
    pub against_head: Option<HeadArg>,
    /// A/B: another build of bitnet as B (its `bench` runs the same model and flags).
    #[arg(long, value_name = "EXE")]
    pub against_binary: Option<PathBuf>,
    /// A/B rounds (each runs A and B once, the order alternating).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// Which LM head generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeadArg {
    /// The exact head (bf16).
    Exact,
    /// The int8 copy, when the file has one.
    Int8,
    /// The int8 copy, then the exact head on every row that could be the largest: the exact head's
    /// greedy token at nearly the int8 head's bytes (needs both heads).
    Rescored,
}

impl HeadArg {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The runtime's name for it.
    pub fn kind(self) -> HeadKind {
        match self {
            HeadArg::Exact => HeadKind::Exact,
            HeadArg::Int8 => HeadKind::Int8,
            HeadArg::Rescored => HeadKind::Rescored,
        }
    }
}

/// `bitnet perplexity`.
#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    /// A .bitnet file, or a Hugging Face model folder or repo id (converted once and cached).
    pub model: String,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Positions per chunk, BOS included (capped by the model's context).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// LM heads to score with, one result each (e.g. `--head exact,int8`); default exact.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub head: Vec<HeadArg>,
    /// Worker threads (default: one per core, or one if two measure slower at load).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Kernel set (scalar, avx2, avxvnni, avxvnni-evex, avx512vnni; default: the best this CPU runs).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Sampling, stopping and runtime options shared by `run` and `chat`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GenArgs {
    /// Temperature; 0 is greedy (default: the model's generation_config, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this share of the most likely one, in [0, 1].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalty for tokens already in the context (1: off).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler: the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Threads (default: one per core, or one if two measure slower at load).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Force a kernel set (scalar, avx2, avxvnni, avxvnni-evex, avx512vnni; on aarch64 neon, dotprod, i8mm).
    #[arg(long)]
    pub kernel: Option<String>,
    /// LM head (default: rescored when the file has both heads, else int8 when it has one, else exact).
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// Positions the conversation may use; the KV cache is sized by it (default: the model's context).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Do not check the tensor checksums before the file's first use (they are checked once per file and
    /// remembered in ~/.local/state/bitnet).
    #[arg(long)]
    pub no_verify: bool,
    /// Speculative decoding without a draft model: `ngram` proposes what followed the latest earlier match
    /// of the last tokens (prompt lookup) and verifies it in one batched pass; the output is unchanged.
    #[arg(long, value_enum)]
    pub draft: Option<DraftArg>,
    /// Most tokens proposed per pass (default 10).
    #[arg(long, requires = "draft")]
    pub draft_max: Option<usize>,
    /// Longest run of last tokens looked up (default 3).
    #[arg(long, requires = "draft")]
    pub draft_ngram: Option<usize>,
    /// Shortest run of last tokens looked up (default 2).
    #[arg(long, requires = "draft")]
    pub draft_min_ngram: Option<usize>,
}

/// How to draft tokens for speculative decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DraftArg {
    /// Prompt lookup: the continuation of the latest earlier match of the last n tokens.
    Ngram,
}

impl GenArgs {
    /// The drafting asked for, if any.
    pub fn draft(&self) -> Option<NgramDraft> {
        self.draft.map(|DraftArg::Ngram| {
            let d = NgramDraft::default();
            NgramDraft {
                max_ngram: self.draft_ngram.unwrap_or(d.max_ngram),
                min_ngram: self.draft_min_ngram.unwrap_or(d.min_ngram),
                max_tokens: self.draft_max.unwrap_or(d.max_tokens),
            }
        })
    }

    /// How to load the model.
    pub fn load(&self) -> LoadOptions {
        LoadOptions {
            kernel: self.kernel.clone(),
            threads: self.threads,
            head: self.head.map(HeadArg::kind),
            ctx: self.ctx,
            no_verify: self.no_verify,
            draft: self.draft(),
        }
    }

    /// The sampling flags given.
    pub fn overrides(&self) -> SamplingOverrides {
        SamplingOverrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
        }
    }
}

/// `bitnet run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A .bitnet file, or a Hugging Face folder or repo id (downloaded if needed, converted once into
    /// ~/.cache/bitnet).
    pub model: String,
    /// The prompt (default: read from stdin).
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Print prefill and decode tokens/s and time to first token on stderr.
    #[arg(long)]
    pub stats: bool,
    /// Print one JSON object (text, ids, counts, stop reason, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gen_args: GenArgs,
}

/// `bitnet chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// A .bitnet file, or a Hugging Face folder or repo id (downloaded if needed, converted once into
    /// ~/.cache/bitnet).
    pub model: String,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub gen_args: GenArgs,
}

/// `bitnet serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A .bitnet file, or a Hugging Face folder or repo id (downloaded if needed, converted once into
    /// ~/.cache/bitnet).
    pub model: String,
    /// Address to listen on (loopback by default; 0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Threads of the compute pool (default: one per core, or one if two measure slower at load).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sequences decoded together: each step reads the weights once for all of them.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence; past it the server answers 503.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body in bytes; past it the server answers 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// A Hugging Face checkpoint of the same model to offer as the FP32 reference backend
    /// (model id `NAME:fp32`), for comparison in the web page.
    #[arg(long)]
    pub reference: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1 and /metrics.
    #[arg(long, env = "BITNET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Force a kernel set (scalar, avx2, avxvnni, avxvnni-evex, avx512vnni; on aarch64 neon, dotprod, i8mm).
    #[arg(long)]
    pub kernel: Option<String>,
    /// LM head (default: rescored when the file has both heads, else int8 when it has one, else exact).
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// Positions each sequence may use; the KV caches (`--parallel` of them) are sized by it (default: the
    /// model's context).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Do not check the tensor checksums before the file's first use.
    #[arg(long)]
    pub no_verify: bool,
    /// A host name requests may use besides the loopback names and --host (repeatable); others get 403,
    /// so a web page cannot reach the server through a DNS name it controls.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Open connections at most; past it, new connections are closed at once.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's head (on a new connection, or between requests on a kept
    /// one) before the connection is closed.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Ignore request fields the server does not know (one warning line per request) instead of
    /// answering 400, as vLLM does.
    #[arg(long)]
    pub lenient: bool,
    /// An origin whose web pages may call the API from a browser (CORS), such as https://app.example
    /// (repeatable); `*` allows every origin (a page still needs --api-key if one is set).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

/// `bitnet pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// A repo id (org/name[@revision]): the Hub is asked for the revision's newest commit. A folder is
    /// converted as it is.
    pub model: String,
    /// Also make sure the copy holds this head (an untied model's exact head needs a copy of its own).
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
}

/// `bitnet list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `bitnet rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Names as `bitnet list` shows them, or sources (a repo id, a folder): every copy of it goes.
    #[arg(required_unless_present = "all")]
    pub names: Vec<String>,
    /// Remove every converted model.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
}
