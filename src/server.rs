//! The accept loop: HTTP/1.1 and h2c on one port (hyper-util's auto builder),
//! TCP_NODELAY, a header-read timeout that really applies (a timer is configured), and a
//! graceful shutdown whose drain is bounded, because SSE streams never end on their own.
//!
//! The listener is served by `WORKER_THREADS` shards, one thread each with its own
//! single-threaded runtime and its own upstream connection pool, all accepting on the same
//! socket (as nginx's workers do). A request is then handled start to end on one thread:
//! no work stealing, no cross-thread wake-ups between the client's connection and the
//! upstream's, which costs about a fifth of the CPU per request that a shared
//! multi-threaded runtime spends.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::app::{self, AppState};

thread_local!(static SHARD: Cell<usize> = const { Cell::new(0) });

/// The shard running on this thread (0 on any other thread).
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// Serves `listener` on `state.config.worker_threads` shards until `shutdown` resolves,
/// then waits until every shard has drained (each for at most the grace period).
pub async fn serve_sharded(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            crate::error!("cannot share the listening socket: {e}");
            return;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::new();
    for index in 0..state.config.worker_threads.max(1) {
        let socket = match listener.try_clone() {
            Ok(s) => s,
            Err(e) => {
                crate::error!("cannot share the listening socket with shard {index}: {e}");
                break;
            }
        };
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (state, mut stop) = (state.clone(), stop_rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                SHARD.with(|s| s.set(index));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a shard's runtime starts");
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            let stopped = async move {
                                let _ = stop.wait_for(|stop| *stop).await;
                            };
                            serve(listener, state, stopped).await;
                        }
                        Err(e) => crate::error!("shard {index} cannot listen: {e}"),
                    }
                });
                drop(done_tx);
            });
        match spawned {
            Ok(_) => finished.push(done_rx),
            Err(e) => crate::error!("cannot start shard {index}: {e}"),
        }
    }
    drop(listener);
    shutdown.await;
    let _ = stop_tx.send(true);
    for done in finished {
        let _ = done.await;
    }
}

/// Serves `listener` until `shutdown` resolves, then drains for at most the configured
/// grace period and closes what is left.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        crate::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| app::handle(state.clone(), peer, req));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        crate::debug!("connection from {peer} ended: {e}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = state.config.shutdown_grace;
    crate::info!(
        "shutting down: draining {} connection(s) for at most {:?}",
        connections.len(),
        grace
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        crate::warn!(
            "grace period over: closing {} connection(s) still open",
            connections.len()
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
