//! Blocks of rotation tickets taken from the shared counter (enterprise build).
//!
//! A shard reserves tickets for a service with one `INCRBY n`, where n is 1 plus the
//! number of its requests already waiting for a ticket. One request at a time, that is
//! the original's `INCR` per request. Under load, one round trip serves every request
//! that queued behind it, instead of each paying its own.
//!
//! A busy shard (one whose requests had to queue for a ticket within the last [`BUSY`])
//! also reads ahead: while it hands out a block of several tickets, the next block is
//! reserved in the background (twice as large when requests still had to wait, up to
//! [`MAX_BLOCK`]), so its requests stop waiting for Redis. On 2 shared cores a busy shard
//! may read Redis's reply a millisecond or more after it came; a block of 256 covers
//! several milliseconds of requests. Every ticket is handed out at most once, so the
//! round robin across instances stays even. The price: when the load stops, what a shard
//! holds (the rest of its block and the block read ahead, at most 2 × [`MAX_BLOCK`]) is
//! handed out to the next requests before it goes back to the counter, and tickets it
//! never hands out are skipped; after [`STALE`] without a request it is dropped. Requests that come one at a time never queue, so they get one `INCR` each,
//! in turn across instances, as in the original.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The most tickets one round trip reserves.
pub const MAX_BLOCK: u64 = 256;
/// A shard reads ahead for this long after a request had to queue for a ticket.
pub const BUSY: Duration = Duration::from_millis(100);
/// Tickets a shard held this long without a request are dropped (skipped): the next
/// request after a pause takes a fresh one, in turn with the other instances.
pub const STALE: Duration = Duration::from_secs(1);

/// Ticket blocks per shard and service.
pub struct Leases {
    shards: Box<[Slot]>,
    /// How long a request waits for another's reservation before giving up.
    wait_limit: Duration,
}

type Slot = Mutex<HashMap<i64, Lease>>;

struct Lease {
    /// The block being handed out: `next..end`.
    next: u64,
    end: u64,
    /// Read ahead until then (a request queued for a ticket not long ago).
    busy_until: Instant,
    /// When a request last asked for a ticket.
    used: Instant,
    /// The block reserved ahead, handed out when the current one is used up.
    ahead: Option<(u64, u64)>,
    /// The size of the last block reserved.
    size: u64,
    /// A reservation is on its way.
    reserving: bool,
    /// Requests waiting for it.
    waiting: u64,
    reserved: Arc<Notify>,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            next: 0,
            end: 0,
            busy_until: Instant::now(),
            used: Instant::now(),
            ahead: None,
            size: 1,
            reserving: false,
            waiting: 0,
            reserved: Arc::default(),
        }
    }
}

impl Lease {
    /// Drops what the shard holds when nobody asked for a while (see [`STALE`]).
    fn drop_if_stale(&mut self, now: Instant) {
        if now.duration_since(self.used) > STALE {
            self.next = self.end;
            self.ahead = None;
            self.size = 1;
        }
        self.used = now;
    }

    /// The next ticket of the current block, or of the block read ahead.
    fn take(&mut self) -> Option<u64> {
        if self.next >= self.end {
            let (start, end) = self.ahead.take()?;
            (self.next, self.end) = (start, end);
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// Whether to reserve the next block now: the shard is busy, its blocks hold
    /// several tickets, and no block is ahead or on its way.
    fn wants_read_ahead(&self, now: Instant) -> bool {
        self.size > 1 && !self.reserving && self.ahead.is_none() && now < self.busy_until
    }
}

impl Leases {
    pub fn new(shards: usize, wait_limit: Duration) -> Leases {
        Leases {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            wait_limit,
        }
    }

    /// The next ticket for service `id` on this shard. When the shard's block is used up
    /// (or, on a busy shard, as soon as no block is ahead), `reserve(n)` reserves `n`
    /// tickets on the shared counter and resolves to its new value (the block is
    /// `value - n .. value`), or to `None` when that failed. `None` here means no ticket could be had (the caller
    /// rotates locally).
    pub async fn ticket<F, Fut>(self: &Arc<Self>, id: i64, reserve: F) -> Option<u64>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Option<u64>> + Send + 'static,
    {
        let shard = crate::shard::current() % self.shards.len();
        let slot = &self.shards[shard];
        let size = loop {
            let reserved = {
                let mut map = lock(slot);
                let lease = map.entry(id).or_default();
                // One clock read per ticket.
                let now = Instant::now();
                lease.drop_if_stale(now);
                if let Some(ticket) = lease.take() {
                    if lease.wants_read_ahead(now) {
                        lease.reserving = true;
                        let size = lease.size;
                        drop(map);
                        self.read_ahead(shard, id, size, reserve(size));
                    }
                    return Some(ticket);
                }
                if !lease.reserving {
                    lease.reserving = true;
                    lease.size = (1 + lease.waiting).min(MAX_BLOCK);
                    break lease.size;
                }
                lease.waiting += 1;
                lease.busy_until = now + BUSY;
                // Registered before the lock is released, so the wake-up cannot be missed.
                lease.reserved.clone().notified_owned()
            };
            let _waiting = Waiting { slot, id };
            if tokio::time::timeout(self.wait_limit, reserved)
                .await
                .is_err()
            {
                return None;
            }
        };
        // Clears `reserving` and wakes the waiters however this ends, also when the
        // request is dropped half-way.
        let _reserving = Reserving { slot, id };
        let end = reserve(size).await?;
        let start = end.checked_sub(size)?;
        let mut map = lock(slot);
        let lease = map.entry(id).or_default();
        (lease.next, lease.end) = (start + 1, end);
        Some(start)
    }

    /// Reserves the next block of a busy shard in the background. Requests that find
    /// the current block used up before it arrives wait for it, and the block after that
    /// is twice as large.
    fn read_ahead<Fut>(self: &Arc<Self>, shard: usize, id: i64, size: u64, reserve: Fut)
    where
        Fut: Future<Output = Option<u64>> + Send + 'static,
    {
        let leases = self.clone();
        tokio::spawn(async move {
            let slot = &leases.shards[shard];
            let _reserving = Reserving { slot, id };
            let block = reserve
                .await
                .and_then(|end| Some((end.checked_sub(size)?, end)));
            let mut map = lock(slot);
            let lease = map.entry(id).or_default();
            lease.ahead = block;
            if lease.waiting > 0 {
                lease.size = (size * 2).min(MAX_BLOCK);
            }
        });
    }
}

fn lock(slot: &Slot) -> MutexGuard<'_, HashMap<i64, Lease>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request counted among the waiters.
struct Waiting<'a> {
    slot: &'a Slot,
    id: i64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(lease) = lock(self.slot).get_mut(&self.id) {
            lease.waiting = lease.waiting.saturating_sub(1);
        }
    }
}

/// The request (or read-ahead) that reserves the next block.
struct Reserving<'a> {
    slot: &'a Slot,
    id: i64,
}

impl Drop for Reserving<'_> {
    fn drop(&mut self) {
        if let Some(lease) = lock(self.slot).get_mut(&self.id) {
            lease.reserving = false;
            lease.reserved.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    /// A shared counter with a round-trip time, counting its round trips.
    #[derive(Default)]
    struct Counter {
        value: AtomicU64,
        trips: AtomicU64,
        sizes: Mutex<Vec<u64>>,
    }

    impl Counter {
        async fn incr_by(self: Arc<Self>, n: u64) -> Option<u64> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.trips.fetch_add(1, SeqCst);
            self.sizes.lock().unwrap().push(n);
            Some(self.value.fetch_add(n, SeqCst) + n)
        }
    }

    fn leases() -> Arc<Leases> {
        Arc::new(Leases::new(1, Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn one_request_at_a_time_is_one_round_trip_each() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        for want in 0..10 {
            assert_eq!(l.ticket(7, |n| c.clone().incr_by(n)).await, Some(want));
        }
        assert_eq!(c.trips.load(SeqCst), 10);
        assert_eq!(*c.sizes.lock().unwrap(), vec![1; 10]);
    }

    async fn concurrent(l: &Arc<Leases>, c: &Arc<Counter>, n: usize) -> Vec<u64> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (l, c) = (l.clone(), c.clone());
            tasks.spawn(async move { l.ticket(7, |n| c.clone().incr_by(n)).await });
        }
        let mut got: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
        got.sort_unstable();
        got
    }

    #[tokio::test]
    async fn concurrent_requests_share_round_trips_and_every_ticket_is_used_once() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let got = concurrent(&l, &c, 200).await;
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        let trips = c.trips.load(SeqCst);
        assert!(trips <= 10, "{trips} round trips for 200 waiting requests");
        assert!(c.sizes.lock().unwrap().iter().all(|&n| n <= MAX_BLOCK));
        // What is left over is the rest of the last block and the block read ahead.
        let value = c.value.load(SeqCst);
        assert!((200..=200 + 2 * MAX_BLOCK).contains(&value), "{value}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_same_holds_across_threads() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let got = concurrent(&l, &c, 500).await;
        assert_eq!(got, (0..500).collect::<Vec<_>>());
        let value = c.value.load(SeqCst);
        assert!((500..=500 + 2 * MAX_BLOCK).contains(&value), "{value}");
    }

    /// `tasks` clients, each taking `n` tickets with `work` between them.
    async fn steady_load(
        l: &Arc<Leases>,
        c: &Arc<Counter>,
        tasks: usize,
        n: usize,
        work: Duration,
    ) -> Vec<u64> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (l, c) = (l.clone(), c.clone());
            set.spawn(async move {
                let mut got = Vec::with_capacity(n);
                for _ in 0..n {
                    got.push(
                        l.ticket(7, |n| c.clone().incr_by(n))
                            .await
                            .expect("a ticket"),
                    );
                    tokio::time::sleep(work).await;
                }
                got
            });
        }
        let mut got: Vec<u64> = set.join_all().await.into_iter().flatten().collect();
        got.sort_unstable();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_shard_reads_ahead_so_its_requests_do_not_wait_for_the_counter() {
        // 16 clients, 1 ms of work per request, a 5 ms round trip to the counter. Waiting
        // for each block would make every 16 requests take 6 ms: 600 ms in all.
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let started = Instant::now();
        let got = steady_load(&l, &c, 16, 100, Duration::from_millis(1)).await;
        let took = started.elapsed();
        assert_eq!(got, (0..1600).collect::<Vec<_>>(), "each ticket once");
        assert!(
            took < Duration::from_millis(250),
            "{took:?} of virtual time: requests waited for blocks"
        );
        let trips = c.trips.load(SeqCst);
        assert!(trips < 60, "{trips} round trips for 1,600 requests");
        assert!(c.value.load(SeqCst) <= 1600 + 2 * MAX_BLOCK);
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_load_stops_the_blocks_shrink_back_to_one_ticket() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let burst = steady_load(&l, &c, 16, 20, Duration::from_millis(1)).await;
        assert_eq!(burst, (0..320).collect::<Vec<_>>());
        // One request every 200 ms: first what is left of the blocks, then one INCR each.
        let mut next = 320;
        for _ in 0..(2 * MAX_BLOCK + 10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ticket = l
                .ticket(7, |n| c.clone().incr_by(n))
                .await
                .expect("a ticket");
            assert!(ticket >= next, "tickets only go forward");
            next = ticket + 1;
        }
        let sizes = c.sizes.lock().unwrap();
        assert!(sizes.len() >= 10, "{sizes:?}");
        assert_eq!(sizes[sizes.len() - 10..], [1; 10], "{sizes:?}");
        assert_eq!(c.value.load(SeqCst), next, "nothing left over at the end");
    }

    #[tokio::test]
    async fn a_failed_reservation_gives_none_and_nobody_hangs() {
        let l = leases();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let l = l.clone();
            tasks.spawn(async move {
                l.ticket(7, |_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    None
                })
                .await
            });
        }
        let got = tasks.join_all().await;
        assert_eq!(got, vec![None; 20]);
    }

    #[tokio::test]
    async fn a_reserving_request_that_is_dropped_does_not_strand_the_others() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let stuck = {
            let l = l.clone();
            tokio::spawn(
                async move { l.ticket(7, |_| std::future::pending::<Option<u64>>()).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let (l, c) = (l.clone(), c.clone());
            tokio::spawn(async move { l.ticket(7, |n| c.clone().incr_by(n)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        stuck.abort();
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter moves on")
            .unwrap();
        assert_eq!(got, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_what_a_shard_held_is_dropped_and_the_next_ticket_is_fresh() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        steady_load(&l, &c, 16, 20, Duration::from_millis(1)).await;
        tokio::time::sleep(STALE + Duration::from_millis(100)).await;
        let held = c.value.load(SeqCst);
        assert!(held > 320, "the burst left tickets over: counter {held}");
        let ticket = l.ticket(7, |n| c.clone().incr_by(n)).await;
        assert_eq!(
            ticket,
            Some(held),
            "a fresh INCR, not a ticket held from the burst"
        );
        assert_eq!(c.sizes.lock().unwrap().last(), Some(&1));
    }

    #[tokio::test]
    async fn services_have_their_own_blocks() {
        let (l, a, b) = (
            leases(),
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
        );
        assert_eq!(l.ticket(1, |n| a.clone().incr_by(n)).await, Some(0));
        assert_eq!(l.ticket(2, |n| b.clone().incr_by(n)).await, Some(0));
        assert_eq!(l.ticket(1, |n| a.clone().incr_by(n)).await, Some(1));
    }
}
