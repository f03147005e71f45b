//! The accept loop: HTTP/1.1 and h2c on one port (told apart by the HTTP/2 preface),
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

use std::net::SocketAddr;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
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
    let builders = Builders::new(&state);
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
                let conn = connection(builders.clone(), graceful.watcher(), state.clone(), stream, peer);
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

/// The HTTP/1.1 and HTTP/2 connection settings of a shard.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
}

impl Builders {
    fn new(state: &AppState) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(state.config.header_read_timeout)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Builders {
            http1: h1,
            http2: h2,
            header_read_timeout: state.config.header_read_timeout,
        }
    }
}

/// Serves one connection: HTTP/2 when it opens with the HTTP/2 preface (h2c with prior
/// knowledge), HTTP/1.1 otherwise.
///
/// The preface is peeked at, not read, so the HTTP/1.1 connection reads its first request
/// into its own 8 KiB buffer. (hyper-util's auto builder reads the first bytes itself and
/// hands them back through a wrapper, which makes that buffer grow to 16 KiB on every
/// connection: 8 MB more for 1,000 open streams.)
async fn connection(
    builders: Builders,
    watcher: Watcher,
    state: Arc<AppState>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Result<(), hyper::Error> {
    let h2 =
        match tokio::time::timeout(builders.header_read_timeout, opens_with_h2_preface(&stream))
            .await
        {
            Ok(Ok(h2)) => h2,
            // Closed, failed, or silent for the whole header-read timeout.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
    let service = service_fn(move |req| app::handle(state.clone(), peer, req));
    let io = TokioIo::new(stream);
    if h2 {
        watcher
            .watch(builders.http2.serve_connection(io, service))
            .await
    } else {
        watcher
            .watch(builders.http1.serve_connection(io, service))
            .await
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes on `stream` are the HTTP/2 connection preface (without
/// consuming them). A connection closed before its first byte is an error.
async fn opens_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface (peek answers at once while those bytes wait): the rest is
        // on its way. Backing off, so a client that stops half-way costs a few wake-ups,
        // not one per millisecond until the header-read timeout.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(64));
    }
}
