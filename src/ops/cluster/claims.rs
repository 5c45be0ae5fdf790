//! Exact counts across nodes: the claims of the counts a cluster decides on
//! (`insight::claims`: a visitor from an earlier day, a converting visitor, a
//! conversion of a goal, each counted once per launch day on every node it reaches).
//!
//! Each node counts as one box does, on its own marks, with no NATS call on the
//! request's path; its flush keeps the claims of what it counted
//! (`History::record_claimed`). This task makes them, up to 512 at once and 64 in
//! flight, in the key-value bucket `LAUNCHGUARD_CLAIMS` with `create`, which only
//! the first node to make a key gets; the key is `<day>.<v|c|g.<goal>>.<visitor>`,
//! the value the node's id. A claim another node holds is **lost**: this node's
//! next flush subtracts its count (`history::Elsewhere`, in the node's own row, so
//! every node's reports subtract it too). A claim this node holds (made now, or
//! before a crash) is **won**, and forgotten. Claims kept while NATS is unreachable
//! are made when it is back.
//!
//! The bucket's entries age out after [`MAX_AGE`] (nats-server 2.9 has no per-key
//! age: the whole bucket's `max_age`): two days, so a day's first claims (made at its
//! midnight, a day of up to 25 hours) are still there 23 hours after the day ended.
//! A claim of a day that ended longer ago than [`DECIDE_AFTER_END`] (22 hours: an
//! hour left for the nodes' clocks to disagree) is not made any more (the others'
//! claims may be gone, so a `create` could win one another node held): the bucket
//! is only read. Held by another node, it is lost; by this node, won; by none, it
//! cannot be decided: kept as won, counted in
//! `launchguard_cluster_claims_total{result="expired"}` and logged.
//!
//! **Invariant:** no request waits on this task; a claim is made only for a count
//! that is durable (the flush wrote it with its claim).

use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{backoff, Cluster};
use crate::clock::Clock;
use crate::insight::counters::Conversions;
use crate::insight::visitor::{parse_mark_key, Mark};
use crate::telemetry;

/// The bucket of the claims.
pub const CLAIMS_BUCKET: &str = "LAUNCHGUARD_CLAIMS";
/// How long the bucket keeps a claim: two days.
pub const MAX_AGE: Duration = Duration::from_secs(2 * 86_400);
/// How long after its day ended a claim can still be made: `MAX_AGE` less the
/// longest day (25 hours, the day the clocks go back) and an hour for the nodes'
/// clocks to disagree.
pub const DECIDE_AFTER_END: Duration = Duration::from_secs(22 * 3600);
/// Claims read per round, and made at once.
const BATCH: usize = 512;
const IN_FLIGHT: usize = 64;
/// How often the task looks for new claims.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// How often the claims kept are counted (a scan of the tree) for the gauge while a
/// backlog is read; a round that reads less than a batch counts them always.
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// How a claim was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Won,
    Lost,
    Expired,
}

impl Decided {
    fn as_str(self) -> &'static str {
        match self {
            Decided::Won => "won",
            Decided::Lost => "lost",
            Decided::Expired => "expired",
        }
    }
}

/// The bucket key of a claim (a visitor mark's key), or `None` for a key this build
/// cannot read.
pub fn bucket_key(mark_key: &[u8]) -> Option<String> {
    let (day, mark, id) = parse_mark_key(mark_key)?;
    let id = B64.encode(id);
    Some(match mark {
        Mark::Visited => format!("{day}.v.{id}"),
        Mark::Converted => format!("{day}.c.{id}"),
        Mark::Goal(goal) => format!("{day}.g.{}.{id}", B64.encode(goal)),
    })
}

async fn bucket(cluster: &Cluster) -> Result<kv::Store, String> {
    super::kv_bucket(
        cluster,
        CLAIMS_BUCKET,
        "launchguard: which node counts a visitor or conversion of a day",
        MAX_AGE,
        stream::StorageType::File,
    )
    .await
}

/// Makes this node's claims until `shutdown`.
pub async fn run(
    cluster: Cluster,
    conversions: Conversions,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let Some(claims) = conversions.claims().cloned() else {
        return;
    };
    let mut store = None;
    let mut counted = None;
    let mut failures = 0u32;
    loop {
        let read = round(
            &cluster,
            &conversions,
            &claims,
            &clock,
            &mut store,
            &mut counted,
        );
        let wait = match read.await {
            Ok(n) => {
                failures = 0;
                if n >= BATCH {
                    Duration::ZERO
                } else {
                    LOOK_EVERY
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!("cluster: cannot claim this node's counts yet (kept, claimed when NATS answers): {e}");
                }
                failures += 1;
                store = None;
                backoff(failures).max(LOOK_EVERY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One round: reads up to `BATCH` kept claims and decides them. Returns how many
/// were read. Counts the claims kept for the gauge when it read less than a batch,
/// or `COUNT_EVERY` after it last did (`counted`), so a backlog is not scanned
/// whole every round.
async fn round(
    cluster: &Cluster,
    conversions: &Conversions,
    claims: &crate::insight::claims::Claims,
    clock: &Clock,
    store: &mut Option<kv::Store>,
    counted: &mut Option<Instant>,
) -> Result<usize, String> {
    let history = conversions.history().clone();
    let skip = claims.clone();
    let due = counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY);
    let (pending, kept) = tokio::task::spawn_blocking(move || {
        let pending = history.pending_claims(BATCH, |k| skip.settling(k))?;
        let kept = (due || pending.len() < BATCH).then(|| history.pending_claims_len());
        Ok::<_, crate::ingest::store::StoreError>((pending, kept))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(kept) = kept {
        metrics::gauge!(telemetry::CLUSTER_CLAIMS_PENDING).set(kept as f64);
        *counted = Some(Instant::now());
    }
    if pending.is_empty() {
        return Ok(0);
    }
    if store.is_none() {
        *store = Some(bucket(cluster).await?);
    }
    let bucket = store.as_ref().expect("set above");
    let node = cluster.node();
    let now = clock.now_ms();
    let tz = conversions.timezone().clone();
    let read = pending.len();
    let results: Vec<(Vec<u8>, Result<Decided, String>)> = futures_util::stream::iter(pending)
        .map(|key| {
            let tz = tz.clone();
            async move {
                let decided = decide(bucket, &key, node, now, &tz).await;
                (key, decided)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let (mut done, mut lost, mut error) = (Vec::new(), Vec::new(), None);
    for (key, decided) in results {
        match decided {
            Ok(d) => {
                metrics::counter!(telemetry::CLUSTER_CLAIMS_TOTAL, "result" => d.as_str())
                    .increment(1);
                if d == Decided::Lost {
                    lost.push(key);
                } else {
                    done.push(key);
                }
            }
            Err(e) => error = Some(e),
        }
    }
    let history = conversions.history().clone();
    let claims = claims.clone();
    tokio::task::spawn_blocking(move || {
        // A claim a flush settled since it was read is no longer kept, and not lost
        // again; one that cannot be looked up now is read again next round.
        claims.lost(lost, |k| history.claim_kept(k).unwrap_or(false));
        if done.is_empty() {
            Ok(())
        } else {
            history.claims_won(&done)
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    match error {
        Some(e) => Err(e),
        None => Ok(read),
    }
}

/// Claims `key` for `node`: `create`, or past the deadline (the claims of other
/// nodes may have aged out, so a `create` could win what another node held) only a
/// look at who holds it.
async fn decide(
    bucket: &kv::Store,
    key: &[u8],
    node: &str,
    now_ms: u64,
    tz: &jiff::tz::TimeZone,
) -> Result<Decided, String> {
    let Some(name) = bucket_key(key) else {
        // Not a claim this build made: nothing to subtract.
        return Ok(Decided::Expired);
    };
    let late = past_deadline(&name, now_ms, tz);
    if !late {
        match bucket.create(&name, node.as_bytes().to_vec().into()).await {
            Ok(_) => return Ok(Decided::Won),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let holder = bucket.get(&name).await.map_err(|e| e.to_string())?;
    let decided = by_holder(holder.as_deref(), node, late)
        .ok_or_else(|| format!("{name}: neither created nor found"))?;
    if decided == Decided::Expired {
        tracing::warn!(claim = %name, "cluster: a claim kept since more than 22 hours after its day, and held by no node, cannot be decided any more; counted here");
    }
    Ok(decided)
}

/// Whether claim `name` (a bucket key) is of a day that ended longer ago than
/// [`DECIDE_AFTER_END`].
fn past_deadline(name: &str, now_ms: u64, tz: &jiff::tz::TimeZone) -> bool {
    let day_end = name
        .split('.')
        .next()
        .and_then(|d| d.parse::<jiff::civil::Date>().ok())
        .and_then(|d| crate::insight::analytics::day_bounds(d, tz).ok())
        .map_or(0, |(_, end)| end);
    now_ms > day_end.saturating_add(DECIDE_AFTER_END.as_millis() as u64)
}

/// A claim decided by who holds it in the bucket (`holder`): this node (made
/// now, or before a crash) or another. Held by none, past the deadline it has
/// expired; before, `None` (it was just found there).
fn by_holder(holder: Option<&[u8]>, node: &str, late: bool) -> Option<Decided> {
    match holder {
        Some(h) if h == node.as_bytes() => Some(Decided::Won),
        Some(_) => Some(Decided::Lost),
        None if late => Some(Decided::Expired),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insight::visitor::{mark_key, Visitor};

    #[test]
    fn bucket_keys_use_only_what_a_key_may_hold() {
        let v = Visitor {
            id: [0xfb; 16],
            first_seen_secs: 1,
        };
        for (mark, want) in [
            (Mark::Visited, "2026-11-26.v."),
            (Mark::Converted, "2026-11-26.c."),
            (Mark::Goal("sign up/ü"), "2026-11-26.g."),
        ] {
            let k = bucket_key(&mark_key("2026-11-26", mark, &v)).unwrap();
            assert!(k.starts_with(want), "{k}");
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)),
                "{k}"
            );
        }
        assert_eq!(bucket_key(b"junk"), None);
    }

    /// Past the deadline a claim is asked of the bucket, not kept as won: another
    /// node's claim is still lost, and the deadline leaves an hour for clocks.
    #[test]
    fn a_late_claim_is_decided_by_its_holder() {
        let tz = jiff::tz::TimeZone::UTC;
        let end = crate::insight::analytics::day_bounds("2026-11-26".parse().unwrap(), &tz)
            .unwrap()
            .1;
        let name = "2026-11-26.v.AAAA";
        let hour = 3_600_000;
        assert!(!past_deadline(name, end + 22 * hour - 1, &tz));
        assert!(past_deadline(name, end + 22 * hour + 1, &tz));
        assert!(DECIDE_AFTER_END + Duration::from_secs(26 * 3600) <= MAX_AGE);
        for late in [false, true] {
            assert_eq!(by_holder(Some(b"b"), "a", late), Some(Decided::Lost));
            assert_eq!(by_holder(Some(b"a"), "a", late), Some(Decided::Won));
        }
        assert_eq!(by_holder(None, "a", true), Some(Decided::Expired));
        assert_eq!(by_holder(None, "a", false), None);
    }
}
