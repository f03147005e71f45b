//! Background jobs an admin started (testing many keys) and their progress, kept in
//! memory: the last [`KEEP`] jobs, running or finished.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Jobs remembered.
const KEEP: usize = 50;

/// One job and how far it got.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub action: &'static str,
    pub service_id: i64,
    pub total: u64,
    pub done: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    cancelled: AtomicBool,
    /// Unix ms; 0 while it runs.
    finished_at: AtomicU64,
    started_at: u64,
}

impl Job {
    /// Records one key's outcome.
    pub fn count(&self, ok: bool) {
        if ok { &self.ok } else { &self.failed }.fetch_add(1, Relaxed);
        self.done.fetch_add(1, Relaxed);
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Relaxed)
    }

    pub fn finish(&self) {
        self.finished_at
            .store(crate::timefmt::now_ms().max(1), Relaxed);
    }

    /// The job as the admin API shows it.
    pub fn view(&self) -> Value {
        let finished = self.finished_at.load(Relaxed);
        let state = match (finished, self.cancelled()) {
            (0, _) => "running",
            (_, true) => "cancelled",
            _ => "finished",
        };
        let ms = |t: u64| crate::timefmt::rfc3339(t / 1000);
        json!({
            "id": self.id,
            "action": self.action,
            "proxy_config_id": self.service_id,
            "state": state,
            "total": self.total,
            "done": self.done.load(Relaxed),
            "ok": self.ok.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "started_at": ms(self.started_at),
            "finished_at": (finished > 0).then(|| ms(finished)),
        })
    }
}

/// The jobs of this instance.
#[derive(Debug, Default)]
pub struct Jobs {
    next: AtomicU64,
    list: Mutex<VecDeque<Arc<Job>>>,
}

impl Jobs {
    /// Registers a new running job.
    pub fn start(&self, action: &'static str, service_id: i64, total: u64) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next.fetch_add(1, Relaxed) + 1,
            action,
            service_id,
            total,
            done: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            finished_at: AtomicU64::new(0),
            started_at: crate::timefmt::now_ms(),
        });
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEEP {
            list.pop_front();
        }
        list.push_back(job.clone());
        job
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|j| j.id == id).cloned()
    }

    /// Asks a job to stop; whether there was such a job.
    pub fn cancel(&self, id: u64) -> Option<Arc<Job>> {
        let job = self.get(id)?;
        job.cancelled.store(true, Relaxed);
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_counts_and_is_forgotten_after_the_last_fifty() {
        let jobs = Jobs::default();
        let first = jobs.start("test", 1, 2);
        first.count(true);
        first.count(false);
        assert_eq!(first.view()["state"], "running");
        first.finish();
        let v = first.view();
        assert_eq!(
            (v["done"].as_u64(), v["ok"].as_u64(), v["failed"].as_u64()),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(v["state"], "finished");
        for _ in 0..KEEP {
            jobs.start("test", 1, 0);
        }
        assert!(jobs.get(first.id).is_none());
        assert!(jobs.cancel(first.id + 1).is_some_and(|j| j.cancelled()));
    }
}
