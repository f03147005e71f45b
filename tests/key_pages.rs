//! Large pools through the admin API: paged key lists (stable while keys come and go),
//! search and filters, the whole array streamed, bulk actions (and a bulk delete cut short
//! by `kill -9`), a test job, notes, and background re-validation against real upstreams
//! on 127.0.0.1:0.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use support::{TestServer, call, ok_json, reply, start, upstream};

async fn get(s: &TestServer, path: &str) -> (u16, Value) {
    let (status, _, v) = s.admin(Method::GET, path, None).await;
    (status.as_u16(), v)
}

async fn bulk(s: &TestServer, id: i64, body: Value) -> (u16, Value) {
    let (status, _, v) = s
        .admin(
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/bulk"),
            Some(body),
        )
        .await;
    (status.as_u16(), v)
}

fn ids(page: &Value) -> Vec<i64> {
    page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect()
}

async fn pool(s: &TestServer, n: usize) -> i64 {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("sk-pool-{i:05}-{:04}", i * 7))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    s.generic_service("big", "http://127.0.0.1:9", &refs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_while_keys_are_added_and_deleted() {
    let s = start(&[]).await;
    let id = pool(&s, 300).await;
    let before: Vec<i64> = s
        .keys(id)
        .await
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut deleted = HashSet::new();
    let mut round = 0;
    loop {
        let (status, page) = get(
            &s,
            &format!("/admin/proxy-configs/{id}/keys?limit=40&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        // Between pages: delete one key behind the cursor and one ahead, add one.
        round += 1;
        for victim in [
            seen[seen.len() / 2],
            before[(seen.len() + 50).min(before.len() - 1)],
        ] {
            if deleted.insert(victim) {
                let (st, _, v) = s
                    .admin(Method::DELETE, &format!("/admin/keys/{victim}"), None)
                    .await;
                assert_eq!(st, 200, "{v}");
            }
        }
        s.add_keys(id, &[&format!("sk-added-during-{round:03}")])
            .await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no key twice");
    for k in &before {
        if !deleted.contains(k) {
            assert!(unique.contains(k), "key {k} stayed and was seen");
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order");
    // Keys added meanwhile come after the cursor, so the walk reached them.
    assert!(unique.len() > before.len() - deleted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_search_sorts_totals_and_bad_parameters() {
    let s = start(&[]).await;
    let id = pool(&s, 120).await;
    let all = s.keys(id).await;
    let key_id = |i: usize| all[i]["id"].as_i64().unwrap();
    // A note, a disabled key, an invalid one.
    let (st, _, v) = s
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{}", key_id(3)),
            Some(json!({"note": "Team Alpha"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _, _) = s
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{}", key_id(4)),
            Some(json!({"is_active": false})),
        )
        .await;
    assert_eq!(st, 200);
    let health = api_key_rotator::store::KeyHealth {
        invalid_reason: Some("upstream answered 401".into()),
        invalid_at: Some(1),
        cooldown_until: None,
    };
    s.state()
        .store
        .set_key_health(key_id(5), health)
        .await
        .unwrap();

    let page = |q: &str| format!("/admin/proxy-configs/{id}/keys?{q}");
    let (_, p) = get(&s, &page("state=disabled&total=1")).await;
    assert_eq!((ids(&p), p["total"].as_u64()), (vec![key_id(4)], Some(1)));
    let (_, p) = get(&s, &page("state=invalid")).await;
    assert_eq!(ids(&p), vec![key_id(5)]);
    let (_, p) = get(&s, &page("state=active&limit=1000&total=1")).await;
    assert_eq!(p["total"], 118, "{}", p["total"]);
    // Search: the note (any case), the last characters, the whole key.
    let (_, p) = get(&s, &page("q=team%20alpha")).await;
    assert_eq!(ids(&p), vec![key_id(3)]);
    assert_eq!(p["keys"][0]["note"], "Team Alpha");
    let tail = "0077"; // sk-pool-00011-0077
    let (_, p) = get(&s, &page(&format!("q={tail}"))).await;
    assert_eq!(ids(&p), vec![key_id(11)]);
    let (_, p) = get(&s, &page("q=sk-pool-00042-0294")).await;
    assert_eq!(ids(&p), vec![key_id(42)]);
    let (_, p) = get(&s, &page("q=pool-0004")).await;
    assert!(ids(&p).is_empty(), "a middle part of a key is not searched");
    // Sorted descending by id, paged.
    let (_, p) = get(&s, &page("sort=-id&limit=2")).await;
    assert_eq!(ids(&p), vec![key_id(119), key_id(118)]);
    let (_, p) = get(
        &s,
        &format!(
            "{}&cursor={}",
            page("sort=-id&limit=2"),
            p["next_cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(ids(&p), vec![key_id(117), key_id(116)]);
    // Masked unless revealed.
    assert!(p["keys"][0]["key_value"].as_str().unwrap().contains("****"));

    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("state=sleeping", "state"),
        ("sort=name", "sort"),
        ("cursor=xyz", "cursor"),
    ] {
        let (st, v) = get(&s, &page(q)).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert!(v.to_string().contains(field), "{q}: {v}");
    }
    let (st, _) = get(&s, "/admin/proxy-configs/999/keys?limit=5").await;
    assert_eq!(st, 404);
    let (st, _) = get(&s, "/admin/proxy-configs/999/keys").await;
    assert_eq!(
        st, 404,
        "the streamed list checks the service before answering"
    );
    let long = "x".repeat(201);
    let (st, _, v) = s
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{}", key_id(3)),
            Some(json!({"note": long})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_list_is_streamed_in_the_original_shape() {
    let s = start(&[]).await;
    let id = pool(&s, 1234).await;
    let (status, headers, body) = call(
        Method::GET,
        &s.url(&format!("/admin/proxy-configs/{id}/keys")),
        &[("authorization", &format!("Bearer {}", s.token().await))],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let list: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.len(), 1234);
    let got: Vec<i64> = list.iter().map(|k| k["id"].as_i64().unwrap()).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert!(list[0]["key_value"].as_str().unwrap().contains("****"));
    assert_eq!(list[0]["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_change_the_keys_and_the_rotation_at_once() {
    let up = upstream(|req| ok_json(json!({ "key": req.header("x-api-key") }))).await;
    let s = start(&[]).await;
    let keys: Vec<String> = (0..50).map(|i| format!("bk-{i:03}-abcd")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let id = s.generic_service("bulk", &up.url(""), &refs).await;
    let all = s.keys(id).await;
    let first_ten: Vec<i64> = all[..10]
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();

    let (st, v) = bulk(
        &s,
        id,
        json!({"action": "disable", "ids": first_ten, "dry_run": true}),
    )
    .await;
    assert_eq!((st, v["matched"].as_u64()), (200, Some(10)), "{v}");
    assert_eq!(
        s.keys(id)
            .await
            .iter()
            .filter(|k| k["is_active"] == false)
            .count(),
        0,
        "dry run"
    );
    let (st, v) = bulk(&s, id, json!({"action": "disable", "ids": first_ten})).await;
    assert_eq!((st, v["affected"].as_u64()), (200, Some(10)), "{v}");
    // The rotation no longer uses them.
    for _ in 0..80 {
        let (st, _, body) = call(
            Method::GET,
            &s.url("/proxy/bulk/x"),
            &[("x-proxy-key", support::PROXY_KEY)],
            "",
        )
        .await;
        assert_eq!(st, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let used = v["key"].as_str().unwrap();
        let n: usize = used[3..6].parse().unwrap();
        assert!(n >= 10, "disabled key {used} used");
    }
    let (_, v) = bulk(
        &s,
        id,
        json!({"action": "enable", "filter": {"state": "disabled"}}),
    )
    .await;
    assert_eq!(v["affected"], 10);
    let (_, v) = bulk(
        &s,
        id,
        json!({"action": "delete", "filter": {"q": "abcd"}, "dry_run": true}),
    )
    .await;
    assert_eq!(v["matched"], 50, "every key ends in abcd");
    let (_, v) = bulk(
        &s,
        id,
        json!({"action": "delete", "ids": [first_ten[0], first_ten[1], 999_999]}),
    )
    .await;
    assert_eq!(
        v["affected"], 2,
        "ids of no key of this service are ignored"
    );
    assert_eq!(s.keys(id).await.len(), 48);
    let (_, v) = bulk(&s, id, json!({"action": "reset", "filter": {}})).await;
    assert_eq!(v["affected"], 48);

    for (body, field) in [
        (json!({"action": "explode", "ids": [1]}), "action"),
        (json!({"action": "delete"}), "ids"),
        (json!({"action": "delete", "ids": []}), "ids"),
        (json!({"action": "delete", "ids": ["x"]}), "ids"),
        (json!({"action": "delete", "ids": [1], "filter": {}}), "ids"),
        (
            json!({"action": "delete", "filter": {"state": "gone"}}),
            "state",
        ),
        (
            json!({"action": "delete", "filter": {"color": "red"}}),
            "filter",
        ),
        (json!({"action": "delete", "ids": [1], "extra": 1}), "extra"),
    ] {
        let (st, v) = bulk(&s, id, body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v.to_string().contains(field), "{body}: {v}");
    }
    let (st, _) = bulk(&s, 999, json!({"action": "delete", "filter": {}})).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_job_probes_every_selected_key_and_shows_its_progress() {
    let up = upstream(|req| {
        if req
            .header("x-api-key")
            .is_some_and(|k| k.starts_with("bad"))
        {
            reply(401, &[], "no")
        } else {
            ok_json(json!({"ok": true}))
        }
    })
    .await;
    let s = start(&[]).await;
    let keys: Vec<String> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                format!("bad-{i:03}")
            } else {
                format!("good-{i:03}")
            }
        })
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let id = s.generic_service("jobs", &up.url(""), &refs).await;
    let (st, _, v) = s
        .admin(
            Method::PUT,
            &format!("/admin/proxy-configs/{id}"),
            Some(json!({
                "name": "jobs", "slug": "jobs", "config_type": "GENERIC", "method": "ANY",
                "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
                "probe_path": "whoami",
            })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = bulk(&s, id, json!({"action": "test", "filter": {}})).await;
    assert_eq!(st, 202, "{v}");
    let job = v["job"]["id"].as_u64().unwrap();
    assert_eq!(v["job"]["total"], 30);
    let mut last = Value::Null;
    for _ in 0..100 {
        last = get(&s, &format!("/admin/jobs/{job}")).await.1;
        if last["state"] == "finished" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["state"], "finished", "{last}");
    assert_eq!(
        (
            last["done"].as_u64(),
            last["ok"].as_u64(),
            last["failed"].as_u64()
        ),
        (Some(30), Some(20), Some(10))
    );
    // The state filter reads the store, where each invalid mark is saved after its probe.
    let mut invalid = Value::Null;
    for _ in 0..40 {
        invalid = get(
            &s,
            &format!("/admin/proxy-configs/{id}/keys?state=invalid&total=1"),
        )
        .await
        .1;
        if invalid["total"] == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(invalid["total"], 10, "{invalid}");
    assert_eq!(get(&s, "/admin/jobs/9999").await.0, 404);
    let (st, _, v) = s
        .admin(Method::DELETE, &format!("/admin/jobs/{job}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_revalidation_brings_a_key_back_and_leaves_a_dead_one() {
    let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healed.clone();
    let up = upstream(move |req| {
        let key = req.header("x-api-key").unwrap_or("").to_string();
        let good = key == "sk-flaky" && h.load(std::sync::atomic::Ordering::Relaxed);
        if good || key == "sk-fine" {
            ok_json(json!({}))
        } else {
            reply(401, &[], "denied")
        }
    })
    .await;
    let s = start(&[("REVALIDATE_TICK_SECONDS", "0.1")]).await;
    let body = |interval: i64| {
        json!({
            "name": "rv", "slug": "rv", "config_type": "GENERIC", "method": "ANY",
            "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
            "revalidate_interval": interval,
        })
    };
    let (st, _, v) = s
        .admin(Method::POST, "/admin/proxy-configs", Some(body(120)))
        .await;
    assert_eq!(st, 400, "a generic service needs a probe path: {v}");
    assert!(v.to_string().contains("probe_path"), "{v}");
    let (st, _, v) = s
        .admin(
            Method::POST,
            "/admin/proxy-configs",
            Some(json!({
                "name": "rv", "slug": "rv", "config_type": "GENERIC", "method": "ANY",
                "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
                "revalidate_interval": 30, "probe_path": "whoami",
            })),
        )
        .await;
    assert_eq!(st, 400, "below a minute: {v}");
    let id = s
        .create_service(json!({
            "name": "rv", "slug": "rv", "config_type": "GENERIC", "method": "ANY",
            "target_url": up.url(""), "api_key_location": "header", "api_key_name": "X-Api-Key",
            "revalidate_interval": 60, "probe_path": "whoami",
        }))
        .await;
    s.add_keys(id, &["sk-fine", "sk-flaky", "sk-dead"]).await;
    // Both went bad two minutes ago (as the store says at the next start).
    let bad = api_key_rotator::store::KeyHealth {
        invalid_reason: Some("upstream answered 401".into()),
        invalid_at: Some(api_key_rotator::timefmt::now_ms() as i64 - 120_000),
        cooldown_until: None,
    };
    for v in ["sk-flaky", "sk-dead"] {
        let kid = s.key(id, v).await["id"].as_i64().unwrap();
        s.state()
            .store
            .set_key_health(kid, bad.clone())
            .await
            .unwrap();
    }
    s.state().reload().await.unwrap();
    let probes_before = up
        .requests()
        .iter()
        .filter(|r| r.uri.path().ends_with("/whoami"))
        .count();
    healed.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flaky = Value::Null;
    for _ in 0..50 {
        flaky = s.key(id, "sk-flaky").await;
        if flaky["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(flaky["status"], "active", "{flaky}");
    assert_eq!(s.key(id, "sk-dead").await["status"], "invalid");
    assert_eq!(s.key(id, "sk-fine").await["status"], "active");
    let probes: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.uri.path().ends_with("/whoami"))
        .collect();
    assert!(probes.len() > probes_before, "probed on the probe path");
    assert!(
        probes
            .iter()
            .all(|r| r.header("x-api-key") != Some("sk-fine")),
        "good keys are not probed"
    );
    // The dead key backs off: not probed again right away.
    let dead_probes = probes
        .iter()
        .filter(|r| r.header("x-api-key") == Some("sk-dead"))
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = up
        .requests()
        .into_iter()
        .filter(|r| r.header("x-api-key") == Some("sk-dead"))
        .count();
    assert_eq!(dead_probes, 1, "one probe of the dead key");
    assert_eq!(again, dead_probes, "then it waits (2 × interval)");
}

fn run_bin(dir: &std::path::Path, args: &[&str], port: Option<u16>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-key-rotator"));
    cmd.env_clear()
        .current_dir(dir)
        .env("DATABASE_PATH", dir.join("db.sqlite"))
        .env("LOG_LEVEL", "warn")
        .env("ADMIN_PASSWORD", support::ADMIN_PASSWORD)
        .env("JWT_SECRET", support::JWT_SECRET)
        .env("GLOBAL_PROXY_KEYS", support::PROXY_KEY)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(p) = port {
        cmd.env("BACKEND_PORT", p.to_string());
    }
    cmd.spawn().unwrap()
}

fn count_keys(dir: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
    c.query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_delete_cut_short_by_kill_9_happened_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Value> = (0..50_000)
        .map(|i| json!({"id": i + 1, "key_value": format!("sk-kill-{i:06}"), "is_active": true, "proxy_config_id": 1}))
        .collect();
    let dump = json!({"format": "api-key-rotator/1", "services": [{"id": 1, "name": "k", "slug": "k",
        "config_type": "GENERIC", "is_active": true, "method": "GET", "target_url": "http://127.0.0.1:9"}],
        "keys": keys});
    std::fs::write(dir.path().join("dump.json"), dump.to_string()).unwrap();
    assert!(
        run_bin(dir.path(), &["import", "dump.json"], None)
            .wait()
            .unwrap()
            .success()
    );
    let mut outcomes = Vec::new();
    for delay_ms in [5u64, 40, 120, 400, 1500, 5000] {
        if count_keys(dir.path()) == 0 {
            break;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = run_bin(dir.path(), &[], Some(port));
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut token = None;
        for _ in 0..100 {
            let (st, _, v) = support::send_json(
                Method::POST,
                &format!("{base}/admin/login"),
                &[],
                Some(json!({"username": "admin", "password": support::ADMIN_PASSWORD})),
            )
            .await;
            if st == 200 {
                token = v["access_token"].as_str().map(String::from);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let auth = format!("Bearer {}", token.expect("the server started"));
        let url = format!("{base}/admin/proxy-configs/1/keys/bulk");
        let req = tokio::spawn(async move {
            support::send_json(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                Some(json!({"action": "delete", "filter": {}})),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = req.await;
        let left = count_keys(dir.path());
        assert!(
            left == 0 || left == 50_000,
            "after kill -9 at {delay_ms} ms: {left} keys, not all or none"
        );
        outcomes.push((delay_ms, left));
    }
    eprintln!("kill -9 during a bulk delete of 50,000 keys (delay ms, keys left): {outcomes:?}");
}
