//! Counter benchmarks (criterion). Run with
//!
//! ```text
//! cargo bench --bench counters            # about 30 seconds
//! ```
//!
//! Groups:
//!
//! - `counter_increment_contended`: one increment on the bench thread while a second
//!   thread increments the same counter in a loop (2 threads on this 2-core machine,
//!   pinned to CPU 0 and CPU 1).
//!   `sharded` is `Counters::record_visit` (the thread's own cache-line-padded shard);
//!   `shared_atomic` is the naive baseline, one `AtomicU64` both threads `fetch_add`,
//!   whose cache line bounces between the cores. Goal: sharded at least 5x cheaper.
//! - `counter_increment_contended_spaced`: the same race with `other_work()` (~40 ns
//!   of register-only arithmetic, standing for the rest of a request) before each
//!   increment on both threads, and `work_only` for the work alone; the increment's
//!   cost is the difference. In a tight loop a core keeps the shared line for a burst
//!   of increments, which hides most of the contention; with work in between, the
//!   line has usually moved to the other core by the next increment.
//! - `counter_increment_alone`: the same two without the second thread, for scale.
//!   Both increment groups time the measured thread's CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock: on a shared machine the wall
//!   clock also counts the time the thread sat preempted.
//! - `flusher`: `Conversions::flush` of a window holding counts (swap every cell, build
//!   the `MetricsBatch`, one sled transaction writing the row and the day's totals, in
//!   memory as in the server), and `Counters::take` alone.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use launchguard::config::Config;
use launchguard::ingest::factor::Factor;
use launchguard::ingest::store::Store;
use launchguard::insight::counters::{Conversions, Counters};
use launchguard::insight::history::History;

/// 2026-11-26T08:00:00Z, midnight in Los Angeles.
const T0: u64 = 1_795_680_000_000;

/// Runs `work` in a loop on a second thread, pinned to CPU 1, until dropped.
struct Contender {
    name: &'static str,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Contender {
    fn start(name: &'static str, work: impl Fn() + Send + 'static) -> Contender {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin_to_cpus(&[1]);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    work();
                }
                n += 64;
            }
            n
        });
        Contender {
            name,
            started: Instant::now(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // How much the second thread really ran tells whether the race happened
            // (on a busy machine it may have been waiting for a core).
            let n = t.join().unwrap_or(0);
            let secs = self.started.elapsed().as_secs_f64();
            if secs < 0.5 {
                return; // filtered out by the command line: nothing was measured
            }
            eprintln!(
                "{}: the second thread made {:.1} M increments/s ({:.2} ns each) over {secs:.1} s",
                self.name,
                n as f64 / secs / 1e6,
                secs * 1e9 / n.max(1) as f64
            );
        }
    }
}

/// Pins the calling thread to `cpus`, so the two racing threads sit on different
/// cores and the shared line really moves between them. Best effort: on a machine
/// with one CPU the call fails and the threads share it.
#[allow(unsafe_code)]
fn pin_to_cpus(cpus: &[usize]) {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set; CPU_SET
    // writes inside it; sched_setaffinity(0, ..) reads it and changes only the calling
    // thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time of the calling thread. The increment groups time with it rather than the
/// wall clock, so the time the measured thread spends preempted by other work on
/// this shared machine is left out; a stall on a cache line that the other core
/// holds is still counted (the thread is running while it waits).
#[allow(unsafe_code)]
fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Stands for the rest of a request's work between two increments: 32 dependent
/// multiply-xorshift steps on a local value (a few tens of ns), touching no shared memory.
#[inline(never)]
fn other_work() {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..32 {
        x ^= x << 13;
        x ^= x >> 7;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    black_box(x);
}

/// Times `iters` calls of `op` in the calling thread's CPU time.
fn cpu_timed(iters: u64, op: impl Fn()) -> Duration {
    let start = thread_cpu_now();
    for _ in 0..iters {
        op();
    }
    thread_cpu_now().saturating_sub(start)
}

fn increments(c: &mut Criterion) {
    pin_to_cpus(&[0]);
    let mut g = c.benchmark_group("counter_increment_contended");
    g.measurement_time(Duration::from_secs(3));
    {
        let counters = Counters::new();
        let other = counters.clone();
        let _contender = Contender::start("sharded", move || other.record_visit());
        g.bench_function("sharded", |b| {
            b.iter_custom(|iters| cpu_timed(iters, || black_box(&counters).record_visit()))
        });
    }
    {
        let shared = Arc::new(AtomicU64::new(0));
        let other = shared.clone();
        let _contender = Contender::start("shared_atomic", move || {
            other.fetch_add(1, Ordering::Relaxed);
        });
        g.bench_function("shared_atomic", |b| {
            b.iter_custom(|iters| {
                cpu_timed(iters, || {
                    black_box(&shared).fetch_add(1, Ordering::Relaxed);
                })
            })
        });
    }
    g.finish();

    // The same race with some other work between increments, as a request handler
    // has: by the time a thread increments again, the other has usually taken the
    // shared line, so each increment waits for it to come back.
    let mut g = c.benchmark_group("counter_increment_contended_spaced");
    g.measurement_time(Duration::from_secs(3));
    {
        let counters = Counters::new();
        let other = counters.clone();
        let _contender = Contender::start("spaced sharded", move || {
            other_work();
            other.record_visit()
        });
        g.bench_function("work_only", |b| {
            b.iter_custom(|iters| cpu_timed(iters, other_work))
        });
        g.bench_function("sharded", |b| {
            b.iter_custom(|iters| {
                cpu_timed(iters, || {
                    other_work();
                    black_box(&counters).record_visit()
                })
            })
        });
    }
    {
        let shared = Arc::new(AtomicU64::new(0));
        let other = shared.clone();
        let _contender = Contender::start("spaced shared_atomic", move || {
            other_work();
            other.fetch_add(1, Ordering::Relaxed);
        });
        g.bench_function("shared_atomic", |b| {
            b.iter_custom(|iters| {
                cpu_timed(iters, || {
                    other_work();
                    black_box(&shared).fetch_add(1, Ordering::Relaxed);
                })
            })
        });
    }
    g.finish();
    pin_to_cpus(&[0, 1]);

    let mut g = c.benchmark_group("counter_increment_alone");
    g.measurement_time(Duration::from_secs(2));
    let counters = Counters::new();
    g.bench_function("sharded", |b| {
        b.iter_custom(|iters| cpu_timed(iters, || black_box(&counters).record_visit()))
    });
    let shared = AtomicU64::new(0);
    g.bench_function("shared_atomic", |b| {
        b.iter_custom(|iters| {
            cpu_timed(iters, || {
                black_box(&shared).fetch_add(1, Ordering::Relaxed);
            })
        })
    });
    g.finish();
}

fn flusher(c: &mut Criterion) {
    metrics_recorder();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let config = Config::default();
    let conv = Conversions::new(
        &config.conversions,
        History::open(&store).expect("history"),
        Factor::new(),
        T0,
    )
    .expect("conversions");
    let mut g = c.benchmark_group("flusher");
    g.measurement_time(Duration::from_secs(3));
    // Timed one call at a time: each flush must find a full window, which criterion's
    // batched setup cannot give (it runs every setup of a batch before the calls).
    let mut now = T0;
    g.bench_function("flush_batch", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A busy window: every kind of count is non-zero.
                let k = conv.counters();
                for _ in 0..50 {
                    k.record_request();
                    k.record_visit();
                    k.record_cache_hit();
                }
                k.record_cache_miss();
                k.record_rejection();
                k.record_webhook_accepted();
                k.record_conversion(0);
                now += 5000;
                let started = Instant::now();
                let written = conv.flush(now).expect("flush");
                total += started.elapsed();
                assert!(written.is_some(), "each flush writes a batch");
            }
            total
        })
    });
    let counters = Counters::new();
    g.bench_function("take_only", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                counters.record_visit();
                let started = Instant::now();
                black_box(counters.take());
                total += started.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// The flusher feeds Prometheus counters; install the recorder as the server does.
fn metrics_recorder() {
    let _ = launchguard::telemetry::recorder();
}

criterion_group!(benches, increments, flusher);
criterion_main!(benches);
