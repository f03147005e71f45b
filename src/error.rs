//! The only place errors become HTTP responses.
//!
//! Admin errors keep the original's JSON key `error` (plus `field` for validation);
//! proxy errors keep `detail` and carry `x-rotator-error: 1`, so a client can tell an
//! error the proxy made from one the upstream sent. Messages never contain a key.

use std::borrow::Cow;

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Which API produced the error; decides the JSON shape and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/admin/*`, `/health`, `/metrics`: `{"error": …}`.
    Admin,
    /// `/proxy/*`, `/llm/*`: `{"detail": …}`.
    Proxy,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub surface: Surface,
    pub message: Cow<'static, str>,
    /// The request field a validation or conflict error is about.
    pub field: Option<&'static str>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Methods for `Allow` on 405.
    pub allow: Option<Cow<'static, str>>,
    /// Adds `"success": false` (the login endpoint's historical shape).
    pub login: bool,
    /// The limit a 429 is about, for the `x-ratelimit-*` headers.
    pub rate_limit: Option<RateLimit>,
}

/// A limit a request went over: `x-ratelimit-limit`, `-remaining`, `-reset` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl ApiError {
    fn new(surface: Surface, status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            surface,
            message: message.into(),
            field: None,
            retry_after: None,
            allow: None,
            login: false,
            rate_limit: None,
        }
    }

    /// An admin API error.
    pub fn admin(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Surface::Admin, status, message)
    }

    /// A proxy error.
    pub fn proxy(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Surface::Proxy, status, message)
    }

    /// 400 naming the field that is wrong.
    pub fn invalid(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::admin(StatusCode::BAD_REQUEST, message).with_field(field)
    }

    /// 409 naming the field that clashes.
    pub fn conflict(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::admin(StatusCode::CONFLICT, message).with_field(field)
    }

    /// 404 with the admin shape.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::admin(StatusCode::NOT_FOUND, message)
    }

    /// 500 for a store failure; the cause is logged, not shown.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        crate::log::error!("{context}: {cause}");
        Self::admin(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context}; see the server log"),
        )
    }

    /// Names the field an error is about.
    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Sets `Retry-After` (seconds, at least 1).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Names the limit a 429 is about.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets `Allow` for a 405.
    pub fn with_allow(mut self, allow: impl Into<Cow<'static, str>>) -> Self {
        self.allow = Some(allow.into());
        self
    }

    /// Marks a login failure, which also says `"success": false`.
    pub fn for_login(mut self) -> Self {
        self.login = true;
        self
    }

    /// Renders the error.
    pub fn into_response(self) -> Response<Body> {
        let mut obj = serde_json::Map::new();
        let key = match self.surface {
            Surface::Admin => "error",
            Surface::Proxy => "detail",
        };
        let message = self.message;
        obj.insert(key.into(), message.as_ref().into());
        if let Some(field) = self.field {
            obj.insert("field".into(), field.into());
        }
        if self.login {
            obj.insert("success".into(), false.into());
        }
        let mut resp = Response::new(body::full(serde_json::Value::Object(obj).to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self.surface {
            Surface::Admin => {
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            Surface::Proxy => {
                h.insert("x-rotator-error", HeaderValue::from_static("1"));
                crate::cors::add_response_headers(h);
            }
        }
        if let Some(secs) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            h.insert(ALLOW, allow);
        }
        if let Some(l) = self.rate_limit {
            h.insert("x-ratelimit-limit", HeaderValue::from(l.limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(l.remaining));
            h.insert("x-ratelimit-reset", HeaderValue::from(l.reset_secs));
        }
        if self.surface == Surface::Proxy {
            // For the request log: what the proxy answered, and why.
            resp.extensions_mut().insert(ProxyMade(message));
        }
        resp
    }
}

/// Marks a response the proxy made itself (not the upstream's), with its message.
#[derive(Debug, Clone)]
pub struct ProxyMade(pub Cow<'static, str>);

/// A JSON response with the admin API's headers.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("JSON values serialise");
    json_body_response(status, body::full(bytes))
}

/// A JSON answer whose body is written elsewhere (streamed).
pub fn json_body_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 405 for anything but GET and HEAD.
pub fn only_get(method: &http::Method) -> Result<(), ApiError> {
    if method == http::Method::GET || method == http::Method::HEAD {
        Ok(())
    } else {
        Err(
            ApiError::admin(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
                .with_allow("GET, HEAD"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn admin_and_proxy_shapes() {
        let r = ApiError::invalid("slug", "slug is bad").into_response();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"error":"slug is bad","field":"slug"})
        );

        let r = ApiError::proxy(StatusCode::SERVICE_UNAVAILABLE, "no keys")
            .with_retry_after(7)
            .into_response();
        assert_eq!(r.headers()["x-rotator-error"], "1");
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        assert_eq!(body_json(r).await, serde_json::json!({"detail":"no keys"}));

        let r = ApiError::admin(StatusCode::UNAUTHORIZED, "Invalid credentials")
            .for_login()
            .into_response();
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"error":"Invalid credentials","success":false})
        );
    }
}
