//! Services ("proxy configs"): list, get, create, replace, enable/disable, delete.

use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::{JsonBody, message, store_error};
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::service::{self, Kind};
use crate::state::AppState;
use crate::store::{ServiceFields, ServiceRecord};

const NOT_FOUND: &str = "Config not found";

/// The JSON object of a service: the original's keys (optional ones omitted when null),
/// plus retry settings, timestamps and key counts.
pub fn view(rec: &ServiceRecord) -> Value {
    let f = &rec.fields;
    let mut o = Map::new();
    o.insert("id".into(), rec.id.into());
    o.insert("name".into(), f.name.clone().into());
    o.insert("slug".into(), f.slug.clone().into());
    o.insert("config_type".into(), f.config_type.clone().into());
    o.insert("is_active".into(), f.is_active.into());
    let optional = [
        ("api_key_location", &f.api_key_location),
        ("api_key_name", &f.api_key_name),
        ("method", &f.method),
        ("target_url", &f.target_url),
        ("target_base_url", &f.target_base_url),
        ("api_format", &f.api_format),
        ("output_format", &f.output_format),
        ("retry_on", &f.retry_on),
        ("probe_path", &f.probe_path),
        ("created_at", &rec.created_at),
        ("updated_at", &rec.updated_at),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            o.insert(k.into(), v.clone().into());
        }
    }
    let max_retries = f
        .max_retries
        .unwrap_or(i64::from(service::DEFAULT_MAX_RETRIES));
    o.insert("max_retries".into(), max_retries.into());
    o.insert("idle_timeout".into(), f.idle_timeout.into());
    o.insert(
        "revalidate_interval".into(),
        f.revalidate_interval.filter(|s| *s > 0).into(),
    );
    o.insert("key_count".into(), rec.key_count.into());
    o.insert("active_key_count".into(), rec.active_key_count.into());
    Value::Object(o)
}

fn clean(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Reads and validates a create/replace body. `current_active` is used when the body does
/// not say `is_active` (create: enabled).
fn fields(json: &JsonBody, current_active: bool) -> Result<ServiceFields, ApiError> {
    let config_type = json.req_str("config_type")?.trim().to_ascii_uppercase();
    let mut f = ServiceFields {
        name: json.req_str("name")?.trim().to_string(),
        slug: json.req_str("slug")?.trim().to_string(),
        config_type,
        is_active: json.opt_bool("is_active")?.unwrap_or(current_active),
        api_key_location: clean(json.opt_str("api_key_location")?).map(|l| l.to_ascii_lowercase()),
        api_key_name: clean(json.opt_str("api_key_name")?),
        method: clean(json.opt_str("method")?).map(|m| m.to_ascii_uppercase()),
        target_url: clean(json.opt_str("target_url")?),
        target_base_url: clean(json.opt_str("target_base_url")?),
        api_format: clean(json.opt_str("api_format")?),
        output_format: clean(json.opt_str("output_format")?),
        max_retries: json.opt_i64("max_retries")?,
        retry_on: clean(json.opt_str("retry_on")?),
        probe_path: clean(json.opt_str("probe_path")?),
        idle_timeout: json.opt_i64("idle_timeout")?,
        revalidate_interval: json.opt_i64("revalidate_interval")?,
    };
    if let Some(of) = f.output_format.as_deref().filter(|o| *o != "none") {
        return Err(ApiError::invalid(
            "output_format",
            format!(
                "output_format '{of}' is not supported: requests pass through unchanged; use none"
            ),
        ));
    }
    service::check_identity(&f).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let spec = service::spec(&f).map_err(|e| ApiError::invalid(e.field, e.message))?;
    // Store what each type uses: an LLM service's format is explicit; a generic one has none.
    match spec.kind {
        Kind::Generic => {
            f.api_format = None;
            f.output_format = None;
            f.target_base_url = None;
        }
        Kind::Llm(fmt) => {
            f.api_format = Some(fmt.as_str().to_string());
            f.output_format = Some("none".into());
            f.target_url = None;
            f.method = None;
        }
    }
    Ok(f)
}

pub async fn list(state: &AppState) -> Result<Response<Body>, ApiError> {
    let services = state
        .store
        .list_services()
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?;
    let list: Vec<Value> = services.iter().map(view).collect();
    Ok(json_response(StatusCode::OK, &list))
}

pub async fn get(state: &AppState, id: i64) -> Result<Response<Body>, ApiError> {
    let rec = state
        .store
        .get_service(id)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?
        .ok_or_else(|| ApiError::not_found(NOT_FOUND))?;
    Ok(json_response(StatusCode::OK, &view(&rec)))
}

pub async fn create(state: &AppState, body: Incoming) -> Result<Response<Body>, ApiError> {
    let f = fields(
        &JsonBody::read(body, state.config.body_read_timeout).await?,
        true,
    )?;
    let rec = state
        .store
        .create_service(f)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?;
    state.changed().await?;
    crate::log::info!("service '{}' (id {}) created", rec.fields.slug, rec.id);
    Ok(json_response(StatusCode::CREATED, &view(&rec)))
}

pub async fn update(state: &AppState, id: i64, body: Incoming) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    let current = state
        .store
        .get_service(id)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?
        .ok_or_else(|| ApiError::not_found(NOT_FOUND))?;
    let f = fields(&json, current.fields.is_active)?;
    let rec = state
        .store
        .update_service(id, f)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?;
    state.changed().await?;
    Ok(json_response(StatusCode::OK, &view(&rec)))
}

pub async fn set_status(
    state: &AppState,
    id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let active = JsonBody::read(body, state.config.body_read_timeout)
        .await?
        .req_bool("is_active")?;
    state
        .store
        .set_service_active(id, active)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?;
    state.changed().await?;
    Ok(message("Status updated successfully"))
}

pub async fn delete(state: &AppState, id: i64) -> Result<Response<Body>, ApiError> {
    state
        .store
        .delete_service(id)
        .await
        .map_err(|e| store_error(e, NOT_FOUND))?;
    state.changed().await?;
    crate::log::info!("service id {id} deleted with its keys");
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": "Config deleted successfully"}),
    ))
}
