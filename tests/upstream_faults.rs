//! Upstreams that misbehave, byte by byte: conflicting framing, an HTTP/1.0 answer, a
//! pooled connection closed under the proxy, a request received and then dropped, stray
//! bytes after a body-less answer, stalls, bodies cut short, early answers, and an
//! upstream that answers while the upload still goes on.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY_HEADER: (&str, &str) = ("x-proxy-key", PROXY_KEY);

/// A raw upstream that answers every request on every connection with `answer`.
async fn answering(answer: &'static [u8]) -> Upstream {
    raw_upstream(move |mut sock: TcpStream, _| async move {
        while read_raw_request(&mut sock).await.is_some() {
            if sock.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Sends a GET through the proxy; the status, headers and the body or its error.
async fn get(s: &TestServer, path: &str) -> (u16, http::HeaderMap, Version, Result<Bytes, String>) {
    let resp = send(request(
        Method::GET,
        &s.url(path),
        &[KEY_HEADER],
        api_key_rotator::body::empty(),
    ))
    .await;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the body ends or fails")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status.as_u16(), parts.headers, parts.version, body)
}

#[tokio::test]
async fn content_length_beside_chunked_is_dropped_and_a_repeated_one_normalised() {
    let s = start(&[]).await;
    for (slug, answer, want) in [
        (
            "a",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            "ok",
        ),
        (
            "b",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "hello",
        ),
    ] {
        let up = answering(answer).await;
        s.generic_service(slug, &up.url(""), &["k"]).await;
        let (status, h, _, body) = get(&s, &format!("/proxy/{slug}/x")).await;
        assert_eq!((status, body.unwrap()), (200, Bytes::from(want)));
        assert_ne!(h.get("content-length").map(|v| v.as_bytes()), Some(&b"100"[..]));
        assert_ne!(h.get("content-length").map(|v| v.as_bytes()), Some(&b"1"[..]));
    }
    let up = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok").await;
    s.generic_service("c", &up.url(""), &["k"]).await;
    let (status, h, _, body) = get(&s, "/proxy/c/x").await;
    assert_eq!((status, body.unwrap()), (200, Bytes::from("ok")));
    let values: Vec<_> = h.get_all("content-length").iter().collect();
    assert_eq!(values, ["2"]);
}

#[tokio::test]
async fn an_http10_answer_reaches_the_client_in_http11_and_a_reset_is_an_error() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        let req = read_raw_request(&mut sock).await.unwrap();
        if String::from_utf8_lossy(&req).contains("GET /reset") {
            sock.write_all(b"HTTP/1.0 200 OK\r\n\r\npartial")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            // An abortive close: RST instead of FIN.
            let sock = sock.into_std().unwrap();
            linger_zero(&sock);
            drop(sock);
            return;
        }
        sock.write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it")
            .await
            .unwrap();
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("old", &up.url(""), &["k"]).await;
    let (status, h, version, body) = get(&s, "/proxy/old/x").await;
    assert_eq!((status, version), (200, Version::HTTP_11));
    assert_eq!(body.unwrap(), "all of it");
    assert_eq!(h["transfer-encoding"], "chunked", "framed for the client");
    let (status, _, _, body) = get(&s, "/proxy/old/reset").await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "a reset is not a clean end: {body:?}");
}

/// SO_LINGER 0 on a socket, so closing it sends a reset.
fn linger_zero(sock: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid `linger` of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn a_pooled_connection_closed_under_the_proxy_is_retried_fresh_with_the_same_key() {
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    let up = raw_upstream(move |mut sock: TcpStream, _| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            // Answer one request; take the next one, then close as if it came just as
            // the idle timeout hit.
            read_raw_request(&mut sock).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = read_raw_request(&mut sock).await;
        }
    })
    .await;
    // One shard: one pool slot, so each request takes the connection the last one left.
    let s = start(&[("WORKER_THREADS", "1")]).await;
    let id = s.generic_service("svc", &up.url(""), &["only-key"]).await;
    for _ in 0..4 {
        let (status, _, _, body) = get(&s, "/proxy/svc/x").await;
        assert_eq!((status, body.unwrap()), (200, Bytes::from("ok")));
    }
    assert!(connections.load(Ordering::SeqCst) >= 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let k = s.key(id, "only-key").await;
    assert_eq!(
        (k["failure_count"].clone(), k["status"].clone()),
        (json!(0), json!("active")),
        "{k}"
    );
}

#[tokio::test]
async fn a_post_the_upstream_received_is_never_sent_again_with_another_key() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        // Read the whole request, then close without a word.
        let _ = read_raw_request(&mut sock).await;
    })
    .await;
    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    let garbage = raw_upstream(move |mut sock: TcpStream, _| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = read_raw_request(&mut sock).await;
            let _ = sock.write_all(b"SMTP ready\r\n\r\n").await;
        }
    })
    .await;
    let s = start(&[]).await;
    s.llm_service("ai", "openai_compatible", &up.url("/v1"), &["a", "b", "c"])
        .await;
    s.llm_service(
        "gb",
        "openai_compatible",
        &garbage.url("/v1"),
        &["a", "b", "c"],
    )
    .await;
    let auth = format!("Bearer {PROXY_KEY}");
    for (slug, upstream_count) in [("ai", None), ("gb", Some(&counted))] {
        let (status, h, _) = call(
            Method::POST,
            &s.url(&format!("/llm/{slug}/v1/chat/completions")),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"model":"m"}"#,
        )
        .await;
        assert_eq!(status, 502, "{slug}");
        assert!(h.get("x-rotator-attempts").is_none(), "{slug}: sent once");
        if let Some(n) = upstream_count {
            assert_eq!(n.load(Ordering::SeqCst), 1);
        }
    }
    // An idempotent GET may still go to the next key.
    let (status, h, _) = call(
        Method::GET,
        &s.url("/llm/ai/v1/models"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(h.get("x-rotator-attempts").map(|v| v.as_bytes()), None);
}

#[tokio::test]
async fn stray_bytes_after_a_bodyless_answer_never_reach_the_next_request() {
    for first in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..], // to HEAD
        b"HTTP/1.1 204 No Content\r\nContent-Length: 47\r\n\r\n",
    ] {
        let up = raw_upstream(move |mut sock: TcpStream, n| async move {
            // On the first connection: the first answer, then its stray "body" 50 ms
            // later. Then real answers to whatever comes next.
            if n == 0 {
                read_raw_request(&mut sock).await.unwrap();
                sock.write_all(first).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY")
                    .await;
            }
            while read_raw_request(&mut sock).await.is_some() {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
                    .await;
            }
        })
        .await;
        // One shard: one pool slot, so the next request would take that connection.
        let s = start(&[("WORKER_THREADS", "1")]).await;
        s.generic_service("svc", &up.url(""), &["k"]).await;
        let method = if first.starts_with(b"HTTP/1.1 200") {
            Method::HEAD
        } else {
            Method::GET
        };
        let (status, _, _) = call(method, &s.url("/proxy/svc/first"), &[KEY_HEADER], "").await;
        assert!(status.is_success());
        // The next request comes before the stray bytes do.
        let (status, _, _, body) = get(&s, "/proxy/svc/next").await;
        assert_eq!((status, body.unwrap()), (200, Bytes::from("good")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _, body) = get(&s, "/proxy/svc/again").await;
        assert_eq!((status, body.unwrap()), (200, Bytes::from("good")));
    }
}

#[tokio::test]
async fn a_stalled_body_is_cut_as_an_error_unless_the_service_says_never() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        read_raw_request(&mut sock).await.unwrap();
        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = sock.write_all(b"6\r\ndata:2\r\n0\r\n\r\n").await;
    })
    .await;
    let s = start(&[("UPSTREAM_IDLE_TIMEOUT", "0.3")]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    let started = Instant::now();
    let (status, _, _, body) = get(&s, "/proxy/svc/stream").await;
    assert_eq!(status, 200);
    let err = body.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.is_empty());
    // A service with idle_timeout 0 waits out the gap.
    s.create_service(json!({
        "name": "patient", "slug": "patient", "config_type": "GENERIC", "method": "ANY",
        "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
        "idle_timeout": 0,
    }))
    .await;
    let id = s
        .admin(Method::GET, "/admin/proxy-configs", None)
        .await
        .2
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["slug"] == "patient")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    s.add_keys(id, &["k"]).await;
    let (status, _, _, body) = get(&s, "/proxy/patient/stream").await;
    assert_eq!((status, body.unwrap()), (200, Bytes::from("data:1data:2")));
    // Out of range: refused with its field.
    let (status, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}"),
            Some(
                json!({"name": "patient", "slug": "patient", "config_type": "GENERIC",
                "target_url": up.url(""), "idle_timeout": -1}),
            ),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v["field"].clone()),
        (400, json!("idle_timeout"))
    );
}

#[tokio::test]
async fn testing_a_key_does_not_hang_on_a_stalled_body() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        read_raw_request(&mut sock).await.unwrap();
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\":")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let s = start(&[("PROXY_TIMEOUT", "1")]).await;
    let id = s
        .llm_service("ai", "openai_compatible", &up.url("/v1"), &["k"])
        .await;
    let key = s.key(id, "k").await;
    let started = Instant::now();
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/keys/{}/test", key["id"]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("broke off"), "{v}");
}

#[tokio::test]
async fn an_llm_error_body_cut_short_reaches_the_client_as_broken() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        read_raw_request(&mut sock).await.unwrap();
        let _ = sock
            .write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"error\":")
            .await;
        // Closed mid-body.
    })
    .await;
    let s = start(&[]).await;
    s.llm_service("ai", "openai_compatible", &up.url("/v1"), &["k"])
        .await;
    let auth = format!("Bearer {PROXY_KEY}");
    let resp = send(request(
        Method::GET,
        &s.url("/llm/ai/v1/models"),
        &[("authorization", &auth)],
        api_key_rotator::body::empty(),
    ))
    .await;
    // The proxy had read what there was before answering: it says what happened
    // instead of passing on a short body that would look complete.
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-rotator-error"], "1");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("429") && text.contains("broke off"), "{text}");
}

/// A body of `n` bytes of `b` in 64 KiB frames, from a task (the client uploads while it
/// reads the answer).
fn upload(n: usize) -> api_key_rotator::body::Body {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut left = n;
        while left > 0 {
            let len = left.min(65536);
            if tx.send(Bytes::from(vec![b'u'; len])).await.is_err() {
                return;
            }
            left -= len;
        }
    });
    body
}

#[tokio::test]
async fn an_early_answer_during_an_upload_is_passed_on() {
    let up = raw_upstream(|mut sock: TcpStream, _| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = sock
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
            .await;
        let _ = sock.shutdown().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    // A client that reads the answer while it uploads (as curl does).
    let sock = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST /proxy/svc/upload HTTP/1.1\r\nhost: x\r\nx-proxy-key: {PROXY_KEY}\r\ncontent-length: {}\r\n\r\n",
        32 << 20
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let writing = tokio::spawn(async move {
        let chunk = vec![b'u'; 65536];
        for _ in 0..512 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("too large") {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("an answer during the upload")
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    writing.abort();
}

#[tokio::test]
async fn a_64_mib_echo_flows_both_ways_at_once() {
    const SIZE: usize = 64 << 20;
    // A real server that streams each frame of the request straight back.
    let up = upstream_raw(|req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let mut incoming = req.into_body();
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(d) = frame.into_data() {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
            }
        });
        http::Response::new(body)
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("echo", &up.url(""), &["k"]).await;
    let run = async {
        let resp = send(request(
            Method::POST,
            &s.url("/proxy/echo/x"),
            &[KEY_HEADER],
            upload(SIZE),
        ))
        .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            n += frame.unwrap().into_data().map_or(0, |d| d.len());
        }
        n
    };
    let n = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("no deadlock");
    assert_eq!(n, SIZE);
}
