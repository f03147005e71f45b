//! `/admin/client-keys`: client access keys. The secret is made here and shown once, in
//! the answer to its creation; the store keeps only its hash.

use std::collections::HashMap;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{JsonBody, message};
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::client_keys::{ClientKeyFields, ClientKeyRecord};
use crate::store::usage::{Counts, UsageQuery};
use crate::timefmt::{now_ms, parse_datetime, rfc3339, rfc3339_millis};

const NOT_FOUND: &str = "Client key not found";
const LIMITS: [&str; 4] = ["rpm", "rpd", "tpd", "max_streams"];
/// Fields an admin sets.
const SETTABLE: [&str; 10] = [
    "name",
    "note",
    "is_active",
    "expires_at",
    "services",
    "models",
    "rpm",
    "rpd",
    "tpd",
    "max_streams",
];
/// Fields of an answer, accepted back (and ignored) so a client can send one again.
const READ_ONLY: [&str; 6] = [
    "id",
    "prefix",
    "created_at",
    "last_used_at",
    "usage",
    "expired",
];

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(NOT_FOUND),
        StoreError::Conflict(field) => ApiError::conflict(field, "this client key exists already"),
        StoreError::Backend(msg) => ApiError::internal("database error", msg),
    }
}

pub async fn list(state: &AppState) -> Result<Response<Body>, ApiError> {
    let keys = state.store.list_client_keys().await.map_err(store_error)?;
    let usage = usage_24h(state).await;
    let out: Vec<Value> = keys.iter().map(|k| view(state, k, &usage)).collect();
    Ok(json_response(StatusCode::OK, &out))
}

pub async fn get(state: &AppState, id: i64) -> Result<Response<Body>, ApiError> {
    let key = find(state, id).await?;
    let usage = usage_24h(state).await;
    Ok(json_response(StatusCode::OK, &view(state, &key, &usage)))
}

pub async fn create(state: &AppState, body: Incoming) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    let fields = fields(
        state,
        &json,
        ClientKeyFields {
            is_active: true,
            ..ClientKeyFields::default()
        },
    )?;
    if fields.name.is_empty() {
        return Err(ApiError::invalid("name", "name is required"));
    }
    let (secret, prefix, hash) = crate::clients::generate()?;
    let key = state
        .store
        .create_client_key(fields, prefix, hash)
        .await
        .map_err(store_error)?;
    state.changed().await?;
    let mut out = view(state, &key, &HashMap::new());
    out["secret"] = secret.into();
    Ok(json_response(StatusCode::CREATED, &out))
}

pub async fn update(state: &AppState, id: i64, body: Incoming) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    let current = find(state, id).await?;
    let fields = fields(state, &json, current.fields)?;
    let key = state
        .store
        .update_client_key(id, fields)
        .await
        .map_err(store_error)?;
    state.changed().await?;
    let usage = usage_24h(state).await;
    Ok(json_response(StatusCode::OK, &view(state, &key, &usage)))
}

pub async fn delete(state: &AppState, id: i64) -> Result<Response<Body>, ApiError> {
    state
        .store
        .delete_client_key(id)
        .await
        .map_err(store_error)?;
    state.changed().await?;
    Ok(message("Client key deleted successfully"))
}

async fn find(state: &AppState, id: i64) -> Result<ClientKeyRecord, ApiError> {
    let keys = state.store.list_client_keys().await.map_err(store_error)?;
    keys.into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::not_found(NOT_FOUND))
}

/// `base` with what `json` sets (a field that is absent stays; `null` clears a limit or
/// the expiry). Every field is checked, and unknown ones are refused (a typo in a limit's
/// name must not leave a key without it).
fn fields(
    state: &AppState,
    json: &JsonBody,
    base: ClientKeyFields,
) -> Result<ClientKeyFields, ApiError> {
    if let Some(f) = json.unknown_field(&[&SETTABLE[..], &READ_ONLY[..]].concat()) {
        return Err(ApiError::admin(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown field {f:?}; a client key has {}",
                SETTABLE.join(", ")
            ),
        ));
    }
    let mut f = base;
    if json.has("name") {
        f.name = json.req_str("name")?.trim().to_string();
        if f.name.chars().count() > 100 {
            return Err(ApiError::invalid(
                "name",
                "name is longer than 100 characters",
            ));
        }
    }
    if let Some(note) = json.opt_str("note")? {
        if note.chars().count() > 1000 {
            return Err(ApiError::invalid(
                "note",
                "note is longer than 1000 characters",
            ));
        }
        f.note = note;
    } else if json.has("note") {
        f.note.clear();
    }
    if let Some(active) = json.opt_bool("is_active")? {
        f.is_active = active;
    }
    if json.has("expires_at") {
        f.expires_at = match json.opt_str("expires_at")? {
            None => None,
            Some(s) => Some(parse_datetime(&s).ok_or_else(|| {
                ApiError::invalid(
                    "expires_at",
                    "expires_at must be an RFC 3339 time (e.g. 2027-01-31T00:00:00Z) or null",
                )
            })? as i64),
        };
    }
    if json.has("services") {
        f.services = names(json, "services", |s| {
            s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })?;
    }
    if json.has("models") {
        f.models = names(json, "models", |m| {
            m.len() <= 200 && !m.trim_end_matches('*').contains('*') && m != "*"
        })?;
    }
    for (i, name) in LIMITS.iter().enumerate() {
        if !json.has(name) {
            continue;
        }
        let v = json.opt_i64(name)?;
        if v.is_some_and(|n| n < 1) {
            return Err(ApiError::invalid(
                name,
                format!("{name} must be 1 or more, or null for no limit"),
            ));
        }
        *[&mut f.rpm, &mut f.rpd, &mut f.tpd, &mut f.max_streams][i] = v;
    }
    if f.tpd.is_some() && state.usage.is_none() {
        return Err(ApiError::invalid(
            "tpd",
            "tpd (tokens per day) needs usage tracking, which counts the tokens: \
             set USAGE_TRACKING=on",
        ));
    }
    Ok(f)
}

/// A list of non-empty strings, each passing `ok`; empty means all.
fn names(
    json: &JsonBody,
    field: &'static str,
    ok: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            match field {
                "services" => "services must be a list of service slugs ([] for all)",
                _ => "models must be a list of model names, each exact or ending in * ([] for all)",
            },
        )
    };
    let Some(v) = json.value(field) else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or_else(bad)?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let s = item
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty() && ok(s));
        let s = s.ok_or_else(bad)?;
        if !out.iter().any(|o: &String| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// Requests and tokens of the last 24 hours by client key id, from the usage rollups
/// (empty when usage tracking is off or the store fails).
async fn usage_24h(state: &AppState) -> HashMap<i64, Counts> {
    if state.usage.is_none() {
        return HashMap::new();
    }
    crate::stats::flush_usage(state, false).await;
    let now = (now_ms() / 1000) as i64;
    let q = UsageQuery {
        from: now - now % 3600 - 23 * 3600,
        to: now + 3600,
        bucket: 3600,
        group: vec!["client_key"],
        ..UsageQuery::default()
    };
    let mut out: HashMap<i64, Counts> = HashMap::new();
    for b in state.store.query_usage(q).await.unwrap_or_default() {
        if let Some(id) = b.client_key_id {
            out.entry(id).or_default().add(&b.counts);
        }
    }
    out
}

/// A key as the API shows it (never its secret or hash).
fn view(state: &AppState, k: &ClientKeyRecord, usage: &HashMap<i64, Counts>) -> Value {
    let now = now_ms();
    let f = &k.fields;
    let rt = state.clients.runtime(k.id);
    let [minute, today, tokens_today, open] =
        rt.as_ref().map(|r| r.counts(now)).unwrap_or_default();
    let last_used = rt
        .and_then(|r| r.last_used_ms())
        .or(k.last_used_at.map(|t| t.max(0) as u64));
    let u = usage.get(&k.id).copied().unwrap_or_default();
    json!({
        "id": k.id,
        "name": f.name,
        "note": f.note,
        "is_active": f.is_active,
        "expires_at": f.expires_at.map(|s| rfc3339(s.max(0) as u64)),
        "expired": f.expires_at.is_some_and(|s| (s.max(0) as u64) * 1000 <= now),
        "services": f.services,
        "models": f.models,
        "rpm": f.rpm,
        "rpd": f.rpd,
        "tpd": f.tpd,
        "max_streams": f.max_streams,
        "prefix": k.prefix,
        "created_at": rfc3339_millis(k.created_at.max(0) as u64),
        "last_used_at": last_used.map(rfc3339_millis),
        "usage": {
            "requests_this_minute": minute,
            "requests_today": today,
            "tokens_today": tokens_today,
            "open_requests": open,
            "requests_24h": u.requests,
            "failures_24h": u.failures(),
            "tokens_in_24h": u.tokens_in,
            "tokens_out_24h": u.tokens_out,
        },
    })
}
