//! Header rewriting in both directions.
//!
//! Order matters (RFC 9110 §7.6.1): hop-by-hop headers, including every name listed in
//! `Connection`, are stripped first; client credentials are removed next; the real key
//! goes in last, so a client's `Connection: x-api-key` cannot remove the injected key.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header that carries the proxy key on `/proxy`.
pub static X_PROXY_KEY: HeaderName = HeaderName::from_static("x-proxy-key");

/// Credential headers an LLM client may send; all are removed before the real key goes in.
pub static LLM_CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-anthropic-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];

/// Removes `Connection`, every header it names, and the other hop-by-hop headers.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    remove_where(h, |_| false);
}

/// Removes the hop-by-hop headers, every header `Connection` names, and every other
/// header whose name `doomed` picks, looking at the names present (a handful) once,
/// instead of hashing and probing for every name of fixed lists, most of them absent.
fn remove_where(h: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let mut names: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in h.keys() {
        connection |= name == header::CONNECTION;
        if HOP_BY_HOP.contains(name) || doomed(name) {
            names.push(name.clone());
        }
    }
    if connection {
        let listed = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok());
        names.extend(listed);
    }
    for name in names {
        h.remove(name);
    }
}

/// Rewrites a client's request headers for the upstream: strips hop-by-hop headers,
/// `Host` (the client sets the upstream's from the URI) and `Expect`, removes
/// `X-Proxy-Key` and the given credential headers.
pub fn clean_request(h: &mut HeaderMap, credentials: &[HeaderName]) {
    // `Expect: 100-continue` was answered by this server when the body was first read;
    // the upstream gets the body right away.
    remove_where(h, |name| {
        name == header::HOST
            || name == header::EXPECT
            || name == X_PROXY_KEY
            || credentials.contains(name)
    });
}

/// Adds `X-Forwarded-For` (appending the peer) and `X-Forwarded-Proto`.
pub fn add_forwarded(h: &mut HeaderMap, peer: IpAddr) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    // One lookup each (the entry API), not a probe and then an insert.
    match h.entry(&XFF) {
        header::Entry::Occupied(mut prev) => {
            let value = match prev.get().to_str() {
                Ok(text) => HeaderValue::from_str(&format!("{text}, {peer}")),
                Err(_) => ip_value(peer),
            };
            if let Ok(v) = value {
                prev.insert(v);
            }
        }
        header::Entry::Vacant(slot) => {
            if let Some(v) = peer_value(peer) {
                slot.insert(v);
            }
        }
    }
    h.entry(&XFP)
        .or_insert_with(|| HeaderValue::from_static("http"));
}

/// The header value of a peer address, written once per address and thread (clients
/// are few, their requests many): a shared copy instead of an allocation per request.
fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    thread_local!(static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) });
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, value)) if *cached == ip => Some(value.clone()),
            _ => {
                let value = ip_value(ip).ok()?;
                *last = Some((ip, value.clone()));
                Some(value)
            }
        }
    })
}

/// The header value of an address. IPv4 (the usual case) is written digit by digit:
/// `to_string` goes through the formatting machinery, a tenth of a request's own work.
fn ip_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string());
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n])
}

/// Limits `Accept-Encoding` to codings the proxy can read (gzip, deflate), so an error
/// body can always be searched for dead-key phrases; the body still reaches the client
/// compressed, exactly as the upstream sent it.
pub fn keep_decodable_encodings(h: &mut HeaderMap) {
    let Some(value) = h.get(header::ACCEPT_ENCODING) else {
        return;
    };
    let kept: Vec<&str> = value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|token| {
            let coding = token
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(coding.as_str(), "gzip" | "x-gzip" | "deflate" | "identity")
        })
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            h.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            h.remove(header::ACCEPT_ENCODING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Thing"),
            ("connection", "x-other"),
            ("x-secret-thing", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn injected_key_survives_a_connection_header_naming_it() {
        let mut h = map(&[
            ("connection", "x-api-key"),
            ("x-api-key", "client"),
            ("x-proxy-key", "p"),
            ("host", "me"),
        ]);
        clean_request(&mut h, &LLM_CREDENTIALS);
        // What the proxy does next: the snapshot's ready-made, sensitive value goes in.
        let mut real = HeaderValue::from_static("real");
        real.set_sensitive(true);
        h.insert("x-api-key", real);
        assert_eq!(h["x-api-key"], "real");
        assert!(h["x-api-key"].is_sensitive());
        assert!(h.get("x-proxy-key").is_none() && h.get("host").is_none());
    }

    #[test]
    fn only_decodable_encodings_are_asked_for() {
        let mut h = map(&[("accept-encoding", "gzip, deflate, br, zstd;q=0.5")]);
        keep_decodable_encodings(&mut h);
        assert_eq!(h["accept-encoding"], "gzip, deflate");
        let mut h = map(&[("accept-encoding", "br")]);
        keep_decodable_encodings(&mut h);
        assert!(h.get("accept-encoding").is_none());
    }

    #[test]
    fn addresses_are_written_as_to_string_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.100.1",
            "::1",
            "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn forwarded_for_names_each_peer_though_the_value_is_reused() {
        for peer in ["10.0.0.1", "10.0.0.2", "10.0.0.2", "::1", "10.0.0.1"] {
            let mut h = HeaderMap::new();
            add_forwarded(&mut h, peer.parse().unwrap());
            assert_eq!(h["x-forwarded-for"], peer);
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
