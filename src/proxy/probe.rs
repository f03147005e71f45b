//! "Test a key": one cheap real upstream call with a given key (`GET models` for LLM
//! services, the configured probe path for generic ones), recorded in the key's health
//! like any proxied answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request};
use serde_json::{Value, json};

use super::health;
use crate::body;
use crate::cache::KeyEvent;
use crate::keys::policy::{self, Verdict};
use crate::service::{ApiFormat, Kind, Placement, ServiceSpec};
use crate::snapshot::Service;
use crate::state::AppState;
use crate::store::{KeyRecord, ServiceRecord};
use crate::timefmt::now_ms;
use crate::upstream::url;

/// Longest a probe waits.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

fn probe_path(spec: &ServiceSpec) -> String {
    let rest = match spec.kind {
        Kind::Generic => spec.probe_path.clone().unwrap_or_default(),
        Kind::Llm(ApiFormat::OpenAi) => "models".into(),
        Kind::Llm(ApiFormat::Anthropic) => "v1/models".into(),
        Kind::Llm(ApiFormat::Gemini) => "v1beta/models".into(),
    };
    match rest.strip_prefix("v1/") {
        Some(r) if spec.upstream.base_path.ends_with("/v1") => r.to_string(),
        _ => rest,
    }
}

fn build(spec: &ServiceSpec, key: &str) -> Result<Request<body::Body>, String> {
    let path = probe_path(spec);
    let (query_path, rest) = match path.split_once('?') {
        Some((p, q)) => (Some(q.to_string()), p.to_string()),
        None => (None, path),
    };
    let inject = match &spec.placement {
        Placement::Query { name } => Some(url::QueryParam { name, value: key }),
        _ => None,
    };
    let uri = url::compose(&spec.upstream, &rest, query_path.as_deref(), &[], inject)
        .and_then(|target| target.to_uri(&spec.upstream))
        .map_err(|e| e.to_string())?;
    let mut req = Request::get(uri)
        .body(body::empty())
        .map_err(|e| e.to_string())?;
    if let Placement::Header { name, bearer } = &spec.placement {
        let text = if *bearer {
            format!("Bearer {key}")
        } else {
            key.to_string()
        };
        let mut v = HeaderValue::from_str(&text)
            .map_err(|_| "the key is not a valid header value".to_string())?;
        v.set_sensitive(true);
        req.headers_mut().insert(name, v);
    }
    if spec.kind == Kind::Llm(ApiFormat::Anthropic) {
        req.headers_mut()
            .insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    Ok(req)
}

/// What one probe call found.
pub(super) struct Probed {
    pub status: Option<http::StatusCode>,
    pub verdict: Option<Verdict>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Calls the upstream with `secret` on the probe path and judges the answer; the whole
/// call, body included, within `PROBE_TIMEOUT` (or `PROXY_TIMEOUT` when shorter).
pub(super) async fn call(
    pool: &std::sync::Arc<crate::upstream::Pool>,
    spec: &ServiceSpec,
    secret: &str,
    limit: Duration,
    phrases: &[String],
) -> Probed {
    let failed = |latency_ms, error: String| Probed {
        status: None,
        verdict: None,
        latency_ms,
        error: Some(error),
    };
    let req = match build(spec, secret) {
        Ok(r) => r,
        Err(e) => return failed(0, e),
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let answer = tokio::time::timeout_at(deadline, pool.send(req)).await;
    let resp = match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let ms = started.elapsed().as_millis() as u64;
            return failed(ms, format!("upstream unreachable: {}", e.describe()));
        }
        Err(_) => {
            let ms = started.elapsed().as_millis() as u64;
            return failed(ms, "upstream did not answer in time".into());
        }
    };
    let (parts, incoming) = resp.into_parts();
    let prefix = body::read_prefix(incoming, 64 * 1024, deadline).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let llm = matches!(spec.kind, Kind::Llm(_));
    let verdict = policy::classify(
        parts.status,
        &parts.headers,
        Some(&prefix.bytes),
        phrases,
        llm,
        now_ms(),
    );
    let error = match (&verdict, &prefix.rest) {
        (Verdict::Success, body::Tail::Failed(e)) => Some(format!("the answer broke off: {e}")),
        (Verdict::Success, _) => None,
        (Verdict::Invalid(reason) | Verdict::Suspect(reason), _) => Some(reason.clone()),
        _ => Some(format!("upstream answered {}", parts.status.as_u16())),
    };
    Probed {
        status: Some(parts.status),
        verdict: Some(verdict),
        latency_ms,
        error,
    }
}

/// Calls the upstream with `key` and records the outcome. Answers
/// `{"ok", "status", "latency_ms", "error"}`.
pub async fn probe_key(
    state: &AppState,
    service: &ServiceRecord,
    spec: &ServiceSpec,
    key: &KeyRecord,
) -> Value {
    let pool = state.upstreams.pool(&spec.upstream);
    let limit = PROBE_TIMEOUT.min(state.config.proxy_timeout);
    let p = call(
        &pool,
        spec,
        &key.key_value,
        limit,
        &state.config.invalid_key_phrases,
    )
    .await;
    if let (Some(status), Some(verdict)) = (p.status, &p.verdict) {
        record(state, service.id, key.id, status, verdict);
    }
    json!({
        "ok": p.error.is_none() && p.verdict == Some(Verdict::Success),
        "status": p.status.map(|s| s.as_u16()),
        "latency_ms": p.latency_ms,
        "error": p.error,
    })
}

/// A generic service's key answered 401/403 to a client's request: probes it (off the
/// request path, one probe per key at a time) on the service's probe path, which no
/// client chooses. Denied there too: the key is bad, and marked invalid. Answered well:
/// its cooldown ends.
pub fn confirm(state: &AppState, svc: Arc<Service>, idx: usize) {
    let key = &svc.pool.keys()[idx];
    if !key.rt.start_probe() {
        return;
    }
    let store = state.store.clone();
    let cache = state.cache.clone();
    let phrases = state.config.invalid_key_phrases.clone();
    let limit = PROBE_TIMEOUT.min(state.config.proxy_timeout);
    tokio::spawn(async move {
        let key = &svc.pool.keys()[idx];
        let p = call(&svc.conns, &svc.spec, &key.secret, limit, &phrases).await;
        key.rt.end_probe();
        let now = now_ms();
        match p.verdict {
            Some(Verdict::Suspect(reason) | Verdict::Invalid(reason)) => {
                let reason = format!("{reason} (to the probe path too)");
                mark_invalid(&*store, &cache, &svc, idx, &reason, now).await;
            }
            Some(Verdict::Success) => {
                key.rt.clear_cooldown();
                back_in_rotation(&cache, &svc, idx, now);
            }
            // Down, rate limited, or a probe path that does not fit: the cooldown runs on.
            _ => crate::log::debug!(
                "service '{}': probe of key id {} settled nothing ({:?})",
                svc.slug,
                key.id,
                p.error
            ),
        }
    });
}

/// A probe found the key refused: marked invalid here, saved, then announced to other
/// instances (which read the mark from the store).
pub(super) async fn mark_invalid(
    store: &dyn crate::store::Store,
    cache: &crate::cache::Cache,
    svc: &Service,
    idx: usize,
    reason: &str,
    now: u64,
) {
    let key = &svc.pool.keys()[idx];
    health::invalidate(svc, idx, reason, now);
    health::save_invalid(store, cache, svc.id, key.id, key.rt.health(now)).await;
}

/// A probe found the key good (its runtime already cleared): usable again here, and
/// announced to other instances.
pub(super) fn back_in_rotation(cache: &crate::cache::Cache, svc: &Service, idx: usize, now: u64) {
    let key = &svc.pool.keys()[idx];
    svc.pool.refresh(idx, now);
    crate::log::info!(
        "service '{}': key id {} answered the probe path well: back in rotation",
        svc.slug,
        key.id
    );
    cache.publish_key_event(KeyEvent::Reset {
        service_id: svc.id,
        key_id: key.id,
    });
}

/// Applies a verdict to the key: through its pool when the key is being served, else to
/// its runtime alone.
fn record(
    state: &AppState,
    service_id: i64,
    key_id: i64,
    status: http::StatusCode,
    verdict: &Verdict,
) {
    let snap = state.snapshot.load();
    if let Some((svc, idx)) = snap.find_key(service_id, key_id) {
        // An admin's test changes the key whatever it says.
        let mut may_change = true;
        let key = &svc.pool.keys()[idx];
        // The admin asked: a denial on the probe path is the key's.
        let verdict = match verdict {
            Verdict::Suspect(reason) => Verdict::Invalid(reason.clone()),
            v => v.clone(),
        };
        health::apply(
            state,
            svc,
            idx,
            key,
            status,
            &verdict,
            now_ms(),
            &mut may_change,
        );
        return;
    }
    let Some(rt) = state.registry.get(key_id) else {
        return;
    };
    let now = now_ms();
    match verdict {
        Verdict::Success | Verdict::ClientFault => {
            rt.record(now, Some(status.as_u16()), true, None)
        }
        Verdict::Invalid(reason) | Verdict::Suspect(reason) => {
            rt.record(now, Some(status.as_u16()), false, Some(reason));
            rt.invalidate(reason, now);
            let (store, health) = (state.store.clone(), rt.health(now));
            tokio::spawn(async move {
                if let Err(e) = store.set_key_health(key_id, health).await {
                    crate::log::error!("could not save the invalid mark of key id {key_id}: {e}");
                }
            });
        }
        _ => rt.record(
            now,
            Some(status.as_u16()),
            false,
            Some(&format!("upstream answered {}", status.as_u16())),
        ),
    }
}
