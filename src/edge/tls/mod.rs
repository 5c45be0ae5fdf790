//! HTTPS on the public listener: rustls, its settings, and the certificate it serves.
//!
//! - **Protocols.** TLS 1.3 and 1.2, ALPN `h2` then `http/1.1` (the connection server
//!   picks hyper's HTTP/2 or HTTP/1 by what was agreed). Sessions resume by ticket
//!   (rustls' ticketer: AEAD keys that rotate every 6 hours, the previous key still
//!   accepted) and by a server-side cache of [`SESSION_CACHE`] sessions, so a
//!   returning visitor skips the full handshake. No 0-RTT: early data is replayable.
//! - **Certificates.** [`Certs`] holds the certificate chains and keys in force, one
//!   per slot, and answers each handshake by SNI: the certificate whose names cover
//!   the name asked for (exactly, or by a `*.` wildcard one label deep), else the
//!   first slot's (a client that sends no SNI, or a name no certificate covers). It
//!   is a resolver, so certificates can be swapped under running listeners. They come
//!   from `tls.cert_file` and `tls.key_file` (PEM, one slot), or, with `tls.domains`
//!   and no files, from an ACME CA ([`acme`]): one certificate per domain, as Caddy
//!   does, so a domain whose DNS is not ready yet holds no other back. A slot holds
//!   none until its first certificate is obtained (or loaded from the data dir), and a
//!   handshake that only it could answer fails until then (no placeholder
//!   certificate is served). It also answers TLS-ALPN-01 validations (`acme-tls/1`)
//!   with the challenge certificate.
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

impl Loaded {
    /// True when one of its names covers `name` ([`names_cover`]).
    pub fn covers(&self, name: &str) -> bool {
        names_cover(&self.names, name)
    }
}

/// True when one of a certificate's `names` covers `host` (ASCII case ignored): the
/// same name, or `*.parent` for a host one label below `parent`.
pub fn names_cover(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n.eq_ignore_ascii_case(host)
            || n.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(parent)
                })
            })
    })
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

/// The certificates in force, swappable under running listeners (module docs). A
/// clone is a handle on the same certificates.
#[derive(Clone)]
pub struct Certs {
    inner: Arc<CertsInner>,
}

/// The slot of the certificate from `tls.cert_file` and `tls.key_file`.
pub const FILE_SLOT: &str = "tls.cert_file";

struct CertsInner {
    /// The slots in order (the first answers handshakes no certificate covers) and
    /// what each holds: under ACME one slot per domain, None until it is obtained.
    current: RwLock<Vec<(String, Option<Loaded>)>>,
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
        let mut d = f.debug_map();
        for (slot, loaded) in c.iter() {
            d.entry(slot, &loaded.as_ref().map(|l| (&l.names, l.not_after)));
        }
        d.finish()
    }
}

impl Certs {
    /// Loads `tls.cert_file` and `tls.key_file`; an error names the key at fault.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Certs, CertError> {
        let seen = (stamp(cert_file), stamp(key_file));
        let loaded = load_pair(cert_file, key_file)?;
        Ok(Certs::with(
            vec![(FILE_SLOT.to_string(), Some(loaded))],
            Some((cert_file.to_path_buf(), key_file.to_path_buf())),
            seen,
        ))
    }

    /// One empty slot per name of `slots` (ACME: the domains): handshakes that need
    /// a slot fail until [`Certs::set`] fills it.
    pub fn empty(slots: &[String]) -> Certs {
        Certs::with(
            slots
                .iter()
                .map(|s| (s.to_ascii_lowercase(), None))
                .collect(),
            None,
            (None, None),
        )
    }

    fn with(
        slots: Vec<(String, Option<Loaded>)>,
        files: Option<(PathBuf, PathBuf)>,
        seen: (Option<Stamp>, Option<Stamp>),
    ) -> Certs {
        Certs {
            inner: Arc::new(CertsInner {
                current: RwLock::new(slots),
                files,
                seen: Mutex::new(seen),
                alpn_challenges: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The pair a handshake without SNI gets: the first slot's, else any there is.
    pub fn current(&self) -> Option<Loaded> {
        let c = self.inner.current.read();
        c.iter().find_map(|(_, l)| l.clone())
    }

    /// What `slot` holds (ACME: the domain's own certificate).
    pub fn slot(&self, slot: &str) -> Option<Loaded> {
        let c = self.inner.current.read();
        c.iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(slot))
            .and_then(|(_, l)| l.clone())
    }

    /// Every certificate in force.
    pub fn all(&self) -> Vec<Loaded> {
        let c = self.inner.current.read();
        c.iter().filter_map(|(_, l)| l.clone()).collect()
    }

    /// The certificate a handshake for `name` gets (module docs).
    pub fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let c = self.inner.current.read();
        if let Some(name) = name {
            if let Some(l) = c
                .iter()
                .filter_map(|(_, l)| l.as_ref())
                .find(|l| l.covers(name))
            {
                return Some(l.key.clone());
            }
        }
        c.iter()
            .find_map(|(_, l)| l.as_ref().map(|l| l.key.clone()))
    }

    /// Puts `loaded` in `slot` from the next handshake on (a slot it did not have is
    /// added last).
    pub fn set(&self, slot: &str, loaded: Loaded) {
        tracing::info!(slot, names = ?loaded.names, not_after = loaded.not_after, "a new TLS certificate is in force");
        let mut c = self.inner.current.write();
        match c.iter_mut().find(|(s, _)| s.eq_ignore_ascii_case(slot)) {
            Some((_, l)) => *l = Some(loaded),
            None => c.push((slot.to_ascii_lowercase(), Some(loaded))),
        }
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
        self.set(FILE_SLOT, loaded);
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
        for c in self.all() {
            let left = c.not_after - (now_ms / 1000) as i64;
            for name in &c.names {
                metrics::gauge!(crate::telemetry::TLS_CERTIFICATE_EXPIRY_SECONDS, "domain" => name.clone())
                    .set(left as f64);
            }
        }
    }

    /// The fewest seconds any certificate in force has left at `now_ms`, and its
    /// names (None: no certificate yet).
    pub fn soonest_expiry(&self, now_ms: u64) -> Option<(i64, Vec<String>)> {
        self.all()
            .into_iter()
            .map(|c| (c.not_after - (now_ms / 1000) as i64, c.names))
            .min_by_key(|(left, _)| *left)
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
        self.for_name(hello.server_name())
    }
}

/// rustls' settings for the public TLS listener (module docs). `acme`: certificates
/// come by ACME, so `acme-tls/1` is offered for TLS-ALPN-01 validations; with
/// certificates from files it is not (a handshake asking only for it fails).
pub fn server_config(certs: Certs, acme: bool) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    if acme {
        config.alpn_protocols.push(ALPN_ACME_TLS.to_vec());
    }
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
    let (certs, acme) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => (Certs::from_files(cert, key)?, false),
        _ if !tls.domains.is_empty() => (Certs::empty(&tls.domains), true),
        _ => return Ok(None),
    };
    let config = server_config(certs.clone(), acme).map_err(|e| CertError::Invalid {
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
                    h.answer(&token).await
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

    fn pair(names: &[&str]) -> Loaded {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        parse_pair(
            cert.pem().as_bytes(),
            Path::new("c.pem"),
            key.serialize_pem().as_bytes(),
            Path::new("k.pem"),
        )
        .unwrap()
    }

    #[test]
    fn sni_picks_the_certificate_that_covers_the_name_else_the_first_slot() {
        let certs = Certs::empty(&["a.test".into(), "b.test".into()]);
        assert!(certs.for_name(Some("a.test")).is_none(), "nothing yet");
        let b = pair(&["b.test", "*.b.test"]);
        certs.set("b.test", b.clone());
        // Only b is in force: every handshake gets it until a arrives.
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("a.test")).unwrap(),
            &b.key
        ));
        let a = pair(&["a.test"]);
        certs.set("a.test", a.clone());
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("a.test")).unwrap(),
            &a.key
        ));
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("B.TEST")).unwrap(),
            &b.key
        ));
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("www.b.test")).unwrap(),
            &b.key
        ));
        // One label deep only; a name nobody covers and no SNI get the first slot.
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("x.www.b.test")).unwrap(),
            &a.key
        ));
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("c.test")).unwrap(),
            &a.key
        ));
        assert!(Arc::ptr_eq(&certs.for_name(None).unwrap(), &a.key));
        assert_eq!(certs.all().len(), 2);
        // A renewal replaces its slot.
        let a2 = pair(&["a.test"]);
        certs.set("a.test", a2.clone());
        assert!(Arc::ptr_eq(
            &certs.for_name(Some("a.test")).unwrap(),
            &a2.key
        ));
        assert_eq!(certs.all().len(), 2);
    }

    #[test]
    fn the_redirect_keeps_the_host_and_drops_the_plain_port() {
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
