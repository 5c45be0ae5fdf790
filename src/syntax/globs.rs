//! The one pattern language an operator writes for paths and cookie names: globs
//! (globset), where `*` also crosses `/`.
//!
//! - Paths: `backpressure.critical_paths` and `low_paths` (admission's classes) and
//!   `conversions.funnel_paths` (which page views are visits) are [`PathSet`]s. A
//!   pattern starts with `/`; `/launch/*` covers `/launch` itself as well as
//!   `/launch/` and everything below it, as an operator would expect; `/` alone is the
//!   home page only.
//! - Cookie names: `cache.ignore_cookies` (`_ga*`, `ph_*`) is a [`cookie_names`] set.
//!
//! Config validation compiles every pattern with these same functions, so a pattern
//! that passed validation compiles at startup, and its error names the key.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Compiles one path pattern; the error text is meant for a config error.
pub fn path_glob(pattern: &str) -> Result<globset::Glob, String> {
    if !pattern.starts_with('/') {
        return Err(format!(
            "expected a path pattern starting with \"/\" such as \"/launch/*\", got {pattern:?}"
        ));
    }
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| format!("invalid glob {pattern:?}: {e}"))
}

/// A set of path patterns, compiled once; matching takes no lock and no allocation
/// (past a thread's first sight of a path, see [`PathSet::is_match`]).
#[derive(Debug, Clone)]
pub struct PathSet {
    set: GlobSet,
    /// Tells this set's answers apart in the per-thread memo (a clone shares it: same
    /// patterns, same answers).
    id: usize,
}

/// Paths longer than this are matched without the memo.
const MEMO_PATH_BYTES: usize = 256;
/// Memo slots per thread: the sets of one request (admission's two, the funnel) each
/// have their own slot.
const MEMO_SLOTS: usize = 8;

/// The last path each set was asked about on this thread, and its answer.
struct Memo {
    id: usize,
    path: String,
    matched: bool,
}

impl PathSet {
    /// `patterns` from the config, plus `always` (paths the caller adds itself).
    pub fn new(patterns: &[String], always: &[&str]) -> Result<PathSet, String> {
        let mut b = GlobSetBuilder::new();
        for p in patterns
            .iter()
            .map(String::as_str)
            .chain(always.iter().copied())
        {
            b.add(path_glob(p)?);
            // `/launch/*` also covers `/launch` itself, as an operator would expect.
            if let Some(bare) = p.strip_suffix("/*").filter(|s| !s.is_empty()) {
                b.add(path_glob(bare)?);
            }
        }
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        Ok(PathSet {
            set: b.build().map_err(|e| e.to_string())?,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Whether `path` matches. A thread remembers each set's last path and answer
    /// (the sets are immutable, so an answer never goes stale): a run of requests for
    /// the same page, the common case on launch day, compares a string instead of
    /// running the glob matcher.
    pub fn is_match(&self, path: &str) -> bool {
        thread_local! {
            static MEMO: std::cell::RefCell<[Memo; MEMO_SLOTS]> = std::cell::RefCell::new(
                std::array::from_fn(|_| Memo { id: 0, path: String::new(), matched: false }),
            );
        }
        if path.len() > MEMO_PATH_BYTES {
            return self.set.is_match(path);
        }
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            let slot = &mut memo[self.id % MEMO_SLOTS];
            if slot.id == self.id && slot.path == path {
                return slot.matched;
            }
            let matched = self.set.is_match(path);
            slot.id = self.id;
            slot.path.clear();
            slot.path.push_str(path);
            slot.matched = matched;
            matched
        })
    }
}

/// Compiles `cache.ignore_cookies`; the error names the entry by its index.
pub fn cookie_names(patterns: &[String]) -> Result<GlobSet, (usize, String)> {
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        if p.is_empty() || p.contains(['=', ';', ',', ' ']) {
            return Err((
                i,
                format!("expected a cookie name or a glob such as \"_ga*\", got {p:?}"),
            ));
        }
        let glob = GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| (i, format!("invalid glob {p:?}: {e}")))?;
        b.add(glob);
    }
    b.build().map_err(|e| (0, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_covers_its_bare_path_and_everything_below() {
        let f = PathSet::new(&["/launch/*".into(), "/".into()], &[]).unwrap();
        assert!(f.is_match("/"));
        assert!(f.is_match("/launch"));
        assert!(f.is_match("/launch/"));
        assert!(f.is_match("/launch/pricing"));
        assert!(f.is_match("/launch/deep/page"));
        assert!(!f.is_match("/launcher"));
        assert!(!f.is_match("/about"));
    }

    #[test]
    fn globs_inside_a_path_and_added_paths() {
        let f = PathSet::new(&["/api/*/stats".into(), "/*.css".into()], &["/hook"]).unwrap();
        assert!(f.is_match("/api/v1/stats"));
        assert!(f.is_match("/assets/site.css"));
        assert!(f.is_match("/hook"));
        assert!(!f.is_match("/api/v1/users"));
    }

    /// The memo answers as the matcher does, for sets sharing a slot and paths that
    /// come back.
    #[test]
    fn the_memo_answers_as_the_matcher() {
        let sets: Vec<PathSet> = (0..2 * MEMO_SLOTS + 1)
            .map(|i| PathSet::new(&[format!("/p{i}/*")], &[]).unwrap())
            .collect();
        let paths = ["/p0/x", "/p1/", "/p3", "/p8/a/b", "/other", "/p0/x", "/p1/"];
        for _ in 0..3 {
            for p in paths {
                for s in &sets {
                    assert_eq!(s.is_match(p), s.set.is_match(p), "{p}");
                }
            }
        }
        let long = format!("/p0/{}", "a".repeat(MEMO_PATH_BYTES));
        assert!(sets[0].is_match(&long));
        assert!(!sets[1].is_match(&long));
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(path_glob("launch/*").unwrap_err().contains("starting with"));
        assert!(path_glob("/a/[").unwrap_err().contains("invalid glob"));
        assert_eq!(
            cookie_names(&["_ga*".into(), "a=b".into()]).unwrap_err().0,
            1
        );
        assert!(cookie_names(&["_ga*".into(), "ph_*".into()])
            .unwrap()
            .is_match("_ga_XYZ"));
    }
}
