//! # api-key-rotator
//!
//! A small, fast, self-hosted proxy that keeps pools of third-party API keys and rotates
//! them behind one endpoint.
//!
//! ## How a request flows
//!
//! 1. [`server`] accepts the connection (HTTP/1.1 or h2c, one shard thread each, a
//!    connection cap) and hands each request to [`app::handle`].
//! 2. [`app`] routes it ([`router`], pure), finds the client's address ([`net`]) and
//!    dispatches: proxy, admin, status or static files. Errors become responses in one
//!    place, [`error::ApiError::into_response`]; the access line is written when the
//!    answer's body ends.
//! 3. Proxy routes ([`proxy`]) check the proxy key ([`auth`], or a client key of
//!    [`clients`]) before reading any body, find the service in the current [`snapshot`]
//!    (never the database), check what the client key may do and count it against its
//!    limits, compose the upstream URL ([`upstream::url`]) and decide which headers go on
//!    ([`headers`]).
//! 4. [`proxy::forward`] takes a rotation ticket ([`cache`]), picks a usable key
//!    ([`keys`]), sends the request through the pooled [`upstream`] client (HTTP/1.1
//!    upstreams through [`upstream::h1`], driven by the request's own task), judges the
//!    answer ([`keys::policy`]) and fails over while nothing went to the client.
//! 5. The answer streams back frame by frame; counters go to [`metrics`] and, in
//!    batches, to the [`store`] ([`stats`]). With usage insight on, [`usage`] watches the
//!    answer pass (bytes, time to first byte, an LLM's tokens) and records the request in
//!    per-shard rollups and the request log, which go to the store in the same batches.
//!
//! Admin routes ([`admin`]) check the admin token ([`jwt`]), validate input
//! ([`service`]), write to the [`store`] and rebuild the [`snapshot`].
//!
//! ## Layers
//!
//! Each module imports only modules below it:
//!
//! | layer | modules |
//! |---|---|
//! | start | `lib` (this file), `server` |
//! | dispatch | `app` |
//! | handlers | `proxy`, `admin`, `status`, `static_files`, `stats`, `migrate` |
//! | shared state | `state` |
//! | usage insight | `usage` (the answer's tap, per-shard rollups, the request log) |
//! | rotation and snapshot | `cache`, `snapshot`, `metrics`, `clients` (client keys and their limits) |
//! | keys and services | `keys`, `service` |
//! | storage and upstreams | `store`, `upstream` |
//! | foundations | `config`, `seal` (keys at rest), `auth`, `headers`, `cors`, `net`, `error`, `body`, `deadline`, `shard`, `router`, `jwt`, `log`, `timefmt` |

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod clients;
pub mod config;
pub mod cors;
pub mod deadline;
pub mod error;
pub mod headers;
/// Entry points for the fuzz targets (`fuzz/`): parsers that are private otherwise. Not an
/// API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::admin::JsonBody;
    pub use crate::proxy::llm::{BodyKey, find_api_key, find_member, strip_api_keys};
    pub use crate::service::ApiFormat;
    pub use crate::usage::tap::Tap;
}
pub mod jobs;
pub mod jwt;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod proxy;
pub mod router;
pub mod seal;
pub mod server;
pub mod service;
pub mod shard;
pub mod snapshot;
pub mod state;
pub mod static_files;
pub mod stats;
pub mod status;
pub mod store;
pub mod timefmt;
pub mod upstream;
pub mod usage;

#[cfg(not(any(feature = "sqlite", feature = "mysql")))]
compile_error!("build with at least one store: the default `sqlite` feature or `mysql`");

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
pub use state::AppState;

/// A running server (the binary and the tests both start one this way).
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Asks the server to stop and waits until it has drained and flushed statistics.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (after `shutdown` resolved).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store and cache, loads the services and starts serving on `listener`.
/// The server stops when `shutdown` resolves (or on [`Running::shutdown`]).
pub async fn start(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, String> {
    log::set_level(config.log_level);
    crate::log::info!("Database Type: {}", config.store.database.kind());
    crate::log::info!("Cache Type: {}", config.cache.kind());
    crate::log::info!(
        "Upstream keys at rest: {}",
        match config.store.encryption_key {
            Some(_) => "encrypted (ENCRYPTION_KEY)",
            None =>
                "plain text (set ENCRYPTION_KEY and run `api-key-rotator encrypt` to encrypt them)",
        }
    );
    if config.store.reset_db_tables {
        crate::log::warn!(
            "RESET_DB_TABLES=true: DROPPING every service and key and recreating the tables. Unset it after this start!"
        );
    }
    let store = store::open(&config.store).await?;
    let cache = cache::Cache::open(&config).await?;
    let state = AppState::new(config, store, cache).await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(watch::channel(false).0);
    let task = tokio::spawn(run(state.clone(), listener, shutdown, stop.clone()));
    Ok(Running {
        addr,
        state,
        stop,
        task,
    })
}

async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop: Arc<watch::Sender<bool>>,
) {
    let background = cache::spawn_background(&state.cache, state.clone(), stop.subscribe());
    let flusher = tokio::spawn(stats::run(state.clone(), stop.subscribe()));
    tokio::spawn(proxy::revalidate::run(state.clone(), stop.subscribe()));
    let mut stopped = stop.subscribe();
    let stopped = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stopped.changed() => {}
        }
    };
    server::serve_sharded(listener, state.clone(), stopped).await;
    // Tell the flusher and background tasks, then wait for the last statistics write.
    let _ = stop.send(true);
    if let Some(task) = background {
        let _ = task.await;
    }
    let _ = flusher.await;
}
