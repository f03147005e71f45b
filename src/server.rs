//! The accept loop: HTTP/1.1 and h2c on one port (told apart by the HTTP/2 preface),
//! TCP_NODELAY, a header-read timeout that really applies (a timer is configured), and a
//! graceful shutdown whose drain is bounded, because SSE streams never end on their own.
//!
//! The listener is served by `WORKER_THREADS` shards, one thread each with its own
//! single-threaded runtime and its own upstream connection pool, all accepting on the same
//! socket (as nginx's workers do). A request is then handled start to end on one thread:
//! no work stealing, no cross-thread wake-ups between the client's connection and the
//! upstream's, which cost about a fifth of the CPU per request that a shared
//! multi-threaded runtime spent (docs/BENCHMARKS.md).
//!
//! Which shard wins an `accept` is up to the kernel, and left alone one shard took three
//! quarters of 64 keep-alive connections and became the bottleneck. So connections are
//! balanced by count (as Envoy's "exact balance" does): the shard that accepts a
//! connection hands it to the shard with the fewest open ones, itself on a tie. That costs
//! one cross-thread hand-off per connection, never per request.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::app;
use crate::deadline::{self, Deadlines, ShardTimer};
use crate::metrics::OpenConnections;
use crate::state::AppState;

/// A connection accepted by one shard and handed to another.
type Handoff = (std::net::TcpStream, SocketAddr);

/// What a shard shares with the others: the connection counts and every shard's inbox.
struct Shards {
    state: Arc<AppState>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Shards {
    fn open(&self) -> &OpenConnections {
        &self.state.metrics.connections
    }
}

/// Counts a connection as open on its shard until dropped.
struct Open(Arc<Shards>, usize);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open().closed(self.1);
    }
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
            crate::log::error!("cannot share the listening socket: {e}");
            return;
        }
    };
    let count = state.config.worker_threads.max(1);
    state.metrics.connections.start(count);
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let shards = Arc::new(Shards { state, inboxes });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::new();
    for (index, inbox) in receivers.into_iter().enumerate() {
        match start_shard(index, &listener, inbox, shards.clone(), stop_rx.clone()) {
            Ok(done) => finished.push(done),
            Err(e) => {
                crate::log::error!("cannot start shard {index}: {e}");
                shards.open().gone(index);
            }
        }
    }
    drop(listener);
    shutdown.await;
    let _ = stop_tx.send(true);
    for done in finished {
        let _ = done.await;
    }
}

/// Starts shard `index` on its own thread; the receiver resolves when it has drained.
fn start_shard(
    index: usize,
    listener: &std::net::TcpListener,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    shards: Arc<Shards>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let socket = listener.try_clone()?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            crate::shard::enter(index);
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
                        serve(
                            listener,
                            Shard {
                                index,
                                inbox,
                                shards,
                            },
                            stopped,
                        )
                        .await;
                    }
                    Err(e) => {
                        crate::log::error!("shard {index} cannot listen: {e}");
                        shards.open().gone(index);
                    }
                }
            });
            drop(done_tx);
        })?;
    Ok(done_rx)
}

/// One shard's part in serving: its index, its inbox and what it shares with the rest.
struct Shard {
    index: usize,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    shards: Arc<Shards>,
}

impl Shard {
    /// Where a connection this shard accepted is served: `Some` here, `None` when it
    /// was handed to another shard (or dropped because that shard has stopped).
    fn place(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TcpStream, SocketAddr, Open)> {
        let cap = self.shards.state.config.max_connections;
        let Some(to) = self.shards.open().assign(self.index, cap) else {
            refuse(stream, cap);
            return None;
        };
        if to == self.index {
            return Some((stream, peer, Open(self.shards.clone(), to)));
        }
        // Counted as open on `to` from now on; `to` takes over the count when it serves
        // the connection.
        let sent = match stream.into_std() {
            Ok(std) => self.shards.inboxes[to].send((std, peer)).is_ok(),
            Err(e) => {
                crate::log::warn!("cannot hand a connection to shard {to}: {e}");
                false
            }
        };
        if !sent {
            self.shards.open().closed(to);
        }
        None
    }

    /// A connection another shard handed over, now served here.
    fn receive(&self, (std, peer): Handoff) -> Option<(TcpStream, SocketAddr, Open)> {
        let open = Open(self.shards.clone(), self.index);
        match TcpStream::from_std(std) {
            Ok(stream) => Some((stream, peer, open)),
            Err(e) => {
                crate::log::warn!("shard {} cannot take a connection: {e}", self.index);
                None
            }
        }
    }
}

/// The answer to a connection over the cap, written without waiting (the socket's
/// buffer takes it), before the connection is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
    content-length: 71\r\nretry-after: 1\r\nconnection: close\r\nx-rotator-error: 1\r\n\r\n\
    {\"detail\":\"too many open connections (MAX_CONNECTIONS); retry shortly\"}";

/// Answers 503 and closes a connection over the cap; says so in the log at most once a
/// minute.
fn refuse(stream: TcpStream, cap: usize) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let _ = stream.try_write(TOO_MANY);
    if once_a_minute(&LAST) {
        crate::log::warn!("{cap} connections open (MAX_CONNECTIONS): new ones get 503");
    }
}

/// Whether a warning last logged at `last` (Unix seconds) may be logged again now.
fn once_a_minute(last: &AtomicU64) -> bool {
    let now = crate::timefmt::now_secs();
    let then = last.load(SeqCst);
    now >= then + 60 && last.compare_exchange(then, now, SeqCst, SeqCst).is_ok()
}

/// Serves `shard`'s connections (accepted from `listener` or handed over) until
/// `shutdown` resolves, then drains for at most the configured grace period and closes
/// what is left.
async fn serve(listener: TcpListener, mut shard: Shard, shutdown: impl Future<Output = ()>) {
    let state = shard.shards.state.clone();
    let deadlines = Deadlines::start();
    deadline::set_for_this_thread(Some(deadlines.clone()));
    let builders = Builders::new(&state, deadlines);
    let closing = Arc::new(Closing::default());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, open) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match shard.place(stream, peer) {
                    Some(here) => here,
                    None => continue,
                },
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning; the connections
                    // already open are served meanwhile, and new ones once descriptors
                    // are free again.
                    accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(handed) = shard.inbox.recv() => match shard.receive(handed) {
                Some(here) => here,
                None => continue,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(
            builders.clone(),
            closing.clone(),
            state.clone(),
            stream,
            peer,
        );
        connections.spawn(async move {
            let _open = open;
            if let Err(e) = conn.await {
                crate::log::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    let grace = state.config.shutdown_grace;
    crate::log::info!(
        "shutting down: draining {} connection(s) for at most {:?}",
        connections.len(),
        grace
    );
    closing.close();
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        crate::log::warn!(
            "grace period over: closing {} connection(s) still open",
            connections.len()
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    deadline::set_for_this_thread(None);
}

/// Logs a failed `accept` at most once a minute (it repeats every 50 ms while
/// descriptors run short).
fn accept_failed(e: &std::io::Error) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if once_a_minute(&LAST) {
        crate::log::warn!("accept failed: {e} (new connections wait; open ones are served)");
    }
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
    fn new(state: &AppState, deadlines: Arc<Deadlines>) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.timer(ShardTimer(deadlines))
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
/// connection: 8 MB more for 1,000 open streams; docs/BENCHMARKS.md.)
async fn connection(
    builders: Builders,
    closing: Arc<Closing>,
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
    // Pinned here and lent: a connection passed by value would be stored twice in the
    // task (once as the argument, once pinned), a few KB more per open connection.
    if h2 {
        let conn = pin!(builders.http2.serve_connection(io, service));
        until_done(conn, &closing, |c| c.graceful_shutdown()).await
    } else {
        let conn = pin!(builders.http1.serve_connection(io, service));
        until_done(conn, &closing, |c| c.graceful_shutdown()).await
    }
}

/// A shard's shutdown signal to its connections: each one registers its task's waker
/// once and looks at one flag when it is polled (hyper-util's `GracefulShutdown` polls
/// a `watch` channel's `changed` future each time instead, about 1 % of a request:
/// docs/BENCHMARKS.md).
#[derive(Default)]
struct Closing {
    closed: AtomicBool,
    /// The wakers of the connections open, by ticket; freed tickets are reused.
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Closing {
    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Option<Waker>>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every connection to finish: close when idle, after the answer in flight.
    fn close(&self) {
        self.closed.store(true, SeqCst);
        // Woken after the lock, and left in place: a slot is freed only by its
        // connection's ticket, so it is never handed to another while still held.
        let wakers: Vec<Waker> = self.wakers().iter().flatten().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
    }

    fn register(&self, waker: &Waker) -> usize {
        let mut wakers = self.wakers();
        match wakers.iter().position(Option::is_none) {
            Some(free) => {
                wakers[free] = Some(waker.clone());
                free
            }
            None => {
                wakers.push(Some(waker.clone()));
                wakers.len() - 1
            }
        }
    }
}

/// Drives `conn` to its end; when the shard closes, asks it (`shut`) to finish
/// gracefully. (A task's waker stays the same for its life, so it is registered once.)
async fn until_done<C: Future>(
    mut conn: Pin<&mut C>,
    closing: &Closing,
    shut: impl Fn(Pin<&mut C>),
) -> C::Output {
    /// Gives the waker's place back however the connection ends (even aborted).
    struct Ticket<'a>(&'a Closing, usize);
    impl Drop for Ticket<'_> {
        fn drop(&mut self) {
            self.0.wakers()[self.1] = None;
        }
    }
    let mut ticket = None;
    let mut asked = false;
    poll_fn(|cx| {
        if !asked {
            // Registered before the flag is read: a close in between still wakes us.
            ticket.get_or_insert_with(|| Ticket(closing, closing.register(cx.waker())));
            if closing.closed.load(SeqCst) {
                asked = true;
                shut(conn.as_mut());
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
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
