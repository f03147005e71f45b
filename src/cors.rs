//! CORS for the proxy routes, as the original answers it (`*`). Never on `/admin`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, Body};

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS";

/// Adds the CORS response headers unless the upstream set its own.
pub fn add_response_headers(h: &mut HeaderMap) {
    if !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
}

/// Whether a request is a CORS preflight (OPTIONS with `Access-Control-Request-Method`).
pub fn is_preflight(method: &http::Method, h: &HeaderMap) -> bool {
    method == http::Method::OPTIONS && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204, every method, the requested headers (browsers do not
/// count `Authorization` as covered by `*`, so the request's list is echoed).
pub fn preflight(request: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    let allow_headers = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}
