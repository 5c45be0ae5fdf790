//! The URLs an operator writes: `origin.upstream` and the targets launchguard calls
//! (`alerts.slack_webhook_urls`, `producthunt.api_url`). Each check's error text is
//! meant for a config error, which names the key; the edge and the outbound queue
//! parse with the same functions.

use axum::http::uri::{Authority, Scheme};
use axum::http::Uri;

/// Checks an `origin.upstream` value; the error text is meant for a config error.
pub fn upstream(text: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = text.parse().map_err(|e| {
        format!("expected a URL such as \"http://127.0.0.1:3000\", got {text:?} ({e})")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text:?}: https upstreams are not supported; run the origin on loopback over http"
            ))
        }
        _ => {
            return Err(format!(
                "expected a URL such as \"http://127.0.0.1:3000\", got {text:?}"
            ))
        }
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{text:?} has no host:port"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{text:?}: give only scheme, host and port; paths are passed through as requested"
        ));
    }
    Ok((Scheme::HTTP, authority))
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host; the
/// message says what to write instead.
pub fn target(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); write it as https://host/path"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{url:?} must start with https:// (or http:// for a local receiver)"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{url:?} has no host; write it as https://host/path"
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_must_be_plain_http_roots() {
        assert!(upstream("http://127.0.0.1:3000").is_ok());
        assert!(upstream("http://localhost:3000/").is_ok());
        assert!(upstream("https://example.com")
            .unwrap_err()
            .contains("https"));
        assert!(upstream("127.0.0.1:3000").is_err());
        assert!(upstream("http://127.0.0.1:3000/app")
            .unwrap_err()
            .contains("paths"));
    }

    #[test]
    fn targets_must_be_http_urls_with_a_host() {
        assert!(target("https://hooks.slack.com/services/T/B/X").is_ok());
        assert!(target("http://127.0.0.1:9/hook").is_ok());
        assert!(target("ftp://example.com/")
            .unwrap_err()
            .contains("https://"));
        assert!(target("hooks.slack.com/x").is_err());
    }
}
