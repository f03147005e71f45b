//! Usage insight end to end: a proxy in this process, fake upstreams that send known
//! usage, and the admin API's `/admin/usage` and `/admin/requests` reading it back.
//! The client's bytes are always the upstream's, whatever the tap could read.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{
    PROXY_KEY, call, channel_body, reply, request, send, start, start_in, upstream, upstream_raw,
};

const AUTH: (&str, &str) = ("authorization", "Bearer test-proxy-key");

async fn usage(s: &support::TestServer, query: &str) -> Vec<Value> {
    let (status, _, body) = s
        .admin(Method::GET, &format!("/admin/usage?{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().expect("a list of buckets").clone()
}

async fn requests(s: &support::TestServer, query: &str) -> Value {
    let (status, _, body) = s
        .admin(Method::GET, &format!("/admin/requests?{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A chat completion for model `m` through `/llm/<slug>`; its status.
async fn chat(s: &support::TestServer, slug: &str) -> StatusCode {
    let path = format!("/llm/{slug}/v1/chat/completions");
    let (status, _, _) = call(Method::POST, &s.url(&path), &[AUTH], r#"{"model":"m"}"#).await;
    status
}

fn totals(buckets: &[Value]) -> [i64; 4] {
    let sum = |f: &str| buckets.iter().map(|b| b[f].as_i64().unwrap()).sum::<i64>();
    [
        sum("requests"),
        sum("tokens_in"),
        sum("tokens_out"),
        sum("tokens_cached"),
    ]
}

#[tokio::test]
async fn openai_json_usage_is_recorded_with_the_request_in_the_log() {
    let answer = json!({"id": "c1", "model": "gpt-answer", "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 3}}});
    let sent = answer.to_string();
    let up =
        upstream(move |_| reply(200, &[("content-type", "application/json")], sent.clone())).await;
    let s = start(&[]).await;
    let svc = s
        .llm_service(
            "oai",
            "openai_compatible",
            &up.url("/v1"),
            &["sk-real-key-0001"],
        )
        .await;
    let (status, headers, body) = call(
        Method::POST,
        &s.url("/llm/oai/v1/chat/completions"),
        &[
            AUTH,
            ("content-type", "application/json"),
            ("x-request-id", "client-id-42"),
        ],
        r#"{"model":"gpt-asked","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        answer.to_string().as_bytes(),
        "the client's bytes are the upstream's"
    );
    assert_eq!(headers["x-request-id"], "client-id-42");
    assert_eq!(headers["x-rotator-request-id"], "client-id-42");
    assert_eq!(
        up.requests()[0].header("accept-encoding"),
        Some("identity"),
        "asked uncompressed, so the tokens can be read"
    );
    assert_eq!(
        up.requests()[0].header("x-request-id"),
        Some("client-id-42")
    );

    let b = usage(&s, "group=service,key,model").await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(totals(&b), [1, 11, 7, 3]);
    assert_eq!(
        b[0]["model"], "gpt-asked",
        "the request's model comes first"
    );
    assert_eq!(b[0]["service"], "oai");
    assert_eq!(b[0]["service_id"], svc);
    assert_eq!(b[0]["successes"], 1);

    let log = requests(&s, "").await;
    let e = &log["items"][0];
    assert_eq!(e["request_id"], "client-id-42");
    assert_eq!(e["service"], "oai");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/llm/oai/v1/chat/completions");
    assert_eq!(e["status"], 200);
    assert_eq!(e["model"], "gpt-asked");
    assert_eq!(
        (
            e["tokens_in"].clone(),
            e["tokens_out"].clone(),
            e["tokens_cached"].clone()
        ),
        (json!(11), json!(7), json!(3))
    );
    assert_eq!(e["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(e["attempts"][0]["status"], 200);
    assert_eq!(e["bytes_out"], answer.to_string().len());
    assert_eq!(e["bytes_in"], 35);
    assert_eq!(e["client_ip"], "127.0.0.1");
    let text = log.to_string();
    assert!(
        !text.contains("sk-real-key-0001") && !text.contains(PROXY_KEY),
        "{text}"
    );
    assert_eq!(e["key"], "sk-****0001", "masked");

    // Filters and /metrics.
    assert_eq!(
        requests(&s, "request_id=client-id-42").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        requests(&s, "request_id=other").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        requests(&s, "status=5xx").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        requests(&s, "service=oai").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, _, metrics) = call(
        Method::GET,
        &s.url("/metrics"),
        &[("authorization", &format!("Bearer {}", s.token().await))],
        "",
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"rotator_tokens_total{service="oai",model="gpt-asked",kind="in"} 11"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_id_that_is_not_sane_is_replaced() {
    let up = upstream(|_| support::ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.generic_service("g", &up.url(""), &["k1"]).await;
    let long = "x".repeat(200);
    for bad in ["has space", "a\u{7f}b", long.as_str()] {
        let Ok(v) = http::HeaderValue::from_str(bad) else {
            continue;
        };
        let mut req = request(
            Method::GET,
            &s.url("/proxy/g/x"),
            &[("x-proxy-key", PROXY_KEY)],
            api_key_rotator::body::full(""),
        );
        req.headers_mut().insert("x-request-id", v);
        let resp = send(req).await;
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, bad);
        assert!(
            id.len() >= 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let sent: Vec<_> = up
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1], "each request gets its own");
}

/// An SSE answer written a few bytes at a time, so usage is split across frames.
async fn sse_upstream(events: String, chunk: usize) -> support::Upstream {
    upstream_raw(move |_req| {
        let events = events.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for piece in events.as_bytes().chunks(chunk) {
                    if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await
}

async fn stream_through(s: &support::TestServer, path: &str, body: &str) -> Bytes {
    let resp = send(request(
        Method::POST,
        &s.url(path),
        &[
            AUTH,
            ("content-type", "application/json"),
            ("x-api-key", PROXY_KEY),
            ("x-goog-api-key", PROXY_KEY),
        ],
        api_key_rotator::body::full(body.to_string()),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn usage_split_across_frames_is_read_for_each_provider() {
    let openai = "data: {\"id\":\"1\",\"model\":\"gpt-s\",\"choices\":[{\"delta\":{\"content\":\"hi, there\"}}],\"usage\":null}\n\n\
        data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n";
    let responses = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
        event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-r\",\"usage\":{\"input_tokens\":30,\"output_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":6}}}}\n\n";
    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":12}}\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let gemini = "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1}}\r\n\r\n\
        data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":4,\"thoughtsTokenCount\":2,\"cachedContentTokenCount\":3},\"modelVersion\":\"gemini-v\"}\r\n\r\n";
    let cases = [
        (
            "openai_compatible",
            "/v1/chat/completions",
            r#"{"model":"gpt-s","stream":true}"#,
            openai,
            [21, 5, 4],
        ),
        (
            "openai_compatible",
            "/v1/responses",
            r#"{"model":"gpt-r","stream":true}"#,
            responses,
            [30, 9, 6],
        ),
        (
            "anthropic_native",
            "/v1/messages",
            r#"{"model":"claude-x","stream":true}"#,
            anthropic,
            [17, 12, 5],
        ),
        (
            "gemini_native",
            "/v1beta/models/gemini-p:streamGenerateContent",
            r#"{"contents":[]}"#,
            gemini,
            [8, 6, 3],
        ),
    ];
    let s = start(&[]).await;
    for (i, (format, path, req, events, want)) in cases.iter().enumerate() {
        for chunk in [1, 7, 4096] {
            let up = sse_upstream(events.to_string(), chunk).await;
            let slug = format!("s{i}c{chunk}");
            s.llm_service(&slug, format, &up.url(""), &["sk-upstream"])
                .await;
            let got = stream_through(&s, &format!("/llm/{slug}{path}"), req).await;
            assert_eq!(got, events.as_bytes(), "{slug}: bytes unchanged");
            let b = usage(&s, &format!("service={slug}")).await;
            assert_eq!(
                totals(&b)[1..],
                want[..].iter().map(|x| *x as i64).collect::<Vec<_>>()[..],
                "{slug} {format} {path}: {b:?}"
            );
        }
    }
    let b = usage(&s, "group=model").await;
    let models: Vec<_> = b
        .iter()
        .map(|b| b["model"].as_str().unwrap().to_string())
        .collect();
    assert!(
        models.contains(&"gemini-p".to_string()),
        "the path's model: {models:?}"
    );
}

#[tokio::test]
async fn unreadable_usage_is_unknown_and_the_bytes_are_the_upstreams() {
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static [u8],
        u16,
    );
    let cases: Vec<Case> = vec![
        ("malformed", vec![("content-type", "application/json")], br#"{"usage":{"prompt_tokens":"many"},"x":[1,2"#, 200),
        ("gzip", vec![("content-type", "application/json"), ("content-encoding", "gzip")], b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00", 200),
        ("plain", vec![("content-type", "text/plain")], b"usage: prompt_tokens 5", 200),
        ("error", vec![("content-type", "text/html")], b"<html>upstream exploded</html>", 500),
    ];
    let s = start(&[]).await;
    for (name, headers, body, status) in cases {
        let up = upstream(move |_| reply(status, &headers, Bytes::from_static(body))).await;
        s.llm_service(name, "openai_compatible", &up.url(""), &["sk-upstream"])
            .await;
        let (got_status, got_headers, got) = call(
            Method::POST,
            &s.url(&format!("/llm/{name}/v1/chat/completions")),
            &[AUTH, ("content-type", "application/json")],
            r#"{"model":"m"}"#,
        )
        .await;
        assert_eq!(got_status, status, "{name}");
        assert_eq!(&got[..], body, "{name}: bytes unchanged");
        if name == "gzip" {
            assert_eq!(got_headers["content-encoding"], "gzip");
        }
        let b = usage(&s, &format!("service={name}")).await;
        assert_eq!(totals(&b), [1, 0, 0, 0], "{name}: {b:?}");
        let unknown = b[0]["usage_unknown"].as_i64().unwrap();
        assert_eq!(unknown, i64::from(status == 200), "{name}");
        if status == 500 {
            assert_eq!(b[0]["failures_by_class"]["upstream"], 1);
            let e = &requests(&s, "status=5xx").await["items"][0];
            assert_eq!(e["status"], 500);
            assert_eq!(e["tokens_in"], Value::Null);
        }
    }
}

#[tokio::test]
async fn proxy_errors_and_failovers_are_classed_and_logged() {
    let up = upstream(|r| match r.header("authorization") {
        Some("Bearer sk-limited") => reply(
            429,
            &[("content-type", "application/json")],
            r#"{"error":{"code":"rate_limit_exceeded"}}"#,
        ),
        _ => support::ok_json(json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})),
    })
    .await;
    let s = start(&[]).await;
    s.llm_service(
        "fo",
        "openai_compatible",
        &up.url(""),
        &["sk-limited", "sk-good"],
    )
    .await;
    for _ in 0..2 {
        assert_eq!(chat(&s, "fo").await, 200);
    }
    let log = requests(&s, "").await;
    let failed_over = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["attempts"].as_array().unwrap().len() == 2)
        .unwrap_or_else(|| panic!("one request failed over: {log}"));
    assert_eq!(failed_over["attempts"][0]["status"], 429);
    assert_eq!(failed_over["attempts"][1]["status"], 200);

    // A service whose upstream is gone: the proxy's own 502, with its reason.
    s.llm_service("gone", "openai_compatible", "http://127.0.0.1:9", &["sk-x"])
        .await;
    assert_eq!(chat(&s, "gone").await, 502);
    let b = usage(&s, "service=gone").await;
    assert_eq!(b[0]["failures_by_class"]["proxy"], 1, "{b:?}");
    let e = &requests(&s, "service=gone").await["items"][0];
    assert!(e["error"].as_str().unwrap().contains("unreachable"), "{e}");
    assert_eq!(e["attempts"][0]["status"], 0);
}

#[tokio::test]
async fn the_periodic_flush_writes_rollups_and_a_small_request_log() {
    let up = upstream(|_| support::ok_json(json!({}))).await;
    let s = start(&[("STATS_FLUSH_SECONDS", "1")]).await;
    s.generic_service("g", &up.url(""), &["k1"]).await;
    for _ in 0..3 {
        let (status, _, _) = call(
            Method::GET,
            &s.url("/proxy/g/x"),
            &[("x-proxy-key", PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    let rows = |table: &str| -> i64 {
        let db = rusqlite::Connection::open(s.dir.path().join("db.sqlite")).unwrap();
        db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    // Two periodic flushes: the rollups are written, and a log this small too (a large
    // one waits for the 30 s write: `stats::writes_log`).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(rows("usage_hourly") > 0);
    assert_eq!(rows("request_log"), 3);
    assert_eq!(requests(&s, "").await["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_log_survives_a_restart_is_bounded_and_pages_with_a_cursor() {
    let up = upstream(|_| support::ok_json(json!({}))).await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), &[("REQUEST_LOG_SIZE", "5")]).await;
    s.generic_service("g", &up.url(""), &["k1"]).await;
    for i in 0..8 {
        let (status, _, _) = call(
            Method::GET,
            &s.url(&format!("/proxy/g/n{i}?secret=q")),
            &[("x-proxy-key", PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    s.stop().await;
    let s = start_in(dir, &[("REQUEST_LOG_SIZE", "5")]).await;
    let page1 = requests(&s, "limit=3").await;
    let paths: Vec<_> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/proxy/g/n7", "/proxy/g/n6", "/proxy/g/n5"],
        "newest first, no query"
    );
    let cursor = page1["next_cursor"].as_i64().unwrap();
    let page2 = requests(&s, &format!("limit=3&cursor={cursor}")).await;
    let paths: Vec<_> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/proxy/g/n4", "/proxy/g/n3"],
        "only the last 5 are kept"
    );
    assert_eq!(page2["next_cursor"], Value::Null);
    assert_eq!(
        totals(&usage(&s, "").await)[0],
        8,
        "rollups are not trimmed with the log"
    );
}

#[tokio::test]
async fn bad_queries_are_400_and_tracking_can_be_off() {
    let s = start(&[]).await;
    for q in [
        "bucket=week",
        "group=planet",
        "from=yesterday",
        "from=100&to=50",
        "key=-1",
        "service=nope",
        "bucket=hour&from=0",
    ] {
        let (status, _, body) = s
            .admin(Method::GET, &format!("/admin/usage?{q}"), None)
            .await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
    for q in ["limit=0", "limit=501", "status=7xx", "cursor=x"] {
        let (status, _, body) = s
            .admin(Method::GET, &format!("/admin/requests?{q}"), None)
            .await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    let (status, _, _) = call(Method::GET, &s.url("/admin/usage"), &[], "").await;
    assert_eq!(status, 401);
    let (status, _, _) = s.admin(Method::POST, "/admin/usage", None).await;
    assert_eq!(status, 405);

    let up = upstream(|_| support::ok_json(json!({}))).await;
    let off = start(&[("USAGE_TRACKING", "off")]).await;
    off.generic_service("g", &up.url(""), &["k1"]).await;
    let (_, headers, _) = call(
        Method::GET,
        &off.url("/proxy/g/x"),
        &[("x-proxy-key", PROXY_KEY)],
        "",
    )
    .await;
    assert!(headers.get("x-request-id").is_none());
    let (status, _, body) = off.admin(Method::GET, "/admin/usage", None).await;
    assert_eq!(status, 404, "{body}");
}
