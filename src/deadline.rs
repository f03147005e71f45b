//! Deadlines for the timeouts every request sets and almost never reaches: the
//! header-read timeout (hyper's, through [`ShardTimer`]) and the upstream's answer
//! ([`timeout_at`]).
//!
//! A request set two tokio timers, and registering, cancelling and their share of the
//! driver's bookkeeping cost about 2,300 instructions, 8 % of what a proxied request
//! costs in user space (callgrind, docs/BENCHMARKS.md). Here each shard keeps its
//! deadlines in one slab: setting one is a slot and a waker, cancelling one frees the
//! slot, and a single sweeper task per shard sleeps (on one tokio timer) until the
//! earliest deadline and wakes whatever is due. A deadline fires at most [`SLACK`] late:
//! the sweeper looks at most once per `SLACK` (a look is a pass over the slab), and a
//! deadline set well before its next look wakes it to look sooner.
//!
//! On a thread that is not a shard (a test driving the app directly), [`timeout_at`]
//! falls back to tokio's timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How late a deadline may fire, and so how often at most the sweeper looks.
pub const SLACK: Duration = Duration::from_millis(25);

/// One shard's deadlines.
#[derive(Debug, Default)]
pub struct Deadlines(Mutex<Table>);

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// When the sweeper looks next (`None`: it sleeps until a deadline is set).
    next_look: Option<Instant>,
    sweeper: Option<Waker>,
}

#[derive(Debug)]
enum Slot {
    Free,
    Waiting(Instant, Waker),
    Fired,
}

impl Table {
    /// Takes a slot; returns the sweeper to wake when `at` is earlier than its next look.
    fn insert(&mut self, at: Instant, waker: Waker) -> (usize, Option<Waker>) {
        let slot = Slot::Waiting(at, waker);
        let idx = match self.free.pop() {
            Some(idx) => {
                self.slots[idx] = slot;
                idx
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let sooner = self.next_look.is_none_or(|next| at + SLACK < next);
        if !sooner {
            return (idx, None);
        }
        self.next_look = Some(at);
        (idx, self.sweeper.take())
    }

    /// Frees a slot; returns what it held, to drop once the lock is released (a waker's
    /// drop may run other code).
    fn remove(&mut self, idx: usize) -> Slot {
        self.free.push(idx);
        std::mem::replace(&mut self.slots[idx], Slot::Free)
    }

    /// Fires what is due at `now` (returning the wakers to wake once the lock is
    /// released) and sets the next look: the earliest deadline still waiting, but not
    /// sooner than `SLACK` from now.
    fn sweep(&mut self, now: Instant, sweeper: &Waker) -> (Vec<Waker>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for slot in &mut self.slots {
            match slot {
                Slot::Waiting(at, _) if *at <= now => {
                    if let Slot::Waiting(_, waker) = std::mem::replace(slot, Slot::Fired) {
                        due.push(waker);
                    }
                }
                Slot::Waiting(at, _) => next = Some(next.map_or(*at, |n| n.min(*at))),
                Slot::Free | Slot::Fired => {}
            }
        }
        let next = next.map(|at| at.max(now + SLACK));
        self.next_look = next;
        if !self.sweeper.as_ref().is_some_and(|w| w.will_wake(sweeper)) {
            // The replaced waker goes with the due ones: waking the sweeper spuriously
            // costs one more look, dropping a waker under the lock could re-enter it.
            due.extend(self.sweeper.replace(sweeper.clone()));
        }
        (due, next)
    }
}

impl Deadlines {
    /// A shard's deadlines, with their sweeper spawned on the current (the shard's)
    /// runtime.
    pub fn start() -> Arc<Deadlines> {
        let deadlines = Arc::new(Deadlines::default());
        tokio::spawn(sweep(deadlines.clone()));
        deadlines
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future that resolves at `at`.
    pub fn until(self: &Arc<Self>, at: Instant) -> Deadline {
        Deadline {
            owner: self.clone(),
            at,
            slot: None,
        }
    }

    /// Deadlines set and not yet cancelled (fired or not).
    #[cfg(test)]
    fn pending(&self) -> usize {
        let table = self.table();
        table.slots.len() - table.free.len()
    }
}

/// The sweeper: sleeps until the earliest deadline, wakes what is due, and again.
async fn sweep(deadlines: Arc<Deadlines>) {
    let mut nap = Box::pin(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| {
        loop {
            let (due, next) = deadlines.table().sweep(Instant::now(), cx.waker());
            due.into_iter().for_each(Waker::wake);
            let Some(next) = next else {
                return Poll::Pending; // woken by the next deadline set
            };
            nap.as_mut().reset(next.into());
            if nap.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Resolves at its instant; cancelled (its slot freed) when dropped.
#[derive(Debug)]
pub struct Deadline {
    owner: Arc<Deadlines>,
    at: Instant,
    slot: Option<usize>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut table = this.owner.table();
        let Some(idx) = this.slot else {
            let (idx, sweeper) = table.insert(this.at, cx.waker().clone());
            this.slot = Some(idx);
            drop(table);
            if let Some(sweeper) = sweeper {
                sweeper.wake();
            }
            return Poll::Pending;
        };
        match &mut table.slots[idx] {
            Slot::Fired => Poll::Ready(()),
            Slot::Waiting(_, waker) => {
                if waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
                let old = std::mem::replace(waker, cx.waker().clone());
                drop(table);
                drop(old);
                Poll::Pending
            }
            Slot::Free => unreachable!("a deadline's slot is freed only when it is dropped"),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(idx) = self.slot {
            let held = self.owner.table().remove(idx);
            drop(held); // after the lock
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer for a shard's HTTP/1.1 connections (the header-read timeout).
#[derive(Debug, Clone)]
pub struct ShardTimer(pub Arc<Deadlines>);

impl hyper::rt::Timer for ShardTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.until(at))
    }
}

thread_local!(static SHARD: RefCell<Option<Arc<Deadlines>>> = const { RefCell::new(None) });

/// Makes `deadlines` the ones [`timeout_at`] uses on this thread (a shard's).
pub fn set_for_this_thread(deadlines: Option<Arc<Deadlines>>) {
    SHARD.with(|shard| *shard.borrow_mut() = deadlines);
}

/// A future that resolves at an instant: on a shard, a slot in its deadline table;
/// elsewhere, a tokio timer.
pub struct Sleep(Limit);

/// Resolves at `at`.
pub fn sleep_until(at: Instant) -> Sleep {
    Sleep(
        match SHARD.with(|shard| shard.borrow().as_ref().map(|d| d.until(at))) {
            Some(deadline) => Limit::Shard(deadline),
            None => Limit::Tokio(Box::pin(tokio::time::sleep_until(at.into()))),
        },
    )
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Limit::Shard(deadline) => Pin::new(deadline).poll(cx),
            Limit::Tokio(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut` until `at`: its output, or [`Elapsed`] when the deadline came first.
pub fn timeout_at<F: Future + Unpin>(at: tokio::time::Instant, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        limit: sleep_until(at.into_std()),
    }
}

/// See [`timeout_at`].
pub struct Timeout<F> {
    fut: F,
    limit: Sleep,
}

enum Limit {
    Shard(Deadline),
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl<F: Future + Unpin> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(&mut self.limit).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs `f` on a current-thread runtime, as a shard does.
    fn on_shard<F: Future>(f: impl FnOnce(Arc<Deadlines>) -> F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadlines = Deadlines::start();
            set_for_this_thread(Some(deadlines.clone()));
            let out = f(deadlines).await;
            set_for_this_thread(None);
            out
        })
    }

    #[test]
    fn a_deadline_resolves_at_its_instant_not_before() {
        on_shard(|d| async move {
            let start = Instant::now();
            d.until(start + ms(80)).await;
            assert!(
                start.elapsed() >= ms(80),
                "fired after {:?}",
                start.elapsed()
            );
            assert_eq!(
                d.pending(),
                0,
                "the slot is freed once the deadline is dropped"
            );
        });
    }

    #[test]
    fn an_earlier_deadline_set_after_a_later_one_wakes_the_sweeper() {
        on_shard(|d| async move {
            let start = Instant::now();
            let mut late = Box::pin(d.until(start + Duration::from_secs(3600)));
            assert!(futures_poll(&mut late).is_pending());
            // The sweeper now sleeps for an hour; this one must still fire on time.
            tokio::time::sleep(ms(20)).await;
            let early = tokio::time::timeout(Duration::from_secs(10), d.until(start + ms(50)));
            assert!(early.await.is_ok(), "the earlier deadline never fired");
            assert!(
                futures_poll(&mut late).is_pending(),
                "the late one waits on"
            );
        });
    }

    #[test]
    fn cancelled_deadlines_never_fire_and_their_slots_are_reused() {
        on_shard(|d| async move {
            let start = Instant::now();
            let mut cancelled: Vec<_> =
                (0..100).map(|i| Box::pin(d.until(start + ms(i)))).collect();
            for c in &mut cancelled {
                assert!(futures_poll(c).is_pending());
            }
            assert_eq!(d.pending(), 100);
            drop(cancelled);
            assert_eq!(d.pending(), 0);
            // Whatever the sweeper does with the freed slots, these fire in their order.
            let first = d.until(start + ms(150));
            let second = d.until(start + ms(120));
            let order = tokio::select! {
                () = first => "first",
                () = second => "second",
            };
            assert_eq!(order, "second");
            assert!(d.table().slots.len() <= 100, "freed slots are reused");
        });
    }

    #[test]
    fn many_deadlines_spread_over_time_all_fire_none_early() {
        on_shard(|d| async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..1000u64)
                .map(|i| {
                    let at = start + Duration::from_micros(i * 200);
                    let deadline = d.until(at);
                    tokio::spawn(async move {
                        deadline.await;
                        Instant::now() >= at
                    })
                })
                .collect();
            for t in tasks {
                let on_time = tokio::time::timeout(Duration::from_secs(10), t).await;
                assert!(
                    on_time.expect("a deadline never fired").unwrap(),
                    "fired early"
                );
            }
            assert_eq!(d.pending(), 0);
        });
    }

    #[test]
    fn timeout_at_gives_the_output_or_elapsed() {
        on_shard(|_| async {
            let soon = tokio::time::Instant::now() + ms(50);
            let quick = std::pin::pin!(async { 7 });
            assert_eq!(timeout_at(soon, quick).await, Ok(7));
            let slow = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
            assert_eq!(timeout_at(soon, slow).await, Err(Elapsed));
        });
    }

    #[tokio::test]
    async fn off_a_shard_timeout_at_uses_tokios_timer() {
        let soon = tokio::time::Instant::now() + ms(30);
        let slow = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let t = timeout_at(soon, slow);
        assert!(matches!(t.limit.0, Limit::Tokio(_)));
        assert_eq!(t.await, Err(Elapsed));
    }

    /// Polls once with a waker that does nothing.
    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }
}
