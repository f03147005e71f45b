//! LiteLLM's proxy (`litellm --config …`), on the /llm route only: the README compares
//! throughput, CPU per request and memory with it. It is started with as many worker
//! processes as the proxy has shards, the master key set to the bench's proxy key (so a
//! client authenticates the same way), no database, and one model routed to the bench's
//! upstream with the first upstream key.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::procs::{self, Proc};
use crate::targets::{self, KEYS, PROXY_KEY};

/// How long LiteLLM may take to start (it imports a lot).
const START: Duration = Duration::from_secs(240);

/// Starts LiteLLM on `port` in front of the upstream on `up_port`.
pub fn spawn(
    work: &Path,
    litellm: &Path,
    port: u16,
    up_port: u16,
    workers: usize,
    cpus: Option<&str>,
) -> Proc {
    let config = work.join("litellm.yaml");
    fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{up_port}/v1\n      api_key: {key}\ngeneral_settings:\n  master_key: {PROXY_KEY}\nlitellm_settings:\n  telemetry: false\n  drop_params: true\n",
            key = KEYS[0]
        ),
    )
    .expect("write litellm.yaml");
    let mut cmd = targets::pinned(cpus, litellm);
    cmd.args([
        "--config",
        &config.to_string_lossy(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--num_workers",
        &workers.to_string(),
    ])
    .env("LITELLM_LOG", "ERROR")
    .env("LITELLM_TELEMETRY", "False")
    .env("NO_DOCS", "True")
    .env_remove("DATABASE_URL");
    let mut p = Proc::spawn("litellm", cmd, work);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = std::time::Instant::now();
    while !procs::wait_listening(addr, Duration::from_secs(1)) {
        p.check_alive(work);
        assert!(
            started.elapsed() < START,
            "LiteLLM did not start within {START:?}"
        );
    }
    p
}
