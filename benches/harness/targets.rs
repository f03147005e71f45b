//! The things under test and how to reach them: the upstream ("direct"), nginx with
//! `proxy_pass` and upstream keep-alive, and the proxy (lightweight or enterprise build),
//! set up through its admin API.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::client::{ReqSpec, admin_json};
use crate::procs::{self, Proc};

pub const PROXY_KEY: &str = "pk-bench-0123456789";
pub const ADMIN_PASSWORD: &str = "bench-admin-password";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789abcdef";
/// The slugs the bench creates.
pub const REST_SLUG: &str = "bench";
pub const LLM_SLUG: &str = "benchllm";
/// The upstream keys (three per service, rotated by the proxy; nginx sends the first).
pub const KEYS: [&str; 3] = ["up-key-1", "up-key-2", "up-key-3"];

/// How a target is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Nginx,
    Ours,
    /// LiteLLM's proxy (/llm only).
    Litellm,
}

/// A running target.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The processes whose CPU time counts for this target.
    pub pid: u32,
}

impl Target {
    /// Every pid of the target (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        match self.kind {
            Kind::Nginx | Kind::Litellm => procs::family(self.pid),
            _ => vec![self.pid],
        }
    }

    pub fn cpu_ticks(&self) -> u64 {
        self.pids().into_iter().map(procs::cpu_ticks).sum()
    }

    pub fn rss_kb(&self) -> u64 {
        self.pids().into_iter().map(|p| procs::rss_kb(p).0).sum()
    }
}

/// The request shapes measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /proxy/<slug>/items/42?page=1` → a tiny JSON object.
    Rest,
    /// `POST /llm/<slug>/v1/chat/completions` with a 1 KB JSON body.
    Llm,
    /// The same POST with `"stream":true`: an SSE stream (query `n`, `gap_ms`).
    Sse,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Rest => "/proxy GET tiny JSON",
            Route::Llm => "/llm POST 1 KB JSON",
            Route::Sse => "/llm SSE",
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Route::Rest => "rest",
            Route::Llm => "llm",
            Route::Sse => "sse",
        }
    }
}

/// An OpenAI-style chat request of exactly 1024 bytes.
pub fn chat_body(stream: bool) -> Vec<u8> {
    let head = format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"max_tokens":16,"messages":[{{"role":"user","content":""#
    );
    let tail = r#""}]}"#;
    let fill = 1024 - head.len() - tail.len();
    let text: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(fill)
        .collect();
    let body = format!("{head}{text}{tail}");
    debug_assert_eq!(body.len(), 1024);
    body.into_bytes()
}

/// The request of `route` as a client of `kind` sends it. `query` is appended (SSE pacing).
pub fn request(kind: Kind, route: Route, query: &str) -> ReqSpec {
    request_as(kind, route, query, PROXY_KEY)
}

/// [`request`] with `proxy_key` as the proxy's key (a client key, say).
pub fn request_as(kind: Kind, route: Route, query: &str, proxy_key: &str) -> ReqSpec {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    match (kind, route) {
        (Kind::Direct, Route::Rest) => ReqSpec::new(
            Method::GET,
            format!("/items/42?page=1{}", q.replace('?', "&")),
        )
        .header("x-api-key", KEYS[0])
        .header("accept", "application/json"),
        (_, Route::Rest) => ReqSpec::new(
            Method::GET,
            format!("/proxy/{REST_SLUG}/items/42?page=1{}", q.replace('?', "&")),
        )
        .header("x-proxy-key", proxy_key)
        .header("accept", "application/json"),
        (kind, Route::Llm | Route::Sse) => {
            let path = match kind {
                Kind::Direct | Kind::Litellm => format!("/v1/chat/completions{q}"),
                _ => format!("/llm/{LLM_SLUG}/v1/chat/completions{q}"),
            };
            let key = match kind {
                Kind::Direct => KEYS[0],
                _ => proxy_key,
            };
            ReqSpec::new(Method::POST, path)
                .header("authorization", &format!("Bearer {key}"))
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(chat_body(route == Route::Sse))
        }
    }
}

/// The upstream, run by this same executable (`harness upstream`).
pub fn spawn_upstream(work: &Path, port: u16, cpus: Option<&str>) -> Proc {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = pinned(cpus, &exe);
    cmd.args(["upstream", "--port", &port.to_string(), "--threads", "2"]);
    let p = Proc::spawn("upstream", cmd, work);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        procs::wait_listening(addr, Duration::from_secs(10)),
        "the upstream did not start"
    );
    p
}

/// A server under test: back at nice 0 when the harness runs favoured (`nice -n -10`, see
/// benches/run.sh), and `taskset -c <cpus>` when pinned.
pub fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    let own = procs::own_nice();
    let mut argv: Vec<String> = Vec::new();
    if own < 0 {
        argv.extend(["nice".into(), "-n".into(), (-own).to_string()]);
    }
    if let Some(c) = cpus {
        argv.extend(["taskset".into(), "-c".into(), c.to_string()]);
    }
    argv.push(program.display().to_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// A load generator (wrk): keeps the harness's priority, pinned when asked.
pub fn client(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// nginx in front of the upstream: `worker_processes` = the proxy's worker threads,
/// keep-alive to the upstream, the first key injected as a fixed header, no access log.
pub fn spawn_nginx(
    work: &Path,
    port: u16,
    upstream_port: u16,
    workers: usize,
    cpus: Option<&str>,
) -> Proc {
    let dir = work.join("nginx");
    let conf_path = write_nginx_conf(&dir, port, upstream_port, workers, true);
    let nginx = which("nginx").expect("nginx is not installed (benches/run.sh installs it)");
    let mut cmd = pinned(cpus, &nginx);
    cmd.arg("-e")
        .arg(dir.join("logs/error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path);
    let p = Proc::spawn("nginx", cmd, work);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        procs::wait_listening(addr, Duration::from_secs(10)),
        "nginx did not start; see {}",
        dir.join("logs/error.log").display()
    );
    p
}

/// Writes nginx's configuration for one run into `dir` (with its temp and log folders)
/// and returns its path. `master_process off` runs one process that does everything
/// (`benches/run.sh profile ... load` runs it so under callgrind).
pub fn write_nginx_conf(
    dir: &Path,
    port: u16,
    upstream_port: u16,
    workers: usize,
    master_process: bool,
) -> PathBuf {
    for d in ["", "tmp", "logs"] {
        fs::create_dir_all(dir.join(d)).expect("nginx dir");
    }
    let master = if master_process { "on" } else { "off" };
    let d = dir.display();
    let k = KEYS[0];
    let conf = format!(
        r#"# Written by benches/harness/targets.rs for one benchmark run.
worker_processes {workers};
daemon off;
master_process {master};
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 8192;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    tcp_nodelay on;
    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /proxy/{REST_SLUG}/ {{
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Proxy-Key "";
            proxy_set_header X-Api-Key {k};
        }}
        location /llm/{LLM_SLUG}/v1/ {{
            proxy_pass http://up/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {k}";
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).expect("nginx.conf");
    conf_path
}

/// Finds a program on PATH (and in the sbin directories, where Debian puts nginx).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// How to run one proxy instance.
#[derive(Clone, Debug)]
pub struct ProxyOpts<'a> {
    pub name: &'a str,
    pub bin: &'a Path,
    pub port: u16,
    pub log_level: &'a str,
    /// Extra environment (the enterprise backends).
    pub env: Vec<(String, String)>,
    /// `DATABASE_PATH` (SQLite builds without `DB_HOST`).
    pub db: PathBuf,
    pub cpus: Option<&'a str>,
    /// `WORKER_THREADS` (default: the proxy's own, one shard per CPU).
    pub workers: Option<usize>,
}

/// The proxy's command line and environment (nothing inherited but `PATH`, and the
/// settings in `BENCH_PROXY_ENV="NAME=value,…"`, for an A/B of one setting).
pub fn proxy_command(o: &ProxyOpts<'_>, work: &Path) -> Command {
    let mut cmd = pinned(o.cpus, o.bin);
    cmd.env_clear()
        .current_dir(work)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("JWT_SECRET", JWT_SECRET)
        .env("GLOBAL_PROXY_KEYS", PROXY_KEY)
        .env("BACKEND_PORT", o.port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DATABASE_PATH", &o.db)
        .env("LOG_LEVEL", o.log_level);
    if let Some(n) = o.workers {
        cmd.env("WORKER_THREADS", n.to_string());
    }
    for (k, v) in &o.env {
        cmd.env(k, v);
    }
    let extra = std::env::var("BENCH_PROXY_ENV").unwrap_or_default();
    for (k, v) in extra.split(',').filter_map(|kv| kv.split_once('=')) {
        cmd.env(k, v);
    }
    cmd
}

/// Starts a proxy and waits until `/health` answers 200.
pub fn spawn_proxy(o: &ProxyOpts<'_>, work: &Path) -> Proc {
    let mut p = Proc::spawn(o.name, proxy_command(o, work), work);
    let addr = SocketAddr::from(([127, 0, 0, 1], o.port));
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let rt = rt();
    loop {
        p.check_alive(work);
        let health = ReqSpec::new(Method::GET, "/health");
        if let Ok((200, _)) = rt.block_on(crate::client::fetch_once(
            addr,
            &health,
            Duration::from_secs(2),
        )) {
            return p;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} did not become healthy in 30 s",
            o.name
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A small single-threaded runtime for setup work.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Logs in as the admin; returns the token.
pub async fn login(addr: SocketAddr) -> Result<String, String> {
    let (status, login) = admin_json(
        addr,
        Method::POST,
        "/admin/login",
        None,
        Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
    )
    .await
    .map_err(|e| e.to_string())?;
    login["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or(format!("login failed ({status}): {login}"))
}

/// Creates a client key with `fields`; returns its secret.
pub async fn client_key(addr: SocketAddr, fields: serde_json::Value) -> Result<String, String> {
    let token = login(addr).await?;
    let (status, key) = admin_json(
        addr,
        Method::POST,
        "/admin/client-keys",
        Some(&token),
        Some(fields),
    )
    .await
    .map_err(|e| e.to_string())?;
    key["secret"]
        .as_str()
        .map(str::to_string)
        .ok_or(format!("client key not created ({status}): {key}"))
}

/// Logs in and creates the two services with three keys each. Returns the admin token.
pub async fn setup(addr: SocketAddr, upstream_port: u16) -> Result<String, String> {
    let e = |e: crate::client::Error| e.to_string();
    let token = login(addr).await?;
    let services = [
        json!({
            "name": "Bench REST", "slug": REST_SLUG, "config_type": "GENERIC", "method": "ANY",
            "target_url": format!("http://127.0.0.1:{upstream_port}"),
            "api_key_location": "header", "api_key_name": "X-Api-Key",
        }),
        json!({
            "name": "Bench LLM", "slug": LLM_SLUG, "config_type": "LLM",
            "api_format": "openai_compatible",
            "target_base_url": format!("http://127.0.0.1:{upstream_port}/v1"),
        }),
    ];
    for svc in services {
        let (status, created) = admin_json(
            addr,
            Method::POST,
            "/admin/proxy-configs",
            Some(&token),
            Some(svc.clone()),
        )
        .await
        .map_err(e)?;
        let id = created["id"]
            .as_i64()
            .ok_or(format!("creating {svc} failed ({status}): {created}"))?;
        let (status, added) = admin_json(
            addr,
            Method::POST,
            &format!("/admin/proxy-configs/{id}/keys/batch"),
            Some(&token),
            Some(json!({"keys": KEYS})),
        )
        .await
        .map_err(e)?;
        if status >= 300 {
            return Err(format!("adding keys failed ({status}): {added}"));
        }
    }
    Ok(token)
}

/// Reads one gauge of `/metrics`.
pub async fn metric(addr: SocketAddr, token: &str, name: &str) -> Option<f64> {
    let spec =
        ReqSpec::new(Method::GET, "/metrics").header("authorization", &format!("Bearer {token}"));
    let (_, body) = crate::client::fetch_once(addr, &spec, Duration::from_secs(5))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
