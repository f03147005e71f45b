//! Helpers every integration test shares: a proxy started in-process on 127.0.0.1:0 with
//! a real SQLite file, upstream servers started by the test that record what they
//! receive, and a small HTTP client.
#![allow(dead_code)]

pub mod store_suite;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use api_key_rotator::body::{self, Body};
use api_key_rotator::{Config, Running};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ADMIN_PASSWORD: &str = "test-admin-password";
pub const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef-test";
pub const PROXY_KEY: &str = "test-proxy-key";

/// The base configuration of a test server, as environment variables.
pub fn base_env(db: &std::path::Path) -> HashMap<String, String> {
    [
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("JWT_SECRET", JWT_SECRET),
        (
            "GLOBAL_PROXY_KEYS",
            &format!("{PROXY_KEY},second-proxy-key"),
        ),
        ("DATABASE_PATH", db.to_str().unwrap()),
        ("LOG_LEVEL", "error"),
        ("PROXY_PUBLIC_BASE_URL", "http://proxy.example"),
        ("STATS_FLUSH_SECONDS", "0.2"),
        ("SHUTDOWN_GRACE_SECONDS", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A proxy running in this process.
pub struct TestServer {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub env: HashMap<String, String>,
    token: Mutex<Option<String>>,
}

/// Starts a proxy with a fresh SQLite file and extra settings.
pub async fn start(extra: &[(&str, &str)]) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    start_in(dir, extra).await
}

/// Starts a proxy on the SQLite file in `dir` (to test what survives a restart).
pub async fn start_in(dir: Arc<tempfile::TempDir>, extra: &[(&str, &str)]) -> TestServer {
    let mut env = base_env(&dir.path().join("db.sqlite"));
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_source(&|k| env.get(k).cloned()).expect("test config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = api_key_rotator::start(config, listener, std::future::pending())
        .await
        .expect("server starts");
    TestServer {
        addr: running.addr,
        running: Some(running),
        dir,
        env,
        token: Mutex::new(None),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server (drain, final statistics flush).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn state(&self) -> &Arc<api_key_rotator::AppState> {
        &self.running.as_ref().unwrap().state
    }

    /// An admin token (logged in once).
    pub async fn token(&self) -> String {
        if let Some(t) = self.token.lock().unwrap().clone() {
            return t;
        }
        let (status, _, body) = send_json(
            Method::POST,
            &self.url("/admin/login"),
            &[],
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let t = body["access_token"].as_str().unwrap().to_string();
        *self.token.lock().unwrap() = Some(t.clone());
        t
    }

    /// An authenticated admin call.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let auth = format!("Bearer {}", self.token().await);
        send_json(method, &self.url(path), &[("authorization", &auth)], body).await
    }

    /// Creates a service and returns its id.
    pub async fn create_service(&self, body: Value) -> i64 {
        let (status, _, v) = self
            .admin(Method::POST, "/admin/proxy-configs", Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// A generic service in front of `upstream`, with `keys`, injecting the key as header
    /// `X-Api-Key`.
    pub async fn generic_service(&self, slug: &str, target: &str, keys: &[&str]) -> i64 {
        let id = self
            .create_service(json!({
                "name": slug, "slug": slug, "config_type": "GENERIC", "method": "ANY",
                "target_url": target, "api_key_location": "header", "api_key_name": "X-Api-Key",
            }))
            .await;
        self.add_keys(id, keys).await;
        id
    }

    /// An LLM service of `format` in front of `base`, with `keys`.
    pub async fn llm_service(&self, slug: &str, format: &str, base: &str, keys: &[&str]) -> i64 {
        let id = self
            .create_service(json!({
                "name": slug, "slug": slug, "config_type": "LLM", "api_format": format,
                "target_base_url": base,
            }))
            .await;
        self.add_keys(id, keys).await;
        id
    }

    pub async fn add_keys(&self, id: i64, keys: &[&str]) {
        if keys.is_empty() {
            return;
        }
        let (status, _, v) = self
            .admin(
                Method::POST,
                &format!("/admin/proxy-configs/{id}/keys/batch"),
                Some(json!({ "keys": keys })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["success_count"], keys.len(), "{v}");
    }

    /// The service's keys as the admin API lists them.
    pub async fn keys(&self, id: i64) -> Vec<Value> {
        let (status, _, v) = self
            .admin(
                Method::GET,
                &format!("/admin/proxy-configs/{id}/keys?reveal=true"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// The listed key whose value is `value`.
    pub async fn key(&self, id: i64, value: &str) -> Value {
        self.keys(id)
            .await
            .into_iter()
            .find(|k| k["key_value"] == value)
            .expect("key listed")
    }
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request and returns the response with its body still streaming.
pub async fn send(req: Request<Body>) -> Response<Incoming> {
    client()
        .request(req)
        .await
        .expect("request reaches the server")
}

/// Builds a request.
pub fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

/// Sends and reads the whole answer.
pub async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = send(request(method, url, headers, body::full(body.into()))).await;
    let (parts, incoming) = resp.into_parts();
    let bytes = incoming.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

/// Sends JSON (or nothing) and parses the JSON answer (`Null` when it is not JSON).
pub async fn send_json(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut h = headers.to_vec();
    let bytes = match &body {
        Some(v) => {
            h.push(("content-type", "application/json"));
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let (status, headers, bytes) = call(method, url, &h, bytes).await;
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An upstream server started by a test.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream whose handler sees each request as it arrives (body unread).
pub async fn upstream_raw<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        received: Arc::new(Mutex::new(Vec::new())),
        task,
    }
}

/// Starts an upstream that records every request (body read) and answers with `reply`.
pub async fn upstream<F>(reply: F) -> Upstream
where
    F: Fn(&Recorded) -> Response<Body> + Send + Sync + 'static,
{
    let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let log = received.clone();
    let reply = Arc::new(reply);
    let mut up = upstream_raw(move |req: Request<Incoming>| {
        let (log, reply) = (log.clone(), reply.clone());
        async move {
            let (parts, incoming) = req.into_parts();
            let body = incoming
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let rec = Recorded {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
            };
            let resp = reply(&rec);
            log.lock().unwrap().push(rec);
            resp
        }
    })
    .await;
    up.received = received;
    up
}

/// A response with a status, headers and a body.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body::full(body.into())).unwrap()
}

/// A JSON 200.
pub fn ok_json(v: Value) -> Response<Body> {
    reply(200, &[("content-type", "application/json")], v.to_string())
}

/// A body fed by a channel: each `send` is one frame, dropping the sender ends it.
/// `send` fails once the receiving side (the connection) is gone.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);
    impl hyper::body::Body for ChannelBody {
        type Data = Bytes;
        type Error = api_key_rotator::body::BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx).boxed_unsync())
}

/// An upstream on 127.0.0.1:0 that hands each accepted connection, raw, to `handler`:
/// for answers no well-behaved server sends.
pub async fn raw_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(handler(stream, n));
            n += 1;
        }
    });
    Upstream {
        addr,
        received: Arc::new(Mutex::new(Vec::new())),
        task,
    }
}

/// Reads one request head (and a Content-Length body) from a raw connection; `None`
/// when the connection closed first.
pub async fn read_raw_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        sock.read_exact(&mut body).await.ok()?;
        got.extend(body);
    }
    Some(got)
}

/// Sends raw bytes to `addr` and reads until the server closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: std::time::Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, sock.read_to_end(&mut out)).await;
    out
}
