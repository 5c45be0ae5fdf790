//! Certificates by ACME (RFC 8555) for `tls.domains`, with instant-acme.
//!
//! - **One certificate per domain**, as Caddy orders them: a domain whose DNS does
//!   not point here yet, or that a CA refuses, holds no other back, and each renews
//!   on its own schedule. The TLS listener picks among them by SNI ([`Certs`]).
//! - **Start.** [`Acme::new`] reads what the data dir holds ([`store`](super::store)):
//!   each domain's stored certificate is put in force at once, before the listeners
//!   open, expired or not. A domain without one has no certificate and handshakes
//!   for it fail until its first order succeeds (no placeholder).
//! - **Loop.** [`Acme::run`] decides once a second (by the injected clock), for each
//!   domain in turn, with the pure [`renewal::decide`]: order when there is no
//!   certificate, or when a third of its lifetime is left, or at the moment picked in
//!   the CA's ARI window (RFC 9773), asked for when the directory offers
//!   `renewalInfo` and again when the CA's Retry-After says (an hour to a day). A
//!   renewal the CA suggested names the certificate it `replaces` (a CA that refuses
//!   or does not reflect that gets the same order without it, at once); the window
//!   that brought a renewal forward is not followed again for the new certificate. A new certificate
//!   is written to the data dir and swapped into [`Certs`] for the next handshake.
//! - **Challenges.** HTTP-01 when `tls.http_listen` is set ([`Http01`], answered by
//!   its router), TLS-ALPN-01 otherwise (the challenge certificate, made with rcgen,
//!   answered by the [`Certs`] resolver to `acme-tls/1` handshakes). After a failed
//!   order the next one uses the other type, if there is one. In a cluster both
//!   answers are shared ([`Shared`]), so the node the CA reaches answers either.
//! - **Failures** (the CA down, a challenge refused, a timeout): an error in the log,
//!   `launchguard_tls_acme_orders_total{result="failed"}`, an alert (ops::alerts reads
//!   [`Status`]), then [`renewal::backoff`] (1, 2, 5, 10 min ... a day) for that
//!   domain; after two failures in a row the next directory of
//!   `tls.fallback_directories` is tried. Never more than 10 orders in 10 s, all
//!   domains together ([`renewal::OrderBudget`]).
//! - **An account the CA forgot** (`accountDoesNotExist`: a CA that lost or deleted
//!   it) is set aside and a new one is registered, within the same order.
//!
//! **Invariant:** a certificate is put in force and on disk only when it parsed and
//! its key matches it; the one in force stays otherwise.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse,
    CertificateIdentifier, ChallengeType, ExternalAccountKey, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use super::renewal::{self, Held, Next, OrderBudget};
use super::store::Store;
use super::{Certs, Loaded};
use crate::clock::Clock;
use crate::config::{ConfigError, TlsConfig};

/// How often the renewal decision is taken (real time; the decision reads the clock).
pub const TICK: Duration = Duration::from_secs(1);

/// The longest one order may take, from the account to the certificate.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// One request to the ACME server at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Pending HTTP-01 challenges: token → key authorization.
#[derive(Clone, Default)]
pub struct Http01 {
    tokens: Arc<RwLock<HashMap<String, String>>>,
    /// In a cluster, where a token this node did not set is looked up: the node
    /// that orders may be another one, and the CA's request may reach this one.
    remote: Arc<std::sync::OnceLock<Arc<dyn Shared>>>,
}

impl std::fmt::Debug for Http01 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01")
            .field("tokens", &self.tokens.read().len())
            .finish()
    }
}

impl Http01 {
    /// The answer to `GET /.well-known/acme-challenge/<token>`.
    pub async fn answer(&self, token: &str) -> axum::response::Response {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        let local = self.tokens.read().get(token).cloned();
        let found = match (local, self.remote.get()) {
            (Some(auth), _) => Some(auth),
            (None, Some(shared)) => shared.lookup_challenge(token).await,
            (None, None) => None,
        };
        match found {
            Some(auth) => {
                ([(header::CONTENT_TYPE, "application/octet-stream")], auth).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    fn set(&self, token: &str, auth: Option<String>) {
        let mut t = self.tokens.write();
        match auth {
            Some(a) => t.insert(token.to_string(), a),
            None => t.remove(token),
        };
    }
}

/// A future the cluster's side of ACME returns.
pub type SharedFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// ACME in a cluster (`ops::cluster::certs`): one node orders, under a lease, and
/// every node serves what it obtained. This side knows nothing of NATS.
pub trait Shared: Send + Sync {
    /// Whether this node orders and renews now (it holds the lease).
    fn leading(&self) -> bool;
    /// A certificate this node obtained, for the other nodes.
    fn issued(&self, domain: &str, chain_pem: &[u8], key_pem: &[u8]);
    /// The account this node registered at `directory`, for the other nodes.
    fn account(&self, directory: &str, json: &[u8]);
    /// Publishes (`Some`) or withdraws (`None`) an HTTP-01 answer, so whichever
    /// node the CA's request reaches answers it; resolves once it is published.
    fn challenge(&self, token: &str, key_authorization: Option<&str>) -> SharedFuture<()>;
    /// An HTTP-01 answer another node published.
    fn lookup_challenge(&self, token: &str) -> SharedFuture<Option<String>>;
    /// Publishes (`Some`: the key authorization's SHA-256) or withdraws (`None`) a
    /// TLS-ALPN-01 answer for `domain`, so every node answers the CA's handshake;
    /// resolves once the running nodes have it in force (or after a bound).
    fn alpn_challenge(&self, domain: &str, digest: Option<&[u8]>) -> SharedFuture<()>;
}

/// What the ACME task has done, for the admin side and the tests.
#[derive(Debug, Default)]
pub struct Status {
    /// Renewal decisions taken.
    pub checks: AtomicU64,
    /// Orders placed (new orders sent to a CA).
    pub orders: AtomicU64,
    /// Certificates obtained.
    pub obtained: AtomicU64,
    /// Failed orders in a row of the domain that has failed most (0 when every
    /// domain's last order succeeded).
    pub failures: AtomicU64,
    /// The last failure, naming its domain, for the log and alerts.
    pub last_error: Mutex<Option<String>>,
    /// Accounts registered again because the CA no longer knew them.
    pub accounts_recreated: AtomicU64,
    /// ARI windows received (RFC 9773).
    pub ari_windows: AtomicU64,
}

/// One domain's renewal state.
#[derive(Debug, Default)]
struct Managed {
    domain: String,
    /// Failed orders in a row.
    failures: u32,
    /// No order before this (the backoff after a failure, or the budget).
    retry_at: Option<i64>,
    /// Index into the directories: moves on after two failures in a row.
    directory: usize,
    /// The moment picked in the CA's ARI window, and the certificate it was for.
    ari: Option<(i64, CertificateIdentifier<'static>)>,
    /// The window `ari` was picked in.
    ari_window: Option<(i64, i64)>,
    /// The window that brought the last renewal forward: the same window offered for
    /// the new certificate is not followed again (a CA that keeps answering an old
    /// window would otherwise have every new certificate renewed at once).
    spent_window: Option<(i64, i64)>,
    /// When to ask the CA for the ARI window again.
    ari_next: i64,
}

/// The ACME side of the TLS listener (module docs).
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

struct Inner {
    domains: Vec<String>,
    directories: Vec<String>,
    email: Option<String>,
    eab: Option<(String, Vec<u8>)>,
    challenges: Vec<ChallengeType>,
    tls: rustls::ClientConfig,
    store: Store,
    certs: Certs,
    http01: Http01,
    clock: Clock,
    status: Arc<Status>,
    /// In a cluster, the node that orders and where the results go.
    shared: std::sync::OnceLock<Arc<dyn Shared>>,
}

impl Acme {
    /// Orders only while `shared` says this node leads, and shares what it gets:
    /// certificates, the account, HTTP-01 answers (`Shared`).
    pub fn share(&self, shared: Arc<dyn Shared>) {
        let _ = self.inner.http01.remote.set(shared.clone());
        let _ = self.inner.shared.set(shared);
    }

    /// Puts a certificate another node obtained in force here, and stores it like
    /// one of this node's own. Refuses (and keeps the one in force) a pair that
    /// does not load.
    pub fn install_cert(
        &self,
        domain: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), String> {
        let i = &self.inner;
        let domain = domain.to_ascii_lowercase();
        if !i.domains.contains(&domain) {
            return Err(format!("{domain} is not in this node's tls.domains"));
        }
        let names = [domain.clone()];
        let (cert_path, key_path) = i.store.cert_paths(&names);
        let loaded = super::parse_pair(chain_pem, &cert_path, key_pem, &key_path)
            .map_err(|e| format!("the shared certificate does not load: {e}"))?;
        if i.certs
            .slot(&domain)
            .is_some_and(|c| c.not_after >= loaded.not_after && c.not_before >= loaded.not_before)
        {
            return Ok(());
        }
        i.store
            .save_cert(&names, chain_pem, key_pem)
            .map_err(|e| format!("cannot store the shared certificate: {e}"))?;
        tracing::info!(names = ?loaded.names, not_after = loaded.not_after, "ACME: certificate from another node of the cluster in force");
        i.certs.set(&domain, loaded);
        i.certs.record_metrics(i.clock.now_ms());
        Ok(())
    }

    /// Answers TLS-ALPN-01 handshakes for `domain` with the challenge certificate of
    /// `digest` (another node's order; `None`: stop answering).
    pub fn install_alpn_challenge(
        &self,
        domain: &str,
        digest: Option<&[u8]>,
    ) -> Result<(), String> {
        let i = &self.inner;
        let domain = domain.to_ascii_lowercase();
        if !i.domains.contains(&domain) {
            return Err(format!("{domain} is not in this node's tls.domains"));
        }
        let key = digest
            .map(|d| alpn_challenge_cert(&domain, d))
            .transpose()?;
        i.certs.set_alpn_challenge(&domain, key);
        Ok(())
    }

    /// The domains this node serves by ACME.
    pub fn domains(&self) -> &[String] {
        &self.inner.domains
    }

    /// Stores the account another node registered at `directory`.
    pub fn install_account(&self, directory: &str, json: &[u8]) -> Result<(), String> {
        if !self.inner.directories.iter().any(|d| d == directory) {
            return Err(format!(
                "{directory} is not one of this node's ACME directories"
            ));
        }
        let _: AccountCredentials = serde_json::from_slice(json)
            .map_err(|e| format!("the shared account does not parse: {e}"))?;
        self.inner
            .store
            .save_account(directory, json)
            .map_err(|e| format!("cannot store the shared account: {e}"))
    }

    /// From the `[tls]` config: reads `tls.acme_ca_file`, opens `<data_dir>/tls` and
    /// puts a stored certificate that covers every domain in force. Errors name the key.
    pub fn new(
        tls: &TlsConfig,
        data_dir: &std::path::Path,
        certs: Certs,
        clock: Clock,
    ) -> Result<Acme, ConfigError> {
        let store = Store::open(data_dir).map_err(|e| {
            ConfigError::invalid(
                "server.data_dir",
                format!(
                    "cannot make {}/tls for the ACME files: {e}",
                    data_dir.display()
                ),
            )
        })?;
        let eab = match (&tls.acme_eab_kid, &tls.acme_eab_hmac_key) {
            (Some(kid), Some(key)) => {
                use base64::Engine;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim_end_matches('='))
                    .map_err(|e| ConfigError::invalid("tls.acme_eab_hmac_key", e.to_string()))?;
                Some((kid.clone(), key))
            }
            _ => None,
        };
        let mut challenges = Vec::new();
        if tls.http_listen.is_some() {
            challenges.push(ChallengeType::Http01);
        }
        challenges.push(ChallengeType::TlsAlpn01);
        let acme = Acme {
            inner: Arc::new(Inner {
                domains: tls.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                directories: std::iter::once(tls.acme_directory.clone())
                    .chain(tls.fallback_directories.iter().cloned())
                    .collect(),
                email: tls.acme_email.clone(),
                eab,
                challenges,
                tls: client_tls(tls.acme_ca_file.as_ref())?,
                store,
                certs,
                http01: Http01::default(),
                clock,
                status: Arc::new(Status::default()),
                shared: std::sync::OnceLock::new(),
            }),
        };
        acme.load_stored();
        Ok(acme)
    }

    /// Loads the stored account of the first directory, or registers one (and
    /// stores it): what `launchguard preflight` checks. Says which it was.
    pub async fn ensure_account(&self) -> Result<String, String> {
        let url = &self.inner.directories[0];
        let had = self
            .inner
            .store
            .account(url)
            .map_err(|e| format!("cannot read the stored account: {e}"))?
            .is_some();
        let account = self.account(url).await?;
        Ok(format!(
            "account {} at {url} ({})",
            account.id(),
            if had { "stored" } else { "registered now" }
        ))
    }

    /// The HTTP-01 answers, for `tls.http_listen`'s router.
    pub fn http01(&self) -> Http01 {
        self.inner.http01.clone()
    }

    pub fn status(&self) -> Arc<Status> {
        self.inner.status.clone()
    }

    fn load_stored(&self) {
        let i = &self.inner;
        for domain in &i.domains {
            let (cert, key) = i.store.cert_paths(std::slice::from_ref(domain));
            if !cert.exists() {
                continue;
            }
            match super::load_pair(&cert, &key) {
                Ok(loaded) => {
                    tracing::info!(names = ?loaded.names, not_after = loaded.not_after, "loaded the ACME certificate from {}", cert.display());
                    i.certs.set(domain, loaded);
                }
                Err(e) => tracing::error!(
                    "the stored ACME certificate for {domain} does not load ({e}); ordering a new one"
                ),
            }
        }
    }

    fn held(&self, domain: &str) -> Option<Held> {
        let c = self.inner.certs.slot(domain)?;
        Some(Held {
            not_before: c.not_before,
            not_after: c.not_after,
            covers_domains: c.covers(domain),
        })
    }

    /// Keeps a certificate in force for every domain, until `shutdown` (module docs).
    pub async fn run(self, shutdown: CancellationToken) {
        let i = &self.inner;
        let mut managed: Vec<Managed> = i
            .domains
            .iter()
            .map(|d| Managed {
                domain: d.clone(),
                ..Managed::default()
            })
            .collect();
        let mut budget = OrderBudget::default();
        // Directories found to offer no ARI, not asked again.
        let mut no_ari = vec![false; i.directories.len()];
        loop {
            i.status.checks.fetch_add(1, Relaxed);
            for m in managed.iter_mut() {
                let now = (i.clock.now_ms() / 1000) as i64;
                let held = self.held(&m.domain);
                let dir = m.directory % i.directories.len();
                if held.is_some() && !no_ari[dir] && now >= m.ari_next {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        unsupported = self.ask_ari(m, &i.directories[dir], now) => no_ari[dir] |= unsupported,
                    }
                }
                let ari_at = m.ari.as_ref().map(|(at, _)| *at);
                if renewal::decide(now, held, m.retry_at, ari_at) != Next::Order {
                    continue;
                }
                // In a cluster, only the lease holder orders; the others get its
                // certificates through `install_cert`.
                if i.shared.get().is_some_and(|s| !s.leading()) {
                    continue;
                }
                if let Err(free_at) = budget.take(now) {
                    m.retry_at = Some(free_at);
                    continue;
                }
                let url = i.directories[dir].clone();
                let kind = i.challenges[m.failures as usize % i.challenges.len()].clone();
                // Name the certificate replaced only when the CA suggested this
                // renewal, and not again after a failure (a CA may refuse it).
                let replaces = match (&m.ari, m.failures) {
                    (Some((_, id)), 0) => Some(id.clone()),
                    _ => None,
                };
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(ORDER_TIMEOUT, self.obtain(&url, &m.domain, kind.clone(), replaces)) => r
                        .unwrap_or_else(|_| Err(format!("not done within {} s", ORDER_TIMEOUT.as_secs()))),
                };
                let now = (i.clock.now_ms() / 1000) as i64;
                match result {
                    Ok(loaded) => {
                        i.status.obtained.fetch_add(1, Relaxed);
                        metrics::counter!(crate::telemetry::TLS_ACME_ORDERS_TOTAL, "domain" => m.domain.clone(), "result" => "obtained").increment(1);
                        i.certs.set(&m.domain, loaded);
                        i.certs.record_metrics(i.clock.now_ms());
                        m.failures = 0;
                        m.retry_at = None;
                        if m.ari.take().is_some_and(|(at, _)| at <= now) {
                            m.spent_window = m.ari_window;
                        }
                        m.ari_window = None;
                        m.ari_next = 0;
                    }
                    Err(e) => {
                        metrics::counter!(crate::telemetry::TLS_ACME_ORDERS_TOTAL, "domain" => m.domain.clone(), "result" => "failed").increment(1);
                        m.failures += 1;
                        let wait = renewal::backoff(m.failures);
                        m.retry_at = Some(now + wait);
                        if m.failures % 2 == 0 {
                            m.directory += 1;
                        }
                        tracing::error!(
                            directory = %url,
                            challenge = ?kind,
                            failures = m.failures,
                            "ACME: no certificate for {}: {e}; next attempt in {wait} s",
                            m.domain
                        );
                        *i.status.last_error.lock() = Some(format!("{}: {e}", m.domain));
                    }
                }
            }
            let worst = managed.iter().map(|m| m.failures).max().unwrap_or(0);
            i.status.failures.store(u64::from(worst), Relaxed);
            if worst == 0 {
                *i.status.last_error.lock() = None;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Asks the CA for `m`'s ARI window and picks the moment to renew in it. True when
    /// the directory offers no ARI at all.
    async fn ask_ari(&self, m: &mut Managed, url: &str, now: i64) -> bool {
        const HOUR: i64 = 3_600;
        let Some(loaded) = self.inner.certs.slot(&m.domain) else {
            return false;
        };
        let id = match CertificateIdentifier::try_from(&loaded.key.cert[0]) {
            Ok(id) => id.into_owned(),
            Err(e) => {
                // A certificate without an authority key identifier has no ARI.
                tracing::debug!(domain = %m.domain, "no ARI identifier: {e}");
                m.ari_next = now + 24 * HOUR;
                return false;
            }
        };
        let asked = async {
            let account = self.account(url).await?;
            account.renewal_info(&id).await.map_err(|e| match e {
                instant_acme::Error::Unsupported(_) => String::new(),
                e => e.to_string(),
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT * 2, asked).await {
            Ok(Ok((info, retry_after))) => {
                let start = info.suggested_window.start.unix_timestamp();
                let end = info.suggested_window.end.unix_timestamp();
                let unchanged = m
                    .ari
                    .as_ref()
                    .is_some_and(|(at, old)| *old == id && (start..=end).contains(at));
                if m.spent_window == Some((start, end)) {
                    tracing::warn!(domain = %m.domain, start, end, "ACME: the CA offers the window the last renewal followed again; renewing at a third of the lifetime left instead");
                } else if !unchanged {
                    let at = renewal::ari_pick(start, end, random_unit());
                    tracing::info!(domain = %m.domain, start, end, at, "ACME: the CA's renewal window (ARI)");
                    self.inner.status.ari_windows.fetch_add(1, Relaxed);
                    m.ari = Some((at, id));
                    m.ari_window = Some((start, end));
                }
                m.ari_next = now + (retry_after.as_secs() as i64).clamp(HOUR, 24 * HOUR);
                false
            }
            Ok(Err(e)) if e.is_empty() => {
                tracing::debug!(directory = %url, "the CA offers no ARI; renewing at a third of the lifetime left");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(domain = %m.domain, "ACME: asking for the ARI window failed: {e}; asking again in an hour");
                m.ari_next = now + HOUR;
                false
            }
            Err(_) => {
                tracing::warn!(domain = %m.domain, "ACME: the ARI window did not come in time; asking again in an hour");
                m.ari_next = now + HOUR;
                false
            }
        }
    }

    fn builder(&self) -> instant_acme::AccountBuilder {
        Account::builder_with_http(Box::new(AcmeHttp::new(self.inner.tls.clone())))
    }

    async fn account(&self, url: &str) -> Result<Account, String> {
        let i = &self.inner;
        let stored = i
            .store
            .account(url)
            .map_err(|e| format!("cannot read the stored account: {e}"))?;
        if let Some(json) = stored {
            let creds: AccountCredentials = serde_json::from_slice(&json)
                .map_err(|e| format!("the stored account does not parse: {e}"))?;
            return self
                .builder()
                .from_credentials(creds)
                .await
                .map_err(|e| format!("directory {url}: {e}"));
        }
        let contact = i.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = i
            .eab
            .as_ref()
            .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
        let (account, creds) = self
            .builder()
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                url.to_string(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| format!("creating an account at {url}: {e}"))?;
        let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
        i.store
            .save_account(url, &json)
            .map_err(|e| format!("cannot store the account: {e}"))?;
        if let Some(shared) = i.shared.get() {
            shared.account(url, &json);
        }
        tracing::info!(directory = %url, "ACME account created");
        Ok(account)
    }

    /// One order for `domain`, start to end; the challenge answers are withdrawn
    /// however it ends.
    async fn obtain(
        &self,
        url: &str,
        domain: &str,
        kind: ChallengeType,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Loaded, String> {
        let mut pending = Pending {
            acme: self,
            tokens: Vec::new(),
            alpn: Vec::new(),
        };
        self.order(url, domain, kind, replaces, &mut pending).await
    }

    async fn order(
        &self,
        url: &str,
        domain: &str,
        kind: ChallengeType,
        replaces: Option<CertificateIdentifier<'static>>,
        pending: &mut Pending<'_>,
    ) -> Result<Loaded, String> {
        let i = &self.inner;
        let ids = [Identifier::Dns(domain.to_string())];
        let plain = NewOrder::new(&ids);
        let with_replaces = replaces.map(|id| NewOrder::new(&ids).replaces(id));
        i.status.orders.fetch_add(1, Relaxed);
        tracing::info!(directory = %url, challenge = ?kind, domain, "ACME: ordering a certificate");
        let mut account = self.account(url).await?;
        let first = with_replaces.as_ref().unwrap_or(&plain);
        let mut order = match account.new_order(first).await {
            // A CA that offers ARI but does not take (or reflect) `replaces`: the
            // same order without it, at once, rather than a failure and a backoff.
            Err(e) if with_replaces.is_some() && !account_gone(&e) => {
                tracing::warn!(directory = %url, "ACME: the order naming the certificate it replaces was refused ({e}); ordering without it");
                account.new_order(&plain).await
            }
            r => r,
        };
        order = match order {
            Err(e) if account_gone(&e) => {
                // The CA lost or deleted the account: set it aside, register anew.
                tracing::warn!(directory = %url, "ACME: the CA no longer knows our account ({e}); registering a new one");
                i.store
                    .forget_account(url)
                    .map_err(|e| format!("cannot set the forgotten account aside: {e}"))?;
                i.status.accounts_recreated.fetch_add(1, Relaxed);
                account = self.account(url).await?;
                account.new_order(&plain).await
            }
            r => r,
        };
        let mut order = order.map_err(|e| format!("new order: {e}"))?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(format!("authorization is {s:?}")),
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {name}"))?;
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => {
                    i.http01
                        .set(&challenge.token, Some(key_auth.as_str().to_string()));
                    pending.tokens.push(challenge.token.clone());
                    if let Some(shared) = i.shared.get() {
                        // Published before the CA is told to look, so every node
                        // answers it.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            shared.challenge(&challenge.token, Some(key_auth.as_str())),
                        )
                        .await;
                    }
                }
                _ => {
                    let digest = key_auth.digest();
                    let key = alpn_challenge_cert(&name, digest.as_ref())?;
                    i.certs.set_alpn_challenge(&name, Some(key));
                    pending.alpn.push(name.clone());
                    if let Some(shared) = i.shared.get() {
                        // In force on every running node before the CA is told to
                        // look: its handshake may reach any of them.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(6),
                            shared.alpn_challenge(&name, Some(digest.as_ref())),
                        )
                        .await;
                    }
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?} after validation"));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let key_pem = key.serialize_pem();
        let names = [domain.to_string()];
        let (cert_path, key_path) = i.store.cert_paths(&names);
        let loaded = super::parse_pair(chain.as_bytes(), &cert_path, key_pem.as_bytes(), &key_path)
            .map_err(|e| format!("the issued certificate does not load: {e}"))?;
        i.store
            .save_cert(&names, chain.as_bytes(), key_pem.as_bytes())
            .map_err(|e| {
                format!(
                    "cannot store the certificate in {}: {e}",
                    i.store.dir().display()
                )
            })?;
        if let Some(shared) = i.shared.get() {
            shared.issued(domain, chain.as_bytes(), key_pem.as_bytes());
        }
        tracing::info!(names = ?loaded.names, not_after = loaded.not_after, "ACME: certificate obtained");
        Ok(loaded)
    }
}

/// The challenge answers of one order, withdrawn when it ends.
struct Pending<'a> {
    acme: &'a Acme,
    tokens: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.acme.inner.http01.set(t, None);
            if let Some(shared) = self.acme.inner.shared.get() {
                tokio::spawn(shared.challenge(t, None));
            }
        }
        for d in &self.alpn {
            self.acme.inner.certs.set_alpn_challenge(d, None);
            if let Some(shared) = self.acme.inner.shared.get() {
                tokio::spawn(shared.alpn_challenge(d, None));
            }
        }
    }
}

/// True when the CA says it does not know the account (RFC 8555 §6.7).
fn account_gone(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

/// A uniform draw in [0, 1) from the OS's random source.
fn random_unit() -> f64 {
    let bits = getrandom::u64().unwrap_or(1 << 63);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The TLS-ALPN-01 certificate for `domain` (RFC 8737): self-signed, the domain as
/// its one name, the key authorization's SHA-256 in the critical acmeIdentifier
/// extension.
fn alpn_challenge_cert(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Trust for the ACME server: the webpki roots plus `tls.acme_ca_file` (the outbound
/// client's trust store, its errors naming this key).
fn client_tls(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, ConfigError> {
    crate::client::trust("tls.acme_ca_file", ca_file.map(PathBuf::as_path))
}

/// instant-acme's HTTP client: hyper-util over rustls, https only, each request
/// bounded by [`REQUEST_TIMEOUT`].
struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    fn new(tls: rustls::ClientConfig) -> AcmeHttp {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        AcmeHttp(Client::builder(TokioExecutor::new()).build(https))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(res)) => Ok(BytesResponse::from(res)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_challenge_certificate_names_the_domain_and_carries_the_digest() {
        let digest = [7u8; 32];
        let key = alpn_challenge_cert("lg.test", &digest).unwrap();
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(key.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&digest));
    }
}
