//! Client access keys end to end: made and edited through the admin API, presented to a
//! proxy in this process wherever a proxy key goes, checked and counted against their
//! limits, and never sent upstream. Upstreams are real servers on 127.0.0.1:0.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{
    TestServer, call, channel_body, ok_json, request, send, start, start_in, upstream, upstream_raw,
};

/// Creates a client key; its answer (with the secret).
async fn create(s: &TestServer, body: Value) -> Value {
    let (status, _, v) = s
        .admin(Method::POST, "/admin/client-keys", Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

fn secret(key: &Value) -> String {
    key["secret"]
        .as_str()
        .expect("the secret, once")
        .to_string()
}

async fn patch(s: &TestServer, id: i64, body: Value) -> (StatusCode, Value) {
    let (status, _, v) = s
        .admin(
            Method::PATCH,
            &format!("/admin/client-keys/{id}"),
            Some(body),
        )
        .await;
    (status, v)
}

/// An OpenAI-compatible service `oai` and a generic one `rest`, both answering with a
/// chat completion that used 7 + 4 tokens.
async fn services(s: &TestServer) -> support::Upstream {
    let up = upstream(|_| {
        ok_json(json!({"id": "c", "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}))
    })
    .await;
    s.llm_service(
        "oai",
        "openai_compatible",
        &up.url("/v1"),
        &["sk-upstream-1"],
    )
    .await;
    s.generic_service("rest", &up.url(""), &["rest-upstream-1"])
        .await;
    up
}

async fn chat(
    s: &TestServer,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, Value) {
    let (status, h, bytes) = call(
        Method::POST,
        &s.url("/llm/oai/v1/chat/completions"),
        headers,
        body.to_string(),
    )
    .await;
    (
        status,
        h,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[tokio::test]
async fn a_key_is_made_shown_once_edited_and_deleted() {
    let s = start(&[]).await;
    let key = create(
        &s,
        json!({"name": "ci bot", "note": "nightly", "services": ["oai"],
               "models": ["gpt-4o*"], "rpm": 60, "expires_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    let secret = secret(&key);
    assert!(secret.starts_with("akr-") && secret.len() == 47, "{secret}");
    assert_eq!(key["prefix"], secret[..10]);
    assert_eq!(key["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(
        (key["rpm"].as_i64(), key["rpd"].is_null()),
        (Some(60), true)
    );
    let id = key["id"].as_i64().unwrap();

    // Listed and read without the secret or its hash.
    let (status, _, list) = s.admin(Method::GET, "/admin/client-keys", None).await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains(&secret) && !text.contains("hash"), "{text}");
    assert_eq!(list[0]["name"], "ci bot");
    let (_, _, one) = s
        .admin(Method::GET, &format!("/admin/client-keys/{id}"), None)
        .await;
    assert_eq!(one["services"], json!(["oai"]));
    assert!(one.get("secret").is_none());

    // A PATCH changes what it names; null clears a limit; an answer can be sent back.
    let (status, v) = patch(
        &s,
        id,
        json!({"rpm": null, "rpd": 1000, "is_active": false}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["rpm"].is_null(), v["rpd"].as_i64()), (true, Some(1000)));
    assert_eq!(
        (v["name"].as_str(), v["is_active"].as_bool()),
        (Some("ci bot"), Some(false))
    );
    let (status, _) = patch(&s, id, v.clone()).await;
    assert_eq!(status, 200);

    // Bad input: a clear 400 naming the field.
    for (body, field) in [
        (json!({"rpm": 0}), "rpm"),
        (json!({"rpm": "many"}), "rpm"),
        (json!({"expires_at": "tomorrow"}), "expires_at"),
        (json!({"services": "oai"}), "services"),
        (json!({"models": ["a*b"]}), "models"),
        (json!({"name": ""}), "name"),
    ] {
        let (status, v) = patch(&s, id, body.clone()).await;
        assert_eq!(
            (status, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{body}: {v}"
        );
    }
    let (status, v) = patch(&s, id, json!({"rpm_limit": 5})).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("rpm_limit"), "{v}");
    let (status, _, v) = s
        .admin(
            Method::POST,
            "/admin/client-keys",
            Some(json!({"note": "no name"})),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    let (status, _) = patch(&s, 999, json!({"rpm": 1})).await;
    assert_eq!(status, 404);

    let (status, _, _) = s
        .admin(Method::DELETE, &format!("/admin/client-keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = s
        .admin(Method::GET, &format!("/admin/client-keys/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = s.admin(Method::PUT, "/admin/client-keys", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_client_key_works_wherever_a_proxy_key_does_and_never_goes_upstream() {
    let s = start(&[]).await;
    let up = services(&s).await;
    let secret = secret(&create(&s, json!({"name": "app"})).await);
    let auth = bearer(&secret);
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    for headers in [
        vec![("authorization", auth.as_str())],
        vec![("x-api-key", secret.as_str())],
        vec![("x-goog-api-key", secret.as_str())],
    ] {
        let (status, _, v) = chat(&s, &headers, body).await;
        assert_eq!(status, 200, "{headers:?}: {v}");
    }
    let path = format!("/llm/oai/v1/chat/completions?key={secret}");
    let (status, _, _) = call(Method::POST, &s.url(&path), &[], body).await;
    assert_eq!(status, 200);
    let in_body = format!(r#"{{"model":"gpt-4o-mini","api_key":"{secret}"}}"#);
    let (status, _, _) = chat(&s, &[], &in_body).await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        Method::GET,
        &s.url("/proxy/rest/things"),
        &[("x-proxy-key", &secret)],
        "",
    )
    .await;
    assert_eq!(status, 200);

    let seen = up.requests();
    assert_eq!(seen.len(), 6);
    for r in &seen {
        let all = format!("{:?} {:?} {:?}", r.uri, r.headers, r.body);
        assert!(
            !all.contains(&secret),
            "the client key went upstream: {all}"
        );
        assert!(
            all.contains("upstream-1"),
            "the real key went instead: {all}"
        );
    }
}

#[tokio::test]
async fn refusals_have_their_own_status_and_detail_and_reach_no_upstream() {
    let s = start(&[]).await;
    let up = services(&s).await;
    let scoped = secret(
        &create(
            &s,
            json!({"name": "scoped", "services": ["oai"], "models": ["gpt-4o*"]}),
        )
        .await,
    );
    let expired = secret(
        &create(
            &s,
            json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await,
    );
    let off = create(&s, json!({"name": "off", "is_active": false})).await;
    let made_up = format!("akr-{}", "A".repeat(43));
    let cases = [
        (
            bearer(&made_up),
            "/llm/oai/v1/chat/completions",
            r#"{"model":"gpt-4o"}"#,
            401,
            "proxy key",
        ),
        (
            bearer(&secret(&off)),
            "/llm/oai/v1/chat/completions",
            r#"{"model":"gpt-4o"}"#,
            401,
            "disabled",
        ),
        (
            bearer(&expired),
            "/llm/oai/v1/chat/completions",
            r#"{"model":"gpt-4o"}"#,
            401,
            "expired",
        ),
        (
            bearer(&scoped),
            "/llm/oai/v1/chat/completions",
            r#"{"model":"o3"}"#,
            403,
            "model 'o3'",
        ),
        (
            bearer(&scoped),
            "/llm/oai/v1/chat/completions",
            r#"{"messages":[]}"#,
            403,
            "names none",
        ),
    ];
    for (auth, path, body, status, detail) in cases {
        let (got, h, bytes) = call(
            Method::POST,
            &s.url(path),
            &[("authorization", &auth)],
            body,
        )
        .await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(got.as_u16(), status, "{detail}: {v}");
        assert_eq!(h["x-rotator-error"], "1");
        assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
    }
    let (got, _, bytes) = call(
        Method::GET,
        &s.url("/proxy/rest/x"),
        &[("x-proxy-key", &scoped)],
        "",
    )
    .await;
    assert_eq!(got, 403, "{bytes:?}");
    assert!(String::from_utf8_lossy(&bytes).contains("service 'rest'"));
    // Model rules are for /llm: a /proxy request names no model and is not refused for it.
    let models_only = secret(&create(&s, json!({"name": "m", "models": ["gpt-4o*"]})).await);
    let (got, _, _) = call(
        Method::POST,
        &s.url("/proxy/rest/x"),
        &[("x-proxy-key", &models_only)],
        "{}",
    )
    .await;
    assert_eq!(got, 200);
    // Listing models names none, and is allowed.
    let (got, _, _) = call(
        Method::GET,
        &s.url("/llm/oai/v1/models"),
        &[("authorization", &bearer(&scoped))],
        "",
    )
    .await;
    assert_eq!(got, 200);
    assert_eq!(up.count(), 2, "only the allowed requests went upstream");
}

#[tokio::test]
async fn a_per_minute_limit_answers_429_with_retry_after_and_spares_the_upstream_key() {
    let s = start(&[]).await;
    let up = services(&s).await;
    let key = create(&s, json!({"name": "capped", "rpm": 3})).await;
    let auth = bearer(&secret(&key));
    let body = r#"{"model":"gpt-4o-mini"}"#;
    for _ in 0..3 {
        assert_eq!(chat(&s, &[("authorization", &auth)], body).await.0, 200);
    }
    let (status, h, v) = chat(&s, &[("authorization", &auth)], body).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("3 requests per minute"),
        "{v}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-rotator-error"], "1");
    assert_eq!(up.count(), 3);
    // The global proxy keys have no limits, and the upstream key is as healthy as before.
    for _ in 0..5 {
        let global = [("authorization", "Bearer test-proxy-key")];
        assert_eq!(chat(&s, &global, body).await.0, 200);
    }
    let (_, _, keys) = s
        .admin(Method::GET, "/admin/proxy-configs/1/keys", None)
        .await;
    assert_eq!(keys[0]["consecutive_failures"], 0, "{keys}");
    assert!(keys[0]["invalid_reason"].is_null(), "{keys}");

    // The key's own counters, in the admin API.
    let id = key["id"].as_i64().unwrap();
    let (_, _, v) = s
        .admin(Method::GET, &format!("/admin/client-keys/{id}"), None)
        .await;
    assert_eq!(v["usage"]["requests_this_minute"], 3, "{v}");
    assert!(v["last_used_at"].is_string(), "{v}");
}

/// An SSE upstream whose stream stays open until the test drops its sender.
async fn held_stream() -> (
    support::Upstream,
    tokio::sync::mpsc::Receiver<tokio::sync::mpsc::Sender<Bytes>>,
) {
    let (give, take) = tokio::sync::mpsc::channel(8);
    let up = upstream_raw(move |_req| {
        let give = give.clone();
        async move {
            let (tx, body) = channel_body();
            tx.send(Bytes::from_static(b"data: {\"choices\":[]}\n\n"))
                .await
                .ok();
            give.send(tx).await.ok();
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    })
    .await;
    (up, take)
}

#[tokio::test]
async fn open_streams_are_limited_and_a_revoked_key_finishes_its_open_stream() {
    let s = start(&[]).await;
    let (up, mut senders) = held_stream().await;
    s.llm_service(
        "live",
        "openai_compatible",
        &up.url("/v1"),
        &["sk-upstream-1"],
    )
    .await;
    let key = create(&s, json!({"name": "streamer", "max_streams": 1})).await;
    let auth = bearer(&secret(&key));
    let open = || {
        send(request(
            Method::POST,
            &s.url("/llm/live/v1/chat/completions"),
            &[("authorization", &auth)],
            api_key_rotator::body::full(r#"{"model":"m","stream":true}"#),
        ))
    };
    let first = open().await;
    assert_eq!(first.status(), 200);
    let tx = senders.recv().await.unwrap();
    let (status, _, body) = call(
        Method::POST,
        &s.url("/llm/live/v1/chat/completions"),
        &[("authorization", &auth)],
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    assert_eq!(status, 429, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("1 requests open at once"));

    // Revoked while the stream is open: the stream goes on to its end.
    let id = key["id"].as_i64().unwrap();
    let (status, _) = patch(&s, id, json!({"is_active": false})).await;
    assert_eq!(status, 200);
    tx.send(Bytes::from_static(b"data: [DONE]\n\n"))
        .await
        .unwrap();
    drop(tx);
    let got = tokio::time::timeout(Duration::from_secs(5), first.into_body().collect())
        .await
        .expect("the open stream ends")
        .unwrap()
        .to_bytes();
    assert!(got.ends_with(b"data: [DONE]\n\n"), "{got:?}");
    let (status, _, body) = call(
        Method::POST,
        &s.url("/llm/live/v1/chat/completions"),
        &[("authorization", &auth)],
        r#"{"model":"m"}"#,
    )
    .await;
    assert_eq!(status, 401, "{body:?}");

    // Enabled again: its place among the open requests was given back.
    patch(&s, id, json!({"is_active": true})).await;
    let again = open().await;
    assert_eq!(again.status(), 200);
    drop(senders.recv().await);
}

#[tokio::test]
async fn tokens_per_day_count_what_answers_used() {
    let s = start(&[]).await;
    let _up = services(&s).await;
    let key = create(&s, json!({"name": "tokens", "tpd": 20})).await;
    let auth = bearer(&secret(&key));
    let body = r#"{"model":"gpt-4o-mini"}"#;
    // 11 tokens each: the second request still starts under 20, the third does not.
    assert_eq!(chat(&s, &[("authorization", &auth)], body).await.0, 200);
    assert_eq!(chat(&s, &[("authorization", &auth)], body).await.0, 200);
    // Counted when each answer's body has ended on the proxy's side.
    let id = key["id"].as_i64().unwrap();
    for _ in 0..100 {
        let (_, _, v) = s
            .admin(Method::GET, &format!("/admin/client-keys/{id}"), None)
            .await;
        if v["usage"]["tokens_today"] == 22 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, h, v) = chat(&s, &[("authorization", &auth)], body).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("20 tokens per day"),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));

    // The usage rollups know the key: by client key, and in its own entry.
    let (_, _, buckets) = s
        .admin(Method::GET, &format!("/admin/usage?client_key={id}"), None)
        .await;
    let tokens: i64 = buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tokens_in"].as_i64().unwrap() + b["tokens_out"].as_i64().unwrap())
        .sum();
    assert_eq!(tokens, 22, "{buckets}");
    let (_, _, v) = s
        .admin(Method::GET, &format!("/admin/client-keys/{id}"), None)
        .await;
    assert_eq!(v["usage"]["tokens_today"], 22, "{v}");
    assert_eq!(v["usage"]["requests_24h"], 3, "{v}");
    assert_eq!(v["usage"]["tokens_in_24h"], 14, "{v}");
}

#[tokio::test]
async fn tokens_per_day_need_usage_tracking() {
    let s = start(&[("USAGE_TRACKING", "off")]).await;
    let (status, _, v) = s
        .admin(
            Method::POST,
            "/admin/client-keys",
            Some(json!({"name": "t", "tpd": 5})),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tpd")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("USAGE_TRACKING"),
        "{v}"
    );
}

#[tokio::test]
async fn keys_and_their_last_use_survive_a_restart() {
    let mut s = start(&[]).await;
    let _upstream = services(&s).await;
    let key = create(&s, json!({"name": "kept", "rpd": 100})).await;
    let auth = bearer(&secret(&key));
    assert_eq!(chat(&s, &[("authorization", &auth)], "{}").await.0, 200);
    s.stop().await;
    let dir = s.dir.clone();
    let s = start_in(dir, &[]).await;
    let (_, _, list) = s.admin(Method::GET, "/admin/client-keys", None).await;
    assert!(list[0]["last_used_at"].is_string(), "{list}");
    assert_eq!(chat(&s, &[("authorization", &auth)], "{}").await.0, 200);
}
