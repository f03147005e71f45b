//! What a hostile or careless client may try: empty the key pool, hold memory and
//! connections with slow bodies, guess the admin password in parallel, smuggle a proxy
//! key upstream, forge forwarding headers, walk out of the service's path, read the
//! injected key back from an answer.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_HEADER: (&str, &str) = ("x-proxy-key", PROXY_KEY);

async fn states(s: &TestServer, id: i64) -> Vec<String> {
    s.keys(id)
        .await
        .iter()
        .map(|k| k["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_resource_level_403_cannot_disable_the_keys_of_a_generic_service() {
    let up = upstream(|r| match r.uri.path() {
        "/private" => reply(403, &[], "Forbidden: not your resource"),
        _ => ok_json(json!({"ok": true})),
    })
    .await;
    let mut s = start(&[]).await;
    let keys = ["k1", "k2", "k3", "k4", "k5", "k6"];
    let id = s.generic_service("svc", &up.url(""), &keys).await;
    for _ in 0..2 {
        let (status, h, _) =
            call(Method::GET, &s.url("/proxy/svc/private"), &[KEY_HEADER], "").await;
        assert_eq!(status, 403);
        assert!(h.get("x-rotator-attempts").is_none(), "no failover on 403");
    }
    assert_eq!(up.count(), 2, "one key per request");
    let st = states(&s, id).await;
    assert!(!st.iter().any(|k| k == "invalid"), "{st:?}");
    assert!(st.iter().filter(|k| *k == "cooling").count() <= 2, "{st:?}");
    // After a restart nothing is invalid, and the service still answers.
    let dir = s.dir.clone();
    s.stop().await;
    let s = start_in(dir, &[]).await;
    let st = states(&s, id).await;
    assert!(!st.iter().any(|k| k == "invalid"), "{st:?}");
    let (status, _, _) = call(Method::GET, &s.url("/proxy/svc/public"), &[KEY_HEADER], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_llm_error_that_quotes_the_client_cannot_mark_keys_invalid() {
    // OpenAI's invalid_request_error quotes the client's input in its message.
    let up = upstream(|r| {
        let body = String::from_utf8_lossy(&r.body).to_string();
        reply(
            400,
            &[("content-type", "application/json")],
            json!({"error": {
                "message": format!("Invalid 'messages': {body}"),
                "type": "invalid_request_error", "param": "messages", "code": null,
            }})
            .to_string(),
        )
    })
    .await;
    let s = start(&[]).await;
    let id = s
        .llm_service("ai", "openai_compatible", &up.url("/v1"), &["a", "b", "c"])
        .await;
    let auth = format!("Bearer {PROXY_KEY}");
    for _ in 0..3 {
        let (status, _, _) = send_json(
            Method::POST,
            &s.url("/llm/ai/v1/chat/completions"),
            &[("authorization", &auth)],
            Some(json!({"model": "m", "messages": [{"role": "user",
                "content": "insufficient_quota invalid_api_key API_KEY_INVALID account_deactivated"}]})),
        )
        .await;
        assert_eq!(status, 400);
    }
    assert_eq!(states(&s, id).await, ["active"; 3]);
}

#[tokio::test]
async fn one_request_changes_the_state_of_one_key_at_most() {
    let up = upstream(|_| reply(429, &[("retry-after", "60")], "slow down")).await;
    let s = start(&[]).await;
    let id = s
        .generic_service("svc", &up.url(""), &["a", "b", "c"])
        .await;
    let (status, h, _) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(
        (status.as_u16(), h["x-rotator-attempts"].to_str().unwrap()),
        (429, "3")
    );
    let st = states(&s, id).await;
    assert_eq!(st.iter().filter(|k| *k == "cooling").count(), 1, "{st:?}");
}

#[tokio::test]
async fn an_unauthenticated_body_is_refused_without_being_read_whole() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.llm_service("x", "openai_compatible", &up.url("/v1"), &["k"])
        .await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(
        b"POST /llm/x/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1048000\r\n\r\n",
    )
    .await
    .unwrap();
    // 200 KB of the announced 1 MB, then nothing more.
    sock.write_all(&vec![b' '; 200 * 1024]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut answer))
        .await
        .expect("answered without the rest of the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[("BODY_READ_TIMEOUT", "0.5")]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    let head = format!(
        "POST /proxy/svc/x HTTP/1.1\r\nhost: x\r\nx-proxy-key: {PROXY_KEY}\r\ncontent-length: 100\r\n\r\nonly this"
    );
    let answer = raw_exchange(s.addr, head.as_bytes(), Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("BODY_READ_TIMEOUT"), "{text}");
    // The admin login too.
    let head = "POST /admin/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n{\"username\":";
    let answer = raw_exchange(s.addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn parallel_logins_are_counted_before_their_bodies_are_read() {
    let s = start(&[]).await;
    let body = r#"{"username":"admin","password":"wrong-guess"}"#;
    let head = format!(
        "POST /admin/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // Every head first, then every body.
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(head.as_bytes()).await.unwrap();
        socks.push(sock);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut statuses = Vec::new();
    for mut sock in socks {
        let _ = sock.write_all(body.as_bytes()).await;
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(3), sock.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        statuses.push(String::from_utf8_lossy(&answer[9..12.min(n)]).to_string());
    }
    let evaluated = statuses.iter().filter(|s| *s == "401").count();
    let refused = statuses.iter().filter(|s| *s == "429").count();
    assert_eq!((evaluated, refused), (5, 15), "{statuses:?}");
}

#[tokio::test]
async fn a_blocked_address_is_refused_even_with_the_right_password() {
    let s = start(&[]).await;
    for _ in 0..5 {
        send_json(
            Method::POST,
            &s.url("/admin/login"),
            &[],
            Some(json!({"username": "admin", "password": "nope"})),
        )
        .await;
    }
    let (status, h, _) = send_json(
        Method::POST,
        &s.url("/admin/login"),
        &[],
        Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
    )
    .await;
    assert_eq!(status, 429);
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_throttle_and_the_log_see_the_client() {
    let s = start(&[("TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    let login = |client: &'static str, password: &'static str| {
        let url = s.url("/admin/login");
        async move {
            send_json(
                Method::POST,
                &url,
                &[("x-forwarded-for", client)],
                Some(json!({"username": "admin", "password": password})),
            )
            .await
            .0
        }
    };
    for _ in 0..6 {
        login("203.0.113.1", "nope").await;
    }
    assert_eq!(login("203.0.113.1", ADMIN_PASSWORD).await, 429);
    // Another client behind the same proxy is not locked out.
    assert_eq!(login("203.0.113.2", ADMIN_PASSWORD).await, 200);
    // Without TRUSTED_PROXIES the header is ignored: one address for all.
    let plain = start(&[]).await;
    for client in [
        "1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5", "6.6.6.6",
    ] {
        send_json(
            Method::POST,
            &plain.url("/admin/login"),
            &[("x-forwarded-for", client)],
            Some(json!({"username": "admin", "password": "nope"})),
        )
        .await;
    }
    let (status, _, _) = send_json(
        Method::POST,
        &plain.url("/admin/login"),
        &[("x-forwarded-for", "9.9.9.9")],
        Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn forwarding_headers_come_from_the_proxy_or_a_trusted_one() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let forged = [
        KEY_HEADER,
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "gopher"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=6.6.6.6"),
    ];
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    call(Method::GET, &s.url("/proxy/svc/x"), &forged, "").await;
    let r = &up.requests()[0];
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        r.header("x-forwarded-host"),
        Some(s.addr.to_string().as_str())
    );
    assert_eq!(r.header("forwarded"), None);
    // From a trusted proxy, its headers go on, with the peer appended.
    let t = start(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    t.generic_service("svc", &up.url(""), &["k"]).await;
    call(Method::GET, &t.url("/proxy/svc/x"), &forged, "").await;
    let r = &up.requests()[1];
    assert_eq!(r.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("gopher"));
    assert_eq!(r.header("forwarded"), Some("for=6.6.6.6"));
}

#[tokio::test]
async fn too_many_connections_get_503_and_room_comes_back() {
    let s = start(&[("MAX_CONNECTIONS", "4")]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        // A request each, so every connection is surely accepted and counted.
        sock.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(sock);
    }
    let answer = raw_exchange(
        s.addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("MAX_CONNECTIONS"), "{text}");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = call(Method::GET, &s.url("/health"), &[], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_key_in_the_query_never_comes_back_in_a_redirect() {
    let up = upstream(|r| {
        let location = format!("http://elsewhere.example{}", r.uri);
        reply(301, &[("location", &location)], format!("moved: {}", r.uri))
    })
    .await;
    let s = start(&[]).await;
    let id = s
        .create_service(json!({
            "name": "w", "slug": "w", "config_type": "GENERIC", "method": "GET",
            "target_url": up.url(""), "api_key_location": "query", "api_key_name": "access_key",
        }))
        .await;
    let secret = "real/secret+key=0123456789";
    s.add_keys(id, &[secret]).await;
    let (status, h, body) = call(
        Method::GET,
        &s.url("/proxy/w/current?city=x"),
        &[KEY_HEADER],
        "",
    )
    .await;
    assert_eq!(status, 301);
    let location = h["location"].to_str().unwrap();
    let encoded = "real%2Fsecret%2Bkey%3D0123456789";
    assert!(
        up.requests()[0].uri.to_string().contains(encoded),
        "the upstream did get the key"
    );
    assert!(
        !location.contains(encoded) && !location.contains(secret),
        "{location}"
    );
    assert!(location.contains("access_key=rea****6789"), "{location}");
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains(encoded), "{body}");
}

#[tokio::test]
async fn keys_echoed_in_error_answers_are_masked() {
    let up = upstream(|r| {
        let key = r
            .header("x-api-key")
            .or(r.header("authorization"))
            .unwrap_or("")
            .to_string();
        let status = if key.ends_with("limited-key") {
            429
        } else {
            401
        };
        reply(
            status,
            &[("x-echo", &key), ("content-type", "application/json")],
            json!({"error": {"message": format!("key {key} is no good")}}).to_string(),
        )
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("g", &up.url(""), &["sk-generic-limited-key"])
        .await;
    s.llm_service(
        "l",
        "openai_compatible",
        &up.url("/v1"),
        &["sk-llm-secret-key-0001"],
    )
    .await;
    let (status, h, body) = call(Method::GET, &s.url("/proxy/g/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 429);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("sk-generic-limited-key"), "{text}");
    assert!(text.contains("sk-****-key"), "{text}");
    assert!(!h["x-echo"].to_str().unwrap().contains("limited"));
    let auth = format!("Bearer {PROXY_KEY}");
    let (status, h, body) = call(
        Method::GET,
        &s.url("/llm/l/v1/models"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 401);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("sk-llm-secret-key-0001"), "{text}");
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        body.len().to_string(),
        "the length follows the masked body"
    );
}

#[tokio::test]
async fn every_api_key_member_is_removed_from_an_llm_body() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.llm_service("ai", "openai_compatible", &up.url("/v1"), &["k"])
        .await;
    let body = format!(r#"{{"model":"m","api_key":"{PROXY_KEY}","api_key":"{PROXY_KEY}"}}"#);
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/ai/v1/chat/completions"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let sent = String::from_utf8(up.requests()[0].body.to_vec()).unwrap();
    assert_eq!(sent, r#"{"model":"m"}"#);
    // Two different values: refused, nothing sent.
    let body = format!(r#"{{"api_key":"{PROXY_KEY}","api_key":"other"}}"#);
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/ai/v1/chat/completions"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn the_key_cannot_be_injected_as_a_framing_or_routing_header() {
    let s = start(&[]).await;
    for name in [
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "X-Forwarded-For",
        "Proxy-Authorization",
    ] {
        let (status, _, v) = s
            .admin(
                Method::POST,
                "/admin/proxy-configs",
                Some(json!({
                    "name": name, "slug": name.to_lowercase(), "config_type": "GENERIC",
                    "target_url": "http://127.0.0.1:9", "api_key_location": "header",
                    "api_key_name": name,
                })),
            )
            .await;
        assert_eq!(status, 400, "{name}: {v}");
        assert_eq!(v["field"], "api_key_name", "{v}");
    }
}

#[tokio::test]
async fn dot_segments_in_disguise_never_reach_the_upstream() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url("/api"), &["k"]).await;
    for path in [
        "/proxy/svc/..;/admin",
        "/proxy/svc/%252e%252e/admin",
        "/proxy/svc/%c0%ae%c0%ae/admin",
    ] {
        let (status, _, body) = call(Method::GET, &s.url(path), &[KEY_HEADER], "").await;
        assert_eq!(status, 400, "{path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["detail"].as_str().unwrap().starts_with("path refused"),
            "{v}"
        );
    }
    assert_eq!(up.count(), 0);
}
