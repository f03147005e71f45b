//! HTTPS upstreams: a TLS server started by the test, signed by a private CA trusted
//! through `UPSTREAM_CA_FILE`. When the upstream picks HTTP/2 by ALPN (as the big LLM
//! APIs do), requests are multiplexed on one connection; with HTTP/1.1, connections are
//! reused from the pool. An untrusted certificate is a 502 that says so.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use support::{PROXY_KEY, call, start};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A private CA and a certificate for 127.0.0.1 signed by it: (CA PEM, cert DER, key DER).
fn private_ca() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (ca.pem(), cert.der().clone(), key_der)
}

struct TlsUpstream {
    addr: std::net::SocketAddr,
    /// (HTTP version, x-api-key, connection number) of each request.
    seen: Arc<Mutex<Vec<(Version, String, usize)>>>,
}

/// A TLS upstream offering `alpn` (e.g. h2 and http/1.1).
async fn tls_upstream(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> TlsUpstream {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(Version, String, usize)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for conn_no in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let key = req
                            .headers()
                            .get("x-api-key")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        log.lock().unwrap().push((req.version(), key, conn_no));
                        Ok::<_, Infallible>(Response::new(api_key_rotator::body::full(format!(
                            "{{\"path\":\"{}\"}}",
                            req.uri().path()
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream { addr, seen }
}

async fn proxy_for(
    ca_pem: &str,
    upstream: std::net::SocketAddr,
) -> (support::TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let s = start(&[
        ("UPSTREAM_CA_FILE", ca_file.to_str().unwrap()),
        ("WORKER_THREADS", "1"),
    ])
    .await;
    s.generic_service(
        "tls",
        &format!("https://127.0.0.1:{}/api", upstream.port()),
        &["k1", "k2"],
    )
    .await;
    (s, dir)
}

/// Every request the upstream saw came over `version`, on one and the same connection.
fn assert_one_connection(seen: &[(Version, String, usize)], version: Version) {
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(v, _, _)| *v == version), "{seen:?}");
    assert!(
        seen.iter().all(|(_, _, c)| *c == seen[0].2),
        "one connection: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_is_multiplexed_on_one_connection() {
    let (ca, cert, key) = private_ca();
    let up = tls_upstream(cert, key, &[b"h2", b"http/1.1"]).await;
    let (s, _dir) = proxy_for(&ca, up.addr).await;
    for i in 0..6 {
        let (status, _, body) = call(
            Method::GET,
            &s.url(&format!("/proxy/tls/item/{i}")),
            &[("x-proxy-key", PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            json!({"path": format!("/api/item/{i}")})
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_one_connection(&seen, Version::HTTP_2);
    let keys: Vec<_> = seen.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k1", "k2", "k1", "k2", "k1", "k2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upstream_reuses_pooled_connections() {
    let (ca, cert, key) = private_ca();
    let up = tls_upstream(cert, key, &[b"http/1.1"]).await;
    let (s, _dir) = proxy_for(&ca, up.addr).await;
    for _ in 0..5 {
        let (status, _, _) = call(
            Method::GET,
            &s.url("/proxy/tls/x"),
            &[("x-proxy-key", PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_one_connection(&seen, Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_502_that_says_so() {
    let (_ca, cert, key) = private_ca();
    let (other_ca, _, _) = private_ca();
    let up = tls_upstream(cert, key, &[b"h2", b"http/1.1"]).await;
    let (s, _dir) = proxy_for(&other_ca, up.addr).await;
    let (status, h, body) = call(
        Method::GET,
        &s.url("/proxy/tls/x"),
        &[("x-proxy-key", PROXY_KEY)],
        "",
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert_eq!(h["x-rotator-error"], "1");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[test]
fn a_bad_ca_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let err =
        api_key_rotator::upstream::Upstreams::new(std::time::Duration::from_secs(1), 1, Some(&bad))
            .err()
            .unwrap();
    assert!(
        err.contains("UPSTREAM_CA_FILE") && err.contains("no PEM certificate"),
        "{err}"
    );
    let missing = dir.path().join("missing.pem");
    let err = api_key_rotator::upstream::Upstreams::new(
        std::time::Duration::from_secs(1),
        1,
        Some(&missing),
    )
    .err()
    .unwrap();
    assert!(err.contains("UPSTREAM_CA_FILE"), "{err}");
}
