//! Application state and the request entry point: route, dispatch, turn errors into
//! responses (in one place), write the access log line.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::{LoginThrottle, ProxyKeys};
use crate::body::{Body, End};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{ApiError, json_response};
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::proxy::client::Upstreams;
use crate::proxy::{self, Flavor};
use crate::router::{self, Route};
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::store::Store;
use crate::timefmt::now_ms;

/// Everything a request may need, built once at start.
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub cache: Cache,
    pub snapshot: SnapshotCell,
    pub registry: KeyRegistry,
    /// Upstream connection pools (one slot per shard).
    pub upstreams: Upstreams,
    pub metrics: Metrics,
    pub proxy_keys: ProxyKeys,
    pub login_throttle: LoginThrottle,
    /// Serialises snapshot rebuilds so an older one never replaces a newer one.
    reload_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    /// Builds the state and loads the first snapshot.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        cache: Cache,
    ) -> Result<Arc<AppState>, String> {
        let state = Arc::new(AppState {
            upstreams: Upstreams::new(
                config.connect_timeout,
                config.worker_threads,
                config.upstream_ca_file.as_deref(),
            )?,
            proxy_keys: ProxyKeys::new(&config.proxy_keys),
            config,
            store,
            cache,
            snapshot: SnapshotCell::default(),
            registry: KeyRegistry::default(),
            metrics: Metrics::default(),
            login_throttle: LoginThrottle::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        state
            .reload()
            .await
            .map_err(|e| format!("Failed to load services: {e}"))?;
        Ok(state)
    }

    /// Rebuilds the snapshot from the store.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        let _guard = self.reload_lock.lock().await;
        let dump = self.store.load_all().await?;
        let snap = Snapshot::build(
            &dump,
            &self.registry,
            &self.metrics,
            &self.upstreams,
            now_ms(),
        );
        self.snapshot.store(snap);
        self.upstreams.prune();
        Ok(())
    }

    /// After an admin write: rebuild the snapshot and tell other instances.
    pub async fn changed(&self) -> Result<(), ApiError> {
        self.reload()
            .await
            .map_err(|e| ApiError::internal("saved, but reloading the services failed", e))?;
        self.cache.publish_change();
        Ok(())
    }
}

/// Handles one request. Never fails: errors are already responses here.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Behind a trusted reverse proxy, the client is the one it names.
    let client = match state.config.trusted_proxies.any() {
        true => state
            .config
            .trusted_proxies
            .client(peer.ip(), req.headers()),
        false => peer.ip(),
    };
    if !crate::log::enabled(crate::log::Level::Info) {
        return Ok(dispatch(&state, peer.ip(), client, req)
            .await
            .unwrap_or_else(ApiError::into_response));
    }
    let line = AccessLine {
        start: Instant::now(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        client,
        status: StatusCode::OK,
    };
    let resp = dispatch(&state, peer.ip(), client, req)
        .await
        .unwrap_or_else(ApiError::into_response);
    Ok(AccessLine {
        status: resp.status(),
        ..line
    }
    .attach(resp))
}

/// Routes a request from `peer` (the connection's address) for `client` (the same, or
/// the address a trusted proxy reports).
async fn dispatch(
    state: &Arc<AppState>,
    peer: IpAddr,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match router::route(req.uri().path()) {
        // Boxed: hyper keeps the space of the service's future for as long as the
        // connection lives, and the proxy's is several KiB that an open stream would
        // otherwise hold for nothing (one allocation per request instead).
        Route::Proxy { .. } => Box::pin(proxy::handle(state, peer, req, Flavor::Generic)).await,
        Route::Llm { .. } => Box::pin(proxy::handle(state, peer, req, Flavor::Llm)).await,
        // Boxed, as the proxy's: their futures hold database calls.
        Route::Admin(_) => Box::pin(crate::admin::handle(state, client, req)).await,
        Route::Health => Box::pin(health(state, req.method())).await,
        Route::Metrics => metrics(state, &req),
        Route::ApiNotFound => Err(ApiError::not_found("Route not found")),
        Route::Index | Route::PageFallback => crate::static_files::page(req.method()),
        Route::Asset(name) => crate::static_files::asset(req.method(), name),
    }
}

/// 405 for anything but GET and HEAD.
pub(crate) fn only_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(
            ApiError::admin(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
                .with_allow("GET, HEAD"),
        )
    }
}

/// `GET /health`: 200 when the database answers, 503 when it does not.
async fn health(state: &AppState, method: &Method) -> Result<Response<Body>, ApiError> {
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
fn metrics(state: &AppState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
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
    let text = state.metrics.render(&state.snapshot.load(), now_ms());
    let mut resp = Response::new(crate::body::full(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// The access log line of one request, written when its response body ends (or is
/// dropped, or fails). Client address, method, path without the query string, status,
/// duration, bytes: never a query string, never a header value. Every field is escaped
/// by the logger, so a client's path cannot fake a line.
struct AccessLine {
    start: Instant,
    method: Method,
    path: String,
    client: IpAddr,
    status: StatusCode,
}

impl AccessLine {
    fn attach(self, resp: Response<Body>) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let body = crate::body::watch(body, move |bytes, end| self.write(bytes, end));
        Response::from_parts(parts, body)
    }

    fn write(self, bytes: u64, end: End) {
        // A body that broke off is an error, whatever its status said.
        let level = match end {
            End::Failed(_) => crate::log::Level::Warn,
            _ => crate::log::Level::Info,
        };
        if crate::log::enabled(level) {
            let us = self.start.elapsed().as_micros() as u64;
            crate::log::write_with(level, |line| self.format(line, us, bytes, &end));
        }
    }

    /// `<client> <method> <path> <status> <ms>.<µs>ms <bytes>B[ (…)]`, appended part by
    /// part (no `core::fmt`: this runs on every request).
    fn format(&self, line: &mut Vec<u8>, us: u64, bytes: u64, end: &End) {
        use crate::log::push_decimal;
        match self.client {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        line.push(b'.');
                    }
                    push_decimal(line, u64::from(octet), 1);
                }
            }
            ip @ IpAddr::V6(_) => {
                use std::io::Write as _;
                let _ = write!(line, "{ip}");
            }
        }
        for part in [" ", self.method.as_str(), " ", &self.path, " "] {
            line.extend_from_slice(part.as_bytes());
        }
        push_decimal(line, u64::from(self.status.as_u16()), 3);
        line.push(b' ');
        push_decimal(line, us / 1000, 1);
        line.push(b'.');
        push_decimal(line, us % 1000, 3);
        line.extend_from_slice(b"ms ");
        push_decimal(line, bytes, 1);
        line.push(b'B');
        match end {
            End::Complete => {}
            End::ClientGone => line.extend_from_slice(b" (client went away)"),
            End::Failed(cause) => {
                line.extend_from_slice(b" (body cut: ");
                line.extend_from_slice(cause.as_bytes());
                line.push(b')');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(client: &str, status: u16, us: u64, bytes: u64, end: End) -> String {
        let access = AccessLine {
            start: Instant::now(),
            method: Method::POST,
            path: "/llm/openai/v1/chat/completions".into(),
            client: client.parse().unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
        };
        let mut text = Vec::new();
        access.format(&mut text, us, bytes, &end);
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn the_access_line_has_its_parts_in_order() {
        assert_eq!(
            line("203.0.113.7", 200, 1_234_567, 512, End::Complete),
            "203.0.113.7 POST /llm/openai/v1/chat/completions 200 1234.567ms 512B"
        );
        assert_eq!(
            line("10.0.0.1", 502, 45, 0, End::ClientGone),
            "10.0.0.1 POST /llm/openai/v1/chat/completions 502 0.045ms 0B (client went away)"
        );
        assert_eq!(
            line("2001:db8::1", 429, 1000, 99, End::Complete),
            "2001:db8::1 POST /llm/openai/v1/chat/completions 429 1.000ms 99B"
        );
        assert_eq!(
            line(
                "10.0.0.1",
                200,
                1000,
                3,
                End::Failed("connection closed mid-body".into())
            ),
            "10.0.0.1 POST /llm/openai/v1/chat/completions 200 1.000ms 3B (body cut: connection closed mid-body)"
        );
    }
}
