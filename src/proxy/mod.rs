//! The proxy: `/proxy/<slug>/…` (any REST API) and `/llm/<slug>/…` (OpenAI-compatible,
//! Anthropic and Gemini APIs). Each request is authenticated with a proxy key, matched to
//! an active service of the snapshot, rewritten (hop-by-hop headers and client
//! credentials out, then the real key in, URL composed safely) and forwarded by
//! [`forward::run`], which picks keys and fails over.

pub mod forward;
mod health;
#[doc(hidden)]
pub mod llm;
pub mod probe;
mod redact;
pub mod revalidate;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body, Buffered};
use crate::clients::{Admission, Caller};
use crate::cors;
use crate::error::ApiError;
use crate::headers;
use crate::service::{Kind, Placement};
use crate::snapshot::Service;
use crate::state::AppState;
use crate::upstream::url;
use crate::usage::Trace;

/// Which proxy route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Generic,
    Llm,
}

/// The request body on its way upstream.
pub enum OutBody {
    /// Small enough to keep: every attempt sends a copy, so a failed attempt can be retried.
    Replayable(Bytes),
    /// Too large to keep: streamed once, as it arrives; no retry.
    Streaming(Option<Body>),
}

impl OutBody {
    /// Reads up to `limit` bytes within `timeout`; a longer body streams on. A client
    /// that sends its body too slowly gets a 408.
    async fn read(
        incoming: Incoming,
        limit: usize,
        timeout: Duration,
    ) -> Result<OutBody, ApiError> {
        let at = tokio::time::Instant::now() + timeout;
        let read = std::pin::pin!(body::read_up_to(incoming, limit));
        match crate::deadline::timeout_at(at, read).await {
            Ok(Ok(Buffered::Complete(bytes))) => Ok(OutBody::Replayable(bytes)),
            Ok(Ok(Buffered::Partial(prefix, rest))) => Ok(OutBody::Streaming(Some(body::chain(
                prefix,
                body::stream(rest),
            )))),
            Ok(Err(e)) => Err(ApiError::proxy(
                StatusCode::BAD_REQUEST,
                format!("request body could not be read: {e}"),
            )),
            Err(_) => Err(ApiError::proxy(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (BODY_READ_TIMEOUT)",
                    timeout.as_secs_f64()
                ),
            )),
        }
    }

    /// Whether another attempt can send the body again.
    pub fn replayable(&self) -> bool {
        matches!(self, OutBody::Replayable(_))
    }

    /// The body for one attempt.
    fn take(&mut self) -> Body {
        match self {
            OutBody::Replayable(b) => body::full(b.clone()),
            OutBody::Streaming(b) => b.take().unwrap_or_else(body::empty),
        }
    }
}

/// Everything that goes upstream except the key.
pub struct Outgoing {
    pub method: Method,
    pub headers: HeaderMap,
    /// What of `headers` goes upstream.
    pub rewrite: headers::Rewrite,
    pub body: OutBody,
    /// The client path after the slug (already checked) and query, when the key goes in
    /// the query (otherwise empty: the target is composed once, in `fixed_target`).
    rest: String,
    query: Option<String>,
    /// Client query parameters that are credentials and never go upstream.
    drop_params: &'static [&'static str],
    /// The upstream request target when the key does not go in the query (composed once).
    fixed_target: Option<url::Target>,
    /// Whether the client is a browser (sent `Origin`), so the answer needs CORS headers.
    pub cors: bool,
    /// The request id sent upstream (usage tracking on).
    pub request_id: Option<HeaderValue>,
    /// Ask for an uncompressed answer (usage tracking reads `/llm` answers).
    pub identity: bool,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDENTITY: HeaderValue = HeaderValue::from_static("identity");

impl Outgoing {
    fn new(
        svc: &Service,
        parts: Parts,
        rewrite: headers::Rewrite,
        rest: &str,
        drop_params: &'static [&'static str],
        body: OutBody,
    ) -> Result<Outgoing, ApiError> {
        let cors = headers::has(&parts.headers, &http::header::ORIGIN);
        let fixed_target = match svc.spec.placement {
            Placement::Query { .. } => {
                url::check_rest(rest).map_err(bad_path)?;
                None
            }
            _ => Some(
                url::compose(
                    &svc.spec.upstream,
                    rest,
                    parts.uri.query(),
                    drop_params,
                    None,
                )
                .map_err(bad_path)?,
            ),
        };
        // Path and query are only kept when each attempt composes its own URI.
        let (rest, query) = match fixed_target {
            Some(_) => (String::new(), None),
            None => (rest.to_string(), parts.uri.query().map(str::to_string)),
        };
        Ok(Outgoing {
            method: parts.method,
            headers: parts.headers,
            rewrite,
            body,
            rest,
            query,
            drop_params,
            fixed_target,
            cors,
            request_id: None,
            identity: false,
        })
    }

    /// The headers set over the client's, `key_header` last: the request id and the
    /// encoding usage tracking asks for, then the key. Added when each attempt's head is
    /// written, never put into the client's header map (which would make it grow).
    pub fn extra_headers<'a>(
        &'a self,
        key_header: Option<(&'a HeaderName, &'a HeaderValue)>,
    ) -> ([(&'a HeaderName, &'a HeaderValue); 3], usize) {
        // Only the first `n` are headers to send; the rest is filler.
        let mut extra = [(&X_REQUEST_ID, &IDENTITY); 3];
        let mut n = 0;
        let id = self.request_id.as_ref().map(|v| (&X_REQUEST_ID, v));
        let encoding = self
            .identity
            .then_some((&http::header::ACCEPT_ENCODING, &IDENTITY));
        for h in [id, encoding, key_header].into_iter().flatten() {
            extra[n] = h;
            n += 1;
        }
        (extra, n)
    }

    /// The upstream request target of one attempt: the one composed once, or, when the
    /// key goes in the query, one composed with `secret` in it.
    fn target(&self, svc: &Service, secret: &str) -> Result<Cow<'_, url::Target>, ApiError> {
        match (&self.fixed_target, &svc.spec.placement) {
            (Some(target), _) => Ok(Cow::Borrowed(target)),
            (None, Placement::Query { name }) => url::compose(
                &svc.spec.upstream,
                &self.rest,
                self.query.as_deref(),
                self.drop_params,
                Some(url::QueryParam {
                    name,
                    value: secret,
                }),
            )
            .map(Cow::Owned)
            .map_err(bad_path),
            (None, _) => unreachable!("a fixed target exists unless the key goes in the query"),
        }
    }
}

fn bad_path(e: url::PathError) -> ApiError {
    ApiError::proxy(StatusCode::BAD_REQUEST, format!("path refused: {e}"))
}

/// `(slug, rest)` of a proxy path (the router already checked the prefix and the slug).
fn split_path(path: &str, flavor: Flavor) -> (&str, &str) {
    let prefix = match flavor {
        Flavor::Generic => "/proxy/",
        Flavor::Llm => "/llm/",
    };
    crate::router::first_segment(path.strip_prefix(prefix).unwrap_or(""))
}

/// Handles a proxy route from `peer` (the connection's address).
/// `trace`, when usage insight is on, is filled as the request goes.
pub async fn handle(
    state: &Arc<AppState>,
    peer: IpAddr,
    req: Request<Incoming>,
    flavor: Flavor,
    trace: Option<&mut Trace>,
) -> Result<Response<Body>, ApiError> {
    if cors::is_preflight(req.method(), req.headers()) {
        return Ok(cors::preflight(req.headers()));
    }
    let (parts, incoming) = req.into_parts();
    match flavor {
        Flavor::Generic => generic(state, peer, parts, incoming, trace).await,
        Flavor::Llm => llm::handle(state, peer, parts, incoming, trace).await,
    }
}

/// Notes that the request reached `svc`, with its body's length, and sends the request
/// id upstream.
fn traced(trace: &mut Option<&mut Trace>, svc: &Arc<Service>, out: &mut Outgoing) {
    let Some(t) = trace.as_deref_mut() else {
        return;
    };
    t.service = Some(svc.id);
    out.request_id = Some(t.request_id.clone());
    t.bytes_in = match &out.body {
        OutBody::Replayable(b) => b.len() as u64,
        OutBody::Streaming(_) => out
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
    };
}

/// Checks what a client key may do and counts the request against its limits (a global
/// proxy key may do anything). `model` is the one an `/llm` request names (`flavor`: model
/// rules apply to `/llm` only; `/proxy` requests name none). With Redis, the
/// per-minute and per-day limits are counted there, shared by every instance.
async fn admit(
    state: &AppState,
    caller: &Caller,
    svc: &Service,
    (flavor, model): (Flavor, Option<&str>),
    method: &Method,
    trace: &mut Option<&mut Trace>,
) -> Result<Admission, ApiError> {
    let Caller::Client(key) = caller else {
        return Ok(Admission::free());
    };
    if let Some(t) = trace.as_deref_mut() {
        t.client_key_id = key.id;
        t.client_limits = Some(key.rt.clone());
    }
    let may_name_none =
        flavor == Flavor::Generic || *method == Method::GET || *method == Method::HEAD;
    let now = crate::timefmt::now_ms();
    key.check(now, &svc.slug, model, may_name_none)?;
    let shared = match key.shared_limits() {
        Some(limits) => state.cache.count_client(limits, now).await,
        None => None,
    };
    key.count(now, shared)
}

/// Keeps a client key's place among its open requests until the answer's body ends.
fn held(
    answer: Result<Response<Body>, ApiError>,
    admission: Admission,
) -> Result<Response<Body>, ApiError> {
    match admission.holds() {
        true => answer.map(|r| r.map(|b| body::watch_with(b, admission))),
        false => answer,
    }
}

/// `/proxy/<slug>/<rest>`: proxy key in `X-Proxy-Key`.
async fn generic(
    state: &AppState,
    peer: IpAddr,
    mut parts: Parts,
    incoming: Incoming,
    mut trace: Option<&mut Trace>,
) -> Result<Response<Body>, ApiError> {
    let key =
        headers::find(&parts.headers, &headers::X_PROXY_KEY).map_or(&b""[..], |v| v.as_bytes());
    let Some(caller) = state.caller(key) else {
        return Err(ApiError::proxy(
            StatusCode::UNAUTHORIZED,
            "invalid or missing X-Proxy-Key header",
        ));
    };
    let uri = parts.uri.clone();
    let (slug, rest) = split_path(uri.path(), Flavor::Generic);
    let snap = state.snapshot.load();
    let svc = snap
        .get(slug)
        .filter(|s| s.spec.kind == Kind::Generic)
        .ok_or_else(|| {
            ApiError::proxy(
                StatusCode::NOT_FOUND,
                format!("generic service '{slug}' not found or inactive"),
            )
        })?;
    if let (Some(methods), Some(allow)) = (&svc.spec.methods, &svc.allow) {
        if !methods.contains(&parts.method) {
            return Err(ApiError::proxy(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} not allowed; this service accepts {}",
                    parts.method, allow
                ),
            )
            .with_allow(allow.clone()));
        }
    }
    // The path is checked once, where the upstream URI is composed (`Outgoing::new`).
    let trusted = state.config.trusted_proxies.trusts(peer);
    let rewrite = headers::Rewrite::generic(&mut parts.headers, peer, trusted);
    let body = OutBody::read(
        incoming,
        state.config.retry_body_limit,
        state.config.body_read_timeout,
    )
    .await?;
    let mut out = Outgoing::new(svc, parts, rewrite, rest, &[], body)?;
    traced(&mut trace, svc, &mut out);
    let generic = (Flavor::Generic, None);
    let admission = admit(state, &caller, svc, generic, &out.method, &mut trace).await?;
    held(forward::run(state, svc, out, trace).await, admission)
}
