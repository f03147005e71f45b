//! What an answer does to the key that got it: counters, cooldowns, invalid marks, shared
//! with other instances and saved. One client request changes one key's state at most.

use std::sync::Arc;

use http::StatusCode;

use crate::cache::KeyEvent;
use crate::keys::PoolKey;
use crate::keys::policy::{self, Verdict};
use crate::snapshot::Service;
use crate::state::AppState;
use crate::timefmt::now_ms;

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Nothing,
    /// The key is suspect: probe it on the service's probe path (`probe::confirm`).
    Probe,
}

/// Records the answer (at `now`, Unix ms) in the key's health and counters, and shares
/// changes. `may_change` is the request's one change of a key's state: once spent, a
/// later verdict is counted but changes nothing, so one client request cannot cool down
/// or invalidate several keys.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    state: &AppState,
    svc: &Arc<Service>,
    idx: usize,
    key: &PoolKey,
    status: StatusCode,
    verdict: &Verdict,
    now: u64,
    may_change: &mut bool,
) -> Follow {
    let code = Some(status.as_u16());
    if verdict.changes_state() && !std::mem::replace(may_change, false) {
        key.rt.record(
            now,
            code,
            false,
            Some(&format!("upstream answered {}", status.as_u16())),
        );
        return Follow::Nothing;
    }
    match verdict {
        Verdict::Success | Verdict::ClientFault => key.rt.record(now, code, true, None),
        Verdict::ServerError => key.rt.record(
            now,
            code,
            false,
            Some(&format!("upstream answered {}", status.as_u16())),
        ),
        Verdict::RateLimited(wait) => {
            key.rt.record(
                now,
                code,
                false,
                Some("upstream answered 429 (rate limited)"),
            );
            cool_down(state, svc, idx, key, *wait, now, "rate limited");
        }
        Verdict::Suspect(reason) => {
            key.rt.record(now, code, false, Some(reason));
            cool_down(state, svc, idx, key, None, now, reason);
            if svc.spec.probe_path.is_some() {
                return Follow::Probe;
            }
        }
        Verdict::Invalid(reason) => {
            key.rt.record(now, code, false, Some(reason));
            invalidate(svc, idx, reason, now);
            persist_invalid(state, svc.id, key);
        }
    }
    Follow::Nothing
}

/// Cools a key down for `wait`, or the escalating default; shares it.
fn cool_down(
    state: &AppState,
    svc: &Service,
    idx: usize,
    key: &PoolKey,
    wait: Option<std::time::Duration>,
    now: u64,
    why: &str,
) {
    let wait = wait.unwrap_or_else(|| policy::default_cooldown(key.rt.strikes()));
    let until = now + wait.as_millis() as u64;
    key.rt.cool_until(until);
    svc.pool.refresh(idx, now);
    crate::log::info!(
        "service '{}': key id {} cooling down for {:.0} s ({why})",
        svc.slug,
        key.id,
        wait.as_secs_f64().ceil()
    );
    state.cache.publish_key_event(KeyEvent::Cooldown {
        service_id: svc.id,
        key_id: key.id,
        until_ms: until,
    });
}

/// Marks a served key invalid here: out of rotation at once.
pub(super) fn invalidate(svc: &Service, idx: usize, reason: &str, now: u64) {
    let key = &svc.pool.keys()[idx];
    key.rt.invalidate(reason, now);
    svc.pool.refresh(idx, now);
    crate::log::warn!(
        "service '{}': key id {} marked invalid ({reason})",
        svc.slug,
        key.id
    );
}

/// Writes an invalid mark to the store (off the request path), then tells other instances.
pub fn persist_invalid(state: &AppState, service_id: i64, key: &PoolKey) {
    let health = key.rt.health(now_ms());
    let store = state.store.clone();
    let cache = state.cache.clone();
    let key_id = key.id;
    tokio::spawn(async move { save_invalid(&*store, &cache, service_id, key_id, health).await });
}

/// Saves an invalid mark, then announces it (other instances read it from the store).
pub async fn save_invalid(
    store: &dyn crate::store::Store,
    cache: &crate::cache::Cache,
    service_id: i64,
    key_id: i64,
    health: crate::store::KeyHealth,
) {
    match store.set_key_health(key_id, health).await {
        Ok(()) => cache.publish_key_event(KeyEvent::Invalid { service_id, key_id }),
        Err(e) => crate::log::error!("could not save the invalid mark of key id {key_id}: {e}"),
    }
}
