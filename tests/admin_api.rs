//! The admin API against a real SQLite file: every route's success and failure codes,
//! authentication, validation, masking and the login throttle.

mod support;

use http::Method;
use serde_json::{Value, json};
use support::{ADMIN_PASSWORD, send_json, start};

fn generic(slug: &str) -> Value {
    json!({
        "name": format!("Service {slug}"), "slug": slug, "config_type": "GENERIC",
        "method": "GET", "target_url": "https://api.weatherstack.com",
        "api_key_location": "query", "api_key_name": "access_key",
    })
}

#[tokio::test]
async fn every_admin_route_but_login_and_app_config_needs_a_token() {
    let s = start(&[]).await;
    let (status, h, v) = send_json(Method::GET, &s.url("/admin/app-config"), &[], None).await;
    assert_eq!(
        (status.as_u16(), v),
        (
            200,
            json!({"proxy_public_base_url": "http://proxy.example"})
        )
    );
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h.get("access-control-allow-origin").is_none(),
        "no CORS on /admin"
    );
    for (method, path) in [
        (Method::GET, "/admin/proxy-configs"),
        (Method::POST, "/admin/proxy-configs"),
        (Method::GET, "/admin/proxy-configs/1"),
        (Method::PUT, "/admin/proxy-configs/1"),
        (Method::DELETE, "/admin/proxy-configs/1"),
        (Method::PUT, "/admin/proxy-configs/1/status"),
        (Method::GET, "/admin/proxy-configs/1/keys"),
        (Method::POST, "/admin/proxy-configs/1/keys"),
        (Method::DELETE, "/admin/proxy-configs/1/keys"),
        (Method::POST, "/admin/proxy-configs/1/keys/batch"),
        (Method::PATCH, "/admin/keys/1"),
        (Method::DELETE, "/admin/keys/1"),
        (Method::POST, "/admin/keys/1/reset"),
        (Method::POST, "/admin/keys/1/test"),
    ] {
        for auth in [None, Some("Bearer not-a-token"), Some("Basic YWRtaW46eA==")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let (status, _, v) =
                send_json(method.clone(), &s.url(path), &headers, Some(json!({}))).await;
            assert_eq!(status, 401, "{method} {path} {auth:?}");
            assert!(v["error"].is_string(), "{v}");
        }
    }
}

#[tokio::test]
async fn login_answers_a_token_and_refuses_bad_credentials() {
    let s = start(&[]).await;
    let url = s.url("/admin/login");
    let login = |body: Value| send_json(Method::POST, &url, &[], Some(body));
    let (status, _, v) = login(json!({"username": "admin", "password": ADMIN_PASSWORD})).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            v["success"].clone(),
            v["message"].clone(),
            v["token_type"].clone()
        ),
        (json!(true), json!("Login successful"), json!("bearer"))
    );
    assert_eq!(v["expires_in"], 86400);
    assert_eq!(v["access_token"].as_str().unwrap().split('.').count(), 3);
    let (status, _, v) = login(json!({"username": "admin", "password": "wrong"})).await;
    assert_eq!(
        (status.as_u16(), v),
        (
            401,
            json!({"error": "Invalid credentials", "success": false})
        )
    );
    let (status, _, v) = login(json!({"username": "root", "password": ADMIN_PASSWORD})).await;
    assert_eq!((status.as_u16(), v["success"].clone()), (401, json!(false)));
    let (status, _, v) = login(json!({"username": "admin"})).await;
    assert_eq!(
        (status.as_u16(), v["field"].clone()),
        (400, json!("password"))
    );
    let (status, h, _) = send_json(Method::GET, &s.url("/admin/login"), &[], None).await;
    assert_eq!(
        (status.as_u16(), h["allow"].to_str().unwrap()),
        (405, "POST")
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address_with_a_growing_delay() {
    let s = start(&[]).await;
    let wrong = json!({"username": "admin", "password": "nope"});
    for _ in 0..5 {
        let (status, _, _) = send_json(
            Method::POST,
            &s.url("/admin/login"),
            &[],
            Some(wrong.clone()),
        )
        .await;
        assert_eq!(status, 401);
    }
    // Blocked now, even for the right password.
    let right = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let (status, h, v) = send_json(
        Method::POST,
        &s.url("/admin/login"),
        &[],
        Some(right.clone()),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(h["retry-after"], "1");
    assert!(v["error"].as_str().unwrap().contains("retry in 1 s"));
    // After the short block, the right password works and clears the record.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = send_json(Method::POST, &s.url("/admin/login"), &[], Some(right)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let s = start(&[("JWT_TTL_SECONDS", "1")]).await;
    let token = s.token().await;
    let auth = format!("Bearer {token}");
    let (status, _, _) = send_json(
        Method::GET,
        &s.url("/admin/proxy-configs"),
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    // exp is checked with a 60 s leeway: forge the clock instead of sleeping a minute.
    let secret = support::JWT_SECRET.as_bytes();
    let old = api_key_rotator::jwt::issue(secret, "admin", 1_000_000, 60);
    let (status, _, v) = send_json(
        Method::GET,
        &s.url("/admin/proxy-configs"),
        &[("authorization", &format!("Bearer {old}"))],
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    let other = api_key_rotator::jwt::issue(
        b"another-secret-of-32-bytes-------",
        "admin",
        api_key_rotator::timefmt::now_secs(),
        60,
    );
    let (status, _, _) = send_json(
        Method::GET,
        &s.url("/admin/proxy-configs"),
        &[("authorization", &format!("Bearer {other}"))],
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn services_crud_with_honest_codes() {
    let s = start(&[]).await;
    let (status, _, v) = s.admin(Method::GET, "/admin/proxy-configs", None).await;
    assert_eq!(
        (status.as_u16(), v),
        (200, json!([])),
        "an empty list is [], not null"
    );

    let (status, _, created) = s
        .admin(
            Method::POST,
            "/admin/proxy-configs",
            Some(generic("weather")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["is_active"], true);
    assert_eq!(created["api_key_location"], "query");
    assert!(
        created.get("api_format").is_none(),
        "a generic service has no api_format"
    );
    assert_eq!(
        (created["key_count"].clone(), created["max_retries"].clone()),
        (json!(0), json!(2))
    );

    let mut disabled = generic("off");
    disabled["is_active"] = json!(false);
    let (status, _, v) = s
        .admin(Method::POST, "/admin/proxy-configs", Some(disabled))
        .await;
    assert_eq!(
        (status.as_u16(), v["is_active"].clone()),
        (201, json!(false)),
        "is_active:false honoured"
    );

    let llm = json!({"name": "OpenRouter", "slug": "openrouter-api", "config_type": "LLM", "target_base_url": "https://openrouter.ai/api/v1"});
    let (status, _, v) = s
        .admin(Method::POST, "/admin/proxy-configs", Some(llm))
        .await;
    assert_eq!(
        (status.as_u16(), v["api_format"].clone()),
        (201, json!("openai_compatible"))
    );

    let (status, _, v) = s
        .admin(Method::GET, &format!("/admin/proxy-configs/{id}"), None)
        .await;
    assert_eq!(
        (status.as_u16(), v["slug"].clone()),
        (200, json!("weather"))
    );
    let (status, _, v) = s.admin(Method::GET, "/admin/proxy-configs", None).await;
    assert_eq!((status.as_u16(), v.as_array().unwrap().len()), (200, 3));

    let mut update = generic("weather2");
    update["name"] = json!("Weather 2");
    let (status, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}"),
            Some(update),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v["slug"].clone(), v["is_active"].clone()),
        (200, json!("weather2"), json!(true))
    );

    let (status, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}/status"),
            Some(json!({"is_active": false})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (200, json!({"message": "Status updated successfully"}))
    );
    let (_, _, v) = s
        .admin(Method::GET, &format!("/admin/proxy-configs/{id}"), None)
        .await;
    assert_eq!(v["is_active"], false);
    let (status, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}/status"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v["field"].clone()),
        (400, json!("is_active"))
    );

    let (status, _, _) = s
        .admin(Method::DELETE, &format!("/admin/proxy-configs/{id}"), None)
        .await;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::GET, format!("/admin/proxy-configs/{id}")),
        (Method::PUT, format!("/admin/proxy-configs/{id}")),
        (Method::DELETE, format!("/admin/proxy-configs/{id}")),
        (Method::GET, format!("/admin/proxy-configs/{id}/keys")),
    ] {
        let body = (method == Method::PUT).then(|| generic("zzz"));
        let (status, _, v) = s.admin(method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
    }
    let (status, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}/status"),
            Some(json!({"is_active": true})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, _, v) = s.admin(Method::GET, "/admin/proxy-configs/abc", None).await;
    assert_eq!((status.as_u16(), v), (400, json!({"error": "Invalid ID"})));
    let (status, h, _) = s.admin(Method::PATCH, "/admin/proxy-configs", None).await;
    assert_eq!(
        (status.as_u16(), h["allow"].to_str().unwrap()),
        (405, "GET, POST")
    );
}

#[tokio::test]
async fn validation_names_the_field() {
    let s = start(&[]).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"slug": "a", "config_type": "GENERIC", "target_url": "http://x"}),
            "name",
        ),
        (
            json!({"name": "A", "config_type": "GENERIC", "target_url": "http://x"}),
            "slug",
        ),
        (
            json!({"name": "A", "slug": "Bad Slug", "config_type": "GENERIC", "target_url": "http://x"}),
            "slug",
        ),
        (
            json!({"name": "A", "slug": "-a", "config_type": "GENERIC", "target_url": "http://x"}),
            "slug",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "REST", "target_url": "http://x"}),
            "config_type",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC"}),
            "target_url",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC", "target_url": "ftp://x"}),
            "target_url",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC", "target_url": "not a url"}),
            "target_url",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "LLM"}),
            "target_base_url",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "LLM", "target_base_url": "http://x", "api_format": "openai"}),
            "api_format",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC", "target_url": "http://x", "api_key_location": "body"}),
            "api_key_location",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC", "target_url": "http://x", "is_active": "yes"}),
            "is_active",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "GENERIC", "target_url": "http://x", "max_retries": 99}),
            "max_retries",
        ),
        (
            json!({"name": "A", "slug": "a", "config_type": "LLM", "target_base_url": "http://x", "output_format": "anthropic"}),
            "output_format",
        ),
    ];
    for (body, field) in cases {
        let (status, _, v) = s
            .admin(Method::POST, "/admin/proxy-configs", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(field),
            "the message names the field: {v}"
        );
    }
}

#[tokio::test]
async fn duplicates_conflict_and_bad_bodies_are_refused() {
    let s = start(&[]).await;
    s.create_service(generic("dup")).await;
    let (status, _, v) = s
        .admin(Method::POST, "/admin/proxy-configs", Some(generic("dup")))
        .await;
    assert_eq!((status.as_u16(), v["field"].clone()), (409, json!("name")));
    let mut same_slug = generic("dup");
    same_slug["name"] = json!("Other name");
    let (status, _, v) = s
        .admin(Method::POST, "/admin/proxy-configs", Some(same_slug))
        .await;
    assert_eq!((status.as_u16(), v["field"].clone()), (409, json!("slug")));

    let auth = format!("Bearer {}", s.token().await);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _, body) = support::call(
        Method::POST,
        &s.url("/admin/proxy-configs"),
        &headers,
        "{not json",
    )
    .await;
    assert_eq!(status, 400, "{body:?}");
    let (status, _, _) =
        support::call(Method::POST, &s.url("/admin/proxy-configs"), &headers, "").await;
    assert_eq!(status, 400);
    let (status, _, _) = support::call(
        Method::POST,
        &s.url("/admin/proxy-configs"),
        &headers,
        "[1,2]",
    )
    .await;
    assert_eq!(status, 400);
    // Over 1 MiB: refused by Content-Length...
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(1 << 20));
    let (status, _, _) = support::call(
        Method::POST,
        &s.url("/admin/proxy-configs"),
        &headers,
        big.clone(),
    )
    .await;
    assert_eq!(status, 413);
    // ...and when chunked, with no length announced.
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let stream = http_body_util::StreamBody::new(futures_stream(chunks));
    let req = support::request(
        Method::POST,
        &s.url("/admin/proxy-configs"),
        &headers,
        http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
            stream,
            |e: std::convert::Infallible| match e {},
        )),
    );
    let resp = support::send(req).await;
    assert_eq!(resp.status(), 413);
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

#[tokio::test]
async fn keys_are_masked_revealed_on_request_and_managed() {
    let s = start(&[]).await;
    let id = s.create_service(generic("keys")).await;
    let path = format!("/admin/proxy-configs/{id}/keys");
    let (status, _, v) = s.admin(Method::GET, &path, None).await;
    assert_eq!((status.as_u16(), v), (200, json!([])));

    let (status, _, k) = s
        .admin(
            Method::POST,
            &path,
            Some(json!({"key_value": "  sk-abcdefghijklmnopqrstuvwxyz  "})),
        )
        .await;
    assert_eq!(status, 201, "{k}");
    assert_eq!(k["key_value"], "sk-****wxyz", "masked in the answer");
    assert_eq!(
        (
            k["status"].clone(),
            k["is_active"].clone(),
            k["proxy_config_id"].clone()
        ),
        (json!("active"), json!(true), json!(id))
    );
    let (status, _, v) = s
        .admin(
            Method::POST,
            &path,
            Some(json!({"key_value": "sk-abcdefghijklmnopqrstuvwxyz"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v["field"].clone()),
        (409, json!("key_value"))
    );
    let (status, _, k2) = s
        .admin(
            Method::POST,
            &path,
            Some(json!({"key_value": "short", "is_active": false})),
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            k2["is_active"].clone(),
            k2["status"].clone()
        ),
        (201, json!(false), json!("disabled"))
    );
    assert_eq!(k2["key_value"], "s****t");
    for bad in [
        json!({}),
        json!({"key_value": ""}),
        json!({"key_value": "has space"}),
        json!({"key_value": "x".repeat(256)}),
        json!({"key_value": 5}),
    ] {
        let (status, _, v) = s.admin(Method::POST, &path, Some(bad.clone())).await;
        assert_eq!(
            (status.as_u16(), v["field"].clone()),
            (400, json!("key_value")),
            "{bad}"
        );
    }
    let (status, _, v) = s
        .admin(
            Method::POST,
            "/admin/proxy-configs/999/keys",
            Some(json!({"key_value": "k"})),
        )
        .await;
    assert_eq!(status, 404, "{v}");

    let (_, _, listed) = s.admin(Method::GET, &path, None).await;
    assert!(
        listed.to_string().find("abcdefghij").is_none(),
        "no full key in the list: {listed}"
    );
    let (_, _, revealed) = s
        .admin(Method::GET, &format!("{path}?reveal=true"), None)
        .await;
    assert_eq!(revealed[0]["key_value"], "sk-abcdefghijklmnopqrstuvwxyz");

    let key_id = k2["id"].as_i64().unwrap();
    let (status, _, v) = s
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{key_id}"),
            Some(json!({"is_active": true})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (
            200,
            json!({"message": "API key status updated successfully"})
        )
    );
    let (status, _, _) = s
        .admin(
            Method::PATCH,
            "/admin/keys/999",
            Some(json!({"is_active": true})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, v) = s
        .admin(
            Method::PATCH,
            "/admin/keys/x",
            Some(json!({"is_active": true})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (400, json!({"error": "Invalid key ID"}))
    );
    let (status, _, v) = s
        .admin(Method::POST, &format!("/admin/keys/{key_id}/reset"), None)
        .await;
    assert_eq!(
        (status.as_u16(), v["status"].clone()),
        (200, json!("active"))
    );
    let (status, _, _) = s
        .admin(Method::DELETE, &format!("/admin/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = s
        .admin(Method::DELETE, &format!("/admin/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 404, "deleting a missing key is 404");

    let (status, _, v) = s.admin(Method::DELETE, &path, None).await;
    assert_eq!((status.as_u16(), v), (200, json!({"deleted_count": 1})));
    let (status, _, v) = s
        .admin(Method::DELETE, "/admin/proxy-configs/999/keys", None)
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (404, json!({"error": "ProxyConfig not found"}))
    );
}

#[tokio::test]
async fn batch_import_trims_skips_and_reports() {
    let s = start(&[]).await;
    let id = s.create_service(generic("batch")).await;
    s.add_keys(id, &["stored-key-1"]).await;
    let batch = json!({"keys": [" k-one ", "k-two", "", "   ", "k-one", "stored-key-1", "bad key", 42, "k-three"]});
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(batch),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"success_count": 3, "failed_count": 2, "skipped_count": 2, "failed_keys": ["bad key", "42"]})
    );
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(json!({"keys": []})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (
            200,
            json!({"success_count": 0, "failed_count": 0, "skipped_count": 0})
        )
    );
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(json!({})),
        )
        .await;
    assert_eq!((status.as_u16(), v["field"].clone()), (400, json!("keys")));
    let (status, _, v) = s
        .admin(
            Method::POST,
            "/admin/proxy-configs/999/keys/batch",
            Some(json!({"keys": ["a"]})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (404, json!({"error": "ProxyConfig not found"}))
    );
    let (_, _, svc) = s
        .admin(Method::GET, &format!("/admin/proxy-configs/{id}"), None)
        .await;
    assert_eq!(
        (svc["key_count"].clone(), svc["active_key_count"].clone()),
        (json!(4), json!(4))
    );
}

#[tokio::test]
async fn deleting_a_service_deletes_its_keys() {
    let s = start(&[]).await;
    let id = s.create_service(generic("cascade")).await;
    s.add_keys(id, &["a1", "a2"]).await;
    let keys = s.keys(id).await;
    s.admin(Method::DELETE, &format!("/admin/proxy-configs/{id}"), None)
        .await;
    for k in keys {
        let (status, _, _) = s
            .admin(
                Method::PATCH,
                &format!("/admin/keys/{}", k["id"]),
                Some(json!({"is_active": true})),
            )
            .await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn health_page_and_fallbacks() {
    let s = start(&[]).await;
    let (status, h, v) = send_json(Method::GET, &s.url("/health"), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            v["database"].clone(),
            v["cache"].clone(),
            v["database_ok"].clone()
        ),
        (json!("sqlite"), json!("memory"), json!(true))
    );
    assert_eq!(h["cache-control"], "no-store");
    let (status, h, body) = support::call(Method::GET, &s.url("/"), &[], "").await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(
        (
            h["x-content-type-options"].to_str().unwrap(),
            h["referrer-policy"].to_str().unwrap()
        ),
        ("nosniff", "no-referrer")
    );
    assert!(!body.is_empty());
    let (status, _, v) = send_json(Method::GET, &s.url("/admin/nothing-here"), &[], None).await;
    assert_eq!(
        (status.as_u16(), v),
        (404, json!({"error": "Route not found"}))
    );
    let (status, _, _) = support::call(Method::GET, &s.url("/assets/missing.js"), &[], "").await;
    assert_eq!(status, 404);
    let (status, h, _) = support::call(Method::GET, &s.url("/some/spa/page"), &[], "").await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
}
