//! Bulk actions on a service's keys (`POST /admin/proxy-configs/:id/keys/bulk`): enable,
//! disable, delete and reset in one transaction each; test as a background job whose
//! progress `GET /admin/jobs/:id` shows (`DELETE` stops it). `dry_run` says how many keys
//! an action would touch, for the confirmation.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::keys::SERVICE_NOT_FOUND;
use super::{JsonBody, store_error};
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::jobs::Job;
use crate::state::{AppState, KeyChange};
use crate::store::key_query::{BulkAction, Selection};

/// Keys tested at once by a test job.
const TEST_CONCURRENCY: usize = 8;

fn bad(field: &'static str, message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::invalid(field, message)
}

/// `ids` (a list of key ids) or `filter` (`{"state", "q"}`, `{}` for every key).
fn selection(json: &JsonBody) -> Result<Selection, ApiError> {
    match (json.value("ids"), json.value("filter")) {
        (Some(Value::Array(list)), None) => {
            let ids = list
                .iter()
                .map(|v| v.as_i64().filter(|id| *id > 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| bad("ids", "ids must be a list of key ids"))?;
            if ids.is_empty() {
                return Err(bad("ids", "ids is empty: select at least one key"));
            }
            Ok(Selection::Ids(ids))
        }
        (None, Some(Value::Object(f))) => {
            let mut p = HashMap::new();
            for (k, v) in f {
                let text = v
                    .as_str()
                    .ok_or_else(|| bad("filter", "filter values must be strings"))?;
                if k != "state" && k != "q" {
                    return Err(bad(
                        "filter",
                        format!("unknown filter {k:?}: use state and q"),
                    ));
                }
                p.insert(k.clone(), text.to_string());
            }
            Ok(Selection::Filter(super::keys::filter_of(&p)?))
        }
        _ => Err(bad(
            "ids",
            "give either ids (a list of key ids) or filter ({\"state\": …, \"q\": …}; {} for every key)",
        )),
    }
}

fn action(name: &str) -> Result<Option<BulkAction>, ApiError> {
    Ok(Some(match name {
        "enable" => BulkAction::Enable,
        "disable" => BulkAction::Disable,
        "delete" => BulkAction::Delete,
        "reset" => BulkAction::Reset,
        "test" => return Ok(None),
        other => {
            return Err(bad(
                "action",
                format!("action must be test, reset, enable, disable or delete, not {other:?}"),
            ));
        }
    }))
}

pub async fn bulk(
    state: &Arc<AppState>,
    service_id: i64,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let json = JsonBody::read(body, state.config.body_read_timeout).await?;
    if let Some(field) = json.unknown_field(&["action", "ids", "filter", "dry_run"]) {
        return Err(bad("body", format!("unknown field {field:?}")));
    }
    let name = json.req_str("action")?;
    let act = action(&name)?;
    let sel = selection(&json)?;
    let not_found = |e| store_error(e, SERVICE_NOT_FOUND);
    if json.opt_bool("dry_run")?.unwrap_or(false) {
        let n = state
            .store
            .select_keys(service_id, sel)
            .await
            .map_err(not_found)?
            .len();
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "action": name, "matched": n }),
        ));
    }
    let Some(act) = act else {
        let ids = state
            .store
            .select_keys(service_id, sel)
            .await
            .map_err(not_found)?;
        let job = start_test(state, service_id, ids).await?;
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({ "job": job.view() }),
        ));
    };
    let ids = state
        .store
        .bulk_keys(service_id, sel, act)
        .await
        .map_err(not_found)?;
    let n = ids.len();
    match act {
        // Enabled keys need their values: read again (rare, and may be many).
        BulkAction::Enable => state.changed().await?,
        BulkAction::Disable => {
            state
                .keys_changed(service_id, KeyChange::Disabled(ids))
                .await?
        }
        BulkAction::Delete => {
            state
                .keys_changed(service_id, KeyChange::Removed(ids))
                .await?
        }
        BulkAction::Reset => {
            state
                .keys_changed(service_id, KeyChange::Reset(ids))
                .await?
        }
    }
    crate::log::info!("bulk {name} on service id {service_id}: {n} keys");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "action": name, "affected": n }),
    ))
}

/// Starts testing `ids` in the background, [`TEST_CONCURRENCY`] at a time.
async fn start_test(
    state: &Arc<AppState>,
    service_id: i64,
    ids: Vec<i64>,
) -> Result<Arc<Job>, ApiError> {
    let (service, spec) = super::keys::testable_service(state, service_id).await?;
    let job = state.jobs.start("test", service_id, ids.len() as u64);
    let (state, run) = (state.clone(), job.clone());
    let (service, spec) = (Arc::new(service), Arc::new(spec));
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        for id in ids {
            if run.cancelled() {
                break;
            }
            while running.len() >= TEST_CONCURRENCY {
                running.join_next().await;
            }
            let (state, job, service, spec) =
                (state.clone(), run.clone(), service.clone(), spec.clone());
            running.spawn(async move {
                let ok = match state.store.get_key(id).await {
                    Ok(Some(key)) => {
                        let answer =
                            crate::proxy::probe::probe_key(&state, &service, &spec, &key).await;
                        answer["ok"] == true
                    }
                    _ => false, // deleted meanwhile
                };
                job.count(ok);
            });
        }
        while running.join_next().await.is_some() {}
        run.finish();
        crate::log::info!(
            "test of {} keys of service id {service_id} ended: {}",
            run.total,
            run.view()
        );
    });
    Ok(job)
}

pub fn job(state: &AppState, id: u64) -> Result<Response<Body>, ApiError> {
    let job = state
        .jobs
        .get(id)
        .ok_or_else(|| ApiError::not_found("Job not found"))?;
    Ok(json_response(StatusCode::OK, &job.view()))
}

pub fn cancel(state: &AppState, id: u64) -> Result<Response<Body>, ApiError> {
    let job = state
        .jobs
        .cancel(id)
        .ok_or_else(|| ApiError::not_found("Job not found"))?;
    Ok(json_response(StatusCode::OK, &job.view()))
}
