//! `GET /health` and `GET /metrics`.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::{ApiError, json_response, only_get};
use crate::state::AppState;
use crate::timefmt::now_ms;

/// `GET /health`: 200 when the database answers, 503 when it does not.
pub async fn health(state: &AppState, method: &Method) -> Result<Response<Body>, ApiError> {
    only_get(method)?;
    let db_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &serde_json::json!({
            "status": if db_ok { "ok" } else { "unavailable" },
            "database": state.store.kind(),
            "database_ok": db_ok,
            "cache": state.cache.kind(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    ))
}

/// `GET /metrics`: `Authorization: Bearer <METRICS_TOKEN>`, or an admin token when no
/// `METRICS_TOKEN` is set.
pub fn metrics(state: &AppState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    only_get(req.method())?;
    let token = crate::auth::bearer(req.headers()).unwrap_or("");
    let allowed = match &state.config.metrics_token {
        Some(t) => crate::auth::secrets_equal(token, t.expose()),
        None => crate::admin::token_valid(state, token),
    };
    if !allowed {
        return Err(ApiError::admin(
            StatusCode::UNAUTHORIZED,
            "metrics need Authorization: Bearer <METRICS_TOKEN> (or an admin token when METRICS_TOKEN is unset)",
        ));
    }
    let snap = state.snapshot.load();
    let now = now_ms();
    let states = snap
        .services()
        .iter()
        .map(|svc| (&*svc.slug, svc.pool.count_states(now)));
    let mut text = state.metrics.render(states);
    if let Some(usage) = &state.usage {
        let slug = |id: i64| {
            snap.services()
                .iter()
                .find(|s| s.id == id)
                .map_or_else(|| format!("#{id}"), |s| s.slug.to_string())
        };
        let totals: Vec<_> = usage
            .token_totals()
            .into_iter()
            .map(|(id, model, counts)| (slug(id), model, counts))
            .collect();
        crate::metrics::Metrics::render_tokens(&mut text, &totals);
    }
    let mut resp = Response::new(crate::body::full(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}
