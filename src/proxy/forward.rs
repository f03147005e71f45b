//! Sending a request upstream: pick a key, send, judge the answer, fail over to the next
//! usable key while nothing has gone to the client, then stream the answer back.
//!
//! Failover is only possible before response headers go downstream; once they have,
//! the body streams frame by frame and a failure can only cut the stream.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::client::{RequestRef, SendError};
use super::{Outgoing, cors, headers};
use crate::app::AppState;
use crate::body::{self, Body, Buffered};
use crate::cache::KeyEvent;
use crate::deadline;
use crate::error::ApiError;
use crate::keys::policy::{self, Verdict};
use crate::keys::{Pick, PoolKey};
use crate::service::{Kind, Placement};
use crate::snapshot::Service;
use crate::timefmt::now_ms;

/// Most of an error body read to look for dead-key phrases or to keep for replay.
const ERROR_PEEK: usize = 64 * 1024;
/// Attempts at most (1 + the largest `max_retries`).
const MAX_ATTEMPTS: usize = crate::service::MAX_RETRIES_LIMIT as usize + 1;

/// Forwards `out` to the service, with failover. Returns the upstream's answer (the last
/// one when every attempt failed) or an error the proxy made itself.
pub async fn run(
    state: &AppState,
    svc: &Arc<Service>,
    mut out: Outgoing,
) -> Result<Response<Body>, ApiError> {
    let max_attempts = if out.body.replayable() {
        1 + svc.spec.retry.max_retries as usize
    } else {
        1
    };
    let mut tried = [0i64; MAX_ATTEMPTS];
    // What to answer if every attempt fails: the last upstream answer, else the last
    // connection error.
    let mut last_failure: Option<Response<Body>> = None;
    let mut last_error: Option<ApiError> = None;
    // One rotation ticket per request (one Redis round trip at most); a failover walks on
    // from it, skipping the keys already tried.
    let ticket = state.cache.ticket(svc).await;
    // Read once: the first attempt's send time starts the deadline.
    let started = Instant::now();
    let deadline = started + state.config.proxy_timeout;
    for attempt in 1..=max_attempts {
        let now = now_ms();
        let (idx, key) = match svc.pool.pick(ticket, &tried[..attempt - 1], now) {
            Pick::Key(idx, key) => (idx, key),
            Pick::Empty => return Err(no_keys()),
            Pick::AllDown { retry_after_ms } if attempt == 1 => {
                return Err(all_down(retry_after_ms, now));
            }
            Pick::AllDown { .. } => break,
        };
        tried[attempt - 1] = key.id;
        if attempt > 1 {
            svc.metrics.retry();
        }
        let is_last = attempt == max_attempts;
        // The request goes by reference: the client's headers stay here for the next
        // attempt, and the key is written over any header of the same name.
        let body = out.body.take();
        let target = out.target(svc, &key.secret)?;
        let extra = match (&svc.spec.placement, key.header.as_ref()) {
            (Placement::Header { name, .. }, Some(value)) => Some((name, value)),
            _ => None,
        };
        let head = RequestRef {
            method: &out.method,
            target: target.as_str(),
            headers: &out.headers,
            rewrite: out.rewrite,
            extra,
        };
        let sent = if attempt == 1 {
            started
        } else {
            Instant::now()
        };
        let send = std::pin::pin!(svc.conns.send_head(head, body));
        let resp = match deadline::timeout_at(deadline, send).await {
            Err(_) => {
                key.rt.record(now, None, false, Some("upstream timed out"));
                svc.metrics.response(504);
                return Err(ApiError::proxy(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "upstream did not answer within {} s",
                        state.config.proxy_timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(Err(e)) => {
                let reason = describe(&e);
                key.rt.record(now, None, false, Some(&reason));
                last_error = Some(ApiError::proxy(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unreachable: {reason}"),
                ));
                continue;
            }
            Ok(Ok(resp)) => resp,
        };
        let waited = sent.elapsed();
        svc.metrics.upstream_latency(waited);
        let status = resp.status();
        // The time of the answer (the start of a cooldown, the last use of the key): the
        // wall time read before sending plus the wait, one clock read fewer.
        let answered = now + waited.as_millis() as u64;
        let (resp, verdict) = judge(state, svc, resp, deadline, answered).await;
        apply(state, svc, idx, key, status, &verdict, answered);
        let retry =
            !verdict.is_success() && svc.spec.retry.on.contains(status.as_u16()) && !is_last;
        if !retry {
            return Ok(finish(state, svc, resp, attempt, out.cors));
        }
        crate::debug!(
            "service '{}': key id {} answered {}; trying another key",
            svc.slug,
            key.id,
            status.as_u16()
        );
        last_failure = Some(resp);
        last_error = None;
    }
    let attempts = tried.iter().filter(|id| **id != 0).count();
    match (last_failure, last_error) {
        (Some(resp), _) => Ok(finish(state, svc, resp, attempts, out.cors)),
        (None, Some(err)) => {
            svc.metrics.response(err.status.as_u16());
            Err(err)
        }
        (None, None) => Err(no_keys()),
    }
}

fn no_keys() -> ApiError {
    ApiError::proxy(
        StatusCode::SERVICE_UNAVAILABLE,
        "no active API keys for this service",
    )
}

fn all_down(retry_after_ms: Option<u64>, now: u64) -> ApiError {
    let err = ApiError::proxy(
        StatusCode::SERVICE_UNAVAILABLE,
        "every API key of this service is cooling down or invalid",
    );
    match retry_after_ms {
        Some(at) => err.with_retry_after(at.saturating_sub(now).div_ceil(1000)),
        None => err,
    }
}

/// Describes a client error by its causes (never a URL or header: no key can be in it).
pub fn describe(e: &SendError) -> String {
    let mut parts = vec![if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    }];
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    loop {
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        let Some(s) = source else { break };
        text = s.to_string();
        source = s.source();
    }
    parts.join(": ")
}

/// Classifies an answer. For LLM services, the beginning of an error body is read to
/// look for dead-key phrases; the body the client gets is unchanged. `now` (Unix ms) is
/// when the answer came, for a `Retry-After` date.
async fn judge(
    state: &AppState,
    svc: &Service,
    resp: Response<Body>,
    deadline: Instant,
    now: u64,
) -> (Response<Body>, Verdict) {
    let status = resp.status();
    let peek =
        matches!(svc.spec.kind, Kind::Llm(_)) && matches!(status.as_u16(), 400 | 402 | 403 | 429);
    let (parts, incoming) = resp.into_parts();
    if !peek {
        let verdict = policy::classify(
            status,
            &parts.headers,
            None,
            &state.config.invalid_key_phrases,
            now,
        );
        return (Response::from_parts(parts, incoming), verdict);
    }
    let read = std::pin::pin!(body::read_up_to(incoming, ERROR_PEEK));
    let read = deadline::timeout_at(deadline, read).await;
    let (body, head) = match read {
        Ok(Ok(Buffered::Complete(b))) => (body::full(b.clone()), b),
        Ok(Ok(Buffered::Partial(b, rest))) => (body::chain(b.clone(), rest), b),
        _ => (body::empty(), Bytes::new()),
    };
    let verdict = policy::classify(
        status,
        &parts.headers,
        Some(&head),
        &state.config.invalid_key_phrases,
        now,
    );
    (Response::from_parts(parts, body), verdict)
}

/// Records the answer (at `now`, Unix ms) in the key's health and counters, and shares
/// changes.
pub fn apply(
    state: &AppState,
    svc: &Service,
    idx: usize,
    key: &PoolKey,
    status: StatusCode,
    verdict: &Verdict,
    now: u64,
) {
    let code = Some(status.as_u16());
    match verdict {
        Verdict::Success | Verdict::ClientFault => key.rt.record(now, code, true, None),
        Verdict::ServerError => key.rt.record(
            now,
            code,
            false,
            Some(&format!("upstream answered {}", status.as_u16())),
        ),
        Verdict::RateLimited(wait) => {
            key.rt.record(
                now,
                code,
                false,
                Some("upstream answered 429 (rate limited)"),
            );
            let wait = wait.unwrap_or_else(|| policy::default_cooldown(key.rt.strikes()));
            let until = now + wait.as_millis() as u64;
            key.rt.cool_until(until);
            svc.pool.refresh(idx, now);
            crate::info!(
                "service '{}': key id {} cooling down for {:.0} s",
                svc.slug,
                key.id,
                wait.as_secs_f64().ceil()
            );
            state.cache.publish_key_event(KeyEvent::Cooldown {
                service_id: svc.id,
                key_id: key.id,
                until_ms: until,
            });
        }
        Verdict::Invalid(reason) => {
            key.rt.record(now, code, false, Some(reason));
            key.rt.invalidate(reason, now);
            svc.pool.refresh(idx, now);
            crate::warn!(
                "service '{}': key id {} marked invalid ({reason})",
                svc.slug,
                key.id
            );
            persist_invalid(state, svc.id, key);
        }
    }
}

/// Writes an invalid mark to the store (off the request path), then tells other instances.
fn persist_invalid(state: &AppState, service_id: i64, key: &PoolKey) {
    let health = key.rt.health(now_ms());
    let store = state.store.clone();
    let cache = state.cache.clone();
    let key_id = key.id;
    tokio::spawn(async move {
        match store.set_key_health(key_id, health).await {
            Ok(()) => cache.publish_key_event(KeyEvent::Invalid { service_id, key_id }),
            Err(e) => crate::error!("could not save the invalid mark of key id {key_id}: {e}"),
        }
    });
}

/// Whether a `Content-Type` is a stream of events or of JSON lines (SSE, NDJSON), which
/// a buffering reverse proxy in front must pass on as it comes. Byte windows, not
/// `str::contains`: its substring searcher costs more to set up than this whole check
/// (1.4 % of a proxied request's instructions).
fn is_stream_type(ct: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    ct.get(..SSE.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
        // (The first byte alone rules out most windows.)
        || ct
            .windows(6)
            .any(|w| w[0] | 0x20 == b'n' && w.eq_ignore_ascii_case(b"ndjson"))
}

/// Turns an upstream answer into the client's: hop-by-hop headers out, CORS in, the
/// attempt count when there was more than one, `X-Accel-Buffering: no` on event streams,
/// and a body that streams frame by frame.
fn finish(
    state: &AppState,
    svc: &Service,
    resp: Response<Body>,
    attempts: usize,
    cors: bool,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if cors {
        cors::add_response_headers(&mut parts.headers);
    }
    if attempts > 1 {
        parts
            .headers
            .insert("x-rotator-attempts", HeaderValue::from(attempts));
    }
    let streaming = headers::find(&parts.headers, &CONTENT_TYPE)
        .is_some_and(|ct| is_stream_type(ct.as_bytes()));
    if streaming {
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    svc.metrics.response(parts.status.as_u16());
    // Counted in the open-streams gauge while the body lives.
    let gauge = state.metrics.open_streams.clone();
    gauge.fetch_add(1, Relaxed);
    let body = body::watch(body, move |_, _| {
        gauge.fetch_sub(1, Relaxed);
    });
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::is_stream_type;

    #[test]
    fn event_streams_and_json_lines_are_streams_whatever_the_case() {
        for ct in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "Text/Event-Stream",
            "application/x-ndjson",
            "application/NDJSON; charset=utf-8",
        ] {
            assert!(is_stream_type(ct.as_bytes()), "{ct}");
        }
        for ct in ["application/json", "text/plain", "text/event", "", "ndjso"] {
            assert!(!is_stream_type(ct.as_bytes()), "{ct}");
        }
    }
}
