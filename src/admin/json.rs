//! Reading admin JSON bodies: size-limited (413, chunked bodies included), parsed (400
//! for malformed JSON), and fields read with messages that name them.

use std::time::Duration;

use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::body::{ReadError, read_limited};
use crate::error::ApiError;

/// A parsed JSON object from a request body.
pub struct JsonBody(Map<String, Value>);

impl JsonBody {
    /// Reads and parses a body that must be a JSON object, of at most 1 MiB, arriving
    /// within `timeout`.
    pub async fn read(body: Incoming, timeout: Duration) -> Result<JsonBody, ApiError> {
        JsonBody::read_at_most(body, super::MAX_BODY, timeout).await
    }

    /// [`JsonBody::read`] with another size limit.
    pub async fn read_at_most(
        body: Incoming,
        limit: usize,
        timeout: Duration,
    ) -> Result<JsonBody, ApiError> {
        let at = tokio::time::Instant::now() + timeout;
        let read = std::pin::pin!(read_limited(body, limit));
        let bytes = match crate::deadline::timeout_at(at, read).await {
            Ok(read) => read,
            Err(_) => {
                return Err(ApiError::admin(
                    http::StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs_f64()
                    ),
                ));
            }
        };
        let bytes = bytes.map_err(|e| match e {
            ReadError::TooLarge => ApiError::admin(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {} KiB", limit / 1024),
            ),
            ReadError::Io(e) => ApiError::admin(
                http::StatusCode::BAD_REQUEST,
                format!("request body could not be read: {e}"),
            ),
        })?;
        JsonBody::parse(&bytes)
    }

    /// Parses bytes that must be a JSON object (400 otherwise).
    pub fn parse(bytes: &[u8]) -> Result<JsonBody, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::admin(
                http::StatusCode::BAD_REQUEST,
                "request body is empty; expected a JSON object",
            ));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(JsonBody(map)),
            Ok(_) => Err(ApiError::admin(
                http::StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::admin(
                http::StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {e}"),
            )),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// An optional string field (`null` counts as missing).
    pub fn opt_str(&self, field: &'static str) -> Result<Option<String>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(
                field,
                format!("{field} must be a string"),
            )),
        }
    }

    /// A required, non-empty string field.
    pub fn req_str(&self, field: &'static str) -> Result<String, ApiError> {
        self.opt_str(field)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, field: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(
                field,
                format!("{field} must be true or false"),
            )),
        }
    }

    /// A required boolean field.
    pub fn req_bool(&self, field: &'static str) -> Result<bool, ApiError> {
        self.opt_bool(field)?
            .ok_or_else(|| ApiError::invalid(field, format!("{field} is required (true or false)")))
    }

    /// An optional integer field.
    pub fn opt_i64(&self, field: &'static str) -> Result<Option<i64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(field, format!("{field} must be an integer"))),
        }
    }

    /// A field's raw value.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.get(field)
    }

    /// Whether the object has `field`, `null` included (a PATCH's `null` clears).
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The first field that is not one of `known`.
    pub fn unknown_field(&self, known: &[&str]) -> Option<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .find(|k| !known.contains(k))
    }
}
