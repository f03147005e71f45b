//! Keys of a service: list (paged, or the whole array streamed; masked, or revealed for
//! export), add, batch import, clear, enable/disable and note, delete, reset health, test
//! against the upstream. Bulk actions are in `bulk.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{JsonBody, message, store_error};
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::keys::KeyState;
use crate::keys::mask;
use crate::state::{AppState, KeyChange};
use crate::store::key_query::{self, Cursor, KeyFilter, PageQuery, Sort, StateFilter};
use crate::store::{KeyRecord, MAX_KEY_LEN, StoreError};
use crate::timefmt::{now_ms, rfc3339};

pub(super) const SERVICE_NOT_FOUND: &str = "Config not found";
const KEY_NOT_FOUND: &str = "API key not found";

fn ms_to_rfc3339(ms: Option<i64>) -> Value {
    ms.and_then(|m| u64::try_from(m).ok())
        .map_or(Value::Null, |m| rfc3339(m / 1000).into())
}

/// The JSON object of a key, with live health and counters overlaid.
fn view(state: &AppState, mut k: KeyRecord, reveal: bool, now: u64) -> Value {
    let status = match state.registry.get(k.id) {
        Some(rt) => {
            rt.overlay(&mut k, now);
            if k.is_active {
                rt.state(now)
            } else {
                KeyState::Disabled
            }
        }
        None if !k.is_active => KeyState::Disabled,
        None if k.health.invalid_reason.is_some() => KeyState::Invalid,
        None => KeyState::Active,
    };
    json!({
        "id": k.id,
        "key_value": if reveal { k.key_value.clone() } else { mask(&k.key_value) },
        "is_active": k.is_active,
        "proxy_config_id": k.proxy_config_id,
        "status": status.as_str(),
        "cooldown_until": ms_to_rfc3339(k.health.cooldown_until),
        "invalid_reason": k.health.invalid_reason,
        "invalid_at": ms_to_rfc3339(k.health.invalid_at),
        "request_count": k.stats.request_count,
        "success_count": k.stats.success_count,
        "failure_count": k.stats.failure_count,
        "consecutive_failures": k.stats.consecutive_failures,
        "last_used_at": ms_to_rfc3339(k.stats.last_used_at),
        "last_status": k.stats.last_status,
        "last_error": k.stats.last_error,
        "note": k.note,
    })
}

/// Why a key value cannot be stored, if it cannot.
fn invalid_key(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("key_value is required".into())
    } else if value.len() > MAX_KEY_LEN {
        Some(format!("key_value is longer than {MAX_KEY_LEN} bytes"))
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("key_value must not contain spaces or control characters".into())
    } else if http::HeaderValue::from_str(value).is_err() {
        Some("key_value must be printable ASCII".into())
    } else {
        None
    }
}

/// The batch and clear routes name a missing service as the original did.
fn batch_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("ProxyConfig not found"),
        other => store_error(other, SERVICE_NOT_FOUND),
    }
}

fn key_store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => {
            ApiError::conflict("key_value", "this key is already in the service")
        }
        other => store_error(other, SERVICE_NOT_FOUND),
    }
}

/// The filter named by `state` and `q` in a query string.
pub(super) fn filter_of(p: &HashMap<String, String>) -> Result<KeyFilter, ApiError> {
    let state = match p.get("state").map(String::as_str).filter(|s| !s.is_empty()) {
        None | Some("all") => None,
        Some(s) => Some(StateFilter::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!("state must be active, cooling, invalid or disabled, not {s:?}"),
            )
        })?),
    };
    let q = p
        .get("q")
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty());
    Ok(KeyFilter { state, q })
}

/// What a page asks for, from the query string.
fn page_query(service_id: i64, p: &HashMap<String, String>) -> Result<PageQuery, ApiError> {
    let limit = match p.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=key_query::MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be 1 to {}", key_query::MAX_PAGE),
                )
            })?,
    };
    let sort = match p.get("sort").filter(|s| !s.is_empty()) {
        None => Sort::default(),
        Some(s) => Sort::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "sort",
                "sort must be id, failures or last_used, with - for descending",
            )
        })?,
    };
    let after = match p.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            Cursor::parse(c)
                .ok_or_else(|| ApiError::invalid("cursor", "cursor is not one this server gave"))?,
        ),
    };
    Ok(PageQuery {
        service_id,
        filter: filter_of(p)?,
        sort,
        after,
        limit,
    })
}

/// Keys per page when `limit` is not given, and per chunk of a streamed list.
const DEFAULT_PAGE: usize = 100;
const STREAM_PAGE: usize = 500;

/// `GET …/keys`: with `limit`, `cursor`, `state`, `q` or `sort`, one page
/// (`{"keys", "next_cursor", "total"?}`, `total` with `total=1`); without, the original's
/// whole array, written page by page as the client reads it.
pub async fn list(
    state: &Arc<AppState>,
    service_id: i64,
    reveal: bool,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let p = super::usage::params(query)?;
    if reveal {
        crate::log::info!("keys of service id {service_id} revealed to the admin (export)");
    }
    let paged = ["limit", "cursor", "state", "q", "sort"]
        .iter()
        .any(|k| p.contains_key(*k));
    if !paged {
        return stream_all(state, service_id, reveal).await;
    }
    let q = page_query(service_id, &p)?;
    let total = match p.get("total").map(String::as_str) {
        Some("1" | "true") => Some(
            state
                .store
                .count_keys(service_id, q.filter.clone())
                .await
                .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?,
        ),
        _ => None,
    };
    let keys = state
        .store
        .page_keys(q.clone())
        .await
        .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?;
    let next = (keys.len() == q.limit)
        .then(|| keys.last().map(|k| cursor_after(q.sort, k)))
        .flatten();
    let now = now_ms();
    let list: Vec<Value> = keys
        .into_iter()
        .map(|k| view(state, k, reveal, now))
        .collect();
    let mut out = json!({ "keys": list, "next_cursor": next });
    if let Some(t) = total {
        out["total"] = t.into();
    }
    Ok(json_response(StatusCode::OK, &out))
}

fn cursor_after(sort: Sort, k: &KeyRecord) -> String {
    Cursor {
        value: sort.value_of(k),
        id: k.id,
    }
    .encode()
}

/// The whole array, a page at a time: memory holds one page, whatever the pool's size.
async fn stream_all(
    state: &Arc<AppState>,
    service_id: i64,
    reveal: bool,
) -> Result<Response<Body>, ApiError> {
    let page = move |after| PageQuery {
        service_id,
        after,
        limit: STREAM_PAGE,
        ..PageQuery::default()
    };
    // The first page before the answer: a missing service is a 404, not a cut body.
    let mut keys = state
        .store
        .page_keys(page(None))
        .await
        .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?;
    let (tx, body) = crate::body::channel(2);
    let state = state.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let last = keys.last().map(|k| k.id);
            let mut buf = Vec::with_capacity(keys.len() * 420 + 2);
            if first {
                buf.push(b'[');
            }
            let now = now_ms();
            for k in keys.drain(..) {
                if !first {
                    buf.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut buf, &view(&state, k, reveal, now))
                    .expect("JSON values serialise");
            }
            let Some(last) = last else {
                buf.push(b']');
                let _ = tx.send(Ok(buf.into())).await;
                return;
            };
            if tx.send(Ok(buf.into())).await.is_err() {
                return; // the client went away
            }
            let after = Some(Cursor::after_id(last));
            keys = match state.store.page_keys(page(after)).await {
                Ok(k) => k,
                Err(e) => {
                    crate::log::error!("listing the keys of service id {service_id} failed: {e}");
                    let _ = tx.send(Err(e.to_string().into())).await;
                    return;
                }
            };
        }
    });
    Ok(crate::error::json_body_response(StatusCode::OK, body))
}

pub async fn add(
    state: &AppState,
    service_id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    let value = json
        .opt_str("key_value")?
        .unwrap_or_default()
        .trim()
        .to_string();
    if let Some(why) = invalid_key(&value) {
        return Err(ApiError::invalid("key_value", why));
    }
    let active = json.opt_bool("is_active")?.unwrap_or(true);
    let note = note_of(&json)?.flatten();
    let mut rec = state
        .store
        .add_key(service_id, value, active)
        .await
        .map_err(key_store_error)?;
    if note.is_some() {
        state
            .store
            .set_key_note(rec.id, note.clone())
            .await
            .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
        rec.note = note;
    }
    state
        .keys_changed(service_id, KeyChange::Upserted(vec![rec.clone()]))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &view(state, rec, false, now_ms()),
    ))
}

/// Batch import: trimmed, empty lines ignored, duplicates (in the batch or stored)
/// skipped, invalid values reported in `failed_keys`; the valid ones are stored in one
/// transaction (all or nothing).
pub async fn batch(
    state: &AppState,
    service_id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    let Some(Value::Array(entries)) = json.value("keys") else {
        return Err(ApiError::invalid(
            "keys",
            "keys must be an array of strings",
        ));
    };
    let mut seen = HashSet::new();
    let mut valid = Vec::new();
    let (mut failed, mut dup_in_batch) = (Vec::new(), 0u64);
    for entry in entries {
        let Some(raw) = entry.as_str() else {
            failed.push(entry.to_string());
            continue;
        };
        let value = raw.trim();
        if value.is_empty() {
            continue;
        }
        if invalid_key(value).is_some() {
            failed.push(value.chars().take(300).collect());
        } else if seen.insert(value.to_string()) {
            valid.push(value.to_string());
        } else {
            dup_in_batch += 1;
        }
    }
    let newest = PageQuery {
        service_id,
        sort: Sort {
            by: key_query::SortBy::Id,
            desc: true,
        },
        limit: 1,
        ..PageQuery::default()
    };
    let last_before = state
        .store
        .page_keys(newest)
        .await
        .map_err(batch_error)?
        .first()
        .map_or(0, |k| k.id);
    let mut outcome = state
        .store
        .add_keys(service_id, valid)
        .await
        .map_err(batch_error)?;
    outcome.skipped_count += dup_in_batch;
    outcome.failed_count = failed.len() as u64;
    outcome.failed_keys = failed;
    if outcome.success_count > 0 {
        let added = added_since(state, service_id, last_before).await?;
        state
            .keys_changed(service_id, KeyChange::Upserted(added))
            .await?;
    }
    crate::log::info!(
        "batch import into service id {service_id}: {} added, {} skipped, {} failed",
        outcome.success_count,
        outcome.skipped_count,
        outcome.failed_count
    );
    Ok(json_response(StatusCode::OK, &outcome))
}

/// The service's keys with an id above `after` (those a batch just added).
async fn added_since(
    state: &AppState,
    service_id: i64,
    after: i64,
) -> Result<Vec<KeyRecord>, ApiError> {
    let mut out = Vec::new();
    let mut cursor = Cursor::after_id(after);
    loop {
        let page = state
            .store
            .page_keys(PageQuery {
                service_id,
                after: Some(cursor),
                limit: key_query::MAX_PAGE,
                ..PageQuery::default()
            })
            .await
            .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?;
        let Some(last) = page.last().map(|k| k.id) else {
            return Ok(out);
        };
        cursor = Cursor::after_id(last);
        out.extend(page);
    }
}

pub async fn clear(state: &AppState, service_id: i64) -> Result<Response<Body>, ApiError> {
    let n = state
        .store
        .clear_keys(service_id)
        .await
        .map_err(batch_error)?;
    state.changed().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted_count": n }),
    ))
}

/// `note` in a body: `None` absent, `Some(None)` cleared (`null` or blank), else the text.
fn note_of(json: &JsonBody) -> Result<Option<Option<String>>, ApiError> {
    if !json.has("note") {
        return Ok(None);
    }
    let note = json.opt_str("note")?.map(|n| n.trim().to_string());
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > key_query::MAX_NOTE)
    {
        return Err(ApiError::invalid(
            "note",
            format!("note must be at most {} characters", key_query::MAX_NOTE),
        ));
    }
    Ok(Some(note.filter(|n| !n.is_empty())))
}

/// `PATCH /admin/keys/:id`: `is_active` and/or `note`.
pub async fn update(
    state: &AppState,
    key_id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    if let Some(field) = json.unknown_field(&["is_active", "note"]) {
        return Err(ApiError::invalid(
            "body",
            format!("unknown field {field:?}: a key takes is_active and note"),
        ));
    }
    let active = json.opt_bool("is_active")?;
    let note = note_of(&json)?;
    if active.is_none() && note.is_none() {
        return Err(ApiError::invalid(
            "is_active",
            "is_active is required (true or false)",
        ));
    }
    if let Some(note) = note {
        state
            .store
            .set_key_note(key_id, note)
            .await
            .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
    }
    if let Some(active) = active {
        state
            .store
            .set_key_active(key_id, active)
            .await
            .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
        let rec = get_key(state, key_id).await?;
        let service_id = rec.proxy_config_id;
        let change = match active {
            true => KeyChange::Upserted(vec![rec]),
            false => KeyChange::Disabled(vec![key_id]),
        };
        state.keys_changed(service_id, change).await?;
    }
    Ok(message("API key status updated successfully"))
}

pub async fn delete(state: &AppState, key_id: i64) -> Result<Response<Body>, ApiError> {
    let service_id = get_key(state, key_id).await?.proxy_config_id;
    state
        .store
        .delete_key(key_id)
        .await
        .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
    state
        .keys_changed(service_id, KeyChange::Removed(vec![key_id]))
        .await?;
    Ok(message("API key deleted successfully"))
}

async fn get_key(state: &AppState, key_id: i64) -> Result<KeyRecord, ApiError> {
    state
        .store
        .get_key(key_id)
        .await
        .map_err(|e| store_error(e, KEY_NOT_FOUND))?
        .ok_or_else(|| ApiError::not_found(KEY_NOT_FOUND))
}

/// Clears a key's cooldown and invalid mark, here and on other instances.
pub async fn reset(state: &AppState, key_id: i64) -> Result<Response<Body>, ApiError> {
    let rec = get_key(state, key_id).await?;
    state
        .store
        .set_key_health(key_id, Default::default())
        .await
        .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
    if let Some(rt) = state.registry.get(key_id) {
        rt.reset();
    }
    state
        .cache
        .publish_key_event(crate::cache::KeyEvent::Reset {
            service_id: rec.proxy_config_id,
            key_id,
        });
    state
        .keys_changed(rec.proxy_config_id, KeyChange::Reset(vec![key_id]))
        .await?;
    let rec = get_key(state, key_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &view(state, rec, false, now_ms()),
    ))
}

/// A service and its spec, for testing its keys (409 when it cannot be used).
pub(super) async fn testable_service(
    state: &AppState,
    service_id: i64,
) -> Result<(crate::store::ServiceRecord, crate::service::ServiceSpec), ApiError> {
    let service = state
        .store
        .get_service(service_id)
        .await
        .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?
        .ok_or_else(|| ApiError::not_found(SERVICE_NOT_FOUND))?;
    let spec = crate::service::spec(&service.fields).map_err(|e| {
        ApiError::admin(
            StatusCode::CONFLICT,
            format!("the service cannot be used: {}", e.message),
        )
    })?;
    Ok((service, spec))
}

/// Calls the upstream with this key (a cheap request) and records what it says.
pub async fn test(state: &AppState, key_id: i64) -> Result<Response<Body>, ApiError> {
    let key = get_key(state, key_id).await?;
    let (service, spec) = testable_service(state, key.proxy_config_id).await?;
    let result = crate::proxy::probe::probe_key(state, &service, &spec, &key).await;
    Ok(json_response(StatusCode::OK, &result))
}
