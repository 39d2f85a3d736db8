//! Server counters, shown at `/metrics` (Prometheus text format) and `/stats` (JSON for the web page).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::scheduler::Finish;

/// How far back the tokens/s gauge looks.
const WINDOW: Duration = Duration::from_secs(3);

#[derive(Default)]
/// Counters the scheduler and the HTTP side update.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    prefill_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    completed: AtomicU64,
    /// Sums over finished generations, in microseconds: arrival to first token, first token to end.
    first_token_us: AtomicU64,
    decode_us: AtomicU64,
    cancelled: AtomicU64,
    active: AtomicUsize,
    /// Batched decode steps of the packed worker, and the sequences they ran.
    steps: AtomicU64,
    step_sequences: AtomicU64,
    /// (when, tokens) of recent decode steps.
    recent: Mutex<VecDeque<(Instant, usize)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Counts a request by route and status.
    pub fn request(&self, route: &str, status: u16) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// Counts prompt tokens computed.
    pub fn prefilled(&self, tokens: usize) {
        self.prefill_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A batched decode step ran `n` sequences through the weights together.
    pub fn step(&self, n: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_sequences.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A step sampled `tokens` tokens (one per sequence).
    pub fn decoded(&self, tokens: usize) {
        let now = Instant::now();
        let mut r = lock(&self.recent);
        r.push_back((now, tokens));
        while r.front().is_some_and(|(t, _)| now - *t > WINDOW) {
            r.pop_front();
        }
    }

    /// Counts a finished generation.
    pub fn completed(&self, f: &Finish) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.first_token_us
            .fetch_add((f.first_token_s * 1e6) as u64, Ordering::Relaxed);
        self.decode_us
            .fetch_add((f.decode_s * 1e6) as u64, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(f.prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(f.completion_tokens as u64, Ordering::Relaxed);
    }

    /// Counts a generation whose client left.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of sequences being decoded.
    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    /// Sequences being decoded.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests answered.
    pub fn requests_total(&self) -> u64 {
        lock(&self.requests).values().sum()
    }

    /// Tokens generated.
    pub fn completion_tokens(&self) -> u64 {
        self.completion_tokens.load(Ordering::Relaxed)
    }

    /// Tokens sampled per second over the last few seconds, all sequences together: the steps after the
    /// window's first, over the time since it. 0 when nothing was decoded in the last second.
    pub fn decode_tok_s(&self) -> f64 {
        let now = Instant::now();
        let r = lock(&self.recent);
        match (r.front(), r.back()) {
            (Some(first), Some(last)) if r.len() > 1 && now - last.0 < Duration::from_secs(1) => {
                let tokens: usize = r.iter().skip(1).map(|(_, n)| n).sum();
                tokens as f64 / (last.0 - first.0).as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        }
    }

    /// The Prometheus text exposition; `queues` are (backend, jobs waiting).
    pub fn render(&self, queues: &[(&str, usize)], rss: Option<u64>) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let n = family(
            "bitnet_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        let mut lines = String::new();
        for ((route, status), count) in lock(&self.requests).iter() {
            let _ = writeln!(
                lines,
                "{n}{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str(&lines);
        let counters = [
            (
                "bitnet_prompt_tokens_total",
                "Prompt tokens of finished generations.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "bitnet_prefill_tokens_total",
                "Prompt tokens run through the model (cached prefixes excluded).",
                self.prefill_tokens.load(Ordering::Relaxed),
            ),
            (
                "bitnet_completion_tokens_total",
                "Tokens generated by finished generations.",
                self.completion_tokens(),
            ),
            (
                "bitnet_generations_total",
                "Generations that ran to a stop.",
                self.completed.load(Ordering::Relaxed),
            ),
            (
                "bitnet_decode_steps_total",
                "Decode steps of the packed backend (each reads the weights once).",
                self.steps.load(Ordering::Relaxed),
            ),
            (
                "bitnet_decode_step_sequences_total",
                "Sequences those steps decoded together (over steps: the mean batch).",
                self.step_sequences.load(Ordering::Relaxed),
            ),
            (
                "bitnet_cancelled_total",
                "Generations cancelled because the client went away.",
                self.cancelled.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let n = self.completed.load(Ordering::Relaxed);
        for (name, help, us) in [
            (
                "bitnet_time_to_first_token_seconds",
                "From a request's arrival to its first token (queue and prefill).",
                &self.first_token_us,
            ),
            (
                "bitnet_decode_seconds",
                "From a generation's first token to its end.",
                &self.decode_us,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} summary\n{name}_sum {:.6}\n{name}_count {n}",
                us.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "# HELP bitnet_decode_tokens_per_second Tokens sampled per second, all sequences, last {} s.\n\
             # TYPE bitnet_decode_tokens_per_second gauge\nbitnet_decode_tokens_per_second {:.3}",
            WINDOW.as_secs(),
            self.decode_tok_s()
        );
        let _ = writeln!(
            out,
            "# HELP bitnet_active_sequences Sequences being decoded by the packed backend.\n\
             # TYPE bitnet_active_sequences gauge\nbitnet_active_sequences {}",
            self.active()
        );
        let _ = writeln!(
            out,
            "# HELP bitnet_queue_length Requests waiting for a free sequence slot.\n\
             # TYPE bitnet_queue_length gauge"
        );
        for (backend, q) in queues {
            let _ = writeln!(out, "bitnet_queue_length{{backend=\"{backend}\"}} {q}");
        }
        if let Some(rss) = rss {
            let _ = writeln!(
                out,
                "# HELP bitnet_resident_memory_bytes Resident memory of the server process.\n\
                 # TYPE bitnet_resident_memory_bytes gauge\nbitnet_resident_memory_bytes {rss}"
            );
        }
        out
    }
}
