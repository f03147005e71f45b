//! The request entry point, on top of everything: route, dispatch to a handler (proxy,
//! admin, status, static files), turn errors into responses (in one place:
//! [`ApiError::into_response`]), write the access log line.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{Body, End};
use crate::error::ApiError;
use crate::proxy::{self, Flavor};
use crate::router::{self, Route};
use crate::state::AppState;
use crate::status;
use crate::usage::{Recorder, Trace};

/// Handles one request. Never fails: errors are already responses here.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Behind a trusted reverse proxy, the client is the one it names.
    let client = match state.config.trusted_proxies.any() {
        true => state
            .config
            .trusted_proxies
            .client(peer.ip(), req.headers()),
        false => peer.ip(),
    };
    if !crate::log::enabled(crate::log::Level::Info) {
        return Ok(dispatch(&state, peer.ip(), client, req)
            .await
            .unwrap_or_else(ApiError::into_response));
    }
    let line = AccessLine {
        start: Instant::now(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        client,
        status: StatusCode::OK,
    };
    let resp = dispatch(&state, peer.ip(), client, req)
        .await
        .unwrap_or_else(ApiError::into_response);
    Ok(AccessLine {
        status: resp.status(),
        ..line
    }
    .attach(resp))
}

/// Routes a request from `peer` (the connection's address) for `client` (the same, or
/// the address a trusted proxy reports).
async fn dispatch(
    state: &Arc<AppState>,
    peer: IpAddr,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match router::route(req.uri().path()) {
        // Boxed: hyper keeps the space of the service's future for as long as the
        // connection lives, and the proxy's is several KiB that an open stream would
        // otherwise hold for nothing (one allocation per request instead).
        Route::Proxy { .. } => Ok(proxied(state, peer, client, req, Flavor::Generic).await),
        Route::Llm { .. } => Ok(proxied(state, peer, client, req, Flavor::Llm).await),
        // Boxed, as the proxy's: their futures hold database calls.
        Route::Admin(_) => Box::pin(crate::admin::handle(state, client, req)).await,
        Route::Health => Box::pin(status::health(state, req.method())).await,
        Route::Metrics => status::metrics(state, &req),
        Route::ApiNotFound => Err(ApiError::not_found("Route not found")),
        Route::Index | Route::PageFallback => crate::static_files::page(req.method()),
        Route::Asset(name) => crate::static_files::asset(req.method(), name),
    }
}

/// A proxy route: the request traced (`X-Request-Id` given or made, returned, sent
/// upstream) and, once it reached a service, recorded when its answer ends (usage
/// insight). With `USAGE_TRACKING=off`, none of it.
async fn proxied(
    state: &Arc<AppState>,
    peer: IpAddr,
    client: IpAddr,
    req: Request<Incoming>,
    flavor: Flavor,
) -> Response<Body> {
    let Some(usage) = &state.usage else {
        // Boxed: hyper keeps the space of the service's future for as long as the
        // connection lives, and the proxy's is several KiB that an open stream would
        // otherwise hold for nothing (one allocation per request instead).
        let handled = Box::pin(proxy::handle(state, peer, req, flavor, None)).await;
        return handled.unwrap_or_else(ApiError::into_response);
    };
    let request_id = request_id(req.headers());
    let mut trace = Trace::new(
        Instant::now(),
        crate::timefmt::now_ms(),
        request_id,
        req.method().clone(),
        req.uri().path(),
        client,
    );
    let handled = Box::pin(proxy::handle(state, peer, req, flavor, Some(&mut trace))).await;
    let mut resp = handled.unwrap_or_else(ApiError::into_response);
    // The upstream's own id (OpenAI's `req_…`, which its SDK reads) stays; ours is always
    // in `X-Rotator-Request-Id`, and in `X-Request-Id` when the upstream sent none.
    // Moved out of the trace: the log keeps its text.
    let id = std::mem::replace(&mut trace.request_id, http::HeaderValue::from_static(""));
    let h = resp.headers_mut();
    h.entry(&X_REQUEST_ID).or_insert_with(|| id.clone());
    h.insert(&X_ROTATOR_REQUEST_ID, id);
    if trace.service.is_none() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = Recorder::attach(usage.clone(), trace, &parts, body);
    Response::from_parts(parts, body)
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static X_ROTATOR_REQUEST_ID: http::HeaderName =
    http::HeaderName::from_static("x-rotator-request-id");

/// The client's `X-Request-Id` when it is sane (1–128 characters of letters, digits and
/// `-_.:/+=`), else a new one: the time, the shard and a counter, in hex.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    let sane = |v: &&http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=".contains(c))
    };
    if let Some(v) = crate::headers::find(headers, &X_REQUEST_ID).filter(sane) {
        // A copy, not a clone: see `Trace::path`.
        return http::HeaderValue::from_bytes(v.as_bytes()).expect("checked above");
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut text = [0u8; 20];
    hex(&mut text[..11], crate::timefmt::now_ms());
    hex(&mut text[11..13], crate::shard::current() as u64);
    hex(&mut text[13..], n);
    // Shared without a copy: the value goes to the trace, the answer and the upstream.
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("hex is a header value")
}

/// Writes the low `out.len()` hex digits of `n` into `out`.
fn hex(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The access log line of one request, written when its response body ends (or is
/// dropped, or fails). Client address, method, path without the query string, status,
/// duration, bytes: never a query string, never a header value. Every field is escaped
/// by the logger, so a client's path cannot fake a line.
struct AccessLine {
    start: Instant,
    method: Method,
    path: String,
    client: IpAddr,
    status: StatusCode,
}

impl AccessLine {
    fn attach(self, resp: Response<Body>) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let body = crate::body::watch(body, move |bytes, end| self.write(bytes, end));
        Response::from_parts(parts, body)
    }

    fn write(self, bytes: u64, end: End) {
        // A body that broke off is an error, whatever its status said.
        let level = match end {
            End::Failed(_) => crate::log::Level::Warn,
            _ => crate::log::Level::Info,
        };
        if crate::log::enabled(level) {
            let us = self.start.elapsed().as_micros() as u64;
            crate::log::write_with(level, |line| self.format(line, us, bytes, &end));
        }
    }

    /// `<client> <method> <path> <status> <ms>.<µs>ms <bytes>B[ (…)]`, appended part by
    /// part (no `core::fmt`: this runs on every request).
    fn format(&self, line: &mut Vec<u8>, us: u64, bytes: u64, end: &End) {
        use crate::log::push_decimal;
        match self.client {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        line.push(b'.');
                    }
                    push_decimal(line, u64::from(octet), 1);
                }
            }
            ip @ IpAddr::V6(_) => {
                use std::io::Write as _;
                let _ = write!(line, "{ip}");
            }
        }
        for part in [" ", self.method.as_str(), " ", &self.path, " "] {
            line.extend_from_slice(part.as_bytes());
        }
        push_decimal(line, u64::from(self.status.as_u16()), 3);
        line.push(b' ');
        push_decimal(line, us / 1000, 1);
        line.push(b'.');
        push_decimal(line, us % 1000, 3);
        line.extend_from_slice(b"ms ");
        push_decimal(line, bytes, 1);
        line.push(b'B');
        match end {
            End::Complete => {}
            End::ClientGone => line.extend_from_slice(b" (client went away)"),
            End::Failed(cause) => {
                line.extend_from_slice(b" (body cut: ");
                line.extend_from_slice(cause.as_bytes());
                line.push(b')');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(client: &str, status: u16, us: u64, bytes: u64, end: End) -> String {
        let access = AccessLine {
            start: Instant::now(),
            method: Method::POST,
            path: "/llm/openai/v1/chat/completions".into(),
            client: client.parse().unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
        };
        let mut text = Vec::new();
        access.format(&mut text, us, bytes, &end);
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn the_access_line_has_its_parts_in_order() {
        assert_eq!(
            line("203.0.113.7", 200, 1_234_567, 512, End::Complete),
            "203.0.113.7 POST /llm/openai/v1/chat/completions 200 1234.567ms 512B"
        );
        assert_eq!(
            line("10.0.0.1", 502, 45, 0, End::ClientGone),
            "10.0.0.1 POST /llm/openai/v1/chat/completions 502 0.045ms 0B (client went away)"
        );
        assert_eq!(
            line("2001:db8::1", 429, 1000, 99, End::Complete),
            "2001:db8::1 POST /llm/openai/v1/chat/completions 429 1.000ms 99B"
        );
        assert_eq!(
            line(
                "10.0.0.1",
                200,
                1000,
                3,
                End::Failed("connection closed mid-body".into())
            ),
            "10.0.0.1 POST /llm/openai/v1/chat/completions 200 1.000ms 3B (body cut: connection closed mid-body)"
        );
    }
}
