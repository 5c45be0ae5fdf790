//! External tools a test drives (Chromium, ChromeDriver, promtool, systemd-analyze):
//! found on `PATH`, and the one decision of what a missing tool means. Outside CI a
//! test without its tool says so and skips; under CI (`CI=true`, as `.ci/run` runs) it
//! fails, since CI installs every tool and a skip there would be a check that claims
//! to run and does not.

use std::path::PathBuf;

/// True when the tests run under CI: `CI` set to anything but empty, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

/// The first of `names` that is an executable file on `PATH`.
pub fn find_tool(names: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

/// The tool (the first of `names` found on `PATH`), or, when none is there: a panic
/// under CI, else a note on stderr and `None`, so the caller returns and the check is
/// skipped. `package` is the Debian package that brings it.
pub fn require_tool(names: &[&str], package: &str) -> Option<PathBuf> {
    if let Some(path) = find_tool(names) {
        return Some(path);
    }
    let names = names.join(" or ");
    if under_ci() {
        panic!(
            "{names} is not installed, and under CI a missing tool fails the test instead of \
             skipping it: install the Debian package {package} (.ci/run does)"
        );
    }
    eprintln!("{names} is not installed (Debian package {package}); check skipped");
    None
}
