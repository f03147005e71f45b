//! `/llm/<slug>/<action>`: what SDKs call with `base_url` set to `…/llm/<slug>`.
//!
//! The proxy key may come from `Authorization: Bearer`, `x-api-key`,
//! `x-anthropic-api-key`, `x-goog-api-key`, `api-key` (Azure), the `key` query parameter or (OpenAI-compatible
//! services, small JSON bodies) a top-level `api_key` body field. Authentication happens
//! before the slug is looked up (401 before 404), and every one of these credentials is
//! removed before the real key goes in.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::LazyLock;

use http::header::{CONTENT_LENGTH, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use memchr::memmem;

use super::{Flavor, OutBody, Outgoing, forward, split_path};
use crate::body::Body;
use crate::clients::Caller;
use crate::error::ApiError;
use crate::headers;
use crate::service::{ApiFormat, Kind};
use crate::state::AppState;
use crate::upstream::url;
use crate::usage::{Text, Trace};

/// Query parameters that carry a proxy key and never go upstream.
const CREDENTIAL_PARAMS: &[&str] = &["key"];
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Longest body read for an `api_key` member when no header carries a proxy key: a
/// client that has not authenticated gets no more buffered than this.
const BODY_KEY_LIMIT: usize = 64 * 1024;

pub async fn handle(
    state: &AppState,
    peer: IpAddr,
    mut parts: Parts,
    incoming: Incoming,
    mut trace: Option<&mut Trace>,
) -> Result<Response<Body>, ApiError> {
    let unauthorized = |m: &'static str| ApiError::proxy(StatusCode::UNAUTHORIZED, m);
    const MISSING: &str = "invalid or missing proxy key: send it as Authorization: Bearer <key>, x-api-key, x-goog-api-key or ?key=";
    // Authenticated by a header before any body byte is read; the body is read (a small
    // one, at most) only to look for an `api_key` member when no header has a key.
    let header_caller =
        credentials(&parts.headers, parts.uri.query()).find_map(|c| state.caller(&c));
    let header_ok = header_caller.is_some();
    let limit = match header_ok {
        true => state.config.retry_body_limit,
        false => BODY_KEY_LIMIT.min(state.config.retry_body_limit),
    };
    let mut body = OutBody::read(incoming, limit, state.config.body_read_timeout).await?;
    let body_key = match &body {
        OutBody::Replayable(bytes) => {
            strip_api_keys(bytes).map_err(|m| ApiError::proxy(StatusCode::BAD_REQUEST, m))?
        }
        OutBody::Streaming(_) if !header_ok => return Err(unauthorized(MISSING)),
        OutBody::Streaming(_) => None,
    };
    let body_caller = match header_ok {
        true => None,
        false => body_key
            .as_ref()
            .and_then(|(k, _)| state.caller(k.as_bytes())),
    };
    let body_ok = body_caller.is_some();
    let Some(caller) = header_caller.or(body_caller) else {
        return Err(unauthorized(MISSING));
    };
    let uri = parts.uri.clone();
    let (slug, rest) = split_path(uri.path(), Flavor::Llm);
    let snap = state.snapshot.load();
    let (svc, format) = match snap.get(slug).map(|s| (s, s.spec.kind)) {
        Some((s, Kind::Llm(format))) => (s, format),
        _ => {
            return Err(ApiError::proxy(
                StatusCode::NOT_FOUND,
                format!("LLM service '{slug}' not found or inactive"),
            ));
        }
    };
    if format == ApiFormat::OpenAi {
        if let (Some((_, without)), OutBody::Replayable(bytes)) = (body_key, &mut body) {
            *bytes = without;
            parts.headers.remove(CONTENT_LENGTH);
        }
    } else if body_ok {
        return Err(unauthorized(
            "a proxy key in the JSON body is only accepted by OpenAI-compatible services",
        ));
    }
    let rest = action(format, &svc.spec.upstream.base_path, rest);
    let trusted = state.config.trusted_proxies.trusts(peer);
    let rewrite = headers::Rewrite::llm(&mut parts.headers, trusted);
    headers::keep_decodable_encodings(&mut parts.headers);
    if format == ApiFormat::Anthropic && !parts.headers.contains_key("anthropic-version") {
        parts.headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    let limits_models = matches!(&caller, Caller::Client(k) if k.limits_models());
    let model = match trace.is_some() || limits_models {
        true => request_model(format, rest, &body),
        false => None,
    };
    let mut out = Outgoing::new(svc, parts, rewrite, rest, CREDENTIAL_PARAMS, body)?;
    super::traced(&mut trace, svc, &mut out);
    let asked = (Flavor::Llm, model.as_deref());
    let admission = super::admit(state, &caller, svc, asked, &out.method, &mut trace).await?;
    if let Some(t) = trace.as_deref_mut() {
        // Tokens are read from the answer as it passes, and the proxy decodes nothing: ask
        // for it uncompressed (always acceptable to the client; LLM answers are small).
        out.identity = true;
        t.format = Some(format);
        t.model = model;
    }
    super::held(forward::run(state, svc, out, trace).await, admission)
}

/// The model a request names: Gemini's in its path (`…/models/<model>:generateContent`),
/// the others' as the body's top-level `model` string.
fn request_model(format: ApiFormat, rest: &str, body: &OutBody) -> Option<Text> {
    if format == ApiFormat::Gemini {
        let after = rest.rsplit_once("models/")?.1;
        let model = after.split([':', '/', '?']).next().unwrap_or("");
        return (!model.is_empty()).then(|| model.into());
    }
    let OutBody::Replayable(bytes) = body else {
        return None;
    };
    static MODEL: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"model\""));
    MODEL.find(bytes)?;
    find_member(bytes, "model").and_then(|m| m.value)
}

/// The upstream path after the base: for OpenAI-compatible services a `v1/` the SDK adds
/// is dropped when the base already ends in `/v1`, so `…/llm/<slug>` and
/// `…/llm/<slug>/v1` both work as `base_url`.
pub fn action<'a>(format: ApiFormat, base_path: &str, rest: &'a str) -> &'a str {
    if format == ApiFormat::OpenAi && base_path.ends_with("/v1") {
        if rest == "v1" {
            return "";
        }
        if let Some(r) = rest.strip_prefix("v1/") {
            return r;
        }
    }
    rest
}

/// Every proxy-key candidate in the headers and the query.
fn credentials<'a>(
    h: &'a HeaderMap,
    query: Option<&'a str>,
) -> impl Iterator<Item = Cow<'a, [u8]>> + 'a {
    let bearer = crate::auth::bearer_bytes(h).map(Cow::Borrowed);
    let plain = headers::LLM_CREDENTIALS[1..]
        .iter()
        .filter_map(|name| headers::find(h, name))
        .map(|v| Cow::Borrowed(v.as_bytes().trim_ascii()));
    let from_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("key="))
        .filter_map(|v| url::percent_decode(v.as_bytes()))
        .map(Cow::Owned);
    bearer
        .into_iter()
        .chain(plain)
        .chain(from_query)
        .filter(|c| !c.is_empty())
}

/// A top-level member of a JSON object body, found by name.
#[derive(Debug, PartialEq)]
pub struct BodyKey<T = String> {
    /// Its value when it is a string; `None` for any other value.
    pub value: Option<T>,
    /// Byte range to cut (the member and one adjacent comma).
    cut: (usize, usize),
}

impl<T> BodyKey<T> {
    /// The body without the member, every other byte untouched (numbers, key order and
    /// escapes stay exactly as the client sent them).
    pub fn remove_from(&self, body: &[u8]) -> bytes::Bytes {
        let mut out = Vec::with_capacity(body.len());
        out.extend_from_slice(&body[..self.cut.0]);
        out.extend_from_slice(&body[self.cut.1..]);
        out.into()
    }
}

/// Every top-level `api_key` member removed: its value and the body without it. Members
/// named with escapes (`"api\u005fkey"`) count too, as any JSON reader sees them; several
/// members with different values are refused (readers differ on which one wins), and so
/// is a string beside a member of another type (found by fuzzing: `"api_key":"pk",
/// "api_key":7` let the proxy read `pk` while the upstream's reader kept the 7). A body
/// whose `api_key` members are none of them strings holds no key: it is left untouched.
pub fn strip_api_keys(json: &[u8]) -> Result<Option<(String, bytes::Bytes)>, &'static str> {
    let Some(first) = find_api_key(json) else {
        return Ok(None);
    };
    let mut body = first.remove_from(json);
    for _ in 0..32 {
        let Some(next) = find_api_key(&body) else {
            return Ok(first.value.map(|key| (key, body)));
        };
        if next.value != first.value {
            return Err(match (&first.value, &next.value) {
                (Some(_), Some(_)) => {
                    "the JSON body has several api_key members with different values"
                }
                _ => "the JSON body has api_key members of different types",
            });
        }
        body = next.remove_from(&body);
    }
    Err("the JSON body has too many api_key members")
}

/// Finds the first top-level `api_key` member, scanning the JSON without
/// rebuilding it.
pub fn find_api_key(json: &[u8]) -> Option<BodyKey> {
    // The quick test every request pays for: a vectorised search on the bytes (std's
    // substring search needs a `str`, and checking 1 KB of UTF-8 cost more than the
    // search itself), with the searchers built once. A name written with escapes needs
    // the full scan.
    static MEMBER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"api_key\""));
    static ESCAPE: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\\u"));
    if MEMBER.find(json).is_none() && ESCAPE.find(json).is_none() {
        return None;
    }
    find_member(json, "api_key")
}

/// The first top-level member `name` of a JSON object (its value when a string), and the
/// bytes to cut to remove it. `None` when the body is not an object, the member is
/// absent, or the JSON breaks off before it.
pub fn find_member<T: for<'a> From<&'a str>>(json: &[u8], name: &str) -> Option<BodyKey<T>> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    let mut sep = i; // position of the '{' or ',' before the current member
    i += 1;
    loop {
        i = skip_ws(json, i);
        if json.get(i) == Some(&b'}') {
            return None;
        }
        let key_start = i;
        let key_end = skip_string(json, i)?;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, i + 1);
        let value_end = skip_value(json, value_start)?;
        let after = skip_ws(json, value_end);
        let raw_name = &json[key_start + 1..key_end - 1];
        let is_named = if raw_name.contains(&b'\\') {
            serde_json::from_slice::<String>(&json[key_start..key_end])
                .ok()
                .as_deref()
                == Some(name)
        } else {
            raw_name == name.as_bytes()
        };
        let next = *json.get(after)?;
        if is_named {
            let value = crate::usage::scan::json_string(&json[value_start..value_end]);
            let cut = match (next, json[sep]) {
                (b',', _) => (sep + 1, after + 1),
                (_, b',') => (sep, value_end),
                _ => (sep + 1, value_end),
            };
            return Some(BodyKey { value, cut });
        }
        match next {
            b',' => {
                sep = after;
                i = after + 1;
            }
            _ => return None,
        }
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `i`.
fn skip_string(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// End (exclusive) of the value starting at `i`.
fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => skip_string(s, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < s.len() {
                match s[j] {
                    b'"' => {
                        j = skip_string(s, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < s.len() && !matches!(s[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(json: &str) -> Option<(String, String)> {
        let k = find_api_key(json.as_bytes())?;
        let rest = String::from_utf8(k.remove_from(json.as_bytes()).to_vec()).unwrap();
        Some((k.value?, rest))
    }

    #[test]
    fn removes_the_member_and_nothing_else() {
        let (k, rest) = cut(r#"{"model":"m","api_key":"pk","n":12345678901234567890}"#).unwrap();
        assert_eq!(k, "pk");
        assert_eq!(rest, r#"{"model":"m","n":12345678901234567890}"#);
        let (_, rest) = cut(r#"{"api_key":"pk","b":1}"#).unwrap();
        assert_eq!(rest, r#"{"b":1}"#);
        let (_, rest) = cut(r#"{ "a": [1, {"api_key": "nested"}], "api_key" : "pk" }"#).unwrap();
        assert_eq!(rest, r#"{ "a": [1, {"api_key": "nested"}] }"#);
        let (k, rest) = cut(r#"{"api_key":"p\"k"}"#).unwrap();
        assert_eq!((k.as_str(), rest.as_str()), ("p\"k", "{}"));
    }

    #[test]
    fn every_top_level_api_key_is_removed() {
        let strip = |json: &str| {
            strip_api_keys(json.as_bytes())
                .map(|o| o.map(|(k, b)| (k, String::from_utf8(b.to_vec()).unwrap())))
        };
        assert_eq!(
            strip(r#"{"model":"m","api_key":"pk","api_key":"pk"}"#),
            Ok(Some(("pk".into(), r#"{"model":"m"}"#.into())))
        );
        assert_eq!(
            strip(r#"{"api_key":"pk","api_key":"pk","api_key":"pk","n":1}"#),
            Ok(Some(("pk".into(), r#"{"n":1}"#.into())))
        );
        assert!(strip(r#"{"api_key":"pk","api_key":"other"}"#).is_err());
        // Found by fuzzing: a string beside another type is refused, whichever comes first;
        // members that are none of them strings leave the body untouched.
        assert!(strip(r#"{"api_key":"pk","api_key":7777777}"#).is_err());
        assert!(strip(r#"{"api_key":7,"api_key":"pk"}"#).is_err());
        assert_eq!(strip(r#"{"api_key":7,"api_key":null,"m":1}"#), Ok(None));
        // A name with escapes is the same name to any JSON reader.
        assert_eq!(
            strip(r#"{"api\u005fkey":"pk","m":1}"#),
            Ok(Some(("pk".into(), r#"{"m":1}"#.into())))
        );
        assert_eq!(strip(r#"{"model":"m"}"#), Ok(None));
    }

    #[test]
    fn ignores_nested_non_string_and_malformed() {
        assert_eq!(cut(r#"{"messages":[{"api_key":"x"}]}"#), None);
        assert_eq!(cut(r#"{"api_key":42}"#), None);
        assert_eq!(
            find_api_key(br#"{"api_key":42}"#).map(|k| k.value),
            Some(None)
        );
        assert_eq!(cut(r#"{"api_key":"x""#), None);
        assert_eq!(cut(r#"["api_key"]"#), None);
        assert_eq!(cut("not json \"api_key\""), None);
    }

    #[test]
    fn v1_is_dropped_once_for_openai_bases_ending_in_v1() {
        assert_eq!(
            action(ApiFormat::OpenAi, "/v1", "v1/chat/completions"),
            "chat/completions"
        );
        assert_eq!(
            action(ApiFormat::OpenAi, "/v1", "chat/completions"),
            "chat/completions"
        );
        assert_eq!(action(ApiFormat::OpenAi, "/api/v1", "v1/models"), "models");
        assert_eq!(action(ApiFormat::OpenAi, "", "v1/models"), "v1/models");
        assert_eq!(
            action(ApiFormat::Anthropic, "/v1", "v1/messages"),
            "v1/messages"
        );
    }

    #[test]
    fn credentials_from_every_place() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer a".parse().unwrap());
        h.insert("x-api-key", "b".parse().unwrap());
        h.insert("x-goog-api-key", "c".parse().unwrap());
        let got: Vec<Vec<u8>> = credentials(&h, Some("alt=sse&key=d%2Fe"))
            .map(Cow::into_owned)
            .collect();
        assert_eq!(
            got,
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d/e".to_vec()]
        );
    }
}
