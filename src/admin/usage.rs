//! Usage insight for the admin: `GET /admin/usage` (buckets of the hourly rollups) and
//! `GET /admin/requests` (the request log, newest first, with a cursor). What the shards
//! recorded is written first, so an answer includes the request that just ended.

use std::collections::HashMap;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::store_error;
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::state::AppState;
use crate::timefmt::{now_secs, parse_datetime, rfc3339, rfc3339_millis};
use crate::upstream::url::percent_decode;
use crate::usage::{Bucket, LogEntry, RequestQuery, UsageQuery};

/// Most buckets of one answer (a year of hours per group is far below).
const MAX_SPAN_BUCKETS: i64 = 24 * 400;
/// Request log entries per page: the default and the most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The query string as `name → value` (the last wins), percent-decoded.
pub(super) fn params(query: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(s.replace('+', " ").as_bytes())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::admin(
                        StatusCode::BAD_REQUEST,
                        "bad percent-encoding in the query string",
                    )
                })
        };
        out.insert(decode(name)?, decode(value)?);
    }
    Ok(out)
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::invalid(field, message)
}

/// A time: RFC 3339 or Unix seconds.
fn time(p: &HashMap<String, String>, field: &'static str) -> Result<Option<i64>, ApiError> {
    let Some(v) = p.get(field).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    v.parse::<i64>()
        .ok()
        .or_else(|| parse_datetime(v).map(|s| s as i64))
        .map(Some)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{field} must be an RFC 3339 time or Unix seconds, not {v:?}"),
            )
        })
}

/// A positive id.
fn id(p: &HashMap<String, String>, field: &'static str) -> Result<Option<i64>, ApiError> {
    let Some(v) = p.get(field).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    v.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| invalid(field, format!("{field} must be a positive id, not {v:?}")))
}

/// Service ids by slug and slugs by id (every service, enabled or not).
async fn services(
    state: &AppState,
) -> Result<(HashMap<String, i64>, HashMap<i64, String>), ApiError> {
    let list = state
        .store
        .list_services()
        .await
        .map_err(|e| store_error(e, "Config not found"))?;
    let by_slug = list.iter().map(|s| (s.fields.slug.clone(), s.id)).collect();
    let by_id = list.into_iter().map(|s| (s.id, s.fields.slug)).collect();
    Ok((by_slug, by_id))
}

/// `service=`: an id or a slug.
fn service(
    p: &HashMap<String, String>,
    by_slug: &HashMap<String, i64>,
) -> Result<Option<i64>, ApiError> {
    let Some(v) = p.get("service").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(n) = v.parse::<i64>() {
        return Ok(Some(n));
    }
    by_slug
        .get(v)
        .copied()
        .map(Some)
        .ok_or_else(|| invalid("service", format!("no service with the slug {v:?}")))
}

fn off(state: &AppState) -> Result<(), ApiError> {
    match state.usage {
        Some(_) => Ok(()),
        None => Err(ApiError::admin(
            StatusCode::NOT_FOUND,
            "usage insight is off (USAGE_TRACKING=off)",
        )),
    }
}

/// `GET /admin/usage?service=&key=&model=&from=&to=&bucket=hour|day&group=service,key,model`.
pub async fn usage(state: &AppState, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    off(state)?;
    let p = params(query)?;
    let (by_slug, by_id) = services(state).await?;
    let bucket = match p.get("bucket").map(String::as_str) {
        None | Some("" | "hour") => 3_600,
        Some("day") => 86_400,
        Some(other) => {
            return Err(invalid(
                "bucket",
                format!("bucket must be hour or day, not {other:?}"),
            ));
        }
    };
    let mut group = Vec::new();
    for g in p.get("group").map_or("", String::as_str).split(',') {
        match g.trim() {
            "" => {}
            "service" => group.push("service"),
            "key" => group.push("key"),
            "model" => group.push("model"),
            "client_key" => group.push("client_key"),
            other => {
                return Err(invalid(
                    "group",
                    format!("group takes service, key, model and client_key, not {other:?}"),
                ));
            }
        }
    }
    let now = now_secs() as i64;
    let to = time(&p, "to")?.unwrap_or(now + 1);
    let from = time(&p, "from")?.unwrap_or(to - if bucket == 3_600 { 86_400 } else { 30 * 86_400 });
    if from >= to {
        return Err(invalid("from", "from must be before to".into()));
    }
    if (to - from) / bucket > MAX_SPAN_BUCKETS {
        return Err(invalid(
            "from",
            format!(
                "at most {MAX_SPAN_BUCKETS} buckets at a time; use bucket=day or a shorter span"
            ),
        ));
    }
    let q = UsageQuery {
        service_id: service(&p, &by_slug)?,
        key_id: id(&p, "key")?,
        model: p.get("model").filter(|m| !m.is_empty()).cloned(),
        client_key_id: id(&p, "client_key")?,
        // Rollups are by hour: the hour `from` falls in counts.
        from: from - from.rem_euclid(3_600),
        to,
        bucket,
        group,
    };
    crate::stats::flush_usage(state, false).await;
    let buckets = state
        .store
        .query_usage(q)
        .await
        .map_err(|e| store_error(e, "Config not found"))?;
    let out: Vec<Value> = buckets.iter().map(|b| bucket_json(b, &by_id)).collect();
    Ok(json_response(StatusCode::OK, &out))
}

fn bucket_json(b: &Bucket, slugs: &HashMap<i64, String>) -> Value {
    let c = &b.counts;
    let mut v = json!({
        "start": rfc3339(b.start.max(0) as u64),
        "requests": c.requests,
        "successes": c.successes,
        "failures": c.failures(),
        "failures_by_class": {
            "client": c.failures_client,
            "rate_limited": c.failures_rate_limited,
            "upstream": c.failures_upstream,
            "proxy": c.failures_proxy,
        },
        "usage_unknown": c.usage_unknown,
        "tokens_in": c.tokens_in,
        "tokens_out": c.tokens_out,
        "tokens_cached": c.tokens_cached,
        "latency_ms_sum": c.latency_ms_sum,
        "ttfb_ms_sum": c.ttfb_ms_sum,
    });
    let o = v.as_object_mut().expect("an object");
    if let Some(id) = b.service_id {
        o.insert("service_id".into(), id.into());
        o.insert("service".into(), slugs.get(&id).cloned().into());
    }
    if let Some(id) = b.key_id {
        o.insert("key_id".into(), id.into());
    }
    if let Some(m) = &b.model {
        o.insert("model".into(), m.clone().into());
    }
    if let Some(id) = b.client_key_id {
        o.insert("client_key_id".into(), id.into());
    }
    v
}

/// `GET /admin/requests?cursor=&limit=&status=2xx|4xx|5xx&service=&key=&request_id=`.
pub async fn requests(state: &AppState, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    off(state)?;
    let p = params(query)?;
    let (by_slug, _) = services(state).await?;
    let limit = match p.get("limit").filter(|v| !v.is_empty()) {
        None => PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid("limit", format!("limit must be 1 to {MAX_PAGE}, not {v:?}")))?,
    };
    let status_class = match p.get("status").map(String::as_str) {
        None | Some("") => None,
        Some("2xx" | "2") => Some(2),
        Some("3xx" | "3") => Some(3),
        Some("4xx" | "4") => Some(4),
        Some("5xx" | "5") => Some(5),
        Some(other) => {
            return Err(invalid(
                "status",
                format!("status must be 2xx, 3xx, 4xx or 5xx, not {other:?}"),
            ));
        }
    };
    let q = RequestQuery {
        before: id(&p, "cursor")?,
        limit,
        status_class,
        service_id: service(&p, &by_slug)?,
        key_id: id(&p, "key")?,
        request_id: p.get("request_id").filter(|v| !v.is_empty()).cloned(),
        client_key_id: id(&p, "client_key")?,
    };
    crate::stats::flush_usage(state, true).await;
    let entries = state
        .store
        .query_requests(q)
        .await
        .map_err(|e| store_error(e, "Config not found"))?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let items: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next }),
    ))
}

fn entry_json(e: &LogEntry) -> Value {
    json!({
        "id": e.id,
        "time": rfc3339_millis(e.at.max(0) as u64),
        "request_id": e.request_id,
        "service_id": e.service_id,
        "service": e.service,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "attempts": e.attempts.iter().map(|(k, s)| json!({"key_id": k, "status": s})).collect::<Vec<_>>(),
        "key_id": e.key_id,
        "key": e.key_mask,
        "model": e.model,
        "tokens_in": e.tokens_in,
        "tokens_out": e.tokens_out,
        "tokens_cached": e.tokens_cached,
        "latency_ms": e.latency_ms,
        "ttfb_ms": e.ttfb_ms,
        "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out,
        "client_ip": e.client_ip,
        "error": e.error,
        "client_key_id": e.client_key_id,
    })
}
