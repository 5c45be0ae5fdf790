//! Host names, `server.hosts` entries and networks: the one parser of each, used by
//! the front door on every request, by the admin listener and the beacon's origin
//! check, and by config validation (whose errors name the key).

use std::net::IpAddr;

/// Why a host was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Duplicate,
    Malformed,
    /// Not one of `server.hosts`; holds the normalized host.
    NotServed(String),
}

/// A checked host: `name` without the port, `key` with it unless it is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub key: String,
}

/// Parses and normalizes a `Host` value (or an authority): lower case, no trailing
/// dot, the default port dropped. Userinfo, empty names and bad ports are refused.
pub fn parse_host(raw: &[u8], default_port: u16) -> Result<Host, HostError> {
    if raw.is_empty() || raw.len() > 300 {
        return Err(HostError::Malformed);
    }
    let text = std::str::from_utf8(raw).map_err(|_| HostError::Malformed)?;
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::Malformed)?;
        let inner = &rest[..end];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HostError::Malformed);
        }
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HostError::Malformed)?),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        let (name, port) = match text.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (text, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty()
            || name.ends_with('.')
            || name.len() > 253
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            || name.starts_with('.')
            || name.contains("..")
        {
            return Err(HostError::Malformed);
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HostError::Malformed);
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(HostError::Malformed),
                Ok(n) if n == default_port => None,
                Ok(n) => Some(n),
            }
        }
    };
    let key = match port {
        Some(p) => format!("{name}:{p}"),
        None => name.clone(),
    };
    Ok(Host { name, key })
}

/// A `server.hosts` entry: an exact name, or `*.example.com` for its subdomains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    /// Parses a `server.hosts` entry; the error text is meant for a config error.
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let (wild, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let host = parse_host(name.as_bytes(), 0).map_err(|_| {
            format!(
                "expected a host name such as \"example.com\" or \"*.example.com\", got {entry:?}"
            )
        })?;
        if host.key != host.name {
            return Err(format!(
                "{entry:?}: give the name without a port; every port of the listener answers to it"
            ));
        }
        Ok(if wild {
            HostPattern::Subdomains(format!(".{}", host.name))
        } else {
            HostPattern::Exact(host.name)
        })
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`), for `server.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses `192.0.2.7`, `10.0.0.0/8`, `fd00::/8`; the error is meant for a config error.
    pub fn parse(text: &str) -> Result<Net, String> {
        let bad =
            || format!("expected an IP address or a network such as \"10.0.0.0/8\", got {text:?}");
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        let h = |s: &str| parse_host(s.as_bytes(), 80);
        assert_eq!(h("Example.COM").unwrap().key, "example.com");
        assert_eq!(h("example.com.").unwrap().key, "example.com");
        assert_eq!(h("example.com:80").unwrap().key, "example.com");
        assert_eq!(h("example.com:8080").unwrap().key, "example.com:8080");
        assert_eq!(h("example.com:8080").unwrap().name, "example.com");
        assert_eq!(h("127.0.0.1:80").unwrap().key, "127.0.0.1");
        assert_eq!(h("[::1]:8080").unwrap().key, "[::1]:8080");
        assert_eq!(h("[::1]").unwrap().name, "[::1]");
        for bad in [
            "",
            "user@example.com",
            "example.com:",
            "example.com:0",
            "example.com:99999",
            "exa mple.com",
            "exa/mple.com",
            ".example.com",
            "a..b",
            "[::1",
            "[zz]",
            ":80",
            "example.com:8o",
        ] {
            assert_eq!(h(bad), Err(HostError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_host(b"example.com:443", 443).unwrap().key,
            "example.com"
        );
    }

    #[test]
    fn server_hosts_entries_are_names_or_subdomain_wildcards() {
        assert!(HostPattern::parse("example.com:443").is_err());
        assert!(HostPattern::parse("https://example.com").is_err());
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Subdomains(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("launch.example").unwrap(),
            HostPattern::Exact("launch.example".into())
        );
    }

    #[test]
    fn networks_contain_their_addresses() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let one = Net::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(Net::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", "::1/129", ""] {
            assert!(Net::parse(bad).is_err(), "{bad:?}");
        }
    }
}
