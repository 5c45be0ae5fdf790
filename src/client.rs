//! The one HTTP client for the calls launchguard makes to the outside (the outbound
//! queue's alerts, the Product Hunt poller): http and https, trusting the webpki
//! (Mozilla) roots plus `outbound.ca_file`; and how long a server asked us to wait.
//! Its trust store ([`trust`]) and connector ([`https_connector`]) also carry the
//! edge's pooled client to an `https://` upstream (roots plus `origin.ca_file`).
//! Shared by the ingest wing (the poller), the edge (the upstream) and the ops wing
//! (the queue), so it sits below all three.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{ConfigError, OutboundConfig};

/// The outbound HTTP client: http and https (webpki roots, plus `outbound.ca_file`).
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The trust anchors for outbound https: the webpki (Mozilla) roots, plus every
/// certificate in `outbound.ca_file` when set (a private CA, a TLS-inspecting proxy's,
/// a test CA). A file that cannot be read, holds no PEM certificate or holds one
/// rustls refuses is an error naming `outbound.ca_file`.
pub fn tls_config(config: &OutboundConfig) -> Result<rustls::ClientConfig, ConfigError> {
    trust("outbound.ca_file", config.ca_file.as_deref())
}

/// A client TLS configuration trusting the webpki (Mozilla) roots plus every
/// certificate in `ca_file` when given; a file that cannot be read, holds no PEM
/// certificate or holds one rustls refuses is an error naming `key` (the config key
/// the file came from: `outbound.ca_file`, `origin.ca_file`).
pub fn trust(key: &str, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad =
            |problem: String| ConfigError::invalid(key, format!("{}: {problem}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM file of certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        for (i, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| bad(format!("certificate {}: {e}", i + 1)))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The HTTP client for outbound calls: http and https (trust from `tls`), HTTP/1.1.
pub fn https_client(timeout: Duration, tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https_connector(http, tls))
}

/// `http` (its timeouts and socket options as the caller set them) for `http://`
/// URIs, and rustls over it for `https://` with the trust of `tls`: the server name
/// (SNI) and the certificate checked against it are the URI's host, and ALPN offers
/// `http/1.1` alone, the only protocol these clients speak.
pub fn https_connector(
    mut http: HttpConnector,
    mut tls: rustls::ClientConfig,
) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    HttpsConnector::from((http, Arc::new(tls)))
}

/// What the server asked for, ms from `now_ms`: the longer of `Retry-After` (seconds
/// or an HTTP date) and `X-Rate-Limit-Reset` (seconds until the reset; a value that
/// looks like a Unix time in seconds is taken as one). 0 when neither is there.
pub fn server_delay_ms(headers: &HeaderMap, now_ms: u64) -> u64 {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let retry_after = text("retry-after")
        .and_then(|s| parse_retry_after(s, now_ms))
        .unwrap_or(0);
    let reset = text("x-rate-limit-reset")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| reset_delay_ms(secs, now_ms))
        .unwrap_or(0);
    retry_after.max(reset)
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, as ms from `now_ms`.
pub fn parse_retry_after(s: &str, now_ms: u64) -> Option<u64> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    let at_ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(at_ms.saturating_sub(now_ms))
}

/// `X-Rate-Limit-Reset`: seconds until the reset, or (above 10^9) a Unix time in seconds.
pub fn reset_delay_ms(secs: u64, now_ms: u64) -> u64 {
    if secs > 1_000_000_000 {
        secs.saturating_mul(1000).saturating_sub(now_ms)
    } else {
        secs.saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_delays_are_read_from_seconds_dates_and_resets() {
        let now = 1_700_000_000_000;
        let mut h = HeaderMap::new();
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(server_delay_ms(&h, now), 120_000);
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(now + 30_000));
        h.insert("retry-after", date.parse().unwrap());
        assert_eq!(server_delay_ms(&h, now), 30_000);
        h.insert("x-rate-limit-reset", "900".parse().unwrap());
        assert_eq!(server_delay_ms(&h, now), 900_000);
        h.insert("x-rate-limit-reset", "1700000060".parse().unwrap());
        assert_eq!(server_delay_ms(&h, now), 60_000);
        assert_eq!(server_delay_ms(&HeaderMap::new(), now), 0);
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(server_delay_ms(&h, now), 60_000);
    }

    #[test]
    fn ca_files_add_their_certificates_or_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let with = |text: &str| {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, text).unwrap();
            tls_config(&OutboundConfig {
                ca_file: Some(path),
                ..OutboundConfig::default()
            })
        };
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let two = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        assert!(with(&two).is_ok());
        assert!(tls_config(&OutboundConfig::default()).is_ok());
        for bad in [
            "",
            "not a certificate",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.starts_with("outbound.ca_file: "), "{bad:?}: {e}");
        }
    }
}
