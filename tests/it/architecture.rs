//! The house's one rule, checked on the sources: imports point one way, from the
//! composition (`app`, `cli`) down through the wings `ops` → `insight` → `edge` →
//! `ingest` to the modules every wing shares (`config`, `secrets`, `clock`, `error`,
//! `telemetry`). A `crate::` path in code (not in a comment) that points up fails this
//! test, naming the file and the path.
//!
//! `LEFT` lists the arrows that were there before the wings, each with the point of
//! the house issue that removes it. An arrow that is fixed must leave the list (the
//! test says so), so the list only shrinks.

use std::collections::BTreeSet;
use std::path::Path;

/// `(file under src/, path it imports)` pointing up, and why it is still there.
const LEFT: &[(&str, &str, &str)] = &[];

fn wing_of_file(rel: &str) -> &'static str {
    for w in ["ingest", "edge", "insight", "ops"] {
        if rel.starts_with(&format!("{w}/")) {
            return w;
        }
    }
    match rel {
        "app.rs" | "cli.rs" | "main.rs" | "lib.rs" => "app",
        _ => "shared",
    }
}

fn wing_of_module(top: &str) -> Option<&'static str> {
    Some(match top {
        "app" | "cli" => "app",
        "config" | "secrets" | "clock" | "error" | "telemetry" | "syntax" | "client" => "shared",
        "ingest" => "ingest",
        "edge" => "edge",
        "insight" => "insight",
        "ops" => "ops",
        _ => return None,
    })
}

fn rank(wing: &str) -> u8 {
    match wing {
        "shared" => 0,
        "ingest" => 1,
        "edge" => 2,
        "insight" => 3,
        "ops" => 4,
        _ => 5,
    }
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a` or `crate::wing::b` path in code lines of `text`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let ident = |s: &str| -> String {
                s.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            };
            let top = ident(after);
            let mut path = format!("crate::{top}");
            if ["ingest", "edge", "insight", "ops"].contains(&top.as_str()) {
                if let Some(next) = after[top.len()..].strip_prefix("::") {
                    let module = ident(next);
                    if !module.is_empty() && module.chars().next().unwrap().is_lowercase() {
                        path = format!("{path}::{module}");
                    }
                }
            }
            found.insert(path);
            rest = &after[top.len()..];
        }
    }
    found
}

#[test]
fn imports_point_down_from_app_through_the_wings() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 30, "found the sources");
    let mut up = BTreeSet::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let from = wing_of_file(&rel);
        for path in crate_paths(&std::fs::read_to_string(file).unwrap()) {
            let top = path["crate::".len()..].split("::").next().unwrap();
            let Some(to) = wing_of_module(top) else {
                continue;
            };
            if rank(to) > rank(from) {
                up.insert((rel.clone(), path));
            }
        }
    }
    let left: BTreeSet<(String, String)> = LEFT
        .iter()
        .map(|(f, p, _)| (f.to_string(), p.to_string()))
        .collect();
    let new: Vec<_> = up.difference(&left).collect();
    assert!(
        new.is_empty(),
        "imports against the wings' direction (app → ops → insight → edge → ingest → shared): {new:?}"
    );
    let fixed: Vec<_> = left.difference(&up).collect();
    assert!(
        fixed.is_empty(),
        "these arrows are gone: take them out of LEFT in tests/it/architecture.rs: {fixed:?}"
    );
}

#[test]
fn the_checker_sees_an_arrow_up_and_ignores_comments() {
    let text = "use crate::app::AppState;\n// crate::ops::admin in a comment\nlet x = crate::edge::cache::Cache::new();\n";
    let paths = crate_paths(text);
    assert_eq!(
        paths,
        ["crate::app", "crate::edge::cache"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(rank(wing_of_module("app").unwrap()) > rank(wing_of_file("ingest/ring.rs")));
    assert!(rank(wing_of_module("ingest").unwrap()) < rank(wing_of_file("edge/mod.rs")));
}
