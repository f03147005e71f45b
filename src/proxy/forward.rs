//! Sending a request upstream: pick a key, send, judge the answer, fail over to the next
//! usable key while nothing has gone to the client, then stream the answer back.
//!
//! Failover is only possible before response headers go downstream; once they have,
//! the body streams frame by frame and a failure can only cut the stream. A request the
//! upstream may have received is never sent again with another key unless its method is
//! idempotent (a POST to an LLM is billed each time), and one client request changes the
//! state of one key at most, however many keys it tries.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use tokio::time::Instant;

use super::health::{self, Follow};
use super::{Outgoing, redact};
use crate::body::{self, Body, Prefix, Tail};
use crate::cors;
use crate::deadline;
use crate::error::ApiError;
use crate::headers;
use crate::keys::policy::{self, Verdict};
use crate::keys::{Pick, PoolKey};
use crate::service::{Kind, Placement};
use crate::snapshot::Service;
use crate::state::AppState;
use crate::timefmt::now_ms;
use crate::upstream::{RequestRef, SendError};
use crate::usage::Trace;

/// Most of an error body read to judge it, to mask the key in it, or to keep for replay.
const ERROR_PEEK: usize = 64 * 1024;
/// Attempts at most (1 + the largest `max_retries`).
const MAX_ATTEMPTS: usize = crate::service::MAX_RETRIES_LIMIT as usize + 1;

/// Forwards `out` to the service, with failover. Returns the upstream's answer (the last
/// one when every attempt failed) or an error the proxy made itself. `trace`, when usage
/// insight is on, gets each attempt and the time to the final answer.
pub async fn run(
    state: &AppState,
    svc: &Arc<Service>,
    mut out: Outgoing,
    mut trace: Option<&mut Trace>,
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
    // Whether this request may still change a key's state.
    let mut may_change = true;
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
        let sent = if attempt == 1 {
            started
        } else {
            Instant::now()
        };
        let sent_result = send(svc, &mut out, key, deadline).await?;
        if let Some(t) = trace.as_deref_mut() {
            let status = sent_result.as_ref().map_or(0, |r| r.status().as_u16());
            t.attempt(key.id, &key.secret, status);
            t.latency = Some(started.elapsed());
        }
        let resp = match sent_result {
            Ok(resp) => resp,
            Err(Failed::TimedOut) => {
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
            Err(Failed::Send(SendError::ClientBody(e))) => {
                // The client's own body failed: nothing about the key.
                return Err(ApiError::proxy(
                    StatusCode::BAD_REQUEST,
                    format!("request body could not be read: {e}"),
                ));
            }
            Err(Failed::Send(e)) => {
                let reason = e.describe();
                key.rt.record(now, None, false, Some(&reason));
                last_error = Some(ApiError::proxy(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unreachable: {reason}"),
                ));
                if e.may_have_been_received() && !idempotent(&out.method) {
                    // The upstream may have acted on it: never sent twice.
                    break;
                }
                continue;
            }
        };
        let waited = sent.elapsed();
        svc.metrics.upstream_latency(waited);
        let status = resp.status();
        // The time of the answer (the start of a cooldown, the last use of the key): the
        // wall time read before sending plus the wait, one clock read fewer.
        let answered = now + waited.as_millis() as u64;
        let (resp, verdict) = judge(state, svc, resp, key, deadline, answered).await;
        let follow = health::apply(
            state,
            svc,
            idx,
            key,
            status,
            &verdict,
            answered,
            &mut may_change,
        );
        if follow == Follow::Probe {
            super::probe::confirm(state, svc.clone(), idx);
        }
        let retry =
            !verdict.is_success() && svc.spec.retry.on.contains(status.as_u16()) && !is_last;
        if !retry {
            return Ok(finish(state, svc, resp, attempt, out.cors));
        }
        crate::log::debug!(
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

/// Why an attempt got no answer.
enum Failed {
    TimedOut,
    Send(SendError),
}

/// One attempt with `key`. A pooled connection that failed before any answer (most
/// likely closed by the upstream while idle) is tried once more on a fresh connection,
/// with the same key and without counting against it, when the request can be sent
/// again: its body is kept, and either nothing of it was written or its method is
/// idempotent.
async fn send(
    svc: &Service,
    out: &mut Outgoing,
    key: &PoolKey,
    deadline: Instant,
) -> Result<Result<Response<Body>, Failed>, ApiError> {
    let mut fresh = false;
    loop {
        // The request goes by reference: the client's headers stay here for the next
        // attempt, and the key is written over any header of the same name.
        let body = out.body.take();
        let target = out.target(svc, &key.secret)?;
        let key_header = match (&svc.spec.placement, key.secret.header()) {
            (Placement::Header { name, .. }, Some(value)) => Some((name, value)),
            _ => None,
        };
        let (extra, n) = out.extra_headers(key_header);
        let head = RequestRef {
            method: &out.method,
            target: target.as_str(),
            headers: &out.headers,
            rewrite: out.rewrite,
            extra: &extra[..n],
        };
        let sending = std::pin::pin!(svc.conns.send_head(head, body, fresh));
        let e = match deadline::timeout_at(deadline, sending).await {
            Err(_) => return Ok(Err(Failed::TimedOut)),
            Ok(Ok(resp)) => return Ok(Ok(resp)),
            Ok(Err(e)) => e,
        };
        let again = !fresh
            && e.is_stale_connection()
            && out.body.replayable()
            && (!e.may_have_been_received() || idempotent(&out.method));
        if !again {
            return Ok(Err(Failed::Send(e)));
        }
        crate::log::debug!(
            "service '{}': a pooled connection failed ({}); again on a fresh one",
            svc.slug,
            e.describe()
        );
        fresh = true;
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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

/// Classifies an answer and takes the key out of it. For answers that are not 2xx, the
/// beginning of the body is read (LLM error codes are looked up in it; the key is masked
/// in it); the client gets that body whole, or, when it broke off or stalled while being
/// read, a 502 that says so: never a short body that looks complete. `now` (Unix ms) is
/// when the answer came, for a `Retry-After` date.
async fn judge(
    state: &AppState,
    svc: &Service,
    resp: Response<Body>,
    key: &PoolKey,
    deadline: Instant,
    now: u64,
) -> (Response<Body>, Verdict) {
    let status = resp.status();
    let llm = matches!(svc.spec.kind, Kind::Llm(_));
    let phrases = &state.config.invalid_key_phrases;
    let (mut parts, incoming) = resp.into_parts();
    let error_answer = status.as_u16() >= 300 && status != StatusCode::NOT_MODIFIED;
    redact::headers(&mut parts.headers, &key.secret, error_answer);
    if !error_answer {
        let verdict = policy::classify(status, &parts.headers, None, phrases, llm, now);
        return (Response::from_parts(parts, incoming), verdict);
    }
    let prefix = body::read_prefix(incoming, ERROR_PEEK, deadline).await;
    let verdict = policy::classify(
        status,
        &parts.headers,
        Some(&prefix.bytes),
        phrases,
        llm,
        now,
    );
    if let Tail::Failed(e) = &prefix.rest {
        // Nothing went to the client yet: say what happened rather than pass on a short
        // body that would look complete.
        let read = prefix.bytes.len();
        let err = ApiError::proxy(
            StatusCode::BAD_GATEWAY,
            format!(
                "the upstream's {} answer broke off after {read} bytes: {e}",
                status.as_u16()
            ),
        );
        return (err.into_response(), verdict);
    }
    let complete = matches!(prefix.rest, Tail::End);
    let prefix = match redact::body(&mut parts.headers, &prefix.bytes, complete, &key.secret) {
        Some(bytes) => Prefix {
            bytes,
            rest: prefix.rest,
        },
        None => prefix,
    };
    (Response::from_parts(parts, prefix.into_body()), verdict)
}

/// Whether a `Content-Type` is a stream of events or of JSON lines (SSE, NDJSON), which
/// a buffering reverse proxy in front must pass on as it comes. Byte windows, not
/// `str::contains`: its substring searcher costs more to set up than this whole check
/// (1.4 % of a proxied request's instructions: docs/BENCHMARKS.md).
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
    let idle = svc
        .spec
        .idle_timeout
        .unwrap_or(state.config.upstream_idle_timeout);
    let body = match idle.is_zero() {
        true => body,
        false => body::idle_timeout(body, idle),
    };
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
