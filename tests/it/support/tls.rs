//! A private test CA made with rcgen, and the server configuration of a TLS listener
//! whose certificate it issued for `localhost` and `127.0.0.1`. Fresh keys every run;
//! nothing is read from or written to the machine beyond the PEM file a test asks for.
//! [`serve`] puts a test server (the receiver, the fake origin) behind such a listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate as PEM to `dir/name` and returns the path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A TLS server configuration presenting a certificate this CA issued for
    /// `localhost` and `127.0.0.1` (the chain: that certificate, then the CA's).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![cert.der().clone(), self.cert.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the issued certificate and its key match");
        Arc::new(config)
    }
}

/// A certificate and key this CA issued, as the PEM files `tls.cert_file` and
/// `tls.key_file` read, each padded with newlines to [`PEM_FILE_LEN`] bytes so that
/// two issues of the same names make files of one size.
pub struct IssuedFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leaf certificate, as a client sees it in the handshake.
    pub leaf: CertificateDer<'static>,
}

/// The size every issued PEM file is padded to.
pub const PEM_FILE_LEN: usize = 4096;

fn padded(mut pem: String) -> String {
    assert!(pem.len() <= PEM_FILE_LEN, "PEM over {PEM_FILE_LEN} bytes");
    while pem.len() < PEM_FILE_LEN {
        pem.push('\n');
    }
    pem
}

impl TestCa {
    /// Issues an ECDSA P-256 certificate for `names` and writes the chain (leaf, then
    /// this CA) and the key to `dir/<stem>.crt` and `dir/<stem>.key`, in place (the
    /// files keep their inode when they exist).
    pub fn issue_files(&self, names: &[&str], dir: &Path, stem: &str) -> IssuedFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = dir.join(format!("{stem}.crt"));
        let key_file = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, padded(format!("{}{}", cert.pem(), self.pem))).unwrap();
        std::fs::write(&key_file, padded(key.serialize_pem())).unwrap();
        IssuedFiles {
            cert_file,
            key_file,
            leaf: cert.der().clone(),
        }
    }

    /// A client configuration that trusts this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.client_config_with(alpn, &[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// As [`TestCa::client_config`], with only the TLS `versions` given.
    pub fn client_config_with(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// One TLS connection to `addr` for `server_name`, handshake done.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate `addr` presents for `server_name`.
pub async fn presented(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> CertificateDer<'static> {
    let tls = connect(config, addr, server_name).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// `GET path` over one new TLS connection, by HTTP/2 when the server agreed to it by
/// ALPN, else HTTP/1.1. Returns the protocol used and the answer.
pub async fn get(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> (hyper::Version, super::Resp) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tls = connect(config, addr, host).await.expect("handshake");
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let uri = format!("https://{host}:{}{path}", addr.port());
    let req = hyper::Request::get(&uri)
        .header("accept", "text/html")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let (version, res) = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        (
            hyper::Version::HTTP_2,
            send.send_request(req).await.expect("h2 answer"),
        )
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut()
            .insert("host", format!("{host}:{}", addr.port()).parse().unwrap());
        *req.uri_mut() = path.parse().unwrap();
        (
            hyper::Version::HTTP_11,
            send.send_request(req).await.expect("h1 answer"),
        )
    };
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        version,
        super::Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        },
    )
}

/// What one handshake of [`serve`] came to: the server name (SNI) the client sent,
/// if any, or the server's error.
pub type Handshake = Result<Option<String>, String>;

/// Serves `app` on `listener` behind TLS with `tls` until `stop`: every connection
/// is a rustls handshake, told to `seen`, then HTTP/1.1 on hyper. Cancelling `stop`
/// ends the accept loop and closes every connection.
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    stop: tokio_util::sync::CancellationToken,
    seen: impl Fn(Handshake) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let seen = Arc::new(seen);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            let (acceptor, app, seen, stop) =
                (acceptor.clone(), app.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        seen(Ok(tls.get_ref().1.server_name().map(str::to_string)));
                        tls
                    }
                    Err(e) => {
                        seen(Err(e.to_string()));
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    tower::ServiceExt::oneshot(app.clone(), req)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    })
}

/// Asserts that a CA file launchguard cannot use stops the start with a config
/// error naming `key`: a missing file, then one with no PEM certificate in it.
/// `set` puts the file's path under that key (and whatever else the key needs).
pub async fn bad_ca_files_stop_the_start(
    key: &str,
    set: impl Fn(&mut launchguard::config::Config, PathBuf),
) {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (file, says) in [
        (dir.path().join("missing.pem"), "cannot read it"),
        (not_pem, "no PEM certificate"),
    ] {
        let mut config = super::config(&dir.path().join("state"));
        set(&mut config, file.clone());
        let opts = launchguard::app::Options {
            clock: launchguard::clock::Clock::manual(super::edge::T0),
            env: launchguard::secrets::Env::default(),
            ..launchguard::app::Options::default()
        };
        let e = match launchguard::app::start(config, opts).await {
            Ok(_) => panic!("{key} = {} was accepted", file.display()),
            Err(e) => e,
        };
        assert!(
            matches!(e, launchguard::app::StartError::Config(_)),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.starts_with(&format!("{key}: ")), "{e}");
        assert!(e.contains(says), "{e}");
    }
}
