//! A counter per fixed time window (a minute, a UTC day) in one atomic word: the window's
//! number in the high 32 bits, the count in the low 32. Admitting is one compare-and-swap,
//! with no lock, and a new window starts from zero by itself.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Window(AtomicU64);

const COUNT: u64 = u32::MAX as u64;

fn pack(window: u64, count: u64) -> u64 {
    (window << 32) | count.min(COUNT)
}

impl Window {
    /// The count in window `now` (0 when the word holds an older window).
    pub fn count(&self, now: u64) -> u64 {
        let w = self.0.load(Ordering::Relaxed);
        if w >> 32 == now & COUNT { w & COUNT } else { 0 }
    }

    /// Counts one in window `now` if that stays within `limit`: `Some(remaining)` after
    /// it, or `None` when the window is full.
    pub fn admit(&self, now: u64, limit: u64) -> Option<u64> {
        let now = now & COUNT;
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let count = if cur >> 32 == now { cur & COUNT } else { 0 };
            if count >= limit {
                return None;
            }
            match self.0.compare_exchange_weak(
                cur,
                pack(now, count + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(limit - count - 1),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Gives back one admission of window `now` (a later check refused the request).
    pub fn undo(&self, now: u64) {
        let now = now & COUNT;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur >> 32 == now && cur & COUNT > 0).then(|| cur - 1)
            });
    }

    /// Adds `n` in window `now` (tokens, counted after the answer).
    pub fn add(&self, now: u64, n: u64) {
        let now = now & COUNT;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                let count = if cur >> 32 == now { cur & COUNT } else { 0 };
                Some(pack(now, count.saturating_add(n)))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_up_to_its_limit_then_starts_again() {
        let w = Window::default();
        assert_eq!(w.admit(7, 2), Some(1));
        assert_eq!(w.admit(7, 2), Some(0));
        assert_eq!(w.admit(7, 2), None);
        assert_eq!(w.count(7), 2);
        w.undo(7);
        assert_eq!(w.admit(7, 2), Some(0));
        assert_eq!(w.count(8), 0, "another window counts from zero");
        assert_eq!(w.admit(8, 2), Some(1));
        w.undo(7); // a stale undo changes nothing
        assert_eq!(w.count(8), 1);
        w.add(8, 10);
        assert_eq!(w.count(8), 11);
        w.add(9, u64::MAX);
        assert_eq!(w.count(9), COUNT, "saturates");
    }

    #[test]
    fn two_threads_never_admit_more_than_the_limit() {
        let w = std::sync::Arc::new(Window::default());
        let admitted: u64 = (0..2)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| w.admit(1, 5_000).is_some()).count()
                })
            })
            .map(|t| t.join().unwrap() as u64)
            .sum();
        assert_eq!(admitted, 5_000);
    }
}
