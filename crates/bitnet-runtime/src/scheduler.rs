//! The engine side of a server: worker threads that own the model and run generation jobs, off the async
//! runtime. The packed worker decodes up to `--parallel` sequences together: each step runs every active
//! sequence's next token through the weights at once ([`PackedModel::forward_batch`]), so clients share the
//! weight reads that dominate decoding. The FP32 reference worker runs one job at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bitnet_chat::{SamplingParams, TokenLogprobs};
use bitnet_model::{Backend, Session};

use crate::decoder::{SeqDecoder, StopReason, reuse_prefix};
use crate::engine::Engine;
use crate::metrics::Metrics;

/// Where a job's events go (an HTTP response stream).
pub trait EventSink: Send {
    /// Delivers `e`; a receiver that is gone drops it (the job is cancelled at the next step).
    fn send(&self, e: Event);
    /// Whether the receiver is gone.
    fn is_closed(&self) -> bool;
}

/// A bounded buffer of a client's events: a client that stops reading (its buffer fills) is treated as
/// gone, so its job is cancelled at the next step and its sequence slot goes to others, instead of the
/// worker holding it for a reader that never comes.
pub struct Bounded {
    tx: tokio::sync::mpsc::Sender<Event>,
    stalled: std::sync::atomic::AtomicBool,
}

impl Bounded {
    /// A sink of `capacity` events and its receiver.
    pub fn channel(capacity: usize) -> (Bounded, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            Bounded {
                tx,
                stalled: std::sync::atomic::AtomicBool::new(false),
            },
            rx,
        )
    }
}

impl EventSink for Bounded {
    fn send(&self, e: Event) {
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = self.tx.try_send(e) {
            self.stalled.store(true, Ordering::Relaxed);
        }
    }

    fn is_closed(&self) -> bool {
        self.stalled.load(Ordering::Relaxed) || self.tx.is_closed()
    }
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<Event> {
    fn send(&self, e: Event) {
        let _ = tokio::sync::mpsc::UnboundedSender::send(self, e);
    }

    fn is_closed(&self) -> bool {
        tokio::sync::mpsc::UnboundedSender::is_closed(self)
    }
}

/// One request for text.
pub struct Job {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// How to sample.
    pub params: SamplingParams,
    /// Stop strings.
    pub stops: Vec<String>,
    /// What the output must be (a grammar), if anything.
    pub constraint: Option<Box<dyn bitnet_chat::TokenConstraint>>,
    /// Where the worker sends the text as it comes; when the receiver is gone (the client disconnected)
    /// the job is cancelled at the next step.
    pub events: Box<dyn EventSink>,
    /// When the request arrived (time to first token counts from here).
    pub received: Instant,
    /// Report each token's log-probability and this many alternatives' ([`Event::Logprobs`]).
    pub logprobs: Option<usize>,
}

/// What a worker reports about a job.
#[derive(Debug, Clone)]
pub enum Event {
    /// A sampled token's log-probabilities (when the job asks for them), sent before the text it adds.
    Logprobs(TokenLogprobs),
    /// More text (never empty).
    Text(String),
    /// The job ended.
    Done(Finish),
    /// The job failed; the message says why.
    Failed(String),
}

/// How a job ended, with its counts and timings.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Why it ended.
    pub stop: StopReason,
    /// The prompt's length in tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached from an earlier request.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// From the request's arrival to its first sampled token.
    pub first_token_s: f64,
    /// From the first sampled token to the end.
    pub decode_s: f64,
}

/// The handle the HTTP side holds on a worker: a queue with a bound.
pub struct Worker {
    tx: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

/// Why a job was refused (HTTP 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-queue` jobs already wait.
    QueueFull,
    /// The worker thread is gone (it failed).
    Stopped,
}

impl Worker {
    /// Queues `job`, or refuses it when `max_queue` jobs already wait or the worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::QueueFull);
        }
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Stopped);
        }
        Ok(())
    }

    /// Jobs waiting for a free sequence slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// A KV cache kept between jobs, with the ids it holds, so a conversation's next turn reuses its prefix.
struct Slot {
    session: Session,
    cached: Vec<u32>,
}

/// Prompt tokens a sequence feeds per step while it prefills: long prompts go in chunks, so sequences
/// that are already decoding keep advancing (one token per step) instead of waiting for a whole prompt.
const PREFILL_CHUNK: usize = 64;

/// A sequence in the packed worker.
struct Active<'e> {
    slot: usize,
    job: Job,
    dec: SeqDecoder<'e>,
    /// Prompt tokens fed so far (the cached prefix included); decoding starts once it is the whole prompt.
    fed: usize,
    /// The token sampled last, to feed at the next step.
    pending: u32,
    cached_tokens: usize,
    first_token: Instant,
    first_token_s: f64,
}

impl Active<'_> {
    fn prefilling(&self) -> bool {
        self.fed < self.job.prompt.len()
    }

    /// The tokens this sequence feeds in the next step.
    fn step_tokens(&self) -> &[u32] {
        if self.prefilling() {
            let end = (self.fed + PREFILL_CHUNK).min(self.job.prompt.len());
            &self.job.prompt[self.fed..end]
        } else {
            std::slice::from_ref(&self.pending)
        }
    }
}

/// Starts a worker thread named `name` running `body` over the jobs it receives.
fn spawn_worker(
    name: &str,
    max_queue: usize,
    body: impl FnOnce(mpsc::Receiver<Job>, &AtomicUsize) + Send + 'static,
) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::channel::<Job>();
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(rx, &q))?;
    Ok(Worker {
        tx,
        queued,
        max_queue,
    })
}

/// Starts the packed worker: up to `parallel` sequences decoded together.
pub fn spawn_packed(
    engine: Arc<Engine>,
    parallel: usize,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<Worker> {
    spawn_worker("bitnet-packed", max_queue, move |rx, q| {
        packed_loop(&engine, parallel.max(1), &rx, q, &metrics)
    })
}

/// Starts a worker that runs one job at a time on `backend` (the FP32 reference).
pub fn spawn_single(
    engine: Arc<Engine>,
    backend: Box<dyn Backend + Send>,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<Worker> {
    spawn_worker("bitnet-reference", max_queue, move |rx, q| {
        while let Ok(job) = rx.recv() {
            q.fetch_sub(1, Ordering::SeqCst);
            run_single(&engine, backend.as_ref(), job, &metrics);
        }
    })
}

fn send(job: &Job, e: Event) {
    // A closed channel means the client left; the next step notices and cancels.
    job.events.send(e);
}

fn finish(job: &Job, dec: &SeqDecoder<'_>, stop: StopReason, t: (usize, f64, Instant)) -> Finish {
    let (cached_tokens, first_token_s, first_token) = t;
    Finish {
        stop,
        prompt_tokens: job.prompt.len(),
        cached_tokens,
        completion_tokens: dec.ids().len(),
        first_token_s,
        decode_s: first_token.elapsed().as_secs_f64(),
    }
}

/// Sends a step's text and, if it ended the job, its end. Returns whether the job goes on.
fn report(
    job: &Job,
    metrics: &Metrics,
    step: crate::decoder::Step,
    fin: impl FnOnce(StopReason) -> Finish,
) -> bool {
    let crate::decoder::Step {
        text,
        stop,
        logprobs,
        ..
    } = step;
    if let Some(lp) = logprobs {
        send(job, Event::Logprobs(lp));
    }
    if !text.is_empty() {
        send(job, Event::Text(text));
    }
    match stop {
        Some(s) => {
            let f = fin(s);
            metrics.completed(&f);
            send(job, Event::Done(f));
            false
        }
        None => true,
    }
}

fn packed_loop(
    engine: &Engine,
    parallel: usize,
    rx: &mpsc::Receiver<Job>,
    queued: &AtomicUsize,
    metrics: &Metrics,
) {
    let model = &engine.model;
    let ctx = engine.context();
    let v = model.config().vocab_size;
    let mut slots: Vec<Slot> = Vec::new();
    let mut active: Vec<Active<'_>> = Vec::new();
    let mut logits = Vec::new();
    loop {
        // Admit waiting jobs into free slots; block only when there is nothing to run.
        while active.len() < parallel {
            metrics.set_active(active.len());
            let mut job = if active.is_empty() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            queued.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                metrics.cancelled();
                continue;
            }
            // A prompt the model cannot run fails its own request here, never the batch it would join.
            if let Err(why) = admissible(&job.prompt, v, ctx) {
                send(&job, Event::Failed(why));
                continue;
            }
            let constraint = job.constraint.take();
            let dec = match SeqDecoder::new(engine, &job.params, &job.stops) {
                Ok(d) => {
                    let d = match job.logprobs {
                        Some(k) => d.with_logprobs(k),
                        None => d,
                    };
                    match constraint {
                        Some(c) => d.with_constraint(c),
                        None => d,
                    }
                }
                Err(e) => {
                    send(&job, Event::Failed(format!("{e:#}")));
                    continue;
                }
            };
            let i = pick_slot(&mut slots, &active, parallel, &job.prompt, || {
                model.session(ctx)
            });
            let slot = &mut slots[i];
            let cached_tokens = reuse_prefix(&mut slot.session, &mut slot.cached, &job.prompt);
            active.push(Active {
                slot: i,
                job,
                dec,
                fed: cached_tokens,
                pending: 0,
                cached_tokens,
                first_token: Instant::now(),
                first_token_s: 0.0,
            });
        }
        metrics.set_active(active.len());
        // Cancel the sequences whose clients left.
        active.retain(|a| {
            let gone = a.job.events.is_closed();
            if gone {
                metrics.cancelled();
            }
            !gone
        });
        if active.is_empty() {
            continue;
        }
        // One step for every sequence: a decode token each, or the next chunk of a prompt.
        active.sort_by_key(|a| a.slot);
        let lists: Vec<&[u32]> = active.iter().map(Active::step_tokens).collect();
        let mut sessions: Vec<&mut Session> = Vec::with_capacity(active.len());
        let mut want = active.iter().map(|a| a.slot).peekable();
        for (i, s) in slots.iter_mut().enumerate() {
            if want.peek() == Some(&i) {
                want.next();
                sessions.push(&mut s.session);
            }
        }
        let errors =
            crate::isolate::isolated_step(&mut sessions, &lists, &mut logits, v, &mut |s, l, o| {
                model.forward_batch_into(s, l, o).map_err(|e| e.to_string())
            });
        let fed: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        metrics.step(active.len());
        let mut errors = errors;
        let mut sampled = 0;
        let mut i = 0;
        active.retain_mut(|a| {
            let slot = &mut slots[a.slot];
            let row = &logits[i * v..(i + 1) * v];
            let n = fed[i];
            let failed = errors[i].take();
            i += 1;
            if let Some(e) = failed {
                // This sequence fails alone (the others ran without it): end its request only.
                send(&a.job, Event::Failed(format!("the model failed: {e}")));
                slot.session.reset();
                slot.cached.clear();
                return false;
            }
            if a.prefilling() {
                slot.cached
                    .extend_from_slice(&a.job.prompt[a.fed..a.fed + n]);
                a.fed += n;
                metrics.prefilled(n);
                if a.prefilling() {
                    return true;
                }
                a.first_token = Instant::now();
                a.first_token_s = a.job.received.elapsed().as_secs_f64();
            } else {
                slot.cached.push(a.pending);
            }
            let room = slot.session.pos < slot.session.max_ctx;
            let timing = (a.cached_tokens, a.first_token_s, a.first_token);
            sampled += 1;
            match a.dec.next(row, &slot.cached, room) {
                Ok(step) => {
                    if let Some(t) = step.token {
                        a.pending = t;
                    }
                    report(&a.job, metrics, step, |s| finish(&a.job, &a.dec, s, timing))
                }
                Err(e) => {
                    send(&a.job, Event::Failed(format!("sampling failed: {e}")));
                    false
                }
            }
        });
        metrics.decoded(sampled);
        metrics.set_active(active.len());
    }
}

/// Why `prompt` cannot run: an id past the vocabulary (an added token the tokenizer knows and the
/// embedding does not), or no room left in the context for a token.
fn admissible(prompt: &[u32], vocab: usize, ctx: usize) -> Result<(), String> {
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(format!(
            "token id {bad} is outside the model's vocabulary (0..{vocab}): the tokenizer knows a token the model cannot embed"
        ));
    }
    if prompt.len() >= ctx {
        return Err(format!(
            "the prompt is {} tokens and the context holds {ctx}",
            prompt.len()
        ));
    }
    Ok(())
}

/// The free slot to run `prompt` in: the one whose cache shares the longest prefix with it (a
/// conversation's earlier turns); without such a prefix a new slot while fewer than `parallel` exist,
/// else the free slot holding the least.
fn pick_slot(
    slots: &mut Vec<Slot>,
    active: &[Active<'_>],
    parallel: usize,
    prompt: &[u32],
    new_session: impl FnOnce() -> Session,
) -> usize {
    let free: Vec<usize> = (0..slots.len())
        .filter(|&i| active.iter().all(|a| a.slot != i))
        .collect();
    let common = |i: usize| {
        slots[i]
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    };
    if let Some(&i) = free.iter().max_by_key(|&&i| common(i))
        && common(i) > 1
    {
        return i;
    }
    if slots.len() < parallel {
        slots.push(Slot {
            session: new_session(),
            cached: Vec::new(),
        });
        return slots.len() - 1;
    }
    *free
        .iter()
        .min_by_key(|&&i| slots[i].cached.len())
        .expect("fewer than `parallel` sequences are active, so a slot is free")
}

/// Runs one job to its end on `backend` (no batching), with the loop `run` and `chat` use.
fn run_single(engine: &Engine, backend: &dyn Backend, mut job: Job, metrics: &Metrics) {
    if let Err(why) = admissible(&job.prompt, backend.config().vocab_size, engine.context()) {
        send(&job, Event::Failed(why));
        return;
    }
    let constraint = job.constraint.take();
    let dec = match SeqDecoder::new(engine, &job.params, &job.stops) {
        Ok(d) => match constraint {
            Some(c) => d.with_constraint(c),
            None => d,
        },
        Err(e) => {
            send(&job, Event::Failed(format!("{e:#}")));
            return;
        }
    };
    let mut session = backend.session(engine.context());
    let waited = job.received.elapsed().as_secs_f64();
    let cancelled = || job.events.is_closed();
    let mut emit = |text: &str| {
        metrics.decoded(1);
        if !text.is_empty() {
            send(&job, Event::Text(text.to_string()));
        }
        Ok(())
    };
    let generated = engine.generate_with(
        backend,
        &mut session,
        &mut Vec::new(),
        &job.prompt,
        dec,
        &cancelled,
        &mut emit,
    );
    match generated {
        Err(e) => send(&job, Event::Failed(format!("{e:#}"))),
        Ok(g) if g.stop == StopReason::Cancelled => metrics.cancelled(),
        Ok(g) => {
            metrics.prefilled(g.prompt_tokens);
            let f = Finish {
                stop: g.stop,
                prompt_tokens: g.prompt_tokens,
                cached_tokens: g.reused_tokens,
                completion_tokens: g.ids.len(),
                first_token_s: waited + g.first_token_s,
                decode_s: g.decode_s,
            };
            metrics.completed(&f);
            send(&job, Event::Done(f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded, Event, EventSink, admissible};

    #[test]
    fn a_client_that_stops_reading_counts_as_gone_when_its_buffer_fills() {
        let (sink, mut rx) = Bounded::channel(2);
        sink.send(Event::Text("a".into()));
        sink.send(Event::Text("b".into()));
        assert!(!sink.is_closed());
        sink.send(Event::Text("c".into()));
        assert!(sink.is_closed(), "a full buffer stalls the client");
        assert!(matches!(rx.try_recv(), Ok(Event::Text(t)) if t == "a"));
        let (sink, rx) = Bounded::channel(2);
        drop(rx);
        assert!(sink.is_closed(), "a dropped receiver is gone");
    }

    #[test]
    fn prompts_the_model_cannot_run_are_refused_alone() {
        assert!(admissible(&[1, 2, 3], 10, 8).is_ok());
        assert!(
            admissible(&[1, 10], 10, 8)
                .unwrap_err()
                .contains("token id 10")
        );
        assert!(admissible(&[], 10, 8).is_err());
        assert!(
            admissible(&[1; 8], 10, 8)
                .unwrap_err()
                .contains("context holds 8")
        );
    }
}
