//! Per-key statistics are counted in memory (atomics in each key's runtime) and written
//! to the store in batches: every `STATS_FLUSH_SECONDS` and once more at shutdown. A
//! failed write puts the counts back, so nothing is lost.

use std::sync::Arc;

use tokio::sync::watch;

use crate::state::AppState;
use crate::timefmt::now_ms;

/// Writes pending counters now. Returns how many keys were written.
pub async fn flush(state: &AppState) -> usize {
    let now = now_ms();
    let pending: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter_map(|rt| rt.take_update(now).map(|u| (rt, u)))
        .collect();
    if pending.is_empty() {
        return 0;
    }
    let updates = pending.iter().map(|(_, u)| u.clone()).collect();
    match state.store.save_stats(updates).await {
        Ok(()) => pending.len(),
        Err(e) => {
            crate::log::warn!("could not save key statistics (will retry): {e}");
            for (rt, u) in &pending {
                rt.restore(u);
            }
            0
        }
    }
}

/// Flushes periodically until `stop` changes, then flushes a last time.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.config.stats_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { flush(&state).await; }
            _ = stop.changed() => break,
        }
    }
    flush(&state).await;
}
