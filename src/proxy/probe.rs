//! "Test a key": one cheap real upstream call with a given key (`GET models` for LLM
//! services, the configured probe path for generic ones), recorded in the key's health
//! like any proxied answer.

use std::time::{Duration, Instant};

use http::{HeaderValue, Request};
use serde_json::{Value, json};

use super::{forward, url};
use crate::app::AppState;
use crate::body;
use crate::keys::policy::{self, Verdict};
use crate::service::{ApiFormat, Kind, Placement, ServiceSpec};
use crate::store::{KeyRecord, ServiceRecord};
use crate::timefmt::now_ms;

/// Longest a probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Calls the upstream with `key` and records the outcome. Answers
/// `{"ok", "status", "latency_ms", "error"}`.
pub async fn probe_key(
    state: &AppState,
    service: &ServiceRecord,
    spec: &ServiceSpec,
    key: &KeyRecord,
) -> Value {
    let req = match build(spec, &key.key_value) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "status": null, "latency_ms": 0, "error": e}),
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT.min(state.config.proxy_timeout),
        state.upstreams.pool(&spec.upstream).send(req),
    )
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let resp = match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return json!({"ok": false, "status": null, "latency_ms": latency_ms, "error": format!("upstream unreachable: {}", forward::describe(&e))});
        }
        Err(_) => {
            return json!({"ok": false, "status": null, "latency_ms": latency_ms, "error": "upstream did not answer in time"});
        }
    };
    let (parts, incoming) = resp.into_parts();
    let head = match body::read_up_to(incoming, 64 * 1024).await {
        Ok(body::Buffered::Complete(b) | body::Buffered::Partial(b, _)) => b,
        Err(_) => Default::default(),
    };
    let verdict = policy::classify(
        parts.status,
        &parts.headers,
        Some(&head),
        &state.config.invalid_key_phrases,
        now_ms(),
    );
    record(state, service.id, key.id, parts.status, &verdict);
    let error = match &verdict {
        Verdict::Success => None,
        Verdict::Invalid(reason) => Some(reason.clone()),
        _ => Some(format!("upstream answered {}", parts.status.as_u16())),
    };
    json!({
        "ok": verdict == Verdict::Success,
        "status": parts.status.as_u16(),
        "latency_ms": latency_ms,
        "error": error,
    })
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
        forward::apply(
            state,
            svc,
            idx,
            &svc.pool.keys()[idx],
            status,
            verdict,
            now_ms(),
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
        Verdict::Invalid(reason) => {
            rt.record(now, Some(status.as_u16()), false, Some(reason));
            rt.invalidate(reason, now);
            let (store, health) = (state.store.clone(), rt.health(now));
            tokio::spawn(async move {
                if let Err(e) = store.set_key_health(key_id, health).await {
                    crate::error!("could not save the invalid mark of key id {key_id}: {e}");
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
