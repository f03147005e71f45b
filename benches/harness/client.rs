//! A minimal HTTP/1.1 client on hyper's connection API: one keep-alive connection per
//! [`Conn`], requests built from a [`ReqSpec`] template.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One request, sent as often as needed.
#[derive(Clone, Debug)]
pub struct ReqSpec {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl ReqSpec {
    pub fn new(method: Method, path: impl Into<String>) -> ReqSpec {
        ReqSpec {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> ReqSpec {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> ReqSpec {
        self.body = body.into();
        self
    }

    /// The request for `addr` (which goes in `Host`).
    pub fn build(&self, addr: SocketAddr) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.parse().expect("request path");
        let h = req.headers_mut();
        h.insert(
            http::header::HOST,
            HeaderValue::from_str(&addr.to_string()).expect("host"),
        );
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        req
    }

    /// The headers as `Name: value` lines (wrk's `-H`).
    pub fn header_args(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("")))
            .collect()
    }
}

/// One keep-alive connection.
pub struct Conn {
    pub addr: SocketAddr,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { addr, tx })
    }

    /// Sends a request and returns the response with its body still unread.
    pub async fn send(&mut self, spec: &ReqSpec) -> Result<Response<Incoming>, Error> {
        self.tx.ready().await?;
        Ok(self.tx.send_request(spec.build(self.addr)).await?)
    }

    /// Sends a request and reads the whole answer.
    pub async fn fetch(&mut self, spec: &ReqSpec) -> Result<(u16, Bytes), Error> {
        let resp = self.send(spec).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection, with a timeout.
pub async fn fetch_once(
    addr: SocketAddr,
    spec: &ReqSpec,
    timeout: Duration,
) -> Result<(u16, Bytes), Error> {
    tokio::time::timeout(timeout, async {
        let mut c = Conn::open(addr).await?;
        c.fetch(spec).await
    })
    .await
    .map_err(|_| Error::from("timed out"))?
}

/// Sends a JSON request to the admin API and parses the answer.
pub async fn admin_json(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), Error> {
    let mut spec = ReqSpec::new(method, path).header("content-type", "application/json");
    if let Some(t) = token {
        spec = spec.header("authorization", &format!("Bearer {t}"));
    }
    if let Some(b) = body {
        spec = spec.body(serde_json::to_vec(&b)?);
    }
    let (status, bytes) = fetch_once(addr, &spec, Duration::from_secs(10)).await?;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
