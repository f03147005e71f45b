//! Key health with scripted upstreams that answer per key: failover, cooldowns,
//! invalid keys, statistics and /metrics.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::{PROXY_KEY, call, ok_json, reply, start, start_in, upstream, upstream_raw};

const KEY_HEADER: (&str, &str) = ("x-proxy-key", PROXY_KEY);

fn key_of(r: &support::Recorded) -> String {
    r.header("x-api-key").unwrap_or("").to_string()
}

fn now_secs() -> u64 {
    api_key_rotator::timefmt::now_secs()
}

fn secs_until(rfc3339: &Value) -> i64 {
    let t = api_key_rotator::timefmt::parse_datetime(rfc3339.as_str().expect("a time")).unwrap();
    t as i64 - now_secs() as i64
}

#[tokio::test]
async fn a_429_fails_over_to_the_next_key_and_cools_the_first_down_for_retry_after() {
    let up = upstream(|r| match key_of(r).as_str() {
        "key-a" => reply(429, &[("retry-after", "2")], r#"{"error":"slow down"}"#),
        _ => ok_json(json!({"served_by": key_of(r)})),
    })
    .await;
    let s = start(&[]).await;
    let id = s
        .generic_service("svc", &up.url(""), &["key-a", "key-b", "key-c"])
        .await;
    let (status, h, body) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 200);
    assert_eq!(h["x-rotator-attempts"], "2");
    assert_ne!(
        serde_json::from_slice::<Value>(&body).unwrap()["served_by"],
        "key-a"
    );
    let a = s.key(id, "key-a").await;
    assert_eq!(a["status"], "cooling");
    assert!((1..=2).contains(&secs_until(&a["cooldown_until"])), "{a}");
    assert_eq!(a["last_status"], 429);
    // While it cools, key-a is never used.
    for _ in 0..10 {
        call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    }
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| key_of(r) == "key-a")
            .count(),
        1
    );
    // Back after Retry-After.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..3 {
        call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    }
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| key_of(r) == "key-a")
            .count(),
        2
    );
}

#[tokio::test]
async fn all_keys_down_answers_the_last_upstream_response_then_503_with_retry_after() {
    let up = upstream(|r| {
        let wait = if key_of(r) == "key-a" { "30" } else { "60" };
        reply(
            429,
            &[("retry-after", wait), ("content-type", "application/json")],
            r#"{"error":{"message":"rate limited"}}"#,
        )
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["key-a", "key-b"])
        .await;
    let (status, h, body) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 429, "the last upstream answer, as it was");
    assert_eq!(&body[..], br#"{"error":{"message":"rate limited"}}"#);
    assert_eq!(
        (
            h["x-rotator-attempts"].to_str().unwrap(),
            h["retry-after"].to_str().unwrap()
        ),
        ("2", "60")
    );
    assert!(h.get("x-rotator-error").is_none());
    // One request changes one key's state: key-b answered 429 too, but it was the
    // second key of that request, so it is still in rotation, and cools down now.
    let (status, h, _) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!((status.as_u16(), h.get("x-rotator-attempts")), (429, None));
    let (status, h, body) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 503);
    assert_eq!(h["x-rotator-error"], "1");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "the soonest recovery: {retry}");
    assert!(String::from_utf8_lossy(&body).contains("cooling down"));
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn without_retry_after_the_cooldown_escalates_and_a_success_resets_it() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let up = upstream(move |_| {
        if counter.fetch_add(1, Ordering::Relaxed) == 0 {
            reply(429, &[], "")
        } else {
            ok_json(json!({}))
        }
    })
    .await;
    let s = start(&[]).await;
    let id = s.generic_service("svc", &up.url(""), &["only"]).await;
    let (status, _, _) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 429);
    let k = s.key(id, "only").await;
    assert!(
        (29..=30).contains(&secs_until(&k["cooldown_until"])),
        "default 30 s: {k}"
    );
    s.admin(
        Method::POST,
        &format!("/admin/keys/{}/reset", k["id"]),
        None,
    )
    .await;
    let (status, _, _) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 200);
    let k = s.key(id, "only").await;
    assert_eq!(
        (k["status"].clone(), k["cooldown_until"].clone()),
        (json!("active"), Value::Null)
    );
}

#[tokio::test]
async fn a_401_confirmed_by_the_probe_path_marks_the_key_invalid_and_it_stays_so_after_a_restart() {
    let up = upstream(|r| {
        if key_of(r) == "dead" {
            reply(401, &[], "bad key")
        } else {
            ok_json(json!({}))
        }
    })
    .await;
    let mut s = start(&[]).await;
    let id = s
        .create_service(json!({
            "name": "svc", "slug": "svc", "config_type": "GENERIC", "method": "ANY",
            "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
            "probe_path": "/whoami",
        }))
        .await;
    s.add_keys(id, &["dead", "alive"]).await;
    let (status, _, _) = call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    assert_eq!(status, 200);
    // The client's 401 cools the key down; the probe on /whoami confirms it is dead.
    let mut dead = s.key(id, "dead").await;
    for _ in 0..50 {
        if dead["status"] == "invalid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        dead = s.key(id, "dead").await;
    }
    assert_eq!(dead["status"], "invalid", "{dead}");
    assert_eq!(
        dead["invalid_reason"],
        "upstream answered 401 Unauthorized (to the probe path too)"
    );
    assert!(dead["invalid_at"].is_string());
    assert!(
        up.requests()
            .iter()
            .any(|r| r.uri.path() == "/whoami" && key_of(r) == "dead"),
        "the probe went to the probe path"
    );
    // Persisted off the request path: give the write a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = s.dir.clone();
    s.stop().await;
    let s = start_in(dir, &[]).await;
    assert_eq!(s.key(id, "dead").await["status"], "invalid");
    for _ in 0..4 {
        call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    }
    let proxied_to_dead = || {
        up.requests()
            .iter()
            .filter(|r| key_of(r) == "dead" && r.uri.path() != "/whoami")
            .count()
    };
    assert_eq!(proxied_to_dead(), 1);
    // The admin can reset it.
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/keys/{}/reset", dead["id"]),
            None,
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            v["status"].clone(),
            v["invalid_reason"].clone()
        ),
        (200, json!("active"), Value::Null)
    );
    for _ in 0..2 {
        call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    }
    assert_eq!(proxied_to_dead(), 2);
}

#[tokio::test]
async fn never_the_same_key_twice_in_one_request() {
    let up = upstream(|_| reply(500, &[], "boom")).await;
    let s = start(&[]).await;
    let id = s
        .create_service(json!({"name": "L", "slug": "llm", "config_type": "LLM", "target_base_url": up.url("/v1"), "max_retries": 10}))
        .await;
    s.add_keys(id, &["k1", "k2", "k3"]).await;
    let bearer = format!("Bearer {PROXY_KEY}");
    let (status, h, body) = call(
        Method::POST,
        &s.url("/llm/llm/chat/completions"),
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!((status.as_u16(), &body[..]), (500, &b"boom"[..]));
    assert_eq!(h["x-rotator-attempts"], "3");
    let mut used: Vec<_> = up
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    used.sort();
    assert_eq!(used, ["Bearer k1", "Bearer k2", "Bearer k3"]);
    // 500 says nothing about a key: all stay active.
    assert!(
        s.keys(id)
            .await
            .iter()
            .all(|k| k["status"] == "active" && k["consecutive_failures"] == 1)
    );
}

#[tokio::test]
async fn a_client_fault_never_counts_against_a_key_and_is_not_retried() {
    let up = upstream(|r| match r.uri.path() {
        "/bad" => reply(400, &[], r#"{"error":"bad request"}"#),
        "/missing" => reply(404, &[], ""),
        _ => reply(422, &[], ""),
    })
    .await;
    let s = start(&[]).await;
    let id = s.generic_service("svc", &up.url(""), &["k1", "k2"]).await;
    for (path, code) in [
        ("/proxy/svc/bad", 400),
        ("/proxy/svc/missing", 404),
        ("/proxy/svc/other", 422),
    ] {
        let (status, h, _) = call(Method::GET, &s.url(path), &[KEY_HEADER], "").await;
        assert_eq!(status, code);
        assert!(h.get("x-rotator-attempts").is_none());
    }
    assert_eq!(up.count(), 3);
    for k in s.keys(id).await {
        assert_eq!(
            (
                k["status"].clone(),
                k["consecutive_failures"].clone(),
                k["failure_count"].clone()
            ),
            (json!("active"), json!(0), json!(0)),
            "{k}"
        );
    }
}

#[tokio::test]
async fn a_dead_key_phrase_in_an_llm_error_body_marks_it_invalid() {
    let up = upstream(|r| {
        if r.header("authorization") == Some("Bearer broke") {
            reply(429, &[("content-type", "application/json")], r#"{"error":{"code":"insufficient_quota","message":"You exceeded your current quota"}}"#)
        } else {
            ok_json(json!({"ok": 1}))
        }
    })
    .await;
    let s = start(&[]).await;
    let id = s
        .llm_service(
            "oai",
            "openai_compatible",
            &up.url("/v1"),
            &["broke", "fine"],
        )
        .await;
    let bearer = format!("Bearer {PROXY_KEY}");
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/oai/chat/completions"),
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    let k = s.key(id, "broke").await;
    assert_eq!(
        (k["status"].clone(), k["invalid_reason"].clone()),
        (
            json!("invalid"),
            json!("upstream answered 429: insufficient_quota")
        )
    );
}

/// A body fed frame by frame (data or failure) through a channel.
struct Frames(tokio::sync::mpsc::Receiver<Result<Bytes, api_key_rotator::body::BoxError>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = api_key_rotator::body::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(hyper::body::Frame::data)))
    }
}

/// One event, a pause, then a failure: the upstream dies mid-stream.
fn dies_mid_stream() -> Frames {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from_static(b"data: partial\n\n"))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tx.send(Err("upstream crashed".into())).await;
    });
    Frames(rx)
}

#[tokio::test]
async fn no_retry_once_bytes_were_streamed() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let up = upstream_raw(move |_req: Request<Incoming>| {
        seen.fetch_add(1, Ordering::Relaxed);
        async {
            let body = http_body_util::BodyExt::boxed_unsync(dies_mid_stream());
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k1", "k2"]).await;
    let resp = support::send(support::request(
        Method::GET,
        &s.url("/proxy/svc/stream"),
        &[KEY_HEADER],
        api_key_rotator::body::empty(),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: partial\n\n");
    let rest = http_body_util::BodyExt::frame(&mut body).await;
    assert!(
        !matches!(rest, Some(Ok(_))),
        "the stream is cut, not completed: {rest:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        1,
        "nothing is retried after bytes went out"
    );
}

#[tokio::test]
async fn a_body_over_the_replay_limit_streams_once_without_retry() {
    let up = upstream(|r| reply(429, &[("x-len", &r.body.len().to_string())], "")).await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k1", "k2", "k3"])
        .await;
    let big = vec![b'z'; 2 << 20];
    let (status, h, _) = call(
        Method::POST,
        &s.url("/proxy/svc/upload"),
        &[KEY_HEADER],
        big,
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        h["x-len"],
        (2 << 20).to_string().as_str(),
        "the whole body arrived"
    );
    assert_eq!(up.count(), 1, "not retried");
    let small = vec![b'z'; 1000];
    call(
        Method::POST,
        &s.url("/proxy/svc/upload"),
        &[KEY_HEADER],
        small,
    )
    .await;
    assert_eq!(
        up.count(),
        3,
        "a small body is replayed to the two keys still usable"
    );
    assert!(up.requests()[1..].iter().all(|r| r.body.len() == 1000));
}

#[tokio::test]
async fn statistics_are_counted_and_survive_a_restart() {
    let up = upstream(|r| {
        if r.uri.path() == "/fail" {
            reply(503, &[], "")
        } else {
            ok_json(json!({}))
        }
    })
    .await;
    let mut s = start(&[]).await;
    let id = s.generic_service("svc", &up.url(""), &["only"]).await;
    for _ in 0..5 {
        call(Method::GET, &s.url("/proxy/svc/ok"), &[KEY_HEADER], "").await;
    }
    call(Method::GET, &s.url("/proxy/svc/fail"), &[KEY_HEADER], "").await;
    let k = s.key(id, "only").await;
    assert_eq!(
        (
            k["request_count"].clone(),
            k["success_count"].clone(),
            k["failure_count"].clone()
        ),
        (json!(6), json!(5), json!(1))
    );
    assert_eq!(
        (k["last_status"].clone(), k["consecutive_failures"].clone()),
        (json!(503), json!(1))
    );
    assert_eq!(k["last_error"], "upstream answered 503");
    assert!(secs_until(&k["last_used_at"]).abs() <= 2);
    let dir = s.dir.clone();
    s.stop().await;
    let s = start_in(dir, &[]).await;
    let k = s.key(id, "only").await;
    assert_eq!(
        (
            k["request_count"].clone(),
            k["success_count"].clone(),
            k["failure_count"].clone()
        ),
        (json!(6), json!(5), json!(1))
    );
    assert_eq!(k["last_status"], 503);
}

#[tokio::test]
async fn testing_a_key_calls_the_upstream_and_records_the_answer() {
    let up = upstream(|r| match (r.uri.path(), r.header("authorization")) {
        ("/v1/models", Some("Bearer good")) => ok_json(json!({"data": []})),
        _ => reply(401, &[], r#"{"error":{"code":"invalid_api_key"}}"#),
    })
    .await;
    let s = start(&[]).await;
    let id = s
        .llm_service("oai", "openai_compatible", &up.url("/v1"), &["good", "bad"])
        .await;
    let good = s.key(id, "good").await;
    let bad = s.key(id, "bad").await;
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/keys/{}/test", good["id"]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["ok"].clone(), v["status"].clone(), v["error"].clone()),
        (json!(true), json!(200), Value::Null)
    );
    let (_, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/keys/{}/test", bad["id"]),
            None,
        )
        .await;
    assert_eq!(
        (v["ok"].clone(), v["status"].clone()),
        (json!(false), json!(401))
    );
    assert_eq!(s.key(id, "bad").await["status"], "invalid");
    let (status, _, _) = s.admin(Method::POST, "/admin/keys/999/test", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_are_protected_and_never_show_a_key() {
    let up = upstream(|r| {
        if key_of(r) == "metric-key-a" {
            reply(429, &[("retry-after", "60")], "")
        } else {
            ok_json(json!({}))
        }
    })
    .await;
    let s = start(&[("METRICS_TOKEN", "scrape-token")]).await;
    s.generic_service("svc", &up.url(""), &["metric-key-a", "metric-key-b"])
        .await;
    for _ in 0..3 {
        call(Method::GET, &s.url("/proxy/svc/x"), &[KEY_HEADER], "").await;
    }
    let (status, _, _) = call(Method::GET, &s.url("/metrics"), &[], "").await;
    assert_eq!(status, 401);
    let admin_token = format!("Bearer {}", s.token().await);
    let (status, _, _) = call(
        Method::GET,
        &s.url("/metrics"),
        &[("authorization", &admin_token)],
        "",
    )
    .await;
    assert_eq!(
        status, 401,
        "with METRICS_TOKEN set, only it opens /metrics"
    );
    let (status, h, body) = call(
        Method::GET,
        &s.url("/metrics"),
        &[("authorization", "Bearer scrape-token")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "rotator_requests_total{service=\"svc\",class=\"2xx\"} 3",
        "rotator_retries_total{service=\"svc\"} 1",
        "rotator_keys{service=\"svc\",state=\"cooling\"} 1",
        "rotator_keys{service=\"svc\",state=\"active\"} 1",
        "rotator_upstream_latency_seconds_count{service=\"svc\"} 4",
        "rotator_open_streams 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("metric-key"), "{text}");
    // Without METRICS_TOKEN an admin token opens it.
    let s2 = start(&[]).await;
    let t = format!("Bearer {}", s2.token().await);
    let (status, _, _) = call(
        Method::GET,
        &s2.url("/metrics"),
        &[("authorization", &t)],
        "",
    )
    .await;
    assert_eq!(status, 200);
}
