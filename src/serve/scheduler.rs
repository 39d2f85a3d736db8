//! The engine side of `serve`: worker threads that own the model and run generation jobs, off the async
//! runtime. The packed worker decodes up to `--parallel` sequences together: each step runs every active
//! sequence's next token through the weights at once ([`PackedModel::forward_batch`]), so clients share the
//! weight reads that dominate decoding. The FP32 reference worker runs one job at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bitnet_chat::SamplingParams;
use bitnet_model::{Backend, LogitsMode, Session};
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::engine::{Engine, SeqDecoder, StopReason, reuse_prefix};

/// One request for text.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    /// Where the worker sends the text as it comes; when the receiver is gone (the client disconnected)
    /// the job is cancelled at the next step.
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// What a worker reports about a job.
#[derive(Debug, Clone)]
pub enum Event {
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
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached from an earlier request.
    pub cached_tokens: usize,
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

/// The queue is full: the request is refused (HTTP 503).
#[derive(Debug)]
pub struct QueueFull;

impl Worker {
    /// Queues `job`, or refuses it when `max_queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull);
        }
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull);
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

/// A sequence being decoded.
struct Active<'e> {
    slot: usize,
    job: Job,
    dec: SeqDecoder<'e>,
    /// The token sampled last, to feed at the next step.
    pending: u32,
    cached_tokens: usize,
    first_token: Instant,
    first_token_s: f64,
}

/// Starts the packed worker: up to `parallel` sequences decoded together.
pub fn spawn_packed(
    engine: Arc<Engine>,
    parallel: usize,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::channel::<Job>();
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    std::thread::Builder::new()
        .name("bitnet-packed".into())
        .spawn(move || packed_loop(&engine, parallel.max(1), &rx, &q, &metrics))?;
    Ok(Worker {
        tx,
        queued,
        max_queue,
    })
}

/// Starts a worker that runs one job at a time on `backend` (the FP32 reference).
pub fn spawn_single(
    engine: Arc<Engine>,
    backend: Box<dyn Backend + Send>,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::channel::<Job>();
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    std::thread::Builder::new()
        .name("bitnet-reference".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                q.fetch_sub(1, Ordering::SeqCst);
                run_single(&engine, backend.as_ref(), job, &metrics);
            }
        })?;
    Ok(Worker {
        tx,
        queued,
        max_queue,
    })
}

fn send(job: &Job, e: Event) {
    // A closed channel means the client left; the next step notices and cancels.
    let _ = job.events.send(e);
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
    text: String,
    stop: Option<StopReason>,
    fin: impl FnOnce(StopReason) -> Finish,
) -> bool {
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
    let mut slots: Vec<Slot> = Vec::new();
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        // Admit waiting jobs into free slots; block only when there is nothing to decode.
        while active.len() < parallel {
            metrics.set_active(active.len());
            let job = if active.is_empty() {
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
            let slot = pick_slot(&mut slots, &active, parallel, &job.prompt, || {
                model.session(ctx)
            });
            if let Some(a) = admit(engine, &mut slots[slot], slot, job, metrics) {
                active.push(a);
            }
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
        // One decode step for every active sequence.
        active.sort_by_key(|a| a.slot);
        let tokens: Vec<u32> = active.iter().map(|a| a.pending).collect();
        let mut sessions: Vec<&mut Session> = Vec::with_capacity(active.len());
        let mut want = active.iter().map(|a| a.slot).peekable();
        for (i, s) in slots.iter_mut().enumerate() {
            if want.peek() == Some(&i) {
                want.next();
                sessions.push(&mut s.session);
            }
        }
        let logits = match model.forward_batch(&mut sessions, &tokens) {
            Ok(l) => l,
            Err(e) => {
                for a in active.drain(..) {
                    send(&a.job, Event::Failed(format!("the model failed: {e}")));
                    slots[a.slot].session.reset();
                    slots[a.slot].cached.clear();
                }
                continue;
            }
        };
        metrics.step(active.len());
        metrics.decoded(active.len());
        let v = model.config().vocab_size;
        let mut i = 0;
        active.retain_mut(|a| {
            let slot = &mut slots[a.slot];
            slot.cached.push(a.pending);
            let room = slot.session.pos < slot.session.max_ctx;
            let row = &logits[i * v..(i + 1) * v];
            i += 1;
            let timing = (a.cached_tokens, a.first_token_s, a.first_token);
            match a.dec.next(row, &slot.cached, room) {
                Ok(step) => {
                    if let Some(t) = step.token {
                        a.pending = t;
                    }
                    report(&a.job, metrics, step.text, step.stop, |s| {
                        finish(&a.job, &a.dec, s, timing)
                    })
                }
                Err(e) => {
                    send(&a.job, Event::Failed(format!("sampling failed: {e}")));
                    false
                }
            }
        });
        metrics.set_active(active.len());
    }
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

/// Prefills `job`'s prompt in `slot` and samples its first token.
fn admit<'e>(
    engine: &'e Engine,
    slot: &mut Slot,
    index: usize,
    job: Job,
    metrics: &Metrics,
) -> Option<Active<'e>> {
    let model = &engine.model;
    let mut dec = match SeqDecoder::new(engine, &job.params, &job.stops) {
        Ok(d) => d,
        Err(e) => {
            send(&job, Event::Failed(format!("{e:#}")));
            return None;
        }
    };
    let cached_tokens = reuse_prefix(&mut slot.session, &mut slot.cached, &job.prompt);
    let new = &job.prompt[cached_tokens..];
    let logits = match model.forward(&mut slot.session, new, LogitsMode::Last, None) {
        Ok(f) => f.logits,
        Err(e) => {
            slot.session.reset();
            slot.cached.clear();
            send(&job, Event::Failed(format!("{e}")));
            return None;
        }
    };
    slot.cached.extend_from_slice(new);
    metrics.prefilled(new.len());
    let room = slot.session.pos < slot.session.max_ctx;
    let first_token = Instant::now();
    let first_token_s = job.received.elapsed().as_secs_f64();
    let timing = (cached_tokens, first_token_s, first_token);
    match dec.next(&logits, &slot.cached, room) {
        Ok(step) => {
            metrics.decoded(1);
            if report(&job, metrics, step.text, step.stop, |s| {
                finish(&job, &dec, s, timing)
            }) {
                Some(Active {
                    slot: index,
                    pending: step.token.expect("a step that goes on has a token"),
                    job,
                    dec,
                    cached_tokens,
                    first_token,
                    first_token_s,
                })
            } else {
                None
            }
        }
        Err(e) => {
            send(&job, Event::Failed(format!("sampling failed: {e}")));
            None
        }
    }
}

/// Runs one job to its end on `backend` (no batching).
fn run_single(engine: &Engine, backend: &dyn Backend, job: Job, metrics: &Metrics) {
    let ctx = engine.context();
    let mut dec = match SeqDecoder::new(engine, &job.params, &job.stops) {
        Ok(d) => d,
        Err(e) => {
            send(&job, Event::Failed(format!("{e:#}")));
            return;
        }
    };
    let mut session = backend.session(ctx);
    let mut history = job.prompt.clone();
    let mut logits = match backend.forward(&mut session, &job.prompt, LogitsMode::Last, None) {
        Ok(f) => f.logits,
        Err(e) => {
            send(&job, Event::Failed(format!("{e}")));
            return;
        }
    };
    metrics.prefilled(job.prompt.len());
    let first_token = Instant::now();
    let first_token_s = job.received.elapsed().as_secs_f64();
    let timing = (0, first_token_s, first_token);
    loop {
        if job.events.is_closed() {
            metrics.cancelled();
            return;
        }
        let step = match dec.next(&logits, &history, session.pos < session.max_ctx) {
            Ok(s) => s,
            Err(e) => {
                send(&job, Event::Failed(format!("sampling failed: {e}")));
                return;
            }
        };
        metrics.decoded(1);
        if !report(&job, metrics, step.text, step.stop, |s| {
            finish(&job, &dec, s, timing)
        }) {
            return;
        }
        let next = step.token.expect("a step that goes on has a token");
        logits = match backend.forward(&mut session, &[next], LogitsMode::Last, None) {
            Ok(f) => f.logits,
            Err(e) => {
                send(&job, Event::Failed(format!("the model failed: {e}")));
                return;
            }
        };
        history.push(next);
    }
}
