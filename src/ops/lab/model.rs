//! The lab's visitor model, pure: an engagement curve (upvotes per minute) becomes
//! visitors, each on a journey of requests, deterministic for a seed.
//!
//! Every number here is an assumption, stated where it is used (synthetic, not
//! measured on a real launch):
//! - **Visits follow upvotes** with a lag (`lag_secs`, 120 s: the time from a vote on
//!   Product Hunt to the click through that the voter's followers make) and a ratio
//!   (`visits_per_upvote`, 4: public launch write-ups put it at 3 to 5 visits per
//!   upvote, as issue 15 quotes them).
//! - **Newsletter bursts**: a curve may name bursts in `# lab.burst minute=M
//!   visitors=V spread_secs=S` comment lines (the simulate parser skips comments):
//!   `V` extra visitors arriving evenly over `S` seconds from minute `M`, as when a
//!   newsletter that links the launch goes out.
//! - **Journeys**: every visitor lands on the launch page (a funnel page, critical)
//!   with its assets; `browse_share` (30%) then opens one more page that is not
//!   critical (the blog, the changelog, the docs) 30 s later; `funnel_share` (25%)
//!   goes to pricing 20 s after landing, back to the launch page at 45 s, and
//!   `convert_share` of those (40%, so 10% of all visitors) posts the signup form at
//!   60 s and sends the conversion beacon at 61 s.
//! - **Assets**: a first page view brings 3 assets (script, style sheet, hero image),
//!   each later page one; the browser caches the rest.
//!
//! `scale` multiplies the visitors (the lab sets it so the offered load peaks at
//! `--peak-rps` on this machine); fractions of a visitor carry over from second to
//! second, so the count is exact over the run, and only which journey each visitor
//! takes and where it falls within its second come from the seeded generator.

use crate::ops::simulate::Minute;

/// A newsletter-style burst of extra visitors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub minute: u32,
    pub visitors: u32,
    pub spread_secs: u32,
}

/// The assumptions that turn upvotes into visitors (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisitorModel {
    pub lag_secs: u32,
    pub visits_per_upvote: f64,
    pub browse_share: f64,
    pub funnel_share: f64,
    pub convert_share: f64,
    /// Lab visitors per visitor of the curve.
    pub scale: f64,
}

impl Default for VisitorModel {
    fn default() -> Self {
        VisitorModel {
            lag_secs: 120,
            visits_per_upvote: 4.0,
            browse_share: 0.30,
            funnel_share: 0.25,
            convert_share: 0.40,
            scale: 1.0,
        }
    }
}

/// What a visitor came to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Journey {
    /// The launch page, and gone.
    Bounce,
    /// One more page that is not critical.
    Browse,
    /// Pricing, the launch page again, and (when `converts`) the signup and the beacon.
    Funnel { converts: bool },
}

/// The admission class the lab's site gives a path (`lab_paths` in `lab/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Critical,
    Normal,
    Low,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Critical, Class::Normal, Class::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }
}

/// One request of a journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A page view (`GET`, a browser's `Accept`).
    Page(&'static str),
    /// An asset (`GET`, `Accept: */*`).
    Asset(&'static str),
    /// The signup form (`POST /api/signup`).
    Signup,
    /// The conversion beacon (`POST /api/convert {"goal":"signup"}`).
    Beacon,
}

/// The launch page: a funnel page (`conversions.funnel_paths`), critical.
pub const LAUNCH: &str = "/launch/";
pub const PRICING: &str = "/pricing";
pub const SIGNUP: &str = "/api/signup";
pub const BEACON: &str = "/api/convert";
const FIRST_ASSETS: [&str; 3] = ["/assets/app.js", "/assets/style.css", "/assets/hero.svg"];
const BROWSE_PAGES: [&str; 3] = ["/blog/launch-story", "/changelog", "/docs/"];

impl Request {
    pub fn path(self) -> &'static str {
        match self {
            Request::Page(p) | Request::Asset(p) => p,
            Request::Signup => SIGNUP,
            Request::Beacon => BEACON,
        }
    }

    /// Its class on the lab's site: the launch page and the beacon are critical,
    /// assets low, the rest normal.
    pub fn class(self) -> Class {
        match self {
            Request::Page(LAUNCH) | Request::Beacon => Class::Critical,
            Request::Asset(_) => Class::Low,
            _ => Class::Normal,
        }
    }

    /// Whether a shed answer to it costs the visitor's conversion (a funnel step).
    pub fn in_funnel(self) -> bool {
        matches!(self, Request::Page(PRICING) | Request::Signup)
    }
}

/// One step of a journey: a page (or form) `at_secs` after arrival, with the assets
/// it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_secs: u32,
    pub request: Request,
    pub assets: Vec<&'static str>,
}

impl Journey {
    /// Its steps, in order. `pick` (0..3) chooses the page a browsing visitor opens.
    pub fn steps(self, pick: usize) -> Vec<Step> {
        let step = |at_secs, request, assets: &[&'static str]| Step {
            at_secs,
            request,
            assets: assets.to_vec(),
        };
        let mut out = vec![step(0, Request::Page(LAUNCH), &FIRST_ASSETS)];
        match self {
            Journey::Bounce => {}
            Journey::Browse => out.push(step(
                30,
                Request::Page(BROWSE_PAGES[pick % BROWSE_PAGES.len()]),
                &["/assets/docs.css"],
            )),
            Journey::Funnel { converts } => {
                out.push(step(20, Request::Page(PRICING), &["/assets/pricing.svg"]));
                out.push(step(45, Request::Page(LAUNCH), &[]));
                if converts {
                    out.push(step(60, Request::Signup, &[]));
                    out.push(step(61, Request::Beacon, &[]));
                }
            }
        }
        out
    }
}

/// One visitor: when it arrives (seconds from the curve's start, with a fraction)
/// and what it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at_secs: f64,
    pub journey: Journey,
    /// Which browse page (see `Journey::steps`).
    pub pick: usize,
}

/// A small deterministic generator (SplitMix64): the same seed, the same visitors.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Upvotes per second of the curve, second by second (each minute's spread evenly).
pub fn upvotes_per_second(curve: &[Minute]) -> Vec<f64> {
    let len = curve.last().map_or(0, |m| (m.minute as usize + 1) * 60);
    let mut out = vec![0.0; len];
    for m in curve {
        let start = m.minute as usize * 60;
        for s in &mut out[start..start + 60] {
            *s = f64::from(m.upvotes) / 60.0;
        }
    }
    out
}

/// Expected visitors per second (before `scale`): the upvotes `lag_secs` earlier
/// times the ratio, plus the bursts, over the curve's length.
pub fn visitors_per_second(curve: &[Minute], bursts: &[Burst], model: &VisitorModel) -> Vec<f64> {
    let upvotes = upvotes_per_second(curve);
    let lag = model.lag_secs as usize;
    let mut out: Vec<f64> = (0..upvotes.len())
        .map(|t| {
            t.checked_sub(lag)
                .map_or(0.0, |u| upvotes[u] * model.visits_per_upvote)
        })
        .collect();
    for b in bursts {
        let start = b.minute as usize * 60;
        let spread = b.spread_secs.max(1) as usize;
        for t in start..(start + spread).min(out.len()) {
            out[t] += f64::from(b.visitors) / spread as f64;
        }
    }
    out
}

/// The visitors of a run, in arrival order. Pure and deterministic for `seed`.
pub fn arrivals(
    curve: &[Minute],
    bursts: &[Burst],
    model: &VisitorModel,
    seed: u64,
) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut carry = 0.0;
    for (t, expected) in visitors_per_second(curve, bursts, model)
        .into_iter()
        .enumerate()
    {
        carry += expected * model.scale;
        let n = carry.floor();
        carry -= n;
        let n = n as usize;
        for i in 0..n {
            let at_secs = t as f64 + (i as f64 + rng.unit()) / n as f64;
            let r = rng.unit();
            let journey = if r < model.funnel_share {
                Journey::Funnel {
                    converts: rng.unit() < model.convert_share,
                }
            } else if r < model.funnel_share + model.browse_share {
                Journey::Browse
            } else {
                Journey::Bounce
            };
            let pick = (rng.next_u64() % 3) as usize;
            out.push(Arrival {
                at_secs,
                journey,
                pick,
            });
        }
    }
    out
}

/// Requests offered per second by class if nobody were shed: `[critical, normal, low]`.
pub fn offered_per_second(arrivals: &[Arrival], len_secs: usize) -> Vec<[u32; 3]> {
    let mut out = vec![[0u32; 3]; len_secs];
    for a in arrivals {
        for step in a.journey.steps(a.pick) {
            let t = (a.at_secs as usize) + step.at_secs as usize;
            if let Some(slot) = out.get_mut(t) {
                slot[step.request.class() as usize] += 1;
                slot[Class::Low as usize] += step.assets.len() as u32;
            }
        }
    }
    out
}

/// The `# lab.burst minute=M visitors=V spread_secs=S` lines of a curve file.
pub fn parse_bursts(text: &str) -> Result<Vec<Burst>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix("# lab.burst") else {
            continue;
        };
        let mut b = Burst {
            minute: 0,
            visitors: 0,
            spread_secs: 60,
        };
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=').ok_or_else(|| {
                format!(
                    "curve line {}: lab.burst: expected key=value, got {field:?}",
                    i + 1
                )
            })?;
            let v: u32 = v.parse().map_err(|_| {
                format!(
                    "curve line {}: lab.burst {k}: expected a whole number, got {v:?}",
                    i + 1
                )
            })?;
            match k {
                "minute" => b.minute = v,
                "visitors" => b.visitors = v,
                "spread_secs" => b.spread_secs = v.max(1),
                _ => {
                    return Err(format!(
                    "curve line {}: lab.burst: unknown key {k:?} (minute, visitors, spread_secs)",
                    i + 1
                ))
                }
            }
        }
        out.push(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(minutes: u32, upvotes: u32) -> Vec<Minute> {
        (0..minutes)
            .map(|minute| Minute {
                minute,
                upvotes,
                comments: 0,
                maker_comments: 0,
            })
            .collect()
    }

    #[test]
    fn visits_follow_upvotes_after_the_lag_at_the_ratio() {
        let model = VisitorModel::default();
        let v = visitors_per_second(&flat(5, 60), &[], &model);
        assert_eq!(v.len(), 300);
        assert_eq!(v[119], 0.0, "nobody before the lag");
        assert!((v[120] - 4.0).abs() < 1e-12, "1 upvote/s x 4 visits");
        assert!((v.iter().sum::<f64>() - 4.0 * 180.0).abs() < 1e-9);
    }

    #[test]
    fn the_count_is_exact_and_the_journeys_keep_their_shares() {
        let model = VisitorModel {
            scale: 0.5,
            ..VisitorModel::default()
        };
        let curve = flat(60, 120);
        let a = arrivals(&curve, &[], &model, 7);
        // 2 upvotes/s x 4 x 0.5 = 4 visitors/s over the 3,480 s after the lag.
        assert_eq!(a.len(), 4 * 3480);
        assert!(a.windows(2).all(|w| w[0].at_secs <= w[1].at_secs));
        let share = |f: &dyn Fn(&Journey) -> bool| {
            a.iter().filter(|x| f(&x.journey)).count() as f64 / a.len() as f64
        };
        let funnel = share(&|j| matches!(j, Journey::Funnel { .. }));
        let converts = share(&|j| *j == Journey::Funnel { converts: true });
        let browse = share(&|j| *j == Journey::Browse);
        assert!((funnel - 0.25).abs() < 0.02, "{funnel}");
        assert!((converts - 0.10).abs() < 0.015, "{converts}");
        assert!((browse - 0.30).abs() < 0.02, "{browse}");
    }

    #[test]
    fn a_seed_gives_the_same_visitors_and_another_seed_others() {
        let model = VisitorModel::default();
        let curve = flat(10, 30);
        assert_eq!(
            arrivals(&curve, &[], &model, 1),
            arrivals(&curve, &[], &model, 1)
        );
        assert_ne!(
            arrivals(&curve, &[], &model, 1),
            arrivals(&curve, &[], &model, 2)
        );
    }

    #[test]
    fn a_burst_adds_its_visitors_over_its_spread() {
        let model = VisitorModel::default();
        let bursts = parse_bursts("# lab.burst minute=2 visitors=300 spread_secs=60\n").unwrap();
        assert_eq!(
            bursts,
            vec![Burst {
                minute: 2,
                visitors: 300,
                spread_secs: 60
            }]
        );
        let a = arrivals(&flat(5, 0), &bursts, &model, 3);
        assert_eq!(a.len(), 300);
        assert!(a.iter().all(|x| (120.0..180.0).contains(&x.at_secs)));
        let e = parse_bursts("# lab.burst minute=2 visitors=lots\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("visitors"), "{e}");
        let e = parse_bursts("# lab.burst minute=2 people=3\n").unwrap_err();
        assert!(e.contains("unknown key \"people\""), "{e}");
    }

    #[test]
    fn journeys_take_their_steps_and_classes() {
        let f = Journey::Funnel { converts: true }.steps(0);
        let paths: Vec<_> = f.iter().map(|s| s.request.path()).collect();
        assert_eq!(paths, [LAUNCH, PRICING, LAUNCH, SIGNUP, BEACON]);
        assert_eq!(f[0].assets.len(), 3);
        assert_eq!(Request::Page(LAUNCH).class(), Class::Critical);
        assert_eq!(Request::Beacon.class(), Class::Critical);
        assert_eq!(Request::Page(PRICING).class(), Class::Normal);
        assert_eq!(Request::Asset("/assets/app.js").class(), Class::Low);
        assert!(Request::Signup.in_funnel() && !Request::Page(LAUNCH).in_funnel());
        assert_eq!(Journey::Funnel { converts: false }.steps(0).len(), 3);
        assert_eq!(Journey::Bounce.steps(0).len(), 1);
        // Requests per visit: a bouncer 4, a browser 6, a converting funnel visitor 9.
        let count = |j: Journey| j.steps(1).iter().map(|s| 1 + s.assets.len()).sum::<usize>();
        assert_eq!(count(Journey::Bounce), 4);
        assert_eq!(count(Journey::Browse), 6);
        assert_eq!(count(Journey::Funnel { converts: true }), 9);
    }

    #[test]
    fn offered_load_counts_every_request_by_class() {
        let a = [Arrival {
            at_secs: 0.5,
            journey: Journey::Funnel { converts: true },
            pick: 0,
        }];
        let o = offered_per_second(&a, 100);
        assert_eq!(o[0], [1, 0, 3]);
        assert_eq!(o[20], [0, 1, 1]);
        assert_eq!(o[45], [1, 0, 0]);
        assert_eq!(o[60], [0, 1, 0]);
        assert_eq!(o[61], [1, 0, 0]);
    }

    #[test]
    fn the_shipped_lab_curves_parse_and_keep_their_stated_figures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/curves");
        // The seeds' figures: a 140x rise within 18 minutes, and a 180 s window in
        // which the rate goes from 12,000 to 45,000 a minute (3.75x).
        let text = std::fs::read_to_string(dir.join("seed-spike.csv")).unwrap();
        let c = crate::ops::simulate::parse_curve(&text).unwrap();
        let peak = c.iter().max_by_key(|m| m.upvotes).unwrap();
        assert!(peak.minute <= 18, "peak at minute {}", peak.minute);
        assert_eq!(peak.upvotes, 140 * c[0].upvotes);
        assert!(c
            .windows(4)
            .any(|w| w[0].upvotes > 0 && w[3].upvotes * 4 >= w[0].upvotes * 15));
        assert!(!parse_bursts(&text).unwrap().is_empty());
        // A Product Hunt day: 24 h from midnight PT, the peak in the PT morning.
        let text = std::fs::read_to_string(dir.join("producthunt-day.csv")).unwrap();
        let c = crate::ops::simulate::parse_curve(&text).unwrap();
        assert_eq!(c.len(), 1440);
        let peak = c.iter().max_by_key(|m| m.upvotes).unwrap();
        assert!((6 * 60..11 * 60).contains(&peak.minute), "{}", peak.minute);
        assert!(c[1439].upvotes * 5 < peak.upvotes, "it decays");
        // The waiting line: a factor near 3.1 at the default weights and gain, held by
        // the votes for 8 minutes and by the comments for 8 more, no votes then.
        let text = std::fs::read_to_string(dir.join("waiting-line.csv")).unwrap();
        let c = crate::ops::simulate::parse_curve(&text).unwrap();
        let v = crate::config::VelocityConfig::default();
        assert_eq!(c.len(), 16);
        for m in &c {
            let weighted = (v.weight_of("upvote") * f64::from(m.upvotes)
                + v.weight_of("comment") * f64::from(m.comments))
                / 60.0;
            let factor = 1.0 + v.gain * weighted;
            assert!(
                (factor - 3.12).abs() < 0.01,
                "minute {}: {factor}",
                m.minute
            );
            assert_eq!(m.upvotes == 0, m.minute >= 8, "minute {}", m.minute);
        }
        let base = std::fs::read_to_string(dir.join("waiting-line.toml")).unwrap();
        let config = crate::config::Config::parse(&base).unwrap();
        assert_eq!(config.backpressure.funnel_grace_secs, 0);
        let base = std::fs::read_to_string(dir.join("refresh-ahead.toml")).unwrap();
        let config = crate::config::Config::parse(&base).unwrap();
        assert_eq!(config.cache.stale_while_revalidate_secs, 0);
    }
}
