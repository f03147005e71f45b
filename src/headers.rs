//! Header rewriting in both directions.
//!
//! Order matters (RFC 9110 §7.6.1): hop-by-hop headers, including every name listed in
//! `Connection`, stay behind; client credentials stay behind; the real key goes in
//! last, so a client's `Connection: x-api-key` cannot remove the injected key. Requests
//! are rewritten as they are written upstream ([`Rewrite`]); answers, in their map.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether a header only concerns one connection and is never forwarded (`Connection`
/// and the names it lists aside, which [`remove_connection_listed`] takes out).
fn is_hop_by_hop(name: &str) -> bool {
    class(name) == Class::HopByHop
}

/// The header that carries the proxy key on `/proxy`.
pub static X_PROXY_KEY: HeaderName = HeaderName::from_static("x-proxy-key");

/// Credential headers an LLM client may send; none of them goes upstream, the real key
/// goes in instead.
pub static LLM_CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-anthropic-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];

/// What a header is to the rewrite, from its name: one `match` (a length switch and a
/// comparison) instead of a pass over each list (about 100 instructions a header:
/// docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Concerns one connection only (RFC 9110 §7.6.1); never forwarded either way.
    HopByHop,
    /// Never forwarded upstream: `Expect`, `X-Proxy-Key`.
    Dropped,
    /// `Host`: never forwarded (the upstream's comes from its URI); on `/proxy` it
    /// becomes `X-Forwarded-Host`.
    Host,
    /// One of [`LLM_CREDENTIALS`]: dropped on `/llm`.
    Credential,
    /// `X-Forwarded-For`, `-Proto` and `-Host`: written by `/proxy` itself, and from a
    /// client that is not a trusted proxy never forwarded as sent.
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    /// `Forwarded` and `X-Real-IP`: only from a trusted proxy.
    Forwarded,
    Kept,
}

fn class(name: &str) -> Class {
    match name {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade" => Class::HopByHop,
        "expect" | "x-proxy-key" => Class::Dropped,
        "host" => Class::Host,
        "authorization" | "x-api-key" | "x-anthropic-api-key" | "x-goog-api-key" | "api-key" => {
            Class::Credential
        }
        "x-forwarded-for" => Class::ForwardedFor,
        "x-forwarded-proto" => Class::ForwardedProto,
        "x-forwarded-host" => Class::ForwardedHost,
        "forwarded" | "x-real-ip" => Class::Forwarded,
        _ => Class::Kept,
    }
}

/// The first value of `name` in `h` (what `get` answers): the names compared one by
/// one, cheaper than hashing `name` for a lookup in the dozen headers a request carries.
pub fn find<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Whether `h` has a header named `name`, compared as [`find`] does (over the names
/// alone: a walk over the values too costs more).
pub fn has(h: &HeaderMap, name: &HeaderName) -> bool {
    h.keys().any(|n| n == name)
}

/// The elements of a comma-separated header value, trimmed (bytes: no `str` search).
pub fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Removes `Connection`, every header it names, and the other hop-by-hop headers.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names (no hashing) settles the usual case: nothing to remove.
    if !h.keys().any(|name| is_hop_by_hop(name.as_str())) {
        return;
    }
    remove_connection_listed(h);
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        h.remove(name);
    }
}

/// Removes every header that a `Connection` header names (RFC 9110 §7.6.1). Most
/// requests and answers have no `Connection` header: the names are compared (a few
/// instructions each), not hashed for a lookup.
fn remove_connection_listed(h: &mut HeaderMap) {
    if !has(h, &header::CONNECTION) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
}

/// How a client's request headers go upstream. Decided per name while the request is
/// written, so the client's map is not edited on every request: hop-by-hop headers
/// (and the names `Connection` lists), `Host` (the upstream's comes from its URI),
/// `Expect` (this server answered it when it read the body; the upstream gets the body
/// right away), `X-Proxy-Key` and, on LLM routes, the client's credential headers stay
/// behind.
///
/// Forwarding headers are what the proxy knows, never what a client claims: on `/proxy`,
/// `X-Forwarded-For` is the peer, `X-Forwarded-Proto` is `http` and `X-Forwarded-Host`
/// the `Host` the client asked for; on `/llm` there are none (a provider needs no client
/// address). The client's own `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are dropped,
/// unless the peer is a trusted proxy (`TRUSTED_PROXIES`): then they go on, and `/proxy`
/// appends the peer to `X-Forwarded-For` and fills in what the proxy left out.
///
/// The real key is not part of this: the sender writes it last, over any header of the
/// same name, so a client's `Connection: x-api-key` cannot remove the injected key.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite {
    /// Off: the headers go as they are (the key checks of the admin page).
    strip: bool,
    llm_credentials: bool,
    /// On `/proxy`: the peer, whom the forwarding headers name.
    forwarded_for: Option<IpAddr>,
    /// Whether the peer is a trusted proxy, whose forwarding headers go on.
    trusted: bool,
}

/// A header value as it goes upstream: the client's own, or pieces written one after
/// the other.
pub enum Value<'a> {
    Same(&'a HeaderValue),
    Joined(&'a [&'a [u8]]),
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Rewrite {
    /// Headers sent as they are.
    pub const NONE: Rewrite = Rewrite {
        strip: false,
        llm_credentials: false,
        forwarded_for: None,
        trusted: false,
    };

    /// `/proxy`: the client came from `peer`, a trusted proxy or not.
    pub fn generic(h: &mut HeaderMap, peer: IpAddr, trusted: bool) -> Rewrite {
        remove_connection_listed(h);
        Rewrite {
            strip: true,
            llm_credentials: false,
            forwarded_for: Some(peer),
            trusted,
        }
    }

    /// `/llm`: the client's credential headers stay behind too.
    pub fn llm(h: &mut HeaderMap, trusted: bool) -> Rewrite {
        remove_connection_listed(h);
        Rewrite {
            strip: true,
            llm_credentials: true,
            forwarded_for: None,
            trusted,
        }
    }

    /// Whether a client header of this class goes upstream as it is.
    fn keeps(&self, class: Class) -> bool {
        !self.strip
            || match class {
                Class::HopByHop | Class::Dropped | Class::Host => false,
                Class::Credential => !self.llm_credentials,
                Class::ForwardedFor
                | Class::ForwardedProto
                | Class::ForwardedHost
                | Class::Forwarded => self.trusted,
                Class::Kept => true,
            }
    }

    /// Calls `emit` with each header that goes upstream, in the client's order, then the
    /// forwarding headers the proxy writes.
    pub fn each(&self, headers: &HeaderMap, mut emit: impl FnMut(&HeaderName, Value<'_>)) {
        let mut ip = [0u8; 39];
        let peer = self.forwarded_for.map(|addr| ip_text(addr, &mut ip));
        let (mut had_xff, mut had_xfp, mut had_xfh) = (false, false, false);
        let mut host = None;
        for (name, value) in headers {
            let class = class(name.as_str());
            if class == Class::Host {
                host = Some(value);
            }
            if !self.keeps(class) {
                continue;
            }
            if let Some(peer) = peer {
                if class == Class::ForwardedFor {
                    // One value: the (first) trusted proxy's list, then the peer.
                    if !had_xff {
                        match value.to_str() {
                            Ok(_) => emit(name, Value::Joined(&[value.as_bytes(), b", ", peer])),
                            Err(_) => emit(name, Value::Joined(&[peer])),
                        }
                    }
                    had_xff = true;
                    continue;
                }
                had_xfp |= class == Class::ForwardedProto;
                had_xfh |= class == Class::ForwardedHost;
            }
            emit(name, Value::Same(value));
        }
        if let Some(peer) = peer {
            if !had_xff {
                emit(&XFF, Value::Joined(&[peer]));
            }
            if !had_xfp {
                emit(&XFP, Value::Joined(&[b"http"]));
            }
            if let (false, Some(host)) = (had_xfh, host) {
                emit(&XFH, Value::Same(host));
            }
        }
    }
}

/// The text of an address, as `to_string` writes it. IPv4 (the usual case) is written
/// digit by digit: the formatting machinery cost a tenth of a request's own work
/// (docs/BENCHMARKS.md).
fn ip_text(ip: IpAddr, buf: &mut [u8; 39]) -> &[u8] {
    let IpAddr::V4(v4) = ip else {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // An IPv6 address is at most 39 characters.
        let _ = write!(cursor, "{ip}");
        let n = cursor.position() as usize;
        return &buf[..n];
    };
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
    &buf[..n]
}

/// Limits `Accept-Encoding` to codings the proxy can read (gzip, deflate), so an error
/// body can always be searched for dead-key phrases; the body still reaches the client
/// compressed, exactly as the upstream sent it.
pub fn keep_decodable_encodings(h: &mut HeaderMap) {
    let Some(value) = find(h, &header::ACCEPT_ENCODING) else {
        return;
    };
    // What SDKs send (`gzip, deflate`) stays as it is: checked in place, nothing built.
    if list(value.as_bytes()).all(is_decodable) {
        return;
    }
    let kept: Vec<&[u8]> = list(value.as_bytes())
        .filter(|token| is_decodable(token))
        .collect();
    match HeaderValue::from_bytes(&kept.join(&b", "[..])) {
        Ok(v) if !kept.is_empty() => {
            h.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            h.remove(header::ACCEPT_ENCODING);
        }
    }
}

/// Whether an `Accept-Encoding` element (`coding[;q=…]`) names a coding the proxy reads.
fn is_decodable(token: &[u8]) -> bool {
    let coding = token
        .split(|b| *b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    [&b"gzip"[..], b"x-gzip", b"deflate", b"identity"]
        .iter()
        .any(|c| coding.eq_ignore_ascii_case(c))
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

    /// What `rewrite` sends of `h`, as (name, value) texts.
    fn sent(rewrite: &Rewrite, h: &HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        rewrite.each(h, |name, value| {
            let value = match value {
                Value::Same(v) => v.as_bytes().to_vec(),
                Value::Joined(parts) => parts.concat(),
            };
            out.push((name.to_string(), String::from_utf8(value).unwrap()));
        });
        out
    }

    fn names(sent: &[(String, String)]) -> Vec<&str> {
        sent.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn client_credentials_and_connection_named_headers_stay_behind() {
        let mut h = map(&[
            ("connection", "x-api-key, X-Custom"),
            ("x-api-key", "client"),
            ("authorization", "Bearer client"),
            ("x-goog-api-key", "client"),
            ("x-proxy-key", "p"),
            ("x-custom", "1"),
            ("host", "me"),
            ("expect", "100-continue"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("user-agent", "sdk"),
        ]);
        let llm = Rewrite::llm(&mut h, false);
        let sent_llm = sent(&llm, &h);
        let mut kept = names(&sent_llm);
        kept.sort();
        assert_eq!(kept, ["content-type", "user-agent"]);

        let mut h = map(&[
            ("connection", "X-Custom"),
            ("x-custom", "1"),
            ("authorization", "Basic kept"),
            ("x-proxy-key", "p"),
            ("host", "me"),
        ]);
        let generic = Rewrite::generic(&mut h, "10.0.0.1".parse().unwrap(), false);
        let mut sent_generic = sent(&generic, &h);
        sent_generic.sort();
        assert_eq!(
            sent_generic,
            [
                ("authorization".into(), "Basic kept".into()),
                ("x-forwarded-for".into(), "10.0.0.1".into()),
                ("x-forwarded-host".into(), "me".into()),
                ("x-forwarded-proto".into(), "http".into()),
            ]
        );
        // Without a rewrite (the admin page's key checks) everything goes as it is.
        assert_eq!(sent(&Rewrite::NONE, &h).len(), 4);
    }

    #[test]
    fn names_are_classed_as_the_lists_say() {
        for name in &LLM_CREDENTIALS {
            assert_eq!(class(name.as_str()), Class::Credential, "{name}");
        }
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["expect", X_PROXY_KEY.as_str()] {
            assert_eq!(class(name), Class::Dropped, "{name}");
        }
        for name in [
            "content-type",
            "x-api-keys",
            "api-key2",
            "x-forwarded-hosts",
        ] {
            assert_eq!(class(name), Class::Kept, "{name}");
        }
        assert_eq!(class("host"), Class::Host);
        assert_eq!(class("x-forwarded-host"), Class::ForwardedHost);
        assert_eq!(class("forwarded"), Class::Forwarded);
        assert_eq!(class("x-real-ip"), Class::Forwarded);
        assert_eq!(class(XFF.as_str()), Class::ForwardedFor);
        assert_eq!(class(XFP.as_str()), Class::ForwardedProto);
    }

    #[test]
    fn only_decodable_encodings_are_asked_for() {
        let mut h = map(&[("accept-encoding", "gzip, deflate, br, zstd;q=0.5")]);
        keep_decodable_encodings(&mut h);
        assert_eq!(h["accept-encoding"], "gzip, deflate");
        let mut h = map(&[("accept-encoding", "br")]);
        keep_decodable_encodings(&mut h);
        assert!(h.get("accept-encoding").is_none());
        // Kept exactly as sent when every coding is readable.
        let mut h = map(&[("accept-encoding", "GZIP;q=1,deflate")]);
        keep_decodable_encodings(&mut h);
        assert_eq!(h["accept-encoding"], "GZIP;q=1,deflate");
        for (odd, left) in [
            ("", None),
            ("gzip, , deflate", Some("gzip, deflate")),
            ("gzip, \u{e9}", Some("gzip")),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                "accept-encoding",
                HeaderValue::from_bytes(odd.as_bytes()).unwrap(),
            );
            keep_decodable_encodings(&mut h);
            let got = h.get("accept-encoding").map(|v| v.as_bytes());
            assert_eq!(got, left.map(str::as_bytes), "{odd:?}");
        }
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
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut [0; 39]), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn forwarded_for_names_the_peer() {
        for peer in ["10.0.0.1", "10.0.0.2", "::1"] {
            let mut h = HeaderMap::new();
            let rewrite = Rewrite::generic(&mut h, peer.parse().unwrap(), false);
            assert_eq!(
                sent(&rewrite, &h)[0],
                ("x-forwarded-for".into(), peer.into())
            );
        }
    }

    #[test]
    fn a_clients_forwarding_headers_are_replaced_by_what_the_proxy_knows() {
        let forged = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("host", "proxy.example"),
        ];
        let mut h = map(&forged);
        let rewrite = Rewrite::generic(&mut h, "198.51.100.7".parse().unwrap(), false);
        let mut got = sent(&rewrite, &h);
        got.sort();
        assert_eq!(
            got,
            [
                ("x-forwarded-for".into(), "198.51.100.7".into()),
                ("x-forwarded-host".into(), "proxy.example".into()),
                ("x-forwarded-proto".into(), "http".into()),
            ]
        );
        // On /llm: none at all.
        let mut h = map(&forged);
        let rewrite = Rewrite::llm(&mut h, false);
        assert!(sent(&rewrite, &h).is_empty());
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_go_on_with_the_peer_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ]);
        let rewrite = Rewrite::generic(&mut h, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(
            sent(&rewrite, &h),
            [
                ("x-forwarded-for".into(), "203.0.113.9, 127.0.0.1".into()),
                ("x-forwarded-proto".into(), "https".into()),
                ("forwarded".into(), "for=203.0.113.9;proto=https".into()),
            ]
        );
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        let rewrite = Rewrite::generic(&mut h, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(sent(&rewrite, &h)[0].1, "127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        let rewrite = Rewrite::llm(&mut h, true);
        assert_eq!(
            sent(&rewrite, &h),
            [("x-forwarded-for".into(), "203.0.113.9".into())]
        );
    }
}
