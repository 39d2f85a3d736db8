//! A persistent thread pool for the decode loop: workers spin briefly waiting for the next job, then park;
//! the calling thread works too. One `run` costs an atomic store and a wake-up instead of rayon's
//! injection into a foreign pool (tens of microseconds per call on this class of machine).

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// Spins (checking for a new job) before a worker parks.
const SPIN: usize = 1 << 15;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    epoch: AtomicUsize,
    done: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
    /// The current job; written by `run` before it bumps `epoch`, read by workers after they see the bump.
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is only written by the thread inside `run` while no worker reads it (before the epoch
// bump that publishes it, and after every worker reported done), and read by workers between those two
// points; the epoch/done atomics order those accesses (Release/Acquire).
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer in `job` is only dereferenced during `run`, while the closure lives.
unsafe impl Send for Shared {}

/// A fixed set of threads that run one job at a time, each job on every thread.
pub struct Pool {
    /// Serializes `run` calls: the job slot holds one job at a time.
    busy: std::sync::Mutex<()>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// A pool of `threads` threads in all (the caller's plus `threads - 1` workers); `threads >= 1`.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
        });
        let workers = (1..threads)
            .map(|tid| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("bitnet-{tid}"))
                    .spawn(move || worker(shared, tid))
                    .expect("spawning a pool thread")
            })
            .collect();
        Pool {
            busy: std::sync::Mutex::new(()),
            shared,
            workers,
            threads,
        }
    }

    /// Number of threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(tid)` for every `tid` in `0..threads` (tid 0 on the calling thread) and returns when all have
    /// finished.
    ///
    /// # Panics
    /// If `f` panicked on a worker.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let _one_job = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because this function does not return before every worker
        // has finished calling the job (the `done` wait below), and it clears the slot before returning.
        let job: Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f as *const _)
        };
        // SAFETY: no worker reads `job` now: the previous run waited for all of them, and they read it only
        // after an epoch bump.
        unsafe { *s.job.get() = Some(job) };
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0usize;
        while s.done.load(Ordering::Acquire) != self.threads - 1 {
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every worker has finished with the job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a bitnet pool thread panicked");
        }
    }

    /// Splits `0..n` into `threads` contiguous ranges, balanced, each a multiple of `align` except the last.
    pub fn split(n: usize, threads: usize, tid: usize, align: usize) -> std::ops::Range<usize> {
        let units = n.div_ceil(align);
        let per = units / threads;
        let extra = units % threads;
        let start = tid * per + tid.min(extra);
        let end = start + per + usize::from(tid < extra);
        (start * align).min(n)..(end * align).min(n)
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen || s.stop.load(Ordering::Acquire) {
                break e;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::park();
            }
        };
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        seen = epoch;
        // SAFETY: the epoch bump (Acquire above) published the job, and `run` keeps it alive until this
        // thread increments `done`.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            // SAFETY: the closure lives until `run` sees every worker done.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(tid))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice shared by the threads of a job, each writing its own disjoint ranges.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: threads only obtain disjoint ranges (the contract of `range`), so sharing the pointer is sound.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Wraps a slice for the duration of one job.
    pub fn new(s: &'a mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _life: std::marker::PhantomData,
        }
    }

    /// The sub-slice `r`.
    ///
    /// # Safety
    /// No two live sub-slices obtained from this wrapper may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "range out of bounds");
        // SAFETY: in bounds (checked); disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// The wrapping sum of a buffer, in 8 independent lanes: the portable build of the bandwidth probe's
/// streaming read ([`Kernels::stream_sum`](crate::Kernels)).
pub fn stream_sum(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let (chunks, tail) = part.as_chunks::<8>();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    // The tail too (the probe used to drop it; as the oracle of the SIMD builds it must not).
    tail.iter()
        .chain(&acc)
        .fold(0u64, |s, v| s.wrapping_add(*v))
}

/// Streaming-read bandwidth of this machine on `pool`'s threads, in bytes per second: the best of `passes`
/// reads of a `bytes`-long buffer, each thread summing its contiguous share with `kernels`' streaming read.
pub fn read_bandwidth(pool: &Pool, kernels: &crate::Kernels, bytes: usize, passes: usize) -> f64 {
    let words = (bytes / 8).max(pool.threads() * 64);
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = pool.threads();
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let start = std::time::Instant::now();
        pool.run(&|tid| {
            let part = &buf[Pool::split(words, threads, tid, 16)];
            std::hint::black_box((kernels.stream_sum)(part));
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// Bytes per second at which `pool`'s threads stream-read `parts` (each split evenly across the threads):
/// the best of `passes`. Measuring on the very bytes a decoded token reads (a model's weights, mapped from
/// the page cache) gives that token's memory roof. Each thread sums with `kernels`' streaming read.
pub fn read_bandwidth_of(
    pool: &Pool,
    kernels: &crate::Kernels,
    parts: &[&[u8]],
    passes: usize,
) -> f64 {
    let threads = pool.threads();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let start = std::time::Instant::now();
        pool.run(&|tid| {
            let mut sum = 0u64;
            for part in parts {
                // SAFETY: every bit pattern is a valid u64; `align_to` only reinterprets the aligned middle.
                let (head, words, tail) = unsafe { part.align_to::<u64>() };
                let mine = &words[Pool::split(words.len(), threads, tid, 16)];
                sum = sum.wrapping_add((kernels.stream_sum)(mine));
                if tid == 0 {
                    sum = head
                        .iter()
                        .chain(tail)
                        .fold(sum, |s, b| s.wrapping_add(*b as u64));
                }
            }
            std::hint::black_box(sum);
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    total as f64 / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job() {
        let pool = Pool::new(3);
        for round in 0..200 {
            let hits = AtomicUsize::new(0);
            pool.run(&|tid| {
                hits.fetch_add(1 << (8 * tid), Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 0x010101, "round {round}");
        }
    }

    #[test]
    fn split_covers_the_range_in_aligned_pieces() {
        for (n, threads, align) in [
            (100, 3, 16),
            (16, 2, 16),
            (7, 4, 1),
            (0, 2, 16),
            (8016 * 16, 2, 32),
        ] {
            let mut next = 0;
            for tid in 0..threads {
                let r = Pool::split(n, threads, tid, align);
                assert_eq!(r.start, next);
                assert!(r.start.is_multiple_of(align) || r.start == n);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|tid| assert_ne!(tid, 1, "boom"))
        }));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
