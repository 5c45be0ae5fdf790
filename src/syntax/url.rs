//! The URLs an operator writes: `origin.upstream` and the targets launchguard calls
//! (`alerts.slack_webhook_urls`, `producthunt.api_url`). Each check's error text is
//! meant for a config error, which names the key; the edge and the outbound queue
//! parse with the same functions.

use axum::http::uri::{Authority, Scheme};
use axum::http::Uri;

/// Checks an `origin.upstream` value, `http://` or `https://` with a host and no
/// path; the error text is meant for a config error.
pub fn upstream(text: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = text.parse().map_err(|e| {
        format!("expected a URL such as \"http://127.0.0.1:3000\" or \"https://app.internal\", got {text:?} ({e})")
    })?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => {
            return Err(format!(
                "expected a URL such as \"http://127.0.0.1:3000\" or \"https://app.internal\", got {text:?}"
            ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{text:?} has no host:port"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{text:?}: give only scheme, host and port; paths are passed through as requested"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    Ok((scheme, authority))
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
    fn upstreams_must_be_http_or_https_roots() {
        assert_eq!(
            upstream("http://127.0.0.1:3000").unwrap(),
            (Scheme::HTTP, "127.0.0.1:3000".parse().unwrap())
        );
        assert!(upstream("http://localhost:3000/").is_ok());
        assert_eq!(
            upstream("https://example.com").unwrap(),
            (Scheme::HTTPS, "example.com".parse().unwrap())
        );
        assert!(upstream("ftp://example.com")
            .unwrap_err()
            .contains("https://"));
        assert!(upstream("127.0.0.1:3000").is_err());
        assert!(upstream("https://example.com/app")
            .unwrap_err()
            .contains("paths"));
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
