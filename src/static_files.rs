//! The admin page: files of `static/`, embedded at build time (see build.rs), served with
//! a strict Content-Security-Policy.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response};

use crate::body::{self, Body};
use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/static_files.rs"));

/// No inline script or style, nothing from another host, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'; connect-src 'self'";

/// Shown when the binary was built without a `static/` directory.
const NO_PAGE: &[u8] = b"<!doctype html><title>api-key-rotator</title><p>The admin page was not built into this binary.";

fn find(name: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn respond(name: &str, bytes: &'static [u8]) -> Response<Body> {
    let mut resp = Response::new(body::full(bytes));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}

/// `/` and any non-API path: `index.html`.
pub fn page(method: &Method) -> Result<Response<Body>, ApiError> {
    crate::error::only_get(method)?;
    Ok(respond("index.html", find("index.html").unwrap_or(NO_PAGE)))
}

/// `/assets/<name>`.
pub fn asset(method: &Method, name: &str) -> Result<Response<Body>, ApiError> {
    crate::error::only_get(method)?;
    let path = format!("assets/{name}");
    find(&path)
        .map(|bytes| respond(&path, bytes))
        .ok_or_else(|| ApiError::not_found("Asset not found"))
}
