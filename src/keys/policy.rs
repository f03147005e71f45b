//! What an upstream answer says about the key that was used, and whether to try
//! another key. Pure functions: statuses and headers in, decisions out.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::timefmt;

/// Longest cooldown taken from provider headers.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);
/// Cap of the escalating default cooldown.
const MAX_DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);

/// The key's part in an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 1xx–3xx: the key works.
    Success,
    /// The client's own fault (400, 404, 413, 422, an LLM provider's 403…): says nothing
    /// about the key.
    ClientFault,
    /// 429: cool the key down, for the time the provider asked when it said.
    RateLimited(Option<Duration>),
    /// An LLM provider's 401 or 402, or a dead-key code: take the key out until an admin
    /// resets it.
    Invalid(String),
    /// A generic service's 401, 402 or 403: the key may be bad, or the client asked for
    /// something the upstream denies it. The key cools down until a probe on the
    /// service's probe path says which.
    Suspect(String),
    /// 5xx: counted as a failure, no state change.
    ServerError,
}

impl Verdict {
    /// Whether the answer counts as a success in the key's statistics.
    pub fn is_success(&self) -> bool {
        matches!(self, Verdict::Success | Verdict::ClientFault)
    }

    /// Whether the verdict changes the key's state (cooldown or invalid mark).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Verdict::RateLimited(_) | Verdict::Invalid(_) | Verdict::Suspect(_)
        )
    }
}

/// Classifies an answer. `body` is the (beginning of the) error body when it was read;
/// `llm` says whether the service is an LLM provider (whose error codes are known).
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    phrases: &[String],
    llm: bool,
    now_ms: u64,
) -> Verdict {
    let code = status.as_u16();
    if code < 400 {
        return Verdict::Success;
    }
    let reason = || {
        format!(
            "upstream answered {code} {}",
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string()
    };
    if llm {
        let readable = body.map(|b| readable(headers, b));
        let codes = readable.as_deref().map(error_codes).unwrap_or_default();
        if let Some(phrase) = phrases
            .iter()
            .find(|p| !p.is_empty() && codes.iter().any(|c| c.eq_ignore_ascii_case(p)))
        {
            return Verdict::Invalid(format!("upstream answered {code}: {phrase}"));
        }
    }
    match code {
        401 | 402 if llm => Verdict::Invalid(reason()),
        401..=403 if !llm => Verdict::Suspect(reason()),
        429 => Verdict::RateLimited(cooldown_from_headers(headers, now_ms)),
        500.. => Verdict::ServerError,
        _ => Verdict::ClientFault,
    }
}

/// The values of the provider's error-code fields in a JSON error body:
/// `error.code`, `error.type`, `error.status` and `error.details[].reason`, also under a
/// top-level array (as Gemini sometimes answers). Never free text: a string value is
/// skipped whole, so what `error.message` quotes cannot look like a field. A body cut
/// short gives the fields read before the cut.
pub fn error_codes(body: &[u8]) -> Vec<String> {
    let mut scan = CodeScan {
        s: body,
        i: 0,
        path: Vec::new(),
        found: Vec::new(),
    };
    let _ = scan.value(0);
    scan.found
}

/// A step of a JSON path: an object member or an array element.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Member(String),
    Element,
}

struct CodeScan<'a> {
    s: &'a [u8],
    i: usize,
    path: Vec<Step>,
    found: Vec<String>,
}

/// How deep a JSON error body is followed.
const MAX_DEPTH: usize = 16;

impl CodeScan<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A string token; its text when it could be decoded.
    fn string(&mut self) -> Option<Option<String>> {
        self.ws();
        let start = self.i;
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            match *self.s.get(self.i)? {
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                b'"' => {
                    self.i += 1;
                    let raw = &self.s[start..self.i];
                    return Some(if escaped {
                        serde_json::from_slice(raw).ok()
                    } else {
                        std::str::from_utf8(&raw[1..raw.len() - 1])
                            .ok()
                            .map(str::to_string)
                    });
                }
                _ => self.i += 1,
            }
        }
    }

    /// Whether the current path is an error-code field.
    fn at_code_field(&self) -> bool {
        let path: Vec<&Step> = self
            .path
            .iter()
            .skip_while(|s| **s == Step::Element)
            .collect();
        let member = |s: &Step, name: &str| matches!(s, Step::Member(m) if m == name);
        match path.as_slice() {
            [e, f] => member(e, "error") && ["code", "type", "status"].iter().any(|n| member(f, n)),
            [e, d, Step::Element, r] => {
                member(e, "error") && member(d, "details") && member(r, "reason")
            }
            _ => false,
        }
    }

    /// One value; `None` where the body ends or breaks.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.i += 1;
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    let key = self.string()?.unwrap_or_default();
                    self.eat(b':')?;
                    self.path.push(Step::Member(key));
                    let found = self.member_value(depth);
                    self.path.pop();
                    found?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.path.push(Step::Element);
                    let found = self.value(depth + 1);
                    self.path.pop();
                    found?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string().map(drop),
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                (self.i > start && self.i < self.s.len()).then_some(())
            }
        }
    }

    /// A member's value: a string at an error-code field is kept.
    fn member_value(&mut self, depth: usize) -> Option<()> {
        if self.peek()? == b'"' && self.at_code_field() {
            if let Some(text) = self.string()? {
                self.found.push(text);
            }
            return Some(());
        }
        self.value(depth + 1)
    }
}

/// Longest decoded error body searched for phrases.
const MAX_DECODED: usize = 256 * 1024;

/// The error body as the provider wrote it: gzip and deflate bodies (SDKs ask for them)
/// are decoded, as far as the bytes we have go.
pub fn readable<'a>(headers: &HeaderMap, raw: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let decoded = match encoding.as_deref() {
        Some("gzip" | "x-gzip") => decode(MultiGzDecoder::new(raw)),
        Some("deflate") => {
            decode(ZlibDecoder::new(raw)).or_else(|| decode(DeflateDecoder::new(raw)))
        }
        _ => None,
    };
    decoded.map_or(std::borrow::Cow::Borrowed(raw), std::borrow::Cow::Owned)
}

/// Reads what a decoder yields before its input ends or breaks.
fn decode(mut r: impl std::io::Read) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < MAX_DECODED {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The escalating default cooldown after `strikes` earlier 429s in a row:
/// 30 s, 1 min, 2 min, 4 min… capped at 1 h.
pub fn default_cooldown(strikes: u32) -> Duration {
    let secs = 30u64.saturating_mul(1u64 << strikes.min(20));
    Duration::from_secs(secs).min(MAX_DEFAULT_COOLDOWN)
}

/// How long the provider asked us to wait: `Retry-After` (seconds or HTTP date),
/// `retry-after-ms`, OpenAI's `x-ratelimit-reset-{requests,tokens}` (`6m0s`) and
/// Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339). When a provider says which
/// limit ran out (`…-remaining: 0`), that limit's reset wins; otherwise the latest.
pub fn cooldown_from_headers(h: &HeaderMap, now_ms: u64) -> Option<Duration> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let found = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_millis(ms as u64))
        .or_else(|| text("retry-after").and_then(|v| parse_retry_after(v, now_ms)))
        .or_else(|| provider_reset(h, now_ms));
    found.map(|d| d.min(MAX_COOLDOWN))
}

fn parse_retry_after(v: &str, now_ms: u64) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = timefmt::parse_http_date(v)?.saturating_mul(1000);
    Some(Duration::from_millis(at.saturating_sub(now_ms)))
}

fn provider_reset(h: &HeaderMap, now_ms: u64) -> Option<Duration> {
    const OPENAI: [(&str, &str); 2] = [
        (
            "x-ratelimit-reset-requests",
            "x-ratelimit-remaining-requests",
        ),
        ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
    ];
    const ANTHROPIC: [(&str, &str); 4] = [
        (
            "anthropic-ratelimit-requests-reset",
            "anthropic-ratelimit-requests-remaining",
        ),
        (
            "anthropic-ratelimit-tokens-reset",
            "anthropic-ratelimit-tokens-remaining",
        ),
        (
            "anthropic-ratelimit-input-tokens-reset",
            "anthropic-ratelimit-input-tokens-remaining",
        ),
        (
            "anthropic-ratelimit-output-tokens-reset",
            "anthropic-ratelimit-output-tokens-remaining",
        ),
    ];
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let until = |v: &str| {
        let at = timefmt::parse_datetime(v)?.saturating_mul(1000);
        Some(Duration::from_millis(at.saturating_sub(now_ms)))
    };
    let mut all = Vec::new();
    let mut exhausted = Vec::new();
    let mut note = |reset: Option<Duration>, remaining: &str| {
        if let Some(d) = reset {
            all.push(d);
            if text(remaining) == Some("0") {
                exhausted.push(d);
            }
        }
    };
    for (reset, remaining) in OPENAI {
        note(text(reset).and_then(parse_go_duration), remaining);
    }
    for (reset, remaining) in ANTHROPIC {
        note(text(reset).and_then(until), remaining);
    }
    exhausted
        .into_iter()
        .max()
        .or_else(|| all.into_iter().max())
}

/// Parses Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    // A provider's absurd number (found by fuzzing: `5555…50s` panicked here) waits the
    // longest; the caller caps it.
    (total.is_finite() && total >= 0.0)
        .then(|| Duration::try_from_secs_f64(total).unwrap_or(Duration::MAX))
}

/// A set of HTTP statuses (for "retry on").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// Parses `429,401,403` (spaces allowed). Unknown entries are an error naming them.
    pub fn parse(s: &str) -> Result<StatusSet, String> {
        let mut set = StatusSet::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u16>() {
                Ok(code @ 100..=599) => set.insert(code),
                _ => return Err(format!("'{part}' is not an HTTP status (100-599)")),
            }
        }
        Ok(set)
    }

    /// The default for a service type.
    /// The statuses that try another key when a service does not say. Never 403: it
    /// often denies the client's request rather than the key (a resource, a region).
    pub fn default_for(llm: bool) -> StatusSet {
        let list = if llm {
            "429,401,500,502,503,504"
        } else {
            "429,401"
        };
        StatusSet::parse(list).expect("default retry list parses")
    }

    fn insert(&mut self, code: u16) {
        self.0[(code / 64) as usize] |= 1 << (code % 64);
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        code < 640 && self.0[(code / 64) as usize] & (1 << (code % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: u64 = 784_111_777_000;

    fn phrases() -> Vec<String> {
        crate::config::DEFAULT_INVALID_KEY_CODES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn verdicts() {
        let h = HeaderMap::new();
        let p = phrases();
        let llm = |code: u16, body: Option<&[u8]>| {
            classify(StatusCode::from_u16(code).unwrap(), &h, body, &p, true, NOW)
        };
        let generic = |code: u16| {
            classify(
                StatusCode::from_u16(code).unwrap(),
                &h,
                None,
                &p,
                false,
                NOW,
            )
        };
        assert_eq!(llm(200, None), Verdict::Success);
        assert_eq!(generic(302), Verdict::Success);
        for code in [400, 404, 413, 422] {
            assert_eq!(
                llm(code, Some(b"{\"error\":\"bad request\"}")),
                Verdict::ClientFault
            );
            assert_eq!(generic(code), Verdict::ClientFault);
        }
        assert_eq!(
            llm(401, None),
            Verdict::Invalid("upstream answered 401 Unauthorized".into())
        );
        assert_eq!(
            generic(401),
            Verdict::Suspect("upstream answered 401 Unauthorized".into())
        );
        assert_eq!(
            generic(403),
            Verdict::Suspect("upstream answered 403 Forbidden".into())
        );
        assert_eq!(
            llm(403, None),
            Verdict::ClientFault,
            "a region or a resource"
        );
        assert_eq!(llm(429, None), Verdict::RateLimited(None));
        assert_eq!(
            llm(429, Some(br#"{"error":{"code":"insufficient_quota"}}"#)),
            Verdict::Invalid("upstream answered 429: insufficient_quota".into())
        );
        assert_eq!(
            llm(
                400,
                Some(br#"{"error":{"details":[{"reason":"API_KEY_INVALID"}]}}"#)
            ),
            Verdict::Invalid("upstream answered 400: API_KEY_INVALID".into())
        );
        assert_eq!(llm(503, None), Verdict::ServerError);
    }

    #[test]
    fn codes_are_read_from_code_fields_never_from_free_text() {
        // OpenAI quotes the client's input in its message: a client could write any
        // phrase there.
        let quoted = br#"{"error":{"message":"Invalid value: 'insufficient_quota \"code\":\"invalid_api_key\"'","type":"invalid_request_error","param":"x","code":null}}"#;
        assert_eq!(error_codes(quoted), ["invalid_request_error"]);
        let h = HeaderMap::new();
        let v = classify(
            StatusCode::BAD_REQUEST,
            &h,
            Some(quoted),
            &phrases(),
            true,
            NOW,
        );
        assert_eq!(v, Verdict::ClientFault);
        // Each provider's fields.
        assert_eq!(
            error_codes(br#"{"error":{"message":"m","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#),
            ["insufficient_quota", "insufficient_quota"]
        );
        assert_eq!(
            error_codes(br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
            ["authentication_error"]
        );
        assert_eq!(
            error_codes(br#"[{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT","details":[{"@type":"t","reason":"API_KEY_INVALID"}]}}]"#),
            ["INVALID_ARGUMENT", "API_KEY_INVALID"]
        );
        // With the spaces Python's json.dumps writes.
        assert_eq!(
            error_codes(br#"{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT", "details": [{"@type": "t", "reason": "API_KEY_INVALID", "metadata": {"service": "g"}}]}}"#),
            ["INVALID_ARGUMENT", "API_KEY_INVALID"]
        );
        // Nested objects the provider echoes are not error fields.
        assert!(
            error_codes(br#"{"error":{"param":{"error":{"code":"invalid_api_key"}},"code":"x"}}"#)
                == ["x"]
        );
        assert!(error_codes(b"not json insufficient_quota").is_empty());
        // A body cut short gives what came before the cut.
        assert_eq!(
            error_codes(br#"{"error":{"code":"invalid_api_key","message":"cut her"#),
            ["invalid_api_key"]
        );
    }

    #[test]
    fn phrases_are_found_in_compressed_bodies() {
        use std::io::Write;
        let p = vec!["API_KEY_INVALID".to_string()];
        let body =
            br#"{"error":{"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body).unwrap();
        let gz = gz.finish().unwrap();
        let h = headers(&[("content-encoding", "gzip")]);
        let v = classify(StatusCode::BAD_REQUEST, &h, Some(&gz), &p, true, NOW);
        assert_eq!(
            v,
            Verdict::Invalid("upstream answered 400: API_KEY_INVALID".into())
        );
        // A cut-off body decodes as far as it goes.
        let v = classify(
            StatusCode::BAD_REQUEST,
            &h,
            Some(&gz[..gz.len() - 8]),
            &p,
            true,
            NOW,
        );
        assert!(matches!(v, Verdict::Invalid(_)), "{v:?}");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(body).unwrap();
        let z = z.finish().unwrap();
        let v = classify(
            StatusCode::BAD_REQUEST,
            &headers(&[("content-encoding", "deflate")]),
            Some(&z),
            &p,
            true,
            NOW,
        );
        assert!(matches!(v, Verdict::Invalid(_)));
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let d = cooldown_from_headers(&headers(&[("retry-after", "17")]), NOW);
        assert_eq!(d, Some(Duration::from_secs(17)));
        // Fuzzing found: a duration too large for `Duration` panicked.
        let huge = format!("{}0s", "5".repeat(63));
        assert_eq!(parse_go_duration(&huge), Some(Duration::MAX));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", huge.parse().unwrap());
        assert_eq!(cooldown_from_headers(&h, NOW), Some(MAX_COOLDOWN));
        let d = cooldown_from_headers(
            &headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT")]),
            NOW,
        );
        assert_eq!(d, Some(Duration::from_secs(60)));
        let d = cooldown_from_headers(&headers(&[("retry-after-ms", "1500")]), NOW);
        assert_eq!(d, Some(Duration::from_millis(1500)));
        assert_eq!(
            cooldown_from_headers(&headers(&[("retry-after", "soon")]), NOW),
            None
        );
    }

    #[test]
    fn openai_reset_headers_prefer_the_exhausted_limit() {
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-remaining-tokens", "5000"),
        ]);
        assert_eq!(cooldown_from_headers(&h, NOW), Some(Duration::from_secs(1)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "2m30s"),
        ]);
        assert_eq!(
            cooldown_from_headers(&h, NOW),
            Some(Duration::from_secs(150))
        );
    }

    #[test]
    fn anthropic_reset_headers() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:57Z"),
            ("anthropic-ratelimit-requests-remaining", "0"),
        ]);
        assert_eq!(
            cooldown_from_headers(&h, NOW),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn escalating_default() {
        let secs: Vec<u64> = (0..9).map(|s| default_cooldown(s).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(default_cooldown(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("429, 401,503").unwrap();
        assert!(s.contains(429) && s.contains(503) && !s.contains(500));
        assert!(StatusSet::parse("42x").is_err());
        assert!(StatusSet::parse("700").is_err());
        assert!(StatusSet::default_for(true).contains(502));
        assert!(!StatusSet::default_for(false).contains(502));
    }
}
