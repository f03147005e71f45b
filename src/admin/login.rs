//! `POST /admin/login` and `GET /admin/app-config`.

use std::net::IpAddr;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::JsonBody;
use crate::auth::secrets_equal;
use crate::body::Body;
use crate::error::{ApiError, json_response};
use crate::state::AppState;
use crate::timefmt::{now_ms, now_secs};

/// Checks the admin credentials (constant time, throttled per client address) and issues
/// a token.
/// Largest login body (a user name and a password).
const MAX_LOGIN_BODY: usize = 16 * 1024;

pub async fn login(
    state: &AppState,
    ip: IpAddr,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    // Counted before the body is read: parallel attempts are not free.
    let block = state
        .login_throttle
        .attempt(ip, now_ms())
        .map_err(too_many)?;
    let json = JsonBody::read_at_most(body, MAX_LOGIN_BODY, state.config.body_read_timeout).await?;
    let username = json.req_str("username")?;
    let password = json.req_str("password")?;
    // Both are always compared, so timing says nothing about which one was wrong.
    let user_ok = secrets_equal(&username, &state.config.admin_username);
    let pass_ok = secrets_equal(&password, state.config.admin_password.expose());
    if !(user_ok & pass_ok) {
        if let Some(secs) = block {
            crate::log::warn!("failed admin logins from {ip}: blocked for {secs} s");
        }
        return Err(ApiError::admin(StatusCode::UNAUTHORIZED, "Invalid credentials").for_login());
    }
    state.login_throttle.succeeded(ip);
    let ttl = state.config.jwt_ttl.as_secs().max(1);
    let token = crate::jwt::issue(
        state.config.jwt_secret.expose().as_bytes(),
        &state.config.admin_username,
        now_secs(),
        ttl,
    );
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "message": "Login successful",
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl,
        }),
    ))
}

fn too_many(secs: u64) -> ApiError {
    ApiError::admin(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too many failed login attempts, retry in {secs} s"),
    )
    .with_retry_after(secs)
    .for_login()
}

/// The public settings the admin page needs.
pub fn app_config(state: &AppState) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "proxy_public_base_url": state.config.public_base_url }),
    )
}
