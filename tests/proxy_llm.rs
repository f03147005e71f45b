//! `/llm/<slug>/…`: every place a proxy key may come from, removal of all of them,
//! injection per provider format, the `v1/` rule and the body `api_key` field.

mod support;

use http::Method;
use serde_json::json;
use support::{PROXY_KEY, call, ok_json, start, upstream};

#[tokio::test]
async fn every_client_credential_is_accepted_and_none_reaches_the_upstream() {
    let up = upstream(|_| ok_json(json!({"object": "list", "data": []}))).await;
    let s = start(&[]).await;
    s.llm_service("oai", "openai_compatible", &up.url("/v1"), &["sk-real"])
        .await;
    let bearer = format!("Bearer {PROXY_KEY}");
    let ways: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("authorization", &bearer)], ""),
        (vec![("x-api-key", PROXY_KEY)], ""),
        (vec![("x-anthropic-api-key", PROXY_KEY)], ""),
        (vec![("x-goog-api-key", PROXY_KEY)], ""),
        (vec![], "?key=test-proxy-key"),
        // Several at once, one of them wrong: any right one authenticates, all are removed.
        (
            vec![
                ("authorization", "Bearer wrong"),
                ("x-goog-api-key", PROXY_KEY),
                ("api-key", "x"),
            ],
            "?key=nope&keep=1",
        ),
    ];
    for (headers, query) in &ways {
        let (status, _, body) = call(
            Method::GET,
            &s.url(&format!("/llm/oai/v1/models{query}")),
            headers,
            "",
        )
        .await;
        assert_eq!(status, 200, "{headers:?} {query}: {body:?}");
    }
    for r in up.requests() {
        assert_eq!(r.uri.path(), "/v1/models");
        assert_eq!(r.header("authorization"), Some("Bearer sk-real"));
        for h in [
            "x-api-key",
            "x-anthropic-api-key",
            "x-goog-api-key",
            "api-key",
        ] {
            assert!(r.header(h).is_none(), "{h} forwarded");
        }
        let all = format!("{:?} {}", r.headers, r.uri);
        assert!(
            !all.contains(PROXY_KEY) && !all.contains("nope") && !all.contains("wrong"),
            "{all}"
        );
    }
    assert_eq!(up.requests().last().unwrap().uri.query(), Some("keep=1"));
}

#[tokio::test]
async fn authentication_comes_before_the_slug_lookup() {
    let s = start(&[]).await;
    let (status, h, body) = call(
        Method::POST,
        &s.url("/llm/unknown/v1/chat/completions"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(
        (status.as_u16(), h["x-rotator-error"].to_str().unwrap()),
        (401, "1")
    );
    assert!(String::from_utf8_lossy(&body).contains("\"detail\""));
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/unknown/v1/chat/completions"),
        &[("authorization", "Bearer wrong")],
        "{}",
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {PROXY_KEY}");
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/unknown/v1/chat/completions"),
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_v1_rule_for_openai_compatible_bases() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.llm_service("v1base", "openai_compatible", &up.url("/api/v1"), &["k"])
        .await;
    s.llm_service("rootbase", "openai_compatible", &up.url(""), &["k"])
        .await;
    let bearer = format!("Bearer {PROXY_KEY}");
    for path in [
        "/llm/v1base/chat/completions",
        "/llm/v1base/v1/chat/completions",
        "/llm/rootbase/v1/chat/completions",
    ] {
        call(
            Method::POST,
            &s.url(path),
            &[("authorization", &bearer)],
            "{}",
        )
        .await;
    }
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/chat/completions",
            "/api/v1/chat/completions",
            "/v1/chat/completions"
        ]
    );
}

#[tokio::test]
async fn injection_per_provider_format() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.llm_service("claude", "anthropic_native", &up.url(""), &["sk-ant-real"])
        .await;
    s.llm_service("gemini", "gemini_native", &up.url(""), &["AIza-real"])
        .await;
    let azure = s
        .create_service(json!({
            "name": "Azure", "slug": "azure", "config_type": "LLM", "api_format": "openai_compatible",
            "target_base_url": up.url("/openai"), "api_key_location": "header", "api_key_name": "api-key",
        }))
        .await;
    s.add_keys(azure, &["azure-real"]).await;
    let gq = s
        .create_service(json!({
            "name": "GQ", "slug": "gq", "config_type": "LLM", "api_format": "gemini_native",
            "target_base_url": up.url(""), "api_key_location": "query", "api_key_name": "key",
        }))
        .await;
    s.add_keys(gq, &["AIza-query"]).await;

    call(
        Method::POST,
        &s.url("/llm/claude/v1/messages"),
        &[("x-api-key", PROXY_KEY)],
        "{}",
    )
    .await;
    call(
        Method::POST,
        &s.url("/llm/claude/v1/messages"),
        &[
            ("x-api-key", PROXY_KEY),
            ("anthropic-version", "2024-01-01"),
        ],
        "{}",
    )
    .await;
    call(
        Method::POST,
        &s.url("/llm/gemini/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"),
        &[("x-goog-api-key", PROXY_KEY)],
        "{}",
    )
    .await;
    call(
        Method::POST,
        &s.url("/llm/azure/deployments/gpt/chat/completions?api-version=2024-02-01"),
        &[("api-key", PROXY_KEY)],
        "{}",
    )
    .await;
    call(
        Method::POST,
        &s.url(&format!(
            "/llm/gq/v1beta/models/m:generateContent?key={PROXY_KEY}&alt=sse"
        )),
        &[],
        "{}",
    )
    .await;
    let r = up.requests();
    assert_eq!(
        (
            r[0].uri.path(),
            r[0].header("x-api-key"),
            r[0].header("anthropic-version")
        ),
        ("/v1/messages", Some("sk-ant-real"), Some("2023-06-01"))
    );
    assert_eq!(
        r[1].header("anthropic-version"),
        Some("2024-01-01"),
        "the client's version is kept"
    );
    assert_eq!(r[1].headers.get_all("anthropic-version").iter().count(), 1);
    assert_eq!(
        (
            r[2].uri.path(),
            r[2].uri.query(),
            r[2].header("x-goog-api-key")
        ),
        (
            "/v1beta/models/gemini-pro:streamGenerateContent",
            Some("alt=sse"),
            Some("AIza-real")
        )
    );
    assert_eq!(
        (r[3].header("api-key"), r[3].header("authorization")),
        (Some("azure-real"), None),
        "no Bearer prefix on Azure's api-key"
    );
    assert_eq!(r[4].uri.query(), Some("alt=sse&key=AIza-query"));
}

#[tokio::test]
async fn a_proxy_key_in_the_body_is_accepted_and_removed_byte_for_byte() {
    let up = upstream(|_| ok_json(json!({}))).await;
    let s = start(&[]).await;
    s.llm_service("oai", "openai_compatible", &up.url("/v1"), &["sk-real"])
        .await;
    s.llm_service("claude", "anthropic_native", &up.url(""), &["k"])
        .await;
    let body = format!(
        r#"{{"model":"gpt-4o","api_key":"{PROXY_KEY}","seed":12345678901234567890,"messages":[{{"role":"user","content":"<b>&</b>"}}]}}"#
    );
    let (status, _, _) = call(
        Method::POST,
        &s.url("/llm/oai/v1/chat/completions"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let r = &up.requests()[0];
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"model":"gpt-4o","seed":12345678901234567890,"messages":[{"role":"user","content":"<b>&</b>"}]}"#
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // With a header credential too, the body field is still removed.
    let body = format!(r#"{{"api_key":"{PROXY_KEY}","model":"m"}}"#);
    let bearer = format!("Bearer {PROXY_KEY}");
    call(
        Method::POST,
        &s.url("/llm/oai/chat/completions"),
        &[("authorization", &bearer)],
        body,
    )
    .await;
    assert_eq!(&up.requests()[1].body[..], br#"{"model":"m"}"#);
    // Other formats do not take a body credential.
    let body = format!(r#"{{"api_key":"{PROXY_KEY}"}}"#);
    let (status, _, _) = call(Method::POST, &s.url("/llm/claude/v1/messages"), &[], body).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn event_streams_pass_through_with_buffering_off() {
    let up = upstream(|_| {
        support::reply(
            200,
            &[("content-type", "text/event-stream")],
            "data: {\"x\":1}\n\ndata: [DONE]\n\n",
        )
    })
    .await;
    let s = start(&[]).await;
    s.llm_service("oai", "openai_compatible", &up.url("/v1"), &["k"])
        .await;
    let bearer = format!("Bearer {PROXY_KEY}");
    let (status, h, body) = call(
        Method::POST,
        &s.url("/llm/oai/chat/completions"),
        &[("authorization", &bearer)],
        r#"{"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(&body[..], b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
}
