//! Critical-path micro-benchmarks (criterion). Run with
//!
//! ```text
//! cargo bench --bench critical_path            # about 2 minutes
//! cargo bench --bench critical_path -- factor   # one group (criterion filter)
//! ```
//!
//! Groups, each with a naive baseline beside the real thing where one makes sense:
//!
//! - `webhook_path`: one webhook in process, without HTTP: `Ingestor::ingest` (verify
//!   the `X-ProductHunt-Signature`, parse the envelope, dedup against the in-memory
//!   index + append to the store's queue, buffered i.e. no flush, push on the ring)
//!   then `Pump::drain(now)`, so the new factor is what `Factor::current()` returns.
//!   Goal: median under 10 µs. As in the server, a committer thread runs beside it,
//!   writing the queue to sled (`Store::write_pending`) every millisecond, so sled's
//!   work competes for the machine as it does in production.
//!   `ingest_drain_paced` times one webhook at a time, with a pause before each;
//!   `ingest_drain` runs them back to back. Baseline: one `flush()` + `sync_data()`
//!   per event, which is what durability would cost without group commit.
//! - `webhook_parts`: the steps of that path one by one, next to the naive way of
//!   doing them (hex-string `==` instead of `verify_slice`, a full `serde_json::Value`
//!   instead of the envelope), the committer's sled write per batch of 16 events
//!   (`write_pending_16`) and per single event (`commit_event`), and an event's two
//!   writes straight on sled three ways (two-tree transaction, one-tree `Batch`, two
//!   plain inserts as the store does), to show where the microseconds go.
//! - `factor_read`: `Factor::current()` (one relaxed atomic load; goal under 50 ns)
//!   against a `parking_lot::RwLock<f64>` read and a `std::sync::Mutex<f64>` lock;
//!   `factor_read_contended`: the same while a second thread reads in a loop.
//!
//! Bodies, ids and signatures are made outside the measured time (criterion's batch
//! setup, or before the clock starts in the paced runs); every iteration gets a fresh
//! event id, so every ingest is a real insert, never a duplicate. The Prometheus
//! recorder is installed first, as in the server, so the pump's gauges and counters
//! cost what they cost in production. The store lives in a temp dir and grows by a
//! few hundred thousand events over the run.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};

use launchguard::clock::Clock;
use launchguard::config::Config;
use launchguard::ingest::factor::Factor;
use launchguard::ingest::pump::Pump;
use launchguard::ingest::ring::{Ring, RingEvent};
use launchguard::ingest::store::{encode_event, Commit, EventRecord, Scheme, Store};
use launchguard::ingest::velocity::Window;
use launchguard::ingest::webhook::signature::{sign_producthunt, Key, Keys, PRODUCTHUNT_HEADER};
use launchguard::ingest::webhook::{payload, Ingestor};

const SECRET: &str = "bench-secret";
const MEASUREMENT: Duration = Duration::from_millis(2500);
/// The pause before each call in the `_paced` variants.
const PACE: Duration = Duration::from_micros(250);
/// Measured time of the `_paced` variants. Only the timed call counts, not the pause,
/// so their wall time is several times this; criterion's "unable to complete 50
/// samples" warning for them is expected.
const PACED_MEASUREMENT: Duration = Duration::from_millis(300);

/// A Product Hunt style upvote of about 300 bytes, with a unique id, stamped now (the
/// ingestor refuses a `created_at` outside `webhook.tolerance_secs` of its clock).
fn body(id: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"id":"{}","event_type":"upvote","created_at":"{}","#,
            r#""data":{{"post":{{"id":"tidepool","name":"Tidepool","#,
            r#""tagline":"Tide tables for people who surf before work"}},"#,
            r#""user":{{"id":"u-81723","username":"early-riser","#,
            r#""headline":"Maker of small tools"}},"vote":{{"weight":1,"source":"web"}}}}}}"#
        ),
        id,
        payload::created_at(Clock::system().now_ms())
    )
    .into_bytes()
}

/// The headers a signed webhook arrives with.
fn signed(key: &Key, body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        PRODUCTHUNT_HEADER,
        HeaderValue::from_str(&sign_producthunt(key, body)).expect("hex is a valid header"),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

/// Everything the webhook path needs, on a fresh store in a temp dir.
struct Fixture {
    _dir: tempfile::TempDir,
    key: Key,
    config: Config,
    store: Store,
    ingestor: Ingestor,
    pump: Pump,
    factor: Factor,
    clock: Clock,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("lg-critical-path")
            .tempdir()
            .expect("a temp dir");
        let config = Config::parse("").expect("defaults are valid");
        let key = Key::parse(SECRET).expect("a valid secret");
        let store = Store::open(&dir.path().join("state")).expect("the store opens");
        let ring = Ring::new(config.webhook.ring_capacity);
        let clock = Clock::system();
        let factor = Factor::new();
        let pump = Pump::new(
            ring.clone(),
            Window::new(&config.velocity, clock.now_ms()),
            factor.clone(),
        );
        let ingestor = Ingestor::new(
            &config,
            Keys::new(vec![key.clone()]),
            store.clone(),
            ring,
            clock.clone(),
        );
        Fixture {
            _dir: dir,
            key,
            config,
            store,
            ingestor,
            pump,
            factor,
            clock,
        }
    }

    /// A setup closure for `iter_batched`: a new signed event per call.
    fn events(&self, tag: &'static str) -> impl FnMut() -> (HeaderMap, Vec<u8>) {
        let key = self.key.clone();
        let mut n = 0u64;
        move || {
            n += 1;
            let b = body(&format!("cp-{tag}-{n}"));
            (signed(&key, &b), b)
        }
    }
}

/// Sized so the whole file runs in about two minutes on the 2-core machine.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(MEASUREMENT)
        .nresamples(20_000)
}

fn webhook_path(c: &mut Criterion) {
    // As in the server: the pump's metrics go to a real Prometheus recorder.
    let _metrics = launchguard::telemetry::recorder();
    let mut fx = Fixture::new();

    // Check once, outside the clock, that the path does what it is timed for.
    {
        let before = fx.factor.current();
        let (h, b) = fx.events("check")();
        let out = fx
            .ingestor
            .ingest(&h, &b)
            .expect("a valid webhook is accepted");
        assert!(matches!(out, Commit::Accepted { .. }), "{out:?}");
        assert_eq!(fx.pump.drain(fx.clock.now_ms()), 1);
        assert!(fx.factor.current() > before, "the factor rose");
        let again = fx.ingestor.ingest(&h, &b).expect("a replay is answered");
        assert!(matches!(again, Commit::Duplicate { .. }), "{again:?}");
    }

    let committer = Committer::spawn(fx.store.clone());
    let mut g = c.benchmark_group("webhook_path");
    // Flat sampling: the durable baseline takes milliseconds per iteration.
    g.sampling_mode(SamplingMode::Flat);

    // One webhook at a time: a pause before each lets sled's IO threads write out
    // what the previous one left, as at launch-day rates (hundreds of webhooks a
    // minute, not a back-to-back stream). Only ingest + drain is timed. First, on
    // the fresh store.
    let mut setup = fx.events("paced");
    g.measurement_time(PACED_MEASUREMENT);
    g.bench_function("ingest_drain_paced", |b| {
        b.iter_custom(|iters| {
            paced(iters, &mut setup, |(h, body)| {
                let out = fx.ingestor.ingest(&h, &body);
                fx.pump.drain(fx.clock.now_ms());
                black_box(fx.factor.current());
                black_box(out).expect("accepted")
            })
        })
    });
    g.measurement_time(MEASUREMENT);
    settle(fx.ingestor.store());

    // Back to back, as fast as the loop goes: sled's log writes pile up behind it,
    // so this is the sustained cost per webhook rather than one webhook's latency.
    let mut setup = fx.events("ingest");
    g.bench_function("ingest_drain", |b| {
        b.iter_batched(
            &mut setup,
            |(h, body)| {
                let out = fx.ingestor.ingest(&h, &body);
                fx.pump.drain(fx.clock.now_ms());
                black_box(fx.factor.current());
                (out, h, body)
            },
            BatchSize::SmallInput,
        )
    });
    settle(fx.ingestor.store());

    // Naive baseline: make every event durable on its own (what the group commit
    // spares the HTTP path): flush + fsync per event.
    let mut setup = fx.events("fsync");
    g.bench_function("naive_ingest_drain_fsync_each", |b| {
        b.iter_batched(
            &mut setup,
            |(h, body)| {
                let out = fx.ingestor.ingest(&h, &body);
                fx.ingestor
                    .store()
                    .flush_durable(true)
                    .expect("flush + fsync");
                fx.pump.drain(fx.clock.now_ms());
                black_box(fx.factor.current());
                (out, h, body)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    committer.stop();
    settle(fx.ingestor.store());

    webhook_parts(c, &mut fx);
    assert!(fx.factor.current() > 1.0);
}

fn webhook_parts(c: &mut Criterion, fx: &mut Fixture) {
    let mut g = c.benchmark_group("webhook_parts");
    let b0 = body("cp-parts-fixed");
    let h0 = signed(&fx.key, &b0);
    let sig = h0
        .get(PRODUCTHUNT_HEADER)
        .expect("signed")
        .as_bytes()
        .to_vec();
    let keys = Keys::new(vec![fx.key.clone()]);

    g.bench_function("verify_hmac", |b| {
        b.iter(|| keys.verify_producthunt(black_box(&sig), black_box(&b0)))
    });
    // Naive: sign again and compare hex strings with `==` (not constant time; what
    // CRATES.md says never to do). Shows the verify cost is the HMAC, not the compare.
    let header_str = std::str::from_utf8(&sig).expect("ascii").to_string();
    g.bench_function("naive_verify_hex_eq", |b| {
        b.iter(|| sign_producthunt(&fx.key, black_box(&b0)) == black_box(header_str.as_str()))
    });

    g.bench_function("parse_envelope", |b| {
        b.iter(|| payload::parse(black_box(&b0), None))
    });
    g.bench_function("naive_parse_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&b0)))
    });

    let record = EventRecord {
        id: "cp-parts-fixed".into(),
        event_type: "upvote".into(),
        weight_milli: 1200,
        received_ms: fx.clock.now_ms(),
        scheme: Scheme::ProductHunt,
        payload: b0.clone(),
        origin: None,
    };
    g.bench_function("encode_event", |b| {
        b.iter(|| encode_event(black_box(&record)))
    });

    let ttl = fx.config.webhook.dedup_ttl_secs * 1000;
    let store = fx.store.clone();
    let mut n = 0u64;
    let template = record.clone();
    g.bench_function("commit_event", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut r = template.clone();
                r.id = format!("cp-commit-{n}");
                r
            },
            |r| {
                let out = store.commit_event(&r, ttl).expect("commit");
                debug_assert!(matches!(out, Commit::Accepted { .. }));
                (out, r)
            },
            BatchSize::SmallInput,
        )
    });

    settle(&store);
    // The committer's share: 16 events appended outside the clock, then one
    // `write_pending` timed (16 event inserts, 16 dedup inserts, the mark).
    let mut m = 0u64;
    g.bench_function("write_pending_16", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..16 {
                    m += 1;
                    let mut r = template.clone();
                    r.id = format!("cp-batch-{m}");
                    store.append(&r, ttl).expect("append");
                }
                let t = Instant::now();
                let n = store.write_pending().expect("write");
                timed += t.elapsed();
                debug_assert_eq!(n, 16);
            }
            timed
        })
    });
    settle(&store);
    sled_variants(&mut g, &record);

    let ring = Ring::new(1024);
    let factor = Factor::new();
    let now = fx.clock.now_ms();
    let mut pump = Pump::new(
        ring.clone(),
        Window::new(&fx.config.velocity, now),
        factor.clone(),
    );
    let mut seq = 0u64;
    g.bench_function("ring_push_drain", |b| {
        b.iter(|| {
            seq += 1;
            ring.push(RingEvent {
                seq,
                received_ms: now,
                weight_milli: 1200,
                purge_rule: 0,
            });
            pump.drain(black_box(now));
            factor.current()
        })
    });
    g.finish();
}

/// The same two writes as `Store::commit_event` (event by seq, dedup entry by id),
/// straight on sled, three ways: a two-tree transaction (what the store does), one
/// `Batch` on one tree, and two plain inserts. In sled 0.34 both the transaction and
/// `apply_batch` go through `pin_log`, which rolls (seals and writes) the log buffer on
/// every call; plain inserts share buffers until a flush.
fn sled_variants(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    record: &EventRecord,
) {
    use sled::Transactional;
    let dir = tempfile::Builder::new()
        .prefix("lg-critical-path-sled")
        .tempdir()
        .expect("a temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()
        .expect("sled opens");
    let events = db.open_tree("events").expect("tree");
    let dedup = db.open_tree("dedup").expect("tree");
    let value = encode_event(record).expect("encodes");
    let dedup_value = [1u8; 17];
    let mut seq = 0u64;
    let mut next = move || {
        seq += 1;
        (seq, format!("cp-sled-{seq}"))
    };

    let txn = |seq: u64, id: &str| {
        (&events, &dedup)
            .transaction(|(e, d)| {
                if d.get(id.as_bytes())?.is_some() {
                    return Ok(false);
                }
                e.insert(&seq.to_be_bytes(), value.as_slice())?;
                d.insert(id.as_bytes(), &dedup_value[..])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(true)
            })
            .expect("commits")
    };
    let batch = |seq: u64, id: &str| {
        let fresh = events.get(id.as_bytes()).expect("get").is_none();
        let mut batch = sled::Batch::default();
        batch.insert(&seq.to_be_bytes(), value.as_slice());
        batch.insert(id.as_bytes(), &dedup_value[..]);
        events.apply_batch(batch).expect("applies");
        fresh
    };
    let plain = |seq: u64, id: &str| {
        let fresh = dedup.get(id.as_bytes()).expect("get").is_none();
        events
            .insert(seq.to_be_bytes(), value.as_slice())
            .expect("inserts");
        dedup
            .insert(id.as_bytes(), &dedup_value[..])
            .expect("inserts");
        fresh
    };
    let variants: [(&str, &SledWrite); 3] = [
        ("sled_txn_two_trees", &txn),
        ("sled_batch_one_tree", &batch),
        ("sled_two_plain_inserts", &plain),
    ];
    g.measurement_time(PACED_MEASUREMENT);
    for (name, write) in variants {
        g.bench_function(format!("{name}_paced"), |b| {
            b.iter_custom(|iters| paced(iters, &mut next, |(seq, id)| write(seq, &id)))
        });
        db.flush().expect("flush");
    }
    g.measurement_time(MEASUREMENT);
    for (name, write) in variants {
        g.bench_function(name, |b| {
            b.iter_batched(
                &mut next,
                |(seq, id)| write(seq, &id),
                BatchSize::SmallInput,
            )
        });
        db.flush().expect("flush");
    }
    drop((events, dedup, db));
}

/// The server's committer, as a thread: writes the store's queue to sled every
/// millisecond until stopped.
struct Committer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Committer {
    fn spawn(store: Store) -> Committer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                store.write_pending().expect("the committer writes");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Committer { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the committer thread ends");
    }
}

/// Lets sled write out what a back-to-back run left behind, so that it does not
/// slow the next benchmark down.
fn settle(store: &Store) {
    store.flush_durable(false).expect("flush");
}

/// One way of writing an event (by seq) and its dedup entry (by id) to sled.
type SledWrite<'a> = dyn Fn(u64, &str) -> bool + 'a;

/// Runs `routine` `iters` times on fresh inputs, sleeping `PACE` before each, and
/// returns the time spent in `routine` alone.
fn paced<I, O>(
    iters: u64,
    mut setup: impl FnMut() -> I,
    mut routine: impl FnMut(I) -> O,
) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        std::thread::sleep(PACE);
        let t = Instant::now();
        let out = routine(input);
        timed += t.elapsed();
        black_box(out);
    }
    timed
}

fn factor_read(c: &mut Criterion) {
    let factor = Factor::new();
    factor.set_computed(2.5, 3.75, 0);
    let rw = parking_lot::RwLock::new(2.5f64);
    let mx = std::sync::Mutex::new(2.5f64);

    let mut g = c.benchmark_group("factor_read");
    g.bench_function("factor_current_atomic", |b| {
        b.iter(|| black_box(&factor).current())
    });
    g.bench_function("naive_parking_lot_rwlock", |b| {
        b.iter(|| *black_box(&rw).read())
    });
    g.bench_function("naive_std_mutex", |b| {
        b.iter(|| *black_box(&mx).lock().expect("not poisoned"))
    });
    g.finish();

    // The same with one more thread reading the same value in a loop: what many
    // request handlers on other cores do to the cache line.
    let factor = Arc::new(factor);
    let rw = Arc::new(rw);
    let mx = Arc::new(mx);
    let mut g = c.benchmark_group("factor_read_contended");
    g.bench_function("factor_current_atomic", |b| {
        with_reader(
            {
                let f = factor.clone();
                move || {
                    black_box(f.current());
                }
            },
            || b.iter(|| black_box(&*factor).current()),
        )
    });
    g.bench_function("naive_parking_lot_rwlock", |b| {
        with_reader(
            {
                let rw = rw.clone();
                move || {
                    black_box(*rw.read());
                }
            },
            || b.iter(|| *black_box(&*rw).read()),
        )
    });
    g.bench_function("naive_std_mutex", |b| {
        with_reader(
            {
                let mx = mx.clone();
                move || {
                    black_box(*mx.lock().expect("not poisoned"));
                }
            },
            || b.iter(|| *black_box(&*mx).lock().expect("not poisoned")),
        )
    });
    g.finish();
}

/// Runs `measure` while another thread calls `read` in a loop.
fn with_reader(read: impl Fn() + Send + 'static, measure: impl FnOnce()) {
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                read();
            }
        })
    };
    measure();
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader thread ends");
}

criterion_group! {
    name = benches;
    config = config();
    targets = webhook_path, factor_read
}
criterion_main!(benches);
