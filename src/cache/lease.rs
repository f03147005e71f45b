//! Blocks of rotation tickets taken from the shared counter (enterprise build).
//!
//! A shard reserves tickets for a service with one `INCRBY n`, where n is 1 plus the
//! number of its requests already waiting for a ticket. One request at a time, that is
//! the original's `INCR` per request. Under load, one round trip serves every request
//! that queued behind it, instead of each paying its own. Every ticket is handed out
//! exactly once, so the round robin across instances stays even.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// The most tickets one round trip reserves.
pub const MAX_BLOCK: u64 = 64;

/// Ticket blocks per shard and service.
pub struct Leases {
    shards: Box<[Mutex<HashMap<i64, Lease>>]>,
    /// How long a request waits for another's reservation before giving up.
    wait_limit: Duration,
}

#[derive(Default)]
struct Lease {
    /// The block not handed out yet: `next..end`.
    next: u64,
    end: u64,
    /// A reservation is on its way.
    reserving: bool,
    /// Requests waiting for it.
    waiting: u64,
    reserved: Arc<Notify>,
}

impl Leases {
    pub fn new(shards: usize, wait_limit: Duration) -> Leases {
        Leases {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            wait_limit,
        }
    }

    /// The next ticket for service `id` on this shard. When the shard's block is used up,
    /// `reserve(n)` reserves `n` tickets on the shared counter and returns its new value
    /// (the block is `value - n .. value`), or `None` when that failed. `None` here means
    /// no ticket could be had (the caller rotates locally).
    pub async fn ticket<F, Fut>(&self, id: i64, reserve: F) -> Option<u64>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Option<u64>>,
    {
        let slot = &self.shards[crate::server::shard() % self.shards.len()];
        let size = loop {
            let reserved = {
                let mut map = lock(slot);
                let lease = map.entry(id).or_default();
                if lease.next < lease.end {
                    lease.next += 1;
                    return Some(lease.next - 1);
                }
                if !lease.reserving {
                    lease.reserving = true;
                    break (1 + lease.waiting).min(MAX_BLOCK);
                }
                lease.waiting += 1;
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
        lease.next = start + 1;
        lease.end = end;
        Some(start)
    }
}

fn lock(slot: &Mutex<HashMap<i64, Lease>>) -> MutexGuard<'_, HashMap<i64, Lease>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request counted among the waiters.
struct Waiting<'a> {
    slot: &'a Mutex<HashMap<i64, Lease>>,
    id: i64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(lease) = lock(self.slot).get_mut(&self.id) {
            lease.waiting = lease.waiting.saturating_sub(1);
        }
    }
}

/// The request that reserves the next block.
struct Reserving<'a> {
    slot: &'a Mutex<HashMap<i64, Lease>>,
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
        async fn incr_by(&self, n: u64) -> Option<u64> {
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
            assert_eq!(l.ticket(7, |n| c.incr_by(n)).await, Some(want));
        }
        assert_eq!(c.trips.load(SeqCst), 10);
        assert_eq!(*c.sizes.lock().unwrap(), vec![1; 10]);
    }

    async fn concurrent(l: &Arc<Leases>, c: &Arc<Counter>, n: usize) -> Vec<u64> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (l, c) = (l.clone(), c.clone());
            tasks.spawn(async move { l.ticket(7, |n| c.incr_by(n)).await });
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
        // Nothing is left over: the counter is where 200 single INCRs would have left it.
        assert_eq!(c.value.load(SeqCst), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_same_holds_across_threads() {
        let (l, c) = (leases(), Arc::new(Counter::default()));
        let got = concurrent(&l, &c, 500).await;
        assert_eq!(got, (0..500).collect::<Vec<_>>());
        assert_eq!(c.value.load(SeqCst), 500);
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
            tokio::spawn(async move { l.ticket(7, |n| c.incr_by(n)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        stuck.abort();
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter moves on")
            .unwrap();
        assert_eq!(got, Some(0));
    }

    #[tokio::test]
    async fn services_have_their_own_blocks() {
        let (l, a, b) = (
            leases(),
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
        );
        assert_eq!(l.ticket(1, |n| a.incr_by(n)).await, Some(0));
        assert_eq!(l.ticket(2, |n| b.incr_by(n)).await, Some(0));
        assert_eq!(l.ticket(1, |n| a.incr_by(n)).await, Some(1));
    }
}
