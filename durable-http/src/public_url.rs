//! The host's public base URL: configured, or derived from the bound listen address, or
//! (only for requests whose TCP peer is a configured trusted proxy) taken from validated
//! `Forwarded`, `X-Forwarded-Host`/`-Proto` and `Host` headers. Request headers from anyone
//! else never reach a URL the host builds.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The TCP peer of a request, as a request extension. The standalone server adds it to
/// every request; an application that mounts the host ([`crate::App::handle`]) adds it
/// itself when it wants the host to honour forwarded headers from trusted proxies. A
/// request without it is never treated as coming from a trusted proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Checks and normalizes a configured public URL: an absolute `http` or `https` URL with a
/// host, no query, fragment or user info; the trailing slash is dropped.
pub(crate) fn parse_public_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("the public URL '{url}' is not usable: {why}");
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it must be an absolute http:// or https:// URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("it must not have a query or fragment"));
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.contains('@') {
        return Err(bad("it must not carry user information"));
    }
    if !valid_authority(authority) {
        return Err(bad(
            "the host must be a name or IP address, with an optional port",
        ));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
    {
        return Err(bad("the path has characters a URL cannot hold"));
    }
    Ok(format!(
        "{scheme}://{authority}{}",
        path.trim_end_matches('/')
    ))
}

/// `host[:port]` where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
pub(crate) fn valid_authority(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None if after.is_empty() => (None, None),
                    None => return false,
                }
            }
            _ => return false,
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    // A name: dot-separated labels of letters, digits, `-` and `_`; one trailing dot (a
    // fully qualified name) allowed.
    let host_ok = host.is_none_or(|h| {
        let name = h.strip_suffix('.').unwrap_or(h);
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    });
    port_ok && host_ok
}

/// An IP address or a CIDR network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub(crate) fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let bad = || format!("'{s}' is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
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

/// Parses a comma-separated list of addresses and networks (`DURABLE_TRUSTED_PROXIES`).
pub(crate) fn parse_trusted_proxies(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(IpNet::parse)
        .collect()
}

/// Where the host's URLs start, decided once at build (and at bind for the address).
#[derive(Debug, Default)]
pub(crate) struct BaseUrls {
    /// The configured public URL, normalized.
    pub public_url: Option<String>,
    /// `http://` + the bound address (loopback when bound to every interface).
    pub bound: std::sync::OnceLock<String>,
    /// Peers whose forwarded headers count.
    pub trusted_proxies: Vec<IpNet>,
}

impl BaseUrls {
    /// The base from configuration alone: the public URL, else the bound address.
    pub(crate) fn configured(&self) -> Option<&str> {
        self.public_url
            .as_deref()
            .or_else(|| self.bound.get().map(String::as_str))
    }

    /// The base for one request: the configured one, unless there is no public URL and the
    /// peer is a trusted proxy that says (validly) under which name it was reached.
    /// Without either, URLs are root-relative (empty base).
    pub(crate) fn for_request(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let trusted = peer.is_some_and(|p| self.trusted_proxies.iter().any(|n| n.contains(p.ip())));
        if trusted {
            if let Some(base) = forwarded_base(headers) {
                return base;
            }
        }
        self.configured().unwrap_or_default().to_string()
    }

    /// Records the bound address.
    pub(crate) fn set_bound(&self, addr: SocketAddr) {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = self
            .bound
            .set(format!("http://{}", SocketAddr::new(ip, addr.port())));
    }
}

/// The last value of a comma-separated header: the one the nearest proxy added.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `proto` and `host` of the last element of a `Forwarded` header (RFC 7239).
fn forwarded_pair(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let (mut proto, mut host) = (None, None);
    if let Some(element) = last_value(headers, "forwarded") {
        for pair in element.split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                let v = v.trim().trim_matches('"').to_string();
                match k.trim().to_ascii_lowercase().as_str() {
                    "proto" => proto = Some(v),
                    "host" => host = Some(v),
                    _ => {}
                }
            }
        }
    }
    (proto, host)
}

/// `scheme://host[:port]` from a trusted proxy's headers, each value validated; `None`
/// when no valid host is given.
fn forwarded_base(headers: &HeaderMap) -> Option<String> {
    let (fwd_proto, fwd_host) = forwarded_pair(headers);
    let host = [
        fwd_host,
        last_value(headers, "x-forwarded-host").map(str::to_string),
        headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string()),
    ]
    .into_iter()
    .flatten()
    .find(|h| valid_authority(h))?;
    let scheme = [
        fwd_proto,
        last_value(headers, "x-forwarded-proto").map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.to_ascii_lowercase())
    .find(|p| p == "http" || p == "https")
    .unwrap_or_else(|| "http".into());
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn public_urls_are_checked_and_normalized() {
        assert_eq!(
            parse_public_url("https://Example.com/").unwrap(),
            "https://Example.com"
        );
        assert_eq!(
            parse_public_url("HTTP://10.0.0.1:8080/svc/").unwrap(),
            "http://10.0.0.1:8080/svc"
        );
        assert_eq!(
            parse_public_url("http://[::1]:7071").unwrap(),
            "http://[::1]:7071"
        );
        for bad in [
            "example.com",
            "ftp://example.com",
            "http://",
            "http://example.com?x=1",
            "http://example.com/#top",
            "http://user@example.com",
            "http://exa mple.com",
            "http://example.com:0",
            "http://example.com:99999",
            "http://[zz]:80",
            "http://example.com/a b",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorities_are_names_or_addresses_with_a_port() {
        for good in [
            "example.com",
            "a-b.c:8080",
            "127.0.0.1:1",
            "[::1]",
            "[fe80::1]:443",
            "host.local.",
        ] {
            assert!(valid_authority(good), "{good}");
        }
        for bad in [
            "",
            ":80",
            "evil.com/path",
            "a@b",
            "a b",
            "x:",
            "x:65536",
            "x:-1",
            "[::1",
            "[::1]x",
            "a..b",
            "<script>",
            "example.com:80:80",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn networks_match_addresses() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.0.0.9".parse().unwrap()),
            "v4-mapped peers"
        );
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_trusted_proxies(" 10.0.0.1, ::1 ,").unwrap().len(), 2);
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers_and_only_when_valid() {
        let base = BaseUrls {
            trusted_proxies: parse_trusted_proxies("10.0.0.1").unwrap(),
            ..Default::default()
        };
        base.set_bound("0.0.0.0:7071".parse().unwrap());
        let proxy = Some("10.0.0.1:5000".parse().unwrap());
        let stranger = Some("10.0.0.2:5000".parse().unwrap());
        let spoof = headers(&[
            ("host", "internal.example:8080"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(base.for_request(stranger, &spoof), "http://127.0.0.1:7071");
        assert_eq!(base.for_request(None, &spoof), "http://127.0.0.1:7071");
        assert_eq!(base.for_request(proxy, &spoof), "https://evil.example");
        // The last value is the one the trusted proxy added.
        let chained = headers(&[
            ("x-forwarded-host", "forged.example, app.example"),
            ("x-forwarded-proto", "http, https"),
        ]);
        assert_eq!(base.for_request(proxy, &chained), "https://app.example");
        let rfc = headers(&[(
            "forwarded",
            "for=1.2.3.4;host=forged.example, for=5.6.7.8;proto=https;host=\"app.example:8443\"",
        )]);
        assert_eq!(base.for_request(proxy, &rfc), "https://app.example:8443");
        // Invalid values are ignored, down to the configured base.
        let junk = headers(&[
            ("x-forwarded-host", "evil.example/path?x"),
            ("x-forwarded-proto", "javascript"),
            ("host", "a b"),
        ]);
        assert_eq!(base.for_request(proxy, &junk), "http://127.0.0.1:7071");
        let host_only = headers(&[("host", "app.example"), ("x-forwarded-proto", "gopher")]);
        assert_eq!(base.for_request(proxy, &host_only), "http://app.example");
        // A configured public URL wins over everything.
        let fixed = BaseUrls {
            public_url: Some("https://public.example".into()),
            trusted_proxies: parse_trusted_proxies("10.0.0.1").unwrap(),
            ..Default::default()
        };
        assert_eq!(fixed.for_request(proxy, &spoof), "https://public.example");
        // Not bound, no public URL: root-relative.
        assert_eq!(BaseUrls::default().for_request(None, &spoof), "");
    }
}
