//! Shared certificates: in a cluster, one node orders and renews (the lease
//! `acme`), and every node serves what it obtained. The key-value bucket
//! `LAUNCHGUARD_TLS` holds, as JSON naming the node that put it:
//! - `cert.<domain>`: the chain and its private key, as the CA issued them;
//! - `account.<hash of the directory URL>`: the ACME account, so the next lease
//!   holder orders with the same account (and the CA's rate limits count one);
//! - `challenge.<token>`: a pending HTTP-01 answer, so whichever node the CA's
//!   request reaches (through the balancer) answers it;
//! - `alpn.<domain>`: a pending TLS-ALPN-01 answer (the key authorization's digest):
//!   every node puts the challenge certificate in force and says so under
//!   `alpn-ready.<domain>.<node>`; the ordering node tells the CA to look once every
//!   running node (its presence entry, `lease.rs`) has, or after 5 s.
//!
//! Every node watches the bucket from its last values and installs another node's
//! certificate and account (`Acme::install_cert`, `install_account`), so a node
//! started later serves the certificate at once. The private key travels through
//! NATS: give the nodes credentials (`cluster.credentials_file`) and TLS to NATS
//! off a private network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::{backoff, Cluster};
use crate::edge::tls::acme::{Acme, Shared, SharedFuture};

/// The bucket of certificates, accounts and challenge answers.
pub const TLS_BUCKET: &str = "LAUNCHGUARD_TLS";
/// How often each domain's entry is read besides the watch.
const RECONCILE: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct CertEntry {
    node: String,
    chain_pem: String,
    key_pem: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountEntry {
    node: String,
    directory: String,
    json: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AlpnEntry {
    node: String,
    /// The key authorization's SHA-256, hex.
    digest: String,
}

/// How long the ordering node waits for the others to answer TLS-ALPN-01.
const ALPN_SETTLE: Duration = Duration::from_secs(5);

/// The cluster's side of ACME on this node (`edge::tls::acme::Shared`).
#[derive(Clone)]
pub struct ClusterAcme {
    cluster: Cluster,
    leading: Arc<AtomicBool>,
}

impl ClusterAcme {
    pub fn new(cluster: Cluster, leading: Arc<AtomicBool>) -> ClusterAcme {
        ClusterAcme { cluster, leading }
    }
}

async fn bucket(cluster: &Cluster) -> Result<kv::Store, String> {
    super::kv_bucket(
        cluster,
        TLS_BUCKET,
        "launchguard: the certificates, ACME account and challenge answers every node serves",
        Duration::ZERO,
        stream::StorageType::File,
    )
    .await
}

fn account_key(directory: &str) -> String {
    let digest = sha2::Sha256::digest(directory.as_bytes());
    format!("account.{}", hex::encode(&digest[..16]))
}

/// Puts `value` under `key`, retrying for a while in the background if NATS is
/// unreachable (a certificate must reach the others).
fn put_later(cluster: Cluster, key: String, value: Vec<u8>) {
    tokio::spawn(async move {
        for failures in 1..=60u32 {
            let put = async {
                let b = bucket(&cluster).await?;
                b.put(key.as_str(), value.clone().into())
                    .await
                    .map_err(|e| e.to_string())
            };
            match put.await {
                Ok(_) => return,
                Err(e) if failures == 1 => {
                    tracing::warn!(key = %key, "cluster: cannot share {key} yet: {e}; retrying")
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff(failures).max(Duration::from_secs(1))).await;
        }
        tracing::error!(key = %key, "cluster: gave up sharing {key}");
    });
}

impl Shared for ClusterAcme {
    fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn issued(&self, domain: &str, chain_pem: &[u8], key_pem: &[u8]) {
        let entry = CertEntry {
            node: self.cluster.node().to_string(),
            chain_pem: String::from_utf8_lossy(chain_pem).into_owned(),
            key_pem: String::from_utf8_lossy(key_pem).into_owned(),
        };
        let value = serde_json::to_vec(&entry).expect("serializes");
        put_later(self.cluster.clone(), format!("cert.{domain}"), value);
    }

    fn account(&self, directory: &str, json: &[u8]) {
        let entry = AccountEntry {
            node: self.cluster.node().to_string(),
            directory: directory.to_string(),
            json: String::from_utf8_lossy(json).into_owned(),
        };
        let value = serde_json::to_vec(&entry).expect("serializes");
        put_later(self.cluster.clone(), account_key(directory), value);
    }

    fn challenge(&self, token: &str, key_authorization: Option<&str>) -> SharedFuture<()> {
        let cluster = self.cluster.clone();
        let key = format!("challenge.{token}");
        let value = key_authorization.map(str::to_string);
        Box::pin(async move {
            let Ok(b) = bucket(&cluster).await else {
                return;
            };
            let done = match value {
                Some(v) => b
                    .put(key.as_str(), v.into_bytes().into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => b.purge(key.as_str()).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = done {
                tracing::warn!("cluster: cannot share the HTTP-01 answer {key}: {e}");
            }
        })
    }

    fn alpn_challenge(&self, domain: &str, digest: Option<&[u8]>) -> SharedFuture<()> {
        let cluster = self.cluster.clone();
        let domain = domain.to_string();
        let digest = digest.map(hex::encode);
        Box::pin(async move {
            let Ok(b) = bucket(&cluster).await else {
                return;
            };
            let key = format!("alpn.{domain}");
            let Some(digest) = digest else {
                if let Err(e) = b.purge(key.as_str()).await {
                    tracing::warn!("cluster: cannot withdraw the TLS-ALPN-01 answer {key}: {e}");
                }
                return;
            };
            let entry = AlpnEntry {
                node: cluster.node().to_string(),
                digest: digest.clone(),
            };
            let value = serde_json::to_vec(&entry).expect("serializes");
            if let Err(e) = b.put(key.as_str(), value.into()).await {
                tracing::warn!("cluster: cannot share the TLS-ALPN-01 answer {key}: {e}");
                return;
            }
            let others: Vec<String> = super::lease::running_nodes(&cluster)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n != cluster.node())
                .collect();
            let deadline = tokio::time::Instant::now() + ALPN_SETTLE;
            loop {
                let mut missing = Vec::new();
                for n in &others {
                    let ready = b.get(format!("alpn-ready.{domain}.{n}")).await;
                    if !matches!(ready, Ok(Some(v)) if v.as_ref() == digest.as_bytes()) {
                        missing.push(n.as_str());
                    }
                }
                if missing.is_empty() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(domain, nodes = ?missing, "cluster: nodes did not confirm the TLS-ALPN-01 answer; asking the CA to validate anyway");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    fn lookup_challenge(&self, token: &str) -> SharedFuture<Option<String>> {
        let cluster = self.cluster.clone();
        // Tokens are base64url; anything else cannot be a key, nor a token.
        let valid = !token.is_empty()
            && token.len() <= 128
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let key = format!("challenge.{token}");
        Box::pin(async move {
            if !valid {
                return None;
            }
            let b = bucket(&cluster).await.ok()?;
            let v = tokio::time::timeout(Duration::from_secs(2), b.get(key.as_str()))
                .await
                .ok()?
                .ok()??;
            String::from_utf8(v.to_vec()).ok()
        })
    }
}

/// Installs the certificates and accounts other nodes put, until `shutdown`.
pub async fn run_watch(cluster: Cluster, acme: Acme, shutdown: CancellationToken) {
    super::keep_running("certificate watch", &shutdown, || watch(&cluster, &acme)).await;
}

async fn watch(cluster: &Cluster, acme: &Acme) -> Result<(), String> {
    let b = bucket(cluster).await?;
    let mut entries = b.watch_with_history(">").await.map_err(|e| e.to_string())?;
    // Besides the watch, each domain's entry is read every `RECONCILE`: a watch
    // that stalls (a consumer's missed heartbeats) must not keep a node without
    // its certificate.
    let mut reconcile = tokio::time::interval(RECONCILE);
    loop {
        let entry = tokio::select! {
            e = entries.next() => e,
            _ = reconcile.tick() => {
                for domain in acme.domains() {
                    let key = format!("cert.{domain}");
                    if let Ok(Some(value)) = b.get(key.as_str()).await {
                        apply(cluster, acme, &b, &key, &value);
                    }
                }
                continue;
            }
        };
        let Some(entry) = entry else {
            return Err("the watch ended".into());
        };
        let entry = entry.map_err(|e| e.to_string())?;
        match entry.operation {
            kv::Operation::Put => apply(cluster, acme, &b, &entry.key, &entry.value),
            // An order's TLS-ALPN-01 answer withdrawn.
            kv::Operation::Delete | kv::Operation::Purge => {
                if let Some(domain) = entry.key.strip_prefix("alpn.") {
                    let _ = acme.install_alpn_challenge(domain, None);
                }
            }
        }
    }
}

/// Installs one entry of the bucket, unless this node put it.
fn apply(cluster: &Cluster, acme: &Acme, bucket: &kv::Store, key: &str, value: &[u8]) {
    if let Some(domain) = key.strip_prefix("alpn.") {
        let entry = match serde_json::from_slice::<AlpnEntry>(value) {
            Ok(a) if a.node == cluster.node() => return,
            Ok(a) => a,
            Err(e) => {
                tracing::error!(
                    domain,
                    "cluster: a shared TLS-ALPN-01 answer cannot be read: {e}"
                );
                return;
            }
        };
        let installed = hex::decode(&entry.digest)
            .map_err(|e| e.to_string())
            .and_then(|d| acme.install_alpn_challenge(domain, Some(&d)));
        match installed {
            Ok(()) => {
                let (bucket, ready) = (
                    bucket.clone(),
                    format!("alpn-ready.{domain}.{}", cluster.node()),
                );
                tokio::spawn(async move {
                    let _ = bucket
                        .put(ready.as_str(), entry.digest.into_bytes().into())
                        .await;
                });
            }
            Err(e) => tracing::warn!(domain, node = %entry.node, "cluster: {e}"),
        }
        return;
    }
    if let Some(domain) = key.strip_prefix("cert.") {
        match serde_json::from_slice::<CertEntry>(value) {
            Ok(c) if c.node == cluster.node() => {}
            Ok(c) => {
                if let Err(e) =
                    acme.install_cert(domain, c.chain_pem.as_bytes(), c.key_pem.as_bytes())
                {
                    tracing::error!(domain, node = %c.node, "cluster: {e}");
                }
            }
            Err(e) => tracing::error!(domain, "cluster: a shared certificate cannot be read: {e}"),
        }
    } else if key.starts_with("account.") {
        match serde_json::from_slice::<AccountEntry>(value) {
            Ok(a) if a.node == cluster.node() => {}
            Ok(a) => {
                if let Err(e) = acme.install_account(&a.directory, a.json.as_bytes()) {
                    tracing::warn!(node = %a.node, "cluster: {e}");
                }
            }
            Err(e) => tracing::error!("cluster: a shared ACME account cannot be read: {e}"),
        }
    }
}
