//! Which backends the binary uses, as its start-up log says, and what a lightweight
//! binary does when the environment asks for MySQL or Redis: it stops at once with a
//! message naming the enterprise build, never falling back silently.
//!
//! These run the binary of the current build (`cargo test` runs the lightweight one,
//! `cargo test --features enterprise` the enterprise one).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_api-key-rotator");

/// A port nobody listens on right now.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

fn base_env(dir: &std::path::Path) -> HashMap<String, String> {
    let port = free_port();
    [
        ("BACKEND_PORT", port.as_str()),
        ("ADMIN_PASSWORD", "backend-selection-password"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef-selection"),
        ("GLOBAL_PROXY_KEYS", "selection-proxy-key"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("LOG_LEVEL", "info"),
        (
            "DATABASE_PATH",
            dir.join("db.sqlite").to_str().expect("utf-8 path"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Starts the binary with exactly `env` (nothing inherited) and `dotenv` as its `./.env`,
/// and stops it when it exits, when its log contains `until`, or after `limit`. Returns
/// its exit status (`None` when it was stopped) and everything it printed.
fn launch(
    env: &HashMap<String, String>,
    dotenv: Option<&str>,
    until: Option<&str>,
    limit: Duration,
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(text) = dotenv {
        std::fs::write(dir.path().join(".env"), text).unwrap();
    }
    let log = dir.path().join("out.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("binary starts");
    let start = Instant::now();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit || until.is_some_and(|u| read().contains(u)) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, read())
}

/// Runs the binary with the base environment plus `extra` until it exits (or `limit`).
fn run(extra: &[(&str, &str)], limit: Duration) -> (Option<i32>, String) {
    let scratch = tempfile::tempdir().unwrap();
    let mut env = base_env(scratch.path());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    launch(&env, None, None, limit)
}

/// Runs the binary with `env` and `dotenv` until it says it is listening, then stops it.
fn start_up_log(env: &HashMap<String, String>, dotenv: Option<&str>) -> String {
    let (code, log) = launch(env, dotenv, Some("listening on"), Duration::from_secs(20));
    assert_eq!(code, None, "still running when stopped:\n{log}");
    log
}

#[test]
fn with_no_backend_variables_it_uses_sqlite_and_memory() {
    let scratch = tempfile::tempdir().unwrap();
    let log = start_up_log(&base_env(scratch.path()), None);
    assert!(log.contains("Database Type: sqlite"), "{log}");
    assert!(log.contains("Cache Type: memory"), "{log}");
}

/// The original's examples set DB_HOST and REDIS_HOST, so copying one to `.env` silently
/// switched a local run to MySQL and Redis. Ours keep those lines commented out.
#[test]
fn copying_either_env_example_keeps_sqlite_and_memory() {
    for name in [".env.example.en", ".env.example.cn"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let example = std::fs::read_to_string(&path).expect("example exists");
        // Only the port and interface come from the real environment (8000 may be taken).
        let env: HashMap<String, String> = [
            ("BACKEND_PORT".to_string(), free_port()),
            ("BIND_ADDRESS".to_string(), "127.0.0.1".to_string()),
        ]
        .into();
        let log = start_up_log(&env, Some(&example));
        assert!(log.contains("Database Type: sqlite"), "{name}:\n{log}");
        assert!(log.contains("Cache Type: memory"), "{name}:\n{log}");
    }
}

/// The lightweight binary must stop with a message that names the enterprise build.
#[cfg(any(not(feature = "mysql"), not(feature = "redis")))]
fn assert_stops_naming_enterprise(extra: &[(&str, &str)], kind_line: &str) {
    let (code, log) = run(extra, Duration::from_secs(20));
    assert_eq!(code, Some(1), "exits with status 1:\n{log}");
    assert!(log.contains(kind_line), "{log}");
    assert!(log.contains("lightweight build"), "{log}");
    assert!(log.contains("--features enterprise"), "{log}");
    assert!(log.contains("api-key-rotator:enterprise"), "{log}");
    assert!(
        !log.contains("listening on"),
        "never starts serving:\n{log}"
    );
    assert!(!log.contains("s3cret"), "no password in the log:\n{log}");
}

#[cfg(not(feature = "mysql"))]
#[test]
fn the_lightweight_build_refuses_mysql_by_name() {
    assert_stops_naming_enterprise(
        &[("DB_HOST", "db.internal"), ("DB_PASSWORD", "s3cret")],
        "Database Type: mysql",
    );
    assert_stops_naming_enterprise(
        &[(
            "DATABASE_URL",
            "mysql://app:s3cret@tcp(db:3306)/rot?charset=utf8mb4",
        )],
        "Database Type: mysql",
    );
}

#[cfg(not(feature = "redis"))]
#[test]
fn the_lightweight_build_refuses_redis_by_name() {
    assert_stops_naming_enterprise(
        &[
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PASSWORD", "s3cret"),
        ],
        "Cache Type: redis",
    );
    assert_stops_naming_enterprise(
        &[("REDIS_URL", "redis://:s3cret@cache:6379/0")],
        "Cache Type: redis",
    );
}

/// A TCP port that accepts connections and never answers, like a host that swallows
/// packets.
#[cfg(all(feature = "mysql", feature = "redis"))]
fn silent_port() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    (l, port)
}

#[cfg(all(feature = "mysql", feature = "redis"))]
#[test]
fn the_enterprise_build_reports_an_unreachable_backend_without_its_password() {
    // The backlog accepts the TCP connection; nobody ever speaks MySQL or Redis on it.
    let (_mysql, port) = silent_port();
    let started = Instant::now();
    let (code, log) = run(
        &[(
            "DATABASE_URL",
            &format!("mysql://app:s3cret@127.0.0.1:{port}/rot"),
        )],
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "gave up in time"
    );
    let expected = format!("Failed to initialize database (mysql 127.0.0.1:{port}/rot)");
    assert!(log.contains(&expected), "{log}");
    assert!(log.contains("no answer"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");

    let (_redis, port) = silent_port();
    let (code, log) = run(
        &[("REDIS_URL", &format!("redis://:s3cret@127.0.0.1:{port}/0"))],
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("Failed to initialize cache (redis)"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}
