//! `/proxy/<slug>/…` against real upstream servers started by the tests: key injection,
//! rotation, header hygiene, refused paths, streaming both ways, timeouts and errors.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use support::{PROXY_KEY, call, ok_json, reply, start, upstream, upstream_raw};
use tokio::sync::{Notify, oneshot};

const KEY_HEADER: (&str, &str) = ("x-proxy-key", PROXY_KEY);

#[tokio::test]
async fn injects_the_key_in_a_header_and_rotates_fairly() {
    let up = upstream(|_| ok_json(json!({"ok": true}))).await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url("/base"), &["key-a", "key-b", "key-c"])
        .await;
    for _ in 0..300 {
        let (status, _, _) = call(
            Method::GET,
            &s.url("/proxy/svc/items/1?x=1"),
            &[KEY_HEADER],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    let reqs = up.requests();
    assert_eq!(reqs[0].uri.path(), "/base/items/1");
    assert_eq!(reqs[0].uri.query(), Some("x=1"));
    let mut counts = std::collections::HashMap::new();
    for r in &reqs {
        *counts
            .entry(r.header("x-api-key").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(
        counts.values().all(|&c| (99..=101).contains(&c)),
        "{counts:?}"
    );
    // The original's order: key-a, key-b, key-c, key-a…
    let first: Vec<_> = reqs[..4]
        .iter()
        .map(|r| r.header("x-api-key").unwrap())
        .collect();
    assert_eq!(first, ["key-a", "key-b", "key-c", "key-a"]);
}

#[tokio::test]
async fn injects_the_key_in_the_query_and_it_wins_over_the_client() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    let id = s
        .create_service(json!({
            "name": "Weather", "slug": "weather", "config_type": "GENERIC", "method": "GET",
            "target_url": up.url(""), "api_key_location": "query", "api_key_name": "access_key",
        }))
        .await;
    s.add_keys(id, &["real/key+1"]).await;
    let (status, _, _) = call(
        Method::GET,
        &s.url("/proxy/weather/current?query=New%20York&access_key=evil&units=m"),
        &[KEY_HEADER],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let r = &up.requests()[0];
    assert_eq!(r.uri.path(), "/current");
    assert_eq!(
        r.uri.query(),
        Some("query=New%20York&units=m&access_key=real%2Fkey%2B1")
    );
}

#[tokio::test]
async fn the_proxy_key_never_reaches_the_upstream_and_hop_by_hop_headers_are_stripped() {
    let up = upstream(|_| {
        let mut r = reply(
            200,
            &[
                ("content-type", "text/plain"),
                ("connection", "x-internal"),
                ("x-internal", "secret"),
                ("keep-alive", "timeout=5"),
            ],
            "ok",
        );
        r.headers_mut()
            .append("set-cookie", "a=1; Path=/".parse().unwrap());
        r.headers_mut()
            .append("set-cookie", "b=2; Path=/".parse().unwrap());
        r
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["real-key"]).await;
    let headers = [
        KEY_HEADER,
        ("connection", "x-drop-me, X-Api-Key"),
        ("x-drop-me", "1"),
        ("x-api-key", "client-supplied"),
        ("keep-alive", "timeout=1"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic abc"),
        ("x-custom", "kept"),
        ("x-forwarded-for", "10.1.1.1"),
        ("expect", "100-continue"),
    ];
    let (status, h, body) =
        call(Method::POST, &s.url("/proxy/svc/echo"), &headers, "payload").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    let r = &up.requests()[0];
    for gone in [
        "x-proxy-key",
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "expect",
    ] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            r.headers
        );
    }
    assert_eq!(
        r.header("x-api-key"),
        Some("real-key"),
        "injected after stripping, so Connection cannot remove it"
    );
    assert_eq!(r.header("x-custom"), Some("kept"));
    assert_eq!(r.header("host"), Some(up.addr.to_string().as_str()));
    // What the proxy knows, not what the client claimed (10.1.1.1).
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        r.header("x-forwarded-host"),
        Some(s.addr.to_string().as_str())
    );
    assert_eq!(&r.body[..], b"payload");
    let everything = format!("{:?} {} {:?}", r.headers, r.uri, r.body);
    assert!(!everything.contains(PROXY_KEY));
    // Response side: hop-by-hop out, multi-valued headers kept, CORS for browsers.
    assert!(h.get("x-internal").is_none() && h.get("keep-alive").is_none());
    let cookies: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    assert!(h.get("x-rotator-error").is_none());
    assert!(
        h.get("access-control-allow-origin").is_none(),
        "no CORS headers for a client that is not a browser"
    );
    let (_, h, _) = call(
        Method::GET,
        &s.url("/proxy/svc/echo"),
        &[KEY_HEADER, ("origin", "https://app.example")],
        "",
    )
    .await;
    assert_eq!(h["access-control-allow-origin"], "*", "CORS for browsers");
}

#[tokio::test]
async fn auth_slug_method_and_empty_pool_errors() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    let id = s
        .create_service(json!({"name": "G", "slug": "getonly", "config_type": "GENERIC", "method": "GET", "target_url": up.url("")}))
        .await;
    let (status, h, body) = call(Method::GET, &s.url("/proxy/getonly/x"), &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(h["x-rotator-error"], "1");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        json!({"detail": "invalid or missing X-Proxy-Key header"})
    );
    let (status, _, _) = call(
        Method::GET,
        &s.url("/proxy/getonly/x"),
        &[("x-proxy-key", "wrong")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        Method::GET,
        &s.url("/proxy/nope/x"),
        &[("x-proxy-key", "wrong")],
        "",
    )
    .await;
    assert_eq!(status, 401, "401 before saying whether the slug exists");
    let (status, h, _) = call(Method::GET, &s.url("/proxy/nope/x"), &[KEY_HEADER], "").await;
    assert_eq!(
        (status.as_u16(), h["x-rotator-error"].to_str().unwrap()),
        (404, "1")
    );
    let (status, h, _) = call(Method::POST, &s.url("/proxy/getonly/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 405);
    assert_eq!(h["allow"], "GET, OPTIONS");
    let (status, _, body) = call(
        Method::GET,
        &s.url("/proxy/getonly/x"),
        &[("x-proxy-key", "second-proxy-key")],
        "",
    )
    .await;
    assert_eq!(
        status, 503,
        "every configured proxy key works; the pool is empty"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        json!({"detail": "no active API keys for this service"})
    );
    s.admin(
        Method::PUT,
        &format!("/admin/proxy-configs/{id}/status"),
        Some(json!({"is_active": false})),
    )
    .await;
    let (status, _, _) = call(Method::GET, &s.url("/proxy/getonly/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 404, "an inactive service is not found");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn path_tricks_are_refused_before_anything_is_sent() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url("/v1"), &["k"]).await;
    for path in [
        "/proxy/svc/../admin",
        "/proxy/svc/a/../../x",
        "/proxy/svc/%2e%2e/x",
        "/proxy/svc/.%2E/x",
        "/proxy/svc/./x",
        "/proxy/svc/a%2Fb",
        "/proxy/svc/a%5cb",
        "/proxy/svc/a//b",
        "/proxy/svc//x",
        "/proxy/svc/%zz",
    ] {
        let (status, h, _) = call(Method::GET, &s.url(path), &[KEY_HEADER], "").await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(h["x-rotator-error"], "1");
    }
    assert_eq!(up.count(), 0);
    // Odd but harmless paths stay on the configured host.
    let (status, _, _) = call(
        Method::GET,
        &s.url("/proxy/svc/@evil.com:80/x"),
        &[KEY_HEADER],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(up.requests()[0].uri.path(), "/v1/@evil.com:80/x");
}

#[tokio::test]
async fn cors_preflight_redirects_and_methods_pass_through() {
    let up = upstream(|r| {
        if r.uri.path() == "/moved" {
            reply(302, &[("location", "https://elsewhere.example/new")], "")
        } else {
            reply(200, &[], r.method.as_str().to_string())
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    let (status, h, _) = call(
        Method::OPTIONS,
        &s.url("/proxy/svc/x"),
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "x-proxy-key, content-type",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(
        h["access-control-allow-headers"],
        "x-proxy-key, content-type"
    );
    assert_eq!(up.count(), 0, "a preflight is answered, not proxied");
    let (status, h, _) = call(Method::GET, &s.url("/proxy/svc/moved"), &[KEY_HEADER], "").await;
    assert_eq!(
        (status.as_u16(), h["location"].to_str().unwrap()),
        (302, "https://elsewhere.example/new")
    );
    assert_eq!(
        up.count(),
        1,
        "the redirect is passed through, not followed"
    );
    for m in [Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS] {
        let (status, _, body) = call(m.clone(), &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
        assert_eq!((status.as_u16(), &body[..]), (200, m.as_str().as_bytes()));
    }
}

#[tokio::test]
async fn timeout_is_504_and_unreachable_is_502() {
    let slow = upstream_raw(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        reply(200, &[], "late")
    })
    .await;
    let s = start(&[("PROXY_TIMEOUT", "0.3")]).await;
    s.generic_service("slow", &slow.url(""), &["k1"]).await;
    let started = std::time::Instant::now();
    let (status, h, body) = call(Method::GET, &s.url("/proxy/slow/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(h["x-rotator-error"], "1");
    assert!(
        String::from_utf8_lossy(&body).contains("0 s")
            || String::from_utf8_lossy(&body).contains("did not answer")
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    s.generic_service(
        "down",
        &format!("http://{closed}/api"),
        &["secret-key-1", "secret-key-2"],
    )
    .await;
    let (status, h, body) = call(Method::GET, &s.url("/proxy/down/x"), &[KEY_HEADER], "").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert_eq!(h["x-rotator-error"], "1");
    assert!(
        text.contains("upstream unreachable") && text.contains("onnect"),
        "{text}"
    );
    assert!(!text.contains("secret-key"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_upload_flows_upstream_as_it_arrives() {
    const TOTAL: usize = 20 << 20;
    let got_first_mib = Arc::new(Notify::new());
    let signal = got_first_mib.clone();
    let up = upstream_raw(move |req: Request<Incoming>| {
        let signal = signal.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0usize;
            let mut told = false;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    n += d.len();
                    if !told && n > 2 << 20 {
                        signal.notify_one();
                        told = true;
                    }
                }
            }
            reply(200, &[], n.to_string())
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("up", &up.url(""), &["k"]).await;
    let (tx, body) = support::channel_body();
    let waiter = got_first_mib.clone();
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
        for i in 0..TOTAL / chunk.len() {
            if i == 48 {
                // 3 MiB sent: the upstream must already have 2 MiB before we send more.
                tokio::time::timeout(Duration::from_secs(5), waiter.notified())
                    .await
                    .expect("the upload was held back instead of streamed");
            }
            tx.send(chunk.clone()).await.unwrap();
        }
    });
    let req = support::request(
        Method::POST,
        &s.url("/proxy/up/upload"),
        &[KEY_HEADER],
        body,
    );
    let resp = support::send(req).await;
    feeder.await.unwrap();
    let (parts, body) = resp.into_parts();
    assert_eq!(parts.status, 200);
    assert_eq!(body.collect().await.unwrap().to_bytes(), TOTAL.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let go_on = Arc::new(Notify::new());
    let release = go_on.clone();
    let up = upstream_raw(move |_req: Request<Incoming>| {
        let release = release.clone();
        async move {
            let (tx, body) = support::channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: first\n\n"))
                    .await
                    .unwrap();
                release.notified().await;
                tx.send(Bytes::from_static(b"data: second\n\n"))
                    .await
                    .unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("sse", &up.url(""), &["k"]).await;
    let resp = support::send(support::request(
        Method::GET,
        &s.url("/proxy/sse/events"),
        &[KEY_HEADER],
        api_key_rotator::body::empty(),
    ))
    .await;
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event arrives before the upstream sends the second")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    go_on.notify_one();
    let second = body.frame().await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: second\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let closed_tx = Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let up = upstream_raw(move |_req: Request<Incoming>| {
        let closed_tx = closed_tx.clone();
        async move {
            let (tx, body) = support::channel_body();
            tokio::spawn(async move {
                loop {
                    if tx
                        .send(Bytes::from_static(b"data: tick\n\n"))
                        .await
                        .is_err()
                    {
                        if let Some(t) = closed_tx.lock().unwrap().take() {
                            let _ = t.send(());
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("ticks", &up.url(""), &["k"]).await;
    let resp = support::send(support::request(
        Method::GET,
        &s.url("/proxy/ticks/stream"),
        &[KEY_HEADER],
        api_key_rotator::body::empty(),
    ))
    .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(
        s.state()
            .metrics
            .open_streams
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(body);
    tokio::time::timeout(Duration::from_secs(3), closed_rx)
        .await
        .expect("the upstream stream is closed when the client goes away")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s.state()
            .metrics
            .open_streams
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// Signals when dropped: the upstream's handler was cancelled (or finished).
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_before_the_answer_cancels_the_upstream_request() {
    // A slow upstream (an LLM thinking): the client gives up before the head arrives.
    // The proxy notices the closed client connection, drops the request and so closes
    // the upstream connection, which drops the upstream's handler.
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let (arrived_tx, arrived_rx) = oneshot::channel::<()>();
    let arrived_tx = Arc::new(std::sync::Mutex::new(Some(arrived_tx)));
    let up = upstream_raw(move |_req: Request<Incoming>| {
        let guard = Dropped(dropped_tx.lock().unwrap().take());
        if let Some(t) = arrived_tx.lock().unwrap().take() {
            let _ = t.send(());
        }
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(guard);
            reply(200, &[], "too late")
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("slow", &up.url(""), &["k"]).await;
    let mut client = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head =
        format!("GET /proxy/slow/think HTTP/1.1\r\nHost: x\r\nx-proxy-key: {PROXY_KEY}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut client, head.as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), arrived_rx)
        .await
        .expect("the request reaches the upstream")
        .unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(3), dropped_rx)
        .await
        .expect("the upstream request is cancelled when the client goes away")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_and_removed_under_traffic_never_break_a_request() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = Arc::new(start(&[]).await);
    let id = s.generic_service("busy", &up.url(""), &["k0"]).await;
    let url = s.url("/proxy/busy/x");
    let load: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..150 {
                    codes.push(call(Method::GET, &url, &[KEY_HEADER], "").await.0.as_u16());
                }
                codes
            })
        })
        .collect();
    for round in 0..15 {
        s.add_keys(id, &[&format!("k{}", round + 1)]).await;
        let keys = s.keys(id).await;
        if keys.len() > 2 {
            let victim = &keys[round % keys.len()];
            s.admin(
                Method::DELETE,
                &format!("/admin/keys/{}", victim["id"]),
                None,
            )
            .await;
        }
        if round % 5 == 4 {
            s.admin(
                Method::DELETE,
                &format!("/admin/proxy-configs/{id}/keys"),
                None,
            )
            .await;
        }
    }
    for task in load {
        for code in task.await.unwrap() {
            assert!(
                code == 200 || code == 503,
                "only served or 'no keys', got {code}"
            );
        }
    }
}

/// A raw HTTP/1.1 upstream on 127.0.0.1:0 whose answers are framed by the path asked for
/// (`Content-Length`, chunked with trailers, until the close, `Connection: close`).
/// Returns its base URL and the number of connections it accepted.
async fn framing_upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    head.clear();
                    while !head.ends_with(b"\r\n\r\n") {
                        match sock.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let line = String::from_utf8_lossy(&head).to_string();
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let (answer, close): (&[u8], bool) = match path.as_str() {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nchun\r\n3;x=y\r\nked\r\n0\r\nX-T: 1\r\n\r\n",
                            false,
                        ),
                        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the close", true),
                        "/conn-close" => (
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose",
                            true,
                        ),
                        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain", false),
                    };
                    if sock.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_answers_of_every_framing_arrive_whole_and_connections_are_reused_only_when_clean()
{
    let (url, accepted) = framing_upstream().await;
    // One shard, so every request uses the same connection pool.
    let s = start(&[("WORKER_THREADS", "1")]).await;
    s.generic_service("framed", &url, &["k1"]).await;
    let steps = [
        ("/plain", "plain", 1),
        ("/plain", "plain", 1),
        ("/chunked", "chunked", 1),
        ("/until-close", "until the close", 1),
        ("/plain", "plain", 2),
        ("/conn-close", "close", 2),
        ("/plain", "plain", 3),
        ("/chunked", "chunked", 3),
    ];
    for (path, want, connections) in steps {
        let (status, headers, body) = call(
            Method::GET,
            &s.url(&format!("/proxy/framed{path}")),
            &[KEY_HEADER],
            "",
        )
        .await;
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, want.as_bytes()),
            "{path}"
        );
        assert!(
            headers.get("connection").is_none(),
            "{path}: hop-by-hop kept"
        );
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            connections,
            "upstream connections after {path}"
        );
    }
}
