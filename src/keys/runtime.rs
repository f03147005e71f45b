//! The live state of one key: health (cooling, invalid) and usage counters.
//!
//! One [`KeyRuntime`] per key id lives for the life of the process, shared by every
//! snapshot that contains the key, so a snapshot swap loses neither a cooldown nor a
//! counter. Everything is atomics except the two texts (reason, last error), which sit
//! behind short, never-awaited mutexes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::store::{KeyHealth, KeyRecord, StatsUpdate};

/// Longest `last_error` kept.
const MAX_ERROR_LEN: usize = 200;

/// A key's texts, when it has any.
#[derive(Debug, Default, Clone)]
struct Texts {
    invalid: Option<(String, i64)>,
    last_error: Option<String>,
}

/// Health and counters of one key.
#[derive(Debug, Default)]
pub struct KeyRuntime {
    pub id: i64,
    /// Unix ms until which the key is skipped; 0 when not cooling.
    cooldown_until: AtomicU64,
    /// How many 429s in a row; drives the escalating default cooldown.
    strikes: AtomicU32,
    invalid: AtomicBool,
    /// Why and since when it is invalid, and the last error: boxed, so a healthy key
    /// (most of a large pool) holds one pointer for them.
    texts: Mutex<Option<Box<Texts>>>,
    // Counters not yet written to the store.
    pending_requests: AtomicI64,
    pending_successes: AtomicI64,
    pending_failures: AtomicI64,
    consecutive_failures: AtomicI64,
    last_used_at: AtomicU64,
    last_status: AtomicU32,
    dirty: AtomicBool,
    /// Set while a probe confirms a suspect key (one probe at a time).
    probing: AtomicBool,
}

/// The key's state as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Cooling,
    Invalid,
    Disabled,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Cooling => "cooling",
            KeyState::Invalid => "invalid",
            KeyState::Disabled => "disabled",
        }
    }
}

impl KeyRuntime {
    /// Changes the texts (boxed on first use, freed when both are empty).
    fn set_texts(&self, f: impl FnOnce(&mut Texts)) {
        let mut slot = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        let empty = |t: &Texts| t.invalid.is_none() && t.last_error.is_none();
        match slot.as_deref_mut() {
            Some(t) => {
                f(t);
                if empty(t) {
                    *slot = None;
                }
            }
            None => {
                // Clearing what is not there (every reload, for every healthy key) allocates nothing.
                let mut t = Texts::default();
                f(&mut t);
                if !empty(&t) {
                    *slot = Some(Box::new(t));
                }
            }
        }
    }

    /// Reads the texts.
    fn texts<R>(&self, f: impl FnOnce(&Texts) -> R) -> R {
        let slot = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        f(slot.as_deref().unwrap_or(&Texts::default()))
    }

    /// A fresh runtime for a key with no history.
    pub fn new(id: i64) -> KeyRuntime {
        KeyRuntime {
            id,
            ..KeyRuntime::default()
        }
    }

    /// A runtime initialised from what the store remembers.
    pub fn from_record(k: &KeyRecord) -> KeyRuntime {
        let rt = KeyRuntime::new(k.id);
        rt.sync_health(&k.health);
        rt.consecutive_failures
            .store(k.stats.consecutive_failures, Relaxed);
        rt
    }

    /// Adopts the store's health: the invalid mark always (the store is the authority on
    /// it), a cooldown only when it ends later than ours.
    pub fn sync_health(&self, h: &KeyHealth) {
        match (&h.invalid_reason, h.invalid_at) {
            (Some(reason), at) => {
                self.set_texts(|t| t.invalid = Some((reason.clone(), at.unwrap_or(0))));
                self.invalid.store(true, Relaxed);
            }
            (None, _) => {
                self.invalid.store(false, Relaxed);
                self.set_texts(|t| t.invalid = None);
            }
        }
        if let Some(until) = h.cooldown_until.and_then(|u| u64::try_from(u).ok()) {
            self.cooldown_until.fetch_max(until, Relaxed);
        }
    }

    /// Whether the key may be used at `now_ms`.
    #[inline]
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.invalid.load(Relaxed) && self.cooldown_until.load(Relaxed) <= now_ms
    }

    /// Unix ms until which the key cools, if it does at `now_ms`.
    pub fn cooling_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.cooldown_until.load(Relaxed);
        (until > now_ms).then_some(until)
    }

    /// When the key was marked invalid (Unix ms), if it is.
    pub fn invalid_since(&self) -> Option<u64> {
        self.texts(|t| {
            t.invalid
                .as_ref()
                .and_then(|(_, at)| u64::try_from(*at).ok())
        })
    }

    pub fn is_invalid(&self) -> bool {
        self.invalid.load(Relaxed)
    }

    /// The state shown to the admin (for keys the admin enabled).
    pub fn state(&self, now_ms: u64) -> KeyState {
        if self.is_invalid() {
            KeyState::Invalid
        } else if self.cooling_until(now_ms).is_some() {
            KeyState::Cooling
        } else {
            KeyState::Active
        }
    }

    /// Health to persist.
    pub fn health(&self, now_ms: u64) -> KeyHealth {
        let info = self.texts(|t| t.invalid.clone());
        KeyHealth {
            invalid_reason: info.as_ref().map(|(r, _)| r.clone()),
            invalid_at: info.map(|(_, at)| at),
            cooldown_until: self.cooling_until(now_ms).map(|u| u as i64),
        }
    }

    /// Starts (or extends) a cooldown; returns the number of 429s in a row before this one.
    pub fn cool_until(&self, until_ms: u64) -> u32 {
        self.cooldown_until.fetch_max(until_ms, Relaxed);
        self.dirty.store(true, Relaxed);
        self.strikes.fetch_add(1, Relaxed)
    }

    /// How many 429s in a row the key has had.
    pub fn strikes(&self) -> u32 {
        self.strikes.load(Relaxed)
    }

    /// Marks the key invalid with a reason (no secret in it).
    pub fn invalidate(&self, reason: &str, now_ms: u64) {
        self.set_texts(|t| t.invalid = Some((reason.to_string(), now_ms as i64)));
        self.invalid.store(true, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// Ends a cooldown early (a probe found the key good).
    pub fn clear_cooldown(&self) {
        self.cooldown_until.store(0, Relaxed);
        self.strikes.store(0, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// Claims the key's one probe slot; `false` when a probe is already running.
    pub fn start_probe(&self) -> bool {
        !self.probing.swap(true, Relaxed)
    }

    /// Frees the probe slot.
    pub fn end_probe(&self) {
        self.probing.store(false, Relaxed);
    }

    /// Clears cooldown, invalid mark and failure streaks (the admin's "reset").
    pub fn reset(&self) {
        self.invalid.store(false, Relaxed);
        self.set_texts(|t| t.invalid = None);
        self.cooldown_until.store(0, Relaxed);
        self.strikes.store(0, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// Counts one upstream answer (or failure to get one).
    pub fn record(&self, now_ms: u64, status: Option<u16>, ok: bool, error: Option<&str>) {
        self.pending_requests.fetch_add(1, Relaxed);
        self.last_used_at.store(now_ms, Relaxed);
        self.last_status.store(status.map_or(0, u32::from), Relaxed);
        if ok {
            self.pending_successes.fetch_add(1, Relaxed);
            self.consecutive_failures.store(0, Relaxed);
            if self.strikes.load(Relaxed) != 0 {
                self.strikes.store(0, Relaxed);
            }
        } else {
            self.pending_failures.fetch_add(1, Relaxed);
            self.consecutive_failures.fetch_add(1, Relaxed);
            if let Some(e) = error {
                let mut e = e.to_string();
                if e.len() > MAX_ERROR_LEN {
                    let mut cut = MAX_ERROR_LEN;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
                self.set_texts(|t| t.last_error = Some(e));
            }
        }
        self.dirty.store(true, Relaxed);
    }

    /// Takes the unwritten counters (zeroing them) if anything changed since the last call.
    pub fn take_update(&self, now_ms: u64) -> Option<StatsUpdate> {
        if !self.dirty.swap(false, Relaxed) {
            return None;
        }
        let last_used = self.last_used_at.load(Relaxed);
        let status = self.last_status.load(Relaxed);
        Some(StatsUpdate {
            key_id: self.id,
            requests: self.pending_requests.swap(0, Relaxed),
            successes: self.pending_successes.swap(0, Relaxed),
            failures: self.pending_failures.swap(0, Relaxed),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            last_used_at: (last_used != 0).then_some(last_used as i64),
            last_status: (status != 0).then_some(i64::from(status)),
            last_error: self.texts(|t| t.last_error.clone()),
            cooldown_until: self.cooling_until(now_ms).map(|u| u as i64),
        })
    }

    /// Puts counters back after a failed write, so nothing is lost.
    pub fn restore(&self, u: &StatsUpdate) {
        self.pending_requests.fetch_add(u.requests, Relaxed);
        self.pending_successes.fetch_add(u.successes, Relaxed);
        self.pending_failures.fetch_add(u.failures, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// A stored record with the unwritten counters and live state added, for the admin list.
    pub fn overlay(&self, k: &mut KeyRecord, now_ms: u64) {
        k.stats.request_count += self.pending_requests.load(Relaxed);
        k.stats.success_count += self.pending_successes.load(Relaxed);
        k.stats.failure_count += self.pending_failures.load(Relaxed);
        k.stats.consecutive_failures = self.consecutive_failures.load(Relaxed);
        let last_used = self.last_used_at.load(Relaxed);
        if last_used != 0 && Some(last_used as i64) > k.stats.last_used_at {
            k.stats.last_used_at = Some(last_used as i64);
            let status = self.last_status.load(Relaxed);
            k.stats.last_status = (status != 0).then_some(i64::from(status));
        }
        if let Some(e) = self.texts(|t| t.last_error.clone()) {
            k.stats.last_error = Some(e);
        }
        k.health = self.health(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_flow_into_updates_and_back() {
        let rt = KeyRuntime::new(7);
        assert!(rt.take_update(0).is_none());
        rt.record(1000, Some(200), true, None);
        rt.record(2000, Some(500), false, Some("upstream answered 500"));
        let u = rt.take_update(2000).unwrap();
        assert_eq!(
            (u.requests, u.successes, u.failures, u.consecutive_failures),
            (2, 1, 1, 1)
        );
        assert_eq!((u.last_used_at, u.last_status), (Some(2000), Some(500)));
        assert!(rt.take_update(2000).is_none());
        rt.restore(&u);
        assert_eq!(rt.take_update(2000).unwrap().requests, 2);
    }

    #[test]
    fn cooldown_invalid_and_reset() {
        let rt = KeyRuntime::default();
        assert!(rt.usable(0));
        assert_eq!(rt.cool_until(5000), 0);
        assert_eq!(rt.cool_until(3000), 1);
        assert!(!rt.usable(4999));
        assert!(rt.usable(5000));
        rt.invalidate("upstream answered 401", 10);
        assert_eq!(rt.state(6000), KeyState::Invalid);
        assert_eq!(
            rt.health(0).invalid_reason.as_deref(),
            Some("upstream answered 401")
        );
        rt.reset();
        assert_eq!((rt.state(0), rt.strikes()), (KeyState::Active, 0));
    }

    #[test]
    fn a_success_clears_the_strikes() {
        let rt = KeyRuntime::default();
        rt.cool_until(1);
        rt.cool_until(2);
        rt.record(3, Some(200), true, None);
        assert_eq!(rt.strikes(), 0);
    }
}
