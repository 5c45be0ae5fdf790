//! The front door of the public listener: what every request is checked for before
//! anything else reads it, once, so that admission, the cache key and the origin
//! all see the same request.
//!
//! - **Host.** The effective host is the request target's authority (absolute-form,
//!   or HTTP/2's `:authority`), else the one `Host` header. A missing `Host` on
//!   HTTP/1.1 and two `Host` headers get 400; a malformed one gets 400; a name not in
//!   `server.hosts` (when it is not empty) gets 421 Misdirected Request, before the
//!   origin is asked anything. The host is lower-cased, a trailing dot and the
//!   scheme's default port are dropped; HTTP/1.0 without `Host` gets the primary host.
//! - **Path.** Percent-encoded unreserved characters are decoded and the other
//!   escapes' hex is upper-cased (RFC 3986 §6.2.2), then dot-segments are resolved
//!   (§5.2.4). A path that climbs above `/`, an encoded `/`, `\` or NUL, a literal
//!   `\`, a bad escape, or a dot-segment with parameters (`..;x`, which Tomcat-style
//!   origins read as `..`) gets 400. The request goes on with the canonical path, so
//!   `/launch/%2e%2e/pricing` is classified, keyed and fetched as `/pricing`.
//!
//! - **Client.** The client is the TCP peer, unless the peer is one of
//!   `server.trusted_proxies` (a balancer in front): then it is the right-most
//!   `X-Forwarded-For` entry that is not itself a trusted proxy, and the scheme is
//!   the proxy's `X-Forwarded-Proto` (`http` or `https`). Nobody else's forwarding
//!   headers are believed.
//!
//! What was verified travels in the request's extensions as [`Verified`]; the cache
//! keys on its host and the origin's `X-Forwarded-*` headers are built from it.
//!
//! **Invariant:** a request that reaches routing has an origin-form URI whose path is
//! canonical (`canonical_path(p) == p`), and carries exactly one [`Verified`].

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::uri::PathAndQuery;
use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, Version};
use axum::response::IntoResponse;

use crate::edge::Scale;
use crate::error::{ApiError, Code};
use crate::syntax::host::{parse_host, Host, HostError, HostPattern, Net};

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path (`/...`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`: a `/` that origins disagree about.
    EncodedSlash,
    /// `%5C` or a literal `\`, which some origins read as `/`.
    Backslash,
    /// `%00`.
    Nul,
    /// More `..` than segments above them.
    AboveRoot,
    /// `..;x` or `.;x`: a dot-segment with path parameters.
    DotParameters,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the path must start with \"/\"",
            PathError::BadEscape => "the path has a \"%\" not followed by two hex digits",
            PathError::EncodedSlash => "the path has an encoded \"/\" (%2F)",
            PathError::Backslash => "the path has a backslash",
            PathError::Nul => "the path has an encoded NUL (%00)",
            PathError::AboveRoot => "the path climbs above \"/\" with \"..\"",
            PathError::DotParameters => "the path has a dot-segment with parameters (\"..;\")",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a segment is `.` or `..`, or one of them with parameters.
fn dot_segment(seg: &[u8]) -> Result<Option<bool>, PathError> {
    let name = match seg.iter().position(|&b| b == b';') {
        Some(i) => &seg[..i],
        None => seg,
    };
    let kind = match name {
        b"." => false,
        b".." => true,
        _ => return Ok(None),
    };
    if name.len() != seg.len() {
        return Err(PathError::DotParameters);
    }
    Ok(Some(kind))
}

/// The canonical form of a request path (RFC 3986 §6.2.2 and §5.2.4), or why it is
/// refused. Borrows when the path is canonical already, which is the common case.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let has_escape = bytes.contains(&b'%');
    let mut has_dots = false;
    for seg in bytes[1..].split(|&b| b == b'/') {
        if seg.first() == Some(&b'.') && dot_segment(seg)?.is_some() {
            has_dots = true;
        }
    }
    if !has_escape && !has_dots {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: decode the unreserved, upper-case the rest, refuse the dangerous.
    let decoded: Cow<'_, [u8]> = if has_escape {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                out.push(b);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            match v {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::Nul),
                _ if is_unreserved(v) => out.push(v),
                _ => {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
            }
            i += 3;
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(bytes)
    };
    // 2. Dot-segments, on what the origin will read.
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|&b| b == b'/') {
        match dot_segment(seg)? {
            Some(false) => trailing_slash = true,
            Some(true) => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            None => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut text = String::with_capacity(decoded.len());
    for seg in &out {
        text.push('/');
        // Every byte is ASCII: the input was a valid URI path, and only unreserved
        // characters were decoded.
        text.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadEscape)?);
    }
    if trailing_slash || text.is_empty() {
        text.push('/');
    }
    Ok(Cow::Owned(text))
}

/// What the front door verified about a request.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The normalized host (`example.com`, `127.0.0.1:8080`), the cache key's first part.
    pub host: HeaderValue,
    /// `http` or `https`: how the client reached us (or our trusted proxy).
    pub proto: &'static str,
    /// The client's address: the peer, or what a trusted proxy said of it.
    pub client: Option<IpAddr>,
}

/// The front door's settings, built once. A clone is cheap.
#[derive(Clone)]
pub struct Front {
    inner: Arc<FrontInner>,
}

struct FrontInner {
    hosts: Vec<HostPattern>,
    /// `server.trusted_proxies`.
    proxies: Vec<Net>,
    /// The listener's port: with `server.hosts` set, a `Host` may name it, the
    /// scheme's default port, or none (any other port would only multiply keys).
    port: u16,
    /// Refusals carry the scale factor like every other public answer.
    factor: Option<crate::ingest::factor::Factor>,
    /// Used for HTTP/1.0 requests without `Host` and for warm-ups.
    primary: HeaderValue,
    proto: &'static str,
    default_port: u16,
}

impl Front {
    /// `hosts` from `server.hosts` and `proxies` from `server.trusted_proxies` (both
    /// checked by config validation; an error names its key). `fallback` names the
    /// primary host when `hosts` is empty (the listener's own address, whose port is
    /// also the one a `Host` may name besides the default). Refusals carry
    /// `X-Edge-Scale-Factor` read from `factor`, when there is one.
    pub fn new(
        hosts: &[String],
        proxies: &[String],
        fallback: &str,
        proto: &'static str,
        factor: Option<crate::ingest::factor::Factor>,
    ) -> Result<Front, (&'static str, String)> {
        let default_port = if proto == "https" { 443 } else { 80 };
        let hosts = hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ("server.hosts", e))?;
        let proxies = proxies
            .iter()
            .map(|p| Net::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ("server.trusted_proxies", e))?;
        let primary = match hosts.first() {
            Some(HostPattern::Exact(n)) => n.clone(),
            Some(HostPattern::Subdomains(n)) => format!("www{n}"),
            None => parse_host(fallback.as_bytes(), default_port)
                .map(|h| h.key)
                .unwrap_or_else(|_| "localhost".to_string()),
        };
        let port = fallback
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(default_port);
        Ok(Front {
            inner: Arc::new(FrontInner {
                hosts,
                proxies,
                port,
                factor,
                primary: HeaderValue::from_str(&primary)
                    .map_err(|e| ("server.hosts", e.to_string()))?,
                proto,
                default_port,
            }),
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.inner.proxies.iter().any(|n| n.contains(ip))
    }

    /// The client and scheme of a request from `peer` (see the module docs).
    pub fn client_of(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> (Option<IpAddr>, &'static str) {
        let own = self.inner.proto;
        let Some(peer) = peer.filter(|p| self.trusted(*p)) else {
            return (peer, own);
        };
        let mut client = peer;
        'walk: for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else { break };
            for hop in text.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => {
                        client = ip;
                        if !self.trusted(ip) {
                            break 'walk;
                        }
                    }
                    Err(_) => break 'walk,
                }
            }
        }
        let proto = match headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .map(|v| v.as_bytes())
        {
            Some(b"https") => "https",
            Some(b"http") => "http",
            _ => own,
        };
        (Some(client), proto)
    }

    /// The host warm-ups and host-less HTTP/1.0 requests are served under.
    pub fn primary_host(&self) -> &HeaderValue {
        &self.inner.primary
    }

    /// Whether `server.hosts` lets `name` in.
    fn serves(&self, name: &str) -> bool {
        let hosts = &self.inner.hosts;
        hosts.is_empty()
            || hosts.iter().any(|p| match p {
                HostPattern::Exact(n) => n == name,
                HostPattern::Subdomains(suffix) => {
                    name.len() > suffix.len() && name.ends_with(suffix.as_str())
                }
            })
    }

    /// The effective host of a request, checked against `server.hosts`.
    pub fn host_of<B>(&self, req: &axum::http::Request<B>) -> Result<HeaderValue, HostError> {
        // RFC 9112 §3.2: whatever the request target, an HTTP/1.1 request needs one
        // Host line, and no request may carry two.
        let mut values = req.headers().get_all(header::HOST).iter();
        let header_host = match (values.next(), values.next()) {
            (_, Some(_)) => return Err(HostError::Duplicate),
            (Some(v), None) => Some(v),
            (None, _) if req.version() == Version::HTTP_11 => return Err(HostError::Missing),
            (None, _) => None,
        };
        if let Some(authority) = req.uri().authority() {
            // Absolute-form (or HTTP/2's :authority): the target's host is the one.
            if authority.as_str().contains('@') {
                return Err(HostError::Malformed);
            }
            let host = parse_host(authority.as_str().as_bytes(), self.inner.default_port)?;
            return self.admit(host);
        }
        match header_host {
            Some(v) => match self.normalized(v) {
                Some(name_len) => {
                    let name = std::str::from_utf8(&v.as_bytes()[..name_len])
                        .map_err(|_| HostError::Malformed)?;
                    if !self.serves(name) || !self.port_ok(&v.as_bytes()[name_len..]) {
                        return Err(HostError::NotServed(
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ));
                    }
                    Ok(v.clone())
                }
                None => self.admit(parse_host(v.as_bytes(), self.inner.default_port)?),
            },
            None => Ok(self.inner.primary.clone()),
        }
    }

    fn admit(&self, host: Host) -> Result<HeaderValue, HostError> {
        let port = &host.key.as_bytes()[host.name.len()..];
        if !self.serves(&host.name) || !self.port_ok(port) {
            return Err(HostError::NotServed(host.key));
        }
        HeaderValue::from_str(&host.key).map_err(|_| HostError::Malformed)
    }

    /// `:port` (or nothing) after a normalized name: any when `server.hosts` is empty,
    /// else only the listener's own (the default port is normalized away already).
    fn port_ok(&self, port: &[u8]) -> bool {
        if self.inner.hosts.is_empty() || port.is_empty() {
            return true;
        }
        std::str::from_utf8(&port[1..])
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p == self.inner.port)
    }

    /// The length of the name when a `Host` value is already in normal form (what
    /// browsers send), so the hot path takes it as is without allocating; `None`
    /// sends it through [`parse_host`].
    fn normalized(&self, v: &HeaderValue) -> Option<usize> {
        let b = v.as_bytes();
        let name_len = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        let (name, port) = b.split_at(name_len);
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name[0] != b'.'
            && name[name.len() - 1] != b'.'
            && !name.windows(2).any(|w| w == b"..")
            && name.iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'_')
            });
        let port_ok = match port {
            [] => true,
            [b':', digits @ ..] => {
                !digits.is_empty()
                    && digits.len() <= 5
                    && digits[0] != b'0'
                    && digits.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<u16>().ok())
                        .is_some_and(|p| p != self.inner.default_port)
            }
            _ => false,
        };
        (name_ok && port_ok).then_some(name_len)
    }

    /// Checks a request and rewrites it to its canonical origin-form URI; the answer
    /// to send instead when it is refused (with the scale factor, like every answer).
    /// This is the outermost public layer, so it reads the factor, once: a request that
    /// passes carries it as [`Scale`] for admission, the cache, the counters and the
    /// `X-Edge-Scale-Factor` header (`server.rs` sets it from the same value).
    pub fn check<B>(&self, req: &mut axum::http::Request<B>) -> Result<(), Box<Response<Body>>> {
        let scale = self.inner.factor.as_ref().map(|f| Scale(f.current()));
        if let Some(s) = scale {
            req.extensions_mut().insert(s);
        }
        self.check_inner(req).map_err(|mut refusal| {
            if let Some(v) = scale.and_then(|s| crate::ingest::factor::header_value(s.0)) {
                refusal
                    .headers_mut()
                    .insert(crate::ingest::factor::SCALE_FACTOR_HEADER, v);
            }
            refusal
        })
    }

    fn check_inner<B>(&self, req: &mut axum::http::Request<B>) -> Result<(), Box<Response<Body>>> {
        let host = self.host_of(req).map_err(|e| Box::new(host_refusal(e)))?;
        let uri = req.uri();
        let canonical = if uri.path() == "*" && req.method() == Method::OPTIONS {
            Cow::Borrowed("*")
        } else {
            canonical_path(uri.path()).map_err(|e| Box::new(path_refusal(e)))?
        };
        let rewrite = uri.authority().is_some()
            || uri.scheme().is_some()
            || matches!(canonical, Cow::Owned(_));
        if rewrite {
            let pq = match uri.query() {
                Some(q) => format!("{canonical}?{q}"),
                None => canonical.into_owned(),
            };
            let pq = PathAndQuery::try_from(pq)
                .map_err(|_| Box::new(path_refusal(PathError::BadEscape)))?;
            *req.uri_mut() = Uri::from(pq);
        }
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let (client, proto) = self.client_of(peer, req.headers());
        req.extensions_mut().insert(Verified {
            host,
            proto,
            client,
        });
        Ok(())
    }
}

fn path_refusal(e: PathError) -> Response<Body> {
    ApiError::bad_request(Code::BadPath, format!("{}; fix the link", e.message())).into_response()
}

fn host_refusal(e: HostError) -> Response<Body> {
    match e {
        HostError::Missing => ApiError::bad_request(
            Code::BadHost,
            "an HTTP/1.1 request must carry a Host header",
        ),
        HostError::Duplicate => ApiError::bad_request(
            Code::BadHost,
            "the request carries more than one Host header",
        ),
        HostError::Malformed => ApiError::bad_request(
            Code::BadHost,
            "the Host header is not a host name, an IP address or one of them with a port",
        ),
        HostError::NotServed(host) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            Code::Misdirected,
            format!("this server does not answer for {host:?} (server.hosts)"),
        ),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonical_path(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_escapes_resolve_once() {
        assert_eq!(canon("/launch/../pricing").unwrap(), "/pricing");
        assert_eq!(canon("/launch/%2e%2e/pricing").unwrap(), "/pricing");
        assert_eq!(canon("/launch/%2E%2e/pricing").unwrap(), "/pricing");
        assert_eq!(canon("/launch/.%2e/pricing").unwrap(), "/pricing");
        assert_eq!(canon("/a/./b").unwrap(), "/a/b");
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(canon("/a/..").unwrap(), "/");
        assert_eq!(canon("/%7euser/%41").unwrap(), "/~user/A");
        assert_eq!(canon("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
        assert_eq!(canon("/launch//x").unwrap(), "/launch//x");
        assert_eq!(canon("/").unwrap(), "/");
        assert!(matches!(canonical_path("/launch/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            canonical_path("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dangerous_paths_are_refused() {
        assert_eq!(canon("/../x"), Err(PathError::AboveRoot));
        assert_eq!(canon("/a/../../x"), Err(PathError::AboveRoot));
        assert_eq!(canon("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(canon("/launch/..%2fpricing"), Err(PathError::EncodedSlash));
        assert_eq!(canon("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(canon("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(canon("/a\\b"), Err(PathError::Backslash));
        assert_eq!(canon("/a%00"), Err(PathError::Nul));
        assert_eq!(canon("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canon("/a%4"), Err(PathError::BadEscape));
        assert_eq!(canon("/launch/..;/pricing"), Err(PathError::DotParameters));
        assert_eq!(canon("/launch/.;x/pricing"), Err(PathError::DotParameters));
        assert_eq!(canon("x"), Err(PathError::NotAbsolute));
        // A name that merely starts with dots is an ordinary segment.
        assert_eq!(canon("/...").unwrap(), "/...");
        assert_eq!(canon("/..a/b").unwrap(), "/..a/b");
    }

    #[test]
    fn server_hosts_admit_their_names_only() {
        let f = Front::new(
            &["launch.example".into(), "*.tidepool.dev".into()],
            &[],
            "127.0.0.1:8080",
            "http",
            None,
        )
        .unwrap();
        assert!(f.serves("launch.example"));
        assert!(f.serves("www.tidepool.dev"));
        assert!(f.serves("a.b.tidepool.dev"));
        assert!(!f.serves("tidepool.dev"));
        assert!(!f.serves("evil.example"));
        assert!(!f.serves("evil-launch.example"));
        assert_eq!(f.primary_host(), "launch.example");
        let any = Front::new(&[], &[], "127.0.0.1:80", "http", None).unwrap();
        assert!(any.serves("anything.example"));
        assert_eq!(any.primary_host(), "127.0.0.1");
    }

    fn request(version: Version, target: &str, hosts: &[&'static str]) -> axum::http::Request<()> {
        let mut b = axum::http::Request::builder().version(version).uri(target);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_effective_host_is_checked_whatever_the_form() {
        let f = Front::new(
            &["launch.example".into()],
            &[],
            "127.0.0.1:8080",
            "http",
            None,
        )
        .unwrap();
        let host = |v, t, h: &[&'static str]| f.host_of(&request(v, t, h));
        let v11 = Version::HTTP_11;
        assert_eq!(
            host(v11, "/", &["launch.example"]).unwrap(),
            "launch.example"
        );
        assert_eq!(
            host(v11, "/", &["launch.example:8080"]).unwrap(),
            "launch.example:8080"
        );
        assert_eq!(
            host(v11, "/", &["Launch.Example:80"]).unwrap(),
            "launch.example"
        );
        assert!(matches!(
            host(v11, "/", &["launch.example:1234"]),
            Err(HostError::NotServed(_))
        ));
        assert_eq!(host(v11, "/", &[]), Err(HostError::Missing));
        assert_eq!(
            host(v11, "/", &["launch.example", "launch.example"]),
            Err(HostError::Duplicate)
        );
        // Absolute-form: the target's host counts, but the Host line rules still hold.
        assert_eq!(
            host(v11, "http://launch.example/x", &["other"]).unwrap(),
            "launch.example"
        );
        assert!(matches!(
            host(v11, "http://evil.example/x", &["launch.example"]),
            Err(HostError::NotServed(_))
        ));
        assert_eq!(
            host(v11, "http://launch.example/x", &[]),
            Err(HostError::Missing)
        );
        assert_eq!(
            host(v11, "http://launch.example/x", &["a", "b"]),
            Err(HostError::Duplicate)
        );
        assert_eq!(host(Version::HTTP_10, "/", &[]).unwrap(), "launch.example");
        // The fast path takes a normalized value as it came.
        let any = Front::new(&[], &[], "127.0.0.1:8080", "http", None).unwrap();
        let r = request(v11, "/", &["shop.example:9000"]);
        assert_eq!(any.host_of(&r).unwrap(), "shop.example:9000");
        let r = request(v11, "/", &["shop.example:09000"]);
        assert_eq!(any.host_of(&r).unwrap(), "shop.example:9000");
    }

    #[test]
    fn only_a_trusted_proxy_is_believed() {
        let f = Front::new(&[], &["10.0.0.0/8".into()], "127.0.0.1:8080", "http", None).unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 203.0.113.9, 10.0.0.5"),
        );
        h.append("x-forwarded-proto", HeaderValue::from_static("https"));
        let lb = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            f.client_of(lb, &h),
            (Some("203.0.113.9".parse().unwrap()), "https")
        );
        // Anyone else: the peer, our own scheme.
        let stranger = Some("198.51.100.1".parse().unwrap());
        assert_eq!(f.client_of(stranger, &h), (stranger, "http"));
        // A trusted proxy that says nothing, or nonsense.
        assert_eq!(f.client_of(lb, &HeaderMap::new()), (lb, "http"));
        let mut junk = HeaderMap::new();
        junk.insert(
            "x-forwarded-for",
            HeaderValue::from_static("not-an-ip, 10.0.0.9"),
        );
        junk.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        assert_eq!(
            f.client_of(lb, &junk),
            (Some("10.0.0.9".parse().unwrap()), "http")
        );
    }

    proptest! {
        /// The hot path's shortcut takes a `Host` as it came only when the full parser
        /// would give back the same bytes: the two checks cannot drift apart.
        #[test]
        fn the_host_shortcut_agrees_with_the_parser(raw in "[a-zA-Z0-9._:\\[\\]@-]{0,24}") {
            let f = Front::new(&[], &[], "127.0.0.1:8080", "http", None).unwrap();
            let Ok(v) = HeaderValue::from_str(&raw) else { return Ok(()) };
            if let Some(name_len) = f.normalized(&v) {
                let parsed = parse_host(raw.as_bytes(), 80).unwrap();
                prop_assert_eq!(&parsed.key, &raw);
                prop_assert_eq!(parsed.name.len(), name_len);
            }
        }

        #[test]
        fn canonical_paths_are_fixed_points(segs in prop::collection::vec(
            prop_oneof![
                Just(".".to_string()), Just("..".to_string()), Just("%2e".to_string()),
                Just("%2E%2e".to_string()), Just("".to_string()), Just("%7e".to_string()),
                Just("%3f".to_string()), "[a-z~._-]{1,5}",
            ], 0..10)) {
            let path = format!("/{}", segs.join("/"));
            if let Ok(c) = canonical_path(&path) {
                let again = canonical_path(&c).unwrap();
                prop_assert_eq!(again.as_ref(), c.as_ref());
                // No dot-segment survives.
                prop_assert!(!c.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
