//! The upstream client over hyper-rustls's connector (webpki roots, ring), TCP_NODELAY,
//! a connect timeout, and a connection pool per upstream (scheme, host, port) with one
//! slot per shard. HTTP/1.1 connections are our own ([`h1`]: the request's task
//! drives them, no task or channel in between); when the server picks HTTP/2 by ALPN,
//! hyper's HTTP/2 connection.
//!
//! Each service of the snapshot holds its upstream's [`Pool`], found once when the
//! snapshot is built, so a request takes a connection without hashing anything: it pops
//! an idle HTTP/1.1 connection from its shard's slot (or clones the shard's HTTP/2
//! connection), and the connection goes back when the response body has been read to
//! the end. An HTTP/2 connection's task runs on the runtime of the shard that opened it,
//! so a request never waits on another thread. Redirects are never followed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service as _;

pub mod h1;
pub mod url;

pub use self::h1::RequestRef;
use self::url::Upstream;
use crate::body::{self, Body, BoxError};
use crate::headers::{Rewrite, Value};

/// Idle HTTP/1.1 connections kept per upstream and shard.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = HttpsConnector<HttpConnector>;
/// The scheme and authority of an upstream.
type Origin = (Scheme, Authority);
/// An HTTP/1.1 connection to an upstream, plain or TLS.
type H1 = h1::Conn<TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>>;

/// Why an upstream request failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, DNS, TLS, connect timeout): nothing was sent.
    Connect(BoxError),
    /// The exchange failed on a connection.
    Request {
        error: BoxError,
        /// Whether request bytes reached the socket: the upstream may have acted on them.
        wrote: bool,
        /// Whether the connection came from the pool (it may have been closed meanwhile).
        reused: bool,
        /// Whether any byte of an answer came.
        answered: bool,
    },
    /// The client's request body failed (it went away, or sent less than it announced).
    ClientBody(BoxError),
}

impl SendError {
    /// Whether the failure happened before any byte of the request was sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// Whether the upstream may have received the request (and, for a POST, acted on it:
    /// it must not be sent again with another key).
    pub fn may_have_been_received(&self) -> bool {
        matches!(self, SendError::Request { wrote: true, .. })
    }

    /// A pooled connection that failed before any answer: most likely one the upstream
    /// closed while it was idle, which a fresh connection does not share.
    pub fn is_stale_connection(&self) -> bool {
        matches!(
            self,
            SendError::Request {
                reused: true,
                answered: false,
                ..
            }
        )
    }

    /// The failure by its causes, for the log and the client (never a URL or a header:
    /// no key can be in it).
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        }];
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        loop {
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            let Some(s) = source else { break };
            text = s.to_string();
            source = s.source();
        }
        parts.join(": ")
    }

    fn request(error: impl Into<BoxError>) -> SendError {
        SendError::Request {
            error: error.into(),
            wrote: true,
            reused: false,
            answered: false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) | SendError::Request { error: e, .. } => write!(f, "{e}"),
            SendError::ClientBody(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) | SendError::Request { error: e, .. } => e.source(),
            SendError::ClientBody(e) => e.source(),
        }
    }
}

impl RequestRef<'_> {
    /// Whether a client header of this name gives way to an `extra` one.
    pub fn replaces(&self, name: &http::HeaderName) -> bool {
        self.extra.iter().any(|(n, _)| *n == name)
    }

    /// An owned request (for HTTP/2) to `origin`: copies of the parts, rewritten, `extra`
    /// inserted.
    fn to_request(&self, origin: &Origin, body: Body) -> Result<Request<Body>, SendError> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = url::absolute(origin.0.clone(), origin.1.clone(), self.target)
            .map_err(|e| SendError::request(e.0))?;
        let headers = req.headers_mut();
        self.rewrite.each(self.headers, |name, value| {
            if name == HOST || self.replaces(name) {
                return;
            }
            let value = match value {
                Value::Same(v) => v.clone(),
                Value::Joined(parts) => match HeaderValue::from_bytes(&parts.concat()) {
                    Ok(v) => v,
                    Err(_) => return,
                },
            };
            headers.append(name, value);
        });
        for (name, value) in self.extra {
            headers.insert(*name, (*value).clone());
        }
        Ok(req)
    }
}

/// The pools of every upstream, shared by all snapshots.
pub struct Upstreams {
    connector: Connector,
    shards: usize,
    pools: Mutex<HashMap<Origin, Arc<Pool>>>,
}

/// The CA roots upstream certificates are checked against: the public web roots
/// (compiled in, so a `FROM scratch` image needs no CA bundle) and, from `extra_ca`, the
/// PEM certificates of a private CA.
fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("UPSTREAM_CA_FILE {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "UPSTREAM_CA_FILE {} holds no PEM certificate",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("UPSTREAM_CA_FILE {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl Upstreams {
    /// A registry for `shards` shards; connections time out after `connect_timeout`;
    /// `extra_ca` adds a private CA to the trusted roots.
    pub fn new(
        connect_timeout: Duration,
        shards: usize,
        extra_ca: Option<&Path>,
    ) -> Result<Upstreams, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(extra_ca)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Upstreams {
            connector,
            shards: shards.max(1),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// The pool of an upstream (created on first use; the same for every service that
    /// points at the same scheme, host and port).
    pub fn pool(&self, up: &Upstream) -> Arc<Pool> {
        let key = (up.scheme.clone(), up.authority.clone());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    connector: self.connector.clone(),
                    target: Uri::builder()
                        .scheme(up.scheme.clone())
                        .authority(up.authority.clone())
                        .path_and_query("/")
                        .build()
                        .expect("a scheme and an authority make a URI"),
                    origin: (up.scheme.clone(), up.authority.clone()),
                    host: up.host.clone(),
                    slots: (0..self.shards).map(|_| Mutex::default()).collect(),
                })
            })
            .clone()
    }

    /// Drops the pools no snapshot uses any more (a service deleted or pointed elsewhere),
    /// closing their idle connections. Called after each snapshot swap; a pool that an
    /// older snapshot or a request still holds goes at a later one.
    pub fn prune(&self) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, pool| Arc::strong_count(pool) > 1);
    }
}

/// Connections to one upstream, one slot per shard.
pub struct Pool {
    connector: Connector,
    /// `scheme://host:port/`, what the connector dials.
    target: Uri,
    /// Its scheme and authority, for HTTP/2 requests.
    origin: Origin,
    /// `Host` for HTTP/1.1 requests.
    host: HeaderValue,
    slots: Box<[Mutex<Slot>]>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.target)
    }
}

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, oldest first, with the time they became idle.
    idle: Vec<(H1, Instant)>,
    /// The shard's HTTP/2 connection, when the upstream speaks it.
    h2: Option<http2::SendRequest<Body>>,
}

/// A fresh connection.
enum Fresh {
    H1(H1),
    H2(http2::SendRequest<Body>),
}

impl Pool {
    fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` (with an absolute URI) and returns the response, whose body streams
    /// from the upstream connection.
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let (parts, body) = req.into_parts();
        let head = RequestRef {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
            rewrite: Rewrite::NONE,
            extra: &[],
        };
        self.send_head(head, body, false).await
    }

    /// Sends a request given by reference (the proxy keeps its headers for the next
    /// attempt): HTTP/1.1 writes them as they are, HTTP/2 builds a request from a copy.
    /// `fresh` asks for a new HTTP/1.1 connection instead of an idle one.
    pub async fn send_head(
        self: &Arc<Self>,
        head: RequestRef<'_>,
        body: Body,
        fresh: bool,
    ) -> Result<Response<Body>, SendError> {
        let index = crate::shard::current() % self.slots.len();
        let h2 = self.slot(index).h2.clone();
        if let Some(h2) = h2.filter(|c| !c.is_closed()) {
            return send_h2(h2, head.to_request(&self.origin, body)?).await;
        }
        let idle = if fresh { None } else { self.checkout(index) };
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            // Boxed: connecting is rare, and its future is large.
            None => match Box::pin(self.connect(index)).await? {
                Fresh::H1(conn) => conn,
                // The server chose HTTP/2.
                Fresh::H2(conn) => {
                    return send_h2(conn, head.to_request(&self.origin, body)?).await;
                }
            },
        };
        let pool = self.clone();
        h1::send(conn, head, &self.host, body, move |conn| {
            pool.put_idle(index, conn)
        })
        .await
        .map_err(|f| match f.error {
            h1::Error::Body(e) => SendError::ClientBody(e),
            error => SendError::Request {
                error: error.into(),
                wrote: f.wrote,
                reused,
                answered: f.answered,
            },
        })
    }

    /// The most recently idle connection of this shard that can take a request: not idle
    /// longer than `IDLE_TIMEOUT`, neither closed by the upstream nor sending unasked.
    fn checkout(&self, index: usize) -> Option<H1> {
        loop {
            let (mut conn, since) = self.slot(index).idle.pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && conn.is_reusable() {
                return Some(conn);
            }
        }
    }

    /// Opens a connection on this shard's runtime.
    async fn connect(self: &Arc<Self>, index: usize) -> Result<Fresh, SendError> {
        let mut connector = self.connector.clone();
        ConnectorReady(&mut connector)
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (conn, driver) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(io)
                .await
                .map_err(SendError::request)?;
            tokio::spawn(driver);
            self.slot(index).h2 = Some(conn.clone());
            return Ok(Fresh::H2(conn));
        }
        Ok(Fresh::H1(h1::Conn::new(TokioIo::new(io))))
    }

    fn put_idle(&self, index: usize, conn: H1) {
        let now = Instant::now();
        let mut slot = self.slot(index);
        // Close what idled too long (oldest first) and keep the list bounded.
        let stale = slot
            .idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) > IDLE_TIMEOUT)
            .count();
        slot.idle.drain(..stale);
        if slot.idle.len() < MAX_IDLE {
            slot.idle.push((conn, now));
        }
    }
}

async fn send_h2(
    mut conn: http2::SendRequest<Body>,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    conn.ready().await.map_err(|e| SendError::Request {
        error: e.into(),
        wrote: false,
        reused: true,
        answered: false,
    })?;
    let resp = conn.send_request(req).await.map_err(SendError::request)?;
    Ok(resp.map(body::stream))
}

/// Waits until the connector can take a connection (a named future: a closure over
/// `Context` here would make the request future's `Send` proof fail).
struct ConnectorReady<'a>(&'a mut Connector);

impl std::future::Future for ConnectorReady<'_> {
    type Output = Result<(), BoxError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.poll_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_taken_from_the_pool() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ups = Upstreams::new(Duration::from_secs(1), 1, None).unwrap();
        let pool = ups.pool(&Upstream::parse(&format!("http://{addr}")).unwrap());
        let idle_conn = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            h1::Conn::new(TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(tcp))))
        };
        let Some(stale) = Instant::now().checked_sub(IDLE_TIMEOUT + Duration::from_secs(1)) else {
            return; // the clock cannot go back that far on this machine
        };
        let conn = idle_conn().await;
        pool.slot(0).idle.push((conn, stale));
        assert!(pool.checkout(0).is_none(), "idle longer than the limit");
        let conn = idle_conn().await;
        pool.slot(0).idle.push((conn, Instant::now()));
        assert!(pool.checkout(0).is_some());
        drop(listener);
    }

    #[test]
    fn pools_are_shared_per_upstream_and_pruned_when_unused() {
        let ups = Upstreams::new(Duration::from_secs(1), 2, None).unwrap();
        let a = Upstream::parse("http://a.example:8080/v1").unwrap();
        let a2 = Upstream::parse("http://a.example:8080/other").unwrap();
        let b = Upstream::parse("https://b.example").unwrap();
        let (pa, pa2, pb) = (ups.pool(&a), ups.pool(&a2), ups.pool(&b));
        assert!(
            Arc::ptr_eq(&pa, &pa2),
            "same scheme, host and port: one pool"
        );
        assert!(!Arc::ptr_eq(&pa, &pb));
        ups.prune();
        assert_eq!(ups.pools.lock().unwrap().len(), 2, "both still used");
        drop((pa, pa2));
        ups.prune();
        let left: Vec<_> = ups.pools.lock().unwrap().keys().cloned().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.as_str(), "b.example");
        drop(pb);
    }
}
