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

/// A set of path patterns, compiled once; matching takes no lock and no allocation.
#[derive(Debug, Clone)]
pub struct PathSet {
    set: GlobSet,
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
        Ok(PathSet {
            set: b.build().map_err(|e| e.to_string())?,
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.set.is_match(path)
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
