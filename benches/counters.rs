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
//! - `counter_increment_alone`: the same two without the second thread, for scale.
//! - `flusher`: `Conversions::flush` of a window holding counts (swap every cell, build
//!   the `MetricsBatch`, one sled transaction writing the row and the day's totals, in
//!   memory as in the server), and `Counters::take` alone.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use launchguard::config::Config;
use launchguard::conversions::{Conversions, Counters};
use launchguard::factor::Factor;
use launchguard::history::History;
use launchguard::store::Store;

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

fn increments(c: &mut Criterion) {
    pin_to_cpus(&[0]);
    let mut g = c.benchmark_group("counter_increment_contended");
    g.measurement_time(Duration::from_secs(3));
    {
        let counters = Counters::new();
        let other = counters.clone();
        let _contender = Contender::start("sharded", move || other.record_visit());
        g.bench_function("sharded", |b| {
            b.iter(|| black_box(&counters).record_visit())
        });
    }
    {
        let shared = Arc::new(AtomicU64::new(0));
        let other = shared.clone();
        let _contender = Contender::start("shared_atomic", move || {
            other.fetch_add(1, Ordering::Relaxed);
        });
        g.bench_function("shared_atomic", |b| {
            b.iter(|| black_box(&shared).fetch_add(1, Ordering::Relaxed))
        });
    }
    g.finish();
    pin_to_cpus(&[0, 1]);

    let mut g = c.benchmark_group("counter_increment_alone");
    g.measurement_time(Duration::from_secs(2));
    let counters = Counters::new();
    g.bench_function("sharded", |b| {
        b.iter(|| black_box(&counters).record_visit())
    });
    let shared = AtomicU64::new(0);
    g.bench_function("shared_atomic", |b| {
        b.iter(|| black_box(&shared).fetch_add(1, Ordering::Relaxed))
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
