//! `harness train`: the workload a profile-guided build (scripts/pgo.sh) learns from.
//!
//! An instrumented proxy binary serves the bench's own requests against the bench's
//! upstream: /proxy GET and /llm POST on a few keep-alive connections, some SSE streams,
//! and the answers a client gets wrong (unknown service, missing proxy key). Once with
//! `LOG_LEVEL=warn` and once with `info` (the images' default: one access line per
//! request). Each proxy is stopped with SIGTERM, so it exits normally and writes its
//! `.profraw` file into the profile directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use tokio::task::JoinSet;

use crate::client::{Conn, ReqSpec};
use crate::procs;
use crate::targets::{self, Kind, ProxyOpts, Route};

/// Keep-alive connections that share each route's requests.
const CONNS: usize = 4;

/// Trains `bin` with `n` requests per route and log level; profiles go to `profiles`.
/// `env`: extra environment for the proxy (e.g. `REDIS_URL`, to train Redis rotation).
pub fn run(bin: &Path, profiles: &Path, n: usize, env: &[(String, String)]) {
    let work = procs::work_dir(&std::env::temp_dir().join("rotator-train"));
    let upstream_port = procs::free_port();
    let mut upstream = targets::spawn_upstream(&work, upstream_port, None);
    for level in ["warn", "info"] {
        let port = procs::free_port();
        let opts = ProxyOpts {
            name: "trained",
            bin,
            port,
            log_level: level,
            env: [(
                "LLVM_PROFILE_FILE".to_string(),
                profiles.join("%p-%m.profraw").display().to_string(),
            )]
            .into_iter()
            .chain(env.iter().cloned())
            .collect(),
            db: work.join(format!("train-{level}.db")),
            cpus: None,
            workers: None,
        };
        let mut proxy = targets::spawn_proxy(&opts, &work);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        targets::rt()
            .block_on(targets::setup(addr, upstream_port))
            .unwrap_or_else(|e| panic!("setup failed: {e}"));
        for route in [Route::Rest, Route::Llm] {
            requests(addr, targets::request(Kind::Ours, route, ""), n, 200);
        }
        let sse = crate::sse::measure(addr, &targets::request(Kind::Ours, Route::Sse, ""), 16);
        assert!(sse.failed == 0 && sse.streams == 16, "SSE streams failed");
        let unknown = ReqSpec::new(Method::GET, "/proxy/no-such-service/x")
            .header("x-proxy-key", targets::PROXY_KEY);
        requests(addr, unknown, n / 20, 404);
        let keyless = ReqSpec::new(Method::GET, format!("/proxy/{}/x", targets::REST_SLUG));
        requests(addr, keyless, n / 20, 401);
        proxy.check_alive(&work);
        proxy.stop(Duration::from_secs(10));
        eprintln!("[train] {level}: {n} /proxy and {n} /llm requests, 16 SSE streams");
    }
    upstream.stop(Duration::from_secs(3));
    // The logs and databases are kept only when the training failed (a panic above).
    let _ = std::fs::remove_dir_all(&work);
}

/// `n` requests shared by `CONNS` keep-alive connections; each must answer `status`.
fn requests(addr: SocketAddr, spec: ReqSpec, n: usize, status: u16) {
    targets::rt().block_on(async {
        let mut set = JoinSet::new();
        for c in 0..CONNS {
            let spec = spec.clone();
            let share = n / CONNS + usize::from(c < n % CONNS);
            set.spawn(async move {
                let mut conn = Conn::open(addr).await.expect("connect");
                for i in 0..share {
                    let (got, _) = conn.fetch(&spec).await.expect("request");
                    assert_eq!(got, status, "request {i} answered {got}");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("training connection");
        }
    });
}
