//! Provider reset headers and answers (`src/keys/policy.rs`): headers and a body from the
//! input, classified as the proxy does; cooldowns stay within bounds.
#![no_main]

use api_key_rotator::keys::policy;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "retry-after",
    "x-ratelimit-reset",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "content-type",
    "content-encoding",
];

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let mut headers = HeaderMap::new();
    for (i, line) in head.split(|b| *b == b'\n').enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), v);
        }
    }
    let now = 1_800_000_000_000;
    if let Some(d) = policy::cooldown_from_headers(&headers, now) {
        assert!(d.as_secs() <= 366 * 86_400, "cooldown {d:?}");
    }
    let _ = policy::parse_go_duration(&String::from_utf8_lossy(head));
    let _ = policy::error_codes(body);
    let _ = policy::readable(&headers, body);
    let phrases = vec!["insufficient_quota".to_string()];
    for status in [200u16, 400, 401, 402, 403, 429, 500, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        let _ = policy::classify(status, &headers, Some(body), &phrases, true, now);
        let _ = policy::classify(status, &headers, Some(body), &phrases, false, now);
    }
});
