//! HTTPS on the public listener: rustls, its settings, and the certificate it serves.
//!
//! - **Protocols.** TLS 1.3 and 1.2, ALPN `h2` then `http/1.1` (the connection server
//!   picks hyper's HTTP/2 or HTTP/1 by what was agreed). Sessions resume by ticket
//!   (rustls' ticketer: AEAD keys that rotate every 6 hours, the previous key still
//!   accepted) and by a server-side cache of [`SESSION_CACHE`] sessions, so a
//!   returning visitor skips the full handshake. No 0-RTT: early data is replayable.
//! - **Certificate.** [`Certs`] holds the one certificate chain and key in force and
//!   answers every handshake with it (a resolver, so it can be swapped under running
//!   listeners). It comes from `tls.cert_file` and `tls.key_file` (PEM), or, with
//!   `tls.domains` and no files, from an ACME CA ([`acme`]): then it holds none until
//!   the first certificate is obtained (or loaded from the data dir), and a handshake
//!   before that fails (no placeholder certificate is served). It also answers
//!   TLS-ALPN-01 validations (`acme-tls/1`) with the challenge certificate.
//! - **Reload.** `Certs::reload` reads both files again; [`watch`] calls it on SIGHUP
//!   and when either file changes (size, mtime or inode, checked every
//!   [`WATCH_EVERY`]). A new pair takes over for the next handshake; connections
//!   already open keep the session they have. A pair that does not load (missing,
//!   not PEM, a key that does not match the certificate) leaves the old one in force
//!   and says why in the log, once per change of the files.
//!
//! **Invariant:** once it has a certificate, a TLS listener always has one: only a pair
//! that parsed and whose key signs for its certificate replaces the one in force.

pub mod acme;
pub mod renewal;
pub mod store;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Resumable TLS sessions kept in memory (about 200 bytes each).
pub const SESSION_CACHE: usize = 16_384;

/// How often the certificate files are looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// ALPN protocols, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of TLS-ALPN-01 validations (RFC 8737): the handshake is the whole exchange.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// A certificate pair that loaded, with what the metrics and the log say of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The DNS names the certificate is for (its subject alternative names).
    pub names: Vec<String>,
    /// The start of its validity, Unix seconds.
    pub not_before: i64,
    /// The end of its validity, Unix seconds.
    pub not_after: i64,
}

/// Why a certificate pair did not load; names the key of the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{key}: {path}: {problem}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
}

impl CertError {
    /// The config key of the file at fault.
    pub fn key(&self) -> &'static str {
        match self {
            CertError::Read { key, .. } | CertError::Invalid { key, .. } => key,
        }
    }
}

/// Reads a PEM certificate chain (leaf first) and its private key, and checks that
/// they belong together.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Loaded, CertError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read("tls.cert_file", cert_file)?;
    let key_pem = read("tls.key_file", key_file)?;
    parse_pair(&cert_pem, cert_file, &key_pem, key_file)
}

/// [`load_pair`] on PEM already read; `cert_file` and `key_file` only name them.
pub fn parse_pair(
    cert_pem: &[u8],
    cert_file: &Path,
    key_pem: &[u8],
    key_file: &Path,
) -> Result<Loaded, CertError> {
    let invalid = |key: &'static str, path: &Path, problem: String| CertError::Invalid {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "tls.cert_file",
                cert_file,
                format!("not a PEM certificate chain ({e})"),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(
            "tls.cert_file",
            cert_file,
            "holds no CERTIFICATE block; expected the chain, leaf first".into(),
        ));
    };
    let (names, not_before, not_after) = describe(leaf).map_err(|e| {
        invalid(
            "tls.cert_file",
            cert_file,
            format!("the first certificate does not parse ({e})"),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        invalid(
            "tls.key_file",
            key_file,
            format!("no PEM private key (PKCS#8, SEC1 or PKCS#1) ({e})"),
        )
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        invalid(
            "tls.key_file",
            key_file,
            format!("a key type rustls cannot sign with ({e}); use ECDSA P-256 or RSA"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        invalid(
            "tls.key_file",
            key_file,
            format!("this key does not belong to the certificate in tls.cert_file ({e})"),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// The DNS names and the end of validity of a certificate.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.to_string()),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_string());
            }
        }
    }
    let v = cert.validity();
    Ok((names, v.not_before.timestamp(), v.not_after.timestamp()))
}

/// What identifies a file's version: a replaced file (a rename) has a new inode, an
/// edited one a new size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// The certificate in force, swappable under running listeners. A clone is a handle
/// on the same certificate.
#[derive(Clone)]
pub struct Certs {
    inner: Arc<CertsInner>,
}

struct CertsInner {
    /// None only under ACME, until the first certificate is obtained.
    current: RwLock<Option<Loaded>>,
    /// `tls.cert_file` and `tls.key_file`; none under ACME.
    files: Option<(PathBuf, PathBuf)>,
    /// The files' stamps when last read, loaded or not.
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
    /// TLS-ALPN-01 challenge certificates by domain, while an order waits for them.
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.inner.current.read();
        f.debug_struct("Certs")
            .field("names", &c.as_ref().map(|c| &c.names))
            .field("not_after", &c.as_ref().map(|c| c.not_after))
            .finish()
    }
}

impl Certs {
    /// Loads `tls.cert_file` and `tls.key_file`; an error names the key at fault.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Certs, CertError> {
        let seen = (stamp(cert_file), stamp(key_file));
        let loaded = load_pair(cert_file, key_file)?;
        Ok(Certs {
            inner: Arc::new(CertsInner {
                current: RwLock::new(Some(loaded)),
                files: Some((cert_file.to_path_buf(), key_file.to_path_buf())),
                seen: Mutex::new(seen),
                alpn_challenges: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// No certificate yet (ACME): handshakes fail until [`Certs::set`].
    pub fn empty() -> Certs {
        Certs {
            inner: Arc::new(CertsInner {
                current: RwLock::new(None),
                files: None,
                seen: Mutex::new((None, None)),
                alpn_challenges: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The pair in force, if there is one yet.
    pub fn current(&self) -> Option<Loaded> {
        self.inner.current.read().clone()
    }

    /// Puts `loaded` in force from the next handshake on.
    pub fn set(&self, loaded: Loaded) {
        tracing::info!(names = ?loaded.names, not_after = loaded.not_after, "a new TLS certificate is in force");
        *self.inner.current.write() = Some(loaded);
    }

    /// Answers TLS-ALPN-01 handshakes for `domain` with `key` (None: stop).
    pub fn set_alpn_challenge(&self, domain: &str, key: Option<Arc<CertifiedKey>>) {
        let mut map = self.inner.alpn_challenges.write();
        match key {
            Some(k) => map.insert(domain.to_ascii_lowercase(), k),
            None => map.remove(&domain.to_ascii_lowercase()),
        };
    }

    /// Reads the files again and puts the pair in force if it loads; otherwise the
    /// old pair stays and the error says why. Nothing to do under ACME.
    pub fn reload(&self) -> Result<(), CertError> {
        let i = &self.inner;
        let Some((cert_file, key_file)) = &i.files else {
            return Ok(());
        };
        *i.seen.lock() = (stamp(cert_file), stamp(key_file));
        let loaded = load_pair(cert_file, key_file)?;
        self.set(loaded);
        Ok(())
    }

    /// Reloads when either file changed since it was last read. `Ok(false)`: nothing
    /// changed.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let i = &self.inner;
        let Some((cert_file, key_file)) = &i.files else {
            return Ok(false);
        };
        let now = (stamp(cert_file), stamp(key_file));
        if *i.seen.lock() == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Sets `launchguard_tls_certificate_expiry_seconds{domain}`: seconds left, at
    /// `now_ms`, for each name of the certificate in force.
    pub fn record_metrics(&self, now_ms: u64) {
        let c = self.inner.current.read();
        let Some(c) = c.as_ref() else {
            return;
        };
        let left = c.not_after - (now_ms / 1000) as i64;
        for name in &c.names {
            metrics::gauge!(crate::telemetry::TLS_CERTIFICATE_EXPIRY_SECONDS, "domain" => name.clone())
                .set(left as f64);
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_ACME_TLS));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.inner.alpn_challenges.read().get(&name).cloned();
        }
        self.inner.current.read().as_ref().map(|c| c.key.clone())
    }
}

/// rustls' settings for the public TLS listener (module docs).
pub fn server_config(certs: Certs) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![
        ALPN_H2.to_vec(),
        ALPN_HTTP1.to_vec(),
        ALPN_ACME_TLS.to_vec(),
    ];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The TLS settings of a config, or `None` when `tls.listen` is not set. Certificate
/// errors name their key. Under ACME (`tls.domains`, no files) the certificates start
/// empty; [`acme::Acme::start`] fills them.
pub fn from_config(tls: &TlsConfig) -> Result<Option<(Certs, Arc<ServerConfig>)>, CertError> {
    if tls.listen.is_none() {
        return Ok(None);
    }
    let certs = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Certs::from_files(cert, key)?,
        _ if !tls.domains.is_empty() => Certs::empty(),
        _ => return Ok(None),
    };
    let config = server_config(certs.clone()).map_err(|e| CertError::Invalid {
        key: "tls.listen",
        path: PathBuf::new(),
        problem: e.to_string(),
    })?;
    Ok(Some((certs, config)))
}

/// Reloads `certs` on SIGHUP and when its files change, until `shutdown`.
pub async fn watch(certs: Certs, every: Duration, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                if let Err(e) = certs.reload() {
                    tracing::error!("{e}; the certificate in force stays");
                }
            }
            _ = tick.tick() => {
                if let Err(e) = certs.reload_if_changed() {
                    tracing::error!("{e}; the certificate in force stays");
                }
            }
        }
    }
}

/// The router of `tls.http_listen`: every request, after the front door checked its
/// host and path, gets a 308 to the same host, path and query over https on
/// `https_port`. (308, not 301: a POST stays a POST.)
///
/// Under ACME, `/.well-known/acme-challenge/<token>` answers the HTTP-01 key
/// authorization of a pending challenge (404 for any other token) instead.
pub fn redirect_router(https_port: u16, http01: Option<acme::Http01>) -> axum::Router {
    let router = axum::Router::new()
        .fallback(move |req: axum::extract::Request| async move { redirect(&req, https_port) });
    match http01 {
        Some(h) => router.route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| async move {
                    h.answer(&token)
                },
            ),
        ),
        None => router,
    }
}

fn redirect(req: &axum::extract::Request, https_port: u16) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let Some(verified) = req.extensions().get::<crate::edge::front::Verified>() else {
        return StatusCode::MISDIRECTED_REQUEST.into_response();
    };
    let host = host_without_port(verified.host.to_str().unwrap_or_default());
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`; a name without a port
/// stays as it is.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_keeps_the_host_and_drops_the_plain_port() {
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
