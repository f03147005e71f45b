//! Safe upstream URL composition.
//!
//! The upstream URL is always the configured base (scheme, host, port, base path) plus
//! client path segments that were checked first: no `.`/`..` (raw or percent-encoded),
//! no encoded `/` or `\`, no empty segment, no control character, no malformed escape.
//! Nothing is resolved or joined the way a browser would. What is composed is only the
//! request target (path and query, starting with `/`): scheme and authority are always
//! the configured upstream's, so no client path can change the host.

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// A configured upstream base URL, parsed once when the snapshot is built.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The base path without a trailing `/` (may be empty).
    pub base_path: String,
    /// The base URL's own query, kept in front of the client's.
    pub base_query: Option<String>,
    /// `Host` for requests to this upstream.
    pub host: HeaderValue,
}

impl Upstream {
    /// Parses an `http(s)://host[:port][/path][?query]` URL.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        check_http_url(url)?;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL '{url}': {e}"))?;
        let scheme = uri.scheme().cloned().ok_or("URL has no scheme")?;
        let authority = uri.authority().cloned().ok_or("URL has no host")?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Upstream {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            base_query: uri.query().filter(|q| !q.is_empty()).map(str::to_string),
            host,
        })
    }
}

/// Why a client path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub &'static str);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let (h, l) = (hex(*s.get(i + 1)?)?, hex(*s.get(i + 2)?)?);
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Checks the client's path after the slug. A single trailing `/` is allowed.
pub fn check_rest(rest: &str) -> Result<(), PathError> {
    if rest.is_empty() {
        return Ok(());
    }
    let body = rest.strip_suffix('/').unwrap_or(rest);
    for seg in body.as_bytes().split(|&b| b == b'/') {
        check_segment(seg)?;
    }
    Ok(())
}

/// RFC 3986 `pchar` (with `%`, which must start an escape), as a table: a request's path
/// is checked byte by byte.
static PCHAR: [bool; 256] = {
    const OTHERS: &[u8] = b"-._~!$&'()*+,;=:@%";
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < OTHERS.len() {
        table[OTHERS[j] as usize] = true;
        j += 1;
    }
    table
};

/// Whether a (decoded) segment is a dot segment, also with path parameters after a
/// `;` (`..;x`), which some servers strip before resolving the path.
fn is_dot_segment(seg: &[u8]) -> bool {
    let name = seg.split(|b| *b == b';').next().unwrap_or(seg);
    name == b"." || name == b".."
}

fn check_segment(seg: &[u8]) -> Result<(), PathError> {
    const DOTS: PathError = PathError("'.' and '..' path segments are not allowed");
    if seg.is_empty() {
        return Err(PathError("empty path segment ('//') is not allowed"));
    }
    let mut escaped = false;
    for &b in seg {
        if !PCHAR[b as usize] {
            return Err(PathError(
                "characters outside RFC 3986 path characters must be percent-encoded",
            ));
        }
        escaped |= b == b'%';
    }
    if !escaped {
        // Nothing to decode, and `pchar` already excludes `/`, `\` and control
        // characters: only the dot segments are left to refuse.
        return match is_dot_segment(seg) {
            true => Err(DOTS),
            false => Ok(()),
        };
    }
    let decoded = percent_decode(seg).ok_or(PathError("malformed percent-escape in path"))?;
    check_decoded(&decoded)?;
    // Decoded twice, as a server behind the upstream might: `%252e%252e` is `..` then.
    if decoded.contains(&b'%') {
        if let Some(twice) = percent_decode(&decoded) {
            check_decoded(&twice)?;
        }
    }
    Ok(())
}

/// What a decoded segment must not be or hold: a dot segment, a separator, a control
/// character, or bytes that are not UTF-8 (an overlong encoding such as `%c0%ae` is a
/// dot to some decoders).
fn check_decoded(decoded: &[u8]) -> Result<(), PathError> {
    if is_dot_segment(decoded) {
        return Err(PathError("'.' and '..' path segments are not allowed"));
    }
    if decoded.iter().any(|&b| b == b'/' || b == b'\\') {
        return Err(PathError(
            "encoded '/' or '\\' in a path segment is not allowed",
        ));
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError("control characters in the path are not allowed"));
    }
    if std::str::from_utf8(decoded).is_err() {
        return Err(PathError("a percent-encoded path must decode to UTF-8"));
    }
    Ok(())
}

/// A query parameter to put in the upstream URL (the injected key).
pub struct QueryParam<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// The target of an upstream request: path and query in origin form (starts with `/`,
/// no space or control character), made only by [`compose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute URI on `up` (for hyper's HTTP/2 client and the probe).
    pub fn to_uri(&self, up: &Upstream) -> Result<Uri, PathError> {
        absolute(up.scheme.clone(), up.authority.clone(), &self.0)
    }
}

/// `scheme://authority` + a request target.
pub fn absolute(scheme: Scheme, authority: Authority, target: &str) -> Result<Uri, PathError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes()))
            .map_err(|_| PathError("the path cannot be forwarded"))?,
    );
    Uri::from_parts(parts).map_err(|_| PathError("the path cannot be forwarded"))
}

/// Builds the upstream request target: base path + `/` + `rest`, then the base query, the
/// client's query (without parameters named in `drop` or the injected name) and the
/// injected parameter.
pub fn compose(
    up: &Upstream,
    rest: &str,
    client_query: Option<&str>,
    drop: &[&str],
    inject: Option<QueryParam<'_>>,
) -> Result<Target, PathError> {
    check_rest(rest)?;
    // Only the path and query are text; scheme and authority are the configured ones,
    // copied as they are (no re-parse).
    let mut s = String::with_capacity(up.base_path.len() + rest.len() + 64);
    s.push_str(&up.base_path);
    if !rest.is_empty() || up.base_path.is_empty() {
        s.push('/');
    }
    s.push_str(rest);
    let injected_name = inject.as_ref().map(|p| p.name);
    // Names are only decoded when some parameter may have to go.
    let filtering = injected_name.is_some() || !drop.is_empty();
    let mut first = true;
    let mut push = |s: &mut String, pair: &str| {
        s.push(if first { '?' } else { '&' });
        first = false;
        s.push_str(pair);
    };
    for q in [up.base_query.as_deref(), client_query]
        .into_iter()
        .flatten()
    {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            if filtering {
                let name = param_name(pair);
                if injected_name.is_some_and(|n| n.as_bytes() == &*name)
                    || drop.iter().any(|d| d.as_bytes() == &*name)
                {
                    continue;
                }
            }
            push(&mut s, pair);
        }
    }
    if let Some(p) = inject {
        push(
            &mut s,
            &format!("{}={}", encode_component(p.name), encode_component(p.value)),
        );
    }
    // Every piece came from a parsed URI or was checked or encoded above; this keeps a
    // request line that cannot be split whatever a future change lets through.
    let splits = |b: u8| b <= b' ' || b == 0x7f || b == b'#';
    // A fold without an early exit: the compiler checks 16 bytes per step.
    if !s.starts_with('/') || s.bytes().fold(false, |found, b| found | splits(b)) {
        return Err(PathError("the path cannot be forwarded"));
    }
    Ok(Target(s))
}

/// The decoded name of a `name=value` query pair (`+` as space).
fn param_name(pair: &str) -> std::borrow::Cow<'_, [u8]> {
    let raw = pair.split('=').next().unwrap_or("");
    if !raw.contains(['+', '%']) {
        return raw.as_bytes().into();
    }
    let raw = raw.replace('+', " ");
    percent_decode(raw.as_bytes())
        .unwrap_or_else(|| raw.into_bytes())
        .into()
}

/// Percent-encodes everything but unreserved characters.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks that `u` is an absolute http(s) URL with a host.
pub fn check_http_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| format!("must start with http:// or https://, got '{u}'"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("must be an http(s) URL with a host, got '{u}'"));
    }
    u.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("is not a valid URL ({e}): '{u}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(u: &str) -> Upstream {
        Upstream::parse(u).unwrap()
    }

    fn url(base: &str, rest: &str, q: Option<&str>) -> Result<String, PathError> {
        let up = up(base);
        let target = compose(&up, rest, q, &[], None)?;
        Ok(target.to_uri(&up)?.to_string())
    }

    #[test]
    fn joins_base_and_rest() {
        assert_eq!(
            url("https://api.x.com/v1", "current/weather", None).unwrap(),
            "https://api.x.com/v1/current/weather"
        );
        assert_eq!(
            url("https://api.x.com/v1/", "a", None).unwrap(),
            "https://api.x.com/v1/a"
        );
        assert_eq!(
            url("https://api.x.com", "", None).unwrap(),
            "https://api.x.com/"
        );
        assert_eq!(
            url("https://api.x.com/v1", "", None).unwrap(),
            "https://api.x.com/v1"
        );
        assert_eq!(
            url("http://h:8080/b", "items/", None).unwrap(),
            "http://h:8080/b/items/"
        );
        assert_eq!(
            url("http://h/b", "a%20b/c", None).unwrap(),
            "http://h/b/a%20b/c"
        );
    }

    #[test]
    fn merges_queries_and_the_injected_key_wins() {
        let u = compose(
            &up("https://api.x.com/v1?units=m"),
            "w",
            Some("q=London&access_key=evil&x=1"),
            &[],
            Some(QueryParam {
                name: "access_key",
                value: "real/key",
            }),
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "/v1/w?units=m&q=London&x=1&access_key=real%2Fkey"
        );
        let u = compose(
            &up("http://h"),
            "",
            Some("key=proxy&a=1&%6Bey=sneaky"),
            &["key"],
            None,
        )
        .unwrap();
        assert_eq!(u.as_str(), "/?a=1");
    }

    #[test]
    fn empty_query_pairs_are_dropped_and_the_rest_kept_in_order() {
        // (client query, target alone, target after the base query `z=0`)
        for (q, alone, after_base) in [
            ("a=1&b=2", "/v1/w?a=1&b=2", "/v1/w?z=0&a=1&b=2"),
            ("&a=1", "/v1/w?a=1", "/v1/w?z=0&a=1"),
            ("a=1&", "/v1/w?a=1", "/v1/w?z=0&a=1"),
            ("a=1&&b=2", "/v1/w?a=1&b=2", "/v1/w?z=0&a=1&b=2"),
            ("&", "/v1/w", "/v1/w?z=0"),
            ("", "/v1/w", "/v1/w?z=0"),
            ("=", "/v1/w?=", "/v1/w?z=0&="),
        ] {
            let t = compose(&up("https://api.x.com/v1"), "w", Some(q), &[], None).unwrap();
            assert_eq!(t.as_str(), alone, "{q:?}");
            let t = compose(&up("https://api.x.com/v1?z=0"), "w", Some(q), &[], None).unwrap();
            assert_eq!(t.as_str(), after_base, "{q:?} after the base query");
        }
    }

    #[test]
    fn path_tricks_are_refused() {
        for rest in [
            "..", "a/../b", ".", "a/./b", "%2e%2e/x", "%2E%2e", ".%2e", "a/%2E/b", "a%2fb",
            "a%2Fb", "a%5cb", "a\\b", "a//b", "/a", "%zz", "a%2", "a%00b", "a%0d%0ab", ".?", "a#b",
            "a b", "é",
        ] {
            assert!(url("https://api.x.com/v1", rest, None).is_err(), "{rest}");
        }
    }

    #[test]
    fn dot_segments_in_disguise_are_refused() {
        for rest in [
            // Path parameters some servers strip: `..;/`.
            "..;/admin",
            "a/..;x/b",
            ".;/x",
            "%2e%2e;/x",
            // Double-encoded: `..`, `/` and `\` after a second decoding.
            "%252e%252e/x",
            "a/%252E%252E",
            "a%252fb",
            "a%255cb",
            // Overlong UTF-8 for '.' and '/', and other bytes that are not UTF-8.
            "%c0%ae%c0%ae/x",
            "%e0%80%ae",
            "a%c0%afb",
            "%ff",
        ] {
            assert!(url("https://api.x.com/v1", rest, None).is_err(), "{rest}");
        }
        // What looks close but is fine.
        for rest in [
            "..a",
            "a..",
            ".well-known/x",
            "a;b",
            "%25",
            "caf%C3%A9",
            "100%2525",
        ] {
            assert!(url("https://api.x.com/v1", rest, None).is_ok(), "{rest}");
        }
    }

    #[test]
    fn host_cannot_change() {
        // These are odd but harmless: they stay in the path of the configured host.
        for rest in [
            "@evil.com",
            "evil.com:80",
            "http:",
            "%40evil.com/x",
            "a@b:c",
        ] {
            let up = up("https://api.x.com");
            let target = compose(&up, rest, None, &[], None).unwrap();
            // As a client of the absolute URI reads it, and as an origin-form line does.
            let u = target.to_uri(&up).unwrap();
            assert_eq!(u.authority().unwrap().as_str(), "api.x.com", "{rest}");
            let reparsed: Uri = format!("https://api.x.com{}", target.as_str())
                .parse()
                .unwrap();
            assert_eq!(
                reparsed.authority().unwrap().as_str(),
                "api.x.com",
                "{rest}"
            );
        }
    }

    #[test]
    fn a_target_that_could_split_the_request_line_is_refused() {
        // Not reachable through `Upstream::parse` or a parsed client URI: the last guard.
        for q in ["a b", "a\r\nx: y", "a\u{7f}", "a#b"] {
            let mut up = up("http://h/b");
            up.base_query = Some(q.to_string());
            assert_eq!(
                compose(&up, "x", None, &[], None),
                Err(PathError("the path cannot be forwarded")),
                "{q:?}"
            );
        }
        let up = up("http://h/b?ok=1");
        assert_eq!(
            compose(&up, "x", None, &[], None).unwrap().as_str(),
            "/b/x?ok=1"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b%2F"), Some(b"a b/".to_vec()));
        assert_eq!(percent_decode(b"%g0"), None);
        assert_eq!(percent_decode(b"%"), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the characters that matter for URL tricks.
        fn tricky_path() -> impl Strategy<Value = String> {
            let atoms = prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("%".to_string()),
                Just("@".to_string()),
                Just(":".to_string()),
                Just("//".to_string()),
                Just("\\".to_string()),
                Just("?".to_string()),
                Just("#".to_string()),
                Just("evil.com".to_string()),
                Just("http:".to_string()),
                "[a-zA-Z0-9_~-]{1,4}",
                "\\PC{1,2}",
            ];
            proptest::collection::vec(atoms, 0..12).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            #[test]
            fn scheme_host_and_port_never_change(rest in tricky_path(), q in proptest::option::of("[a-z=&%@/:]{0,12}")) {
                for base in ["https://api.example.com/v1", "http://127.0.0.1:8080", "https://h.example:8443/a/b"] {
                    let up = Upstream::parse(base).unwrap();
                    if let Ok(target) = compose(&up, &rest, q.as_deref(), &["key"], Some(QueryParam { name: "k", value: "s" })) {
                        prop_assert!(target.as_str().starts_with('/'));
                        let uri: Uri = format!("{}://{}{}", up.scheme, up.authority, target.as_str()).parse().unwrap();
                        prop_assert_eq!(&uri, &target.to_uri(&up).unwrap());
                        prop_assert_eq!(uri.scheme(), Some(&up.scheme));
                        prop_assert_eq!(uri.authority(), Some(&up.authority));
                        prop_assert!(uri.path().starts_with(&up.base_path));
                        let after = &uri.path()[up.base_path.len()..];
                        for seg in after.split('/').skip(1) {
                            let d = percent_decode(seg.as_bytes()).unwrap();
                            prop_assert!(d != b"." && d != b"..", "dot segment in {}", uri);
                        }
                    }
                }
            }
        }
    }
}
