//! The server itself: bounded graceful shutdown, the header-read timeout, h2c, and the
//! binary's start-up errors and logs (which never show a secret or a query string).

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::json;
use support::{PROXY_KEY, start, upstream, upstream_raw};

const BIN: &str = env!("CARGO_BIN_EXE_api-key-rotator");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_but_an_open_stream_cannot_hold_it_forever() {
    let up = upstream_raw(|_req: Request<Incoming>| async {
        let (tx, body) = support::channel_body();
        tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"data: tick\n\n")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    })
    .await;
    let mut s = start(&[("SHUTDOWN_GRACE_SECONDS", "1")]).await;
    s.generic_service("sse", &up.url(""), &["k"]).await;
    let resp = support::send(support::request(
        Method::GET,
        &s.url("/proxy/sse/x"),
        &[("x-proxy-key", PROXY_KEY)],
        api_key_rotator::body::empty(),
    ))
    .await;
    let mut body = resp.into_body();
    http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    s.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "drain took {took:?}"
    );
    // The stream was cut.
    let mut ended = false;
    for _ in 0..100 {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(_)) => continue,
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_answer_in_flight_finish_and_closes_idle_connections_at_once() {
    let up = upstream_raw(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        support::reply(200, &[], "done")
    })
    .await;
    let mut s = start(&[("SHUTDOWN_GRACE_SECONDS", "30")]).await;
    s.generic_service("slow", &up.url(""), &["k"]).await;
    // A kept-alive connection with nothing in flight.
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    assert!(get_on(&mut idle, "/health", None).starts_with("HTTP/1.1 200"));
    let in_flight = tokio::spawn(support::send(support::request(
        Method::GET,
        &s.url("/proxy/slow/x"),
        &[("x-proxy-key", PROXY_KEY)],
        api_key_rotator::body::empty(),
    )));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    s.stop().await;
    // Well inside the 30 s grace: nothing held the drain once the answer was out.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "done");
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        idle.read(&mut [0u8; 64]).unwrap(),
        0,
        "the idle connection was closed"
    );
}

#[tokio::test]
async fn slow_headers_hit_the_header_read_timeout() {
    let s = start(&[("HEADER_READ_TIMEOUT", "0.5")]).await;
    let addr = s.addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        (started.elapsed(), String::from_utf8_lossy(&buf).to_string())
    })
    .await
    .unwrap();
    assert!(
        closed.0 < Duration::from_secs(3),
        "connection closed after {:?}: {}",
        closed.0,
        closed.1
    );
    assert!(!closed.1.contains("200 OK"));
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_read_timeout() {
    let s = start(&[("HEADER_READ_TIMEOUT", "0.5")]).await;
    let addr = s.addr;
    let (elapsed, read) = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = c.read_to_end(&mut buf).map(|_| buf.len());
        (started.elapsed(), read)
    })
    .await
    .unwrap();
    assert_eq!(read.ok(), Some(0), "closed without an answer");
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_that_goes_quiet_is_closed_after_the_header_read_timeout() {
    let s = start(&[("HEADER_READ_TIMEOUT", "0.5")]).await;
    let addr = s.addr;
    let (first, elapsed, rest) = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        // The next request's header read starts now, with nothing arriving.
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest).map(|_| rest.len());
        (first, started.elapsed(), read)
    })
    .await
    .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(rest.ok(), Some(0), "closed without another answer");
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
}

#[tokio::test]
async fn an_http2_preface_that_arrives_in_pieces_still_starts_http2() {
    let s = start(&[]).await;
    let addr = s.addr;
    let first_frame = tokio::task::spawn_blocking(move || {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&PREFACE[..5]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(&PREFACE[5..]).unwrap();
        // An empty SETTINGS frame.
        c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let mut head = [0u8; 9];
        c.read_exact(&mut head).map(|_| head)
    })
    .await
    .unwrap()
    .expect("the server answers with a frame");
    // Byte 3 of a frame header is the frame type; 4 is SETTINGS.
    assert_eq!(first_frame[3], 4, "a SETTINGS frame: {first_frame:?}");
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let up = upstream(|_| support::ok_json(json!({"ok": true}))).await;
    let s = start(&[]).await;
    s.generic_service("svc", &up.url(""), &["k"]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<api_key_rotator::body::Body>();
    for _ in 0..3 {
        let req = support::request(
            Method::GET,
            &s.url("/proxy/svc/x"),
            &[("x-proxy-key", PROXY_KEY)],
            api_key_rotator::body::empty(),
        );
        let resp = client.request(req).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), resp.version()),
            (200, http::Version::HTTP_2)
        );
    }
    assert_eq!(up.count(), 3);
}

fn run_binary(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_or_bad_configuration_stops_the_binary_naming_the_variable() {
    // BACKEND_PORT=0 is refused too, so a start that wrongly succeeds cannot hang the test.
    let good = [
        ("ADMIN_PASSWORD", "pw"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("GLOBAL_PROXY_KEYS", "k"),
        ("BACKEND_PORT", "0"),
    ];
    for missing in ["ADMIN_PASSWORD", "JWT_SECRET", "GLOBAL_PROXY_KEYS"] {
        let env: Vec<_> = good
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let (code, _, err) = run_binary(&env, &[]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(missing) && err.contains(&format!("e.g. {missing}=")),
            "{err}"
        );
    }
    let mut env: Vec<_> = good
        .iter()
        .copied()
        .filter(|(k, _)| *k != "BACKEND_PORT")
        .collect();
    env.push(("BACKEND_PORT", "eighty"));
    let (code, _, err) = run_binary(&env, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("BACKEND_PORT") && err.contains("eighty"),
        "{err}"
    );
    let (code, _, err) = run_binary(
        &[
            ("ADMIN_PASSWORD", "pw"),
            ("JWT_SECRET", ""),
            ("GLOBAL_PROXY_KEYS", "k"),
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("JWT_SECRET is empty"), "{err}");
}

#[test]
fn version_help_and_unknown_commands() {
    let (code, out, _) = run_binary(&[], &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("api-key-rotator "), "{out}");
    let (code, out, _) = run_binary(&[], &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("healthcheck") && out.contains("export") && out.contains("import"));
    let (code, _, err) = run_binary(&[], &["frobnicate"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown command"));
}

/// Starts the binary on a free port; returns the child and its port.
fn spawn_binary(dir: &std::path::Path, extra: &[(&str, &str)]) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("ADMIN_PASSWORD", support::ADMIN_PASSWORD)
        .env("JWT_SECRET", "short-secret")
        .env("GLOBAL_PROXY_KEYS", PROXY_KEY)
        .env("BACKEND_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the binary did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_a_key_or_a_query_string_and_sigterm_stops_cleanly() {
    let up = upstream(|_| {
        support::reply(
            401,
            &[],
            r#"{"error":"Incorrect API key provided: real-upstream-key-123"}"#,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = spawn_binary(dir.path(), &[("LOG_LEVEL", "debug")]);
    let base = format!("http://127.0.0.1:{port}");
    let (status, _, v) = support::send_json(
        Method::POST,
        &format!("{base}/admin/login"),
        &[],
        Some(json!({"username": "admin", "password": support::ADMIN_PASSWORD})),
    )
    .await;
    assert_eq!(status, 200);
    let auth = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let (_, _, svc) = support::send_json(
        Method::POST,
        &format!("{base}/admin/proxy-configs"),
        &[("authorization", &auth)],
        Some(json!({"name": "Q", "slug": "q", "config_type": "GENERIC", "target_url": up.url(""), "api_key_location": "query", "api_key_name": "access_key"})),
    )
    .await;
    support::send_json(
        Method::POST,
        &format!("{base}/admin/proxy-configs/{}/keys/batch", svc["id"]),
        &[("authorization", &auth)],
        Some(json!({"keys": ["real-upstream-key-123"]})),
    )
    .await;
    support::call(
        Method::GET,
        &format!("{base}/proxy/q/path?secret_param=client-secret-value"),
        &[("x-proxy-key", PROXY_KEY)],
        "",
    )
    .await;
    support::call(
        Method::GET,
        &format!("{base}/llm/none/x?key={PROXY_KEY}"),
        &[],
        "",
    )
    .await;
    support::send_json(
        Method::GET,
        &format!("{base}/admin/proxy-configs/{}/keys?reveal=true", svc["id"]),
        &[("authorization", &auth)],
        None,
    )
    .await;
    // SIGTERM: a clean stop.
    unsafe_kill(child.id(), 15);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("Database Type: sqlite") && logs.contains("Cache Type: memory"),
        "{logs}"
    );
    assert!(
        logs.contains("JWT_SECRET is only 12 bytes"),
        "a short secret is warned about loudly: {logs}"
    );
    assert!(
        logs.contains("GET /proxy/q/path 401"),
        "one access line per request: {logs}"
    );
    for secret in [
        "real-upstream-key-123",
        PROXY_KEY,
        "client-secret-value",
        "secret_param",
        support::ADMIN_PASSWORD,
        "short-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_and_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    // The real environment wins over .env; .env fills the rest.
    std::fs::write(
        dir.path().join(".env"),
        "ADMIN_USERNAME=fromdotenv\nGLOBAL_PROXY_KEYS=dotenv-key\n",
    )
    .unwrap();
    let (mut child, port) = spawn_binary(dir.path(), &[]);
    let base = format!("http://127.0.0.1:{port}");
    let (status, _, _) = support::send_json(
        Method::POST,
        &format!("{base}/admin/login"),
        &[],
        Some(json!({"username": "fromdotenv", "password": support::ADMIN_PASSWORD})),
    )
    .await;
    assert_eq!(status, 200, ".env supplies ADMIN_USERNAME");
    let (status, _, _) = support::call(
        Method::GET,
        &format!("{base}/proxy/x/y"),
        &[("x-proxy-key", "dotenv-key")],
        "",
    )
    .await;
    assert_eq!(
        status, 401,
        "the environment's GLOBAL_PROXY_KEYS wins over .env"
    );
    let (code, _, err) = run_binary(&[("BACKEND_PORT", &port.to_string())], &["healthcheck"]);
    assert_eq!(code, 0, "{err}");
    unsafe_kill(child.id(), 15);
    child.wait().unwrap();
    let (code, _, err) = run_binary(&[("BACKEND_PORT", &port.to_string())], &["healthcheck"]);
    assert_eq!(code, 1);
    assert!(err.contains("unhealthy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = spawn_binary(dir.path(), &[("DATABASE_PATH", "a.db")]);
    let base = format!("http://127.0.0.1:{port}");
    let (_, _, v) = support::send_json(
        Method::POST,
        &format!("{base}/admin/login"),
        &[],
        Some(json!({"username": "admin", "password": support::ADMIN_PASSWORD})),
    )
    .await;
    let auth = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let (_, _, svc) = support::send_json(Method::POST, &format!("{base}/admin/proxy-configs"), &[("authorization", &auth)], Some(json!({"name": "E", "slug": "e", "config_type": "LLM", "target_base_url": "https://api.openai.com/v1"}))).await;
    support::send_json(
        Method::POST,
        &format!("{base}/admin/proxy-configs/{}/keys/batch", svc["id"]),
        &[("authorization", &auth)],
        Some(json!({"keys": ["ek1", "ek2"]})),
    )
    .await;
    unsafe_kill(child.id(), 15);
    child.wait().unwrap();
    let env = |db: &'static str| {
        vec![
            ("ADMIN_PASSWORD", "pw"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("GLOBAL_PROXY_KEYS", "k"),
            ("DATABASE_PATH", db),
            ("LOG_LEVEL", "error"),
        ]
    };
    let run_in = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, dump, err) = run_in(&env("a.db"), &["export", "--reveal"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.path().join("backup.json"), &dump).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        (
            v["services"].as_array().unwrap().len(),
            v["keys"].as_array().unwrap().len()
        ),
        (1, 2)
    );
    for _ in 0..2 {
        let (code, _, err) = run_in(&env("b.db"), &["import", "backup.json"]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, again, _) = run_in(&env("b.db"), &["export", "--reveal"]);
    assert_eq!(code, 0);
    let w: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        w["keys"].as_array().unwrap().len(),
        2,
        "importing twice adds nothing"
    );
    // Without --reveal the values are masked, and such an export is refused by import.
    let (code, masked, err) = run_in(&env("a.db"), &["export"]);
    assert_eq!(code, 0);
    assert!(err.contains("--reveal"), "{err}");
    let m: serde_json::Value = serde_json::from_str(&masked).unwrap();
    let revealed: serde_json::Value = serde_json::from_str(&dump).unwrap();
    for (a, b) in m["keys"]
        .as_array()
        .unwrap()
        .iter()
        .zip(revealed["keys"].as_array().unwrap())
    {
        assert!(a["key_value"].as_str().unwrap().contains("****"), "{a}");
        assert_ne!(a["key_value"], b["key_value"]);
    }
    std::fs::write(dir.path().join("masked.json"), &masked).unwrap();
    let (code, _, err) = run_in(&env("b.db"), &["import", "masked.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("--reveal"), "{err}");
    std::fs::write(dir.path().join("broken.json"), "{\"services\": 1}").unwrap();
    let (code, _, err) = run_in(&env("b.db"), &["import", "broken.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing was changed"), "{err}");
}

/// Sends `GET <path>` on an open keep-alive connection and reads one answer with a
/// `Content-Length` body.
fn get_on(conn: &mut std::net::TcpStream, path: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(conn, "GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_shards_and_counted_until_closed() {
    let s = start(&[("WORKER_THREADS", "3")]).await;
    let token = s.token().await;
    // The connection that fetched the token may still be closing.
    settle_open_connections(&s, 0).await;
    let addr = s.addr;
    let state = s.state().clone();
    let (counts, metrics) = tokio::task::spawn_blocking(move || {
        let mut conns = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..12 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            // Answered, so the connection has been accepted and placed.
            assert!(get_on(&mut c, "/health", None).starts_with("HTTP/1.1 200"));
            conns.push(c);
            let per_shard: Vec<usize> = state
                .metrics
                .connections
                .per_shard()
                .iter()
                .map(|(_, n)| *n)
                .collect();
            counts.push(per_shard);
        }
        let metrics = get_on(&mut conns[0], "/metrics", Some(&token));
        (counts, metrics)
    })
    .await
    .unwrap();
    // After every new connection the shards differ by at most one.
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(c.len(), 3);
        assert_eq!(c.iter().sum::<usize>(), i + 1, "{counts:?}");
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }
    for shard in 0..3 {
        assert!(
            metrics.contains(&format!(
                "rotator_open_connections{{shard=\"{shard}\"}} 4\n"
            )),
            "{metrics}"
        );
    }
    // Closed connections are no longer counted.
    settle_open_connections(&s, 0).await;
}

/// Waits (at most 2 s) until `s` counts `want` open client connections.
async fn settle_open_connections(s: &support::TestServer, want: usize) {
    let mut open = usize::MAX;
    for _ in 0..100 {
        let per_shard = s.state().metrics.connections.per_shard();
        open = per_shard.iter().map(|(_, n)| n).sum::<usize>();
        if open == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{open} connections open, expected {want}");
}
