//! Paths and the upstream URL (`src/upstream/url.rs`): an upstream parsed from any text,
//! a client path checked and composed onto it; what composes is a valid URI.
#![no_main]

use api_key_rotator::upstream::url::{
    QueryParam, Upstream, check_http_url, check_rest, compose, percent_decode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (base, rest, query) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    // The client's path and query arrive parsed by the server (http::Uri), as here.
    let Ok(client) = format!(
        "/{rest}{}",
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
    .parse::<http::uri::PathAndQuery>() else {
        return;
    };
    let (rest, query) = (&client.path()[1..], client.query());
    let _ = percent_decode(rest.as_bytes());
    // Only what the admin API would store (it checks the URL first).
    if check_http_url(base).is_err() {
        return;
    }
    let Ok(up) = Upstream::parse(base) else {
        return;
    };
    if check_rest(rest).is_err() {
        return;
    }
    let inject = Some(QueryParam {
        name: "key",
        value: "k&=?#",
    });
    if let Ok(target) = compose(&up, rest, query, &[], inject) {
        let uri = target.to_uri(&up).expect("a composed target is a URI");
        assert!(uri.path().starts_with('/'), "{uri}");
    }
});
