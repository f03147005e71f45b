//! The admin API under `/admin`: the original's routes and JSON shapes, with real
//! authentication (an HS256 token from `POST /admin/login`), validation, honest status
//! codes and masked keys. Every write goes to the store, then rebuilds the snapshot.

mod bulk;
mod client_keys;
mod json;
mod keys;
mod login;
mod services;
mod usage;

use std::net::IpAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::ApiError;
use crate::router::{self, AdminRoute, Route};
use crate::state::AppState;

pub use json::JsonBody;

/// Largest admin request body.
pub const MAX_BODY: usize = 1 << 20;

/// Whether `token` is a valid admin token right now.
pub fn token_valid(state: &AppState, token: &str) -> bool {
    authenticate(state, token).is_ok()
}

fn authenticate(state: &AppState, token: &str) -> Result<(), ApiError> {
    let unauthorized = |m: &'static str| ApiError::admin(StatusCode::UNAUTHORIZED, m);
    if token.is_empty() {
        return Err(unauthorized(
            "Authorization: Bearer <token> required; get a token from POST /admin/login",
        ));
    }
    let claims = crate::jwt::verify(
        state.config.jwt_secret.expose().as_bytes(),
        token,
        crate::timefmt::now_secs(),
    )
    .map_err(|e| match e {
        crate::jwt::JwtError::Expired => unauthorized("Admin token expired; log in again"),
        _ => unauthorized("Invalid admin token; log in again"),
    })?;
    if claims.sub != state.config.admin_username {
        return Err(unauthorized("Invalid admin token; log in again"));
    }
    Ok(())
}

/// An admin route with its id parsed.
#[derive(Debug, Clone, Copy)]
enum Op {
    Login,
    AppConfig,
    Services,
    Service(i64),
    ServiceStatus(i64),
    ServiceKeys(i64),
    ServiceKeysBatch(i64),
    Key(i64),
    KeyReset(i64),
    KeyTest(i64),
    Usage,
    Requests,
    ClientKeys,
    ClientKey(i64),
    ServiceKeysBulk(i64),
    Job(u64),
}

fn parse_id(s: &str, message: &'static str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::admin(StatusCode::BAD_REQUEST, message))
}

fn op(route: AdminRoute<'_>) -> Result<Op, ApiError> {
    use AdminRoute as R;
    Ok(match route {
        R::Login => Op::Login,
        R::AppConfig => Op::AppConfig,
        R::Services => Op::Services,
        R::Service(id) => Op::Service(parse_id(id, "Invalid ID")?),
        R::ServiceStatus(id) => Op::ServiceStatus(parse_id(id, "Invalid ID")?),
        R::ServiceKeys(id) => Op::ServiceKeys(parse_id(id, "Invalid config ID")?),
        R::ServiceKeysBatch(id) => Op::ServiceKeysBatch(parse_id(id, "Invalid ID")?),
        R::Key(id) => Op::Key(parse_id(id, "Invalid key ID")?),
        R::KeyReset(id) => Op::KeyReset(parse_id(id, "Invalid key ID")?),
        R::KeyTest(id) => Op::KeyTest(parse_id(id, "Invalid key ID")?),
        R::Usage => Op::Usage,
        R::Requests => Op::Requests,
        R::ClientKeys => Op::ClientKeys,
        R::ClientKey(id) => Op::ClientKey(parse_id(id, "Invalid client key ID")?),
        R::ServiceKeysBulk(id) => Op::ServiceKeysBulk(parse_id(id, "Invalid ID")?),
        R::Job(id) => Op::Job(parse_id(id, "Invalid job ID")? as u64),
    })
}

/// 405 with the methods a route takes.
fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::admin(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed").with_allow(allow)
}

/// Handles `/admin/*`.
pub async fn handle(
    state: &Arc<AppState>,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Route::Admin(route) = router::route(req.uri().path()) else {
        return Err(ApiError::not_found("Route not found"));
    };
    let op = op(route)?;
    if !matches!(op, Op::Login | Op::AppConfig) {
        authenticate(state, crate::auth::bearer(req.headers()).unwrap_or(""))?;
    }
    let reveal = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "reveal=true" || p == "reveal=1"));
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let body = req.into_body();
    match (op, method) {
        (Op::Login, Method::POST) => login::login(state, client, body).await,
        (Op::Login, _) => Err(method_not_allowed("POST")),
        (Op::AppConfig, Method::GET) => Ok(login::app_config(state)),
        (Op::AppConfig, _) => Err(method_not_allowed("GET")),
        (Op::Services, Method::GET) => services::list(state).await,
        (Op::Services, Method::POST) => services::create(state, body).await,
        (Op::Services, _) => Err(method_not_allowed("GET, POST")),
        (Op::Service(id), Method::GET) => services::get(state, id).await,
        (Op::Service(id), Method::PUT) => services::update(state, id, body).await,
        (Op::Service(id), Method::DELETE) => services::delete(state, id).await,
        (Op::Service(_), _) => Err(method_not_allowed("GET, PUT, DELETE")),
        (Op::ServiceStatus(id), Method::PUT) => services::set_status(state, id, body).await,
        (Op::ServiceStatus(_), _) => Err(method_not_allowed("PUT")),
        (Op::ServiceKeys(id), Method::GET) => keys::list(state, id, reveal, query.as_deref()).await,
        (Op::ServiceKeys(id), Method::POST) => keys::add(state, id, body).await,
        (Op::ServiceKeys(id), Method::DELETE) => keys::clear(state, id).await,
        (Op::ServiceKeys(_), _) => Err(method_not_allowed("GET, POST, DELETE")),
        (Op::ServiceKeysBatch(id), Method::POST) => keys::batch(state, id, body).await,
        (Op::ServiceKeysBatch(_), _) => Err(method_not_allowed("POST")),
        (Op::ServiceKeysBulk(id), Method::POST) => bulk::bulk(state, id, body).await,
        (Op::ServiceKeysBulk(_), _) => Err(method_not_allowed("POST")),
        (Op::Job(id), Method::GET) => bulk::job(state, id),
        (Op::Job(id), Method::DELETE) => bulk::cancel(state, id),
        (Op::Job(_), _) => Err(method_not_allowed("GET, DELETE")),
        (Op::Key(id), Method::PATCH) => keys::update(state, id, body).await,
        (Op::Key(id), Method::DELETE) => keys::delete(state, id).await,
        (Op::Key(_), _) => Err(method_not_allowed("PATCH, DELETE")),
        (Op::KeyReset(id), Method::POST) => keys::reset(state, id).await,
        (Op::KeyReset(_), _) => Err(method_not_allowed("POST")),
        (Op::KeyTest(id), Method::POST) => keys::test(state, id).await,
        (Op::KeyTest(_), _) => Err(method_not_allowed("POST")),
        (Op::Usage, Method::GET) => usage::usage(state, query.as_deref()).await,
        (Op::Requests, Method::GET) => usage::requests(state, query.as_deref()).await,
        (Op::Usage | Op::Requests, _) => Err(method_not_allowed("GET")),
        (Op::ClientKeys, Method::GET) => client_keys::list(state).await,
        (Op::ClientKeys, Method::POST) => client_keys::create(state, body).await,
        (Op::ClientKeys, _) => Err(method_not_allowed("GET, POST")),
        (Op::ClientKey(id), Method::GET) => client_keys::get(state, id).await,
        (Op::ClientKey(id), Method::PATCH) => client_keys::update(state, id, body).await,
        (Op::ClientKey(id), Method::DELETE) => client_keys::delete(state, id).await,
        (Op::ClientKey(_), _) => Err(method_not_allowed("GET, PATCH, DELETE")),
    }
}

/// Maps store errors for admin answers.
fn store_error(e: crate::store::StoreError, not_found: &'static str) -> ApiError {
    use crate::store::StoreError;
    match e {
        StoreError::NotFound => ApiError::not_found(not_found),
        StoreError::Conflict(field) => {
            ApiError::conflict(field, format!("a service with this {field} already exists"))
        }
        StoreError::Backend(msg) => ApiError::internal("database error", msg),
    }
}

/// A `{"message": …}` answer.
fn message(text: &str) -> Response<Body> {
    crate::error::json_response(StatusCode::OK, &serde_json::json!({ "message": text }))
}
