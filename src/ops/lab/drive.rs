//! One scenario over real HTTP: the origin, the appliance, the webhooks and the
//! visitors, sampled once a (real) second.
//!
//! Each visitor is a task that keeps its own cookies (`lg_v`, the waiting room's,
//! the grace's: whatever launchguard sets) and takes its journey's steps at their
//! times. A shed answer on a funnel step (pricing, the signup) ends the journey,
//! unless it is the waiting room's: then the visitor waits, asks again every
//! `refresh_secs` as the page does, and goes on when let in (its later steps move by
//! the wait), or leaves after `patience_secs`. The lab asks for pages that are not
//! critical with `Accept: application/json`, so a waiting answer is the room's JSON
//! (`position`, `wait_secs`, `refresh_secs`: what its page shows) and the shown wait
//! can be put beside the wait the visitor then had: the one shown at entry beside the
//! whole wait, and the one shown at each refresh beside the rest of the wait from
//! then. A visitor is let in by the room when the answer that lets it through sets
//! the let-in cookie (`lg_wa`); one that gets through without it was not shed any
//! more (the factor fell under `shed_factor`), which no estimate of the line's drain
//! foresees, so those are counted apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::model::{Arrival, Journey, Request, LAUNCH};
use super::origin::Origin;
use super::{Plan, Scenario, Start};

/// What one real second of a scenario saw.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Second {
    /// Requests sent, by class (`model::Class` order).
    pub offered: [u32; 3],
    /// Shed by the edge (plain 503), by class.
    pub shed: [u32; 3],
    /// Waiting-room answers.
    pub waiting_answers: u32,
    /// Other failures (an origin 503 passed on, 502, 504, no answer).
    pub errors: u32,
    pub hits: u32,
    pub misses: u32,
    /// Misses on the funnel page (`/launch/`).
    pub funnel_misses: u32,
    /// Of those, the ones answered at a factor at or above the refresh-ahead
    /// threshold (`Plan::warm_from`): the ones warming is there to avoid.
    pub funnel_misses_warm: u32,
    /// Stale copies (STALE) of the funnel page, and those at or above the threshold.
    pub funnel_stale: u32,
    pub funnel_stale_warm: u32,
    pub conversions: u32,
    pub lost: u32,
    pub funnel_shed: u32,
    /// The highest factor an answer in the second carried (or, with no answer, the
    /// admin API's at the second's end).
    pub factor: f64,
    pub waiting_len: u32,
    pub origin_served: u64,
    pub origin_refused: u64,
}

impl Second {
    pub fn offered_total(&self) -> u32 {
        self.offered.iter().sum()
    }
}

/// One visitor's wait in the room, real seconds, from its first waiting answer to the
/// answer that let it through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wait {
    /// When it entered the line, real seconds from the scenario's start.
    pub entered_secs: f64,
    /// Its place at entry (the first waiting answer's `position`; 1 = next).
    pub position: u64,
    /// The wait shown at entry (the first waiting answer's `wait_secs`).
    pub shown: f64,
    /// The wait it then had.
    pub had: f64,
    /// Each later waiting answer (each refresh): (the wait it showed, the rest of the
    /// wait from then).
    pub refreshes: Vec<(f64, f64)>,
    /// Let in by the room (the let-in cookie), not by shedding stopping.
    pub by_room: bool,
}

/// A scenario's record.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub name: String,
    pub seconds: Vec<Second>,
    /// The waits of visitors who waited in the room and got in.
    pub waits: Vec<Wait>,
    pub visitors: usize,
    pub would_convert: usize,
    pub webhooks_accepted: u64,
    pub webhooks_sent: u64,
}

impl Run {
    pub fn total(&self, f: impl Fn(&Second) -> u64) -> u64 {
        self.seconds.iter().map(f).sum()
    }

    pub fn conversions(&self) -> u64 {
        self.total(|s| u64::from(s.conversions))
    }

    pub fn lost(&self) -> u64 {
        self.total(|s| u64::from(s.lost))
    }
}

enum Outcome {
    /// Served; `let_in`: the answer set the room's let-in cookie.
    Ok {
        let_in: bool,
    },
    Waiting {
        position: u64,
        wait_secs: f64,
        refresh_secs: f64,
    },
    Shed,
    Error,
}

struct Ctx {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    own_origin: String,
    t0: Instant,
    speed: f64,
    patience: Duration,
    /// The refresh-ahead threshold, the same in every scenario (`Plan::warm_from`).
    warm_from: f64,
    seconds: Mutex<Vec<Second>>,
    waits: Mutex<Vec<Wait>>,
    waiting_now: AtomicI64,
}

impl Ctx {
    fn record(&self, f: impl FnOnce(&mut Second)) {
        let i = self.t0.elapsed().as_secs() as usize;
        let mut s = self.seconds.lock();
        if s.len() <= i {
            s.resize(i + 1, Second::default());
        }
        f(&mut s[i]);
    }

    /// When launch second `at` happens.
    fn when(&self, at: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(at / self.speed)
    }

    async fn send(&self, request: Request, jar: &mut Vec<(String, String)>) -> Outcome {
        let class = request.class();
        self.record(|s| s.offered[class as usize] += 1);
        let url = format!("{}{}", self.base, request.path());
        let mut b = hyper::Request::builder();
        let body = match request {
            Request::Page(LAUNCH) => {
                b = b.method(Method::GET).header("accept", "text/html");
                Bytes::new()
            }
            Request::Page(_) => {
                b = b.method(Method::GET).header("accept", "application/json");
                Bytes::new()
            }
            Request::Asset(_) => {
                b = b.method(Method::GET).header("accept", "*/*");
                Bytes::new()
            }
            Request::Signup => {
                b = b
                    .method(Method::POST)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("origin", &self.own_origin);
                Bytes::from_static(b"email=visitor%40example.com")
            }
            Request::Beacon => {
                b = b
                    .method(Method::POST)
                    .header("content-type", "application/json")
                    .header("origin", &self.own_origin);
                Bytes::from_static(br#"{"goal":"signup"}"#)
            }
        };
        if !jar.is_empty() {
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            b = b.header("cookie", cookie);
        }
        let Ok(req) = b.uri(url).body(Full::new(body)) else {
            return Outcome::Error;
        };
        let res =
            match tokio::time::timeout(Duration::from_secs(10), self.client.request(req)).await {
                Ok(Ok(res)) => res,
                _ => {
                    self.record(|s| s.errors += 1);
                    return Outcome::Error;
                }
            };
        let status = res.status();
        let headers = res.headers().clone();
        // The factor this answer was decided under (every public answer carries it).
        let factor = headers
            .get(crate::ingest::factor::SCALE_FACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(f) = factor {
            self.record(|s| s.factor = s.factor.max(f));
        }
        let warm = factor.is_some_and(|f| f >= self.warm_from);
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut let_in = false;
        for v in headers.get_all("set-cookie") {
            let Some((pair, attrs)) = v
                .to_str()
                .ok()
                .map(|v| v.split_once(';').unwrap_or((v, "")))
            else {
                continue;
            };
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            jar.retain(|(name, _)| name != k);
            let_in |= k == crate::edge::waiting::ADMITTED_COOKIE && !val.is_empty();
            if !val.is_empty() && !attrs.contains("Max-Age=0") {
                jar.push((k.to_string(), val.to_string()));
            }
        }
        if status.is_success() || status.is_redirection() {
            let funnel = request == Request::Page(LAUNCH);
            match headers.get("x-cache").and_then(|v| v.to_str().ok()) {
                Some("HIT") => self.record(|s| s.hits += 1),
                Some("STALE") => self.record(|s| {
                    s.hits += 1;
                    if funnel {
                        s.funnel_stale += 1;
                        s.funnel_stale_warm += u32::from(warm);
                    }
                }),
                Some("MISS") => self.record(|s| {
                    s.misses += 1;
                    if funnel {
                        s.funnel_misses += 1;
                        s.funnel_misses_warm += u32::from(warm);
                    }
                }),
                _ => {}
            }
            return Outcome::Ok { let_in };
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key("refresh") {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            self.record(|s| s.waiting_answers += 1);
            return Outcome::Waiting {
                position: v["position"].as_u64().unwrap_or(0),
                wait_secs: v["wait_secs"].as_f64().unwrap_or(0.0),
                refresh_secs: v["refresh_secs"].as_f64().unwrap_or(1.0).max(0.1),
            };
        }
        let shed = status == StatusCode::SERVICE_UNAVAILABLE
            && serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["error"] == "shed");
        if shed {
            self.record(|s| s.shed[class as usize] += 1);
            Outcome::Shed
        } else {
            self.record(|s| s.errors += 1);
            Outcome::Error
        }
    }

    /// Waits in the room, asking again as the page does, until let in (true) or gone.
    async fn wait_in_line(
        &self,
        request: Request,
        jar: &mut Vec<(String, String)>,
        (position, shown): (u64, f64),
        mut refresh: f64,
    ) -> bool {
        let entered = Instant::now();
        let mut shown_then: Vec<(Instant, f64)> = Vec::new();
        self.waiting_now.fetch_add(1, Ordering::Relaxed);
        let admitted = loop {
            tokio::time::sleep(Duration::from_secs_f64(refresh)).await;
            if entered.elapsed() > self.patience {
                break None;
            }
            let asked = Instant::now();
            match self.send(request, jar).await {
                Outcome::Ok { let_in } => break Some(let_in),
                Outcome::Waiting {
                    wait_secs,
                    refresh_secs,
                    ..
                } => {
                    shown_then.push((asked, wait_secs));
                    refresh = refresh_secs;
                }
                Outcome::Shed | Outcome::Error => break None,
            }
        };
        self.waiting_now.fetch_sub(1, Ordering::Relaxed);
        let Some(by_room) = admitted else {
            return false;
        };
        let done = Instant::now();
        self.waits.lock().push(Wait {
            entered_secs: (entered - self.t0).as_secs_f64(),
            position,
            shown,
            had: (done - entered).as_secs_f64(),
            refreshes: shown_then
                .into_iter()
                .map(|(at, shown)| (shown, (done - at).as_secs_f64()))
                .collect(),
            by_room,
        });
        true
    }

    async fn visit(self: Arc<Self>, a: Arrival) {
        let mut jar = Vec::new();
        let mut delay = Duration::ZERO;
        let converts = a.journey == Journey::Funnel { converts: true };
        let funnel = matches!(a.journey, Journey::Funnel { .. });
        let mut shed_in_funnel = false;
        let mut converted = false;
        for step in a.journey.steps(a.pick) {
            tokio::time::sleep_until(self.when(a.at_secs + f64::from(step.at_secs)) + delay).await;
            let ok = match self.send(step.request, &mut jar).await {
                Outcome::Ok { .. } => true,
                Outcome::Waiting {
                    position,
                    wait_secs,
                    refresh_secs,
                } => {
                    shed_in_funnel |= step.request.in_funnel();
                    let began = Instant::now();
                    let ok = self
                        .wait_in_line(step.request, &mut jar, (position, wait_secs), refresh_secs)
                        .await;
                    delay += began.elapsed();
                    ok
                }
                Outcome::Shed => {
                    shed_in_funnel |= step.request.in_funnel();
                    false
                }
                Outcome::Error => false,
            };
            if !ok {
                break;
            }
            if step.request == Request::Beacon {
                converted = true;
                self.record(|s| s.conversions += 1);
            }
            for asset in &step.assets {
                self.send(Request::Asset(asset), &mut jar).await;
            }
        }
        if funnel && shed_in_funnel {
            self.record(|s| s.funnel_shed += 1);
        }
        if converts && !converted {
            self.record(|s| s.lost += 1);
        }
    }
}

/// Runs one scenario: starts the origin and the appliance, plays the curve and the
/// visitors, samples every second, stops everything, returns the record.
pub async fn scenario(
    plan: &Plan,
    scenario: &Scenario,
    arrivals: &[Arrival],
    start: &Start,
    data_dir: PathBuf,
) -> Result<Run, String> {
    let origin = Origin::start(plan.capacity)
        .await
        .map_err(|e| format!("cannot start the lab's origin on 127.0.0.1: {e}"))?;
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    let secret = format!("lab-{}", hex::encode(secret));
    let config = super::scenario_config(plan, scenario, &secret, origin.addr, data_dir)?;
    let tick = Duration::from_secs_f64((1.0 / plan.speed).clamp(0.05, 1.0));
    let appliance = match start(config, tick).await {
        Ok(a) => a,
        Err(e) => {
            origin.stop().await;
            return Err(format!("cannot start launchguard: {e}"));
        }
    };
    let result = play(plan, scenario, arrivals, &appliance, &origin, &secret).await;
    (appliance.stop).await;
    origin.stop().await;
    result
}

async fn play(
    plan: &Plan,
    scenario: &Scenario,
    arrivals: &[Arrival],
    appliance: &super::Appliance,
    origin: &Origin,
    secret: &str,
) -> Result<Run, String> {
    let public: SocketAddr = appliance.public;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        base: format!("http://{public}"),
        own_origin: format!("http://{public}"),
        t0: Instant::now(),
        speed: plan.speed,
        patience: Duration::from_secs_f64(plan.patience_secs / plan.speed),
        warm_from: plan.warm_from(),
        seconds: Mutex::new(Vec::new()),
        waits: Mutex::new(Vec::new()),
        waiting_now: AtomicI64::new(0),
    });
    let len_secs = plan
        .curve
        .last()
        .map_or(0.0, |m| (f64::from(m.minute) + 1.0) * 60.0);
    let deadline = ctx.when(len_secs + 62.0 + plan.patience_secs) + Duration::from_secs(5);

    // The webhooks, at the curve's own rates times the speed.
    let key = crate::ingest::webhook::signature::Key::parse(secret)
        .map_err(|e| format!("the lab's secret: {e}"))?;
    let hook_url = format!("http://{public}/webhooks/producthunt");
    let curve = plan.curve.clone();
    let speed = plan.speed;
    let run_id = format!("lab-{}", crate::clock::Clock::system().now_ms());
    let mut hooks = tokio::spawn(async move {
        crate::ops::simulate::play(&hook_url, &key, &curve, speed, &run_id, |_| {}).await
    });

    // Once a second: the factor in force, the line, the origin's counts.
    let sampler = {
        let ctx = ctx.clone();
        let admin = format!("http://{}/admin/factor", appliance.admin);
        let origin_counts = origin.counter();
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(
                ctx.t0 + Duration::from_millis(990),
                Duration::from_secs(1),
            );
            let mut last = origin_counts();
            loop {
                every.tick().await;
                let factor = factor_of(&ctx.client, &admin).await;
                let now = origin_counts();
                let waiting = ctx.waiting_now.load(Ordering::Relaxed).max(0) as u32;
                ctx.record(|s| {
                    if s.factor == 0.0 {
                        s.factor = factor.unwrap_or(s.factor);
                    }
                    s.waiting_len = waiting;
                    s.origin_served = now.served - last.served;
                    s.origin_refused = now.refused - last.refused;
                });
                last = now;
            }
        })
    };

    let mut visitors = tokio::task::JoinSet::new();
    for a in arrivals {
        visitors.spawn(ctx.clone().visit(*a));
    }
    let all_done = async { while visitors.join_next().await.is_some() {} };
    let finished = tokio::time::timeout_at(deadline, all_done).await.is_ok();
    visitors.abort_all();
    let hooks_done = tokio::time::timeout_at(deadline, &mut hooks).await;
    hooks.abort();
    let hooks = match hooks_done {
        Ok(Ok(Ok(summary))) => summary,
        Ok(Ok(Err(e))) => {
            sampler.abort();
            return Err(format!("webhooks: {e}"));
        }
        _ => Default::default(),
    };
    // One more sample after the last visitor.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sampler.abort();
    if !finished {
        tracing::warn!(scenario = %scenario.name, "the lab's deadline passed before every visitor was done");
    }
    let seconds = std::mem::take(&mut *ctx.seconds.lock());
    let waits = std::mem::take(&mut *ctx.waits.lock());
    Ok(Run {
        name: scenario.name.clone(),
        seconds,
        waits,
        visitors: arrivals.len(),
        would_convert: arrivals
            .iter()
            .filter(|a| a.journey == Journey::Funnel { converts: true })
            .count(),
        webhooks_accepted: hooks.accepted,
        webhooks_sent: hooks.sent,
    })
}

async fn factor_of(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Option<f64> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let res = tokio::time::timeout(Duration::from_secs(1), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = res.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["factor"].as_f64()
}
