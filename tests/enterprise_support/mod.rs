//! Helpers of the enterprise tests: throw-away MariaDB/MySQL databases, private
//! redis-server processes, and the release-candidate binary started as real processes.
//!
//! They talk to real servers only. Where: `TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`) and `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! A server that does not answer fails the test loudly; nothing is skipped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api_key_rotator::config::MysqlConfig;
use http::{Method, StatusCode};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

use crate::support;

pub const ADMIN_PASSWORD: &str = "enterprise-test-admin-password";
pub const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef-enterprise";
pub const PROXY_KEY: &str = "enterprise-proxy-key";
pub const BIN: &str = env!("CARGO_BIN_EXE_api-key-rotator");

/// A random lowercase hex string (no rand crate needed).
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mysql_base() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The shared Redis of the machine, database `db`.
pub fn shared_redis_url(db: u32) -> String {
    let base = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    format!("{}/{db}", base.trim_end_matches('/'))
}

/// A database name of its own for one test, dropped when the guard goes.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh name; the store creates the database on open.
    pub fn new() -> TestDb {
        TestDb {
            name: format!("rotator_test_{}", random_hex()),
        }
    }

    /// `mysql://user[:pass]@host:port/<name>`: what DATABASE_URL gets.
    pub fn url(&self) -> String {
        format!("{}/{}", mysql_base().trim_end_matches('/'), self.name)
    }

    pub fn config(&self) -> MysqlConfig {
        api_key_rotator::config::parse_mysql_url(&self.url()).expect("TEST_MYSQL_URL parses")
    }

    /// A direct connection to this database (created if missing), for fixtures and checks.
    pub async fn conn(&self) -> mysql_async::Conn {
        let mut server = server_conn().await;
        server
            .query_drop(format!("CREATE DATABASE IF NOT EXISTS `{}`", self.name))
            .await
            .unwrap();
        server.disconnect().await.unwrap();
        let opts = mysql_async::Opts::from_url(&self.url()).expect("database URL");
        mysql_async::Conn::new(opts)
            .await
            .expect("MariaDB reachable")
    }

    /// Runs statements on this database.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.disconnect().await.unwrap();
    }

    /// The first column of the first row of a query, as text.
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        let mut c = self.conn().await;
        let v: Option<Option<String>> = c.query_first(sql).await.unwrap();
        c.disconnect().await.unwrap();
        v.flatten()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = server_conn().await;
                let _ = c.query_drop(sql).await;
                let _ = c.disconnect().await;
            });
        })
        .join();
    }
}

/// A connection to the MySQL server (no database), failing loudly when it is not there.
pub async fn server_conn() -> mysql_async::Conn {
    let url = format!("{}/", mysql_base().trim_end_matches('/'));
    let opts = mysql_async::Opts::from_url(&url).expect("TEST_MYSQL_URL parses");
    mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!("MariaDB/MySQL is not reachable at {url} ({e}); start it (CI: .ci/run does)")
    })
}

/// Sends one command to a Redis server and returns the first reply line.
pub fn redis_command(port: u16, db: u32, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("SELECT {db}\r\n{command}\r\n").as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    // Two replies: SELECT's +OK and the command's.
    while buf.iter().filter(|&&b| b == b'\n').count() < 2 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.lines();
    lines.next();
    Ok(lines.next().unwrap_or("").to_string())
}

/// The shared Redis answers, or the test fails loudly.
pub fn require_shared_redis() {
    let url = shared_redis_url(0);
    let port = url
        .trim_start_matches("redis://")
        .split(['/', ':'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(6379);
    match redis_command(port, 0, "PING") {
        Ok(reply) if reply == "+PONG" => {}
        other => panic!("Redis is not reachable at {url} ({other:?}); start it (CI: .ci/run does)"),
    }
}

/// A private redis-server on a free port, to stop and start in a test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "redis-server answers", || {
            redis_command(self.port, 0, "PING").is_ok_and(|r| r == "+PONG")
        });
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ok` every 20 ms until it holds, failing after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The base environment of an instance.
pub fn instance_env(port: u16) -> HashMap<String, String> {
    [
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("JWT_SECRET", JWT_SECRET),
        ("GLOBAL_PROXY_KEYS", PROXY_KEY),
        ("BACKEND_PORT", &port.to_string()),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("LOG_LEVEL", "warn"),
        ("STATS_FLUSH_SECONDS", "0.5"),
        ("SHUTDOWN_GRACE_SECONDS", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs the binary with `args` and exactly `env` (nothing inherited, no `.env`), in a
/// fresh directory. Returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary running as a server, killed on drop.
pub struct Instance {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    token: Mutex<Option<String>>,
}

impl Instance {
    /// Starts the binary with the base environment plus `extra` and waits for /health.
    pub fn spawn(extra: &[(&str, &str)]) -> Instance {
        let port = free_port();
        let mut env = instance_env(port);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .env_clear()
            .envs(&env)
            .current_dir(dir.path())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("binary starts");
        let mut inst = Instance {
            port,
            child,
            log,
            _dir: dir,
            token: Mutex::new(None),
        };
        inst.wait_healthy();
        inst
    }

    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("instance exited ({status}):\n{}", self.log_text());
            }
            if healthcheck_ok(self.port) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance not healthy after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the instance logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn token(&self) -> String {
        if let Some(t) = self.token.lock().unwrap().clone() {
            return t;
        }
        let (status, _, body) = support::send_json(
            Method::POST,
            &self.url("/admin/login"),
            &[],
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let t = body["access_token"].as_str().unwrap().to_string();
        *self.token.lock().unwrap() = Some(t.clone());
        t
    }

    /// An authenticated admin call.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = format!("Bearer {}", self.token().await);
        let (status, _, v) =
            support::send_json(method, &self.url(path), &[("authorization", &auth)], body).await;
        (status, v)
    }

    /// A generic service in front of `target`, injecting the key as `X-Api-Key`.
    pub async fn generic_service(&self, slug: &str, target: &str, extra: Value) -> i64 {
        let mut body = json!({
            "name": slug, "slug": slug, "config_type": "GENERIC", "method": "ANY",
            "target_url": target, "api_key_location": "header", "api_key_name": "X-Api-Key",
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self
            .admin(Method::POST, "/admin/proxy-configs", Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    pub async fn add_keys(&self, service: i64, keys: &[&str]) {
        let (status, v) = self
            .admin(
                Method::POST,
                &format!("/admin/proxy-configs/{service}/keys/batch"),
                Some(json!({ "keys": keys })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["success_count"], keys.len(), "{v}");
    }

    /// The listed key whose value is `value` (with its live `status`).
    pub async fn key(&self, service: i64, value: &str) -> Value {
        let (status, v) = self
            .admin(
                Method::GET,
                &format!("/admin/proxy-configs/{service}/keys?reveal=true"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_value"] == value)
            .cloned()
            .unwrap_or_else(|| panic!("key {value} listed: {v}"))
    }

    /// One proxied GET through this instance.
    pub async fn proxy(&self, slug: &str, path: &str) -> StatusCode {
        let (status, _, _) = support::call(
            Method::GET,
            &self.url(&format!("/proxy/{slug}{path}")),
            &[("x-proxy-key", PROXY_KEY)],
            bytes::Bytes::new(),
        )
        .await;
        status
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary's own `healthcheck` subcommand against `port`.
pub fn healthcheck_ok(port: u16) -> bool {
    let env: HashMap<String, String> = [("BACKEND_PORT".to_string(), port.to_string())].into();
    run_bin(&["healthcheck"], &env).0 == 0
}

/// Polls an async condition every 20 ms until it holds; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
