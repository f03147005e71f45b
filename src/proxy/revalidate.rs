//! Background re-validation, opt-in per service (`revalidate_interval`): invalid keys,
//! and keys whose cooldown ran out without a success since, are probed on the service's
//! free probe path (`GET models` for LLM services, the operator's `probe_path` for
//! generic ones, never a path clients use). A key that answers well is back in rotation
//! with its counters kept. Each key waits `interval` after it went bad, then twice as long
//! after each probe that found it still bad (up to 16 × interval), with ±10 % jitter so
//! keys marked together are not probed together; at most `REVALIDATE_CONCURRENCY` probes
//! run at once across services.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::probe;
use crate::keys::policy::Verdict;
use crate::snapshot::Service;
use crate::state::AppState;
use crate::timefmt::now_ms;

/// Longest back-off, in intervals.
const MAX_BACKOFF: u64 = 16;

/// When a key is next due, and how many probes found it still bad.
#[derive(Debug, Clone, Copy)]
struct Due {
    at_ms: u64,
    misses: u32,
}

/// Runs until `stop` turns true.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let tick = state.config.revalidate_tick;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.config.revalidate_concurrency,
    ));
    let mut due: HashMap<i64, Due> = HashMap::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, bool)>();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        while let Ok((id, good)) = seen_rx.try_recv() {
            match good {
                true => {
                    due.remove(&id);
                }
                false => {
                    if let Some(d) = due.get_mut(&id) {
                        d.misses += 1;
                    }
                }
            }
        }
        let snap = state.snapshot.load();
        let now = now_ms();
        for svc in snap.services() {
            let Some(interval) = svc.spec.revalidate else {
                continue;
            };
            for (idx, key) in svc.pool.keys().iter().enumerate() {
                let Some(since) = bad_since(key, now) else {
                    due.remove(&key.id);
                    continue;
                };
                let d = due.entry(key.id).or_insert(Due {
                    at_ms: since + jitter(interval, key.id, 0),
                    misses: 0,
                });
                if now < d.at_ms {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break; // every slot busy: the rest waits for the next tick
                };
                if !key.rt.start_probe() {
                    continue;
                }
                let backoff = 1u64 << (d.misses + 1).min(MAX_BACKOFF.trailing_zeros());
                d.at_ms = now + jitter(interval * backoff as u32, key.id, d.misses + 1);
                let (state, svc, seen) = (state.clone(), svc.clone(), seen_tx.clone());
                tokio::spawn(async move {
                    let good = probe_one(&state, &svc, idx).await;
                    svc.pool.keys()[idx].rt.end_probe();
                    let _ = seen.send((svc.pool.keys()[idx].id, good));
                    drop(permit);
                });
            }
        }
        due.retain(|id, _| {
            snap.services()
                .iter()
                .any(|s| s.pool.position(*id).is_some())
        });
    }
}

/// Since when (Unix ms) the key needs a probe: invalid since it was marked; or out of a
/// cooldown without a success since (from now).
fn bad_since(key: &crate::keys::PoolKey, now: u64) -> Option<u64> {
    if key.rt.is_invalid() {
        return Some(key.rt.invalid_since().unwrap_or(now));
    }
    (key.rt.strikes() > 0 && key.rt.cooling_until(now).is_none()).then_some(now)
}

/// `base` ± 10 %, fixed for a key and a round (so a tick does not move it).
fn jitter(base: Duration, key_id: i64, round: u32) -> u64 {
    let ms = base.as_millis() as u64;
    let spread = ms / 5;
    if spread == 0 {
        return ms;
    }
    let h = (key_id as u64 ^ (u64::from(round) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ms - spread / 2 + (h >> 32) % spread
}

/// Probes one key and applies the answer; whether it answered well.
async fn probe_one(state: &AppState, svc: &Arc<Service>, idx: usize) -> bool {
    let key = &svc.pool.keys()[idx];
    let limit = probe::PROBE_TIMEOUT.min(state.config.proxy_timeout);
    let p = probe::call(
        &svc.conns,
        &svc.spec,
        &key.secret,
        limit,
        &state.config.invalid_key_phrases,
    )
    .await;
    let now = now_ms();
    match p.verdict {
        Some(Verdict::Success) => {
            let was_invalid = key.rt.is_invalid();
            key.rt.reset();
            if was_invalid {
                if let Err(e) = state.store.set_key_health(key.id, Default::default()).await {
                    crate::log::error!("could not save that key id {} is valid again: {e}", key.id);
                }
            }
            probe::back_in_rotation(&state.cache, svc, idx, now);
            true
        }
        Some(Verdict::Invalid(reason) | Verdict::Suspect(reason)) if !key.rt.is_invalid() => {
            let reason = format!("{reason} (re-validation probe)");
            probe::mark_invalid(&*state.store, &state.cache, svc, idx, &reason, now).await;
            false
        }
        _ => {
            crate::log::debug!(
                "service '{}': re-validation of key id {}: still bad ({:?})",
                svc.slug,
                key.id,
                p.error
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent_and_differs_between_keys() {
        let base = Duration::from_secs(100);
        let all: Vec<u64> = (1..200).map(|id| jitter(base, id, 0)).collect();
        assert!(all.iter().all(|ms| (90_000..=110_000).contains(ms)));
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert!(distinct.len() > 150, "spread out: {}", distinct.len());
        assert_eq!(jitter(base, 7, 1), jitter(base, 7, 1));
    }
}
