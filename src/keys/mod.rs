//! Key selection: per-service round robin over the keys that are usable right now.
//!
//! A [`KeyPool`] belongs to one snapshot of one service and holds the admin-enabled keys
//! in id order. It keeps the list of *usable* positions (not cooling, not invalid) up to
//! date when a key's health changes, and a heap of cooling keys ordered by when they come
//! back, so a pick costs the same whether 0 or 9,990 of 10,000 keys are cooling: one
//! atomic load to see whether a cooldown has ended, one `Arc` clone of the usable list,
//! one index. With every key usable the order is the original's: ticket `n` (counting
//! from 0) picks key `n mod k`.

pub mod policy;
pub mod runtime;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

pub use runtime::{KeyRuntime, KeyState};

use crate::store::KeyRecord;

/// One admin-enabled key of a pool.
#[derive(Debug, Clone)]
pub struct PoolKey {
    pub id: i64,
    pub secret: KeySecret,
    pub rt: Arc<KeyRuntime>,
}

/// A key's plain value and, for services that send it in a header, the ready-made header
/// value (with `Bearer ` when the service wants it, marked sensitive): one buffer, shared
/// by the snapshot, requests and the request log, and wiped when the last of them lets it
/// go. One allocation per key, which matters in a pool of 100,000. Never printed.
#[derive(Clone)]
pub struct KeySecret {
    /// `prefix + key`.
    value: http::HeaderValue,
    /// Length of the prefix.
    skip: u8,
    /// Whether `value` is the header the key goes in.
    header: bool,
}

impl KeySecret {
    /// `prefix + value` in one wiped buffer; `None` when it cannot be a header value
    /// (control characters).
    pub fn build(prefix: &'static [u8], value: &str, header: bool) -> Option<KeySecret> {
        let mut text = Vec::with_capacity(prefix.len() + value.len());
        text.extend_from_slice(prefix);
        text.extend_from_slice(value.as_bytes());
        let shared = bytes::Bytes::from_owner(WipedBytes(text.into()));
        let mut value = http::HeaderValue::from_maybe_shared(shared).ok()?;
        value.set_sensitive(true);
        Some(KeySecret {
            value,
            skip: prefix.len() as u8,
            header,
        })
    }

    /// A key that does not go in a header (tests, probes).
    pub fn new(value: &str) -> KeySecret {
        KeySecret::build(b"", value, false).expect("a printable key")
    }

    /// The header value to send, when the key goes in a header.
    #[inline]
    pub fn header(&self) -> Option<&http::HeaderValue> {
        self.header.then_some(&self.value)
    }
}

impl std::ops::Deref for KeySecret {
    type Target = str;
    fn deref(&self) -> &str {
        let bytes = &self.value.as_bytes()[usize::from(self.skip)..];
        // SAFETY: built from a `&str` after an ASCII prefix (`build`).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Bytes wiped when the last `Bytes` (or header value) sharing them goes.
pub struct WipedBytes(pub Box<[u8]>);

impl AsRef<[u8]> for WipedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedBytes {
    fn drop(&mut self) {
        crate::seal::wipe(&mut self.0);
    }
}

/// What [`KeyPool::pick`] found.
#[derive(Debug)]
pub enum Pick<'a> {
    /// Use this key.
    Key(usize, &'a PoolKey),
    /// The service has no enabled key at all.
    Empty,
    /// Every key is cooling, invalid or already tried; `retry_after_ms` is when the
    /// first cooling key comes back (none when no key is cooling).
    AllDown { retry_after_ms: Option<u64> },
}

/// The enabled keys of one service and which of them are usable.
#[derive(Debug)]
pub struct KeyPool {
    keys: Box<[PoolKey]>,
    usable: RwLock<Arc<[u32]>>,
    cooling: Mutex<BinaryHeap<Reverse<(u64, u32)>>>,
    /// When the earliest cooldown ends (Unix ms); `u64::MAX` when none.
    next_wake: AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyPool {
    /// A pool of `keys` (already in id order), sorted by their current health.
    pub fn new(keys: Vec<PoolKey>, now_ms: u64) -> KeyPool {
        let mut usable = Vec::with_capacity(keys.len());
        let mut cooling = BinaryHeap::new();
        for (i, k) in keys.iter().enumerate() {
            if k.rt.usable(now_ms) {
                usable.push(i as u32);
            } else if let Some(until) = k.rt.cooling_until(now_ms).filter(|_| !k.rt.is_invalid()) {
                cooling.push(Reverse((until, i as u32)));
            }
        }
        let next_wake = cooling.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
        KeyPool {
            keys: keys.into_boxed_slice(),
            usable: RwLock::new(usable.into()),
            cooling: Mutex::new(cooling),
            next_wake: AtomicU64::new(next_wake),
        }
    }

    /// The enabled keys, in id order.
    pub fn keys(&self) -> &[PoolKey] {
        &self.keys
    }

    /// Position of a key id in this pool.
    pub fn position(&self, key_id: i64) -> Option<usize> {
        self.keys.binary_search_by_key(&key_id, |k| k.id).ok()
    }

    /// Picks the key for `ticket`, skipping keys in `tried` and keys that are not usable.
    pub fn pick(&self, ticket: u64, tried: &[i64], now_ms: u64) -> Pick<'_> {
        if self.keys.is_empty() {
            return Pick::Empty;
        }
        self.readmit(now_ms);
        let usable = read(&self.usable).clone();
        let n = usable.len();
        let start = if n == 0 {
            0
        } else {
            (ticket % n as u64) as usize
        };
        for i in 0..n {
            let idx = usable[(start + i) % n] as usize;
            let key = &self.keys[idx];
            if tried.contains(&key.id) {
                continue;
            }
            if !key.rt.usable(now_ms) {
                // Marked elsewhere (an older snapshot, another instance): catch up.
                self.refresh(idx, now_ms);
                continue;
            }
            return Pick::Key(idx, key);
        }
        Pick::AllDown {
            retry_after_ms: self.soonest_recovery(now_ms),
        }
    }

    /// When the first cooling key comes back, if any key is cooling.
    pub fn soonest_recovery(&self, now_ms: u64) -> Option<u64> {
        self.keys
            .iter()
            .filter(|k| !k.rt.is_invalid())
            .filter_map(|k| k.rt.cooling_until(now_ms))
            .min()
    }

    /// Re-sorts key `idx` after its health changed (cooled, invalidated or reset).
    pub fn refresh(&self, idx: usize, now_ms: u64) {
        let rt = &self.keys[idx].rt;
        if rt.usable(now_ms) {
            self.insert_usable(idx as u32);
            return;
        }
        self.remove_usable(idx as u32);
        if let Some(until) = rt.cooling_until(now_ms).filter(|_| !rt.is_invalid()) {
            lock(&self.cooling).push(Reverse((until, idx as u32)));
            self.next_wake.fetch_min(until, Relaxed);
        }
    }

    /// Puts keys whose cooldown ended back into the usable list.
    fn readmit(&self, now_ms: u64) {
        if self.next_wake.load(Relaxed) > now_ms {
            return;
        }
        let mut heap = lock(&self.cooling);
        while let Some(&Reverse((until, idx))) = heap.peek() {
            if until > now_ms {
                break;
            }
            heap.pop();
            let rt = &self.keys[idx as usize].rt;
            if rt.usable(now_ms) {
                self.insert_usable(idx);
            } else if let Some(later) = rt.cooling_until(now_ms).filter(|_| !rt.is_invalid()) {
                heap.push(Reverse((later, idx)));
            }
        }
        let next = heap.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
        self.next_wake.store(next, Relaxed);
    }

    fn insert_usable(&self, idx: u32) {
        let mut guard = write(&self.usable);
        if let Err(pos) = guard.binary_search(&idx) {
            let mut v = guard.to_vec();
            v.insert(pos, idx);
            *guard = v.into();
        }
    }

    fn remove_usable(&self, idx: u32) {
        let mut guard = write(&self.usable);
        if let Ok(pos) = guard.binary_search(&idx) {
            let mut v = guard.to_vec();
            v.remove(pos);
            *guard = v.into();
        }
    }

    /// How many enabled keys are in each state.
    pub fn count_states(&self, now_ms: u64) -> [(KeyState, usize); 3] {
        let mut counts = [
            (KeyState::Active, 0),
            (KeyState::Cooling, 0),
            (KeyState::Invalid, 0),
        ];
        for k in self.keys.iter() {
            let i = match k.rt.state(now_ms) {
                KeyState::Active => 0,
                KeyState::Cooling => 1,
                _ => 2,
            };
            counts[i].1 += 1;
        }
        counts
    }
}

/// A key as the admin page and the logs show it: at most three characters at the start
/// and four at the end, never more than half of it.
pub fn mask(key: &str) -> String {
    let (head, tail) = mask_parts(key);
    [head, "****", tail].concat()
}

/// What [`mask`] shows of `key`: its start and its end (`****` goes between). Without an
/// allocation: the request log takes it on every request.
pub fn mask_parts(key: &str) -> (&str, &str) {
    let n = match key.is_ascii() {
        true => key.len(),
        false => key.chars().count(),
    };
    let (head, tail) = (3.min(n / 4), 4.min(n / 4));
    let head_end = key.char_indices().nth(head).map_or(key.len(), |(i, _)| i);
    let tail_start = match tail {
        0 => key.len(),
        _ => key.char_indices().nth_back(tail - 1).map_or(0, |(i, _)| i),
    };
    (&key[..head_end], &key[tail_start..])
}

/// The per-key runtimes and per-service rotation cursors, kept across snapshots.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    runtimes: Mutex<HashMap<i64, Arc<KeyRuntime>>>,
    cursors: Mutex<HashMap<i64, Arc<AtomicU64>>>,
}

impl KeyRegistry {
    /// Replaces the set of known keys with `records`, keeping the runtime of every key
    /// that is still there (and syncing its health from the store).
    pub fn sync(&self, records: &[KeyRecord]) -> HashMap<i64, Arc<KeyRuntime>> {
        let mut map = lock(&self.runtimes);
        let mut old = std::mem::take(&mut *map);
        for r in records {
            let rt = match old.remove(&r.id) {
                Some(rt) => {
                    rt.sync_health(&r.health);
                    rt
                }
                None => Arc::new(KeyRuntime::from_record(r)),
            };
            map.insert(r.id, rt);
        }
        map.clone()
    }

    /// The runtime of a key just added or enabled (kept when it has one), its health
    /// synced from the store.
    pub fn insert(&self, r: &KeyRecord) -> Arc<KeyRuntime> {
        let mut map = lock(&self.runtimes);
        let rt = map
            .entry(r.id)
            .or_insert_with(|| Arc::new(KeyRuntime::from_record(r)));
        rt.sync_health(&r.health);
        rt.clone()
    }

    /// Forgets deleted keys.
    pub fn remove(&self, ids: &[i64]) {
        let mut map = lock(&self.runtimes);
        for id in ids {
            map.remove(id);
        }
    }

    /// The runtime of a key, if the key exists.
    pub fn get(&self, key_id: i64) -> Option<Arc<KeyRuntime>> {
        lock(&self.runtimes).get(&key_id).cloned()
    }

    /// Every key runtime (for the statistics flusher).
    pub fn all(&self) -> Vec<Arc<KeyRuntime>> {
        lock(&self.runtimes).values().cloned().collect()
    }

    /// The rotation cursor of a service (created at 0).
    pub fn cursor(&self, service_id: i64) -> Arc<AtomicU64> {
        lock(&self.cursors).entry(service_id).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: i64) -> KeyPool {
        let keys = (1..=n)
            .map(|id| PoolKey {
                id,
                secret: KeySecret::new(&format!("k{id}")),
                rt: Arc::new(KeyRuntime::new(id)),
            })
            .collect();
        KeyPool::new(keys, 0)
    }

    fn picked(p: &KeyPool, ticket: u64, tried: &[i64], now: u64) -> Option<i64> {
        match p.pick(ticket, tried, now) {
            Pick::Key(_, k) => Some(k.id),
            _ => None,
        }
    }

    #[test]
    fn masking_never_shows_more_than_half() {
        assert_eq!(mask("sk-abcdefghijklmnopqrstuvwxyz"), "sk-****wxyz");
        assert_eq!(mask("abcdefgh"), "ab****gh");
        assert_eq!(mask("abc"), "****");
        assert_eq!(mask(""), "****");
        assert_eq!(mask("ключ-абвгдежзий"), "клю****зий");
        assert_eq!(mask_parts("abcdefgh"), ("ab", "gh"));
        for n in 0..40 {
            let k: String = "x".repeat(n);
            let shown = mask(&k).replace("****", "").len();
            assert!(shown * 2 <= n, "{n}: {shown}");
            assert!(shown <= 7);
        }
    }

    #[test]
    fn round_robin_in_id_order() {
        let p = pool(3);
        let got: Vec<_> = (0..7).map(|t| picked(&p, t, &[], 0).unwrap()).collect();
        assert_eq!(got, [1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn fair_over_many_draws() {
        let p = pool(7);
        let mut counts = HashMap::new();
        for t in 0..7 * 1000 {
            *counts.entry(picked(&p, t, &[], 0).unwrap()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&c| c == 1000), "{counts:?}");
    }

    #[test]
    fn cooling_and_invalid_keys_are_skipped_then_readmitted() {
        let p = pool(3);
        p.keys[1].rt.cool_until(1000);
        p.refresh(1, 0);
        p.keys[2].rt.invalidate("401", 0);
        p.refresh(2, 0);
        for t in 0..10 {
            assert_eq!(picked(&p, t, &[], 999), Some(1));
        }
        assert_eq!(
            picked(&p, 1, &[], 1000),
            Some(2),
            "key 2 is back after its cooldown"
        );
        assert!(matches!(
            p.pick(0, &[1], 500),
            Pick::AllDown {
                retry_after_ms: Some(1000)
            }
        ));
    }

    #[test]
    fn never_the_same_key_twice() {
        let p = pool(3);
        assert_eq!(picked(&p, 0, &[1], 0), Some(2));
        assert_eq!(picked(&p, 0, &[1, 2], 0), Some(3));
        assert!(matches!(
            p.pick(0, &[1, 2, 3], 0),
            Pick::AllDown {
                retry_after_ms: None
            }
        ));
    }

    #[test]
    fn empty_pool() {
        assert!(matches!(pool(0).pick(5, &[], 0), Pick::Empty));
    }

    #[test]
    fn a_health_change_made_through_another_pool_is_noticed() {
        let p = pool(2);
        p.keys[0].rt.cool_until(50);
        // No refresh on this pool: the pick itself notices and catches up.
        assert_eq!(picked(&p, 0, &[], 10), Some(2));
        assert_eq!(read(&p.usable).len(), 1);
        assert_eq!(picked(&p, 0, &[], 60), Some(1));
    }

    #[test]
    fn ten_thousand_keys_with_most_cooling() {
        let p = pool(10_000);
        for idx in 0..9_990 {
            p.keys[idx].rt.cool_until(1_000_000);
            p.refresh(idx, 0);
        }
        for t in 0..100 {
            let id = picked(&p, t, &[], 1).unwrap();
            assert!(id > 9_990);
        }
        assert_eq!(read(&p.usable).len(), 10);
    }
}
