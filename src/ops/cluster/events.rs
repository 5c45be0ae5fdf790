//! The events of every node in every node's window: the outbox that publishes this
//! node's events to `LAUNCHGUARD_EVENTS`, and the consumer that stores the other
//! nodes' events here (the module above tells the whole path).
//!
//! Outbox, numbered:
//! 1. the webhook path registers each new seq (`Outbox::confirm`) when JetStream is
//!    reachable, before the event is durable;
//! 2. the committer writes (and flushes) a batch and announces it
//!    (`Store::announce_written`);
//! 3. the outbox reads the events after its cursor (a run of seqs without a hole: a
//!    hole is a write still landing, read again) and publishes this node's own ones
//!    (replicas are skipped) all at once, as core NATS messages (`publish`): the
//!    payload is the record as stored (`Store::encoded_events_after`, not decoded and
//!    encoded again: the same bytes), headers
//!    `Nats-Msg-Id` = the event id and `Launchguard-Node`, reply subject
//!    `<inbox>.<seq>`. JetStream answers each on that subject; one subscription on
//!    `<inbox>.*`, made once per connection (`AckInbox`), takes every answer, reads
//!    the seq off its subject and the PubAck JSON with `parse_ack`. One timeout
//!    (`ACK_WAIT`) covers the whole batch, not one timer per message;
//! 4. each ack answers the webhook waiting on its seq (`duplicate`: another node
//!    had the id first), and the cursor (`meta.cluster_published`) moves past the
//!    run of seqs from the batch's first that are all acknowledged. A seq refused or
//!    not answered in time stops the run: the batch is published again from it after
//!    a backoff (JetStream drops the copies it has by `Nats-Msg-Id`), and "no
//!    responders" (no stream takes the subject) sets the stream up again first;
//! 5. at start and after every reconnect, the outbox publishes the events stored in
//!    the last `REWIND` again: a NATS server that crashed may have acknowledged the
//!    last messages before it wrote them (JetStream's file store does not fsync each
//!    one), and the ones it kept are dropped as duplicates.
//!
//! Consumer: a durable pull consumer per other node (`<this>~<other>`, filtered on
//! `launchguard.events.<other>`, so a node never reads its own events back), started
//! as that node's subject appears in the stream and remade at each (re)start from
//! 30 s before the last message it consumed (`fresh_messages`, the position kept per
//! node in `meta.cluster_consumed_ms.<other>`); each batch of messages
//! is stored (`Ingestor::ingest_replica`: dedup, seq, ring), made durable with one
//! group commit, then acknowledged with one ack (`AckPolicy::All`: every message up
//! to the batch's last).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use sha2::Digest;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{backoff, Cluster, EVENTS_STREAM, EVENTS_SUBJECTS, NODE_HEADER};
use crate::clock::Clock;
use crate::ingest::commit::Committer;
use crate::ingest::store::{decode_event, own_event_id, trees, Commit, Origin, Store};
use crate::ingest::webhook::{Ingestor, Replication};
use crate::telemetry;

/// Most events read from the store, or messages taken from the consumer, at once.
const BATCH: usize = 256;
/// How far back the outbox publishes again at start and after a reconnect.
const REWIND: Duration = Duration::from_secs(60);
/// How far before the last message consumed a remade consumer starts.
const RESUME_OVERLAP: Duration = Duration::from_secs(30);
/// How long a hole in the log's seqs is waited on before the outbox passes it.
const HOLE_WAIT: Duration = Duration::from_millis(50);
/// How long the acks of a batch are waited for, from its last publish (JetStream
/// requests wait as long: `Cluster::connect`).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The `Nats-Msg-Id` of an event id: the id itself when it is short printable
/// ASCII without spaces (every id Product Hunt and Standard Webhooks senders use),
/// else `sha256:` and the hex of its SHA-256, so any id the webhook path accepts
/// (printable Unicode up to its limit) makes a valid header, the same on every node.
pub fn msg_id(id: &str) -> String {
    if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) && !id.starts_with("sha256:") {
        id.to_string()
    } else {
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(id.as_bytes()))
        )
    }
}

/// The configuration of the events stream: the duplicate window is the dedup TTL
/// (JetStream's default is 2 minutes), and messages are kept twice as long.
pub fn stream_config(dedup_ttl_secs: u64) -> stream::Config {
    let ttl = Duration::from_secs(dedup_ttl_secs.max(1));
    stream::Config {
        name: EVENTS_STREAM.into(),
        description: Some("launchguard: every event each node accepted".into()),
        subjects: vec![EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: ttl,
        max_age: ttl * 2,
        num_replicas: 1,
        ..Default::default()
    }
}

/// The webhooks waiting for JetStream's word on their seq (`Replication`).
#[derive(Clone)]
pub struct Outbox {
    cluster: Cluster,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>>,
}

impl Outbox {
    pub fn new(cluster: Cluster) -> Outbox {
        Outbox {
            cluster,
            waiting: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn answer(&self, seq: u64, duplicate: bool) {
        if let Some(tx) = self.waiting.lock().remove(&seq) {
            let _ = tx.send(duplicate);
        }
    }
}

impl Replication for Outbox {
    fn confirm(&self, seq: u64) -> Option<oneshot::Receiver<bool>> {
        if !self.cluster.healthy() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(seq, tx);
        Some(rx)
    }
}

/// What the outbox and the consumer need of this node.
pub struct Parts {
    pub store: Store,
    pub ingestor: Arc<Ingestor>,
    pub committer: Committer,
    pub clock: Clock,
    pub dedup_ttl_secs: u64,
}

/// Makes sure the events stream exists with this node's settings.
pub(super) async fn ensure_stream(cluster: &Cluster, dedup_ttl_secs: u64) -> Result<(), String> {
    let config = stream_config(dedup_ttl_secs);
    match cluster.js().get_stream(EVENTS_STREAM).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| e.to_string())?;
            if info.config.duplicate_window != config.duplicate_window
                || info.config.max_age != config.max_age
            {
                let mut updated = info.config.clone();
                updated.duplicate_window = config.duplicate_window;
                updated.max_age = config.max_age;
                cluster
                    .js()
                    .update_stream(updated)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Err(_) => match cluster.js().create_stream(config).await {
            Ok(_) => Ok(()),
            // Another node made it meanwhile (nodes starting together race here).
            Err(e) => match cluster.js().get_stream(EVENTS_STREAM).await {
                Ok(_) => Ok(()),
                Err(_) => Err(e.to_string()),
            },
        },
    }
}

/// Publishes this node's events, from `meta.cluster_published` on, until
/// `shutdown`; waits on the committer between batches, and retries (with backoff)
/// while JetStream is unreachable.
pub async fn run_outbox(outbox: Outbox, parts: Arc<Parts>, shutdown: CancellationToken) {
    let cluster = outbox.cluster.clone();
    let store = parts.store.clone();
    let mut failures = 0u32;
    let mut stream_ready = false;
    // At start, and after every reconnect, the events of the last `REWIND` are
    // published again (see step 5).
    let mut connects = None;
    // The first seq found missing after the cursor, and since when.
    let mut hole: Option<(u64, tokio::time::Instant)> = None;
    // Where JetStream's acks arrive, made anew with each connection.
    let mut inbox: Option<AckInbox> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if connects != Some(cluster.connects()) {
            connects = Some(cluster.connects());
            stream_ready = false;
            inbox = None;
            rewind(&store, &parts.clock);
        }
        if !stream_ready {
            match ensure_stream(&cluster, parts.dedup_ttl_secs).await {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    cluster.set_healthy(false);
                    if failures == 0 {
                        tracing::warn!("cluster: cannot set up the events stream: {e}");
                    }
                    failures += 1;
                    pause(backoff(failures), &shutdown).await;
                    continue;
                }
            }
        }
        let written = store.written();
        tokio::pin!(written);
        written.as_mut().enable();
        let cursor = match store.meta_u64(trees::META_CLUSTER_PUBLISHED) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cluster: cannot read the outbox cursor: {e}");
                pause(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        // Events just written are in sled's cache: read here, without the hop to a
        // blocking thread and back that every webhook's answer would wait on. A
        // catch-up (after a rewind, or NATS down) may read from the disk: there.
        let fresh = store.next_seq().saturating_sub(cursor) <= BATCH as u64;
        let batch = if fresh {
            Ok(store.encoded_events_after(cursor, BATCH))
        } else {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.encoded_events_after(cursor, BATCH)).await
        };
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!("cluster: cannot read events to publish: {e}");
                pause(Duration::from_secs(1), &shutdown).await;
                continue;
            }
            Err(_) => return,
        };
        metrics::gauge!(telemetry::CLUSTER_OUTBOX_PENDING)
            .set(store.next_seq().saturating_sub(cursor + 1) as f64);
        // The log has no holes (seqs are given and written in order), so a batch
        // that skips a seq was read while a write was landing: only the run before
        // the hole goes now, and the rest is read again. A hole still there 50 ms
        // later is a real one (a damaged or old store), passed with a warning rather
        // than waited on forever.
        let run = contiguous(cursor, &batch);
        let batch = if run == batch.len() {
            hole = None;
            &batch[..]
        } else {
            let missing = cursor + 1 + run as u64;
            let since = match hole {
                Some((seq, since)) if seq == missing => since,
                _ => hole.insert((missing, tokio::time::Instant::now())).1,
            };
            if since.elapsed() >= HOLE_WAIT {
                tracing::warn!(
                    seq = missing,
                    "cluster: event {missing} is missing from the log; publishing past it"
                );
                hole = None;
                &batch[..]
            } else if run == 0 {
                pause(HOLE_WAIT / 5, &shutdown).await;
                continue;
            } else {
                &batch[..run]
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = &mut written => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let acks = match &mut inbox {
            Some(acks) => acks,
            None => match AckInbox::new(&cluster).await {
                Ok(acks) => inbox.insert(acks),
                Err(e) => {
                    tracing::debug!("cluster: cannot subscribe to the outbox's acks: {e}");
                    cluster.set_healthy(false);
                    failures += 1;
                    pause(backoff(failures), &shutdown).await;
                    continue;
                }
            },
        };
        let published = publish(&cluster, &outbox, acks, batch).await;
        if let Some(through) = published.through.filter(|&t| t > cursor) {
            if let Err(e) = store.set_meta_u64(trees::META_CLUSTER_PUBLISHED, through) {
                tracing::error!("cluster: cannot move the outbox cursor: {e}");
            }
        }
        if published.through == batch.last().map(|(seq, _)| *seq) {
            cluster.set_healthy(true);
            failures = 0;
            continue;
        }
        if published.no_stream {
            stream_ready = false;
        }
        cluster.set_healthy(false);
        failures += 1;
        pause(backoff(failures), &shutdown).await;
    }
}

/// How many events of `batch` follow `after` without a hole in their seqs.
fn contiguous<T>(after: u64, batch: &[(u64, T)]) -> usize {
    batch
        .iter()
        .zip(after + 1..)
        .take_while(|((seq, _), want)| seq == want)
        .count()
}

/// Whether the stream's copy of a duplicate (its message `stream_seq`) was published
/// by another node: a publish of this node's own that was stored but not
/// acknowledged in time, then sent again, is a duplicate of itself, not of another
/// node's event. When the copy cannot be read, it is taken as another node's (the
/// answer `duplicate` is safe to a sender; the event is in the stream either way).
async fn first_copy_is_elsewhere(cluster: &Cluster, stream_seq: u64) -> bool {
    let Ok(stream) = cluster.js().get_stream_no_info(EVENTS_STREAM).await else {
        return true;
    };
    match stream.get_raw_message(stream_seq).await {
        Ok(m) => m
            .headers
            .get(NODE_HEADER)
            .is_none_or(|n| n.as_str() != cluster.node()),
        Err(_) => true,
    }
}

/// Moves the outbox's cursor back to before the events stored in the last `REWIND`,
/// so they are published again.
fn rewind(store: &Store, clock: &Clock) {
    let since = clock.now_ms().saturating_sub(REWIND.as_millis() as u64);
    let (Ok(cursor), Ok(first)) = (
        store.meta_u64(trees::META_CLUSTER_PUBLISHED),
        store.first_seq_stored_since(since),
    ) else {
        return;
    };
    let back = first.saturating_sub(1);
    if back < cursor {
        tracing::info!(
            from = first,
            to = cursor,
            "cluster: publishing the events of the last {} s again",
            REWIND.as_secs()
        );
        if let Err(e) = store.set_meta_u64(trees::META_CLUSTER_PUBLISHED, back) {
            tracing::error!("cluster: cannot move the outbox cursor: {e}");
        }
    }
}

/// The subject JetStream answers this outbox's publishes on: one subscription on
/// `<inbox>.*` (`inbox` a fresh, unique inbox of the connection), each event
/// published with the reply subject `<inbox>.<seq>`.
///
/// It also holds what every publish of the connection shares, made once rather than
/// for each event: the subject, and the `Launchguard-Node` header's name and value.
struct AckInbox {
    inbox: String,
    acks: async_nats::Subscriber,
    subject: async_nats::Subject,
    node_header: async_nats::HeaderName,
    node: async_nats::HeaderValue,
}

impl AckInbox {
    async fn new(cluster: &Cluster) -> Result<AckInbox, async_nats::SubscribeError> {
        let inbox = cluster.client().new_inbox();
        let acks = cluster.client().subscribe(format!("{inbox}.*")).await?;
        Ok(AckInbox {
            inbox,
            acks,
            subject: format!("launchguard.events.{}", cluster.node()).into(),
            node_header: async_nats::HeaderName::from_static(NODE_HEADER),
            node: cluster.node().into(),
        })
    }

    /// The seq an answer on `subject` is for.
    fn seq(&self, subject: &str) -> Option<u64> {
        subject
            .strip_prefix(self.inbox.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }
}

/// JetStream's answer to one publish.
#[derive(Debug, PartialEq)]
enum Ack {
    /// In the stream as its message `stream_seq`; `duplicate`: it was already there
    /// (a message with its `Nats-Msg-Id` within the duplicate window).
    Stored { stream_seq: u64, duplicate: bool },
    /// No stream takes the subject (the server's "no responders").
    NoStream,
    /// Refused (the PubAck's `error`), or an answer this build cannot read.
    Refused(String),
}

/// Reads a JetStream PubAck: `{"stream":"…","seq":12,"duplicate":true}` (the
/// `duplicate` only when true), or `{"error":{"code":…,"err_code":…,
/// "description":"…"}}`. Only what the outbox needs is kept (serde skips the rest
/// without allocating).
fn parse_ack(payload: &[u8]) -> Ack {
    #[derive(serde::Deserialize)]
    struct PubAck {
        seq: Option<u64>,
        #[serde(default)]
        duplicate: bool,
        error: Option<PubAckError>,
    }
    #[derive(serde::Deserialize)]
    struct PubAckError {
        #[serde(default)]
        err_code: u64,
        #[serde(default)]
        description: String,
    }
    match serde_json::from_slice::<PubAck>(payload) {
        Ok(PubAck { error: Some(e), .. }) => {
            Ack::Refused(format!("{} (err_code {})", e.description, e.err_code))
        }
        Ok(PubAck {
            seq: Some(stream_seq),
            duplicate,
            ..
        }) => Ack::Stored {
            stream_seq,
            duplicate,
        },
        Ok(_) => Ack::Refused("an ack without a seq".into()),
        Err(e) => Ack::Refused(format!("an unreadable ack: {e}")),
    }
}

/// How far a batch got.
struct Published {
    /// The highest seq through which every event of the batch is in the stream
    /// (replicas count as done); `None`: not even the first.
    through: Option<u64>,
    /// JetStream said no stream takes the subject.
    no_stream: bool,
}

/// Publishes the own events of `batch` (sorted by seq; each event's record as it is
/// stored, `[version][bincode]`, which is the message's payload as it is) with their
/// replies to `acks`, then takes the answers as they come, until every one is in or
/// `ACK_WAIT` after the last publish; each ack answers its webhook at once.
async fn publish(
    cluster: &Cluster,
    outbox: &Outbox,
    acks: &mut AckInbox,
    batch: &[(u64, Bytes)],
) -> Published {
    // Answers left from an earlier batch (a late one, past its wait) are dropped;
    // one still on its way is not in this batch or is about the same message.
    while let Some(Some(_)) = acks.acks.next().now_or_never() {}
    // The counters' handles, looked up once a batch rather than once an event.
    let stored_total = metrics::counter!(telemetry::CLUSTER_PUBLISHED_TOTAL, "result" => "stored");
    let duplicate_total =
        metrics::counter!(telemetry::CLUSTER_PUBLISHED_TOTAL, "result" => "duplicate");
    // Every reply subject of the batch, written into one buffer and each split off it.
    let mut replies = BytesMut::with_capacity(batch.len() * (acks.inbox.len() + 21));
    // Each event's answer; a replica is done without one.
    let mut answers: Vec<Option<Ack>> = Vec::with_capacity(batch.len());
    let mut waiting = 0usize;
    for (seq, record) in batch {
        let id = match own_event_id(record) {
            Ok(Some(id)) => id,
            Ok(None) => {
                answers.push(Some(Ack::Stored {
                    stream_seq: 0,
                    duplicate: false,
                }));
                continue;
            }
            Err(e) => {
                tracing::error!(seq, "cluster: cannot read event {seq}: {e}");
                break;
            }
        };
        answers.push(None);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id(id));
        headers.insert(acks.node_header.clone(), acks.node.clone());
        replies.extend_from_slice(acks.inbox.as_bytes());
        let _ = write!(replies, ".{seq}");
        let reply = async_nats::Subject::try_from(replies.split().freeze())
            .expect("an inbox and a number are UTF-8");
        match cluster
            .client()
            .publish_with_reply_and_headers(acks.subject.clone(), reply, headers, record.clone())
            .await
        {
            Ok(()) => waiting += 1,
            Err(e) => {
                tracing::debug!("cluster: publish failed: {e}");
                break;
            }
        }
    }
    let mut no_stream = false;
    let deadline = tokio::time::sleep(ACK_WAIT);
    tokio::pin!(deadline);
    while waiting > 0 {
        let message = tokio::select! {
            m = acks.acks.next() => m,
            _ = &mut deadline => {
                tracing::debug!("cluster: {waiting} publishes not acknowledged in time");
                break;
            }
        };
        let Some(message) = message else { break };
        let Some(i) = acks
            .seq(message.subject.as_str())
            .and_then(|seq| batch.binary_search_by_key(&seq, |(s, _)| *s).ok())
        else {
            continue;
        };
        if answers.get(i).is_none_or(Option::is_some) {
            continue;
        }
        let seq = batch[i].0;
        let ack = match message.status {
            Some(async_nats::StatusCode::NO_RESPONDERS) => Ack::NoStream,
            Some(status) if status != async_nats::StatusCode::OK => {
                Ack::Refused(format!("status {status}"))
            }
            _ => parse_ack(&message.payload),
        };
        match &ack {
            Ack::Stored {
                stream_seq,
                duplicate,
            } => {
                if *duplicate {
                    &duplicate_total
                } else {
                    &stored_total
                }
                .increment(1);
                let elsewhere = *duplicate
                    && outbox.waiting.lock().contains_key(&seq)
                    && first_copy_is_elsewhere(cluster, *stream_seq).await;
                outbox.answer(seq, elsewhere);
            }
            Ack::NoStream => {
                no_stream = true;
                tracing::debug!(seq, "cluster: publish not acknowledged: no stream");
            }
            Ack::Refused(e) => tracing::debug!(seq, "cluster: publish not acknowledged: {e}"),
        }
        answers[i] = Some(ack);
        waiting -= 1;
    }
    let through = batch
        .iter()
        .zip(&answers)
        .take_while(|(_, ack)| matches!(ack, Some(Ack::Stored { .. })))
        .last()
        .map(|((seq, _), _)| *seq);
    Published { through, no_stream }
}

/// How often the stream is asked which nodes publish to it.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);

/// Stores the other nodes' events as they reach the stream, until `shutdown`: one
/// durable consumer per other node, filtered on that node's subject, so this node's
/// own events never come back to it; each starts as its node's subject appears in
/// the stream (looked for every `DISCOVER_EVERY`).
pub async fn run_consumer(cluster: Cluster, parts: Arc<Parts>, shutdown: CancellationToken) {
    let mut consuming = std::collections::HashSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut old_removed = false;
    loop {
        if let Ok(nodes) = senders(&cluster).await {
            for node in nodes {
                if node == cluster.node() || !consuming.insert(node.clone()) {
                    continue;
                }
                let (cluster, parts, shutdown) = (cluster.clone(), parts.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let what = format!("events consumer of node {node}");
                    super::keep_running(&what, &shutdown, || {
                        consume(&cluster, &parts, &shutdown, &node)
                    })
                    .await;
                });
            }
            if !old_removed {
                // The one consumer of the whole stream that builds before this one
                // made, named by this node's id.
                if let Ok(stream) = cluster.js().get_stream_no_info(EVENTS_STREAM).await {
                    old_removed = match stream.delete_consumer(cluster.node()).await {
                        Ok(_) => true,
                        Err(e) => e.to_string().contains("not found"),
                    };
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DISCOVER_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The nodes that have events in the stream (its subjects, one a node).
async fn senders(cluster: &Cluster) -> Result<Vec<String>, String> {
    let stream = cluster
        .js()
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let mut subjects = stream
        .info_with_subjects("launchguard.events.*")
        .await
        .map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.map_err(|e| e.to_string())?;
        if let Some(node) = subject.strip_prefix("launchguard.events.") {
            nodes.push(node.to_string());
        }
    }
    Ok(nodes)
}

/// The key in `meta` of where the consumer of `node`'s events stands (Unix ms of
/// the last message it stored).
fn consumed_key(node: &str) -> String {
    format!("{}.{node}", trees::META_CLUSTER_CONSUMED_MS)
}

async fn consume(
    cluster: &Cluster,
    parts: &Parts,
    shutdown: &CancellationToken,
    from: &str,
) -> Result<(), String> {
    ensure_stream(cluster, parts.dedup_ttl_secs).await?;
    let stream = cluster
        .js()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    // JetStream stamps messages with the server's clock: the start is read off the
    // system's (or the last message's), not the app's (injectable) clock. A node
    // upgraded from the one consumer of the whole stream resumes each node's from
    // where that one stood.
    let key = consumed_key(from);
    let last = match parts.store.meta_u64_named(&key).unwrap_or(0) {
        0 => parts
            .store
            .meta_u64(trees::META_CLUSTER_CONSUMED_MS)
            .unwrap_or(0),
        last => last,
    };
    let start = super::resume_from(
        last,
        RESUME_OVERLAP,
        Duration::from_secs(parts.dedup_ttl_secs.min(10 * 365 * 86_400)),
    );
    let mut messages = super::fresh_messages(
        &stream,
        &format!("{}~{from}", cluster.node()),
        start,
        pull::Config {
            description: Some(format!(
                "launchguard node {}: the events of node {from}",
                cluster.node()
            )),
            filter_subject: format!("launchguard.events.{from}"),
            // One ack per batch, for every message up to it: the whole batch is
            // durable here before it is sent.
            ack_policy: jetstream::consumer::AckPolicy::All,
            // A message delivered to a node that died before storing it comes back
            // this long after; a redelivery of one it did store is a known id.
            ack_wait: Duration::from_secs(5),
            max_ack_pending: 20_000,
            ..Default::default()
        },
        // A pull that lapses is noticed within 2 s.
        Duration::from_secs(1),
    )
    .await?;
    // The consumer's number of the last message delivered (each delivery, a
    // redelivery too, takes the next one).
    let mut delivered: Option<u64> = None;
    loop {
        let first = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(first) = first else {
            return Err("the message stream ended".into());
        };
        let mut batch = vec![first.map_err(|e| e.to_string())?];
        // The messages already here join the batch; an error or the stream's end
        // among them ends this consumer once the batch is stored (and is retried).
        let mut ended = None;
        while batch.len() < BATCH {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                Some(Some(Err(e))) => {
                    ended = Some(e.to_string());
                    break;
                }
                Some(None) => {
                    ended = Some("the message stream ended".into());
                    break;
                }
                None => break,
            }
        }
        store_batch(cluster, parts, &batch).await?;
        // The one ack covers every message delivered before it, so it is sent only
        // if none was missed on the way here (the consumer's delivery numbers run
        // on without a gap); else the consumer is remade from before the batch.
        for m in &batch {
            let seq = m.info().map(|i| i.consumer_sequence).unwrap_or(0);
            match delivered {
                Some(prev) if seq != prev + 1 => {
                    return Err(format!(
                        "a delivery was missed (delivery {prev}, then {seq})"
                    ))
                }
                _ => delivered = Some(seq),
            }
        }
        if let Some(last) = batch.last() {
            last.ack().await.map_err(|e| e.to_string())?;
        }
        let last_ms = batch
            .iter()
            .filter_map(|m| m.info().ok())
            .map(|info| super::unix_ms(info.published))
            .max()
            .unwrap_or(0);
        if last_ms > 0 {
            let _ = parts.store.set_meta_u64_named(&key, last_ms);
        }
        if let Some(e) = ended {
            return Err(e);
        }
    }
}

/// Stores the replicas of `batch` (this node's own events are already stored) and
/// waits until they are durable.
async fn store_batch(
    cluster: &Cluster,
    parts: &Parts,
    batch: &[jetstream::Message],
) -> Result<(), String> {
    let now = parts.clock.now_ms();
    let mut appended = false;
    // Each other node's newest message of the batch, for its replication lag.
    let mut newest: Vec<(String, i64)> = Vec::new();
    for m in batch {
        let node = Some(super::sender(m))
            .filter(|n| !n.is_empty())
            .or_else(|| {
                m.subject
                    .strip_prefix("launchguard.events.")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // This node's own events come back too (one consumer reads the whole
        // stream): they are stored already.
        if node == cluster.node() {
            continue;
        }
        if let Ok(info) = m.info() {
            let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            match newest.iter_mut().find(|(n, _)| *n == node) {
                Some((_, at)) => *at = (*at).max(published_ms),
                None => newest.push((node.clone(), published_ms)),
            }
        }
        let mut record = match decode_event(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                // A newer node's record this build cannot read: skipped (and said),
                // never misread.
                metrics::counter!(telemetry::CLUSTER_REPLICATED_TOTAL, "result" => "unreadable")
                    .increment(1);
                tracing::error!(node = %node, "cluster: an event from {node} cannot be read by this build: {e}");
                continue;
            }
        };
        record.origin = Some(Origin {
            node,
            stored_ms: now,
        });
        match parts.ingestor.ingest_replica(&record) {
            Ok(Commit::Accepted { .. }) => {
                appended = true;
                metrics::counter!(telemetry::CLUSTER_REPLICATED_TOTAL, "result" => "stored")
                    .increment(1);
            }
            Ok(Commit::Duplicate { .. }) => {
                metrics::counter!(telemetry::CLUSTER_REPLICATED_TOTAL, "result" => "known")
                    .increment(1);
            }
            Err(r) => return Err(format!("cannot store a replica: {r}")),
        }
    }
    for (node, published_ms) in newest {
        let lag = (now as i64 - published_ms).max(0) as f64 / 1000.0;
        metrics::gauge!(telemetry::CLUSTER_REPLICATION_LAG_SECONDS, "node" => node).set(lag);
    }
    if appended {
        parts
            .committer
            .wait_durable()
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_to_publish_stops_at_the_first_hole() {
        let at = |seqs: &[u64]| -> Vec<(u64, crate::ingest::store::EventRecord)> {
            seqs.iter()
                .map(|&s| {
                    let r = crate::ingest::store::EventRecord {
                        id: format!("e{s}"),
                        event_type: "upvote".into(),
                        weight_milli: 1000,
                        received_ms: s,
                        scheme: crate::ingest::store::Scheme::ProductHunt,
                        payload: Vec::new(),
                        origin: None,
                    };
                    (s, r)
                })
                .collect()
        };
        assert_eq!(contiguous(4, &at(&[5, 6, 7])), 3);
        assert_eq!(contiguous(4, &at(&[5, 7, 8])), 1);
        assert_eq!(contiguous(4, &at(&[6, 7])), 0);
        assert_eq!(contiguous(4, &at(&[])), 0);
    }

    #[test]
    fn a_plain_id_is_its_own_msg_id_and_any_other_is_hashed() {
        assert_eq!(msg_id("evt-123_ab.c"), "evt-123_ab.c");
        let spaced = msg_id("evt 1");
        assert!(
            spaced.starts_with("sha256:") && spaced.len() == 7 + 64,
            "{spaced}"
        );
        assert_eq!(msg_id("évt"), msg_id("évt"));
        assert_ne!(msg_id("évt"), msg_id("evt"));
        assert_ne!(msg_id(&"x".repeat(129)), "x".repeat(129));
        // An id that looks like a hashed one is hashed too, so no two ids share one.
        let lookalike = format!("sha256:{}", "0".repeat(64));
        assert_ne!(msg_id(&lookalike), lookalike);
    }

    #[test]
    fn a_pub_ack_is_read_as_stored_duplicate_or_refused() {
        assert_eq!(
            parse_ack(br#"{"stream":"LAUNCHGUARD_EVENTS","seq":42}"#),
            Ack::Stored {
                stream_seq: 42,
                duplicate: false
            }
        );
        assert_eq!(
            parse_ack(
                br#"{"stream":"LAUNCHGUARD_EVENTS","domain":"hub","seq":7,"duplicate":true}"#
            ),
            Ack::Stored {
                stream_seq: 7,
                duplicate: true
            }
        );
        let refused = parse_ack(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        );
        assert_eq!(
            refused,
            Ack::Refused("maximum messages exceeded (err_code 10077)".into())
        );
        assert!(matches!(parse_ack(b""), Ack::Refused(_)));
        assert!(matches!(parse_ack(br#"{"stream":"S"}"#), Ack::Refused(_)));
    }

    #[test]
    fn the_stream_keeps_duplicates_for_the_whole_dedup_ttl() {
        let c = stream_config(86_400);
        assert_eq!(c.duplicate_window, Duration::from_secs(86_400));
        assert!(c.max_age >= c.duplicate_window);
        assert_eq!(c.subjects, vec![EVENTS_SUBJECTS.to_string()]);
    }
}
