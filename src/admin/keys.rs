//! Keys of a service: list (masked, or revealed for export), add, batch import, clear,
//! enable/disable, delete, reset health, test against the upstream.

use std::collections::HashSet;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{JsonBody, message, store_error};
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::keys::KeyState;
use crate::keys::mask;
use crate::state::AppState;
use crate::store::{KeyRecord, MAX_KEY_LEN, StoreError};
use crate::timefmt::{now_ms, rfc3339};

const SERVICE_NOT_FOUND: &str = "Config not found";
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

fn key_store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => {
            ApiError::conflict("key_value", "this key is already in the service")
        }
        other => store_error(other, SERVICE_NOT_FOUND),
    }
}

pub async fn list(
    state: &AppState,
    service_id: i64,
    reveal: bool,
) -> Result<Response<Body>, ApiError> {
    let keys = state
        .store
        .list_keys(service_id)
        .await
        .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?;
    if reveal {
        crate::log::info!("keys of service id {service_id} revealed to the admin (export)");
    }
    let now = now_ms();
    let list: Vec<Value> = keys
        .into_iter()
        .map(|k| view(state, k, reveal, now))
        .collect();
    Ok(json_response(StatusCode::OK, &list))
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
    let rec = state
        .store
        .add_key(service_id, value, active)
        .await
        .map_err(key_store_error)?;
    state.changed().await?;
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
    let mut outcome = state
        .store
        .add_keys(service_id, valid)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("ProxyConfig not found"),
            other => store_error(other, SERVICE_NOT_FOUND),
        })?;
    outcome.skipped_count += dup_in_batch;
    outcome.failed_count = failed.len() as u64;
    outcome.failed_keys = failed;
    if outcome.success_count > 0 {
        state.changed().await?;
    }
    crate::log::info!(
        "batch import into service id {service_id}: {} added, {} skipped, {} failed",
        outcome.success_count,
        outcome.skipped_count,
        outcome.failed_count
    );
    Ok(json_response(StatusCode::OK, &outcome))
}

pub async fn clear(state: &AppState, service_id: i64) -> Result<Response<Body>, ApiError> {
    let n = state
        .store
        .clear_keys(service_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("ProxyConfig not found"),
            other => store_error(other, SERVICE_NOT_FOUND),
        })?;
    state.changed().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted_count": n }),
    ))
}

pub async fn set_active(
    state: &AppState,
    key_id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let active = JsonBody::read(body, state.config.body_read_timeout)
        .await?
        .req_bool("is_active")?;
    state
        .store
        .set_key_active(key_id, active)
        .await
        .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
    state.changed().await?;
    Ok(message("API key status updated successfully"))
}

pub async fn delete(state: &AppState, key_id: i64) -> Result<Response<Body>, ApiError> {
    state
        .store
        .delete_key(key_id)
        .await
        .map_err(|e| store_error(e, KEY_NOT_FOUND))?;
    state.changed().await?;
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
    state.changed().await?;
    let rec = get_key(state, key_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &view(state, rec, false, now_ms()),
    ))
}

/// Calls the upstream with this key (a cheap request) and records what it says.
pub async fn test(state: &AppState, key_id: i64) -> Result<Response<Body>, ApiError> {
    let key = get_key(state, key_id).await?;
    let service = state
        .store
        .get_service(key.proxy_config_id)
        .await
        .map_err(|e| store_error(e, SERVICE_NOT_FOUND))?
        .ok_or_else(|| ApiError::not_found(SERVICE_NOT_FOUND))?;
    let spec = crate::service::spec(&service.fields).map_err(|e| {
        ApiError::admin(
            StatusCode::CONFLICT,
            format!("the service cannot be used: {}", e.message),
        )
    })?;
    let result = crate::proxy::probe::probe_key(state, &service, &spec, &key).await;
    Ok(json_response(StatusCode::OK, &result))
}
